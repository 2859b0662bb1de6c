//! `streamgate-sidecar`: runs yt-dlp jobs for the gateway over a Unix socket.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use streamgate_protocol::logline::OneLine;
use streamgate_sidecar::{
    CacheLimits, Config, Confinement, JobUser, Netns, Server, default_yt_dlp,
};

/// Runs yt-dlp jobs for the gateway over a Unix socket (docs/protocol.md).
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Unix socket to listen on (mode 0600, or 0660 with --socket-group).
    #[arg(long, env = "STREAMGATE_SIDECAR_SOCKET")]
    socket: PathBuf,
    /// Group allowed to connect besides the owner.
    #[arg(long)]
    socket_group: Option<String>,
    /// Uid allowed to connect besides the sidecar's own (repeatable): every connection's
    /// peer credentials are checked, whatever the socket's mode lets through.
    #[arg(long = "allow-uid", value_name = "UID")]
    allow_uid: Vec<u32>,
    /// Streams open at once, whatever moves their bytes. A stream the sidecar moves itself
    /// costs memory and sockets only (well under 1 MiB), so the cap is large.
    #[arg(long, default_value_t = 1024)]
    max_streams: usize,
    /// yt-dlp extractions running at once (default: 4 × the number of cores). Each is a
    /// Python worker (≈ 20 ms of CPU with the warm pool) that also waits for its page and
    /// its fork: at cores + 1 the cores idled while a burst queued (32 streams on 2 cores:
    /// first byte p50 0.29× the old service's at 3, 0.21× at 8, bench/results/
    /// 2026-12-02-issue10-firstbyte.md); the others wait in the queue, in order.
    #[arg(long)]
    max_extractions: Option<usize>,
    /// yt-dlp downloads and ffmpeg merges running at once: the formats the sidecar does not
    /// fetch itself keep a yt-dlp (≈30 MB) for their length, merges an ffmpeg.
    #[arg(long, default_value_t = 32)]
    max_jobs: usize,
    /// Percent of the stream slots and of the download and merge slots one tenant may hold
    /// (rounded up): below 100, no tenant's stalled or slow clients can hold them all. Jobs
    /// without a tenant count as one tenant.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u8).range(1..=100))]
    tenant_share: u8,
    /// Jobs that may wait for a slot of each kind (stream, extraction, download or merge);
    /// more get `busy`. When it is full, a tenant below its --tenant-share of these places
    /// takes the newest place of a tenant above it.
    #[arg(long, default_value_t = 1024)]
    queue: usize,
    /// Seconds a queued job waits for a slot before it gets `busy`. A burst outlasts 30 s:
    /// 64 extractions on 2 slots of a loaded 2-core machine took 9 s, 256 on 3 take about
    /// 25 s; the gateway waits 120 s for a job's metadata.
    #[arg(long, default_value_t = 60.0)]
    queue_timeout: f64,
    /// Seconds without a byte from yt-dlp after which a job ends with `timeout`.
    #[arg(long, default_value_t = 30.0)]
    stall_timeout: f64,
    /// On SIGTERM, seconds running jobs may go on before they are killed.
    #[arg(long, default_value_t = 30.0)]
    drain_timeout: f64,
    /// yt-dlp executable (default: <repo>/.venv/bin/yt-dlp, else yt-dlp on PATH).
    #[arg(long)]
    yt_dlp: Option<PathBuf>,
    /// ffmpeg executable or its directory, passed as --ffmpeg-location.
    #[arg(long)]
    ffmpeg: Option<PathBuf>,
    /// Empty private directory used as the jobs' cwd/HOME/TMPDIR (default: a fresh temp dir).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Environment variable passed through to yt-dlp (repeatable), e.g. HTTPS_PROXY.
    #[arg(long = "pass-env", value_name = "NAME")]
    pass_env: Vec<String>,
    /// No warm pool: spawn a fresh yt-dlp per job (slower first byte, ~0.5 s).
    #[arg(long)]
    no_pool: bool,
    /// Idle pre-forked pool workers waiting for a job (default: --max-extractions, so that
    /// a burst finds a worker per extraction slot instead of waiting for forks).
    #[arg(long)]
    pool_idle: Option<usize>,
    /// Address space of each job process (yt-dlp, ffmpeg), MiB. A pool worker starts from
    /// the forkserver's ≈ 80 MiB; an extraction or a merge stays well under 1 GiB.
    #[arg(long, default_value_t = 2048, value_parser = clap::value_parser!(u64).range(16..=1 << 24))]
    job_memory_mib: u64,
    /// CPU seconds of each job process: a yt-dlp relaying a long download, or ffmpeg
    /// merging one, uses a few percent of a core.
    #[arg(long, default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..))]
    job_cpu_secs: u64,
    /// Open descriptors of each job process.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(16..))]
    job_open_files: u64,
    /// Run every job process (yt-dlp, ffmpeg) as this user, not as the sidecar's: NAME or
    /// UID (group: its primary one), NAME:GROUP or UID:GID; no supplementary groups, never
    /// root. Needs a sidecar running as real root (it keeps root for the namespaces; each
    /// job drops it). At start, yt-dlp --version runs as this user: the sidecar refuses to
    /// start when the user cannot run yt-dlp or its interpreter (e.g. under a 0700 home).
    #[arg(long, value_name = "USER[:GROUP]")]
    job_user: Option<JobUser>,
    /// Seconds a resolve's info is reused by streams of the same URL; 0 disables.
    #[arg(long, default_value_t = 60.0)]
    cache_ttl: f64,
    /// Most cached extractions.
    #[arg(long, default_value_t = 256)]
    cache_entries: usize,
    /// Most bytes of cached info JSON.
    #[arg(long, default_value_t = 64 * 1024 * 1024)]
    cache_bytes: usize,
    /// Log as JSON lines instead of text.
    #[arg(long)]
    log_json: bool,
    /// Refuse to start unless every job can run in a network namespace of its own (root, or
    /// a kernel allowing unprivileged user namespaces); otherwise a job that ignores its
    /// proxy setting is not stopped.
    #[arg(long, conflicts_with = "no_netns")]
    require_netns: bool,
    /// Never run jobs in network namespaces of their own (proxy mode: a job that ignores
    /// its proxy setting is not stopped). For hosts that confine the sidecar otherwise.
    #[arg(long)]
    no_netns: bool,
}

