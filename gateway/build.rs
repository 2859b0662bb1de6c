//! Builds the wasm plugins (`plugins/*`) for wasm32-wasip2 as part of the normal build, so
//! the gateway can embed the built-in ones and tests can load the real components.
//!
//! The wasmtime `crates/test-programs/artifacts/build.rs` pattern: a nested cargo with its
//! own target dir (the outer build holds the lock on the main one), and an environment
//! scrubbed of the outer build's settings (flags and target meant for the host).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::{env, fs};

/// Every plugin crate, built together in one nested cargo run.
const PLUGINS: &[&str] = &[
    "token-xchacha",
    "token-fernet",
    "policy-allowlist",
    "auth-hmac",
    "policy-media",
    "test-misbehave",
    "test-misbehave-media",
];

const WASM_TARGET: &str = "wasm32-wasip2";

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let workspace = manifest_dir
        .parent()
        .expect("gateway/ is inside the workspace");
    // `addr/`: policy-allowlist depends on `streamgate-addr` by path.
    for watched in ["plugins", "addr", "wit", "Cargo.toml", "Cargo.lock"] {
        println!(
            "cargo:rerun-if-changed={}",
            workspace.join(watched).display()
        );
    }
    println!("cargo:rerun-if-env-changed=CARGO_TARGET_DIR");

    let target_dir = match env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => PathBuf::from(dir).join("plugins"),
        None => workspace.join("target").join("plugins"),
    };
    build_plugins(workspace, &target_dir);

    let out = target_dir.join(WASM_TARGET).join("wasm");
    for plugin in PLUGINS {
        let file = out.join(format!("{}.wasm", plugin.replace('-', "_")));
        assert!(
            file.is_file(),
            "plugin build did not produce {}",
            file.display()
        );
    }
    let out = fs::canonicalize(&out).unwrap_or(out);
    println!("cargo:rustc-env=STREAMGATE_PLUGIN_DIR={}", out.display());
}

fn build_plugins(workspace: &Path, target_dir: &Path) {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(workspace)
        .arg("build")
        .arg("--manifest-path")
        .arg(workspace.join("Cargo.toml"))
        .args(["--target", WASM_TARGET, "--profile", "wasm", "--target-dir"])
        .arg(target_dir);
    for plugin in PLUGINS {
        cmd.args(["-p", plugin]);
    }
    scrub_env(&mut cmd);
    // Our stdout is read by cargo for directives: the child's goes to stderr instead.
    cmd.stdout(Stdio::from(std::io::stderr()));
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run cargo to build the wasm plugins: {e}"));
    assert!(
        status.success(),
        "building the wasm plugins failed ({status}); is the target installed? \
         `rustup target add {WASM_TARGET}`"
    );
}

/// Drops what the outer build set for the host: flags, target, target dir, wrappers and
/// the build-script variables. Keeps the jobserver (`CARGO_MAKEFLAGS`), `CARGO_HOME` and
/// network/registry settings so the nested build shares jobs and offline mode.
fn scrub_env(cmd: &mut Command) {
    const KEEP: &[&str] = &["CARGO_HOME", "CARGO_MAKEFLAGS"];
    const KEEP_PREFIX: &[&str] = &["CARGO_NET_", "CARGO_HTTP_", "CARGO_REGISTRIES_"];
    const DROP: &[&str] = &[
        "RUSTFLAGS",
        "RUSTDOCFLAGS",
        "RUSTC_WORKSPACE_WRAPPER",
        "TARGET",
        "HOST",
        "OUT_DIR",
        "PROFILE",
        "OPT_LEVEL",
        "DEBUG",
        "NUM_JOBS",
        "RUSTC_LINKER",
        "__CARGO_FIX_PLZ",
    ];
    for (key, _) in env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        let cargo_var = key.starts_with("CARGO_")
            && !KEEP.contains(&key)
            && !KEEP_PREFIX.iter().any(|p| key.starts_with(p));
        if cargo_var || DROP.contains(&key) {
            cmd.env_remove(key);
        }
    }
}
