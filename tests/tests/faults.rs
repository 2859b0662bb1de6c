//! Fault injection with real processes (issue 13): a part of the system fails under a running
//! gateway. Each test checks the three things that matter: the affected client gets a clear
//! failure (a problem+json status before the head, a cut body after it: curl exit 18, never
//! a short file taken as whole), a stream already under way on the same gateway (a
//! [`Bystander`]) completes with the right sha256, and the gateway recovers by itself (a new
//! request afterwards is served whole, with no manual step).
//!
//! Timeouts are set short by config (stall timeout, slot TTL) and every wait is bounded.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use futures::StreamExt;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use streamgate_tests::config::{self, mint_for, new_key, open_policy, xchacha};
use streamgate_tests::gateway::*;
use streamgate_tests::origin::{Mode, Origin};
use streamgate_tests::redis::{RedisServer, TwoTenants, two_tenants};
use streamgate_tests::*;
use tokio::sync::{oneshot, watch};

/// Longest any single wait may take before the test fails (far above every timeout set).
const BOUND: Duration = Duration::from_secs(60);

const MIB: u64 = 1024 * 1024;

// ---------------------------------------------------------------------------------------
// Set-up and helpers.

/// sha256 and size of the large fixture, computed once.
fn large() -> &'static (u64, String) {
    static LARGE: OnceLock<(u64, String)> = OnceLock::new();
    LARGE.get_or_init(|| {
        let size = std::fs::metadata(large_fixture()).unwrap().len();
        (size, sha256_file(large_fixture()).unwrap())
    })
}

fn progressive() -> Vec<u8> {
    std::fs::read(fixtures().join("progressive.mp4")).unwrap()
}

/// A stream of the large fixture under way when the fault strikes: its first bytes read,
/// then parked (TCP back-pressure holds it) until [`Bystander::finish`] reads the rest.
struct Bystander {
    go: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(u64, String), String>>,
}

impl Bystander {
    /// GET `link` (with `host` as the `Host` header, if given): 200, then the first chunk.
    async fn start(link: &str, host: Option<&str>) -> Bystander {
        use sha2::Digest;
        let client = reqwest::Client::new();
        let mut req = client.get(link);
        if let Some(host) = host {
            req = req.header("host", host);
        }
        let resp = req.send().await.expect("bystander request");
        assert_eq!(resp.status(), 200, "bystander: {resp:?}");
        let (go, mut parked) = watch::channel(false);
        let (started, first) = oneshot::channel();
        let task = tokio::spawn(async move {
            let mut body = resp.bytes_stream();
            let mut hash = sha2::Sha256::new();
            let mut size = 0u64;
            let mut started = Some(started);
            loop {
                let chunk = match body.next().await {
                    None => break,
                    Some(Ok(chunk)) => chunk,
                    Some(Err(e)) => return Err(format!("cut after {size} bytes: {e}")),
                };
                hash.update(&chunk);
                size += chunk.len() as u64;
                if let Some(tx) = started.take() {
                    let _ = tx.send(());
                    let _ = parked.wait_for(|go| *go).await;
                }
            }
            Ok((size, hex::encode(hash.finalize())))
        });
        first.await.expect("the bystander's first bytes");
        Bystander { go, task }
    }

    /// Reads the rest: every byte of the large fixture, in order.
    async fn finish(self, what: &str) {
        self.go.send_replace(true);
        let got = tokio::time::timeout(SLOW, self.task)
            .await
            .unwrap_or_else(|_| panic!("{what}: the bystander never finished"))
            .expect("bystander task");
        let (size, hash) = got.unwrap_or_else(|e| panic!("{what}: the bystander was {e}"));
        assert_eq!(
            (size, &hash),
            (large().0, &large().1),
            "{what}: the bystander"
        );
    }
}

/// `curl LINK` off the runtime, bounded, with `args` first.
async fn fetch(link: &str, args: &[&str]) -> CurlResult {
    let (link, mut args): (String, Vec<String>) = (
        link.to_owned(),
        args.iter().map(|a| a.to_string()).collect(),
    );
    args.extend(["--max-time".into(), BOUND.as_secs().to_string()]);
    blocking(move || curl(&args.iter().map(String::as_str).collect::<Vec<_>>(), &link)).await
}

/// A complete 200 whose body is `file`, byte for byte.
fn assert_whole(r: &CurlResult, file: &[u8], what: &str, gw: &Gateway) {
    assert_eq!((r.exit, r.status), (0, 200), "{what}: {r:?}\n{}", tail(gw));
    assert_eq!(r.body.len(), file.len(), "{what}");
    assert_eq!(sha256_hex(&r.body), sha256_hex(file), "{what}: the bytes");
}

