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
//! The shipped defaults let the sidecar run 32 jobs with 64 more queued, and a stalled stream
//! holds its job: 64 stalled streams or 256 concurrent ones do not fit. So besides the run's
//! gateway (embedded defaults) this module starts a second one with `--max-jobs
//! --wide-max-jobs` (320) and the same token key (its tokens are the same), its own sidecar
//! and extraction cache, for the PSS figure and the rows above 32 streams.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;

use crate::Ctx;
use crate::client::{self, Outcome};
use crate::procs::{self, TreeCpu, TreePss};
use crate::sections::{
    self, Mode, Results, Verdict, median_mbps as e2e, median_transfer_mbps as transfer, met,
};
use crate::stats::{fmt_kib, fmt_mbps, fmt_ms, mbps, ms, pct, ratio};
use crate::systems::{Gateway, Kind, Peer};

const SIDECAR_COMM: &str = "streamgate-side"; // comm is cut to 15 bytes
/// The sidecar's default `--max-jobs`: rows above it also run on the wide gateway.
const DEFAULT_MAX_JOBS: usize = 32;

/// Who is measured: the systems of [`Kind`], the wide gateway, and the two ceilings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Sys {
    Gateway,
    Wide,
    Peer,
    Direct,
    Curl,
    Fixture,
}

