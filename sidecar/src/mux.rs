//! Merges through pipes: the sidecar's fetcher feeds ffmpeg each format on a pipe of its
//! own, and ffmpeg — no network at all: a protocol whitelist of pipes only, inside the
//! job's empty network namespace — writes one container that streams to its stdout:
//! fragmented MP4 when every input is MP4 (what browsers play), WebM for WebM inputs,
//! Matroska otherwise.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdout, Command};
use tokio::task::JoinSet;

use crate::fetch::FetchError;
use crate::ytdlp::Place;

/// Bytes read from ffmpeg's stdout at a time (one data frame's worth).
const READ: usize = 256 * 1024;
/// First input's fd in ffmpeg; the next ones follow.
const FIRST_FD: i32 = 3;
/// The longest a failed merge waits for the rest of ffmpeg's stderr.
const STDERR_WAIT: Duration = Duration::from_secs(2);
/// ffmpeg's stderr kept for the error message.
const STDERR_KEEP: usize = 4096;

/// The container the merge is written in, from the inputs' extensions.
pub(crate) fn container(exts: &[&str]) -> &'static [&'static str] {
    let all = |set: &[&str]| exts.iter().all(|e| set.contains(e));
    if all(&["mp4", "m4a", "m4v", "mov"]) {
        &[
            "-f",
            "mp4",
            "-movflags",
            "frag_keyframe+empty_moov+default_base_moof",
        ]
    } else if all(&["webm", "weba"]) {
        &["-f", "webm"]
    } else {
        &["-f", "matroska"]
    }
}

/// The extension of what [`container`]'s arguments write (a HEAD's answer).
pub(crate) fn extension(format_args: &[&str]) -> &'static str {
    match format_args.get(1) {
        Some(&"mp4") => "mp4",
        Some(&"webm") => "webm",
        _ => "mkv",
    }
}

/// The ffmpeg executable: `--ffmpeg` names it or its directory; else `ffmpeg` on PATH.
pub(crate) fn ffmpeg(location: Option<&Path>) -> PathBuf {
    match location {
        Some(dir) if dir.is_dir() => dir.join("ffmpeg"),
        Some(file) => file.to_owned(),
        None => PathBuf::from("ffmpeg"),
    }
}

/// Starts ffmpeg on `inputs` (one stream of bytes each) in the job's `place`; its output as
/// a stream. Dropping the stream kills ffmpeg and stops every input's fetch.
pub(crate) fn merge(
    ffmpeg: &Path,
    inputs: Vec<BoxStream<'static, Result<Bytes, FetchError>>>,
    format_args: &[&str],
    place: Place,
) -> std::io::Result<impl Stream<Item = Result<Bytes, FetchError>> + use<>> {
    let mut reads = Vec::with_capacity(inputs.len());
    let mut writes = Vec::with_capacity(inputs.len());
    for _ in &inputs {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        reads.push(r);
        writes.push(w);
    }
    let mut cmd = Command::new(ffmpeg);
    cmd.args(["-hide_banner", "-loglevel", "error", "-nostdin"]);
    for i in 0..inputs.len() {
        let fd = FIRST_FD + i as i32;
        cmd.args(["-protocol_whitelist", "pipe", "-i", &format!("pipe:{fd}")]);
    }
    for i in 0..inputs.len() {
        cmd.args(["-map", &i.to_string()]);
    }
    cmd.args(["-c", "copy"]).args(format_args).arg("pipe:1");
    cmd.env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let moves: Vec<(i32, i32)> = (reads.iter().map(AsRawFd::as_raw_fd))
        .zip(FIRST_FD..)
        .collect();
    place.enter(&mut cmd, &moves)?;
    let mut child = cmd.spawn()?;
    drop(cmd);
    drop(reads);
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    let failed = Arc::new(Mutex::new(None::<FetchError>));
    let mut pumps = JoinSet::new();
    for (input, write) in inputs.into_iter().zip(writes) {
        pumps.spawn(pump(input, write, Arc::clone(&failed)));
    }
    // Read to the end (ffmpeg never blocks on it), the start kept; it ends when ffmpeg does.
    let log = tokio::spawn(async move {
        let (mut stderr, mut log) = (stderr, Vec::new());
        let mut buf = [0u8; 1024];
        while let Ok(n) = stderr.read(&mut buf).await {
            if n == 0 {
                break;
            }
            if log.len() < STDERR_KEEP {
                log.extend_from_slice(&buf[..n]);
            }
        }
        log
    });
    let state = Merge {
        child,
        stdout,
        _pumps: pumps,
        failed,
        log: Some(log),
        done: false,
    };
    Ok(futures::stream::unfold(state, Merge::step))
}

