//! The gateway ⇄ sidecar protocol: typed frames over a 4-byte big-endian length prefix.
//! `docs/protocol.md` is the specification; this crate is its only implementation.

mod codec;
mod frame;
pub mod input;
pub mod logline;

pub use codec::{FrameCodec, MAX_DATA_LEN, MAX_FRAME_LEN, ProtocolError};
pub use frame::{
    ByteRange, EgressMode, EgressRules, ErrorCode, FormatInfo, Frame, Hello, JobError, MediaFacts,
    MediaInfo, Metadata, PROTOCOL_VERSION, ResolveJob, StreamJob, Welcome, kind,
};

use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::Framed;

/// A connection speaking the protocol.
pub type Connection<T> = Framed<T, FrameCodec>;

/// Wraps a byte stream (a Unix socket, usually) in the protocol's codec.
pub fn connection<T: AsyncRead + AsyncWrite>(io: T) -> Connection<T> {
    Framed::new(io, FrameCodec::new())
}

/// Reads the next frame; a clean end of stream is an error naming what was awaited.
pub async fn next_frame<T: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Connection<T>,
    during: &'static str,
) -> Result<Frame, ProtocolError> {
    conn.next()
        .await
        .unwrap_or(Err(ProtocolError::Closed { during }))
}

/// Client side of the handshake: sends `Hello`, returns the sidecar's `Welcome`.
pub async fn client_handshake<T: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Connection<T>,
    client: &str,
) -> Result<Welcome, ProtocolError> {
    conn.send(Frame::Hello(Hello {
        version: PROTOCOL_VERSION,
        client: client.to_owned(),
    }))
    .await?;
    match next_frame(conn, "awaiting welcome").await? {
        Frame::Welcome(w) if w.version == PROTOCOL_VERSION => Ok(w),
        Frame::Welcome(w) => Err(ProtocolError::Version {
            peer: w.version,
            ours: PROTOCOL_VERSION,
        }),
        Frame::Error(e) => Err(ProtocolError::Malformed {
            kind: kind::ERROR,
            reason: format!("sidecar refused the handshake: {e}"),
        }),
        other => Err(ProtocolError::Unexpected {
            got: other.kind(),
            during: "awaiting welcome",
        }),
    }
}

/// Server side of the handshake: reads `Hello`; answers `Welcome`, or an `Error` frame with
/// code `protocol` (then returns the error) when the versions differ.
pub async fn server_handshake<T: AsyncRead + AsyncWrite + Unpin>(
    conn: &mut Connection<T>,
    welcome: Welcome,
) -> Result<Hello, ProtocolError> {
    let hello = match next_frame(conn, "awaiting hello").await? {
        Frame::Hello(h) => h,
        other => {
            let err = ProtocolError::Unexpected {
                got: other.kind(),
                during: "awaiting hello",
            };
            let _ = conn
                .send(Frame::Error(JobError::new(
                    ErrorCode::Protocol,
                    err.to_string(),
                )))
                .await;
            return Err(err);
        }
    };
    if hello.version != PROTOCOL_VERSION {
        let err = ProtocolError::Version {
            peer: hello.version,
            ours: PROTOCOL_VERSION,
        };
        let _ = conn
            .send(Frame::Error(JobError::new(
                ErrorCode::Protocol,
                err.to_string(),
            )))
            .await;
        return Err(err);
    }
    conn.send(Frame::Welcome(welcome)).await?;
    Ok(hello)
}
