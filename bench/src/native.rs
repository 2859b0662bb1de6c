//! Issue 10's figures for the native data path (the sidecar extracts with yt-dlp and moves
//! the bytes itself), side by side with the old service and direct yt-dlp in the same run:
//!
//! - `pss`: per-stream memory of whole process trees by PSS (`/proc/PID/smaps_rollup`) with
//!   `--pss-streams` (64) stalled single-file streams;
//! - `firstbyte`: first byte at n = `--fb-levels` (1, 32, 256) concurrent clients;
//! - `ceiling`: one stream of the big fixture against direct `yt-dlp -o -`, `curl` of the
//!   same file from the fixture server, and the bench's own client on the fixture server;
//! - the targets, judged together with the `ttfb` section's after-resolve figure.
//!
//! The gateway is the run's, on its embedded default config: the sidecar's slots by cost
//! (`--max-streams` 1024 streams, extractions queued for four slots per core) hold 64
//! stalled streams and a burst of 256. `pss` alone starts a gateway and an old service of
//! its own, so that its idle baseline holds no heap left by the other sections.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use streamgate_testkit::procfs;

use crate::Ctx;
use crate::client::{self, Outcome};
use crate::procs::{self, TreeCpu, TreePss};
use crate::sections;
use crate::stats::ms;
use crate::systems::{Gateway, Kind, Peer};

const SIDECAR_COMM: &str = "streamgate-side"; // comm is cut to 15 bytes

/// Who is measured: the systems of [`Kind`] and the two ceilings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Sys {
    Gateway,
    Peer,
    Direct,
    Curl,
    Fixture,
}

impl Sys {
    pub(crate) fn name(self) -> String {
        match self {
            Sys::Gateway => "gateway (defaults)".into(),
            Sys::Peer => "old service".into(),
            Sys::Direct => "direct `yt-dlp -o -`".into(),
            Sys::Curl => "`curl` from the fixture server".into(),
            Sys::Fixture => "bench client on the fixture server".into(),
        }
    }
}

#[derive(Debug)]
pub struct PssRow {
    pub sys: Sys,
    pub asked: usize,
    pub opened: usize,
    pub first_err: Option<String>,
    pub idle: TreePss,
    pub loaded: TreePss,
    pub tcp_idle: Option<u64>,
    pub tcp_loaded: Option<u64>,
    pub served: Option<String>,
}

impl PssRow {
    pub(crate) fn per(&self, f: impl Fn(&TreePss) -> u64) -> f64 {
        (f(&self.loaded) as f64 - f(&self.idle) as f64) / self.opened.max(1) as f64
    }
}

#[derive(Debug)]
pub struct FbRow {
    pub sys: Sys,
    pub n: usize,
    pub ok: usize,
    pub statuses: BTreeMap<u16, usize>,
    pub first_failure: Option<String>,
    pub ttfb_ms: Vec<f64>,
    pub bytes: u64,
    pub wall: Duration,
    pub served: Option<String>,
}

/// CPU seconds one run cost: the server's tree (gateway, sidecar, its children; the old
/// service's process), the bench process (client and fixture server), and the children the
/// bench reaped (curl, yt-dlp).
#[derive(Clone, Copy, Debug, Default)]
pub struct RunCpu {
    pub server: Option<TreeCpu>,
    pub bench: f64,
    pub child: f64,
}

#[derive(Default, Debug)]
pub struct NativeResults {
    pub pss: Vec<PssRow>,
    pub fb: Vec<FbRow>,
    pub ceiling: BTreeMap<Sys, Vec<Outcome>>,
    /// CPU spent during each ceiling run, by process.
    pub ceiling_cpu: BTreeMap<Sys, Vec<RunCpu>>,
    pub wall: Duration,
}

fn progress(s: impl AsRef<str>) {
    eprintln!("bench: {}", s.as_ref());
}

