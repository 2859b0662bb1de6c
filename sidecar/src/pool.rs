//! The warm worker pool: a long-lived Python forkserver (`python/forkserver.py`, embedded,
//! never written to disk) that imported yt-dlp once and keeps pre-forked workers waiting.
//! A job sends its argv and the write ends of its pipes over SCM_RIGHTS; the worker that
//! takes it acks its pid, which is our child (double fork), so the job's [`Proc`] kills its
//! group and reaps it exactly like a spawned yt-dlp. A busy pool (every worker taken, the
//! socket's queue full, a fork slow under load) is waited for: that is back-pressure, and
//! the callers' slots (`slots.rs`) keep it short. Only a pool that is down, or stuck (no
//! worker took any job for a while), gives `None`, and the caller spawns yt-dlp instead;
//! the supervisor restarts the forkserver with a backoff.

use std::ffi::OsString;
use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::socket::{
    AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType, recv, sendmsg, socketpair,
};
use nix::sys::wait::waitpid;
use nix::unistd::Pid;
use serde::Deserialize;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::Error;
use crate::proc::{Ends, Leader, Proc, job_pipes};
use crate::ytdlp::{INFO_FD, Place, YtDlp};

const SCRIPT: &str = include_str!("../python/forkserver.py");
/// The forkserver's end of the job socket.
const JOB_FD: i32 = 3;
/// Import + warm-up; generous for a loaded machine.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// A worker normally acks in about a millisecond, later when the machine is busy or jobs
/// wait for a fresh fork. A job that waited this long while no worker took any job at all
/// (no ack since it was sent) finds the forkserver stuck.
const STUCK_AFTER: Duration = Duration::from_secs(10);

/// The pool, shared by every job.
pub struct Pool {
    python: PathBuf,
    ytdlp: YtDlp,
    idle: usize,
    /// The live job socket, while the forkserver is up.
    live: Mutex<Option<Arc<AsyncFd<OwnedFd>>>>,
    restart: Notify,
    stop: CancellationToken,
    /// When a worker last acked a job: the pool's progress.
    last_ack: Mutex<Instant>,
}

#[derive(Deserialize)]
struct Ack {
    pid: i32,
    got: f64,
}

impl Pool {
    /// Starts the supervisor and waits (bounded) for the first forkserver to be ready.
    pub async fn start(python: PathBuf, ytdlp: YtDlp, idle: usize) -> Arc<Pool> {
        let pool = Arc::new(Pool {
            python,
            ytdlp,
            idle: idle.max(1),
            live: Mutex::new(None),
            restart: Notify::new(),
            stop: CancellationToken::new(),
            last_ack: Mutex::new(Instant::now()),
        });
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(Arc::clone(&pool).supervise(tx));
        let _ = rx.await;
        pool
    }

    /// Stops the forkserver and its idle workers (running jobs are their own groups).
    pub fn shutdown(&self) {
        self.stop.cancel();
    }

