//! The job's forward proxy: HTTP CONNECT (https) and absolute-form requests (plain http),
//! the only way out for yt-dlp (`--proxy`) and the ffmpeg it starts (`http_proxy`). Every
//! request — a page, a player file, a manifest, a segment, each hop of a redirect — is a new
//! [`Egress::connect`]. It answers only the job holding its per-job password, on a listener
//! the job alone can reach in netns mode.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tracing::debug;
use url::{Host, Url};

use super::{Egress, EgressError};

/// Largest request head a job may send.
const MAX_HEAD: usize = 64 * 1024;
/// A job that opens a connection and says nothing loses it after this.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// User name in the proxy URL; the password is per job.
const USER: &str = "job";
/// Hop-by-hop headers of the client's request, never forwarded.
const HOP_BY_HOP: [&str; 6] = [
    "proxy-authorization",
    "proxy-connection",
    "connection",
    "keep-alive",
    "te",
    "upgrade",
];

/// A running proxy; it stops (and every tunnel with it) when dropped.
pub struct JobProxy {
    url: String,
    task: tokio::task::JoinHandle<()>,
}

impl JobProxy {
    /// Serves `listener` (bound to loopback, in the job's namespace or the sidecar's).
    pub fn start(
        listener: std::net::TcpListener,
        egress: Arc<Egress>,
    ) -> std::io::Result<JobProxy> {
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let listener = TcpListener::from_std(listener)?;
        let password = format!("{:032x}", super::random_u128());
        let url = format!("http://{USER}:{password}@127.0.0.1:{port}");
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{password}"))
        );
        let task = tokio::spawn(async move {
            let mut tunnels = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((client, _)) => {
                            let egress = Arc::clone(&egress);
                            let expected = expected.clone();
                            tunnels.spawn(async move { serve(client, &egress, &expected).await });
                        }
                        Err(e) => {
                            debug!("proxy accept: {e}");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    },
                    Some(_) = tunnels.join_next(), if !tunnels.is_empty() => {}
                }
            }
        });
        Ok(JobProxy { url, task })
    }

    /// `http://job:PASSWORD@127.0.0.1:PORT`, for `--proxy`.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for JobProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads up to the end of an HTTP head; returns the head and whatever followed it.
pub(super) async fn read_head<R: AsyncRead + Unpin>(
    io: &mut R,
    max: usize,
) -> std::io::Result<(BytesMut, BytesMut)> {
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            return Ok((buf, rest));
        }
        if buf.len() >= max {
            return Err(std::io::Error::other("request head too large"));
        }
        if io.read_buf(&mut buf).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
}

/// A parsed request head: only what the proxy needs.
struct Request {
    method: String,
    target: String,
    authorized: bool,
    /// Header lines to forward (absolute-form only), hop-by-hop ones removed.
    forward: Vec<(String, Vec<u8>)>,
}

fn parse(head: &[u8], expected_auth: &str) -> Result<Request, String> {
    let mut headers = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err("incomplete request head".into()),
        Err(e) => return Err(format!("bad request head: {e}")),
    }
    let authorized = req.headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("proxy-authorization")
            && constant_time_eq(h.value, expected_auth.as_bytes())
    });
    let forward = req
        .headers
        .iter()
        .filter(|h| !HOP_BY_HOP.iter().any(|n| h.name.eq_ignore_ascii_case(n)))
        .map(|h| (h.name.to_owned(), h.value.to_owned()))
        .collect();
    Ok(Request {
        method: req.method.unwrap_or_default().to_owned(),
        target: req.path.unwrap_or_default().to_owned(),
        authorized,
        forward,
    })
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn serve(mut client: TcpStream, egress: &Egress, expected_auth: &str) {
    let head = tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut client, MAX_HEAD)).await;
    let Ok(Ok((head, rest))) = head else {
        return;
    };
    let request = match parse(&head, expected_auth) {
        Ok(r) => r,
        Err(why) => return answer(&mut client, 400, &why).await,
    };
    if !request.authorized {
        // ffmpeg sends its credentials only once challenged.
        let challenge = "HTTP/1.1 407 Proxy Authentication Required\r\n\
            Proxy-Authenticate: Basic realm=\"streamgate\"\r\n\
            Content-Length: 0\r\nConnection: close\r\n\r\n";
        let _ = client.write_all(challenge.as_bytes()).await;
        return;
    }
    let result = if request.method.eq_ignore_ascii_case("CONNECT") {
        tunnel(&mut client, egress, &request.target, rest).await
    } else {
        forward(&mut client, egress, request, rest).await
    };
    if let Err((status, why)) = result {
        answer(&mut client, status, &why).await;
    }
}

