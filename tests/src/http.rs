//! A loopback static file server for fixtures: `warp::fs::dir` (Range requests, 404 for
//! anything missing) plus `/stall/<file>`, which sends the first MiB of a file with the full
//! Content-Length and then hangs, for stall-timeout tests. It runs on its own thread and
//! runtime, so it outlives any one test's runtime and works from sync tests too.
//!
//! [`FixtureServer::start_on`] binds a given address (the egress tests' "public" origin on a
//! TEST-NET address, their "private" service on `127.0.0.1:80`) and serves generated
//! [`Page`]s (HTML, manifests, redirects) before the directory.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

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
                let routes = generated
                    .or(stall)
                    .unify()
                    .or(warp::fs::dir(dir).map(warp::Reply::into_response))
                    .unify()
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
