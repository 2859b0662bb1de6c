//! A stream the sidecar moves itself, through the job's egress, with no yt-dlp process
//! alive while it streams. Two sources feed one relay: a single http(s) file (fetched in
//! ranged chunks, with its exact size, one byte range when asked) and an HLS media
//! playlist (`m3u8_native`: segments in order, no size, no ranges). A HEAD answers with
//! the metadata alone.

use std::pin::Pin;

use bytes::{Bytes, BytesMut};
use futures::{SinkExt, Stream, StreamExt};
use streamgate_protocol::{ByteRange, ErrorCode, Frame, JobError, MAX_DATA_LEN, Metadata};
use tracing::info;
use url::Url;

use crate::conn::{Rx, Shared, Tx};
use crate::extract::{Format, Selection};
use crate::fetch::progressive::{Opened, Progressive};
use crate::fetch::{FetchError, Fetcher, dash, hls};
use crate::job::{
    FIRST_CHUNK, LAST_FRAME_TIMEOUT, Outcome, clean_title, fail, peer_ended, peer_event,
};
use crate::mux;
use crate::sandbox::Sandbox;
use crate::sniff::{Sniffed, by_ext, sniff};

/// `metadata.served_by` of this path.
pub(crate) const SERVED_BY: &str = "native";

/// What the client asked of the bytes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Want {
    pub range: Option<ByteRange>,
    pub head: bool,
    pub max_filesize: Option<u64>,
    /// Send the extraction's facts and open nothing before the client's `proceed`.
    pub review: bool,
}

type Body = Pin<Box<dyn Stream<Item = Result<Bytes, FetchError>> + Send>>;

/// An opened source: what it knows before its first byte, and its bytes.
struct Source {
    /// `metadata.size`: the exact byte count, when known before the transfer.
    size: Option<u64>,
    /// `metadata.range`: the inclusive span sent, when a range was asked for and honoured.
    span: Option<(u64, u64)>,
    container: Container,
    body: Body,
}

/// How the metadata learns what the bytes are.
enum Container {
    /// A file sent as stored, by its extension (a range from its middle has no magic bytes).
    Stored(Sniffed),
    /// Sniffed from the first bytes; `audio_only` is yt-dlp's hint where they cannot tell.
    Sniff { audio_only: bool },
}

/// A HEAD's answer: what a GET would say, no media fetched.
struct Head {
    size: Option<u64>,
    container: Sniffed,
}

/// Streams what `selection` chose: one format (a single http(s) file, DASH fragments or an
/// HLS media playlist), or several merged by ffmpeg through pipes. A failure before the
/// first byte comes back as the fetch error, so the caller can extract again (an expired
/// URL), or hand what the native path does not take ([`FetchError::Unsupported`]) to
/// yt-dlp.
pub(crate) async fn run(
    shared: &Shared,
    sandbox: &Sandbox,
    selection: &Selection,
    want: Want,
    tx: &mut Tx,
    rx: &mut Rx,
) -> Result<Outcome, FetchError> {
    let stall = shared.config.stall_timeout;
    let meta = Metadata {
        title: selection.title.clone(),
        served_by: SERVED_BY.to_owned(),
        ..Metadata::default()
    };
    let source = match selection.formats.as_slice() {
        [format] => match single(sandbox, format, want, stall).await? {
            Opening::Source(source) => source,
            Opening::Head(head) => return Ok(answer_head(meta, head, want, tx).await),
        },
        formats => {
            let exts: Vec<&str> = formats
                .iter()
                .map(|f| f.ext.as_deref().unwrap_or(""))
                .collect();
            let args = mux::container(&exts);
            if want.head {
                let head = Head {
                    size: None,
                    container: by_ext(mux::extension(args), false),
                };
                return Ok(answer_head(meta, head, want, tx).await);
            }
            let mut bodies = Vec::with_capacity(formats.len());
            for format in formats {
                bodies.push(body(sandbox, format, stall).await?);
            }
            let ffmpeg = mux::ffmpeg(shared.config.ffmpeg.as_deref());
            let merged = mux::merge(&ffmpeg, bodies, args, sandbox.place())
                .map_err(|e| FetchError::Http(format!("starting ffmpeg: {e}")))?;
            info!(inputs = formats.len(), "merging through pipes");
            Source {
                size: None,
                span: None,
                container: Container::Sniff { audio_only: false },
                body: Box::pin(merged),
            }
        }
    };
    relay(shared, sandbox, meta, source, want, tx, rx).await
}

