//! Resident memory of process trees, read from /proc (no sampling profiler, no ptrace).

use std::collections::HashMap;

#[derive(Clone, Debug)]
pub struct Proc {
    pub pid: u32,
    pub ppid: u32,
    /// `comm`, truncated by the kernel to 15 bytes.
    pub comm: String,
    pub rss_kib: u64,
}

fn page_kib() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let sz = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if sz > 0 { sz as u64 / 1024 } else { 4 }
}

fn read_proc(pid: u32, page_kib: u64) -> Option<Proc> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat[open + 1..close].to_string();
    // Fields after ")": state is field 3 (index 0), ppid field 4, rss field 24.
    let rest: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    let ppid = rest.get(1)?.parse().ok()?;
    let rss_pages: u64 = rest.get(21)?.parse().ok()?;
    Some(Proc {
        pid,
        ppid,
        comm,
        rss_kib: rss_pages * page_kib,
    })
}

/// Every process currently visible in /proc.
pub fn all() -> Vec<Proc> {
    let pk = page_kib();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| read_proc(pid, pk))
        .collect()
}

/// `root` and all its descendants.
pub fn tree(root: u32) -> Vec<Proc> {
    let procs = all();
    let mut children: HashMap<u32, Vec<&Proc>> = HashMap::new();
    let mut by_pid = HashMap::new();
    for p in &procs {
        children.entry(p.ppid).or_default().push(p);
        by_pid.insert(p.pid, p);
    }
    let mut out = Vec::new();
    let Some(r) = by_pid.get(&root) else {
        return out;
    };
    let mut stack = vec![*r];
    while let Some(p) = stack.pop() {
        out.push(p.clone());
        if let Some(c) = children.get(&p.pid) {
            stack.extend(c.iter().copied());
        }
    }
    out
}

/// RSS of a gateway's tree, split into the gateway process itself, its sidecar process(es)
/// and everything the sidecar started (yt-dlp, ffmpeg).
#[derive(Clone, Copy, Debug, Default)]
pub struct TreeRss {
    pub root_kib: u64,
    pub sidecar_kib: u64,
    pub jobs_kib: u64,
    pub procs: usize,
}

impl TreeRss {
    pub fn total_kib(&self) -> u64 {
        self.root_kib + self.sidecar_kib + self.jobs_kib
    }
    pub fn max(self, o: TreeRss) -> TreeRss {
        TreeRss {
            root_kib: self.root_kib.max(o.root_kib),
            sidecar_kib: self.sidecar_kib.max(o.sidecar_kib),
            jobs_kib: self.jobs_kib.max(o.jobs_kib),
            procs: self.procs.max(o.procs),
        }
    }
}

/// Splits `root`'s tree. A direct child whose name starts with `sidecar_prefix` is the
/// sidecar; its descendants are jobs. Other descendants of the root count as jobs too.
pub fn tree_rss(root: u32, sidecar_prefix: &str) -> TreeRss {
    let t = tree(root);
    let sidecars: Vec<u32> = t
        .iter()
        .filter(|p| p.ppid == root && p.comm.starts_with(sidecar_prefix))
        .map(|p| p.pid)
        .collect();
    let mut out = TreeRss {
        procs: t.len(),
        ..Default::default()
    };
    for p in &t {
        if p.pid == root {
            out.root_kib += p.rss_kib;
        } else if sidecars.contains(&p.pid) {
            out.sidecar_kib += p.rss_kib;
        } else {
            out.jobs_kib += p.rss_kib;
        }
    }
    out
}

/// Sum of the RSS of the given processes' trees (for sets of direct yt-dlp processes).
pub fn sum_trees(roots: &[u32]) -> u64 {
    roots
        .iter()
        .map(|&r| tree(r).iter().map(|p| p.rss_kib).sum::<u64>())
        .sum()
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

/// PSS of a gateway's tree, split like [`TreeRss`], with the processes counted by name.
#[derive(Clone, Debug, Default)]
pub struct TreePss {
    pub root_kib: u64,
    pub sidecar_kib: u64,
    pub jobs_kib: u64,
    /// Processes in the tree by `comm` (yt-dlp pool workers show as python3…).
    pub by_comm: std::collections::BTreeMap<String, usize>,
    /// Processes whose smaps_rollup could not be read (counted as 0).
    pub unreadable: usize,
}

impl TreePss {
    pub fn total_kib(&self) -> u64 {
        self.root_kib + self.sidecar_kib + self.jobs_kib
    }
}

/// [`tree_rss`]'s split, by PSS.
pub fn tree_pss(root: u32, sidecar_prefix: &str) -> TreePss {
    let t = tree(root);
    let sidecars: Vec<u32> = t
        .iter()
        .filter(|p| p.ppid == root && p.comm.starts_with(sidecar_prefix))
        .map(|p| p.pid)
        .collect();
    let mut out = TreePss::default();
    for p in &t {
        let kib = pss_kib(p.pid).unwrap_or_else(|| {
            out.unreadable += 1;
            0
        });
        *out.by_comm.entry(p.comm.clone()).or_default() += 1;
        if p.pid == root {
            out.root_kib += kib;
        } else if sidecars.contains(&p.pid) {
            out.sidecar_kib += kib;
        } else {
            out.jobs_kib += kib;
        }
    }
    out
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

fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
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

/// CPU seconds of a gateway's tree, split like [`TreeRss`]; every process counts its own
/// time and that of the children it reaped (pool workers that ended, ffmpeg).
#[derive(Clone, Copy, Debug, Default)]
pub struct TreeCpu {
    pub root: f64,
    pub sidecar: f64,
    pub jobs: f64,
}

impl TreeCpu {
    pub fn minus(self, o: TreeCpu) -> TreeCpu {
        TreeCpu {
            root: self.root - o.root,
            sidecar: self.sidecar - o.sidecar,
            jobs: self.jobs - o.jobs,
        }
    }
}

pub fn tree_cpu(root: u32, sidecar_prefix: &str) -> TreeCpu {
    let t = tree(root);
    let mut out = TreeCpu::default();
    for p in &t {
        let Some((own, reaped)) = cpu_secs(p.pid) else {
            continue;
        };
        if p.pid == root {
            out.root += own;
            out.jobs += reaped;
        } else if p.ppid == root && p.comm.starts_with(sidecar_prefix) {
            out.sidecar += own;
            out.jobs += reaped;
        } else {
            out.jobs += own + reaped;
        }
    }
    out
}
