//! A resolve job: `yt-dlp -J`, trimmed to what a client needs to pick a format.

use futures::SinkExt;
use serde::Deserialize;
use streamgate_protocol::{ErrorCode, FormatInfo, Frame, JobError, MediaInfo};
use tracing::info;

use crate::conn::{Rx, Shared, Tx};
use crate::extract::{self, Stopped};
use crate::job::{LAST_FRAME_TIMEOUT, Outcome, fail, peer_ended};
use crate::proc::Proc;
use crate::sandbox::Sandbox;

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
    proc: Proc,
    key: (Option<&str>, &str),
    sandbox: &Sandbox,
    tx: &mut Tx,
    rx: &mut Rx,
) -> Outcome {
    let json = match extract::read_json(shared, proc, sandbox, rx).await {
        Ok(json) => json,
        Err(Stopped::Failed(e)) => return fail(tx, e, 0).await,
        Err(Stopped::Peer(ev)) => return peer_ended(ev, 0, tx).await,
    };
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
