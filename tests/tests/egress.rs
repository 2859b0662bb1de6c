//! Issue 9 (SSRF), end to end: the sidecar's egress decides every connection of a job after
//! DNS, on every hop; the gateway refuses ambiguous URLs and anonymous remote resolves; a job
//! cannot import code planted in its directory. Real gateway and sidecar binaries, real
//! yt-dlp and ffmpeg, real name resolution.
//!
//! Every test runs in a network namespace of its own (`streamgate_tests::netns`: the test
//! binary re-executed under `unshare --net --mount`), where `lo` also carries 198.51.100.2
//! (TEST-NET-2, a "public" address) and 198.51.100.3 (a non-loopback client), and
//! `/etc/hosts` says `public.test` → 198.51.100.2, `private.test` → 127.0.0.1, `mixed.test`
//! → both. The public origin is a fixture server on 198.51.100.2:80; the private service is
//! one on 127.0.0.1:80 and one on [::1]:80, whose request counters must stay at 0. Nothing
//! is ever added to the machine's own namespace. docs/security.md maps each rule to these
//! tests.
//!
//! The sidecar's egress has two modes ([`Mode`]): netns (each job in a network namespace of
//! its own; what root gets here) and proxy (`--no-netns`: jobs share the sidecar's network
//! and are only told to use the job's proxy). Every rule the proxy decides holds in both,
//! so the streaming and refusal tests run once per mode (`…` and `…_in_proxy_mode`); what
//! only the namespace gives — a job that ignores the proxy reaches nothing — is asserted in
//! netns mode, and its absence in proxy mode is asserted too, so the docs stay true.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use streamgate_protocol::{EgressMode, Frame, ResolveJob};
use streamgate_tests::gateway::*;
use streamgate_tests::netns::{self, CLIENT_IP, PUBLIC_IP};
use streamgate_tests::redis::RedisServer;
use streamgate_tests::*;

/// The same file on the public origin.
const PUBLIC_MEDIA: &str = "http://public.test/progressive.mp4";

// ---------------------------------------------------------------------------------------
// The world inside a namespace: a public origin and a private service.

struct World {
    /// 198.51.100.2:80: the fixtures plus generated pages under `/public/` (pointing at the
    /// public origin) and `/private/` (pointing at the private service).
    public: FixtureServer,
    /// 127.0.0.1:80, the fixtures: what an SSRF would steal.
    private: FixtureServer,
    /// [::1]:80, the fixtures.
    private6: FixtureServer,
    /// 198.51.100.2:8080: a public address on a port the default rules do not allow.
    other_port: FixtureServer,
}

impl World {
    fn start() -> World {
        assert!(netns::inside(), "the world needs a namespace of its own");
        let fx = fixtures();
        let mut pages = Vec::new();
        for (side, origin) in [
            ("public", "http://public.test"),
            ("private", "http://127.0.0.1"),
        ] {
            let media = format!("{origin}/progressive.mp4");
            pages.push(Page::redirect(&format!("{side}/redirect"), &media));
            pages.push(Page::new(
                &format!("{side}/video.html"),
                "text/html; charset=utf-8",
                format!(
                    "<!doctype html><html><head><title>video src</title></head><body>\
                     <video controls src=\"{media}\"></video></body></html>\n"
                ),
            ));
            pages.push(Page::new(
                &format!("{side}/og.html"),
                "text/html; charset=utf-8",
                format!(
                    "<!doctype html><html><head><title>og video</title>\n\
                     <meta property=\"og:video\" content=\"{media}\">\n\
                     <meta property=\"og:video:type\" content=\"video/mp4\">\n\
                     </head><body><p>a page with an Open Graph video</p></body></html>\n"
                ),
            ));
            pages.push(Page::new(
                &format!("{side}/hls/index.m3u8"),
                "application/vnd.apple.mpegurl",
                hls_playlist(fx, &format!("{origin}/hls/")),
            ));
            pages.push(Page::new(
                &format!("{side}/dash/manifest.mpd"),
                "application/dash+xml",
                dash_manifest(fx, &format!("{origin}/dash/")),
            ));
        }
        // Hops to names, decided by the proxy's own lookup (the job's URL is public).
        for (name, target) in [
            (
                "private/redirect-name",
                "http://private.test/progressive.mp4",
            ),
            (
                "private/redirect-mixed",
                "http://mixed.test/progressive.mp4",
            ),
            (
                "private/redirect-port",
                "http://public.test:8080/progressive.mp4",
            ),
        ] {
            pages.push(Page::redirect(name, target));
        }
        // A page with two videos: a job streams one entry at most.
        pages.push(Page::new(
            "public/two-videos.html",
            "text/html; charset=utf-8",
            "<!doctype html><html><head><title>two videos</title></head><body>\
             <video controls src=\"http://public.test/progressive.mp4\"></video>\
             <video controls src=\"http://public.test/audio-only.m4a\"></video>\
             </body></html>\n",
        ));
        let v4 = |ip: Ipv4Addr| SocketAddr::from((ip, 80));
        World {
            public: FixtureServer::start_on(fx, v4(PUBLIC_IP), pages),
            private: FixtureServer::start_on(fx, v4(Ipv4Addr::LOCALHOST), Vec::new()),
            private6: FixtureServer::start_on(
                fx,
                SocketAddr::from((Ipv6Addr::LOCALHOST, 80)),
                Vec::new(),
            ),
            other_port: FixtureServer::start_on(
                fx,
                SocketAddr::from((PUBLIC_IP, 8080)),
                Vec::new(),
            ),
        }
    }

    /// Requests the services no job may reach answered, all paths: the private services
    /// and the public address's port 8080.
    fn private_hits(&self) -> usize {
        self.private.total_hits() + self.private6.total_hits() + self.other_port.total_hits()
    }

