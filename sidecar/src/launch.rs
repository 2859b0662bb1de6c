//! Starting a job's yt-dlp: a warm pool worker when the pool takes the job, else a spawned
//! process; either way in the job's place (directory, namespace) and its own process group.

use std::time::Duration;

use crate::Error;
use crate::pool::Pool;
use crate::proc::Proc;
use crate::ytdlp::{Place, YtDlp};

/// A pool worker (waiting while the pool is busy), else — the pool is off, down or stuck —
/// a spawned yt-dlp. A cached info JSON is fed through a fresh pipe for each attempt.
pub(crate) async fn start(
    pool: Option<&Pool>,
    ytdlp: &YtDlp,
    args: Vec<std::ffi::OsString>,
    meta: bool,
    cached: Option<&bytes::Bytes>,
    place: Place<'_>,
) -> Result<Proc, Error> {
    if let Some(pool) = pool
        && let Some(proc) = pool.run(&args, meta, info_pipe(cached)?, place).await
    {
        return proc;
    }
    ytdlp.spawn(args, meta, info_pipe(cached)?, place)
}

/// A pipe whose read end yt-dlp gets as fd 4; a task writes the JSON and closes it.
fn info_pipe(json: Option<&bytes::Bytes>) -> Result<Option<std::os::fd::OwnedFd>, Error> {
    let Some(json) = json.cloned() else {
        return Ok(None);
    };
    let (rx, tx) = crate::proc::pipe()?;
    let tx = tokio::net::unix::pipe::Sender::from_owned_fd(tx).map_err(Error::Spawn)?;
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let mut tx = tx;
        let _ = tokio::time::timeout(Duration::from_secs(60), tx.write_all(&json)).await;
    });
    Ok(Some(rx))
}
