//! The measurements, one function per section, and the Markdown report.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::Ctx;
use crate::client::{self, KeepAlive, Outcome};
use crate::procs::{self, TreeRss};
use crate::stats::{fmt_kib, fmt_mbps, fmt_ms, mbps, ms, pct, ratio};
use crate::systems::{Gateway, Kind, Systems};

const SIDECAR_COMM: &str = "streamgate-side"; // comm is cut to 15 bytes
const MIB: u64 = 1024 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mode {
    Cold,
    Warm,
    AfterResolve,
}

#[derive(Default, Debug)]
pub struct Series {
    pub ttfb_ms: Vec<f64>,
    pub failures: usize,
    pub first_failure: Option<String>,
}

impl Series {
    fn push(&mut self, o: &Outcome, expect: Option<u64>) {
        if o.ok(expect) {
            if let Some(t) = o.ttfb {
                self.ttfb_ms.push(ms(t));
            }
        } else {
            self.failures += 1;
            self.first_failure
                .get_or_insert_with(|| o.describe_failure(expect));
        }
    }
    fn p(&self, q: f64) -> Option<f64> {
        pct(&self.ttfb_ms, q)
    }
}

#[derive(Debug)]
pub struct ConcRow {
    pub kind: Kind,
    pub variant: &'static str,
    pub n: usize,
    pub ok: usize,
    pub failures: usize,
    pub first_failure: Option<String>,
    pub bytes: u64,
    pub wall: Duration,
    pub ttfb_ms: Vec<f64>,
    pub idle: Option<TreeRss>,
    pub peak: Option<TreeRss>,
}

impl ConcRow {
    pub fn aggregate(&self) -> f64 {
        mbps(self.bytes, self.wall)
    }
}

#[derive(Debug)]
pub struct MemRow {
    pub kind: Kind,
    pub streams: usize,
    pub idle: TreeRss,
    pub loaded: TreeRss,
}

impl MemRow {
    fn per(&self, f: impl Fn(&TreeRss) -> u64) -> f64 {
        (f(&self.loaded) as f64 - f(&self.idle) as f64) / self.streams.max(1) as f64
    }
}

#[derive(Debug)]
pub struct RelayRow {
    pub streams: usize,
    pub mib_each: u64,
    pub ok: usize,
    pub bytes: u64,
    pub wall: Duration,
    pub ttfb_ms: Vec<f64>,
    pub first_failure: Option<String>,
    pub gateway_peak: Option<TreeRss>,
}

#[derive(Debug)]
pub struct Probe {
    pub kind: Kind,
    pub name: String,
    pub what: String,
    pub statuses: BTreeMap<u16, usize>,
    pub ms: Vec<f64>,
    pub errors: usize,
}

#[derive(Default, Debug)]
pub struct Results {
    pub ttfb: BTreeMap<(Kind, Mode), Series>,
    /// Why the after-resolve row is missing, when it is.
    pub resolve_na: Option<String>,
    pub resolve_ms: Vec<f64>,
    pub throughput: BTreeMap<Kind, Vec<Outcome>>,
    pub conc: Vec<ConcRow>,
    pub mem: Vec<MemRow>,
    pub relay: Vec<RelayRow>,
    pub relay_pending: Option<String>,
    pub relay_hold: Option<MemRow>,
    pub plugin: Vec<Probe>,
}

fn progress(s: impl AsRef<str>) {
    eprintln!("bench: {}", s.as_ref());
}

// ---------------------------------------------------------------- first byte

