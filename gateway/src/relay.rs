//! Frames → HTTP body. The body polls the job's socket directly: a data frame is read only
//! when hyper asks for the next chunk, so a slow client leaves frames in the kernel's socket
//! buffers and the sidecar (which writes only as fast as the socket drains) slows yt-dlp.
//! Memory per stream is one frame (≤ 256 KiB of data) plus the codec's read buffer.
//! Each chunk is the `Bytes` the codec split off its buffer: no copy.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use futures::Stream;
use streamgate_protocol::{Frame, FrameCodec, JobError, ProtocolError};
use tokio_util::codec::Encoder;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::sidecar::JobConnection;

/// Why a body stopped before its end. Yielding one makes hyper abort the response: no final
/// chunk (chunked) or a short body (Content-Length), so the client knows the file is cut.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("the job failed mid-transfer: {0}")]
    Job(JobError),
    #[error("the sidecar broke the protocol: {0}")]
    Protocol(#[from] ProtocolError),
    #[error("the sidecar connection closed after {sent} bytes without an end frame")]
    Truncated { sent: u64 },
    #[error("the sidecar reported {reported} bytes, {sent} were relayed")]
    Miscount { reported: u64, sent: u64 },
    #[error("the server is shutting down and the drain deadline has passed")]
    ShuttingDown,
}

/// The bodies still relaying: how many (drain logs, `/readyz`), and a switch that makes
/// them all abort once the drain deadline has passed.
#[derive(Clone, Debug, Default)]
pub struct ActiveStreams {
    count: Arc<AtomicUsize>,
    abort: CancellationToken,
}

impl ActiveStreams {
    pub fn get(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Cuts every running body (their jobs are cancelled as they drop).
    pub fn abort_all(&self) {
        self.abort.cancel();
    }
}

/// The body of one media response.
pub struct MediaBody {
    conn: JobConnection,
    request_id: String,
    sent: u64,
    started: Instant,
    done: bool,
    active: ActiveStreams,
    /// Behind a `Mutex` only to be `Sync` (warp wants it); reached with `get_mut`, no locking.
    aborted: Mutex<Pin<Box<WaitForCancellationFutureOwned>>>,
}

impl MediaBody {
    pub fn new(conn: JobConnection, request_id: String, active: ActiveStreams) -> Self {
        active.count.fetch_add(1, Ordering::Relaxed);
        let aborted = Mutex::new(Box::pin(active.abort.clone().cancelled_owned()));
        MediaBody {
            aborted,
            conn,
            request_id,
            sent: 0,
            started: Instant::now(),
            done: false,
            active,
        }
    }

    fn finish(&mut self, outcome: Result<(), &RelayError>) {
        self.done = true;
        let (id, bytes, secs) = (
            &self.request_id,
            self.sent,
            self.started.elapsed().as_secs_f64(),
        );
        match outcome {
            Ok(()) => tracing::info!(request_id = %id, bytes, secs, "stream complete"),
            Err(e) => tracing::warn!(request_id = %id, bytes, secs, error = %e, "stream aborted"),
        }
    }

    fn fail(&mut self, err: RelayError) -> Poll<Option<Result<Bytes, RelayError>>> {
        self.finish(Err(&err));
        Poll::Ready(Some(Err(err)))
    }
}

impl Stream for MediaBody {
    type Item = Result<Bytes, RelayError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        let aborted = this
            .aborted
            .get_mut()
            .expect("never poisoned: no panics while held");
        if aborted.as_mut().poll(cx).is_ready() {
            send_cancel(&this.conn);
            return this.fail(RelayError::ShuttingDown);
        }
        let frame = ready!(Pin::new(&mut this.conn).poll_next(cx));
        match frame {
            Some(Ok(Frame::Data(bytes))) => {
                this.sent += bytes.len() as u64;
                Poll::Ready(Some(Ok(bytes)))
            }
            Some(Ok(Frame::End { total_bytes })) if total_bytes == this.sent => {
                this.finish(Ok(()));
                Poll::Ready(None)
            }
            Some(Ok(Frame::End { total_bytes })) => this.fail(RelayError::Miscount {
                reported: total_bytes,
                sent: this.sent,
            }),
            Some(Ok(Frame::Error(e))) => this.fail(RelayError::Job(e)),
            Some(Ok(other)) => this.fail(RelayError::Protocol(ProtocolError::Unexpected {
                got: other.kind(),
                during: "relaying data",
            })),
            Some(Err(e)) => this.fail(e.into()),
            None => {
                let sent = this.sent;
                this.fail(RelayError::Truncated { sent })
            }
        }
    }
}

impl Drop for MediaBody {
    /// A body dropped before its end means the client left (or the server is shutting
    /// down): tell the sidecar to stop now. Closing the socket would do too; the explicit
    /// `cancel` is best effort, written without blocking.
    fn drop(&mut self) {
        self.active.count.fetch_sub(1, Ordering::Relaxed);
        if self.done {
            return;
        }
        send_cancel(&self.conn);
        tracing::info!(
            request_id = %self.request_id,
            bytes = self.sent,
            secs = self.started.elapsed().as_secs_f64(),
            "client left; job cancelled"
        );
    }
}

/// Ends a job whose media is not wanted (HEAD): `cancel`, then the connection closes.
pub fn cancel(conn: JobConnection) {
    send_cancel(&conn);
}

/// Writes a `cancel` frame if the socket takes it at once; closing the socket is the fallback.
fn send_cancel(conn: &JobConnection) {
    let mut buf = BytesMut::with_capacity(8);
    if FrameCodec::new().encode(Frame::Cancel, &mut buf).is_ok() {
        let _ = conn.get_ref().try_write(&buf);
    }
}
