//! A loopback static file server for fixtures: `warp::fs::dir` (Range requests, 404 for
//! anything missing) plus `/stall/<file>`, which sends the first MiB of a file with the full
//! Content-Length and then hangs, for stall-timeout tests. It runs on its own thread and
//! runtime, so it outlives any one test's runtime and works from sync tests too.
//!
//! [`FixtureServer::start_on`] binds a given address (the egress tests' "public" origin on a
//! TEST-NET address, their "private" service on `127.0.0.1:80`) and serves generated
//! [`Page`]s (HTML, manifests, redirects) before the directory.
//!
//! Every answer of a route is observed and can be made to misbehave (the native data path's
//! tests): [`FixtureServer::requests`] (method, path, query, `Range`, status),
//! [`FixtureServer::bytes_sent`] and [`FixtureServer::open_responses`] per path, one-shot
//! [`Fault`]s armed per path with [`FixtureServer::arm`], and signed media URLs that expire
//! (`/signed/<file>.html`, [`FixtureServer::rotate_signature`]).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::oneshot;
use warp::Filter;

/// Bytes `/stall/<file>` sends before it stops.
pub const STALL_AFTER: usize = 1024 * 1024;

/// A running server; stops on drop.
pub struct FixtureServer {
    addr: SocketAddr,
    /// Requests answered, by (method, path).
    hits: Arc<Mutex<HashMap<(String, String), usize>>>,
    /// What the routes' answers did, and the faults armed for them.
    live: Arc<Mutex<Live>>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// A generated answer at one exact path, served before the directory's files.
#[derive(Clone, Debug)]
pub struct Page {
    /// The request path it answers, e.g. `/evil/page.html`.
    pub path: String,
    /// The status code.
    pub status: u16,
    /// Response headers (e.g. `content-type`, `location`).
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Bytes,
}

impl Page {
    /// A `200` with `content_type` and `body` at `path`.
    pub fn new(path: &str, content_type: &str, body: impl Into<Bytes>) -> Page {
        Page {
            path: format!("/{}", path.trim_start_matches('/')),
            status: 200,
            headers: vec![("content-type".into(), content_type.into())],
            body: body.into(),
        }
    }

    /// `/uplynk/index.m3u8`: the HLS fixture with ad markers, which the sidecar's native
    /// fetcher refuses, so yt-dlp's own downloader (and its ffmpeg) streams it. Its
    /// segments are the fixture's, served from the directory.
    pub fn hls_for_yt_dlp() -> Page {
        let playlist = std::fs::read_to_string(crate::fixtures().join("hls/index.m3u8"))
            .expect("the HLS fixture");
        let playlist = playlist
            .replace("#EXTINF", "#UPLYNK-SEGMENT:0,00000000,segment\n#EXTINF")
            .replace("seg0", "/hls/seg0");
        Page::new(
            "/uplynk/index.m3u8",
            "application/vnd.apple.mpegurl",
            playlist,
        )
    }

    /// A `302 Found` to `location` at `path`.
    pub fn redirect(path: &str, location: &str) -> Page {
        Page {
            path: format!("/{}", path.trim_start_matches('/')),
            status: 302,
            headers: vec![("location".into(), location.into())],
            body: Bytes::new(),
        }
    }

    fn reply(&self) -> warp::reply::Response {
        let mut response = warp::reply::Response::new(self.body.clone().into());
        *response.status_mut() =
            warp::http::StatusCode::from_u16(self.status).expect("a valid status");
        let headers = response.headers_mut();
        for (name, value) in &self.headers {
            let name = warp::http::HeaderName::from_bytes(name.as_bytes()).expect("header name");
            headers.insert(name, value.parse().expect("header value"));
        }
        response
    }
}

impl FixtureServer {
    /// Serves `dir` on 127.0.0.1 at a free port.
    pub fn start(dir: &Path) -> FixtureServer {
        FixtureServer::start_on(dir, SocketAddr::from(([127, 0, 0, 1], 0)), Vec::new())
    }

