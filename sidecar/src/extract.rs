//! Extraction: a yt-dlp process (a warm pool worker) that prints the info JSON (`-J`) and
//! exits — for a resolve, everything the URL offers; for a stream, the format chosen by the
//! selector too (`-J -f FORMAT`), typed here as [`Selection`] so that the sidecar can move
//! the bytes itself and no Python process lives for the length of a stream.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use streamgate_protocol::{ErrorCode, JobError};
use tokio::io::AsyncReadExt;

use crate::classify::classify;
use crate::conn::{Rx, Shared};
use crate::job::{Peer, peer_event};
use crate::proc::Proc;
use crate::sandbox::Sandbox;

/// `-J` of a big site can be several MB; more than this is refused rather than buffered.
const MAX_INFO_JSON: u64 = 32 * 1024 * 1024;

/// Why an extraction gave no JSON.
pub(crate) enum Stopped {
    /// Tell the client this.
    Failed(JobError),
    /// The client cancelled, left or broke the protocol.
    Peer(Peer),
}

/// The cache key of a stream's extraction: the URL and the selector (a canonical URL has
/// no newline).
pub(crate) fn key(url: &str, format: &str) -> String {
    format!("{url}\n{format}")
}

/// Reads a `-J` process's JSON to the end (bounded in size and time) and waits for its exit.
pub(crate) async fn read_json(
    shared: &Shared,
    mut proc: Proc,
    sandbox: &Sandbox,
    rx: &mut Rx,
) -> Result<Vec<u8>, Stopped> {
    let internal = |m: String| Stopped::Failed(JobError::new(ErrorCode::Internal, m));
    let Some(stdout) = proc.stdout.take() else {
        proc.kill().await;
        return Err(internal("yt-dlp has no stdout".into()));
    };
    let mut json = Vec::new();
    let mut limited = stdout.take(MAX_INFO_JSON + 1);
    let timeout = shared.config.stall_timeout;
    let read = tokio::select! {
        biased;
        ev = peer_event(rx) => {
            proc.kill().await;
            return Err(Stopped::Peer(ev));
        }
        _ = shared.kill_jobs.cancelled() => {
            proc.kill().await;
            return Err(internal("the sidecar is shutting down".into()));
        }
        r = tokio::time::timeout(timeout, limited.read_to_end(&mut json)) => r,
    };
    let failed = match read {
        Err(_) => Some(JobError::new(
            ErrorCode::Timeout,
            format!("extraction took over {} s", timeout.as_secs_f64()),
        )),
        Ok(Ok(n)) if n as u64 > MAX_INFO_JSON => Some(JobError::new(
            ErrorCode::Internal,
            "yt-dlp's info JSON is too large",
        )),
        Ok(Err(e)) => Some(JobError::new(
            ErrorCode::Internal,
            format!("reading yt-dlp: {e}"),
        )),
        Ok(Ok(_)) => None,
    };
    if let Some(e) = failed {
        proc.kill().await;
        return Err(Stopped::Failed(e));
    }
    let stderr = proc.stderr.clone();
    let status = proc.wait(Duration::from_secs(10)).await;
    stderr.catch_up();
    if !status.is_some_and(|s| s.success()) {
        return Err(Stopped::Failed(
            sandbox.explain(classify(&stderr.text(), status)),
        ));
    }
    Ok(json)
}

