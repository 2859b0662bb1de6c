//! `/metrics` after a scripted sequence of requests: every counter, gauge and histogram
//! count is checked for its exact value, parsed from the OpenMetrics text.

use std::time::Duration;

use streamgate_tests::config::mint_for;
use streamgate_tests::gateway::*;
use streamgate_tests::redis::{TwoTenants, two_tenants};
use streamgate_tests::*;

/// The value of the sample `name{labels}` (labels as written, e.g. `tenant="a"`).
fn sample(text: &str, name: &str, labels: &str) -> Option<f64> {
    let key = match labels {
        "" => name.to_owned(),
        l => format!("{name}{{{l}}}"),
    };
    let line = text
        .lines()
        .find(|l| l.split(' ').next() == Some(key.as_str()))?;
    line.split(' ').nth(1)?.parse().ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_match_a_scripted_sequence_exactly() {
    let fixtures_server = FixtureServer::start(fixtures());
    let dir = tempfile::tempdir().unwrap();
    // b refuses every stream: one request there is exactly one limiter rejection.
    let limits = TwoTenants {
        a: "",
        b: "max_streams = 0",
        global: "",
        stall_secs: 30,
    };
    let config = two_tenants(dir.path(), &limits);
    let gw = Gateway::with_config(&config).await;
    let get = |link: String, host: &str| {
        let header = format!("Host: {host}");
        blocking(move || curl(&["-H", &header], &link))
    };

    // 3 good streams with known sizes.
    let mut bytes = 0;
    for file in ["progressive.mp4", "audio-only.m4a", "video-only.mp4"] {
        let token = mint_for(&config, "a", &fixtures_server.url(file), "b");
        let r = get(gw.stream_url(&token), "a.test").await;
        assert_eq!((r.exit, r.status), (0, 200), "{file}: {r:?}");
        assert_eq!(
            r.body.len() as u64,
            std::fs::metadata(fixtures().join(file)).unwrap().len()
        );
        bytes += r.body.len();
    }
    // 2 bad tokens, 1 bad URL (refused before the policy; all 400), 1 not found (a sidecar
    // error).
    for bad in ["not-a-token", "still-not-a-token"] {
        assert_eq!(get(gw.stream_url(bad), "a.test").await.status, 400);
    }
    let file = mint_for(&config, "a", "file:///etc/passwd", "b");
    let refused = get(gw.stream_url(&file), "a.test").await;
    assert_problem(&refused, 400, "bad_url", "bad URL");
    let nope = mint_for(&config, "a", &fixtures_server.url("nope.mp4"), "b");
    assert_problem(
        &get(gw.stream_url(&nope), "a.test").await,
        404,
        "not_found",
        "404",
    );
    // 1 limited (tenant b), 1 unknown route.
    let b = mint_for(&config, "b", &fixtures_server.url("progressive.mp4"), "b");
    assert_problem(
        &get(gw.stream_url(&b), "b.test").await,
        429,
        "rate_limited",
        "b",
    );
    assert_eq!(get(gw.url("/no/such/route"), "a.test").await.status, 404);

    // Bodies are dropped just after their last byte: the gauge may lag by a moment.
    let http = reqwest::Client::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let text = loop {
        let resp = http.get(gw.admin_url("/metrics")).send().await.unwrap();
        let kind = resp.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(kind.starts_with("application/openmetrics-text"), "{kind}");
        let text = resp.text().await.unwrap();
        let idle = sample(&text, "streamgate_active_streams", "tenant=\"a\"") == Some(0.0);
        if idle || std::time::Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let expect = [
        (
            "streamgate_http_requests_total",
            "tenant=\"a\",status=\"200\"",
            3.0,
        ),
        (
            "streamgate_http_requests_total",
            "tenant=\"a\",status=\"400\"",
            3.0,
        ),
        (
            "streamgate_http_requests_total",
            "tenant=\"a\",status=\"404\"",
            1.0,
        ),
        (
            "streamgate_http_requests_total",
            "tenant=\"b\",status=\"429\"",
            1.0,
        ),
        (
            "streamgate_http_requests_total",
            "tenant=\"-\",status=\"404\"",
            1.0,
        ),
        ("streamgate_bytes_sent_total", "tenant=\"a\"", bytes as f64),
        ("streamgate_active_streams", "tenant=\"a\"", 0.0),
        (
            "streamgate_time_to_first_byte_seconds_count",
            "tenant=\"a\"",
            3.0,
        ),
        ("streamgate_sidecar_jobs_total", "kind=\"stream\"", 4.0),
        ("streamgate_sidecar_errors_total", "code=\"not_found\"", 1.0),
        // token: 3 good + 2 bad + bad URL + not found on a, 1 on b; policy: the other 5.
        (
            "streamgate_plugin_calls_total",
            "plugin=\"token-xchacha\"",
            8.0,
        ),
        (
            "streamgate_plugin_calls_total",
            "plugin=\"policy-allowlist\"",
            5.0,
        ),
        (
            "streamgate_plugin_latency_seconds_count",
            "plugin=\"token-xchacha\"",
            8.0,
        ),
        (
            "streamgate_plugin_latency_seconds_count",
            "plugin=\"policy-allowlist\"",
            5.0,
        ),
        (
            "streamgate_limiter_rejections_total",
            "tenant=\"b\",limit=\"max_streams\"",
            1.0,
        ),
    ];
    for (name, labels, value) in expect {
        assert_eq!(
            sample(&text, name, labels),
            Some(value),
            "{name}{{{labels}}} in\n{text}"
        );
    }
    // Nothing else: no stream of b, no plugin failure, no limiter error.
    assert_eq!(
        sample(&text, "streamgate_bytes_sent_total", "tenant=\"b\""),
        None
    );
    assert!(
        !text.contains("streamgate_plugin_failures_total{"),
        "{text}"
    );
    assert!(!text.contains("streamgate_limiter_errors_total{"), "{text}");
    let requests = text
        .lines()
        .filter(|l| l.starts_with("streamgate_http_requests_total{tenant=\""));
    let tenants_only = requests.filter(|l| !l.contains("tenant=\"-\""));
    assert_eq!(
        tenants_only.count(),
        4,
        "no other tenant/status pairs:\n{text}"
    );
}
