//! `range`: the gateway's `Range` header parser (gateway/src/range.rs) and the check of the
//! span the sidecar answers with.

use streamgate::range::{requested, served};
use streamgate_protocol::Metadata;
use warp::http::header::RANGE;
use warp::http::{HeaderMap, HeaderValue, Method};

/// `input` is `SIZE\nVALUE`: a media size in decimal and a `Range` header value. A range the
/// parser accepts either covers nothing (a 416) or a span inside the media, which the
/// gateway's own check of the sidecar's answer then accepts. True when a range was read.
pub fn range(input: &[u8]) -> bool {
    let Some(newline) = input.iter().position(|b| *b == b'\n') else {
        return false;
    };
    let (size, value) = (&input[..newline], &input[newline + 1..]);
    let Some(size) = std::str::from_utf8(size)
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    else {
        return false;
    };
    let Ok(value) = HeaderValue::from_bytes(value) else {
        return false;
    };
    let mut headers = HeaderMap::new();
    headers.insert(RANGE, value);
    let Some(asked) = requested(&Method::GET, &headers) else {
        return false;
    };
    if let Some((start, end)) = asked.resolve(size) {
        assert!(
            start <= end && end < size,
            "{asked:?} of {size} bytes: {start}-{end} lies outside the media"
        );
        let meta = Metadata {
            size: Some(size),
            range: Some((start, end)),
            ..Default::default()
        };
        let span = served(Some(asked), &meta)
            .expect("the span of the range asked is accepted")
            .expect("a cut media has a span");
        assert_eq!((span.start, span.end, span.size), (start, end, size));
        assert!(span.length() <= size);
    }
    true
}