/// One format as yt-dlp describes it: what fetching it takes.
#[derive(Clone, Debug, Default, Deserialize)]
pub(crate) struct Format {
    pub url: Option<String>,
    pub protocol: Option<String>,
    pub ext: Option<String>,
    pub vcodec: Option<String>,
    #[serde(flatten)]
    pub hls: HlsInfo,
    #[serde(default)]
    pub http_headers: BTreeMap<String, String>,
    /// `name=value; Domain=…` per cookie, for this format's URL.
    pub cookies: Option<String>,
    pub filesize: Option<u64>,
    #[serde(default)]
    pub downloader_options: DownloaderOptions,
    /// `http_dash_segments`: where the fragments are.
    pub fragment_base_url: Option<String>,
    #[serde(default)]
    pub fragments: Vec<crate::fetch::dash::Fragment>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub(crate) struct DownloaderOptions {
    pub http_chunk_size: Option<u64>,
}

/// Fields with which yt-dlp's HLS downloader does more than fetch the playlist's segments:
/// a live stream, keys or query parameters from the extractor, a playlist from the page,
/// one discontinuity of several, DRM. The sidecar leaves such formats to yt-dlp.
#[derive(Clone, Debug, Default, Deserialize)]
pub(crate) struct HlsInfo {
    is_live: Option<bool>,
    has_drm: Option<serde_json::Value>,
    format_index: Option<serde_json::Value>,
    hls_aes: Option<serde_json::Value>,
    hls_media_playlist_data: Option<serde_json::Value>,
    extra_param_to_segment_url: Option<serde_json::Value>,
    extra_param_to_key_url: Option<serde_json::Value>,
}

impl HlsInfo {
    /// yt-dlp drops a format before selecting when its `has_drm` is truthy but not "maybe".
    fn drm_dropped(&self) -> bool {
        use serde_json::Value;
        match &self.has_drm {
            None | Some(Value::Null | Value::Bool(false)) => false,
            Some(Value::String(s)) => !s.is_empty() && s != "maybe",
            Some(Value::Number(n)) => n.as_f64() != Some(0.0),
            Some(_) => true,
        }
    }

    /// Why the sidecar's own HLS fetcher would not give yt-dlp's bytes, if it would not.
    pub fn refusal(&self) -> Option<&'static str> {
        let set = |v: &Option<serde_json::Value>| v.is_some();
        if self.is_live == Some(true) {
            Some("a live stream")
        } else if !matches!(self.has_drm, None | Some(serde_json::Value::Bool(false))) {
            Some("DRM")
        } else if set(&self.format_index) {
            Some("one discontinuity of the playlist")
        } else if set(&self.hls_aes) || set(&self.extra_param_to_key_url) {
            Some("a key from the extractor")
        } else if set(&self.hls_media_playlist_data) {
            Some("a playlist from the page")
        } else if set(&self.extra_param_to_segment_url) {
            Some("segment query parameters")
        } else {
            None
        }
    }
}

/// The `-J -f` output: the media's facts and the chosen format(s).
#[derive(Debug, Deserialize)]
struct Raw {
    title: Option<String>,
    #[serde(flatten)]
    chosen: Format,
    #[serde(default)]
    requested_formats: Vec<Format>,
    /// A page with several videos: `--playlist-items 1` keeps the first.
    #[serde(default)]
    entries: Vec<Raw>,
}

/// A resolve's info (`-J`): every format the URL offers.
#[derive(Debug, Deserialize)]
struct RawInfo {
    title: Option<String>,
    is_live: Option<bool>,
    formats: Option<Vec<IdFormat>>,
    #[serde(default)]
    entries: Vec<RawInfo>,
}

#[derive(Debug, Deserialize)]
struct IdFormat {
    format_id: Option<String>,
    /// yt-dlp leaves out formats whose `is_from_start` differs from what it wants.
    is_from_start: Option<serde_json::Value>,
    #[serde(flatten)]
    format: Format,
}

/// File extensions yt-dlp's selector reads as "best of this extension", not as a
/// `format_id` (`YoutubeDL._format_selection_exts`: common video, audio and storyboards).
const SELECTOR_EXTS: &[&str] = &[
    "avi", "flv", "mkv", "mov", "mp4", "webm", "3gp", "aiff", "alac", "flac", "m4a", "mka", "mp3",
    "ogg", "opus", "wav", "mhtml",
];

/// Whether yt-dlp reads `selector` as one exact `format_id` (`build_format_selector`: a
/// single atom that is not `all`, `mergeall`, `b`/`best`/`w`/`worst` with a type, nor an
/// extension). Only letters, digits, `-` and `_`: every operator and filter is left out.
fn is_format_id(selector: &str) -> bool {
    let best_worst = ["best", "worst", "b", "w"].iter().any(|bw| {
        selector
            .strip_prefix(bw)
            .is_some_and(|t| ["", "video", "audio", "v", "a"].contains(&t))
    });
    !selector.is_empty()
        && selector
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        && !best_worst
        && !["all", "mergeall"].contains(&selector)
        && !SELECTOR_EXTS.contains(&selector)
}

