//! The sidecar's warm pool, extraction cache and protocol refusal (issue 6), end to end:
//! the release binary, the venv's yt-dlp, fixtures served on 127.0.0.1.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use streamgate_protocol::{Frame, ResolveJob, StreamJob, kind};
use streamgate_tests::both_paths;
use streamgate_tests::*;

async fn sidecar(pool: bool, extra: &[&str]) -> Sidecar {
    let opts = SidecarOptions {
        pool: Some(pool),
        extra: extra.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    };
    Sidecar::start(opts).await
}

/// A stream job for `tenant`, collected to the end.
async fn stream_as(sc: &Sidecar, tenant: &str, url: &str, format: &str) -> Transcript {
    let mut client = Client::connect(sc.socket()).await.unwrap();
    let job = StreamJob {
        url: url.to_owned(),
        format: format.to_owned(),
        tenant: Some(tenant.to_owned()),
        request_id: None,
        egress: loopback_egress(),
        ..Default::default()
    };
    client.send(Frame::Stream(job)).await.unwrap();
    client.collect(SLOW).await
}

/// A resolve job for `tenant` (the cache is keyed by tenant + URL).
async fn resolve_as(sc: &Sidecar, tenant: &str, url: &str) -> Transcript {
    let mut client = Client::connect(sc.socket()).await.unwrap();
    let job = ResolveJob {
        url: url.to_owned(),
        tenant: Some(tenant.to_owned()),
        request_id: None,
        egress: loopback_egress(),
        ..Default::default()
    };
    client.send(Frame::Resolve(job)).await.unwrap();
    client.collect(SLOW).await
}

/// Moved from `sidecar.rs` (its size): the stall timeout on both paths.
async fn a_stalled_download_ends_with_timeout(pool: bool) {
    let opts = SidecarOptions {
        stall_timeout: Some(2.0),
        pool: Some(pool),
        ..Default::default()
    };
    let server = FixtureServer::start(fixtures());
    let sc = Sidecar::start(opts).await;
    let started = Instant::now();
    let t = Client::stream(sc.socket(), &server.url("stall/progressive.mp4"), "b").await;
    assert_eq!(t.error_code(), "timeout", "{:?}\n{}", t.error, sc.logs());
    assert!(t.metadata_first() && t.data.len() <= streamgate_tests::http::STALL_AFTER);
    assert!(started.elapsed() < Duration::from_secs(60));
    assert!(wait_until(Duration::from_secs(2), || sc.job_processes().is_empty()).await);
}

both_paths!(a_stalled_download_ends_with_timeout);

fn pooled_jobs(sc: &Sidecar) -> usize {
    sc.logs().matches("pool worker took the job").count()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_forkserver_is_restarted_and_jobs_keep_working() {
    let server = FixtureServer::start(fixtures());
    let sc = sidecar(true, &[]).await;
    let url = server.url("progressive.mp4");
    let forkserver = |sc: &Sidecar| {
        sc.pool_processes()
            .into_iter()
            .find(|p| p.comm == "sg-forkserver" && p.state != 'Z')
            .map(|p| p.pid)
    };
    let old = forkserver(&sc).expect("a forkserver under the sidecar");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(old), Signal::SIGKILL).unwrap();
    // Meanwhile jobs fall back to spawning yt-dlp (or land on a leftover idle worker).
    let t = Client::stream(sc.socket(), &url, "b").await;
    t.assert_complete(&sc.logs(), "mp4", "video/mp4");
    let restarted = wait_until(SLOW, || forkserver(&sc).is_some_and(|p| p != old)).await;
    assert!(restarted, "no new forkserver:\n{}", sc.logs());
    assert!(
        wait_until(SLOW, || sc.logs().matches("pool ready").count() >= 2).await,
        "{}",
        sc.logs()
    );
    let before = pooled_jobs(&sc);
    // Another URL: the first one's selection is cached and would need no worker at all.
    let url = server.url("progressive.mp4?after-restart");
    let t = Client::stream(sc.socket(), &url, "b").await;
    t.assert_complete(&sc.logs(), "mp4", "video/mp4");
    assert_eq!(
        pooled_jobs(&sc),
        before + 1,
        "back on the pool:\n{}",
        sc.logs()
    );
    let file = sha256_file(&fixtures().join("progressive.mp4")).unwrap();
    assert_eq!(sha256_hex(&t.data), file);
    // The old forkserver's idle workers were reaped, not left as zombies.
    let clean = wait_until(Duration::from_secs(5), || sc.job_processes().is_empty()).await;
    assert!(clean, "{:?}", sc.job_processes());
    let zombies: Vec<_> = sc
        .pool_processes()
        .into_iter()
        .filter(|p| p.state == 'Z')
        .collect();
    assert!(zombies.is_empty(), "{zombies:?}");
    eprintln!("forkserver {old} killed: restarted, jobs served throughout");
}

