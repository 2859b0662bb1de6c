//! Issue 10's native data path, end to end, where the upstream misbehaves: the sidecar
//! moves a single file's bytes itself (yt-dlp only extracts), so it must resume a body that
//! drops or stalls at the byte offset, extract again once when a cached media URL starts
//! answering 403, hold no yt-dlp or Python process while the bytes flow, close the upstream
//! connection when the client leaves, and slow the upstream down to a slow client's pace.
//!
//! Real gateway and sidecar binaries and the pinned yt-dlp; each test has its own fixture
//! server (`FixtureServer`: its faults, request log, bytes sent and open responses are that
//! test's alone) and its own gateway, whose sidecar logs at debug level (the resume lines
//! are debug lines) through a wrapper that only sets `RUST_LOG` and `exec`s the release
//! sidecar. Bytes are compared with the fixture files by sha256.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;
use streamgate_tests::gateway::*;
use streamgate_tests::http::{Fault, STALL_AFTER, Seen};
use streamgate_tests::sidecar::POOL_COMMS;
use streamgate_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MIB: u64 = 1024 * 1024;

// ---------------------------------------------------------------------------------------
// Set-up and helpers.

/// `streamgate-sidecar` with `RUST_LOG=info,streamgate_sidecar=debug`: a script that sets
/// the level and `exec`s the release binary (same pid, same `comm`), for `--sidecar`.
fn debug_sidecar() -> &'static Path {
    static WRAPPER: OnceLock<PathBuf> = OnceLock::new();
    WRAPPER.get_or_init(|| {
        let real = release_bin("streamgate-sidecar");
        let dir = streamgate_tests::paths::target_dir().join("native-tests");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("sidecar-debug");
        let script = format!(
            "#!/bin/sh\nRUST_LOG='info,streamgate_sidecar=debug' exec '{}' \"$@\"\n",
            real.display()
        );
        // Another test binary may write the same script at the same time: publish by rename.
        let tmp = dir.join(format!("sidecar-debug.{}", std::process::id()));
        let mut f = std::fs::File::create(&tmp).unwrap();
        f.write_all(script.as_bytes()).unwrap();
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o755))
            .unwrap();
        drop(f);
        std::fs::rename(&tmp, &path).unwrap();
        path
    })
}

/// A gateway on the embedded default (loopback fixtures allowed) whose sidecar logs at
/// debug level and gets `sidecar_args`.
async fn gateway(sidecar_args: &[&str]) -> Gateway {
    Gateway::start(GatewayOptions {
        sidecar_args: sidecar_args.iter().map(|a| a.to_string()).collect(),
        env: vec![(
            "STREAMGATE_SIDECAR".into(),
            debug_sidecar().display().to_string(),
        )],
        ..GatewayOptions::default()
    })
    .await
}

/// `GET` through curl, bounded.
async fn get(url: &str) -> CurlResult {
    let url = url.to_owned();
    blocking(move || curl(&["--max-time", "120"], &url)).await
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(fixtures().join(name)).unwrap()
}

/// The last `lines` lines of a log, for assertion messages.
fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Log lines containing every one of `parts`.
fn lines_with<'a>(log: &'a str, parts: &[&str]) -> Vec<&'a str> {
    log.lines()
        .filter(|l| parts.iter().all(|p| l.contains(p)))
        .collect()
}

/// Extractions run by the sidecar so far (each a yt-dlp `-J -f` process).
fn extractions(log: &str) -> usize {
    lines_with(log, &["extracted", "from_cache=false"]).len()
}

/// The start offset of a `Range: bytes=START-…` header.
fn range_start(seen: &Seen) -> Option<u64> {
    let spec = seen.range.as_deref()?.strip_prefix("bytes=")?;
    spec.split('-').next()?.parse().ok()
}