/// Runs the sections of this module that `--sections` names.
pub async fn run(ctx: &Ctx, out: &mut NativeResults) -> anyhow::Result<()> {
    let a = &ctx.args;
    if !(a.has("pss") || a.has("firstbyte") || a.has("ceiling")) {
        return Ok(());
    }
    let t0 = Instant::now();
    if a.has("ceiling") {
        ceiling(ctx, out).await.context("ceiling section")?;
    }
    if a.has("firstbyte") {
        firstbyte(ctx, out)
            .await
            .context("first byte at n section")?;
    }
    if a.has("pss") {
        pss(ctx, out).await.context("pss section")?;
    }
    out.wall = t0.elapsed();
    Ok(())
}

/// Tokens for many URLs from `streamgate mint`, a few processes at a time (each mint
/// instantiates the token plugin: ≈ 0.4 s of CPU).
async fn gateway_tokens(g: &Gateway, media: &[String]) -> anyhow::Result<Vec<String>> {
    let par = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let toks: Vec<anyhow::Result<String>> = futures::stream::iter(media.iter().map(|u| g.mint(u)))
        .buffered(par)
        .collect()
        .await;
    toks.into_iter().collect()
}

/// Tokens for many URLs from the peer's key in one Python process: the same payload and
/// Fernet call as its `mint.py URL best video.mp4`, without a Python start per token.
async fn peer_links(p: &Peer, media: &[String]) -> anyhow::Result<Vec<String>> {
    use tokio::io::AsyncWriteExt;
    const PY: &str = "import json, os, sys\n\
        from cryptography.fernet import Fernet\n\
        f = Fernet(os.environ['SEED_KEY'].encode())\n\
        for u in sys.stdin.read().split('\\n'):\n\
        \x20   if u:\n\
        \x20       print(f.encrypt(json.dumps({'url': u, 'format_id': 'best', 'filename': 'video.mp4'}).encode()).decode())\n";
    let mut child = tokio::process::Command::new(&p.python)
        .arg("-c")
        .arg(PY)
        .current_dir(&p.dir)
        .env("SEED_KEY", &p.key)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let mut stdin = child.stdin.take().expect("piped");
    stdin.write_all(media.join("\n").as_bytes()).await?;
    drop(stdin);
    let outp = child.wait_with_output().await?;
    if !outp.status.success() {
        bail!(
            "peer minting failed: {}",
            String::from_utf8_lossy(&outp.stderr).trim()
        );
    }
    let toks: Vec<String> = String::from_utf8(outp.stdout)?
        .lines()
        .map(|t| p.stream_url(t.trim()))
        .collect();
    if toks.len() != media.len() {
        bail!(
            "peer minting gave {} tokens for {} URLs",
            toks.len(),
            media.len()
        );
    }
    Ok(toks)
}

/// Prepared requests per system for the same media URLs (gateway tokens minted first).
async fn prepare(
    ctx: &Ctx,
    systems: &[Sys],
    media: &[String],
) -> anyhow::Result<BTreeMap<Sys, Vec<String>>> {
    let mut out = BTreeMap::new();
    for &s in systems {
        let v = match s {
            Sys::Gateway => {
                let g = ctx.systems.gateway.as_ref().context("no gateway")?;
                gateway_tokens(g, media)
                    .await?
                    .iter()
                    .map(|t| g.stream_url(t))
                    .collect()
            }
            Sys::Peer => peer_links(ctx.systems.peer.as_ref().context("no peer")?, media).await?,
            Sys::Direct | Sys::Curl | Sys::Fixture => media.to_vec(),
        };
        out.insert(s, v);
    }
    Ok(out)
}

async fn fetch(ctx: &Ctx, s: Sys, prepared: &str, timeout: Duration) -> Outcome {
    match s {
        Sys::Gateway | Sys::Peer | Sys::Fixture => client::get(prepared, None, timeout).await,
        Sys::Direct => {
            ctx.systems
                .fetch(Kind::Direct, prepared, None, timeout)
                .await
        }
        Sys::Curl => {
            let mut c = tokio::process::Command::new("curl");
            c.args(["-sS", "--fail", "-o", "-", prepared]);
            client::run_stdout(c, None, timeout).await
        }
    }
}

