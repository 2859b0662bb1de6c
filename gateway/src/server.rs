//! The HTTP surface: the route table ([`routes`] for clients, [`admin_routes`] for the admin
//! listener; warp filters handing each route to its
//! handler, one `recover`, every response counted), served through hyper-util the way
//! `warp::serve(..).incoming(..).graceful(..)` does it (HTTP/1 and HTTP/2 on one listener, upgrades, graceful
//! shutdown that lets open responses finish), with the defences warp 0.4 does not expose:
//! HTTP/1's write buffer capped at [`HTTP1_MAX_BUF`] (hyper's default, ≈ 400 KiB, lets a client
//! that stops reading park that much of the body per stream), and `[server]`'s timeouts and
//! connection cap (docs/config.md), so one hostile client holds one connection for a bounded
//! time, and many of them cannot take the process's descriptors.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::{FutureExt, TryStreamExt};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;
use warp::host::Authority;
use warp::http::{Method, Request, Version};
use warp::{Filter, Rejection, Reply};

use crate::app::App;
use crate::error::{GatewayError, Problem, recover};
use crate::metrics::{self, Metrics};
use crate::request::{ClientAddr, host, request_parts};
use crate::{resolve, stream, web};

/// hyper's HTTP/1 write buffer per connection: it stops polling the body for more once this
/// much is queued, so a stalled client holds at most this plus one body chunk. Also the most
/// a request head may take (hyper's read buffer), far above any real request.
pub const HTTP1_MAX_BUF: usize = 32 * 1024;

/// Connections the admin listener holds at once: a scraper and an operator or two.
const ADMIN_MAX_CONNECTIONS: usize = 16;

/// Serves `routes(app)` (clients) on `listener` until `shutdown` is cancelled, then stops
/// accepting, asks every connection to finish (responses in flight complete; keep-alive
/// ends), and returns once all of them are closed. `app.server` sets the timeouts and the cap.
/// One token stops both listeners (`main`) or none (tests pass one never cancelled).
pub async fn run(listener: TcpListener, app: Arc<App>, shutdown: CancellationToken) {
    let filter = routes(app.clone());
    let service = move || TowerToHyperService::new(warp::service(filter.clone()));
    let (cap, metrics) = (app.server.max_connections, Some(app.metrics.clone()));
    serve(listener, &app, cap, metrics, service, shutdown).await;
}

/// Serves [`admin_routes`] on `listener` (`[server] admin_listen`) the way [`run`] serves
/// clients: same timeouts, a cap of its own ([`ADMIN_MAX_CONNECTIONS`]), so clients at their
/// cap do not lock the operator out. Its connections are not counted: the connection metrics
/// describe the clients (a scrape would count itself).
pub async fn run_admin(listener: TcpListener, app: Arc<App>, shutdown: CancellationToken) {
    let filter = admin_routes(app.clone());
    let service = move || TowerToHyperService::new(warp::service(filter.clone()));
    serve(
        listener,
        &app,
        ADMIN_MAX_CONNECTIONS,
        None,
        service,
        shutdown,
    )
    .await;
}

