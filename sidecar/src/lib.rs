//! The sidecar: the only part of streamgate that runs yt-dlp. It serves the framing protocol
//! (`docs/protocol.md`) on a Unix socket, one yt-dlp process group per job, and never writes
//! a media byte to disk.

#![deny(missing_docs)]

mod cache;
mod classify;
mod confine;
mod conn;
mod egress;
mod extract;
mod fetch;
mod job;
mod launch;
mod mux;
mod native;
mod peer;
mod pool;
mod proc;
mod resolve;
mod review;
mod sandbox;
mod server;
mod slots;
mod sniff;
mod stream;
mod ytdlp;

use std::path::PathBuf;
use std::time::Duration;

pub use cache::{Cache, CacheLimits};
pub use classify::{classify, merge_refused};
pub use confine::{Confinement, JobUser, UserError};
pub use egress::netns::enter_user_namespace;
/// The HLS playlist parser, public only for its fuzz target (`fuzz/`).
pub use fetch::hls::Playlist;
pub use server::{Server, bind_socket};
pub use sniff::{Sniffed, sniff};
pub use ytdlp::{STREAM_DOWNLOADERS, YtDlp, default_yt_dlp};

/// Everything the sidecar is told on its command line.
#[derive(Clone, Debug)]
pub struct Config {
    /// Path of the Unix socket to listen on.
    pub socket: PathBuf,
    /// Group that may also connect (socket mode 0660 instead of 0600).
    pub socket_group: Option<String>,
    /// Uids allowed to connect besides the sidecar's own (`SO_PEERCRED` of every connection).
    pub allow_uids: Vec<u32>,
    /// Streams open at once, whatever moves their bytes (each holds memory and sockets).
    pub max_streams: usize,
    /// yt-dlp extractions running at once (each a Python worker busy on a CPU).
    pub max_extractions: usize,
    /// yt-dlp downloads and ffmpeg merges running at once (each holds processes).
    pub max_jobs: usize,
    /// Percent of the stream and of the process slots one tenant may hold (1-100).
    pub tenant_share: u8,
    /// Jobs that may wait for a free slot of each kind; one more gets `busy`.
    pub queue: usize,
    /// How long a queued job waits for a slot before it gets `busy`.
    pub queue_timeout: Duration,
    /// A job that yields no byte for this long ends with `timeout`.
    pub stall_timeout: Duration,
    /// On SIGTERM, how long running jobs may go on before they are killed.
    pub drain_timeout: Duration,
    /// The yt-dlp executable.
    pub yt_dlp: PathBuf,
    /// Passed to yt-dlp as `--ffmpeg-location` when set.
    pub ffmpeg: Option<PathBuf>,
    /// The private, empty directory under which every job gets a fresh directory of its own
    /// (its cwd, HOME, TMPDIR, caches; removed after the job). `None`: a fresh one is made
    /// under the system temp dir and removed on exit.
    pub work_dir: Option<PathBuf>,
    /// Whether jobs run in network namespaces of their own.
    pub netns: Netns,
    /// Names of environment variables passed through to yt-dlp (e.g. `HTTPS_PROXY`).
    pub pass_env: Vec<String>,
    /// Idle pre-forked workers of the warm pool; 0 disables the pool (every job spawns).
    pub pool_idle: usize,
    /// The limits and the user every job process (yt-dlp, ffmpeg) runs under.
    pub confinement: Confinement,
    /// The extraction cache's bounds (ttl zero: no cache).
    pub cache: CacheLimits,
}

/// Whether jobs run in network namespaces of their own (`EgressMode::Netns`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Netns {
    /// When the kernel allows it; proxy mode otherwise (logged).
    Auto,
    /// Refuse to start without it (`--require-netns`).
    Require,
    /// Never (`--no-netns`): proxy mode, e.g. where namespaces are managed elsewhere.
    Off,
}

/// Every way the sidecar itself (not a job) can fail.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Another sidecar answers on the socket path.
    #[error("another sidecar is already listening on {0}")]
    SocketInUse(PathBuf),
    /// The socket path exists and is not a socket: never deleted, to be safe.
    #[error("{0} exists and is not a socket")]
    NotASocket(PathBuf),
    /// Binding, chmod or chown of the socket failed.
    #[error("cannot set up the socket {path}: {source}")]
    Socket {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The configured socket group does not exist.
    #[error("no such group: {0}")]
    NoSuchGroup(String),
    /// The work directory cannot be created or is not empty.
    #[error("work directory {path}: {reason}")]
    WorkDir {
        /// The directory.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// yt-dlp could not be started or did not answer `--version`.
    #[error("yt-dlp at {path} is not usable: {reason}")]
    YtDlp {
        /// The executable.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// `--job-user` is given and cannot be used.
    #[error("--job-user: {0}")]
    JobUser(#[from] UserError),
    /// Spawning a job's process failed.
    #[error("cannot start yt-dlp: {0}")]
    Spawn(std::io::Error),
    /// `--require-netns` and no network namespace can be made.
    #[error("--require-netns: cannot make a network namespace for jobs: {0}")]
    Netns(std::io::Error),
    /// A job's network (namespace, proxy listener) cannot be set up.
    #[error("cannot set up the job's network: {0}")]
    Network(std::io::Error),
    /// Installing the signal handlers failed.
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
}