    fn private_log(&self) -> String {
        format!(
            "127.0.0.1:80 saw {:?}, [::1]:80 saw {:?}, 198.51.100.2:8080 saw {:?}",
            self.private.all_hits(),
            self.private6.all_hits(),
            self.other_port.all_hits()
        )
    }
}

/// The fixture playlist with every segment an absolute URL under `base`.
fn hls_playlist(fx: &Path, base: &str) -> String {
    let text = std::fs::read_to_string(fx.join("hls/index.m3u8")).expect("hls fixture");
    let lines: Vec<String> = text
        .lines()
        .map(|l| match l.starts_with('#') || l.is_empty() {
            true => l.to_owned(),
            false => format!("{base}{l}"),
        })
        .collect();
    assert!(lines.iter().any(|l| l.starts_with(base)), "{text}");
    lines.join("\n") + "\n"
}

/// The fixture manifest with an MPD-level `<BaseURL>` of `base`.
fn dash_manifest(fx: &Path, base: &str) -> String {
    let text = std::fs::read_to_string(fx.join("dash/manifest.mpd")).expect("dash fixture");
    let at = text.find("<Period").expect("a Period");
    format!(
        "{}<BaseURL>{base}</BaseURL>\n\t{}",
        &text[..at],
        &text[at..]
    )
}

/// The sidecar's egress mode a test runs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Jobs in network namespaces of their own: what the sidecar picks as root.
    Netns,
    /// `streamgate-sidecar --no-netns`: jobs are told to use their proxy, nothing more.
    Proxy,
}

impl Mode {
    /// What `/readyz` and the welcome frame call it.
    fn name(self) -> &'static str {
        match self {
            Mode::Netns => "netns",
            Mode::Proxy => "proxy",
        }
    }

    fn sidecar_args(self) -> Vec<String> {
        match self {
            Mode::Netns => Vec::new(),
            Mode::Proxy => vec!["--no-netns".to_owned()],
        }
    }
}

/// The embedded default (no `--allow-private-urls`) with the sidecar in `mode`, checked by
/// `/readyz`: a test meant for one mode never runs in the other.
async fn gateway(mode: Mode) -> Gateway {
    let gw = Gateway::start(GatewayOptions {
        allow_private_urls: false,
        sidecar_args: mode.sidecar_args(),
        ..GatewayOptions::default()
    })
    .await;
    let ready = gw.readiness().await;
    assert_eq!(
        ready["egress"],
        mode.name(),
        "{ready}\n{}",
        tail(&gw.logs(), 40)
    );
    gw
}

