//! Frames → HTTP body. The body reads the job's socket directly, only when hyper asks for the
//! next chunk, so a slow client leaves frames in the kernel's socket buffers and the sidecar
//! (which writes only as fast as the socket drains) slows yt-dlp.
//!
//! Data payloads are not decoded as whole frames: after a data frame's 5-byte header the body
//! reads the payload straight from the socket in chunks of at most [`CHUNK`] bytes, each into
//! its own buffer (no copy), and hands each one to hyper. A stalled stream therefore holds
//! hyper's capped write queue (`server::HTTP1_MAX_BUF`) plus one chunk, whatever frame size the
//! sidecar uses. Control frames (end, error, anything unexpected) go through [`FrameCodec`].

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use futures::Stream;
use streamgate_protocol::{Frame, FrameCodec, JobError, MAX_FRAME_LEN, ProtocolError, kind};
use tokio::net::UnixStream;
use tokio_util::codec::{Decoder, Encoder};
use tokio_util::io::poll_read_buf;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::sidecar::JobConnection;

/// Largest body chunk the relay reads and yields at once.
pub const CHUNK: usize = 64 * 1024;
/// Length (4 bytes) + type (1 byte).
const HEADER: usize = 5;
/// Room reserved to read a frame header (and whatever follows it) into.
const HEADER_READ: usize = 8 * 1024;

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
    io: UnixStream,
    codec: FrameCodec,
    /// Bytes read but not relayed yet: headers, control frames, the odd start of a payload.
    buf: BytesMut,
    /// Payload bytes of the current data frame not relayed yet.
    data_left: usize,
    /// `codec` has taken a control frame's header and waits for the rest of it.
    control: bool,
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
        // The metadata frame was read through the codec; what it read beyond is in read_buf.
        let parts = conn.into_parts();
        MediaBody {
            aborted,
            io: parts.io,
            codec: parts.codec,
            buf: parts.read_buf,
            data_left: 0,
            control: false,
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
            send_cancel(&this.io);
            return this.fail(RelayError::ShuttingDown);
        }
        loop {
            if this.data_left > 0 {
                let chunk = if this.buf.is_empty() {
                    let mut chunk = BytesMut::with_capacity(this.data_left.min(CHUNK));
                    match ready!(poll_read_buf(Pin::new(&mut this.io), cx, &mut chunk)) {
                        Ok(0) => return this.fail(ProtocolError::Truncated.into()),
                        Ok(_) => chunk.freeze(),
                        Err(e) => return this.fail(ProtocolError::Io(e).into()),
                    }
                } else {
                    let n = this.data_left.min(this.buf.len()).min(CHUNK);
                    this.buf.split_to(n).freeze()
                };
                this.data_left -= chunk.len();
                this.sent += chunk.len() as u64;
                return Poll::Ready(Some(Ok(chunk)));
            }
            if !this.control
                && let Some(len) = data_header(&this.buf)
            {
                this.buf.advance(HEADER);
                this.data_left = len;
                continue;
            }
            if this.control || this.buf.len() >= HEADER {
                match this.codec.decode(&mut this.buf) {
                    Ok(Some(frame)) => {
                        this.control = false;
                        return this.control_frame(frame);
                    }
                    // The codec holds the header now: feed it until the frame is complete.
                    Ok(None) => this.control = true,
                    Err(e) => return this.fail(e.into()),
                }
            }
            if this.buf.capacity() - this.buf.len() < HEADER {
                this.buf.reserve(HEADER_READ);
            }
            match ready!(poll_read_buf(Pin::new(&mut this.io), cx, &mut this.buf)) {
                Ok(0) if this.buf.is_empty() && !this.control => {
                    let sent = this.sent;
                    return this.fail(RelayError::Truncated { sent });
                }
                Ok(0) => return this.fail(ProtocolError::Truncated.into()),
                Ok(_) => {}
                Err(e) => return this.fail(ProtocolError::Io(e).into()),
            }
        }
    }
}

impl MediaBody {
    /// A whole frame other than a streamed data payload: the end, an error, or a violation.
    fn control_frame(&mut self, frame: Frame) -> Poll<Option<Result<Bytes, RelayError>>> {
        match frame {
            // Not produced by `poll_next` (data payloads are streamed), handled all the same.
            Frame::Data(bytes) => {
                self.sent += bytes.len() as u64;
                Poll::Ready(Some(Ok(bytes)))
            }
            Frame::End { total_bytes } if total_bytes == self.sent => {
                self.finish(Ok(()));
                Poll::Ready(None)
            }
            Frame::End { total_bytes } => self.fail(RelayError::Miscount {
                reported: total_bytes,
                sent: self.sent,
            }),
            Frame::Error(e) => self.fail(RelayError::Job(e)),
            other => self.fail(RelayError::Protocol(ProtocolError::Unexpected {
                got: other.kind(),
                during: "relaying data",
            })),
        }
    }
}

/// The payload length of the data frame whose complete header starts `buf`, if it is one
/// with a valid length (anything else is left to the codec, which reports it).
fn data_header(buf: &[u8]) -> Option<usize> {
    if buf.len() < HEADER || buf[4] != kind::DATA {
        return None;
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    (1..=MAX_FRAME_LEN).contains(&len).then(|| len - 1)
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
        send_cancel(&self.io);
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
    send_cancel(conn.get_ref());
}

/// Writes a `cancel` frame if the socket takes it at once; closing the socket is the fallback.
fn send_cancel(io: &UnixStream) {
    let mut buf = BytesMut::with_capacity(8);
    if FrameCodec::new().encode(Frame::Cancel, &mut buf).is_ok() {
        let _ = io.try_write(&buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use streamgate_protocol::{ErrorCode, Metadata, connection, next_frame};
    use tokio::io::AsyncWriteExt;

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
        })
    }

    /// Sends `wire` (metadata first) in pieces of `piece` bytes, then closes; returns
    /// what the body yields: the bytes relayed and the error it ended with, if any.
    async fn relay(wire: Vec<u8>, piece: usize) -> (Vec<u8>, usize, Option<RelayError>) {
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
        let mut body = MediaBody::new(conn, "test".into(), ActiveStreams::default());
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
}