    /// Serves `pages`, then `dir`, on `addr` (port 0: a free one). Panics if it cannot bind.
    pub fn start_on(dir: &Path, addr: SocketAddr, pages: Vec<Page>) -> FixtureServer {
        let dir: PathBuf = dir.to_owned();
        let listener =
            std::net::TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let addr = listener.local_addr().expect("local addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let hits = Arc::new(Mutex::new(HashMap::new()));
        let counter = Arc::clone(&hits);
        let live = Arc::new(Mutex::new(Live::default()));
        let (observed, signing) = (Arc::clone(&live), Arc::clone(&live));
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("server runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
                let stall_dir = dir.clone();
                let stall = warp::path!("stall" / String)
                    .map(move |name: String| stall_reply(&stall_dir, &name));
                let count = warp::log::custom(move |info: warp::log::Info<'_>| {
                    let mut hits = counter.lock().unwrap_or_else(|e| e.into_inner());
                    let key = (info.method().to_string(), info.path().to_owned());
                    *hits.entry(key).or_insert(0) += 1;
                });
                let pages = Arc::new(pages);
                let generated = warp::path::full().and_then(move |path: warp::path::FullPath| {
                    let page = pages
                        .iter()
                        .find(|p| p.path == path.as_str())
                        .map(Page::reply);
                    async move { page.ok_or_else(warp::reject::not_found) }
                });
                let signed = warp::path!("signed" / String)
                    .map(move |page: String| signed_page(&signing, &page));
                let routes = generated
                    .or(stall)
                    .unify()
                    .or(signed)
                    .unify()
                    .or(warp::fs::dir(dir).map(warp::Reply::into_response))
                    .unify();
                let request = warp::path::full()
                    .and(warp::method())
                    .and(warp::header::optional::<String>("range"))
                    .and(warp::query::raw().or(warp::any().map(String::new)).unify());
                let routes = request
                    .and(routes)
                    .map(
                        move |path: warp::path::FullPath,
                              method: warp::http::Method,
                              range: Option<String>,
                              query: String,
                              reply: warp::reply::Response| {
                            let seen = Seen {
                                method: format!("{method}"),
                                path: path.as_str().to_owned(),
                                query,
                                range,
                                status: 0,
                            };
                            observe(&observed, seen, reply)
                        },
                    )
                    .with(count);
                warp::serve(routes)
                    .incoming(listener)
                    .graceful(async {
                        let _ = stopped.await;
                    })
                    .run()
                    .await;
            });
        });
        FixtureServer {
            addr,
            hits,
            live,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:PORT/<path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}/{}", self.addr, path.trim_start_matches('/'))
    }

    /// Requests answered so far for `path` (e.g. `/progressive.mp4`), any method or status.
    pub fn hits(&self, path: &str) -> usize {
        let hits = self.hits.lock().unwrap_or_else(|e| e.into_inner());
        hits.iter()
            .filter(|((_, p), _)| p == path)
            .map(|(_, n)| n)
            .sum()
    }

    /// Requests answered so far for `path` with `method` (`GET`, `HEAD`), any status.
    pub fn method_hits(&self, method: &str, path: &str) -> usize {
        let hits = self.hits.lock().unwrap_or_else(|e| e.into_inner());
        let key = (method.to_owned(), path.to_owned());
        hits.get(&key).copied().unwrap_or(0)
    }

    /// Requests answered so far, any path, method or status.
    pub fn total_hits(&self) -> usize {
        let hits = self.hits.lock().unwrap_or_else(|e| e.into_inner());
        hits.values().sum()
    }

    /// Every `METHOD path` requested so far with its count, sorted (for assertion messages).
    pub fn all_hits(&self) -> Vec<(String, usize)> {
        let hits = self.hits.lock().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<_> = hits
            .iter()
            .map(|((m, p), n)| (format!("{m} {p}"), *n))
            .collect();
        all.sort();
        all
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn live(&self) -> std::sync::MutexGuard<'_, Live> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every request a route answered (generated pages, `/stall/`, `/signed/`, files; not
    /// the 404s of missing files), in order.
    pub fn requests(&self) -> Vec<Seen> {
        self.live().requests.clone()
    }

    /// The `GET`s of `path` (e.g. `/progressive.mp4`), any query, in order.
    pub fn gets(&self, path: &str) -> Vec<Seen> {
        let live = self.live();
        let gets = live
            .requests
            .iter()
            .filter(|s| s.method == "GET" && s.path == path);
        gets.cloned().collect()
    }

    /// Body bytes of `path`'s answers handed to their connections so far (the connection
    /// may still hold the last chunk or two in its write buffer).
    pub fn bytes_sent(&self, path: &str) -> u64 {
        self.live().sent.get(path).copied().unwrap_or(0)
    }

    /// Answers of `path` whose body is still being sent: one whose client went away counts
    /// until the server notices (its next write fails) and drops it.
    pub fn open_responses(&self, path: &str) -> usize {
        self.live().open.get(path).copied().unwrap_or(0)
    }

    /// The next `GET` of `path` (after any faults armed before) misbehaves as `fault` says;
    /// each call arms one request. Requests with a query string count too.
    pub fn arm(&self, path: &str, fault: Fault) {
        let path = format!("/{}", path.trim_start_matches('/'));
        self.live().faults.entry(path).or_default().push_back(fault);
    }

    /// Faults armed for `path` and not yet used.
    pub fn armed(&self, path: &str) -> usize {
        self.live().faults.get(path).map_or(0, VecDeque::len)
    }

    /// `on`: a `Range` covering a whole file is answered `206` with its `Content-Range`, as
    /// nginx, Apache or S3 answer `bytes=0-`; off (the default): `200` with `Accept-Ranges:
    /// bytes`, as warp's file server does (RFC 9110 allows both).
    pub fn partial_for_whole_ranges(&self, on: bool) {
        self.live().whole_range_206 = on;
    }

    /// URL of the page `/signed/<file>.html`: a `<video src>` naming `/<file>?sig=vN`, the
    /// current signature. Media with an expired signature answers 403.
    pub fn signed_page(&self, file: &str) -> String {
        self.url(&format!("signed/{}.html", file.trim_start_matches('/')))
    }

    /// New signature: pages name `v(N+1)` from now on, and media asked with any older one
    /// answers 403 (an expired signed URL, as a CDN's).
    pub fn rotate_signature(&self) {
        let mut live = self.live();
        live.signature.current += 1;
        live.signature.valid_from = live.signature.current;
    }

    /// Every signature expires, the one pages name included: media answers 403 until the
    /// next [`FixtureServer::rotate_signature`].
    pub fn revoke_signatures(&self) {
        let mut live = self.live();
        live.signature.valid_from = live.signature.current + 1;
    }
}

