//! `streamgate-bench`: streamgate, the old service (seed-fastapi) and direct `yt-dlp -o -`
//! measured side by side in one run; writes `bench/results/<date>.md`. See bench/README.md.
//! Normally run through `scripts/bench [PEER_DIR]`; `streamgate-bench soak …` is the soak
//! (`scripts/soak`, issue 13).

mod client;
mod fixtures;
mod native;
mod procs;
mod report;
mod sections;
mod soak;
mod stats;
mod systems;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;

use crate::systems::{Direct, Gateway, Peer, Systems};

#[derive(Parser, Debug, Clone)]
#[command(about = "Side-by-side benchmark: gateway vs old service vs direct yt-dlp")]
pub struct Args {
    /// The old service's folder (seed-fastapi); its section rows are skipped when absent.
    #[arg(long)]
    pub peer_dir: Option<PathBuf>,
    /// Python with the peer's requirements installed (scripts/bench makes target/bench-venv).
    #[arg(long, default_value = "target/bench-venv/bin/python")]
    pub peer_python: PathBuf,
    /// yt-dlp for the direct ceiling (the same one the sidecar runs).
    #[arg(long, default_value = ".venv/bin/yt-dlp")]
    pub yt_dlp: PathBuf,
    /// The gateway binary (it finds its sidecar next to itself).
    #[arg(long, default_value = "target/release/streamgate")]
    pub gateway: PathBuf,
    /// Extra argument for `streamgate serve` (repeatable), e.g. `--gateway-arg=--max-jobs=8`.
    /// Default: none, the embedded default configuration as shipped.
    #[arg(long = "gateway-arg", allow_hyphen_values = true)]
    pub gateway_args: Vec<String>,
    /// The fake sidecar for the relay-alone row.
    #[arg(long, default_value = "target/release/streamgate-bench-fake-sidecar")]
    pub fake_sidecar: PathBuf,
    /// Sections to run, comma-separated:
    /// ttfb,throughput,concurrency,memory,relay,plugin and issue 10's pss,firstbyte,ceiling.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "ttfb,throughput,concurrency,memory,relay,plugin,pss,firstbyte,ceiling"
    )]
    pub sections: Vec<String>,
    /// Systems to run, comma-separated: gateway,peer,direct.
    #[arg(long, value_delimiter = ',', default_value = "gateway,peer,direct")]
    pub systems: Vec<String>,
    /// Samples per first-byte figure (per system, per mode).
    #[arg(long, default_value_t = 20)]
    pub samples: usize,
    /// Full transfers of the big fixture per system.
    #[arg(long, default_value_t = 3)]
    pub throughput_runs: usize,
    /// Length of the small fixture (10 s ≈ 5 MB).
    #[arg(long, default_value_t = 10)]
    pub small_secs: u32,
    /// Length of the big fixture (400 s ≈ 210 MB).
    #[arg(long, default_value_t = 400)]
    pub big_secs: u32,
    /// Concurrency levels (streams of the small fixture, all started at once).
    #[arg(long, value_delimiter = ',', default_value = "1,8,32,64")]
    pub concurrency: Vec<usize>,
    /// URLs for concurrent streams: `distinct` (one new URL per stream: no cache can help),
    /// `same` (every stream asks for one already-fetched URL), or `both`.
    #[arg(long, default_value = "distinct")]
    pub concurrency_urls: String,
    /// Streams held open (each stalled after its first MiB) for the memory figures.
    #[arg(long, default_value_t = 32)]
    pub memory_streams: usize,
    /// MiB the fake sidecar sends per relay stream.
    #[arg(long, default_value_t = 4096)]
    pub relay_mib: u64,
    /// Concurrent streams in the second relay row.
    #[arg(long, default_value_t = 8)]
    pub relay_streams: usize,
    /// Data payload per frame sent by the fake sidecar, in KiB (256 = the protocol's maximum,
    /// what the real sidecar sends when yt-dlp is fast).
    #[arg(long, default_value_t = 256)]
    pub relay_frame_kib: usize,
    /// Relay streams held open (stalled after their first MiB) to weigh the gateway's
    /// memory per stream without the sidecar's job limit in the way.
    #[arg(long, default_value_t = 64)]
    pub relay_hold: usize,
    /// Gateway config for the relay row; `{socket}` is replaced by the fake sidecar's socket.
    /// Default: bench/relay-config.toml.
    #[arg(long)]
    pub relay_config: Option<PathBuf>,
    /// `pss`: stalled single-file streams held open while the trees' PSS is read.
    #[arg(long, default_value_t = 64)]
    pub pss_streams: usize,
    /// `firstbyte`: numbers of concurrent clients.
    #[arg(long, value_delimiter = ',', default_value = "1,32,256")]
    pub fb_levels: Vec<usize>,
    /// `firstbyte`: the old service runs the levels up to this one.
    #[arg(long, default_value_t = 256)]
    pub fb_peer_max: usize,
    /// `firstbyte`: direct yt-dlp runs the levels up to this one (one Python per stream).
    #[arg(long, default_value_t = 32)]
    pub fb_direct_max: usize,
    /// `ceiling`: runs per system of one stream of the big fixture.
    #[arg(long, default_value_t = 3)]
    pub ceiling_runs: usize,
    /// Requests per probe in the plugin-overhead section.
    #[arg(long, default_value_t = 300)]
    pub plugin_samples: usize,
    /// A short run (≈1–2 min): few samples, small fixtures, n ≤ 8.
    #[arg(long)]
    pub quick: bool,
    /// Where to write the results (default bench/results/<date>.md; `-` for stdout only).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Scratch folder for fixtures, state dirs and logs.
    #[arg(long, default_value = "target/bench")]
    pub work: PathBuf,
}

