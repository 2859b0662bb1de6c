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
    /// Further arguments, verbatim.
    pub extra: Vec<String>,
}

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
            .arg(yt_dlp())
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

    /// Every live (or zombie) process below the sidecar: its jobs' yt-dlp and ffmpeg.
    pub fn job_processes(&self) -> Vec<ProcInfo> {
        descendants(self.pid())
    }

    /// Everything the sidecar logged so far (for assertion messages).
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The sidecar's resident memory in KiB, from `/proc/PID/status`.
    pub fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }
}
