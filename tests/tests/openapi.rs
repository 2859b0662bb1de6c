//! `docs/openapi.yaml` against the real gateway: the document is valid OpenAPI 3.1
//! (`openapi-spec-validator`), and a scripted sequence of real requests — every route, its
//! success and each error a test can reach — is recorded and checked against it by
//! `tests/openapi/check.py` (openapi-core): status, media type, required headers, body shape.
//! Each exchange also asserts the status and problem code it is there to reach, so a changed
//! answer cannot silently drop a case the document describes.

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;
use futures::StreamExt as _;
use reqwest::Method;
use serde_json::{Value, json};
use streamgate_tests::gateway::*;
use streamgate_tests::paths::target_dir;
use streamgate_tests::*;

/// Media bodies are recorded up to this many bytes (their content has no schema).
const BODY_CAP: usize = 64 * 1024;

/// The API key of tenant `main`, in the header its policy names.
const MAIN_KEY: (&str, &str) = ("x-media-key", "main-secret");

fn document() -> PathBuf {
    repo_root().join("docs/openapi.yaml")
}

fn venv_bin(name: &str) -> PathBuf {
    repo_root().join(".venv/bin").join(name)
}

#[test]
fn the_document_is_valid_openapi_3_1() {
    let out = Command::new(venv_bin("openapi-spec-validator"))
        .args(["--schema", "3.1"])
        .arg(document())
        .output()
        .expect("run .venv/bin/openapi-spec-validator (scripts/setup installs it)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let head: String = stdout.lines().take(8).collect::<Vec<_>>().join("\n");
    assert!(out.status.success(), "{head}");
    assert!(stdout.trim_end().ends_with(": OK"), "{head}");
}

/// Three tenants chosen by Host, one key ring (so only the tenant binding refuses a foreign
/// token): `main` (127.0.0.1) asks for an API key in its own header; `other` (other.test)
/// allows one host the fixtures are not on and no anonymous resolve; `full` (full.test)
/// allows no stream and one resolve a minute. No `default_tenant`: any other host is
/// `unknown_host`.
fn write_config(dir: &Path) -> PathBuf {
    let key = streamgate::plugin::builtin::xchacha_generate_key();
    let token = format!(r#"{{ builtin = "token-xchacha", config = {{ keys = "{key}" }} }}"#);
    let (header, secret) = MAIN_KEY;
    let text = format!(
        r#"
[server]
resolve_body_timeout_secs = 1

[[tenant]]
id = "main"
hosts = ["127.0.0.1"]
token = {token}
policy = {{ builtin = "policy-allowlist", config = {{ hosts = "*", allow_private = "true", api_key = "{secret}", api_key_header = "{header}" }} }}
egress = {LOOPBACK_EGRESS}

[[tenant]]
id = "other"
hosts = ["other.test"]
token = {token}
policy = {{ builtin = "policy-allowlist", config = {{ hosts = "allowed.example" }} }}
egress = {LOOPBACK_EGRESS}

[[tenant]]
id = "full"
hosts = ["full.test"]
token = {token}
policy = {{ builtin = "policy-allowlist", config = {{ hosts = "*", allow_private = "true", public_resolve = "true" }} }}
egress = {LOOPBACK_EGRESS}
limits = {{ max_streams = 0, resolves_per_minute = 1 }}
"#
    );
    let path = dir.join("streamgate.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// One request of the script.
struct Ask<'a> {
    name: &'a str,
    method: Method,
    /// Path and query.
    target: String,
    host: Option<&'a str>,
    headers: Vec<(&'a str, &'a str)>,
    body: Option<reqwest::Body>,
    /// The status this request is there to reach, and the problem `code` when it is one.
    expect: (u16, Option<&'a str>),
}

impl<'a> Ask<'a> {
    fn new(name: &'a str, method: Method, target: impl Into<String>, status: u16) -> Self {
        Ask {
            name,
            method,
            target: target.into(),
            host: None,
            headers: Vec::new(),
            body: None,
            expect: (status, None),
        }
    }

    fn problem(mut self, code: &'a str) -> Self {
        self.expect.1 = Some(code);
        self
    }

    fn host(mut self, host: &'a str) -> Self {
        self.host = Some(host);
        self
    }

    fn header(mut self, name: &'a str, value: &'a str) -> Self {
        self.headers.push((name, value));
        self
    }

    fn keyed(self) -> Self {
        self.header(MAIN_KEY.0, MAIN_KEY.1)
    }

    fn json(self, body: &str) -> Self {
        self.header("content-type", "application/json")
            .body(body.to_owned())
    }

    fn body(mut self, body: impl Into<reqwest::Body>) -> Self {
        self.body = Some(body.into());
        self
    }
}

/// Sends each request as is and keeps what went and came back, for check.py.
struct Recorder {
    http: reqwest::Client,
    base: String,
    authority: String,
    exchanges: Vec<Value>,
}

impl Recorder {
    fn new(gw: &Gateway) -> Self {
        let base = gw.url("");
        let authority = base.trim_start_matches("http://").to_owned();
        Recorder {
            http: reqwest::Client::new(),
            base,
            authority,
            exchanges: Vec::new(),
        }
    }

    /// Sends `ask`, records it and checks it reached what it is there for; returns the body.
    async fn send(&mut self, ask: Ask<'_>) -> Vec<u8> {
        let mut req = self
            .http
            .request(ask.method.clone(), format!("{}{}", self.base, ask.target));
        let host = ask.host.unwrap_or(&self.authority);
        req = req.header("host", host);
        for (k, v) in &ask.headers {
            req = req.header(*k, *v);
        }
        if let Some(body) = ask.body {
            req = req.body(body);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", ask.name));
        let status = resp.status().as_u16();
        let headers: Vec<(String, String)> = resp
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
            .collect();
        let body = resp.bytes().await.expect("whole body").to_vec();
        let (path, query) = ask.target.split_once('?').unwrap_or((&ask.target, ""));
        let kept = &body[..body.len().min(BODY_CAP)];
        self.exchanges.push(json!({
            "name": ask.name,
            "method": ask.method.as_str(),
            "host": host,
            "path": path,
            "query": query,
            "request_headers": ask.headers,
            "status": status,
            "headers": headers,
            "body_b64": base64::engine::general_purpose::STANDARD.encode(kept),
            "body_len": body.len(),
            "truncated": kept.len() < body.len(),
        }));
        let shown = String::from_utf8_lossy(&body[..body.len().min(512)]);
        assert_eq!(status, ask.expect.0, "{}: {headers:?} {shown}", ask.name);
        if let Some(code) = ask.expect.1
            && ask.method != Method::HEAD
        {
            let problem: Value = serde_json::from_slice(&body).unwrap_or_default();
            assert_eq!(problem["code"], code, "{}: {shown}", ask.name);
        }
        body
    }

    /// Header `name` (lower-case) of the last response.
    fn last_header(&self, name: &str) -> Option<String> {
        let headers = self.exchanges.last()?["headers"].as_array()?;
        let pair = headers.iter().find(|h| h[0] == name)?;
        pair[1].as_str().map(str::to_owned)
    }

    /// Runs check.py over everything recorded; its report on failure.
    fn check(&self) {
        let dir = target_dir().join("openapi");
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("exchanges.json");
        // The sidecar's job codes: most need a broken upstream or sidecar to reach.
        let codes: Vec<&str> = streamgate_protocol::ErrorCode::ALL
            .iter()
            .map(|c| c.as_str())
            .collect();
        let recorded = json!({ "exchanges": self.exchanges, "problem_codes": codes });
        std::fs::write(&file, serde_json::to_vec_pretty(&recorded).unwrap()).unwrap();
        let out = Command::new(venv_bin("python"))
            .arg(repo_root().join("tests/openapi/check.py"))
            .arg(document())
            .arg(&file)
            .output()
            .expect("run .venv/bin/python tests/openapi/check.py");
        let report = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        println!("{report}");
        assert!(
            out.status.success(),
            "responses the document does not describe ({}):\n{report}{stderr}",
            file.display()
        );
        let summary = report.lines().last().unwrap_or_default();
        let want = format!("{} exchanges,", self.exchanges.len());
        assert!(summary.starts_with(&want), "{summary}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_route_answers_as_the_document_says() {
    let origin = FixtureServer::start(fixtures());
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let gw = Gateway::start(GatewayOptions {
        config: Some(config.clone()),
        allow_private_urls: false,
        ..GatewayOptions::default()
    })
    .await;
    let cfg = config.display().to_string();
    let media = origin.url("/progressive.mp4");
    let mint_for = |tenant: &str, url: &str, format: &str| {
        mint(&[
            "--config", &cfg, "--tenant", tenant, "--url", url, "--format", format,
        ])
    };
    let main = mint_for("main", &media, "b");
    let other = mint_for("other", &media, "b");
    let full = mint_for("full", &media, "b");
    let two_formats = mint_for("main", &media, "18,22");
    let no_format = mint_for("main", &media, "999");
    let missing = mint_for("main", &origin.url("/missing.mp4"), "b");
    let loaded = streamgate::config::Config::load(&config).unwrap();
    let expired = seal_expired_for(&loaded, Some("main"), &media).await;
    let mut tampered = main.clone().into_bytes();
    let last = tampered.len() - 1;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    let size = std::fs::metadata(fixtures().join("progressive.mp4"))
        .unwrap()
        .len();
    let past_end = format!("bytes={size}-");
    let resolve_body = json!({ "url": media }).to_string();
    let big_body = format!(r#"{{"url":"{}"}}"#, "a".repeat(17 * 1024));

    let mut rec = Recorder::new(&gw);
    use Method as M;
    // Probes (metrics are on the admin listener).
    for m in [M::GET, M::HEAD] {
        rec.send(Ask::new("liveness", m.clone(), "/healthz", 200))
            .await;
        rec.send(Ask::new("readiness", m.clone(), "/readyz", 200))
            .await;
    }

    // The page and its files.
    for m in [M::GET, M::HEAD] {
        rec.send(Ask::new("the page", m.clone(), "/", 200)).await;
        for file in ["app.js", "style.css", "icon.svg"] {
            rec.send(Ask::new(
                "a page file",
                m.clone(),
                format!("/web/{file}"),
                200,
            ))
            .await;
        }
    }
    let etag = rec
        .last_header("etag")
        .expect("the page's files have an ETag");
    rec.send(Ask::new("the page, still fresh", M::GET, "/", 304).header("if-none-match", "*"))
        .await;
    let file = "/web/icon.svg";
    rec.send(
        Ask::new("a page file, still fresh", M::GET, file, 304).header("if-none-match", &etag),
    )
    .await;
    rec.send(
        Ask::new("the page of no tenant", M::GET, "/", 404)
            .host("nobody.test")
            .problem("unknown_host"),
    )
    .await;
    rec.send(Ask::new("no such page file", M::GET, "/web/nope.js", 404).problem("route_not_found"))
        .await;

    // Media: whole, HEAD, ranges, both paths.
    let link = |path: &str, token: &str| format!("{path}?data={token}");
    for path in ["/stream", "/v1/stream"] {
        let whole = rec
            .send(Ask::new("whole media", M::GET, link(path, &main), 200).keyed())
            .await;
        assert_eq!(whole.len() as u64, size, "the whole fixture");
        rec.send(Ask::new("media head", M::HEAD, link(path, &main), 200).keyed())
            .await;
    }
    let t = link("/v1/stream", &main);
    let part = rec
        .send(
            Ask::new("a range", M::GET, &t, 206)
                .keyed()
                .header("range", "bytes=100-1123"),
        )
        .await;
    assert_eq!(part.len(), 1024);
    rec.send(
        Ask::new("a suffix range", M::GET, &t, 206)
            .keyed()
            .header("range", "bytes=-500"),
    )
    .await;
    let get = |name, target: &str, status| Ask::new(name, M::GET, target, status).keyed();
    let whole_anyway = [
        get("If-Range: the whole media", &t, 200)
            .header("range", "bytes=0-99")
            .header("if-range", "\"an-etag\""),
        get("several ranges: the whole media", &t, 200).header("range", "bytes=0-9,20-29"),
        get("another unit: the whole media", &t, 200).header("range", "items=0-9"),
    ];
    for ask in whole_anyway {
        rec.send(ask).await;
    }
    rec.send(
        Ask::new("HEAD ignores Range", M::HEAD, &t, 200)
            .keyed()
            .header("range", "bytes=0-9"),
    )
    .await;
    rec.send(
        Ask::new("a range past the end", M::GET, &t, 416)
            .keyed()
            .header("range", &past_end)
            .problem("range_not_satisfiable"),
    )
    .await;

    // Every refusal of a stream a test can reach.
    let refusals = [
        (get("no data", "/stream", 400), "missing_token"),
        (
            Ask::new("no data, HEAD", M::HEAD, "/v1/stream", 400),
            "missing_token",
        ),
        (
            get("empty data", &link("/stream", ""), 400),
            "missing_token",
        ),
        (
            get("garbage token", &link("/stream", "abc"), 400),
            "token_denied",
        ),
        (
            get("tampered token", &link("/stream", &tampered), 403),
            "token_denied",
        ),
        (
            get("expired token", &link("/stream", &expired), 410),
            "token_denied",
        ),
        (
            Ask::new(
                "expired token, HEAD",
                M::HEAD,
                link("/v1/stream", &expired),
                410,
            )
            .keyed(),
            "token_denied",
        ),
        (
            get("another tenant's token", &link("/stream", &main), 403).host("full.test"),
            "token_denied",
        ),
        (
            Ask::new("no API key", M::GET, link("/stream", &main), 401),
            "policy_denied",
        ),
        (
            get("a host the policy refuses", &link("/stream", &other), 403).host("other.test"),
            "policy_denied",
        ),
        (
            get("a host no tenant serves", &link("/stream", &main), 404).host("nobody.test"),
            "unknown_host",
        ),
        (
            get("several formats", &link("/stream", &two_formats), 400),
            "bad_format",
        ),
        (
            get(
                "a format the media lacks",
                &link("/stream", &no_format),
                422,
            ),
            "format_unavailable",
        ),
        (
            get("media not found", &link("/stream", &missing), 404),
            "not_found",
        ),
        (
            get("stream limit", &link("/stream", &full), 429).host("full.test"),
            "rate_limited",
        ),
    ];
    for (ask, code) in refusals {
        rec.send(ask.problem(code)).await;
    }

    // Resolve, then a link it gave.
    let answer = rec
        .send(
            Ask::new("resolve", M::POST, "/v1/resolve", 200)
                .keyed()
                .json(&resolve_body),
        )
        .await;
    let answer: Value = serde_json::from_slice(&answer).unwrap();
    let linked = answer["formats"][0]["stream_url"].as_str().unwrap();
    rec.send(Ask::new("a resolved link", M::HEAD, linked, 200).keyed())
        .await;
    let format_all = json!({ "url": media, "format": "all" }).to_string();
    let post = |name, status| Ask::new(name, M::POST, "/v1/resolve", status);
    // full.test's one resolve a minute, used: the next is a 429 with `Retry-After` (a limit
    // of 0, like its streams', answers without one).
    rec.send(
        post("resolve, the budget's one", 200)
            .host("full.test")
            .json(&resolve_body),
    )
    .await;
    let resolves = [
        (
            post("resolve without the key", 401).json(&resolve_body),
            "policy_denied",
        ),
        (
            post("resolve, a wrong key", 401)
                .header(MAIN_KEY.0, "nope")
                .json(&resolve_body),
            "policy_denied",
        ),
        (
            post("resolve without credentials", 401)
                .host("other.test")
                .json(&resolve_body),
            "policy_denied",
        ),
        (
            post("resolve budget", 429)
                .host("full.test")
                .json(&resolve_body),
            "rate_limited",
        ),
        (
            post("resolve, unknown host", 404)
                .host("nobody.test")
                .json(&resolve_body),
            "unknown_host",
        ),
        (
            post("resolve, unknown field", 400)
                .keyed()
                .json(r#"{"uri":"x"}"#),
            "bad_request",
        ),
        (
            post("resolve, not JSON", 400).keyed().json("url=x"),
            "bad_request",
        ),
        (
            post("resolve, not http", 400)
                .keyed()
                .json(r#"{"url":"ftp://a.example/x"}"#),
            "bad_url",
        ),
        (
            post("resolve, several formats", 400)
                .keyed()
                .json(&format_all),
            "bad_format",
        ),
        (
            post("resolve, 17 KiB", 413).keyed().json(&big_body),
            "payload_too_large",
        ),
    ];
    for (ask, code) in resolves {
        rec.send(ask.problem(code)).await;
    }
    let chunked = futures::stream::iter([Ok::<_, std::io::Error>(resolve_body.clone())]);
    rec.send(
        Ask::new("resolve, chunked", M::POST, "/v1/resolve", 411)
            .keyed()
            .header("content-type", "application/json")
            .body(reqwest::Body::wrap_stream(chunked))
            .problem("length_required"),
    )
    .await;

    // A body that stops half-way: answered once the body timeout passes.
    let half = futures::stream::iter([Ok::<_, std::io::Error>(r#"{"url":"#.to_owned())])
        .chain(futures::stream::pending());
    rec.send(
        Ask::new("resolve, a body that stops", M::POST, "/v1/resolve", 408)
            .keyed()
            .header("content-type", "application/json")
            .header("content-length", "100")
            .body(reqwest::Body::wrap_stream(half))
            .problem("body_timeout"),
    )
    .await;

    // Outside the routes.
    let outside = [
        ("no such path", M::GET, "/nope", 404, "route_not_found"),
        ("a prefix of a route", M::GET, "/v1", 404, "route_not_found"),
        (
            "POST a probe",
            M::POST,
            "/healthz",
            405,
            "method_not_allowed",
        ),
        (
            "metrics on the client listener",
            M::GET,
            "/metrics",
            404,
            "route_not_found",
        ),
        ("PUT a probe", M::PUT, "/readyz", 405, "method_not_allowed"),
        (
            "DELETE a stream",
            M::DELETE,
            "/stream",
            405,
            "method_not_allowed",
        ),
        (
            "GET resolve",
            M::GET,
            "/v1/resolve",
            405,
            "method_not_allowed",
        ),
        (
            "HEAD resolve",
            M::HEAD,
            "/v1/resolve",
            405,
            "method_not_allowed",
        ),
    ];
    for (name, method, path, status, code) in outside {
        rec.send(Ask::new(name, method, path, status).problem(code))
            .await;
    }

    rec.check();
}
