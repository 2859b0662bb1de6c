//! A stream yt-dlp's own downloaders move (merges, HLS, DASH, …): its stdout relayed as
//! data frames, metadata (sniffed from the first bytes) first, end or error last.

use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use streamgate_protocol::{ErrorCode, Frame, JobError, MAX_DATA_LEN, Metadata};
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tracing::{debug, info, warn};

use crate::classify::{classify, merge_refused};
use crate::conn::{Rx, Shared, Tx, client_left};
use crate::native::Want;
use crate::proc::Proc;
use crate::sandbox::Sandbox;
use crate::sniff::sniff;

/// `metadata.served_by` of this path: yt-dlp's own downloaders move the bytes.
const SERVED_BY: &str = "yt-dlp";
/// The first chunk is filled up to this much before sniffing: enough for a faststart `moov`.
pub(crate) const FIRST_CHUNK: usize = 64 * 1024;
/// How long the last frame (end or error) may wait for a client that is not reading.
pub(crate) const LAST_FRAME_TIMEOUT: Duration = Duration::from_secs(5);
/// After stdout closes, how long yt-dlp gets to exit on its own.
const EXIT_GRACE: Duration = Duration::from_secs(10);

/// How a job ended, for the log line and the connection.
#[derive(Debug)]
pub enum Outcome {
    /// `end` was sent.
    Done { bytes: u64 },
    /// `error` was sent (after `bytes` data bytes).
    Failed { code: ErrorCode, bytes: u64 },
    /// The client cancelled or went away; nothing more can be sent.
    Cancelled { bytes: u64 },
    /// The client broke the protocol mid-job.
    Protocol,
}

/// What the client did while a job was running.
pub(crate) enum Peer {
    Cancel,
    Gone,
    Broke(String),
}

/// Waits for the client to say or do anything; during a job, any of it ends the job.
pub(crate) async fn peer_event(rx: &mut Rx) -> Peer {
    match rx.next().await {
        Some(Ok(Frame::Cancel)) => Peer::Cancel,
        None => Peer::Gone,
        Some(Err(e)) if client_left(&e) => Peer::Gone,
        Some(Ok(other)) => Peer::Broke(format!(
            "unexpected frame 0x{:02x} during a job",
            other.kind()
        )),
        Some(Err(e)) => Peer::Broke(e.to_string()),
    }
}

/// The `before_dl` line: only what the metadata frame needs.
#[derive(Debug, Default, Deserialize)]
struct Info {
    title: Option<String>,
    filesize: Option<u64>,
    filesize_approx: Option<f64>,
    format_id: Option<String>,
    vcodec: Option<String>,
    protocol: Option<String>,
}

