//! Starting yt-dlp: the command line, a cleared environment, a private cwd, its own process
//! group (so yt-dlp and any ffmpeg it starts die together) and the pipes the job reads.

use std::ffi::{CString, OsString};
use std::os::fd::{BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::Command;

use crate::Error;
use crate::confine::Confinement;
use crate::proc::{Ends, Leader, Proc, job_pipes, raw};

/// Where yt-dlp's `before_dl` info line is written: an extra pipe, not a file.
const META_FD: i32 = 3;
/// Only the fields the metadata frame needs, so the line stays small.
const META_TEMPLATE: &str =
    "before_dl:%(.{title,ext,filesize,filesize_approx,format_id,vcodec,acodec,protocol})j";
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
    // No `file:` (a manifest naming local files), no raw `tcp:`/`udp:`: ffmpeg's only way
    // out is http(s) through the job's proxy (`http_proxy`, set by yt-dlp from `--proxy`).
    "--downloader-args",
    "ffmpeg_i:-protocol_whitelist http,https,tcp,tls,crypto,httpproxy",
];
/// Where a cached info JSON is read from (`--load-info-json`): a pipe, not a file.
pub(crate) const INFO_FD: i32 = 4;
/// Most descriptors a job's process gets at numbers of their own besides stdio (yt-dlp
/// two, ffmpeg one per input): a fixed array, as nothing may allocate after the fork.
const MAX_MOVES: usize = 8;
/// Where those descriptors are copied first, above every number they move to.
const MOVE_ABOVE: i32 = 64;
/// Only protocols whose bytes reach stdout without a file: yt-dlp's own downloaders for
/// ism, f4m, dash generators, websocket fragments, … write every fragment to the cwd.
/// A format with any other protocol is rejected before its download starts (exit 101).
const PROTOCOLS: &str = "protocol~='^(https?|m3u8(_native)?|http_dash_segments)(\\+(https?|m3u8(_native)?|http_dash_segments))*$'";

/// Where the info comes from: extraction of the URL (always after `--`), or the cached
/// info JSON on fd 4.
fn push_source(args: &mut Vec<OsString>, url: &str, cached: bool) {
    if cached {
        args.push("--load-info-json".into());
        args.push(format!("/dev/fd/{INFO_FD}").into());
    } else {
        args.push("--".into());
        args.push(url.into());
    }
}

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

/// Where one job's process runs: its own directory, in netns mode its namespace, and under
/// which limits and user.
#[derive(Clone, Copy, Debug)]
pub struct Place<'a> {
    pub dir: &'a Path,
    pub ns: Option<i32>,
    pub confine: Confinement,
}

