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
/// skips the build (the binary must then exist).
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
        let status = Command::new(cargo)
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
