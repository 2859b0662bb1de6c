//! An inotify watch on a directory and every directory created in it (a job's own
//! directory under the sidecar's work dir): proves that nothing was created or written
//! there, even a file that existed only for a moment (a listing afterwards would miss it).

use std::collections::HashMap;
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

const MASK: u32 = libc::IN_CREATE | libc::IN_MODIFY | libc::IN_MOVED_TO | libc::IN_CLOSE_WRITE;

/// Watches a directory tree for creations, writes and moves-in.
pub struct DirWatch {
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct State {
    fd: OwnedFd,
    root: PathBuf,
    /// Watch descriptor → path relative to the root ("" for the root, "job-1/" below it).
    dirs: HashMap<i32, String>,
    seen: Vec<String>,
}

impl DirWatch {
    /// Starts watching `dir`; a directory created in it is watched too as soon as it is
    /// seen, and whatever it already holds by then is reported.
    pub fn new(dir: &Path) -> std::io::Result<DirWatch> {
        // SAFETY: a plain syscall; the fd is owned right away.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut state = State {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            root: dir.to_owned(),
            dirs: HashMap::new(),
            seen: Vec::new(),
        };
        state.watch("")?;
        let state = Arc::new(Mutex::new(state));
        let stop = Arc::new(AtomicBool::new(false));
        let (bg, halt) = (Arc::clone(&state), Arc::clone(&stop));
        // Subdirectories must be watched within moments of their creation: a thread polls.
        let thread = std::thread::spawn(move || {
            while !halt.load(Ordering::Relaxed) {
                let fd = bg.lock().unwrap().fd.as_raw_fd();
                let mut pfd = libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one pollfd we own.
                unsafe { libc::poll(&mut pfd, 1, 20) };
                bg.lock().unwrap().drain();
            }
        });
        Ok(DirWatch {
            state,
            stop,
            thread: Some(thread),
        })
    }

    /// Paths (relative to the watched directory; `job-1/x` below a subdirectory) touched
    /// since the watch began. Empty: nothing happened.
    pub fn touched(&self) -> Vec<String> {
        let mut state = self.state.lock().unwrap();
        state.drain();
        state.seen.clone()
    }
}

impl Drop for DirWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl State {
    fn watch(&mut self, rel: &str) -> std::io::Result<()> {
        let path = CString::new(self.root.join(rel).as_os_str().as_bytes())?;
        // SAFETY: the path outlives the call.
        let wd = unsafe { libc::inotify_add_watch(self.fd.as_raw_fd(), path.as_ptr(), MASK) };
        if wd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        self.dirs.insert(wd, rel.to_owned());
        Ok(())
    }

    fn drain(&mut self) {
        let mut buf = [0u8; 64 * 1024];
        loop {
            // SAFETY: reads into a buffer we own, of the length we pass.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                return;
            }
            let mut at = 0;
            let header = std::mem::size_of::<libc::inotify_event>();
            while at + header <= n as usize {
                // Event: wd, mask, cookie, len (u32 each at offsets 0..16), then `len` name bytes.
                let field =
                    |o: usize| u32::from_ne_bytes(buf[at + o..at + o + 4].try_into().unwrap());
                let (wd, mask, len) = (field(0) as i32, field(4), field(12) as usize);
                let name = &buf[at + header..(at + header + len).min(n as usize)];
                let name = name.split(|b| *b == 0).next().unwrap_or_default();
                at += header + len;
                if name.is_empty() {
                    continue; // about a watched directory itself (e.g. its watch ended)
                }
                let parent = self.dirs.get(&wd).cloned().unwrap_or_default();
                let rel = format!("{parent}{}", String::from_utf8_lossy(name));
                self.seen.push(rel.clone());
                if mask & libc::IN_ISDIR != 0 && mask & libc::IN_CREATE != 0 {
                    let sub = format!("{rel}/");
                    if self.watch(&sub).is_ok() {
                        // Whatever was made before the watch took hold.
                        for entry in std::fs::read_dir(self.root.join(&sub))
                            .into_iter()
                            .flatten()
                        {
                            let entry = entry.map(|e| e.file_name().to_string_lossy().into_owned());
                            self.seen
                                .push(format!("{sub}{}", entry.unwrap_or_default()));
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sees_a_file_that_came_and_went() {
        let dir = tempfile::tempdir().unwrap();
        let watch = DirWatch::new(dir.path()).unwrap();
        assert!(watch.touched().is_empty());
        std::fs::write(dir.path().join("blip"), b"x").unwrap();
        std::fs::remove_file(dir.path().join("blip")).unwrap();
        assert!(watch.touched().contains(&"blip".to_owned()));
    }

    #[test]
    fn sees_files_in_new_subdirectories() {
        let dir = tempfile::tempdir().unwrap();
        let watch = DirWatch::new(dir.path()).unwrap();
        std::fs::create_dir(dir.path().join("job")).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
        std::fs::write(dir.path().join("job/frag"), b"x").unwrap();
        std::fs::remove_dir_all(dir.path().join("job")).unwrap();
        let touched = watch.touched();
        assert!(touched.contains(&"job".to_owned()), "{touched:?}");
        assert!(touched.contains(&"job/frag".to_owned()), "{touched:?}");
    }
}
