//! Confinement of the sidecar (issue 13): who may connect to its socket, what environment it
//! and its jobs get, the limits its jobs run under, and its text logs. Run as root (uid
//! 65534 stands for another user).

use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use streamgate_protocol::{ProtocolError, client_handshake, connection};
use streamgate_tests::*;

/// Another user: `nobody` / `nogroup`.
const NOBODY: u32 = 65534;

/// A socket connected to `path` by a forked child running as uid and gid 65534: the kernel
/// records that child as the peer (`SO_PEERCRED` is taken at connect), the test keeps the fd.
fn connect_as_nobody(path: &Path) -> std::io::Result<tokio::net::UnixStream> {
    // Everything the child needs is made before the fork: it may only make syscalls.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    assert!(bytes.len() < addr.sun_path.len(), "socket path too long");
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: plain syscalls; the fd is owned right away.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
    // SAFETY: the child makes async-signal-safe syscalls only, then _exits.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        unsafe {
            let ok = libc::setgroups(0, std::ptr::null()) == 0
                && libc::setgid(NOBODY) == 0
                && libc::setuid(NOBODY) == 0
                && libc::connect(
                    raw,
                    (&raw const addr).cast(),
                    std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
                ) == 0;
            libc::_exit(if ok { 0 } else { 1 });
        }
    }
    if pid < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut status = 0;
    // SAFETY: waits for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        return Err(std::io::Error::other(format!(
            "the uid {NOBODY} child could not connect (status {status:#x})"
        )));
    }
    let std = std::os::unix::net::UnixStream::from(fd);
    std.set_nonblocking(true)?;
    tokio::net::UnixStream::from_std(std)
}

