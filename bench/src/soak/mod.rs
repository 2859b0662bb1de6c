//! `streamgate-bench soak [--secs N]`: `--concurrency` clients (64) send a mix of requests
//! (streams, ranges, HLS, DASH merged by ffmpeg, resolves, bad and expired tokens, aborts,
//! slow readers within and past the idle-write timeout) to one gateway + sidecar on
//! loopback for N seconds, while the gateway's, the sidecar's and the jobs' PSS and open
//! descriptors are sampled. Writes a Markdown report and a PNG plot, and exits non-zero on
//! any unexpected outcome (a 5xx above all), on growth, or on anything left behind once the
//! load stops. `scripts/soak [SECONDS]` runs it; bench/README.md#soak.

mod load;
mod plot;
mod report;
mod sample;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;

use crate::fixtures;
use crate::systems::Gateway;
use load::{Load, Tokens};
use sample::Sample;

/// How long a quiet gateway may take to drop what the load left (jobs, connections) before
/// the run counts it as a leak: far above the idle-write timeout and a cancelled job's kill.
const SETTLE: Duration = Duration::from_secs(20);

#[derive(Parser, Debug, Clone)]
#[command(about = "Mixed load for a while; PSS and descriptors over time; fails on 5xx or growth")]
pub struct SoakArgs {
    /// Seconds of load (after the warm-up requests).
    #[arg(long, default_value_t = 600)]
    pub secs: u64,
    /// Clients at once, each sending one request after another.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Seed of the request mix (default: from the clock); printed and reported.
    #[arg(long)]
    pub seed: Option<u64>,
    /// `[server] idle_write_timeout_secs` of the soak's gateway: slow readers stall past it.
    #[arg(long, default_value_t = 4)]
    pub idle_write_secs: u64,
    /// The gateway binary (it finds its sidecar next to itself).
    #[arg(long, default_value = "target/release/streamgate")]
    pub gateway: PathBuf,
    /// yt-dlp for the sidecar.
    #[arg(long, default_value = ".venv/bin/yt-dlp")]
    pub yt_dlp: PathBuf,
    /// Scratch folder: fixtures, config, state, logs.
    #[arg(long, default_value = "target/soak")]
    pub work: PathBuf,
    /// The report (Markdown); the plot is written beside it with `.png`.
    /// Default: `<work>/soak-<date>.md`.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// The soak's gateway: one tenant that may fetch loopback fixtures; job slots and queue
/// large enough for every client at once (a `busy` 503 would be the soak's own doing), a
/// short idle-write timeout so the stalling readers are cut within the run, and plugin
/// calls given 500 ms instead of 50: on a shared 2-core machine (load average 17–20 during
/// the first 10-minute run) CPU starvation alone made 2 of 33,000 calls miss 50 ms (503);
/// the deadline itself is the plugin tests' subject, leaks and growth are this one's.
const CONFIG: &str = r#"
default_tenant = "soak"
[server]
idle_write_timeout_secs = {idle}
[plugins]
deadline_ms = 500
[sidecar]
max_jobs = 16
args = ["--queue=256"]
[[tenant]]
id = "soak"
token = { builtin = "token-xchacha", config = { keys = "{keys}" } }
policy = { builtin = "policy-allowlist", config = { hosts = "*", allow_private = "true", resolve_clients = "127.0.0.0/8" } }
egress = { allow_private = true, any_port = true }
"#;

/// Everything a report needs from one run.
pub struct Run {
    pub args: SoakArgs,
    pub seed: u64,
    pub started: String,
    pub load_before: String,
    pub load_after: String,
    pub baseline: Sample,
    pub samples: Vec<Sample>,
    pub after: Sample,
    pub outcomes: load::Tally,
    pub verdict: Verdict,
    pub gateway_log: PathBuf,
}

/// Entry point of `streamgate-bench soak …` (arguments after `soak`).
pub async fn main(argv: impl Iterator<Item = String>) -> anyhow::Result<()> {
    let mut args = SoakArgs::parse_from(argv);
    for p in [&mut args.gateway, &mut args.yt_dlp] {
        *p = std::path::absolute(&*p)?;
    }
    let repo = std::env::current_dir()?;
    if !repo.join("bench").is_dir() {
        bail!("run from the repository root (scripts/soak does)");
    }
    let work = repo.join(&args.work);
    std::fs::create_dir_all(&work)?;
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    eprintln!("soak: seed {seed} (--seed {seed} repeats the mix)");
    let (date, time) = crate::stats::utc_now();
    let load_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();

    // Small files for the many requests; a longer one for the readers that stall, so what
    // they leave unread is more than every socket buffer on the way can hold.
    let fx_root = work.join("fixtures");
    let small = fixtures::ensure(&repo, &fx_root, 4)?;
    let long = fixtures::ensure(&repo, &fx_root, 60)?;
    let base = format!("http://{}", fixtures::serve(fx_root)?);

    let gw = start_gateway(&args, &work).await?;
    eprintln!("soak: gateway up on {} (pid {})", gw.base, gw.pid());
    let tokens = Tokens::mint(&gw, &base, &small, &long).await?;
    let load = Arc::new(Load::new(
        gw.base.clone(),
        base,
        tokens,
        &small,
        &long,
        &args,
    ));

    // Warm-up: each kind once, one after another (plugins compiled, pool started, the
    // cached URLs extracted); the baseline is taken once that has settled.
    load.warm_up(seed).await;
    settle(&gw, Duration::from_secs(3)).await;
    let baseline = Sample::take(&gw, Duration::ZERO, &load.tally_now());
    eprintln!("soak: baseline {}", baseline.describe());

    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.secs);
    let interval = sample_interval(args.secs);
    let workers: Vec<_> = (0..args.concurrency)
        .map(|i| {
            let load = load.clone();
            tokio::spawn(async move { load.worker(seed.wrapping_add(i as u64), deadline).await })
        })
        .collect();
    let mut samples = Vec::new();
    let mut next = started + interval;
    while Instant::now() < deadline {
        tokio::time::sleep_until(next.into()).await;
        next += interval;
        let s = Sample::take(&gw, started.elapsed(), &load.tally_now());
        eprintln!("soak: {}", s.describe());
        samples.push(s);
    }
    for w in workers {
        // Every request has a timeout of its own; a worker ends with its last request.
        w.await.context("a soak worker panicked")?;
    }
    // Quiet again: what stays now is what the load leaked.
    let left = settle(&gw, SETTLE).await;
    let after = Sample::take(&gw, started.elapsed(), &load.tally_now());
    eprintln!("soak: after {}", after.describe());
    let outcomes = load.tally_now();
    let verdict = Verdict::judge(&args, &baseline, &samples, &after, &outcomes, left);
    let load_after = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let gateway_log = gw.log.clone();
    gw.shutdown().await;

