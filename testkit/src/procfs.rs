//! Processes as `/proc` describes them: the whole table, one process's subtree, and a
//! process's memory (RSS, PSS) and CPU time. Read-only, no ptrace; a process that vanishes
//! while being read is skipped (or gives `None`).

use std::collections::HashMap;

/// One process as `/proc/PID/stat` describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcInfo {
    /// Process id.
    pub pid: i32,
    /// Parent process id.
    pub ppid: i32,
    /// Process group id.
    pub pgid: i32,
    /// `comm`: the executable's name, at most 15 bytes (`yt-dlp`, `ffmpeg`, `streamgate-side`).
    pub comm: String,
    /// State letter: `R`, `S`, `D`, `Z` (zombie, exited but not reaped), …
    pub state: char,
    /// Resident set size, KiB.
    pub rss_kib: u64,
}

/// Every process on the machine.
pub fn all_processes() -> Vec<ProcInfo> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let page = page_kib();
    dir.filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            parse_stat(pid, &stat, page)
        })
        .collect()
}

/// `pid (comm) S ppid pgrp …`; comm may itself contain spaces and parentheses.
fn parse_stat(pid: i32, stat: &str, page_kib: u64) -> Option<ProcInfo> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat[open + 1..close].to_owned();
    // After ")": state is field 3 (index 0), ppid 4, pgrp 5, rss 24 (index 21).
    let rest: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    Some(ProcInfo {
        pid,
        ppid: rest.get(1)?.parse().ok()?,
        pgid: rest.get(2)?.parse().ok()?,
        comm,
        state: rest.first()?.chars().next()?,
        rss_kib: rest
            .get(21)
            .and_then(|r| r.parse::<u64>().ok())
            .unwrap_or(0)
            * page_kib,
    })
}

/// Every process below `root` (children, grandchildren, …), zombies included: a zombie is
/// a leftover too. The sidecar is a child subreaper, so orphans of its jobs stay below it.
pub fn descendants(root: u32) -> Vec<ProcInfo> {
    below(&all_processes(), root as i32)
}

/// `root` itself (if it is alive) and every process below it.
pub fn tree(root: u32) -> Vec<ProcInfo> {
    let all = all_processes();
    let Some(me) = all.iter().find(|p| p.pid == root as i32).cloned() else {
        return Vec::new();
    };
    let mut out = below(&all, me.pid);
    out.insert(0, me);
    out
}

fn below(all: &[ProcInfo], root: i32) -> Vec<ProcInfo> {
    let mut children: HashMap<i32, Vec<&ProcInfo>> = HashMap::new();
    for p in all {
        children.entry(p.ppid).or_default().push(p);
    }
    let mut out = Vec::new();
    let mut stack = vec![root];
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

/// A `kB` field of `/proc/PID/status` (`VmRSS`, `VmHWM`, …).
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| {
        let value = l.strip_prefix(field)?.strip_prefix(':')?;
        value.trim().trim_end_matches("kB").trim().parse().ok()
    })
}

/// Proportional set size of one process from `/proc/PID/smaps_rollup` (`Pss:`, KiB): every
/// page shared by k processes counts 1/k to each, so a tree's sum counts the pages forked
/// workers share with their parent once, not once per process as RSS does. None when the
/// file cannot be read (the process is gone, or another user's).
pub fn pss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|r| r.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Open file descriptors of one process (entries of `/proc/PID/fd`): sockets, pipes and
/// files alike, the count a leak of any of them grows. None when the folder cannot be read.
pub fn fd_count(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// CPU seconds of one process from `/proc/PID/stat`: (its own user + system time, the time
/// of its children it has waited for).
pub fn cpu_secs(pid: u32) -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let close = stat.rfind(')')?;
    let rest: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    // Fields 14–17 (utime, stime, cutime, cstime) are rest[11..15].
    let f = |i: usize| rest.get(i).and_then(|v| v.parse::<u64>().ok());
    let hz = clk_tck();
    Some(((f(11)? + f(12)?) as f64 / hz, (f(13)? + f(14)?) as f64 / hz))
}

/// Kernel memory of all TCP sockets, system-wide (`/proc/net/sockstat`, `TCP: … mem N`
/// pages), in KiB: the socket buffers a stalled stream fills, which no process's PSS holds.
pub fn tcp_mem_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/net/sockstat").ok()?;
    let line = s.lines().find(|l| l.starts_with("TCP:"))?;
    let mut it = line.split_whitespace();
    while let Some(w) = it.next() {
        if w == "mem" {
            return it.next()?.parse::<u64>().ok().map(|p| p * page_kib());
        }
    }
    None
}

fn page_kib() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let sz = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if sz > 0 { sz as u64 / 1024 } else { 4 }
}

fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_comm_with_spaces_and_parens() {
        let stat = "42 (a (b) c) S 7 42 42 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 5 1000 25";
        let p = parse_stat(42, stat, 4).unwrap();
        assert_eq!(
            (p.comm.as_str(), p.state, p.ppid, p.pgid, p.rss_kib),
            ("a (b) c", 'S', 7, 42, 100)
        );
    }

    #[test]
    fn sees_its_own_children_and_their_memory() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let mine = descendants(std::process::id());
        let seen = mine.iter().any(|p| p.pid == pid && p.comm == "sleep");
        let whole = tree(std::process::id());
        let rss = status_kib(std::process::id(), "VmRSS");
        let _ = child.kill();
        let _ = child.wait();
        assert!(seen, "{mine:?}");
        assert_eq!(whole[0].pid, std::process::id() as i32);
        assert!(whole.iter().any(|p| p.pid == pid), "{whole:?}");
        assert!(rss.is_some_and(|kib| kib > 0));
        assert!(pss_kib(std::process::id()).is_some_and(|kib| kib > 0));
        // stdin, stdout, stderr at least.
        assert!(fd_count(std::process::id()).is_some_and(|n| n >= 3));
    }
}
