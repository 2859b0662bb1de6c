//! `GET|HEAD /stream?data=TOKEN` (and `/v1/stream`): authorize (token plugin → policy),
//! take the tenant's stream slot, start one sidecar job, and answer with its metadata's head
//! and a [`MediaBody`] that owns everything the stream holds.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use streamgate_protocol::StreamJob;
use tracing::Instrument;
use warp::http::Method;
use warp::{Rejection, Reply};

use crate::app::App;
use crate::body::{self, Held, MediaBody};
use crate::error::{GatewayError, Problem};
use crate::headers::media_head;
use crate::range;
use crate::request::{Asked, RequestParts, authorize, new_request_id, sidecar_job};
use crate::sidecar::SidecarError;

/// The route's handler: every failure becomes a [`Problem`] carrying the request id.
pub(crate) async fn handle(
    parts: RequestParts,
    app: Arc<App>,
) -> Result<warp::reply::Response, Rejection> {
    let request_id = new_request_id();
    let span = tracing::info_span!("stream", request_id = %request_id);
    let result = respond(parts, &app, &request_id).instrument(span).await;
    result.map_err(|e| warp::reject::custom(Problem::new(e, &request_id)))
}

async fn respond(
    parts: RequestParts,
    app: &App,
    request_id: &str,
) -> Result<warp::reply::Response, GatewayError> {
    let received = Instant::now();
    let token = url::form_urlencoded::parse(parts.query().as_bytes())
        .find(|(k, _)| k == "data")
        .map(|(_, v)| v.into_owned())
        .filter(|v| !v.is_empty())
        .ok_or(GatewayError::MissingToken)?;
    let head = *parts.method() == Method::HEAD;
    let range = range::requested(parts.method(), &parts.headers);
    let ok = authorize(app, parts, Asked::Token(&token)).await?;
    let (tenant, wanted) = (&ok.tenant, &ok.wanted);
    let slot = app
        .limiter
        .acquire_stream(&tenant.id, ok.client_ip())
        .await?;
    tracing::info!(tenant = %tenant.id, url = %wanted.url, format = %wanted.format, ?range, "job");
    let job = StreamJob {
        url: wanted.url.clone(),
        format: wanted.format.clone(),
        tenant: Some(tenant.id.clone()),
        request_id: Some(request_id.to_owned()),
        egress: tenant.egress.clone(),
        max_filesize: tenant.max_filesize,
        range,
        head,
    };
    let (meta, conn) = sidecar_job(app, "stream", app.sidecar.start(job)).await?;
    let span = range::served(range, &meta).map_err(SidecarError::Protocol)?;
    tracing::info!(
        mime = %meta.mime, size = ?meta.size, served_by = %meta.served_by, ?span, "metadata"
    );
    let media = media_head(&meta, span, wanted.filename.as_deref(), request_id);
    let kind = match (head, span) {
        (true, _) => "head",
        (false, Some(_)) => "partial",
        (false, None) => "whole",
    };
    app.metrics.media_response(&meta.served_by, kind);
    let mut resp = if head {
        // The job ends by itself after the metadata; `cancel` also stops a sidecar that
        // would fetch anyway.
        body::cancel(conn);
        // A body of unknown length, never polled: hyper sends the `Content-Length` set
        // below as is, and none when the size is unknown (an empty `Full` would be
        // announced as 0).
        let nothing = futures::stream::empty::<Result<bytes::Bytes, Infallible>>();
        warp::reply::stream(nothing).into_response()
    } else {
        let held = Held {
            request_id: request_id.to_owned(),
            received,
            slot,
            drain: app.drain.guard(),
            metrics: app.metrics.stream(&tenant.id),
        };
        warp::reply::stream(MediaBody::new(conn, media.length, held)).into_response()
    };
    *resp.status_mut() = media.status;
    resp.headers_mut().extend(media.headers);
    Ok(resp)
}