/// A complete 200 whose body is exactly `file`, with its exact length.
fn assert_whole_file(r: &CurlResult, file: &[u8], what: &str, log: &str) {
    assert_eq!(
        (r.exit, r.status),
        (0, 200),
        "{what}: {r:?}\n{}",
        tail(log, 60)
    );
    assert_eq!(
        r.header("content-length"),
        Some(file.len().to_string().as_str()),
        "{what}: the exact size"
    );
    assert_eq!(r.body.len(), file.len(), "{what}");
    assert_eq!(sha256_hex(&r.body), sha256_hex(file), "{what}: the bytes");
}

/// Processes below the gateway's sidecar that are not the warm pool's own forkserver and
/// idle workers: a job's yt-dlp (or Python, or ffmpeg), live or zombie.
fn job_processes(gw: &Gateway) -> Vec<ProcInfo> {
    let Some(sidecar) = gw.sidecar_pid() else {
        return Vec::new();
    };
    let mut all = descendants(sidecar);
    all.retain(|p| !POOL_COMMS.contains(&p.comm.as_str()));
    all
}

/// The maximum of `/proc/sys/net/ipv4/NAME` (`tcp_rmem`, `tcp_wmem`: min default max).
fn tcp_max(name: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/sys/net/ipv4/{name}")).unwrap();
    text.split_whitespace().last().unwrap().parse().unwrap()
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------
// An upstream that drops or stalls mid-body.

/// The media connection drops twice mid-body (after 1 MiB of the first request and 1 MiB
/// of the resumed one) at an origin that answers ranges with 206 (`bytes=0-` included, as
/// nginx does): the sidecar resumes each time at the offset it had reached, with a `Range`
/// from there, and the client gets one complete 200 with the file's exact bytes.
#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_that_drops_mid_body_is_resumed_at_the_offset() {
    let server = FixtureServer::start(fixtures());
    server.partial_for_whole_ranges(true);
    let gw = gateway(&[]).await;
    let file = fixture("progressive.mp4");
    let link = gw.stream_url(&gw.mint(&server.url("progressive.mp4"), "b"));

    // A clean stream first: it extracts, and the cache keeps the selection.
    let first = get(&link).await;
    assert_whole_file(&first, &file, "clean stream", &gw.logs());
    eprintln!("clean stream; the origin saw {:?}", server.requests());
    assert_eq!(extractions(&gw.logs()), 1, "{}", tail(&gw.logs(), 40));

    server.arm("/progressive.mp4", Fault::DropAfter(MIB));
    server.arm("/progressive.mp4", Fault::DropAfter(MIB));
    let before = server.gets("/progressive.mp4").len();
    let started = Instant::now();
    let r = get(&link).await;
    let log = gw.logs();
    assert_whole_file(&r, &file, "through two drops", &log);
    assert_eq!(server.armed("/progressive.mp4"), 0, "both faults were used");
    let gets = server.gets("/progressive.mp4")[before..].to_vec();
    eprintln!(
        "through two drops in {:.2} s; media requests {gets:#?}",
        started.elapsed().as_secs_f64()
    );
    // Three requests: from 0, from where the first drop left it, from the second's.
    assert_eq!(gets.len(), 3, "{gets:#?}\n{}", tail(&log, 40));
    assert!(gets.iter().all(|s| s.status == 206), "{gets:#?}");
    let starts: Vec<u64> = gets.iter().map(|s| range_start(s).unwrap()).collect();
    assert_eq!(starts[0], 0, "{gets:#?}");
    assert!(
        starts[1] > 0 && starts[1] <= MIB,
        "resumed where the first drop cut: {starts:?}"
    );
    assert!(
        starts[2] > starts[1] && starts[2] <= starts[1] + MIB,
        "resumed where the second drop cut: {starts:?}"
    );
    // The sidecar's log tells each resume, with its offset; no new extraction was needed.
    let broke = lines_with(&log, &["upstream broke"]);
    assert_eq!(broke.len(), 2, "{}", tail(&log, 40));
    for (line, start) in broke.iter().zip(&starts[1..]) {
        assert!(line.contains(&format!("offset={start}")), "{line}");
    }
    assert_eq!(extractions(&log), 1, "{}", tail(&log, 40));
}

