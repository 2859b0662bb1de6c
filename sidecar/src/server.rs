//! The socket, the accept loop, the handshake, a job's admission and the SIGTERM drain.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::SinkExt;
use futures::stream::StreamExt;
use streamgate_protocol::{
    Connection, EgressMode, EgressRules, ErrorCode, Frame, JobError, ProtocolError, Welcome,
    connection, input, next_frame, server_handshake,
};
use tokio::net::{UnixListener, UnixStream};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::conn::{Rx, Shared, Tx, client_left};
use crate::egress::{Egress, EgressError, Rules, Upstream, netns};
use crate::job::{self, Outcome, peer_ended, peer_event};
use crate::native::Want;
use crate::peer::Peers;
use crate::pool::Pool;
use crate::sandbox::{self, Sandbox};
use crate::slots::{Refused, Slots};
use crate::ytdlp::YtDlp;
use crate::{Cache, Config, Error, Netns, resolve, stream};

/// After the drain deadline, how long a job may take to kill its processes and say so.
const KILL_GRACE: Duration = Duration::from_secs(1);

/// How often the socket file is checked for a deletion (then bound again).
const SOCKET_CHECK: Duration = Duration::from_secs(1);

/// A bound, ready sidecar.
pub struct Server {
    listener: UnixListener,
    /// Who may connect.
    peers: Peers,
    shared: Arc<Shared>,
    /// A work dir we made ourselves and remove on exit.
    own_work_dir: Option<PathBuf>,
}

/// Binds `path` with mode 0600 (0660 and `group` when given). A stale socket file is
/// replaced; a live one (something accepts on it) is an error, as is a non-socket file.
pub fn bind_socket(path: &Path, group: Option<&str>) -> Result<UnixListener, Error> {
    let sock_err = |source| Error::Socket {
        path: path.to_owned(),
        source,
    };
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(Error::NotASocket(path.to_owned()));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(Error::SocketInUse(path.to_owned()));
        }
        std::fs::remove_file(path).map_err(sock_err)?;
    }
    let gid = match group {
        Some(name) => Some(
            nix::unistd::Group::from_name(name)
                .ok()
                .flatten()
                .ok_or_else(|| Error::NoSuchGroup(name.to_owned()))?
                .gid,
        ),
        None => None,
    };
    // The umask makes the socket private from the moment it exists; chmod then widens it.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = bound.map_err(sock_err)?;
    if let Some(gid) = gid {
        nix::unistd::chown(path, None, Some(gid)).map_err(|e| sock_err(e.into()))?;
    }
    let mode = if gid.is_some() { 0o660 } else { 0o600 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(sock_err)?;
    Ok(listener)
}

/// Makes sure the work dir exists, is private and empty (a non-empty one means media or
/// cache files were left behind by something, which the no-disk rule forbids).
fn prepare_work_dir(config: &Config) -> Result<(PathBuf, bool), Error> {
    let (dir, own) = match &config.work_dir {
        Some(dir) => (dir.clone(), false),
        None => (
            std::env::temp_dir().join(format!("streamgate-sidecar-{}", std::process::id())),
            true,
        ),
    };
    let fail = |reason: String| Error::WorkDir {
        path: dir.clone(),
        reason,
    };
    std::fs::create_dir_all(&dir).map_err(|e| fail(e.to_string()))?;
    // A job user must pass through to its own directory; the names are random, and not
    // listable.
    let mode = match config.confinement.user {
        Some(_) => 0o711,
        None => 0o700,
    };
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode))
        .map_err(|e| fail(e.to_string()))?;
    let mut entries = std::fs::read_dir(&dir).map_err(|e| fail(e.to_string()))?;
    if entries.next().is_some() {
        return Err(fail("not empty".into()));
    }
    Ok((dir, own))
}

