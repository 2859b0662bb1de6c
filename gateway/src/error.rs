//! The one place where a failure becomes an HTTP status: [`GatewayError::status`]. Every
//! early failure leaves the handlers as a [`Problem`] rejection and is answered by
//! [`recover`] with an RFC 9457 `application/problem+json` body and no media bytes.

use std::convert::Infallible;

use serde::Serialize;
use streamgate_protocol::input::InputError;
use streamgate_protocol::{ErrorCode, JobError};
use warp::http::{HeaderValue, StatusCode, header};
use warp::reject::{LengthRequired, MethodNotAllowed, PayloadTooLarge, Reject};
use warp::{Rejection, Reply};

use crate::limits::LimitError;
use crate::plugin::{Denial, PluginError};
use crate::sidecar::SidecarError;

/// Seconds a client is told to wait when the sidecar's queue is full.
const BUSY_RETRY_AFTER_SECS: u32 = 2;

/// The challenge of every 401 (RFC 9110 §15.5.2: a 401 must carry one). Only plugins refuse
/// with 401, and the bundled policies take a key in a header of the tenant's choosing
/// (`x-api-key` by default); `Key` is the scheme gateways use for that (Kong's key-auth).
/// A browser shows no login dialog for it, so the web page can ask for the key itself.
const CHALLENGE: &str = r#"Key realm="streamgate""#;