    async fn supervise(self: Arc<Self>, first: tokio::sync::oneshot::Sender<()>) {
        let mut first = Some(first);
        let mut backoff = Duration::from_millis(200);
        while !self.stop.is_cancelled() {
            let started = Instant::now();
            match self.launch().await {
                Ok((mut child, socket)) => {
                    let pgid = child.id().map_or(0, |id| id as i32);
                    *self.live.lock().unwrap_or_else(|e| e.into_inner()) = Some(socket);
                    info!(pid = pgid, took = ?started.elapsed(), "pool ready");
                    first.take().map(|tx| tx.send(()));
                    tokio::select! {
                        s = child.wait() => warn!(status = ?s, "pool forkserver exited"),
                        _ = self.restart.notified() => warn!("pool stuck: restarting it"),
                        _ = self.stop.cancelled() => {}
                    }
                    *self.live.lock().unwrap_or_else(|e| e.into_inner()) = None;
                    reap_group(&mut child, pgid).await;
                    if started.elapsed() > Duration::from_secs(60) {
                        backoff = Duration::from_millis(200);
                    }
                }
                Err(e) => {
                    warn!("pool failed to start (jobs spawn yt-dlp meanwhile): {e}");
                    first.take().map(|tx| tx.send(()));
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = self.stop.cancelled() => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
    }

    /// Restarts the forkserver behind `socket`, unless it is already gone: a job that failed
    /// on a forkserver the supervisor has replaced must not kill the new one.
    fn restart_if_live(&self, socket: &Arc<AsyncFd<OwnedFd>>, why: &str) {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        if live.as_ref().is_some_and(|l| Arc::ptr_eq(l, socket)) {
            *live = None;
            warn!("no pool worker took the job ({why}): restarting the pool");
            self.restart.notify_one();
        } else {
            debug!("no pool worker took the job ({why}); that forkserver is already gone");
        }
    }

    /// Spawns the forkserver and waits for its ready message.
    async fn launch(&self) -> std::io::Result<(Child, Arc<AsyncFd<OwnedFd>>)> {
        let flags = SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK;
        let (ours, theirs) =
            socketpair(AddressFamily::Unix, SockType::SeqPacket, None, flags).map_err(to_io)?;
        let ffmpeg: OsString = self.ytdlp.ffmpeg().map(Into::into).unwrap_or_default();
        let mut cmd = Command::new(&self.python);
        // -I: no cwd or script dir on sys.path, no PYTHON* variables, no user site.
        cmd.arg("-I")
            .arg("-c")
            .arg(SCRIPT)
            .arg(self.idle.to_string())
            .arg(ffmpeg)
            .env_clear()
            .envs(self.ytdlp.env().iter().map(|(k, v)| (k, v)))
            .current_dir(self.ytdlp.work_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .process_group(0)
            .kill_on_drop(true);
        let fd = theirs.as_raw_fd();
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                // The socket was made non-blocking for us; the workers block on it.
                let copy = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 10);
                if copy < 0 || libc::dup2(copy, JOB_FD) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let fl = libc::fcntl(JOB_FD, libc::F_GETFL);
                libc::fcntl(JOB_FD, libc::F_SETFL, fl & !libc::O_NONBLOCK);
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd.spawn()?;
        drop(theirs);
        // SAFETY: the fd is owned by the AsyncFd alone and never closed behind its back.
        let socket = Arc::new(unsafe { AsyncFd::register(ours) }?);
        let ready = async {
            let mut buf = [0u8; 4096];
            loop {
                let mut guard = socket.readable().await?;
                match guard
                    .try_io(|s| recv(s.as_raw_fd(), &mut buf, MsgFlags::empty()).map_err(to_io))
                {
                    Ok(Ok(0)) => return Err(std::io::Error::other("forkserver closed the socket")),
                    Ok(Ok(n)) => return Ok(String::from_utf8_lossy(&buf[..n]).into_owned()),
                    Ok(Err(e)) => return Err(e),
                    Err(_) => continue,
                }
            }
        };
        let msg = tokio::select! {
            r = tokio::time::timeout(READY_TIMEOUT, ready) => r.map_err(|_| std::io::Error::other("no ready message"))??,
            s = child.wait() => return Err(std::io::Error::other(format!("forkserver exited: {s:?}"))),
        };
        debug!(%msg, "forkserver ready");
        Ok((child, socket))
    }

    /// Runs a job on a pool worker in its `place`, waiting while the pool is busy; `None`
    /// when the pool is down or stuck (spawn instead).
    pub async fn run(
        &self,
        args: &[OsString],
        with_meta: bool,
        info: Option<OwnedFd>,
        place: Place<'_>,
    ) -> Option<Result<Proc, Error>> {
        let received = Instant::now();
        let socket = self
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()?;
        let argv: Option<Vec<&str>> = args.iter().map(|a| a.to_str()).collect();
        let (ours, theirs) = match job_pipes(with_meta) {
            Ok(p) => p,
            Err(e) => return Some(Err(e)),
        };
        let (status, status_theirs) = match std::os::unix::net::UnixStream::pair() {
            Ok(p) => p,
            Err(e) => return Some(Err(Error::Spawn(e))),
        };
        let Ends {
            stdout,
            stderr,
            meta,
        } = theirs;
        let mut fds = vec![
            status_theirs.as_raw_fd(),
            stdout.as_raw_fd(),
            stderr.as_raw_fd(),
        ];
        let mut targets = vec![1, 2];
        for (fd, target) in [(&meta, 3), (&info, INFO_FD)] {
            if let Some(fd) = fd {
                if let Err(e) = place.hand_over(fd.as_fd()) {
                    return Some(Err(Error::Spawn(e)));
                }
                fds.push(fd.as_raw_fd());
                targets.push(target);
            }
        }
        // The namespace fd travels last; the worker joins it instead of dup2ing it.
        if let Some(ns) = place.ns {
            fds.push(ns);
        }
        let env: serde_json::Map<String, serde_json::Value> = place
            .env()
            .iter()
            .map(|(k, v)| {
                (
                    (*k).to_owned(),
                    v.to_str().map(Into::into).unwrap_or_default(),
                )
            })
            .collect();
        let msg = serde_json::json!({
            "argv": argv?,
            "fds": targets,
            "cwd": place.dir.to_str()?,
            "env": env,
            "netns": place.ns.is_some(),
            "limits": place.confine.rlimits(),
            "user": place.confine.user.map(|u| [u.uid, u.gid]),
        })
        .to_string();
        let rights = [ControlMessage::ScmRights(&fds)];
        let iov = [IoSlice::new(msg.as_bytes())];
        let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
        // A full queue (`net.unix.max_dgram_qlen` jobs no worker took yet) is waited out.
        loop {
            let writable = tokio::time::timeout_at(self.stuck_at(received), socket.writable());
            let mut guard = match writable.await {
                Ok(Ok(guard)) => guard,
                Ok(Err(e)) => {
                    debug!("pool cannot take the job: {e}");
                    return None;
                }
                Err(_) if self.stuck(received) => {
                    self.restart_if_live(&socket, "its job queue stayed full");
                    return None;
                }
                Err(_) => continue,
            };
            let sent = guard.try_io(|s| {
                sendmsg::<()>(s.as_raw_fd(), &iov, &rights, flags, None).map_err(to_io)
            });
            match sent {
                Ok(Ok(_)) => break,
                Ok(Err(e)) => {
                    debug!("pool cannot take the job: {e}");
                    return None;
                }
                Err(_would_block) => continue,
            }
        }
        drop((status_theirs, stdout, stderr, meta, info));
        let ack = match self.read_ack(status, received).await {
            Ok(ack) => ack,
            Err(why) => {
                self.restart_if_live(&socket, &why);
                return None;
            }
        };
        *self.last_ack.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        let mut now = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: writes into our timespec. Python's time.monotonic is the same clock.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
        let lag = now.tv_sec as f64 + now.tv_nsec as f64 / 1e9 - ack.got;
        debug!(pid = ack.pid, acked = ?received.elapsed(), worker_got_job_ms = format!("{:.2}", (received.elapsed().as_secs_f64() - lag) * 1e3), "pool worker took the job");
        Some(
            Leader::forked(ack.pid)
                .map_err(Error::Spawn)
                .and_then(|leader| Proc::new(leader, ours)),
        )
    }

    /// When a job sent at `sent` finds the pool stuck if no worker acks any job before.
    fn stuck_at(&self, sent: Instant) -> tokio::time::Instant {
        let last = *self.last_ack.lock().unwrap_or_else(|e| e.into_inner());
        (last.max(sent) + STUCK_AFTER).into()
    }

    fn stuck(&self, sent: Instant) -> bool {
        tokio::time::Instant::now() >= self.stuck_at(sent)
    }

    /// The worker's `{"pid", "got"}` line, however long a busy pool takes; an error when the
    /// forkserver is gone (the socket closes) or stuck. A worker that acks after we gave up
    /// is killed by a background task, so no job runs unseen.
    async fn read_ack(
        &self,
        status: std::os::unix::net::UnixStream,
        sent: Instant,
    ) -> Result<Ack, String> {
        status.set_nonblocking(true).map_err(|e| e.to_string())?;
        let status = tokio::net::UnixStream::from_std(status).map_err(|e| e.to_string())?;
        let mut reader = BufReader::new(status);
        let mut line = String::new();
        loop {
            // A partly read line stays in `line`; the next call goes on from there.
            let read = tokio::time::timeout_at(self.stuck_at(sent), reader.read_line(&mut line));
            match read.await {
                Ok(Ok(n)) if n > 0 => {
                    return serde_json::from_str(&line).map_err(|e| e.to_string());
                }
                Ok(_) => return Err("worker closed the status socket".into()),
                Err(_) if self.stuck(sent) => break,
                Err(_) => debug!(waited = ?sent.elapsed(), "pool busy: the job waits for a worker"),
            }
        }
        tokio::spawn(async move {
            let late = tokio::time::timeout(READY_TIMEOUT, reader.read_line(&mut line)).await;
            if let Ok(ack) = serde_json::from_str::<Ack>(&line) {
                warn!(pid = ack.pid, ?late, "killing a late pool worker");
                let pid = Pid::from_raw(ack.pid);
                let _ = nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL);
                let _ = tokio::task::spawn_blocking(move || waitpid(pid, None)).await;
            }
        });
        Err(format!("no worker took any job for {STUCK_AFTER:?}"))
    }
}

/// Kills the forkserver's group (it and its idle workers), reaps the forkserver, then the
/// idle workers (our children: they were re-parented to us).
async fn reap_group(child: &mut Child, pgid: i32) {
    if pgid > 0 {
        let _ = nix::sys::signal::killpg(Pid::from_raw(pgid), nix::sys::signal::Signal::SIGKILL);
    }
    let _ = child.wait().await;
    let _ = tokio::task::spawn_blocking(move || {
        while pgid > 0 && waitpid(Pid::from_raw(-pgid), None).is_ok() {}
    })
    .await;
}

fn to_io(e: nix::Error) -> std::io::Error {
    std::io::Error::from(e)
}
