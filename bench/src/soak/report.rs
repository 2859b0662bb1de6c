//! The soak's Markdown report: the verdict, outcomes by kind and class, the growth check,
//! and the samples over time as a table (the plot shows the same samples).

use std::fmt::Write;
use std::path::Path;

use super::Run;
use super::load::Group;
use super::sample::Sample;

/// Rows of the table over time (samples merged into this many intervals at most).
const ROWS: usize = 24;

pub fn render(run: &Run, png: &Path) -> String {
    let a = &run.args;
    let mut md = String::new();
    let verdict = if run.verdict.failures.is_empty() {
        "**pass**"
    } else {
        "**FAIL**"
    };
    let _ = writeln!(
        md,
        "# Soak: {} s, {} clients, mixed requests (issue 13)\n",
        a.secs, a.concurrency
    );
    let _ = writeln!(
        md,
        "Started {}; seed {} (`scripts/soak {} --seed {}` repeats the mix); idle-write timeout {} s; \
         `nproc` {}; load average before `{}`, after `{}`. One gateway + its sidecar on loopback, \
         fixtures of 4 s and 60 s (tests/fixtures/make-media) served on loopback. Gateway log: `{}`.\n",
        run.started,
        run.seed,
        a.secs,
        run.seed,
        a.idle_write_secs,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        run.load_before.trim(),
        run.load_after.trim(),
        run.gateway_log.display()
    );
    let _ = writeln!(md, "Verdict: {verdict}.\n");
    for f in &run.verdict.failures {
        let _ = writeln!(md, "- {f}");
    }
    if !run.verdict.failures.is_empty() {
        md.push('\n');
    }
    if let Some(name) = png.file_name() {
        let _ = writeln!(
            md,
            "![PSS, descriptors and outcomes over time]({})\n",
            name.to_string_lossy()
        );
    }

    let _ = writeln!(md, "## Outcomes\n");
    let _ = writeln!(
        md,
        "| request | class | detail | count |\n|---|---|---|---:|"
    );
    for ((kind, group, detail), n) in &run.outcomes.0 {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} |",
            kind.name(),
            group.name(),
            detail.replace('|', "/"),
            n
        );
    }
    let _ = writeln!(md, "| all | | | {} |\n", run.outcomes.total());

    let _ = writeln!(
        md,
        "## Growth\n\nMedians of the gateway's and the sidecar's own PSS and descriptors over the \
         second tenth of the run (the first is warm-up) against the last tenth; allowed: PSS \
         × {:.2} + {} MiB, descriptors + {} per client. Once the load stopped and the jobs ended (≤ {} s): \
         descriptors at most {} above the baseline, no job process left.\n",
        1.0 + super::PSS_SLACK_FRACTION,
        super::PSS_SLACK_KIB / 1024.0,
        super::FD_SLACK_PER_CLIENT,
        super::SETTLE.as_secs(),
        super::FD_AFTER_SLACK
    );
    let _ = writeln!(
        md,
        "| what | second tenth | last tenth | allowed |\n|---|---:|---:|---:|"
    );
    for (what, first, last, allowed) in &run.verdict.growth {
        let _ = writeln!(md, "| {what} | {first:.0} | {last:.0} | {allowed:.0} |");
    }
    md.push('\n');

    let _ = writeln!(
        md,
        "## Over time\n\nPSS in MiB (`Pss:` of `/proc/PID/smaps_rollup`; jobs = every process \
         below the sidecar: yt-dlp, ffmpeg, the warm pool), open descriptors (`/proc/PID/fd`), \
         job processes (the warm pool not counted) at the row's last sample; requests finished \
         in the row's interval by class.\n"
    );
    let _ = write!(
        md,
        "| t (s) | PSS gateway | PSS sidecar | PSS jobs | fds gateway | fds sidecar | jobs |"
    );
    for g in Group::ALL {
        let _ = write!(md, " {} |", g.name());
    }
    md.push('\n');
    md.push_str(&"|---".repeat(7 + Group::ALL.len()));
    md.push_str("|\n");
    row(&mut md, "baseline", &run.baseline, None);
    let step = run.samples.len().div_ceil(ROWS).max(1);
    let mut prev = &run.baseline;
    for chunk in run.samples.chunks(step) {
        let last = chunk.last().expect("chunks are not empty");
        row(&mut md, &last.at.as_secs().to_string(), last, Some(prev));
        prev = last;
    }
    row(&mut md, "after", &run.after, Some(prev));
    md
}

fn row(md: &mut String, t: &str, s: &Sample, prev: Option<&Sample>) {
    let mib = |k: u64| format!("{:.1}", k as f64 / 1024.0);
    let _ = write!(
        md,
        "| {t} | {} | {} | {} | {} | {} | {} |",
        mib(s.gateway_pss),
        mib(s.sidecar_pss),
        mib(s.jobs_pss),
        s.gateway_fds,
        s.sidecar_fds,
        s.jobs
    );
    for (i, n) in s.by_group.iter().enumerate() {
        let before = prev.map_or(*n, |p| p.by_group[i]);
        let _ = write!(md, " {} |", n - before);
    }
    md.push('\n');
}
