//! End-to-end tests of `streamgate serve`: the release binaries (the gateway runs its own
//! sidecar), the venv's yt-dlp, fixtures from `tests/fixtures/make-media` on 127.0.0.1,
//! and real clients (curl, reqwest, a raw TCP reader).

use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::future::join_all;
use streamgate_tests::gateway::*;
use streamgate_tests::*;

#[tokio::test(flavor = "multi_thread")]
async fn each_fixture_kind_downloads_with_curl_and_reqwest() {
    let gw = Gateway::start(GatewayOptions::default()).await;
    let http = reqwest::Client::new();
    // (path, format, mime, ext, deterministic: compare with a direct yt-dlp run by hash)
    let kinds = [
        ("progressive.mp4", "b", "video/mp4", "mp4", true),
        ("video-only.mp4", "b", "video/mp4", "mp4", true),
        ("audio-only.m4a", "b", "audio/mp4", "m4a", true),
        ("hls/index.m3u8", "b", "video/mp2t", "ts", true),
        ("dash/manifest.mpd", "ba", "audio/mp4", "m4a", true),
        ("dash/manifest.mpd", "bv+ba", "video/mp4", "mp4", false),
    ];
    for (path, format, mime, ext, deterministic) in kinds {
        let what = format!("{path} -f {format}");
        let source = server().url(path);
        let link = gw.stream_url(&gw.mint(&source, format));
        let started = Instant::now();
        let (l, h) = (link.clone(), link.clone());
        let get = blocking(move || curl(&[], &l)).await;
        assert_eq!(
            (get.exit, get.status),
            (0, 200),
            "{what}: {get:?}\n{}",
            gw.logs()
        );
        assert_media_headers(&get, mime, ext);
        let head = blocking(move || curl(&["-I"], &h)).await;
        assert_eq!((head.exit, head.status), (0, 200), "{what}: {head:?}");
        assert_eq!(
            stable_headers(&head),
            stable_headers(&get),
            "{what}: HEAD = GET headers"
        );
        let head = http.head(&link).send().await.unwrap();
        assert_eq!(head.status(), 200);
        assert!(
            head.bytes().await.unwrap().is_empty(),
            "{what}: HEAD has no body"
        );

        let resp = http.get(&link).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], mime);
        let body = resp.bytes().await.unwrap();
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), &get.body).unwrap();
        if deterministic {
            let (u, f) = (source.clone(), format.to_owned());
            // The sidecar fetches every fixture kind itself (progressive, HLS segments, DASH
            // fragments): its bytes are yt-dlp's with its default downloaders.
            let direct = sha256_hex(&blocking(move || direct_ytdlp(&u, &f, &[])).await);
            assert_eq!(
                sha256_hex(&get.body),
                direct,
                "{what}: curl bytes = direct yt-dlp"
            );
            assert_eq!(
                sha256_hex(&body),
                direct,
                "{what}: reqwest bytes = direct yt-dlp"
            );
        } else {
            // ffmpeg's live merge is not byte-stable: check both clients got a whole file.
            let mut streams = ffprobe_streams(file.path());
            streams.sort();
            assert_eq!(streams, ["audio", "video"], "{what}");
            assert!(
                body.len() > 1_000_000 && get.body.len() > 1_000_000,
                "{what}"
            );
        }
        eprintln!(
            "{what}: {} bytes as {mime} in {:?} (3 requests)",
            body.len(),
            started.elapsed()
        );
    }
}

/// The direct yt-dlp run a stream of `url` must equal: its own HLS downloader for HLS
/// (the sidecar fetches that itself), the sidecar's downloader choice for the rest.

