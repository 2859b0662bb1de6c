//! One job's process group, however it was started (spawned yt-dlp or a forked pool worker),
//! and the pipes the job reads: media on stdout, stderr, the `before_dl` line on fd 3.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::fcntl::OFlag;
use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::waitpid;
use nix::unistd::Pid;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::unix::pipe;
use tokio::process::Child;
use tokio::sync::oneshot;

use crate::Error;

/// Stderr kept per job: yt-dlp's errors come last, so the tail is what matters.
const STDERR_KEEP: usize = 64 * 1024;
/// Capacity asked for the stdout pipe (the default is 64 KiB): yt-dlp keeps writing while the
/// sidecar is busy sending the previous chunk instead of blocking on a full pipe. Kernel
/// memory, bounded per job; 1 MiB is the default `/proc/sys/fs/pipe-max-size`.
const STDOUT_PIPE_SIZE: libc::c_int = 1024 * 1024;

pub(crate) fn io(e: nix::Error) -> Error {
    Error::Spawn(std::io::Error::from(e))
}

/// A close-on-exec pipe: (read end, write end).
pub(crate) fn pipe() -> Result<(OwnedFd, OwnedFd), Error> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(io)
}

/// The sidecar's ends of a job's pipes; the write ends go to the child.
pub(crate) struct Ends {
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    pub meta: Option<OwnedFd>,
}

/// Creates stdout, stderr and (for stream jobs) fd-3 pipes: (our read ends, child's ends).
pub(crate) fn job_pipes(with_meta: bool) -> Result<(Ends, Ends), Error> {
    let (out_rx, out_tx) = pipe()?;
    enlarge_pipe(&out_rx);
    let (err_rx, err_tx) = pipe()?;
    let (meta_rx, meta_tx) = match with_meta {
        true => pipe().map(|(r, t)| (Some(r), Some(t)))?,
        false => (None, None),
    };
    let ours = Ends {
        stdout: out_rx,
        stderr: err_rx,
        meta: meta_rx,
    };
    let theirs = Ends {
        stdout: out_tx,
        stderr: err_tx,
        meta: meta_tx,
    };
    Ok((ours, theirs))
}

/// Best effort: a refusal (over `pipe-max-size`, or the user's pipe quota is spent) leaves
/// the default size, which only costs throughput.
fn enlarge_pipe(fd: &OwnedFd) {
    // SAFETY: fcntl on an fd we own; F_SETPIPE_SZ takes an int and touches no memory of ours.
    let got = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, STDOUT_PIPE_SIZE) };
    if got < 0 {
        let err = std::io::Error::last_os_error();
        tracing::debug!(error = %err, "stdout pipe keeps its default size");
    }
}

/// Who the group leader is and how its exit status is learnt.
pub(crate) enum Leader {
    /// Spawned by tokio: `Child::wait`.
    Spawned(Child),
    /// A pool worker, re-parented to the sidecar: its pidfd becomes readable at exit.
    Forked { pid: Pid, pidfd: AsyncFd<OwnedFd> },
}

impl Leader {
    /// A pool worker by pid; it must be our child (re-parented), so the pid cannot be reused.
    pub(crate) fn forked(pid: i32) -> std::io::Result<Leader> {
        // SAFETY: a plain syscall; the returned fd is owned right away.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) };
        Ok(Leader::Forked {
            pid: Pid::from_raw(pid),
            // SAFETY: the pidfd is owned by the AsyncFd alone.
            pidfd: unsafe { AsyncFd::register(fd) }?,
        })
    }

    fn pid(&self) -> Option<i32> {
        match self {
            Leader::Spawned(c) => c.id().map(|id| id as i32),
            Leader::Forked { pid, .. } => Some(pid.as_raw()),
        }
    }

    async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        match self {
            Leader::Spawned(c) => c.wait().await,
            Leader::Forked { pid, pidfd } => loop {
                let mut status = 0;
                // SAFETY: waitpid on our own child with a valid out pointer.
                let got = unsafe { libc::waitpid(pid.as_raw(), &mut status, libc::WNOHANG) };
                if got == pid.as_raw() {
                    return Ok(ExitStatus::from_raw(status));
                }
                if got < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                pidfd.readable().await?.clear_ready();
            },
        }
    }
}

/// One running job and its process group.
pub struct Proc {
    leader: Leader,
    pgid: Pid,
    /// Media bytes (stream) or the info JSON (resolve).
    pub stdout: Option<pipe::Receiver>,
    /// Everything yt-dlp and ffmpeg say on stderr.
    pub stderr: Arc<StderrLog>,
    /// The `before_dl` info line, once yt-dlp has printed it (stream jobs).
    pub meta: Option<oneshot::Receiver<Option<Vec<u8>>>>,
    reaped: bool,
}

