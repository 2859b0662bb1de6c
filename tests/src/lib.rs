//! The shared end-to-end harness: real binaries, real yt-dlp and ffmpeg, fixtures generated
//! by `tests/fixtures/make-media` and served on 127.0.0.1 by the tests themselves.
//!
//! - [`paths`]: the repo root, the release binaries, the venv's yt-dlp.
//! - [`config`]: config files of test gateways: `[[tenant]]` blocks, the file, minted links.
//! - [`fixtures`]: generated once per fixture-script version into `target/test-fixtures/`.
//! - [`http`]: a loopback static file server (Range, 404s, a stalling route).
//! - [`process`]: child processes killed on drop, live processes under a pid from `/proc`.
//! - [`sidecar`]: a running `streamgate-sidecar` on a temp socket.
//! - [`client`]: the protocol's client side: handshake, one job, every frame recorded.
//! - [`origin`]: a loopback origin for one file that holds, stalls or drops on the test's cue.
//! - [`redis`]: a throwaway `redis-server`, and the two-tenant configs of the limit tests.
//! - [`watch`]: an inotify watch proving a directory was never written to.
//! - [`netns`]: a test re-run in a network namespace of its own, with a "public" TEST-NET
//!   origin and a hosts file (the egress tests).

#![deny(missing_docs)]

pub mod client;
pub mod config;
pub mod fixtures;
pub mod gateway;
pub mod http;
pub mod netns;
pub mod origin;
pub mod paths;
pub mod process;
pub mod redis;
pub mod sidecar;
pub mod watch;

use std::time::{Duration, Instant};

pub use client::{Client, Transcript, loopback_egress, noise, send_raw};
pub use fixtures::{fixtures, large_fixture};
pub use http::{FixtureServer, Page, large_url, server};
pub use paths::{release_bin, repo_root, yt_dlp};
pub use process::{ChildGuard, ProcInfo, descendants};
pub use sidecar::{Sidecar, SidecarOptions};
pub use watch::DirWatch;

/// Generous bound for anything that should finish (a whole download on a loaded 2-core box).
pub const SLOW: Duration = Duration::from_secs(180);

/// Polls `cond` every 20 ms until it holds or `limit` passes; returns whether it held.
/// For conditions that cannot be awaited directly (process exits seen in `/proc`, files).
pub async fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Lower-case hex SHA-256 of a file's contents.
pub fn sha256_file(path: &std::path::Path) -> std::io::Result<String> {
    Ok(sha256_hex(&std::fs::read(path)?))
}

/// Runs the venv's yt-dlp directly, `-o -` to a pipe, in a throwaway directory: the
/// reference the sidecar's bytes are compared with. `extra` goes before `-o`. Panics if
/// yt-dlp fails.
pub fn direct_ytdlp(url: &str, format: &str, extra: &[&str]) -> Vec<u8> {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = std::process::Command::new(yt_dlp())
        .args([
            "--ignore-config",
            "--no-cache-dir",
            "--no-part",
            "-q",
            "--no-progress",
        ])
        .args(extra)
        .args(["-o", "-", "-f", format, "--", url])
        .current_dir(dir.path())
        .env("HOME", dir.path())
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run yt-dlp");
    assert!(
        out.status.success(),
        "direct yt-dlp failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// ffprobe's stream types (`video`, `audio`, …) of a media file, in order.
pub fn ffprobe_streams(path: &std::path::Path) -> Vec<String> {
    // JSON, not CSV: CSV lists an MPEG-TS program's streams a second time.
    let out = std::process::Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-show_entries",
            "stream=codec_type",
            "-of",
            "json",
        ])
        .arg(path)
        .output()
        .expect("run ffprobe");
    assert!(
        out.status.success(),
        "ffprobe: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ffprobe JSON");
    json["streams"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["codec_type"].as_str().map(str::to_owned))
        .collect()
}

/// Runs blocking test code (curl, child processes) off the async runtime's threads.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking task")
}