impl Server {
    /// Checks yt-dlp, prepares the work dir, becomes a child subreaper and binds the socket.
    pub async fn start(config: Config) -> Result<Server, Error> {
        if let Some(user) = config.confinement.user {
            user.check_switchable()?;
        }
        let (work_dir, own) = prepare_work_dir(&config)?;
        let probed = match config.netns {
            Netns::Off => Err(std::io::Error::other("--no-netns")),
            Netns::Auto | Netns::Require => netns::probe(),
        };
        let egress = match probed {
            Ok(mode) => mode,
            Err(e) if config.netns == Netns::Require => return Err(Error::Netns(e)),
            Err(e) => {
                warn!(
                    "no network namespace for jobs ({e}): a job that ignores its proxy is not stopped"
                );
                EgressMode::Proxy
            }
        };
        let ytdlp = YtDlp::new(
            config.yt_dlp.clone(),
            &work_dir,
            config.ffmpeg.clone(),
            &config.pass_env,
        );
        let yt_dlp = sandbox::probe(&ytdlp, &work_dir, egress, config.confinement).await?;
        // ffmpeg orphaned by a killed yt-dlp is re-parented to us, so we can reap it.
        // SAFETY: prctl with integer arguments only.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) };
        // Before the socket: a sidecar that accepts jobs has its pool warm (or gave up).
        let pool = match (config.pool_idle, ytdlp.python()) {
            (0, _) => None,
            (idle, Some(python)) => Some(Pool::start(python, ytdlp.clone(), idle).await),
            (_, None) => {
                warn!("yt-dlp is not a Python script: no warm pool, every job spawns");
                None
            }
        };
        let listener = bind_socket(&config.socket, config.socket_group.as_deref())?;
        info!(socket = %config.socket.display(), %yt_dlp, work_dir = %work_dir.display(),
              max_streams = config.max_streams, max_extractions = config.max_extractions,
              max_jobs = config.max_jobs, queue = config.queue, egress = egress.as_str(),
              "sidecar listening");
        let shared = Arc::new(Shared {
            slots: Slots::new(&config),
            next_job: AtomicU64::new(1),
            welcome: Welcome {
                version: streamgate_protocol::PROTOCOL_VERSION,
                sidecar: env!("CARGO_PKG_VERSION").to_owned(),
                yt_dlp,
                egress,
            },
            ytdlp,
            pool,
            cache: Cache::new(config.cache),
            work_dir: work_dir.clone(),
            config,
            draining: CancellationToken::new(),
            kill_jobs: CancellationToken::new(),
        });
        Ok(Server {
            listener,
            peers: Peers::new(&shared.config.allow_uids),
            shared,
            own_work_dir: own.then_some(work_dir),
        })
    }

    /// Binds the socket again when its file is gone (a temp cleaner, an operator): the old
    /// listener is unreachable without it. Running jobs keep their connections.
    fn rebind_if_gone(&mut self) {
        let config = &self.shared.config;
        if std::fs::symlink_metadata(&config.socket).is_ok() {
            return;
        }
        match bind_socket(&config.socket, config.socket_group.as_deref()) {
            Ok(listener) => {
                let socket = config.socket.display();
                warn!(%socket, "the socket file was deleted: bound again");
                self.listener = listener;
            }
            Err(e) => error!("the socket file was deleted and cannot be bound again: {e}"),
        }
    }

    /// Serves until SIGTERM/SIGINT, then drains: running jobs get `drain_timeout`, then die.
    pub async fn run(mut self) {
        let tracker = TaskTracker::new();
        let (mut term, mut int) = match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(t), Ok(i)) => (t, i),
            (Err(e), _) | (_, Err(e)) => return error!("{}", Error::Signals(e)),
        };
        let mut socket_check = tokio::time::interval(SOCKET_CHECK);
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = socket_check.tick() => self.rebind_if_gone(),
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) if !self.peers.admit(&stream) => drop(stream),
                    Ok((stream, _)) => {
                        let shared = Arc::clone(&self.shared);
                        tracker.spawn(serve(shared, stream));
                    }
                    Err(e) => warn!("accept failed: {e}"),
                },
            }
        }
        info!(running = tracker.len(), "signal received: draining");
        drop(self.listener);
        let _ = std::fs::remove_file(&self.shared.config.socket);
        self.shared.draining.cancel();
        tracker.close();
        if tokio::time::timeout(self.shared.config.drain_timeout, tracker.wait())
            .await
            .is_err()
        {
            warn!(left = tracker.len(), "drain deadline passed: killing jobs");
            self.shared.kill_jobs.cancel();
            tracker.wait().await;
        }
        if let Some(pool) = &self.shared.pool {
            pool.shutdown();
        }
        if let Some(dir) = self.own_work_dir {
            let _ = std::fs::remove_dir(dir);
        }
        info!("sidecar stopped");
    }
}