impl Place<'_> {
    /// The variables pointing into the job's directory (cwd, HOME, TMPDIR, caches).
    pub fn env(&self) -> [(&'static str, &Path); 4] {
        ["HOME", "TMPDIR", "XDG_CACHE_HOME", "XDG_CONFIG_HOME"].map(|k| (k, self.dir))
    }

    /// Hands `fd`, which the job may open again by path (`/dev/fd/N`), to the job user:
    /// a pipe is its creator's with mode 0600, so the job would get EACCES.
    pub(crate) fn hand_over(&self, fd: BorrowedFd<'_>) -> std::io::Result<()> {
        match self.confine.user {
            Some(user) => std::os::unix::fs::fchown(fd, Some(user.uid), Some(user.gid)),
            None => Ok(()),
        }
    }

    /// Makes `cmd` start in this place. Between fork and exec, in this order: joins the
    /// namespace (needs root), puts each `(fd, number)` of `moves` at its number (handed to
    /// the job user), takes the limits and becomes the job user ([`Confinement::apply`]),
    /// enters the job's directory as that user (one it cannot reach fails the start), and
    /// asks to die with the sidecar (a uid change clears that request, so it comes last).
    pub(crate) fn enter(&self, cmd: &mut Command, moves: &[(RawFd, i32)]) -> std::io::Result<()> {
        let n = moves.len();
        if n > MAX_MOVES || moves.iter().any(|(_, target)| *target >= MOVE_ABOVE) {
            return Err(std::io::Error::other(
                "too many descriptors for a job's process",
            ));
        }
        for (fd, _) in moves {
            // SAFETY: the caller keeps `fd` open until the spawn returns.
            self.hand_over(unsafe { BorrowedFd::borrow_raw(*fd) })?;
        }
        let dir = CString::new(self.dir.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
        let mut fixed = [(-1, -1); MAX_MOVES];
        fixed[..n].copy_from_slice(moves);
        let (ns, confine) = (self.ns, self.confine);
        // SAFETY: between fork and exec only async-signal-safe calls (setns, fcntl, dup2,
        // setrlimit, prctl, setgroups, setgid, setuid, chdir), nothing allocated.
        unsafe {
            cmd.pre_exec(move || {
                let last = std::io::Error::last_os_error;
                if let Some(ns) = ns {
                    crate::egress::netns::join(ns)?;
                }
                // Copies above every target first, so no source is clobbered by another's
                // dup2 (the copies are close-on-exec).
                let mut high = [-1; MAX_MOVES];
                for (copy, (fd, _)) in high.iter_mut().zip(&fixed[..n]) {
                    *copy = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, MOVE_ABOVE);
                    if *copy < 0 {
                        return Err(last());
                    }
                }
                for (copy, (_, target)) in high.iter().zip(&fixed[..n]) {
                    if libc::dup2(*copy, *target) < 0 {
                        return Err(last());
                    }
                }
                confine.apply()?;
                if libc::chdir(dir.as_ptr()) != 0 {
                    return Err(last());
                }
                // The job's processes die with the sidecar even if it is SIGKILLed.
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        Ok(())
    }
}

/// What a job's yt-dlp is told besides the URL and format. (No `--max-filesize`: under
/// `-q` yt-dlp skips a large file silently and exits 0; the job enforces the size itself.)
pub struct JobArgs<'a> {
    /// The job's egress proxy (`--proxy`).
    pub proxy: &'a str,
}

impl YtDlp {
    /// `work_dir` must be private: the forkserver's cwd and the parent of every job's own
    /// directory.
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

    /// Options common to every run; the URL always comes after `--`. No plugins (a file in
    /// a directory yt-dlp searches would be code it runs), one entry of a page with several
    /// videos (they would be streamed back to back), every request through the job's proxy.
    fn base_args(&self, job: &JobArgs) -> Vec<OsString> {
        let mut args: Vec<OsString> = [
            "--ignore-config",
            "--no-cache-dir",
            "--no-plugin-dirs",
            "--no-playlist",
            "--playlist-items",
            "1",
            "--proxy",
            job.proxy,
        ]
        .into_iter()
        .map(Into::into)
        .collect();
        if let Some(ffmpeg) = &self.ffmpeg {
            args.push("--ffmpeg-location".into());
            args.push(ffmpeg.into());
        }
        args
    }

    /// `yt-dlp … -o - -f FORMAT --print-to-file before_dl:… /dev/fd/3 -- URL`; with
    /// `cached`, the info JSON comes from fd 4 instead of an extraction of the URL.
    pub fn stream_args(
        &self,
        url: &str,
        format: &str,
        cached: bool,
        job: &JobArgs,
    ) -> Vec<OsString> {
        let mut args = self.base_args(job);
        for arg in ["--no-part", "-q", "--no-progress"]
            .iter()
            .chain(STREAM_DOWNLOADERS)
        {
            args.push(arg.into());
        }
        for arg in ["--break-match-filters", PROTOCOLS, "-o", "-", "-f", format] {
            args.push(arg.into());
        }
        args.push("--print-to-file".into());
        args.push(META_TEMPLATE.into());
        args.push(format!("/dev/fd/{META_FD}").into());
        push_source(&mut args, url, cached);
        args
    }

    /// `yt-dlp … -J -f FORMAT -- URL`: the info with the selector's choice, nothing
    /// downloaded; with `cached`, the info JSON comes from fd 4 (no network at all).
    pub fn extract_args(
        &self,
        url: &str,
        format: &str,
        cached: bool,
        job: &JobArgs,
    ) -> Vec<OsString> {
        let mut args = self.base_args(job);
        for arg in ["-J", "-f", format] {
            args.push(arg.into());
        }
        push_source(&mut args, url, cached);
        args
    }

    /// `yt-dlp … -J [-f FORMAT] -- URL`: info only, nothing downloaded; with a selector, its
    /// choice too (the info is the same either way).
    pub fn resolve_args(&self, url: &str, format: Option<&str>, job: &JobArgs) -> Vec<OsString> {
        if let Some(format) = format {
            return self.extract_args(url, format, false, job);
        }
        let mut args = self.base_args(job);
        for arg in ["-J", "--", url] {
            args.push(arg.into());
        }
        args
    }

    /// Runs `yt-dlp --version` in `place`, as a job would run (also proves the
    /// installation works there, for the job user too). A failure names the path the job
    /// user cannot reach, when the mode bits tell.
    pub async fn version(&self, place: Place<'_>) -> Result<String, Error> {
        let user = place.confine.user;
        let who = user.map_or(String::new(), |u| {
            format!("as uid {} gid {} (--job-user): ", u.uid, u.gid)
        });
        let fail = |reason: String| {
            let interpreter = self.interpreter();
            let mut needed = vec![(place.dir, 0o1, "enter"), (self.path.as_path(), 0o5, "run")];
            needed.extend(interpreter.as_deref().map(|p| (p, 0o1, "run")));
            let hint = user.and_then(|u| u.blocked(&needed));
            Error::YtDlp {
                path: self.path.clone(),
                reason: format!(
                    "{who}{reason}{}",
                    hint.map_or(String::new(), |h| format!("; {h}"))
                ),
            }
        };
        let mut cmd = self.command();
        cmd.envs(place.env())
            .arg("--version")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        place
            .enter(&mut cmd, &[])
            .map_err(|e| fail(e.to_string()))?;
        let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
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

    /// The environment every job gets (also the pool's).
    pub(crate) fn env(&self) -> &[(OsString, OsString)] {
        &self.env
    }

    /// The jobs' cwd.
    pub(crate) fn work_dir(&self) -> &Path {
        &self.work_dir
    }

    /// The ffmpeg location, if set.
    pub(crate) fn ffmpeg(&self) -> Option<&Path> {
        self.ffmpeg.as_deref()
    }

    /// The interpreter of a script yt-dlp (the first word of its `#!` line).
    fn interpreter(&self) -> Option<PathBuf> {
        let head = std::fs::read(&self.path).ok()?;
        let line = head.split(|b| *b == b'\n').next()?;
        let interp = std::str::from_utf8(line.strip_prefix(b"#!")?).ok()?.trim();
        Some(PathBuf::from(interp.split_whitespace().next()?))
    }

    /// The interpreter of a Python yt-dlp (its `#!` line), for the pool.
    pub fn python(&self) -> Option<PathBuf> {
        let interp = self.interpreter()?;
        let name = interp.file_name()?.to_str()?;
        (name.starts_with("python") && interp.is_file()).then_some(interp)
    }

    /// Starts one job's process in a new process group, in its `place`. `with_meta` adds
    /// the fd-3 pipe; `info` (a pipe's read end) becomes fd 4.
    pub fn spawn(
        &self,
        args: Vec<OsString>,
        with_meta: bool,
        info: Option<OwnedFd>,
        place: Place,
    ) -> Result<Proc, Error> {
        let (ours, theirs) = job_pipes(with_meta)?;
        let Ends {
            stdout,
            stderr,
            meta,
        } = theirs;
        let mut cmd = self.command();
        cmd.envs(place.env())
            .args(&args)
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::from(stderr))
            .process_group(0);
        let moves: Vec<(RawFd, i32)> = [(raw(&meta), META_FD), (raw(&info), INFO_FD)]
            .into_iter()
            .filter_map(|(fd, target)| Some((fd?, target)))
            .collect();
        place.enter(&mut cmd, &moves).map_err(Error::Spawn)?;
        let child = cmd.spawn().map_err(Error::Spawn)?;
        drop(cmd); // closes our copies of the write ends, so the readers see EOF at exit
        drop((meta, info));
        Proc::new(Leader::Spawned(child), ours)
    }
}
