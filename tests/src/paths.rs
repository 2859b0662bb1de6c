//! Where things are: found from this crate's manifest dir, so any test binary finds them.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

/// The workspace root (the directory holding `Cargo.lock`).
pub fn repo_root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.ancestors()
        .find(|dir| dir.join("Cargo.lock").is_file() && dir.join("protocol").is_dir())
        .unwrap_or_else(|| panic!("no workspace root above {}", here.display()))
        .to_owned()
}

/// `target/` (honours `CARGO_TARGET_DIR`).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"))
}

/// A release binary of the workspace (`streamgate-sidecar`, `streamgate`), brought up to
/// date once per test process: `cargo test -p streamgate-tests` does not build other
/// packages' binaries, and a stale one would test old code. `STREAMGATE_TEST_NO_BUILD=1`
/// skips the build (the binary must then exist; scripts/test sets it, having built
/// everything).
///
/// Built with the workspace's default members selected, exactly as `cargo build --release`
/// (scripts/setup) does, never with `-p`: features are unified over the selected packages,
/// so `-p streamgate` picks other features of shared dependencies (futures-util, hyper-util,
/// tokio-util, …) and rebuilds the gateway and its dependency tree a second time — minutes
/// on a fresh clone, paid by the first test that starts a binary.
pub fn release_bin(name: &str) -> PathBuf {
    static BUILT: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let path = target_dir().join("release").join(name);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if std::env::var_os("STREAMGATE_TEST_NO_BUILD").is_none() && !built.iter().any(|b| b == name) {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = without_test_env(&mut Command::new(cargo))
            .args(["build", "--release", "--quiet", "--bin", name])
            .current_dir(repo_root())
            .status()
            .expect("run cargo build");
        assert!(
            status.success(),
            "cargo build --release --bin {name} failed"
        );
        built.push(name.to_owned());
    }
    assert!(path.is_file(), "{} is missing", path.display());
    path
}

/// Drops what cargo sets for a test process (`CARGO_PKG_NAME`, `CARGO_MANIFEST_DIR`, …) from
/// a command that runs cargo. Build scripts watch some of them (ring's), so a cargo that sees
/// the test's values reruns ring's and rebuilds rustls, the sidecar and everything above, and
/// the next build from a shell rebuilds them back: minutes each time.
pub fn without_test_env(cmd: &mut Command) -> &mut Command {
    const SET_FOR_TESTS: &[&str] = &[
        "CARGO_BIN_NAME",
        "CARGO_CRATE_NAME",
        "CARGO_MANIFEST_DIR",
        "CARGO_MANIFEST_LINKS",
        "CARGO_MANIFEST_PATH",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_TARGET_TMPDIR",
        "OUT_DIR",
    ];
    for (key, _) in std::env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        if key.starts_with("CARGO_PKG_") || SET_FOR_TESTS.contains(&key) {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// The project's pinned yt-dlp, `<repo>/.venv/bin/yt-dlp`.
pub fn yt_dlp() -> PathBuf {
    let path = repo_root().join(".venv/bin/yt-dlp");
    assert!(
        path.is_file(),
        "{} is missing: run scripts/setup",
        path.display()
    );
    path
}