/// Copies one input into its pipe; a failed fetch is recorded and closes the pipe.
async fn pump(
    mut input: BoxStream<'static, Result<Bytes, FetchError>>,
    write: OwnedFd,
    failed: Arc<Mutex<Option<FetchError>>>,
) {
    let Ok(mut pipe) = tokio::net::unix::pipe::Sender::from_owned_fd(write) else {
        return;
    };
    while let Some(item) = input.next().await {
        match item {
            Ok(bytes) => {
                if pipe.write_all(&bytes).await.is_err() {
                    return; // ffmpeg exited; its status tells why
                }
            }
            Err(e) => {
                failed
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get_or_insert(e);
                return;
            }
        }
    }
}

struct Merge {
    child: Child,
    stdout: ChildStdout,
    /// The inputs' pumps, held to be aborted when the merge is dropped.
    _pumps: JoinSet<()>,
    failed: Arc<Mutex<Option<FetchError>>>,
    /// ffmpeg's stderr, whole once it has exited (taken for the error message).
    log: Option<tokio::task::JoinHandle<Vec<u8>>>,
    done: bool,
}

impl Drop for Merge {
    /// A client that leaves takes ffmpeg with it at once, reaped here: no zombie waits for
    /// the runtime's next look at its children.
    fn drop(&mut self) {
        if let Some(pid) = self.child.id() {
            let pid = nix::unistd::Pid::from_raw(pid as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(pid, None);
        }
    }
}

impl Merge {
    async fn step(mut self) -> Option<(Result<Bytes, FetchError>, Merge)> {
        if self.done {
            return None;
        }
        let mut buf = BytesMut::with_capacity(READ);
        match self.stdout.read_buf(&mut buf).await {
            Ok(n) if n > 0 => {
                if let Some(e) = self.take_failure() {
                    return self.fail(e);
                }
                Some((Ok(buf.freeze()), self))
            }
            Ok(_) => {
                let status = self.child.wait().await;
                if let Some(e) = self.take_failure() {
                    return self.fail(e);
                }
                match status {
                    Ok(s) if s.success() => None,
                    other => {
                        // ffmpeg has exited: its stderr ends now, however late its reader
                        // runs on a busy runtime (bounded all the same).
                        let log = match self.log.take() {
                            Some(reader) => tokio::time::timeout(STDERR_WAIT, reader)
                                .await
                                .ok()
                                .and_then(Result::ok)
                                .unwrap_or_default(),
                            None => Vec::new(),
                        };
                        let why = String::from_utf8_lossy(&log).trim().to_owned();
                        let status = other.as_ref().ok().copied();
                        self.fail(match crate::classify::past_a_limit(&why, status) {
                            Some(limit) => FetchError::Confined(limit),
                            None => FetchError::Http(format!("ffmpeg failed ({other:?}): {why}")),
                        })
                    }
                }
            }
            Err(e) => self.fail(FetchError::Http(format!("reading ffmpeg: {e}"))),
        }
    }

    fn take_failure(&self) -> Option<FetchError> {
        self.failed.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    fn fail(mut self, e: FetchError) -> Option<(Result<Bytes, FetchError>, Merge)> {
        let _ = self.child.start_kill();
        self.done = true;
        Some((Err(e), self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containers() {
        assert_eq!(container(&["mp4", "m4a"])[1], "mp4");
        assert_eq!(container(&["webm", "webm"])[1], "webm");
        assert_eq!(container(&["mp4", "webm"])[1], "matroska");
    }
}