async fn stream_after_resolve_skips_extraction(pool: bool) {
    let server = FixtureServer::start(fixtures());
    let sc = sidecar(pool, &[]).await;
    let url = server.url("progressive.mp4");
    let r = resolve_as(&sc, "t1", &url).await;
    assert_eq!(r.kinds, [kind::INFO], "{r:?}");
    let after_resolve = server.hits("/progressive.mp4");
    let t = stream_as(&sc, "t1", &url, "b").await;
    t.assert_complete(&sc.logs(), "mp4", "video/mp4");
    let stream_hits = server.hits("/progressive.mp4") - after_resolve;
    assert_eq!(stream_hits, 1, "the download only, no extraction request");
    let file = sha256_file(&fixtures().join("progressive.mp4")).unwrap();
    assert_eq!(sha256_hex(&t.data), file);
    // Another tenant does not share the entry: a full extraction again.
    let before = server.hits("/progressive.mp4");
    let other = stream_as(&sc, "t2", &url, "b").await;
    other.assert_complete(&sc.logs(), "mp4", "video/mp4");
    assert_eq!(
        server.hits("/progressive.mp4") - before,
        2,
        "extraction + download"
    );
    assert_eq!(sha256_hex(&other.data), file);
    // DASH from the cached info: the same bytes as a fresh extraction.
    let dash = server.url("dash/manifest.mpd");
    let _ = resolve_as(&sc, "t1", &dash).await;
    let mpd = || server.hits("/dash/manifest.mpd");
    let before = mpd();
    let cached = stream_as(&sc, "t1", &dash, "ba").await;
    let cached_hits = mpd() - before;
    let fresh = stream_as(&sc, "t3", &dash, "ba").await;
    // ffmpeg reads the manifest itself; the extraction's own fetch is what is skipped.
    assert_eq!(
        mpd() - before - cached_hits,
        cached_hits + 1,
        "one manifest fetch fewer"
    );
    cached.assert_complete(&sc.logs(), "m4a", "audio/mp4");
    assert_eq!(sha256_hex(&cached.data), sha256_hex(&fresh.data));
    assert!(sc.logs().contains("extraction cache hit"));
    eprintln!("pool {pool}: stream after resolve made {stream_hits} request (download only)");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_after_a_resolve_skips_extraction_spawned() {
    stream_after_resolve_skips_extraction(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_after_a_resolve_skips_extraction_pooled() {
    stream_after_resolve_skips_extraction(true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn no_cache_with_ttl_zero() {
    let server = FixtureServer::start(fixtures());
    let sc = sidecar(true, &["--cache-ttl", "0"]).await;
    let url = server.url("progressive.mp4");
    let _ = resolve_as(&sc, "tests", &url).await;
    let before = server.hits("/progressive.mp4");
    let t = Client::stream(sc.socket(), &url, "b").await;
    t.assert_complete(&sc.logs(), "mp4", "video/mp4");
    assert_eq!(server.hits("/progressive.mp4") - before, 2);
}

async fn fragment_protocols_are_refused(pool: bool) {
    let server = FixtureServer::start(fixtures());
    let sc = sidecar(pool, &[]).await;
    let watch = DirWatch::new(sc.work_dir()).unwrap();
    // `ism` single formats: yt-dlp's own IsmFD would write fragments into the cwd.
    for format in ["video-4000", "audio-128", "b"] {
        let t = Client::stream(sc.socket(), &server.url("ism/manifest.ism"), format).await;
        assert_eq!(t.error_code(), "format_unavailable", "{t:?}\n{}", sc.logs());
        assert_eq!(t.kinds, [kind::ERROR], "{t:?}");
        eprintln!("ism -f {format}: {}", t.error.as_ref().unwrap().message);
    }
    // Cached info takes the same way.
    let _ = resolve_as(&sc, "tests", &server.url("ism/manifest.ism")).await;
    let t = Client::stream(sc.socket(), &server.url("ism/manifest.ism"), "video-4000").await;
    assert_eq!(t.error_code(), "format_unavailable", "{t:?}");
    // Each job had a directory of its own; nothing was ever written into one.
    let touched = watch.touched();
    assert!(
        touched
            .iter()
            .all(|t| t.starts_with("job-") && !t.contains('/')),
        "the work dir was written to: {touched:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn fragment_protocols_are_refused_spawned() {
    fragment_protocols_are_refused(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn fragment_protocols_are_refused_pooled() {
    fragment_protocols_are_refused(true).await;
}

/// Sends a stream job on a greeted connection; time until the first data frame.
async fn first_byte(sc: &Sidecar, url: &str) -> Duration {
    let mut client = Client::connect(sc.socket()).await.unwrap();
    let started = Instant::now();
    client.start_stream(url, "b").await.unwrap();
    let mut t = Transcript::default();
    client
        .collect_until(&mut t, |t| t.data_frames() > 0 || t.error.is_some())
        .await;
    let took = started.elapsed();
    assert!(t.data_frames() > 0, "{t:?}\n{}", sc.logs());
    client.collect_until(&mut t, |_| false).await;
    assert!(t.end.is_some(), "{t:?}");
    took
}

fn p50(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// First media byte, direct against the sidecar socket: spawn vs pool vs right after a
/// resolve of the same URL (p50 of 20 each, same run). Prints the figures.
#[tokio::test(flavor = "multi_thread")]
async fn first_byte_times_spawn_pool_and_after_resolve() {
    let server = FixtureServer::start(fixtures());
    let spawned = sidecar(false, &[]).await;
    let pooled = sidecar(true, &[]).await;
    let n = 20;
    let (mut spawn, mut pool, mut cached) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..n {
        let url = server.url(&format!("progressive.mp4?s={i}"));
        spawn.push(first_byte(&spawned, &url).await);
        pool.push(first_byte(&pooled, &url).await);
        let url = server.url(&format!("progressive.mp4?r={i}"));
        let r = resolve_as(&pooled, "tests", &url).await;
        assert!(r.info.is_some(), "{r:?}");
        cached.push(first_byte(&pooled, &url).await);
    }
    let (s, p, c) = (p50(spawn), p50(pool), p50(cached));
    eprintln!("first byte p50 over {n}: spawn {s:?}, pool {p:?}, pool after resolve {c:?}");
    assert!(p < s, "the pool must beat a fresh yt-dlp: {p:?} vs {s:?}");
    assert!(c < s, "{c:?} vs {s:?}");
    let hits = pooled.logs().matches("extraction cache hit").count();
    assert_eq!(hits, n, "every stream after a resolve used the cache");
}

/// Extractions are capped at `--max-extractions` and the rest wait their turn (issue 10):
/// a burst of 64 streams of distinct URLs on two extraction slots all get every byte, every
/// extraction on a pool worker (a busy pool is waited for, neither restarted nor bypassed by
/// spawning yt-dlp), and never more than two extractions' processes at once.
#[tokio::test(flavor = "multi_thread")]
async fn a_burst_of_64_streams_waits_for_two_extractions_and_every_one_succeeds() {
    const N: usize = 64;
    let server = FixtureServer::start(fixtures());
    let sc = sidecar(true, &["--max-extractions", "2"]).await;
    let sc = &sc;
    let file = sha256_file(&fixtures().join("progressive.mp4")).unwrap();
    let done = std::sync::atomic::AtomicBool::new(false);
    let burst = async {
        let jobs = (0..N).map(|i| {
            let url = server.url(&format!("progressive.mp4?burst={i}"));
            async move { Client::stream(sc.socket(), &url, "b").await }
        });
        let all = futures::future::join_all(jobs).await;
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        all
    };
    // Native streams have no process: whatever is below the sidecar is an extraction.
    // The busiest sample is kept whole: comm, state and parent say what a third one was.
    let most_at_once = async {
        let mut busiest = Vec::new();
        while !done.load(std::sync::atomic::Ordering::SeqCst) {
            let now = sc.job_processes();
            if now.len() > busiest.len() {
                busiest = now;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        busiest
    };
    let started = Instant::now();
    let (transcripts, busiest) = tokio::join!(burst, most_at_once);
    let most = busiest.len();
    let took = started.elapsed();
    for (i, t) in transcripts.iter().enumerate() {
        t.assert_complete(&sc.logs(), "mp4", "video/mp4");
        assert_eq!(sha256_hex(&t.data), file, "stream {i}");
    }
    let logs = sc.logs();
    assert_eq!(pooled_jobs(&sc), N, "every extraction on the pool:\n{logs}");
    assert!(!logs.contains("restarting the pool"), "{logs}");
    assert!(
        (1..=2).contains(&most),
        "{most} extraction processes at once: {busiest:?}"
    );
    let waited = logs.matches("got a slot after waiting").count();
    assert!(waited > 0, "nobody waited for an extraction slot:\n{logs}");
    eprintln!(
        "{N} streams on 2 extraction slots: all complete in {took:?}, {waited} waited, at most {most} extractions at once"
    );
}

/// A full extraction queue still answers `busy` at once, saying what is full; the jobs
/// that got a place stream every byte.
async fn a_full_extraction_queue_answers_busy(pool: bool) {
    const N: usize = 12;
    let server = FixtureServer::start(fixtures());
    let sc = sidecar(pool, &["--max-extractions", "1", "--queue", "2"]).await;
    let sc = &sc;
    let jobs = (0..N).map(|i| {
        let url = server.url(&format!("progressive.mp4?overflow={i}"));
        async move { Client::stream(sc.socket(), &url, "b").await }
    });
    let transcripts = futures::future::join_all(jobs).await;
    let (busy, served): (Vec<_>, Vec<_>) = transcripts
        .into_iter()
        .partition(|t| t.error_code() == "busy");
    // All 12 arrive within the first extraction: one runs, two wait, the others are refused.
    assert!(
        !busy.is_empty() && served.len() >= 3,
        "{} served",
        served.len()
    );
    for t in &busy {
        assert_eq!(t.kinds, [kind::ERROR], "{t:?}");
        let message = &t.error.as_ref().unwrap().message;
        assert!(
            message.contains("all 1 extraction slots (--max-extractions) are taken"),
            "{message}"
        );
    }
    let file = sha256_file(&fixtures().join("progressive.mp4")).unwrap();
    for t in &served {
        t.assert_complete(&sc.logs(), "mp4", "video/mp4");
        assert_eq!(sha256_hex(&t.data), file);
    }
    eprintln!("pool {pool}: {} busy, {} served", busy.len(), served.len());
}

both_paths!(a_full_extraction_queue_answers_busy);

/// Loads the forkserver's functions (its `main` runs only as `python -c`), warms up exactly
/// as the pool does, then checks that its shortcuts decide nothing differently from yt-dlp.
/// argv: FORKSERVER YT_DLP URL…
const SAME_DECISIONS: &str = r#"
import gc, json, os, re, runpy, subprocess, sys
fs = runpy.run_path(sys.argv[1], run_name='forkserver')
yt_dlp_bin, urls = sys.argv[2], sys.argv[3:]
import yt_dlp
saved = os.dup(1)
os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
fs['warm'](yt_dlp, '')
sys.stdout.flush()
os.dup2(saved, 1)
gc.collect()
gc.freeze()

def pooled(argv):
    # A child of the warmed process, as a pool worker is.
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        os.dup2(w, 1)
        os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
        os._exit(fs['run'](yt_dlp, argv))
    os.close(w)
    with os.fdopen(r, 'rb') as f:
        out = f.read()
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), out

def plain(argv):
    return subprocess.Popen([yt_dlp_bin, *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)

def info(out):
    # The time of the run, and the Chrome version yt-dlp draws for its User-Agent once per
    # process (the pool's workers share their parent's).
    doc = json.loads(re.sub(rb'Chrome/[0-9.]+', b'Chrome/*', out))
    doc.pop('epoch')
    return doc

# A stream's extraction (`-f best`) and a resolve's (yt-dlp's default selector).
argvs = [['--ignore-config', '--no-cache-dir', '--no-plugin-dirs', '-J', *selector, '--', url]
         for url in urls for selector in (['-f', 'best'], [])]
plains = [plain(argv) for argv in argvs]  # at once: a yt-dlp start costs ~1 s of CPU
for argv, p in zip(argvs, plains):
    a, pooled_out = pooled(argv)
    plain_out = p.communicate()[0]
    assert a == p.returncode, (argv, a, p.returncode)
    assert a != 0 or info(pooled_out) == info(plain_out), (argv, pooled_out, plain_out)

# Which extractor takes a URL: the test URLs of every eighth extractor and of well-known
# ones, against yt-dlp's own loop; and every extractor skipped for lacking its texts is
# indeed unsuitable for that URL.
ydl = sys.modules['yt_dlp.YoutubeDL'].YoutubeDL({'quiet': True})
table = ydl.__dict__[fs['Extractors'].ATTR]
known = {'Youtube', 'YoutubeTab', 'Vimeo', 'Dailymotion', 'TwitchVod', 'Soundcloud',
         'Bandcamp', 'Twitter', 'Instagram', 'TikTok', 'Reddit', 'Facebook', 'BBC', 'Generic'}
tests = []
for i, key in enumerate(table.keys):
    if i % 8 == 0 or key in known:
        real = getattr(ydl._ies[key], 'real_class', ydl._ies[key])
        tests += [t['url'] for t in real.get_testcases(include_onlymatching=True)
                  if isinstance(t.get('url'), str)]
tests = list(dict.fromkeys(tests + urls + ['HTTPS://WWW.YOUTUBE.COM/watch?v=BaW_jenozKc']))
chosen, skips = set(), 0
for url in tests:
    expected = next(key for key, ie in ydl._ies.items() if ie.suitable(url))
    assert table.first_suitable(ydl._ies, url) == expected, (url, expected)
    chosen.add(expected)
    for key, need in zip(table.keys, table.needs):
        if need is not None and not any(text in url for text in
                                        ((need,) if isinstance(need, str) else need)):
            assert not ydl._ies[key].suitable(url), (key, need, url)
            skips += 1
print(f'{len(argvs)} extractions equal; {len(tests)} URLs, {len(chosen)} extractors chosen as '
      f'yt-dlp chooses; {skips} skips proven')
"#;

/// The forkserver's shortcuts for a cold extraction (issue 10: a prebuilt extractor list,
/// the first suitable extractor found from the texts its URL regexes need, two warm-up
/// extractions on a canned response, a larger regex cache) decide
/// nothing yt-dlp would decide otherwise: in a child of the warmed process, `-J` of every
/// fixture kind, a stream's and a resolve's, equals a plain yt-dlp run's (exit code and info, the
/// time of the run aside), and the extractor taken for the test URLs of several hundred
/// extractors is the one yt-dlp's own loop takes.
#[test]
fn the_warm_pool_decides_what_yt_dlp_decides() {
    let server = FixtureServer::start(fixtures());
    let forkserver = repo_root().join("sidecar/python/forkserver.py");
    let urls = [
        "progressive.mp4",
        "audio-only.m4a",
        "hls/index.m3u8",
        "hls-fmp4/index.m3u8",
        "dash/manifest.mpd",
        "page.html",
        "missing.mp4",
    ]
    .map(|path| server.url(path));
    let out = std::process::Command::new(yt_dlp().with_file_name("python"))
        .arg("-I")
        .arg("-c")
        .arg(SAME_DECISIONS)
        .arg(&forkserver)
        .arg(yt_dlp())
        .args(&urls)
        .current_dir(tempfile::tempdir().unwrap().path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    eprintln!("{}", String::from_utf8_lossy(&out.stdout).trim());
}
