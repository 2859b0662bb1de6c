//! Byte ranges (RFC 9110 §14): the request's `Range`, read once into the job, and the span
//! the sidecar says it sends, checked against it before any header promises it.

use streamgate_protocol::{ByteRange, Metadata, ProtocolError, kind};
use warp::http::{HeaderMap, Method, header};

/// The one byte range the client asked for, or `None`: send the whole media with 200.
///
/// `None` when there is no `Range`, and also (each allowed by RFC 9110 §14.2) for a method
/// other than GET (ranges are defined for GET only, so HEAD answers as the plain GET), an
/// `If-Range` (the gateway sends no validators, so the condition can never hold), a unit
/// other than `bytes`, a malformed value, and several ranges (the whole file instead of a
/// `multipart/byteranges` body).
pub fn requested(method: &Method, headers: &HeaderMap) -> Option<ByteRange> {
    if method != Method::GET || headers.contains_key(header::IF_RANGE) {
        return None;
    }
    let mut lines = headers.get_all(header::RANGE).iter();
    let value = lines.next()?;
    // `Range` is not a list field: repeated lines are malformed.
    if lines.next().is_some() {
        return None;
    }
    parse(value.to_str().ok()?)
}

/// `bytes=a-b`, `bytes=a-` or `bytes=-n`: exactly one range-spec (empty list elements and the
/// whitespace around them are skipped, as the list rule of RFC 9110 §5.6.1 asks).
fn parse(value: &str) -> Option<ByteRange> {
    let (unit, set) = value.split_once('=')?;
    if !unit.eq_ignore_ascii_case("bytes") {
        return None;
    }
    let mut specs = set
        .split(',')
        .map(|s| s.trim_matches([' ', '\t']))
        .filter(|s| !s.is_empty());
    let spec = specs.next()?;
    if specs.next().is_some() {
        return None;
    }
    let (first, last) = spec.split_once('-')?;
    match (first.is_empty(), last.is_empty()) {
        (false, true) => Some(ByteRange::From {
            start: number(first)?,
            end: None,
        }),
        (false, false) => {
            let (start, end) = (number(first)?, number(last)?);
            // A last-pos before the first-pos makes the range-spec invalid (§14.1.1).
            (end >= start).then_some(ByteRange::From {
                start,
                end: Some(end),
            })
        }
        (true, false) => Some(ByteRange::Suffix { len: number(last)? }),
        (true, true) => None,
    }
}

/// 1*DIGIT, saturating: a position past `u64::MAX` is past the end of any media anyway.
fn number(digits: &str) -> Option<u64> {
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(digits.bytes().fold(0u64, |n, b| {
        n.saturating_mul(10).saturating_add(u64::from(b - b'0'))
    }))
}

/// The inclusive span of a 206 response, and the total size `Content-Range` names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    /// First byte.
    pub start: u64,
    /// Last byte (inclusive).
    pub end: u64,
    /// The whole media's size.
    pub size: u64,
}

impl Span {
    /// Bytes in the span: the body's exact length.
    pub fn length(&self) -> u64 {
        self.end - self.start + 1
    }
}