/// A 200 whose body was cut: curl saw fewer bytes than the `Content-Length` (exit 18),
/// and those it saw are the file's first ones.
fn assert_cut(r: &CurlResult, file: &[u8], what: &str, gw: &Gateway) {
    assert_eq!(r.status, 200, "{what}: {r:?}\n{}", tail(gw));
    assert_eq!(
        r.header("content-length"),
        Some(file.len().to_string().as_str()),
        "{what}: the size was sent with the head"
    );
    assert_eq!(r.exit, 18, "{what}: a short body, seen as short: {r:?}");
    assert!(r.body.len() < file.len(), "{what}");
    assert!(
        r.body[..] == file[..r.body.len()],
        "{what}: the file's bytes"
    );
}

/// The last lines of the gateway's (and its sidecar's) log, for assertion messages.
fn tail(gw: &Gateway) -> String {
    let log = gw.logs();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

/// Waits until no yt-dlp job process is left under the gateway (the warm pool's idle
/// workers and forkserver go by other names).
async fn assert_no_job_left(gw: &Gateway, what: &str) {
    let clean = wait_until(Duration::from_secs(10), || gw.ytdlp_processes().is_empty()).await;
    assert!(clean, "{what}: {:?}", gw.ytdlp_processes());
}

/// A gateway on the embedded default (loopback fixtures allowed) with `sidecar_args`.
async fn gateway(sidecar_args: &[&str]) -> Gateway {
    Gateway::start(GatewayOptions {
        sidecar_args: sidecar_args.iter().map(|a| a.to_string()).collect(),
        ..GatewayOptions::default()
    })
    .await
}

fn link(gw: &Gateway, url: &str) -> String {
    gw.stream_url(&gw.mint(url, "b"))
}

fn link_to_large(gw: &Gateway) -> String {
    link(gw, &large_url())
}

// ---------------------------------------------------------------------------------------
// 1. The warm pool's forkserver killed while one of its workers extracts.

/// A worker that took a job has its own session and is the sidecar's child: the
/// forkserver's death (and the kill of its group) leaves that extraction running, so its
/// client is served whole. A job arriving meanwhile spawns yt-dlp or lands on a worker
/// left over; the pool comes back with a new forkserver and no job process is left.
#[tokio::test(flavor = "multi_thread")]
async fn a_forkserver_killed_during_an_extraction_is_restarted_and_the_job_completes() {
    let file = progressive();
    let origin = Origin::start(file.clone()).await;
    let gw = gateway(&[]).await;
    let forkserver = |gw: &Gateway| {
        descendants(gw.pid())
            .into_iter()
            .find(|p| p.comm == "sg-forkserver" && p.state != 'Z')
            .map(|p| p.pid)
    };
    let old = forkserver(&gw).expect("a warm pool under the sidecar");
    let bystander = Bystander::start(&link(&gw, &large_url()), None).await;

    // The extraction's first request is held at the origin: the worker is mid-job.
    origin.set(Mode::Hold);
    let affected = link(&gw, &origin.url("held.mp4"));
    let pending = tokio::spawn(async move { fetch(&affected, &[]).await });
    tokio::time::timeout(BOUND, origin.await_held(1))
        .await
        .expect("the extraction reached the origin");
    kill(Pid::from_raw(old), Signal::SIGKILL).unwrap();

    // Meanwhile another client is served (spawned yt-dlp, or a leftover idle worker).
    let meanwhile = link(&gw, &server().url("progressive.mp4?while-the-pool-is-down"));
    let meanwhile = tokio::spawn(async move { fetch(&meanwhile, &[]).await });
    // The held extraction goes on where it was (released well within yt-dlp's timeouts).
    tokio::time::sleep(Duration::from_millis(500)).await;
    origin.set(Mode::Serve);
    let got = pending.await.unwrap();
    assert_whole(&got, &file, "the job the forkserver had handed out", &gw);
    assert_whole(&meanwhile.await.unwrap(), &file, "meanwhile", &gw);
    bystander.finish("forkserver killed").await;

    let restarted = wait_until(SLOW, || forkserver(&gw).is_some_and(|p| p != old)).await;
    assert!(restarted, "no new forkserver:\n{}", tail(&gw));
    let after = link(&gw, &server().url("progressive.mp4?after-the-restart"));
    assert_whole(&fetch(&after, &[]).await, &file, "after the restart", &gw);
    assert_no_job_left(&gw, "forkserver killed").await;
}

// ---------------------------------------------------------------------------------------
// 2 and 3. An upstream that stalls after its head, or drops mid-body and goes down.

/// A gateway whose sidecar gives up on a silent upstream after 1 s, and a link to `origin`
/// already streamed once (the extraction is cached: the next stream's only upstream
/// requests are the media's).
async fn warm_link(origin: &Origin) -> (Gateway, String) {
    let gw = gateway(&["--stall-timeout=1"]).await;
    let link = link(&gw, &origin.url("media.mp4"));
    assert_whole(&fetch(&link, &[]).await, &progressive(), "warm-up", &gw);
    (gw, link)
}

/// Headers, then silence on every request: the sidecar resumes a few times, each stalls,
/// then it gives up. The client already has its 200 and `Content-Length`: it sees a cut
/// body. Once the origin answers again, the same link is served whole.
#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_that_stalls_after_its_headers_cuts_that_body_only() {
    let file = progressive();
    let origin = Origin::start(file.clone()).await;
    let (gw, link) = warm_link(&origin).await;
    let bystander = Bystander::start(&link_to_large(&gw), None).await;

    origin.set(Mode::StallAfterHead);
    let before = origin.seen().len();
    let started = Instant::now();
    let stalled = fetch(&link, &[]).await;
    let took = started.elapsed();
    assert_cut(&stalled, &file, "a stalled upstream", &gw);
    assert!(stalled.body.is_empty(), "nothing was sent: {stalled:?}");
    let gets = origin.seen()[before..]
        .iter()
        .filter(|s| s.method == "GET")
        .count();
    eprintln!("stalled upstream: cut after {took:?}, {gets} GETs at the origin");
    assert!(gets > 1, "resumed before giving up: {:?}", origin.seen());
    bystander.finish("stalled upstream").await;

    origin.set(Mode::Serve);
    assert_whole(&fetch(&link, &[]).await, &file, "after the stall", &gw);
    assert_no_job_left(&gw, "stalled upstream").await;
}

