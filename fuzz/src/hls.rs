//! `hls`: the sidecar's HLS media playlist parser (sidecar/src/fetch/hls.rs).

use streamgate_sidecar::Playlist;
use url::Url;

/// Where the playlist was fetched from: relative URIs resolve against it.
const BASE: &str = "https://cdn.test/vod/720p/index.m3u8?token=abc";

/// `input` as a playlist: refused, or accepted whole, and then every piece it yields while
/// the stream runs is `Ok` (the fetcher counts on it), as many segments as `parse` counted,
/// each byte range non-empty and inside `u64`. True when accepted.
pub fn hls(input: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(input) else {
        return false;
    };
    let base = Url::parse(BASE).expect("a valid base");
    let Ok(playlist) = Playlist::parse(text.to_owned(), base) else {
        return false;
    };
    let segments = playlist.segments();
    let _ = (playlist.container(false), playlist.container(true));
    let mut counted = 0;
    for piece in playlist.pieces() {
        let piece = piece.expect("a piece of an accepted playlist");
        assert!(matches!(piece.url.scheme(), "http" | "https"));
        if let Some(r) = piece.range {
            assert!(r.len > 0 && r.start.checked_add(r.len).is_some(), "{r:?}");
        }
        counted += usize::from(!piece.init);
    }
    assert_eq!(counted, segments);
    true
}
