//! `POST /v1/resolve`: what a URL offers (title, duration, thumbnail, formats), each format
//! with a ready link sealed for the tenant. The tenant's policy plugin decides whether the
//! caller may ask at all (an API key, or `policy-allowlist`'s `public_resolve` and
//! `resolve_clients`): resolve runs yt-dlp on any URL it is given.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use streamgate_protocol::input::{canonical_url, check_format};
use streamgate_protocol::{FormatInfo, ResolveJob};
use tracing::Instrument;
use warp::{Rejection, Reply};

use crate::app::App;
use crate::error::{GatewayError, Problem};
use crate::plugin::StreamRequest;
use crate::request::{Asked, RequestParts, authorize, new_request_id, plugin_call, sidecar_job};
use crate::tenant::Tenant;

/// A resolve request is a URL and a selector; anything bigger is not one.
pub const MAX_BODY_BYTES: u64 = 16 * 1024;

/// Format selector checked by the policy (and linked as `stream_url`) when none is given.
pub const DEFAULT_FORMAT: &str = "best";

/// The JSON body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResolveBody {
    url: String,
    #[serde(default)]
    format: Option<String>,
}

/// The answer: the media's facts, a link for the requested selector, and one per format.
#[derive(Debug, Serialize)]
struct ResolveAnswer {
    title: Option<String>,
    duration: Option<f64>,
    thumbnail: Option<String>,
    /// The requested selector (or `best`).
    format: String,
    /// Link for `format`: an absolute path, so it works behind any proxy or scheme.
    stream_url: String,
    /// Unix seconds after which every link of this answer is refused.
    expires_at: u64,
    formats: Vec<LinkedFormat>,
}

#[derive(Debug, Serialize)]
struct LinkedFormat {
    #[serde(flatten)]
    info: FormatInfo,
    stream_url: String,
}

/// The route's handler: every failure becomes a [`Problem`] carrying the request id.
pub(crate) async fn handle(
    body: bytes::Bytes,
    parts: RequestParts,
    app: Arc<App>,
) -> Result<warp::reply::Response, Rejection> {
    let request_id = new_request_id();
    let span = tracing::info_span!("resolve", request_id = %request_id);
    let result = resolve(&body, parts, &app, &request_id)
        .instrument(span)
        .await;
    result.map_err(|e| warp::reject::custom(Problem::new(e, &request_id)))
}

async fn resolve(
    body: &[u8],
    parts: RequestParts,
    app: &App,
    request_id: &str,
) -> Result<warp::reply::Response, GatewayError> {
    let body: ResolveBody =
        serde_json::from_slice(body).map_err(|e| GatewayError::BadRequest(e.to_string()))?;
    // The one parse: the policy, the links and the sidecar see only the canonical URL.
    let url = canonical_url(&body.url).map_err(GatewayError::BadUrl)?;
    let format = body.format.unwrap_or_else(|| DEFAULT_FORMAT.to_owned());
    check_format(&format).map_err(GatewayError::BadFormat)?;
    let ok = authorize(app, parts, Asked::Request { url, format }).await?;
    let (tenant, wanted) = (&ok.tenant, &ok.wanted);
    let expires_at = wanted.expires_at.unwrap_or_default();
    // Counted once the policy allowed it: refusals cost no sidecar work, so no budget.
    app.limiter
        .check_resolve(&tenant.id, ok.client_ip())
        .await?;
    tracing::info!(tenant = %tenant.id, url = %wanted.url, "resolve");
    let job = ResolveJob {
        url: wanted.url.clone(),
        format: Some(wanted.format.clone()),
        tenant: Some(tenant.id.clone()),
        request_id: Some(request_id.to_owned()),
        egress: tenant.egress.clone(),
    };
    let media = sidecar_job(app, "resolve", app.sidecar.resolve(job)).await?;
    let stream_url = link(app, tenant, wanted).await?;
    let mut formats = Vec::with_capacity(media.formats.len());
    for info in media.formats {
        // A format the policy forces replaces every choice; the stream re-checks anyway.
        let format = ok.forced_format.clone().unwrap_or_else(|| info.id.clone());
        let request = StreamRequest {
            format,
            ..wanted.clone()
        };
        let stream_url = link(app, tenant, &request).await?;
        formats.push(LinkedFormat { info, stream_url });
    }
    let answer = ResolveAnswer {
        title: media.title,
        duration: media.duration,
        thumbnail: media.thumbnail,
        format: wanted.format.clone(),
        stream_url,
        expires_at,
        formats,
    };
    let mut resp = warp::reply::json(&answer).into_response();
    let headers = resp.headers_mut();
    headers.insert("cache-control", "no-store".parse().expect("static"));
    if let Ok(id) = request_id.parse() {
        headers.insert("x-request-id", id);
    }
    Ok(resp)
}

/// `/v1/stream?data=TOKEN`, sealed by the tenant's token plugin.
async fn link(app: &App, tenant: &Tenant, request: &StreamRequest) -> Result<String, GatewayError> {
    let plugin = tenant.token.name();
    let sealed = plugin_call(app, plugin, tenant.token.seal(&tenant.id, request)).await?;
    let token = sealed.map_err(|reason| GatewayError::Seal {
        plugin: plugin.to_owned(),
        reason,
    })?;
    let query: String = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("data", &token)
        .finish();
    Ok(format!("/v1/stream?{query}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_is_strict() {
        let ok: ResolveBody = serde_json::from_str(r#"{"url":"https://x/y"}"#).unwrap();
        assert_eq!((ok.url.as_str(), ok.format), ("https://x/y", None));
        assert!(serde_json::from_str::<ResolveBody>(r#"{"url":"u","fromat":"b"}"#).is_err());
        assert!(serde_json::from_str::<ResolveBody>(r#"{"format":"b"}"#).is_err());
    }
}