impl Args {
    fn apply_quick(&mut self) {
        if self.quick {
            self.samples = self.samples.min(5);
            self.throughput_runs = 1;
            self.big_secs = self.big_secs.min(60);
            self.concurrency.retain(|&n| n <= 8);
            self.concurrency_urls = "distinct".into();
            self.memory_streams = self.memory_streams.min(8);
            self.relay_mib = self.relay_mib.min(1024);
            self.relay_hold = self.relay_hold.min(16);
            self.plugin_samples = self.plugin_samples.min(50);
            self.pss_streams = self.pss_streams.min(16);
            self.fb_levels.retain(|&n| n <= 32);
            self.ceiling_runs = 1;
        }
    }
    pub fn has(&self, section: &str) -> bool {
        self.sections.iter().any(|s| s == section)
    }
}

/// What the whole run shares.
pub struct Ctx {
    pub args: Args,
    pub repo: PathBuf,
    pub work: PathBuf,
    pub fixture_base: String,
    pub small: fixtures::Fixture,
    pub big: fixtures::Fixture,
    pub systems: Arc<Systems>,
    /// Unique per run, so "new" URLs are new even across runs of a long-lived sidecar.
    pub run_id: String,
    /// Notes gathered along the way (skipped rows, start-up problems).
    pub notes: std::sync::Mutex<Vec<String>>,
}

impl Ctx {
    pub fn note(&self, s: impl Into<String>) {
        let s = s.into();
        eprintln!("bench: note: {s}");
        self.notes.lock().unwrap().push(s);
    }
    pub fn small_url(&self, query: &str) -> String {
        format!(
            "{}/{}s/progressive.mp4?{query}-{}",
            self.fixture_base, self.small.secs, self.run_id
        )
    }
    pub fn big_url(&self, query: &str) -> String {
        format!(
            "{}/{}s/progressive.mp4?{query}-{}",
            self.fixture_base, self.big.secs, self.run_id
        )
    }
}