/// 1 MiB, then the connection closes and the origin is down (every later connection closed
/// at once): the resumes fail and the client's body ends short, its bytes the file's.
#[tokio::test(flavor = "multi_thread")]
async fn an_upstream_that_drops_mid_body_cuts_that_body_only() {
    let file = progressive();
    let origin = Origin::start(file.clone()).await;
    let (gw, link) = warm_link(&origin).await;
    let bystander = Bystander::start(&link_to_large(&gw), None).await;

    origin.set(Mode::DropAfter(MIB));
    let started = Instant::now();
    let dropped = fetch(&link, &[]).await;
    eprintln!(
        "dropped upstream: cut at {} bytes after {:?}",
        dropped.body.len(),
        started.elapsed()
    );
    assert_cut(&dropped, &file, "an upstream gone mid-body", &gw);
    assert!(dropped.body.len() as u64 <= MIB, "{dropped:?}");
    bystander.finish("dropped upstream").await;

    origin.set(Mode::Serve);
    assert_whole(&fetch(&link, &[]).await, &file, "after the drop", &gw);
    assert_no_job_left(&gw, "dropped upstream").await;
}

// ---------------------------------------------------------------------------------------
// 4. The sidecar's socket file deleted under a running gateway.

/// The sidecar notices its socket file is gone and binds it again; running jobs keep their
/// connections. The sidecar is stopped (SIGSTOP) while the file is deleted, so the moment
/// without a socket is certain: a request then gets 503 `sidecar_unavailable`, at once.
#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_sidecar_socket_is_bound_again() {
    let file = progressive();
    let gw = gateway(&[]).await;
    let ok = link(&gw, &server().url("progressive.mp4"));
    assert_whole(&fetch(&ok, &[]).await, &file, "before", &gw);
    let bystander = Bystander::start(&link_to_large(&gw), None).await;
    let sidecar = Pid::from_raw(gw.sidecar_pid().expect("a sidecar") as i32);
    let socket = gw.state_dir().join("sidecar.sock");
    assert!(socket.exists(), "{}", socket.display());

    kill(sidecar, Signal::SIGSTOP).unwrap();
    std::fs::remove_file(&socket).unwrap();
    let refused = fetch(&ok, &[]).await;
    kill(sidecar, Signal::SIGCONT).unwrap();
    assert_problem(&refused, 503, "sidecar_unavailable", "no socket");
    bystander.finish("socket deleted").await;

    assert!(
        wait_until(BOUND, || socket.exists()).await,
        "the socket was not bound again:\n{}",
        tail(&gw)
    );
    assert!(gw.wait_ready(BOUND).await, "{}", tail(&gw));
    assert_eq!(
        gw.sidecar_pid(),
        Some(sidecar.as_raw() as u32),
        "the same sidecar"
    );
    assert_whole(&fetch(&ok, &[]).await, &file, "after", &gw);
}

