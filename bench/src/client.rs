//! The measuring client: plain hyper 1 HTTP/1.1 over a fresh TCP connection per stream,
//! reading the body as fast as it arrives. First byte = first non-empty *body* chunk.

use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// One transfer, successful or not.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// HTTP status (or 200 / 599 for a direct yt-dlp process: exit 0 / anything else).
    pub status: u16,
    /// From the start of the request to the first body byte.
    pub ttfb: Option<Duration>,
    /// From the start of the request to the end of the body (or the failure).
    pub elapsed: Duration,
    pub bytes: u64,
    pub error: Option<String>,
}

impl Outcome {
    /// A transfer counts as good when it got 200 and exactly `expect` bytes (when known).
    pub fn ok(&self, expect: Option<u64>) -> bool {
        self.status == 200 && self.error.is_none() && expect.is_none_or(|e| e == self.bytes)
    }
    pub fn describe_failure(&self, expect: Option<u64>) -> String {
        if let Some(e) = &self.error {
            return format!("status {}: {e}", self.status);
        }
        if self.status != 200 {
            return format!("status {}", self.status);
        }
        format!("{} bytes, expected {:?}", self.bytes, expect)
    }
}

fn authority(uri: &Uri) -> anyhow::Result<String> {
    let host = uri.host().ok_or_else(|| anyhow!("no host in {uri}"))?;
    Ok(format!("{host}:{}", uri.port_u16().unwrap_or(80)))
}

async fn connect(uri: &Uri) -> anyhow::Result<SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(authority(uri)?)
        .await
        .context("connect")?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

