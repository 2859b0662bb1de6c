//! Multi-tenant hosting end to end: tenants chosen by Host, tokens bound to their tenant,
//! `POST /v1/resolve` → pick a format → stream, SIGHUP reloads with key rotation under load,
//! and configurations refused at start and by `check-config`. Real binaries, real yt-dlp.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use futures::StreamExt;
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use streamgate_tests::config::{self, mint_for, open_policy, xchacha};
use streamgate_tests::gateway::*;
use streamgate_tests::*;

/// One `[[tenant]]` with a token-xchacha ring `keys` and the allowlist policy open to
/// loopback URLs plus `policy_extra` fields.
fn tenant(id: &str, hosts: &[&str], keys: &str, policy_extra: &str) -> String {
    config::tenant(id, hosts, &xchacha(keys), &open_policy(policy_extra), "")
}

/// Writes `streamgate.toml` in `dir`; room for many parked jobs in the sidecar.
fn write_config(dir: &Path, head: &str, tenants: &[String]) -> PathBuf {
    let text = format!("{head}\n[sidecar]\nmax_jobs = 32\n{}", tenants.concat());
    config::write(dir, &text)
}

/// `curl -I` (a real job up to the metadata, no media) with a Host header.
async fn head(gw: &Gateway, host: &str, token: &str, extra: &[&str]) -> CurlResult {
    let link = gw.stream_url(token);
    let mut args = vec!["-I".to_owned(), "-H".into(), format!("Host: {host}")];
    args.extend(extra.iter().map(|s| s.to_string()));
    blocking(move || curl(&args.iter().map(String::as_str).collect::<Vec<_>>(), &link)).await
}

/// SIGHUP, then waits for the `count`-th line containing `marker` in the log.
async fn sighup(gw: &mut Gateway, marker: &str, count: usize) {
    gw.child().signal(Signal::SIGHUP);
    let ok = wait_until(Duration::from_secs(30), || {
        gw.logs().matches(marker).count() >= count
    })
    .await;
    assert!(ok, "no {marker:?} #{count}:\n{}", gw.logs());
}

const RELOADED: &str = "configuration reloaded";
const REFUSED: &str = "configuration reload refused";

#[tokio::test(flavor = "multi_thread")]
async fn tokens_work_only_on_their_tenants_host() {
    let dir = tempfile::tempdir().unwrap();
    let (ka, kb) = (plugin_key(), plugin_key());
    let tenants = [
        tenant("a", &["a.test"], &ka, ""),
        tenant(
            "b",
            &["b.test", "www.b.test"],
            &kb,
            r#", api_key = "b-secret""#,
        ),
    ];
    let config = write_config(dir.path(), "", &tenants);
    let mut gw = Gateway::with_config(&config).await;
    let url = server().url("audio-only.m4a");
    let ta = mint_for(&config, "a", &url, "b");
    let tb = mint_for(&config, "b", &url, "b");
    let key = ["-H", "x-api-key: b-secret"];
    let cases: [(&str, &str, &[&str], u16, &str); 8] = [
        ("a.test", &ta, &[], 200, ""),
        ("A.TEST:8080", &ta, &[], 200, ""),
        ("b.test", &ta, &key, 403, "token_denied"),
        ("b.test", &tb, &key, 200, ""),
        ("www.b.test", &tb, &key, 200, ""),
        ("b.test", &tb, &[], 401, "policy_denied"),
        ("a.test", &tb, &[], 403, "token_denied"),
        ("unknown.test", &ta, &[], 404, "unknown_host"),
    ];
    for (host, token, extra, status, code) in cases {
        let r = head(&gw, host, token, extra).await;
        if status == 200 {
            assert_eq!(r.status, 200, "{host}: {r:?}\n{}", gw.logs());
        } else if r.status != status {
            panic!("{host} {code}: {status} expected, got {r:?}");
        }
        // HEAD carries no problem body: check the code with a GET.
        if status != 200 {
            let (link, h) = (gw.stream_url(token), format!("Host: {host}"));
            let mut args = vec!["-H".to_owned(), h];
            args.extend(extra.iter().map(|s| s.to_string()));
            let get =
                blocking(move || curl(&args.iter().map(String::as_str).collect::<Vec<_>>(), &link))
                    .await;
            assert_problem(&get, status, code, host);
        }
        eprintln!("{host} with {}'s token → {status}", &token[..8]);
    }
    // The same tenants with `default_tenant`: unknown hosts now belong to `a`.
    write_config(dir.path(), "default_tenant = \"a\"", &tenants);
    sighup(&mut gw, RELOADED, 1).await;
    assert_eq!(head(&gw, "unknown.test", &ta, &[]).await.status, 200);
    assert_eq!(head(&gw, "unknown.test", &tb, &[]).await.status, 403);
}