// ---------------------------------------------------------------------------------------
// 5. A corrupt plugin file at reload.

/// A config whose one tenant `main` runs its policy from the file `policy` with `hosts`.
fn plugin_config(dir: &Path, key: &str, policy: &Path, hosts: &str) -> PathBuf {
    let policy = format!(
        r#"{{ wasm = "{}", config = {{ hosts = "{hosts}", allow_private = "true" }} }}"#,
        policy.display()
    );
    let main = config::tenant("main", &[], &xchacha(key), &policy, "");
    config::write(dir, &format!("default_tenant = \"main\"\n{main}"))
}

/// SIGHUP, then waits for the `count`-th log line containing `marker`.
async fn sighup(gw: &mut Gateway, marker: &str, count: usize) {
    gw.child().signal(Signal::SIGHUP);
    let seen = wait_until(BOUND, || gw.logs().matches(marker).count() >= count).await;
    assert!(seen, "no {marker:?} #{count}:\n{}", tail(gw));
}

/// The policy's file is overwritten with garbage and the gateway told to reload: the
/// reload is refused, logged and counted, the old plugin keeps judging new requests, a
/// running stream is untouched; a good file then reloads (its new config denies the host: 403).
#[tokio::test(flavor = "multi_thread")]
async fn a_corrupt_plugin_at_reload_is_refused_and_the_old_one_serves() {
    const REFUSED: &str = "configuration reload refused";
    const RELOADED: &str = "configuration reloaded";
    const RELOADS: &str = "streamgate_config_reloads_total";
    const LAST_RELOAD_OK: &str = "streamgate_config_last_reload_successful";
    let file = progressive();
    let dir = tempfile::tempdir().unwrap();
    let key = new_key();
    let policy = dir.path().join("policy.wasm");
    std::fs::write(&policy, streamgate::plugin::builtin::POLICY_ALLOWLIST).unwrap();
    let config = plugin_config(dir.path(), &key, &policy, "*");
    let mut gw = Gateway::with_config(&config).await;
    let link_to = |url: &str| gw.stream_url(&mint_for(&config, "main", url, "b"));
    let ok = link_to(&server().url("progressive.mp4"));
    let bystander = Bystander::start(&link_to(&large_url()), None).await;

    // Garbage in a wasm header's clothing, then a component cut in half.
    for (n, bytes) in [
        b"\0asm\x0d\0\x01\0garbage".to_vec(),
        streamgate::plugin::builtin::POLICY_ALLOWLIST[..4096].to_vec(),
    ]
    .into_iter()
    .enumerate()
    {
        std::fs::write(&policy, bytes).unwrap();
        sighup(&mut gw, REFUSED, n + 1).await;
        assert_whole(&fetch(&ok, &[]).await, &file, "the old plugin serves", &gw);
    }
    let refusal = gw
        .logs()
        .lines()
        .find(|l| l.contains(REFUSED))
        .unwrap_or_default()
        .to_owned();
    assert!(
        refusal.contains("ERROR") && refusal.contains("tenant[0].policy: loading the plugin"),
        "the refusal names the plugin: {refusal}"
    );
    let file = config.display().to_string();
    assert!(refusal.contains(&file), "and the file: {refusal}");
    bystander.finish("corrupt plugin").await;
    let refused = gw.metric(RELOADS, "result=\"refused\"").await;
    assert_eq!(refused, Some(2.0));
    let last_ok = gw.metric(LAST_RELOAD_OK, "").await;
    assert_eq!(last_ok, Some(0.0), "an alert can fire on it");

    // A good file (with a config that allows no host) reloads.
    std::fs::write(&policy, streamgate::plugin::builtin::POLICY_ALLOWLIST).unwrap();
    plugin_config(dir.path(), &key, &policy, "nowhere.test");
    sighup(&mut gw, RELOADED, 1).await;
    let denied = fetch(&ok, &[]).await;
    assert_problem(&denied, 403, "policy_denied", "the new plugin's config");
    let applied = gw.metric(RELOADS, "result=\"applied\"").await;
    assert_eq!(applied, Some(1.0));
    assert_eq!(gw.metric(LAST_RELOAD_OK, "").await, Some(1.0));
}

