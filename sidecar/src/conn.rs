//! What a job works with besides its own request: the two halves of its client connection
//! and what every connection shares. Its own module so that the job modules (`stream`,
//! `job`, `native`, `resolve`, `extract`) depend on it, not on the server that runs them.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use futures::stream::{SplitSink, SplitStream};
use streamgate_protocol::{Connection, Frame, ProtocolError, Welcome};
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

/// Whether `e` only says the client hung up (closed, reset, or gone before a write): the
/// gateway does that whenever its own client leaves, so it is no protocol error.
pub(crate) fn client_left(e: &ProtocolError) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset};
    match e {
        ProtocolError::Closed { .. } => true,
        ProtocolError::Io(io) => {
            matches!(io.kind(), BrokenPipe | ConnectionReset | ConnectionAborted)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Error, ErrorKind};

    use super::*;

    #[test]
    fn a_client_hanging_up_is_no_protocol_error() {
        for kind in [ErrorKind::BrokenPipe, ErrorKind::ConnectionReset] {
            assert!(client_left(&ProtocolError::Io(Error::from(kind))));
        }
        assert!(client_left(&ProtocolError::Closed { during: "x" }));
        assert!(!client_left(&ProtocolError::Io(Error::from(
            ErrorKind::InvalidData
        ))));
        assert!(!client_left(&ProtocolError::UnknownType(0xee)));
        assert!(!client_left(&ProtocolError::Truncated));
    }
}
