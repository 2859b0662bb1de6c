//! HTTP routes: small warp filters that extract what a handler needs, and handlers that
//! work on a typed [`AppState`]. Every failure leaves as a [`Problem`] for `error::recover`.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use arc_swap::ArcSwap;
use serde_json::json;
use streamgate_protocol::StreamJob;
use streamgate_protocol::input::{canonical_url, check_format};
use tracing::Instrument;
use warp::http::{HeaderMap, Method};
use warp::{Filter, Rejection, Reply};

use crate::error::{GatewayError, Problem, recover};
use crate::headers::media_head;
use crate::limits::Limiter;
use crate::metrics::{self, MeteredBody, Metrics};
use crate::plugin::{PolicyDecision, RequestInfo};
use crate::range;
use crate::relay::{self, ActiveStreams, MediaBody};
use crate::server::ClientAddr;
use crate::sidecar::SidecarClient;
use crate::tenant::{Tenant, Tenants};

/// Everything handlers share. Tenants sit behind an `ArcSwap` so a reload can replace them
/// while requests in flight keep the set they started with.
pub struct AppState {
    pub tenants: ArcSwap<Tenants>,
    pub sidecar: SidecarClient,
    pub active: ActiveStreams,
    /// Counters of every tenant's limits; kept across reloads (`Limiter::reload`).
    pub limiter: Limiter,
    pub metrics: Metrics,
}

/// The whole HTTP surface.
pub fn routes(
    state: Arc<AppState>,
) -> impl Filter<Extract = (impl Reply,), Error = Infallible> + Clone {
    let healthz = warp::path!("healthz")
        .and(get_or_head())
        .map(|_| warp::reply::json(&json!({ "status": "ok" })));
    let readyz = warp::path!("readyz")
        .and(get_or_head())
        .and(with_state(state.clone()))
        .and_then(|_, state| ready(state));
    let stream = warp::path!("stream")
        .or(warp::path!("v1" / "stream"))
        .unify()
        .and(get_or_head())
        .and(request_parts())
        .and(with_state(state.clone()))
        .and_then(stream);
    let metrics = warp::path!("metrics")
        .and(get_or_head())
        .and(with_state(state.clone()))
        .map(|_, state: Arc<AppState>| {
            let text = state.metrics.encode();
            warp::reply::with_header(text, "content-type", metrics::CONTENT_TYPE)
        });
    let counted = state.clone();
    let resolve = crate::resolve::route(state);
    let all = healthz.or(readyz).or(metrics).or(stream).or(resolve);
    all.recover(recover).with(warp::log::custom(move |info| {
        count_request(&counted, &info)
    }))
}

/// Paths whose requests belong to a tenant (by Host); everything else counts under `-`.
const TENANT_ROUTES: [&str; 3] = ["/stream", "/v1/stream", "/v1/resolve"];

/// `http_requests_total`, labelled with the tenant the Host resolves to (bounded by the
/// config) and the final status, whichever filter or `recover` produced it.
fn count_request(state: &AppState, info: &warp::log::Info<'_>) {
    let tenants = state.tenants.load();
    let tenant = match TENANT_ROUTES.contains(&info.path()) {
        true => tenants.for_host(info.host()).map(|t| t.id.as_str()),
        false => None,
    };
    let tenant = tenant.unwrap_or(metrics::NO_TENANT);
    state.metrics.request(tenant, info.status().as_u16());
}

fn with_state(
    state: Arc<AppState>,
) -> impl Filter<Extract = (Arc<AppState>,), Error = Infallible> + Clone {
    warp::any().map(move || state.clone())
}

/// Extracts the method, refusing anything but GET and HEAD (405 through `recover`).
fn get_or_head() -> impl Filter<Extract = (Method,), Error = Rejection> + Clone {
    warp::get()
        .map(|| Method::GET)
        .or(warp::head().map(|| Method::HEAD))
        .unify()
}

/// What plugins see of a request, minus the tenant (resolved later).
pub(crate) struct RequestParts {
    path: String,
    query: String,
    headers: HeaderMap,
    remote: Option<SocketAddr>,
}

pub(crate) fn request_parts() -> impl Filter<Extract = (RequestParts,), Error = Infallible> + Clone
{
    let query = warp::query::raw().or(warp::any().map(String::new)).unify();
    warp::path::full()
        .and(query)
        .and(warp::header::headers_cloned())
        .and(warp::ext::optional::<ClientAddr>().map(|a: Option<ClientAddr>| a.map(|a| a.0)))
        .map(
            |path: warp::path::FullPath, query, headers, remote| RequestParts {
                path: path.as_str().to_owned(),
                query,
                headers,
                remote,
            },
        )
}

async fn ready(state: Arc<AppState>) -> Result<warp::reply::Response, Rejection> {
    match state.sidecar.probe().await {
        Ok(w) => Ok(warp::reply::json(&json!({
            "status": "ready",
            "sidecar": w.sidecar,
            "yt_dlp": w.yt_dlp,
            "egress": w.egress.as_str(),
            "active_streams": state.active.get(),
        }))
        .into_response()),
        Err(e) => Err(warp::reject::custom(Problem {
            error: e,
            request_id: None,
        })),
    }
}

/// `GET|HEAD /stream?data=TOKEN`: token plugin → policy plugin → one sidecar job.
async fn stream(
    method: Method,
    parts: RequestParts,
    state: Arc<AppState>,
) -> Result<warp::reply::Response, Rejection> {
    let request_id = new_request_id();
    let span = tracing::info_span!("stream", request_id = %request_id);
    let result = respond(method, parts, &state, &request_id)
        .instrument(span)
        .await;
    result.map_err(|e| warp::reject::custom(Problem::new(e, &request_id)))
}

