//! Issue 10's block of the report (the native data path), from [`NativeResults`].

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::Ctx;
use crate::native::{FbRow, NativeResults, RunCpu, Sys};
use crate::procs::TreePss;
use crate::report::{Verdict, median_mbps as e2e, median_transfer_mbps as transfer, met};
use crate::sections::{Mode, Results};
use crate::stats::{fmt_kib, fmt_mbps, fmt_ms, mbps, ms, pct, ratio};
use crate::systems::Kind;

fn comms(t: &TreePss) -> String {
    t.by_comm
        .iter()
        .map(|(c, k)| format!("{c} {k}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The Markdown block of this module: parameters, the targets, one table per section.
pub fn render(ctx: &Ctx, res: &Results, n: &NativeResults) -> String {
    let a = &ctx.args;
    let mut md = String::new();
    let w = &mut md;
    if !(a.has("pss") || a.has("firstbyte") || a.has("ceiling")) {
        return md;
    }
    let _ = writeln!(w, "## Issue 10: the native data path\n");
    let _ = writeln!(
        w,
        "Sections `pss`, `firstbyte`, `ceiling` (bench/src/native.rs) and the after-resolve figure of `ttfb`. \
         *gateway (defaults)* is the run's gateway on its embedded default config: its sidecar holds up to 1024 streams \
         and runs four extractions per core at once, the others queued in order (`--max-streams`, `--max-extractions`). \
         Ratios are taken within this one run.\n"
    );
    let _ = writeln!(w, "| parameter | value |\n|---|---|");
    let _ = writeln!(
        w,
        "| PSS | {} streams of the big fixture opened together, each read for 1 MiB and then never again; PSS of every process of the tree from `/proc/PID/smaps_rollup`, idle (lowest of 3 samples) and 3 s after the last stream opened (highest of 5); on a gateway and an old service started for this section (fresh processes, one unmeasured stream each), not the run's |",
        a.pss_streams
    );
    let _ = writeln!(
        w,
        "| first byte at n | n = {:?} streams of the small fixture, distinct URLs (no cache helps), started together, each read to its end; old service up to n = {}, direct up to n = {} |",
        a.fb_levels, a.fb_peer_max, a.fb_direct_max
    );
    let _ = writeln!(
        w,
        "| single stream | {} run(s) per system of the big fixture, interleaved, median; curl: `curl -sS --fail -o - URL`, its stdout read by the bench like direct yt-dlp's |",
        a.ceiling_runs
    );
    let _ = writeln!(
        w,
        "| wall time of this block | {:.0} s |\n",
        n.wall.as_secs_f64()
    );

    // ------------------------------------------------ targets
    let fb = |s: Sys, k: usize| n.fb.iter().find(|r| r.sys == s && r.n == k);
    let mut v: Vec<Verdict> = Vec::new();
    let pss_row = n.pss.iter().find(|r| r.sys == Sys::Gateway);
    let peer_pss = n.pss.iter().find(|r| r.sys == Sys::Peer);
    v.push(match pss_row {
        Some(r) if r.opened > 0 => {
            let per = r.per(TreePss::total_kib);
            Verdict {
                target: format!(
                    "PSS of the whole tree ≤ 256 KiB per stalled single-file stream ({} streams)",
                    r.asked
                ),
                measured: format!(
                    "{} per stream, {} of {} open ({}); old service {}",
                    fmt_kib(Some(per)),
                    r.opened,
                    r.asked,
                    r.sys.name(),
                    peer_pss
                        .map(|p| fmt_kib(Some(p.per(TreePss::total_kib))))
                        .unwrap_or_else(|| "–".into())
                ),
                verdict: met(per <= 256.0 && r.opened == r.asked, || {
                    if per > 256.0 {
                        format!(
                            "{:.2}× the budget ({} over)",
                            per / 256.0,
                            fmt_kib(Some(per - 256.0))
                        )
                    } else {
                        format!("only {} of {} streams opened", r.opened, r.asked)
                    }
                }),
            }
        }
        _ => Verdict {
            target: "PSS ≤ 256 KiB per stalled stream".into(),
            measured: "–".into(),
            verdict: "not measured".into(),
        },
    });
    let p50 = |r: Option<&FbRow>| r.and_then(|r| pct(&r.ttfb_ms, 50.0));
    v.push(match (p50(fb(Sys::Gateway, 32)), p50(fb(Sys::Peer, 32))) {
        (Some(g), Some(p)) => tenth_of("n = 32: first byte p50 ≤ 0.10 × the old service's", g, p),
        _ => Verdict {
            target: "n = 32: first byte p50 ≤ 0.10 × the old service's".into(),
            measured: "–".into(),
            verdict: "not measured".into(),
        },
    });
    // Issue 10's burst target: n = 256 streams with 0 failures.
    for r in n.fb.iter().filter(|r| r.sys == Sys::Gateway && r.n >= 256) {
        let fails = r.n - r.ok;
        v.push(Verdict {
            target: format!("n = {}: 0 failures ({})", r.n, r.sys.name()),
            measured: format!(
                "{fails} of {} failed{}",
                r.n,
                if fails > 0 {
                    format!(" (statuses {})", statuses(&r.statuses))
                } else {
                    String::new()
                }
            ),
            verdict: met(fails == 0, || {
                format!(
                    "{fails} failures; first: {}",
                    r.first_failure.clone().unwrap_or_default()
                )
            }),
        });
    }
    let size = ctx.big.size;
    let c = |s: Sys| n.ceiling.get(&s).and_then(|x| e2e(x, size));
    for (other, k, label) in [
        (Sys::Direct, 1.0, "direct yt-dlp"),
        (Sys::Curl, 0.8, "curl of the same file"),
    ] {
        v.push(match (c(Sys::Gateway), c(other)) {
            (Some(g), Some(o)) => Verdict {
                target: format!("single stream ≥ {k:.1} × {label} (end to end)"),
                measured: format!(
                    "{} vs {} → {:.2}×",
                    fmt_mbps(Some(g)),
                    fmt_mbps(Some(o)),
                    g / o
                ),
                verdict: met(g >= k * o, || {
                    format!(
                        "{:.2}× instead of ≥ {k:.2}× ({} short)",
                        g / o,
                        fmt_mbps(Some(k * o - g))
                    )
                }),
            },
            _ => Verdict {
                target: format!("single stream ≥ {k:.1} × {label}"),
                measured: "–".into(),
                verdict: "not measured".into(),
            },
        });
    }
    let tt = |k: Kind, m: Mode| res.ttfb.get(&(k, m)).and_then(|s| pct(&s.ttfb_ms, 50.0));
    v.push(
        match (
            tt(Kind::Gateway, Mode::AfterResolve),
            tt(Kind::Peer, Mode::Warm),
            &res.resolve_na,
        ) {
            (_, _, Some(na)) => Verdict {
                target: "first byte right after a resolve ≤ 0.10 × the old service's warm".into(),
                measured: na.clone(),
                verdict: "not measured".into(),
            },
            (Some(g), Some(p), None) => tenth_of(
                "first byte p50 right after a resolve ≤ 0.10 × the old service's warm p50",
                g,
                p,
            ),
            _ => Verdict {
                target: "first byte right after a resolve ≤ 0.10 × the old service's warm".into(),
                measured: "–".into(),
                verdict: "not measured (needs the `ttfb` section with gateway and peer)".into(),
            },
        },
    );
    let _ = writeln!(w, "### Issue 10 targets\n");
    let _ = writeln!(w, "| target | measured | verdict |\n|---|---|---|");
    for x in &v {
        let _ = writeln!(w, "| {} | {} | {} |", x.target, x.measured, x.verdict);
    }
    let _ = writeln!(w);

    // ------------------------------------------------ PSS
    if !n.pss.is_empty() {
        let _ = writeln!(w, "### Memory per stalled stream, by PSS\n");
        let _ = writeln!(
            w,
            "Per stream = (loaded − idle) / streams open. *server process*: the gateway (old service: its one uvicorn process); *sidecar*: the sidecar process; *children*: everything under the sidecar (warm-pool yt-dlp workers, ffmpeg). *processes*: the tree by name, idle → loaded: a yt-dlp per stream would show here. Kernel socket buffers are in no process's PSS: *TCP buffers* is the system's TCP memory (`/proc/net/sockstat`, all sockets of the machine, client and fixture server included) per stream, for scale.\n"
        );
        let _ = writeln!(
            w,
            "| system | open | idle PSS (tree) | loaded PSS (tree) | per stream: server process | sidecar | children | **whole tree** | processes idle → loaded | TCP buffers / stream | served_by |\n|---|---|---|---|---|---|---|---|---|---|---|"
        );
        for r in &n.pss {
            let tcp = match (r.tcp_idle, r.tcp_loaded) {
                (Some(i), Some(l)) => fmt_kib(Some((l as f64 - i as f64) / r.opened.max(1) as f64)),
                _ => "–".into(),
            };
            let gw = r.sys == Sys::Gateway;
            let _ = writeln!(
                w,
                "| {} | {}/{} | {} | {} | {} | {} | {} | **{}** | {} → {} | {} | {} |",
                r.sys.name(),
                r.opened,
                r.asked,
                fmt_kib(Some(r.idle.total_kib() as f64)),
                fmt_kib(Some(r.loaded.total_kib() as f64)),
                fmt_kib(Some(r.per(|t| t.root_kib))),
                if gw {
                    fmt_kib(Some(r.per(|t| t.sidecar_kib)))
                } else {
                    "–".into()
                },
                if gw {
                    fmt_kib(Some(r.per(|t| t.jobs_kib)))
                } else {
                    "–".into()
                },
                fmt_kib(Some(r.per(TreePss::total_kib))),
                comms(&r.idle),
                comms(&r.loaded),
                tcp,
                r.served.clone().unwrap_or_else(|| "–".into())
            );
        }
        let _ = writeln!(w);
        if let (Some(g), Some(p)) = (pss_row, peer_pss) {
            let _ = writeln!(
                w,
                "Gateway / old service, whole tree per stream: {}.\n",
                ratio(
                    Some(g.per(TreePss::total_kib)),
                    Some(p.per(TreePss::total_kib))
                )
            );
        }
        for r in &n.pss {
            if let Some(e) = &r.first_err {
                let _ = writeln!(
                    w,
                    "- {}: {} of {} did not open; first: {e}",
                    r.sys.name(),
                    r.asked - r.opened,
                    r.asked
                );
            }
            if r.loaded.unreadable + r.idle.unreadable > 0 {
                let _ = writeln!(
                    w,
                    "- {}: {} smaps_rollup reads failed (counted as 0)",
                    r.sys.name(),
                    r.loaded.unreadable + r.idle.unreadable
                );
            }
        }
        let _ = writeln!(w);
    }

    // ------------------------------------------------ first byte at n
    if !n.fb.is_empty() {
        let _ = writeln!(
            w,
            "### First byte at n concurrent clients ({:.1} MB fixture each)\n",
            ctx.small.size as f64 / 1e6
        );
        let _ = writeln!(
            w,
            "All n streams start together (links minted beforehand); first byte from just before each TCP connect (direct: the spawn) to its first body byte, over the successful streams; a failure is anything but 200 with the exact byte count; *aggregate* = all bytes / (start → last stream done).\n"
        );
        let _ = writeln!(
            w,
            "| n | system | ok | statuses | first byte p50 | p95 | max | aggregate | served_by |\n|---|---|---|---|---|---|---|---|---|"
        );
        for r in &n.fb {
            let _ = writeln!(
                w,
                "| {} | {} | {}/{} | {} | {} | {} | {} | {} | {} |",
                r.n,
                r.sys.name(),
                r.ok,
                r.n,
                statuses(&r.statuses),
                fmt_ms(pct(&r.ttfb_ms, 50.0)),
                fmt_ms(pct(&r.ttfb_ms, 95.0)),
                fmt_ms(pct(&r.ttfb_ms, 100.0)),
                fmt_mbps(Some(mbps(r.bytes, r.wall))),
                r.served.clone().unwrap_or_else(|| "–".into())
            );
        }
        let _ = writeln!(w);
        let _ = writeln!(
            w,
            "| n | first byte p50: gateway / old service | gateway / direct | aggregate: gateway / old service |\n|---|---|---|---|"
        );
        for &k in &a.fb_levels {
            if let Some(g) = fb(Sys::Gateway, k) {
                let _ = writeln!(
                    w,
                    "| {k} | {} | {} | {} |",
                    ratio(p50(Some(g)), p50(fb(Sys::Peer, k))),
                    ratio(p50(Some(g)), p50(fb(Sys::Direct, k))),
                    ratio(
                        Some(mbps(g.bytes, g.wall)),
                        fb(Sys::Peer, k).map(|p| mbps(p.bytes, p.wall))
                    )
                );
            }
        }
        let _ = writeln!(w);
        for r in &n.fb {
            if let Some(e) = &r.first_failure {
                let _ = writeln!(
                    w,
                    "- n={} {}: {} failures, first: {e}",
                    r.n,
                    r.sys.name(),
                    r.n - r.ok
                );
            }
        }
        let _ = writeln!(w);
    }

    // ------------------------------------------------ ceiling
    if !n.ceiling.is_empty() {
        let _ = writeln!(
            w,
            "### Single stream against its ceilings ({:.1} MB fixture)\n",
            size as f64 / 1e6
        );
        let _ = writeln!(
            w,
            "*end to end* = bytes / (request → last byte); *transfer* = bytes / (first byte → last byte); median of {} run(s). *curl* and the *bench client on the fixture server* read the file straight from the fixture server: the physical ceiling of the path (loopback, the same file, the same page cache).\n",
            a.ceiling_runs
        );
        let _ = writeln!(
            w,
            "| system | end to end | transfer only | first byte | ok | gateway / this (end to end) | gateway / this (transfer) |\n|---|---|---|---|---|---|---|"
        );
        let g_e = c(Sys::Gateway);
        let g_t = n.ceiling.get(&Sys::Gateway).and_then(|x| transfer(x, size));
        for (s, runs) in &n.ceiling {
            let fbs: Vec<f64> = runs.iter().filter_map(|o| o.ttfb.map(ms)).collect();
            let (re, rt) = if *s == Sys::Gateway {
                ("".into(), "".into())
            } else {
                (
                    ratio(g_e, e2e(runs, size)),
                    ratio(g_t, transfer(runs, size)),
                )
            };
            let _ = writeln!(
                w,
                "| {} | {} | {} | {} | {}/{} | {} | {} |",
                s.name(),
                fmt_mbps(e2e(runs, size)),
                fmt_mbps(transfer(runs, size)),
                fmt_ms(pct(&fbs, 50.0)),
                runs.iter().filter(|o| o.ok(Some(size))).count(),
                runs.len(),
                re,
                rt
            );
        }
        let _ = writeln!(w);
        let _ = writeln!(
            w,
            "CPU seconds per run (mean over the runs; `/proc/PID/stat` utime + stime, a process's reaped children included), against the run's wall time. *bench process* = the measuring client and the fixture server (one process); on 2 cores, *CPU / wall* near 2 means the path is CPU-bound.\n"
        );
        let _ = writeln!(
            w,
            "| system | wall | gateway (or old service) | sidecar | sidecar's children | bench process | curl / yt-dlp | total CPU | CPU / wall | CPU s per GB |\n|---|---|---|---|---|---|---|---|---|---|"
        );
        let f = |x: f64| format!("{x:.2} s");
        for (s, cpus) in &n.ceiling_cpu {
            let k = cpus.len().max(1) as f64;
            let mean = |g: &dyn Fn(&RunCpu) -> f64| cpus.iter().map(g).sum::<f64>() / k;
            let runs = &n.ceiling[s];
            let wall = runs.iter().map(|o| o.elapsed.as_secs_f64()).sum::<f64>() / k;
            let bytes = runs.iter().map(|o| o.bytes as f64).sum::<f64>() / k;
            let (root, side, jobs) = (
                mean(&|c| c.server.map_or(0.0, |t| t.root)),
                mean(&|c| c.server.map_or(0.0, |t| t.sidecar)),
                mean(&|c| c.server.map_or(0.0, |t| t.jobs)),
            );
            let has_server = cpus.iter().any(|c| c.server.is_some());
            let (bench, child) = (mean(&|c| c.bench), mean(&|c| c.child));
            let total = root + side + jobs + bench + child;
            let _ = writeln!(
                w,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {:.2} | {} |",
                s.name(),
                f(wall),
                if has_server { f(root) } else { "–".into() },
                if *s == Sys::Gateway {
                    f(side)
                } else {
                    "–".into()
                },
                if *s == Sys::Gateway {
                    f(jobs)
                } else {
                    "–".into()
                },
                f(bench),
                if matches!(s, Sys::Curl | Sys::Direct) {
                    f(child)
                } else {
                    "–".into()
                },
                f(total),
                if wall > 0.0 { total / wall } else { 0.0 },
                if bytes > 0.0 {
                    f(total / (bytes / 1e9))
                } else {
                    "–".into()
                }
            );
        }
        let _ = writeln!(w);
    }
    md
}

/// The verdict on "the gateway's `g` ms ≤ 0.10 × the old service's `p` ms".
fn tenth_of(target: &str, g: f64, p: f64) -> Verdict {
    Verdict {
        target: target.into(),
        measured: format!("{} vs {} → {:.2}×", fmt_ms(Some(g)), fmt_ms(Some(p)), g / p),
        verdict: met(g <= 0.1 * p, || {
            format!(
                "{:.2}× instead of ≤ 0.10× ({} over the {} limit)",
                g / p,
                fmt_ms(Some(g - 0.1 * p)),
                fmt_ms(Some(0.1 * p))
            )
        }),
    }
}

fn statuses(m: &BTreeMap<u16, usize>) -> String {
    m.iter()
        .map(|(s, k)| {
            if *s == 0 {
                format!("no answer×{k}")
            } else {
                format!("{s}×{k}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}
