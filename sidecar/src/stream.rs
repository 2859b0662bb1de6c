//! A stream job: extraction (a warm pool worker, or nothing at all when the selection is
//! cached), the client's review of its facts when asked (`review.rs`), then the sidecar's
//! own fetcher for a single http(s) file, or yt-dlp's downloaders for everything else — fed
//! the extraction, so the page is not fetched twice.

use std::time::Instant;

use streamgate_protocol::{ErrorCode, JobError};
use tracing::{debug, info};

use crate::conn::{Rx, Shared, Tx};
use crate::extract::{self, Selection, Stopped};
use crate::fetch::FetchError;
use crate::job::{self, Outcome, fail, peer_ended, peer_event};
use crate::launch;
use crate::native::{self, Want};
use crate::review;
use crate::sandbox::Sandbox;
use crate::slots::{Refused, Slot};

/// One stream request.
pub(crate) struct Spec<'a> {
    pub tenant: Option<&'a str>,
    pub url: &'a str,
    pub format: &'a str,
    pub want: Want,
    /// When the job frame arrived (debug timings).
    pub started: Instant,
}

pub(crate) async fn run(
    shared: &Shared,
    spec: Spec<'_>,
    sandbox: &Sandbox,
    tx: &mut Tx,
    rx: &mut Rx,
) -> Outcome {
    let key = extract::key(spec.url, spec.format);
    let mut retried = false;
    // A new extraction after an expired URL is the same media: reviewed once.
    let mut to_review = spec.want.review;
    loop {
        let found = match retried {
            false => cached(shared, &spec, &key),
            true => None,
        };
        let from_cache = found.is_some();
        let Found {
            json,
            parsed,
            picked,
        } = match found {
            Some(found) => found,
            None => match extraction(shared, &spec, sandbox, rx).await {
                Ok(json) => {
                    let json = bytes::Bytes::from(json);
                    let parsed = Selection::parse(&json);
                    if parsed.is_ok() {
                        shared.cache.put(spec.tenant, &key, json.clone());
                    }
                    Found {
                        json,
                        parsed,
                        picked: false,
                    }
                }
                Err(Stopped::Failed(e)) => return fail(tx, e, 0).await,
                Err(Stopped::Peer(ev)) => return peer_ended(ev, 0, tx).await,
            },
        };
        debug!(ms = job::ms(spec.started), from_cache, "extracted");
        let info_error =
            |e: String| JobError::new(ErrorCode::Internal, format!("yt-dlp's info JSON: {e}"));
        let selection = match parsed {
            Ok(s) => s,
            Err(e) => return fail(tx, info_error(e), 0).await,
        };
        if std::mem::take(&mut to_review) {
            let facts = match review::facts(&json, picked.then_some(spec.format)) {
                Ok(facts) => facts,
                Err(e) => return fail(tx, info_error(e), 0).await,
            };
            let limit = shared.config.stall_timeout;
            match review::ask(shared, facts, limit, tx, rx).await {
                Ok(()) => debug!(ms = job::ms(spec.started), "the client proceeds"),
                Err(Stopped::Failed(e)) => return fail(tx, e, 0).await,
                Err(Stopped::Peer(ev)) => return peer_ended(ev, 0, tx).await,
            }
        }
        if !selection.native() {
            return with_ytdlp(shared, &spec, &json, sandbox, tx, rx).await;
        }
        let ran = {
            // Several formats are merged by an ffmpeg: a process slot while it runs.
            let _merge = match selection.formats.len() > 1 && !spec.want.head {
                true => match process_slot(shared, spec.tenant, tx, rx).await {
                    Ok(slot) => Some(slot),
                    Err(outcome) => return outcome,
                },
                false => None,
            };
            native::run(shared, sandbox, &selection, spec.want, tx, rx).await
        };
        match ran {
            Ok(outcome) => return outcome,
            Err(FetchError::Unsupported(why)) => {
                info!(%why, "not for the native fetcher: yt-dlp's downloader instead");
                return with_ytdlp(shared, &spec, &json, sandbox, tx, rx).await;
            }
            Err(FetchError::Status(s)) if from_cache && matches!(s.as_u16(), 403 | 410) => {
                info!(status = %s, "a cached media URL stopped working: extracting again");
                // The resolve's info holds the same URLs: the new extraction goes online.
                shared.cache.remove(spec.tenant, &key);
                shared.cache.remove(spec.tenant, spec.url);
                retried = true;
            }
            Err(e) => return fail(tx, sandbox.explain(native::job_error(&e)), 0).await,
        }
    }
}

