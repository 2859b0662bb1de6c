//! Child processes that cannot outlive a failed test. The view of live processes from
//! `/proc` (for "nothing left behind" assertions) is `streamgate_testkit::procfs`, shared
//! with the bench and re-exported here.

use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

pub use streamgate_testkit::procfs::{ProcInfo, all_processes, descendants, in_group};

/// A spawned child: SIGKILLed and reaped on drop (a panicking test leaks nothing).
pub struct ChildGuard {
    child: Option<Child>,
    name: String,
}

impl ChildGuard {
    /// Spawns `cmd`; `name` is for messages.
    pub fn spawn(mut cmd: Command, name: &str) -> std::io::Result<ChildGuard> {
        Ok(ChildGuard {
            child: Some(cmd.spawn()?),
            name: name.to_owned(),
        })
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Sends a signal (SIGTERM for graceful-shutdown tests).
    pub fn signal(&self, signal: Signal) {
        let _ = kill(Pid::from_raw(self.pid() as i32), signal);
    }

    /// The exit status if the child has exited (reaps it).
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Waits up to `limit` for the child to exit.
    pub async fn wait_timeout(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether the child is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.is_some() && self.try_wait().is_none()
    }

    /// The name given at spawn.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guarded_child_is_gone_after_drop() {
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let child = ChildGuard::spawn(cmd, "sleep").unwrap();
        let pid = child.pid() as i32;
        assert!(descendants(std::process::id()).iter().any(|p| p.pid == pid));
        drop(child);
        assert!(!descendants(std::process::id()).iter().any(|p| p.pid == pid));
    }
}
