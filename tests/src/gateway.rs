//! A real `streamgate serve` (which starts its own `streamgate-sidecar`) on a free loopback
//! port, with a temp state dir and its log in a file; stopped with SIGTERM on drop.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use streamgate_testkit::serve::{Serve, admin_url, listening_url};

use crate::paths::{release_bin, without_test_env, yt_dlp};
use crate::process::{ChildGuard, ProcInfo, descendants};

/// `comm` of the sidecar process (truncated by the kernel to 15 bytes).
const SIDECAR_COMM: &str = "streamgate-side";

/// Every gateway's admin listener: on a free port (tests run side by side).
const ADMIN_LISTEN: [&str; 2] = ["--admin-listen", "127.0.0.1:0"];

/// How to start a gateway; `Default` is the embedded config with private URLs allowed.
#[derive(Clone, Debug)]
pub struct GatewayOptions {
    /// `--config FILE`; none: the embedded default.
    pub config: Option<PathBuf>,
    /// `--allow-private-urls` (only with the embedded default).
    pub allow_private_urls: bool,
    /// `--sidecar-arg` values, e.g. `--max-jobs=1`.
    pub sidecar_args: Vec<String>,
    /// `--drain-secs`.
    pub drain_secs: Option<u64>,
    /// `--listen`; none: `127.0.0.1:0`.
    pub listen: Option<String>,
    /// Extra environment variables (e.g. the secrets a config file names).
    pub env: Vec<(String, String)>,
}

impl Default for GatewayOptions {
    fn default() -> Self {
        GatewayOptions {
            config: None,
            allow_private_urls: true,
            sidecar_args: Vec::new(),
            drain_secs: None,
            listen: None,
            env: Vec::new(),
        }
    }
}

