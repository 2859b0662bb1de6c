//! The phases every tenant route (`stream.rs`, `resolve.rs`) shares before its own work, in
//! the manner of pingora's request phases: the request's parts, its tenant (by the host of
//! `:authority` or `Host`), then [`authorize`] (token plugin → policy plugin), and for a
//! stream whose policy reviews media, [`review_media`] once the extraction is done; and the
//! two calls every handler times into the metrics, [`plugin_call`] and [`sidecar_job`].

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use streamgate_protocol::MediaFacts;
use streamgate_protocol::input::{canonical_url, check_format};
use warp::Filter;
use warp::host::Authority;
use warp::http::{HeaderMap, Method};

use crate::app::App;
use crate::error::GatewayError;
use crate::plugin::{
    ChosenFormat, MediaInfo, PluginError, PolicyDecision, RequestInfo, StreamRequest, unix_now,
};
use crate::sidecar::SidecarError;
use crate::tenant::Tenant;

/// The peer address of the connection a request came in on, as a request extension
/// (`server::run` inserts it; warp's own `addr::remote` cannot be fed from outside).
#[derive(Clone, Copy, Debug)]
pub struct ClientAddr(pub SocketAddr);

/// The request's authority: HTTP/2's `:authority` (hyper puts it in the URI) or the `Host`
/// header, whichever it has. One that does not parse is no authority (the default tenant).
pub(crate) fn host() -> impl Filter<Extract = (Option<Authority>,), Error = Infallible> + Clone {
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

/// Extracts [`RequestParts`]; never rejects.
pub(crate) fn request_parts() -> impl Filter<Extract = (RequestParts,), Error = Infallible> + Clone
{
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

/// The media phase, between the extraction and the first byte, for a tenant whose policy
/// reviews media (WIT 0.2.0's `media-policy`): the facts the sidecar found, judged.
pub(crate) async fn review_media(
    app: &App,
    ok: &Authorized,
    facts: MediaFacts,
) -> Result<(), GatewayError> {
    let policy = &ok.tenant.policy;
    let media = media_info(facts);
    let review = policy.review(&ok.info, &ok.wanted, &media);
    match plugin_call(app, policy.name(), review).await? {
        None => Ok(()),
        Some(denial) => Err(GatewayError::MediaDenied {
            plugin: policy.name().to_owned(),
            denial,
        }),
    }
}

fn media_info(facts: MediaFacts) -> MediaInfo {
    MediaInfo {
        extractor: facts.extractor,
        title: facts.title,
        uploader: facts.uploader,
        duration: facts.duration,
        is_live: facts.is_live,
        formats: facts
            .formats
            .into_iter()
            .map(|f| ChosenFormat {
                format_id: f.id,
                ext: f.ext,
                vcodec: f.vcodec,
                acodec: f.acodec,
                size: f.size,
            })
            .collect(),
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
    sidecar_job_continued(app, job).await
}

/// The rest of a sidecar job already counted by [`sidecar_job`] (after a review): its
/// error, if any, is counted the same way.
pub(crate) async fn sidecar_job_continued<T>(
    app: &App,
    rest: impl Future<Output = Result<T, SidecarError>>,
) -> Result<T, GatewayError> {
    let result = rest.await;
    if let Err(SidecarError::Job(e)) = &result {
        app.metrics.sidecar_error(e.code.as_str());
    }
    Ok(result?)
}

/// 16 hex digits: unique enough to grep both logs for one stream.
pub(crate) fn new_request_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}