/// One request a route answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    /// `GET`, `HEAD`, …
    pub method: String,
    /// The path, e.g. `/progressive.mp4`.
    pub path: String,
    /// The raw query string (empty without one).
    pub query: String,
    /// The `Range` header, if any.
    pub range: Option<String>,
    /// The status answered.
    pub status: u16,
}

/// How one armed answer misbehaves ([`FixtureServer::arm`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Send at most this many bytes of the body, then close the connection mid-body (the
    /// status and headers are the route's own: a `Range` is honoured).
    DropAfter(u64),
    /// Send at most this many bytes of the body, then nothing, with the connection open.
    StallAfter(u64),
    /// Answer this status with an empty body instead.
    Status(u16),
}

/// Signatures of `/signed/` media: pages name `current`; media asked with a signature
/// below `valid_from` (or above `current`) answers 403.
#[derive(Debug)]
struct Signature {
    current: u32,
    valid_from: u32,
}

#[derive(Debug)]
struct Live {
    requests: Vec<Seen>,
    sent: HashMap<String, u64>,
    open: HashMap<String, usize>,
    faults: HashMap<String, VecDeque<Fault>>,
    signature: Signature,
    /// [`FixtureServer::partial_for_whole_ranges`].
    whole_range_206: bool,
}

impl Default for Live {
    fn default() -> Live {
        Live {
            requests: Vec::new(),
            sent: HashMap::new(),
            open: HashMap::new(),
            faults: HashMap::new(),
            signature: Signature {
                current: 1,
                valid_from: 1,
            },
            whole_range_206: false,
        }
    }
}

