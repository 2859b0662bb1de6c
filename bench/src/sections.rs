//! The measurements, one function per section, into [`Results`]; `report` renders them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::Ctx;
use crate::client::{self, KeepAlive, Outcome};
use crate::procs::{self, TreeRss};
use crate::stats::{mbps, ms, pct};
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
    pub(crate) fn p(&self, q: f64) -> Option<f64> {
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
    pub(crate) fn per(&self, f: impl Fn(&TreeRss) -> u64) -> f64 {
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