/// An extraction's JSON and what the stream chose from it.
struct Found {
    json: bytes::Bytes,
    parsed: Result<Selection, String>,
    /// Chosen by `format_id` from a resolve's info, not by yt-dlp's `-f`.
    picked: bool,
}

/// The selection a stream starts with without yt-dlp: the cached one for its selector, else
/// (an exact `format_id`) that format of a resolve's cached info.
fn cached(shared: &Shared, spec: &Spec<'_>, key: &str) -> Option<Found> {
    if let Some(json) = shared.cache.get(spec.tenant, key) {
        let parsed = Selection::parse(&json);
        return Some(Found {
            json,
            parsed,
            picked: false,
        });
    }
    let info = shared.cache.get(spec.tenant, spec.url)?;
    let selection = Selection::by_format_id(&info, spec.format)?;
    debug!("format_id selected from a resolve's info, without yt-dlp");
    Some(Found {
        json: info,
        parsed: Ok(selection),
        picked: true,
    })
}

/// `yt-dlp -J -f FORMAT` in an extraction slot, from a resolve's cached info when there is
/// one.
async fn extraction(
    shared: &Shared,
    spec: &Spec<'_>,
    sandbox: &Sandbox,
    rx: &mut Rx,
) -> Result<Vec<u8>, Stopped> {
    let info = shared.cache.get(spec.tenant, spec.url);
    if let Some(json) = &info {
        debug!(
            bytes = json.len(),
            "extraction cache hit: no network for the extraction"
        );
    }
    let _extraction = match shared
        .slots
        .extractions
        .enter(spec.tenant, &shared.draining, peer_event(rx))
        .await
    {
        Ok(slot) => slot,
        Err(Refused::Busy(e)) => return Err(Stopped::Failed(e)),
        Err(Refused::Peer(ev)) => return Err(Stopped::Peer(ev)),
    };
    let job = sandbox.job_args();
    let args = shared
        .ytdlp
        .extract_args(spec.url, spec.format, info.is_some(), &job);
    let place = sandbox.place();
    let proc = launch::start(
        shared.pool.as_deref(),
        &shared.ytdlp,
        args,
        false,
        info.as_ref(),
        place,
    )
    .await
    .map_err(|e| Stopped::Failed(JobError::new(ErrorCode::Internal, e.to_string())))?;
    extract::read_json(shared, proc, sandbox, rx).await
}

/// Formats the sidecar does not fetch itself (merges, HLS, DASH, …): yt-dlp's downloaders,
/// on the extraction's JSON, in a process slot. Sent whole: such a stream cannot be cut at
/// a byte offset.
async fn with_ytdlp(
    shared: &Shared,
    spec: &Spec<'_>,
    json: &bytes::Bytes,
    sandbox: &Sandbox,
    tx: &mut Tx,
    rx: &mut Rx,
) -> Outcome {
    let _download = match process_slot(shared, spec.tenant, tx, rx).await {
        Ok(slot) => slot,
        Err(outcome) => return outcome,
    };
    let job = sandbox.job_args();
    let args = shared.ytdlp.stream_args(spec.url, spec.format, true, &job);
    let place = sandbox.place();
    let proc = match launch::start(
        shared.pool.as_deref(),
        &shared.ytdlp,
        args,
        true,
        Some(json),
        place,
    )
    .await
    {
        Ok(p) => p,
        Err(e) => {
            tracing::error!("{e}");
            return fail(tx, JobError::new(ErrorCode::Internal, e.to_string()), 0).await;
        }
    };
    tracing::Span::current().record("pgid", proc.pgid());
    debug!(
        ms = job::ms(spec.started),
        pooled = proc.pooled(),
        "yt-dlp download started"
    );
    job::run(shared, proc, spec.started, sandbox, spec.want, tx, rx).await
}

/// A process slot (`--max-jobs`), or how the job ended without one.
async fn process_slot(
    shared: &Shared,
    tenant: Option<&str>,
    tx: &mut Tx,
    rx: &mut Rx,
) -> Result<Slot, Outcome> {
    match shared
        .slots
        .processes
        .enter(tenant, &shared.draining, peer_event(rx))
        .await
    {
        Ok(slot) => Ok(slot),
        Err(Refused::Busy(e)) => Err(fail(tx, e, 0).await),
        Err(Refused::Peer(ev)) => Err(peer_ended(ev, 0, tx).await),
    }
}
