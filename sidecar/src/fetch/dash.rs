//! `http_dash_segments`: a DASH representation as yt-dlp lists it — an init fragment, then
//! media fragments, each a URL or a path under `fragment_base_url`, maybe a byte range of
//! one file — fetched in order and concatenated: the fMP4 file yt-dlp's own downloader
//! writes. Each fragment resumes at its byte offset after a failure ([`Progressive`]).

use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use serde::Deserialize;
use streamgate_protocol::ByteRange;
use url::Url;

use super::progressive::Progressive;
use super::{FetchError, Fetcher};

/// One entry of a format's `fragments`.
#[derive(Clone, Debug, Deserialize)]
pub struct Fragment {
    pub url: Option<String>,
    pub path: Option<String>,
    /// `START-END` (inclusive) within the file.
    pub range: Option<String>,
}

/// Where each fragment is, resolved and checked once: an unusable list is refused whole
/// (the job then falls back to yt-dlp) rather than failing halfway through the media.
pub fn plan(
    base: Option<&str>,
    fragments: &[Fragment],
) -> Result<Vec<(Url, Option<ByteRange>)>, String> {
    let base = base
        .map(Url::parse)
        .transpose()
        .map_err(|e| format!("fragment_base_url: {e}"))?;
    fragments
        .iter()
        .map(|f| {
            let url = match (&f.url, &f.path, &base) {
                (Some(url), _, _) => Url::parse(url).map_err(|e| format!("fragment URL: {e}"))?,
                (None, Some(path), Some(base)) => {
                    base.join(path).map_err(|e| format!("fragment path: {e}"))?
                }
                _ => return Err("a fragment with neither URL nor base".to_owned()),
            };
            if !matches!(url.scheme(), "http" | "https") {
                return Err(format!("fragment scheme {}", url.scheme()));
            }
            let range = match f.range.as_deref().map(|r| r.split_once('-')) {
                None => None,
                Some(Some((a, b))) => {
                    let (start, end) = (a.parse().ok(), b.parse().ok());
                    match (start, end) {
                        (Some(start), Some(end)) if start <= end => Some(ByteRange::From {
                            start,
                            end: Some(end),
                        }),
                        _ => return Err(format!("fragment range {:?}", f.range)),
                    }
                }
                Some(None) => return Err(format!("fragment range {:?}", f.range)),
            };
            Ok((url, range))
        })
        .collect()
}

/// The fragments' bytes, in order; the first failure ends the stream.
pub fn stream(
    fetcher: Fetcher,
    fragments: Vec<(Url, Option<ByteRange>)>,
    stall: Duration,
) -> impl Stream<Item = Result<Bytes, FetchError>> {
    futures::stream::iter(fragments)
        .then(move |(url, range)| {
            let source = Progressive::new(fetcher.clone(), url, None, stall);
            async move { source.open(range).await }
        })
        .map(|opened| match opened {
            Ok((_, body)) => body.left_stream(),
            Err(e) => futures::stream::once(async move { Err(e) }).right_stream(),
        })
        .flatten()
        .scan(false, |failed, item| {
            // Nothing after an error: a later fragment must not follow a missing one.
            let out = (!*failed).then_some(item);
            *failed |= matches!(out, Some(Err(_)));
            futures::future::ready(out)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frag(url: Option<&str>, path: Option<&str>, range: Option<&str>) -> Fragment {
        Fragment {
            url: url.map(Into::into),
            path: path.map(Into::into),
            range: range.map(Into::into),
        }
    }

    #[test]
    fn fragments_resolve_against_the_base() {
        let list = [
            frag(None, Some("init-0.m4s"), None),
            frag(None, Some("seg/1.m4s"), Some("10-19")),
            frag(Some("https://cdn.test/x.m4s"), None, None),
        ];
        let plan = plan(Some("http://a.test/dash/"), &list).unwrap();
        assert_eq!(plan[0].0.as_str(), "http://a.test/dash/init-0.m4s");
        assert_eq!(
            plan[1].1,
            Some(ByteRange::From {
                start: 10,
                end: Some(19)
            })
        );
        assert_eq!(plan[2].0.as_str(), "https://cdn.test/x.m4s");
        assert!(super::plan(None, &[frag(None, Some("a"), None)]).is_err());
        assert!(
            super::plan(
                Some("http://a/"),
                &[frag(Some("file:///etc/passwd"), None, None)]
            )
            .is_err()
        );
        assert!(super::plan(Some("http://a/"), &[frag(None, Some("a"), Some("9-1"))]).is_err());
    }
}
