//! A stream the sidecar moves itself: a single-file http(s) format, fetched in ranged
//! chunks through the job's egress and relayed with its exact size, one byte range when
//! asked, or only its metadata (HEAD). No yt-dlp process lives while it streams.

use bytes::BytesMut;
use futures::{SinkExt, StreamExt};
use streamgate_protocol::{ByteRange, ErrorCode, Frame, JobError, MAX_DATA_LEN, Metadata};
use tracing::info;
use url::Url;

use crate::extract::{Format, Selection};
use crate::fetch::progressive::{Opened, Progressive};
use crate::fetch::{FetchError, Fetcher};
use crate::job::{LAST_FRAME_TIMEOUT, Outcome, clean_title, fail, peer_ended, peer_event};
use crate::sandbox::Sandbox;
use crate::server::{Rx, Shared, Tx};
use crate::sniff::by_ext;

/// `metadata.served_by` of this path.
pub(crate) const SERVED_BY: &str = "native";

/// What the client asked of the bytes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Want {
    pub range: Option<ByteRange>,
    pub head: bool,
    pub max_filesize: Option<u64>,
}

/// Streams `format` (a single http(s) file of `selection`). A failure before the first
/// byte comes back as the fetch error, so the caller can extract again (an expired URL).
pub(crate) async fn run(
    shared: &Shared,
    sandbox: &Sandbox,
    selection: &Selection,
    format: &Format,
    want: Want,
    tx: &mut Tx,
    rx: &mut Rx,
) -> Result<Outcome, FetchError> {
    let url = format.url.as_deref().unwrap_or_default();
    let url = Url::parse(url).map_err(|e| FetchError::Http(format!("format URL: {e}")))?;
    let headers = format
        .http_headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()));
    let fetcher = Fetcher::new(sandbox.egress(), headers, format.cookies.as_deref());
    let chunk = format.downloader_options.http_chunk_size;
    let source = Progressive::new(fetcher, url, chunk, shared.config.stall_timeout);
    let audio_only = format.vcodec.as_deref() == Some("none");
    let sniffed = by_ext(format.ext.as_deref().unwrap_or_default(), audio_only);
    let stem = selection
        .title
        .as_deref()
        .map(clean_title)
        .filter(|t| !t.is_empty());
    let mut meta = Metadata {
        filename: format!("{}.{}", stem.as_deref().unwrap_or("media"), sniffed.ext),
        ext: sniffed.ext.to_owned(),
        mime: sniffed.mime.to_owned(),
        title: selection.title.clone(),
        served_by: SERVED_BY.to_owned(),
        ..Metadata::default()
    };
    if want.head {
        meta.size = source.size().await?.or(format.filesize);
        if let Some(e) = too_large(meta.size, want.max_filesize) {
            return Ok(fail(tx, e, 0).await);
        }
        info!(size = ?meta.size, "head answered from the extraction and a HEAD request");
        send_last(tx, Frame::Metadata(meta)).await;
        send_last(tx, Frame::End { total_bytes: 0 }).await;
        return Ok(Outcome::Done { bytes: 0 });
    }
    let (Opened { size, span }, body) = source.open(want.range).await?;
    if let Some(e) = too_large(size, want.max_filesize) {
        return Ok(fail(tx, e, 0).await);
    }
    meta.size = size;
    meta.range = span;
    let expected = match (span, size) {
        (Some((start, end)), _) => Some(end - start + 1),
        (None, size) => size,
    };
    info!(ext = %meta.ext, size = ?size, range = ?span, "streaming natively");
    if !send(tx, rx, Frame::Metadata(meta)).await {
        return Ok(Outcome::Cancelled { bytes: 0 });
    }
    // What is already there goes out as one frame: fewer, fuller frames.
    let mut body = std::pin::pin!(body.ready_chunks(64));
    let mut total: u64 = 0;
    loop {
        let next = tokio::select! {
            biased;
            ev = peer_event(rx) => return Ok(peer_ended(ev, total, tx).await),
            _ = shared.kill_jobs.cancelled() => {
                let e = JobError::new(ErrorCode::Internal, "the sidecar is shutting down");
                return Ok(fail(tx, e, total).await);
            }
            next = body.next() => next,
        };
        let Some(batch) = next else { break };
        let mut data = BytesMut::new();
        for item in batch {
            match item {
                Ok(bytes) => data.extend_from_slice(&bytes),
                Err(e) => {
                    let _ = flush(tx, rx, data, &mut total).await;
                    return Ok(fail(tx, sandbox.explain(job_error(&e)), total).await);
                }
            }
        }
        if let Some(max) = want.max_filesize.filter(|m| total + data.len() as u64 > *m) {
            return Ok(fail(tx, over(max), total).await);
        }
        if !flush(tx, rx, data, &mut total).await {
            return Ok(Outcome::Cancelled { bytes: total });
        }
    }
    if expected.is_some_and(|n| n != total) {
        let e = JobError::new(
            ErrorCode::UpstreamFailed,
            format!("the origin sent {total} of {expected:?} bytes"),
        );
        return Ok(fail(tx, e, total).await);
    }
    send_last(tx, Frame::End { total_bytes: total }).await;
    Ok(Outcome::Done { bytes: total })
}

/// Sends `data` as frames of at most `MAX_DATA_LEN`; false when the client is gone.
async fn flush(tx: &mut Tx, rx: &mut Rx, mut data: BytesMut, total: &mut u64) -> bool {
    while !data.is_empty() {
        let piece = data.split_to(data.len().min(MAX_DATA_LEN)).freeze();
        let len = piece.len() as u64;
        if !send(tx, rx, Frame::Data(piece)).await {
            return false;
        }
        *total += len;
    }
    true
}

/// `send` flushes: the next upstream read waits until the socket took this frame, so a
/// slow client slows the fetch (backpressure through the TCP window).
async fn send(tx: &mut Tx, rx: &mut Rx, frame: Frame) -> bool {
    tokio::select! {
        biased;
        _ = peer_event(rx) => false,
        sent = tx.send(frame) => sent.is_ok(),
    }
}

async fn send_last(tx: &mut Tx, frame: Frame) {
    let _ = tokio::time::timeout(LAST_FRAME_TIMEOUT, tx.send(frame)).await;
}

fn too_large(size: Option<u64>, max: Option<u64>) -> Option<JobError> {
    let max = max?;
    (size? > max).then(|| over(max))
}

fn over(max: u64) -> JobError {
    JobError::new(
        ErrorCode::TooLarge,
        format!("the media is larger than {max} bytes"),
    )
}

/// A fetch failure as the client is told it.
pub(crate) fn job_error(e: &FetchError) -> JobError {
    let code = match e {
        FetchError::Egress(crate::egress::EgressError::Denied(_)) => ErrorCode::EgressDenied,
        FetchError::Status(s) if s.as_u16() == 404 || s.as_u16() == 410 => ErrorCode::NotFound,
        FetchError::Stalled(_) => ErrorCode::Timeout,
        FetchError::Unsatisfiable { .. } => ErrorCode::RangeNotSatisfiable,
        _ => ErrorCode::UpstreamFailed,
    };
    let mut err = JobError::new(code, e.to_string());
    if let FetchError::Unsatisfiable { size } = e {
        err.size = *size;
    }
    err
}
