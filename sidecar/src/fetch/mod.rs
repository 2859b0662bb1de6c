//! The sidecar's own HTTP client: yt-dlp extracts, the sidecar moves the bytes. Every
//! request is a fresh connection made by the job's [`Egress`] (checked after DNS), HTTPS is
//! verified against the Mozilla roots, and redirects are followed hop by hop, each hop a new
//! checked connection.

pub mod dash;
pub mod hls;
pub mod progressive;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use url::Url;

use crate::egress::{Egress, EgressError};

/// Most bytes read ahead of the relay per connection: what a stalled client makes the
/// sidecar hold, once here and once in the frame being written (hyper's default grows to
/// ≈400 KiB). 32 KiB: the sidecar's PSS per stalled stream 253 → 154 KiB (bench, 64
/// streams), single-stream throughput unchanged within the noise of a loaded machine.
const READ_BUFFER: usize = 32 * 1024;
/// Redirect hops followed before giving up.
const MAX_REDIRECTS: usize = 10;
/// A response head must arrive within this (a body's silence is the caller's stall timeout).
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    Egress(#[from] EgressError),
    #[error("{0}")]
    Http(String),
    /// The origin answered with an error status.
    #[error("HTTP {0}")]
    Status(StatusCode),
    #[error("the range starts past the end of the media ({size:?} bytes)")]
    Unsatisfiable { size: Option<u64> },
    #[error("no data for {0:?}")]
    Stalled(Duration),
    /// The media needs what the fetcher does not do (a live or DRM playlist, …): yt-dlp's
    /// own downloader takes the job instead.
    #[error("not for the native fetcher: {0}")]
    Unsupported(String),
    /// AES-128 content that does not decrypt (a wrong key, a truncated segment).
    #[error("AES-128: {0}")]
    Decrypt(String),
    /// A job process (ffmpeg merging) stopped at a limit of its confinement: told as it is.
    #[error("{0}")]
    Confined(streamgate_protocol::JobError),
}

/// How one format's media is requested: its URL's headers and cookies from the extraction.
#[derive(Clone)]
pub struct Fetcher {
    egress: Arc<Egress>,
    headers: HeaderMap,
}

/// A response whose connection lives as long as it does.
pub struct Response {
    /// Where the answer came from, after redirects: relative references resolve against it.
    pub url: Url,
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Incoming,
    connection: tokio::task::JoinHandle<()>,
}

impl Response {
    /// The next data frame of the body (trailers skipped); `None` at its end.
    pub async fn data(&mut self) -> Option<Result<Bytes, String>> {
        loop {
            match self.body.frame().await? {
                Ok(frame) => match frame.into_data() {
                    Ok(data) => return Some(Ok(data)),
                    Err(_) => continue,
                },
                Err(e) => return Some(Err(e.to_string())),
            }
        }
    }

    pub fn content_length(&self) -> Option<u64> {
        self.headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok())
    }

    /// `Content-Range: bytes START-END/SIZE` (SIZE may be `*`).
    pub fn content_range(&self) -> Option<(u64, u64, Option<u64>)> {
        let value = self.headers.get(header::CONTENT_RANGE)?.to_str().ok()?;
        parse_content_range(value)
    }
}

fn parse_content_range(value: &str) -> Option<(u64, u64, Option<u64>)> {
    let (span, size) = value.trim().strip_prefix("bytes ")?.split_once('/')?;
    let (start, end) = span.split_once('-')?;
    let (start, end): (u64, u64) = (start.parse().ok()?, end.parse().ok()?);
    let size = match size {
        "*" => None,
        s => Some(s.parse().ok()?),
    };
    (start <= end && size.is_none_or(|s| end < s)).then_some((start, end, size))
}

impl Drop for Response {
    /// A client that leaves closes the upstream connection at once.
    fn drop(&mut self) {
        self.connection.abort();
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

fn tls() -> TlsConnector {
    static CONFIG: OnceLock<Arc<ClientConfig>> = OnceLock::new();
    let config = CONFIG.get_or_init(|| {
        let roots = RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        Arc::new(config)
    });
    TlsConnector::from(Arc::clone(config))
}

impl Fetcher {
    /// `headers` and `cookies` are the format's `http_headers` and `cookies` fields.
    pub fn new<'a>(
        egress: Arc<Egress>,
        headers: impl IntoIterator<Item = (&'a str, &'a str)>,
        cookies: Option<&str>,
    ) -> Fetcher {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            if let (Ok(n), Ok(v)) = (HeaderName::try_from(name), HeaderValue::try_from(value)) {
                map.insert(n, v);
            }
        }
        if let Some(cookie) = cookies.map(cookie_header).filter(|c| !c.is_empty())
            && let Ok(v) = HeaderValue::try_from(cookie)
        {
            map.insert(header::COOKIE, v);
        }
        Fetcher {
            egress,
            headers: map,
        }
    }

