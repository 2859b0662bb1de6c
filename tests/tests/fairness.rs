//! Tenants sharing the sidecar's slots (issue 13): a tenant holding its whole quota of
//! stream slots with clients that stopped reading, and more of its jobs waiting, does not
//! keep another tenant's stream waiting; 40 clients that stop reading lose their streams
//! after the idle-write timeout, and the client queued behind them is then served; a token
//! plugin sleeping in a host call fails closed at its deadline, frees its instance permit,
//! and never holds another tenant's permits. Real
//! gateway, sidecar and yt-dlp; admission is asserted by order (who is served while whose
//! jobs still wait), never by timings. Every wait is bounded.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::future::join_all;
use streamgate_tests::config::{self, mint_for, new_key, open_policy, xchacha};
use streamgate_tests::gateway::*;
use streamgate_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest any single wait may take before the test fails.
const BOUND: Duration = Duration::from_secs(120);

/// A config file: `head` (its `[server]`, `[sidecar]`, `[plugins]` tables), then one tenant
/// per `(id, host, token)` streaming loopback fixtures, the first the default; `token` is a
/// component file, or `None` for token-xchacha with a key all these tenants share.
fn config(dir: &Path, head: &str, tenants: &[(&str, &str, Option<&Path>)]) -> PathBuf {
    let shared = xchacha(&new_key());
    let mut text = format!("default_tenant = \"{}\"\n{head}\n", tenants[0].0);
    for (id, host, token) in tenants {
        let token = match token {
            Some(wasm) => format!("{{ wasm = \"{}\" }}", wasm.display()),
            None => shared.clone(),
        };
        text += &config::tenant(id, &[host], &token, &open_policy(""), "");
    }
    config::write(dir, &text)
}

/// The stream link of `tenant` for `url`.
fn link(gw: &Gateway, config: &Path, tenant: &str, url: &str) -> String {
    gw.stream_url(&mint_for(config, tenant, url, "b"))
}

/// A client of `host` that gets the head of `link` (200) and then reads nothing more:
/// its small receive buffer fills and the gateway's writes stall.
async fn stalled(link: &str, host: &str) -> TcpStream {
    let rest = link.trim_start_matches("http://");
    let (addr, path) = rest.split_at(rest.find('/').unwrap());
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(64 * 1024).unwrap();
    let mut conn = socket.connect(addr.parse().unwrap()).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut head = vec![0u8; 16 * 1024];
    let n = tokio::time::timeout(BOUND, conn.read(&mut head))
        .await
        .expect("a head in time")
        .unwrap();
    let head = String::from_utf8_lossy(&head[..n]);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    conn
}

/// Reads until the gateway closes the connection (EOF or reset). Panics past [`BOUND`].
async fn until_closed(mut conn: TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match tokio::time::timeout(BOUND, conn.read(&mut buf)).await {
            Err(_) => panic!("still open after {BOUND:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(_)) => {}
        }
    }
}

/// `curl` of `link` as a client of `host`, on a blocking thread.
fn fetch(link: &str, host: &str) -> tokio::task::JoinHandle<CurlResult> {
    let (link, host) = (link.to_owned(), format!("Host: {host}"));
    tokio::spawn(blocking(move || curl(&["-H", &host], &link)))
}

/// The whole progressive fixture came, byte for byte.
fn assert_whole_file(got: &CurlResult, gw: &Gateway, who: &str) {
    assert_eq!(got.status, 200, "{who}\n{}", gw.logs());
    let file = sha256_file(&fixtures().join("progressive.mp4")).unwrap();
    assert_eq!(sha256_hex(&got.body), file, "{who}");
}

