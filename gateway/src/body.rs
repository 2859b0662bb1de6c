//! The body of one media response, and everything a running stream holds: the job's
//! connection, the tenant's limiter slot, the drain guard and its metrics recorder. All of
//! them are released when the body drops, however the stream ends (complete, failed, client
//! gone, cut by the drain) — tower's concurrency limit, where the response owns its permit.
//!
//! The body polls the job's socket directly: data is read only when hyper asks for the next
//! chunk, so a slow client leaves frames in the kernel's socket buffers and the sidecar
//! (which writes only as fast as the socket drains) slows yt-dlp. Once the metadata is in,
//! the connection's codec switches to [`FrameCodec::streaming_data`]: data payloads come out
//! in pieces of at most [`CHUNK`] bytes as they arrive, never buffered as whole frames, so a
//! stalled stream holds hyper's capped write queue (`server::HTTP1_MAX_BUF`) plus one read
//! buffer, whatever frame size the sidecar uses. Each chunk is the `Bytes` the codec split
//! off its buffer: no copy.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures::Stream;
use streamgate_protocol::{Frame, FrameCodec, JobError, ProtocolError};
use tokio::time::Sleep;
use tokio_util::codec::Encoder;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::limits::StreamSlot;
use crate::metrics::StreamRecorder;
use crate::sidecar::{CHUNK, JobConnection};

/// Why a body stopped before its end. Yielding one makes hyper abort the response: no final
/// chunk (chunked) or a short body (Content-Length), so the client knows the file is cut.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The sidecar sent an error frame after data.
    #[error("the job failed mid-transfer: {0}")]
    Job(JobError),
    /// A frame that breaks docs/protocol.md.
    #[error("the sidecar broke the protocol: {0}")]
    Protocol(#[from] ProtocolError),
    /// The connection closed without an `end` frame.
    #[error("the sidecar connection closed after {sent} bytes without an end frame")]
    Truncated {
        /// Bytes relayed before.
        sent: u64,
    },
    /// `end` counted other bytes than were relayed.
    #[error("the sidecar reported {reported} bytes, {sent} were relayed")]
    Miscount {
        /// The `end` frame's count.
        reported: u64,
        /// Bytes relayed.
        sent: u64,
    },
    /// The response declared a `Content-Length`: the body may carry neither less nor more.
    #[error("the response declared {declared} bytes, the sidecar sent {sent}")]
    Length {
        /// The `Content-Length`.
        declared: u64,
        /// Bytes the sidecar sent.
        sent: u64,
    },
    /// The tenant's `limits.max_stream_secs` passed.
    #[error("the stream reached its tenant's maximum duration ({} s)", .0.as_secs())]
    MaxDuration(Duration),
    /// The drain deadline passed ([`Drain::abort_all`]).
    #[error("the server is shutting down and the drain deadline has passed")]
    ShuttingDown,
}

/// The bodies still relaying: how many (drain logs, `/readyz`), and a switch that makes
/// them all abort once the drain deadline has passed.
#[derive(Clone, Debug, Default)]
pub struct Drain {
    count: Arc<AtomicUsize>,
    abort: CancellationToken,
}

