//! The fast tier: the gateway's handlers in this process, over the real route table, the
//! real embedded plugins (token-xchacha, policy-allowlist, test-misbehave) and a fake
//! sidecar that speaks the real protocol crate on a Unix socket in a temp dir. One test per
//! status the error mapping (`error.rs`) can produce, a stream whose bytes are compared, and
//! an HTTP/2 prior-knowledge (h2c) request through `server::run` that must reach the tenant
//! its `:authority` names. No yt-dlp, no network, no release binaries: seconds.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use futures::SinkExt;
use serde_json::{Value, json};
use streamgate::app::App;
use streamgate::config::Config;
use streamgate::plugin::{StreamRequest, builtin};
use streamgate::sidecar::SidecarClient;
use streamgate_protocol::{
    EgressMode, ErrorCode, FormatInfo, Frame, JobError, MediaInfo, Metadata, PROTOCOL_VERSION,
    Welcome, connection, next_frame, server_handshake,
};
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;
use warp::http::Response;

/// The media of `https://media.example/ok`: a length that is no multiple of any frame size.
fn media() -> Bytes {
    (0..300_001u32).map(|i| (i * 7 % 251) as u8).collect()
}

/// Bytes per data frame the fake sends.
const FRAME: usize = 64 * 1024;

/// A sidecar that answers by the job URL's path: `/ok` streams [`media`] (metadata names the
/// job's tenant in the file name), `/error/<code>` fails with that code, `/close` hangs up,
/// `/garbage` answers with a frame that has no place there, `/silent` never answers.
async fn fake_sidecar(listener: UnixListener) {
    loop {
        let Ok((io, _)) = listener.accept().await else {
            return;
        };
        tokio::spawn(async move {
            let mut conn = connection(io);
            let welcome = Welcome {
                version: PROTOCOL_VERSION,
                sidecar: "fake".into(),
                yt_dlp: "0".into(),
                egress: EgressMode::Proxy,
            };
            if server_handshake(&mut conn, welcome).await.is_err() {
                return;
            }
            let (url, tenant, resolve) = match next_frame(&mut conn, "job").await {
                Ok(Frame::Stream(job)) => (job.url, job.tenant.unwrap_or_default(), false),
                Ok(Frame::Resolve(job)) => (job.url, String::new(), true),
                _ => return,
            };
            let path = url.split_once("://").map_or("", |(_, rest)| rest);
            let path = path.split_once('/').map_or("", |(_, p)| p);
            let answer = match path.split_once('/') {
                Some(("error", code)) => {
                    let code: ErrorCode = serde_json::from_value(json!(code)).unwrap();
                    let mut error = JobError::new(code, "fake failure");
                    if code == ErrorCode::RangeNotSatisfiable {
                        error.size = Some(5000);
                    }
                    vec![Frame::Error(error)]
                }
                _ if path == "close" => vec![],
                _ if path == "garbage" => vec![Frame::End { total_bytes: 0 }],
                _ if path == "silent" => {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    vec![]
                }
                _ if resolve => vec![Frame::Info(MediaInfo {
                    title: Some("Clip".into()),
                    duration: Some(1.5),
                    thumbnail: None,
                    formats: ["18", "22"].map(format_info).into(),
                })],
                _ => {
                    let media = media();
                    let mut frames = vec![Frame::Metadata(Metadata {
                        filename: format!("{tenant}-clip.mp4"),
                        ext: "mp4".into(),
                        mime: "video/mp4".into(),
                        size: Some(media.len() as u64),
                        served_by: "native".into(),
                        ..Metadata::default()
                    })];
                    for i in (0..media.len()).step_by(FRAME) {
                        frames.push(Frame::Data(media.slice(i..media.len().min(i + FRAME))));
                    }
                    frames.push(Frame::End {
                        total_bytes: media.len() as u64,
                    });
                    frames
                }
            };
            for frame in answer {
                if conn.send(frame).await.is_err() {
                    return;
                }
            }
        });
    }
}

fn format_info(id: &str) -> FormatInfo {
    FormatInfo {
        id: id.into(),
        ext: Some("mp4".into()),
        resolution: None,
        vcodec: None,
        acodec: None,
        size: None,
        protocol: Some("https".into()),
    }
}