impl Proc {
    /// Wraps a started leader (its own process group) and our ends of its pipes.
    pub(crate) fn new(leader: Leader, ours: Ends) -> Result<Proc, Error> {
        let pgid = Pid::from_raw(leader.pid().ok_or_else(|| io(nix::Error::ESRCH))?);
        let stdout = pipe::Receiver::from_owned_fd(ours.stdout).map_err(Error::Spawn)?;
        let meta = ours.meta.map(read_meta_line).transpose()?;
        Ok(Proc {
            leader,
            pgid,
            stdout: Some(stdout),
            stderr: StderrLog::start(ours.stderr)?,
            meta,
            reaped: false,
        })
    }

    /// The process group id (= the leader's pid), for logs.
    pub fn pgid(&self) -> i32 {
        self.pgid.as_raw()
    }

    /// Whether the leader is a forked pool worker.
    pub fn pooled(&self) -> bool {
        matches!(self.leader, Leader::Forked { .. })
    }

    /// Waits for the leader to exit on its own, up to `grace`; kills the group after that.
    pub async fn wait(&mut self, grace: Duration) -> Option<ExitStatus> {
        match tokio::time::timeout(grace, self.leader.wait()).await {
            Ok(status) => {
                self.reaped = true;
                status.ok()
            }
            Err(_) => {
                self.kill().await;
                None
            }
        }
    }

    /// SIGKILLs the whole group, reaps the leader, then reaps any of its children that were
    /// re-parented to the sidecar (it is a child subreaper), so nothing lingers as a zombie.
    pub async fn kill(&mut self) {
        self.kill_group();
        let _ = self.leader.wait().await;
        self.reaped = true;
        let pgid = self.pgid;
        // Only after the leader is reaped: the group id cannot be reused while members live.
        let _ = tokio::task::spawn_blocking(move || {
            while waitpid(Pid::from_raw(-pgid.as_raw()), None).is_ok() {}
        })
        .await;
    }

    fn kill_group(&self) {
        if !self.reaped {
            let _ = killpg(self.pgid, Signal::SIGKILL);
        }
    }
}

impl Drop for Proc {
    /// A job task that ends early (panic, abort) still takes its processes with it; a forked
    /// leader is reaped here too (tokio does that for the spawned one).
    fn drop(&mut self) {
        self.kill_group();
        if let (Leader::Forked { pid, .. }, false) = (&self.leader, self.reaped) {
            let pid = *pid;
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn_blocking(move || waitpid(pid, None));
            }
        }
    }
}

/// Raw fd of an optional end, for `pre_exec`.
pub(crate) fn raw(fd: &Option<OwnedFd>) -> Option<i32> {
    fd.as_ref().map(AsRawFd::as_raw_fd)
}

/// Reads the first line yt-dlp prints on fd 3 (bounded), in the background.
fn read_meta_line(rx: OwnedFd) -> Result<oneshot::Receiver<Option<Vec<u8>>>, Error> {
    let rx = pipe::Receiver::from_owned_fd(rx).map_err(Error::Spawn)?;
    let (tx, out) = oneshot::channel();
    tokio::spawn(async move {
        let mut line = Vec::new();
        let mut reader = BufReader::new(rx).take(1024 * 1024);
        let got = reader
            .read_until(b'\n', &mut line)
            .await
            .ok()
            .filter(|n| *n > 0);
        let _ = tx.send(got.map(|_| line));
        // Keep draining so yt-dlp never blocks on a full pipe.
        let _ = tokio::io::copy(
            &mut reader.into_inner().into_inner(),
            &mut tokio::io::sink(),
        )
        .await;
    });
    Ok(out)
}

/// yt-dlp's stderr, drained continuously (a full pipe would block yt-dlp and ffmpeg) and
/// also on demand: [`StderrLog::catch_up`] reads whatever is already in the pipe, so
/// anything written before a given stdout byte is seen before that byte is relayed.
pub struct StderrLog {
    rx: pipe::Receiver,
    text: Mutex<Vec<u8>>,
}

impl StderrLog {
    fn start(rx: OwnedFd) -> Result<Arc<Self>, Error> {
        let rx = pipe::Receiver::from_owned_fd(rx).map_err(Error::Spawn)?;
        let log = Arc::new(StderrLog {
            rx,
            text: Mutex::new(Vec::new()),
        });
        let bg = Arc::clone(&log);
        tokio::spawn(async move {
            while bg.rx.readable().await.is_ok() {
                if bg.catch_up() {
                    break;
                }
            }
        });
        Ok(log)
    }

    /// Reads what is in the pipe now, without waiting. Returns true at end of stream.
    pub fn catch_up(&self) -> bool {
        let mut text = self.text.lock().unwrap_or_else(|e| e.into_inner());
        let mut buf = [0u8; 8192];
        loop {
            match self.rx.try_read(&mut buf) {
                Ok(0) => return true,
                Ok(n) => {
                    text.extend_from_slice(&buf[..n]);
                    if text.len() > STDERR_KEEP {
                        let cut = text.len() - STDERR_KEEP;
                        text.drain(..cut);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return true,
            }
        }
    }

    /// The text so far (lossy UTF-8).
    pub fn text(&self) -> String {
        let text = self.text.lock().unwrap_or_else(|e| e.into_inner());
        String::from_utf8_lossy(&text).into_owned()
    }
}
