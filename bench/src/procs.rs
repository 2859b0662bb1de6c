//! A gateway's process tree split into the gateway, its sidecar and the sidecar's jobs, by
//! RSS, PSS and CPU time. The `/proc` readers themselves are `streamgate_testkit::procfs`.

use streamgate_testkit::procfs::{ProcInfo, cpu_secs, pss_kib, tree};

/// Where a process of a gateway's tree belongs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Part {
    /// The gateway process itself.
    Root,
    /// A direct child of the root whose name starts with the sidecar prefix.
    Sidecar,
    /// Everything else below the root (what the sidecar started: yt-dlp, ffmpeg).
    Job,
}

/// `root`'s tree, each process with its part.
fn parts(root: u32, sidecar_prefix: &str) -> Vec<(Part, ProcInfo)> {
    let root = root as i32;
    tree(root as u32)
        .into_iter()
        .map(|p| {
            let part = if p.pid == root {
                Part::Root
            } else if p.ppid == root && p.comm.starts_with(sidecar_prefix) {
                Part::Sidecar
            } else {
                Part::Job
            };
            (part, p)
        })
        .collect()
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
    let t = parts(root, sidecar_prefix);
    let mut out = TreeRss {
        procs: t.len(),
        ..Default::default()
    };
    for (part, p) in &t {
        *match part {
            Part::Root => &mut out.root_kib,
            Part::Sidecar => &mut out.sidecar_kib,
            Part::Job => &mut out.jobs_kib,
        } += p.rss_kib;
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
    let mut out = TreePss::default();
    for (part, p) in parts(root, sidecar_prefix) {
        let kib = pss_kib(p.pid as u32).unwrap_or_else(|| {
            out.unreadable += 1;
            0
        });
        *out.by_comm.entry(p.comm).or_default() += 1;
        *match part {
            Part::Root => &mut out.root_kib,
            Part::Sidecar => &mut out.sidecar_kib,
            Part::Job => &mut out.jobs_kib,
        } += kib;
    }
    out
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
    let mut out = TreeCpu::default();
    for (part, p) in parts(root, sidecar_prefix) {
        let Some((own, reaped)) = cpu_secs(p.pid as u32) else {
            continue;
        };
        match part {
            Part::Root => out.root += own,
            Part::Sidecar => out.sidecar += own,
            Part::Job => out.jobs += own,
        }
        out.jobs += reaped;
    }
    out
}