/// Two key rings: a token sealed for one tenant must never open at the other.
fn key(n: u8) -> String {
    use base64::Engine as _;
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([n; 32]);
    format!("k{n}:{secret}")
}

/// Tenants `a` and `b` (by host), `limited` (no stream or resolve may run), `metered` (one
/// resolve a minute), `misbehave` (the test-misbehave token plugin) and `noseal` (a
/// `seal_key` its ring lacks), all with a policy that allows every host and lets anyone
/// resolve, except `picky`'s and `keyed`'s (an API key).
fn config_text(socket: &Path) -> String {
    let allow =
        r#"{ builtin = "policy-allowlist", config = { hosts = "*", public_resolve = "true" } }"#;
    let (ka, kb) = (key(1), key(2));
    let misbehave = builtin::test_misbehave_path();
    format!(
        r#"
[sidecar]
connect = {socket:?}
metadata_timeout_secs = 1

[[tenant]]
id = "a"
hosts = ["a.example"]
token = {{ builtin = "token-xchacha", config = {{ keys = "{ka}" }} }}
policy = {allow}

[[tenant]]
id = "b"
hosts = ["b.example"]
token = {{ builtin = "token-xchacha", config = {{ keys = "{kb}" }} }}
policy = {allow}

[[tenant]]
id = "limited"
hosts = ["limited.example"]
token = {{ builtin = "token-xchacha", config = {{ keys = "{ka}" }} }}
policy = {allow}
limits = {{ max_streams = 0, resolves_per_minute = 0 }}

[[tenant]]
id = "metered"
hosts = ["metered.example"]
token = {{ builtin = "token-xchacha", config = {{ keys = "{ka}" }} }}
policy = {allow}
limits = {{ resolves_per_minute = 1 }}

[[tenant]]
id = "keyed"
hosts = ["keyed.example"]
token = {{ builtin = "token-xchacha", config = {{ keys = "{ka}" }} }}
policy = {{ builtin = "policy-allowlist", config = {{ hosts = "*", api_key = "sekret" }} }}

[[tenant]]
id = "picky"
hosts = ["picky.example"]
token = {{ builtin = "token-xchacha", config = {{ keys = "{ka}" }} }}
policy = {{ builtin = "policy-allowlist", config = {{ hosts = "other.example" }} }}

[[tenant]]
id = "misbehave"
hosts = ["misbehave.example"]
token = {{ wasm = {misbehave:?} }}
policy = {allow}

[[tenant]]
id = "noseal"
hosts = ["noseal.example"]
token = {{ builtin = "token-xchacha", config = {{ keys = "{ka}", seal_key = "nope" }} }}
policy = {allow}
"#,
        socket = socket.display().to_string(),
        misbehave = misbehave.display().to_string(),
    )
}

/// The fake sidecar (on a thread of its own, so every test's runtime can use it) and the
/// app, built once for all tests by the builder `serve` uses.
struct Fixture {
    app: Arc<App>,
    _dir: tempfile::TempDir,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("sidecar.sock");
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let bound = socket.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = UnixListener::bind(&bound).unwrap();
                ready_tx.send(()).unwrap();
                fake_sidecar(listener).await;
            });
        });
        ready_rx.recv().unwrap();
        let config: Config = toml::from_str(&config_text(&socket)).unwrap();
        config.validate().unwrap();
        let app = Arc::new(App::new(&config, client(&config, socket)).unwrap());
        Fixture { app, _dir: dir }
    })
}

fn client(config: &Config, socket: PathBuf) -> SidecarClient {
    let timeout = Duration::from_secs(config.sidecar.metadata_timeout_secs);
    SidecarClient::new(socket, timeout)
}

/// A token for `path` on the fake media host, sealed by `tenant`'s own token plugin.
async fn token(app: &App, tenant: &str, path: &str, format: &str) -> String {
    let tenants = app.tenants.load();
    let t = tenants.get(tenant).unwrap();
    let req = StreamRequest {
        url: format!("https://media.example/{path}"),
        format: format.into(),
        filename: None,
        expires_at: Some(streamgate::plugin::unix_now() + 600),
    };
    t.token.seal(&t.id, &req).await.unwrap().unwrap()
}

