//! The policy plugins written in JavaScript (`plugins/policy-js`, componentize-js) and Python
//! (`plugins/policy-py`, componentize-py), built by `scripts/build-lang-plugins`, loaded by a
//! real gateway from `policy = { wasm = "path", config = {…} }` and judging real requests: the
//! allowed ones stream the fixture byte for byte through the sidecar, the denied ones get the
//! plugin's 4xx and reason as a problem, and the plugins' `log` lines reach the gateway log.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use streamgate::plugin::{
    EngineSettings, PluginEngine, StreamRequest, TokenPlugin, builtin, unix_now,
};
use streamgate_tests::gateway::*;
use streamgate_tests::*;

/// The two components, built (or found up to date) once per test binary.
fn components() -> &'static (PathBuf, PathBuf) {
    static BUILT: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    BUILT.get_or_init(|| {
        let root = repo_root();
        let status = Command::new(root.join("scripts/build-lang-plugins"))
            .status()
            .expect("run scripts/build-lang-plugins");
        assert!(status.success(), "scripts/build-lang-plugins: {status}");
        let out = root.join("target/plugins-lang");
        (out.join("policy-js.wasm"), out.join("policy-py.wasm"))
    })
}

/// One tenant on `host` whose links are sealed with `key` and judged by the component at
/// `wasm` with `config` (TOML inline-table entries).
fn tenant(id: &str, key: &str, wasm: &Path, config: &str) -> String {
    format!(
        r#"
[[tenant]]
id = "{id}"
hosts = ["{id}.test"]
token = {{ builtin = "token-xchacha", config = {{ keys = "{key}" }} }}
policy = {{ wasm = "{}", config = {{ {config} }} }}
egress = {LOOPBACK_EGRESS}
"#,
        wasm.display()
    )
}

/// The tenants' token plugin with their key, to seal links in-process (`streamgate mint
/// --config` would compile every tenant's plugin first, half a minute each for these two).
fn sealer(key: &str) -> TokenPlugin {
    let engine = PluginEngine::new(EngineSettings::default()).unwrap();
    let config = [("keys".to_owned(), key.to_owned())].into();
    engine
        .load_token("token-xchacha", builtin::TOKEN_XCHACHA, config)
        .unwrap()
}

/// A link for `tenant` to `url`, valid for an hour.
async fn seal(plugin: &TokenPlugin, tenant: &str, url: &str, filename: Option<&str>) -> String {
    let req = StreamRequest {
        url: url.to_owned(),
        format: "b".into(),
        filename: filename.map(str::to_owned),
        expires_at: Some(unix_now() + 3600),
    };
    plugin.seal(tenant, &req).await.unwrap().unwrap()
}

/// `GET` the link on the tenant's host, with extra curl arguments.
async fn get(gw: &Gateway, tenant: &str, token: &str, extra: &[&str]) -> CurlResult {
    let mut args = vec!["-H".to_owned(), format!("Host: {tenant}.test")];
    args.extend(extra.iter().map(|s| s.to_string()));
    let link = gw.stream_url(token);
    blocking(move || curl(&args.iter().map(String::as_str).collect::<Vec<_>>(), &link)).await
}

/// A policy refusal: the status, `policy_denied`, and the plugin's reason in the detail.
fn assert_denied(r: &CurlResult, status: u16, plugin: &str, reason: &str) {
    assert_problem(r, status, "policy_denied", reason);
    let p: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(
        p["detail"],
        format!("request denied by {plugin}: {reason}"),
        "{p}"
    );
}

/// The fixture's bytes arrived whole.
fn assert_fixture(r: &CurlResult, what: &str) {
    let want = std::fs::read(fixtures().join("audio-only.m4a")).unwrap();
    assert_eq!((r.exit, r.status), (0, 200), "{what}: {r:?}");
    assert_eq!(
        sha256_hex(&r.body),
        sha256_hex(&want),
        "{what}: bytes differ"
    );
}

/// `HH:MM` of the UTC minute `offset` minutes from now (wrapping at midnight).
fn utc_clock(offset: i64) -> String {
    let minute = (unix_now() as i64 / 60 + offset).rem_euclid(24 * 60);
    format!("{:02}:{:02}", minute / 60, minute % 60)
}