/// What opening one format gave: its bytes, or (HEAD) what they would be.
enum Opening {
    Source(Source),
    Head(Head),
}

/// The fetcher of a format: its URL's headers and cookies, through the job's egress.
fn fetcher(sandbox: &Sandbox, format: &Format) -> Fetcher {
    let headers = format
        .http_headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()));
    Fetcher::new(sandbox.egress(), headers, format.cookies.as_deref())
}

fn format_url(format: &Format) -> Result<Url, FetchError> {
    let url = format.url.as_deref().unwrap_or_default();
    Url::parse(url).map_err(|e| FetchError::Http(format!("format URL: {e}")))
}

/// One format on its own: a single file keeps its size and serves ranges.
async fn single(
    sandbox: &Sandbox,
    format: &Format,
    want: Want,
    stall: std::time::Duration,
) -> Result<Opening, FetchError> {
    let audio_only = format.vcodec.as_deref() == Some("none");
    match format.protocol.as_deref() {
        Some("http" | "https") => {
            let source = Progressive::new(
                fetcher(sandbox, format),
                format_url(format)?,
                format.downloader_options.http_chunk_size,
                stall,
            );
            let container = file_container(format, audio_only);
            if want.head {
                let size = source.size().await?.or(format.filesize);
                return Ok(Opening::Head(Head { size, container }));
            }
            let (Opened { size, span }, body) = source.open(want.range).await?;
            Ok(Opening::Source(Source {
                size,
                span,
                container: Container::Stored(container),
                body: Box::pin(body),
            }))
        }
        Some("m3u8_native") if want.head => {
            if let Some(why) = format.hls.refusal() {
                return Err(FetchError::Unsupported(why.into()));
            }
            let playlist =
                hls::playlist(&fetcher(sandbox, format), &format_url(format)?, stall).await?;
            let container = playlist.container(audio_only);
            Ok(Opening::Head(Head {
                size: None,
                container,
            }))
        }
        Some("http_dash_segments") if want.head => {
            let container = file_container(format, audio_only);
            Ok(Opening::Head(Head {
                size: None,
                container,
            }))
        }
        _ => Ok(Opening::Source(Source {
            size: None,
            span: None,
            container: Container::Sniff { audio_only },
            body: body(sandbox, format, stall).await?,
        })),
    }
}

/// A format's bytes from its start, whatever its protocol: a merge's input, or a
/// segmented format sent whole.
async fn body(
    sandbox: &Sandbox,
    format: &Format,
    stall: std::time::Duration,
) -> Result<Body, FetchError> {
    let fetcher = fetcher(sandbox, format);
    match format.protocol.as_deref() {
        Some("http" | "https") => {
            let source = Progressive::new(
                fetcher,
                format_url(format)?,
                format.downloader_options.http_chunk_size,
                stall,
            );
            let (_, body) = source.open(None).await?;
            Ok(Box::pin(body))
        }
        Some("http_dash_segments") => {
            let plan = dash::plan(format.fragment_base_url.as_deref(), &format.fragments)
                .map_err(FetchError::Unsupported)?;
            info!(fragments = plan.len(), "DASH fragments");
            Ok(Box::pin(dash::stream(fetcher, plan, stall)))
        }
        Some("m3u8_native") => {
            if let Some(why) = format.hls.refusal() {
                return Err(FetchError::Unsupported(why.into()));
            }
            let playlist = hls::playlist(&fetcher, &format_url(format)?, stall).await?;
            info!(segments = playlist.segments(), "HLS playlist fetched");
            Ok(Box::pin(hls::fetch(playlist, fetcher, stall)))
        }
        other => Err(FetchError::Unsupported(format!("protocol {other:?}"))),
    }
}

/// A HEAD: the metadata a GET would start with, no media fetched.
async fn answer_head(mut meta: Metadata, head: Head, want: Want, tx: &mut Tx) -> Outcome {
    if let Some(e) = too_large(head.size, want.max_filesize) {
        return fail(tx, e, 0).await;
    }
    describe(&mut meta, &head.container);
    meta.size = head.size;
    info!(size = ?meta.size, ext = %meta.ext, "head answered without media");
    send_last(tx, Frame::Metadata(meta)).await;
    send_last(tx, Frame::End { total_bytes: 0 }).await;
    Outcome::Done { bytes: 0 }
}