fn main() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut argv = std::env::args();
    if std::env::args().nth(1).as_deref() == Some("soak") {
        let bin = argv.next().unwrap_or_default();
        return rt.block_on(soak::main(std::iter::once(bin).chain(argv.skip(1))));
    }
    rt.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let mut args = Args::parse();
    args.apply_quick();
    // Absolute paths: the peer runs in its own folder, and a relative program path with a
    // slash would be looked up from there.
    for p in [
        &mut args.peer_python,
        &mut args.yt_dlp,
        &mut args.gateway,
        &mut args.fake_sidecar,
    ] {
        *p = std::path::absolute(&*p)?;
    }
    let t0 = Instant::now();
    let repo = std::env::current_dir()?;
    if !repo.join("Cargo.toml").exists() || !repo.join("bench").is_dir() {
        bail!("run from the repository root (scripts/bench does)");
    }
    let work = repo.join(&args.work);
    std::fs::create_dir_all(work.join("logs"))?;
    let (date, time) = stats::utc_now();
    let run_id = format!("{}{}", date.replace('-', ""), time.replace(':', ""));
    let load_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();

    // Fixtures, generated once into target/bench/fixtures and reused across runs.
    let fx_root = work.join("fixtures");
    let small = fixtures::ensure(&repo, &fx_root, args.small_secs)?;
    let big = fixtures::ensure(&repo, &fx_root, args.big_secs)?;
    let fx_addr = fixtures::serve(fx_root.clone())?;
    let fixture_base = format!("http://{fx_addr}");
    eprintln!(
        "bench: fixtures {} ({} bytes), {} ({} bytes) on {fixture_base}",
        small.path.display(),
        small.size,
        big.path.display(),
        big.size
    );

    let want = |s: &str| args.systems.iter().any(|x| x == s);
    let mut notes = Vec::new();

    // The gateway with its own sidecar, on its embedded default config.
    let mut gateway = None;
    if want("gateway") {
        let state = work.join("gateway-state");
        let _ = std::fs::remove_dir_all(&state);
        if !args.gateway.exists() {
            notes.push(format!(
                "gateway skipped: {} does not exist",
                args.gateway.display()
            ));
        } else {
            match Gateway::start(
                &args.gateway,
                &state,
                None,
                &args.gateway_args,
                &work.join("logs/gateway.log"),
            )
            .await
            {
                Ok(g) => {
                    eprintln!(
                        "bench: gateway up on {} (ready after {:?})",
                        g.base, g.ready_after
                    );
                    gateway = Some(g)
                }
                Err(e) => notes.push(format!("gateway skipped: could not start: {e:#}")),
            }
        }
    }
    // The old service.
    let mut peer = None;
    if want("peer") {
        match &args.peer_dir {
            Some(d) if d.join("main.py").exists() => {
                if !args.peer_python.exists() {
                    notes.push(format!(
                        "peer skipped: {} missing (scripts/bench creates it)",
                        args.peer_python.display()
                    ));
                } else {
                    match Peer::start(d, &args.peer_python, &work.join("logs/peer.log")).await {
                        Ok(p) => {
                            eprintln!("bench: peer up on {}", p.base);
                            peer = Some(p)
                        }
                        Err(e) => notes.push(format!("peer skipped: could not start: {e:#}")),
                    }
                }
            }
            Some(d) => notes.push(format!("peer skipped: no main.py in {}", d.display())),
            None => notes.push("peer skipped: no peer folder given".into()),
        }
    }
    let direct = if want("direct") {
        if args.yt_dlp.exists() {
            Some(Direct {
                yt_dlp: args.yt_dlp.clone(),
            })
        } else {
            notes.push(format!(
                "direct skipped: {} does not exist",
                args.yt_dlp.display()
            ));
            None
        }
    } else {
        None
    };

    let ctx = Ctx {
        args: args.clone(),
        repo: repo.clone(),
        work,
        fixture_base,
        small,
        big,
        systems: Arc::new(Systems {
            gateway,
            peer,
            direct,
        }),
        run_id,
        notes: std::sync::Mutex::new(Vec::new()),
    };
    for n in notes {
        ctx.note(n);
    }

    let mut res = sections::Results::default();
    // Warm every system once (imports, page cache, plugin compilation): not measured.
    for k in ctx.systems.kinds() {
        let url = ctx.small_url("warmup");
        match ctx.systems.prepare(k, &url).await {
            Ok(p) => {
                let o = ctx
                    .systems
                    .fetch(k, &p, None, Duration::from_secs(120))
                    .await;
                if !o.ok(Some(ctx.small.size)) {
                    ctx.note(format!(
                        "{} warm-up request failed: {}",
                        k.name(),
                        o.describe_failure(Some(ctx.small.size))
                    ));
                }
            }
            Err(e) => ctx.note(format!("{} warm-up: {e:#}", k.name())),
        }
    }
    let sections_started = Instant::now();
    if args.has("ttfb") {
        sections::ttfb(&ctx, &mut res)
            .await
            .context("first-byte section")?;
    }
    if args.has("throughput") {
        sections::throughput(&ctx, &mut res)
            .await
            .context("throughput section")?;
    }
    if args.has("concurrency") {
        sections::concurrency(&ctx, &mut res)
            .await
            .context("concurrency section")?;
    }
    if args.has("memory") {
        sections::memory(&ctx, &mut res)
            .await
            .context("memory section")?;
    }
    if args.has("plugin") {
        sections::plugin(&ctx, &mut res)
            .await
            .context("plugin section")?;
    }
    let mut native_res = native::NativeResults::default();
    native::run(&ctx, &mut native_res)
        .await
        .context("issue 10 sections")?;
    // Stop the real gateway before the relay row so it runs with the machine to itself.
    let systems = Arc::try_unwrap(ctx.systems)
        .ok()
        .context("systems still shared")?;
    let gateway_log = systems.gateway.as_ref().map(|g| g.log.clone());
    if let Some(g) = systems.gateway {
        g.shutdown().await;
    }
    if let Some(p) = systems.peer {
        p.shutdown().await;
    }
    let ctx = Ctx {
        systems: Arc::new(Systems {
            gateway: None,
            peer: None,
            direct: None,
        }),
        ..ctx
    };
    if args.has("relay") {
        sections::relay(&ctx, &mut res)
            .await
            .context("relay section")?;
    }
    let load_after = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();

    let md = report::render(
        &ctx,
        &res,
        &native_res,
        &report::RunFacts {
            date: date.clone(),
            time,
            load_before,
            load_after,
            wall: t0.elapsed(),
            sections_wall: sections_started.elapsed(),
            gateway_log,
        },
    );
    match args.out.as_deref() {
        Some(p) if p.as_os_str() == "-" => println!("{md}"),
        other => {
            let path = other
                .map(PathBuf::from)
                .unwrap_or_else(|| repo.join(format!("bench/results/{date}.md")));
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&path, &md)?;
            println!("{md}");
            eprintln!("bench: wrote {} in {:.0?}", path.display(), t0.elapsed());
        }
    }
    Ok(())
}