#[tokio::test(flavor = "multi_thread")]
async fn javascript_and_python_policies_allow_and_deny_through_the_gateway() {
    let (js, py) = components();
    let dir = tempfile::tempdir().unwrap();
    let key = builtin::xchacha_generate_key();
    let sealer = sealer(&key);
    // Open for the hour around now; `closed` opens in two hours (both wrap past midnight).
    let open = format!("{}-{}", utc_clock(-60), utc_clock(60));
    let shut = format!("{}-{}", utc_clock(120), utc_clock(180));
    let tenants = [
        tenant(
            "js",
            &key,
            js,
            r#"api_keys = "key-one, key-two", hosts = "127.0.0.1, *.media.test""#,
        ),
        tenant(
            "py",
            &key,
            py,
            &format!(r#"hours = "{open}", max_filename_length = "12""#),
        ),
        tenant("closed", &key, py, &format!(r#"hours = "{shut}""#)),
    ];
    // Verdicts, not speed, are under test: on a loaded 2-core machine (load 8) a fresh
    // Python instance once took longer than the default 50 ms (figures: docs/plugins.md).
    let head = "[plugins]\ndeadline_ms = 1000\n";
    let config = dir.path().join("streamgate.toml");
    std::fs::write(&config, format!("{head}{}", tenants.concat())).unwrap();
    let gw = Gateway::start(GatewayOptions {
        config: Some(config),
        allow_private_urls: false,
        ..GatewayOptions::default()
    })
    .await;

    let url = server().url("audio-only.m4a");
    // The same URL under a host name the JS policy does not list (never fetched).
    let elsewhere = url.replace("127.0.0.1", "localhost");

    // JavaScript: an API key from the tenant's list, and a listed host.
    let t = seal(&sealer, "js", &url, None).await;
    let r = get(&gw, "js", &t, &["-H", "x-api-key: key-two"]).await;
    assert_fixture(&r, "js: listed host, second key");
    let r = get(&gw, "js", &t, &[]).await;
    assert_denied(&r, 401, "policy-js", "missing API key (header x-api-key)");
    let r = get(&gw, "js", &t, &["-H", "x-api-key: key-three"]).await;
    assert_denied(&r, 401, "policy-js", "invalid API key");
    let t = seal(&sealer, "js", &elsewhere, None).await;
    let r = get(&gw, "js", &t, &["-H", "x-api-key: key-one"]).await;
    assert_denied(&r, 403, "policy-js", "host localhost is not allowed");

    // Python: inside service hours, the file name cut to 12 characters, extension kept.
    let t = seal(&sealer, "py", &url, Some("a-very-long-recording.m4a")).await;
    let r = get(&gw, "py", &t, &[]).await;
    assert_fixture(&r, "py: inside service hours");
    let disposition = r.header("content-disposition").unwrap_or_default();
    assert!(
        disposition.starts_with("attachment; filename=\"a-very-l.m4a\""),
        "{disposition}"
    );
    let t = seal(&sealer, "closed", &url, None).await;
    let r = get(&gw, "closed", &t, &[]).await;
    assert_denied(
        &r,
        403,
        "policy-py",
        &format!("outside service hours ({shut} UTC)"),
    );
    // Resolve is refused before yt-dlp runs.
    let body = format!(r#"{{"url": "{url}"}}"#);
    let args = [
        "-X",
        "POST",
        "-H",
        "Host: py.test",
        "-H",
        "content-type: application/json",
        "--data-binary",
    ]
    .map(String::from);
    let (resolve, mut args) = (gw.url("/v1/resolve"), args.to_vec());
    args.push(body);
    let r = blocking(move || {
        curl(
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
            &resolve,
        )
    })
    .await;
    assert_denied(&r, 403, "policy-py", "resolve is disabled for this tenant");

    // Both plugins' `log` calls are in the gateway log, tagged with the plugin.
    let logs = gw.logs();
    for line in [
        "denied (401): invalid API key",
        "denied (403): host localhost is not allowed",
        "filename shortened to 'a-very-l.m4a'",
        "denied (403): resolve is disabled for this tenant",
    ] {
        assert!(
            logs.contains(line),
            "no {line:?} in the gateway log:\n{logs}"
        );
    }
}
