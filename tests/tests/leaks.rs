//! Issue 13, no leaks: 1,000 downloads aborted at random points against one gateway and its
//! sidecar leave no yt-dlp or ffmpeg process, the gateway's and the sidecar's descriptors
//! back at their baseline and their PSS near it.
//!
//! The aborts, seeded (`STREAMGATE_LEAK_SEED=N` repeats a run; the seed is printed): the
//! connection dropped before the response head, after N body bytes of the progressive
//! file, in the middle of a `Range` answer, after N bytes of an HLS stream or of a DASH
//! video + audio merge (ffmpeg), and `/v1/resolve` of a new URL dropped while yt-dlp
//! extracts. Raw HTTP/1.1 on TCP, so the drop happens exactly where it is asked to.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use streamgate_testkit::procfs::{ProcInfo, descendants, fd_count, pss_kib};
use streamgate_tests::config::{self, mint_for, new_key, open_policy, xchacha};
use streamgate_tests::gateway::Gateway;
use streamgate_tests::sidecar::POOL_COMMS;
use streamgate_tests::{server, wait_until};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ABORTS: usize = 1000;
/// Clients at once: enough to finish in well under a minute on two busy cores, fewer than
/// the sidecar's job slots so no abort is a `busy` answer instead.
const CONCURRENCY: usize = 12;
/// Time a quiet gateway gets to close what the aborts left (a cancelled job's process is
/// killed and reaped within the sidecar's drain; an idle origin connection times out).
const SETTLE: Duration = Duration::from_secs(30);
/// Descriptors each process may hold above its baseline once quiet: the gateway's and the
/// sidecar's pooled keep-alive connections (to the sidecar's socket, to the fixture origin)
/// and the warm pool's worker pipes are opened and closed lazily, so their number at one
/// instant differs by a few from the baseline's. A leak of one descriptor per abort in a
/// hundred is 10 above it.
const FD_SLACK: usize = 8;
/// PSS each process may reach above its baseline once quiet: × 1.5 + 24 MiB. The allocator
/// keeps freed memory in its per-thread arenas for reuse (not returned to the kernel), so
/// "near" is the working set of 12 concurrent streams, not the baseline's idle size; a
/// leak of one 64 KiB buffer per abort alone would be 64 MiB above it.
const PSS_FACTOR: f64 = 1.5;
const PSS_SLACK_KIB: u64 = 24 * 1024;

/// A tiny seeded generator (SplitMix64): the mix must repeat from its printed seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Where a request is dropped.
#[derive(Clone, Copy, Debug)]
enum Abort {
    BeforeHead,
    AfterBytes,
    MidRange,
    Hls,
    Merge,
    Resolve,
}

impl Abort {
    /// Out of 100: mostly the cheap progressive aborts, a good share of ffmpeg merges and
    /// HLS, and some extractions (a fresh yt-dlp costs most CPU).
    fn pick(rng: &mut Rng) -> Abort {
        match rng.below(100) {
            0..20 => Abort::BeforeHead,
            20..45 => Abort::AfterBytes,
            45..60 => Abort::MidRange,
            60..75 => Abort::Hls,
            75..92 => Abort::Merge,
            _ => Abort::Resolve,
        }
    }
}

struct Links {
    progressive: String,
    hls: String,
    merge: String,
    size: u64,
}