async fn get(app: &Arc<App>, host: &str, target: &str) -> Response<Bytes> {
    send(app, warp::test::request().path(target).header("host", host)).await
}

async fn send(app: &Arc<App>, req: warp::test::RequestBuilder) -> Response<Bytes> {
    req.reply(&streamgate::server::routes(app.clone())).await
}

/// The problem+json body of a refusal, after checking its status and `code`.
fn problem(resp: &Response<Bytes>, status: u16, code: &str) -> Value {
    let body: Value = serde_json::from_slice(resp.body()).unwrap_or(Value::Null);
    assert_eq!(
        (resp.status().as_u16(), body["code"].as_str()),
        (status, Some(code)),
        "{body}"
    );
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    assert_eq!(body["status"], status);
    body
}

#[tokio::test]
async fn a_stream_is_relayed_whole_and_head_fetches_nothing() {
    let app = &fixture().app;
    let t = token(app, "a", "ok", "best").await;
    let resp = get(app, "a.example", &format!("/stream?data={t}")).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.body(), &media(), "the bytes the sidecar sent");
    assert_eq!(resp.headers()["content-length"], "300001");
    assert_eq!(resp.headers()["content-type"], "video/mp4");
    let disposition = resp.headers()["content-disposition"].to_str().unwrap();
    assert!(disposition.contains("a-clip.mp4"), "{disposition}");
    let head = warp::test::request()
        .method("HEAD")
        .path(&format!("/v1/stream?data={t}"))
        .header("host", "a.example:8080");
    let resp = send(app, head).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-length"], "300001");
    assert!(resp.body().is_empty());
}

#[tokio::test]
async fn every_job_error_code_has_its_status() {
    let app = &fixture().app;
    for (code, status) in [
        ("not_found", 404),
        ("unsupported_url", 422),
        ("format_unavailable", 422),
        ("upstream_failed", 502),
        ("timeout", 504),
        ("busy", 503),
        ("egress_denied", 403),
        ("too_large", 422),
        ("range_not_satisfiable", 416),
        ("protocol", 502),
        ("internal", 500),
    ] {
        let t = token(app, "a", &format!("error/{code}"), "best").await;
        let resp = get(app, "a.example", &format!("/stream?data={t}")).await;
        let body = problem(&resp, status, code);
        assert!(!body["detail"].as_str().unwrap().contains("fake failure"));
        match code {
            "busy" => assert_eq!(resp.headers()["retry-after"], "2"),
            "range_not_satisfiable" => assert_eq!(resp.headers()["content-range"], "bytes */5000"),
            _ => {}
        }
    }
}