fn secs(name: &str, value: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(value)
        .with_context(|| format!("--{name} must be a non-negative number"))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Before any thread exists: a user namespace can only be entered single-threaded.
    // (Not with --socket-group, --allow-uid or --job-user: that group or uid would not be
    // mapped into the namespace, and every unmapped peer would show as the same overflow
    // uid; a job could not switch to it.)
    let userns = match (&args.socket_group, args.allow_uid.is_empty(), args.no_netns) {
        _ if args.job_user.is_some() => Err(std::io::Error::other("--job-user is set")),
        (None, true, false) => streamgate_sidecar::enter_user_namespace(),
        (Some(_), _, _) => Err(std::io::Error::other("--socket-group is set")),
        (_, false, _) => Err(std::io::Error::other("--allow-uid is set")),
        (_, _, true) => Err(std::io::Error::other("--no-netns")),
    };
    tokio::runtime::Runtime::new()
        .context("starting the async runtime")?
        .block_on(serve(args, userns))
}

async fn serve(args: Args, userns: std::io::Result<()>) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: the gateway's log file gets plain lines, escaped like the
    // gateway's own (one format in one file).
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| OneLine(std::io::stderr()))
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if args.log_json {
        logs.json().init();
    } else {
        logs.init();
    }
    if let Err(e) = userns {
        tracing::debug!("no user namespace (network namespaces need root then): {e}");
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let max_extractions = args.max_extractions.unwrap_or(4 * cores);
    for (flag, n) in [
        ("--max-streams", args.max_streams),
        ("--max-extractions", max_extractions),
        ("--max-jobs", args.max_jobs),
    ] {
        anyhow::ensure!(n > 0, "{flag} must be at least 1");
    }
    let config = Config {
        socket: args.socket,
        socket_group: args.socket_group,
        allow_uids: args.allow_uid,
        max_streams: args.max_streams,
        max_extractions,
        max_jobs: args.max_jobs,
        tenant_share: args.tenant_share,
        queue: args.queue,
        queue_timeout: secs("queue-timeout", args.queue_timeout)?,
        stall_timeout: secs("stall-timeout", args.stall_timeout)?,
        drain_timeout: secs("drain-timeout", args.drain_timeout)?,
        yt_dlp: args.yt_dlp.unwrap_or_else(default_yt_dlp),
        ffmpeg: args.ffmpeg,
        work_dir: args.work_dir,
        netns: match (args.require_netns, args.no_netns) {
            (true, _) => Netns::Require,
            (_, true) => Netns::Off,
            _ => Netns::Auto,
        },
        pass_env: args.pass_env,
        pool_idle: if args.no_pool {
            0
        } else {
            args.pool_idle.unwrap_or(max_extractions).max(1)
        },
        confinement: Confinement {
            address_space: args.job_memory_mib << 20,
            cpu_secs: args.job_cpu_secs,
            open_files: args.job_open_files,
            user: args.job_user,
        },
        cache: CacheLimits {
            ttl: secs("cache-ttl", args.cache_ttl)?,
            entries: args.cache_entries,
            bytes: args.cache_bytes,
        },
    };
    let server = Server::start(config)
        .await
        .context("sidecar failed to start")?;
    server.run().await;
    Ok(())
}
