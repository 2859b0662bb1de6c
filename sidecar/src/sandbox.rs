//! What one job runs in: a fresh private directory (its cwd, HOME and TMPDIR, removed with
//! the job; the job user's with `--job-user`), and its own network — the egress proxy,
//! inside a namespace of the job's own in netns mode. Dropped after the job's processes
//! are dead.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use streamgate_protocol::{EgressMode, ErrorCode, JobError};

use crate::Error;
use crate::confine::{Confinement, JobUser};
use crate::egress::Egress;
use crate::egress::netns::JobNet;
use crate::egress::proxy::JobProxy;
use crate::ytdlp::{JobArgs, Place, YtDlp};

/// One job's directory and network.
pub(crate) struct Sandbox {
    dir: JobDir,
    ns: Option<OwnedFd>,
    proxy: JobProxy,
    egress: Arc<Egress>,
    confine: Confinement,
}

impl Sandbox {
    /// Makes the job's directory under `root` (mode 0700, a random name) and its network;
    /// its processes will run under `confine`.
    pub fn new(
        root: &Path,
        mode: EgressMode,
        egress: Arc<Egress>,
        confine: Confinement,
    ) -> Result<Sandbox, Error> {
        let dir = JobDir::new(root, confine.user)?;
        let net = JobNet::new(mode).map_err(Error::Network)?;
        let proxy = JobProxy::start(net.listener, Arc::clone(&egress)).map_err(Error::Network)?;
        Ok(Sandbox {
            dir,
            ns: net.ns,
            proxy,
            egress,
            confine,
        })
    }

    /// The namespace fd the job's processes join, in netns mode.
    fn ns(&self) -> Option<RawFd> {
        self.ns.as_ref().map(AsRawFd::as_raw_fd)
    }

    /// The job's egress, for the sidecar's own connections.
    pub fn egress(&self) -> Arc<Egress> {
        Arc::clone(&self.egress)
    }

    /// What the job's yt-dlp is told besides the URL and format.
    pub fn job_args(&self) -> JobArgs<'_> {
        JobArgs {
            proxy: self.proxy.url(),
        }
    }

    /// Where the job's processes run.
    pub fn place(&self) -> Place<'_> {
        Place {
            dir: self.dir.path(),
            ns: self.ns(),
            confine: self.confine,
        }
    }

    /// A job that failed after the egress refused one of its connections failed because of
    /// that refusal, whatever yt-dlp made of the proxy's 403.
    pub fn explain(&self, err: JobError) -> JobError {
        match self.egress.first_denial() {
            Some(reason) if err.code != ErrorCode::TooLarge => JobError::new(
                ErrorCode::EgressDenied,
                format!("an outbound connection was refused: {reason}"),
            ),
            _ => err,
        }
    }
}

/// Runs `yt-dlp --version` where and as a job runs (a directory of its own, a namespace
/// in netns mode, the limits, the job user): a yt-dlp, an interpreter or a work dir the
/// job user cannot reach stops the start, not the first job.
pub(crate) async fn probe(
    ytdlp: &YtDlp,
    root: &Path,
    mode: EgressMode,
    confine: Confinement,
) -> Result<String, Error> {
    let dir = JobDir::new(root, confine.user)?;
    let net = JobNet::new(mode).map_err(Error::Network)?;
    let place = Place {
        dir: dir.path(),
        ns: net.ns.as_ref().map(AsRawFd::as_raw_fd),
        confine,
    };
    ytdlp.version(place).await
}

/// A job's own directory under the work root: a random name, mode 0700, the job user's
/// when there is one (the root is then 0711: traversable, not listable). Removed on drop.
struct JobDir(PathBuf);

impl JobDir {
    fn new(root: &Path, user: Option<JobUser>) -> Result<JobDir, Error> {
        let path = root.join(format!("job-{:016x}", crate::egress::random_u128() as u64));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(Error::Spawn)?;
        let dir = JobDir(path);
        if let Some(user) = user {
            std::os::unix::fs::chown(&dir.0, Some(user.uid), Some(user.gid))
                .map_err(Error::Spawn)?;
        }
        Ok(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for JobDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            tracing::warn!(dir = %self.0.display(), "cannot remove the job directory: {e}");
        }
    }
}