/// Waits until the logs hold `count` lines containing `marker`.
async fn await_lines(gw: &Gateway, marker: &str, count: usize) {
    let ok = wait_until(BOUND, || gw.logs().matches(marker).count() >= count).await;
    assert!(ok, "fewer than {count} {marker:?}\n{}", gw.logs());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_holding_its_whole_quota_does_not_delay_another_tenants_stream() {
    let dir = tempfile::tempdir().unwrap();
    // 4 stream slots, half of them (the default --tenant-share) per tenant; stalled clients
    // are not cut during the test.
    let config = config(
        dir.path(),
        "[server]\nidle_write_timeout_secs = 600\n\
         [sidecar]\nargs = [\"--max-streams=4\", \"--queue-timeout=300\"]",
        &[("a", "a.test", None), ("b", "b.test", None)],
    );
    let gw = Gateway::with_config(&config).await;
    let large = link(&gw, &config, "a", &large_url());
    let small = server().url("progressive.mp4");
    // Tenant a: two clients that stop reading hold its two slots …
    let a1 = stalled(&large, "a.test").await;
    let a2 = stalled(&large, "a.test").await;
    // … and two more of its jobs wait, although two slots are free.
    let a_small = link(&gw, &config, "a", &small);
    let mut a3 = fetch(&a_small, "a.test");
    let mut a4 = fetch(&a_small, "a.test");
    let quota = "a job waits for a slot: tenant \"a\" holds its quota of 2 of the 4 stream slots";
    await_lines(&gw, quota, 2).await;
    // Tenant b is served at once, whole, while a's jobs still wait.
    let b = fetch(&link(&gw, &config, "b", &small), "b.test");
    let b = tokio::time::timeout(BOUND, b)
        .await
        .expect("b in time")
        .unwrap();
    assert_whole_file(&b, &gw, "tenant b");
    assert!(
        !a3.is_finished() && !a4.is_finished(),
        "a's jobs past its quota must still wait\n{}",
        gw.logs()
    );
    assert!(!gw.logs().contains("tenant \"b\" holds its quota"));
    // One of a's stalled clients leaves: one of its waiting jobs gets the slot, and the
    // other gets it when that one has ended (a's other stalled client still holds one).
    drop(a1);
    let (first, second) = tokio::select! {
        r = &mut a3 => (r.unwrap(), a4),
        r = &mut a4 => (r.unwrap(), a3),
        _ = tokio::time::sleep(BOUND) => panic!("a's waiting jobs never got the freed slot\n{}", gw.logs()),
    };
    assert_whole_file(&first, &gw, "a's first waiting job");
    let second = tokio::time::timeout(BOUND, second)
        .await
        .expect("in time")
        .unwrap();
    assert_whole_file(&second, &gw, "a's second waiting job");
    drop(a2);
    eprintln!(
        "b served whole while 2 of a's jobs waited at its quota; a's served as its slots freed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn forty_clients_that_stop_reading_lose_their_streams_then_a_new_client_is_served() {
    const N: usize = 40;
    let dir = tempfile::tempdir().unwrap();
    // 80 stream slots, 40 for the one tenant: the 41st client waits for its quota. The
    // idle-write timeout leaves room for all 40 to start before the first is cut.
    let config = config(
        dir.path(),
        "[server]\nidle_write_timeout_secs = 20\n\
         [sidecar]\nargs = [\"--max-streams=80\", \"--queue-timeout=300\"]",
        &[("main", "main.test", None)],
    );
    let gw = Gateway::with_config(&config).await;
    let large = link(&gw, &config, "main", &large_url());
    let clients = join_all((0..N).map(|_| stalled(&large, "main.test"))).await;
    // Served only once one of the 40 has lost its stream.
    let late = fetch(
        &link(&gw, &config, "main", &server().url("progressive.mp4")),
        "main.test",
    );
    await_lines(
        &gw,
        "a job waits for a slot: tenant \"main\" holds its quota of 40 of the 80 stream slots",
        1,
    )
    .await;
    // The 40 read nothing: each is cut by the idle-write timeout (reading them now would
    // resume their streams instead).
    let deadline = tokio::time::Instant::now() + BOUND;
    loop {
        let cut = gw
            .metric(
                "streamgate_connections_timed_out_total",
                "kind=\"idle_write\"",
            )
            .await;
        if cut == Some(N as f64) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "idle-write cuts: {cut:?}\n{}",
            gw.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Then a cut body and the close, for each.
    join_all(clients.into_iter().map(until_closed)).await;
    let late = tokio::time::timeout(BOUND, late)
        .await
        .expect("in time")
        .unwrap();
    assert_whole_file(&late, &gw, "the client after the 40");
    let ok = wait_until(BOUND, || {
        gw.logs().matches("client left; job cancelled").count() >= N
    })
    .await;
    assert!(ok, "every stalled job cancelled\n{}", gw.logs());
    eprintln!("{N} stalled clients cut by the idle-write timeout; the waiting 41st served whole");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_sleeping_in_a_host_call_fails_closed_and_leaves_other_tenants_permits() {
    // More requests than the sleepy tenant's permits (2 of the engine's 4).
    const N: usize = 10;
    let dir = tempfile::tempdir().unwrap();
    let misbehave = streamgate::plugin::builtin::test_misbehave_path();
    let config = config(
        dir.path(),
        "[plugins]\nmax_instances = 4\ndeadline_ms = 2000",
        &[
            ("fast", "fast.test", None),
            ("sleepy", "sleepy.test", Some(&misbehave)),
        ],
    );
    let gw = Gateway::with_config(&config).await;
    // `sleep` makes test-misbehave's `open` sleep a minute on a monotonic-clock pollable.
    let sleepers: Vec<_> = (0..N)
        .map(|_| fetch(&gw.stream_url("sleep"), "sleepy.test"))
        .collect();
    // While they sleep (N / 2 rounds of 2 s), tenant fast's token and policy calls run.
    let small = server().url("progressive.mp4");
    let fast = fetch(&link(&gw, &config, "fast", &small), "fast.test");
    let fast = tokio::time::timeout(BOUND, fast)
        .await
        .expect("fast in time")
        .unwrap();
    let done = sleepers.iter().filter(|s| s.is_finished()).count();
    assert_whole_file(&fast, &gw, "tenant fast");
    assert!(
        done < N,
        "fast must not wait for the sleepers' permits\n{}",
        gw.logs()
    );
    // Every sleeper fails closed at its deadline: each frees its permit for the next.
    for sleeper in sleepers {
        let r = tokio::time::timeout(BOUND, sleeper)
            .await
            .expect("answered")
            .unwrap();
        assert_problem(&r, 503, "plugin_failed", "sleep");
    }
    let stopped = gw.logs().matches("(waiting in a host call)").count();
    assert_eq!(stopped, N, "{}", gw.logs());
    eprintln!(
        "tenant fast served whole while {} of {N} sleepers were still waiting or asleep; all {N} got 503",
        N - done
    );
}