/// `GET` through curl (no proxy, bounded).
async fn get(url: String) -> CurlResult {
    blocking(move || curl(&["--noproxy", "*", "--max-time", "120"], &url)).await
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// What a refusal must look like: a short 4xx problem (never media), with `status` and,
/// when given, `code`.
fn refused(r: &CurlResult, status: u16, code: Option<&str>) -> Result<(), String> {
    let body = String::from_utf8_lossy(&r.body[..r.body.len().min(600)]).into_owned();
    let problem: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    let mut wrong = Vec::new();
    if r.exit != 0 {
        wrong.push(format!("curl exit {} ({})", r.exit, r.stderr.trim()));
    }
    if !(400..500).contains(&r.status) {
        wrong.push(format!("status {} is not 4xx", r.status));
    } else if r.status != status {
        wrong.push(format!("status {} instead of {status}", r.status));
    }
    if r.header("content-type") != Some("application/problem+json") {
        wrong.push(format!("content-type {:?}", r.header("content-type")));
    }
    if r.body.len() >= 2048 || r.body.windows(4).any(|w| w == b"ftyp") {
        wrong.push(format!("{} bytes of body: media?", r.body.len()));
    }
    if let Some(code) = code
        && problem["code"] != code
    {
        wrong.push(format!("code {} instead of {code}", problem["code"]));
    }
    if problem["request_id"].as_str().is_none()
        || problem["request_id"] != r.header("x-request-id").unwrap_or("-")
    {
        wrong.push("no request_id matching X-Request-Id".into());
    }
    // A job's failure is told in one generic sentence: yt-dlp's message (hosts, ports,
    // errno texts) stays in the log.
    if code == Some("egress_denied") {
        let detail = problem["detail"].as_str().unwrap_or_default();
        let leaks = [
            "127.0.0.1",
            "::1",
            "private.test",
            "mixed.test",
            ":80",
            "8080",
            "rrno",
            "ERROR",
        ];
        if let Some(leak) = leaks.iter().find(|l| detail.contains(*l)) {
            wrong.push(format!("the detail names {leak:?}: {detail:?}"));
        }
    }
    match wrong.is_empty() {
        true => Ok(()),
        false => Err(format!("{}; body: {body}", wrong.join(", "))),
    }
}

/// A token for `url` sealed by the gateway's own key with the real token plugin, without
/// `streamgate mint`'s own checks: a token may carry any text (the old service's links,
/// another minting tool), and the gateway must still refuse it.
async fn seal_raw(gw: &Gateway, url: &str, format: &str) -> String {
    use streamgate::plugin::{EngineSettings, PluginEngine, StreamRequest};
    let config = streamgate::state::embedded_config(gw.state_dir(), false).unwrap();
    let engine = PluginEngine::new(EngineSettings::default()).unwrap();
    let tenants = streamgate::tenant::Tenants::build(&engine, &config).unwrap();
    let tenant = tenants.default_tenant();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let req = StreamRequest {
        url: url.to_owned(),
        format: format.to_owned(),
        filename: None,
        expires_at: Some(now.as_secs() + 3600),
    };
    tenant.token.seal(&tenant.id, &req).await.unwrap().unwrap()
}

/// One attempt to reach the private service: `(what, url, format, status, code)`.
type Attack = (
    &'static str,
    String,
    &'static str,
    u16,
    Option<&'static str>,
);

/// Streams each attack through the gateway; every one must be refused with no request
/// reaching the private service. All are tried before failing, so one run shows them all.
async fn assert_all_refused(world: &World, gw: &Gateway, attacks: Vec<Attack>) {
    let mut failures = Vec::new();
    for (what, url, format, status, code) in attacks {
        let started = Instant::now();
        let token = match url.contains('\\') {
            true => seal_raw(gw, &url, format).await,
            false => gw.mint(&url, format),
        };
        let before = world.private_hits();
        let r = get(gw.stream_url(&token)).await;
        let mut verdict = refused(&r, status, code);
        if world.private_hits() != before {
            let leak = format!("the private service was asked: {}", world.private_log());
            verdict = Err(verdict
                .err()
                .map_or(leak.clone(), |e| format!("{leak}; {e}")));
        }
        let secs = started.elapsed().as_secs_f64();
        match verdict {
            Ok(()) => {
                let p: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
                eprintln!(
                    "refused ({secs:.1} s): {what}: {url} → {} {}",
                    r.status, p["code"]
                );
            }
            Err(e) => {
                eprintln!("NOT REFUSED ({secs:.1} s): {what}: {url}: {e}");
                failures.push(format!("{what} ({url}): {e}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of the attacks were not refused as they must be:\n- {}\n\ngateway log (tail):\n{}",
        failures.len(),
        failures.join("\n- "),
        tail(&gw.logs(), 60)
    );
    assert_eq!(world.private_hits(), 0, "{}", world.private_log());
}

// ---------------------------------------------------------------------------------------
// The harness itself.

/// The namespace works as the other tests assume: names resolve through the private hosts
/// file, the public origin answers on 198.51.100.2:80, the private service on loopback, and
/// 198.51.100.3 is a usable client address. (The parent process checks after every test
/// that its own namespace carries no 198.51.100.x address and that `/etc/hosts` is
/// unchanged.)
#[test]
fn harness_namespace_has_a_public_origin() {
    netns::run("harness_namespace_has_a_public_origin", async {
        let world = World::start();
        let want = sha256_file(&fixtures().join("progressive.mp4")).unwrap();
        let resolved: Vec<IpAddr> = tokio::net::lookup_host("mixed.test:80")
            .await
            .unwrap()
            .map(|a| a.ip())
            .collect();
        assert!(
            resolved.contains(&IpAddr::V4(PUBLIC_IP))
                && resolved.contains(&IpAddr::V4(Ipv4Addr::LOCALHOST)),
            "mixed.test → {resolved:?}"
        );
        for (client_ip, url, server) in [
            (None, PUBLIC_MEDIA, &world.public),
            (Some(CLIENT_IP), PUBLIC_MEDIA, &world.public),
            (None, "http://private.test/progressive.mp4", &world.private),
            (None, "http://[::1]/progressive.mp4", &world.private6),
        ] {
            let mut client = reqwest::Client::builder().no_proxy();
            if let Some(ip) = client_ip {
                client = client.local_address(IpAddr::V4(ip));
            }
            let r = client.build().unwrap().get(url).send().await.unwrap();
            assert_eq!(r.status(), 200, "{url}");
            assert_eq!(sha256_hex(&r.bytes().await.unwrap()), want, "{url}");
            assert!(server.hits("/progressive.mp4") >= 1, "{url}");
        }
        let page = reqwest::get("http://public.test/private/redirect").await;
        assert_eq!(
            page.unwrap().status(),
            200,
            "a plain client follows the redirect"
        );
        assert_eq!(world.private.hits("/progressive.mp4"), 2);
    });
}

/// The outer half of the harness: outside any test namespace, the machine has no
/// TEST-NET-2 address (the namespace tests must never add one here).
#[test]
fn harness_machine_namespace_is_untouched() {
    if netns::inside() {
        return;
    }
    assert!(
        netns::test_net_addresses().is_empty(),
        "{:?}",
        netns::test_net_addresses()
    );
    let hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
    assert!(!hosts.contains("public.test"), "{hosts}");
}

// ---------------------------------------------------------------------------------------
// With the default policy the public origin streams, by every route the attacks use.

/// `async fn body(mode: Mode)` as two tests, each in a namespace of its own: `netns` (the
/// sidecar's default as root) and `proxy` (`--no-netns`).
macro_rules! in_both_modes {
    ($netns:ident, $proxy:ident, $body:ident) => {
        #[test]
        fn $netns() {
            netns::run(stringify!($netns), $body(Mode::Netns));
        }

        #[test]
        fn $proxy() {
            netns::run(stringify!($proxy), $body(Mode::Proxy));
        }
    };
}

in_both_modes!(
    public_origin_streams,
    public_origin_streams_in_proxy_mode,
    public_origin_streams_in
);

async fn public_origin_streams_in(mode: Mode) {
    let world = World::start();
    let gw = gateway(mode).await;
    let want = sha256_file(&fixtures().join("progressive.mp4")).unwrap();
    let routes = [
        (PUBLIC_MEDIA, "b", Some("video/mp4")),
        ("http://public.test/public/redirect", "b", Some("video/mp4")),
        (
            "http://public.test/public/video.html",
            "b",
            Some("video/mp4"),
        ),
        ("http://public.test/public/og.html", "b", Some("video/mp4")),
        // Two videos on a page: one entry only, the first.
        (
            "http://public.test/public/two-videos.html",
            "b",
            Some("video/mp4"),
        ),
        ("http://public.test/public/hls/index.m3u8", "b", None),
        ("http://public.test/public/dash/manifest.mpd", "bv+ba", None),
    ];
    for (url, format, mime) in routes {
        let started = Instant::now();
        let r = get(gw.stream_url(&gw.mint(url, format))).await;
        assert_eq!(
            (r.exit, r.status),
            (0, 200),
            "{url}: {:?} {}\n{}",
            r.headers,
            String::from_utf8_lossy(&r.body[..r.body.len().min(600)]),
            tail(&gw.logs(), 60)
        );
        if mime.is_some() {
            // Progressive media arrives byte for byte.
            assert_eq!(r.header("content-type"), mime, "{url}");
            assert_eq!(sha256_hex(&r.body), want, "{url}");
        } else {
            assert!(r.body.len() > 100_000, "{url}: {} bytes", r.body.len());
        }
        eprintln!(
            "{url} -f {format}: 200, {} bytes, {:?} ({:.1} s)",
            r.body.len(),
            r.header("content-type"),
            started.elapsed().as_secs_f64()
        );
    }
    let second = world.public.hits("/audio-only.m4a");
    assert_eq!(second, 0, "the page's second entry was fetched");
    assert_eq!(world.private_hits(), 0, "{}", world.private_log());
}

// ---------------------------------------------------------------------------------------
// Each way into the private service is refused with a 4xx problem.

// Names, hops and ports decided by the sidecar's egress after DNS: a name resolving to
// loopback, a name with one public and one private record, a public page redirecting to a
// private address or to such names, a public address on a port the rules do not allow.
in_both_modes!(
    names_redirects_and_ports_are_refused_by_the_egress,
    names_redirects_and_ports_are_refused_by_the_egress_in_proxy_mode,
    names_redirects_and_ports_in
);

async fn names_redirects_and_ports_in(mode: Mode) {
    let world = World::start();
    let gw = gateway(mode).await;
    let attacks: Vec<Attack> = [
        (
            "a name resolving to loopback",
            "http://private.test/progressive.mp4",
        ),
        (
            "a name with a public and a private record",
            "http://mixed.test/progressive.mp4",
        ),
        (
            "a 302 to a private address",
            "http://public.test/private/redirect",
        ),
        (
            "a 302 to a name resolving to loopback",
            "http://public.test/private/redirect-name",
        ),
        (
            "a 302 to a name with a private record",
            "http://public.test/private/redirect-mixed",
        ),
        (
            "a public address on port 8080",
            "http://public.test:8080/progressive.mp4",
        ),
        (
            "a 302 to port 8080",
            "http://public.test/private/redirect-port",
        ),
    ]
    .into_iter()
    .map(|(what, url)| (what, url.to_owned(), "b", 403, Some("egress_denied")))
    .collect();
    assert_all_refused(&world, &gw, attacks).await;
}

// Media URLs found inside attacker-controlled content: `<video src>`, `og:video`, HLS
// segments, a DASH BaseURL (fetched by yt-dlp or by ffmpeg).
in_both_modes!(
    pages_and_manifests_naming_private_urls_are_refused,
    pages_and_manifests_naming_private_urls_are_refused_in_proxy_mode,
    pages_and_manifests_in
);

async fn pages_and_manifests_in(mode: Mode) {
    let world = World::start();
    let gw = gateway(mode).await;
    let denied = Some("egress_denied");
    let attacks: Vec<Attack> = vec![
        (
            "a page whose <video src> is private",
            "http://public.test/private/video.html".into(),
            "b",
            403,
            denied,
        ),
        (
            "a page whose og:video is private",
            "http://public.test/private/og.html".into(),
            "b",
            403,
            denied,
        ),
        (
            "an HLS playlist whose segments are private",
            "http://public.test/private/hls/index.m3u8".into(),
            "b",
            403,
            denied,
        ),
        (
            "a DASH manifest whose BaseURL is private",
            "http://public.test/private/dash/manifest.mpd".into(),
            "bv+ba",
            403,
            denied,
        ),
    ];
    assert_all_refused(&world, &gw, attacks).await;
}

// Spellings of internal addresses, refused by the gateway before any job: the URL rule
// (userinfo, backslash: 400) and the policy's address check on the canonical host (403),
// which also knows the names that are loopback by definition (`localhost`).
in_both_modes!(
    url_spellings_of_internal_addresses_are_refused,
    url_spellings_of_internal_addresses_are_refused_in_proxy_mode,
    url_spellings_in
);

async fn url_spellings_in(mode: Mode) {
    let world = World::start();
    let gw = gateway(mode).await;
    let policy = Some("policy_denied");
    let bad_url = Some("bad_url");
    let attacks: Vec<Attack> = vec![
        (
            "userinfo with a backslash",
            "http://public.test\\@127.0.0.1/progressive.mp4".into(),
            "b",
            400,
            bad_url,
        ),
        (
            "userinfo",
            "http://public.test@127.0.0.1/progressive.mp4".into(),
            "b",
            400,
            bad_url,
        ),
        (
            "IPv6 loopback",
            "http://[::1]/progressive.mp4".into(),
            "b",
            403,
            policy,
        ),
        (
            "IPv4-mapped IPv6 loopback",
            "http://[::ffff:127.0.0.1]/progressive.mp4".into(),
            "b",
            403,
            policy,
        ),
        (
            "decimal",
            "http://2130706433/progressive.mp4".into(),
            "b",
            403,
            policy,
        ),
        (
            "octal",
            "http://0177.0.0.1/progressive.mp4".into(),
            "b",
            403,
            policy,
        ),
        (
            "hex",
            "http://0x7f000001/progressive.mp4".into(),
            "b",
            403,
            policy,
        ),
        (
            "localhost",
            "http://localhost/progressive.mp4".into(),
            "b",
            403,
            policy,
        ),
        (
            "cloud metadata",
            "http://169.254.169.254/latest/meta-data/".into(),
            "b",
            403,
            policy,
        ),
    ];
    assert_all_refused(&world, &gw, attacks).await;
}

// ---------------------------------------------------------------------------------------
// Netns mode: a job that ignores the proxy reaches nothing.

/// A stand-in for yt-dlp that ignores every proxy setting. Asked for its version it gives
/// one; run any other way (the sidecar's extraction, `-J`), it opens raw TCP connections to
/// the public origin and the private services, sends a request on each that connects, and
/// prints an info JSON whose title reports each attempt: `HOST:80 connected|blocked …`.
fn fake_ytdlp(dir: &Path) -> PathBuf {
    let interpreter = std::fs::read_to_string(yt_dlp()).unwrap();
    let shebang = interpreter.lines().next().unwrap();
    assert!(
        shebang.starts_with("#!") && shebang.contains("python"),
        "{shebang}"
    );
    let script = format!(
        r#"{shebang}
import json, socket, sys
if "--version" in sys.argv:
    print("2026.10.26")
    sys.exit(0)
report = []
for family, host in ((socket.AF_INET, "198.51.100.2"), (socket.AF_INET, "127.0.0.1"),
                     (socket.AF_INET6, "::1")):
    try:
        s = socket.socket(family, socket.SOCK_STREAM)
        s.settimeout(3)
        s.connect((host, 80))
        s.sendall(b"GET /progressive.mp4 HTTP/1.0\r\nHost: raw\r\n\r\n")
        status = s.recv(64).split(b"\r\n")[0].decode("latin-1")
        report.append(f"{{host}}:80 connected {{status}}")
    except OSError as e:
        report.append(f"{{host}}:80 blocked errno {{e.errno}}")
print("; ".join(report), file=sys.stderr)
url = "http://public.test/progressive.mp4"
print(json.dumps({{
    "id": "raw", "title": "; ".join(report), "extractor": "generic", "extractor_key": "Generic",
    "webpage_url": url, "original_url": url, "url": url, "ext": "mp4", "protocol": "http",
    "format_id": "0",
    "formats": [{{"format_id": "0", "url": url, "ext": "mp4", "protocol": "http"}}],
}}))
"#
    );
    let path = dir.join("fake-yt-dlp");
    std::fs::write(&path, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// The attempts a run of the fake reported, one per address, in order.
fn attempts(report: &str) -> Vec<String> {
    report
        .split("; ")
        .filter(|l| l.contains(":80 "))
        .map(str::to_owned)
        .collect()
}

/// As root the sidecar confines each job to a network namespace of its own whose only
/// listener is the job's proxy: `/readyz` says `"egress":"netns"`, and a "yt-dlp" opening
/// raw sockets to the public origin and the private services connects to neither.
#[test]
fn jobs_that_ignore_the_proxy_cannot_connect_in_netns_mode() {
    netns::run(
        "jobs_that_ignore_the_proxy_cannot_connect_in_netns_mode",
        async {
            assert!(
                nix::unistd::geteuid().is_root(),
                "netns mode needs root here"
            );
            let world = World::start();
            let gw = gateway(Mode::Netns).await;
            let ready = gw.readiness().await;
            assert_eq!(
                ready["egress"],
                "netns",
                "{ready}\n{}",
                tail(&gw.logs(), 40)
            );
            drop(gw);

            let dir = tempfile::tempdir().unwrap();
            let fake = fake_ytdlp(dir.path());
            let sc = Sidecar::start(SidecarOptions {
                pool: Some(false),
                yt_dlp: Some(fake.clone()),
                ..Default::default()
            })
            .await;
            let mut client = Client::connect(sc.socket()).await.unwrap();
            assert_eq!(
                client.welcome.egress,
                EgressMode::Netns,
                "{:?}",
                client.welcome
            );
            // Even rules that allow every address and port: the namespace alone stops it.
            let job = ResolveJob {
                url: PUBLIC_MEDIA.into(),
                tenant: Some("tests".into()),
                egress: loopback_egress(),
                ..Default::default()
            };
            client.send(Frame::Resolve(job)).await.unwrap();
            let t = client.collect(SLOW).await;
            let title = t
                .info
                .as_ref()
                .and_then(|i| i.title.clone())
                .unwrap_or_default();
            let report = attempts(&title);
            eprintln!("the job's raw sockets: {report:#?}");
            let ctx = || format!("{report:?} error {:?}\n{}", t.error, tail(&sc.logs(), 40));
            assert_eq!(report.len(), 3, "{}", ctx());
            for (line, host) in report.iter().zip(["198.51.100.2", "127.0.0.1", "::1"]) {
                let blocked = line.starts_with(&format!("{host}:80 blocked"));
                assert!(blocked, "{host}: {}", ctx());
            }
            assert_eq!(
                world.public.total_hits(),
                0,
                "{:?}",
                world.public.all_hits()
            );
            assert_eq!(world.private_hits(), 0, "{}", world.private_log());

            // Control: the same program outside a job's namespace connects to all three,
            // so "blocked" above was the namespace's doing.
            let out = std::process::Command::new(&fake).output().unwrap();
            let direct = attempts(String::from_utf8_lossy(&out.stderr).trim());
            assert!(
                direct.len() == 3 && direct.iter().all(|l| l.contains(" connected HTTP/1.")),
                "{direct:?}"
            );
            assert!(world.public.total_hits() >= 1 && world.private_hits() >= 2);
        },
    );
}

/// Proxy mode's stated limit (docs/security.md, "What the egress enforces in each mode"):
/// nothing stops a job's process that ignores the proxy. With `--no-netns`, `/readyz` says
/// `"egress":"proxy"`, the welcome frame says so too, and the same raw-socket "yt-dlp"
/// *does* connect to the public origin and to both private services — even under the
/// strictest rules (the default: public addresses, ports 80 and 443), which every request
/// through the proxy obeys (the `…_in_proxy_mode` tests above). If this test fails because
/// the job could not connect, proxy mode confines more than the docs say: update them.
#[test]
fn jobs_that_ignore_the_proxy_can_connect_in_proxy_mode() {
    netns::run(
        "jobs_that_ignore_the_proxy_can_connect_in_proxy_mode",
        async {
            let world = World::start();
            let gw = gateway(Mode::Proxy).await;
            let ready = gw.readiness().await;
            assert_eq!(ready["egress"], "proxy", "{ready}");
            drop(gw);

            let dir = tempfile::tempdir().unwrap();
            let fake = fake_ytdlp(dir.path());
            let sc = Sidecar::start(SidecarOptions {
                pool: Some(false),
                yt_dlp: Some(fake),
                extra: vec!["--no-netns".into()],
                ..Default::default()
            })
            .await;
            let mut client = Client::connect(sc.socket()).await.unwrap();
            assert_eq!(
                client.welcome.egress,
                EgressMode::Proxy,
                "{:?}",
                client.welcome
            );
            // The strict default rules: no egress field at all.
            let job = ResolveJob {
                url: PUBLIC_MEDIA.into(),
                tenant: Some("tests".into()),
                ..Default::default()
            };
            client.send(Frame::Resolve(job)).await.unwrap();
            let t = client.collect(SLOW).await;
            let title = t
                .info
                .as_ref()
                .and_then(|i| i.title.clone())
                .unwrap_or_default();
            let report = attempts(&title);
            eprintln!("the job's raw sockets in proxy mode: {report:#?}");
            let ctx = || format!("{report:?} error {:?}\n{}", t.error, tail(&sc.logs(), 40));
            assert_eq!(report.len(), 3, "{}", ctx());
            for (line, host) in report.iter().zip(["198.51.100.2", "127.0.0.1", "::1"]) {
                let connected = line.starts_with(&format!("{host}:80 connected HTTP/1."));
                assert!(connected, "{host}: {}", ctx());
            }
            assert!(world.public.hits("/progressive.mp4") >= 1);
            assert!(
                world.private.hits("/progressive.mp4") >= 1,
                "{}",
                world.private_log()
            );
            assert!(
                world.private6.hits("/progressive.mp4") >= 1,
                "{}",
                world.private_log()
            );
        },
    );
}

// ---------------------------------------------------------------------------------------
// POST /v1/resolve is not anonymous by default.

/// `POST /v1/resolve` with `body`, from `from` (none: loopback) to `port` on 198.51.100.2
/// (or 127.0.0.1 from loopback), with an optional Host.
async fn resolve_from(
    from: Option<Ipv4Addr>,
    port: u16,
    host: Option<&str>,
    url: &str,
) -> (u16, Option<String>, Value) {
    let mut client = reqwest::Client::builder().no_proxy();
    let target = match from {
        Some(ip) => {
            client = client.local_address(IpAddr::V4(ip));
            PUBLIC_IP
        }
        None => Ipv4Addr::LOCALHOST,
    };
    let mut req = client
        .build()
        .unwrap()
        .post(format!("http://{target}:{port}/v1/resolve"))
        .header("content-type", "application/json")
        .body(json!({ "url": url, "format": "b" }).to_string());
    if let Some(host) = host {
        req = req.header("host", host);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let retry = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap_or_default().to_owned());
    let ct = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap_or_default().to_owned());
    let body = r.bytes().await.unwrap();
    let mut value = serde_json::from_slice(&body)
        .unwrap_or_else(|_| json!({ "raw": String::from_utf8_lossy(&body) }));
    value["_content_type"] = json!(ct);
    (status, retry, value)
}

fn port_of(gw: &Gateway) -> u16 {
    let base = gw.url("");
    base.rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches('/')
        .parse()
        .unwrap()
}

fn assert_401(status: u16, body: &Value, what: &str, logs: &str) {
    assert_eq!(status, 401, "{what}: {body}\n{}", tail(logs, 40));
    assert_eq!(
        body["_content_type"], "application/problem+json",
        "{what}: {body}"
    );
    assert!(body["formats"].is_null(), "{what}: no answer: {body}");
}

/// The example config with its secrets in the environment, the `[sidecar]` section swapped
/// for one that works here, and its Redis the test's own.
fn example_config(dir: &Path, redis: &RedisServer) -> (PathBuf, Vec<(String, String)>) {
    let text = std::fs::read_to_string(repo_root().join("examples/streamgate.toml")).unwrap();
    let (head, rest) = text.split_once("[sidecar]").expect("a [sidecar] section");
    let at = rest.find("\n[").expect("a section after [sidecar]");
    let mut patched = format!("{head}[sidecar]\nmax_jobs = 4\n{}", &rest[at..]);
    let redis_line = patched
        .lines()
        .find(|l| l.trim_start().starts_with("redis_url"))
        .expect("a redis_url")
        .to_owned();
    patched = patched.replace(&redis_line, &format!("redis_url = \"{}\"", redis.url()));
    let path = dir.join("streamgate.toml");
    std::fs::write(&path, patched).unwrap();
    let key = streamgate::plugin::builtin::xchacha_generate_key;
    let env = vec![
        ("MEDIA_TOKEN_KEYS".to_owned(), key()),
        ("PARTNER_TOKEN_KEYS".to_owned(), key()),
        ("PARTNER_API_KEY".to_owned(), "partner-secret".to_owned()),
    ];
    (path, env)
}

/// Anonymous resolve from a non-loopback client is a 401: on the embedded default (where a
/// loopback client may resolve) and on the example config's public `media` tenant.
#[test]
fn anonymous_resolve_from_a_remote_client_is_refused() {
    netns::run("anonymous_resolve_from_a_remote_client_is_refused", async {
        let world = World::start();
        let gw = Gateway::start(GatewayOptions {
            allow_private_urls: false,
            listen: Some("0.0.0.0:0".into()),
            ..GatewayOptions::default()
        })
        .await;
        let port = port_of(&gw);
        let (status, _, body) = resolve_from(Some(CLIENT_IP), port, None, PUBLIC_MEDIA).await;
        assert_401(
            status,
            &body,
            "embedded default, from 198.51.100.3",
            &gw.logs(),
        );
        assert_eq!(
            world.public.total_hits(),
            0,
            "refused before any extraction"
        );
        let (status, _, body) = resolve_from(None, port, None, PUBLIC_MEDIA).await;
        assert_eq!(status, 200, "embedded default, from loopback: {body}");
        assert!(!body["formats"].as_array().unwrap().is_empty(), "{body}");
        drop(gw);

        let dir = tempfile::tempdir().unwrap();
        let redis = RedisServer::start();
        let (config, env) = example_config(dir.path(), &redis);
        let gw = Gateway::start(GatewayOptions {
            config: Some(config),
            allow_private_urls: false,
            listen: Some("0.0.0.0:0".into()),
            env,
            ..GatewayOptions::default()
        })
        .await;
        let port = port_of(&gw);
        for host in ["media.example.com", "anything.test"] {
            let url = "http://media.example.com/clip.mp4";
            let (status, _, body) = resolve_from(Some(CLIENT_IP), port, Some(host), url).await;
            let what = format!("example config, Host {host}, from 198.51.100.3");
            assert_401(status, &body, &what, &gw.logs());
        }
    });
}

/// Resolves are limited per client: past `resolves_per_minute_per_client` a loopback
/// client gets 429 (with Retry-After) while another client still gets answers.
#[test]
fn resolves_are_limited_per_client() {
    netns::run("resolves_are_limited_per_client", async {
        let _world = World::start();
        let dir = tempfile::tempdir().unwrap();
        let key = streamgate::plugin::builtin::xchacha_generate_key();
        let config = dir.path().join("streamgate.toml");
        std::fs::write(
            &config,
            format!(
                r#"default_tenant = "t"
[sidecar]
max_jobs = 4
[[tenant]]
id = "t"
token = {{ builtin = "token-xchacha", config = {{ keys = "{key}" }} }}
policy = {{ builtin = "policy-allowlist", config = {{ hosts = "*", resolve_clients = "127.0.0.0/8,198.51.100.3/32" }} }}
limits = {{ resolves_per_minute_per_client = 2 }}
"#
            ),
        )
        .unwrap();
        let gw = Gateway::start(GatewayOptions {
            config: Some(config),
            allow_private_urls: false,
            listen: Some("0.0.0.0:0".into()),
            ..GatewayOptions::default()
        })
        .await;
        let port = port_of(&gw);
        for n in 1..=2 {
            let (status, _, body) = resolve_from(None, port, None, PUBLIC_MEDIA).await;
            assert_eq!(status, 200, "resolve {n}: {body}\n{}", tail(&gw.logs(), 40));
        }
        let (status, retry, body) = resolve_from(None, port, None, PUBLIC_MEDIA).await;
        assert_eq!(status, 429, "resolve 3: {body}\n{}", tail(&gw.logs(), 40));
        assert_eq!(body["_content_type"], "application/problem+json", "{body}");
        assert_eq!(body["code"], "rate_limited", "{body}");
        assert!(
            retry.is_some_and(|s| s.parse::<u64>().is_ok()),
            "Retry-After"
        );
        let (status, _, body) = resolve_from(Some(CLIENT_IP), port, None, PUBLIC_MEDIA).await;
        assert_eq!(
            status, 200,
            "another client is not limited by the first: {body}"
        );
    });
}

// ---------------------------------------------------------------------------------------
// Code planted where a job could import it is not imported.

/// Files that run `open(MARKER)` if Python or yt-dlp imports them, at every place a job's
/// cwd, HOME or XDG_CONFIG_HOME could make them importable.
const PLANTS: &[(&str, &str)] = &[
    ("json.py", "json"),
    ("sitecustomize.py", "sitecustomize"),
    ("yt_dlp_plugins/extractor/sg_cwd.py", "plugin-in-cwd"),
    (
        "yt-dlp/plugins/sgx/yt_dlp_plugins/extractor/sg_xdg.py",
        "plugin-in-xdg-config",
    ),
    (
        ".yt-dlp/plugins/sgh/yt_dlp_plugins/extractor/sg_home.py",
        "plugin-in-home",
    ),
    (
        ".config/yt-dlp/plugins/sgc/yt_dlp_plugins/extractor/sg_config.py",
        "plugin-in-home-config",
    ),
    (
        "yt-dlp-plugins/sgp/yt_dlp_plugins/extractor/sg_plugins.py",
        "plugin-in-yt-dlp-plugins",
    ),
];

/// Writes every plant into `dir`; returns how many were written.
fn plant(dir: &Path, markers: &Path) -> usize {
    let mut written = 0;
    for (file, marker) in PLANTS {
        let path = dir.join(file);
        let _ = std::fs::create_dir_all(path.parent().unwrap());
        let code = format!("open({:?}, 'w').close()\n", markers.join(marker));
        written += usize::from(std::fs::write(&path, code).is_ok());
    }
    written
}

fn markers_in(markers: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(markers)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Watches `work` and plants the files into every directory created there, the moment
/// inotify reports it: well before the job's Python imports anything (yt-dlp imports `json`
/// tens of milliseconds after its start and loads plugins later still).
struct Planter {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<Planted>>,
}

/// One job directory planted into.
#[derive(Debug)]
struct Planted {
    name: String,
    /// Plants written (all of them: the directory was still there).
    written: usize,
    /// From the directory's creation (its birth time, where the file system keeps one) to
    /// the last plant written.
    after: Option<Duration>,
}

impl Planter {
    fn start(work: &Path, markers: &Path) -> Planter {
        let watch = DirWatch::new(work).unwrap();
        let (work, markers) = (work.to_owned(), markers.to_owned());
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut planted = Vec::new();
            while !stopped.load(Ordering::Relaxed) {
                for name in watch.touched() {
                    let dir = work.join(&name);
                    // Direct children only (gVisor's inotify has been seen to report deeper
                    // paths too).
                    let child = !name.contains('/');
                    if child && dir.is_dir() && !planted.iter().any(|p: &Planted| p.name == name) {
                        let born = std::fs::metadata(&dir).and_then(|m| m.created()).ok();
                        let written = plant(&dir, &markers);
                        let after = born.and_then(|b| b.elapsed().ok());
                        planted.push(Planted {
                            name,
                            written,
                            after,
                        });
                    }
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            planted
        });
        Planter { stop, thread }
    }

    /// The job directories it planted into.
    fn finish(self) -> Vec<Planted> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// Streams with planting on until the plants land in time (under load the planter can be
/// late: that run proves nothing, so it is run again, at most [`PLANT_TRIES`] times); each
/// run asserts nothing was imported and nothing left behind.
async fn stream_with_plants(sc: &Sidecar, markers: &Path, what: &str) {
    for attempt in 1..=PLANT_TRIES {
        let planted = stream_planted(sc, markers, what).await;
        // Python needs far longer than this before its first import of the job's code.
        let late = |p: &Planted| p.after.is_some_and(|d| d > Duration::from_millis(100));
        if !planted.iter().any(late) {
            eprintln!("{what}: planted {planted:?}; nothing imported; work dir empty after");
            return;
        }
        eprintln!("{what}: attempt {attempt} planted too late to prove anything: {planted:?}");
    }
    panic!("{what}: planted too late to prove anything in {PLANT_TRIES} runs");
}

/// Runs of [`stream_with_plants`] before a planter that is always late fails the test.
const PLANT_TRIES: usize = 5;

/// One stream with planting on: its bytes whole, every plant written while the job ran,
/// nothing imported, nothing left behind. Returns what was planted.
async fn stream_planted(sc: &Sidecar, markers: &Path, what: &str) -> Vec<Planted> {
    let planter = Planter::start(sc.work_dir(), markers);
    let t = Client::stream(sc.socket(), PUBLIC_MEDIA, "b").await;
    let planted = planter.finish();
    t.assert_complete(&sc.logs(), "mp4", "video/mp4");
    let want = sha256_file(&fixtures().join("progressive.mp4")).unwrap();
    assert_eq!(sha256_hex(&t.data), want, "{what}");
    assert!(
        !planted.is_empty(),
        "{what}: no job directory appeared under the work dir\n{}",
        sc.logs()
    );
    for p in &planted {
        assert_eq!(
            p.written,
            PLANTS.len(),
            "{what}: planted while the job ran: {p:?}"
        );
    }
    assert_eq!(
        markers_in(markers),
        Vec::<String>::new(),
        "{what}: imported"
    );
    let work = sc.work_dir().to_owned();
    let empty = wait_until(Duration::from_secs(5), || {
        std::fs::read_dir(&work).is_ok_and(|mut d| d.next().is_none())
    })
    .await;
    let left: Vec<_> = std::fs::read_dir(&work)
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(empty, "{what}: job directories left behind: {left:?}");
    planted
}

/// A `json.py` (and yt-dlp plugin packages) planted in a job's directory the moment it is
/// created is not imported, on the spawn path and the warm pool; the forkserver runs
/// `python -I`; each job's directory is gone after the job.
#[test]
fn code_planted_in_a_job_directory_is_not_imported() {
    netns::run("code_planted_in_a_job_directory_is_not_imported", async {
        let _world = World::start();
        let markers = tempfile::tempdir().unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(markers.path(), std::fs::Permissions::from_mode(0o777)).unwrap();

        // Control: the plants work on an interpreter without -I and a yt-dlp without
        // --no-plugin-dirs whose cwd/HOME/XDG_CONFIG_HOME is the planted directory.
        let control = tempfile::tempdir().unwrap();
        let control_markers = tempfile::tempdir().unwrap();
        plant(control.path(), control_markers.path());
        let python = std::fs::read_to_string(yt_dlp()).unwrap();
        let python = python
            .lines()
            .next()
            .unwrap()
            .trim_start_matches("#!")
            .trim();
        let env = |cmd: &mut std::process::Command| {
            cmd.env_clear()
                .env("PATH", "/usr/bin:/bin")
                .env("HOME", control.path())
                .env("XDG_CONFIG_HOME", control.path())
                .current_dir(control.path());
        };
        let mut c = std::process::Command::new(python);
        c.args(["-c", "import json"]);
        env(&mut c);
        let _ = c.output().unwrap();
        let mut c = std::process::Command::new(yt_dlp());
        c.args([
            "--ignore-config",
            "-s",
            "--",
            "http://public.test/page.html",
        ]);
        env(&mut c);
        let _ = c.output().unwrap();
        let opened = markers_in(control_markers.path());
        assert!(
            opened.contains(&"json".to_owned())
                && opened.contains(&"plugin-in-xdg-config".to_owned()),
            "the control should have imported the plants: {opened:?}"
        );

        // (a) The warm pool's forkserver is an isolated interpreter.
        let sc = Sidecar::start(SidecarOptions {
            pool: Some(true),
            ..Default::default()
        })
        .await;
        let forkserver = {
            let found = wait_until(Duration::from_secs(30), || {
                sc.pool_processes()
                    .iter()
                    .any(|p| p.comm == "sg-forkserver")
            })
            .await;
            assert!(found, "no sg-forkserver under the sidecar\n{}", sc.logs());
            let procs = sc.pool_processes();
            procs
                .into_iter()
                .find(|p| p.comm == "sg-forkserver")
                .unwrap()
        };
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", forkserver.pid)).unwrap();
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let interpreter_flags: Vec<&String> = args
            .iter()
            .skip(1)
            .take_while(|a| a.starts_with('-'))
            .collect();
        assert!(
            interpreter_flags
                .iter()
                .any(|a| *a == "-I"
                    || (a.starts_with('-') && !a.starts_with("--") && a.contains('I'))),
            "the forkserver must run `python -I`: {:?}",
            &args[..args.len().min(4)]
        );
        // (b) on the pool …
        stream_with_plants(&sc, markers.path(), "warm pool").await;
        drop(sc);
        // … and on the spawn path.
        let sc = Sidecar::start(SidecarOptions {
            pool: Some(false),
            ..Default::default()
        })
        .await;
        stream_with_plants(&sc, markers.path(), "spawn (--no-pool)").await;
    });
}
