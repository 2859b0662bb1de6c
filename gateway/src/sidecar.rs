//! The sidecar, seen from the gateway: a client that opens one connection per job (the
//! connection is the job's lifetime, so dropping it cancels), and a supervisor that runs the
//! sidecar process and restarts it with backoff when it dies.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::SinkExt;
use streamgate_protocol::{
    Connection, Frame, FrameCodec, MediaInfo, Metadata, ProtocolError, ResolveJob, StreamJob,
    Welcome, client_handshake, next_frame,
};
use tokio::net::UnixStream;
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::codec::Framed;

use crate::error::GatewayError;

/// Name the gateway gives itself in `hello`.
const CLIENT_NAME: &str = concat!("streamgate/", env!("CARGO_PKG_VERSION"));

/// Connect + handshake must be quick: the sidecar is local, a slow one is a sick one.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection whose job has produced its metadata; the rest is data, then end or error.
pub type JobConnection = Connection<UnixStream>;

/// Opens jobs on the sidecar's socket.
#[derive(Clone, Debug)]
pub struct SidecarClient {
    socket: PathBuf,
    metadata_timeout: Duration,
}

impl SidecarClient {
    pub fn new(socket: PathBuf, metadata_timeout: Duration) -> Self {
        SidecarClient {
            socket,
            metadata_timeout,
        }
    }

    pub fn socket(&self) -> &std::path::Path {
        &self.socket
    }

    /// A fresh connection, past the handshake.
    async fn connect(&self) -> Result<(JobConnection, Welcome), GatewayError> {
        let attempt = async {
            let io = UnixStream::connect(&self.socket)
                .await
                .map_err(|e| GatewayError::SidecarUnavailable(e.to_string()))?;
            // Sized for the relay's chunks: the buffer a stream reads media into.
            let mut conn = Framed::with_capacity(io, FrameCodec::new(), crate::relay::CHUNK);
            let welcome = client_handshake(&mut conn, CLIENT_NAME).await?;
            Ok((conn, welcome))
        };
        tokio::time::timeout(CONNECT_TIMEOUT, attempt)
            .await
            .unwrap_or_else(|_| {
                Err(GatewayError::SidecarUnavailable(
                    "handshake timed out".into(),
                ))
            })
    }

    /// Whether the sidecar answers a handshake; its `Welcome` names the yt-dlp version.
    pub async fn probe(&self) -> Result<Welcome, GatewayError> {
        self.connect().await.map(|(_, welcome)| welcome)
    }

    /// Starts `job` and waits for its metadata, so the caller can still answer with a real
    /// status if the job fails early. Dropping the returned connection cancels the job.
    pub async fn start(&self, job: StreamJob) -> Result<(Metadata, JobConnection), GatewayError> {
        let (mut conn, _) = self.connect().await?;
        conn.send(Frame::Stream(job)).await?;
        let first = tokio::time::timeout(
            self.metadata_timeout,
            next_frame(&mut conn, "awaiting metadata"),
        )
        .await
        .map_err(|_| GatewayError::MetadataTimeout)?;
        match first {
            Ok(Frame::Metadata(meta)) => Ok((meta, conn)),
            Ok(Frame::Error(e)) => Err(GatewayError::Job(e)),
            Ok(other) => Err(ProtocolError::Unexpected {
                got: other.kind(),
                during: "awaiting metadata",
            }
            .into()),
            // The sidecar going away mid-job (a crash, a restart) is an outage, not a bug.
            Err(ProtocolError::Closed { .. }) => Err(GatewayError::SidecarUnavailable(
                "connection closed before metadata".into(),
            )),
            Err(e) => Err(e.into()),
        }
    }
}

impl SidecarClient {
    /// Runs a resolve job (yt-dlp's metadata, no media) under the metadata timeout.
    pub async fn resolve(&self, job: ResolveJob) -> Result<MediaInfo, GatewayError> {
        let (mut conn, _) = self.connect().await?;
        conn.send(Frame::Resolve(job)).await?;
        let answer = tokio::time::timeout(
            self.metadata_timeout,
            next_frame(&mut conn, "awaiting info"),
        )
        .await
        .map_err(|_| GatewayError::MetadataTimeout)?;
        match answer {
            Ok(Frame::Info(info)) => Ok(info),
            Ok(Frame::Error(e)) => Err(GatewayError::Job(e)),
            Ok(other) => Err(ProtocolError::Unexpected {
                got: other.kind(),
                during: "awaiting info",
            }
            .into()),
            Err(ProtocolError::Closed { .. }) => Err(GatewayError::SidecarUnavailable(
                "connection closed before info".into(),
            )),
            Err(e) => Err(e.into()),
        }
    }
}

