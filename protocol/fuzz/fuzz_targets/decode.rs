//! Feeds arbitrary bytes, in arbitrary splits, to the decoder: it may return errors, never
//! panic, and every frame it accepts must encode back to the bytes it came from.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use streamgate_protocol::{Frame, FrameCodec};
use tokio_util::codec::{Decoder, Encoder};

fuzz_target!(|input: &[u8]| {
    let split = input.first().map_or(0, |b| *b as usize) % (input.len().max(1));
    let (head, tail) = input.split_at(split);
    let mut codec = FrameCodec::new();
    let mut buf = BytesMut::from(head);
    let mut frames: Vec<Frame> = Vec::new();
    let mut step = |buf: &mut BytesMut, eof: bool| -> bool {
        loop {
            let next = if eof { codec.decode_eof(buf) } else { codec.decode(buf) };
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
    for frame in frames {
        let mut out = BytesMut::new();
        FrameCodec::new().encode(frame.clone(), &mut out).expect("a decoded frame re-encodes");
        let again = FrameCodec::new().decode(&mut out).expect("re-decodes").expect("whole");
        assert_eq!(again, frame);
    }
});
