//! Fixtures made by the project's own generator, once per version of the generator, shared
//! by every test process: an exclusive `flock` serialises generation, and a finished set
//! appears only by an atomic rename, so no test ever sees half a fixture.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use nix::fcntl::{Flock, FlockArg};

use crate::paths::{repo_root, target_dir};

/// The generator script.
pub fn generator() -> PathBuf {
    repo_root().join("tests/fixtures/make-media")
}

/// The standard set (see `tests/fixtures/make-media`): `progressive.mp4`, `video-only.mp4`,
/// `audio-only.m4a`, `hls/index.m3u8`, `dash/manifest.mpd`, `ism/manifest.ism`, `page.html`.
pub fn fixtures() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| generate("std", &[]))
}

/// `large.mp4`, at least 200 MB (generated only when first asked for).
pub fn large_fixture() -> &'static Path {
    static FILE: OnceLock<PathBuf> = OnceLock::new();
    FILE.get_or_init(|| generate("large", &["--large"]).join("large.mp4"))
}

/// Generates into `target/test-fixtures/<flavour>-<script hash>/` unless it exists.
fn generate(flavour: &str, args: &[&str]) -> PathBuf {
    let script = std::fs::read(generator()).expect("read tests/fixtures/make-media");
    let key = &crate::sha256_hex(&script)[..16];
    let root = target_dir().join("test-fixtures");
    std::fs::create_dir_all(&root).expect("create target/test-fixtures");
    let done = root.join(format!("{flavour}-{key}"));
    let lock = File::create(root.join(".lock")).expect("create fixture lock");
    let _lock = Flock::lock(lock, FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .expect("lock fixtures");
    if done.is_dir() {
        return done;
    }
    let tmp = root.join(format!(".{flavour}-{key}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let out = Command::new("bash")
        .arg(generator())
        .args(args)
        .arg(&tmp)
        .output()
        .expect("run make-media");
    assert!(
        out.status.success(),
        "make-media failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::rename(&tmp, &done).expect("publish fixtures");
    done
}