    let run = Run {
        args: args.clone(),
        seed,
        started: format!("{date} {time} UTC"),
        load_before,
        load_after,
        baseline,
        samples,
        after,
        outcomes,
        verdict,
        gateway_log,
    };
    let md_path = args
        .out
        .clone()
        .map(|p| repo.join(p))
        .unwrap_or_else(|| work.join(format!("soak-{date}.md")));
    let png_path = md_path.with_extension("png");
    if let Some(dir) = md_path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    plot::draw(&run, &png_path).context("drawing the plot")?;
    let md = report::render(&run, &png_path);
    std::fs::write(&md_path, &md)?;
    println!("{md}");
    eprintln!(
        "soak: wrote {} and {}",
        md_path.display(),
        png_path.display()
    );
    if !run.verdict.failures.is_empty() {
        bail!("soak failed:\n- {}", run.verdict.failures.join("\n- "));
    }
    Ok(())
}

async fn start_gateway(args: &SoakArgs, work: &Path) -> anyhow::Result<Gateway> {
    let keys = tokio::process::Command::new(&args.gateway)
        .arg("keygen")
        .output()
        .await
        .context("streamgate keygen")?;
    let keys = String::from_utf8(keys.stdout)?.trim().to_owned();
    let config = work.join("soak-config.toml");
    std::fs::write(
        &config,
        CONFIG
            .replace("{idle}", &args.idle_write_secs.to_string())
            .replace("{keys}", &keys),
    )?;
    let state = work.join("state");
    let _ = std::fs::remove_dir_all(&state);
    let extra = ["--yt-dlp".to_owned(), args.yt_dlp.display().to_string()];
    Gateway::start(
        &args.gateway,
        &state,
        Some(&config),
        &extra,
        &work.join("gateway.log"),
    )
    .await
}

/// A sample every `secs / 120` seconds (5 s for 10 minutes), at least one a second.
fn sample_interval(secs: u64) -> Duration {
    Duration::from_secs((secs / 120).max(1))
}