/// One tenant streaming and resolving loopback fixtures; job slots and queue for every
/// client at once (no `busy` answer), plugin calls given 500 ms rather than 50 (on a shared
/// 2-core machine at load 20 CPU starvation alone misses 50 ms now and then: a 503 here
/// would be the machine's, and the budget is the plugin tests' subject).
fn config(dir: &Path) -> PathBuf {
    let head = "default_tenant = \"main\"\n[plugins]\ndeadline_ms = 500\n[sidecar]\nmax_jobs = 16\nargs = [\"--queue=256\"]\n";
    let policy = open_policy(r#", resolve_clients = "127.0.0.0/8""#);
    let main = config::tenant("main", &[], &xchacha(&new_key()), &policy, "");
    config::write(dir, &(head.to_owned() + &main))
}

fn path_of(config: &Path, url: &str, format: &str) -> String {
    format!("/stream?data={}", mint_for(config, "main", url, format))
}

/// One request over a fresh connection, dropped where `abort` says.
async fn one(addr: &str, links: &Links, abort: Abort, rng: &mut Rng) {
    let (head, body_limit) = match abort {
        Abort::BeforeHead | Abort::AfterBytes => (get(&links.progressive, ""), links.size),
        Abort::MidRange => {
            let from = rng.below(links.size / 2);
            (
                get(&links.progressive, &format!("Range: bytes={from}-\r\n")),
                links.size - from,
            )
        }
        Abort::Hls => (get(&links.hls, ""), 1 << 20),
        Abort::Merge => (get(&links.merge, ""), 1 << 20),
        Abort::Resolve => {
            let url = server().url(&format!("progressive.mp4?leak={}", rng.next()));
            let body = format!("{{\"url\":\"{url}\"}}");
            let head = format!(
                "POST /v1/resolve HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            (head, 0)
        }
    };
    let mut conn = TcpStream::connect(addr).await.expect("connect");
    conn.write_all(head.as_bytes()).await.expect("send");
    match abort {
        // Dropped while the sidecar extracts or opens, before any answer.
        Abort::BeforeHead | Abort::Resolve => {
            tokio::time::sleep(Duration::from_millis(rng.below(400))).await;
        }
        _ => {
            // The head, then N body bytes (chunk framing counted as bytes: it is the drop
            // point that matters, not the exact count).
            let n = rng.below(body_limit);
            let mut got = Vec::new();
            let mut buf = vec![0u8; 64 * 1024];
            let mut body_from = None;
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let read = tokio::time::timeout_at(deadline.into(), conn.read(&mut buf)).await;
                let Ok(Ok(k)) = read else { break };
                if k == 0 {
                    break;
                }
                if body_from.is_none() {
                    got.extend_from_slice(&buf[..k]);
                    if let Some(at) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                        let status = &got[..got.len().min(12)];
                        assert!(
                            status.starts_with(b"HTTP/1.1 20"),
                            "{abort:?}: {}",
                            String::from_utf8_lossy(&got)
                        );
                        body_from = Some((got.len() - at - 4) as u64);
                    }
                } else {
                    body_from = body_from.map(|b| b + k as u64);
                }
                if body_from.is_some_and(|b| b >= n) {
                    break;
                }
            }
        }
    }
    drop(conn);
}

fn get(path: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}Connection: close\r\n\r\n")
}

/// Job processes below the sidecar (yt-dlp, ffmpeg; zombies too), the warm pool's not.
fn jobs(sidecar: u32) -> Vec<ProcInfo> {
    let mut all = descendants(sidecar);
    all.retain(|p| !POOL_COMMS.contains(&p.comm.as_str()));
    all
}

struct Usage {
    gateway_fds: usize,
    sidecar_fds: usize,
    gateway_pss: u64,
    sidecar_pss: u64,
}