/// One connection: handshake, one job, close.
async fn serve(shared: Arc<Shared>, stream: UnixStream) {
    let id = shared.next_job.fetch_add(1, Ordering::Relaxed);
    let span = info_span!(
        "job",
        id,
        kind = tracing::field::Empty,
        tenant = tracing::field::Empty,
        request_id = tracing::field::Empty,
        pgid = tracing::field::Empty
    );
    async move {
        let mut conn = connection(stream);
        let handshake = tokio::select! {
            h = server_handshake(&mut conn, shared.welcome.clone()) => h,
            _ = shared.draining.cancelled() => return,
        };
        match handshake {
            Ok(_) => {}
            // server_handshake has already answered these two with an error frame.
            Err(e @ (ProtocolError::Unexpected { .. } | ProtocolError::Version { .. })) => {
                return warn!("handshake refused: {e}");
            }
            Err(ProtocolError::Closed { .. }) => return,
            Err(e) => return protocol_error(&mut conn, e).await,
        }
        let request = tokio::select! {
            f = next_frame(&mut conn, "awaiting a job") => f,
            _ = shared.draining.cancelled() => return,
        };
        let started = Instant::now();
        let (name, url, format, tenant, egress, want) = match request {
            Ok(Frame::Stream(j)) => {
                record(&j.tenant, &j.request_id);
                let want = Want {
                    range: j.range,
                    head: j.head,
                    max_filesize: j.max_filesize,
                    review: j.review,
                };
                (
                    "stream",
                    j.url,
                    Some(j.format),
                    j.tenant,
                    j.egress,
                    Some(want),
                )
            }
            Ok(Frame::Resolve(j)) => {
                record(&j.tenant, &j.request_id);
                ("resolve", j.url, j.format, j.tenant, j.egress, None)
            }
            Ok(Frame::Cancel) | Err(ProtocolError::Closed { .. }) => return,
            Ok(other) => {
                return protocol_error(
                    &mut conn,
                    ProtocolError::Unexpected {
                        got: other.kind(),
                        during: "awaiting a job",
                    },
                )
                .await;
            }
            Err(e) => return protocol_error(&mut conn, e).await,
        };
        tracing::Span::current().record("kind", name);
        let (mut tx, mut rx) = conn.split();
        let job = async {
            let kind = match (format.as_deref(), want) {
                (Some(format), Some(want)) => Kind::Stream { format, want },
                (format, _) => Kind::Resolve { format },
            };
            let job = Job {
                url: &url,
                tenant: tenant.as_deref(),
                egress: &egress,
                kind,
                started,
            };
            let outcome = run_job(&shared, job, &mut tx, &mut rx).await;
            match outcome {
                Outcome::Done { bytes } => info!(bytes, "job done"),
                Outcome::Failed { code, bytes } => info!(%code, bytes, "job failed"),
                Outcome::Cancelled { bytes } => info!(bytes, "job cancelled by the client"),
                Outcome::Protocol => info!("job ended by a protocol error"),
            }
            let _ = tokio::time::timeout(job::LAST_FRAME_TIMEOUT, tx.close()).await;
        };
        // Past the drain deadline a job gets KILL_GRACE to kill and reap its processes; a
        // client that does not read its last frame does not hold the shutdown up.
        let deadline = async {
            shared.kill_jobs.cancelled().await;
            tokio::time::sleep(KILL_GRACE).await;
        };
        tokio::select! {
            _ = job => {}
            _ = deadline => warn!("connection dropped at shutdown"),
        }
    }
    .instrument(span)
    .await
}

fn record(tenant: &Option<String>, request_id: &Option<String>) {
    let span = tracing::Span::current();
    if let Some(t) = tenant {
        span.record("tenant", t.as_str());
    }
    if let Some(r) = request_id {
        span.record("request_id", r.as_str());
    }
}

async fn protocol_error(conn: &mut Connection<UnixStream>, err: ProtocolError) {
    if client_left(&err) {
        return debug!("the client left: {err}");
    }
    warn!("protocol error: {err}");
    let _ = conn
        .send(Frame::Error(JobError::new(
            ErrorCode::Protocol,
            err.to_string(),
        )))
        .await;
}

/// What a client asked for.
struct Job<'a> {
    url: &'a str,
    tenant: Option<&'a str>,
    egress: &'a EgressRules,
    kind: Kind<'a>,
    started: Instant,
}