/// The request's tenant (by Host; 404 when none) and what its plugins see of the request.
pub(crate) fn plugin_request(
    method: &Method,
    parts: RequestParts,
    state: &AppState,
) -> Result<(Arc<Tenant>, RequestInfo), GatewayError> {
    let host = parts.headers.get("host").and_then(|h| h.to_str().ok());
    let tenant = state.tenants.load().for_host(host).cloned();
    let tenant = tenant.ok_or_else(|| GatewayError::UnknownHost(host.unwrap_or("").into()))?;
    let info = RequestInfo {
        method: method.to_string(),
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
    Ok((tenant, info))
}

async fn respond(
    method: Method,
    parts: RequestParts,
    state: &AppState,
    request_id: &str,
) -> Result<warp::reply::Response, GatewayError> {
    let token = url::form_urlencoded::parse(parts.query.as_bytes())
        .find(|(k, _)| k == "data")
        .map(|(_, v)| v.into_owned())
        .filter(|v| !v.is_empty())
        .ok_or(GatewayError::MissingToken)?;
    let received = std::time::Instant::now();
    let range = range::requested(&method, &parts.headers);
    let (tenant, info) = plugin_request(&method, parts, state)?;
    let plugin_err = |plugin: &str| {
        let plugin = plugin.to_owned();
        move |source| GatewayError::Plugin { plugin, source }
    };
    let opened = tenant.token.open(&info, &token);
    let mut wanted = match state.metrics.plugin_call(tenant.token.name(), opened).await {
        Ok(Ok(wanted)) => wanted,
        Ok(Err(denial)) => {
            let plugin = tenant.token.name().to_owned();
            return Err(GatewayError::TokenDenied { plugin, denial });
        }
        Err(e) => return Err(plugin_err(tenant.token.name())(e)),
    };
    // The one parse: the policy and the sidecar see only the canonical URL.
    wanted.url = canonical_url(&wanted.url).map_err(GatewayError::BadUrl)?;
    check_format(&wanted.format).map_err(GatewayError::BadFormat)?;
    let checked = tenant.policy.check(&info, &wanted);
    let decision = (state
        .metrics
        .plugin_call(tenant.policy.name(), checked)
        .await)
        .map_err(plugin_err(tenant.policy.name()))?;
    match decision {
        PolicyDecision::Allow { format, filename } => {
            if let Some(forced) = format {
                check_format(&forced).map_err(GatewayError::BadFormat)?;
                wanted.format = forced;
            }
            wanted.filename = filename.or(wanted.filename);
        }
        PolicyDecision::Deny(denial) => {
            let plugin = tenant.policy.name().to_owned();
            return Err(GatewayError::PolicyDenied { plugin, denial });
        }
    }
    let slot = state
        .limiter
        .acquire_stream(&tenant.id, client_ip(&info))
        .await?;
    tracing::info!(tenant = %tenant.id, url = %wanted.url, format = %wanted.format, ?range, "job");
    let head = method == Method::HEAD;
    let job = StreamJob {
        url: wanted.url,
        format: wanted.format,
        tenant: Some(tenant.id.clone()),
        request_id: Some(request_id.to_owned()),
        egress: tenant.egress.clone(),
        max_filesize: tenant.max_filesize,
        range,
        head,
    };
    state.metrics.sidecar_job("stream");
    let started = state.sidecar.start(job).await;
    if let Err(GatewayError::Job(e)) = &started {
        state.metrics.sidecar_error(e.code.as_str());
    }
    let (meta, conn) = started?;
    let span = range::served(range, &meta)?;
    tracing::info!(
        mime = %meta.mime, size = ?meta.size, served_by = %meta.served_by, ?span, "metadata"
    );
    let media = media_head(&meta, span, wanted.filename.as_deref(), request_id);
    let kind = match (head, span) {
        (true, _) => "head",
        (false, Some(_)) => "partial",
        (false, None) => "whole",
    };
    state.metrics.media_response(&meta.served_by, kind);
    let mut resp = if head {
        // The job ends by itself after the metadata; `cancel` also stops a sidecar that
        // would fetch anyway.
        relay::cancel(conn);
        // A body of unknown length, never polled: hyper sends the `Content-Length` set
        // below as is, and none when the size is unknown (an empty `Full` would be
        // announced as 0).
        let nothing = futures::stream::empty::<Result<bytes::Bytes, Infallible>>();
        warp::reply::stream(nothing).into_response()
    } else {
        let active = state.active.clone();
        let body = MediaBody::new(conn, request_id.to_owned(), media.length, active);
        let metrics = state.metrics.clone();
        let body = MeteredBody::new(body, &tenant.id, metrics, received, slot);
        warp::reply::stream(body).into_response()
    };
    *resp.status_mut() = media.status;
    resp.headers_mut().extend(media.headers);
    Ok(resp)
}

/// The client's IP address, the key of per-client limits; an IPv4 client of a dual-stack
/// listener counts as its IPv4 address.
pub(crate) fn client_ip(info: &RequestInfo) -> Option<IpAddr> {
    let addr = info.client_addr.parse::<SocketAddr>().ok()?;
    Some(addr.ip().to_canonical())
}

/// 16 hex digits: unique enough to grep both logs for one stream.
pub(crate) fn new_request_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}