/// Waits until the sidecar has no job process left, up to `limit`; the jobs still there.
async fn settle(gw: &Gateway, limit: Duration) -> usize {
    let end = Instant::now() + limit;
    loop {
        let jobs = sample::job_processes(gw.pid()).len();
        if jobs == 0 || Instant::now() >= end {
            return jobs;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Growth is judged on the gateway and the sidecar processes themselves (the jobs come and
/// go with the load): the median of the last tenth of the run against the median of the
/// second tenth (the first is warm-up: allocator arenas, pools and caches fill).
pub struct Verdict {
    pub failures: Vec<String>,
    /// (what, first window's median, last window's median, allowed) for the report.
    pub growth: Vec<(String, f64, f64, f64)>,
}

/// PSS may grow this much (KiB) plus this fraction between the two windows: allocator
/// arenas settle for minutes under 64 clients, and the extraction cache fills up to its
/// bounds (`--cache-entries`); a leak of one buffer per request is far above it in 10 min.
const PSS_SLACK_KIB: f64 = 8192.0;
const PSS_SLACK_FRACTION: f64 = 0.25;
/// Share of stalled readers that may get the whole body (their stream had no byte waiting
/// for them for a whole idle-write timeout: the sidecar was slower than the stall); 15 of
/// 2,063 (0.7 %) in the first 10-minute run at load average 20.
const STALL_NOT_CUT_MAX: f64 = 0.05;
/// Descriptors may differ by this many per client between the windows' medians: what is
/// open at a sampling instant follows what is in flight (a merge holds a socket and three
/// pipes in the sidecar, a stall its sockets for 11 s), and the first 10-minute run saw
/// the sidecar's median move by 80 at 64 clients with none left once quiet. A leak of one
/// descriptor per hundred requests is ≈ 260 in 10 minutes.
const FD_SLACK_PER_CLIENT: f64 = 2.0;
/// Once quiet, descriptors of each process may exceed the baseline by this many: pooled
/// keep-alive connections to the fixture origin and the warm pool's pipes are reopened
/// lazily, so a few more or fewer than at the baseline instant is not a leak.
const FD_AFTER_SLACK: usize = 8;

impl Verdict {
    fn judge(
        args: &SoakArgs,
        baseline: &Sample,
        samples: &[Sample],
        after: &Sample,
        outcomes: &load::Tally,
        jobs_left: usize,
    ) -> Verdict {
        let mut failures = Vec::new();
        for (kind, class, n) in outcomes.unexpected() {
            failures.push(format!("{n} × {kind}: {class}"));
        }
        // Most stalled readers must be cut: the idle-write timeout is what they test.
        let cut = outcomes.count(load::Kind::Stall, "cut after the stall");
        let not_cut = outcomes.count(load::Kind::Stall, load::NOT_CUT);
        if (not_cut as f64) > (cut + not_cut) as f64 * STALL_NOT_CUT_MAX {
            failures.push(format!(
                "stalled readers: {not_cut} not cut against {cut} cut (at most {:.0} % allowed)",
                STALL_NOT_CUT_MAX * 100.0
            ));
        }
        if jobs_left > 0 {
            failures.push(format!(
                "{jobs_left} job process(es) still running {} s after the load",
                SETTLE.as_secs()
            ));
        }
        for (what, base, now) in [
            ("gateway fds", baseline.gateway_fds, after.gateway_fds),
            ("sidecar fds", baseline.sidecar_fds, after.sidecar_fds),
        ] {
            if now > base + FD_AFTER_SLACK {
                failures.push(format!(
                    "{what} once quiet: {now}, baseline {base} (+{FD_AFTER_SLACK} allowed)"
                ));
            }
        }
        let secs = args.secs as f64;
        let window = |from: f64, to: f64| -> Vec<&Sample> {
            samples
                .iter()
                .filter(|s| {
                    let t = s.at.as_secs_f64();
                    t >= from && t <= to
                })
                .collect()
        };
        let first = window(secs * 0.1, secs * 0.2);
        let last = window(secs * 0.9, secs);
        let mut growth = Vec::new();
        if first.is_empty() || last.is_empty() {
            failures.push("too few samples to judge growth".into());
        } else {
            let metrics: [(&str, fn(&Sample) -> f64, bool); 4] = [
                ("gateway PSS KiB", |s| s.gateway_pss as f64, true),
                ("sidecar PSS KiB", |s| s.sidecar_pss as f64, true),
                ("gateway fds", |s| s.gateway_fds as f64, false),
                ("sidecar fds", |s| s.sidecar_fds as f64, false),
            ];
            for (what, get, is_pss) in metrics {
                let a = median(first.iter().map(|s| get(s)).collect());
                let b = median(last.iter().map(|s| get(s)).collect());
                let allowed = if is_pss {
                    a * (1.0 + PSS_SLACK_FRACTION) + PSS_SLACK_KIB
                } else {
                    a + FD_SLACK_PER_CLIENT * args.concurrency as f64
                };
                if b > allowed {
                    failures.push(format!(
                        "{what} grew: median {b:.0} in the last tenth, {a:.0} in the second (≤ {allowed:.0} allowed)"
                    ));
                }
                growth.push((what.to_owned(), a, b, allowed));
            }
        }
        Verdict { failures, growth }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
