//! The soak's clients: what each request is, what answer it expects, and the tally of what
//! came back by kind and class. Every request has a deadline, so a worker never hangs.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::SoakArgs;
use crate::fixtures::Fixture;
use crate::systems::{Gateway, qenc};

/// One request, whatever its answer, ends within this (a resolve's fresh extraction on a
/// busy machine is the slowest expected one).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// Receive buffer of a reader that stalls: small, so the gateway's writes stall soon.
const STALL_RCVBUF: u32 = 64 * 1024;
/// How fast a slow reader (within the idle-write timeout) takes the body: a chunk at most
/// every this often, each about `SLOW_CHUNK` bytes.
const SLOW_GAP: Duration = Duration::from_millis(400);
const SLOW_CHUNK: u64 = 256 * 1024;
/// A stalled reader that got the whole body: the gateway never had a write waiting long
/// enough to cut it.
pub const NOT_CUT: &str = "whole body: not cut";
/// Distinct cached URLs of the small progressive file (the extraction cache serves them).
const CACHED_URLS: usize = 4;

/// What a client does; the weights are the mix (out of 100).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// The whole progressive file (exact length).
    Stream,
    /// A `Range` of it (206, exact length).
    Range,
    /// An HLS playlist (the sidecar's native fetch), whole.
    Hls,
    /// DASH video + audio, merged by ffmpeg through pipes, whole.
    Merge,
    /// `POST /v1/resolve` of a URL never seen (a fresh yt-dlp extraction).
    Resolve,
    /// Garbage, tampered, empty and oversized tokens (4xx).
    BadToken,
    /// A link past its expiry (410).
    Expired,
    /// A stream dropped at a random point: before the head, after N bytes, mid-range.
    Abort,
    /// A reader slower than the origin but within the idle-write timeout (whole body).
    SlowReader,
    /// A reader that stops past the idle-write timeout (cut by the gateway).
    Stall,
}

const MIX: [(Kind, u32); 10] = [
    (Kind::Stream, 14),
    (Kind::Range, 12),
    (Kind::Hls, 8),
    (Kind::Merge, 6),
    (Kind::Resolve, 8),
    (Kind::BadToken, 10),
    (Kind::Expired, 8),
    (Kind::Abort, 18),
    (Kind::SlowReader, 8),
    (Kind::Stall, 8),
];

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Stream => "stream",
            Kind::Range => "range",
            Kind::Hls => "hls",
            Kind::Merge => "merge (ffmpeg)",
            Kind::Resolve => "resolve",
            Kind::BadToken => "bad token",
            Kind::Expired => "expired token",
            Kind::Abort => "abort",
            Kind::SlowReader => "slow reader",
            Kind::Stall => "stalled reader",
        }
    }

    fn pick(rng: &mut StdRng) -> Kind {
        let total: u32 = MIX.iter().map(|(_, w)| w).sum();
        let mut x = rng.gen_range(0..total);
        for (k, w) in MIX {
            if x < w {
                return k;
            }
            x -= w;
        }
        unreachable!("x < total")
    }
}

/// Outcomes by class, over time: expected ones and the rest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Group {
    /// The answer asked for, whole.
    Ok,
    /// The refusal asked for (bad or expired token).
    Refused,
    /// Dropped by the client on purpose.
    Aborted,
    /// Cut by the gateway's idle-write timeout, as asked for.
    Cut,
    /// A 5xx: never expected.
    ServerError,
    /// Anything else not expected: wrong status, short body, transport error, timeout.
    Unexpected,
}

impl Group {
    pub const ALL: [Group; 6] = [
        Group::Ok,
        Group::Refused,
        Group::Aborted,
        Group::Cut,
        Group::ServerError,
        Group::Unexpected,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Group::Ok => "ok",
            Group::Refused => "refused (4xx)",
            Group::Aborted => "aborted",
            Group::Cut => "cut (idle write)",
            Group::ServerError => "5xx",
            Group::Unexpected => "other unexpected",
        }
    }
    fn expected(self) -> bool {
        !matches!(self, Group::ServerError | Group::Unexpected)
    }
}

