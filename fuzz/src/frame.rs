//! `decode`: the protocol's frame decoder (protocol/src/codec.rs).

use bytes::BytesMut;
use streamgate_protocol::{Frame, FrameCodec};
use tokio_util::codec::{Decoder, Encoder};

/// Feeds `input`, cut in two where its first byte says, to the decoder: errors are fine,
/// panics are not, and every frame it accepts must encode and decode back to itself.
/// True when at least one frame was decoded.
pub fn decode(input: &[u8]) -> bool {
    let split = input.first().map_or(0, |b| *b as usize) % (input.len().max(1));
    let (head, tail) = input.split_at(split);
    let mut codec = FrameCodec::new();
    let mut buf = BytesMut::from(head);
    let mut frames: Vec<Frame> = Vec::new();
    let mut step = |buf: &mut BytesMut, eof: bool| -> bool {
        loop {
            let next = if eof {
                codec.decode_eof(buf)
            } else {
                codec.decode(buf)
            };
            match next {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => return true,
                Err(_) => return false,
            }
        }
    };
    if step(&mut buf, false) {
        buf.extend_from_slice(tail);
        step(&mut buf, true);
    }
    for frame in &frames {
        let mut out = BytesMut::new();
        FrameCodec::new()
            .encode(frame.clone(), &mut out)
            .expect("a decoded frame re-encodes");
        let again = FrameCodec::new().decode(&mut out).expect("re-decodes");
        assert_eq!(again.as_ref(), Some(frame));
    }
    !frames.is_empty()
}