/// The span the data frames carry, if the sidecar cut the media. It must be exactly what
/// `asked` covers in a media of `metadata.size` bytes: anything else (a range nobody asked
/// for, no size, another span) is a broken sidecar, refused before a header promises it.
pub fn served(asked: Option<ByteRange>, meta: &Metadata) -> Result<Option<Span>, ProtocolError> {
    let Some((start, end)) = meta.range else {
        return Ok(None);
    };
    match (asked, meta.size) {
        (Some(range), Some(size)) if range.resolve(size) == Some((start, end)) => {
            Ok(Some(Span { start, end, size }))
        }
        _ => Err(ProtocolError::Malformed {
            kind: kind::METADATA,
            reason: format!(
                "range {start}-{end} of size {:?} does not answer the range asked, {asked:?}",
                meta.size
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use warp::http::HeaderValue;

    fn from(start: u64, end: Option<u64>) -> Option<ByteRange> {
        Some(ByteRange::From { start, end })
    }

    #[test]
    fn one_range_of_each_form() {
        assert_eq!(parse("bytes=1000-1999"), from(1000, Some(1999)));
        assert_eq!(parse("bytes=0-0"), from(0, Some(0)));
        assert_eq!(parse("bytes=500-"), from(500, None));
        assert_eq!(parse("bytes=-300"), Some(ByteRange::Suffix { len: 300 }));
        // Unsatisfiable is not malformed: the sidecar answers those with a 416.
        assert_eq!(parse("bytes=-0"), Some(ByteRange::Suffix { len: 0 }));
        assert_eq!(
            parse("BYTES=5-"),
            from(5, None),
            "the unit is case-insensitive"
        );
        assert_eq!(
            parse("bytes= 5-9 ,"),
            from(5, Some(9)),
            "list whitespace, empty items"
        );
        assert_eq!(parse("bytes=,\t7-"), from(7, None));
        assert_eq!(
            parse("bytes=99999999999999999999999-"),
            from(u64::MAX, None),
            "past any end"
        );
        assert_eq!(
            parse("bytes=0-99999999999999999999999"),
            from(0, Some(u64::MAX))
        );
    }

    #[test]
    fn several_malformed_and_foreign_ranges_are_ignored() {
        for value in [
            "bytes=0-1,5-9",
            "bytes=0-1, 0-1",
            "bytes=-5,10-",
            "bytes=5-4",
            "bytes=-",
            "bytes=",
            "bytes=,",
            "bytes=a-b",
            "bytes=1-2-3",
            "bytes=+1-2",
            "bytes=1 -2",
            "bytes=0x10-",
            "bytes 0-1",
            "bytes = 0-1",
            "items=0-1",
            "=0-1",
            "",
        ] {
            assert_eq!(parse(value), None, "{value:?}");
        }
    }

    fn headers(pairs: &[(&str, &[u8])]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            let name = warp::http::HeaderName::from_bytes(name.as_bytes()).unwrap();
            h.append(name, HeaderValue::from_bytes(value).unwrap());
        }
        h
    }

    #[test]
    fn only_a_plain_get_is_cut() {
        let range = headers(&[("range", b"bytes=10-19")]);
        assert_eq!(requested(&Method::GET, &range), from(10, Some(19)));
        assert_eq!(
            requested(&Method::HEAD, &range),
            None,
            "HEAD answers as GET"
        );
        assert_eq!(requested(&Method::GET, &HeaderMap::new()), None);
        let if_range = headers(&[("range", b"bytes=10-19"), ("if-range", b"\"etag\"")]);
        assert_eq!(
            requested(&Method::GET, &if_range),
            None,
            "If-Range never holds"
        );
        let twice = headers(&[("range", b"bytes=10-19"), ("range", b"bytes=10-19")]);
        assert_eq!(requested(&Method::GET, &twice), None);
        let opaque = headers(&[("range", b"bytes=\xff-")]);
        assert_eq!(requested(&Method::GET, &opaque), None);
    }

    fn meta(size: Option<u64>, range: Option<(u64, u64)>) -> Metadata {
        Metadata {
            size,
            range,
            ..Default::default()
        }
    }

    #[test]
    fn the_served_span_must_be_the_one_asked() {
        let asked = from(1000, Some(1999));
        let span = served(asked, &meta(Some(5000), Some((1000, 1999)))).unwrap();
        let span = span.unwrap();
        assert_eq!(
            (span.start, span.end, span.size, span.length()),
            (1000, 1999, 5000, 1000)
        );
        let clipped = served(from(4000, None), &meta(Some(4096), Some((4000, 4095))));
        assert_eq!(clipped.unwrap().unwrap().length(), 96);
        let suffix = Some(ByteRange::Suffix { len: 10_000 });
        let whole = served(suffix, &meta(Some(4096), Some((0, 4095))));
        assert_eq!(whole.unwrap().unwrap().length(), 4096);
        // Not cut: the whole media, whatever was asked.
        assert_eq!(served(asked, &meta(Some(5000), None)).unwrap(), None);
        assert_eq!(served(None, &meta(None, None)).unwrap(), None);
        // A sidecar that cuts what nobody asked, without a size, or elsewhere.
        for (asked, meta) in [
            (None, meta(Some(5000), Some((0, 99)))),
            (asked, meta(None, Some((1000, 1999)))),
            (asked, meta(Some(5000), Some((1000, 2999)))),
            (asked, meta(Some(5000), Some((1999, 1000)))),
            (from(6000, None), meta(Some(5000), Some((6000, 4999)))),
        ] {
            let err = served(asked, &meta).unwrap_err();
            assert!(matches!(err, ProtocolError::Malformed { .. }), "{err}");
        }
    }
}