/// A running gateway.
pub struct Gateway {
    // Declared first: stopped before the temp dir goes away.
    child: ChildGuard,
    base: String,
    /// Base URL of the admin listener (`/metrics`, the detailed `/readyz`).
    admin: String,
    state_dir: PathBuf,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Gateway {
    /// A gateway on the config file `config` alone (no `--allow-private-urls`: its tenants'
    /// egress says what they may reach).
    pub async fn with_config(config: &Path) -> Gateway {
        Gateway::start(GatewayOptions {
            config: Some(config.to_owned()),
            allow_private_urls: false,
            ..GatewayOptions::default()
        })
        .await
    }

    /// Starts the release binary and waits until `/readyz` says its sidecar answers.
    pub async fn start(opts: GatewayOptions) -> Gateway {
        let dir = tempfile::tempdir().expect("gateway temp dir");
        let state_dir = dir.path().join("state");
        release_bin("streamgate-sidecar");
        let serve = Serve {
            listen: opts.listen.unwrap_or_else(|| "127.0.0.1:0".to_owned()),
            state_dir: state_dir.clone(),
            config: opts.config,
            allow_private_urls: opts.allow_private_urls,
            yt_dlp: Some(yt_dlp()),
            sidecar_args: opts.sidecar_args,
            drain_secs: opts.drain_secs,
            extra: ADMIN_LISTEN.map(str::to_owned).to_vec(),
        };
        let mut cmd = serve.command(&release_bin("streamgate"));
        cmd.envs(opts.env);
        Gateway::spawn(cmd, dir, state_dir).await
    }

    /// Runs `script` (e.g. `scripts/run`, which ends in `exec streamgate serve "$@"`) with
    /// `--admin-listen 127.0.0.1:0 --listen 127.0.0.1:0 --state-dir TMP --allow-private-urls`
    /// after `args`.
    pub async fn start_script(script: &Path, args: &[&str]) -> Gateway {
        let dir = tempfile::tempdir().expect("gateway temp dir");
        let state_dir = dir.path().join("state");
        let mut cmd = Command::new(script);
        // The script runs cargo (scripts/setup).
        without_test_env(&mut cmd)
            .args(args)
            .args(ADMIN_LISTEN)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--allow-private-urls",
                "--state-dir",
            ])
            .arg(&state_dir);
        Gateway::spawn(cmd, dir, state_dir).await
    }

    async fn spawn(mut cmd: Command, dir: tempfile::TempDir, state_dir: PathBuf) -> Gateway {
        let log = dir.path().join("gateway.log");
        cmd.env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("gateway log file"));
        let child = ChildGuard::spawn(cmd, "streamgate").expect("spawn streamgate");
        let mut gw = Gateway {
            child,
            base: String::new(),
            admin: String::new(),
            state_dir,
            log,
            _dir: dir,
        };
        // Generous: `scripts/run` may have to build first.
        gw.base = gw.wait_listening(Duration::from_secs(600)).await;
        // Logged before the public line.
        gw.admin = admin_url(&gw.logs())
            .unwrap_or_else(|| panic!("no admin listener line:\n{}", gw.logs()));
        assert!(
            gw.wait_ready(Duration::from_secs(60)).await,
            "not ready:\n{}",
            gw.logs()
        );
        gw
    }

    /// Reads the log until the "listening on http://…" line.
    async fn wait_listening(&mut self, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(url) = listening_url(&self.logs()) {
                return url;
            }
            if let Some(status) = self.child.try_wait() {
                panic!(
                    "gateway exited ({status}) before listening:\n{}",
                    self.logs()
                );
            }
            assert!(
                Instant::now() < deadline,
                "gateway not listening:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Polls `/readyz` until it answers 200 or `limit` passes.
    pub async fn wait_ready(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let client = reqwest::Client::new();
        loop {
            let ok = client.get(self.url("/readyz")).send().await;
            if ok.is_ok_and(|r| r.status() == 200) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `http://127.0.0.1:PORT` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `http://127.0.0.1:PORT` of the admin listener + `path`: where `/metrics` and the
    /// detailed `/readyz` are served.
    pub fn admin_url(&self, path: &str) -> String {
        format!("{}{path}", self.admin)
    }

    /// The `/metrics` text, read from the admin listener on a connection closed after the
    /// answer (an idle keep-alive connection would count against the header timeout).
    /// Panics if it cannot be read.
    pub async fn metrics_text(&self) -> String {
        admin_get(&self.admin_url("/metrics"))
            .await
            .unwrap_or_else(|e| panic!("GET /metrics: {e}\n{}", self.logs()))
    }

    /// The value of the sample `name{labels}` (`labels` empty: the sample with no label set)
    /// in `/metrics`; `None` when absent.
    pub async fn metric(&self, name: &str, labels: &str) -> Option<f64> {
        let series = match labels {
            "" => format!("{name} "),
            _ => format!("{name}{{{labels}}} "),
        };
        let text = self.metrics_text().await;
        text.lines()
            .find_map(|l| l.strip_prefix(&series))
            .and_then(|v| v.trim().parse().ok())
    }

    /// The detailed readiness (`/readyz` on the admin listener) as JSON, whatever its status.
    /// Panics if it cannot be read or is not JSON.
    pub async fn readiness(&self) -> serde_json::Value {
        let text = admin_get(&self.admin_url("/readyz"))
            .await
            .unwrap_or_else(|e| panic!("GET /readyz: {e}\n{}", self.logs()));
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("/readyz: {e}: {text}"))
    }

    /// `/stream?data=TOKEN`.
    pub fn stream_url(&self, token: &str) -> String {
        self.url(&format!("/stream?data={token}"))
    }

    /// The state directory (`--state-dir`).
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// A token from `streamgate mint` against this gateway's state dir.
    pub fn mint(&self, url: &str, format: &str) -> String {
        mint(&[
            "--state-dir",
            &self.state_dir.display().to_string(),
            "--url",
            url,
            "--format",
            format,
        ])
    }

    /// The gateway's pid.
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// The process handle (signals, exit status).
    pub fn child(&mut self) -> &mut ChildGuard {
        &mut self.child
    }

    /// Pid of the sidecar the gateway runs right now, if one is up.
    pub fn sidecar_pid(&self) -> Option<u32> {
        let procs = descendants(self.pid());
        let sidecar = procs
            .iter()
            .find(|p| p.comm == SIDECAR_COMM && p.ppid == self.pid() as i32);
        sidecar.map(|p| p.pid as u32)
    }

    /// yt-dlp processes (live or zombie) anywhere below the gateway.
    pub fn ytdlp_processes(&self) -> Vec<ProcInfo> {
        descendants(self.pid())
            .into_iter()
            .filter(|p| p.comm == "yt-dlp")
            .collect()
    }

    /// The gateway's resident memory in KiB (`VmRSS` of `/proc/PID/status`).
    pub fn rss_kib(&self) -> u64 {
        streamgate_testkit::procfs::status_kib(self.pid(), "VmRSS").unwrap_or(0)
    }

    /// Everything logged so far by the gateway and its sidecar.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Gateway {
    /// SIGTERM first, so the gateway stops its sidecar (and the sidecar its jobs).
    fn drop(&mut self) {
        self.child.signal(Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.is_running() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// GET `url` on a connection closed after the answer; the body as text.
async fn admin_get(url: &str) -> reqwest::Result<String> {
    let client = reqwest::Client::new();
    let resp = client.get(url).header("connection", "close").send().await?;
    resp.text().await
}

/// Runs `streamgate mint ARGS` and returns its one line of output.
pub fn mint(args: &[&str]) -> String {
    let out = Command::new(release_bin("streamgate"))
        .arg("mint")
        .args(args)
        .output()
        .expect("run mint");
    assert!(
        out.status.success(),
        "mint failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).expect("utf-8 token");
    assert_eq!(token.lines().count(), 1, "one line: {token:?}");
    token.trim().to_owned()
}

/// `curl` with `args`; returns its exit code, the response headers (lower-case names) and
/// the body. `-s -S -D` are added; the body goes to a temp file.
pub fn curl(args: &[&str], url: &str) -> CurlResult {
    let dir = tempfile::tempdir().expect("curl temp dir");
    let (head, body) = (dir.path().join("head"), dir.path().join("body"));
    let out = Command::new("curl")
        .args(["-s", "-S", "-D"])
        .arg(&head)
        .arg("-o")
        .arg(&body)
        .args(args)
        .arg(url)
        .output()
        .expect("run curl");
    let head = std::fs::read_to_string(&head).unwrap_or_default();
    let mut headers = Vec::new();
    let mut status = 0;
    for line in head.lines() {
        if line.starts_with("HTTP/") {
            status = line
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            headers.clear();
        } else if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
    CurlResult {
        exit: out.status.code().unwrap_or(-1),
        status,
        headers,
        body: std::fs::read(&body).unwrap_or_default(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// What `curl` saw.
pub struct CurlResult {
    /// curl's exit code (0: complete transfer; 18: partial file; 56: receive error).
    pub exit: i32,
    /// HTTP status of the last response.
    pub status: u16,
    /// Headers of the last response, names lower-case, in order.
    pub headers: Vec<(String, String)>,
    /// The body received.
    pub body: Vec<u8>,
    /// curl's error message, if any.
    pub stderr: String,
}

/// Everything but a media body, which shows as its length: assertion messages stay readable.
impl std::fmt::Debug for CurlResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let body = match std::str::from_utf8(&self.body) {
            Ok(text) if text.len() <= 2048 => text.to_owned(),
            _ => format!("<{} bytes>", self.body.len()),
        };
        f.debug_struct("CurlResult")
            .field("exit", &self.exit)
            .field("status", &self.status)
            .field("headers", &self.headers)
            .field("body", &body)
            .field("stderr", &self.stderr)
            .finish()
    }
}

impl CurlResult {
    /// The first value of header `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

// ---- assertions and set-ups shared by the gateway tests ----

/// The headers every media response carries, for the container actually sent.
pub fn assert_media_headers(get: &CurlResult, mime: &str, ext: &str) {
    assert_eq!(get.header("content-type"), Some(mime), "{:?}", get.headers);
    let cd = get.header("content-disposition").unwrap_or_default();
    assert!(
        cd.starts_with("attachment; filename=\"") && cd.contains(&format!(".{ext}\"")),
        "{cd}"
    );
    assert_eq!(get.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(get.header("cache-control"), Some("no-store"));
    assert_eq!(get.header("x-request-id").map(str::len), Some(16));
    if let Some(len) = get.header("content-length") {
        assert_eq!(
            len.parse::<usize>().unwrap(),
            get.body.len(),
            "exact Content-Length"
        );
    }
}

/// Headers that must be identical between GET and HEAD: all but per-response ones and
/// `transfer-encoding`, which frames a body HEAD does not have (RFC 9110 §9.3.2).
pub fn stable_headers(r: &CurlResult) -> BTreeMap<String, String> {
    let per_response = ["date", "x-request-id", "transfer-encoding"];
    r.headers
        .iter()
        .filter(|(k, _)| !per_response.contains(&k.as_str()))
        .cloned()
        .collect()
}

/// The problem+json answer of an early failure, with no media in it.
pub fn assert_problem(r: &CurlResult, status: u16, code: &str, what: &str) {
    assert_eq!((r.exit, r.status), (0, status), "{what}: {r:?}");
    assert_eq!(
        r.header("content-type"),
        Some("application/problem+json"),
        "{what}"
    );
    assert!(r.body.len() < 2048, "{what}: a short problem, no media");
    let p: serde_json::Value = serde_json::from_slice(&r.body).expect("problem JSON");
    assert_eq!(p["status"], status, "{what}: {p}");
    assert_eq!(p["code"], code, "{what}: {p}");
    assert_eq!(p["type"], format!("urn:streamgate:problem:{code}"));
    assert!(
        p["title"].is_string() && p["detail"].is_string(),
        "{what}: {p}"
    );
    assert_eq!(
        r.header("x-request-id"),
        p["request_id"].as_str(),
        "{what}: {p}"
    );
}

/// Accepts connections and never answers: extraction can only time out.
pub fn silent_server() -> (std::net::TcpListener, String) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/video.mp4", listener.local_addr().unwrap());
    (listener, url)
}

/// A token that expired an hour ago, sealed with the gateway's own key by the real plugin.
pub async fn seal_expired(gw: &Gateway, url: &str) -> String {
    let config = streamgate::state::embedded_config(gw.state_dir(), true).unwrap();
    seal_expired_for(&config, None, url).await
}

/// A token for `tenant` of `config` (its default tenant when `None`) that expired an hour
/// ago, sealed by that tenant's own token plugin.
pub async fn seal_expired_for(
    config: &streamgate::config::Config,
    tenant: Option<&str>,
    url: &str,
) -> String {
    use streamgate::plugin::{EngineSettings, PluginEngine, StreamRequest};
    let engine = PluginEngine::new(EngineSettings::default()).unwrap();
    let tenants = streamgate::tenant::Tenants::build(&engine, config).unwrap();
    let tenant = match tenant {
        Some(id) => tenants.get(id).unwrap(),
        None => tenants.default_tenant(),
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let req = StreamRequest {
        url: url.to_owned(),
        format: "b".into(),
        filename: None,
        expires_at: Some(now.as_secs() - 3600),
    };
    tenant.token.seal(&tenant.id, &req).await.unwrap().unwrap()
}

/// A tenant's egress for fixtures served on 127.0.0.1 at random ports: what
/// `--allow-private-urls` gives the embedded default.
pub const LOOPBACK_EGRESS: &str = "{ allow_private = true, any_port = true }";

/// A config file with three tenants: `main` (`default_tenant`), `other` (same key: its tokens must
/// still not open there) and `broken` (the test-misbehave token plugin).
pub fn three_tenants(dir: &Path) -> PathBuf {
    use crate::config::{new_key, open_policy, tenant, write, xchacha};
    let token = xchacha(&new_key());
    let misbehave = streamgate::plugin::builtin::test_misbehave_path();
    let broken = format!("{{ wasm = \"{}\" }}", misbehave.display());
    let policy = open_policy("");
    let text = [
        "default_tenant = \"main\"\n".to_owned(),
        tenant("main", &[], &token, &policy, ""),
        tenant("other", &["other.test"], &token, &policy, ""),
        tenant("broken", &["broken.test"], &broken, &policy, ""),
    ]
    .concat();
    write(dir, &text)
}