/// The status a job's client sees for a refused or failed connection.
fn status_of(e: &EgressError) -> u16 {
    match e {
        EgressError::Denied(_) => 403,
        EgressError::Resolve { .. } | EgressError::Connect { .. } | EgressError::Upstream(_) => 502,
    }
}

async fn answer(client: &mut TcpStream, status: u16, why: &str) {
    let reason = match status {
        400 => "Bad Request",
        403 => "Forbidden",
        _ => "Bad Gateway",
    };
    let resp = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{why}",
        why.len()
    );
    let _ = client.write_all(resp.as_bytes()).await;
}

/// `CONNECT host:port`: a byte tunnel once the egress connected.
async fn tunnel(
    client: &mut TcpStream,
    egress: &Egress,
    authority: &str,
    rest: BytesMut,
) -> Result<(), (u16, String)> {
    let (host, port) =
        split_authority(authority).ok_or((400, format!("bad CONNECT target {authority:?}")))?;
    let mut upstream = egress
        .connect(&host, port)
        .await
        .map_err(|e| (status_of(&e), e.to_string()))?;
    client
        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await
        .map_err(|e| (502, e.to_string()))?;
    if !rest.is_empty() && upstream.write_all(&rest).await.is_err() {
        return Ok(());
    }
    let _ = tokio::io::copy_bidirectional(client, &mut upstream).await;
    Ok(())
}

/// `GET http://host/path`: re-sent in origin form with `Connection: close`, so each request
/// opens (and checks) its own connection and a kept-alive client cannot reuse it elsewhere.
async fn forward(
    client: &mut TcpStream,
    egress: &Egress,
    request: Request,
    rest: BytesMut,
) -> Result<(), (u16, String)> {
    let url =
        Url::parse(&request.target).map_err(|_| (400, "absolute-form URL expected".to_owned()))?;
    if url.scheme() != "http" {
        return Err((403, format!("scheme {} is not allowed", url.scheme())));
    }
    let host = url
        .host()
        .ok_or((400, "URL without host".to_owned()))?
        .to_owned();
    let port = url.port_or_known_default().unwrap_or(80);
    let mut upstream = egress
        .connect(&host, port)
        .await
        .map_err(|e| (status_of(&e), e.to_string()))?;
    let mut head = Vec::with_capacity(1024);
    let path = match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_owned(),
    };
    head.extend_from_slice(format!("{} {path} HTTP/1.1\r\n", request.method).as_bytes());
    for (name, value) in &request.forward {
        head.extend_from_slice(name.as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value);
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"Connection: close\r\n\r\n");
    head.extend_from_slice(&rest);
    if upstream.write_all(&head).await.is_err() {
        return Err((502, "upstream closed".into()));
    }
    let _ = tokio::io::copy_bidirectional(client, &mut upstream).await;
    Ok(())
}

/// `host:port` or `[v6]:port`; the host as a URL parser reads it (so `2130706433` is an
/// IPv4 address here exactly as it is for yt-dlp's own parser).
fn split_authority(authority: &str) -> Option<(Host<String>, u16)> {
    let (host, port) = authority.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let host = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => Host::Ipv6(v6.parse().ok()?),
        None => Host::parse(host).ok()?,
    };
    Some((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorities() {
        let (h, p) = split_authority("example.com:443").unwrap();
        assert_eq!((h.to_string(), p), ("example.com".into(), 443));
        let (h, _) = split_authority("2130706433:80").unwrap();
        assert_eq!(h, Host::<String>::Ipv4("127.0.0.1".parse().unwrap()));
        let (h, _) = split_authority("[::1]:80").unwrap();
        assert_eq!(h, Host::<String>::Ipv6("::1".parse().unwrap()));
        assert!(split_authority("example.com").is_none());
        assert!(split_authority("a b:80").is_none());
    }

    #[test]
    fn heads() {
        let head = b"GET http://a.test/x?y=1 HTTP/1.1\r\nHost: a.test\r\nProxy-Authorization: Basic QQ==\r\nConnection: keep-alive\r\nAccept: */*\r\n\r\n";
        let r = parse(head, "Basic QQ==").unwrap();
        assert!(r.authorized);
        assert_eq!(
            (r.method.as_str(), r.target.as_str()),
            ("GET", "http://a.test/x?y=1")
        );
        let names: Vec<_> = r.forward.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["Host", "Accept"]);
        assert!(!parse(head, "Basic Qg==").unwrap().authorized);
        assert!(parse(b"\x00garbage\r\n\r\n", "x").is_err());
    }
}