/// The same drop at an origin that answers `Range: bytes=0-` with `200` and `Accept-Ranges:
/// bytes` (warp's file server; RFC 9110 lets a server answer a range covering the whole
/// file that way) and any later range with 206: resuming at the offset works there too,
/// so the sidecar must try it rather than take the 200 for "no ranges here".
#[tokio::test(flavor = "multi_thread")]
async fn an_origin_answering_200_to_a_whole_range_is_resumed_too() {
    let server = FixtureServer::start(fixtures());
    let gw = gateway(&[]).await;
    let file = fixture("progressive.mp4");
    let link = gw.stream_url(&gw.mint(&server.url("progressive.mp4"), "b"));
    let first = get(&link).await;
    assert_whole_file(&first, &file, "clean stream", &gw.logs());
    let gets = server.gets("/progressive.mp4");
    let whole = gets.iter().find(|s| s.range.as_deref() == Some("bytes=0-"));
    assert_eq!(whole.map(|s| s.status), Some(200), "{gets:#?}");

    server.arm("/progressive.mp4", Fault::DropAfter(MIB));
    let before = gets.len();
    let r = get(&link).await;
    let log = gw.logs();
    let gets = server.gets("/progressive.mp4")[before..].to_vec();
    eprintln!(
        "drop at a 200-to-bytes=0- origin: curl exit {}, {} bytes; media requests {gets:#?}",
        r.exit,
        r.body.len()
    );
    assert_whole_file(&r, &file, "through a drop", &log);
    assert_eq!(gets.len(), 2, "{gets:#?}");
    let resumed_at = range_start(&gets[1]).unwrap();
    assert!(resumed_at > 0 && resumed_at <= MIB && gets[1].status == 206);
}

/// An upstream that goes silent mid-body: after the stall timeout the sidecar drops that
/// connection and resumes at the offset, when the origin honours ranges; an origin that
/// does not (`/stall/`: 200 to any `Range`, 1 MiB, then silence) cannot be resumed, and
/// the stream ends there with `timeout` — the client got a 200 with the exact length and
/// sees a short body (curl exit 18), never a wrong byte.
#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_that_stalls_mid_body_is_resumed_or_ends_with_timeout() {
    const STALL_SECS: u64 = 4;
    let server = FixtureServer::start(fixtures());
    server.partial_for_whole_ranges(true);
    let gw = gateway(&[&format!("--stall-timeout={STALL_SECS}")]).await;
    let file = fixture("progressive.mp4");

    // (a) Ranges honoured: resumed.
    let link = gw.stream_url(&gw.mint(&server.url("progressive.mp4"), "b"));
    let first = get(&link).await;
    assert_whole_file(&first, &file, "clean stream", &gw.logs());
    server.arm("/progressive.mp4", Fault::StallAfter(MIB));
    let before = server.gets("/progressive.mp4").len();
    let started = Instant::now();
    let r = get(&link).await;
    let took = started.elapsed();
    let log = gw.logs();
    assert_whole_file(&r, &file, "through a stall", &log);
    let gets = server.gets("/progressive.mp4")[before..].to_vec();
    eprintln!("through a stall in {took:?}; media requests {gets:#?}");
    assert_eq!(gets.len(), 2, "{gets:#?}\n{}", tail(&log, 40));
    let resumed_at = range_start(&gets[1]).unwrap();
    assert!(
        resumed_at > 0 && resumed_at <= MIB && gets[1].status == 206,
        "{gets:#?}"
    );
    assert!(
        took >= Duration::from_secs(STALL_SECS),
        "resumed after the stall timeout, not before: {took:?}"
    );
    let stalled = lines_with(&log, &["upstream stalled"]);
    assert_eq!(stalled.len(), 1, "{}", tail(&log, 40));
    assert!(
        stalled[0].contains(&format!("offset={resumed_at}")),
        "{}",
        stalled[0]
    );

    // (b) No ranges: the stall ends the stream with `timeout` after the first MiB.
    let link = gw.stream_url(&gw.mint(&server.url("stall/progressive.mp4"), "b"));
    let started = Instant::now();
    let r = get(&link).await;
    let took = started.elapsed();
    let log = gw.logs();
    eprintln!(
        "/stall/ without ranges: curl exit {} status {} after {} bytes in {took:?}",
        r.exit,
        r.status,
        r.body.len()
    );
    assert_eq!(r.status, 200, "{r:?}\n{}", tail(&log, 40));
    assert_eq!(
        r.header("content-length"),
        Some(file.len().to_string().as_str()),
        "the size was known before the first byte"
    );
    assert_eq!(r.exit, 18, "curl sees a partial body: {r:?}");
    assert_eq!(r.body.len(), STALL_AFTER, "{r:?}");
    assert!(
        r.body[..] == file[..STALL_AFTER],
        "the bytes it got are the file's"
    );
    assert!(took >= Duration::from_secs(STALL_SECS), "{took:?}");
    let failed = lines_with(&log, &["job failed", "code=timeout"]);
    assert_eq!(failed.len(), 1, "{}", tail(&log, 40));
    assert!(
        failed[0].contains(&format!("bytes={STALL_AFTER}")),
        "{}",
        failed[0]
    );
    // The origin ignores ranges: every ranged request got the whole body's 200.
    let stall_gets = server.gets("/stall/progressive.mp4");
    assert!(
        stall_gets.iter().all(|s| s.status == 200),
        "{stall_gets:#?}"
    );
}