/// Everything that can stop a request before its media starts flowing.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// A stream request without `?data=`.
    #[error("the `data` query parameter is missing")]
    MissingToken,
    /// The URL of a token or a resolve body breaks `protocol::input::canonical_url`.
    #[error("{0}")]
    BadUrl(InputError),
    /// The format selector (asked for or forced by the policy) breaks `check_format`.
    #[error("{0}")]
    BadFormat(InputError),
    /// The token plugin refused the token.
    #[error("token refused by {plugin}: {}", .denial.reason)]
    TokenDenied {
        /// The plugin's name.
        plugin: String,
        /// Its status and reason.
        denial: Denial,
    },
    /// The policy plugin refused the request.
    #[error("request denied by {plugin}: {}", .denial.reason)]
    PolicyDenied {
        /// The plugin's name.
        plugin: String,
        /// Its status and reason.
        denial: Denial,
    },
    /// The policy plugin refused the media the extraction found (0.2.0's `review`).
    #[error("media denied by {plugin}: {}", .denial.reason)]
    MediaDenied {
        /// The plugin's name.
        plugin: String,
        /// Its status and reason.
        denial: Denial,
    },
    /// A plugin trapped, overran its limits or could not be instantiated.
    #[error("plugin {plugin} failed: {source}")]
    Plugin {
        /// The plugin's name.
        plugin: String,
        /// What went wrong.
        #[source]
        source: PluginError,
    },
    /// The token plugin could not seal a link (resolve).
    #[error("plugin {plugin} cannot seal: {reason}")]
    Seal {
        /// The plugin's name.
        plugin: String,
        /// Its reason.
        reason: String,
    },
    /// The sidecar gave no first answer: unavailable, failed job, broken protocol, timeout.
    #[error(transparent)]
    Sidecar(#[from] SidecarError),
    /// No route has this path.
    #[error("no such route")]
    RouteNotFound,
    /// The route exists, not with this method.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// No tenant serves the request's host and there is no `default_tenant`.
    #[error("no tenant serves host {0:?}")]
    UnknownHost(String),
    /// A request body that does not parse.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// A body over the route's limit.
    #[error("the request body is too large")]
    PayloadTooLarge,
    /// A body without `Content-Length`.
    #[error("a Content-Length header is required")]
    LengthRequired,
    /// A body that did not arrive whole within `[server] resolve_body_timeout_secs`.
    #[error("the request body did not arrive in time")]
    BodyTimeout,
    /// A limit is reached, or the limiter cannot count.
    #[error(transparent)]
    Limit(#[from] LimitError),
}

impl GatewayError {
    /// The HTTP status of every failure, decided here and nowhere else.
    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::MissingToken => StatusCode::BAD_REQUEST,
            GatewayError::BadUrl(_) | GatewayError::BadFormat(_) => StatusCode::BAD_REQUEST,
            GatewayError::TokenDenied { denial, .. }
            | GatewayError::PolicyDenied { denial, .. }
            | GatewayError::MediaDenied { denial, .. } => denial_status(denial),
            GatewayError::Plugin { source, .. } => plugin_status(source),
            GatewayError::Seal { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            GatewayError::Sidecar(SidecarError::Job(e)) => job_status(e.code),
            GatewayError::Sidecar(SidecarError::Unavailable(_) | SidecarError::NotUpYet(_)) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            GatewayError::Sidecar(SidecarError::Protocol(_)) => StatusCode::BAD_GATEWAY,
            GatewayError::Sidecar(SidecarError::MetadataTimeout) => StatusCode::GATEWAY_TIMEOUT,
            GatewayError::RouteNotFound => StatusCode::NOT_FOUND,
            GatewayError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            GatewayError::UnknownHost(_) => StatusCode::NOT_FOUND,
            GatewayError::BadRequest(_) => StatusCode::BAD_REQUEST,
            GatewayError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::LengthRequired => StatusCode::LENGTH_REQUIRED,
            GatewayError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            GatewayError::Limit(LimitError::Limited { .. }) => StatusCode::TOO_MANY_REQUESTS,
            GatewayError::Limit(LimitError::Unavailable(_)) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// Stable machine-readable code (the problem's `code` and the last segment of its `type`).
    pub fn code(&self) -> &'static str {
        match self {
            GatewayError::MissingToken => "missing_token",
            GatewayError::BadUrl(_) => "bad_url",
            GatewayError::BadFormat(_) => "bad_format",
            GatewayError::TokenDenied { .. } => "token_denied",
            GatewayError::PolicyDenied { .. } => "policy_denied",
            GatewayError::MediaDenied { .. } => "media_denied",
            GatewayError::Plugin { .. } | GatewayError::Seal { .. } => "plugin_failed",
            GatewayError::Sidecar(SidecarError::Job(e)) => e.code.as_str(),
            GatewayError::Sidecar(SidecarError::Unavailable(_) | SidecarError::NotUpYet(_)) => {
                "sidecar_unavailable"
            }
            GatewayError::Sidecar(SidecarError::Protocol(_)) => "protocol",
            GatewayError::Sidecar(SidecarError::MetadataTimeout) => "timeout",
            GatewayError::RouteNotFound => "route_not_found",
            GatewayError::MethodNotAllowed => "method_not_allowed",
            GatewayError::UnknownHost(_) => "unknown_host",
            GatewayError::BadRequest(_) => "bad_request",
            GatewayError::PayloadTooLarge => "payload_too_large",
            GatewayError::LengthRequired => "length_required",
            GatewayError::BodyTimeout => "body_timeout",
            GatewayError::Limit(LimitError::Limited { .. }) => "rate_limited",
            GatewayError::Limit(LimitError::Unavailable(_)) => "limiter_unavailable",
        }
    }

    /// The client-facing detail. Server-side failures stay vague and a job's error is one
    /// sentence per code: yt-dlp's own message names hosts, ports and addresses the client
    /// must not learn. The full error is in the log line ([`Problem::to_response`]).
    fn detail(&self) -> String {
        match self {
            GatewayError::Plugin { plugin, .. } | GatewayError::Seal { plugin, .. } => {
                format!("plugin {plugin} failed")
            }
            GatewayError::Sidecar(SidecarError::Unavailable(_) | SidecarError::NotUpYet(_)) => {
                "the media backend is unavailable".into()
            }
            GatewayError::Sidecar(SidecarError::Protocol(_)) => "the media backend failed".into(),
            GatewayError::Limit(LimitError::Unavailable(_)) => "the limiter is unavailable".into(),
            GatewayError::Sidecar(SidecarError::Job(e)) => job_detail(e.code).into(),
            other => other.to_string(),
        }
    }
}

/// What a client is told about a failed job.
fn job_detail(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::NotFound => "the media was not found",
        ErrorCode::UnsupportedUrl => "the URL is not a media page or file this service supports",
        ErrorCode::FormatUnavailable => "the requested format is not available for this media",
        ErrorCode::UpstreamFailed => "the media's server failed or could not be reached",
        ErrorCode::Timeout => "the media's server did not answer in time",
        ErrorCode::Busy => "the media backend is busy; retry later",
        ErrorCode::EgressDenied => {
            "an outbound connection of the job was refused by the egress rules"
        }
        ErrorCode::TooLarge => "the media is larger than this service allows",
        ErrorCode::RangeNotSatisfiable => "the requested range starts past the end of the media",
        ErrorCode::Protocol | ErrorCode::Internal => "the media backend failed",
    }
}

/// Plugins may only refuse with a 4xx; anything else is treated as a plain 403.
fn denial_status(denial: &Denial) -> StatusCode {
    StatusCode::from_u16(denial.status)
        .ok()
        .filter(StatusCode::is_client_error)
        .unwrap_or(StatusCode::FORBIDDEN)
}