#[tokio::test]
async fn a_sidecar_that_fails_before_metadata_is_502_503_or_504() {
    let app = &fixture().app;
    for (path, status, code) in [
        ("close", 503, "sidecar_unavailable"),
        ("garbage", 502, "protocol"),
        ("silent", 504, "timeout"),
    ] {
        let t = token(app, "a", path, "best").await;
        let resp = get(app, "a.example", &format!("/stream?data={t}")).await;
        problem(&resp, status, code);
    }
    // No sidecar at all: the same app built on a socket nobody listens on.
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("none.sock");
    let config: Config = toml::from_str(&config_text(&socket)).unwrap();
    let lonely = Arc::new(App::new(&config, client(&config, socket)).unwrap());
    let t = token(&lonely, "a", "ok", "best").await;
    let resp = get(&lonely, "a.example", &format!("/stream?data={t}")).await;
    problem(&resp, 503, "sidecar_unavailable");
    let resp = get(&lonely, "a.example", "/readyz").await;
    problem(&resp, 503, "sidecar_unavailable");
    let resp = get(app, "a.example", "/readyz").await;
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn requests_are_refused_with_client_errors() {
    let app = &fixture().app;
    let resp = get(app, "a.example", "/stream").await;
    problem(&resp, 400, "missing_token");
    let resp = get(app, "a.example", "/stream?data=not-a-token").await;
    let body: Value = serde_json::from_slice(resp.body()).unwrap();
    assert!(resp.status().is_client_error(), "{body}");
    assert_eq!(body["code"], "token_denied");
    // A token names a URL or a format the gateway refuses before any plugin sees it.
    let tenants = app.tenants.load();
    let a = tenants.get("a").unwrap();
    let bad_url = StreamRequest {
        url: "http://a.example\\@127.0.0.1/x".into(),
        format: "best".into(),
        filename: None,
        expires_at: None,
    };
    let t = a.token.seal("a", &bad_url).await.unwrap().unwrap();
    let resp = get(app, "a.example", &format!("/stream?data={t}")).await;
    problem(&resp, 400, "bad_url");
    let t = token(app, "a", "ok", "18,22").await;
    let resp = get(app, "a.example", &format!("/stream?data={t}")).await;
    problem(&resp, 400, "bad_format");
    let t = token(app, "picky", "ok", "best").await;
    let resp = get(app, "picky.example", &format!("/stream?data={t}")).await;
    problem(&resp, 403, "policy_denied");
    let t = token(app, "limited", "ok", "best").await;
    let resp = get(app, "limited.example", &format!("/stream?data={t}")).await;
    problem(&resp, 429, "rate_limited");
    assert!(
        resp.headers().get("retry-after").is_none(),
        "0: no wait helps"
    );
    // No tenant for the host and no default_tenant.
    let resp = get(app, "nobody.example", &format!("/stream?data={t}")).await;
    problem(&resp, 404, "unknown_host");
    let resp = get(app, "a.example", "/nowhere").await;
    problem(&resp, 404, "route_not_found");
    let put = warp::test::request().method("PUT").path("/stream?data=x");
    let resp = send(app, put).await;
    problem(&resp, 405, "method_not_allowed");
    assert_eq!(resp.headers()["allow"], "GET, HEAD");
    let get_resolve = warp::test::request().method("GET").path("/v1/resolve");
    let resp = send(app, get_resolve).await;
    problem(&resp, 405, "method_not_allowed");
    assert_eq!(resp.headers()["allow"], "POST");
}

#[tokio::test]
async fn misbehaving_plugins_are_500_or_503() {
    let app = &fixture().app;
    for (mode, status) in [("trap", 500), ("alloc", 500), ("loop", 503)] {
        let resp = get(app, "misbehave.example", &format!("/stream?data={mode}")).await;
        let body = problem(&resp, status, "plugin_failed");
        assert_eq!(body["detail"], "plugin test_misbehave failed");
    }
}

/// RFC 9110 §15.5.2: a 401 carries a challenge. Plugins refuse with 401 when they want an
/// API key (a stream without one or with a wrong one, a resolve without credentials).
#[tokio::test]
async fn a_401_names_its_challenge() {
    let app = &fixture().app;
    let t = token(app, "keyed", "ok", "best").await;
    let stream = format!("/stream?data={t}");
    let mut refusals = vec![
        send(
            app,
            resolve("picky.example", &json!({ "url": "https://x.example/" })),
        )
        .await,
    ];
    for key in [None, Some("wrong")] {
        let mut req = warp::test::request()
            .path(&stream)
            .header("host", "keyed.example");
        if let Some(key) = key {
            req = req.header("x-api-key", key);
        }
        refusals.push(send(app, req).await);
    }
    for resp in refusals {
        problem(&resp, 401, "policy_denied");
        assert_eq!(
            resp.headers()["www-authenticate"],
            r#"Key realm="streamgate""#
        );
    }
    let keyed = warp::test::request()
        .path(&stream)
        .header("host", "keyed.example")
        .header("x-api-key", "sekret");
    let resp = send(app, keyed).await;
    assert_eq!((resp.status().as_u16(), resp.body()), (200, &media()));
    assert!(resp.headers().get("www-authenticate").is_none());
}

/// A limit of 0 is "never": 429 without `Retry-After` (no wait helps), while a limit that
/// was only reached names the seconds left in its window.
#[tokio::test]
async fn a_zero_limit_promises_no_retry() {
    let app = &fixture().app;
    let body = json!({ "url": "https://media.example/ok" });
    let resp = send(app, resolve("limited.example", &body)).await;
    let problem_body = problem(&resp, 429, "rate_limited");
    assert!(
        resp.headers().get("retry-after").is_none(),
        "{problem_body}"
    );
    let detail = problem_body["detail"].as_str().unwrap();
    assert!(
        detail.contains("resolves_per_minute limit is 0"),
        "{detail}"
    );
    assert_eq!(
        send(app, resolve("metered.example", &body)).await.status(),
        200
    );
    let resp = send(app, resolve("metered.example", &body)).await;
    problem(&resp, 429, "rate_limited");
    let wait: u32 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
}

/// RFC 9110 §15.5.9: a 408 says `Connection: close`, and the connection ends after it
/// (the rest of the body may still be on its way). Over the real server, HTTP/1.1.
#[tokio::test]
async fn a_408_closes_the_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("sidecar.sock");
    let text = format!(
        "[server]\nresolve_body_timeout_secs = 1\n{}",
        config_text(&socket)
    );
    let config: Config = toml::from_str(&text).unwrap();
    let app = Arc::new(App::new(&config, client(&config, socket)).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(streamgate::server::run(
        listener,
        app,
        CancellationToken::new(),
    ));
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = "POST /v1/resolve HTTP/1.1\r\nHost: a.example\r\n\
                Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"url\":";
    tcp.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut answer));
    read.await
        .expect("the gateway closes the connection")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 408 "), "{answer}");
    let lines: Vec<String> = head.lines().map(str::to_ascii_lowercase).collect();
    assert!(lines.iter().any(|l| l == "connection: close"), "{head}");
    let problem: Value = serde_json::from_str(body).unwrap();
    assert_eq!(problem["code"], "body_timeout");
}

