//! The Markdown report: rendering only, from what the sections measured.

mod native;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use crate::Ctx;
use crate::client::Outcome;
use crate::native::NativeResults;
use crate::sections::{MemRow, Mode, Probe, Results};
use crate::stats::{fmt_kib, fmt_mbps, fmt_ms, mbps, ms, pct, ratio};
use crate::systems::Kind;

pub struct RunFacts {
    pub date: String,
    pub time: String,
    pub load_before: String,
    pub load_after: String,
    pub wall: Duration,
    pub sections_wall: Duration,
    pub gateway_log: Option<PathBuf>,
}

fn cmd_out(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|r| r.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "?".into())
}

fn mem_total() -> String {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:").map(|r| r.trim().to_string()))
        .unwrap_or_else(|| "?".into())
}

/// One row of a targets table.
pub(crate) struct Verdict {
    pub(crate) target: String,
    pub(crate) measured: String,
    pub(crate) verdict: String,
}

pub(crate) fn met(ok: bool, miss: impl FnOnce() -> String) -> String {
    if ok {
        "**met**".into()
    } else {
        format!("**missed**: {}", miss())
    }
}

pub(crate) fn median_mbps(v: &[Outcome], expect: u64) -> Option<f64> {
    let x: Vec<f64> = v
        .iter()
        .filter(|o| o.ok(Some(expect)))
        .map(|o| mbps(o.bytes, o.elapsed))
        .collect();
    pct(&x, 50.0)
}

pub(crate) fn median_transfer_mbps(v: &[Outcome], expect: u64) -> Option<f64> {
    let x: Vec<f64> = v
        .iter()
        .filter(|o| o.ok(Some(expect)))
        .filter_map(|o| Some(mbps(o.bytes, o.elapsed.checked_sub(o.ttfb?)?)))
        .collect();
    pct(&x, 50.0)
}

/// The whole report: machine and parameters, issue 10's block (first), then the other
/// sections' targets and tables.
pub fn render(ctx: &Ctx, res: &Results, n: &NativeResults, f: &RunFacts) -> String {
    let md = sections(ctx, res, f);
    match native::render(ctx, res, n).as_str() {
        "" => md,
        block => md.replacen(
            "## Targets (reported, not asserted)",
            &format!("{block}## Other targets (reported, not asserted)"),
            1,
        ),
    }
}