fn request(method: &str, uri: &Uri, body: Option<String>) -> anyhow::Result<Request<Full<Bytes>>> {
    let mut b = Request::builder()
        .method(method)
        .uri(uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"))
        .header("host", authority(uri)?)
        .header("user-agent", "streamgate-bench");
    if body.is_some() {
        b = b.header("content-type", "application/json");
    }
    Ok(b.body(Full::new(Bytes::from(body.unwrap_or_default())))?)
}

/// Sends a request and returns the response head, the body and the start instant.
pub async fn open(url: &str) -> anyhow::Result<(hyper::Response<Incoming>, Instant)> {
    let uri: Uri = url.parse()?;
    let start = Instant::now();
    let mut sender = connect(&uri).await?;
    let resp = sender.send_request(request("GET", &uri, None)?).await?;
    Ok((resp, start))
}

/// GET `url`, read the body to its end (or until `limit` bytes), as fast as it comes.
pub async fn get(url: &str, limit: Option<u64>, timeout: Duration) -> Outcome {
    let start = Instant::now();
    match tokio::time::timeout(timeout, get_inner(url, limit, start)).await {
        Ok(o) => o,
        Err(_) => Outcome {
            status: 0,
            elapsed: start.elapsed(),
            error: Some(format!("timeout after {timeout:?}")),
            ..Default::default()
        },
    }
}

async fn get_inner(url: &str, limit: Option<u64>, start: Instant) -> Outcome {
    let mut out = Outcome::default();
    let res: anyhow::Result<()> = async {
        let uri: Uri = url.parse()?;
        let mut sender = connect(&uri).await?;
        let resp = sender.send_request(request("GET", &uri, None)?).await?;
        out.status = resp.status().as_u16();
        let mut body = resp.into_body();
        while let Some(frame) = body.frame().await {
            let frame = frame?;
            if let Some(d) = frame.data_ref() {
                if !d.is_empty() && out.ttfb.is_none() {
                    out.ttfb = Some(start.elapsed());
                }
                out.bytes += d.len() as u64;
                if limit.is_some_and(|l| out.bytes >= l) {
                    break;
                }
            }
        }
        Ok(())
    }
    .await;
    out.elapsed = start.elapsed();
    if let Err(e) = res {
        out.error = Some(format!("{e:#}"));
    }
    out
}

/// Reads from `body` until at least `n` bytes arrived; returns (ttfb, bytes).
pub async fn read_some(
    body: &mut Incoming,
    n: u64,
    start: Instant,
) -> anyhow::Result<(Option<Duration>, u64)> {
    let mut got = 0u64;
    let mut ttfb = None;
    while got < n {
        match body.frame().await {
            Some(f) => {
                if let Some(d) = f?.data_ref() {
                    if !d.is_empty() && ttfb.is_none() {
                        ttfb = Some(start.elapsed());
                    }
                    got += d.len() as u64;
                }
            }
            None => break,
        }
    }
    Ok((ttfb, got))
}

/// POST a JSON body, read the whole answer: (status, elapsed, body).
pub async fn post_json(
    url: &str,
    json: String,
    timeout: Duration,
) -> anyhow::Result<(u16, Duration, String)> {
    let start = Instant::now();
    tokio::time::timeout(timeout, async {
        let uri: Uri = url.parse()?;
        let mut sender = connect(&uri).await?;
        let resp = sender
            .send_request(request("POST", &uri, Some(json))?)
            .await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((
            status,
            start.elapsed(),
            String::from_utf8_lossy(&body).into_owned(),
        ))
    })
    .await
    .map_err(|_| anyhow!("timeout after {timeout:?}"))?
}

/// A kept-alive connection for many small requests (plugin-overhead probes).
pub struct KeepAlive {
    uri: Uri,
    sender: Option<SendRequest<Full<Bytes>>>,
    pub reconnects: u32,
}

impl KeepAlive {
    pub fn new(base: &str) -> anyhow::Result<Self> {
        Ok(KeepAlive {
            uri: base.parse()?,
            sender: None,
            reconnects: 0,
        })
    }

    /// GET `path_and_query`, read the whole body; (status, elapsed). The timer covers only
    /// the request on an open connection: a reconnect, if needed, happens before it starts.
    pub async fn get(&mut self, path_and_query: &str) -> anyhow::Result<(u16, Duration)> {
        let ready = match &mut self.sender {
            Some(s) => s.ready().await.is_ok(),
            None => false,
        };
        if !ready {
            self.sender = Some(connect(&self.uri).await?);
            self.reconnects += 1;
        }
        let uri: Uri = format!("http://{}{}", authority(&self.uri)?, path_and_query).parse()?;
        let req = request("GET", &uri, None)?;
        let sender = self.sender.as_mut().expect("connected above");
        let start = Instant::now();
        let resp = match sender.send_request(req).await {
            Ok(r) => r,
            Err(e) => {
                self.sender = None;
                return Err(e.into());
            }
        };
        let status = resp.status().as_u16();
        let close = resp
            .headers()
            .get("connection")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
        resp.into_body().collect().await?;
        let elapsed = start.elapsed();
        if close {
            self.sender = None;
        }
        Ok((status, elapsed))
    }
}

/// Runs `cmd` (a `yt-dlp -o -` command line) and reads its stdout like a body.
pub async fn run_stdout(
    mut cmd: tokio::process::Command,
    limit: Option<u64>,
    timeout: Duration,
) -> Outcome {
    let start = Instant::now();
    let mut out = Outcome::default();
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let res: anyhow::Result<()> = tokio::time::timeout(timeout, async {
        let mut child = cmd.spawn().context("spawning yt-dlp")?;
        let mut stdout = child.stdout.take().expect("piped");
        let mut stderr = child.stderr.take().expect("piped");
        let err_task = tokio::spawn(async move {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s).await;
            s
        });
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = stdout.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            if out.ttfb.is_none() {
                out.ttfb = Some(start.elapsed());
            }
            out.bytes += n as u64;
            if limit.is_some_and(|l| out.bytes >= l) {
                let _ = child.start_kill();
                break;
            }
        }
        let status = child.wait().await?;
        let stderr = err_task.await.unwrap_or_default();
        out.status = if status.success() || limit.is_some() {
            200
        } else {
            599
        };
        if out.status != 200 {
            out.error = Some(format!("yt-dlp {status}: {}", stderr.trim()));
        }
        Ok(())
    })
    .await
    .unwrap_or_else(|_| Err(anyhow!("timeout after {timeout:?}")));
    out.elapsed = start.elapsed();
    if let Err(e) = res {
        out.error = Some(format!("{e:#}"));
    }
    out
}