/// A single file's container, by its extension: it is sent exactly as stored.
fn file_container(format: &Format, audio_only: bool) -> Sniffed {
    by_ext(format.ext.as_deref().unwrap_or_default(), audio_only)
}

/// Fills the metadata's file name (from its title) and type.
fn describe(meta: &mut Metadata, container: &Sniffed) {
    let stem = meta
        .title
        .as_deref()
        .map(clean_title)
        .filter(|t| !t.is_empty());
    meta.filename = format!("{}.{}", stem.as_deref().unwrap_or("media"), container.ext);
    meta.ext = container.ext.to_owned();
    meta.mime = container.mime.to_owned();
}

/// Sends the metadata, then the source's bytes as the socket takes them, then `end`. The
/// metadata waits for the first bytes when the container is sniffed from them; until it
/// is sent, a failure is the caller's to report.
async fn relay(
    shared: &Shared,
    sandbox: &Sandbox,
    mut meta: Metadata,
    source: Source,
    want: Want,
    tx: &mut Tx,
    rx: &mut Rx,
) -> Result<Outcome, FetchError> {
    if let Some(e) = too_large(source.size, want.max_filesize) {
        return Ok(fail(tx, e, 0).await);
    }
    meta.size = source.size;
    meta.range = source.span;
    let expected = match (source.span, source.size) {
        (Some((start, end)), _) => Some(end - start + 1),
        (None, size) => size,
    };
    // The metadata not yet sent (with the sniffing hint), and the first bytes it waits for.
    let mut pending = None;
    let mut first = BytesMut::new();
    match source.container {
        Container::Stored(container) => {
            describe(&mut meta, &container);
            info!(ext = %meta.ext, size = ?meta.size, range = ?meta.range, "streaming natively");
            if !send(tx, rx, Frame::Metadata(meta)).await {
                return Ok(Outcome::Cancelled { bytes: 0 });
            }
        }
        Container::Sniff { audio_only } => pending = Some((meta, audio_only)),
    }
    // Each chunk goes out as it came, without a copy: a stalled client holds one chunk
    // (at most the fetcher's read buffer) here, not a batch.
    let mut body = source.body;
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
        let ended = next.is_none();
        let (mut data, broke) = match next {
            Some(Ok(bytes)) => (bytes, None),
            Some(Err(e)) => (Bytes::new(), Some(e)),
            None => (Bytes::new(), None),
        };
        if let Some((mut meta, audio_only)) = pending.take() {
            first.extend_from_slice(&data);
            if let Some(e) = broke {
                return Err(e);
            }
            if first.len() < FIRST_CHUNK && !ended {
                pending = Some((meta, audio_only));
                continue;
            }
            if first.is_empty() {
                return Err(FetchError::Http("no media bytes".into()));
            }
            describe(&mut meta, &sniff(&first, audio_only));
            info!(ext = %meta.ext, mime = %meta.mime, "streaming natively");
            if !send(tx, rx, Frame::Metadata(meta)).await {
                return Ok(Outcome::Cancelled { bytes: 0 });
            }
            data = std::mem::take(&mut first).freeze();
        }
        if let Some(max) = want.max_filesize.filter(|m| total + data.len() as u64 > *m) {
            return Ok(fail(tx, over(max), total).await);
        }
        if !flush(tx, rx, data, &mut total).await {
            return Ok(Outcome::Cancelled { bytes: total });
        }
        if let Some(e) = broke {
            return Ok(fail(tx, sandbox.explain(job_error(&e)), total).await);
        }
        // All that was announced is out: `end` goes now, before the client, which has what
        // it asked for, may close.
        if ended || expected == Some(total) {
            break;
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
async fn flush(tx: &mut Tx, rx: &mut Rx, mut data: Bytes, total: &mut u64) -> bool {
    while !data.is_empty() {
        let piece = data.split_to(data.len().min(MAX_DATA_LEN));
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
    if let FetchError::Confined(limit) = e {
        return limit.clone();
    }
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
