//! `GET|HEAD /stream?data=TOKEN` (and `/v1/stream`): authorize (token plugin → policy),
//! take the tenant's stream slot, start one sidecar job (its media reviewed by the policy
//! first when the policy asks), and answer with its metadata's head and a [`MediaBody`]
//! that owns everything the stream holds.

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
use crate::request::{
    Asked, RequestParts, authorize, new_request_id, review_media, sidecar_job,
    sidecar_job_continued,
};
use crate::sidecar::{SidecarError, Started};

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
        review: tenant.policy.reviews_media(),
    };
    let (meta, conn) = match sidecar_job(app, "stream", app.sidecar.start(job)).await? {
        Started::Ready(meta, conn) => (meta, conn),
        // Nothing is open yet: a denial (or a failed review) drops the job, no byte fetched.
        Started::Review(facts, reviewing) => {
            tracing::info!(duration = ?facts.duration, live = facts.is_live, "media review");
            review_media(app, &ok, facts).await?;
            sidecar_job_continued(app, reviewing.proceed()).await?
        }
    };
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
            max_duration: tenant.max_stream,
        };
        warp::reply::stream(MediaBody::new(conn, media.length, held)).into_response()
    };
    *resp.status_mut() = media.status;
    resp.headers_mut().extend(media.headers);
    Ok(resp)
}
