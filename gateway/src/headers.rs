//! Response headers of a media response, built from the sidecar's metadata (what was really
//! emitted), not from what the link asked for.

use std::fmt::Write;

use streamgate_protocol::Metadata;
use warp::http::StatusCode;
use warp::http::header::{self, HeaderMap, HeaderValue};

use crate::range::Span;

/// Longest file name offered to the client, in characters (extension included).
const MAX_FILENAME_CHARS: usize = 150;

/// Extension → MIME type of the containers yt-dlp emits, for a sidecar MIME that is unusable.
const MIME_BY_EXT: &[(&str, &str)] = &[
    ("mp4", "video/mp4"),
    ("m4a", "audio/mp4"),
    ("m4v", "video/mp4"),
    ("webm", "video/webm"),
    ("weba", "audio/webm"),
    ("mp3", "audio/mpeg"),
    ("ts", "video/mp2t"),
    ("mkv", "video/x-matroska"),
    ("mka", "audio/x-matroska"),
    ("ogg", "audio/ogg"),
    ("opus", "audio/ogg"),
    ("flv", "video/x-flv"),
    ("wav", "audio/wav"),
    ("aac", "audio/aac"),
    ("flac", "audio/flac"),
];

/// `metadata.served_by` of the sidecar's own fetcher, the one path that can cut a file.
pub const SERVED_NATIVE: &str = "native";

/// What a media response starts with: status, headers, and the exact body length when known
/// (the relay holds the body to it, so a declared length is never silently short).
#[derive(Debug)]
pub struct MediaHead {
    /// 200 or 206.
    pub status: StatusCode,
    /// Type, length, range, disposition, caching, request id.
    pub headers: HeaderMap,
    /// The body's exact length, when known.
    pub length: Option<u64>,
}

/// The head of a media response (GET and HEAD alike): 206 with `Content-Range` for the
/// `span` the sidecar cut (`range::served`), else 200 with the whole media's size when known.
pub fn media_head(
    meta: &Metadata,
    span: Option<Span>,
    filename: Option<&str>,
    request_id: &str,
) -> MediaHead {
    let mut h = HeaderMap::new();
    h.insert(header::CONTENT_TYPE, content_type(meta));
    let name = file_name(filename.unwrap_or(&meta.filename), &meta.ext);
    h.insert(header::CONTENT_DISPOSITION, content_disposition(&name));
    let (status, length) = match span {
        Some(s) => {
            let range = format!("bytes {}-{}/{}", s.start, s.end, s.size);
            let range = HeaderValue::from_str(&range).expect("only digits");
            h.insert(header::CONTENT_RANGE, range);
            (StatusCode::PARTIAL_CONTENT, Some(s.length()))
        }
        None => (StatusCode::OK, meta.size),
    };
    if let Some(len) = length {
        h.insert(header::CONTENT_LENGTH, len.into());
    }
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Only a file the native fetcher moves whole, of a known size, can be cut on request;
    // merged, segmented and yt-dlp-served media come whole, so clients must not try.
    let cuttable = span.is_some() || (meta.served_by == SERVED_NATIVE && meta.size.is_some());
    let ranges = if cuttable { "bytes" } else { "none" };
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static(ranges));
    if let Ok(id) = HeaderValue::from_str(request_id) {
        h.insert("x-request-id", id);
    }
    MediaHead {
        status,
        headers: h,
        length,
    }
}

/// The sniffed MIME type when it looks like one, else the extension's, else octet-stream.
fn content_type(meta: &Metadata) -> HeaderValue {
    let plausible = |m: &str| {
        let (ty, sub) = m.split_once('/').unwrap_or_default();
        !ty.is_empty() && !sub.is_empty() && m.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
    };
    let mime = Some(meta.mime.as_str())
        .filter(|m| plausible(m))
        .or_else(|| mime_for_ext(&meta.ext))
        .unwrap_or("application/octet-stream");
    HeaderValue::from_str(mime).unwrap_or(HeaderValue::from_static("application/octet-stream"))
}

fn mime_for_ext(ext: &str) -> Option<&'static str> {
    let ext = ext.to_ascii_lowercase();
    MIME_BY_EXT.iter().find(|(e, _)| *e == ext).map(|(_, m)| *m)
}

/// A safe file name whose extension is the one of the bytes actually sent: a link asking
/// for `clip.mp4` that yields MPEG-TS is offered as `clip.ts`.
pub fn file_name(wanted: &str, real_ext: &str) -> String {
    let clean: String = wanted
        .chars()
        .map(|c| match c {
            '"' | '/' | '\\' => '_',
            c if c.is_control() => '_',
            c => c,
        })
        .collect();
    let clean = clean.trim().trim_start_matches('.').trim();
    let mut stem = if clean.is_empty() { "download" } else { clean }.to_owned();
    let ext = real_ext.trim().to_ascii_lowercase();
    let ext_ok = !ext.is_empty() && ext.bytes().all(|b| b.is_ascii_alphanumeric());
    if ext_ok
        && let Some((base, old)) = stem.rsplit_once('.')
        && (old.eq_ignore_ascii_case(&ext) || mime_for_ext(old).is_some())
        && !base.is_empty()
    {
        stem = base.to_owned();
    }
    let suffix = if ext_ok {
        format!(".{ext}")
    } else {
        String::new()
    };
    let keep = MAX_FILENAME_CHARS.saturating_sub(suffix.chars().count());
    let mut name: String = stem.chars().take(keep).collect();
    name.push_str(&suffix);
    name
}

