//! The web page at `/` (`gateway/src/web/`) in Debian's headless Chromium, driven by
//! playwright-core (`tests/js/web.mjs`, which only observes): a real gateway, sidecar and
//! yt-dlp on generated fixtures. The page resolves a fixture, plays it (currentTime
//! advances), seeks to the middle of a long one (a Range request answered 206), downloads
//! the same bytes curl gets, explains bad URLs, and asks for a tenant's API key in the
//! tenant's header. The screenshot of the playing video is kept in `target/web/page.png`.

use std::path::PathBuf;
use std::process::Command;

use serde_json::{Value, json};
use streamgate_tests::gateway::*;
use streamgate_tests::paths::target_dir;
use streamgate_tests::*;

/// Runs one scenario of `tests/js/web.mjs` in Chromium; returns what it saw.
fn chromium(scenario: Value) -> Value {
    let js = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("js");
    assert!(
        js.join("node_modules/playwright-core").is_dir(),
        "playwright-core missing: run scripts/setup (npm ci in tests/js)"
    );
    assert!(
        std::path::Path::new("/usr/bin/chromium").is_file(),
        "/usr/bin/chromium missing: run scripts/setup (apt chromium)"
    );
    // Every step waits 60 s at most; `timeout` bounds a browser that hangs at start
    // (Playwright closes Chromium on SIGTERM).
    let out = Command::new("timeout")
        .args(["--kill-after=10", "300", "node", "web.mjs"])
        .current_dir(&js)
        .arg(scenario.to_string())
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let seen: Value = stdout
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or(Value::Null);
    assert!(
        out.status.success(),
        "the Chromium driver failed: {seen:#}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    seen
}

/// The only console errors a run may log: Chromium's line for each refused resolve. A CSP
/// or Trusted Types violation, or a script error, would be another line.
fn only_refusals_logged(seen: &Value, refusals: usize) {
    let console = seen["console"].as_array().expect("console");
    assert!(
        console
            .iter()
            .all(|l| l.as_str().is_some_and(|l| l
                .starts_with("Failed to load resource: the server responded with a status of 4"))),
        "unexpected console errors: {console:#?}"
    );
    assert_eq!(console.len(), refusals, "{console:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_page_resolves_plays_seeks_downloads_and_explains_problems() {
    let gw = Gateway::start(GatewayOptions::default()).await;
    let fx = server();
    let long = large_url();
    let downloads = tempfile::tempdir().unwrap();
    let screenshot = target_dir().join("web/page.png");
    let _ = std::fs::remove_file(&screenshot);
    let bad = ["ftp://example.com/clip.mp4".to_owned(), fx.url("page.html")];
    let scenario = json!({
        "mode": "player",
        "base": gw.url(""),
        "video": fx.url("progressive.mp4"),
        "seek": long,
        "bad": bad,
        "screenshot": screenshot,
        "downloads": downloads.path(),
    });
    let seen = blocking(move || chromium(scenario)).await;

    // The page and its headers.
    let page = &seen["page"];
    assert_eq!(page["status"], 200, "{page:#}");
    let headers = &page["headers"];
    let csp = headers["content-security-policy"]
        .as_str()
        .unwrap_or_default();
    for part in [
        "default-src 'none'",
        "script-src 'self';",
        "style-src 'self';",
    ] {
        assert!(csp.contains(part), "CSP {csp:?} lacks {part:?}");
    }
    assert!(!csp.contains("unsafe"), "{csp}");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert!(headers["etag"].is_string(), "{headers:#}");
    assert!(
        headers["content-type"]
            .as_str()
            .is_some_and(|t| t.starts_with("text/html"))
    );

    // Resolved: the title, the table (the automatic choice, then each format), the focus.
    assert_eq!(seen["resolve"]["status"], 200, "{seen:#}");
    assert_eq!(seen["resolve"]["answer"]["title"], "progressive");
    let rows = seen["rows"].as_array().unwrap();
    let formats = seen["resolve"]["answer"]["formats"].as_array().unwrap();
    assert_eq!(rows.len(), formats.len() + 1, "{rows:#?}");
    assert_eq!(rows[0][0], "best (automatic)");
    assert_eq!(rows[1][0], formats[0]["id"]);
    assert_eq!(
        seen["focused"], "title",
        "the result's title takes the focus"
    );

    // Played: currentTime advanced by a second, still playing.
    let play = &seen["play"];
    let (t0, t1) = (play["t0"].as_f64().unwrap(), play["t1"].as_f64().unwrap());
    assert!(t1 >= t0 + 1.0 && t0 > 0.0, "{play}");
    assert_eq!(play["paused"], false);
    let png = std::fs::read(&screenshot).expect("screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 50_000,
        "{} bytes",
        png.len()
    );

    // Downloaded through the link: the bytes curl gets from it, and the fixture's.
    let download = &seen["download"];
    let href = download["href"].as_str().unwrap().to_owned();
    let by_curl = blocking(move || curl(&[], &href)).await;
    assert_eq!(by_curl.status, 200);
    let fixture = sha256_file(&fixtures().join("progressive.mp4")).unwrap();
    assert_eq!(download["sha256"], sha256_hex(&by_curl.body));
    assert_eq!(download["sha256"], fixture.as_str());
    assert_eq!(download["filename"], "progressive.mp4");

    // Seeking to the middle: a Range from there on, answered 206 by the gateway; playback
    // goes on past the middle.
    let seek = &seen["seek"];
    let mid = seek["mid"].as_f64().unwrap();
    assert!(mid > 60.0, "the long fixture: {seek}");
    assert!(seek["after"].as_f64().unwrap() > mid, "{seek}");
    let size = std::fs::metadata(large_fixture()).unwrap().len();
    let ranged = seek["requests"].as_array().unwrap().iter().find(|r| {
        let start = r["range"].as_str().and_then(|r| r.strip_prefix("bytes="));
        let start = start.and_then(|r| r.split('-').next()?.parse::<u64>().ok());
        start.is_some_and(|s| s > size / 4) && r["status"] == 206
    });
    let ranged = ranged.unwrap_or_else(|| panic!("no 206 past the start after the seek: {seek:#}"));
    let content_range = ranged["content_range"].as_str().unwrap();
    assert!(
        content_range.ends_with(&format!("/{size}")),
        "{content_range}"
    );

    // Each bad URL shows its problem: the status's hint, the server's detail, the code.
    let bad = seen["bad"].as_array().unwrap();
    let expect = [
        (
            400,
            "bad_url",
            "That is not an address this service accepts.",
        ),
        (
            422,
            "unsupported_url",
            "No video or audio was found at that address.",
        ),
    ];
    for (shown, (status, code, hint)) in bad.iter().zip(expect) {
        assert_eq!(
            (shown["status"].as_u64(), shown["code"].as_str()),
            (Some(status), Some(code))
        );
        let message = shown["message"].as_str().unwrap();
        assert!(message.starts_with(hint), "{message:?}");
        assert!(message.contains(&format!("Code {code}")), "{message:?}");
    }
    only_refusals_logged(&seen, bad.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_page_asks_for_the_tenants_api_key_and_sends_it_in_its_header() {
    let dir = tempfile::tempdir().unwrap();
    let key = streamgate::plugin::builtin::xchacha_generate_key();
    let config = dir.path().join("streamgate.toml");
    std::fs::write(
        &config,
        format!(
            r#"
default_tenant = "keyed"
[[tenant]]
id = "keyed"
token = {{ builtin = "token-xchacha", config = {{ keys = "{key}" }} }}
policy = {{ builtin = "policy-allowlist", config = {{ hosts = "*", allow_private = "true", api_key = "k-web-1", api_key_header = "X-Media-Key" }} }}
egress = {LOOPBACK_EGRESS}
"#
        ),
    )
    .unwrap();
    let gw = Gateway::start(GatewayOptions {
        config: Some(config),
        allow_private_urls: false,
        ..GatewayOptions::default()
    })
    .await;
    let scenario = json!({
        "mode": "key",
        "base": gw.url(""),
        "url": server().url("progressive.mp4"),
        "key": "k-web-1",
    });
    let seen = blocking(move || chromium(scenario)).await;
    assert_eq!(seen["header"], "x-media-key", "{seen:#}");
    assert_eq!(seen["field_visible_at_start"], true);
    assert_eq!(seen["without"]["status"], 401, "{seen:#}");
    let message = seen["without"]["message"].as_str().unwrap();
    assert!(
        message.contains("missing API key") && message.contains("Enter an API key"),
        "{message:?}"
    );
    assert_eq!(seen["with_key"]["status"], 200, "{seen:#}");
    assert_eq!(seen["with_key"]["sent"], "k-web-1");
    assert_eq!(seen["with_key"]["title"], "progressive");
    assert_eq!(seen["stored"], "k-web-1", "kept in sessionStorage");
    assert_eq!(
        seen["after_reload"], "k-web-1",
        "still there after a reload"
    );
    assert_eq!(seen["other_tab"], "", "not shared with another tab");
    only_refusals_logged(&seen, 1);
}
