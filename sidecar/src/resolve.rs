//! A resolve job: `yt-dlp -J`, trimmed to what a client needs to pick a format.

use std::time::Duration;

use futures::SinkExt;
use serde::Deserialize;
use streamgate_protocol::{ErrorCode, FormatInfo, Frame, JobError, MediaInfo};
use tokio::io::AsyncReadExt;
use tracing::info;

use crate::classify::classify;
use crate::job::{LAST_FRAME_TIMEOUT, Outcome, fail, peer_event, stop};
use crate::proc::Proc;
use crate::sandbox::Sandbox;
use crate::server::{Rx, Shared, Tx};

/// `-J` of a big site can be several MB; more than this is refused rather than buffered.
const MAX_INFO_JSON: u64 = 32 * 1024 * 1024;
/// Keeps the info frame well under the 1 MiB frame limit.
const MAX_FORMATS: usize = 1000;

#[derive(Deserialize)]
struct RawInfo {
    title: Option<String>,
    duration: Option<f64>,
    thumbnail: Option<String>,
    #[serde(default)]
    formats: Vec<RawFormat>,
    /// A page with several videos: `--playlist-items 1` keeps the first, described here.
    #[serde(default)]
    entries: Vec<RawInfo>,
}

#[derive(Deserialize)]
struct RawFormat {
    format_id: Option<String>,
    ext: Option<String>,
    resolution: Option<String>,
    vcodec: Option<String>,
    acodec: Option<String>,
    filesize: Option<f64>,
    filesize_approx: Option<f64>,
    protocol: Option<String>,
}

/// Runs `-J`, answers `info` or `error`.
pub async fn run(
    shared: &Shared,
    mut proc: Proc,
    key: (Option<&str>, &str),
    sandbox: &Sandbox,
    tx: &mut Tx,
    rx: &mut Rx,
) -> Outcome {
    let Some(stdout) = proc.stdout.take() else {
        proc.kill().await;
        return fail(
            tx,
            JobError::new(ErrorCode::Internal, "yt-dlp has no stdout"),
            0,
        )
        .await;
    };
    let mut json = Vec::new();
    let mut limited = stdout.take(MAX_INFO_JSON + 1);
    let timeout = shared.config.stall_timeout;
    let read = tokio::select! {
        biased;
        ev = peer_event(rx) => return stop(proc, ev, 0, tx).await,
        _ = shared.kill_jobs.cancelled() => {
            proc.kill().await;
            return fail(tx, JobError::new(ErrorCode::Internal, "the sidecar is shutting down"), 0).await;
        }
        r = tokio::time::timeout(timeout, limited.read_to_end(&mut json)) => r,
    };
    let stderr = proc.stderr.clone();
    match read {
        Err(_) => {
            proc.kill().await;
            let msg = format!("extraction took over {} s", timeout.as_secs_f64());
            return fail(tx, JobError::new(ErrorCode::Timeout, msg), 0).await;
        }
        Ok(Ok(n)) if n as u64 > MAX_INFO_JSON => {
            proc.kill().await;
            return fail(
                tx,
                JobError::new(ErrorCode::Internal, "yt-dlp's info JSON is too large"),
                0,
            )
            .await;
        }
        Ok(Err(e)) => {
            proc.kill().await;
            return fail(
                tx,
                JobError::new(ErrorCode::Internal, format!("reading yt-dlp: {e}")),
                0,
            )
            .await;
        }
        Ok(Ok(_)) => {}
    }
    let status = proc.wait(Duration::from_secs(10)).await;
    stderr.catch_up();
    if !status.is_some_and(|s| s.success()) {
        return fail(tx, sandbox.explain(classify(&stderr.text(), status)), 0).await;
    }
    match serde_json::from_slice::<RawInfo>(&json) {
        Ok(mut raw) => {
            if !raw.entries.is_empty() {
                raw = raw.entries.swap_remove(0);
            }
            let info = trim(raw);
            shared.cache.put(key.0, key.1, json.into());
            info!(formats = info.formats.len(), "resolved");
            let _ = tokio::time::timeout(LAST_FRAME_TIMEOUT, tx.send(Frame::Info(info))).await;
            Outcome::Done { bytes: 0 }
        }
        Err(e) => {
            fail(
                tx,
                JobError::new(ErrorCode::Internal, format!("yt-dlp's info JSON: {e}")),
                0,
            )
            .await
        }
    }
}

fn trim(raw: RawInfo) -> MediaInfo {
    let formats = raw
        .formats
        .into_iter()
        .filter_map(|f| {
            Some(FormatInfo {
                id: f.format_id?,
                ext: f.ext,
                resolution: f.resolution,
                vcodec: f.vcodec,
                acodec: f.acodec,
                size: f
                    .filesize
                    .or(f.filesize_approx)
                    .filter(|s| *s >= 0.0)
                    .map(|s| s as u64),
                protocol: f.protocol,
            })
        })
        .take(MAX_FORMATS)
        .collect();
    MediaInfo {
        title: raw.title,
        duration: raw.duration,
        thumbnail: raw.thumbnail,
        formats,
    }
}