pub async fn ttfb(ctx: &Ctx, res: &mut Results) -> anyhow::Result<()> {
    let sys = &ctx.systems;
    let kinds = sys.kinds();
    let n = ctx.args.samples;
    let expect = Some(ctx.small.size);
    let timeout = Duration::from_secs(120);
    progress(format!(
        "first byte: preparing {n} cold and 1 warm request per system"
    ));
    let mut cold: BTreeMap<Kind, Vec<String>> = BTreeMap::new();
    let mut warm: BTreeMap<Kind, String> = BTreeMap::new();
    for &k in &kinds {
        for i in 0..n {
            cold.entry(k)
                .or_default()
                .push(sys.prepare(k, &ctx.small_url(&format!("cold={i}"))).await?);
        }
        let w = sys.prepare(k, &ctx.small_url("warm")).await?;
        // Prime: the first request of the warm URL is not counted.
        let _ = sys.fetch(k, &w, None, timeout).await;
        warm.insert(k, w);
    }
    // Interleaved, so that a noisy second hits every system alike.
    progress("first byte: cold");
    #[allow(clippy::needless_range_loop)] // i indexes every system's list, interleaved
    for i in 0..n {
        for &k in &kinds {
            let o = sys.fetch(k, &cold[&k][i], None, timeout).await;
            res.ttfb
                .entry((k, Mode::Cold))
                .or_default()
                .push(&o, expect);
        }
    }
    progress("first byte: warm");
    for _ in 0..n {
        for &k in &kinds {
            let o = sys.fetch(k, &warm[&k], None, timeout).await;
            res.ttfb
                .entry((k, Mode::Warm))
                .or_default()
                .push(&o, expect);
        }
    }
    // Right after a resolve of the same URL (gateway only: the others have no resolve).
    if let Some(g) = &sys.gateway {
        progress("first byte: right after POST /v1/resolve");
        let mut tokens = Vec::new();
        for i in 0..n {
            let url = ctx.small_url(&format!("resolved={i}"));
            tokens.push((url.clone(), sys.prepare(Kind::Gateway, &url).await?));
        }
        for (i, (url, stream)) in tokens.iter().enumerate() {
            let body = serde_json::json!({ "url": url }).to_string();
            match client::post_json(&format!("{}/v1/resolve", g.base), body, timeout).await {
                Ok((404, _, _)) | Ok((405, _, _)) if i == 0 => {
                    res.resolve_na =
                        Some("n/a: `POST /v1/resolve` answered 404 (not implemented yet)".into());
                    break;
                }
                Ok((200, d, _)) => res.resolve_ms.push(ms(d)),
                Ok((st, _, b)) => {
                    if i == 0 {
                        res.resolve_na = Some(format!(
                            "n/a: `POST /v1/resolve` answered {st}: {}",
                            b.chars().take(200).collect::<String>()
                        ));
                        break;
                    }
                }
                Err(e) => {
                    if i == 0 {
                        res.resolve_na = Some(format!("n/a: `POST /v1/resolve` failed: {e:#}"));
                        break;
                    }
                }
            }
            let o = sys.fetch(Kind::Gateway, stream, None, timeout).await;
            res.ttfb
                .entry((Kind::Gateway, Mode::AfterResolve))
                .or_default()
                .push(&o, expect);
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- throughput

pub async fn throughput(ctx: &Ctx, res: &mut Results) -> anyhow::Result<()> {
    let sys = &ctx.systems;
    for r in 0..ctx.args.throughput_runs {
        for k in sys.kinds() {
            progress(format!("throughput: {} run {}", k.name(), r + 1));
            let p = sys.prepare(k, &ctx.big_url(&format!("tp={r}"))).await?;
            let o = sys.fetch(k, &p, None, Duration::from_secs(600)).await;
            if !o.ok(Some(ctx.big.size)) {
                ctx.note(format!(
                    "throughput: {} run {} failed: {}",
                    k.name(),
                    r + 1,
                    o.describe_failure(Some(ctx.big.size))
                ));
            }
            res.throughput.entry(k).or_default().push(o);
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- concurrency

fn rss_of(sys: &Systems, k: Kind) -> Option<TreeRss> {
    match k {
        Kind::Gateway => sys
            .gateway
            .as_ref()
            .map(|g| procs::tree_rss(g.pid(), SIDECAR_COMM)),
        Kind::Peer => sys.peer.as_ref().map(|p| procs::tree_rss(p.pid(), "\0")),
        Kind::Direct => None,
    }
}

/// Samples `k`'s tree every 50 ms until stopped; returns the element-wise maximum.
fn sampler(
    sys: Arc<Systems>,
    k: Kind,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Option<TreeRss>> {
    tokio::task::spawn_blocking(move || {
        let mut peak: Option<TreeRss> = None;
        while !stop.load(Ordering::Relaxed) {
            if let Some(t) = rss_of(&sys, k) {
                peak = Some(peak.map_or(t, |p| p.max(t)));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        peak
    })
}

pub async fn concurrency(ctx: &Ctx, res: &mut Results) -> anyhow::Result<()> {
    let sys = &ctx.systems;
    let variants: Vec<&'static str> = match ctx.args.concurrency_urls.as_str() {
        "same" => vec!["same"],
        "distinct" => vec!["distinct"],
        _ => vec!["distinct", "same"],
    };
    let expect = Some(ctx.small.size);
    let timeout = Duration::from_secs(300);
    for &variant in &variants {
        for &n in &ctx.args.concurrency {
            for k in sys.kinds() {
                progress(format!("concurrency: {} n={n} ({variant} URLs)", k.name()));
                let prepared: Vec<String> = if variant == "same" {
                    let p = sys.prepare(k, &ctx.small_url(&format!("same{n}"))).await?;
                    let _ = sys.fetch(k, &p, None, timeout).await; // prime it
                    vec![p; n]
                } else {
                    let mut v = Vec::with_capacity(n);
                    for i in 0..n {
                        v.push(sys.prepare(k, &ctx.small_url(&format!("c{n}-{i}"))).await?);
                    }
                    v
                };
                tokio::time::sleep(Duration::from_millis(500)).await;
                let idle = rss_of(sys, k);
                let stop = Arc::new(AtomicBool::new(false));
                let samp = sampler(sys.clone(), k, stop.clone());
                let start = Instant::now();
                let tasks: Vec<_> = prepared
                    .into_iter()
                    .map(|p| {
                        let s = sys.clone();
                        tokio::spawn(async move { s.fetch(k, &p, None, timeout).await })
                    })
                    .collect();
                let mut outs = Vec::with_capacity(n);
                for t in tasks {
                    outs.push(t.await.context("stream task")?);
                }
                let wall = start.elapsed();
                stop.store(true, Ordering::Relaxed);
                let peak = samp.await.ok().flatten();
                let mut row = ConcRow {
                    kind: k,
                    variant,
                    n,
                    ok: 0,
                    failures: 0,
                    first_failure: None,
                    bytes: outs.iter().map(|o| o.bytes).sum(),
                    wall,
                    ttfb_ms: Vec::new(),
                    idle,
                    peak,
                };
                for o in &outs {
                    if o.ok(expect) {
                        row.ok += 1;
                        if let Some(t) = o.ttfb {
                            row.ttfb_ms.push(ms(t));
                        }
                    } else {
                        row.failures += 1;
                        row.first_failure
                            .get_or_insert_with(|| o.describe_failure(expect));
                    }
                }
                res.conc.push(row);
                // Let the previous round's processes exit before the next one starts.
                tokio::time::sleep(Duration::from_millis(1000)).await;
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- memory

pub async fn memory(ctx: &Ctx, res: &mut Results) -> anyhow::Result<()> {
    let sys = &ctx.systems;
    let n = ctx.args.memory_streams;
    for k in sys.kinds() {
        progress(format!("memory: {} with {n} stalled streams", k.name()));
        let mut prepared = Vec::with_capacity(n);
        for i in 0..n {
            prepared.push(sys.prepare(k, &ctx.big_url(&format!("mem={i}"))).await?);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        match k {
            Kind::Gateway | Kind::Peer => {
                let idle = rss_of(sys, k).unwrap_or_default();
                // Open every stream at once, read its first MiB, then stop reading.
                let (bodies, first_err) = open_stalled(prepared, Duration::from_secs(20)).await;
                // Let every buffer on the way fill up, then take the highest of a few samples.
                tokio::time::sleep(Duration::from_secs(3)).await;
                let mut loaded = TreeRss::default();
                for _ in 0..5 {
                    if let Some(t) = rss_of(sys, k) {
                        loaded = loaded.max(t);
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                if let Some(e) = first_err {
                    ctx.note(format!(
                        "memory: {}: {} of {n} streams failed to open: {e}",
                        k.name(),
                        n - bodies.len()
                    ));
                }
                let opened = bodies.len();
                drop(bodies);
                res.mem.push(MemRow {
                    kind: k,
                    streams: opened,
                    idle,
                    loaded,
                });
                tokio::time::sleep(Duration::from_secs(3)).await;
            }
            Kind::Direct => {
                let d = sys.direct.as_ref().expect("direct present");
                let mut children = Vec::new();
                for p in &prepared {
                    let mut c = d.command(p);
                    c.stdout(std::process::Stdio::piped())
                        .stderr(std::process::Stdio::null())
                        .stdin(std::process::Stdio::null())
                        .kill_on_drop(true);
                    children.push(c.spawn()?);
                }
                let mut pids = Vec::new();
                for c in &mut children {
                    use tokio::io::AsyncReadExt;
                    let mut out = c.stdout.take().expect("piped");
                    let mut buf = vec![0u8; 64 * 1024];
                    let mut got = 0u64;
                    while got < MIB {
                        let r =
                            tokio::time::timeout(Duration::from_secs(60), out.read(&mut buf)).await;
                        match r {
                            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
                            Ok(Ok(k)) => got += k as u64,
                        }
                    }
                    c.stdout = Some(out);
                    if let Some(pid) = c.id() {
                        pids.push(pid);
                    }
                }
                tokio::time::sleep(Duration::from_secs(3)).await;
                let total = procs::sum_trees(&pids);
                let streams = pids.len();
                for c in &mut children {
                    let _ = c.start_kill();
                }
                for c in &mut children {
                    let _ = c.wait().await;
                }
                res.mem.push(MemRow {
                    kind: k,
                    streams,
                    idle: TreeRss::default(),
                    loaded: TreeRss {
                        jobs_kib: total,
                        ..Default::default()
                    },
                });
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- relay alone

pub async fn relay(ctx: &Ctx, res: &mut Results) -> anyhow::Result<()> {
    let args = &ctx.args;
    if !args.fake_sidecar.exists() {
        res.relay_pending = Some(format!("{} not built", args.fake_sidecar.display()));
        return Ok(());
    }
    if !args.gateway.exists() {
        res.relay_pending = Some(format!("{} not built", args.gateway.display()));
        return Ok(());
    }
    let template_path = args
        .relay_config
        .clone()
        .unwrap_or_else(|| ctx.repo.join("bench/relay-config.toml"));
    let Ok(template) = std::fs::read_to_string(&template_path) else {
        res.relay_pending = Some(format!(
            "no relay config template at {}",
            template_path.display()
        ));
        return Ok(());
    };
    let sock = ctx.work.join("relay.sock");
    let _ = std::fs::remove_file(&sock);
    let mut fake = tokio::process::Command::new(&args.fake_sidecar)
        .arg("--socket")
        .arg(&sock)
        .arg("--mib")
        .arg(args.relay_mib.to_string())
        .arg("--frame-kib")
        .arg(args.relay_frame_kib.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(
            ctx.work.join("logs/fake-sidecar.log"),
        )?)
        .stderr(std::fs::File::create(
            ctx.work.join("logs/fake-sidecar.err.log"),
        )?)
        .kill_on_drop(true)
        .spawn()?;
    for _ in 0..50 {
        if sock.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let keys = tokio::process::Command::new(&args.gateway)
        .arg("keygen")
        .output()
        .await?;
    let keys = String::from_utf8_lossy(&keys.stdout).trim().to_string();
    let seal_key = keys.split(':').next().unwrap_or_default().to_string();
    let cfg_path = ctx.work.join("relay-config.toml");
    std::fs::write(
        &cfg_path,
        template
            .replace("{socket}", &sock.display().to_string())
            .replace("{keys}", &keys)
            .replace("{seal_key}", &seal_key),
    )?;
    let state = ctx.work.join("relay-state");
    let _ = std::fs::remove_dir_all(&state);
    let log = ctx.work.join("logs/gateway-relay.log");
    let g = match Gateway::start(&args.gateway, &state, Some(&cfg_path), &[], &log).await {
        Ok(g) => g,
        Err(e) => {
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(3).collect();
            res.relay_pending = Some(format!(
                "the gateway did not start with the relay config ({e:#}); log: {}",
                tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
            ));
            let _ = fake.kill().await;
            return Ok(());
        }
    };
    let rows = [
        (1usize, args.relay_mib),
        (
            args.relay_streams,
            (args.relay_mib / args.relay_streams as u64).max(1),
        ),
    ];
    let g = Arc::new(g);
    for (streams, mib) in rows {
        progress(format!(
            "relay: {streams} stream(s) of {mib} MiB from the fake sidecar"
        ));
        let mut urls = Vec::new();
        for i in 0..streams {
            // A private address: never contacted (the fake sidecar ignores the URL but its size).
            let media = format!("http://127.0.0.1:9/relay-{i}.ts?mib={mib}");
            urls.push(g.stream_url(&g.mint(&media).await?));
        }
        // One warm-up transfer of the same shape, not counted.
        let _ = client::get(&urls[0], Some(64 * MIB), Duration::from_secs(60)).await;
        let stop = Arc::new(AtomicBool::new(false));
        let pid = g.pid();
        let stop2 = stop.clone();
        let samp = tokio::task::spawn_blocking(move || {
            let mut peak: Option<TreeRss> = None;
            while !stop2.load(Ordering::Relaxed) {
                let t = procs::tree_rss(pid, SIDECAR_COMM);
                peak = Some(peak.map_or(t, |p| p.max(t)));
                std::thread::sleep(Duration::from_millis(50));
            }
            peak
        });
        let start = Instant::now();
        let tasks: Vec<_> = urls
            .into_iter()
            .map(|u| {
                tokio::spawn(async move { client::get(&u, None, Duration::from_secs(300)).await })
            })
            .collect();
        let mut row = RelayRow {
            streams,
            mib_each: mib,
            ok: 0,
            bytes: 0,
            wall: Duration::ZERO,
            ttfb_ms: Vec::new(),
            first_failure: None,
            gateway_peak: None,
        };
        let expect = Some(mib * MIB);
        for t in tasks {
            let o = t.await?;
            row.bytes += o.bytes;
            if o.ok(expect) {
                row.ok += 1;
                if let Some(t) = o.ttfb {
                    row.ttfb_ms.push(ms(t));
                }
            } else {
                row.first_failure
                    .get_or_insert_with(|| o.describe_failure(expect));
            }
        }
        row.wall = start.elapsed();
        stop.store(true, Ordering::Relaxed);
        row.gateway_peak = samp.await.ok().flatten();
        res.relay.push(row);
    }
    // Memory: many relay streams held open, each stalled after its first MiB.
    let n = args.relay_hold;
    if n > 0 {
        progress(format!(
            "relay: {n} streams held open for the gateway's memory per stream"
        ));
        let mut urls = Vec::new();
        for i in 0..n {
            let media = format!("http://127.0.0.1:9/hold-{i}.ts?mib={}", args.relay_mib);
            urls.push(g.stream_url(&g.mint(&media).await?));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let idle = procs::tree_rss(g.pid(), SIDECAR_COMM);
        let (bodies, err) = open_stalled(urls, Duration::from_secs(20)).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let mut loaded = TreeRss::default();
        for _ in 0..5 {
            loaded = loaded.max(procs::tree_rss(g.pid(), SIDECAR_COMM));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if let Some(e) = err {
            ctx.note(format!(
                "relay hold: {} of {n} streams failed to open: {e}",
                n - bodies.len()
            ));
        }
        res.relay_hold = Some(MemRow {
            kind: Kind::Gateway,
            streams: bodies.len(),
            idle,
            loaded,
        });
        drop(bodies);
    }
    if let Ok(g) = Arc::try_unwrap(g) {
        g.shutdown().await;
    }
    let _ = fake.kill().await;
    Ok(())
}

/// Opens every URL at once, reads each body's first MiB, and returns the bodies unread
/// beyond that (plus the first error). A stream not open within `within` is dropped.
pub async fn open_stalled(
    urls: Vec<String>,
    within: Duration,
) -> (Vec<hyper::body::Incoming>, Option<String>) {
    let tasks: Vec<_> = urls
        .into_iter()
        .map(|p| {
            tokio::spawn(async move {
                let fut = async {
                    let (resp, start) = client::open(&p).await?;
                    anyhow::ensure!(resp.status() == 200, "status {}", resp.status());
                    let mut body = resp.into_body();
                    client::read_some(&mut body, MIB, start).await?;
                    Ok(body)
                };
                tokio::time::timeout(within, fut).await.unwrap_or_else(|_| {
                    Err(anyhow::anyhow!("not open within {within:?} (queued?)"))
                })
            })
        })
        .collect();
    let mut bodies = Vec::new();
    let mut first_err = None;
    for t in tasks {
        match t.await {
            Ok(Ok(b)) => bodies.push(b),
            Ok(Err(e)) => {
                first_err.get_or_insert(format!("{e:#}"));
            }
            Err(e) => {
                first_err.get_or_insert(format!("{e}"));
            }
        }
    }
    (bodies, first_err)
}

// ---------------------------------------------------------------- plugin overhead

async fn probe_set(
    base: &str,
    kind: Kind,
    probes: Vec<(String, String, String)>,
    samples: usize,
) -> anyhow::Result<Vec<Probe>> {
    let mut ka = KeepAlive::new(base)?;
    let mut out: Vec<Probe> = probes
        .iter()
        .map(|(name, what, _)| Probe {
            kind,
            name: name.clone(),
            what: what.clone(),
            statuses: BTreeMap::new(),
            ms: Vec::new(),
            errors: 0,
        })
        .collect();
    // 10 unmeasured rounds, then `samples` interleaved rounds.
    for round in 0..samples + 10 {
        for (i, (_, _, path)) in probes.iter().enumerate() {
            let mut r = ka.get(path).await;
            if r.is_err() {
                r = ka.get(path).await; // the server closed a kept-alive connection: retry once
            }
            if round < 10 {
                continue;
            }
            match r {
                Ok((st, d)) => {
                    *out[i].statuses.entry(st).or_default() += 1;
                    out[i].ms.push(ms(d));
                }
                Err(_) => out[i].errors += 1,
            }
        }
    }
    Ok(out)
}

/// Flips one character in the middle of a token (still valid base64, no longer authentic).
fn tamper(tok: &str) -> String {
    let mut b = tok.as_bytes().to_vec();
    let i = b.len() / 2;
    b[i] = if b[i] == b'A' { b'B' } else { b'A' };
    String::from_utf8(b).unwrap_or_default()
}

pub async fn plugin(ctx: &Ctx, res: &mut Results) -> anyhow::Result<()> {
    let sys = &ctx.systems;
    let samples = ctx.args.plugin_samples;
    if let Some(g) = &sys.gateway {
        progress("plugin overhead: gateway probes");
        let mut health = None;
        for p in ["/healthz", "/readyz"] {
            if client::get(&format!("{}{p}", g.base), None, Duration::from_secs(5))
                .await
                .status
                == 200
            {
                health = Some(p);
                break;
            }
        }
        let health = health.unwrap_or("/readyz");
        let valid = g.mint(&ctx.small_url("plugin")).await?;
        let sp = &g.stream_path;
        let mut probes = vec![
            (
                format!("`GET {health}`"),
                "routing + response, no plugin call (baseline)".to_string(),
                health.to_string(),
            ),
            (
                "garbage token".into(),
                "token plugin `open` on a string that is not a token → 4xx".into(),
                format!("{sp}?data=AAAA"),
            ),
            (
                "tampered token".into(),
                "token plugin `open`: decode + AEAD check fails → 4xx".into(),
                format!("{sp}?data={}", crate::systems::qenc(&tamper(&valid))),
            ),
        ];
        // A valid token whose request the policy refuses (non-http scheme): open + policy.
        for denied in ["file:///etc/passwd", "ftp://127.0.0.1/x.mp4"] {
            if let Ok(t) = g.mint(denied).await {
                let path = format!("{sp}?data={}", crate::systems::qenc(&t));
                let st = client::get(&format!("{}{path}", g.base), None, Duration::from_secs(10))
                    .await
                    .status;
                if (400..500).contains(&st) {
                    probes.push((
                        "denied by policy".into(),
                        format!("token `open` succeeds, policy plugin refuses `{denied}` → {st}"),
                        path,
                    ));
                    break;
                }
            }
        }
        res.plugin
            .extend(probe_set(&g.base, Kind::Gateway, probes, samples).await?);
    }
    if let Some(p) = &sys.peer {
        progress("plugin overhead: peer probes");
        let probes = vec![
            (
                "`GET /healthz`".into(),
                "no such route: FastAPI's 404 (baseline)".into(),
                "/healthz".into(),
            ),
            (
                "garbage token".into(),
                "Fernet decrypt raises → unhandled → 500".into(),
                "/stream?data=AAAA".into(),
            ),
        ];
        res.plugin
            .extend(probe_set(&p.base, Kind::Peer, probes, samples).await?);
    }
    Ok(())
}

// ---------------------------------------------------------------- report

pub struct RunFacts {
    pub date: String,
    pub time: String,
    pub load_before: String,
    pub load_after: String,
    pub wall: Duration,
    pub sections_wall: Duration,
    pub gateway_log: Option<PathBuf>,
}

fn cmd_out(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|r| r.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "?".into())
}

fn mem_total() -> String {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:").map(|r| r.trim().to_string()))
        .unwrap_or_else(|| "?".into())
}

/// One row of a targets table.
pub(crate) struct Verdict {
    pub(crate) target: String,
    pub(crate) measured: String,
    pub(crate) verdict: String,
}

pub(crate) fn met(ok: bool, miss: impl FnOnce() -> String) -> String {
    if ok {
        "**met**".into()
    } else {
        format!("**missed**: {}", miss())
    }
}

pub(crate) fn median_mbps(v: &[Outcome], expect: u64) -> Option<f64> {
    let x: Vec<f64> = v
        .iter()
        .filter(|o| o.ok(Some(expect)))
        .map(|o| mbps(o.bytes, o.elapsed))
        .collect();
    pct(&x, 50.0)
}

pub(crate) fn median_transfer_mbps(v: &[Outcome], expect: u64) -> Option<f64> {
    let x: Vec<f64> = v
        .iter()
        .filter(|o| o.ok(Some(expect)))
        .filter_map(|o| Some(mbps(o.bytes, o.elapsed.checked_sub(o.ttfb?)?)))
        .collect();
    pct(&x, 50.0)
}

pub fn render(ctx: &Ctx, res: &Results, f: &RunFacts) -> String {
    let a = &ctx.args;
    let mut md = String::new();
    let w = &mut md;
    let git = cmd_out("git", &["rev-parse", "--short", "HEAD"]);
    let dirty = cmd_out("git", &["status", "--porcelain"]).lines().count();
    let ytv = cmd_out(&a.yt_dlp.display().to_string(), &["--version"]);
    let argv: Vec<String> = std::env::args().collect();
    let nproc = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let _ = writeln!(w, "# streamgate benchmark, {} {} UTC\n", f.date, f.time);
    let _ = writeln!(
        w,
        "Produced by `scripts/bench` (bench/README.md describes every measurement). All three systems \
         ran on this machine in this one run, interleaved, so the **ratios** are the result; the \
         absolute figures move with the machine's load.\n"
    );
    let _ = writeln!(w, "## Machine and parameters\n");
    let _ = writeln!(w, "| | |\n|---|---|");
    let _ = writeln!(w, "| command | `{}` |", argv.join(" "));
    let _ = writeln!(w, "| tree | `{git}` + {dirty} uncommitted paths |");
    let _ = writeln!(w, "| CPU | {} × {} |", nproc, cpu_model());
    let _ = writeln!(w, "| memory | {} |", mem_total());
    let _ = writeln!(
        w,
        "| kernel | {} |",
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
    );
    let _ = writeln!(
        w,
        "| load average (1/5/15 min) before → after | {} → {} |",
        f.load_before
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
        f.load_after
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let _ = writeln!(
        w,
        "| yt-dlp | {ytv} (`{}`), used by the sidecar, the peer's venv pins the same version |",
        a.yt_dlp.display()
    );
    let _ = writeln!(
        w,
        "| small fixture | {:.2} MB, {} s H.264+AAC 720p 4 Mb/s faststart MP4 ({}) |",
        ctx.small.size as f64 / 1e6,
        ctx.small.secs,
        ctx.small.generator
    );
    let _ = writeln!(
        w,
        "| big fixture | {:.1} MB, {} s, same recipe |",
        ctx.big.size as f64 / 1e6,
        ctx.big.secs
    );
    let _ = writeln!(
        w,
        "| fixture server | warp `fs::dir` on 127.0.0.1 inside the bench process (own runtime, 2 threads, Range support) |"
    );
    let _ = writeln!(
        w,
        "| first-byte samples | {} per system per mode, sequential, interleaved across systems |",
        a.samples
    );
    let _ = writeln!(
        w,
        "| throughput runs | {} per system (median reported) |",
        a.throughput_runs
    );
    let _ = writeln!(
        w,
        "| concurrency | n = {:?}, URLs: {} |",
        a.concurrency, a.concurrency_urls
    );
    let _ = writeln!(
        w,
        "| memory | {} streams held open, each stalled after its first MiB |",
        a.memory_streams
    );
    let _ = writeln!(
        w,
        "| relay | 1 × {} MiB and {} × {} MiB from the fake sidecar, {} KiB data frames; {} streams held for memory |",
        a.relay_mib,
        a.relay_streams,
        a.relay_mib / a.relay_streams.max(1) as u64,
        a.relay_frame_kib,
        a.relay_hold
    );
    let _ = writeln!(
        w,
        "| plugin probes | {} per probe, kept-alive connection, interleaved |",
        a.plugin_samples
    );
    let _ = writeln!(
        w,
        "| units | MB = 10⁶ bytes; KiB/MiB = 2¹⁰/2²⁰ bytes; p50/p95 nearest-rank |"
    );
    let _ = writeln!(
        w,
        "| wall time | {:.0} s in total, {:.0} s measuring |",
        f.wall.as_secs_f64(),
        f.sections_wall.as_secs_f64()
    );
    let _ = writeln!(w);

    let g = Kind::Gateway;
    let p = Kind::Peer;
    let d = Kind::Direct;
    let tt = |k: Kind, m: Mode, q: f64| res.ttfb.get(&(k, m)).and_then(|s| s.p(q));

    // ------------------------------------------------ targets
    let mut v: Vec<Verdict> = Vec::new();
    if a.has("ttfb") {
        let (gw, pw) = (tt(g, Mode::Warm, 50.0), tt(p, Mode::Warm, 50.0));
        v.push(match (gw, pw) {
            (Some(gw), Some(pw)) => Verdict {
                target: "first byte p50 (warm) ≤ 0.5 × peer's warm p50".into(),
                measured: format!(
                    "{} vs peer {} → {:.2}×",
                    fmt_ms(Some(gw)),
                    fmt_ms(Some(pw)),
                    gw / pw
                ),
                verdict: met(gw <= 0.5 * pw, || {
                    format!(
                        "{:.2}× instead of ≤ 0.50× ({} over the {} limit)",
                        gw / pw,
                        fmt_ms(Some(gw - 0.5 * pw)),
                        fmt_ms(Some(0.5 * pw))
                    )
                }),
            },
            _ => Verdict {
                target: "first byte p50 (warm) ≤ 0.5 × peer".into(),
                measured: "–".into(),
                verdict: "not measured".into(),
            },
        });
        if let (Some(gc), Some(pw)) = (tt(g, Mode::Cold, 50.0), pw) {
            v.push(Verdict {
                target: "(same, cold URL; informative)".into(),
                measured: format!(
                    "{} vs peer warm {} → {:.2}×",
                    fmt_ms(Some(gc)),
                    fmt_ms(Some(pw)),
                    gc / pw
                ),
                verdict: met(gc <= 0.5 * pw, || {
                    format!("{:.2}× instead of ≤ 0.50×", gc / pw)
                }),
            });
        }
        let gr = tt(g, Mode::AfterResolve, 50.0);
        v.push(match (gr, pw, &res.resolve_na) {
            (_, _, Some(na)) => Verdict {
                target: "first byte p50 right after a resolve ≤ 0.25 × peer's warm p50".into(),
                measured: na.clone(),
                verdict: "not measurable yet".into(),
            },
            (Some(gr), Some(pw), None) => Verdict {
                target: "first byte p50 right after a resolve ≤ 0.25 × peer's warm p50".into(),
                measured: format!(
                    "{} vs peer {} → {:.2}×",
                    fmt_ms(Some(gr)),
                    fmt_ms(Some(pw)),
                    gr / pw
                ),
                verdict: met(gr <= 0.25 * pw, || {
                    format!(
                        "{:.2}× instead of ≤ 0.25× ({} over the {} limit)",
                        gr / pw,
                        fmt_ms(Some(gr - 0.25 * pw)),
                        fmt_ms(Some(0.25 * pw))
                    )
                }),
            },
            _ => Verdict {
                target: "first byte p50 right after a resolve ≤ 0.25 × peer".into(),
                measured: "–".into(),
                verdict: "not measured".into(),
            },
        });
    }
    if a.has("throughput") {
        let gt = res
            .throughput
            .get(&g)
            .and_then(|x| median_mbps(x, ctx.big.size));
        let dt = res
            .throughput
            .get(&d)
            .and_then(|x| median_mbps(x, ctx.big.size));
        let pt = res
            .throughput
            .get(&p)
            .and_then(|x| median_mbps(x, ctx.big.size));
        v.push(match (gt, dt) {
            (Some(gt), Some(dt)) => Verdict {
                target: "single stream ≥ 0.9 × direct yt-dlp".into(),
                measured: format!(
                    "{} vs direct {} → {:.2}×",
                    fmt_mbps(Some(gt)),
                    fmt_mbps(Some(dt)),
                    gt / dt
                ),
                verdict: met(gt >= 0.9 * dt, || {
                    format!(
                        "{:.2}× instead of ≥ 0.90× ({} short)",
                        gt / dt,
                        fmt_mbps(Some(0.9 * dt - gt))
                    )
                }),
            },
            _ => Verdict {
                target: "single stream ≥ 0.9 × direct".into(),
                measured: "–".into(),
                verdict: "not measured".into(),
            },
        });
        if let (Some(gt), Some(pt)) = (gt, pt) {
            v.push(Verdict {
                target: "(single stream vs peer, expected ≈ 4.5×; informative)".into(),
                measured: format!(
                    "{} vs peer {} → {:.2}×",
                    fmt_mbps(Some(gt)),
                    fmt_mbps(Some(pt)),
                    gt / pt
                ),
                verdict: if gt / pt >= 4.5 {
                    "at or above".into()
                } else {
                    format!("below ({:.2}×)", gt / pt)
                },
            });
        }
    }
    if a.has("concurrency") {
        let row = |k: Kind, var: &str, n: usize| {
            res.conc
                .iter()
                .find(|r| r.kind == k && r.variant == var && r.n == n)
        };
        for var in ["distinct", "same"] {
            if let (Some(gr), Some(pr)) = (row(g, var, 32), row(p, var, 32)) {
                let (g50, p50) = (pct(&gr.ttfb_ms, 50.0), pct(&pr.ttfb_ms, 50.0));
                v.push(Verdict {
                    target: format!("n=32 ({var} URLs): first byte p50 ≤ 0.1 × peer's"),
                    measured: format!(
                        "{} vs peer {} → {}",
                        fmt_ms(g50),
                        fmt_ms(p50),
                        ratio(g50, p50)
                    ),
                    verdict: match (g50, p50) {
                        (Some(a), Some(b)) => met(a <= 0.1 * b, || {
                            format!(
                                "{:.2}× instead of ≤ 0.10× (peer/gateway = {:.1}, needs 10)",
                                a / b,
                                b / a
                            )
                        }),
                        _ => "not measured".into(),
                    },
                });
                let (ga, pa) = (gr.aggregate(), pr.aggregate());
                v.push(Verdict {
                    target: format!("n=32 ({var} URLs): aggregate ≥ 3 × peer's"),
                    measured: format!(
                        "{} vs peer {} → {:.2}×",
                        fmt_mbps(Some(ga)),
                        fmt_mbps(Some(pa)),
                        ga / pa
                    ),
                    verdict: met(ga >= 3.0 * pa, || {
                        format!("{:.2}× instead of ≥ 3×", ga / pa)
                    }),
                });
            }
            if let Some(gr) = row(g, var, 32) {
                v.push(Verdict {
                    target: format!("n=32 ({var} URLs): 0 failures"),
                    measured: format!("{} of 32 failed", gr.failures),
                    verdict: met(gr.failures == 0, || {
                        format!(
                            "{} failures ({})",
                            gr.failures,
                            gr.first_failure.clone().unwrap_or_default()
                        )
                    }),
                });
            }
            if let Some(gr) = row(g, var, 64) {
                v.push(Verdict {
                    target: format!("n=64 ({var} URLs): 0 failures"),
                    measured: format!("{} of 64 failed", gr.failures),
                    verdict: met(gr.failures == 0, || {
                        format!(
                            "{} failures ({})",
                            gr.failures,
                            gr.first_failure.clone().unwrap_or_default()
                        )
                    }),
                });
            }
        }
    }
    if a.has("relay") {
        v.push(match (res.relay.first(), &res.relay_pending) {
            (Some(r), _) if r.ok == r.streams => {
                let t = mbps(r.bytes, r.wall);
                Verdict {
                    target: "relay alone (fake sidecar → gateway → client) ≥ 1 GB/s".into(),
                    measured: fmt_mbps(Some(t)),
                    verdict: met(t >= 1000.0, || {
                        format!(
                            "{:.2}× of the target ({} short)",
                            t / 1000.0,
                            fmt_mbps(Some(1000.0 - t))
                        )
                    }),
                }
            }
            (Some(r), _) => Verdict {
                target: "relay alone ≥ 1 GB/s".into(),
                measured: format!("failed: {}", r.first_failure.clone().unwrap_or_default()),
                verdict: "**missed**: the transfer failed".into(),
            },
            (None, Some(why)) => Verdict {
                target: "relay alone ≥ 1 GB/s".into(),
                measured: "pending".into(),
                verdict: format!("pending: {why}"),
            },
            _ => Verdict {
                target: "relay alone ≥ 1 GB/s".into(),
                measured: "–".into(),
                verdict: "not measured".into(),
            },
        });
    }
    let mem_rows: Vec<(&str, &MemRow)> = res
        .relay_hold
        .iter()
        .map(|m| ("relay from the fake sidecar", m))
        .chain(
            res.mem
                .iter()
                .filter(|m| m.kind == g)
                .map(|m| ("real sidecar + yt-dlp", m)),
        )
        .collect();
    for (how, m) in mem_rows {
        let per = m.per(|t| t.root_kib);
        v.push(Verdict {
            target: format!("gateway process RSS ≤ 256 KiB per active stream ({how})"),
            measured: format!(
                "{} per stream ({} streams held open)",
                fmt_kib(Some(per)),
                m.streams
            ),
            verdict: met(per <= 256.0, || {
                format!(
                    "{:.1}× the budget ({} over)",
                    per / 256.0,
                    fmt_kib(Some(per - 256.0))
                )
            }),
        });
    }
    let _ = writeln!(w, "## Targets (reported, not asserted)\n");
    let _ = writeln!(w, "| target | measured | verdict |\n|---|---|---|");
    for x in &v {
        let _ = writeln!(w, "| {} | {} | {} |", x.target, x.measured, x.verdict);
    }
    let _ = writeln!(w);

    // ------------------------------------------------ first byte
    if a.has("ttfb") {
        let _ = writeln!(
            w,
            "## Time to first media byte ({:.1} MB fixture)\n",
            ctx.small.size as f64 / 1e6
        );
        let _ = writeln!(
            w,
            "From the start of the request (TCP connect included; for direct, the spawn of `yt-dlp -o -`) to the first non-empty *body* chunk. Every transfer is read to its end and checked for the exact byte count. *cold*: a URL this run never asked for (`?cold=i`); *warm*: one URL asked again and again (after one unmeasured request); *after resolve*: `POST /v1/resolve` of a new URL, then at once the stream of it (stream timed alone).\n"
        );
        let _ = writeln!(
            w,
            "| system | cold p50 | cold p95 | warm p50 | warm p95 | after resolve p50 | after resolve p95 | failures |\n|---|---|---|---|---|---|---|---|"
        );
        for k in [g, p, d] {
            if !res.ttfb.contains_key(&(k, Mode::Cold)) {
                continue;
            }
            let fails: usize = [Mode::Cold, Mode::Warm, Mode::AfterResolve]
                .iter()
                .filter_map(|m| res.ttfb.get(&(k, *m)))
                .map(|s| s.failures)
                .sum();
            let (r50, r95) = if k == g && res.resolve_na.is_none() {
                (
                    fmt_ms(tt(k, Mode::AfterResolve, 50.0)),
                    fmt_ms(tt(k, Mode::AfterResolve, 95.0)),
                )
            } else {
                ("n/a".into(), "n/a".into())
            };
            let _ = writeln!(
                w,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                k.name(),
                fmt_ms(tt(k, Mode::Cold, 50.0)),
                fmt_ms(tt(k, Mode::Cold, 95.0)),
                fmt_ms(tt(k, Mode::Warm, 50.0)),
                fmt_ms(tt(k, Mode::Warm, 95.0)),
                r50,
                r95,
                fails
            );
        }
        for (label, other) in [("gateway / peer", p), ("gateway / direct", d)] {
            if res.ttfb.contains_key(&(g, Mode::Cold))
                && res.ttfb.contains_key(&(other, Mode::Cold))
            {
                let _ = writeln!(
                    w,
                    "| *{label}* | {} | {} | {} | {} | {} | {} | |",
                    ratio(tt(g, Mode::Cold, 50.0), tt(other, Mode::Cold, 50.0)),
                    ratio(tt(g, Mode::Cold, 95.0), tt(other, Mode::Cold, 95.0)),
                    ratio(tt(g, Mode::Warm, 50.0), tt(other, Mode::Warm, 50.0)),
                    ratio(tt(g, Mode::Warm, 95.0), tt(other, Mode::Warm, 95.0)),
                    ratio(tt(g, Mode::AfterResolve, 50.0), tt(other, Mode::Warm, 50.0)),
                    ratio(tt(g, Mode::AfterResolve, 95.0), tt(other, Mode::Warm, 95.0))
                );
            }
        }
        let _ = writeln!(w);
        if let Some(na) = &res.resolve_na {
            let _ = writeln!(w, "After resolve: {na}.\n");
        } else if !res.resolve_ms.is_empty() {
            let _ = writeln!(
                w,
                "The resolve calls themselves took p50 {} / p95 {}. The after-resolve ratios divide by the other system's *warm* figure (it has no resolve).\n",
                fmt_ms(pct(&res.resolve_ms, 50.0)),
                fmt_ms(pct(&res.resolve_ms, 95.0))
            );
        }
        for k in [g, p, d] {
            for m in [Mode::Cold, Mode::Warm, Mode::AfterResolve] {
                if let Some(s) = res.ttfb.get(&(k, m))
                    && let Some(e) = &s.first_failure
                {
                    let _ = writeln!(
                        w,
                        "- {} {:?}: {} failures, first: {}",
                        k.name(),
                        m,
                        s.failures,
                        e
                    );
                }
            }
        }
        let _ = writeln!(w);
    }

    // ------------------------------------------------ throughput
    if a.has("throughput") {
        let _ = writeln!(
            w,
            "## Single-stream throughput ({:.1} MB fixture)\n",
            ctx.big.size as f64 / 1e6
        );
        let _ = writeln!(
            w,
            "One stream at a time, read as fast as it comes. *end to end* = bytes / (request → last byte); *transfer* = bytes / (first byte → last byte). Median of {} runs.\n",
            a.throughput_runs
        );
        let _ = writeln!(
            w,
            "| system | end to end | transfer only | first byte | runs ok |\n|---|---|---|---|---|"
        );
        let mut e2e = BTreeMap::new();
        let mut tro = BTreeMap::new();
        for k in [g, p, d] {
            if let Some(runs) = res.throughput.get(&k) {
                let e = median_mbps(runs, ctx.big.size);
                let t = median_transfer_mbps(runs, ctx.big.size);
                let fb: Vec<f64> = runs.iter().filter_map(|o| o.ttfb.map(ms)).collect();
                e2e.insert(k, e);
                tro.insert(k, t);
                let okc = runs.iter().filter(|o| o.ok(Some(ctx.big.size))).count();
                let _ = writeln!(
                    w,
                    "| {} | {} | {} | {} | {okc}/{} |",
                    k.name(),
                    fmt_mbps(e),
                    fmt_mbps(t),
                    fmt_ms(pct(&fb, 50.0)),
                    runs.len()
                );
            }
        }
        for (label, other) in [("gateway / peer", p), ("gateway / direct", d)] {
            if e2e.contains_key(&g) && e2e.contains_key(&other) {
                let _ = writeln!(
                    w,
                    "| *{label}* | {} | {} | | |",
                    ratio(e2e[&g], e2e[&other]),
                    ratio(tro[&g], tro[&other])
                );
            }
        }
        let _ = writeln!(w);
    }

    // ------------------------------------------------ concurrency
    if a.has("concurrency") && !res.conc.is_empty() {
        let _ = writeln!(
            w,
            "## Concurrent streams ({:.1} MB fixture each)\n",
            ctx.small.size as f64 / 1e6
        );
        let _ = writeln!(
            w,
            "n streams started together (tokens minted beforehand); *aggregate* = all bytes received / (start → last stream done); a failure is any stream without status 200 and the exact byte count. *distinct*: one new URL per stream; *same*: every stream asks for one URL fetched once just before. RSS: the server's process tree sampled every 50 ms (gateway: gateway + sidecar + yt-dlp/ffmpeg; peer: its one process), peak minus the idle value just before.\n"
        );
        let _ = writeln!(
            w,
            "| URLs | n | system | aggregate | first byte p50 | first byte p95 | failures | peak RSS Δ (tree) | peak RSS Δ / stream: gateway, sidecar |\n|---|---|---|---|---|---|---|---|---|"
        );
        for r in &res.conc {
            let (tree, per) = match (r.idle, r.peak) {
                (Some(i), Some(pk)) => {
                    let t = fmt_kib(Some(pk.total_kib() as f64 - i.total_kib() as f64));
                    let per = if r.kind == g {
                        format!(
                            "{}, {}",
                            fmt_kib(Some((pk.root_kib as f64 - i.root_kib as f64) / r.n as f64)),
                            fmt_kib(Some(
                                (pk.sidecar_kib as f64 - i.sidecar_kib as f64) / r.n as f64
                            ))
                        )
                    } else {
                        "".into()
                    };
                    (t, per)
                }
                _ => ("–".into(), "".into()),
            };
            let _ = writeln!(
                w,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                r.variant,
                r.n,
                r.kind.name(),
                fmt_mbps(Some(r.aggregate())),
                fmt_ms(pct(&r.ttfb_ms, 50.0)),
                fmt_ms(pct(&r.ttfb_ms, 95.0)),
                r.failures,
                tree,
                per
            );
        }
        let _ = writeln!(w, "\nRatios (gateway / peer, gateway / direct):\n");
        let _ = writeln!(
            w,
            "| URLs | n | aggregate g/p | aggregate g/d | first byte p50 g/p | first byte p50 g/d |\n|---|---|---|---|---|---|"
        );
        let row = |k: Kind, var: &str, n: usize| {
            res.conc
                .iter()
                .find(|r| r.kind == k && r.variant == var && r.n == n)
        };
        for var in ["distinct", "same"] {
            for &n in &a.concurrency {
                if let Some(gr) = row(g, var, n) {
                    let pr = row(p, var, n);
                    let dr = row(d, var, n);
                    let _ = writeln!(
                        w,
                        "| {var} | {n} | {} | {} | {} | {} |",
                        ratio(Some(gr.aggregate()), pr.map(|r| r.aggregate())),
                        ratio(Some(gr.aggregate()), dr.map(|r| r.aggregate())),
                        ratio(
                            pct(&gr.ttfb_ms, 50.0),
                            pr.and_then(|r| pct(&r.ttfb_ms, 50.0))
                        ),
                        ratio(
                            pct(&gr.ttfb_ms, 50.0),
                            dr.and_then(|r| pct(&r.ttfb_ms, 50.0))
                        )
                    );
                }
            }
        }
        let _ = writeln!(w);
        for r in &res.conc {
            if let Some(e) = &r.first_failure {
                let _ = writeln!(
                    w,
                    "- {} n={} ({}): {} failures, first: {}",
                    r.kind.name(),
                    r.n,
                    r.variant,
                    r.failures,
                    e
                );
            }
        }
        let _ = writeln!(w);
    }

    // ------------------------------------------------ memory
    if !res.mem.is_empty() || res.relay_hold.is_some() {
        let _ = writeln!(w, "## Memory per active stream\n");
        let _ = writeln!(
            w,
            "{} streams of the big fixture opened together; each client reads its first MiB and then stops reading, so every buffer on the way (sockets, relay queues, pipes) fills and stays full; after 3 s the process trees' RSS is read from `/proc/<pid>/stat` (highest of 5 samples, 100 ms apart). Per stream = (loaded − idle) / streams. Direct: the sum of the {} `yt-dlp` processes' RSS / streams (what the ceiling itself costs). A stream not open within 20 s (queued behind the sidecar's job limit) is dropped and not counted. The *relay from the fake sidecar* row does the same with {} streams against the relay-alone gateway (no job limit, no yt-dlp), which isolates the gateway's own cost per stream; its *sidecar* column is the fake sidecar, which is not in the gateway's tree.\n",
            a.memory_streams, a.memory_streams, a.relay_hold
        );
        let _ = writeln!(
            w,
            "| system | streams | idle RSS (tree) | loaded RSS (tree) | per stream: server process | per stream: sidecar | per stream: yt-dlp & co | per stream: whole tree |\n|---|---|---|---|---|---|---|---|"
        );
        for m in res.mem.iter().chain(res.relay_hold.iter()) {
            let is_relay = res.relay_hold.as_ref().is_some_and(|r| std::ptr::eq(r, m));
            let (srv, side) = match m.kind {
                Kind::Gateway if is_relay => (
                    fmt_kib(Some(m.per(|t| t.root_kib))),
                    "– (fake, not measured)".into(),
                ),
                Kind::Gateway => (
                    fmt_kib(Some(m.per(|t| t.root_kib))),
                    fmt_kib(Some(m.per(|t| t.sidecar_kib))),
                ),
                Kind::Peer => (fmt_kib(Some(m.per(|t| t.root_kib))), "–".into()),
                Kind::Direct => ("–".into(), "–".into()),
            };
            let _ = writeln!(
                w,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                if is_relay {
                    "gateway, relay from the fake sidecar"
                } else {
                    m.kind.name()
                },
                m.streams,
                if m.kind == d {
                    "–".into()
                } else {
                    fmt_kib(Some(m.idle.total_kib() as f64))
                },
                fmt_kib(Some(m.loaded.total_kib() as f64)),
                srv,
                side,
                if m.kind == p || is_relay {
                    "–".into()
                } else {
                    fmt_kib(Some(m.per(|t| t.jobs_kib)))
                },
                fmt_kib(Some(m.per(|t| t.total_kib())))
            );
        }
        let _ = writeln!(w);
    }

    // ------------------------------------------------ relay
    if a.has("relay") {
        let _ = writeln!(w, "## Relay alone\n");
        let _ = writeln!(
            w,
            "`streamgate-bench-fake-sidecar` (bench/src/bin/fake-sidecar.rs) speaks docs/protocol.md with `streamgate-protocol` and answers each stream job with metadata and N MiB of data frames (256 KiB unless `--relay-frame-kib` says otherwise), pre-encoded, written as fast as the socket drains. The gateway is started with `--config` pointing its sidecar client at that socket (bench/relay-config.toml), so the row measures gateway + client only: socket read, frame decode, HTTP body write, on the same 2 cores as the client.\n"
        );
        if let Some(why) = &res.relay_pending {
            let _ = writeln!(w, "**pending**: {why}\n");
        }
        if !res.relay.is_empty() {
            let _ = writeln!(
                w,
                "| streams | MiB each | aggregate | first byte p50 | ok | gateway peak RSS |\n|---|---|---|---|---|---|"
            );
            for r in &res.relay {
                let _ = writeln!(
                    w,
                    "| {} | {} | {} | {} | {}/{} | {} |",
                    r.streams,
                    r.mib_each,
                    fmt_mbps(Some(mbps(r.bytes, r.wall))),
                    fmt_ms(pct(&r.ttfb_ms, 50.0)),
                    r.ok,
                    r.streams,
                    fmt_kib(r.gateway_peak.map(|t| t.root_kib as f64))
                );
                if let Some(e) = &r.first_failure {
                    let _ = writeln!(w, "\nfirst failure: {e}\n");
                }
            }
            let _ = writeln!(w);
        }
    }

    // ------------------------------------------------ plugin
    if a.has("plugin") && !res.plugin.is_empty() {
        let _ = writeln!(w, "## Plugin overhead per request\n");
        let _ = writeln!(
            w,
            "Small requests on one kept-alive connection, the probes interleaved ({} rounds after 10 unmeasured ones), timed from sending the request to the end of the response body. The baseline does no plugin work, so *Δ p50* estimates what the token (and policy) plugin calls add to a request: a fresh wasm instance, the call, and the error response. It does not include yt-dlp or the relay.\n",
            a.plugin_samples
        );
        let _ = writeln!(
            w,
            "| system | probe | what it exercises | status | p50 | p95 | Δ p50 vs baseline |\n|---|---|---|---|---|---|---|"
        );
        for k in [g, p] {
            let probes: Vec<&Probe> = res.plugin.iter().filter(|x| x.kind == k).collect();
            let sys_name = if k == p {
                "peer (for scale: no plugins)"
            } else {
                k.name()
            };
            let base = probes.first().and_then(|b| pct(&b.ms, 50.0));
            for (i, x) in probes.iter().enumerate() {
                let st: Vec<String> = x
                    .statuses
                    .iter()
                    .map(|(s, c)| {
                        if x.statuses.len() == 1 {
                            s.to_string()
                        } else {
                            format!("{s}×{c}")
                        }
                    })
                    .collect();
                let delta = if i == 0 {
                    "–".into()
                } else {
                    match (pct(&x.ms, 50.0), base) {
                        (Some(a), Some(b)) => fmt_ms(Some(a - b)),
                        _ => "–".into(),
                    }
                };
                let _ = writeln!(
                    w,
                    "| {} | {} | {} | {}{} | {} | {} | {} |",
                    sys_name,
                    x.name,
                    x.what,
                    st.join(", "),
                    if x.errors > 0 {
                        format!(" ({} errors)", x.errors)
                    } else {
                        String::new()
                    },
                    fmt_ms(pct(&x.ms, 50.0)),
                    fmt_ms(pct(&x.ms, 95.0)),
                    delta
                );
            }
        }
        let _ = writeln!(w);
    }

    // ------------------------------------------------ notes
    let notes = ctx.notes.lock().unwrap();
    if !notes.is_empty() {
        let _ = writeln!(w, "## Notes from this run\n");
        for n in notes.iter() {
            let _ = writeln!(w, "- {n}");
        }
        let _ = writeln!(w);
    }
    if let Some(l) = &f.gateway_log {
        let _ = writeln!(
            w,
            "Gateway log of the run: `{}` (not committed).",
            l.strip_prefix(&ctx.repo).unwrap_or(l).display()
        );
    }
    md
}