/// What a stream's extraction chose.
#[derive(Debug)]
pub(crate) struct Selection {
    pub title: Option<String>,
    pub formats: Vec<Format>,
}

impl Selection {
    pub fn parse(json: &[u8]) -> Result<Selection, String> {
        let mut raw: Raw = serde_json::from_slice(json).map_err(|e| e.to_string())?;
        while !raw.entries.is_empty() {
            raw = raw.entries.swap_remove(0);
        }
        let formats = match raw.requested_formats.is_empty() {
            true => vec![raw.chosen],
            false => raw.requested_formats,
        };
        Ok(Selection {
            title: raw.title,
            formats,
        })
    }

    /// What `yt-dlp --load-info-json INFO -f SELECTOR` chooses when the selector is one
    /// exact `format_id`: the last format of that id (yt-dlp's order, best last; ids are
    /// unique after its processing), of those it would consider (no DRM). `None` for any other
    /// selector, an info without a format list, or no such format: yt-dlp decides those.
    pub fn by_format_id(info: &[u8], selector: &str) -> Option<Selection> {
        if !is_format_id(selector) {
            return None;
        }
        let mut raw: RawInfo = serde_json::from_slice(info).ok()?;
        while !raw.entries.is_empty() {
            raw = raw.entries.swap_remove(0);
        }
        let formats = raw.formats?;
        if formats.iter().any(|f| f.is_from_start.is_some()) {
            return None;
        }
        let mut chosen = formats
            .into_iter()
            .rev()
            .filter(|f| !f.format.hls.drm_dropped())
            .find(|f| f.format_id.as_deref() == Some(selector))?
            .format;
        chosen.hls.is_live = raw.is_live;
        Some(Selection {
            title: raw.title,
            formats: vec![chosen],
        })
    }

