//! What a job's processes (yt-dlp, ffmpeg) run under besides their directory and network:
//! resource limits (address space, CPU time, open files) and `no_new_privs` (no setuid
//! program gives them more than the sidecar did). Applied by a spawned child between fork
//! and exec, and by a pool worker (`python/forkserver.py`) before it runs its job, so every
//! job process gets the same.

/// A job's limits; one for all jobs, from the sidecar's flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Confinement {
    /// `RLIMIT_AS`, bytes. A pool worker starts from the forkserver's address space
    /// (≈ 80 MiB with yt-dlp imported), so this must leave room above that.
    pub address_space: u64,
    /// `RLIMIT_CPU`, seconds: SIGXCPU at this, SIGKILL a second later.
    pub cpu_secs: u64,
    /// `RLIMIT_NOFILE`: open descriptors.
    pub open_files: u64,
}

impl Confinement {
    /// `(name, soft, hard)` of each limit; the name is `RLIMIT_<name>` (for the pool's
    /// Python workers too, one source of truth).
    pub(crate) fn rlimits(&self) -> [(&'static str, u64, u64); 3] {
        [
            ("AS", self.address_space, self.address_space),
            ("CPU", self.cpu_secs, self.cpu_secs + 1),
            ("NOFILE", self.open_files, self.open_files),
        ]
    }

    /// Applies the limits and `no_new_privs` to the calling process.
    ///
    /// # Safety
    /// Async-signal-safe (setrlimit, prctl): callable between fork and exec.
    pub(crate) unsafe fn apply(&self) -> std::io::Result<()> {
        for (name, soft, hard) in self.rlimits() {
            let resource = match name {
                "AS" => libc::RLIMIT_AS,
                "CPU" => libc::RLIMIT_CPU,
                _ => libc::RLIMIT_NOFILE,
            };
            let limit = libc::rlimit {
                rlim_cur: soft,
                rlim_max: hard,
            };
            // SAFETY: a plain syscall with a valid pointer.
            if unsafe { libc::setrlimit(resource, &limit) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}