// ---------------------------------------------------------------------------------------
// 6. Redis restarted under gateways that share their limits through it.

/// Two gateways share tenant `a`'s `max_streams = 2` in Redis, each running one stream.
/// Redis dies: a new stream gets 503 `limiter_unavailable` (`on_limiter_error = "deny"`),
/// the running ones go on. Redis comes back empty: the running streams' heartbeats put
/// their slots back, so the limit still holds (a third stream gets 429); both streams
/// complete; once they end, a new one is served.
#[tokio::test(flavor = "multi_thread")]
async fn a_redis_restart_keeps_running_streams_and_their_slots() {
    const KEY: &str = "streamgate:{a}:streams";
    let file = progressive();
    let mut redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let global = format!(
        "redis_url = \"{}\"\nslot_ttl_secs = 3\non_limiter_error = \"deny\"",
        redis.url()
    );
    let limits = TwoTenants {
        a: "max_streams = 2",
        b: "",
        global: &global,
        stall_secs: 30,
    };
    let config = two_tenants(dir.path(), &limits);
    let (gw1, gw2) = (
        Gateway::with_config(&config).await,
        Gateway::with_config(&config).await,
    );
    let large = mint_for(&config, "a", &large_url(), "b");
    let small = mint_for(&config, "a", &server().url("progressive.mp4"), "b");
    let on = |gw: &Gateway, token: &str| gw.stream_url(token);
    let streams = [
        Bystander::start(&on(&gw1, &large), Some("a.test")).await,
        Bystander::start(&on(&gw2, &large), Some("a.test")).await,
    ];
    assert_eq!(redis.zcard(KEY), 2);
    let host = ["-H", "Host: a.test"];
    let third = fetch(&on(&gw1, &small), &host).await;
    assert_problem(&third, 429, "rate_limited", "a's third stream, Redis up");

    redis.stop();
    let down = fetch(&on(&gw2, &small), &host).await;
    assert_problem(&down, 503, "limiter_unavailable", "Redis down");

    redis.restart();
    let back = wait_until(BOUND, || redis.zcard(KEY) == 2).await;
    assert!(
        back,
        "the running streams' slots are back: {}\n{}",
        redis.zcard(KEY),
        tail(&gw1)
    );
    let third = fetch(&on(&gw1, &small), &host).await;
    assert_problem(
        &third,
        429,
        "rate_limited",
        "a's third stream after the restart",
    );

    let [s1, s2] = streams;
    s1.finish("Redis restarted, gateway 1").await;
    s2.finish("Redis restarted, gateway 2").await;
    assert!(wait_until(BOUND, || redis.zcard(KEY) == 0).await);
    let after = fetch(&on(&gw2, &small), &host).await;
    assert_whole(&after, &file, "after the restart", &gw2);
}

// ---------------------------------------------------------------------------------------
// 7. The gateway at its open-files limit.