/// The other side of "a client that leaves": a client that reads a sized native stream to
/// its end did not leave. The gateway logs the stream complete, sends no `cancel`, and the
/// sidecar counts the job done.
#[tokio::test(flavor = "multi_thread")]
async fn a_complete_download_is_not_taken_for_a_client_that_left() {
    let server = FixtureServer::start(fixtures());
    let gw = gateway(&[]).await;
    let file = fixture("progressive.mp4");
    let link = gw.stream_url(&gw.mint(&server.url("progressive.mp4"), "b"));
    for n in 1..=3 {
        let r = get(&link).await;
        assert_whole_file(&r, &file, &format!("download {n}"), &gw.logs());
    }
    // The log lines come a moment after the last byte.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let log = gw.logs();
    let complete = lines_with(&log, &["stream complete"]).len();
    let left = lines_with(&log, &["client left"]);
    let cancelled = lines_with(&log, &["job cancelled by the client"]).len();
    let done = lines_with(&log, &["job done", &format!("bytes={}", file.len())]).len();
    eprintln!(
        "3 complete downloads: gateway {complete} \"stream complete\", {} \"client left\"; \
         sidecar {done} \"job done\", {cancelled} \"job cancelled by the client\"",
        left.len()
    );
    assert!(
        left.is_empty() && complete == 3,
        "complete downloads logged as clients that left: {left:#?}"
    );
    assert_eq!((done, cancelled), (3, 0), "{}", tail(&log, 40));
}

// ---------------------------------------------------------------------------------------
// A cached media URL that expires.

