//! The HTTP surface as warp filters, and the phases every tenant route shares before its own
//! handler: the request's parts and tenant (by the host of `:authority` or `Host`), then
//! [`authorize`] (token plugin → policy plugin). Handlers live per route (`stream.rs`,
//! `resolve.rs`); every failure leaves them as a [`Problem`] for the one `error::recover`.

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use serde_json::json;
use streamgate_protocol::input::{canonical_url, check_format};
use warp::host::Authority;
use warp::http::{HeaderMap, Method};
use warp::{Filter, Rejection, Reply};

use crate::app::App;
use crate::error::{GatewayError, Problem, recover};
use crate::metrics;
use crate::plugin::{PluginError, PolicyDecision, RequestInfo, StreamRequest, unix_now};
use crate::server::ClientAddr;
use crate::sidecar::SidecarError;
use crate::tenant::Tenant;
use crate::{resolve, stream};

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

/// The request's authority: HTTP/2's `:authority` (hyper puts it in the URI) or the `Host`
/// header, whichever it has. One that does not parse is no authority (the default tenant).
fn host() -> impl Filter<Extract = (Option<Authority>,), Error = Infallible> + Clone {
    warp::host::optional().or(warp::any().map(|| None)).unify()
}

/// What a tenant route knows of its request before the tenant is chosen.
pub(crate) struct RequestParts {
    method: Method,
    path: String,
    query: String,
    pub(crate) headers: HeaderMap,
    remote: Option<SocketAddr>,
    host: Option<Authority>,
}

impl RequestParts {
    /// The raw query string, without `?`.
    pub(crate) fn query(&self) -> &str {
        &self.query
    }

    /// The request's method.
    pub(crate) fn method(&self) -> &Method {
        &self.method
    }
}

fn request_parts() -> impl Filter<Extract = (RequestParts,), Error = Infallible> + Clone {
    let query = warp::query::raw().or(warp::any().map(String::new)).unify();
    let remote = warp::ext::optional::<ClientAddr>().map(|a: Option<ClientAddr>| a.map(|a| a.0));
    warp::method()
        .and(warp::path::full())
        .and(query)
        .and(warp::header::headers_cloned())
        .and(remote)
        .and(host())
        .map(
            |method, path: warp::path::FullPath, query, headers, remote, host| RequestParts {
                method,
                path: path.as_str().to_owned(),
                query,
                headers,
                remote,
                host,
            },
        )
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

/// What a request asks for, before the policy.
pub(crate) enum Asked<'a> {
    /// A link's token, for the token plugin to open.
    Token(&'a str),
    /// A URL and format already read and checked (a resolve body); it expires after the
    /// tenant's default TTL, like the links sealed for it.
    Request { url: String, format: String },
}

/// A request its tenant's plugins let through.
pub(crate) struct Authorized {
    pub tenant: Arc<Tenant>,
    pub info: RequestInfo,
    /// What to fetch: canonical URL, checked format, with the policy's changes applied.
    pub wanted: StreamRequest,
    /// The format the policy forced, if it did.
    pub forced_format: Option<String>,
}

impl Authorized {
    /// The client's IP address, the key of per-client limits; an IPv4 client of a
    /// dual-stack listener counts as its IPv4 address.
    pub fn client_ip(&self) -> Option<IpAddr> {
        let addr = self.info.client_addr.parse::<SocketAddr>().ok()?;
        Some(addr.ip().to_canonical())
    }
}

/// The phases every tenant route shares: the tenant (by host; 404 when none), the token
/// plugin (for a token), then the policy plugin, whose forced format is checked like any.
pub(crate) async fn authorize(
    app: &App,
    parts: RequestParts,
    asked: Asked<'_>,
) -> Result<Authorized, GatewayError> {
    let host = parts.host.as_ref().map(Authority::host);
    let tenant = app.tenants.load().for_host(host).cloned();
    let tenant = tenant.ok_or_else(|| GatewayError::UnknownHost(host.unwrap_or("").into()))?;
    let info = RequestInfo {
        method: parts.method.to_string(),
        path: parts.path,
        query: parts.query,
        headers: parts
            .headers
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
            .collect(),
        client_addr: parts.remote.map(|a| a.to_string()).unwrap_or_default(),
        tenant: tenant.id.clone(),
    };
    let mut wanted = match asked {
        Asked::Token(token) => {
            let token_plugin = tenant.token.name();
            let opened = plugin_call(app, token_plugin, tenant.token.open(&info, token)).await?;
            let mut wanted = opened.map_err(|denial| GatewayError::TokenDenied {
                plugin: token_plugin.to_owned(),
                denial,
            })?;
            // The one parse: the policy and the sidecar see only the canonical URL.
            wanted.url = canonical_url(&wanted.url).map_err(GatewayError::BadUrl)?;
            check_format(&wanted.format).map_err(GatewayError::BadFormat)?;
            wanted
        }
        Asked::Request { url, format } => StreamRequest {
            url,
            format,
            filename: None,
            expires_at: Some(unix_now() + tenant.default_ttl.as_secs()),
        },
    };
    let policy = tenant.policy.name();
    match plugin_call(app, policy, tenant.policy.check(&info, &wanted)).await? {
        PolicyDecision::Allow { format, filename } => {
            if let Some(forced) = &format {
                check_format(forced).map_err(GatewayError::BadFormat)?;
                wanted.format.clone_from(forced);
            }
            wanted.filename = filename.or(wanted.filename);
            Ok(Authorized {
                tenant,
                info,
                wanted,
                forced_format: format,
            })
        }
        PolicyDecision::Deny(denial) => Err(GatewayError::PolicyDenied {
            plugin: policy.to_owned(),
            denial,
        }),
    }
}

/// Times one plugin call into the metrics; a `PluginError` (not a denial) is a failure.
pub(crate) async fn plugin_call<T>(
    app: &App,
    plugin: &str,
    call: impl Future<Output = Result<T, PluginError>>,
) -> Result<T, GatewayError> {
    let started = Instant::now();
    let result = call.await;
    app.metrics
        .plugin_call(plugin, started.elapsed(), result.is_err());
    result.map_err(|source| GatewayError::Plugin {
        plugin: plugin.to_owned(),
        source,
    })
}

/// One sidecar job of `kind` (`stream`, `resolve`) into the metrics, with the code of the
/// error it failed with before its first byte.
pub(crate) async fn sidecar_job<T>(
    app: &App,
    kind: &str,
    job: impl Future<Output = Result<T, SidecarError>>,
) -> Result<T, GatewayError> {
    app.metrics.sidecar_job(kind);
    let result = job.await;
    if let Err(SidecarError::Job(e)) = &result {
        app.metrics.sidecar_error(e.code.as_str());
    }
    Ok(result?)
}

/// 16 hex digits: unique enough to grep both logs for one stream.
pub(crate) fn new_request_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}
