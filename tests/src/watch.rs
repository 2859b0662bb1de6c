//! An inotify watch on one directory: proves that nothing was created or written there,
//! even a file that existed only for a moment (a listing afterwards would miss it).

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Watches a directory for creations, writes and moves-in.
pub struct DirWatch {
    fd: OwnedFd,
}

impl DirWatch {
    /// Starts watching `dir` (not recursive: creating a subdirectory is itself an event).
    pub fn new(dir: &Path) -> std::io::Result<DirWatch> {
        let path = CString::new(dir.as_os_str().as_bytes())?;
        // SAFETY: plain syscalls; the fd is owned right away and the path outlives the call.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mask = libc::IN_CREATE | libc::IN_MODIFY | libc::IN_MOVED_TO | libc::IN_CLOSE_WRITE;
        if unsafe { libc::inotify_add_watch(fd.as_raw_fd(), path.as_ptr(), mask) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(DirWatch { fd })
    }

    /// Names of the entries touched since the watch began (empty: nothing happened).
    pub fn touched(&self) -> Vec<String> {
        let mut names = Vec::new();
        let mut buf = [0u8; 64 * 1024];
        loop {
            // SAFETY: reads into a buffer we own, of the length we pass.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                return names;
            }
            let mut at = 0;
            let header = std::mem::size_of::<libc::inotify_event>();
            while at + header <= n as usize {
                // Event: wd, mask, cookie, len (u32 each at offsets 0..16), then `len` name bytes.
                let len = u32::from_ne_bytes(buf[at + 12..at + 16].try_into().unwrap()) as usize;
                let name = &buf[at + header..(at + header + len).min(n as usize)];
                let name = name.split(|b| *b == 0).next().unwrap_or_default();
                names.push(String::from_utf8_lossy(name).into_owned());
                at += header + len;
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
}