/// The link names a page whose `<video src>` is a signed media URL (`?sig=v1`). The first
/// stream extracts it and caches the selection; the signature then expires (403, and the
/// page names `?sig=v2`): the second stream of the same token gets 403 from the cached URL,
/// extracts once more, and completes from the new URL. When even the new URL answers 403,
/// the sidecar does not loop: one re-extraction, then 502 `upstream_failed`.
#[tokio::test(flavor = "multi_thread")]
async fn a_cached_media_url_answering_403_is_extracted_again_once() {
    let server = FixtureServer::start(fixtures());
    let gw = gateway(&[]).await;
    let file = fixture("progressive.mp4");
    let page = server.signed_page("progressive.mp4");
    let page_path = "/signed/progressive.mp4.html";
    let link = gw.stream_url(&gw.mint(&page, "b"));
    let media = |server: &FixtureServer| -> Vec<(String, u16)> {
        let gets = server.gets("/progressive.mp4");
        gets.into_iter().map(|s| (s.query, s.status)).collect()
    };

    let first = get(&link).await;
    assert_whole_file(&first, &file, "first stream", &gw.logs());
    assert_eq!(server.gets(page_path).len(), 1);
    assert_eq!(media(&server), [("sig=v1".to_owned(), 200)]);
    assert_eq!(extractions(&gw.logs()), 1, "{}", tail(&gw.logs(), 40));

    server.rotate_signature();
    let second = get(&link).await;
    let log = gw.logs();
    assert_whole_file(&second, &file, "second stream, same token", &log);
    eprintln!("media requests: {:?}", media(&server));
    assert_eq!(
        media(&server),
        [
            ("sig=v1".to_owned(), 200),
            ("sig=v1".to_owned(), 403),
            ("sig=v2".to_owned(), 200)
        ],
        "the cached URL, refused; then the new one\n{}",
        tail(&log, 40)
    );
    assert_eq!(server.gets(page_path).len(), 2, "one re-extraction");
    assert_eq!(extractions(&log), 2, "{}", tail(&log, 40));
    let again = lines_with(&log, &["a cached media URL stopped working"]);
    assert_eq!(again.len(), 1, "{}", tail(&log, 40));
    assert!(again[0].contains("403"), "{}", again[0]);

    // Still 403 after the re-extraction: exactly one more try, then a clear failure.
    server.revoke_signatures();
    let third = get(&link).await;
    let log = gw.logs();
    assert_problem(&third, 502, "upstream_failed", "a URL that stays forbidden");
    assert_eq!(
        media(&server)[3..],
        [("sig=v2".to_owned(), 403), ("sig=v2".to_owned(), 403)],
        "\n{}",
        tail(&log, 40)
    );
    assert_eq!(
        server.gets(page_path).len(),
        3,
        "one re-extraction, no loop"
    );
    assert_eq!(
        lines_with(&log, &["a cached media URL stopped working"]).len(),
        2
    );
    let problem: Value = serde_json::from_slice(&third.body).unwrap();
    eprintln!("a URL that stays forbidden: {problem}");
}

// ---------------------------------------------------------------------------------------
// A stream right after a resolve.

/// `POST /v1/resolve {"url": url}` from loopback: the answer's JSON.
async fn resolve(gw: &Gateway, url: &str) -> Value {
    let endpoint = gw.url("/v1/resolve");
    let body = serde_json::json!({ "url": url }).to_string();
    let json = "content-type: application/json";
    let r = blocking(move || {
        curl(
            &["-X", "POST", "-H", json, "--data-binary", &body],
            &endpoint,
        )
    })
    .await;
    assert_eq!(
        (r.exit, r.status),
        (0, 200),
        "resolve {url}: {r:?}\n{}",
        tail(&gw.logs(), 40)
    );
    serde_json::from_slice(&r.body).unwrap()
}

/// yt-dlp runs the sidecar has started (each a pool worker taking a job).
fn pool_jobs(log: &str) -> usize {
    lines_with(log, &["pool worker took the job"]).len()
}