fn lock(live: &Mutex<Live>) -> std::sync::MutexGuard<'_, Live> {
    live.lock().unwrap_or_else(|e| e.into_inner())
}

/// `/signed/<file>.html`: a page whose `<video src>` is the file with the current signature.
fn signed_page(live: &Mutex<Live>, page: &str) -> warp::reply::Response {
    use warp::Reply;
    let Some(file) = page.strip_suffix(".html") else {
        return warp::http::StatusCode::NOT_FOUND.into_response();
    };
    let sig = lock(live).signature.current;
    let html = format!(
        "<!doctype html><html><head><title>signed {file}</title></head><body>\
         <video controls src=\"/{file}?sig=v{sig}\"></video></body></html>\n"
    );
    warp::reply::html(html).into_response()
}

/// Applies an expired signature or an armed fault to a route's answer, records the
/// request, and counts the body's bytes and life.
fn observe(
    live: &Arc<Mutex<Live>>,
    mut seen: Seen,
    reply: warp::reply::Response,
) -> warp::reply::Response {
    use warp::Reply;
    let mut state = lock(live);
    let signature = seen
        .query
        .split('&')
        .find_map(|kv| kv.strip_prefix("sig=v"))
        .map(|n| n.parse::<u32>().unwrap_or(0));
    let expired =
        signature.is_some_and(|n| n < state.signature.valid_from || n > state.signature.current);
    let fault = match seen.method == "GET" {
        true => state
            .faults
            .get_mut(&seen.path)
            .and_then(VecDeque::pop_front),
        false => None,
    };
    let reply = match (expired, fault) {
        (true, _) => warp::http::StatusCode::FORBIDDEN.into_response(),
        (false, Some(Fault::Status(code))) => {
            let code = warp::http::StatusCode::from_u16(code).expect("a valid status");
            code.into_response()
        }
        (false, _) => reply,
    };
    let reply = match state.whole_range_206 && seen.range.is_some() {
        true => whole_range_as_partial(reply),
        false => reply,
    };
    seen.status = reply.status().as_u16();
    let path = seen.path.clone();
    state.requests.push(seen);
    *state.open.entry(path.clone()).or_insert(0) += 1;
    drop(state);
    let (parts, body) = reply.into_parts();
    let limit = match fault {
        Some(Fault::DropAfter(n)) => Some((n, false)),
        Some(Fault::StallAfter(n)) => Some((n, true)),
        _ => None,
    };
    let counted = Counted {
        body,
        path,
        live: Arc::clone(live),
        sent: 0,
        limit,
        closing: None,
    };
    let body = warp::reply::stream(counted).into_response().into_body();
    warp::reply::Response::from_parts(parts, body)
}

/// A `200` to a `Range` request from a route that does ranges (`Accept-Ranges: bytes`,
/// so the range covered the whole file) as the equivalent `206`.
fn whole_range_as_partial(mut reply: warp::reply::Response) -> warp::reply::Response {
    let headers = reply.headers();
    let ranges = headers.get("accept-ranges").is_some_and(|v| v == "bytes");
    let length = headers
        .get("content-length")
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if let (warp::http::StatusCode::OK, true, Some(len @ 1..)) = (reply.status(), ranges, length) {
        *reply.status_mut() = warp::http::StatusCode::PARTIAL_CONTENT;
        let range = format!("bytes 0-{}/{len}", len - 1);
        let value = warp::http::HeaderValue::from_str(&range).expect("a header value");
        reply.headers_mut().insert("content-range", value);
    }
    reply
}