/// The gateway's `RLIMIT_NOFILE` is lowered (prlimit) to a few descriptors above what it
/// uses, then idle connections take them all: accept fails with EMFILE and pauses, a new
/// client waits unanswered in the backlog, the running stream goes on. Once the idle
/// connections close, that client is answered and new streams are served.
#[tokio::test(flavor = "multi_thread")]
async fn at_its_open_files_limit_the_gateway_pauses_accepting_and_serves_again() {
    let file = progressive();
    let dir = tempfile::tempdir().unwrap();
    // Idle connections are held by the test, not closed by the header timeout.
    let head = "default_tenant = \"main\"\n[server]\nheader_read_timeout_secs = 120\n";
    let main = config::tenant("main", &[], &xchacha(&new_key()), &open_policy(""), "");
    let config = config::write(dir.path(), &(head.to_owned() + &main));
    let gw = Gateway::with_config(&config).await;
    let link_to = |url: &str| gw.stream_url(&mint_for(&config, "main", url, "b"));
    let ok = link_to(&server().url("progressive.mp4"));
    assert_whole(&fetch(&ok, &[]).await, &file, "before", &gw);
    let bystander = Bystander::start(&link_to(&large_url()), None).await;

    let open_fds = || {
        std::fs::read_dir(format!("/proc/{}/fd", gw.pid()))
            .unwrap()
            .count()
    };
    let limit = open_fds() + 8;
    let set = std::process::Command::new("prlimit")
        .arg(format!("--pid={}", gw.pid()))
        .arg(format!("--nofile={limit}:{limit}"))
        .status()
        .expect("run prlimit");
    assert!(set.success(), "prlimit failed");
    let addr = gw.url("").trim_start_matches("http://").to_owned();
    let mut idle = Vec::new();
    for _ in 0..limit {
        idle.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    let at_limit = wait_until(BOUND, || gw.logs().contains("pausing for a second")).await;
    assert!(at_limit, "accept never hit EMFILE:\n{}", tail(&gw));

    // A new client waits in the backlog: no answer while the descriptors are taken.
    let health = gw.url("/healthz");
    let mut waiting = tokio::spawn(async move { fetch(&health, &[]).await });
    let early = tokio::time::timeout(Duration::from_secs(2), &mut waiting).await;
    assert!(early.is_err(), "answered at the limit: {early:?}");

    drop(idle);
    let answered = waiting.await.unwrap();
    assert_eq!((answered.exit, answered.status), (0, 200), "{answered:?}");
    assert_whole(&fetch(&ok, &[]).await, &file, "after", &gw);
    bystander.finish("open-files limit").await;
    assert!(
        std::fs::metadata(format!("/proc/{}", gw.pid())).is_ok(),
        "the gateway runs"
    );
}

// ---------------------------------------------------------------------------------------
// 8. A job process past a limit of its confinement.

/// Address space given to every job process: room for a pool worker's extraction (it
/// starts from the forkserver's ≈ 80 MiB) and a fresh yt-dlp, not for Debian's ffmpeg,
/// whose libraries alone take ≈ 260–320 MiB of mappings.
const TIGHT_MIB: u64 = 192;

/// The sidecar runs every job under `--job-memory-mib 192`: extractions and the natively
/// fetched streams pass, a DASH merge's ffmpeg cannot load its libraries. That client gets
/// a clear 500 before any byte, the log names the flag to raise, a stream under way is
/// untouched, no ffmpeg is left, and the next requests are served.
#[tokio::test(flavor = "multi_thread")]
async fn a_merge_past_the_job_memory_limit_fails_clearly_and_alone() {
    // The premise, checked on this machine's ffmpeg: it cannot start in that space.
    let probe = std::process::Command::new("prlimit")
        .arg(format!("--as={}", TIGHT_MIB * MIB))
        .args(["ffmpeg", "-hide_banner", "-version"])
        .output()
        .expect("run prlimit");
    assert!(
        !probe.status.success(),
        "ffmpeg starts within {TIGHT_MIB} MiB here: pick a smaller limit ({:?})",
        String::from_utf8_lossy(&probe.stdout)
    );
    let file = progressive();
    let limit = format!("--job-memory-mib={TIGHT_MIB}");
    let gw = gateway(&[&limit]).await;
    let bystander = Bystander::start(&link_to_large(&gw), None).await;

    let merge = gw.stream_url(&gw.mint(&server().url("dash/manifest.mpd"), "bv+ba"));
    let failed = fetch(&merge, &[]).await;
    assert_eq!(failed.status, 500, "{failed:?}\n{}", tail(&gw));
    assert_eq!(
        failed.header("content-type"),
        Some("application/problem+json"),
        "{failed:?}"
    );
    let problem: serde_json::Value = serde_json::from_slice(&failed.body).unwrap();
    assert_eq!(problem["status"], 500, "{problem}");
    // The job's error as the sidecar classified it (not the flag as the sidecar was given it).
    let why = "ran out of memory (its address space limit, --job-memory-mib)";
    let named = wait_until(BOUND, || gw.logs().contains(why)).await;
    assert!(named, "the log does not say why:\n{}", tail(&gw));
    let line = gw
        .logs()
        .lines()
        .find(|l| l.contains(why))
        .map(str::to_owned);
    eprintln!(
        "the merge past its memory limit: {}",
        line.unwrap_or_default()
    );
    let ffmpeg_left = || {
        descendants(gw.pid())
            .into_iter()
            .filter(|p| p.comm == "ffmpeg" && p.state != 'Z')
            .count()
    };
    assert!(
        wait_until(Duration::from_secs(10), || ffmpeg_left() == 0).await,
        "an ffmpeg is left"
    );

    bystander.finish("a merge past its memory limit").await;
    let after = link(&gw, &server().url("progressive.mp4?after-the-merge"));
    assert_whole(&fetch(&after, &[]).await, &file, "after", &gw);
    assert_no_job_left(&gw, "a merge past its memory limit").await;
}
