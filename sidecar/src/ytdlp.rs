//! Starting yt-dlp: the command line, a cleared environment, a private cwd, its own process
//! group (so yt-dlp and any ffmpeg it starts die together) and the pipes the job reads.

use std::ffi::OsString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::waitpid;
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::unix::pipe;
use tokio::process::{Child, ChildStdout, Command};
use tokio::sync::oneshot;

use crate::Error;

/// Where yt-dlp's `before_dl` info line is written: an extra pipe, not a file.
const META_FD: i32 = 3;
/// Only the fields the metadata frame needs, so the line stays small.
const META_TEMPLATE: &str = "before_dl:%(.{title,ext,filesize,format_id,vcodec,acodec,protocol})j";
/// yt-dlp's own HLS and DASH downloaders write every fragment to a file in the cwd
/// (`--Frag1`) before relaying it; ffmpeg keeps them in memory. ffmpeg cannot write an
/// (i)pod/mp4 container to a pipe unless it is fragmented, hence the movflags (the mpegts
/// muxer yt-dlp uses for "mp4" ignores them).
pub const STREAM_DOWNLOADERS: &[&str] = &[
    "--downloader",
    "m3u8:ffmpeg",
    "--downloader",
    "dash:ffmpeg",
    "--downloader-args",
    "ffmpeg_o:-movflags +frag_keyframe+empty_moov",
];
/// Stderr kept per job: yt-dlp's errors come last, so the tail is what matters.
const STDERR_KEEP: usize = 64 * 1024;

/// The path the architecture promises: `<repo>/.venv/bin/yt-dlp`, the repo found above this
/// executable (`<repo>/target/release/…`); else `yt-dlp` from PATH.
pub fn default_yt_dlp() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    exe.ancestors()
        .map(|dir| dir.join(".venv/bin/yt-dlp"))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| PathBuf::from("yt-dlp"))
}

/// How every job's yt-dlp is started.
#[derive(Clone, Debug)]
pub struct YtDlp {
    path: PathBuf,
    work_dir: PathBuf,
    ffmpeg: Option<PathBuf>,
    env: Vec<(OsString, OsString)>,
}

impl YtDlp {
    /// `work_dir` must be empty and private: it is the jobs' cwd, HOME, TMPDIR and cache.
    pub fn new(path: PathBuf, work_dir: &Path, ffmpeg: Option<PathBuf>, pass: &[String]) -> Self {
        let dir = work_dir.as_os_str().to_owned();
        let path_var =
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
        let mut env: Vec<(OsString, OsString)> = vec![
            ("PATH".into(), path_var),
            ("HOME".into(), dir.clone()),
            ("TMPDIR".into(), dir.clone()),
            ("XDG_CACHE_HOME".into(), dir.clone()),
            ("XDG_CONFIG_HOME".into(), dir),
            ("LANG".into(), "C.UTF-8".into()),
            ("LC_ALL".into(), "C.UTF-8".into()),
            // Python must not write bytecode next to yt-dlp, nor read the user's site dir.
            ("PYTHONDONTWRITEBYTECODE".into(), "1".into()),
            ("PYTHONNOUSERSITE".into(), "1".into()),
        ];
        for name in pass {
            if let Some(value) = std::env::var_os(name) {
                env.push((name.into(), value));
            }
        }
        YtDlp {
            path,
            work_dir: work_dir.to_owned(),
            ffmpeg,
            env,
        }
    }