/// The accept loop and connection setup both listeners share: `cap` connections at once,
/// each served by a fresh `service()` under `app.server`'s timeouts, counted in `metrics`.
async fn serve<M, S>(
    listener: TcpListener,
    app: &App,
    cap: usize,
    metrics: Option<Metrics>,
    service: M,
    shutdown: CancellationToken,
) where
    M: Fn() -> S,
    S: hyper::service::Service<
            Request<Incoming>,
            Response = warp::reply::Response,
            Error = Infallible,
        > + Send
        + 'static,
    S::Future: Send + 'static,
{
    let settings = app.server.clone();
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(cap));
    loop {
        let (io, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    accept_error(e).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        // Over the cap: accepted and closed at once (Envoy's `max_connections`), so the
        // backlog does not fill with clients that would wait for nothing.
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            if let Some(metrics) = &metrics {
                metrics.connection_refused();
            }
            drop(io);
            continue;
        };
        let open = metrics.as_ref().map(Metrics::connection);
        let asked = CancellationToken::new();
        let stalled = CancellationToken::new();
        let svc = service();
        let svc = {
            let (asked, stalled) = (asked.clone(), stalled.clone());
            let (limit, metrics) = (settings.idle_write_timeout(), metrics.clone());
            hyper::service::service_fn(move |mut req: Request<Incoming>| {
                asked.cancel();
                req.extensions_mut().insert(ClientAddr(remote));
                let watch = (req.version() == Version::HTTP_2)
                    .then(|| FlowStall::watch(limit, stalled.clone(), metrics.clone()));
                // hyper keeps this future in a slot that lives as long as the connection
                // (HTTP/1) or the stream (HTTP/2), so its size is paid by every stalled
                // stream: warp's future (≈ 13 KiB) is boxed, freed once the head is out, and
                // wrapped by `map`, not an async block, which would hold it twice (as capture
                // and across its await: 27 KiB, bench/results/2026-12-02-session6-pss.md).
                Box::pin(svc.call(req)).map(move |answer| {
                    answer.map(|resp| resp.map(|body| WatchedBody { body, watch }))
                })
            })
        };
        let watcher = graceful.watcher();
        let (settings, metrics) = (settings.clone(), metrics.clone());
        tokio::spawn(async move {
            let _held = (slot, open);
            let header_timeout = settings.header_read_timeout();
            let io = WriteStall::new(io, settings.idle_write_timeout(), metrics.clone());
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .max_buf_size(HTTP1_MAX_BUF)
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout);
            builder
                .http2()
                .timer(TokioTimer::new())
                .keep_alive_interval(settings.http2_keep_alive())
                .keep_alive_timeout(settings.http2_keep_alive());
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
            // hyper's header timeout runs once HTTP/1 is chosen; until then (the auto
            // builder reading the first bytes, or an HTTP/2 preface) this one does.
            let no_request = async {
                let asked = tokio::time::timeout(header_timeout, asked.cancelled()).await;
                asked.is_err()
            };
            tokio::select! {
                served = watcher.watch(conn) => if let Err(err) = served {
                    connection_error(metrics.as_ref(), &*err);
                },
                true = no_request => timed_out(metrics.as_ref(), "header"),
                // Dropping the connection drops its responses' bodies: jobs cancelled.
                () = stalled.cancelled() => tracing::debug!("HTTP/2 connection closed: a stream took no byte"),
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// One connection's failure: a header timeout is counted; none is worth more than a debug
/// line (a client may cause any of them at will).
fn connection_error(metrics: Option<&Metrics>, err: &(dyn std::error::Error + 'static)) {
    let header_timeout = err
        .downcast_ref::<hyper::Error>()
        .is_some_and(hyper::Error::is_timeout);
    if header_timeout {
        timed_out(metrics, "header");
    }
    tracing::debug!("client connection closed: {err}");
}

/// A connection closed by a timeout, counted when its listener is.
fn timed_out(metrics: Option<&Metrics>, kind: &'static str) {
    if let Some(metrics) = metrics {
        metrics.connection_timed_out(kind);
    }
}

/// Descriptors exhausted: accepting again at once would spin, so it pauses a second (what
/// warp and hyper 0.14 did for every error). Any other error belongs to one connection.
async fn accept_error(e: io::Error) {
    match e.raw_os_error() {
        Some(libc::EMFILE | libc::ENFILE) => {
            tracing::error!("accept error: {e}; pausing for a second");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        _ => tracing::debug!("accept error: {e}"),
    }
}

/// A client socket whose writes may wait at most `limit` for the client to take a byte: a
/// write still pending after it fails (`TimedOut`), hyper closes the connection, and the
/// response's body drops with it — its sidecar job cancelled, its limiter slot freed. hyper
/// polls the write on every wake-up while data is queued, so the timer (registered with the
/// same waker) is seen even when hyper has stopped polling the body.
struct WriteStall {
    io: TcpStream,
    limit: Duration,
    stalled: Option<Pin<Box<Sleep>>>,
    metrics: Option<Metrics>,
}

impl WriteStall {
    fn new(io: TcpStream, limit: Duration, metrics: Option<Metrics>) -> Self {
        WriteStall {
            io,
            limit,
            stalled: None,
            metrics,
        }
    }

    /// Progress clears the timer; `Pending` starts it (once) and checks it.
    fn watch<T>(
        &mut self,
        polled: Poll<io::Result<T>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.stalled = None;
            return polled;
        }
        let limit = self.limit;
        let stall = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        if stall.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        timed_out(self.metrics.as_ref(), "idle_write");
        // Counted once: the connection ends on this error.
        self.stalled = None;
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("the client took no byte for {} s", limit.as_secs()),
        )))
    }
}

/// The HTTP/2 share of the idle-write timeout. A client that stops granting flow-control
/// window to one stream makes hyper stop polling that stream's body with no socket write
/// pending, so [`WriteStall`] never sees it. A watchdog per HTTP/2 response measures how long
/// the body has waited to be polled again after handing over data (a body waiting on the
/// sidecar is not stalled: hyper polled it); past the timeout it closes the connection — the
/// one way to reach a body hyper no longer polls — and with it the connection's streams.
struct FlowStall {
    /// When the body last handed over data and has not been polled since; `None` otherwise.
    handed: std::sync::Mutex<Option<tokio::time::Instant>>,
}

impl FlowStall {
    /// A clock for one response, and its watchdog: it ends with the response's body.
    fn watch(limit: Duration, stalled: CancellationToken, metrics: Option<Metrics>) -> Arc<Self> {
        let clock = Arc::new(FlowStall {
            handed: std::sync::Mutex::new(None),
        });
        let weak = Arc::downgrade(&clock);
        let check = (limit / 4).max(Duration::from_millis(100));
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = tokio::time::sleep(check) => {}
                    () = stalled.cancelled() => return,
                }
                let Some(clock) = weak.upgrade() else { return };
                let waited = clock.lock().map(|since| since.elapsed());
                if waited.is_some_and(|w| w >= limit) {
                    timed_out(metrics.as_ref(), "idle_write");
                    stalled.cancel();
                    return;
                }
            }
        });
        clock
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<tokio::time::Instant>> {
        self.handed.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A response body, with [`FlowStall`]'s clock when it goes out over HTTP/2.
struct WatchedBody<B> {
    body: B,
    watch: Option<Arc<FlowStall>>,
}

impl<B: hyper::body::Body + Unpin> hyper::body::Body for WatchedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<B::Data>, B::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        if let Some(clock) = &this.watch {
            let handed = matches!(&polled, Poll::Ready(Some(Ok(f))) if f.is_data());
            *clock.lock() = handed.then(tokio::time::Instant::now);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

impl AsyncRead for WriteStall {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl AsyncWrite for WriteStall {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write(cx, buf);
        this.watch(polled, cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.watch(polled, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// Paths whose requests belong to a tenant; everything else counts under `-`.
const TENANT_ROUTES: [&str; 3] = ["/stream", "/v1/stream", "/v1/resolve"];

/// The whole HTTP surface; every response is counted in `http_requests_total` with the
/// tenant its host resolves to and its final status.
pub fn routes(app: Arc<App>) -> impl Filter<Extract = (impl Reply,), Error = Infallible> + Clone {
    let healthz = warp::path!("healthz")
        .and(get_or_head())
        .map(|_| warp::reply::json(&json!({ "status": "ok" })).into_response());
    let readyz = warp::path!("readyz")
        .and(get_or_head())
        .and(with_app(app.clone()))
        .and_then(|_, app| ready(app, Readiness::Terse));
    let stream = warp::path!("stream")
        .or(warp::path!("v1" / "stream"))
        .unify()
        .and(get_or_head())
        .and(request_parts())
        .and(with_app(app.clone()))
        .and_then(|_, parts, app| stream::handle(parts, app));
    let resolve = warp::path!("v1" / "resolve")
        .and(warp::post())
        .and(warp::body::content_length_limit(resolve::MAX_BODY_BYTES))
        .and(body_within(app.server.resolve_body_timeout()))
        .and(request_parts())
        .and(with_app(app.clone()))
        .and_then(resolve::handle);
    let all = (healthz.or(readyz).unify())
        .or(stream)
        .unify()
        .or(resolve)
        .unify()
        .or(web::routes(app.clone()))
        .unify();
    let counted = app.clone();
    warp::path::full()
        .and(host())
        .and(all.recover(recover).unify())
        .map(
            move |path: warp::path::FullPath, host: Option<Authority>, mut reply| {
                name_allowed_methods(path.as_str(), &mut reply);
                count_request(&counted, path.as_str(), host.as_ref(), &reply);
                reply
            },
        )
}

/// The admin listener's surface: `/metrics` and the detailed `/readyz` (tenant names,
/// traffic, versions: not for clients). Not counted in `http_requests_total` (scrapes are
/// not traffic).
pub fn admin_routes(
    app: Arc<App>,
) -> impl Filter<Extract = (impl Reply,), Error = Infallible> + Clone {
    let readyz = warp::path!("readyz")
        .and(get_or_head())
        .and(with_app(app.clone()))
        .and_then(|_, app| ready(app, Readiness::Detailed));
    let metrics = warp::path!("metrics")
        .and(get_or_head())
        .and(with_app(app))
        .map(|_, app: Arc<App>| {
            let text = app.metrics.encode();
            let reply = warp::reply::with_header(text, "content-type", metrics::CONTENT_TYPE);
            reply.into_response()
        });
    warp::path::full()
        .and(readyz.or(metrics).unify().recover(recover).unify())
        .map(|path: warp::path::FullPath, mut reply| {
            name_allowed_methods(path.as_str(), &mut reply);
            reply
        })
}

/// RFC 9110 §15.5.6: a 405 must name the methods the resource takes (`Allow`); `recover`
/// sees the rejection, not the path, so it is added here.
fn name_allowed_methods(path: &str, reply: &mut warp::reply::Response) {
    if reply.status() != warp::http::StatusCode::METHOD_NOT_ALLOWED {
        return;
    }
    let methods = match path {
        "/v1/resolve" => "POST",
        _ => "GET, HEAD",
    };
    let value = warp::http::HeaderValue::from_static(methods);
    reply.headers_mut().insert(warp::http::header::ALLOW, value);
}

/// `http_requests_total`, labelled with the tenant the host resolves to (bounded by the
/// config) and the final status, whichever handler or `recover` produced it.
fn count_request(app: &App, path: &str, host: Option<&Authority>, reply: &warp::reply::Response) {
    let tenants = app.tenants.load();
    let tenant = match TENANT_ROUTES.contains(&path) {
        true => tenants
            .for_host(host.map(Authority::host))
            .map(|t| t.id.as_str()),
        false => None,
    };
    let tenant = tenant.unwrap_or(metrics::NO_TENANT);
    app.metrics.request(tenant, reply.status().as_u16());
}

/// The whole body, refused with 408 unless it arrives within `limit` (a client trickling
/// its declared bytes would hold the handler; the length is capped before this runs).
fn body_within(limit: Duration) -> impl Filter<Extract = (Bytes,), Error = Rejection> + Clone {
    warp::body::stream().and_then(move |body| async move {
        let collect = collect(body);
        let refused = |error| {
            warp::reject::custom(Problem {
                error,
                request_id: None,
            })
        };
        match tokio::time::timeout(limit, collect).await {
            Ok(Ok(all)) => Ok(all.freeze()),
            Ok(Err(e)) => Err(refused(GatewayError::BadRequest(format!(
                "reading the body: {e}"
            )))),
            Err(_) => Err(refused(GatewayError::BodyTimeout)),
        }
    })
}

async fn collect(
    body: impl futures::Stream<Item = Result<impl Buf, warp::Error>>,
) -> Result<BytesMut, warp::Error> {
    body.try_fold(BytesMut::new(), |mut all, chunk| async move {
        all.put(chunk);
        Ok(all)
    })
    .await
}

fn with_app(app: Arc<App>) -> impl Filter<Extract = (Arc<App>,), Error = Infallible> + Clone {
    warp::any().map(move || app.clone())
}

/// Extracts the method, refusing anything but GET and HEAD (405 through `recover`).
fn get_or_head() -> impl Filter<Extract = (Method,), Error = Rejection> + Clone {
    warp::get()
        .map(|| Method::GET)
        .or(warp::head().map(|| Method::HEAD))
        .unify()
}

/// What `/readyz` tells: the status alone (clients), or what runs and how (admin).
#[derive(Clone, Copy)]
enum Readiness {
    Terse,
    Detailed,
}

/// `/readyz`: the sidecar answers a handshake.
async fn ready(app: Arc<App>, readiness: Readiness) -> Result<warp::reply::Response, Rejection> {
    match app.sidecar.probe().await {
        Ok(w) => Ok(warp::reply::json(&match readiness {
            Readiness::Terse => json!({ "status": "ready" }),
            Readiness::Detailed => json!({
                "status": "ready",
                "sidecar": w.sidecar,
                "yt_dlp": w.yt_dlp,
                "egress": w.egress.as_str(),
                "active_streams": app.drain.active(),
            }),
        })
        .into_response()),
        Err(e) => Err(warp::reject::custom(Problem {
            error: e.into(),
            request_id: None,
        })),
    }
}
