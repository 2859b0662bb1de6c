//! A single-file format fetched with ranges: in chunks when the format asks for them
//! (`http_chunk_size`: yt-dlp sets 10 MiB for YouTube, whose servers throttle longer
//! requests, as Invidious and cobalt know), else in one open-ended request. Either way a
//! dropped or stalled connection resumes at the byte offset instead of starting over, and
//! the exact size comes from `Content-Range`.

use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use hyper::header;
use hyper::{Method, StatusCode};
use streamgate_protocol::ByteRange;
use url::Url;

use super::{FetchError, Fetcher, Response};

/// Attempts to resume after a failure, per stream.
const RETRIES: u32 = 5;

/// What an opened fetch knows before its first byte.
pub struct Opened {
    /// Total size of the file, when the origin said.
    pub size: Option<u64>,
    /// The inclusive span being fetched, when a range was asked for and honoured.
    pub span: Option<(u64, u64)>,
}

/// A single file at `url`.
pub struct Progressive {
    fetcher: Fetcher,
    url: Url,
    /// Bytes per request, when the format asks for chunks.
    chunk: Option<u64>,
    stall: Duration,
}

impl Progressive {
    pub fn new(fetcher: Fetcher, url: Url, chunk: Option<u64>, stall: Duration) -> Progressive {
        Progressive {
            fetcher,
            url,
            chunk: chunk.filter(|c| *c > 0),
            stall,
        }
    }

    /// The size by `HEAD`, no media requested.
    pub async fn size(&self) -> Result<Option<u64>, FetchError> {
        let resp = self.fetcher.request(Method::HEAD, &self.url, None).await?;
        if !resp.status.is_success() {
            return Err(FetchError::Status(resp.status));
        }
        Ok(resp.content_length())
    }

    /// Starts fetching `range` (whole file without one); the first request's answer says
    /// the size and whether the range is honoured.
    pub async fn open(
        self,
        range: Option<ByteRange>,
    ) -> Result<(Opened, impl Stream<Item = Result<Bytes, FetchError>>), FetchError> {
        let first = |size: Option<u64>| match (range, size) {
            (None, _) => self.span(0, None, size),
            (Some(ByteRange::From { start, end }), _) => self.span(start, end, size),
            (Some(ByteRange::Suffix { len }), None) => format!("bytes=-{len}"),
            (Some(ByteRange::Suffix { len }), Some(s)) => {
                self.span(s.saturating_sub(len), None, size)
            }
        };
        let mut resp = self
            .fetcher
            .request(Method::GET, &self.url, Some(&first(None)))
            .await?;
        // Some servers refuse a range reaching past the end instead of clipping it (RFC 9110
        // says clip): ask again within the size they gave, when the range overlaps it.
        if resp.status == StatusCode::RANGE_NOT_SATISFIABLE
            && let Some(size) = unsatisfied_size(&resp)
            && range.map_or(size > 0, |r| r.resolve(size).is_some())
        {
            let again = first(Some(size));
            resp = self
                .fetcher
                .request(Method::GET, &self.url, Some(&again))
                .await?;
        }
        let (opened, next, end) = match resp.status {
            StatusCode::PARTIAL_CONTENT => {
                let (start, stop, size) = resp
                    .content_range()
                    .ok_or_else(|| FetchError::Http("206 without a usable Content-Range".into()))?;
                // The span the client asked for, clipped to the file.
                let wanted_end = match (range, size) {
                    (Some(ByteRange::From { end: Some(e), .. }), Some(s)) => e.min(s - 1),
                    (Some(ByteRange::From { end: Some(e), .. }), None) => e,
                    (Some(ByteRange::Suffix { .. }), _) => stop,
                    (_, Some(s)) => s - 1,
                    (_, None) => u64::MAX,
                };
                let span = range.map(|_| (start, wanted_end));
                (Opened { size, span }, start, wanted_end)
            }
            StatusCode::OK => {
                // The whole file, in one response (an origin without ranges, or one that
                // answers a range covering everything so). Of a known size, the range is
                // still served: cut from the whole body.
                let size = resp.content_length();
                let last = size.map_or(u64::MAX, |s| s.saturating_sub(1));
                match (range, size) {
                    (Some(r), Some(s)) => match r.resolve(s) {
                        Some((a, b)) => (
                            Opened {
                                size,
                                span: Some((a, b)),
                            },
                            a,
                            b,
                        ),
                        None => return Err(FetchError::Unsatisfiable { size }),
                    },
                    _ => (Opened { size, span: None }, 0, last),
                }
            }
            StatusCode::RANGE_NOT_SATISFIABLE => {
                let size = unsatisfied_size(&resp);
                return Err(FetchError::Unsatisfiable { size });
            }
            status => return Err(FetchError::Status(status)),
        };
        let whole_body = resp.status == StatusCode::OK;
        // A whole body holds the bytes before the span too.
        let skip = if whole_body { next } else { 0 };
        let state = State {
            source: self,
            next,
            end,
            skip,
            body: Some(resp),
            whole_body,
            cause: None,
            retries: 0,
        };
        Ok((opened, futures::stream::unfold(state, State::step)))
    }
}

