//! The HTTP surface: the route table ([`routes`], warp filters handing each route to its
//! handler, one `recover`, every response counted), served through hyper-util the way
//! `warp::serve(..).incoming(..).graceful(..)` does it (HTTP/1 and HTTP/2 on one listener, upgrades, graceful
//! shutdown that lets open responses finish), with one difference: HTTP/1's write buffer is
//! capped at [`HTTP1_MAX_BUF`]. hyper's default (≈ 400 KiB) lets a client that stops reading
//! park that much of the body in the gateway per stream; warp 0.4 offers no way to set it.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::service::Service as _;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use serde_json::json;
use tokio::net::TcpListener;
use warp::host::Authority;
use warp::http::{Method, Request};
use warp::{Filter, Rejection, Reply};

use crate::app::App;
use crate::error::{Problem, recover};
use crate::metrics;
use crate::request::{ClientAddr, host, request_parts};
use crate::{resolve, stream, web};

/// hyper's HTTP/1 write buffer per connection: it stops polling the body for more once this
/// much is queued, so a stalled client holds at most this plus one body chunk. Also the most
/// a request head may take (hyper's read buffer), far above any real request.
pub const HTTP1_MAX_BUF: usize = 32 * 1024;

/// Serves `routes(app)` on `listener` until `shutdown` resolves, then stops accepting,
/// asks every connection to finish (responses in flight complete; keep-alive ends), and
/// returns once all of them are closed.
pub async fn run(listener: TcpListener, app: Arc<App>, shutdown: impl Future<Output = ()>) {
    let filter = routes(app);
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (io, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    accept_error(e).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let svc = TowerToHyperService::new(warp::service(filter.clone()));
        let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
            req.extensions_mut().insert(ClientAddr(remote));
            svc.call(req)
        });
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder.http1().max_buf_size(HTTP1_MAX_BUF);
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
            if let Err(err) = watcher.watch(conn).await {
                tracing::error!("server connection error: {err:?}");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// As warp (and hyper 0.14 before it): errors of one connection are skipped; anything else
/// (out of file descriptors, most likely) pauses accepting for a second.
async fn accept_error(e: std::io::Error) {
    use std::io::ErrorKind::*;
    if matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    ) {
        return;
    }
    tracing::error!("accept error: {e}");
    tokio::time::sleep(Duration::from_secs(1)).await;
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
        .and_then(|_, app| ready(app));
    let metrics = warp::path!("metrics")
        .and(get_or_head())
        .and(with_app(app.clone()))
        .map(|_, app: Arc<App>| {
            let text = app.metrics.encode();
            let reply = warp::reply::with_header(text, "content-type", metrics::CONTENT_TYPE);
            reply.into_response()
        });
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
        .and(warp::body::bytes())
        .and(request_parts())
        .and(with_app(app.clone()))
        .and_then(resolve::handle);
    let all = (healthz.or(readyz).unify().or(metrics).unify())
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
            move |path: warp::path::FullPath, host: Option<Authority>, reply| {
                count_request(&counted, path.as_str(), host.as_ref(), &reply);
                reply
            },
        )
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

/// `/readyz`: the sidecar answers a handshake.
async fn ready(app: Arc<App>) -> Result<warp::reply::Response, Rejection> {
    match app.sidecar.probe().await {
        Ok(w) => Ok(warp::reply::json(&json!({
            "status": "ready",
            "sidecar": w.sidecar,
            "yt_dlp": w.yt_dlp,
            "egress": w.egress.as_str(),
            "active_streams": app.drain.active(),
        }))
        .into_response()),
        Err(e) => Err(warp::reject::custom(Problem {
            error: e.into(),
            request_id: None,
        })),
    }
}