impl Drain {
    /// Bodies relaying now.
    pub fn active(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Cuts every running body (their jobs are cancelled as they drop).
    pub fn abort_all(&self) {
        self.abort.cancel();
    }

    /// Counts one body until the guard drops.
    pub fn guard(&self) -> DrainGuard {
        self.count.fetch_add(1, Ordering::Relaxed);
        DrainGuard {
            count: self.count.clone(),
            aborted: Mutex::new(Box::pin(self.abort.clone().cancelled_owned())),
        }
    }
}

/// One body's place in the [`Drain`].
pub struct DrainGuard {
    count: Arc<AtomicUsize>,
    /// Behind a `Mutex` only to be `Sync` (warp wants it); reached with `get_mut`, no locking.
    aborted: Mutex<Pin<Box<WaitForCancellationFutureOwned>>>,
}

impl DrainGuard {
    fn poll_aborted(&mut self, cx: &mut Context<'_>) -> bool {
        let aborted = self
            .aborted
            .get_mut()
            .expect("never poisoned: no panics while held");
        aborted.as_mut().poll(cx).is_ready()
    }
}

impl Drop for DrainGuard {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a stream holds besides its connection; released with the body.
pub struct Held {
    /// For the log lines of the stream's end.
    pub request_id: String,
    /// When the request arrived: the time-to-first-byte origin.
    pub received: Instant,
    /// The tenant's concurrency slot.
    pub slot: StreamSlot,
    /// Its place in the drain.
    pub drain: DrainGuard,
    /// Its metrics.
    pub metrics: StreamRecorder,
    /// The tenant's `limits.max_stream_secs`, counted from the response's start.
    pub max_duration: Option<Duration>,
}

/// The body of one media response.
pub struct MediaBody {
    conn: JobConnection,
    /// The `Content-Length` the response declared, if any.
    declared: Option<u64>,
    sent: u64,
    started: Instant,
    done: bool,
    /// Fires at [`Held::max_duration`]. Seen whenever hyper polls for data; a client that
    /// stops reading is the server's idle-write timeout's.
    deadline: Option<Pin<Box<Sleep>>>,
    held: Held,
}

impl MediaBody {
    /// `conn`: a job past its metadata; `declared`: the response's `Content-Length`, which
    /// the body must match exactly.
    pub fn new(mut conn: JobConnection, declared: Option<u64>, held: Held) -> Self {
        // Between frames (the metadata was the last one decoded): safe to swap codecs.
        *conn.codec_mut() = FrameCodec::streaming_data(CHUNK);
        MediaBody {
            conn,
            declared,
            sent: 0,
            started: Instant::now(),
            done: false,
            deadline: held.max_duration.map(|d| Box::pin(tokio::time::sleep(d))),
            held,
        }
    }

    fn finish(&mut self, outcome: Result<(), &RelayError>) {
        self.done = true;
        let (id, bytes, secs) = (
            &self.held.request_id,
            self.sent,
            self.started.elapsed().as_secs_f64(),
        );
        match outcome {
            Ok(()) => tracing::info!(request_id = %id, bytes, secs, "stream complete"),
            Err(e) => tracing::warn!(request_id = %id, bytes, secs, error = %e, "stream aborted"),
        }
    }

    fn fail(&mut self, err: RelayError) -> Poll<Option<Result<Bytes, RelayError>>> {
        if let RelayError::Job(e) = &err {
            self.held.metrics.sidecar_error(e.code.as_str());
        }
        self.finish(Err(&err));
        Poll::Ready(Some(Err(err)))
    }