    /// The executable, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Options common to every run; the URL always comes after `--`.
    fn base_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = ["--ignore-config", "--no-cache-dir", "--no-playlist"]
            .into_iter()
            .map(Into::into)
            .collect();
        if let Some(ffmpeg) = &self.ffmpeg {
            args.push("--ffmpeg-location".into());
            args.push(ffmpeg.into());
        }
        args
    }

    /// `yt-dlp … -o - -f FORMAT --print-to-file before_dl:… /dev/fd/3 -- URL`.
    pub fn stream_args(&self, url: &str, format: &str) -> Vec<OsString> {
        let mut args = self.base_args();
        for arg in ["--no-part", "-q", "--no-progress"]
            .iter()
            .chain(STREAM_DOWNLOADERS)
        {
            args.push(arg.into());
        }
        for arg in ["-o", "-", "-f", format] {
            args.push(arg.into());
        }
        args.push("--print-to-file".into());
        args.push(META_TEMPLATE.into());
        args.push(format!("/dev/fd/{META_FD}").into());
        args.push("--".into());
        args.push(url.into());
        args
    }

    /// `yt-dlp … -J -- URL`: info only, nothing downloaded.
    pub fn resolve_args(&self, url: &str) -> Vec<OsString> {
        let mut args = self.base_args();
        for arg in ["-J", "--", url] {
            args.push(arg.into());
        }
        args
    }

    /// Runs `yt-dlp --version` (also proves the installation works).
    pub async fn version(&self) -> Result<String, Error> {
        let fail = |reason: String| Error::YtDlp {
            path: self.path.clone(),
            reason,
        };
        let run = self
            .command()
            .arg("--version")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output();
        let out = tokio::time::timeout(Duration::from_secs(60), run)
            .await
            .map_err(|_| fail("--version took over 60 s".into()))?
            .map_err(|e| fail(e.to_string()))?;
        if !out.status.success() {
            return Err(fail(String::from_utf8_lossy(&out.stderr).trim().to_owned()));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.path);
        cmd.env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&self.work_dir)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        cmd
    }

    /// Starts one job's process in a new process group. `with_meta` adds the fd-3 pipe.
    pub fn spawn(&self, args: Vec<OsString>, with_meta: bool) -> Result<Proc, Error> {
        let (err_rx, err_tx) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io)?;
        let mut cmd = self.command();
        cmd.args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::from(err_tx))
            .process_group(0);
        let meta = if with_meta {
            let (rx, tx) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(io)?;
            Some((rx, tx))
        } else {
            None
        };
        let meta_tx = meta.as_ref().map(|(_, tx)| tx.as_raw_fd());
        // SAFETY: between fork and exec only async-signal-safe calls (dup2, fcntl, prctl).
        unsafe {
            cmd.pre_exec(move || {
                if let Some(fd) = meta_tx {
                    if fd == META_FD {
                        libc::fcntl(fd, libc::F_SETFD, 0);
                    } else if libc::dup2(fd, META_FD) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                // yt-dlp dies with the sidecar even if the sidecar is SIGKILLed.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(Error::Spawn)?;
        drop(cmd); // closes our copies of the write ends, so the readers see EOF at exit
        let pgid = Pid::from_raw(
            child
                .id()
                .map(|id| id as i32)
                .ok_or_else(|| io(nix::Error::ESRCH))?,
        );
        let stdout = child.stdout.take();
        let stderr = StderrLog::start(err_rx)?;
        let meta = match meta {
            Some((rx, tx)) => {
                drop(tx);
                Some(read_meta_line(rx)?)
            }
            None => None,
        };
        Ok(Proc {
            child,
            pgid,
            stdout,
            stderr,
            meta,
            reaped: false,
        })
    }
}

fn io(e: nix::Error) -> Error {
    Error::Spawn(std::io::Error::from(e))
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

/// One running yt-dlp and its process group.
pub struct Proc {
    child: Child,
    pgid: Pid,
    /// Media bytes (stream) or the info JSON (resolve).
    pub stdout: Option<ChildStdout>,
    /// Everything yt-dlp and ffmpeg say on stderr.
    pub stderr: Arc<StderrLog>,
    /// The `before_dl` info line, once yt-dlp has printed it (stream jobs).
    pub meta: Option<oneshot::Receiver<Option<Vec<u8>>>>,
    reaped: bool,
}

impl Proc {
    /// The process group id (= yt-dlp's pid), for logs.
    pub fn pgid(&self) -> i32 {
        self.pgid.as_raw()
    }

    /// Waits for yt-dlp to exit on its own, up to `grace`; kills the group after that.
    pub async fn wait(&mut self, grace: Duration) -> Option<ExitStatus> {
        match tokio::time::timeout(grace, self.child.wait()).await {
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

    /// SIGKILLs the whole group, reaps yt-dlp, then reaps any of its children that were
    /// re-parented to the sidecar (it is a child subreaper), so nothing lingers as a zombie.
    pub async fn kill(&mut self) {
        self.kill_group();
        let _ = self.child.wait().await;
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
    /// A job task that ends early (panic, abort) still takes its processes with it.
    fn drop(&mut self) {
        self.kill_group();
    }
}