impl Progressive {
    /// `bytes=START-STOP` for at most one chunk from `start`, within `end` and the size;
    /// open-ended (`bytes=START-`) when nothing bounds it.
    fn span(&self, start: u64, end: Option<u64>, size: Option<u64>) -> String {
        let last = size.map(|s| s.saturating_sub(1));
        let chunk_end = self.chunk.map(|c| start.saturating_add(c - 1));
        let stop = [end, last, chunk_end].into_iter().flatten().min();
        match stop {
            Some(stop) => format!("bytes={start}-{stop}"),
            None => format!("bytes={start}-"),
        }
    }
}

/// The size in a 416's `Content-Range: bytes */SIZE`.
fn unsatisfied_size(resp: &Response) -> Option<u64> {
    let value = resp.headers.get(header::CONTENT_RANGE)?.to_str().ok()?;
    value.strip_prefix("bytes */")?.trim().parse().ok()
}

struct State {
    source: Progressive,
    /// Offset of the next byte to yield.
    next: u64,
    /// Last byte wanted (inclusive; `u64::MAX` when the size is unknown).
    end: u64,
    /// Bytes of the current body still to drop before `next` (a whole body cut to a range).
    skip: u64,
    body: Option<Response>,
    /// The current body is the whole file (a 200), bytes before the span included.
    whole_body: bool,
    /// Why the body being resumed failed, reported if the resume cannot be made.
    cause: Option<FetchError>,
    retries: u32,
}

impl State {
    async fn step(mut self) -> Option<(Result<Bytes, FetchError>, State)> {
        loop {
            if self.next > self.end {
                return None;
            }
            let Some(resp) = self.body.as_mut() else {
                match self.request_next().await {
                    Ok(resp) => {
                        self.cause = None;
                        self.body = Some(resp);
                    }
                    // An origin that answers the resume without a range cannot resume: the
                    // failure that needed it is the one to report.
                    Err(FetchError::Status(StatusCode::OK)) if self.cause.is_some() => {
                        let cause = self.cause.take().expect("checked");
                        return self.failed(cause);
                    }
                    Err(e) => return self.failed(e),
                }
                continue;
            };
            match tokio::time::timeout(self.source.stall, resp.data()).await {
                Ok(Some(Ok(mut data))) if !data.is_empty() => {
                    if self.skip > 0 {
                        let dropped = self.skip.min(data.len() as u64);
                        data = data.slice(dropped as usize..);
                        self.skip -= dropped;
                        if data.is_empty() {
                            continue;
                        }
                    }
                    let room = self.end - self.next + 1;
                    let data = if (data.len() as u64) > room {
                        data.slice(..room as usize)
                    } else {
                        data
                    };
                    self.next += data.len() as u64;
                    self.retries = 0;
                    return Some((Ok(data), self));
                }
                Ok(Some(Ok(_))) => {}
                Ok(None) => {
                    self.body = None;
                    if self.whole_body || self.end == u64::MAX {
                        return None; // the origin's body is the whole file
                    }
                }
                Ok(Some(Err(e))) => {
                    tracing::warn!(offset = self.next, "upstream broke, resuming: {e}");
                    self.body = None;
                    if self.give_up().await {
                        return self.failed(FetchError::Http(e));
                    }
                    self.cause = Some(FetchError::Http(e));
                }
                Err(_) => {
                    tracing::warn!(offset = self.next, "upstream stalled, resuming");
                    self.body = None;
                    let stall = self.source.stall;
                    if self.give_up().await {
                        return self.failed(FetchError::Stalled(stall));
                    }
                    self.cause = Some(FetchError::Stalled(stall));
                }
            }
        }
    }

    /// Counts a failure: true when retries are spent, else waits a little before the
    /// caller resumes at `next` (a whole body too: an origin may answer a range covering
    /// the whole file with 200 and still take a range from the middle).
    async fn give_up(&mut self) -> bool {
        self.retries += 1;
        if self.retries > RETRIES {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200 * u64::from(self.retries))).await;
        false
    }

    fn failed(mut self, e: FetchError) -> Option<(Result<Bytes, FetchError>, State)> {
        self.next = u64::MAX; // ends the stream after this error
        self.end = 0;
        Some((Err(e), self))
    }

    /// The next chunk from `next`, checked to start exactly there.
    async fn request_next(&mut self) -> Result<Response, FetchError> {
        loop {
            let end = (self.end != u64::MAX).then_some(self.end);
            let range = self.source.span(self.next, end, None);
            let attempt = self
                .source
                .fetcher
                .request(Method::GET, &self.source.url, Some(&range))
                .await;
            let failure = match attempt {
                Ok(resp) if resp.status == StatusCode::PARTIAL_CONTENT => {
                    match resp.content_range() {
                        Some((start, _, _)) if start == self.next => return Ok(resp),
                        _ => FetchError::Http("resumed at the wrong offset".into()),
                    }
                }
                Ok(resp) => FetchError::Status(resp.status),
                Err(e) => e,
            };
            if matches!(failure, FetchError::Egress(_) | FetchError::Status(_)) {
                return Err(failure);
            }
            self.retries += 1;
            if self.retries > RETRIES {
                return Err(failure);
            }
            tokio::time::sleep(Duration::from_millis(200 * u64::from(self.retries))).await;
        }
    }
}
