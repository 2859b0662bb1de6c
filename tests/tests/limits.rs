//! End-to-end tests of the limits: real gateways (each with its own sidecar), two tenants
//! with their own keys and hosts, a real `redis-server` for the shared counters. A stream is
//! held open with `/stall/progressive.mp4` (1 MiB, then silence) and a client that keeps
//! its response without reading.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use streamgate_tests::config::mint_for;
use streamgate_tests::gateway::*;
use streamgate_tests::redis::{RedisServer, TwoTenants, two_tenants};
use streamgate_tests::*;

/// A client whose connections leave from `from` (any 127/8 address is loopback).
fn client_from(from: &str) -> reqwest::Client {
    let ip: IpAddr = from.parse().unwrap();
    reqwest::Client::builder()
        .local_address(ip)
        .build()
        .unwrap()
}

/// GET `link` with `host`; the response is kept (unread) to hold the stream open.
async fn open(client: &reqwest::Client, link: &str, host: &str) -> reqwest::Response {
    client.get(link).header("host", host).send().await.unwrap()
}

/// curl with a Host header, for the problem assertions.
async fn curl_host(link: &str, host: &str) -> CurlResult {
    let (link, header) = (link.to_owned(), format!("Host: {host}"));
    blocking(move || curl(&["-H", &header], &link)).await
}

