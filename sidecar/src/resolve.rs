//! A resolve job: `yt-dlp -J`, trimmed to what a client needs to pick a format; the format
//! the client will stream is chosen in the same run, so that stream needs no yt-dlp.

use futures::SinkExt;
use serde::Deserialize;
use streamgate_protocol::{ErrorCode, FormatInfo, Frame, JobError, MediaInfo};
use tracing::{error, info};

use crate::conn::{Rx, Shared, Tx};
use crate::extract::{self, Stopped};
use crate::job::{LAST_FRAME_TIMEOUT, Outcome, fail, peer_ended};
use crate::launch;
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

/// One format of yt-dlp's info, as a resolve's table and a review's facts both read it.
#[derive(Deserialize)]
pub(crate) struct RawFormat {
    pub format_id: Option<String>,
    ext: Option<String>,
    resolution: Option<String>,
    vcodec: Option<String>,
    acodec: Option<String>,
    filesize: Option<f64>,
    filesize_approx: Option<f64>,
    protocol: Option<String>,
}

impl RawFormat {
    /// The format for the client: its size is the exact one, else yt-dlp's estimate.
    pub(crate) fn info(self) -> FormatInfo {
        FormatInfo {
            id: self.format_id.unwrap_or_default(),
            ext: self.ext,
            resolution: self.resolution,
            vcodec: self.vcodec,
            acodec: self.acodec,
            size: self
                .filesize
                .or(self.filesize_approx)
                .filter(|s| *s >= 0.0)
                .map(|s| s as u64),
            protocol: self.protocol,
        }
    }
}

/// What a resolve asks for.
pub(crate) struct Request<'a> {
    pub tenant: Option<&'a str>,
    pub url: &'a str,
    /// The selector the client will stream with: chosen in the same run and cached.
    pub format: Option<&'a str>,
}

/// Runs `-J -f FORMAT` (plain `-J` again if the selector matches no format), answers `info`
/// or `error`. The info is cached by URL, and by URL + selector when it holds the choice.
pub(crate) async fn run(
    shared: &Shared,
    job: Request<'_>,
    sandbox: &Sandbox,
    tx: &mut Tx,
    rx: &mut Rx,
) -> Outcome {
    let mut format = job.format;
    let json = loop {
        match extraction(shared, job.url, format, sandbox, rx).await {
            Ok(json) => break bytes::Bytes::from(json),
            // What the URL offers is still the answer; the stream reports its selector.
            Err(Stopped::Failed(e))
                if format.is_some() && e.code == ErrorCode::FormatUnavailable =>
            {
                info!(%e, "the stream's selector chose nothing: resolving without it");
                format = None;
            }
            Err(Stopped::Failed(e)) => return fail(tx, e, 0).await,
            Err(Stopped::Peer(ev)) => return peer_ended(ev, 0, tx).await,
        }
    };
    match serde_json::from_slice::<RawInfo>(&json) {
        Ok(mut raw) => {
            if !raw.entries.is_empty() {
                raw = raw.entries.swap_remove(0);
            }
            let info = trim(raw);
            shared.cache.put(job.tenant, job.url, json.clone());
            if let Some(format) = format {
                shared
                    .cache
                    .put(job.tenant, &extract::key(job.url, format), json);
            }
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

/// One `-J` run on a pool worker (or a spawned yt-dlp).
async fn extraction(
    shared: &Shared,
    url: &str,
    format: Option<&str>,
    sandbox: &Sandbox,
    rx: &mut Rx,
) -> Result<Vec<u8>, Stopped> {
    let args = shared.ytdlp.resolve_args(url, format, &sandbox.job_args());
    let pool = shared.pool.as_deref();
    let proc = launch::start(pool, &shared.ytdlp, args, false, None, sandbox.place())
        .await
        .map_err(|e| {
            error!("{e}");
            Stopped::Failed(JobError::new(ErrorCode::Internal, e.to_string()))
        })?;
    tracing::Span::current().record("pgid", proc.pgid());
    extract::read_json(shared, proc, sandbox, rx).await
}

fn trim(raw: RawInfo) -> MediaInfo {
    let formats = raw
        .formats
        .into_iter()
        .filter(|f| f.format_id.is_some())
        .map(RawFormat::info)
        .take(MAX_FORMATS)
        .collect();
    MediaInfo {
        title: raw.title,
        duration: raw.duration,
        thumbnail: raw.thumbnail,
        formats,
    }
}
