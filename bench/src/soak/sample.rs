//! One look at the gateway's tree: PSS (gateway, sidecar, the sidecar's jobs), open
//! descriptors of the gateway and the sidecar, job processes, and the outcomes so far.

use std::time::Duration;

use streamgate_testkit::procfs::{ProcInfo, descendants, fd_count};

use super::load::Tally;
use crate::procs::tree_pss;
use crate::systems::Gateway;

/// `comm` prefix of the sidecar (the kernel cuts names at 15 bytes).
const SIDECAR_PREFIX: &str = "streamgate-side";
/// The warm pool's forkserver and idle workers: kept by the sidecar between jobs, not jobs.
const POOL_COMMS: &[&str] = &["sg-forkserver", "sg-idle"];

#[derive(Clone, Debug, Default)]
pub struct Sample {
    /// Since the load started.
    pub at: Duration,
    pub gateway_pss: u64,
    pub sidecar_pss: u64,
    /// yt-dlp, ffmpeg and the warm pool together.
    pub jobs_pss: u64,
    pub gateway_fds: usize,
    pub sidecar_fds: usize,
    /// Processes below the sidecar that are not the warm pool's.
    pub jobs: usize,
    /// Requests finished so far, by class (`Group` order).
    pub by_group: [u64; 6],
}

impl Sample {
    pub fn take(gw: &Gateway, at: Duration, tally: &Tally) -> Sample {
        let pid = gw.pid();
        let pss = tree_pss(pid, SIDECAR_PREFIX);
        let sidecar = sidecar_pid(pid);
        Sample {
            at,
            gateway_pss: pss.root_kib,
            sidecar_pss: pss.sidecar_kib,
            jobs_pss: pss.jobs_kib,
            gateway_fds: fd_count(pid).unwrap_or(0),
            sidecar_fds: sidecar.and_then(fd_count).unwrap_or(0),
            jobs: job_processes(pid).len(),
            by_group: tally.by_group(),
        }
    }

    pub fn describe(&self) -> String {
        format!(
            "t={:>4}s PSS gateway {} KiB, sidecar {} KiB, jobs {} KiB ({} jobs); fds gateway {}, sidecar {}; finished by class {:?}",
            self.at.as_secs(),
            self.gateway_pss,
            self.sidecar_pss,
            self.jobs_pss,
            self.jobs,
            self.gateway_fds,
            self.sidecar_fds,
            self.by_group
        )
    }
}

fn sidecar_pid(gateway: u32) -> Option<u32> {
    descendants(gateway)
        .into_iter()
        .find(|p| p.ppid == gateway as i32 && p.comm.starts_with(SIDECAR_PREFIX))
        .map(|p| p.pid as u32)
}

/// Processes below the gateway's sidecar that are jobs (yt-dlp, ffmpeg), zombies included.
pub fn job_processes(gateway: u32) -> Vec<ProcInfo> {
    let Some(sidecar) = sidecar_pid(gateway) else {
        return Vec::new();
    };
    let mut all = descendants(sidecar);
    all.retain(|p| !POOL_COMMS.contains(&p.comm.as_str()));
    all
}