fn plugin_key() -> String {
    streamgate::plugin::builtin::xchacha_generate_key()
}

/// `POST /v1/resolve` with a Host header and a raw body.
async fn resolve(gw: &Gateway, host: &str, body: &str, extra: &[&str]) -> CurlResult {
    let mut args: Vec<String> = ["-X", "POST", "-H", "content-type: application/json"]
        .map(String::from)
        .into();
    args.extend(["-H".into(), format!("Host: {host}"), "--data-binary".into()]);
    args.push(body.to_owned());
    args.extend(extra.iter().map(|s| s.to_string()));
    let url = gw.url("/v1/resolve");
    blocking(move || curl(&args.iter().map(String::as_str).collect::<Vec<_>>(), &url)).await
}

#[tokio::test(flavor = "multi_thread")]
async fn resolve_then_stream_every_fixture_kind() {
    let dir = tempfile::tempdir().unwrap();
    let tenants = [
        tenant(
            "media",
            &["media.test"],
            &plugin_key(),
            r#", public_resolve = "true""#,
        ),
        tenant(
            "keyed",
            &["keyed.test"],
            &plugin_key(),
            r#", api_key = "k""#,
        ),
        // Neither a key nor `public_resolve` nor `resolve_clients`: nobody may resolve.
        tenant("closed", &["closed.test"], &plugin_key(), ""),
    ];
    let config = write_config(dir.path(), "", &tenants);
    let gw = Gateway::with_config(&config).await;
    for path in [
        "progressive.mp4",
        "video-only.mp4",
        "audio-only.m4a",
        "hls/index.m3u8",
        "dash/manifest.mpd",
    ] {
        let source = server().url(path);
        let started = Instant::now();
        let r = resolve(
            &gw,
            "media.test",
            &json!({ "url": source }).to_string(),
            &[],
        )
        .await;
        assert_eq!(r.status, 200, "{path}: {r:?}\n{}", gw.logs());
        assert_eq!(r.header("content-type"), Some("application/json"));
        let info: Value = serde_json::from_slice(&r.body).unwrap();
        assert!(info["title"].is_string(), "{path}: {info}");
        // Direct files have no duration (yt-dlp's generic extractor does not probe them).
        assert!(info.get("duration").is_some() && info.get("thumbnail").is_some());
        assert_eq!(info["format"], "best");
        let formats = info["formats"].as_array().expect("formats");
        assert!(!formats.is_empty(), "{path}: {info}");
        // yt-dlp lists formats worst first: take the best single format.
        let pick = formats.last().unwrap();
        let (id, link) = (
            pick["id"].as_str().unwrap(),
            pick["stream_url"].as_str().unwrap(),
        );
        assert!(link.starts_with("/v1/stream?data="), "{link}");
        let l = gw.url(link);
        let get = blocking(move || curl(&["-H", "Host: media.test"], &l)).await;
        assert_eq!((get.exit, get.status), (0, 200), "{path} -f {id}: {get:?}");
        let (u, f) = (source.clone(), id.to_owned());
        // The sidecar fetches every fixture kind itself: yt-dlp's default downloaders are
        // the reference.
        let direct = blocking(move || direct_ytdlp(&u, &f, &[])).await;
        assert_eq!(sha256_hex(&get.body), sha256_hex(&direct), "{path} -f {id}");
        // The same link is bound to its tenant.
        let l = gw.url(link);
        let foreign = blocking(move || curl(&["-H", "Host: keyed.test"], &l)).await;
        assert_eq!(foreign.status, 403, "{path}: another tenant's link");
        eprintln!(
            "{path}: {} formats, -f {id}: {} bytes = direct yt-dlp, in {:?}",
            formats.len(),
            get.body.len(),
            started.elapsed()
        );
    }
    // The top-level link is the requested selector.
    let source = server().url("progressive.mp4");
    let r = resolve(
        &gw,
        "media.test",
        &json!({ "url": source, "format": "b" }).to_string(),
        &[],
    )
    .await;
    let info: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(info["format"], "b");
    let l = gw.url(info["stream_url"].as_str().unwrap());
    let get = blocking(move || curl(&["-H", "Host: media.test"], &l)).await;
    assert_eq!(
        get.body,
        std::fs::read(fixtures().join("progressive.mp4")).unwrap()
    );

    let good = json!({ "url": source }).to_string();
    let big = json!({ "url": format!("{source}?{}", "x".repeat(20_000)) }).to_string();
    let missing = json!({ "url": server().url("nope.mp4") }).to_string();
    let cases = [
        ("media.test", "{not json", 400, "bad_request", &[][..]),
        (
            "media.test",
            r#"{"url":"http://x/","fromat":"b"}"#,
            400,
            "bad_request",
            &[],
        ),
        ("media.test", r#"{"format":"b"}"#, 400, "bad_request", &[]),
        ("media.test", &big, 413, "payload_too_large", &[]),
        ("media.test", &missing, 404, "not_found", &[]),
        (
            "media.test",
            r#"{"url":"file:///etc/passwd"}"#,
            400,
            "bad_url",
            &[],
        ),
        (
            "media.test",
            &json!({ "url": source, "format": "18,22" }).to_string(),
            400,
            "bad_format",
            &[],
        ),
        ("keyed.test", &good, 401, "policy_denied", &[]),
        ("closed.test", &good, 401, "policy_denied", &[]),
        ("nobody.test", &good, 404, "unknown_host", &[]),
    ];
    for (host, body, status, code, extra) in cases {
        let r = resolve(&gw, host, body, extra).await;
        assert_problem(&r, status, code, &format!("{host} {body:.40}"));
    }
    let r = resolve(&gw, "closed.test", &good, &[]).await;
    let p: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(
        p["detail"], "request denied by policy-allowlist: resolve needs credentials",
        "{p}"
    );
    let r = resolve(&gw, "keyed.test", &good, &["-H", "x-api-key: k"]).await;
    assert_eq!(r.status, 200, "the policy's API key opens resolve: {r:?}");
}

/// Reads a stream: the first chunk, then waits for `go`, then the rest; (size, sha256).
async fn parked_read(
    resp: reqwest::Response,
    started: tokio::sync::mpsc::Sender<()>,
    mut go: tokio::sync::watch::Receiver<bool>,
) -> (u64, String) {
    use sha2::Digest;
    let mut body = resp.bytes_stream();
    let mut hash = sha2::Sha256::new();
    let mut size = 0u64;
    let first = body.next().await.expect("a first chunk").expect("chunk");
    hash.update(&first);
    size += first.len() as u64;
    started.send(()).await.unwrap();
    go.wait_for(|go| *go).await.unwrap();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.expect("the stream completes");
        hash.update(&chunk);
        size += chunk.len() as u64;
    }
    (size, hex::encode(hash.finalize()))
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_rotates_keys_while_twenty_streams_run() {
    const STREAMS: usize = 20;
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (plugin_key(), plugin_key());
    let ring = |keys: &str| [tenant("t", &["t.test"], keys, "")];
    let config = write_config(dir.path(), "", &ring(&old));
    let mut gw = Gateway::with_config(&config).await;
    let small = server().url("audio-only.m4a");
    let old_token = mint_for(&config, "t", &small, "b");
    let large = mint_for(&config, "t", &large_url(), "b");

    let http = reqwest::Client::new();
    let (started_tx, mut started_rx) = tokio::sync::mpsc::channel(STREAMS);
    let (go_tx, go_rx) = tokio::sync::watch::channel(false);
    let mut readers = Vec::new();
    for _ in 0..STREAMS {
        let req = http.get(gw.stream_url(&large)).header("host", "t.test");
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 200, "{}", gw.logs());
        let (tx, rx) = (started_tx.clone(), go_rx.clone());
        readers.push(tokio::spawn(parked_read(resp, tx, rx)));
    }
    for _ in 0..STREAMS {
        started_rx.recv().await.unwrap();
    }
    let t = Instant::now();
    // Rotation: the new key first (it seals), the old one still opens.
    write_config(dir.path(), "", &ring(&format!("{new},{old}")));
    sighup(&mut gw, RELOADED, 1).await;
    let new_token = mint_for(&config, "t", &small, "b");
    assert_ne!(
        &new_token[..20],
        &old_token[..20],
        "sealed with another key"
    );
    assert_eq!(head(&gw, "t.test", &new_token, &[]).await.status, 200);
    assert_eq!(head(&gw, "t.test", &old_token, &[]).await.status, 200);
    // A broken file is refused; the rotated ring stays in force.
    std::fs::write(&config, "lisen = \"x\"\n").unwrap();
    sighup(&mut gw, REFUSED, 1).await;
    assert!(gw.logs().contains("unknown field `lisen`"), "{}", gw.logs());
    assert_eq!(head(&gw, "t.test", &new_token, &[]).await.status, 200);
    assert_eq!(head(&gw, "t.test", &old_token, &[]).await.status, 200);
    // The old key leaves the ring: its links stop working, the new ones go on.
    write_config(dir.path(), "", &ring(&new));
    sighup(&mut gw, RELOADED, 2).await;
    assert_eq!(head(&gw, "t.test", &old_token, &[]).await.status, 403);
    assert_eq!(head(&gw, "t.test", &new_token, &[]).await.status, 200);
    eprintln!(
        "three reloads with {STREAMS} streams parked: {:?}",
        t.elapsed()
    );

    let t = Instant::now();
    go_tx.send(true).unwrap();
    let expected_size = std::fs::metadata(large_fixture()).unwrap().len();
    let expected = sha256_file(large_fixture()).unwrap();
    for reader in readers {
        let (size, hash) = reader.await.unwrap();
        assert_eq!((size, hash.as_str()), (expected_size, expected.as_str()));
    }
    eprintln!(
        "{STREAMS} × {expected_size} bytes complete and identical after the reloads in {:?}",
        t.elapsed()
    );
}