/// RFC 6266: an ASCII `filename` for old clients, and the exact UTF-8 name in `filename*`.
pub fn content_disposition(name: &str) -> HeaderValue {
    let fallback: String = name
        .chars()
        .map(|c| match c {
            ' '..='~' if !matches!(c, '"' | '\\' | '%') => c,
            _ => '_',
        })
        .collect();
    let mut value = format!("attachment; filename=\"{fallback}\"");
    if fallback != name {
        value.push_str("; filename*=UTF-8''");
        for b in name.bytes() {
            // attr-char of RFC 8187; everything else percent-encoded.
            if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
                value.push(b as char);
            } else {
                let _ = write!(value, "%{b:02X}");
            }
        }
    }
    HeaderValue::from_str(&value).expect("only visible ASCII")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(mime: &str, ext: &str, size: Option<u64>) -> Metadata {
        Metadata {
            filename: "Title.mp4".into(),
            ext: ext.into(),
            mime: mime.into(),
            size,
            title: None,
            ..Default::default()
        }
    }

    #[test]
    fn names_follow_the_real_container() {
        assert_eq!(file_name("clip.mp4", "ts"), "clip.ts");
        assert_eq!(file_name("clip", "mp4"), "clip.mp4");
        assert_eq!(file_name("v1.2 final", "webm"), "v1.2 final.webm");
        assert_eq!(file_name("../../etc/passwd", "mp4"), "_.._etc_passwd.mp4");
        assert_eq!(file_name("a\"b\r\nc\\d", "m4a"), "a_b__c_d.m4a");
        assert_eq!(file_name("  ", "mp3"), "download.mp3");
        assert_eq!(
            file_name(&"x".repeat(400), "mp4").chars().count(),
            MAX_FILENAME_CHARS
        );
    }

    #[test]
    fn disposition_has_an_ascii_fallback_and_the_utf8_name() {
        let v = content_disposition("Café – “live”.mp4");
        assert_eq!(
            v.to_str().unwrap(),
            "attachment; filename=\"Caf_ _ _live_.mp4\"; \
             filename*=UTF-8''Caf%C3%A9%20%E2%80%93%20%E2%80%9Clive%E2%80%9D.mp4"
        );
        let plain = content_disposition("clip.mp4");
        assert_eq!(plain.to_str().unwrap(), "attachment; filename=\"clip.mp4\"");
    }

    #[test]
    fn content_type_prefers_the_sniffed_mime() {
        let m = meta("video/mp2t", "ts", Some(10));
        let h = media_head(&m, None, Some("x.mp4"), "r1").headers;
        assert_eq!(h["content-type"], "video/mp2t");
        assert_eq!(h["content-length"], "10");
        assert_eq!(h["content-disposition"], "attachment; filename=\"x.ts\"");
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert_eq!(h["cache-control"], "no-store");
        assert_eq!(h["x-request-id"], "r1");
        let h = media_head(&meta("", "mkv", None), None, None, "r1").headers;
        assert_eq!(h["content-type"], "video/x-matroska");
        assert!(h.get("content-length").is_none());
    }

    fn served_by(by: &str, size: Option<u64>) -> Metadata {
        Metadata {
            served_by: by.into(),
            ..meta("video/mp4", "mp4", size)
        }
    }

    #[test]
    fn whole_media_says_whether_it_can_be_cut() {
        let head = media_head(&served_by(SERVED_NATIVE, Some(5000)), None, None, "r");
        assert_eq!(head.status, StatusCode::OK);
        assert_eq!(head.length, Some(5000));
        assert_eq!(head.headers["content-length"], "5000");
        assert_eq!(head.headers["accept-ranges"], "bytes");
        assert!(head.headers.get("content-range").is_none());
        // yt-dlp's downloaders (a known size or not), or a native merge of unknown size.
        for m in [
            served_by("yt-dlp", Some(5000)),
            served_by("yt-dlp", None),
            served_by(SERVED_NATIVE, None),
        ] {
            let head = media_head(&m, None, None, "r");
            assert_eq!(head.status, StatusCode::OK, "{m:?}");
            assert_eq!(head.length, m.size);
            assert_eq!(head.headers["accept-ranges"], "none", "{m:?}");
        }
    }

    #[test]
    fn a_cut_span_is_a_206_of_exactly_its_bytes() {
        let span = Span {
            start: 1000,
            end: 1999,
            size: 5000,
        };
        let m = Metadata {
            range: Some((1000, 1999)),
            ..served_by(SERVED_NATIVE, Some(5000))
        };
        let head = media_head(&m, Some(span), Some("clip"), "r");
        assert_eq!(head.status, StatusCode::PARTIAL_CONTENT);
        assert_eq!(head.length, Some(1000));
        let h = &head.headers;
        assert_eq!(h["content-range"], "bytes 1000-1999/5000");
        assert_eq!(h["content-length"], "1000");
        assert_eq!(h["accept-ranges"], "bytes");
        assert_eq!(h["content-type"], "video/mp4");
        assert_eq!(
            h["content-disposition"],
            "attachment; filename=\"clip.mp4\""
        );
        assert_eq!(h["x-request-id"], "r");
        let last = Span {
            start: 4999,
            end: 4999,
            size: 5000,
        };
        let head = media_head(&m, Some(last), None, "r");
        assert_eq!(head.headers["content-range"], "bytes 4999-4999/5000");
        assert_eq!(head.headers["content-length"], "1");
    }
}