impl Sys {
    fn name(self, wide_jobs: u32) -> String {
        match self {
            Sys::Gateway => "gateway (defaults)".into(),
            Sys::Wide => format!("gateway, `--max-jobs {wide_jobs}`"),
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
    fn per(&self, f: impl Fn(&TreePss) -> u64) -> f64 {
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
    /// Why the wide gateway is missing, when it is.
    pub wide_na: Option<String>,
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
    let mut wide = None;
    let needs_wide =
        a.has("pss") || (a.has("firstbyte") && a.fb_levels.iter().any(|&n| n > DEFAULT_MAX_JOBS));
    if needs_wide && a.wide_max_jobs > 0 {
        match &ctx.systems.gateway {
            Some(g) => match start_wide(ctx, g).await {
                Ok(w) => wide = Some(w),
                Err(e) => out.wide_na = Some(format!("the wide gateway did not start: {e:#}")),
            },
            None => out.wide_na = Some("no gateway in this run".into()),
        }
    } else if needs_wide {
        out.wide_na = Some("`--wide-max-jobs 0`".into());
    }
    if let Some(w) = &out.wide_na {
        ctx.note(format!("wide gateway: {w}"));
    }
    if a.has("ceiling") {
        ceiling(ctx, out).await.context("ceiling section")?;
    }
    if a.has("firstbyte") {
        firstbyte(ctx, wide.as_ref(), out)
            .await
            .context("first byte at n section")?;
    }
    if a.has("pss") {
        pss(ctx, wide.as_ref(), out).await.context("pss section")?;
    }
    if let Some(w) = wide {
        w.shutdown().await;
    }
    out.wall = t0.elapsed();
    Ok(())
}

/// A second gateway with `--max-jobs N` and the run gateway's token key.
async fn start_wide(ctx: &Ctx, main: &Gateway) -> anyhow::Result<Gateway> {
    let state = ctx.work.join("gateway-wide-state");
    let _ = std::fs::remove_dir_all(&state);
    std::fs::create_dir_all(&state)?;
    let key = main.state_dir.join("token.key");
    std::fs::copy(&key, state.join("token.key"))
        .with_context(|| format!("copying {}", key.display()))?;
    let mut extra = ctx.args.gateway_args.clone();
    extra.push(format!("--max-jobs={}", ctx.args.wide_max_jobs));
    let g = Gateway::start(
        &ctx.args.gateway,
        &state,
        None,
        &extra,
        &ctx.work.join("logs/gateway-wide.log"),
    )
    .await?;
    progress(format!(
        "wide gateway (--max-jobs {}) up on {}",
        ctx.args.wide_max_jobs, g.base
    ));
    // Unmeasured warm-up, like every system's.
    let tok = main.mint(&ctx.small_url("warmup-wide")).await?;
    let o = client::get(&g.stream_url(&tok), None, Duration::from_secs(120)).await;
    if !o.ok(Some(ctx.small.size)) {
        bail!(
            "warm-up stream failed: {}",
            o.describe_failure(Some(ctx.small.size))
        );
    }
    Ok(g)
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

/// Prepared requests per system for the same media URLs (gateway tokens minted once, valid
/// on both gateways).
async fn prepare(
    ctx: &Ctx,
    systems: &[Sys],
    wide: Option<&Gateway>,
    media: &[String],
) -> anyhow::Result<BTreeMap<Sys, Vec<String>>> {
    let mut out = BTreeMap::new();
    let mut gtoks = None;
    for &s in systems {
        let v = match s {
            Sys::Gateway | Sys::Wide => {
                let g = ctx.systems.gateway.as_ref().context("no gateway")?;
                if gtoks.is_none() {
                    gtoks = Some(gateway_tokens(g, media).await?);
                }
                let target = if s == Sys::Wide {
                    wide.context("no wide gateway")?
                } else {
                    g
                };
                gtoks
                    .as_ref()
                    .expect("minted above")
                    .iter()
                    .map(|t| target.stream_url(t))
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
        Sys::Gateway | Sys::Wide | Sys::Peer | Sys::Fixture => {
            client::get(prepared, None, timeout).await
        }
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

fn base_of(ctx: &Ctx, s: Sys, wide: Option<&Gateway>) -> Option<String> {
    match s {
        Sys::Gateway => ctx.systems.gateway.as_ref().map(|g| g.base.clone()),
        Sys::Wide => wide.map(|g| g.base.clone()),
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
    let prepared = prepare(ctx, &systems, None, &media).await?;
    // Warm the page cache for the big file (the throughput section may not have run).
    let _ = client::get(&media[0], None, Duration::from_secs(120)).await;
    #[allow(clippy::needless_range_loop)] // r indexes every system's list, interleaved
    for r in 0..runs {
        for &s in &systems {
            progress(format!("ceiling: {} run {}", s.name(0), r + 1));
            let pid = pid_of(ctx, s, None);
            let me = std::process::id();
            let s0 = pid.map(|p| procs::tree_cpu(p, SIDECAR_COMM));
            let b0 = procs::cpu_secs(me).unwrap_or_default();
            let o = fetch(ctx, s, &prepared[&s][r], Duration::from_secs(600)).await;
            let s1 = pid.map(|p| procs::tree_cpu(p, SIDECAR_COMM));
            let b1 = procs::cpu_secs(me).unwrap_or_default();
            out.ceiling_cpu.entry(s).or_default().push(RunCpu {
                server: s0.zip(s1).map(|(a, b)| b.minus(a)),
                bench: b1.0 - b0.0,
                child: b1.1 - b0.1,
            });
            if !o.ok(Some(ctx.big.size)) {
                ctx.note(format!(
                    "ceiling: {} run {} failed: {}",
                    s.name(0),
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

async fn firstbyte(
    ctx: &Ctx,
    wide: Option<&Gateway>,
    out: &mut NativeResults,
) -> anyhow::Result<()> {
    let a = &ctx.args;
    let expect = Some(ctx.small.size);
    let timeout = Duration::from_secs(300);
    for &n in &a.fb_levels {
        let mut systems = Vec::new();
        if ctx.systems.gateway.is_some() {
            systems.push(Sys::Gateway);
        }
        if wide.is_some() && n > DEFAULT_MAX_JOBS {
            systems.push(Sys::Wide);
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
        let prepared = prepare(ctx, &systems, wide, &media).await?;
        for &s in &systems {
            progress(format!("first byte at n={n}: {}", s.name(a.wide_max_jobs)));
            let base = base_of(ctx, s, wide);
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

fn pid_of(ctx: &Ctx, s: Sys, wide: Option<&Gateway>) -> Option<u32> {
    match s {
        Sys::Gateway => ctx.systems.gateway.as_ref().map(|g| g.pid()),
        Sys::Wide => wide.map(|g| g.pid()),
        Sys::Peer => ctx.systems.peer.as_ref().map(|p| p.pid()),
        _ => None,
    }
}

fn sample(pid: u32) -> TreePss {
    procs::tree_pss(pid, SIDECAR_COMM)
}

async fn pss(ctx: &Ctx, wide: Option<&Gateway>, out: &mut NativeResults) -> anyhow::Result<()> {
    let n = ctx.args.pss_streams;
    let mut systems = Vec::new();
    match wide {
        Some(_) => systems.push(Sys::Wide),
        None if ctx.systems.gateway.is_some() => systems.push(Sys::Gateway),
        None => {}
    }
    if ctx.systems.peer.is_some() {
        systems.push(Sys::Peer);
    }
    let media: Vec<String> = (0..n).map(|i| ctx.big_url(&format!("pss={i}"))).collect();
    progress(format!("pss: minting {n} links"));
    let prepared = prepare(ctx, &systems, wide, &media).await?;
    for &s in &systems {
        let Some(pid) = pid_of(ctx, s, wide) else {
            continue;
        };
        progress(format!(
            "pss: {} with {n} stalled streams",
            s.name(ctx.args.wide_max_jobs)
        ));
        let base = base_of(ctx, s, wide);
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
        let tcp_idle = procs::tcp_mem_kib();
        let (bodies, first_err) =
            sections::open_stalled(prepared[&s].clone(), Duration::from_secs(20)).await;
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
        let tcp_loaded = procs::tcp_mem_kib();
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

// ---------------------------------------------------------------- report

fn comms(t: &TreePss) -> String {
    t.by_comm
        .iter()
        .map(|(c, k)| format!("{c} {k}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The Markdown block of this module: parameters, the targets, one table per section.
pub fn render(ctx: &Ctx, res: &Results, n: &NativeResults) -> String {
    let a = &ctx.args;
    let wj = a.wide_max_jobs;
    let mut md = String::new();
    let w = &mut md;
    if !(a.has("pss") || a.has("firstbyte") || a.has("ceiling")) {
        return md;
    }
    let _ = writeln!(w, "## Issue 10: the native data path\n");
    let _ = writeln!(
        w,
        "Sections `pss`, `firstbyte`, `ceiling` (bench/src/native.rs) and the after-resolve figure of `ttfb`. \
         *gateway (defaults)* is the run's gateway on its embedded default config (the sidecar runs 32 jobs, queues 64). \
         *gateway, `--max-jobs {wj}`* is a second gateway started for this block with the same token key, its own sidecar and extraction cache, \
         because a stalled stream holds a job: it carries the PSS figure and the rows above 32 streams. \
         Ratios are taken within this one run. {}\n",
        match &n.wide_na {
            Some(w) => format!("The second gateway is missing: {w}."),
            None => String::new(),
        }
    );
    let _ = writeln!(w, "| parameter | value |\n|---|---|");
    let _ = writeln!(
        w,
        "| PSS | {} streams of the big fixture opened together, each read for 1 MiB and then never again; PSS of every process of the tree from `/proc/PID/smaps_rollup`, idle (lowest of 3 samples) and 3 s after the last stream opened (highest of 5) |",
        a.pss_streams
    );
    let _ = writeln!(
        w,
        "| first byte at n | n = {:?} streams of the small fixture, distinct URLs (no cache helps), started together, each read to its end; old service up to n = {}, direct up to n = {} |",
        a.fb_levels, a.fb_peer_max, a.fb_direct_max
    );
    let _ = writeln!(
        w,
        "| single stream | {} run(s) per system of the big fixture, interleaved, median; curl: `curl -sS --fail -o - URL`, its stdout read by the bench like direct yt-dlp's |",
        a.ceiling_runs
    );
    let _ = writeln!(
        w,
        "| wall time of this block | {:.0} s |\n",
        n.wall.as_secs_f64()
    );

    // ------------------------------------------------ targets
    let fb = |s: Sys, k: usize| n.fb.iter().find(|r| r.sys == s && r.n == k);
    let mut v: Vec<Verdict> = Vec::new();
    let pss_row = n
        .pss
        .iter()
        .find(|r| r.sys == Sys::Wide)
        .or_else(|| n.pss.iter().find(|r| r.sys == Sys::Gateway));
    let peer_pss = n.pss.iter().find(|r| r.sys == Sys::Peer);
    v.push(match pss_row {
        Some(r) if r.opened > 0 => {
            let per = r.per(TreePss::total_kib);
            Verdict {
                target: format!(
                    "PSS of the whole tree ≤ 256 KiB per stalled single-file stream ({} streams)",
                    r.asked
                ),
                measured: format!(
                    "{} per stream, {} of {} open ({}); old service {}",
                    fmt_kib(Some(per)),
                    r.opened,
                    r.asked,
                    r.sys.name(wj),
                    peer_pss
                        .map(|p| fmt_kib(Some(p.per(TreePss::total_kib))))
                        .unwrap_or_else(|| "–".into())
                ),
                verdict: met(per <= 256.0 && r.opened == r.asked, || {
                    if per > 256.0 {
                        format!(
                            "{:.2}× the budget ({} over)",
                            per / 256.0,
                            fmt_kib(Some(per - 256.0))
                        )
                    } else {
                        format!("only {} of {} streams opened", r.opened, r.asked)
                    }
                }),
            }
        }
        _ => Verdict {
            target: "PSS ≤ 256 KiB per stalled stream".into(),
            measured: "–".into(),
            verdict: "not measured".into(),
        },
    });
    let p50 = |r: Option<&FbRow>| r.and_then(|r| pct(&r.ttfb_ms, 50.0));
    v.push(match (p50(fb(Sys::Gateway, 32)), p50(fb(Sys::Peer, 32))) {
        (Some(g), Some(p)) => Verdict {
            target: "n = 32: first byte p50 ≤ 0.10 × the old service's".into(),
            measured: format!("{} vs {} → {:.2}×", fmt_ms(Some(g)), fmt_ms(Some(p)), g / p),
            verdict: met(g <= 0.1 * p, || {
                format!(
                    "{:.2}× instead of ≤ 0.10× ({} over the {} limit)",
                    g / p,
                    fmt_ms(Some(g - 0.1 * p)),
                    fmt_ms(Some(0.1 * p))
                )
            }),
        },
        _ => Verdict {
            target: "n = 32: first byte p50 ≤ 0.10 × the old service's".into(),
            measured: "–".into(),
            verdict: "not measured".into(),
        },
    });
    for s in [Sys::Gateway, Sys::Wide] {
        for r in n.fb.iter().filter(|r| r.sys == s && r.n > DEFAULT_MAX_JOBS) {
            let fails = r.n - r.ok;
            v.push(Verdict {
                target: format!("n = {}: 0 failures ({})", r.n, s.name(wj)),
                measured: format!(
                    "{fails} of {} failed{}",
                    r.n,
                    if fails > 0 {
                        format!(" (statuses {})", statuses(&r.statuses))
                    } else {
                        String::new()
                    }
                ),
                verdict: met(fails == 0, || {
                    format!(
                        "{fails} failures; first: {}",
                        r.first_failure.clone().unwrap_or_default()
                    )
                }),
            });
        }
    }
    let size = ctx.big.size;
    let c = |s: Sys| n.ceiling.get(&s).and_then(|x| e2e(x, size));
    for (other, k, label) in [
        (Sys::Direct, 1.0, "direct yt-dlp"),
        (Sys::Curl, 0.8, "curl of the same file"),
    ] {
        v.push(match (c(Sys::Gateway), c(other)) {
            (Some(g), Some(o)) => Verdict {
                target: format!("single stream ≥ {k:.1} × {label} (end to end)"),
                measured: format!(
                    "{} vs {} → {:.2}×",
                    fmt_mbps(Some(g)),
                    fmt_mbps(Some(o)),
                    g / o
                ),
                verdict: met(g >= k * o, || {
                    format!(
                        "{:.2}× instead of ≥ {k:.2}× ({} short)",
                        g / o,
                        fmt_mbps(Some(k * o - g))
                    )
                }),
            },
            _ => Verdict {
                target: format!("single stream ≥ {k:.1} × {label}"),
                measured: "–".into(),
                verdict: "not measured".into(),
            },
        });
    }
    let tt = |k: Kind, m: Mode| res.ttfb.get(&(k, m)).and_then(|s| pct(&s.ttfb_ms, 50.0));
    v.push(
        match (
            tt(Kind::Gateway, Mode::AfterResolve),
            tt(Kind::Peer, Mode::Warm),
            &res.resolve_na,
        ) {
            (_, _, Some(na)) => Verdict {
                target: "first byte right after a resolve ≤ 0.10 × the old service's warm".into(),
                measured: na.clone(),
                verdict: "not measured".into(),
            },
            (Some(g), Some(p), None) => Verdict {
                target: "first byte p50 right after a resolve ≤ 0.10 × the old service's warm p50"
                    .into(),
                measured: format!("{} vs {} → {:.2}×", fmt_ms(Some(g)), fmt_ms(Some(p)), g / p),
                verdict: met(g <= 0.1 * p, || {
                    format!(
                        "{:.2}× instead of ≤ 0.10× ({} over the {} limit)",
                        g / p,
                        fmt_ms(Some(g - 0.1 * p)),
                        fmt_ms(Some(0.1 * p))
                    )
                }),
            },
            _ => Verdict {
                target: "first byte right after a resolve ≤ 0.10 × the old service's warm".into(),
                measured: "–".into(),
                verdict: "not measured (needs the `ttfb` section with gateway and peer)".into(),
            },
        },
    );
    let _ = writeln!(w, "### Issue 10 targets\n");
    let _ = writeln!(w, "| target | measured | verdict |\n|---|---|---|");
    for x in &v {
        let _ = writeln!(w, "| {} | {} | {} |", x.target, x.measured, x.verdict);
    }
    let _ = writeln!(w);

    // ------------------------------------------------ PSS
    if !n.pss.is_empty() {
        let _ = writeln!(w, "### Memory per stalled stream, by PSS\n");
        let _ = writeln!(
            w,
            "Per stream = (loaded − idle) / streams open. *server process*: the gateway (old service: its one uvicorn process); *sidecar*: the sidecar process; *children*: everything under the sidecar (warm-pool yt-dlp workers, ffmpeg). *processes*: the tree by name, idle → loaded: a yt-dlp per stream would show here. Kernel socket buffers are in no process's PSS: *TCP buffers* is the system's TCP memory (`/proc/net/sockstat`, all sockets of the machine, client and fixture server included) per stream, for scale.\n"
        );
        let _ = writeln!(
            w,
            "| system | open | idle PSS (tree) | loaded PSS (tree) | per stream: server process | sidecar | children | **whole tree** | processes idle → loaded | TCP buffers / stream | served_by |\n|---|---|---|---|---|---|---|---|---|---|---|"
        );
        for r in &n.pss {
            let tcp = match (r.tcp_idle, r.tcp_loaded) {
                (Some(i), Some(l)) => fmt_kib(Some((l as f64 - i as f64) / r.opened.max(1) as f64)),
                _ => "–".into(),
            };
            let gw = matches!(r.sys, Sys::Gateway | Sys::Wide);
            let _ = writeln!(
                w,
                "| {} | {}/{} | {} | {} | {} | {} | {} | **{}** | {} → {} | {} | {} |",
                r.sys.name(wj),
                r.opened,
                r.asked,
                fmt_kib(Some(r.idle.total_kib() as f64)),
                fmt_kib(Some(r.loaded.total_kib() as f64)),
                fmt_kib(Some(r.per(|t| t.root_kib))),
                if gw {
                    fmt_kib(Some(r.per(|t| t.sidecar_kib)))
                } else {
                    "–".into()
                },
                if gw {
                    fmt_kib(Some(r.per(|t| t.jobs_kib)))
                } else {
                    "–".into()
                },
                fmt_kib(Some(r.per(TreePss::total_kib))),
                comms(&r.idle),
                comms(&r.loaded),
                tcp,
                r.served.clone().unwrap_or_else(|| "–".into())
            );
        }
        let _ = writeln!(w);
        if let (Some(g), Some(p)) = (pss_row, peer_pss) {
            let _ = writeln!(
                w,
                "Gateway / old service, whole tree per stream: {}.\n",
                ratio(
                    Some(g.per(TreePss::total_kib)),
                    Some(p.per(TreePss::total_kib))
                )
            );
        }
        for r in &n.pss {
            if let Some(e) = &r.first_err {
                let _ = writeln!(
                    w,
                    "- {}: {} of {} did not open; first: {e}",
                    r.sys.name(wj),
                    r.asked - r.opened,
                    r.asked
                );
            }
            if r.loaded.unreadable + r.idle.unreadable > 0 {
                let _ = writeln!(
                    w,
                    "- {}: {} smaps_rollup reads failed (counted as 0)",
                    r.sys.name(wj),
                    r.loaded.unreadable + r.idle.unreadable
                );
            }
        }
        let _ = writeln!(w);
    }

    // ------------------------------------------------ first byte at n
    if !n.fb.is_empty() {
        let _ = writeln!(
            w,
            "### First byte at n concurrent clients ({:.1} MB fixture each)\n",
            ctx.small.size as f64 / 1e6
        );
        let _ = writeln!(
            w,
            "All n streams start together (links minted beforehand); first byte from just before each TCP connect (direct: the spawn) to its first body byte, over the successful streams; a failure is anything but 200 with the exact byte count; *aggregate* = all bytes / (start → last stream done).\n"
        );
        let _ = writeln!(
            w,
            "| n | system | ok | statuses | first byte p50 | p95 | max | aggregate | served_by |\n|---|---|---|---|---|---|---|---|---|"
        );
        for r in &n.fb {
            let _ = writeln!(
                w,
                "| {} | {} | {}/{} | {} | {} | {} | {} | {} | {} |",
                r.n,
                r.sys.name(wj),
                r.ok,
                r.n,
                statuses(&r.statuses),
                fmt_ms(pct(&r.ttfb_ms, 50.0)),
                fmt_ms(pct(&r.ttfb_ms, 95.0)),
                fmt_ms(pct(&r.ttfb_ms, 100.0)),
                fmt_mbps(Some(mbps(r.bytes, r.wall))),
                r.served.clone().unwrap_or_else(|| "–".into())
            );
        }
        let _ = writeln!(w);
        let _ = writeln!(
            w,
            "| n | first byte p50: gateway / old service | gateway / direct | aggregate: gateway / old service |\n|---|---|---|---|"
        );
        for &k in &a.fb_levels {
            let g = fb(Sys::Gateway, k);
            let g = if g.is_some_and(|r| r.ok < r.n) {
                fb(Sys::Wide, k).or(g)
            } else {
                g
            };
            if let Some(g) = g {
                let _ = writeln!(
                    w,
                    "| {k}{} | {} | {} | {} |",
                    if g.sys == Sys::Wide {
                        format!(" (`--max-jobs {wj}`)")
                    } else {
                        String::new()
                    },
                    ratio(p50(Some(g)), p50(fb(Sys::Peer, k))),
                    ratio(p50(Some(g)), p50(fb(Sys::Direct, k))),
                    ratio(
                        Some(mbps(g.bytes, g.wall)),
                        fb(Sys::Peer, k).map(|p| mbps(p.bytes, p.wall))
                    )
                );
            }
        }
        let _ = writeln!(w);
        for r in &n.fb {
            if let Some(e) = &r.first_failure {
                let _ = writeln!(
                    w,
                    "- n={} {}: {} failures, first: {e}",
                    r.n,
                    r.sys.name(wj),
                    r.n - r.ok
                );
            }
        }
        let _ = writeln!(w);
    }

    // ------------------------------------------------ ceiling
    if !n.ceiling.is_empty() {
        let _ = writeln!(
            w,
            "### Single stream against its ceilings ({:.1} MB fixture)\n",
            size as f64 / 1e6
        );
        let _ = writeln!(
            w,
            "*end to end* = bytes / (request → last byte); *transfer* = bytes / (first byte → last byte); median of {} run(s). *curl* and the *bench client on the fixture server* read the file straight from the fixture server: the physical ceiling of the path (loopback, the same file, the same page cache).\n",
            a.ceiling_runs
        );
        let _ = writeln!(
            w,
            "| system | end to end | transfer only | first byte | ok | gateway / this (end to end) | gateway / this (transfer) |\n|---|---|---|---|---|---|---|"
        );
        let g_e = c(Sys::Gateway);
        let g_t = n.ceiling.get(&Sys::Gateway).and_then(|x| transfer(x, size));
        for (s, runs) in &n.ceiling {
            let fbs: Vec<f64> = runs.iter().filter_map(|o| o.ttfb.map(ms)).collect();
            let (re, rt) = if *s == Sys::Gateway {
                ("".into(), "".into())
            } else {
                (
                    ratio(g_e, e2e(runs, size)),
                    ratio(g_t, transfer(runs, size)),
                )
            };
            let _ = writeln!(
                w,
                "| {} | {} | {} | {} | {}/{} | {} | {} |",
                s.name(wj),
                fmt_mbps(e2e(runs, size)),
                fmt_mbps(transfer(runs, size)),
                fmt_ms(pct(&fbs, 50.0)),
                runs.iter().filter(|o| o.ok(Some(size))).count(),
                runs.len(),
                re,
                rt
            );
        }
        let _ = writeln!(w);
        let _ = writeln!(
            w,
            "CPU seconds per run (mean over the runs; `/proc/PID/stat` utime + stime, a process's reaped children included), against the run's wall time. *bench process* = the measuring client and the fixture server (one process); on 2 cores, *CPU / wall* near 2 means the path is CPU-bound.\n"
        );
        let _ = writeln!(
            w,
            "| system | wall | gateway (or old service) | sidecar | sidecar's children | bench process | curl / yt-dlp | total CPU | CPU / wall | CPU s per GB |\n|---|---|---|---|---|---|---|---|---|---|"
        );
        let f = |x: f64| format!("{x:.2} s");
        for (s, cpus) in &n.ceiling_cpu {
            let k = cpus.len().max(1) as f64;
            let mean = |g: &dyn Fn(&RunCpu) -> f64| cpus.iter().map(g).sum::<f64>() / k;
            let runs = &n.ceiling[s];
            let wall = runs.iter().map(|o| o.elapsed.as_secs_f64()).sum::<f64>() / k;
            let bytes = runs.iter().map(|o| o.bytes as f64).sum::<f64>() / k;
            let (root, side, jobs) = (
                mean(&|c| c.server.map_or(0.0, |t| t.root)),
                mean(&|c| c.server.map_or(0.0, |t| t.sidecar)),
                mean(&|c| c.server.map_or(0.0, |t| t.jobs)),
            );
            let has_server = cpus.iter().any(|c| c.server.is_some());
            let (bench, child) = (mean(&|c| c.bench), mean(&|c| c.child));
            let total = root + side + jobs + bench + child;
            let _ = writeln!(
                w,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {:.2} | {} |",
                s.name(wj),
                f(wall),
                if has_server { f(root) } else { "–".into() },
                if *s == Sys::Gateway {
                    f(side)
                } else {
                    "–".into()
                },
                if *s == Sys::Gateway {
                    f(jobs)
                } else {
                    "–".into()
                },
                f(bench),
                if matches!(s, Sys::Curl | Sys::Direct) {
                    f(child)
                } else {
                    "–".into()
                },
                f(total),
                if wall > 0.0 { total / wall } else { 0.0 },
                if bytes > 0.0 {
                    f(total / (bytes / 1e9))
                } else {
                    "–".into()
                }
            );
        }
        let _ = writeln!(w);
    }
    md
}

fn statuses(m: &BTreeMap<u16, usize>) -> String {
    m.iter()
        .map(|(s, k)| {
            if *s == 0 {
                format!("no answer×{k}")
            } else {
                format!("{s}×{k}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}