fn usage(gw: u32, sidecar: u32) -> Usage {
    Usage {
        gateway_fds: fd_count(gw).expect("gateway fds"),
        sidecar_fds: fd_count(sidecar).expect("sidecar fds"),
        gateway_pss: pss_kib(gw).expect("gateway PSS"),
        sidecar_pss: pss_kib(sidecar).expect("sidecar PSS"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_aborted_downloads_leave_no_process_descriptor_or_memory_behind() {
    let seed = std::env::var("STREAMGATE_LEAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("leaks: seed {seed} (STREAMGATE_LEAK_SEED={seed} repeats it)");
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let gw = Gateway::with_config(&config).await;
    let links = Links {
        progressive: path_of(&config, &server().url("progressive.mp4"), "b"),
        hls: path_of(&config, &server().url("hls/index.m3u8"), "b"),
        merge: path_of(&config, &server().url("dash/manifest.mpd"), "bv+ba"),
        size: std::fs::metadata(streamgate_tests::fixtures().join("progressive.mp4"))
            .unwrap()
            .len(),
    };
    let addr = gw.url("").trim_start_matches("http://").to_owned();
    let sidecar = gw.sidecar_pid().expect("a sidecar");

    // Warm-up, each kind once and whole (plugins, the pool, the extraction cache, ffmpeg's
    // libraries in the page cache), then the baseline once every job has ended.
    for path in [&links.progressive, &links.hls, &links.merge] {
        let url = gw.url(path);
        let got = reqwest::get(&url).await.unwrap();
        assert_eq!(got.status(), 200, "{}", gw.logs());
        assert!(!got.bytes().await.unwrap().is_empty());
    }
    assert!(wait_until(SETTLE, || jobs(sidecar).is_empty()).await);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let base = usage(gw.pid(), sidecar);

    let started = Instant::now();
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let links = std::sync::Arc::new(links);
    // What ran below the sidecar meanwhile, by name: the merges must have run ffmpeg.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut seen = std::collections::BTreeSet::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                seen.extend(jobs(sidecar).into_iter().map(|p| p.comm));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            seen
        })
    };
    let clients: Vec<_> = (0..CONCURRENCY)
        .map(|c| {
            let (next, links, addr) = (next.clone(), links.clone(), addr.clone());
            tokio::spawn(async move {
                let mut rng = Rng(seed ^ (c as u64).wrapping_mul(0xA24B_AED4_963E_E407));
                let mut kinds = std::collections::BTreeMap::<String, usize>::new();
                while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < ABORTS {
                    let abort = Abort::pick(&mut rng);
                    *kinds.entry(format!("{abort:?}")).or_default() += 1;
                    one(&addr, &links, abort, &mut rng).await;
                }
                kinds
            })
        })
        .collect();
    let mut kinds = std::collections::BTreeMap::<String, usize>::new();
    for c in clients {
        for (k, n) in c.await.expect("client") {
            *kinds.entry(k).or_default() += n;
        }
    }
    let load = started.elapsed();
    eprintln!("leaks: {ABORTS} aborts in {load:.1?}: {kinds:?}");
    assert_eq!(kinds.values().sum::<usize>(), ABORTS);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let seen = watcher.await.unwrap();
    eprintln!("leaks: processes seen below the sidecar: {seen:?}");
    assert!(
        seen.contains("ffmpeg"),
        "no merge ran ffmpeg: the merge aborts tested nothing"
    );

    // Nothing left running: every job's yt-dlp and ffmpeg killed and reaped.
    let gone = wait_until(SETTLE, || jobs(sidecar).is_empty()).await;
    assert!(gone, "left behind: {:?}\n{}", jobs(sidecar), gw.logs());
    assert_eq!(
        gw.sidecar_pid(),
        Some(sidecar),
        "the same sidecar throughout"
    );
    // Descriptors back at the baseline (within the slack), once the gateway had time to
    // close what the aborts left.
    let fds_back = wait_until(SETTLE, || {
        let now = usage(gw.pid(), sidecar);
        now.gateway_fds <= base.gateway_fds + FD_SLACK
            && now.sidecar_fds <= base.sidecar_fds + FD_SLACK
    })
    .await;
    let after = usage(gw.pid(), sidecar);
    eprintln!(
        "leaks: fds gateway {} → {}, sidecar {} → {}; PSS gateway {} → {} KiB, sidecar {} → {} KiB",
        base.gateway_fds,
        after.gateway_fds,
        base.sidecar_fds,
        after.sidecar_fds,
        base.gateway_pss,
        after.gateway_pss,
        base.sidecar_pss,
        after.sidecar_pss
    );
    assert!(fds_back, "descriptors above baseline + {FD_SLACK}");
    for (what, before, now) in [
        ("gateway", base.gateway_pss, after.gateway_pss),
        ("sidecar", base.sidecar_pss, after.sidecar_pss),
    ] {
        let bound = (before as f64 * PSS_FACTOR) as u64 + PSS_SLACK_KIB;
        assert!(
            now <= bound,
            "{what} PSS {now} KiB after, {before} KiB before (≤ {bound} allowed)"
        );
    }
    assert_eq!(
        gw.metric("streamgate_active_streams", "tenant=\"main\"")
            .await,
        Some(0.0),
        "no stream counted as running"
    );
    // And it still serves: a whole file after all that.
    let whole = reqwest::get(gw.url(&links.progressive))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(whole.len() as u64, links.size);
}