fn assert_limited(r: &CurlResult, what: &str) {
    assert_problem(r, 429, "rate_limited", what);
    assert_eq!(
        r.header("retry-after"),
        Some("5"),
        "{what}: {:?}",
        r.headers
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_at_its_limit_gets_429_while_another_streams() {
    let dir = tempfile::tempdir().unwrap();
    let limits = TwoTenants {
        a: "max_streams = 2",
        b: "",
        global: "",
        stall_secs: 120,
    };
    let config = two_tenants(dir.path(), &limits);
    let gw = Gateway::with_config(&config).await;
    let stalled = gw.stream_url(&mint_for(
        &config,
        "a",
        &server().url("stall/progressive.mp4"),
        "b",
    ));
    let http = reqwest::Client::new();
    let held = [
        open(&http, &stalled, "a.test").await,
        open(&http, &stalled, "a.test").await,
    ];
    assert!(held.iter().all(|r| r.status() == 200), "{}", gw.logs());

    let third = curl_host(&stalled, "a.test").await;
    assert_limited(&third, "a's third stream");

    // b is not slowed by a: a whole file, at once, from the same client address.
    let whole = std::fs::read(fixtures().join("progressive.mp4")).unwrap();
    let b_link = gw.stream_url(&mint_for(
        &config,
        "b",
        &server().url("progressive.mp4"),
        "b",
    ));
    let started = Instant::now();
    let got = curl_host(&b_link, "b.test").await;
    assert_eq!((got.exit, got.status), (0, 200), "{got:?}");
    assert_eq!(got.body.len(), whole.len());
    eprintln!("b's stream next to a at its limit: {:?}", started.elapsed());
    // a's token does not open on b: the tenants stay apart.
    let foreign = curl_host(&stalled, "b.test").await;
    assert_eq!(foreign.status, 403, "{foreign:?}");

    // A client leaving frees its slot: the body drops, the slot goes with it.
    drop(held);
    let freed = Instant::now();
    let ok = gw.stream_url(&mint_for(
        &config,
        "a",
        &server().url("progressive.mp4"),
        "b",
    ));
    let mut again = curl_host(&ok, "a.test").await;
    while again.status == 429 && freed.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        again = curl_host(&ok, "a.test").await;
    }
    assert_eq!((again.exit, again.status), (0, 200), "{again:?}");
    eprintln!("slots freed {:?} after the clients left", freed.elapsed());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_per_client_limit_holds_across_many_connections() {
    let dir = tempfile::tempdir().unwrap();
    let limits = TwoTenants {
        a: "max_streams = 50, max_streams_per_client = 2",
        b: "",
        global: "",
        stall_secs: 120,
    };
    let config = two_tenants(dir.path(), &limits);
    let gw = Gateway::with_config(&config).await;
    let stalled = gw.stream_url(&mint_for(
        &config,
        "a",
        &server().url("stall/progressive.mp4"),
        "b",
    ));
    // Eight connections at once, each its own client (no pooling), one source address.
    let attempts = (0..8).map(|_| {
        let link = stalled.clone();
        async move { open(&client_from("127.0.0.1"), &link, "a.test").await }
    });
    let responses = futures::future::join_all(attempts).await;
    let statuses: Vec<u16> = responses.iter().map(|r| r.status().as_u16()).collect();
    assert_eq!(
        statuses.iter().filter(|&&s| s == 200).count(),
        2,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|&&s| s == 429).count(),
        6,
        "{statuses:?}"
    );
    let (held, refused): (Vec<_>, Vec<_>) = responses.into_iter().partition(|r| r.status() == 200);
    for r in refused {
        assert_eq!(r.headers()["retry-after"], "5");
        let p: serde_json::Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
        assert_eq!(p["code"], "rate_limited", "{p}");
    }
    // Another address is another client.
    let other = open(&client_from("127.0.0.2"), &stalled, "a.test").await;
    assert_eq!(other.status(), 200, "{}", gw.logs());
    drop(held);
}

#[tokio::test(flavor = "multi_thread")]
async fn resolves_per_minute_gives_429() {
    let dir = tempfile::tempdir().unwrap();
    let limits = TwoTenants {
        a: "resolves_per_minute = 2",
        b: "",
        global: "",
        stall_secs: 30,
    };
    let config = two_tenants(dir.path(), &limits);
    let gw = Gateway::with_config(&config).await;
    let http = reqwest::Client::new();
    let body = serde_json::json!({ "url": server().url("progressive.mp4") });
    let mut statuses = Vec::new();
    for host in ["a.test", "a.test", "a.test", "b.test"] {
        let req = http.post(gw.url("/v1/resolve")).header("host", host);
        let req = req.header("content-type", "application/json");
        let resp = req.body(body.to_string()).send().await.unwrap();
        statuses.push(resp.status().as_u16());
        if resp.status() == 429 {
            let retry = resp.headers()["retry-after"].to_str().unwrap();
            assert!((1..=60).contains(&retry.parse::<u32>().unwrap()), "{retry}");
            let p: serde_json::Value =
                serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
            assert_eq!(p["code"], "rate_limited", "{p}");
        }
    }
    assert_eq!(statuses, [200, 200, 429, 200], "{}", gw.logs());
}

/// Tenant `a` allows each client 2 resolves a minute: the third from 127.0.0.1 is a 429,
/// and 127.0.0.2 (another client) still resolves. `global` is the `[limits]` table.
async fn resolves_per_client(global: &str) {
    let dir = tempfile::tempdir().unwrap();
    let limits = TwoTenants {
        a: "resolves_per_minute_per_client = 2, resolves_per_minute = 100",
        b: "",
        global,
        stall_secs: 30,
    };
    let config = two_tenants(dir.path(), &limits);
    let gw = Gateway::with_config(&config).await;
    let body = serde_json::json!({ "url": server().url("progressive.mp4") }).to_string();
    let mut statuses = Vec::new();
    for from in ["127.0.0.1", "127.0.0.1", "127.0.0.1", "127.0.0.2"] {
        let req = client_from(from).post(gw.url("/v1/resolve"));
        let req = req.header("host", "a.test");
        let req = req.header("content-type", "application/json");
        let resp = req.body(body.clone()).send().await.unwrap();
        statuses.push(resp.status().as_u16());
        if resp.status() == 429 {
            let retry = resp.headers()["retry-after"].to_str().unwrap();
            assert!((1..=60).contains(&retry.parse::<u32>().unwrap()), "{retry}");
            let p: serde_json::Value =
                serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
            assert_eq!(p["code"], "rate_limited", "{p}");
        }
    }
    assert_eq!(statuses, [200, 200, 429, 200], "{}", gw.logs());
    let metrics = gw.metrics_text().await;
    let line = "streamgate_limiter_rejections_total{tenant=\"a\",limit=\"resolves_per_minute_per_client\"} 1";
    assert!(metrics.lines().any(|l| l == line), "{line}");
}

#[tokio::test(flavor = "multi_thread")]
async fn resolves_per_minute_per_client_gives_429_to_that_client_only() {
    resolves_per_client("").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn resolves_per_minute_per_client_counts_in_redis() {
    let redis = RedisServer::start();
    resolves_per_client(&redis_limits(&redis.url(), 30, "deny")).await;
    let count = |key: &str| redis.command(&format!("GET {key}")).unwrap_or_default();
    let (one, two) = (
        count("streamgate:{a}:resolves:client:127.0.0.1"),
        count("streamgate:{a}:resolves:client:127.0.0.2"),
    );
    assert!(one.ends_with("\r\n3\r\n"), "{one:?}");
    assert!(two.ends_with("\r\n1\r\n"), "{two:?}");
    let tenant = count("streamgate:{a}:resolves");
    assert!(
        tenant.ends_with("\r\n3\r\n"),
        "the refused one spent nothing: {tenant:?}"
    );
}

/// `[limits]` with Redis at `url`, `slot_ttl_secs` and `on_limiter_error`.
fn redis_limits(url: &str, ttl: u32, on_error: &str) -> String {
    format!("redis_url = \"{url}\"\nslot_ttl_secs = {ttl}\non_limiter_error = \"{on_error}\"")
}

#[tokio::test(flavor = "multi_thread")]
async fn two_gateways_share_a_limit_in_redis_and_a_killed_one_frees_its_slots() {
    const TTL: u32 = 6;
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let global = redis_limits(&redis.url(), TTL, "deny");
    let limits = TwoTenants {
        a: "max_streams = 3",
        b: "",
        global: &global,
        stall_secs: 120,
    };
    let config = two_tenants(dir.path(), &limits);
    let (mut one, two) = (
        Gateway::with_config(&config).await,
        Gateway::with_config(&config).await,
    );
    let token = mint_for(&config, "a", &server().url("stall/progressive.mp4"), "b");
    let http = reqwest::Client::new();
    let mut held = Vec::new();
    for gw in [&one, &two, &one] {
        let r = open(&http, &gw.stream_url(&token), "a.test").await;
        assert_eq!(r.status(), 200, "{}", gw.logs());
        held.push(r);
    }
    assert_eq!(redis.zcard("streamgate:{a}:streams"), 3);
    for gw in [&one, &two] {
        assert_limited(
            &curl_host(&gw.stream_url(&token), "a.test").await,
            "4th stream",
        );
    }
    // The heartbeat keeps running slots alive past their TTL.
    tokio::time::sleep(Duration::from_secs(u64::from(TTL) + 2)).await;
    assert_limited(
        &curl_host(&two.stream_url(&token), "a.test").await,
        "after a TTL",
    );

    // SIGKILL: no release, no heartbeat; its two slots expire within the TTL.
    one.child().signal(nix::sys::signal::Signal::SIGKILL);
    let killed = Instant::now();
    let mut freed = Vec::new();
    while freed.len() < 2 {
        assert!(
            killed.elapsed() < Duration::from_secs(u64::from(TTL) + 5),
            "slots not freed"
        );
        let r = open(&http, &two.stream_url(&token), "a.test").await;
        if r.status() == 200 {
            eprintln!(
                "slot {} freed {:?} after SIGKILL",
                freed.len() + 1,
                killed.elapsed()
            );
            freed.push(r);
        } else {
            assert_eq!(r.status(), 429);
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let elapsed = killed.elapsed();
    assert!(
        // Expiry: last heartbeat (≤ TTL/3 before the kill) + TTL; plus a poll and a request.
        elapsed <= Duration::from_secs(u64::from(TTL) + 2),
        "{elapsed:?}"
    );
    assert_limited(
        &curl_host(&two.stream_url(&token), "a.test").await,
        "full again",
    );
    // Dropped streams release at once (no waiting for the TTL).
    drop(freed);
    let dropped = Instant::now();
    assert!(
        wait_until(Duration::from_secs(5), || redis
            .zcard("streamgate:{a}:streams")
            == 1)
        .await
    );
    eprintln!("released {:?} after the clients left", dropped.elapsed());
    drop(held);
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_down_follows_on_limiter_error() {
    let mut redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let (deny_dir, allow_dir) = (dir.path().join("deny"), dir.path().join("allow"));
    let mut gws = Vec::new();
    for (sub, on_error) in [(&deny_dir, "deny"), (&allow_dir, "allow")] {
        std::fs::create_dir_all(sub).unwrap();
        let global = redis_limits(&redis.url(), 30, on_error);
        let limits = TwoTenants {
            a: "max_streams = 5",
            b: "",
            global: &global,
            stall_secs: 30,
        };
        let config = two_tenants(sub, &limits);
        let gw = Gateway::with_config(&config).await;
        let link = gw.stream_url(&mint_for(
            &config,
            "a",
            &server().url("progressive.mp4"),
            "b",
        ));
        let up = curl_host(&link, "a.test").await;
        assert_eq!(
            (up.exit, up.status),
            (0, 200),
            "{on_error} with redis up: {up:?}"
        );
        gws.push((gw, link, on_error));
    }
    redis.stop();
    assert!(!redis.ping());
    let whole = std::fs::metadata(fixtures().join("progressive.mp4"))
        .unwrap()
        .len();
    for (gw, link, on_error) in &gws {
        let r = curl_host(link, "a.test").await;
        if *on_error == "deny" {
            assert_problem(&r, 503, "limiter_unavailable", "deny");
        } else {
            assert_eq!((r.exit, r.status), (0, 200), "allow: {r:?}");
            assert_eq!(r.body.len() as u64, whole);
        }
        let text = gw.metrics_text().await;
        let line = format!("streamgate_limiter_errors_total{{decision=\"{on_error}\"}} 1");
        assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        let logs = gw.logs();
        assert!(logs.contains("limiter backend failed"), "{logs}");
    }
}