#[tokio::test(flavor = "multi_thread")]
async fn the_download_name_is_sanitised_and_follows_the_container() {
    let gw = Gateway::start(GatewayOptions::default()).await;
    let state = gw.state_dir().display().to_string();
    let url = server().url("hls/index.m3u8");
    let name = "../Café “live”\r\n.mp4";
    let token = mint(&["--state-dir", &state, "--url", &url, "--filename", name]);
    let link = gw.stream_url(&token);
    let head = blocking(move || curl(&["-I"], &link)).await;
    assert_eq!(head.status, 200, "{head:?}");
    assert_eq!(
        head.header("content-disposition"),
        Some(
            "attachment; filename=\"_Caf_ _live___.ts\"; \
             filename*=UTF-8''_Caf%C3%A9%20%E2%80%9Clive%E2%80%9D__.ts"
        )
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn early_failures_are_problems_with_their_status() {
    let opts = GatewayOptions {
        sidecar_args: vec!["--stall-timeout=15".into()],
        ..GatewayOptions::default()
    };
    let gw = Gateway::start(opts).await;
    let (_silent, silent_url) = silent_server();
    let good = gw.mint(&server().url("progressive.mp4"), "b");
    let mut tampered = good.clone().into_bytes();
    let mid = tampered.len() / 2;
    tampered[mid] = if tampered[mid] == b'A' { b'B' } else { b'A' };
    let expired = seal_expired(&gw, &server().url("progressive.mp4")).await;
    let cases = [
        (gw.url("/stream"), 400, "missing_token"),
        (gw.stream_url("not-a-token"), 400, "token_denied"),
        (
            gw.stream_url(&String::from_utf8(tampered).unwrap()),
            403,
            "token_denied",
        ),
        (gw.stream_url(&expired), 410, "token_denied"),
        (
            gw.stream_url(&gw.mint("file:///etc/passwd", "b")),
            400,
            "bad_url",
        ),
        (
            gw.stream_url(&gw.mint(&server().url("nope.mp4"), "b")),
            404,
            "not_found",
        ),
        (
            gw.stream_url(&gw.mint(&server().url("page.html"), "b")),
            422,
            "unsupported_url",
        ),
        (
            gw.stream_url(&gw.mint(&server().url("progressive.mp4"), "999")),
            422,
            "format_unavailable",
        ),
        (
            gw.stream_url(&gw.mint("http://127.0.0.1:1/x.mp4", "b")),
            502,
            "upstream_failed",
        ),
        (gw.stream_url(&gw.mint(&silent_url, "b")), 504, "timeout"),
        (gw.url("/nowhere"), 404, "route_not_found"),
    ];
    let runs = cases.iter().map(|(url, _, _)| {
        let url = url.clone();
        blocking(move || curl(&[], &url))
    });
    for ((url, status, code), r) in cases.iter().zip(join_all(runs).await) {
        assert_problem(&r, *status, code, url);
        eprintln!("{status} {code}: {}", String::from_utf8_lossy(&r.body));
    }
    let post = blocking({
        let url = gw.stream_url(&good);
        move || curl(&["-X", "POST"], &url)
    });
    assert_problem(&post.await, 405, "method_not_allowed", "POST");
}

/// `POST /v1/resolve` with a JSON body, from 127.0.0.1.
async fn post_resolve(gw: &Gateway, body: String) -> CurlResult {
    let url = gw.url("/v1/resolve");
    let json = "content-type: application/json";
    blocking(move || curl(&["-X", "POST", "-H", json, "--data-binary", &body], &url)).await
}

/// Samples of `name` in `/metrics`, e.g. the calls of one plugin.
async fn metric_lines(gw: &Gateway, prefix: &str) -> Vec<String> {
    let text = gw.metrics_text().await;
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_urls_and_formats_are_refused_before_the_policy_and_any_fetch() {
    let gw = Gateway::start(GatewayOptions::default()).await;
    // An origin of its own: any request it sees is a fetch of a URL that was refused.
    let origin = FixtureServer::start(fixtures());
    let (addr, file) = (origin.addr(), "/audio-only.m4a");
    let good = origin.url(file);
    let mut cases: Vec<(String, &str, &str)> = [
        format!("http://a.example\\@{addr}{file}"),
        format!("http://u:p@{addr}{file}"),
        format!("http://a.example@{addr}{file}"),
        format!("http://{addr}{file}?x= 1"),
        format!("http://{addr}{file}\n"),
        format!("http://{addr}{file}\r\nX-Injected: 1"),
        "file:///etc/passwd".to_owned(),
    ]
    .into_iter()
    .map(|url| (url, "b", "bad_url"))
    .collect();
    for format in ["18,22", "all", "bv+mergeall"] {
        cases.push((good.clone(), format, "bad_format"));
    }
    for (url, format, code) in &cases {
        let what = format!("{url:?} -f {format}");
        let link = gw.stream_url(&gw.mint(url, format));
        let r = blocking(move || curl(&[], &link)).await;
        assert_problem(&r, 400, code, &format!("stream {what}"));
        let body = serde_json::json!({ "url": url, "format": format }).to_string();
        let r = post_resolve(&gw, body).await;
        assert_problem(&r, 400, code, &format!("resolve {what}"));
        let p: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        eprintln!("{what} → 400 {code}: {}", p["detail"]);
    }
    assert_eq!(origin.hits(file), 0, "a refused URL was fetched");
    let policy = "streamgate_plugin_calls_total{plugin=\"policy-allowlist\"}";
    assert_eq!(
        metric_lines(&gw, policy).await,
        Vec::<String>::new(),
        "the policy saw none of them"
    );

    // The embedded default lets loopback clients resolve without an API key.
    let r = post_resolve(&gw, serde_json::json!({ "url": good }).to_string()).await;
    assert_eq!(r.status, 200, "{r:?}\n{}", gw.logs());
    assert!(origin.hits(file) > 0);
    assert_eq!(metric_lines(&gw, policy).await, [format!("{policy} 1")]);
    let ready = gw.readiness().await;
    let egress = ready["egress"].as_str().unwrap_or_default();
    assert!(["netns", "proxy"].contains(&egress), "{ready}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_sidecar_answers_busy_with_retry_after() {
    let opts = GatewayOptions {
        sidecar_args: vec!["--max-streams=1".into(), "--queue=0".into()],
        ..GatewayOptions::default()
    };
    let gw = Gateway::start(opts).await;
    // A holds the only stream slot: it reads one chunk and stops, so backpressure keeps it open.
    let link = gw.stream_url(&gw.mint(&large_url(), "b"));
    let holder = reqwest::get(&link).await.unwrap();
    assert_eq!(holder.status(), 200);
    let mut holder = holder.bytes_stream();
    holder.next().await.unwrap().unwrap();
    let refused = blocking(move || curl(&[], &link)).await;
    assert_problem(&refused, 503, "busy", "second job");
    assert_eq!(refused.header("retry-after"), Some("2"));
}

/// Normal events are not warnings: `/readyz` polls before the sidecar first answered (the
/// harness makes them while it starts) are one INFO line at most, and a client of the
/// sidecar that hangs up (here with the welcome unread, so its close resets the connection)
/// is no protocol error. A real protocol error and an outage after start still WARN.
#[tokio::test(flavor = "multi_thread")]
async fn start_up_polls_and_clients_hanging_up_are_not_warnings() {
    use futures::SinkExt;
    use nix::sys::signal::{Signal, kill};
    use streamgate_protocol::{Frame, Hello, PROTOCOL_VERSION, client_handshake, connection};

    let gw = Gateway::start(GatewayOptions::default()).await;
    let warned = |what: &str| {
        let logs = gw.logs();
        let lines = logs
            .lines()
            .filter(|l| l.contains(" WARN ") && l.contains(what));
        lines.map(str::to_owned).collect::<Vec<_>>()
    };
    assert_eq!(warned("sidecar is"), Vec::<String>::new(), "{}", gw.logs());
    let waiting = gw.logs().matches("waiting for the sidecar").count();
    assert!(waiting <= 1, "{}", gw.logs());

    let socket = gw.state_dir().join("sidecar.sock");
    let mut leaving = connection(tokio::net::UnixStream::connect(&socket).await.unwrap());
    let hello = Hello {
        version: PROTOCOL_VERSION,
        client: "leaving".into(),
    };
    leaving.send(Frame::Hello(hello)).await.unwrap();
    leaving.get_ref().readable().await.unwrap();
    drop(leaving);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut broken = connection(tokio::net::UnixStream::connect(&socket).await.unwrap());
    client_handshake(&mut broken, "broken").await.unwrap();
    broken.send(Frame::End { total_bytes: 0 }).await.unwrap();
    let logged = wait_until(Duration::from_secs(10), || {
        !warned("protocol error: unexpected frame").is_empty()
    });
    assert!(
        logged.await,
        "a real protocol error is a warning:\n{}",
        gw.logs()
    );
    assert_eq!(
        warned("i/o"),
        Vec::<String>::new(),
        "hanging up is no error"
    );

    // After the sidecar was up, not reaching it is an outage: the socket file gone while
    // the sidecar is stopped (it would bind it again at once).
    let sidecar = nix::unistd::Pid::from_raw(gw.sidecar_pid().expect("a sidecar") as i32);
    kill(sidecar, Signal::SIGSTOP).unwrap();
    std::fs::remove_file(&socket).unwrap();
    let readyz = reqwest::get(gw.url("/readyz")).await.unwrap().status();
    kill(sidecar, Signal::SIGCONT).unwrap();
    assert_eq!(readyz, 503);
    assert_eq!(
        warned("the sidecar is unavailable").len(),
        1,
        "{}",
        gw.logs()
    );
    assert!(
        gw.wait_ready(Duration::from_secs(30)).await,
        "{}",
        gw.logs()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tenants_by_host_and_plugin_failures_are_5xx_problems() {
    let dir = tempfile::tempdir().unwrap();
    let config = three_tenants(dir.path());
    let opts = GatewayOptions {
        config: Some(config.clone()),
        allow_private_urls: false,
        ..GatewayOptions::default()
    };
    let gw = Gateway::start(opts).await;
    let url = server().url("audio-only.m4a");
    let cfg = config.display().to_string();
    let token = mint(&["--config", &cfg, "--tenant", "main", "--url", &url]);
    let cases = [
        ("127.0.0.1", token.as_str(), 200, ""),
        ("other.test:80", token.as_str(), 403, "token_denied"),
        ("broken.test", "trap", 500, "plugin_failed"),
        ("broken.test", "alloc", 500, "plugin_failed"),
        ("broken.test", "loop", 503, "plugin_failed"),
    ];
    for (host, data, status, code) in cases {
        let (link, host) = (gw.stream_url(data), format!("Host: {host}"));
        let started = Instant::now();
        let r = blocking(move || curl(&["-H", &host], &link)).await;
        if status == 200 {
            assert_eq!(r.status, 200, "{r:?}\n{}", gw.logs());
        } else {
            assert_problem(&r, status, code, data);
        }
        eprintln!("{data:.12} → {status} in {:?}", started.elapsed());
    }
    // The plugin failed closed for those calls only: the next request is served.
    let link = gw.stream_url(&token);
    assert_eq!(blocking(move || curl(&["-I"], &link)).await.status, 200);
}

/// Polls until `path` holds at least `bytes` bytes.
async fn wait_for_size(path: &std::path::Path, bytes: u64) -> bool {
    wait_until(SLOW, || {
        std::fs::metadata(path).is_ok_and(|m| m.len() >= bytes)
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_sidecar_fails_the_transfer_and_is_restarted() {
    let mut gw = Gateway::start(GatewayOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("partial.mp4");
    let mut cmd = std::process::Command::new("curl");
    cmd.args(["-sS", "--limit-rate", "2M", "-o"]).arg(&out);
    cmd.arg(gw.stream_url(&gw.mint(&large_url(), "b")));
    let mut transfer = ChildGuard::spawn(cmd, "curl").unwrap();
    assert!(wait_for_size(&out, 1 << 20).await, "{}", gw.logs());
    let first = gw.sidecar_pid().expect("a sidecar");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first as i32),
        nix::sys::signal::SIGKILL,
    )
    .unwrap();
    let status = transfer.wait_timeout(SLOW).await.expect("curl ends");
    let got = std::fs::metadata(&out).unwrap().len();
    assert!(
        !status.success(),
        "curl must see a cut transfer ({got} bytes)"
    );
    eprintln!("killed sidecar {first}: curl {status} after {got} bytes");

    let started = Instant::now();
    assert!(gw.wait_ready(SLOW).await, "{}", gw.logs());
    let second = gw.sidecar_pid().expect("a restarted sidecar");
    assert_ne!(first, second);
    let link = gw.stream_url(&gw.mint(&server().url("progressive.mp4"), "b"));
    let after = blocking(move || curl(&[], &link)).await;
    assert_eq!((after.exit, after.status), (0, 200), "{after:?}");
    let file = sha256_file(&fixtures().join("progressive.mp4")).unwrap();
    assert_eq!(sha256_hex(&after.body), file);
    eprintln!(
        "restarted as {second}, serving again after {:?}",
        started.elapsed()
    );
    assert!(gw.child().is_running());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_client_keeps_gateway_memory_flat() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const RATE: f64 = 200_000.0; // bytes per second
    const READ_FOR: Duration = Duration::from_secs(20);
    let gw = Gateway::start(GatewayOptions::default()).await;
    let link = gw.stream_url(&gw.mint(&large_url(), "b"));
    // Warm-up: one whole request, so plugin instances and buffers exist before the baseline.
    let warm = gw.stream_url(&gw.mint(&server().url("progressive.mp4"), "b"));
    assert_eq!(blocking(move || curl(&[], &warm)).await.status, 200);
    let baseline = gw.rss_kib();

    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(64 * 1024).unwrap();
    let addr = link
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let mut conn = socket.connect(addr).await.unwrap();
    let path = &link[link.find("/stream").unwrap()..];
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    conn.write_all(request.as_bytes()).await.unwrap();
    let (mut received, mut peak) = (0u64, baseline);
    let mut buf = vec![0u8; 16 * 1024];
    let started = Instant::now();
    while started.elapsed() < READ_FOR {
        let n = conn.read(&mut buf).await.unwrap();
        assert!(
            n > 0,
            "the stream ended early after {received} bytes\n{}",
            gw.logs()
        );
        received += n as u64;
        peak = peak.max(gw.rss_kib());
        // Pace: never ahead of RATE.
        let due = Duration::from_secs_f64(received as f64 / RATE);
        tokio::time::sleep(due.saturating_sub(started.elapsed())).await;
    }
    let rate = received as f64 / started.elapsed().as_secs_f64() / 1000.0;
    let growth = peak.saturating_sub(baseline);
    eprintln!(
        "slow client: {received} bytes at {rate:.0} kB/s; gateway RSS {baseline} KiB → peak {peak} KiB (+{growth} KiB)"
    );
    assert!(rate <= 210.0, "the client was not slow: {rate} kB/s");
    assert!(growth < 16 * 1024, "gateway RSS grew {growth} KiB");
    drop(conn);
    assert!(wait_until(Duration::from_secs(5), || gw.ytdlp_processes().is_empty()).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_clients_leaving_after_a_mebibyte_leave_no_ytdlp() {
    let opts = GatewayOptions {
        sidecar_args: vec![
            // 8 extract at once, 12 wait: every one of the 20 is served.
            "--max-extractions=8".into(),
            "--queue=12".into(),
            "--queue-timeout=120".into(),
        ],
        ..GatewayOptions::default()
    };
    let gw = Gateway::start(opts).await;
    let link = gw.stream_url(&gw.mint(&large_url(), "b"));
    let started = Instant::now();
    let clients = (0..20).map(|_| {
        let link = link.clone();
        async move {
            let resp = reqwest::get(&link).await.unwrap();
            assert_eq!(resp.status(), 200);
            let mut body = resp.bytes_stream();
            let mut got = 0;
            while got < 1 << 20 {
                got += body.next().await.expect("more data").unwrap().len();
            }
            // Dropping the body closes the connection mid-stream.
        }
    });
    join_all(clients).await;
    let all_left = started.elapsed();
    let gone = Instant::now();
    let clean = wait_until(Duration::from_secs(2), || gw.ytdlp_processes().is_empty()).await;
    assert!(
        clean,
        "left behind: {:?}\n{}",
        gw.ytdlp_processes(),
        gw.logs()
    );
    eprintln!(
        "20 clients served 1 MiB each in {all_left:?}; no yt-dlp {:?} later",
        gone.elapsed()
    );
}

/// The README's quick start, run as written: `scripts/run` (plus flags for a free port, a
/// temp state dir and loopback fixtures), then its `mint` and `curl` lines.
#[tokio::test(flavor = "multi_thread")]
async fn the_readme_quick_start_works() {
    let root = repo_root();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let section = readme
        .split("<!-- quick-start")
        .nth(1)
        .expect("quick-start marker");
    let blocks: Vec<&str> = section
        .split("```sh\n")
        .skip(1)
        .map(|b| b.split("```").next().unwrap())
        .collect();
    assert_eq!(
        blocks[0].lines().collect::<Vec<_>>(),
        ["scripts/run", "scripts/test"]
    );
    let (mint_line, curl_line) = (
        blocks[1].lines().next().unwrap(),
        blocks[1].lines().nth(1).unwrap(),
    );
    assert!(
        mint_line.starts_with("TOKEN=$(target/release/streamgate mint --url "),
        "{mint_line}"
    );
    assert!(curl_line.starts_with("curl "), "{curl_line}");

    let gw = Gateway::start_script(&root.join("scripts/run"), &[]).await;
    let fixture = server().url("progressive.mp4");
    let state = gw.state_dir().display().to_string();
    let mint_line = mint_line
        .replace("'https://example.com/clip.mp4'", &format!("'{fixture}'"))
        .replace(" mint ", &format!(" mint --state-dir '{state}' "));
    let curl_line = curl_line.replace("http://127.0.0.1:8080", &gw.url(""));
    let out = tempfile::tempdir().unwrap();
    let script = format!("set -e\n{mint_line}\n{curl_line}\n");
    let (cwd, root2) = (out.path().to_owned(), root.clone());
    let status = blocking(move || {
        let bin = root2.join("target/release");
        std::process::Command::new("bash")
            .args([
                "-c",
                &script.replace("target/release", &bin.display().to_string()),
            ])
            .current_dir(cwd)
            .status()
            .unwrap()
    })
    .await;
    assert!(status.success(), "{}", gw.logs());
    let got = out.path().join("progressive.mp4");
    let want = sha256_file(&fixtures().join("progressive.mp4")).unwrap();
    assert_eq!(
        sha256_file(&got).unwrap(),
        want,
        "curl -OJ saved the file under its name"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_until_the_deadline_then_stops_everything() {
    let opts = GatewayOptions {
        drain_secs: Some(2),
        ..GatewayOptions::default()
    };
    let mut gw = Gateway::start(opts).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("partial.mp4");
    let mut cmd = std::process::Command::new("curl");
    cmd.args(["-sS", "--limit-rate", "1M", "-o"]).arg(&out);
    cmd.arg(gw.stream_url(&gw.mint(&large_url(), "b")));
    let mut transfer = ChildGuard::spawn(cmd, "curl").unwrap();
    assert!(wait_for_size(&out, 1 << 20).await, "{}", gw.logs());
    let sidecar = gw.sidecar_pid().expect("a sidecar");
    // A single file streams natively: its extraction's yt-dlp is gone by the first byte.
    let jobs = gw.ytdlp_processes();
    assert!(
        jobs.is_empty(),
        "no yt-dlp while the file streams: {jobs:?}"
    );

    let started = Instant::now();
    gw.child().signal(nix::sys::signal::SIGTERM);
    let status = gw
        .child()
        .wait_timeout(SLOW)
        .await
        .expect("the gateway exits");
    let took = started.elapsed();
    assert!(status.success(), "{status}\n{}", gw.logs());
    assert!(
        took >= Duration::from_secs(2),
        "streams get the drain deadline: {took:?}"
    );
    let curl_status = transfer.wait_timeout(SLOW).await.expect("curl ends");
    assert!(
        !curl_status.success(),
        "a stream cut at the deadline is incomplete"
    );
    let alive = |pid: i32| std::path::Path::new(&format!("/proc/{pid}")).exists();
    let mut pids: Vec<i32> = jobs.iter().map(|p| p.pid).collect();
    pids.push(sidecar as i32);
    assert!(wait_until(Duration::from_secs(2), || !pids.iter().any(|p| alive(*p))).await);
    eprintln!("SIGTERM → exit in {took:?}; curl {curl_status}; sidecar and jobs gone");
}

// ---- Range and HEAD (issue 10): single files are cut exactly, everything else comes whole ----

/// The fixture's bytes, to compare a range with its slice.
fn fixture_bytes(name: &str) -> Vec<u8> {
    std::fs::read(fixtures().join(name)).unwrap()
}

/// `sha256` of `file[start..=end]`: a body must be exactly that slice.
fn slice_sha(file: &[u8], start: u64, end: u64) -> String {
    sha256_hex(&file[start as usize..=end as usize])
}

/// A 206 of exactly `start..=end` of `file`: status, `Content-Range`, `Content-Length`, bytes.
fn assert_partial(r: &CurlResult, file: &[u8], start: u64, end: u64, what: &str) {
    let size = file.len();
    assert_eq!((r.exit, r.status), (0, 206), "{what}: {r:?}");
    let range = format!("bytes {start}-{end}/{size}");
    assert_eq!(r.header("content-range"), Some(range.as_str()), "{what}");
    let len = (end - start + 1).to_string();
    assert_eq!(r.header("content-length"), Some(len.as_str()), "{what}");
    assert_eq!(r.header("accept-ranges"), Some("bytes"), "{what}");
    assert_eq!(sha256_hex(&r.body), slice_sha(file, start, end), "{what}");
}

/// The whole file with 200 and its exact length, whatever range was asked.
fn assert_whole(r: &CurlResult, file: &[u8], what: &str) {
    assert_eq!((r.exit, r.status), (0, 200), "{what}: {r:?}");
    assert_eq!(r.header("content-range"), None, "{what}");
    let len = file.len().to_string();
    assert_eq!(r.header("content-length"), Some(len.as_str()), "{what}");
    assert_eq!(sha256_hex(&r.body), sha256_hex(file), "{what}");
}

#[tokio::test(flavor = "multi_thread")]
async fn ranges_of_a_single_file_are_cut_exactly() {
    let gw = Gateway::start(GatewayOptions::default()).await;
    let file = fixture_bytes("progressive.mp4");
    let size = file.len() as u64;
    let link = gw.stream_url(&gw.mint(&server().url("progressive.mp4"), "b"));
    let run = |args: Vec<String>| {
        let link = link.clone();
        blocking(move || curl(&args.iter().map(String::as_str).collect::<Vec<_>>(), &link))
    };
    let whole = run(vec![]).await;
    assert_whole(&whole, &file, "no Range");
    assert_eq!(whole.header("accept-ranges"), Some("bytes"), "{whole:?}");
    assert_media_headers(&whole, "video/mp4", "mp4");

    // (curl -r, the span it must get)
    let cut = [
        ("1000-1999".to_owned(), 1000, 1999),
        ("0-0".to_owned(), 0, 0),
        (format!("{}-", size - 12_345), size - 12_345, size - 1),
        ("-500".to_owned(), size - 500, size - 1),
        (
            format!("{}-{}", size - 10, size + 1_000_000),
            size - 10,
            size - 1,
        ),
        // Ranges that cover the whole file are still a 206 (players ask `bytes=0-` first
        // and seek only if that is one), even from an origin that answers them with 200.
        ("0-".to_owned(), 0, size - 1),
        (format!("-{}", size * 2), 0, size - 1),
    ];
    let runs = cut.iter().map(|(r, ..)| run(vec!["-r".into(), r.clone()]));
    for ((range, start, end), r) in cut.iter().zip(join_all(runs).await) {
        assert_partial(&r, &file, *start, *end, &format!("-r {range}"));
        assert_media_headers(&r, "video/mp4", "mp4");
    }

    // Ignored: the whole file with 200 (RFC 9110 allows it for all of these).
    let ignored = [
        vec!["-r".to_owned(), "0-1,5-9".into()],
        vec![
            "-H".into(),
            "Range: bytes=0-99".into(),
            "-H".into(),
            "If-Range: \"x\"".into(),
        ],
        vec!["-H".into(), "Range: items=0-99".into()],
        vec!["-H".into(), "Range: bytes=99-0".into()],
    ];
    let runs = ignored.iter().map(|args| run(args.clone()));
    for (args, r) in ignored.iter().zip(join_all(runs).await) {
        assert_whole(&r, &file, &format!("{args:?}"));
    }

    // Unsatisfiable: 416 with the size, and no media.
    for range in [format!("bytes={size}-"), "bytes=-0".to_owned()] {
        let r = run(vec!["-H".into(), format!("Range: {range}")]).await;
        assert_problem(&r, 416, "range_not_satisfiable", &range);
        let star = format!("bytes */{size}");
        assert_eq!(r.header("content-range"), Some(star.as_str()), "{range}");
    }

    let partial = "streamgate_media_responses_total{served_by=\"native\",response=\"partial\"}";
    let served = metric_lines(&gw, partial).await;
    let count = served
        .first()
        .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok());
    assert!(count >= Some(cut.len() as u64), "{served:?}");
}

/// `bytes=RANGE` through reqwest: a 206 whose bytes are `file[start..=end]`, read whole.
async fn player_range(http: &reqwest::Client, link: &str, file: &[u8], start: u64, end: u64) {
    let range = format!("bytes={start}-{end}");
    let resp = http.get(link).header("range", &range).send().await.unwrap();
    assert_eq!(resp.status(), 206, "{range}");
    let want = format!("bytes {start}-{end}/{}", file.len());
    assert_eq!(resp.headers()["content-range"], want.as_str());
    let body = resp.bytes().await.unwrap();
    assert_eq!(sha256_hex(&body), slice_sha(file, start, end), "{range}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_seeking_player_and_a_resumed_download_get_the_right_bytes() {
    let gw = Gateway::start(GatewayOptions::default()).await;
    let file = fixture_bytes("progressive.mp4");
    let size = file.len() as u64;
    let link = gw.stream_url(&gw.mint(&server().url("progressive.mp4"), "b"));

    // A player: `bytes=0-`, dropped after a little (it seeks), the index at the end, then
    // two windows fetched at once.
    let http = reqwest::Client::new();
    let first = http.get(&link).header("range", "bytes=0-").send().await;
    let first = first.unwrap();
    assert_eq!(first.status(), 206);
    let whole = format!("bytes 0-{}/{size}", size - 1);
    assert_eq!(first.headers()["content-range"], whole.as_str());
    let mut body = first.bytes_stream();
    let mut head = Vec::new();
    while head.len() < 256 * 1024 {
        head.extend_from_slice(&body.next().await.expect("more data").unwrap());
    }
    let read = head.len() as u64;
    assert_eq!(
        sha256_hex(&head),
        slice_sha(&file, 0, read - 1),
        "the first {read} bytes"
    );
    drop(body);
    player_range(&http, &link, &file, size - 65_536, size - 1).await;
    let (mid, late) = (size / 2, size * 3 / 4);
    join_all([
        player_range(&http, &link, &file, mid, mid + 1_048_575),
        player_range(&http, &link, &file, late, late + 300_000),
    ])
    .await;

    // A download cut midway (the client leaves after a mebibyte), then `curl -C -` on the
    // partial file: a 206 from where the file ends, appended.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("resumed.mp4");
    let mut partial_body = Vec::new();
    let mut body = http.get(&link).send().await.unwrap().bytes_stream();
    while partial_body.len() < 1 << 20 {
        partial_body.extend_from_slice(&body.next().await.expect("more data").unwrap());
    }
    drop(body);
    std::fs::write(&out, &partial_body).unwrap();
    let partial = std::fs::metadata(&out).unwrap().len();
    assert!(partial < size, "cut before the end: {partial} of {size}");
    let (o, l) = (out.clone(), link.clone());
    let head_file = dir.path().join("head");
    let h = head_file.clone();
    let resumed = blocking(move || {
        std::process::Command::new("curl")
            .args(["-sS", "-f", "-C", "-", "-D"])
            .arg(&h)
            .arg("-o")
            .arg(&o)
            .arg(&l)
            .output()
            .unwrap()
    })
    .await;
    assert!(resumed.status.success(), "{resumed:?}\n{}", gw.logs());
    let head = std::fs::read_to_string(&head_file)
        .unwrap()
        .to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 206"), "{head}");
    let range = format!("content-range: bytes {partial}-{}/{size}", size - 1);
    assert!(head.contains(&range), "{head}");
    assert_eq!(
        sha256_file(&out).unwrap(),
        sha256_hex(&file),
        "resumed after {partial} bytes"
    );
    eprintln!("resumed after {partial} of {size} bytes");
}

#[tokio::test(flavor = "multi_thread")]
async fn head_answers_the_exact_length_without_fetching_media() {
    let gw = Gateway::start(GatewayOptions::default()).await;
    let size = fixture_bytes("progressive.mp4").len().to_string();
    // The media behind a page: the extraction reads the page, never the file.
    let page = Page::new(
        "/watch.html",
        "text/html",
        "<!doctype html><title>clip</title><video src=\"/progressive.mp4\"></video>\n",
    );
    let origin = FixtureServer::start_on(fixtures(), ([127, 0, 0, 1], 0).into(), vec![page]);
    let link = gw.stream_url(&gw.mint(&origin.url("watch.html"), "b"));
    let l = link.clone();
    let head = blocking(move || curl(&["-I"], &l)).await;
    assert_eq!(
        (head.exit, head.status),
        (0, 200),
        "{head:?}\n{}",
        gw.logs()
    );
    assert_eq!(
        head.header("content-length"),
        Some(size.as_str()),
        "{head:?}"
    );
    assert_eq!(head.header("accept-ranges"), Some("bytes"));
    assert_eq!(origin.hits("/watch.html"), 1, "{:?}", origin.all_hits());
    assert_eq!(
        origin.method_hits("GET", "/progressive.mp4"),
        0,
        "HEAD fetched media: {:?}",
        origin.all_hits()
    );
    // HEAD says what GET then sends.
    let get = blocking(move || curl(&[], &link)).await;
    assert_eq!((get.exit, get.status), (0, 200), "{get:?}");
    assert_eq!(
        stable_headers(&head),
        stable_headers(&get),
        "HEAD = GET headers"
    );
    assert_eq!(get.body.len().to_string(), size);

    // A direct link whose extraction is cached by a stream: HEAD asks the origin nothing more.
    let direct = gw.stream_url(&gw.mint(&origin.url("audio-only.m4a"), "b"));
    let d = direct.clone();
    assert_eq!(blocking(move || curl(&[], &d)).await.status, 200);
    let gets = origin.method_hits("GET", "/audio-only.m4a");
    let head = blocking(move || curl(&["-I"], &direct)).await;
    assert_eq!((head.exit, head.status), (0, 200), "{head:?}");
    let size = fixture_bytes("audio-only.m4a").len().to_string();
    assert_eq!(head.header("content-length"), Some(size.as_str()));
    assert_eq!(
        origin.method_hits("GET", "/audio-only.m4a"),
        gets,
        "no media GET"
    );
    let heads = metric_lines(&gw, "streamgate_media_responses_total").await;
    assert!(
        heads.iter().any(|l| l.contains("response=\"head\"")),
        "{heads:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn merged_and_segmented_formats_answer_without_ranges() {
    let gw = Gateway::start(GatewayOptions::default()).await;
    for (path, format) in [("dash/manifest.mpd", "bv+ba"), ("hls/index.m3u8", "b")] {
        let what = format!("{path} -f {format}");
        let link = gw.stream_url(&gw.mint(&server().url(path), format));
        let l = link.clone();
        let whole = blocking(move || curl(&[], &l)).await;
        assert_eq!((whole.exit, whole.status), (0, 200), "{what}: {whole:?}");
        assert_eq!(whole.header("accept-ranges"), Some("none"), "{what}");
        let ranged = blocking(move || curl(&["-r", "1000-1999"], &link)).await;
        assert_eq!((ranged.exit, ranged.status), (0, 200), "{what}: {ranged:?}");
        assert_eq!(ranged.header("content-range"), None, "{what}");
        assert_eq!(ranged.header("accept-ranges"), Some("none"), "{what}");
        assert!(ranged.body.len() > 1_000_000, "{what}: the whole stream");
        if format == "b" {
            // HLS is byte-stable: the same whole stream with or without a Range.
            assert_eq!(sha256_hex(&ranged.body), sha256_hex(&whole.body), "{what}");
        } else {
            let f = tempfile::NamedTempFile::new().unwrap();
            std::fs::write(f.path(), &ranged.body).unwrap();
            let mut streams = ffprobe_streams(f.path());
            streams.sort();
            assert_eq!(streams, ["audio", "video"], "{what}");
        }
    }
}