/// Finished requests by (kind, group, detail).
#[derive(Clone, Debug, Default)]
pub struct Tally(pub BTreeMap<(Kind, Group, String), u64>);

impl Tally {
    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }
    pub fn by_group(&self) -> [u64; 6] {
        let mut out = [0; 6];
        for ((_, g, _), n) in &self.0 {
            out[*g as usize] += n;
        }
        out
    }
    /// Count of one (kind, detail) in any group.
    pub fn count(&self, kind: Kind, detail: &str) -> u64 {
        self.0
            .iter()
            .filter(|((k, _, d), _)| *k == kind && d == detail)
            .map(|(_, n)| n)
            .sum()
    }
    /// (kind, detail, count) of every unexpected class.
    pub fn unexpected(&self) -> Vec<(&'static str, String, u64)> {
        self.0
            .iter()
            .filter(|((_, g, _), _)| !g.expected())
            .map(|((k, g, d), n)| (k.name(), format!("{}: {d}", g.name()), *n))
            .collect()
    }
}

/// Links minted once, before the load.
pub struct Tokens {
    cached: Vec<String>,
    hls: String,
    merge: String,
    long: String,
    expired: String,
}

impl Tokens {
    pub async fn mint(
        gw: &Gateway,
        base: &str,
        small: &Fixture,
        long: &Fixture,
    ) -> anyhow::Result<Tokens> {
        let dir = format!("{base}/{}s", small.secs);
        let mut cached = Vec::new();
        for i in 0..CACHED_URLS {
            cached.push(mint(gw, &format!("{dir}/progressive.mp4?c={i}"), "b", None).await?);
        }
        let expired = mint(gw, &format!("{dir}/progressive.mp4?c=0"), "b", Some(1)).await?;
        let t = Tokens {
            cached,
            hls: mint(gw, &format!("{dir}/hls/index.m3u8"), "b", None).await?,
            merge: mint(gw, &format!("{dir}/dash/manifest.mpd"), "bv+ba", None).await?,
            long: mint(
                gw,
                &format!("{base}/{}s/progressive.mp4", long.secs),
                "b",
                None,
            )
            .await?,
            expired,
        };
        // Past the expired link's one-second lifetime.
        tokio::time::sleep(Duration::from_millis(2100)).await;
        Ok(t)
    }
}

