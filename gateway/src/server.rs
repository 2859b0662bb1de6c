//! The HTTP server: the warp routes served through hyper-util, the way `warp::serve(..)
//! .incoming(..).graceful(..)` does it (HTTP/1 and HTTP/2 on one listener, upgrades, graceful
//! shutdown that lets open responses finish), with one difference: HTTP/1's write buffer is
//! capped at [`HTTP1_MAX_BUF`]. hyper's default (≈ 400 KiB) lets a client that stops reading
//! park that much of the body in the gateway per stream; warp 0.4 offers no way to set it.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::service::Service as _;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use warp::http::Request;

use crate::app::App;
use crate::routes::routes;

/// hyper's HTTP/1 write buffer per connection: it stops polling the body for more once this
/// much is queued, so a stalled client holds at most this plus one body chunk. Also the most
/// a request head may take (hyper's read buffer), far above any real request.
pub const HTTP1_MAX_BUF: usize = 64 * 1024;

/// The peer address of the connection a request came in on, as a request extension
/// (`routes` reads it; warp's own `addr::remote` cannot be fed from outside).
#[derive(Clone, Copy, Debug)]
pub struct ClientAddr(pub SocketAddr);

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
