//! What a job works with besides its own request: the two halves of its client connection
//! and what every connection shares. Its own module so that the job modules (`stream`,
//! `job`, `native`, `resolve`, `extract`) depend on it, not on the server that runs them.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use futures::stream::{SplitSink, SplitStream};
use streamgate_protocol::{Connection, Frame, Welcome};
use tokio::net::UnixStream;
use tokio_util::sync::CancellationToken;

use crate::pool::Pool;
use crate::slots::Slots;
use crate::ytdlp::YtDlp;
use crate::{Cache, Config};

/// Sending half of a client connection.
pub(crate) type Tx = SplitSink<Connection<UnixStream>, Frame>;
/// Receiving half of a client connection.
pub(crate) type Rx = SplitStream<Connection<UnixStream>>;

/// What every connection task shares.
pub(crate) struct Shared {
    pub config: Config,
    pub ytdlp: YtDlp,
    /// The warm pool; `None` with `--no-pool` or no Python yt-dlp.
    pub pool: Option<Arc<Pool>>,
    /// Resolve results for streams of the same URL.
    pub cache: Cache,
    /// Where each job's own directory is made.
    pub work_dir: PathBuf,
    pub welcome: Welcome,
    /// What jobs may hold at once: streams, extractions, processes.
    pub slots: Slots,
    pub next_job: AtomicU64,
    /// SIGTERM: stop accepting, refuse queued jobs.
    pub draining: CancellationToken,
    /// Drain deadline passed: kill running jobs.
    pub kill_jobs: CancellationToken,
}