    /// `method url` with an optional `Range` value, following redirects.
    pub async fn request(
        &self,
        method: Method,
        url: &Url,
        range: Option<&str>,
    ) -> Result<Response, FetchError> {
        let mut url = url.clone();
        for _ in 0..=MAX_REDIRECTS {
            let resp = tokio::time::timeout(HEAD_TIMEOUT, self.once(&method, &url, range))
                .await
                .map_err(|_| FetchError::Stalled(HEAD_TIMEOUT))??;
            if !resp.status.is_redirection() || resp.status == StatusCode::NOT_MODIFIED {
                return Ok(resp);
            }
            let location = resp
                .headers
                .get(header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .ok_or_else(|| FetchError::Http("redirect without Location".into()))?;
            url = url
                .join(location)
                .map_err(|e| FetchError::Http(format!("bad redirect: {e}")))?;
            if !matches!(url.scheme(), "http" | "https") {
                let why = format!("redirect to scheme {}", url.scheme());
                return Err(FetchError::Egress(EgressError::Denied(why)));
            }
        }
        Err(FetchError::Http("too many redirects".into()))
    }

    async fn once(
        &self,
        method: &Method,
        url: &Url,
        range: Option<&str>,
    ) -> Result<Response, FetchError> {
        let host = url
            .host()
            .ok_or_else(|| FetchError::Http("URL without host".into()))?;
        let port = url.port_or_known_default().unwrap_or(80);
        let tcp = self.egress.connect(&host.to_owned(), port).await?;
        let io: Box<dyn Io> = match url.scheme() {
            "https" => {
                let name = tokio_rustls::rustls::pki_types::ServerName::try_from(
                    url.host_str()
                        .unwrap_or_default()
                        .trim_matches(['[', ']'])
                        .to_owned(),
                )
                .map_err(|e| FetchError::Http(format!("TLS name: {e}")))?;
                Box::new(
                    tls()
                        .connect(name, tcp)
                        .await
                        .map_err(|e| FetchError::Http(format!("TLS: {e}")))?,
                )
            }
            _ => Box::new(tcp),
        };
        let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
            .max_buf_size(READ_BUFFER)
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| FetchError::Http(e.to_string()))?;
        let connection = tokio::spawn(async move {
            let _ = conn.await;
        });
        let path = match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_owned(),
        };
        let authority = match url.port() {
            Some(p) => format!("{}:{p}", url.host_str().unwrap_or_default()),
            None => url.host_str().unwrap_or_default().to_owned(),
        };
        let mut req = Request::builder().method(method.clone()).uri(path);
        let headers = req.headers_mut().expect("builder without errors so far");
        headers.extend(self.headers.clone());
        headers.insert(
            header::HOST,
            HeaderValue::try_from(authority).map_err(|e| FetchError::Http(e.to_string()))?,
        );
        if let Some(range) = range.and_then(|r| HeaderValue::try_from(r).ok()) {
            headers.insert(header::RANGE, range);
        }
        // The bytes as stored: a compressed body would change length and offsets.
        headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
        let req = req
            .body(Empty::<Bytes>::new())
            .map_err(|e| FetchError::Http(e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| FetchError::Http(e.to_string()))?;
        let (parts, body) = resp.into_parts();
        Ok(Response {
            url: url.clone(),
            status: parts.status,
            headers: parts.headers,
            body,
            connection,
        })
    }
}

/// yt-dlp's `cookies` field (`name=value; Domain=…; Path=…` per cookie) as a `Cookie`
/// header: the pairs, without the attributes.
fn cookie_header(cookies: &str) -> String {
    const ATTRIBUTES: [&str; 7] = [
        "domain", "path", "expires", "max-age", "secure", "httponly", "samesite",
    ];
    cookies
        .split(';')
        .map(str::trim)
        .filter(|pair| {
            let name = pair
                .split('=')
                .next()
                .unwrap_or_default()
                .to_ascii_lowercase();
            pair.contains('=') && !ATTRIBUTES.contains(&name.as_str())
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges() {
        assert_eq!(
            parse_content_range("bytes 0-99/1000"),
            Some((0, 99, Some(1000)))
        );
        assert_eq!(parse_content_range("bytes 5-9/*"), Some((5, 9, None)));
        assert_eq!(parse_content_range("bytes 9-5/100"), None);
        assert_eq!(parse_content_range("bytes 0-100/100"), None);
        assert_eq!(parse_content_range("bytes */100"), None);
        assert_eq!(parse_content_range("items 0-1/2"), None);
    }

    #[test]
    fn cookies_keep_their_pairs_only() {
        let field = "a=1; Domain=.example.com; Path=/; Expires=Tue, 01 Dec 2026; b=two; Secure";
        assert_eq!(cookie_header(field), "a=1; b=two");
    }
}
