//! A stream's review (`StreamJob.review`, a tenant's media policy): after the extraction the
//! sidecar sends what yt-dlp found as a `facts` frame and opens nothing until the client
//! answers `proceed`, so a denied stream costs an extraction and not one media byte.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use streamgate_protocol::{ErrorCode, Frame, JobError, MediaFacts};

use crate::conn::{Rx, Shared, Tx, client_left};
use crate::extract::Stopped;
use crate::job::Peer;
use crate::resolve::RawFormat;

/// yt-dlp's info JSON (`-J -f`, or a resolve's `-J`): the facts a policy reviews.
#[derive(Deserialize)]
struct RawFacts {
    extractor_key: Option<String>,
    extractor: Option<String>,
    title: Option<String>,
    uploader: Option<String>,
    duration: Option<f64>,
    is_live: Option<bool>,
    live_status: Option<String>,
    /// `-J -f` of one format: the chosen format's fields are the info's own.
    #[serde(flatten)]
    chosen: RawFormat,
    /// `-J -f` of a merge: the formats merged.
    #[serde(default)]
    requested_formats: Vec<RawFormat>,
    /// A resolve's info: every format (the stream picked one by its id).
    formats: Option<Vec<RawFormat>>,
    /// A page with several videos: the first is the one streamed.
    #[serde(default)]
    entries: Vec<RawFacts>,
}

/// The facts of the extraction `json` a stream is about to open. `picked` is the
/// `format_id` when the stream's format was picked from a resolve's info (whose own chosen
/// format is yt-dlp's default, not the stream's).
pub(crate) fn facts(json: &[u8], picked: Option<&str>) -> Result<MediaFacts, String> {
    let mut raw: RawFacts = serde_json::from_slice(json).map_err(|e| e.to_string())?;
    while !raw.entries.is_empty() {
        raw = raw.entries.swap_remove(0);
    }
    let formats = match (picked, raw.formats) {
        (Some(id), Some(all)) => all
            .into_iter()
            .rev()
            .find(|f| f.format_id.as_deref() == Some(id))
            .into_iter()
            .collect(),
        _ if !raw.requested_formats.is_empty() => raw.requested_formats,
        _ => vec![raw.chosen],
    };
    Ok(MediaFacts {
        extractor: raw.extractor_key.or(raw.extractor),
        title: raw.title,
        uploader: raw.uploader,
        duration: raw.duration.filter(|d| d.is_finite()),
        is_live: raw.is_live == Some(true) || raw.live_status.as_deref() == Some("is_live"),
        formats: formats.into_iter().map(RawFormat::info).collect(),
    })
}

/// Sends `facts` and waits for the client's verdict: `Ok` on `proceed`; a cancel, a closed
/// connection or no answer within `limit` stops the job before anything is opened.
pub(crate) async fn ask(
    shared: &Shared,
    facts: MediaFacts,
    limit: Duration,
    tx: &mut Tx,
    rx: &mut Rx,
) -> Result<(), Stopped> {
    let timeout = || {
        let msg = format!("no verdict on the media within {} s", limit.as_secs_f64());
        Stopped::Failed(JobError::new(ErrorCode::Timeout, msg))
    };
    match tokio::time::timeout(limit, tx.send(Frame::Facts(facts))).await {
        Ok(Ok(())) => {}
        Ok(Err(_)) => return Err(Stopped::Peer(Peer::Gone)),
        Err(_) => return Err(timeout()),
    }
    let answer = tokio::select! {
        _ = shared.kill_jobs.cancelled() => {
            let e = JobError::new(ErrorCode::Internal, "the sidecar is shutting down");
            return Err(Stopped::Failed(e));
        }
        answer = tokio::time::timeout(limit, rx.next()) => answer,
    };
    match answer {
        Ok(Some(Ok(Frame::Proceed))) => Ok(()),
        Ok(Some(Ok(Frame::Cancel))) => Err(Stopped::Peer(Peer::Cancel)),
        Ok(None) => Err(Stopped::Peer(Peer::Gone)),
        Ok(Some(Err(e))) if client_left(&e) => Err(Stopped::Peer(Peer::Gone)),
        Ok(Some(Ok(other))) => Err(Stopped::Peer(Peer::Broke(format!(
            "unexpected frame 0x{:02x} awaiting a verdict",
            other.kind()
        )))),
        Ok(Some(Err(e))) => Err(Stopped::Peer(Peer::Broke(e.to_string()))),
        Err(_) => Err(timeout()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_of_one_format_a_merge_and_a_picked_id() {
        let one = br#"{"extractor_key":"Generic","extractor":"generic","title":"T",
            "uploader":"U","duration":10.0,"is_live":false,"format_id":"0","ext":"mp4",
            "vcodec":"avc1","acodec":"mp4a","filesize":2048,"protocol":"https",
            "formats":[{"format_id":"0"},{"format_id":"1"}]}"#;
        let f = facts(one, None).unwrap();
        assert_eq!(f.extractor.as_deref(), Some("Generic"));
        assert_eq!(
            (f.title.as_deref(), f.uploader.as_deref()),
            (Some("T"), Some("U"))
        );
        assert_eq!((f.duration, f.is_live), (Some(10.0), false));
        assert_eq!(f.formats.len(), 1);
        assert_eq!(f.formats[0].id, "0");
        assert_eq!(f.formats[0].size, Some(2048));
        assert_eq!(f.formats[0].vcodec.as_deref(), Some("avc1"));

        let merged = br#"{"extractor":"generic","format_id":"v+a","requested_formats":[
            {"format_id":"v","filesize_approx":1e9},{"format_id":"a","filesize":null}]}"#;
        let f = facts(merged, None).unwrap();
        assert_eq!(f.extractor.as_deref(), Some("generic"), "no key: the name");
        let ids: Vec<_> = f.formats.iter().map(|f| (f.id.as_str(), f.size)).collect();
        assert_eq!(ids, [("v", Some(1_000_000_000)), ("a", None)]);

        let info = br#"{"format_id":"2","live_status":"is_live","formats":[
            {"format_id":"1","ext":"m4a","filesize":5},{"format_id":"2","ext":"mp4"}]}"#;
        let f = facts(info, Some("1")).unwrap();
        assert!(f.is_live, "live_status says so");
        assert_eq!(f.formats[0].ext.as_deref(), Some("m4a"));
        assert_eq!(f.formats[0].size, Some(5));

        let page = br#"{"_type":"playlist","title":"P","entries":[{"title":"E","duration":7}]}"#;
        let f = facts(page, None).unwrap();
        assert_eq!((f.title.as_deref(), f.duration), (Some("E"), Some(7.0)));
    }
}