/// `streamgate_media_responses_total` summed by `served_by`.
async fn served_by(base: &str) -> BTreeMap<String, f64> {
    let mut m = BTreeMap::new();
    let Ok(text) = get_text(&format!("{base}/metrics")).await else {
        return m;
    };
    for l in text.lines() {
        let Some(rest) = l.strip_prefix("streamgate_media_responses_total{") else {
            continue;
        };
        let Some((labels, val)) = rest.rsplit_once('}') else {
            continue;
        };
        let by = labels
            .split(',')
            .find_map(|kv| kv.trim().strip_prefix("served_by="))
            .map(|v| v.trim_matches('"').to_string())
            .unwrap_or_else(|| "?".into());
        if let Ok(v) = val.trim().parse::<f64>() {
            *m.entry(by).or_default() += v;
        }
    }
    m
}

async fn get_text(url: &str) -> anyhow::Result<String> {
    use http_body_util::BodyExt;
    let (resp, _) = client::open(url).await?;
    let body = tokio::time::timeout(Duration::from_secs(10), resp.into_body().collect())
        .await
        .context("timeout")??;
    Ok(String::from_utf8_lossy(&body.to_bytes()).into_owned())
}

fn served_delta(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>) -> String {
    let parts: Vec<String> = after
        .iter()
        .filter_map(|(k, v)| {
            let d = v - before.get(k).copied().unwrap_or(0.0);
            (d > 0.0).then(|| format!("{k} {d:.0}"))
        })
        .collect();
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(", ")
    }
}

/// Where `s` serves `/metrics`: the gateway's admin listener.
fn admin_of(ctx: &Ctx, s: Sys) -> Option<String> {
    match s {
        Sys::Gateway => ctx.systems.gateway.as_ref().map(|g| g.admin.clone()),
        _ => None,
    }
}

// ---------------------------------------------------------------- ceiling