    /// Counts `bytes` as relayed.
    fn record(&mut self, bytes: &Bytes) {
        if bytes.is_empty() {
            return;
        }
        if self.sent == 0 {
            self.held.metrics.first_byte(self.held.received.elapsed());
        }
        self.held.metrics.bytes(bytes.len() as u64);
        self.sent += bytes.len() as u64;
    }
}

impl Stream for MediaBody {
    type Item = Result<Bytes, RelayError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        if this.held.drain.poll_aborted(cx) {
            send_cancel(&this.conn);
            return this.fail(RelayError::ShuttingDown);
        }
        if let Some(deadline) = &mut this.deadline
            && deadline.as_mut().poll(cx).is_ready()
        {
            send_cancel(&this.conn);
            let limit = this.held.max_duration.unwrap_or_default();
            return this.fail(RelayError::MaxDuration(limit));
        }
        let frame = ready!(Pin::new(&mut this.conn).poll_next(cx));
        match frame {
            Some(Ok(Frame::Data(bytes))) => {
                let sent = this.sent + bytes.len() as u64;
                // More than declared means the span is wrong: fail rather than let hyper truncate
                // it silently to the declared length.
                if let Some(declared) = this.declared.filter(|&d| sent > d) {
                    send_cancel(&this.conn);
                    return this.fail(RelayError::Length { declared, sent });
                }
                this.record(&bytes);
                // hyper drops a body once its Content-Length is written, without asking for
                // more: the declared bytes are the whole answer, whatever comes after.
                if this.declared == Some(sent) {
                    this.finish(Ok(()));
                }
                Poll::Ready(Some(Ok(bytes)))
            }
            Some(Ok(Frame::End { total_bytes })) if total_bytes == this.sent => {
                if let Some(declared) = this.declared.filter(|&d| d != this.sent) {
                    let sent = this.sent;
                    return this.fail(RelayError::Length { declared, sent });
                }
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
        if self.done {
            return;
        }
        send_cancel(&self.conn);
        tracing::info!(
            request_id = %self.held.request_id,
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

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use streamgate_protocol::{ErrorCode, MAX_FRAME_LEN, Metadata, connection, kind, next_frame};
    use tokio::io::AsyncWriteExt;
    use tokio::net::UnixStream;

    fn encode(frames: Vec<Frame>) -> Vec<u8> {
        let mut buf = BytesMut::new();
        let mut codec = FrameCodec::new();
        for f in frames {
            codec.encode(f, &mut buf).unwrap();
        }
        buf.to_vec()
    }

    fn payload(len: usize, seed: u8) -> Bytes {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect()
    }

    fn metadata() -> Frame {
        Frame::Metadata(Metadata {
            filename: "a.mp4".into(),
            ext: "mp4".into(),
            mime: "video/mp4".into(),
            size: None,
            title: None,
            ..Default::default()
        })
    }

    /// Sends `wire` (metadata first) in pieces of `piece` bytes, then closes; returns
    /// what the body yields: the bytes relayed and the error it ended with, if any.
    async fn relay(wire: Vec<u8>, piece: usize) -> (Vec<u8>, usize, Option<RelayError>) {
        relay_declared(wire, piece, None).await
    }

    /// [`relay`] for a response that declared `declared` bytes.
    async fn relay_declared(
        wire: Vec<u8>,
        piece: usize,
        declared: Option<u64>,
    ) -> (Vec<u8>, usize, Option<RelayError>) {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let writer = tokio::spawn(async move {
            for part in wire.chunks(piece) {
                theirs.write_all(part).await.unwrap();
                tokio::task::yield_now().await;
            }
        });
        let mut conn = connection(ours);
        let first = next_frame(&mut conn, "test").await.unwrap();
        assert!(matches!(first, Frame::Metadata(_)));
        let held = Held {
            request_id: "test".into(),
            received: Instant::now(),
            slot: StreamSlot::unlimited(),
            drain: Drain::default().guard(),
            metrics: crate::metrics::Metrics::new().stream("t"),
            max_duration: None,
        };
        let mut body = MediaBody::new(conn, declared, held);
        let (mut got, mut largest, mut err) = (Vec::new(), 0, None);
        while let Some(item) = body.next().await {
            match item {
                Ok(chunk) => {
                    largest = largest.max(chunk.len());
                    got.extend_from_slice(&chunk);
                }
                Err(e) => {
                    err = Some(e);
                    break;
                }
            }
        }
        writer.await.unwrap();
        (got, largest, err)
    }

    #[tokio::test]
    async fn streams_payloads_in_bounded_chunks_across_any_split() {
        let datas = [
            payload(300_000, 1),
            payload(1, 2),
            payload(MAX_DATA, 3),
            payload(10, 4),
        ];
        let expected: Vec<u8> = datas.iter().flat_map(|d| d.to_vec()).collect();
        let mut frames = vec![metadata()];
        frames.extend(datas.iter().cloned().map(Frame::Data));
        frames.push(Frame::End {
            total_bytes: expected.len() as u64,
        });
        let wire = encode(frames);
        for piece in [1, 3, 5, 4096, 70_000, wire.len()] {
            let (got, largest, err) = relay(wire.clone(), piece).await;
            assert!(err.is_none(), "piece {piece}: {err:?}");
            assert_eq!(got, expected, "piece {piece}");
            assert!(largest <= CHUNK, "piece {piece}: chunk of {largest}");
        }
    }

    const MAX_DATA: usize = streamgate_protocol::MAX_DATA_LEN;

    #[tokio::test]
    async fn ends_and_failures_are_reported_as_before() {
        let data = payload(100_000, 9);
        let with = |tail: Vec<Frame>| {
            let mut f = vec![metadata(), Frame::Data(data.clone())];
            f.extend(tail);
            encode(f)
        };
        // Closed after whole frames, no end: truncated, with the count.
        let (got, _, err) = relay(with(vec![]), 8192).await;
        assert_eq!(got.len(), data.len());
        assert!(matches!(err, Some(RelayError::Truncated { sent: 100_000 })));
        // Closed inside a data payload.
        let mut cut = with(vec![]);
        cut.truncate(cut.len() - 10);
        let (_, _, err) = relay(cut, 8192).await;
        assert!(matches!(
            err,
            Some(RelayError::Protocol(ProtocolError::Truncated))
        ));
        // Closed inside a control frame's header.
        let mut cut = with(vec![Frame::End {
            total_bytes: 100_000,
        }]);
        cut.truncate(cut.len() - 6);
        let (_, _, err) = relay(cut, 8192).await;
        assert!(matches!(
            err,
            Some(RelayError::Protocol(ProtocolError::Truncated))
        ));
        // A job error after data.
        let e = JobError::new(ErrorCode::UpstreamFailed, "broke");
        let (_, _, err) = relay(with(vec![Frame::Error(e)]), 3).await;
        assert!(matches!(err, Some(RelayError::Job(_))));
        // A wrong total.
        let (_, _, err) = relay(with(vec![Frame::End { total_bytes: 5 }]), 8192).await;
        assert!(matches!(err, Some(RelayError::Miscount { .. })));
        // A frame that has no place here.
        let (_, _, err) = relay(with(vec![metadata()]), 8192).await;
        assert!(matches!(
            err,
            Some(RelayError::Protocol(ProtocolError::Unexpected { .. }))
        ));
        // A header announcing more than the protocol allows, data type or not.
        for ty in [kind::DATA, kind::END] {
            let mut bad = with(vec![]);
            bad.extend_from_slice(&((MAX_FRAME_LEN + 1) as u32).to_be_bytes());
            bad.push(ty);
            let (_, _, err) = relay(bad, 8192).await;
            assert!(matches!(
                err,
                Some(RelayError::Protocol(ProtocolError::FrameTooLarge { .. }))
            ));
        }
    }

    #[tokio::test]
    async fn a_declared_length_is_met_exactly() {
        let data = payload(100_000, 7);
        let whole = |datas: &[Bytes]| {
            let mut f = vec![metadata()];
            f.extend(datas.iter().cloned().map(Frame::Data));
            let total = datas.iter().map(|d| d.len() as u64).sum();
            f.push(Frame::End { total_bytes: total });
            encode(f)
        };
        let (got, _, err) =
            relay_declared(whole(std::slice::from_ref(&data)), 4096, Some(100_000)).await;
        assert!(err.is_none(), "{err:?}");
        assert_eq!(got, data);
        // Short: a clean end before the declared length is still a cut body.
        let (_, _, err) =
            relay_declared(whole(std::slice::from_ref(&data)), 4096, Some(100_001)).await;
        assert!(matches!(
            err,
            Some(RelayError::Length {
                declared: 100_001,
                sent: 100_000
            })
        ));
        // Long: the body is complete at its declared length (hyper stops there too); what
        // follows is never read.
        let two = whole(&[data.clone(), payload(10, 8)]);
        let (got, _, err) = relay_declared(two, 4096, Some(100_000)).await;
        assert_eq!(got, data, "exactly the declared bytes");
        assert!(err.is_none(), "{err:?}");
        // A chunk crossing the declared length is refused, not cut.
        let crossing = whole(&[payload(99_995, 7), payload(10, 8)]);
        let (got, _, err) = relay_declared(crossing, 4096, Some(100_000)).await;
        assert_eq!(got.len(), 99_995);
        assert!(matches!(
            err,
            Some(RelayError::Length {
                declared: 100_000,
                sent: 100_005
            })
        ));
    }
}