/// `POST /v1/resolve` as warp's test client sends it.
fn resolve(host: &str, body: &Value) -> warp::test::RequestBuilder {
    warp::test::request()
        .method("POST")
        .path("/v1/resolve")
        .header("host", host)
        .json(body)
}

#[tokio::test]
async fn resolve_answers_sealed_links_and_refuses_bad_bodies() {
    let app = &fixture().app;
    let url = "https://media.example/ok";
    let resp = send(app, resolve("a.example", &json!({ "url": url }))).await;
    assert_eq!(resp.status(), 200);
    let answer: Value = serde_json::from_slice(resp.body()).unwrap();
    assert_eq!(answer["title"], "Clip");
    assert_eq!(answer["formats"].as_array().unwrap().len(), 2);
    // The link of format 18 is a token of tenant a that streams.
    let link = answer["formats"][0]["stream_url"].as_str().unwrap();
    assert!(link.starts_with("/v1/stream?data="), "{link}");
    let resp = get(app, "a.example", link).await;
    assert_eq!((resp.status().as_u16(), resp.body()), (200, &media()));

    let resp = send(
        app,
        resolve("a.example", &json!({ "url": url, "fromat": "b" })),
    )
    .await;
    problem(&resp, 400, "bad_request");
    let resp = send(app, resolve("a.example", &json!({ "url": "ftp:x" }))).await;
    problem(&resp, 400, "bad_url");
    let resp = send(app, resolve("noseal.example", &json!({ "url": url }))).await;
    problem(&resp, 500, "plugin_failed");
    let big = json!({ "url": url, "format": "b".repeat(20_000) });
    problem(
        &send(app, resolve("a.example", &big)).await,
        413,
        "payload_too_large",
    );
    let bare = warp::test::request()
        .method("POST")
        .path("/v1/resolve")
        .header("host", "a.example");
    problem(&send(app, bare).await, 411, "length_required");
}

#[tokio::test]
async fn a_limiter_that_cannot_count_refuses_with_503() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("sidecar.sock");
    // Port 1 on loopback: nothing listens, the connection is refused at once.
    let text = format!(
        "[limits]\nredis_url = \"redis://127.0.0.1:1/\"\n{}",
        config_text(&socket)
    );
    let config: Config = toml::from_str(&text).unwrap();
    let app = Arc::new(App::new(&config, client(&config, socket)).unwrap());
    // `limited`'s limits of 0 refuse before any count; `metered`'s 1 must be counted.
    let body = json!({ "url": "https://media.example/ok" });
    let resp = send(&app, resolve("metered.example", &body)).await;
    problem(&resp, 503, "limiter_unavailable");
    let text = app.metrics.encode();
    assert!(
        text.contains("streamgate_limiter_errors_total{decision=\"deny\"} 1"),
        "{text}"
    );
}

