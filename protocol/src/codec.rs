//! [`FrameCodec`]: typed frames on top of `tokio-util`'s `LengthDelimitedCodec`.
//!
//! Decoding is delegated to `LengthDelimitedCodec` (4-byte big-endian length, maximum frame
//! length checked before any buffer grows). Encoding writes the 5-byte header itself so that a
//! data payload is copied once, straight into the write buffer.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::codec::length_delimited::LengthDelimitedCodecError;
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec};

use crate::frame::{Frame, kind};

/// Largest `type + payload` a frame may have, in bytes. Both sides refuse anything longer.
pub const MAX_FRAME_LEN: usize = 1024 * 1024;

/// Largest data payload a sender should put in one `Data` frame (leaves room for the type).
pub const MAX_DATA_LEN: usize = 256 * 1024;

/// Every way a byte stream can fail to be a valid sequence of frames.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame of {len} bytes exceeds the maximum of {max}")]
    FrameTooLarge { len: usize, max: usize },
    #[error("stream ended inside a frame")]
    Truncated,
    #[error("empty frame (no type byte)")]
    Empty,
    #[error("unknown frame type 0x{0:02x}")]
    UnknownType(u8),
    #[error("malformed payload for frame type 0x{kind:02x}: {reason}")]
    Malformed { kind: u8, reason: String },
    #[error("unexpected frame type 0x{got:02x} while {during}")]
    Unexpected { got: u8, during: &'static str },
    #[error("peer speaks protocol version {peer}, this side speaks {ours}")]
    Version { peer: u16, ours: u16 },
    #[error("connection closed while {during}")]
    Closed { during: &'static str },
}

/// The codec for both directions of a connection.
#[derive(Debug)]
pub struct FrameCodec {
    inner: LengthDelimitedCodec,
    max_frame_len: usize,
    /// The inner codec consumed a header whose payload has not fully arrived yet.
    mid_frame: bool,
    /// With [`FrameCodec::streaming_data`]: the largest `Data` piece yielded at once.
    data_chunk: Option<usize>,
    /// Payload bytes of the data frame being streamed that have not been yielded yet.
    data_left: usize,
}

impl Default for FrameCodec {
    fn default() -> Self {
        Self::with_max_frame_len(MAX_FRAME_LEN)
    }
}

impl FrameCodec {
    pub fn new() -> Self {
        Self::default()
    }

    /// A codec with a smaller limit (tests, constrained peers). Never larger than the spec's.
    pub fn with_max_frame_len(max: usize) -> Self {
        let max = max.min(MAX_FRAME_LEN);
        let inner = LengthDelimitedCodec::builder()
            .big_endian()
            .length_field_length(4)
            .max_frame_length(max)
            .new_codec();
        FrameCodec {
            inner,
            max_frame_len: max,
            mid_frame: false,
            data_chunk: None,
            data_left: 0,
        }
    }

    /// A codec that yields each data frame's payload as it arrives, in `Frame::Data` pieces
    /// of at most `chunk` bytes, instead of buffering the whole frame first. The pieces
    /// concatenate to the payload (data frames are plain byte runs, so this changes nothing
    /// for a relay) and a receiver's memory no longer grows with the sender's frame size.
    pub fn streaming_data(chunk: usize) -> Self {
        FrameCodec {
            data_chunk: Some(chunk.max(1)),
            ..Self::default()
        }
    }

    /// In streaming mode: the next piece of the current data payload, or the start of one.
    fn decode_data(&mut self, chunk: usize, src: &mut BytesMut) -> Option<Frame> {
        if self.data_left == 0 && !self.mid_frame && src.len() >= 5 && src[4] == kind::DATA {
            let len = u32::from_be_bytes([src[0], src[1], src[2], src[3]]) as usize;
            if (1..=self.max_frame_len).contains(&len) {
                src.advance(5);
                self.data_left = len - 1;
                if self.data_left == 0 {
                    return Some(Frame::Data(Bytes::new()));
                }
            }
        }
        if self.data_left == 0 || src.is_empty() {
            return None;
        }
        let n = self.data_left.min(chunk).min(src.len());
        self.data_left -= n;
        Some(Frame::Data(src.split_to(n).freeze()))
    }
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = ProtocolError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, ProtocolError> {
        if let Some(chunk) = self.data_chunk {
            if let Some(piece) = self.decode_data(chunk, src) {
                return Ok(Some(piece));
            }
            // Wait for a whole header, so the inner codec never takes a data frame's.
            if self.data_left > 0 || (src.len() < 5 && !self.mid_frame) {
                return Ok(None);
            }
        }
        let before = src.len();
        match self.inner.decode(src) {
            Ok(Some(frame)) => {
                self.mid_frame = false;
                parse(frame.freeze()).map(Some)
            }
            Ok(None) => {
                self.mid_frame |= src.len() < before;
                Ok(None)
            }
            Err(err) => Err(self.too_large(err, src)),
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, ProtocolError> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() && !self.mid_frame && self.data_left == 0 => Ok(None),
            None => Err(ProtocolError::Truncated),
        }
    }
}

impl FrameCodec {
    fn too_large(&self, err: std::io::Error, src: &BytesMut) -> ProtocolError {
        let is_length_error = err
            .get_ref()
            .is_some_and(|e| e.is::<LengthDelimitedCodecError>());
        if !is_length_error {
            return ProtocolError::Io(err);
        }
        let len = if src.len() >= 4 {
            u32::from_be_bytes([src[0], src[1], src[2], src[3]]) as usize
        } else {
            usize::MAX
        };
        ProtocolError::FrameTooLarge {
            len,
            max: self.max_frame_len,
        }
    }
}

fn parse(mut frame: Bytes) -> Result<Frame, ProtocolError> {
    if frame.is_empty() {
        return Err(ProtocolError::Empty);
    }
    let ty = frame.get_u8();
    let payload = frame;
    Ok(match ty {
        kind::HELLO => Frame::Hello(json(ty, &payload)?),
        kind::WELCOME => Frame::Welcome(json(ty, &payload)?),
        kind::STREAM => Frame::Stream(json(ty, &payload)?),
        kind::RESOLVE => Frame::Resolve(json(ty, &payload)?),
        kind::METADATA => Frame::Metadata(json(ty, &payload)?),
        kind::INFO => Frame::Info(json(ty, &payload)?),
        kind::FACTS => Frame::Facts(json(ty, &payload)?),
        kind::ERROR => Frame::Error(json(ty, &payload)?),
        kind::DATA => Frame::Data(payload),
        kind::END => {
            let bytes: [u8; 8] = payload[..]
                .try_into()
                .map_err(|_| ProtocolError::Malformed {
                    kind: ty,
                    reason: format!("expected 8 bytes, got {}", payload.len()),
                })?;
            Frame::End {
                total_bytes: u64::from_be_bytes(bytes),
            }
        }
        kind::CANCEL | kind::PROCEED => {
            if !payload.is_empty() {
                return Err(ProtocolError::Malformed {
                    kind: ty,
                    reason: "carries no payload".into(),
                });
            }
            match ty {
                kind::CANCEL => Frame::Cancel,
                _ => Frame::Proceed,
            }
        }
        other => return Err(ProtocolError::UnknownType(other)),
    })
}

fn json<T: DeserializeOwned>(kind: u8, payload: &[u8]) -> Result<T, ProtocolError> {
    serde_json::from_slice(payload).map_err(|e| ProtocolError::Malformed {
        kind,
        reason: e.to_string(),
    })
}

impl Encoder<Frame> for FrameCodec {
    type Error = ProtocolError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), ProtocolError> {
        let start = dst.len();
        dst.put_u32(0); // length, patched below once the payload is written
        dst.put_u8(frame.kind());
        match &frame {
            Frame::Hello(v) => write_json(dst, v),
            Frame::Welcome(v) => write_json(dst, v),
            Frame::Stream(v) => write_json(dst, v),
            Frame::Resolve(v) => write_json(dst, v),
            Frame::Metadata(v) => write_json(dst, v),
            Frame::Info(v) => write_json(dst, v),
            Frame::Facts(v) => write_json(dst, v),
            Frame::Error(v) => write_json(dst, v),
            Frame::Data(bytes) => dst.extend_from_slice(bytes),
            Frame::End { total_bytes } => dst.put_u64(*total_bytes),
            Frame::Cancel | Frame::Proceed => {}
        }
        let len = dst.len() - start - 4;
        if len > self.max_frame_len {
            dst.truncate(start);
            return Err(ProtocolError::FrameTooLarge {
                len,
                max: self.max_frame_len,
            });
        }
        dst[start..start + 4].copy_from_slice(&(len as u32).to_be_bytes());
        Ok(())
    }
}

fn write_json<T: Serialize>(dst: &mut BytesMut, value: &T) {
    // Serializing plain structs of strings and numbers into memory cannot fail.
    serde_json::to_writer(dst.writer(), value).expect("frame payload serializes");
}