/// `streamgate ARGS` with the state dir in `dir`; (exit status, stderr).
fn run(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let out = Command::new(release_bin("streamgate"))
        .args(args)
        .envs(env.iter().copied())
        .env_remove("RUST_BACKTRACE")
        .env("STREAMGATE_STATE_DIR", dir.join("state"))
        .output()
        .expect("run streamgate");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn invalid_configs_are_refused_with_the_field_named() {
    let dir = tempfile::tempdir().unwrap();
    let key = plugin_key();
    let ok = tenant("a", &["a.test"], &key, "");
    let cases = [
        ("lisen = \"0.0.0.0:1\"".to_owned(), "unknown field `lisen`"),
        (
            ok.replace(&format!("\"{key}\""), "{ env = \"SG_TEST_UNSET_KEYS\" }"),
            "tenant[0].token.config.keys: environment variable SG_TEST_UNSET_KEYS is not set",
        ),
        (
            ok.replace(
                "builtin = \"policy-allowlist\"",
                "wasm = \"/nonexistent/p.wasm\"",
            ),
            "tenant[0].policy.wasm: reading /nonexistent/p.wasm",
        ),
        (
            format!("{ok}{}", tenant("b", &["A.test"], &key, "")),
            "tenant[1].hosts: \"A.test\" already belongs to another tenant",
        ),
        (
            ok.replace("policy-allowlist", "policy-alowlist"),
            "tenant[0].policy.builtin: no built-in plugin \"policy-alowlist\"",
        ),
        (
            ok.replace(LOOPBACK_EGRESS, r#"{ allow_cidrs = ["10.0.0.0/33"] }"#),
            "tenant[0].egress.allow_cidrs: \"10.0.0.0/33\" is not an address block",
        ),
        (
            ok.replace(
                LOOPBACK_EGRESS,
                r#"{ proxy = { env = "SG_TEST_UNSET_PROXY" } }"#,
            ),
            "tenant[0].egress.proxy: environment variable SG_TEST_UNSET_PROXY is not set",
        ),
        (
            ok.replace(LOOPBACK_EGRESS, r#"{ proxy = "https://proxy:3128" }"#),
            "tenant[0].egress.proxy: not of the form http://[user:pass@]host:port",
        ),
    ];
    for (text, expected) in cases {
        let text = if text.contains("[[tenant]]") {
            text
        } else {
            format!("{text}\n{ok}")
        };
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, &text).unwrap();
        let f = file.display().to_string();
        let started = Instant::now();
        let serve = ["serve", "--config", &f, "--listen", "127.0.0.1:0"];
        let (code, stderr) = run(dir.path(), &serve, &[]);
        assert!(code.is_some_and(|c| c != 0), "serve must fail: {stderr}");
        assert!(
            stderr.contains(expected),
            "serve: {expected:?} in\n{stderr}"
        );
        let (code, stderr) = run(dir.path(), &["check-config", &f], &[]);
        assert_eq!(code, Some(1), "{stderr}");
        assert!(
            stderr.contains(expected),
            "check-config: {expected:?} in\n{stderr}"
        );
        eprintln!("refused in {:?}: {expected}", started.elapsed());
    }
    assert!(run(dir.path(), &["check-config", "/nonexistent.toml"], &[]).0 == Some(1));
}

#[test]
fn the_example_config_passes_check_config() {
    let dir = tempfile::tempdir().unwrap();
    let example = repo_root().join("examples/streamgate.toml");
    let example = example.display().to_string();
    let (k1, k2) = (plugin_key(), plugin_key());
    let env = [
        ("MEDIA_TOKEN_KEYS", k1.as_str()),
        ("PARTNER_TOKEN_KEYS", k2.as_str()),
        ("PARTNER_API_KEY", "partner-secret"),
    ];
    let (code, stderr) = run(dir.path(), &["check-config", &example], &env);
    assert_eq!(code, Some(0), "{stderr}");
    // Without its secrets it is refused, naming the first one missing.
    let (code, stderr) = run(dir.path(), &["check-config", &example], &env[1..]);
    assert_eq!(code, Some(1));
    assert!(
        stderr.contains("tenant[0].token.config.keys: environment variable MEDIA_TOKEN_KEYS"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_rereads_the_embedded_defaults_key_file() {
    let mut gw = Gateway::start(GatewayOptions::default()).await;
    let small = server().url("audio-only.m4a");
    let key_file = gw.state_dir().join("token.key");
    let old_ring = std::fs::read_to_string(&key_file).unwrap();
    let old = gw.mint(&small, "b");
    let new_key = plugin_key();
    std::fs::write(&key_file, format!("{new_key},{}", old_ring.trim())).unwrap();
    sighup(&mut gw, RELOADED, 1).await;
    let new = gw.mint(&small, "b");
    for token in [&old, &new] {
        assert_eq!(head(&gw, "127.0.0.1", token, &[]).await.status, 200);
    }
    std::fs::write(&key_file, &new_key).unwrap();
    sighup(&mut gw, RELOADED, 2).await;
    assert_eq!(head(&gw, "127.0.0.1", &old, &[]).await.status, 403);
    assert_eq!(head(&gw, "127.0.0.1", &new, &[]).await.status, 200);
}