/// Right after a resolve, a stream starts without any yt-dlp: the resolve chose the
/// answer's own selector (`best`) in its run, and a format's link (an exact `format_id`)
/// is chosen by the sidecar from the resolved info; the bytes equal direct yt-dlp's for the
/// same selector. A selector that chooses nothing (`best` of a DASH manifest with separate
/// video and audio) does not fail the resolve.
#[tokio::test(flavor = "multi_thread")]
async fn a_stream_right_after_a_resolve_starts_no_yt_dlp() {
    let server = FixtureServer::start(fixtures());
    let gw = gateway(&[]).await;

    let hls = server.url("hls/index.m3u8");
    let answer = resolve(&gw, &hls).await;
    assert_eq!(answer["format"], "best");
    let log = gw.logs();
    assert_eq!(
        pool_jobs(&log),
        1,
        "one yt-dlp for the resolve\n{}",
        tail(&log, 40)
    );
    let direct = {
        let u = hls.clone();
        blocking(move || direct_ytdlp(&u, "best", &[])).await
    };
    let playlist_gets = server.gets("/hls/index.m3u8").len();
    let id = answer["formats"][0]["id"].as_str().unwrap().to_owned();
    let links = [
        ("best", answer["stream_url"].as_str().unwrap()),
        (
            id.as_str(),
            answer["formats"][0]["stream_url"].as_str().unwrap(),
        ),
    ];
    for (selector, link) in links {
        let r = get(&gw.url(link)).await;
        let log = gw.logs();
        assert_eq!(
            (r.exit, r.status),
            (0, 200),
            "{selector}: {r:?}\n{}",
            tail(&log, 40)
        );
        assert_eq!(
            sha256_hex(&r.body),
            sha256_hex(&direct),
            "{selector}: the bytes"
        );
        assert_eq!(
            pool_jobs(&log),
            1,
            "{selector}: a yt-dlp ran for a stream after the resolve\n{}",
            tail(&log, 40)
        );
        assert_eq!(extractions(&log), 0, "{selector}\n{}", tail(&log, 40));
    }
    // The playlist was fetched by the sidecar's own HLS fetcher (once per stream), the
    // segments too; no yt-dlp looked at it again.
    let gets = server.gets("/hls/index.m3u8");
    assert_eq!(gets.len(), playlist_gets + 2, "{gets:?}");

    let dash = server.url("dash/manifest.mpd");
    let answer = resolve(&gw, &dash).await;
    let log = gw.logs();
    assert_eq!(
        lines_with(&log, &["the stream's selector chose nothing"]).len(),
        1,
        "{}",
        tail(&log, 40)
    );
    let formats = answer["formats"].as_array().unwrap();
    assert_eq!(formats.len(), 2, "{answer}");
    let jobs = pool_jobs(&log);
    for f in formats {
        let id = f["id"].as_str().unwrap().to_owned();
        let r = get(&gw.url(f["stream_url"].as_str().unwrap())).await;
        let log = gw.logs();
        assert_eq!(
            (r.exit, r.status),
            (0, 200),
            "format {id}: {r:?}\n{}",
            tail(&log, 40)
        );
        let direct = {
            let (u, id) = (dash.clone(), id.clone());
            blocking(move || direct_ytdlp(&u, &id, &[])).await
        };
        assert_eq!(
            sha256_hex(&r.body),
            sha256_hex(&direct),
            "format {id}: the bytes"
        );
        assert_eq!(
            pool_jobs(&log),
            jobs,
            "format {id}: a yt-dlp ran\n{}",
            tail(&log, 40)
        );
    }
    eprintln!("after a resolve: best and format {id} of HLS, both DASH formats, no yt-dlp");
}

// ---------------------------------------------------------------------------------------
// Processes, a client that leaves, backpressure.

/// `GET link` over a raw socket with a 64 KiB receive buffer; returns the connection after
/// the response head (a 200), the declared `Content-Length`, and the body bytes read with
/// the head.
async fn raw_get(link: &str) -> (tokio::net::TcpStream, u64, Vec<u8>) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(64 * 1024).unwrap();
    let rest = link.trim_start_matches("http://");
    let (addr, path) = rest.split_at(rest.find('/').unwrap());
    let mut conn = socket.connect(addr.parse().unwrap()).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let end = loop {
        let n = conn.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before the head: {head:?}");
        head.extend_from_slice(&buf[..n]);
        if let Some(at) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
    };
    let text = String::from_utf8_lossy(&head[..end]).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 200"), "{text}");
    let length = text
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("a Content-Length");
    (conn, length, head[end..].to_vec())
}