/// `streamgate mint --config … --url URL --format F [--ttl S]`.
async fn mint(gw: &Gateway, url: &str, format: &str, ttl: Option<u64>) -> anyhow::Result<String> {
    let mut cmd = tokio::process::Command::new(&gw.bin);
    cmd.args(["mint", "--url", url, "--format", format]);
    if let Some(c) = &gw.config {
        cmd.arg("--config").arg(c);
    }
    if let Some(s) = ttl {
        cmd.arg("--ttl").arg(s.to_string());
    }
    let out = cmd.output().await.context("streamgate mint")?;
    if !out.status.success() {
        bail!("mint: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

/// The shared state of all clients.
pub struct Load {
    /// `host:port` of the gateway.
    authority: String,
    /// `http://fixtures/<secs>s` of the small fixture.
    small_dir: String,
    tokens: Tokens,
    small_size: u64,
    long_size: u64,
    idle_write: Duration,
    tally: Mutex<Tally>,
}

/// What one request came to.
struct Outcome {
    group: Group,
    detail: String,
}

fn outcome(group: Group, detail: impl Into<String>) -> Outcome {
    Outcome {
        group,
        detail: detail.into(),
    }
}

impl Load {
    pub fn new(
        gateway_base: String,
        fixtures: String,
        tokens: Tokens,
        small: &Fixture,
        long: &Fixture,
        args: &SoakArgs,
    ) -> Load {
        Load {
            authority: gateway_base.trim_start_matches("http://").to_owned(),
            small_dir: format!("{fixtures}/{}s", small.secs),
            tokens,
            small_size: small.size,
            long_size: long.size,
            idle_write: Duration::from_secs(args.idle_write_secs),
            tally: Mutex::new(Tally::default()),
        }
    }

    pub fn tally_now(&self) -> Tally {
        self.tally.lock().unwrap().clone()
    }

    /// Each kind once, one after another; not counted.
    pub async fn warm_up(&self, seed: u64) {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
        for (kind, _) in MIX {
            let o = self.one(kind, &mut rng).await;
            eprintln!(
                "soak: warm-up {}: {} {}",
                kind.name(),
                o.group.name(),
                o.detail
            );
        }
    }

    /// Requests one after another until `deadline`.
    pub async fn worker(&self, seed: u64, deadline: Instant) {
        let mut rng = StdRng::seed_from_u64(seed);
        while Instant::now() < deadline {
            let kind = Kind::pick(&mut rng);
            let o = self.one(kind, &mut rng).await;
            *self
                .tally
                .lock()
                .unwrap()
                .0
                .entry((kind, o.group, o.detail))
                .or_default() += 1;
        }
    }

    async fn one(&self, kind: Kind, rng: &mut StdRng) -> Outcome {
        let run = async {
            match kind {
                Kind::Stream => self.whole(self.cached(rng), Some(self.small_size)).await,
                Kind::Range => self.range(rng).await,
                Kind::Hls => self.whole(stream_path(&self.tokens.hls), None).await,
                Kind::Merge => self.whole(stream_path(&self.tokens.merge), None).await,
                Kind::Resolve => self.resolve(rng).await,
                Kind::BadToken => self.bad_token(rng).await,
                Kind::Expired => self.refused(&stream_path(&self.tokens.expired), 410).await,
                Kind::Abort => self.abort(rng).await,
                Kind::SlowReader => self.slow(self.cached(rng)).await,
                Kind::Stall => self.stall().await,
            }
        };
        match tokio::time::timeout(REQUEST_TIMEOUT, run).await {
            Ok(Ok(o)) => o,
            Ok(Err(e)) => outcome(Group::Unexpected, format!("transport: {}", short(&e))),
            Err(_) => outcome(Group::Unexpected, "no end within the request timeout"),
        }
    }

    fn cached(&self, rng: &mut StdRng) -> String {
        stream_path(&self.tokens.cached[rng.gen_range(0..CACHED_URLS)])
    }

    async fn whole(&self, path: String, size: Option<u64>) -> anyhow::Result<Outcome> {
        let resp = self.get(&path, &[], None).await?;
        let status = resp.status().as_u16();
        if status != 200 {
            return Ok(by_status(status, "expected 200"));
        }
        let (n, err) = drain(resp.into_body(), u64::MAX, None).await;
        Ok(match (err, size) {
            (Some(e), _) => outcome(Group::Unexpected, format!("200 body cut: {e}")),
            (None, Some(s)) if n != s => outcome(Group::Unexpected, "200 with a wrong length"),
            (None, _) if n == 0 => outcome(Group::Unexpected, "200 with an empty body"),
            _ => outcome(Group::Ok, "200 whole"),
        })
    }

    async fn range(&self, rng: &mut StdRng) -> anyhow::Result<Outcome> {
        let start = rng.gen_range(0..self.small_size);
        let end = (start + rng.gen_range(0..1 << 20)).min(self.small_size - 1);
        let range = format!("bytes={start}-{end}");
        let resp = self
            .get(&self.cached(rng), &[("range", &range)], None)
            .await?;
        let status = resp.status().as_u16();
        if status != 206 {
            return Ok(by_status(status, "expected 206"));
        }
        let (n, err) = drain(resp.into_body(), u64::MAX, None).await;
        Ok(match err {
            Some(e) => outcome(Group::Unexpected, format!("206 body cut: {e}")),
            None if n != end - start + 1 => outcome(Group::Unexpected, "206 with a wrong length"),
            None => outcome(Group::Ok, "206 exact"),
        })
    }

    async fn resolve(&self, rng: &mut StdRng) -> anyhow::Result<Outcome> {
        // The fixture server ignores the query: a new URL for yt-dlp, the same small file.
        let url = format!(
            "{}/progressive.mp4?r={}",
            self.small_dir,
            rng.r#gen::<u64>()
        );
        let body = serde_json::json!({ "url": url }).to_string();
        let resp = self
            .request("POST", "/v1/resolve", &[], Some(body), None)
            .await?;
        let status = resp.status().as_u16();
        let _ = resp.into_body().collect().await;
        Ok(if status == 200 {
            outcome(Group::Ok, "200 resolved")
        } else {
            by_status(status, "expected 200")
        })
    }

    async fn bad_token(&self, rng: &mut StdRng) -> anyhow::Result<Outcome> {
        let valid = &self.tokens.cached[0];
        let token = match rng.gen_range(0..4) {
            0 => String::new(),
            1 => (0..rng.gen_range(1..200))
                .map(|_| {
                    char::from(b"abcdefghijklmnopqrstuvwxyzABC0123456789-_"[rng.gen_range(0..41)])
                })
                .collect(),
            2 => {
                // One character changed: the seal must not open.
                let mut b = valid.clone().into_bytes();
                let i = rng.gen_range(0..b.len());
                b[i] = if b[i] == b'A' { b'B' } else { b'A' };
                String::from_utf8(b).expect("ascii")
            }
            _ => "A".repeat(6000),
        };
        let resp = self.get(&stream_path(&token), &[], None).await?;
        let status = resp.status().as_u16();
        let _ = resp.into_body().collect().await;
        Ok(if (400..500).contains(&status) {
            outcome(Group::Refused, format!("{status}"))
        } else {
            by_status(status, "expected 4xx")
        })
    }

    async fn refused(&self, path: &str, want: u16) -> anyhow::Result<Outcome> {
        let resp = self.get(path, &[], None).await?;
        let status = resp.status().as_u16();
        let _ = resp.into_body().collect().await;
        Ok(if status == want {
            outcome(Group::Refused, format!("{status}"))
        } else {
            by_status(status, &format!("expected {want}"))
        })
    }

    async fn abort(&self, rng: &mut StdRng) -> anyhow::Result<Outcome> {
        let (path, size) = match rng.gen_range(0..4) {
            0 | 1 => (self.cached(rng), self.small_size),
            2 => (stream_path(&self.tokens.hls), 1 << 20),
            _ => (stream_path(&self.tokens.merge), 1 << 20),
        };
        match rng.gen_range(0..3) {
            0 => {
                // Before the head: the request is sent, the connection dropped soon after.
                let wait = Duration::from_millis(rng.gen_range(0..300));
                match tokio::time::timeout(wait, self.get(&path, &[], None)).await {
                    Err(_) => Ok(outcome(Group::Aborted, "before the head")),
                    Ok(r) => Ok(head_then_drop(r?.status().as_u16())),
                }
            }
            1 => {
                let resp = self.get(&path, &[], None).await?;
                let status = resp.status().as_u16();
                if status != 200 {
                    return Ok(by_status(status, "expected 200"));
                }
                let n = rng.gen_range(0..size);
                let _ = drain(resp.into_body(), n, None).await;
                Ok(outcome(Group::Aborted, "after some bytes"))
            }
            _ => {
                let start = rng.gen_range(0..self.small_size / 2);
                let range = format!("bytes={start}-");
                let resp = self
                    .get(&self.cached(rng), &[("range", &range)], None)
                    .await?;
                let status = resp.status().as_u16();
                if status != 206 {
                    return Ok(by_status(status, "expected 206"));
                }
                let n = rng.gen_range(0..self.small_size - start);
                let _ = drain(resp.into_body(), n, None).await;
                Ok(outcome(Group::Aborted, "mid-range"))
            }
        }
    }

    async fn slow(&self, path: String) -> anyhow::Result<Outcome> {
        let resp = self.get(&path, &[], None).await?;
        let status = resp.status().as_u16();
        if status != 200 {
            return Ok(by_status(status, "expected 200"));
        }
        let (n, err) = drain(resp.into_body(), u64::MAX, Some(SLOW_GAP)).await;
        Ok(match err {
            Some(e) => outcome(Group::Unexpected, format!("slow reader cut: {e}")),
            None if n != self.small_size => outcome(Group::Unexpected, "200 with a wrong length"),
            None => outcome(Group::Ok, "200 whole, slowly"),
        })
    }

    async fn stall(&self) -> anyhow::Result<Outcome> {
        let path = stream_path(&self.tokens.long);
        let resp = self.get(&path, &[], Some(STALL_RCVBUF)).await?;
        let status = resp.status().as_u16();
        if status != 200 {
            return Ok(by_status(status, "expected 200"));
        }
        let mut body = resp.into_body();
        let (first, err) = drain(&mut body, 64 * 1024, None).await;
        if let Some(e) = err {
            return Ok(outcome(Group::Unexpected, format!("cut early: {e}")));
        }
        // Nothing read for twice the gateway's idle-write timeout and then some.
        tokio::time::sleep(self.idle_write * 2 + Duration::from_secs(3)).await;
        let (rest, err) = drain(&mut body, u64::MAX, None).await;
        Ok(match err {
            Some(_) => outcome(Group::Cut, "cut after the stall"),
            // The timeout counts while a write waits for the client: a sidecar that had
            // no byte for the gateway during the stall (a starved machine) leaves nothing
            // waiting. Not an error by itself; the verdict bounds how often it happens.
            None if first + rest == self.long_size => outcome(Group::Ok, NOT_CUT),
            None => outcome(Group::Unexpected, "a body ended short without an error"),
        })
    }

    async fn get(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        rcvbuf: Option<u32>,
    ) -> anyhow::Result<hyper::Response<Incoming>> {
        self.request("GET", path, headers, None, rcvbuf).await
    }

    async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<String>,
        rcvbuf: Option<u32>,
    ) -> anyhow::Result<hyper::Response<Incoming>> {
        let mut sender = self.connect(rcvbuf).await?;
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", &self.authority)
            .header("user-agent", "streamgate-soak");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req.body(Full::new(Bytes::from(body.unwrap_or_default())))?;
        Ok(sender.send_request(req).await?)
    }

    async fn connect(&self, rcvbuf: Option<u32>) -> anyhow::Result<SendRequest<Full<Bytes>>> {
        let socket = tokio::net::TcpSocket::new_v4()?;
        if let Some(n) = rcvbuf {
            socket.set_recv_buffer_size(n)?;
        }
        let stream = socket.connect(self.authority.parse()?).await?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }
}

fn stream_path(token: &str) -> String {
    format!("/v1/stream?data={}", qenc(token))
}

/// A status other than the one asked for: 5xx, or otherwise unexpected.
fn by_status(status: u16, want: &str) -> Outcome {
    if status >= 500 {
        outcome(Group::ServerError, format!("{status}"))
    } else {
        outcome(Group::Unexpected, format!("{status}, {want}"))
    }
}

/// The head came before the client's deadline to drop it: fine unless it is a 5xx.
fn head_then_drop(status: u16) -> Outcome {
    if status >= 500 {
        outcome(Group::ServerError, format!("{status}"))
    } else {
        outcome(Group::Aborted, "after the head")
    }
}

/// Reads until `limit` bytes or the end (sleeping `gap` after each `SLOW_CHUNK` when
/// given); (bytes, the error that ended it early).
async fn drain(
    mut body: impl hyper::body::Body<Data = Bytes, Error = hyper::Error> + Unpin,
    limit: u64,
    gap: Option<Duration>,
) -> (u64, Option<String>) {
    let mut n = 0u64;
    let mut since_gap = 0u64;
    while n < limit {
        match body.frame().await {
            None => return (n, None),
            Some(Err(e)) => return (n, Some(short(&e.into()))),
            Some(Ok(f)) => {
                if let Some(d) = f.data_ref() {
                    n += d.len() as u64;
                    since_gap += d.len() as u64;
                }
            }
        }
        if let Some(gap) = gap
            && since_gap >= SLOW_CHUNK
        {
            since_gap = 0;
            tokio::time::sleep(gap).await;
        }
    }
    (n, None)
}

/// An error's chain on one line, without addresses or numbers that would split classes.
fn short(e: &anyhow::Error) -> String {
    let s = format!("{e:#}");
    s.chars()
        .filter(|c| !c.is_ascii_digit())
        .take(120)
        .collect()
}