/// The two kinds of job.
enum Kind<'a> {
    Stream { format: &'a str, want: Want },
    Resolve { format: Option<&'a str> },
}

/// Refuses bad input and URLs the egress refuses, waits for a stream slot (streams), makes
/// the job's sandbox and runs the job in it.
async fn run_job(shared: &Shared, job: Job<'_>, tx: &mut Tx, rx: &mut Rx) -> Outcome {
    let Job {
        url,
        tenant,
        egress,
        kind,
        started,
    } = job;
    let format = match kind {
        Kind::Stream { format, .. } => Some(format),
        Kind::Resolve { format } => format,
    };
    if let Err(e) = check_input(url, format) {
        return job::fail(tx, e, 0).await;
    }
    let egress = match job_egress(egress) {
        Ok(e) => Arc::new(e),
        Err(e) => return job::fail(tx, e, 0).await,
    };
    let parsed = url::Url::parse(url).expect("checked by check_input");
    if let Err(e) = egress.check_url(&parsed).await {
        let code = match e {
            EgressError::Denied(_) => ErrorCode::EgressDenied,
            _ => ErrorCode::UpstreamFailed,
        };
        return job::fail(tx, JobError::new(code, e.to_string()), 0).await;
    }
    // A stream holds its stream slot for its whole life; what else it holds, and when, is
    // the stream's business (an extraction, maybe a download or a merge).
    let _stream = match kind {
        Kind::Stream { .. } => match shared
            .slots
            .streams
            .enter(tenant, &shared.draining, peer_event(rx))
            .await
        {
            Ok(slot) => Some(slot),
            Err(Refused::Busy(e)) => return job::fail(tx, e, 0).await,
            Err(Refused::Peer(ev)) => return peer_ended(ev, 0, tx).await,
        },
        Kind::Resolve { .. } => None,
    };
    let confine = shared.config.confinement;
    let sandbox = match Sandbox::new(&shared.work_dir, shared.welcome.egress, egress, confine) {
        Ok(s) => s,
        Err(e) => {
            error!("{e}");
            return job::fail(tx, JobError::new(ErrorCode::Internal, e.to_string()), 0).await;
        }
    };
    // A job kills and reaps its processes on every path before returning; only then is the
    // sandbox (directory, proxy, namespace) dropped.
    match kind {
        Kind::Stream { format, want } => {
            let spec = stream::Spec {
                tenant,
                url,
                format,
                want,
                started,
            };
            stream::run(shared, spec, &sandbox, tx, rx).await
        }
        Kind::Resolve { format } => {
            let job = resolve::Request {
                tenant,
                url,
                format,
            };
            resolve_job(shared, job, &sandbox, tx, rx).await
        }
    }
}

/// A resolve in an extraction slot; its answer also fills the extraction cache.
async fn resolve_job(
    shared: &Shared,
    job: resolve::Request<'_>,
    sandbox: &Sandbox,
    tx: &mut Tx,
    rx: &mut Rx,
) -> Outcome {
    let _extraction = match shared
        .slots
        .extractions
        .enter(job.tenant, &shared.draining, peer_event(rx))
        .await
    {
        Ok(slot) => slot,
        Err(Refused::Busy(e)) => return job::fail(tx, e, 0).await,
        Err(Refused::Peer(ev)) => return peer_ended(ev, 0, tx).await,
    };
    resolve::run(shared, job, sandbox, tx, rx).await
}

/// Input yt-dlp must never see: the gateway's URL and format rules, applied again (a URL
/// must already be in its canonical form).
fn check_input(url: &str, format: Option<&str>) -> Result<(), JobError> {
    match input::canonical_url(url) {
        Ok(canonical) if canonical == url => {}
        Ok(_) => {
            let msg = "the URL is not in canonical form";
            return Err(JobError::new(ErrorCode::UnsupportedUrl, msg));
        }
        Err(e) => return Err(JobError::new(ErrorCode::UnsupportedUrl, e.to_string())),
    }
    match format.map(input::check_format) {
        Some(Err(e)) => Err(JobError::new(ErrorCode::FormatUnavailable, e.to_string())),
        _ => Ok(()),
    }
}

/// The job's egress from the tenant's rules (validated by the gateway: a failure here is a
/// broken client).
fn job_egress(rules: &EgressRules) -> Result<Egress, JobError> {
    let bad = |e: String| JobError::new(ErrorCode::Protocol, format!("egress rules: {e}"));
    let upstream = rules
        .proxy
        .as_deref()
        .map(Upstream::parse)
        .transpose()
        .map_err(bad)?;
    Ok(Egress::new(Rules::parse(rules).map_err(bad)?, upstream))
}