/// A sidecar whose socket uid 65534 can reach through the file system (a directory others
/// may traverse, `--socket-group nogroup`): only the peer check stands in its way.
async fn reachable_sidecar(extra: &[&str]) -> (Sidecar, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let mut args = vec!["--socket-group".to_owned(), "nogroup".to_owned()];
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    let opts = SidecarOptions {
        socket: Some(dir.path().join("sidecar.sock")),
        extra: args,
        ..Default::default()
    };
    (Sidecar::start(opts).await, dir)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_peer_of_another_uid_is_refused_unless_allowed() {
    let (sc, _dir) = reachable_sidecar(&[]).await;
    let mode = std::fs::metadata(sc.socket()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660, "owner and --socket-group only");
    let mut refused = connection(connect_as_nobody(sc.socket()).expect("connect as nobody"));
    let answer = client_handshake(&mut refused, "nobody").await;
    // Closed at once: no welcome, no error frame, only the end of the connection (a reset
    // when our hello was still unread, a broken pipe when it was closed before our hello).
    match answer {
        Err(ProtocolError::Closed { .. }) => {}
        Err(ProtocolError::Io(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
            ) => {}
        other => panic!("uid {NOBODY} got an answer: {other:?}\n{}", sc.logs()),
    }
    assert!(
        wait_until(SLOW, || sc.logs().contains("connection refused")).await,
        "{}",
        sc.logs()
    );
    let logs = sc.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("connection refused"))
        .unwrap();
    assert!(
        line.contains(&format!("uid={NOBODY}"))
            && line.contains("pid=")
            && line.contains("refused=1"),
        "{line}"
    );
    // The sidecar's own uid (the gateway's) is served as before.
    let url = server().url("progressive.mp4");
    let t = Client::stream(sc.socket(), &url, "b").await;
    t.assert_complete(&sc.logs(), "mp4", "video/mp4");
    let file = sha256_file(&fixtures().join("progressive.mp4")).unwrap();
    assert_eq!(sha256_hex(&t.data), file);
    drop(sc);

    let (sc, _dir) = reachable_sidecar(&["--allow-uid", "65534"]).await;
    let mut allowed = connection(connect_as_nobody(sc.socket()).expect("connect as nobody"));
    let welcome = client_handshake(&mut allowed, "nobody").await;
    assert!(welcome.is_ok(), "{welcome:?}\n{}", sc.logs());
    assert!(!sc.logs().contains("connection refused"), "{}", sc.logs());
    eprintln!("uid {NOBODY}: refused (socket mode {mode:o}), then allowed by --allow-uid");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_default_socket_is_private() {
    let sc = Sidecar::start(SidecarOptions::default()).await;
    let mode = std::fs::metadata(sc.socket()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

/// `/proc/PID/environ` as `NAME=value` texts.
fn environ(pid: u32) -> Vec<String> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    raw.split(|b| *b == 0)
        .filter(|v| !v.is_empty())
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect()
}

/// A config whose one tenant's token keys are a secret given as `{ env = … }`.
fn config_with_env_secret(dir: &Path) -> std::path::PathBuf {
    let text = format!(
        r#"
default_tenant = "main"
[[tenant]]
id = "main"
token = {{ builtin = "token-xchacha", config = {{ keys = {{ env = "SG_TEST_TOKEN_KEYS" }} }} }}
policy = {{ builtin = "policy-allowlist", config = {{ hosts = "*", allow_private = "true" }} }}
egress = {}
"#,
        streamgate_tests::gateway::LOOPBACK_EGRESS
    );
    let path = dir.join("streamgate.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread")]
async fn the_gateways_secrets_reach_neither_the_sidecar_nor_its_jobs() {
    use streamgate_tests::gateway::{Gateway, GatewayOptions, curl};
    const CANARY: &str = "canary-7f3a9d";
    let dir = tempfile::tempdir().unwrap();
    let config = config_with_env_secret(dir.path());
    let key = streamgate::plugin::builtin::xchacha_generate_key();
    let secrets = [
        ("SG_TEST_TOKEN_KEYS".to_owned(), key.clone()),
        ("SECRET_CANARY".to_owned(), CANARY.to_owned()),
    ];
    let gw = Gateway::start(GatewayOptions {
        config: Some(config.clone()),
        allow_private_urls: false,
        env: secrets.to_vec(),
        ..Default::default()
    })
    .await;
    let gateway_env = environ(gw.pid());
    assert!(
        gateway_env.iter().any(|v| v.contains(CANARY)),
        "the gateway has it"
    );
    let sidecar = gw.sidecar_pid().expect("a sidecar runs");
    // The warm pool: the forkserver and its idle workers, each of which becomes a job's
    // yt-dlp.
    assert!(
        wait_until(SLOW, || {
            descendants(sidecar).iter().any(|p| p.comm == "sg-idle")
        })
        .await
    );
    let mut checked = vec![(sidecar, "streamgate-sidecar".to_owned())];
    checked.extend(
        descendants(sidecar)
            .into_iter()
            .map(|p| (p.pid as u32, p.comm)),
    );
    for (pid, comm) in &checked {
        let env = environ(*pid);
        assert!(
            !env.is_empty() || comm != "streamgate-sidecar",
            "{comm} environ readable"
        );
        for secret in [CANARY, key.as_str()] {
            assert!(
                !env.iter().any(|v| v.contains(secret)),
                "{comm} ({pid}) has a secret: {env:?}"
            );
        }
    }
    let names: Vec<String> = environ(sidecar)
        .iter()
        .filter_map(|v| v.split('=').next().map(str::to_owned))
        .collect();
    // The secrets' values are gone and so are their names; what is left is the allowlist.
    for name in &names {
        assert!(
            [
                "PATH",
                "LANG",
                "TZ",
                "TMPDIR",
                "RUST_LOG",
                "RUST_BACKTRACE",
                "RUST_LIB_BACKTRACE",
                "NO_COLOR"
            ]
            .contains(&name.as_str())
                || name.starts_with("LC_"),
            "the sidecar got {name}"
        );
    }
    // Streams still work: a token sealed with the secret key, a whole file.
    let url = server().url("progressive.mp4");
    let mint = std::process::Command::new(release_bin("streamgate"))
        .args(["mint", "--config"])
        .arg(&config)
        .args(["--url", &url, "--format", "b"])
        .envs(secrets.iter().cloned())
        .output()
        .unwrap();
    assert!(
        mint.status.success(),
        "{}",
        String::from_utf8_lossy(&mint.stderr)
    );
    let token = String::from_utf8(mint.stdout).unwrap().trim().to_owned();
    let link = gw.stream_url(&token);
    let got = blocking(move || curl(&[], &link)).await;
    assert_eq!(got.status, 200, "{got:?}\n{}", gw.logs());
    let file = sha256_file(&fixtures().join("progressive.mp4")).unwrap();
    assert_eq!(sha256_hex(&got.body), file);
    eprintln!(
        "sidecar environ: {names:?}; {} processes checked, no secret",
        checked.len()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn client_text_cannot_forge_a_line_of_the_sidecars_log() {
    let sc = Sidecar::start(SidecarOptions::default()).await;
    // serde names the unknown variant in its error, which the sidecar logs.
    let payload = br#"{"url":"http://127.0.0.1/a.mp4","format":"b","range":{"evil\nFORGED 2026 INFO streamgate_sidecar: job done":1}}"#;
    let mut frame = ((payload.len() + 1) as u32).to_be_bytes().to_vec();
    frame.push(streamgate_protocol::kind::STREAM);
    frame.extend_from_slice(payload);
    let replies = send_raw(sc.socket(), &frame, true).await;
    assert!(
        matches!(replies.as_slice(), [streamgate_protocol::Frame::Error(_)]),
        "{replies:?}"
    );
    assert!(
        wait_until(SLOW, || sc.logs().contains("protocol error")).await,
        "{}",
        sc.logs()
    );
    let logs = sc.logs();
    let line = logs.lines().find(|l| l.contains("protocol error")).unwrap();
    assert!(line.contains("evil\\x0aFORGED 2026"), "{line}");
    assert!(
        !logs.lines().any(|l| l.starts_with("FORGED")),
        "a forged line:\n{logs}"
    );
    eprintln!("escaped: {line}");
}

/// One line of `/proc/PID/limits` (e.g. `Max open files`): its soft and hard values.
fn limit(pid: i32, name: &str) -> (String, String) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap_or_default();
    let line = text
        .lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_else(|| panic!("{name} in {text}"));
    let mut values = line[name.len()..].split_whitespace();
    (
        values.next().unwrap().to_owned(),
        values.next().unwrap().to_owned(),
    )
}

/// A `Name:\tvalue` line of `/proc/PID/status`.
fn status_field(pid: i32, name: &str) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .map(|v| v.trim().to_owned())
        .unwrap_or_default()
}

/// The first live job process called `comm` (a stalled upstream keeps it alive), once it
/// is confined: a pool worker names itself before it takes its limits, `no_new_privs` last.
async fn live(sc: &Sidecar, comm: &str) -> i32 {
    let mut pid = None;
    let found = wait_until(SLOW, || {
        pid = sc
            .job_processes()
            .into_iter()
            .find(|p| p.comm == comm && status_field(p.pid, "NoNewPrivs") == "1")
            .map(|p| p.pid);
        pid.is_some()
    })
    .await;
    assert!(found, "no live {comm}:\n{}", sc.logs());
    pid.unwrap()
}

/// What `/proc` says of a confined job process: its three limits and `no_new_privs`.
fn assert_confined(pid: i32, comm: &str, memory_mib: u64, cpu: u64, files: u64) {
    let bytes = (memory_mib << 20).to_string();
    assert_eq!(
        limit(pid, "Max address space"),
        (bytes.clone(), bytes),
        "{comm}"
    );
    assert_eq!(
        limit(pid, "Max cpu time"),
        (cpu.to_string(), (cpu + 1).to_string()),
        "{comm}"
    );
    assert_eq!(
        limit(pid, "Max open files"),
        (files.to_string(), files.to_string()),
        "{comm}"
    );
    assert_eq!(status_field(pid, "NoNewPrivs"), "1", "{comm}");
    eprintln!(
        "{comm} ({pid}): limits as set, NoNewPrivs 1, VmPeak {}, environ {} variables",
        status_field(pid, "VmPeak"),
        environ(pid as u32).len()
    );
}

async fn job_processes_run_confined(pool: bool) {
    let origin = FixtureServer::start(fixtures());
    let sc = Sidecar::start(SidecarOptions {
        pool: Some(pool),
        extra: [
            "--job-memory-mib",
            "1500",
            "--job-cpu-secs",
            "1234",
            "--job-open-files",
            "300",
        ]
        .map(String::from)
        .to_vec(),
        ..Default::default()
    })
    .await;
    // yt-dlp, stalled by its page: a resolve that waits.
    origin.arm("/page.html", http::Fault::StallAfter(10));
    let mut resolve = Client::connect(sc.socket()).await.unwrap();
    resolve
        .send(streamgate_protocol::Frame::Resolve(
            streamgate_protocol::ResolveJob {
                url: origin.url("page.html"),
                format: None,
                tenant: None,
                request_id: None,
                egress: loopback_egress(),
            },
        ))
        .await
        .unwrap();
    let ytdlp = live(&sc, "yt-dlp").await;
    assert_confined(ytdlp, "yt-dlp", 1500, 1234, 300);
    drop(resolve);
    // ffmpeg, merging a DASH video whose second video segment stalls.
    origin.arm(
        "/dash/chunk-stream0-00002.m4s",
        http::Fault::StallAfter(1000),
    );
    let mut merge = Client::connect(sc.socket()).await.unwrap();
    merge
        .start_stream(&origin.url("dash/manifest.mpd"), "bv+ba")
        .await
        .unwrap();
    let ffmpeg = live(&sc, "ffmpeg").await;
    assert_confined(ffmpeg, "ffmpeg", 1500, 1234, 300);
    assert!(
        environ(ffmpeg as u32).is_empty(),
        "ffmpeg gets no environment"
    );
    drop(merge);
    // Nothing is left behind, and a job after them is served whole.
    assert!(wait_until(SLOW, || sc.job_processes().is_empty()).await);
    let t = Client::stream(sc.socket(), &origin.url("progressive.mp4"), "b").await;
    t.assert_complete(&sc.logs(), "mp4", "video/mp4");
}

both_paths!(job_processes_run_confined);