async fn ceiling(ctx: &Ctx, out: &mut NativeResults) -> anyhow::Result<()> {
    let mut systems = vec![Sys::Curl, Sys::Fixture];
    if ctx.systems.gateway.is_some() {
        systems.insert(0, Sys::Gateway);
    }
    if ctx.systems.direct.is_some() {
        systems.push(Sys::Direct);
    }
    if ctx.systems.peer.is_some() {
        systems.push(Sys::Peer);
    }
    let runs = ctx.args.ceiling_runs;
    let media: Vec<String> = (0..runs)
        .map(|r| ctx.big_url(&format!("ceil={r}")))
        .collect();
    progress(format!(
        "ceiling: preparing {runs} run(s) for {} systems",
        systems.len()
    ));
    let prepared = prepare(ctx, &systems, &media).await?;
    // Warm the page cache for the big file (the throughput section may not have run).
    let _ = client::get(&media[0], None, Duration::from_secs(120)).await;
    #[allow(clippy::needless_range_loop)] // r indexes every system's list, interleaved
    for r in 0..runs {
        for &s in &systems {
            progress(format!("ceiling: {} run {}", s.name(), r + 1));
            let pid = pid_of(ctx, s);
            let me = std::process::id();
            let s0 = pid.map(|p| procs::tree_cpu(p, SIDECAR_COMM));
            let b0 = procfs::cpu_secs(me).unwrap_or_default();
            let o = fetch(ctx, s, &prepared[&s][r], Duration::from_secs(600)).await;
            let s1 = pid.map(|p| procs::tree_cpu(p, SIDECAR_COMM));
            let b1 = procfs::cpu_secs(me).unwrap_or_default();
            out.ceiling_cpu.entry(s).or_default().push(RunCpu {
                server: s0.zip(s1).map(|(a, b)| b.minus(a)),
                bench: b1.0 - b0.0,
                child: b1.1 - b0.1,
            });
            if !o.ok(Some(ctx.big.size)) {
                ctx.note(format!(
                    "ceiling: {} run {} failed: {}",
                    s.name(),
                    r + 1,
                    o.describe_failure(Some(ctx.big.size))
                ));
            }
            out.ceiling.entry(s).or_default().push(o);
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- first byte at n

async fn firstbyte(ctx: &Ctx, out: &mut NativeResults) -> anyhow::Result<()> {
    let a = &ctx.args;
    let expect = Some(ctx.small.size);
    let timeout = Duration::from_secs(300);
    for &n in &a.fb_levels {
        let mut systems = Vec::new();
        if ctx.systems.gateway.is_some() {
            systems.push(Sys::Gateway);
        }
        if ctx.systems.peer.is_some() && n <= a.fb_peer_max {
            systems.push(Sys::Peer);
        }
        if ctx.systems.direct.is_some() && n <= a.fb_direct_max {
            systems.push(Sys::Direct);
        }
        let media: Vec<String> = (0..n)
            .map(|i| ctx.small_url(&format!("fb{n}={i}")))
            .collect();
        progress(format!("first byte at n={n}: minting"));
        let prepared = prepare(ctx, &systems, &media).await?;
        for &s in &systems {
            progress(format!("first byte at n={n}: {}", s.name()));
            let base = admin_of(ctx, s);
            let before = match &base {
                Some(b) => Some(served_by(b).await),
                None => None,
            };
            tokio::time::sleep(Duration::from_millis(500)).await;
            let start = Instant::now();
            let tasks: Vec<_> = prepared[&s]
                .iter()
                .cloned()
                .map(|p| {
                    let direct = s == Sys::Direct;
                    let sys = ctx.systems.clone();
                    tokio::spawn(async move {
                        if direct {
                            sys.fetch(Kind::Direct, &p, None, timeout).await
                        } else {
                            client::get(&p, None, timeout).await
                        }
                    })
                })
                .collect();
            let mut row = FbRow {
                sys: s,
                n,
                ok: 0,
                statuses: BTreeMap::new(),
                first_failure: None,
                ttfb_ms: Vec::new(),
                bytes: 0,
                wall: Duration::ZERO,
                served: None,
            };
            for t in tasks {
                let o = t.await.context("stream task")?;
                row.bytes += o.bytes;
                *row.statuses.entry(o.status).or_default() += 1;
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
            if let (Some(b), Some(before)) = (&base, &before) {
                row.served = Some(served_delta(before, &served_by(b).await));
            }
            out.fb.push(row);
            // Let the round's processes and connections go before the next one.
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------- PSS

fn pid_of(ctx: &Ctx, s: Sys) -> Option<u32> {
    match s {
        Sys::Gateway => ctx.systems.gateway.as_ref().map(|g| g.pid()),
        Sys::Peer => ctx.systems.peer.as_ref().map(|p| p.pid()),
        _ => None,
    }
}

fn sample(pid: u32) -> TreePss {
    procs::tree_pss(pid, SIDECAR_COMM)
}

/// The servers the `pss` section measures, started for it alone: a gateway (own state dir,
/// sidecar and pool) and an old service, both fresh. The run's own servers have served the
/// other sections by then and their allocators keep that heap, so an idle baseline taken
/// from them is inflated and the per-stream figure reads too low (74 KiB instead of 250).
struct Fresh {
    gateway: Option<Gateway>,
    peer: Option<Peer>,
}

impl Fresh {
    async fn start(ctx: &Ctx) -> anyhow::Result<Fresh> {
        let a = &ctx.args;
        let logs = ctx.work.join("logs");
        let mut fresh = Fresh {
            gateway: None,
            peer: None,
        };
        if ctx.systems.gateway.is_some() {
            let state = ctx.work.join("pss-gateway-state");
            let _ = std::fs::remove_dir_all(&state);
            let log = logs.join("pss-gateway.log");
            let g = Gateway::start(&a.gateway, &state, None, &a.gateway_args, &log)
                .await
                .context("starting a fresh gateway for pss")?;
            fresh.gateway = Some(g);
        }
        if let (Some(p), Some(dir)) = (&ctx.systems.peer, &a.peer_dir) {
            let log = logs.join("pss-peer.log");
            let peer = Peer::start(dir, &p.python, &log)
                .await
                .context("starting a fresh old service for pss")?;
            fresh.peer = Some(peer);
        }
        // One unmeasured stream each, as the run's servers got (imports, plugin compilation,
        // a pool worker's first job).
        let url = ctx.small_url("pss-warmup");
        let mut warm = Vec::new();
        if let Some(g) = &fresh.gateway {
            warm.push(g.stream_url(&g.mint(&url).await?));
        }
        if let Some(p) = &fresh.peer {
            warm.extend(peer_links(p, std::slice::from_ref(&url)).await?);
        }
        for w in warm {
            let o = client::get(&w, None, Duration::from_secs(120)).await;
            if !o.ok(Some(ctx.small.size)) {
                ctx.note(format!(
                    "pss warm-up request failed: {}",
                    o.describe_failure(Some(ctx.small.size))
                ));
            }
        }
        Ok(fresh)
    }

    async fn shutdown(self) {
        if let Some(g) = self.gateway {
            g.shutdown().await;
        }
        if let Some(p) = self.peer {
            p.shutdown().await;
        }
    }
}

async fn pss(ctx: &Ctx, out: &mut NativeResults) -> anyhow::Result<()> {
    let n = ctx.args.pss_streams;
    progress("pss: starting a fresh gateway and old service");
    let fresh = Fresh::start(ctx).await?;
    let measured = pss_of(ctx, &fresh, n, out).await;
    fresh.shutdown().await;
    measured
}

async fn pss_of(ctx: &Ctx, fresh: &Fresh, n: usize, out: &mut NativeResults) -> anyhow::Result<()> {
    let media: Vec<String> = (0..n).map(|i| ctx.big_url(&format!("pss={i}"))).collect();
    progress(format!("pss: minting {n} links"));
    let mut systems = Vec::new();
    if let Some(g) = &fresh.gateway {
        let links = gateway_tokens(g, &media)
            .await?
            .iter()
            .map(|t| g.stream_url(t))
            .collect();
        systems.push((Sys::Gateway, g.pid(), Some(g.admin.clone()), links));
    }
    if let Some(p) = &fresh.peer {
        systems.push((Sys::Peer, p.pid(), None, peer_links(p, &media).await?));
    }
    for (s, pid, base, links) in systems {
        progress(format!("pss: {} with {n} stalled streams", s.name()));
        let before = match &base {
            Some(b) => Some(served_by(b).await),
            None => None,
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        // Idle: the lowest of 3 samples (a pool worker being replaced can inflate one).
        let mut idle: Option<TreePss> = None;
        for _ in 0..3 {
            let t = sample(pid);
            if idle.as_ref().is_none_or(|i| t.total_kib() < i.total_kib()) {
                idle = Some(t);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let tcp_idle = procfs::tcp_mem_kib();
        let (bodies, first_err) = sections::open_stalled(links, Duration::from_secs(20)).await;
        // Let every buffer on the way fill, then take the highest of 5 samples.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let mut loaded: Option<TreePss> = None;
        for _ in 0..5 {
            let t = sample(pid);
            if loaded
                .as_ref()
                .is_none_or(|l| t.total_kib() > l.total_kib())
            {
                loaded = Some(t);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let tcp_loaded = procfs::tcp_mem_kib();
        let served = match (&base, &before) {
            (Some(b), Some(before)) => Some(served_delta(before, &served_by(b).await)),
            _ => None,
        };
        let opened = bodies.len();
        drop(bodies);
        out.pss.push(PssRow {
            sys: s,
            asked: n,
            opened,
            first_err,
            idle: idle.unwrap_or_default(),
            loaded: loaded.unwrap_or_default(),
            tcp_idle,
            tcp_loaded,
            served,
        });
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    Ok(())
}