/// A route's body, counted into [`Live`] as it is handed to the connection; an armed
/// [`Fault::DropAfter`] or [`Fault::StallAfter`] cuts it.
struct Counted<B> {
    body: B,
    path: String,
    live: Arc<Mutex<Live>>,
    sent: u64,
    /// (bytes, stall instead of closing)
    limit: Option<(u64, bool)>,
    /// When the limit was reached on a closing fault: the time the connection gets to
    /// flush what it holds before the body fails.
    closing: Option<std::time::Instant>,
}

/// Time a [`Fault::DropAfter`] answer gets to flush its last bytes before the connection
/// is closed.
const DROP_FLUSH: Duration = Duration::from_millis(200);

impl<B> futures::Stream for Counted<B>
where
    B: warp::hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if let Some((limit, stall)) = this.limit
            && this.sent >= limit
        {
            if stall {
                return Poll::Pending; // never woken: silence until the client leaves
            }
            let since = *this.closing.get_or_insert_with(std::time::Instant::now);
            if since.elapsed() >= DROP_FLUSH {
                let cut = std::io::Error::other("fault: connection dropped mid-body");
                return Poll::Ready(Some(Err(cut)));
            }
            let waker = cx.waker().clone();
            let left = DROP_FLUSH.saturating_sub(since.elapsed());
            tokio::spawn(async move {
                tokio::time::sleep(left).await;
                waker.wake();
            });
            return Poll::Pending;
        }
        loop {
            let frame = match Pin::new(&mut this.body).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Ready(Some(Err(e))) => {
                    return Poll::Ready(Some(Err(std::io::Error::other(e.to_string()))));
                }
                Poll::Ready(Some(Ok(frame))) => frame,
            };
            let Ok(mut data) = frame.into_data() else {
                continue; // trailers
            };
            if let Some((limit, _)) = this.limit {
                data.truncate((limit - this.sent).min(data.len() as u64) as usize);
            }
            if data.is_empty() && this.limit.is_some_and(|(l, _)| this.sent >= l) {
                cx.waker().wake_by_ref(); // the fault's turn
                return Poll::Pending;
            }
            this.sent += data.len() as u64;
            *lock(&this.live).sent.entry(this.path.clone()).or_insert(0) += data.len() as u64;
            return Poll::Ready(Some(Ok(data)));
        }
    }
}

impl<B> Drop for Counted<B> {
    fn drop(&mut self) {
        let mut live = lock(&self.live);
        if let Some(open) = live.open.get_mut(&self.path) {
            *open = open.saturating_sub(1);
        }
    }
}

fn stall_reply(dir: &Path, name: &str) -> warp::reply::Response {
    use warp::Reply;
    let Ok(file) = std::fs::read(dir.join(name)) else {
        return warp::http::StatusCode::NOT_FOUND.into_response();
    };
    let head = Bytes::copy_from_slice(&file[..file.len().min(STALL_AFTER)]);
    let body =
        futures::stream::iter([Ok::<_, std::io::Error>(head)]).chain(futures::stream::pending());
    let mut response = warp::reply::stream(body).into_response();
    let headers = response.headers_mut();
    headers.insert("content-length", file.len().into());
    headers.insert(
        "content-type",
        warp::http::HeaderValue::from_static("video/mp4"),
    );
    response
}

use futures::StreamExt;

impl Drop for FixtureServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // Graceful shutdown waits for open connections; a stalled one would hang the drop.
        drop(self.thread.take());
    }
}

/// The standard fixtures on one loopback server shared by a whole test binary.
pub fn server() -> &'static FixtureServer {
    static SERVER: std::sync::OnceLock<FixtureServer> = std::sync::OnceLock::new();
    SERVER.get_or_init(|| FixtureServer::start(crate::fixtures()))
}

/// URL of `large.mp4` (≥ 200 MB) on its own loopback server, shared by a test binary.
pub fn large_url() -> String {
    static SERVER: std::sync::OnceLock<FixtureServer> = std::sync::OnceLock::new();
    let dir = crate::large_fixture().parent().expect("fixture dir");
    SERVER
        .get_or_init(|| FixtureServer::start(dir))
        .url("large.mp4")
}
