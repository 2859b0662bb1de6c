//! Child processes that cannot outlive a failed test, and a view of live processes from
//! `/proc` for "nothing left behind" assertions.

use std::collections::HashMap;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

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

/// One process as `/proc/PID/stat` describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcInfo {
    /// Process id.
    pub pid: i32,
    /// Parent process id.
    pub ppid: i32,
    /// Process group id.
    pub pgid: i32,
    /// `comm`: the executable's name, at most 15 bytes (`yt-dlp`, `ffmpeg`).
    pub comm: String,
    /// State letter: `R`, `S`, `D`, `Z` (zombie, exited but not reaped), …
    pub state: char,
}

/// Every process on the machine (those that vanish while being read are skipped).
pub fn all_processes() -> Vec<ProcInfo> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            parse_stat(
                pid,
                &std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?,
            )
        })
        .collect()
}

/// `pid (comm) S ppid pgrp …`; comm may itself contain spaces and parentheses.
fn parse_stat(pid: i32, stat: &str) -> Option<ProcInfo> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat[open + 1..close].to_owned();
    let mut rest = stat[close + 1..].split_whitespace();
    let state = rest.next()?.chars().next()?;
    let ppid = rest.next()?.parse().ok()?;
    let pgid = rest.next()?.parse().ok()?;
    Some(ProcInfo {
        pid,
        ppid,
        pgid,
        comm,
        state,
    })
}

/// Every process below `root` (children, grandchildren, …), zombies included: a zombie is
/// a leftover too. The sidecar is a child subreaper, so orphans of its jobs stay below it.
pub fn descendants(root: u32) -> Vec<ProcInfo> {
    let all = all_processes();
    let mut children: HashMap<i32, Vec<&ProcInfo>> = HashMap::new();
    for p in &all {
        children.entry(p.ppid).or_default().push(p);
    }
    let mut out = Vec::new();
    let mut stack = vec![root as i32];
    while let Some(pid) = stack.pop() {
        for child in children.get(&pid).into_iter().flatten() {
            out.push((*child).clone());
            stack.push(child.pid);
        }
    }
    out
}

/// Processes anywhere on the machine in process group `pgid`.
pub fn in_group(pgid: i32) -> Vec<ProcInfo> {
    all_processes()
        .into_iter()
        .filter(|p| p.pgid == pgid)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_comm_with_spaces_and_parens() {
        let p = parse_stat(42, "42 (a (b) c) S 7 42 42 0 -1").unwrap();
        assert_eq!(
            (p.comm.as_str(), p.state, p.ppid, p.pgid),
            ("a (b) c", 'S', 7, 42)
        );
    }

    #[test]
    fn sees_its_own_children() {
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let child = ChildGuard::spawn(cmd, "sleep").unwrap();
        let mine = descendants(std::process::id());
        assert!(
            mine.iter()
                .any(|p| p.pid == child.pid() as i32 && p.comm == "sleep"),
            "{mine:?}"
        );
    }
}