/// A plugin that ran out of time or instances is an overload (503, worth a retry); a trap,
/// a memory bomb or a broken component is a bug (500).
fn plugin_status(err: &PluginError) -> StatusCode {
    match err {
        PluginError::Deadline { .. }
        | PluginError::Busy { .. }
        | PluginError::Instantiate { .. } => StatusCode::SERVICE_UNAVAILABLE,
        PluginError::Trap { .. }
        | PluginError::MemoryLimit { .. }
        | PluginError::Engine { .. }
        | PluginError::Compile { .. }
        | PluginError::Link { .. } => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The table of `docs/protocol.md`.
fn job_status(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::UnsupportedUrl | ErrorCode::FormatUnavailable => {
            StatusCode::UNPROCESSABLE_ENTITY
        }
        ErrorCode::UpstreamFailed | ErrorCode::Protocol => StatusCode::BAD_GATEWAY,
        ErrorCode::Timeout => StatusCode::GATEWAY_TIMEOUT,
        ErrorCode::Busy => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::EgressDenied => StatusCode::FORBIDDEN,
        ErrorCode::TooLarge => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorCode::RangeNotSatisfiable => StatusCode::RANGE_NOT_SATISFIABLE,
        ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// A failure on its way to [`recover`], with the id of the request it ended.
#[derive(Debug)]
pub struct Problem {
    /// What went wrong.
    pub error: GatewayError,
    /// The request's id, once it has one (handlers give it; warp's own rejections don't).
    pub request_id: Option<String>,
}

impl Reject for Problem {}

impl Problem {
    /// `error` ending the request `request_id`.
    pub fn new(error: GatewayError, request_id: &str) -> Self {
        Problem {
            error,
            request_id: Some(request_id.to_owned()),
        }
    }

    /// The RFC 9457 response: status, problem body, `X-Request-Id`, and the headers a status
    /// calls for: `Retry-After` when a wait helps, `WWW-Authenticate` on 401, `Content-Range`
    /// on 416, `Connection: close` on 408.
    pub fn to_response(&self) -> warp::reply::Response {
        let status = self.error.status();
        if let GatewayError::Sidecar(SidecarError::NotUpYet(_)) = &self.error {
            // Start-up, seen by every readiness poll: the sidecar client said so once at info.
            tracing::debug!(request_id = ?self.request_id, error = %self.error, "request failed");
        } else if status.is_server_error() {
            tracing::warn!(request_id = ?self.request_id, error = %self.error, "request failed");
        } else {
            tracing::info!(request_id = ?self.request_id, error = %self.error, "request refused");
        }
        let body = ProblemBody {
            r#type: format!("urn:streamgate:problem:{}", self.error.code()),
            title: status.canonical_reason().unwrap_or("Error"),
            status: status.as_u16(),
            detail: self.error.detail(),
            code: self.error.code(),
            request_id: self.request_id.as_deref(),
        };
        let json = serde_json::to_string(&body).expect("problem serializes");
        let mut resp = warp::reply::Response::new(json.into());
        *resp.status_mut() = status;
        let headers = resp.headers_mut();
        let problem_json = HeaderValue::from_static("application/problem+json");
        headers.insert(header::CONTENT_TYPE, problem_json);
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(id) = self.request_id.as_deref().and_then(|v| v.parse().ok()) {
            headers.insert("x-request-id", id);
        }
        let job = match &self.error {
            GatewayError::Sidecar(SidecarError::Job(e)) => Some(e),
            _ => None,
        };
        if job.is_some_and(|e| e.code == ErrorCode::Busy) {
            headers.insert(header::RETRY_AFTER, BUSY_RETRY_AFTER_SECS.into());
        }
        // RFC 9110 §15.5.17: a 416 names the current length, so the client can ask again.
        if let Some(JobError {
            code: ErrorCode::RangeNotSatisfiable,
            size: Some(size),
            ..
        }) = job
        {
            let range = HeaderValue::from_str(&format!("bytes */{size}")).expect("only digits");
            headers.insert(header::CONTENT_RANGE, range);
        }
        if let GatewayError::Limit(LimitError::Limited {
            retry_after_secs: Some(secs),
            ..
        }) = &self.error
        {
            headers.insert(header::RETRY_AFTER, (*secs).into());
        }
        if status == StatusCode::UNAUTHORIZED {
            let challenge = HeaderValue::from_static(CHALLENGE);
            headers.insert(header::WWW_AUTHENTICATE, challenge);
        }
        // RFC 9110 §15.5.9: the rest of the body may still be on its way; hyper ends an
        // HTTP/1.x connection after a response that says `close` (HTTP/2 drops the header).
        if let GatewayError::BodyTimeout = self.error {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

#[derive(Serialize)]
struct ProblemBody<'a> {
    r#type: String,
    title: &'a str,
    status: u16,
    detail: String,
    code: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<&'a str>,
}

/// The one `recover`: domain problems, then warp's own rejections; anything else is a 500.
pub async fn recover(rejection: Rejection) -> Result<warp::reply::Response, Infallible> {
    let error = if let Some(problem) = rejection.find::<Problem>() {
        return Ok(problem.to_response());
    } else if rejection.is_not_found() {
        GatewayError::RouteNotFound
    } else if rejection.find::<MethodNotAllowed>().is_some() {
        GatewayError::MethodNotAllowed
    } else if rejection.find::<PayloadTooLarge>().is_some() {
        GatewayError::PayloadTooLarge
    } else if rejection.find::<LengthRequired>().is_some() {
        GatewayError::LengthRequired
    } else {
        tracing::error!(?rejection, "unhandled rejection");
        let resp = warp::reply::with_status("internal error", StatusCode::INTERNAL_SERVER_ERROR);
        return Ok(resp.into_response());
    };
    Ok(Problem {
        error,
        request_id: None,
    }
    .to_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(e: JobError) -> GatewayError {
        GatewayError::Sidecar(SidecarError::Job(e))
    }

    #[test]
    fn job_codes_follow_the_protocol_table() {
        let status = |c| job(JobError::new(c, "x")).status().as_u16();
        assert_eq!(status(ErrorCode::NotFound), 404);
        assert_eq!(status(ErrorCode::UnsupportedUrl), 422);
        assert_eq!(status(ErrorCode::FormatUnavailable), 422);
        assert_eq!(status(ErrorCode::UpstreamFailed), 502);
        assert_eq!(status(ErrorCode::Timeout), 504);
        assert_eq!(status(ErrorCode::Busy), 503);
        assert_eq!(status(ErrorCode::EgressDenied), 403);
        assert_eq!(status(ErrorCode::TooLarge), 422);
        assert_eq!(status(ErrorCode::RangeNotSatisfiable), 416);
        assert_eq!(status(ErrorCode::Protocol), 502);
        assert_eq!(status(ErrorCode::Internal), 500);
    }

    #[test]
    fn job_errors_show_a_generic_detail_never_ytdlps_message() {
        let raw = "ERROR: [generic] Unable to download webpage: <urlopen error [Errno 111] \
                   Connection refused> (caused by 10.0.0.7:8080)";
        for code in ErrorCode::ALL {
            let error = job(JobError::new(code, raw));
            assert!(
                error.to_string().contains("10.0.0.7:8080"),
                "logged in full"
            );
            assert_eq!(error.code(), code.as_str());
            let detail = error.detail();
            assert!(
                !detail.contains("10.0.0.7") && !detail.contains("ERROR"),
                "{detail}"
            );
        }
        let denied = job(JobError::new(ErrorCode::EgressDenied, raw));
        assert_eq!(
            denied.detail(),
            "an outbound connection of the job was refused by the egress rules"
        );
    }

    #[test]
    fn bad_urls_and_formats_are_400_problems() {
        let url = streamgate_protocol::input::canonical_url("http://a.example\\@127.0.0.1/x");
        let error = GatewayError::BadUrl(url.unwrap_err());
        assert_eq!((error.status().as_u16(), error.code()), (400, "bad_url"));
        assert_eq!(error.detail(), "the URL contains a backslash");
        let format = streamgate_protocol::input::check_format("18,22");
        let error = GatewayError::BadFormat(format.unwrap_err());
        assert_eq!((error.status().as_u16(), error.code()), (400, "bad_format"));
    }

    #[test]
    fn denials_are_always_client_errors() {
        let denied = |status| GatewayError::PolicyDenied {
            plugin: "p".into(),
            denial: Denial {
                status,
                reason: "no".into(),
            },
        };
        assert_eq!(denied(451).status().as_u16(), 451);
        assert_eq!(denied(200).status().as_u16(), 403);
        assert_eq!(denied(500).status().as_u16(), 403);
    }

    #[test]
    fn busy_carries_retry_after_and_a_problem_body() {
        let busy = job(JobError::new(ErrorCode::Busy, "queue full"));
        let resp = Problem::new(busy, "abc").to_response();
        assert_eq!(resp.status(), 503);
        assert_eq!(resp.headers()["retry-after"], "2");
        assert_eq!(resp.headers()["content-type"], "application/problem+json");
        assert_eq!(resp.headers()["x-request-id"], "abc");
    }

    #[test]
    fn an_unsatisfiable_range_names_the_size() {
        let mut e = JobError::new(ErrorCode::RangeNotSatisfiable, "start past the end");
        e.size = Some(5000);
        let resp = Problem::new(job(e.clone()), "abc").to_response();
        assert_eq!(resp.status(), 416);
        assert_eq!(resp.headers()["content-range"], "bytes */5000");
        assert_eq!(resp.headers()["content-type"], "application/problem+json");
        e.size = None;
        let resp = Problem::new(job(e), "abc").to_response();
        assert_eq!(resp.status(), 416);
        assert!(resp.headers().get("content-range").is_none());
    }
}
