//! Media-aware policy (issue 12, WIT `streamgate:plugin@0.2.0`): a tenant's policy reviews
//! what the extraction found before any media byte moves. Real gateway + sidecar + yt-dlp,
//! fixtures on 127.0.0.1; the fixture server's log shows what the sidecar fetched.
//!
//! Tenants, one gateway: `legacy` (policy-allowlist, a 0.1.0 component), `strict`
//! (policy-media: live streams and more than 5 s refused), `roomy` (policy-media: up to 4 h
//! and 2 GB, anyone may resolve), `misbehave` (test-misbehave-media, whose review traps or loops on cue).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use streamgate_tests::config::{self, mint_for, new_key, open_policy, xchacha};
use streamgate_tests::gateway::*;
use streamgate_tests::*;

/// The config file of the four tenants, one key ring (tokens are bound to their tenant).
fn write_config(dir: &Path) -> PathBuf {
    let token = xchacha(&new_key());
    let misbehave = streamgate::plugin::builtin::test_misbehave_media_path();
    let tenant =
        |id: &str, policy: &str| config::tenant(id, &[&format!("{id}.test")], &token, policy, "");
    let text = [
        "[sidecar]\nmax_jobs = 8\n".to_owned(),
        tenant("legacy", &open_policy("")),
        tenant(
            "strict",
            r#"{ builtin = "policy-media", config = { deny_live = "true", max_duration_secs = "5" } }"#,
        ),
        tenant(
            "roomy",
            r#"{ builtin = "policy-media", config = { max_duration_secs = "14400", max_size_bytes = "2000000000", public_resolve = "true" } }"#,
        ),
        tenant(
            "misbehave",
            &format!(r#"{{ wasm = "{}" }}"#, misbehave.display()),
        ),
    ]
    .concat();
    config::write(dir, &text)
}

/// A gateway on the four tenants' config, and the config (for `mint`).
async fn start() -> (Gateway, PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let gw = Gateway::with_config(&config).await;
    (gw, config, dir)
}

/// `GET` (or with `-I`, `HEAD`) of `url` as `tenant`, through a token minted for it.
async fn fetch(gw: &Gateway, config: &Path, tenant: &str, url: &str, extra: &[&str]) -> CurlResult {
    let link = gw.stream_url(&mint_for(config, tenant, url, "b"));
    let mut args = vec!["-H".to_owned(), format!("Host: {tenant}.test")];
    args.extend(extra.iter().map(|s| s.to_string()));
    blocking(move || curl(&args.iter().map(String::as_str).collect::<Vec<_>>(), &link)).await
}

/// A fixture server of its own (so its log is this test's alone) on a port known before
/// it starts, serving generated `pages` (which may name their own URLs) before the fixtures.
fn own_server(pages: impl FnOnce(&str) -> Vec<Page>) -> FixtureServer {
    let port = streamgate_testkit::net::free_port().unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    FixtureServer::start_on(fixtures(), addr, pages(&base))
}

/// `hls/index.m3u8` as a live playlist (no end, no VOD type): yt-dlp says `is_live`.
fn live_playlist() -> Page {
    let vod = std::fs::read_to_string(fixtures().join("hls/index.m3u8")).unwrap();
    let live: String = vod
        .lines()
        .filter(|l| !l.contains("ENDLIST") && !l.contains("PLAYLIST-TYPE"))
        .map(|l| match l.starts_with("seg") {
            true => format!("../hls/{l}\n"),
            false => format!("{l}\n"),
        })
        .collect();
    Page::new("/live/index.m3u8", "application/vnd.apple.mpegurl", live)
}

/// An HTML page whose JSON-LD `VideoObject` claims `duration` and `size` for the fixture
/// `progressive.mp4` (yt-dlp's generic extractor reads both).
fn film_page(base: &str, path: &str, duration: &str, size: u64) -> Page {
    let html = format!(
        r#"<html><head><title>film</title><script type="application/ld+json">
{{"@context":"https://schema.org","@type":"VideoObject","name":"A film","uploadDate":"2020-01-01",
"contentUrl":"{base}/progressive.mp4","duration":"{duration}","contentSize":"{size}"}}
</script></head><body>film</body></html>"#
    );
    Page::new(path, "text/html", html)
}

/// GETs of HLS segments the server answered: media, not the playlist.
fn segment_gets(server: &FixtureServer) -> usize {
    let requests = server.requests();
    let segments = requests
        .iter()
        .filter(|s| s.method == "GET" && s.path.starts_with("/hls/seg"));
    segments.count()
}

fn problem_detail(r: &CurlResult) -> String {
    let p: serde_json::Value = serde_json::from_slice(&r.body).expect("problem JSON");
    p["detail"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_0_1_0_policy_and_a_media_policy_side_by_side() {
    let (gw, config, _dir) = start().await;
    let server = own_server(|_| Vec::new());
    let url = server.url("hls/index.m3u8");

    // strict: 10 s of media, 5 s allowed. Extracted (the playlist read), nothing fetched.
    let denied = fetch(&gw, &config, "strict", &url, &[]).await;
    assert_problem(&denied, 403, "media_denied", "strict GET");
    assert!(
        problem_detail(&denied).contains("10 s, more than 5 s"),
        "{denied:?}"
    );
    let head = fetch(&gw, &config, "strict", &url, &["-I"]).await;
    assert_eq!(head.status, 403, "HEAD is reviewed too: {head:?}");
    // The HEAD reused the cached extraction, whose facts were reviewed all the same.
    assert!(
        server.method_hits("GET", "/hls/index.m3u8") >= 1,
        "extracted"
    );
    assert_eq!(
        segment_gets(&server),
        0,
        "no media GET: {:?}",
        server.all_hits()
    );

    // The same media under a 0.1.0 policy and under a roomier media policy: served whole.
    let u = url.clone();
    let direct = sha256_hex(&blocking(move || direct_ytdlp(&u, "b", &[])).await);
    for tenant in ["legacy", "roomy"] {
        let got = fetch(&gw, &config, tenant, &url, &[]).await;
        assert_eq!(
            (got.exit, got.status),
            (0, 200),
            "{tenant}: {got:?}\n{}",
            gw.logs()
        );
        assert_media_headers(&got, "video/mp2t", "ts");
        assert_eq!(sha256_hex(&got.body), direct, "{tenant}: bytes as yt-dlp's");
    }
    assert!(
        segment_gets(&server) > 0,
        "the count sees segments when they are fetched"
    );
    let logs = gw.logs();
    assert_eq!(
        logs.matches("media review").count(),
        3,
        "strict GET + HEAD and roomy reviewed, legacy not:\n{logs}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn live_streams_are_refused_and_unknown_durations_pass() {
    let (gw, config, _dir) = start().await;
    let server = own_server(|_| vec![live_playlist()]);

    let live = fetch(&gw, &config, "strict", &server.url("live/index.m3u8"), &[]).await;
    assert_problem(&live, 403, "media_denied", "live");
    assert!(problem_detail(&live).contains("live"), "{live:?}");
    assert_eq!(
        segment_gets(&server),
        0,
        "no media GET: {:?}",
        server.all_hits()
    );

    // A direct file link has no duration: nothing to refuse; the bytes are the file's.
    let file = fetch(&gw, &config, "strict", &server.url("progressive.mp4"), &[]).await;
    assert_eq!(
        (file.exit, file.status),
        (0, 200),
        "{file:?}\n{}",
        gw.logs()
    );
    let want = sha256_file(&fixtures().join("progressive.mp4")).unwrap();
    assert_eq!(sha256_hex(&file.body), want);
}

#[tokio::test(flavor = "multi_thread")]
async fn media_longer_or_larger_than_the_limits_is_refused() {
    let (gw, config, _dir) = start().await;
    let server = own_server(|base| {
        vec![
            film_page(base, "/big.html", "PT3H", 3_000_000_000),
            film_page(base, "/short.html", "PT10M", 6_000_000),
        ]
    });
    let ranged = |server: &FixtureServer| {
        let gets = server.gets("/progressive.mp4");
        gets.iter().filter(|s| s.range.is_some()).count()
    };

    // 3 h and 3 GB: roomy allows the duration, not the size; strict refuses the duration.
    let big = server.url("big.html");
    let roomy = fetch(&gw, &config, "roomy", &big, &[]).await;
    assert_problem(&roomy, 403, "media_denied", "roomy, 3 GB");
    assert!(
        problem_detail(&roomy).contains("3000000000 bytes, more than 2000000000"),
        "{roomy:?}"
    );
    let strict = fetch(&gw, &config, "strict", &big, &[]).await;
    assert_problem(&strict, 403, "media_denied", "strict, 3 h");
    assert!(problem_detail(&strict).contains("10800 s"), "{strict:?}");
    // yt-dlp's extraction looks at the file (no Range); the sidecar's fetcher always asks
    // for a range, and it never started.
    assert_eq!(ranged(&server), 0, "{:?}", server.requests());

    // 10 minutes and 6 MB fit roomy: served, the file's bytes, by the sidecar's fetcher.
    let short = fetch(&gw, &config, "roomy", &server.url("short.html"), &[]).await;
    assert_eq!(
        (short.exit, short.status),
        (0, 200),
        "{short:?}\n{}",
        gw.logs()
    );
    let want = sha256_file(&fixtures().join("progressive.mp4")).unwrap();
    assert_eq!(sha256_hex(&short.body), want);
    assert!(
        ranged(&server) > 0,
        "the fetch this time: {:?}",
        server.requests()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_misbehaving_review_costs_one_request() {
    let (gw, config, _dir) = start().await;
    let server = own_server(|_| Vec::new());
    let url = server.url("hls/index.m3u8");
    let cases = [
        ("review=trap", 500, "plugin_failed"),
        ("review=loop", 503, "plugin_failed"),
        ("review=deny", 451, "media_denied"),
    ];
    for (query, status, code) in cases {
        let r = fetch(&gw, &config, "misbehave", &format!("{url}?{query}"), &[]).await;
        assert_problem(&r, status, code, query);
        assert_eq!(segment_gets(&server), 0, "{query}: {:?}", server.all_hits());
    }
    // The gateway, its sidecar and the plugin's next call are unaffected.
    let u = url.clone();
    let direct = sha256_hex(&blocking(move || direct_ytdlp(&u, "b", &[])).await);
    let ok = fetch(&gw, &config, "misbehave", &url, &[]).await;
    assert_eq!((ok.exit, ok.status), (0, 200), "{ok:?}\n{}", gw.logs());
    assert_eq!(sha256_hex(&ok.body), direct);
    let logs = gw.logs();
    assert!(logs.contains("exceeded its deadline"), "{logs}");
    assert!(logs.contains("trapped"), "{logs}");
}

/// `POST /v1/resolve` as `tenant`: the status and the JSON answer.
async fn resolve(gw: &Gateway, tenant: &str, url: &str) -> (u16, serde_json::Value) {
    let resp = reqwest::Client::new()
        .post(gw.url("/v1/resolve"))
        .header("host", format!("{tenant}.test"))
        .header("content-type", "application/json")
        .body(serde_json::json!({ "url": url, "format": "b" }).to_string())
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body = resp.bytes().await.unwrap();
    (
        status,
        serde_json::from_slice(&body).expect("a JSON answer"),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_after_a_resolve_is_reviewed_from_its_cached_extraction() {
    let (gw, _config, _dir) = start().await;
    let server = own_server(|base| vec![film_page(base, "/big.html", "PT3H", 3_000_000_000)]);
    let (hls, big) = (server.url("hls/index.m3u8"), server.url("big.html"));

    // policy-media lets only `public_resolve` tenants resolve.
    let (status, problem) = resolve(&gw, "strict", &hls).await;
    assert_eq!(
        (status, &problem["code"]),
        (401, &"policy_denied".into()),
        "{problem}"
    );

    let (status, info) = resolve(&gw, "roomy", &hls).await;
    assert_eq!(status, 200, "{info}");
    // What an extraction of it costs the origin (the resolve's, the only one so far).
    let extraction = server.method_hits("GET", "/hls/index.m3u8");
    let link = gw.url(info["stream_url"].as_str().unwrap());
    let args = ["-H".to_owned(), "Host: roomy.test".to_owned()];
    let got = blocking(move || curl(&[&args[0], &args[1]], &link)).await;
    assert_eq!((got.exit, got.status), (0, 200), "{got:?}\n{}", gw.logs());
    assert_eq!(
        server.method_hits("GET", "/hls/index.m3u8") - extraction,
        1,
        "the fetcher's one read of the playlist, no second extraction ({extraction} reads): \
         the facts came from the resolve's"
    );
    assert!(segment_gets(&server) > 0);

    // The resolve of 3 GB answers (it is no media); its stream is refused, unopened.
    let (status, info) = resolve(&gw, "roomy", &big).await;
    assert_eq!(status, 200, "{info}");
    let link = gw.url(info["stream_url"].as_str().unwrap());
    let args = ["-H".to_owned(), "Host: roomy.test".to_owned()];
    let denied = blocking(move || curl(&[&args[0], &args[1]], &link)).await;
    assert_problem(&denied, 403, "media_denied", "3 GB after a resolve");
    let gets = server.gets("/progressive.mp4");
    assert!(gets.iter().all(|s| s.range.is_none()), "{gets:?}");
    let logs = gw.logs();
    assert_eq!(logs.matches("media review").count(), 2, "{logs}");
}

/// The protocol underneath, on a sidecar of its own: a `review` job sends `facts` after the
/// extraction and opens nothing until `proceed`; `cancel` ends it unopened; no answer ends
/// it with `timeout` after the stall timeout.
#[tokio::test(flavor = "multi_thread")]
async fn the_sidecar_waits_for_proceed_before_opening_anything() {
    use streamgate_protocol::{Frame, StreamJob, kind};
    let sc = Sidecar::start(SidecarOptions {
        stall_timeout: Some(3.0),
        ..SidecarOptions::default()
    })
    .await;
    let server = own_server(|_| Vec::new());
    let url = server.url("hls/index.m3u8");
    let job = || {
        Frame::Stream(StreamJob {
            url: url.clone(),
            format: "b".into(),
            egress: loopback_egress(),
            review: true,
            ..StreamJob::default()
        })
    };
    let facts = |frame: Option<Result<Frame, _>>| match frame {
        Some(Ok(Frame::Facts(facts))) => facts,
        other => panic!("facts expected, got {other:?}\n{}", sc.logs()),
    };

    // cancel: the job ends, no segment fetched.
    let mut client = Client::connect(sc.socket()).await.unwrap();
    client.send(job()).await.unwrap();
    let first = facts(client.next().await);
    assert_eq!((first.duration, first.is_live), (Some(10.0), false));
    assert_eq!(first.extractor.as_deref(), Some("Generic"));
    let format = &first.formats[..];
    assert_eq!(format.len(), 1, "{first:?}");
    assert_eq!(format[0].protocol.as_deref(), Some("m3u8_native"));
    client.send(Frame::Cancel).await.unwrap();
    assert!(
        client.collect(SLOW).await.kinds.is_empty(),
        "nothing after a cancel"
    );

    // no answer: `timeout` after the stall timeout, still nothing fetched.
    let mut client = Client::connect(sc.socket()).await.unwrap();
    client.send(job()).await.unwrap();
    facts(client.next().await);
    let silent = client.collect(SLOW).await;
    assert_eq!(silent.error_code(), "timeout", "{silent:?}");
    assert_eq!(segment_gets(&server), 0, "{:?}", server.all_hits());

    // proceed: metadata, the media (as yt-dlp downloads it), end.
    let mut client = Client::connect(sc.socket()).await.unwrap();
    client.send(job()).await.unwrap();
    facts(client.next().await);
    client.send(Frame::Proceed).await.unwrap();
    let t = client.collect(SLOW).await;
    t.assert_complete(&sc.logs(), "ts", "video/mp2t");
    assert_eq!(t.kinds.first(), Some(&kind::METADATA));
    let u = url.clone();
    let direct = sha256_hex(&blocking(move || direct_ytdlp(&u, "b", &[])).await);
    assert_eq!(sha256_hex(&t.data), direct);
}