/// An HTTP/2 request with prior knowledge names its host only in `:authority`: the tenant
/// must come from there, through the real server (hyper's HTTP/1 + HTTP/2 listener).
#[tokio::test]
async fn an_h2c_request_is_served_by_the_tenant_of_its_authority() {
    let app = fixture().app.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(streamgate::server::run(
        listener,
        app.clone(),
        CancellationToken::new(),
    ));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let t = token(&app, "b", "ok", "best").await;
    let h2_get = |authority: &str| {
        let client = client.clone();
        let uri = format!("http://{authority}/stream?data={t}");
        async move {
            let req = warp::http::Request::get(uri).body(()).unwrap();
            let mut client = client.ready().await.unwrap();
            let (resp, _) = client.send_request(req, true).unwrap();
            let resp = resp.await.unwrap();
            let (head, mut body) = resp.into_parts();
            let mut got = Vec::new();
            while let Some(chunk) = body.data().await {
                let chunk = chunk.unwrap();
                let _ = body.flow_control().release_capacity(chunk.len());
                got.extend_from_slice(&chunk);
            }
            (head, got)
        }
    };
    let (head, got) = h2_get("b.example").await;
    assert_eq!(head.version, warp::http::Version::HTTP_2);
    assert_eq!(head.status, 200, "{}", String::from_utf8_lossy(&got));
    let disposition = head.headers["content-disposition"].to_str().unwrap();
    assert!(disposition.contains("b-clip.mp4"), "{disposition}");
    assert_eq!(got, media());
    // The same token at tenant a's authority: a's key does not open b's token.
    let (head, got) = h2_get("a.example:8080").await;
    let body: Value = serde_json::from_slice(&got).unwrap();
    assert!(head.status.is_client_error(), "{body}");
    assert_eq!(body["code"], "token_denied");
    let text = app.metrics.encode();
    assert!(
        text.contains("streamgate_http_requests_total{tenant=\"b\",status=\"200\"}"),
        "{text}"
    );
}

#[tokio::test]
async fn the_web_page_is_served_with_its_policy_and_a_validator() {
    let app = &fixture().app;
    let resp = get(app, "a.example", "/").await;
    assert_eq!(resp.status(), 200);
    let h = resp.headers();
    assert_eq!(h["content-type"], "text/html; charset=utf-8");
    let csp = h["content-security-policy"].to_str().unwrap();
    assert!(
        csp.starts_with("default-src 'none'; script-src 'self';"),
        "{csp}"
    );
    assert!(!csp.contains("unsafe"), "{csp}");
    assert_eq!(h["x-content-type-options"], "nosniff");
    let page = String::from_utf8_lossy(resp.body());
    assert!(page.contains(r#"data-key-header="x-api-key" data-key-required="false""#));
    assert!(
        !page.contains("<script>") && !page.contains("style="),
        "no inline code"
    );
    let etag = h["etag"].clone();
    let again = warp::test::request()
        .path("/")
        .header("host", "a.example")
        .header("if-none-match", etag.clone());
    let again = send(app, again).await;
    assert_eq!((again.status().as_u16(), again.body().len()), (304, 0));
    assert_eq!(again.headers()["etag"], etag);

    let script = get(app, "a.example", "/web/app.js").await;
    assert_eq!(script.status(), 200);
    assert_eq!(
        script.headers()["content-type"],
        "text/javascript; charset=utf-8"
    );
    assert_eq!(script.headers()["x-content-type-options"], "nosniff");
    problem(
        &get(app, "a.example", "/web/nope.js").await,
        404,
        "route_not_found",
    );
    problem(&get(app, "nobody.example", "/").await, 404, "unknown_host");
    let post = send(
        app,
        warp::test::request()
            .method("POST")
            .path("/")
            .header("host", "a.example"),
    );
    problem(&post.await, 405, "method_not_allowed");
}
