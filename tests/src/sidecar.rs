//! A real `streamgate-sidecar` on a socket in a temp dir, its logs in a file, killed on drop.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::paths::{release_bin, yt_dlp};
use crate::process::{ChildGuard, ProcInfo, descendants};

/// Command-line knobs; `Default` is the sidecar's defaults with a fresh socket and work dir.
#[derive(Clone, Debug, Default)]
pub struct SidecarOptions {
    /// `--socket`; default: `sidecar.sock` in a fresh temp dir.
    pub socket: Option<PathBuf>,
    /// `--max-jobs`.
    pub max_jobs: Option<usize>,
    /// `--queue`.
    pub queue: Option<usize>,
    /// `--queue-timeout` in seconds.
    pub queue_timeout: Option<f64>,
    /// `--stall-timeout` in seconds.
    pub stall_timeout: Option<f64>,
    /// `--drain-timeout` in seconds.
    pub drain_timeout: Option<f64>,
    /// `--work-dir`; default: `work/` in the sidecar's temp dir.
    pub work_dir: Option<PathBuf>,
    /// `Some(false)`: `--no-pool` (every job spawns yt-dlp); `None`: the sidecar's default
    /// (the warm pool), unless `STREAMGATE_TEST_SIDECAR_POOL=0` says otherwise.
    pub pool: Option<bool>,
    /// `--yt-dlp`; default: the project's pinned one ([`yt_dlp`]).
    pub yt_dlp: Option<PathBuf>,
    /// Further arguments, verbatim.
    pub extra: Vec<String>,
}

/// Comm names of the warm pool's own processes (`sidecar/python/forkserver.py`): always
/// there, not jobs.
pub const POOL_COMMS: &[&str] = &["sg-forkserver", "sg-idle"];

/// A running sidecar.
pub struct Sidecar {
    // Declared first: dropped (killed) before the temp dir goes away.
    child: ChildGuard,
    socket: PathBuf,
    work_dir: PathBuf,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Sidecar {
    /// Starts the release binary and waits until it accepts connections.
    pub async fn start(opts: SidecarOptions) -> Sidecar {
        let dir = tempfile::tempdir().expect("sidecar temp dir");
        let socket = opts
            .socket
            .clone()
            .unwrap_or_else(|| dir.path().join("sidecar.sock"));
        let work_dir = opts
            .work_dir
            .clone()
            .unwrap_or_else(|| dir.path().join("work"));
        let log = dir.path().join("sidecar.log");
        let mut cmd = Command::new(release_bin("streamgate-sidecar"));
        cmd.arg("--socket")
            .arg(&socket)
            .arg("--yt-dlp")
            .arg(opts.yt_dlp.clone().unwrap_or_else(yt_dlp))
            .arg("--work-dir")
            .arg(&work_dir);
        let numbers = [
            ("--max-jobs", opts.max_jobs.map(|n| n.to_string())),
            ("--queue", opts.queue.map(|n| n.to_string())),
            ("--queue-timeout", opts.queue_timeout.map(|n| n.to_string())),
            ("--stall-timeout", opts.stall_timeout.map(|n| n.to_string())),
            ("--drain-timeout", opts.drain_timeout.map(|n| n.to_string())),
        ];
        for (flag, value) in numbers {
            if let Some(value) = value {
                cmd.arg(flag).arg(value);
            }
        }
        let env_pool = std::env::var("STREAMGATE_TEST_SIDECAR_POOL").map(|v| v != "0");
        if !opts.pool.or(env_pool.ok()).unwrap_or(true) {
            cmd.arg("--no-pool");
        }
        cmd.args(&opts.extra)
            .env(
                "RUST_LOG",
                std::env::var("STREAMGATE_SIDECAR_LOG").unwrap_or_else(|_| "debug".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("sidecar log file"));
        let child = ChildGuard::spawn(cmd, "streamgate-sidecar").expect("spawn streamgate-sidecar");
        let mut sidecar = Sidecar {
            child,
            socket,
            work_dir,
            log,
            _dir: dir,
        };
        sidecar.wait_ready(Duration::from_secs(90)).await;
        sidecar
    }

    async fn wait_ready(&mut self, limit: Duration) {
        let deadline = std::time::Instant::now() + limit;
        loop {
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                return;
            }
            if let Some(status) = self.child.try_wait() {
                panic!(
                    "sidecar exited ({status}) before listening:\n{}",
                    self.logs()
                );
            }
            assert!(
                std::time::Instant::now() < deadline,
                "sidecar not ready:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The jobs' private cwd/HOME/TMPDIR.
    pub fn work_dir(&self) -> &Path {
        &self.work_dir
    }

    /// The sidecar's pid.
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// Its process handle (signals, exit status).
    pub fn child(&mut self) -> &mut ChildGuard {
        &mut self.child
    }

    /// Every live (or zombie) process below the sidecar: its jobs' yt-dlp and ffmpeg (the
    /// warm pool's forkserver and idle workers are not jobs: see [`Sidecar::pool_processes`]).
    pub fn job_processes(&self) -> Vec<ProcInfo> {
        let mut all = descendants(self.pid());
        all.retain(|p| !POOL_COMMS.contains(&p.comm.as_str()));
        all
    }

    /// The warm pool's forkserver and idle workers.
    pub fn pool_processes(&self) -> Vec<ProcInfo> {
        let mut all = descendants(self.pid());
        all.retain(|p| POOL_COMMS.contains(&p.comm.as_str()));
        all
    }

    /// Everything the sidecar logged so far (for assertion messages).
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The sidecar's resident memory in KiB, from `/proc/PID/status`.
    pub fn rss_kib(&self) -> u64 {
        streamgate_testkit::procfs::status_kib(self.pid(), "VmRSS").unwrap_or(0)
    }
}

/// Each listed `async fn NAME(pool: bool)` runs twice, as `NAME::spawn` (`--no-pool`: a
/// fresh yt-dlp per job) and `NAME::pool` (warm pool workers): same bytes, same codes.
/// Needs tokio's multi-thread runtime in the test crate.
#[macro_export]
macro_rules! both_paths {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread")]
            async fn spawn() {
                super::$name(false).await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn pool() {
                super::$name(true).await
            }
        }
    )*};
}