    /// Whether the sidecar fetches every chosen format itself: single files over http(s),
    /// DASH fragments, HLS media playlists (merged by ffmpeg through pipes when several).
    pub fn native(&self) -> bool {
        !self.formats.is_empty()
            && self.formats.iter().all(|f| match f.protocol.as_deref() {
                Some("http" | "https" | "m3u8_native") => f.url.is_some(),
                Some("http_dash_segments") => !f.fragments.is_empty(),
                _ => false,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_and_merged_selections() {
        let single = br#"{"title":"T","url":"http://a/v.mp4","protocol":"http","ext":"mp4",
            "http_headers":{"User-Agent":"x"},"downloader_options":{"http_chunk_size":1048576},
            "formats":[{"format_id":"0"}]}"#;
        let s = Selection::parse(single).unwrap();
        assert!(s.native());
        let f = &s.formats[0];
        assert_eq!(f.url.as_deref(), Some("http://a/v.mp4"));
        assert_eq!(f.downloader_options.http_chunk_size, Some(1 << 20));
        assert_eq!(f.http_headers["User-Agent"], "x");
        let merged = br#"{"title":"T","format_id":"v+a","requested_formats":[
            {"url":"http://a/v","protocol":"https"},{"url":"http://a/a","protocol":"https"}]}"#;
        let s = Selection::parse(merged).unwrap();
        assert_eq!(s.formats.len(), 2);
        assert!(s.native(), "merged through pipes");
        let dash = br#"{"url":"http://a/m.mpd","protocol":"http_dash_segments"}"#;
        assert!(
            !Selection::parse(dash).unwrap().native(),
            "no fragments listed"
        );
        let dash = br#"{"url":"http://a/m.mpd","protocol":"http_dash_segments",
            "fragment_base_url":"http://a/","fragments":[{"path":"init.m4s"}]}"#;
        assert!(Selection::parse(dash).unwrap().native());
        let ism = br#"{"url":"http://a/m.ism","protocol":"ism"}"#;
        assert!(!Selection::parse(ism).unwrap().native());
        let page = br#"{"_type":"playlist","entries":[{"title":"E","url":"http://a/1.mp4","protocol":"http"}]}"#;
        assert_eq!(Selection::parse(page).unwrap().title.as_deref(), Some("E"));
    }

    #[test]
    fn exact_format_ids_only() {
        for id in [
            "18",
            "hls-1080p",
            "dash_v1",
            "f4",
            "0",
            "bestx",
            "mp4a",
            "wa1",
        ] {
            assert!(is_format_id(id), "{id}");
        }
        let selectors = [
            "",
            "b",
            "best",
            "bv",
            "bestaudio",
            "w",
            "worstvideo",
            "wa",
            "all",
            "mergeall",
            "mp4",
            "m4a",
            "webm",
            "mhtml",
            "b*",
            "bv*+ba",
            "18/22",
            "18+140",
            "22,18",
            "best[height<=720]",
            "b.2",
            "(18)",
            "18 ",
            "é",
        ];
        for s in selectors {
            assert!(!is_format_id(s), "{s:?}");
        }
    }

    #[test]
    fn format_id_chosen_from_a_resolve() {
        let info = br#"{"title":"T","is_live":false,"url":"http://a/best","format_id":"2",
            "formats":[
                {"format_id":"1","url":"http://a/1","protocol":"https","ext":"mp4",
                 "http_headers":{"Referer":"r"},"cookies":"c=1; Domain=a","filesize":10},
                {"format_id":"d","url":"http://a/d","protocol":"https","has_drm":true},
                {"format_id":"m","url":"http://a/m","protocol":"https","has_drm":"maybe"},
                {"format_id":"2","url":"http://a/2","protocol":"m3u8_native"}]}"#;
        let s = Selection::by_format_id(info, "1").unwrap();
        assert_eq!(s.title.as_deref(), Some("T"));
        let f = &s.formats[0];
        assert_eq!(f.url.as_deref(), Some("http://a/1"));
        assert_eq!(f.http_headers["Referer"], "r");
        assert_eq!(f.cookies.as_deref(), Some("c=1; Domain=a"));
        assert_eq!(f.filesize, Some(10));
        assert!(s.native());
        assert!(
            Selection::by_format_id(info, "d").is_none(),
            "DRM: left out"
        );
        assert!(
            Selection::by_format_id(info, "m").is_some(),
            "DRM maybe: kept"
        );
        assert!(
            Selection::by_format_id(info, "9").is_none(),
            "no such id: yt-dlp says"
        );
        assert!(
            Selection::by_format_id(info, "best").is_none(),
            "yt-dlp selects"
        );
        let live = br#"{"is_live":true,"formats":[{"format_id":"h","url":"http://a/h.m3u8",
            "protocol":"m3u8_native"}]}"#;
        let s = Selection::by_format_id(live, "h").unwrap();
        assert_eq!(
            s.formats[0].hls.refusal(),
            Some("a live stream"),
            "is_live is the info's"
        );
        let page = br#"{"_type":"playlist","entries":[{"title":"E","formats":[
            {"format_id":"x","url":"http://a/x","protocol":"http"}]}]}"#;
        assert_eq!(
            Selection::by_format_id(page, "x").unwrap().title.as_deref(),
            Some("E")
        );
        let single = br#"{"url":"http://a/v.mp4","format_id":"0","protocol":"http"}"#;
        assert!(
            Selection::by_format_id(single, "0").is_none(),
            "no format list"
        );
    }

    #[test]
    fn hls_formats_yt_dlp_keeps() {
        let hls = |extra: &str| {
            let json = format!(
                r#"{{"url":"http://a/i.m3u8","protocol":"m3u8_native","format_index":null{extra}}}"#
            );
            let s = Selection::parse(json.as_bytes()).unwrap();
            assert!(s.native(), "HLS is native");
            s.formats[0].hls.refusal()
        };
        assert_eq!(hls(""), None);
        assert_eq!(hls(r#","hls_aes":null,"is_live":false"#), None);
        assert_eq!(hls(r#","is_live":true"#), Some("a live stream"));
        assert_eq!(hls(r#","has_drm":false"#), None);
        assert_eq!(hls(r#","has_drm":"maybe""#), Some("DRM"));
        assert!(hls(r#","hls_aes":{"key":"00"}"#).is_some());
        assert!(hls(r#","extra_param_to_segment_url":"a=1""#).is_some());
    }
}