/// Runs the job until it ends; the caller closes the connection afterwards.
/// `started` is when the job frame arrived: the debug timings are relative to it. Media
/// larger than `max_filesize` ends with `too_large`, before its first byte when its size
/// is announced, else when the count passes it.
pub async fn run(
    shared: &Shared,
    mut proc: Proc,
    started: Instant,
    sandbox: &Sandbox,
    want: Want,
    tx: &mut Tx,
    rx: &mut Rx,
) -> Outcome {
    let max_filesize = want.max_filesize;
    let Some(mut stdout) = proc.stdout.take() else {
        proc.kill().await;
        return fail(
            tx,
            JobError::new(ErrorCode::Internal, "yt-dlp has no stdout"),
            0,
        )
        .await;
    };
    let stall = shared.config.stall_timeout;
    let mut total: u64 = 0;
    let mut first = true;
    loop {
        let size = if first { FIRST_CHUNK } else { MAX_DATA_LEN };
        let read = tokio::select! {
            biased;
            ev = peer_event(rx) => return stop(proc, ev, total, tx).await,
            _ = shared.kill_jobs.cancelled() => {
                proc.kill().await;
                return fail(tx, JobError::new(ErrorCode::Internal, "the sidecar is shutting down"), total).await;
            }
            r = tokio::time::timeout(stall, read_chunk(&mut stdout, size, first)) => r,
        };
        let chunk = match read {
            Err(_) => {
                proc.kill().await;
                let msg = format!("no data from yt-dlp for {} s", stall.as_secs_f64());
                return fail(tx, JobError::new(ErrorCode::Timeout, msg), total).await;
            }
            Ok(Err(e)) => {
                proc.kill().await;
                return fail(
                    tx,
                    JobError::new(ErrorCode::Internal, format!("reading yt-dlp: {e}")),
                    total,
                )
                .await;
            }
            Ok(Ok(chunk)) if chunk.is_empty() => break,
            Ok(Ok(chunk)) => chunk,
        };
        let mut frames = Vec::with_capacity(2);
        let was_first = first;
        if first {
            first = false;
            debug!(ms = ms(started), bytes = chunk.len(), "first stdout chunk");
            // Everything yt-dlp wrote to stderr before this byte is in the pipe by now.
            proc.stderr.catch_up();
            let stderr = proc.stderr.text();
            if merge_refused(&stderr) {
                proc.kill().await;
                return fail(tx, classify(&stderr, None), 0).await;
            }
            let info = match proc.meta.take() {
                Some(line) => parse_info(tokio::time::timeout(Duration::from_secs(5), line).await),
                None => Info::default(),
            };
            let announced = info.filesize.or(info.filesize_approx.map(|s| s as u64));
            if let Some(max) = max_filesize.filter(|max| announced.is_some_and(|s| s > *max)) {
                proc.kill().await;
                return fail(tx, too_large(max), 0).await;
            }
            let meta = metadata(&info, &chunk);
            info!(ext = %meta.ext, mime = %meta.mime, format = ?info.format_id, "streaming");
            if want.head {
                // What the bytes are is known from the first chunk; nothing more is sent.
                proc.kill().await;
                let _ =
                    tokio::time::timeout(LAST_FRAME_TIMEOUT, tx.send(Frame::Metadata(meta))).await;
                let end = Frame::End { total_bytes: 0 };
                let _ = tokio::time::timeout(LAST_FRAME_TIMEOUT, tx.send(end)).await;
                return Outcome::Done { bytes: 0 };
            }
            frames.push(Frame::Metadata(meta));
        }
        total += chunk.len() as u64;
        if let Some(max) = max_filesize.filter(|max| total > *max) {
            proc.kill().await;
            return fail(tx, too_large(max), total - chunk.len() as u64).await;
        }
        frames.push(Frame::Data(chunk.freeze()));
        for frame in frames {
            // `send` flushes: no further read from yt-dlp until the socket took this chunk.
            // yt-dlp keeps writing meanwhile, up to its 1 MiB stdout pipe (`proc::job_pipes`).
            tokio::select! {
                biased;
                ev = peer_event(rx) => return stop(proc, ev, total, tx).await,
                _ = shared.kill_jobs.cancelled() => {
                    proc.kill().await;
                    return Outcome::Cancelled { bytes: total };
                }
                sent = tx.send(frame) => if sent.is_err() {
                    proc.kill().await;
                    return Outcome::Cancelled { bytes: total };
                },
            }
        }
        if was_first {
            debug!(ms = ms(started), "metadata and first data sent");
        }
    }
    finish(proc, total, sandbox, tx, rx).await
}

fn too_large(max: u64) -> JobError {
    JobError::new(
        ErrorCode::TooLarge,
        format!("the media is larger than {max} bytes"),
    )
}

/// stdout is closed: the exit status and stderr decide between `end` and `error`.
async fn finish(
    mut proc: Proc,
    total: u64,
    sandbox: &Sandbox,
    tx: &mut Tx,
    rx: &mut Rx,
) -> Outcome {
    let stderr = proc.stderr.clone();
    let status = tokio::select! {
        biased;
        ev = peer_event(rx) => Err(ev),
        status = proc.wait(EXIT_GRACE) => Ok(status),
    };
    let status = match status {
        Ok(status) => status,
        Err(ev) => return stop(proc, ev, total, tx).await,
    };
    stderr.catch_up();
    let text = stderr.text();
    debug!(stderr = %text.trim(), ?status, "yt-dlp exited");
    match status {
        Some(s) if s.success() && total > 0 && !merge_refused(&text) => {
            let _ = tokio::time::timeout(
                LAST_FRAME_TIMEOUT,
                tx.send(Frame::End { total_bytes: total }),
            )
            .await;
            Outcome::Done { bytes: total }
        }
        Some(s) if s.success() => {
            let err = if merge_refused(&text) {
                classify(&text, status)
            } else {
                JobError::new(
                    ErrorCode::UpstreamFailed,
                    "yt-dlp finished without sending any data",
                )
            };
            fail(tx, sandbox.explain(err), total).await
        }
        _ => fail(tx, sandbox.explain(classify(&text, status)), total).await,
    }
}