/// After the first byte of a native stream no yt-dlp or Python process belongs to it
/// (the extraction's worker is gone; the sidecar moves the bytes), on the warm pool and on
/// the spawn path; a client that leaves mid-stream makes the upstream connection close
/// within a second.
#[tokio::test(flavor = "multi_thread")]
async fn a_native_stream_holds_no_process_and_a_leaving_client_closes_the_upstream() {
    let large = large_fixture();
    let server = FixtureServer::start(large.parent().unwrap());
    let size = std::fs::metadata(large).unwrap().len();
    for (what, args) in [("warm pool", &[][..]), ("spawn path", &["--no-pool"][..])] {
        let gw = gateway(args).await;
        let link = gw.stream_url(&gw.mint(&server.url("large.mp4"), "b"));
        let sent_before = server.bytes_sent("/large.mp4");
        let (mut conn, length, mut got) = raw_get(&link).await;
        assert_eq!(length, size, "{what}");
        let mut buf = vec![0u8; 64 * 1024];
        while got.is_empty() {
            let n = conn.read(&mut buf).await.unwrap();
            assert!(n > 0, "{what}: no first byte\n{}", tail(&gw.logs(), 40));
            got.extend_from_slice(&buf[..n]);
        }
        // From the first byte on, sampled while the client reads slowly.
        let mut samples = 0;
        let until = Instant::now() + Duration::from_secs(2);
        while Instant::now() < until {
            let procs = job_processes(&gw);
            assert!(
                procs.is_empty(),
                "{what}: processes during the stream, after its first byte: {procs:?}\n{}",
                tail(&gw.logs(), 40)
            );
            samples += 1;
            let n = conn.read(&mut buf).await.unwrap();
            assert!(n > 0, "{what}: ended early");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let pool = descendants(gw.sidecar_pid().unwrap()).len() - job_processes(&gw).len();
        // The upstream is still sending: the stream is in mid-body.
        let sent = server.bytes_sent("/large.mp4") - sent_before;
        assert!(sent < size, "{what}: {sent} of {size} bytes sent already");
        assert_eq!(server.open_responses("/large.mp4"), 1, "{what}");
        let left = Instant::now();
        drop(conn);
        let closed = wait_until(Duration::from_secs(1), || {
            server.open_responses("/large.mp4") == 0
        })
        .await;
        let after = left.elapsed();
        assert!(
            closed,
            "{what}: the upstream response is still open {after:?} after the client left\n{}",
            tail(&gw.logs(), 40)
        );
        eprintln!(
            "{what}: no job process in {samples} samples after the first byte (pool \
             processes: {pool}); client left after {sent} upstream bytes; upstream closed \
             {after:?} later"
        );
        let cancelled = wait_until(Duration::from_secs(5), || {
            !lines_with(&gw.logs(), &["job cancelled by the client"]).is_empty()
        })
        .await;
        assert!(cancelled, "{what}: {}", tail(&gw.logs(), 40));
    }
}

/// A slow client (reads 64 KiB, then pauses for seconds) of the ≥ 200 MB fixture: the
/// upstream transfer stops within the buffers of the path (the origin's bytes sent stay a
/// small part of the file and stop growing during the pause), the gateway's and the
/// sidecar's memory stay bounded, and after the pause the client gets the rest, every byte
/// right.
#[tokio::test(flavor = "multi_thread")]
async fn a_slow_client_slows_the_upstream_and_memory_stays_bounded() {
    const PAUSE: Duration = Duration::from_secs(6);
    let large = large_fixture();
    let size = std::fs::metadata(large).unwrap().len();
    let want = tokio::task::spawn_blocking(move || sha256_file(large).unwrap());
    let server = FixtureServer::start(large.parent().unwrap());
    let gw = gateway(&[]).await;
    let sidecar = gw.sidecar_pid().expect("a sidecar");
    // Warm-up: a whole stream, so buffers, plugin instances and the pool exist.
    let warm = gw.stream_url(&gw.mint(&server.url("progressive.mp4"), "b"));
    assert_eq!(get(&warm).await.status, 200);
    let (gw_base, sc_base) = (gw.rss_kib(), rss_kib(sidecar));

    let link = gw.stream_url(&gw.mint(&server.url("large.mp4"), "b"));
    let (mut conn, length, first) = raw_get(&link).await;
    assert_eq!(length, size);
    use sha2::Digest;
    let mut hash = sha2::Sha256::new();
    hash.update(&first);
    let mut received = first.len() as u64;
    let mut buf = vec![0u8; 64 * 1024];
    while received < 64 * 1024 {
        let n = conn.read(&mut buf).await.unwrap();
        assert!(n > 0);
        hash.update(&buf[..n]);
        received += n as u64;
    }

    // The pause: nothing read for PAUSE.
    let paused = Instant::now();
    let (mut gw_peak, mut sc_peak) = (gw_base, sc_base);
    let mut sent_after_1s = None;
    while paused.elapsed() < PAUSE {
        tokio::time::sleep(Duration::from_millis(250)).await;
        gw_peak = gw_peak.max(gw.rss_kib());
        sc_peak = sc_peak.max(rss_kib(sidecar));
        if sent_after_1s.is_none() && paused.elapsed() >= Duration::from_secs(1) {
            sent_after_1s = Some(server.bytes_sent("/large.mp4"));
        }
        let procs = job_processes(&gw);
        assert!(procs.is_empty(), "processes during the pause: {procs:?}");
    }
    let sent_early = sent_after_1s.unwrap();
    let sent_late = server.bytes_sent("/large.mp4");
    let (gw_growth, sc_growth) = (gw_peak - gw_base, sc_peak.saturating_sub(sc_base));
    eprintln!(
        "slow client read {received} bytes, then paused {PAUSE:?}: the origin had sent \
         {sent_early} bytes after 1 s and {sent_late} after {PAUSE:?} (of {size}); gateway \
         RSS {gw_base} → {gw_peak} KiB, sidecar RSS {sc_base} → {sc_peak} KiB"
    );
    // What may be in flight: the kernel's buffers of the two TCP connections on the path
    // (origin → sidecar, gateway → client; the Unix socket between holds little) plus a
    // few MiB of the processes' own; and in any case well below the file.
    let kernel = tcp_max("tcp_rmem") + 2 * tcp_max("tcp_wmem");
    let bound = (kernel + 16 * MIB).min(size / 4);
    assert!(
        sent_late < bound,
        "the origin sent {sent_late} of {size} bytes to a client that read {received} \
         (bound {bound}: kernel buffers {kernel})"
    );
    assert!(
        sent_late - sent_early < MIB,
        "the upstream transfer goes on during the pause: {sent_early} → {sent_late}"
    );
    assert!(gw_growth < 16 * 1024, "gateway RSS grew {gw_growth} KiB");
    assert!(sc_growth < 16 * 1024, "sidecar RSS grew {sc_growth} KiB");
    assert_eq!(server.open_responses("/large.mp4"), 1);

    // The rest, at full speed, every byte right.
    let resumed = Instant::now();
    loop {
        let n = conn.read(&mut buf).await.unwrap();
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        received += n as u64;
    }
    eprintln!(
        "then the rest: {received} bytes in all, {:.1} s",
        resumed.elapsed().as_secs_f64()
    );
    assert_eq!(received, size, "{}", tail(&gw.logs(), 40));
    let want = want.await.unwrap();
    assert_eq!(
        hex::encode(hash.finalize()),
        want,
        "the bytes after the pause"
    );
}