/// How to run the sidecar process.
#[derive(Clone, Debug)]
pub struct SupervisorSettings {
    pub binary: PathBuf,
    pub socket: PathBuf,
    pub args: Vec<String>,
    /// First delay before a restart; doubled after each quick death, up to `max_backoff`.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
}

impl SupervisorSettings {
    pub fn new(binary: PathBuf, socket: PathBuf, args: Vec<String>) -> Self {
        SupervisorSettings {
            binary,
            socket,
            args,
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
        }
    }
}

/// Keeps one sidecar process alive until [`Supervisor::stop`].
pub struct Supervisor {
    stop: watch::Sender<Option<Duration>>,
    task: JoinHandle<()>,
    pid: Arc<std::sync::atomic::AtomicU32>,
}

impl Supervisor {
    pub fn start(settings: SupervisorSettings) -> Supervisor {
        let (stop, stopped) = watch::channel(None);
        let pid = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let task = tokio::spawn(supervise(settings, stopped, pid.clone()));
        Supervisor { stop, task, pid }
    }

    /// Pid of the running sidecar (0 between restarts).
    pub fn pid(&self) -> u32 {
        self.pid.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// SIGTERM to the sidecar (it drains its own jobs), SIGKILL after `grace`.
    pub async fn stop(self, grace: Duration) {
        let _ = self.stop.send(Some(grace));
        let _ = self.task.await;
    }
}

async fn supervise(
    settings: SupervisorSettings,
    mut stopped: watch::Receiver<Option<Duration>>,
    pid: Arc<std::sync::atomic::AtomicU32>,
) {
    let mut backoff = settings.min_backoff;
    loop {
        let started = Instant::now();
        match spawn(&settings) {
            Ok(mut child) => {
                let id = child.id().unwrap_or(0);
                pid.store(id, std::sync::atomic::Ordering::Relaxed);
                tracing::info!(pid = id, socket = %settings.socket.display(), "sidecar started");
                tokio::select! {
                    status = child.wait() => {
                        pid.store(0, std::sync::atomic::Ordering::Relaxed);
                        tracing::warn!(pid = id, ?status, "sidecar exited; restarting");
                    }
                    grace = stop_requested(&mut stopped) => {
                        terminate(&mut child, grace).await;
                        return;
                    }
                }
            }
            Err(e) => tracing::error!(
                binary = %settings.binary.display(), error = %e, "cannot start the sidecar"
            ),
        }
        // A sidecar that ran a while earns a quick restart; one that keeps dying backs off.
        if started.elapsed() > settings.max_backoff * 3 {
            backoff = settings.min_backoff;
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop_requested(&mut stopped) => return,
        }
        backoff = (backoff * 2).min(settings.max_backoff);
    }
}

/// Resolves with the grace period once [`Supervisor::stop`] was called (or the handle dropped).
async fn stop_requested(stopped: &mut watch::Receiver<Option<Duration>>) -> Duration {
    match stopped.wait_for(Option::is_some).await {
        Ok(grace) => grace.unwrap_or_default(),
        Err(_) => Duration::ZERO,
    }
}

fn spawn(settings: &SupervisorSettings) -> std::io::Result<Child> {
    let mut cmd = Command::new(&settings.binary);
    cmd.arg("--socket")
        .arg(&settings.socket)
        .args(&settings.args)
        .stdin(Stdio::null())
        // Its own process group: a Ctrl-C on the terminal reaches the gateway only, which
        // drains its streams first and then stops the sidecar itself.
        .process_group(0)
        .kill_on_drop(true);
    // SAFETY: prctl is async-signal-safe. The sidecar must not outlive a gateway killed with
    // SIGKILL: the kernel sends it SIGTERM when the spawning thread (a runtime worker) exits.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
}

async fn terminate(child: &mut Child, grace: Duration) {
    if let Some(id) = child.id() {
        let pid = nix::unistd::Pid::from_raw(id as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        if let Ok(status) = tokio::time::timeout(grace, child.wait()).await {
            tracing::info!(pid = id, ?status, "sidecar stopped");
            return;
        }
        tracing::warn!(pid = id, "sidecar did not stop in time; killing it");
    }
    let _ = child.kill().await;
}