/// Milliseconds since `t`, for the debug timings.
pub(crate) fn ms(t: Instant) -> f64 {
    (t.elapsed().as_secs_f64() * 1e4).round() / 10.0
}

/// Fills the first chunk (for sniffing) or reads what is there now (up to `want`).
async fn read_chunk(
    stdout: &mut pipe::Receiver,
    want: usize,
    fill: bool,
) -> std::io::Result<BytesMut> {
    let mut buf = BytesMut::with_capacity(want);
    while buf.len() < want {
        let n = stdout.read_buf(&mut (&mut buf).limit(want)).await?;
        if n == 0 || !fill {
            break;
        }
    }
    Ok(buf)
}

fn parse_info<E>(line: Result<Result<Option<Vec<u8>>, E>, tokio::time::error::Elapsed>) -> Info {
    match line {
        Ok(Ok(Some(line))) => serde_json::from_slice(&line).unwrap_or_else(|e| {
            warn!("unreadable before_dl line: {e}");
            Info::default()
        }),
        _ => {
            warn!("yt-dlp printed no before_dl line");
            Info::default()
        }
    }
}

fn metadata(info: &Info, head: &[u8]) -> Metadata {
    let audio_only = info.vcodec.as_deref() == Some("none");
    let sniffed = sniff(head, audio_only);
    let stem = info
        .title
        .as_deref()
        .map(clean_title)
        .filter(|t| !t.is_empty());
    // Exact size only for a single progressive download, where yt-dlp relays bytes as-is.
    let single_http = matches!(info.protocol.as_deref(), Some("http" | "https"))
        && !info.format_id.as_deref().unwrap_or("+").contains('+');
    Metadata {
        filename: format!("{}.{}", stem.as_deref().unwrap_or("media"), sniffed.ext),
        ext: sniffed.ext.to_owned(),
        mime: sniffed.mime.to_owned(),
        size: info.filesize.filter(|_| single_http),
        title: info.title.clone(),
        range: None,
        served_by: SERVED_BY.to_owned(),
    }
}

/// A title made safe as a file name stem: no path separators, no control characters.
pub(crate) fn clean_title(title: &str) -> String {
    let cleaned: String = title
        .chars()
        .map(|c| {
            if c == '/' || c == '\\' || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect();
    cleaned.trim().chars().take(200).collect()
}

pub(crate) async fn stop(mut proc: Proc, ev: Peer, total: u64, tx: &mut Tx) -> Outcome {
    proc.kill().await;
    peer_ended(ev, total, tx).await
}

/// The client cancelled, left or broke the protocol: how the job ends.
pub(crate) async fn peer_ended(ev: Peer, total: u64, tx: &mut Tx) -> Outcome {
    match ev {
        Peer::Cancel | Peer::Gone => Outcome::Cancelled { bytes: total },
        Peer::Broke(reason) => {
            warn!(%reason, "protocol error during a job");
            let error = Frame::Error(JobError::new(ErrorCode::Protocol, reason));
            let _ = tokio::time::timeout(LAST_FRAME_TIMEOUT, tx.send(error)).await;
            Outcome::Protocol
        }
    }
}

pub(crate) async fn fail(tx: &mut Tx, err: JobError, bytes: u64) -> Outcome {
    let code = err.code;
    debug!(%code, message = %err.message, bytes, "sending error");
    // A client that stopped reading must not pin the job (and a drain) forever.
    let _ = tokio::time::timeout(LAST_FRAME_TIMEOUT, tx.send(Frame::Error(err))).await;
    Outcome::Failed { code, bytes }
}