/// Everything but issue 10's block.
fn sections(ctx: &Ctx, res: &Results, f: &RunFacts) -> String {
    let a = &ctx.args;
    let mut md = String::new();
    let w = &mut md;
    let git = cmd_out("git", &["rev-parse", "--short", "HEAD"]);
    let dirty = cmd_out("git", &["status", "--porcelain"]).lines().count();
    let ytv = cmd_out(&a.yt_dlp.display().to_string(), &["--version"]);
    let argv: Vec<String> = std::env::args().collect();
    let nproc = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let _ = writeln!(w, "# streamgate benchmark, {} {} UTC\n", f.date, f.time);
    let _ = writeln!(
        w,
        "Produced by `scripts/bench` (bench/README.md describes every measurement). All three systems \
         ran on this machine in this one run, interleaved, so the **ratios** are the result; the \
         absolute figures move with the machine's load.\n"
    );
    let _ = writeln!(w, "## Machine and parameters\n");
    let _ = writeln!(w, "| | |\n|---|---|");
    let _ = writeln!(w, "| command | `{}` |", argv.join(" "));
    let _ = writeln!(w, "| tree | `{git}` + {dirty} uncommitted paths |");
    let _ = writeln!(w, "| CPU | {} × {} |", nproc, cpu_model());
    let _ = writeln!(w, "| memory | {} |", mem_total());
    let _ = writeln!(
        w,
        "| kernel | {} |",
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
    );
    let _ = writeln!(
        w,
        "| load average (1/5/15 min) before → after | {} → {} |",
        f.load_before
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
        f.load_after
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    let _ = writeln!(
        w,
        "| yt-dlp | {ytv} (`{}`), used by the sidecar, the peer's venv pins the same version |",
        a.yt_dlp.display()
    );
    let _ = writeln!(
        w,
        "| small fixture | {:.2} MB, {} s H.264+AAC 720p 4 Mb/s faststart MP4 ({}) |",
        ctx.small.size as f64 / 1e6,
        ctx.small.secs,
        ctx.small.generator
    );
    let _ = writeln!(
        w,
        "| big fixture | {:.1} MB, {} s, same recipe |",
        ctx.big.size as f64 / 1e6,
        ctx.big.secs
    );
    let _ = writeln!(
        w,
        "| fixture server | warp `fs::dir` on 127.0.0.1 inside the bench process (own runtime, 2 threads, Range support) |"
    );
    let _ = writeln!(
        w,
        "| first-byte samples | {} per system per mode, sequential, interleaved across systems |",
        a.samples
    );
    let _ = writeln!(
        w,
        "| throughput runs | {} per system (median reported) |",
        a.throughput_runs
    );
    let _ = writeln!(
        w,
        "| concurrency | n = {:?}, URLs: {} |",
        a.concurrency, a.concurrency_urls
    );
    let _ = writeln!(
        w,
        "| memory | {} streams held open, each stalled after its first MiB |",
        a.memory_streams
    );
    let _ = writeln!(
        w,
        "| relay | 1 × {} MiB and {} × {} MiB from the fake sidecar, {} KiB data frames; {} streams held for memory |",
        a.relay_mib,
        a.relay_streams,
        a.relay_mib / a.relay_streams.max(1) as u64,
        a.relay_frame_kib,
        a.relay_hold
    );
    let _ = writeln!(
        w,
        "| plugin probes | {} per probe, kept-alive connection, interleaved |",
        a.plugin_samples
    );
    let _ = writeln!(
        w,
        "| units | MB = 10⁶ bytes; KiB/MiB = 2¹⁰/2²⁰ bytes; p50/p95 nearest-rank |"
    );
    let _ = writeln!(
        w,
        "| wall time | {:.0} s in total, {:.0} s measuring |",
        f.wall.as_secs_f64(),
        f.sections_wall.as_secs_f64()
    );
    let _ = writeln!(w);

    let g = Kind::Gateway;
    let p = Kind::Peer;
    let d = Kind::Direct;
    let tt = |k: Kind, m: Mode, q: f64| res.ttfb.get(&(k, m)).and_then(|s| s.p(q));

    // ------------------------------------------------ targets
    let mut v: Vec<Verdict> = Vec::new();
    if a.has("ttfb") {
        let (gw, pw) = (tt(g, Mode::Warm, 50.0), tt(p, Mode::Warm, 50.0));
        v.push(match (gw, pw) {
            (Some(gw), Some(pw)) => Verdict {
                target: "first byte p50 (warm) ≤ 0.5 × peer's warm p50".into(),
                measured: format!(
                    "{} vs peer {} → {:.2}×",
                    fmt_ms(Some(gw)),
                    fmt_ms(Some(pw)),
                    gw / pw
                ),
                verdict: met(gw <= 0.5 * pw, || {
                    format!(
                        "{:.2}× instead of ≤ 0.50× ({} over the {} limit)",
                        gw / pw,
                        fmt_ms(Some(gw - 0.5 * pw)),
                        fmt_ms(Some(0.5 * pw))
                    )
                }),
            },
            _ => Verdict {
                target: "first byte p50 (warm) ≤ 0.5 × peer".into(),
                measured: "–".into(),
                verdict: "not measured".into(),
            },
        });
        if let (Some(gc), Some(pw)) = (tt(g, Mode::Cold, 50.0), pw) {
            v.push(Verdict {
                target: "(same, cold URL; informative)".into(),
                measured: format!(
                    "{} vs peer warm {} → {:.2}×",
                    fmt_ms(Some(gc)),
                    fmt_ms(Some(pw)),
                    gc / pw
                ),
                verdict: met(gc <= 0.5 * pw, || {
                    format!("{:.2}× instead of ≤ 0.50×", gc / pw)
                }),
            });
        }
        let gr = tt(g, Mode::AfterResolve, 50.0);
        v.push(match (gr, pw, &res.resolve_na) {
            (_, _, Some(na)) => Verdict {
                target: "first byte p50 right after a resolve ≤ 0.25 × peer's warm p50".into(),
                measured: na.clone(),
                verdict: "not measurable yet".into(),
            },
            (Some(gr), Some(pw), None) => Verdict {
                target: "first byte p50 right after a resolve ≤ 0.25 × peer's warm p50".into(),
                measured: format!(
                    "{} vs peer {} → {:.2}×",
                    fmt_ms(Some(gr)),
                    fmt_ms(Some(pw)),
                    gr / pw
                ),
                verdict: met(gr <= 0.25 * pw, || {
                    format!(
                        "{:.2}× instead of ≤ 0.25× ({} over the {} limit)",
                        gr / pw,
                        fmt_ms(Some(gr - 0.25 * pw)),
                        fmt_ms(Some(0.25 * pw))
                    )
                }),
            },
            _ => Verdict {
                target: "first byte p50 right after a resolve ≤ 0.25 × peer".into(),
                measured: "–".into(),
                verdict: "not measured".into(),
            },
        });
    }
    if a.has("throughput") {
        let gt = res
            .throughput
            .get(&g)
            .and_then(|x| median_mbps(x, ctx.big.size));
        let dt = res
            .throughput
            .get(&d)
            .and_then(|x| median_mbps(x, ctx.big.size));
        let pt = res
            .throughput
            .get(&p)
            .and_then(|x| median_mbps(x, ctx.big.size));
        v.push(match (gt, dt) {
            (Some(gt), Some(dt)) => Verdict {
                target: "single stream ≥ 0.9 × direct yt-dlp".into(),
                measured: format!(
                    "{} vs direct {} → {:.2}×",
                    fmt_mbps(Some(gt)),
                    fmt_mbps(Some(dt)),
                    gt / dt
                ),
                verdict: met(gt >= 0.9 * dt, || {
                    format!(
                        "{:.2}× instead of ≥ 0.90× ({} short)",
                        gt / dt,
                        fmt_mbps(Some(0.9 * dt - gt))
                    )
                }),
            },
            _ => Verdict {
                target: "single stream ≥ 0.9 × direct".into(),
                measured: "–".into(),
                verdict: "not measured".into(),
            },
        });
        if let (Some(gt), Some(pt)) = (gt, pt) {
            v.push(Verdict {
                target: "(single stream vs peer, expected ≈ 4.5×; informative)".into(),
                measured: format!(
                    "{} vs peer {} → {:.2}×",
                    fmt_mbps(Some(gt)),
                    fmt_mbps(Some(pt)),
                    gt / pt
                ),
                verdict: if gt / pt >= 4.5 {
                    "at or above".into()
                } else {
                    format!("below ({:.2}×)", gt / pt)
                },
            });
        }
    }
    if a.has("concurrency") {
        let row = |k: Kind, var: &str, n: usize| {
            res.conc
                .iter()
                .find(|r| r.kind == k && r.variant == var && r.n == n)
        };
        for var in ["distinct", "same"] {
            if let (Some(gr), Some(pr)) = (row(g, var, 32), row(p, var, 32)) {
                let (g50, p50) = (pct(&gr.ttfb_ms, 50.0), pct(&pr.ttfb_ms, 50.0));
                v.push(Verdict {
                    target: format!("n=32 ({var} URLs): first byte p50 ≤ 0.1 × peer's"),
                    measured: format!(
                        "{} vs peer {} → {}",
                        fmt_ms(g50),
                        fmt_ms(p50),
                        ratio(g50, p50)
                    ),
                    verdict: match (g50, p50) {
                        (Some(a), Some(b)) => met(a <= 0.1 * b, || {
                            format!(
                                "{:.2}× instead of ≤ 0.10× (peer/gateway = {:.1}, needs 10)",
                                a / b,
                                b / a
                            )
                        }),
                        _ => "not measured".into(),
                    },
                });
                let (ga, pa) = (gr.aggregate(), pr.aggregate());
                v.push(Verdict {
                    target: format!("n=32 ({var} URLs): aggregate ≥ 3 × peer's"),
                    measured: format!(
                        "{} vs peer {} → {:.2}×",
                        fmt_mbps(Some(ga)),
                        fmt_mbps(Some(pa)),
                        ga / pa
                    ),
                    verdict: met(ga >= 3.0 * pa, || {
                        format!("{:.2}× instead of ≥ 3×", ga / pa)
                    }),
                });
            }
            if let Some(gr) = row(g, var, 32) {
                v.push(Verdict {
                    target: format!("n=32 ({var} URLs): 0 failures"),
                    measured: format!("{} of 32 failed", gr.failures),
                    verdict: met(gr.failures == 0, || {
                        format!(
                            "{} failures ({})",
                            gr.failures,
                            gr.first_failure.clone().unwrap_or_default()
                        )
                    }),
                });
            }
            if let Some(gr) = row(g, var, 64) {
                v.push(Verdict {
                    target: format!("n=64 ({var} URLs): 0 failures"),
                    measured: format!("{} of 64 failed", gr.failures),
                    verdict: met(gr.failures == 0, || {
                        format!(
                            "{} failures ({})",
                            gr.failures,
                            gr.first_failure.clone().unwrap_or_default()
                        )
                    }),
                });
            }
        }
    }
    if a.has("relay") {
        v.push(match (res.relay.first(), &res.relay_pending) {
            (Some(r), _) if r.ok == r.streams => {
                let t = mbps(r.bytes, r.wall);
                Verdict {
                    target: "relay alone (fake sidecar → gateway → client) ≥ 1 GB/s".into(),
                    measured: fmt_mbps(Some(t)),
                    verdict: met(t >= 1000.0, || {
                        format!(
                            "{:.2}× of the target ({} short)",
                            t / 1000.0,
                            fmt_mbps(Some(1000.0 - t))
                        )
                    }),
                }
            }
            (Some(r), _) => Verdict {
                target: "relay alone ≥ 1 GB/s".into(),
                measured: format!("failed: {}", r.first_failure.clone().unwrap_or_default()),
                verdict: "**missed**: the transfer failed".into(),
            },
            (None, Some(why)) => Verdict {
                target: "relay alone ≥ 1 GB/s".into(),
                measured: "pending".into(),
                verdict: format!("pending: {why}"),
            },
            _ => Verdict {
                target: "relay alone ≥ 1 GB/s".into(),
                measured: "–".into(),
                verdict: "not measured".into(),
            },
        });
    }
    let mem_rows: Vec<(&str, &MemRow)> = res
        .relay_hold
        .iter()
        .map(|m| ("relay from the fake sidecar", m))
        .chain(
            res.mem
                .iter()
                .filter(|m| m.kind == g)
                .map(|m| ("real sidecar + yt-dlp", m)),
        )
        .collect();
    for (how, m) in mem_rows {
        let per = m.per(|t| t.root_kib);
        v.push(Verdict {
            target: format!("gateway process RSS ≤ 256 KiB per active stream ({how})"),
            measured: format!(
                "{} per stream ({} streams held open)",
                fmt_kib(Some(per)),
                m.streams
            ),
            verdict: met(per <= 256.0, || {
                format!(
                    "{:.1}× the budget ({} over)",
                    per / 256.0,
                    fmt_kib(Some(per - 256.0))
                )
            }),
        });
    }
    let _ = writeln!(w, "## Targets (reported, not asserted)\n");
    let _ = writeln!(w, "| target | measured | verdict |\n|---|---|---|");
    for x in &v {
        let _ = writeln!(w, "| {} | {} | {} |", x.target, x.measured, x.verdict);
    }
    let _ = writeln!(w);

    // ------------------------------------------------ first byte
    if a.has("ttfb") {
        let _ = writeln!(
            w,
            "## Time to first media byte ({:.1} MB fixture)\n",
            ctx.small.size as f64 / 1e6
        );
        let _ = writeln!(
            w,
            "From the start of the request (TCP connect included; for direct, the spawn of `yt-dlp -o -`) to the first non-empty *body* chunk. Every transfer is read to its end and checked for the exact byte count. *cold*: a URL this run never asked for (`?cold=i`); *warm*: one URL asked again and again (after one unmeasured request); *after resolve*: `POST /v1/resolve` of a new URL, then at once the stream of it (stream timed alone).\n"
        );
        let _ = writeln!(
            w,
            "| system | cold p50 | cold p95 | warm p50 | warm p95 | after resolve p50 | after resolve p95 | failures |\n|---|---|---|---|---|---|---|---|"
        );
        for k in [g, p, d] {
            if !res.ttfb.contains_key(&(k, Mode::Cold)) {
                continue;
            }
            let fails: usize = [Mode::Cold, Mode::Warm, Mode::AfterResolve]
                .iter()
                .filter_map(|m| res.ttfb.get(&(k, *m)))
                .map(|s| s.failures)
                .sum();
            let (r50, r95) = if k == g && res.resolve_na.is_none() {
                (
                    fmt_ms(tt(k, Mode::AfterResolve, 50.0)),
                    fmt_ms(tt(k, Mode::AfterResolve, 95.0)),
                )
            } else {
                ("n/a".into(), "n/a".into())
            };
            let _ = writeln!(
                w,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                k.name(),
                fmt_ms(tt(k, Mode::Cold, 50.0)),
                fmt_ms(tt(k, Mode::Cold, 95.0)),
                fmt_ms(tt(k, Mode::Warm, 50.0)),
                fmt_ms(tt(k, Mode::Warm, 95.0)),
                r50,
                r95,
                fails
            );
        }
        for (label, other) in [("gateway / peer", p), ("gateway / direct", d)] {
            if res.ttfb.contains_key(&(g, Mode::Cold))
                && res.ttfb.contains_key(&(other, Mode::Cold))
            {
                let _ = writeln!(
                    w,
                    "| *{label}* | {} | {} | {} | {} | {} | {} | |",
                    ratio(tt(g, Mode::Cold, 50.0), tt(other, Mode::Cold, 50.0)),
                    ratio(tt(g, Mode::Cold, 95.0), tt(other, Mode::Cold, 95.0)),
                    ratio(tt(g, Mode::Warm, 50.0), tt(other, Mode::Warm, 50.0)),
                    ratio(tt(g, Mode::Warm, 95.0), tt(other, Mode::Warm, 95.0)),
                    ratio(tt(g, Mode::AfterResolve, 50.0), tt(other, Mode::Warm, 50.0)),
                    ratio(tt(g, Mode::AfterResolve, 95.0), tt(other, Mode::Warm, 95.0))
                );
            }
        }
        let _ = writeln!(w);
        if let Some(na) = &res.resolve_na {
            let _ = writeln!(w, "After resolve: {na}.\n");
        } else if !res.resolve_ms.is_empty() {
            let _ = writeln!(
                w,
                "The resolve calls themselves took p50 {} / p95 {}. The after-resolve ratios divide by the other system's *warm* figure (it has no resolve).\n",
                fmt_ms(pct(&res.resolve_ms, 50.0)),
                fmt_ms(pct(&res.resolve_ms, 95.0))
            );
        }
        for k in [g, p, d] {
            for m in [Mode::Cold, Mode::Warm, Mode::AfterResolve] {
                if let Some(s) = res.ttfb.get(&(k, m))
                    && let Some(e) = &s.first_failure
                {
                    let _ = writeln!(
                        w,
                        "- {} {:?}: {} failures, first: {}",
                        k.name(),
                        m,
                        s.failures,
                        e
                    );
                }
            }
        }
        let _ = writeln!(w);
    }

    // ------------------------------------------------ throughput
    if a.has("throughput") {
        let _ = writeln!(
            w,
            "## Single-stream throughput ({:.1} MB fixture)\n",
            ctx.big.size as f64 / 1e6
        );
        let _ = writeln!(
            w,
            "One stream at a time, read as fast as it comes. *end to end* = bytes / (request → last byte); *transfer* = bytes / (first byte → last byte). Median of {} runs.\n",
            a.throughput_runs
        );
        let _ = writeln!(
            w,
            "| system | end to end | transfer only | first byte | runs ok |\n|---|---|---|---|---|"
        );
        let mut e2e = BTreeMap::new();
        let mut tro = BTreeMap::new();
        for k in [g, p, d] {
            if let Some(runs) = res.throughput.get(&k) {
                let e = median_mbps(runs, ctx.big.size);
                let t = median_transfer_mbps(runs, ctx.big.size);
                let fb: Vec<f64> = runs.iter().filter_map(|o| o.ttfb.map(ms)).collect();
                e2e.insert(k, e);
                tro.insert(k, t);
                let okc = runs.iter().filter(|o| o.ok(Some(ctx.big.size))).count();
                let _ = writeln!(
                    w,
                    "| {} | {} | {} | {} | {okc}/{} |",
                    k.name(),
                    fmt_mbps(e),
                    fmt_mbps(t),
                    fmt_ms(pct(&fb, 50.0)),
                    runs.len()
                );
            }
        }
        for (label, other) in [("gateway / peer", p), ("gateway / direct", d)] {
            if e2e.contains_key(&g) && e2e.contains_key(&other) {
                let _ = writeln!(
                    w,
                    "| *{label}* | {} | {} | | |",
                    ratio(e2e[&g], e2e[&other]),
                    ratio(tro[&g], tro[&other])
                );
            }
        }
        let _ = writeln!(w);
    }

    // ------------------------------------------------ concurrency
    if a.has("concurrency") && !res.conc.is_empty() {
        let _ = writeln!(
            w,
            "## Concurrent streams ({:.1} MB fixture each)\n",
            ctx.small.size as f64 / 1e6
        );
        let _ = writeln!(
            w,
            "n streams started together (tokens minted beforehand); *aggregate* = all bytes received / (start → last stream done); a failure is any stream without status 200 and the exact byte count. *distinct*: one new URL per stream; *same*: every stream asks for one URL fetched once just before. RSS: the server's process tree sampled every 50 ms (gateway: gateway + sidecar + yt-dlp/ffmpeg; peer: its one process), peak minus the idle value just before.\n"
        );
        let _ = writeln!(
            w,
            "| URLs | n | system | aggregate | first byte p50 | first byte p95 | failures | peak RSS Δ (tree) | peak RSS Δ / stream: gateway, sidecar |\n|---|---|---|---|---|---|---|---|---|"
        );
        for r in &res.conc {
            let (tree, per) = match (r.idle, r.peak) {
                (Some(i), Some(pk)) => {
                    let t = fmt_kib(Some(pk.total_kib() as f64 - i.total_kib() as f64));
                    let per = if r.kind == g {
                        format!(
                            "{}, {}",
                            fmt_kib(Some((pk.root_kib as f64 - i.root_kib as f64) / r.n as f64)),
                            fmt_kib(Some(
                                (pk.sidecar_kib as f64 - i.sidecar_kib as f64) / r.n as f64
                            ))
                        )
                    } else {
                        "".into()
                    };
                    (t, per)
                }
                _ => ("–".into(), "".into()),
            };
            let _ = writeln!(
                w,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                r.variant,
                r.n,
                r.kind.name(),
                fmt_mbps(Some(r.aggregate())),
                fmt_ms(pct(&r.ttfb_ms, 50.0)),
                fmt_ms(pct(&r.ttfb_ms, 95.0)),
                r.failures,
                tree,
                per
            );
        }
        let _ = writeln!(w, "\nRatios (gateway / peer, gateway / direct):\n");
        let _ = writeln!(
            w,
            "| URLs | n | aggregate g/p | aggregate g/d | first byte p50 g/p | first byte p50 g/d |\n|---|---|---|---|---|---|"
        );
        let row = |k: Kind, var: &str, n: usize| {
            res.conc
                .iter()
                .find(|r| r.kind == k && r.variant == var && r.n == n)
        };
        for var in ["distinct", "same"] {
            for &n in &a.concurrency {
                if let Some(gr) = row(g, var, n) {
                    let pr = row(p, var, n);
                    let dr = row(d, var, n);
                    let _ = writeln!(
                        w,
                        "| {var} | {n} | {} | {} | {} | {} |",
                        ratio(Some(gr.aggregate()), pr.map(|r| r.aggregate())),
                        ratio(Some(gr.aggregate()), dr.map(|r| r.aggregate())),
                        ratio(
                            pct(&gr.ttfb_ms, 50.0),
                            pr.and_then(|r| pct(&r.ttfb_ms, 50.0))
                        ),
                        ratio(
                            pct(&gr.ttfb_ms, 50.0),
                            dr.and_then(|r| pct(&r.ttfb_ms, 50.0))
                        )
                    );
                }
            }
        }
        let _ = writeln!(w);
        for r in &res.conc {
            if let Some(e) = &r.first_failure {
                let _ = writeln!(
                    w,
                    "- {} n={} ({}): {} failures, first: {}",
                    r.kind.name(),
                    r.n,
                    r.variant,
                    r.failures,
                    e
                );
            }
        }
        let _ = writeln!(w);
    }

    // ------------------------------------------------ memory
    if !res.mem.is_empty() || res.relay_hold.is_some() {
        let _ = writeln!(w, "## Memory per active stream\n");
        let _ = writeln!(
            w,
            "{} streams of the big fixture opened together; each client reads its first MiB and then stops reading, so every buffer on the way (sockets, relay queues, pipes) fills and stays full; after 3 s the process trees' RSS is read from `/proc/<pid>/stat` (highest of 5 samples, 100 ms apart). Per stream = (loaded − idle) / streams. Direct: the sum of the {} `yt-dlp` processes' RSS / streams (what the ceiling itself costs). A stream not open within 20 s (queued behind the sidecar's job limit) is dropped and not counted. The *relay from the fake sidecar* row does the same with {} streams against the relay-alone gateway (no job limit, no yt-dlp), which isolates the gateway's own cost per stream; its *sidecar* column is the fake sidecar, which is not in the gateway's tree.\n",
            a.memory_streams, a.memory_streams, a.relay_hold
        );
        let _ = writeln!(
            w,
            "| system | streams | idle RSS (tree) | loaded RSS (tree) | per stream: server process | per stream: sidecar | per stream: yt-dlp & co | per stream: whole tree |\n|---|---|---|---|---|---|---|---|"
        );
        for m in res.mem.iter().chain(res.relay_hold.iter()) {
            let is_relay = res.relay_hold.as_ref().is_some_and(|r| std::ptr::eq(r, m));
            let (srv, side) = match m.kind {
                Kind::Gateway if is_relay => (
                    fmt_kib(Some(m.per(|t| t.root_kib))),
                    "– (fake, not measured)".into(),
                ),
                Kind::Gateway => (
                    fmt_kib(Some(m.per(|t| t.root_kib))),
                    fmt_kib(Some(m.per(|t| t.sidecar_kib))),
                ),
                Kind::Peer => (fmt_kib(Some(m.per(|t| t.root_kib))), "–".into()),
                Kind::Direct => ("–".into(), "–".into()),
            };
            let _ = writeln!(
                w,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                if is_relay {
                    "gateway, relay from the fake sidecar"
                } else {
                    m.kind.name()
                },
                m.streams,
                if m.kind == d {
                    "–".into()
                } else {
                    fmt_kib(Some(m.idle.total_kib() as f64))
                },
                fmt_kib(Some(m.loaded.total_kib() as f64)),
                srv,
                side,
                if m.kind == p || is_relay {
                    "–".into()
                } else {
                    fmt_kib(Some(m.per(|t| t.jobs_kib)))
                },
                fmt_kib(Some(m.per(|t| t.total_kib())))
            );
        }
        let _ = writeln!(w);
    }

    // ------------------------------------------------ relay
    if a.has("relay") {
        let _ = writeln!(w, "## Relay alone\n");
        let _ = writeln!(
            w,
            "`streamgate-bench-fake-sidecar` (bench/src/bin/fake-sidecar.rs) speaks docs/protocol.md with `streamgate-protocol` and answers each stream job with metadata and N MiB of data frames (256 KiB unless `--relay-frame-kib` says otherwise), pre-encoded, written as fast as the socket drains. The gateway is started with `--config` pointing its sidecar client at that socket (bench/relay-config.toml), so the row measures gateway + client only: socket read, frame decode, HTTP body write, on the same 2 cores as the client.\n"
        );
        if let Some(why) = &res.relay_pending {
            let _ = writeln!(w, "**pending**: {why}\n");
        }
        if !res.relay.is_empty() {
            let _ = writeln!(
                w,
                "| streams | MiB each | aggregate | first byte p50 | ok | gateway peak RSS |\n|---|---|---|---|---|---|"
            );
            for r in &res.relay {
                let _ = writeln!(
                    w,
                    "| {} | {} | {} | {} | {}/{} | {} |",
                    r.streams,
                    r.mib_each,
                    fmt_mbps(Some(mbps(r.bytes, r.wall))),
                    fmt_ms(pct(&r.ttfb_ms, 50.0)),
                    r.ok,
                    r.streams,
                    fmt_kib(r.gateway_peak.map(|t| t.root_kib as f64))
                );
                if let Some(e) = &r.first_failure {
                    let _ = writeln!(w, "\nfirst failure: {e}\n");
                }
            }
            let _ = writeln!(w);
        }
    }

    // ------------------------------------------------ plugin
    if a.has("plugin") && !res.plugin.is_empty() {
        let _ = writeln!(w, "## Plugin overhead per request\n");
        let _ = writeln!(
            w,
            "Small requests on one kept-alive connection, the probes interleaved ({} rounds after 10 unmeasured ones), timed from sending the request to the end of the response body. The baseline does no plugin work, so *Δ p50* estimates what the token (and policy) plugin calls add to a request: a fresh wasm instance, the call, and the error response. It does not include yt-dlp or the relay.\n",
            a.plugin_samples
        );
        let _ = writeln!(
            w,
            "| system | probe | what it exercises | status | p50 | p95 | Δ p50 vs baseline |\n|---|---|---|---|---|---|---|"
        );
        for k in [g, p] {
            let probes: Vec<&Probe> = res.plugin.iter().filter(|x| x.kind == k).collect();
            let sys_name = if k == p {
                "peer (for scale: no plugins)"
            } else {
                k.name()
            };
            let base = probes.first().and_then(|b| pct(&b.ms, 50.0));
            for (i, x) in probes.iter().enumerate() {
                let st: Vec<String> = x
                    .statuses
                    .iter()
                    .map(|(s, c)| {
                        if x.statuses.len() == 1 {
                            s.to_string()
                        } else {
                            format!("{s}×{c}")
                        }
                    })
                    .collect();
                let delta = if i == 0 {
                    "–".into()
                } else {
                    match (pct(&x.ms, 50.0), base) {
                        (Some(a), Some(b)) => fmt_ms(Some(a - b)),
                        _ => "–".into(),
                    }
                };
                let _ = writeln!(
                    w,
                    "| {} | {} | {} | {}{} | {} | {} | {} |",
                    sys_name,
                    x.name,
                    x.what,
                    st.join(", "),
                    if x.errors > 0 {
                        format!(" ({} errors)", x.errors)
                    } else {
                        String::new()
                    },
                    fmt_ms(pct(&x.ms, 50.0)),
                    fmt_ms(pct(&x.ms, 95.0)),
                    delta
                );
            }
        }
        let _ = writeln!(w);
    }

    // ------------------------------------------------ notes
    let notes = ctx.notes.lock().unwrap();
    if !notes.is_empty() {
        let _ = writeln!(w, "## Notes from this run\n");
        for n in notes.iter() {
            let _ = writeln!(w, "- {n}");
        }
        let _ = writeln!(w);
    }
    if let Some(l) = &f.gateway_log {
        let _ = writeln!(
            w,
            "Gateway log of the run: `{}` (not committed).",
            l.strip_prefix(&ctx.repo).unwrap_or(l).display()
        );
    }
    md
}
