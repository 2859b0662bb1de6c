//! Confinement of the sidecar (issue 13): who may connect to its socket, what environment it
//! and its jobs get, the limits its jobs run under, and its text logs. Run as root (uid
//! 65534 stands for another user).

use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

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
    let pid = live_where(sc, comm, |pid| status_field(pid, "NoNewPrivs") == "1").await;
    assert!(pid.is_some(), "no live {comm}:\n{}", sc.logs());
    pid.unwrap()
}

/// Waits for a live job process called `comm` for which `is` holds; `None` at [`SLOW`].
async fn live_where(sc: &Sidecar, comm: &str, is: impl Fn(i32) -> bool) -> Option<i32> {
    let mut pid = None;
    wait_until(SLOW, || {
        pid = sc
            .job_processes()
            .into_iter()
            .find(|p| p.comm == comm && is(p.pid))
            .map(|p| p.pid);
        pid.is_some()
    })
    .await;
    pid
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

/// A resolve of `origin`'s page, sent and left waiting: the page stalls after 10 bytes, so
/// its yt-dlp stays alive to be looked at. Dropping the client ends the job.
async fn stalled_resolve(sc: &Sidecar, origin: &FixtureServer) -> Client {
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
    resolve
}

/// A DASH merge (`bv+ba`) of `origin`'s video, sent and left waiting: its video `segment`
/// stalls after 1,000 bytes, so the merging ffmpeg stays alive to be looked at. Dropping the
/// client ends the job.
async fn stalled_merge(sc: &Sidecar, origin: &FixtureServer, segment: &str) -> Client {
    origin.arm(segment, http::Fault::StallAfter(1000));
    let mut merge = Client::connect(sc.socket()).await.unwrap();
    merge
        .start_stream(&origin.url("dash/manifest.mpd"), "bv+ba")
        .await
        .unwrap();
    merge
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
    let resolve = stalled_resolve(&sc, &origin).await;
    let ytdlp = live(&sc, "yt-dlp").await;
    assert_confined(ytdlp, "yt-dlp", 1500, 1234, 300);
    drop(resolve);
    // ffmpeg, merging a DASH video whose second video segment stalls.
    let merge = stalled_merge(&sc, &origin, "/dash/chunk-stream0-00002.m4s").await;
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

/// A yt-dlp uid 65534 can run, installed as deploy/Containerfile installs it: a venv of
/// Debian's `/usr/bin/python3` (3.11, the minor of the project's venv) in a 0755 temp
/// dir, the project's `yt_dlp` package (pure Python) in its site-packages, and pip's entry
/// script, whose `#!` names the venv's python: the pool's forkserver runs that python and
/// imports `yt_dlp` from its site-packages. (The project venv's python lives under /root,
/// mode 0700.)
struct JobYtDlp {
    dir: tempfile::TempDir,
}

impl JobYtDlp {
    fn new() -> JobYtDlp {
        let dir = tempfile::Builder::new()
            .prefix("sg-job-yt-dlp")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let venv = dir.path().join("venv");
        let run = |cmd: &mut std::process::Command| {
            let out = cmd.output().unwrap();
            assert!(out.status.success(), "{cmd:?}: {out:?}");
            String::from_utf8(out.stdout).unwrap().trim().to_owned()
        };
        run(std::process::Command::new("/usr/bin/python3")
            .args(["-m", "venv", "--without-pip"])
            .arg(&venv));
        let ask = |python: &Path, code: &str| {
            run(std::process::Command::new(python).args(["-I", "-c", code]))
        };
        let project_python = yt_dlp().with_file_name("python3");
        let package = ask(
            &project_python,
            "import os, yt_dlp; print(os.path.dirname(yt_dlp.__file__))",
        );
        let site = ask(
            &venv.join("bin/python3"),
            "import sysconfig; print(sysconfig.get_path('purelib'))",
        );
        run(std::process::Command::new("cp").args(["-R", &package, &site]));
        let script = venv.join("bin/yt-dlp");
        let text = format!(
            "#!{}\nimport sys\nfrom yt_dlp import main\nif __name__ == '__main__':\n    sys.exit(main())\n",
            venv.join("bin/python3").display()
        );
        std::fs::write(&script, text).unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        JobYtDlp { dir }
    }

    fn path(&self) -> std::path::PathBuf {
        self.dir.path().join("venv/bin/yt-dlp")
    }
}

/// A parent for a sidecar's work dir that uid 65534 may pass through (mode 0711).
fn passable_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    dir
}

/// `Uid:`, `Gid:` and `Groups:` of `/proc/PID/status`.
fn ids(pid: i32) -> [String; 3] {
    ["Uid", "Gid", "Groups"].map(|name| status_field(pid, name))
}

/// What `ids` shows for a process running as 65534:65534 with no supplementary group
/// (real, effective, saved and file-system ids alike).
fn nobody_ids() -> [String; 3] {
    let all = "65534\t65534\t65534\t65534".to_owned();
    [all.clone(), all, String::new()]
}

/// Waits for a live job process called `comm` running as 65534:65534 with no other group;
/// fails showing the ids of every job process seen.
async fn live_as_nobody(sc: &Sidecar, comm: &str) -> i32 {
    let pid = live_where(sc, comm, |pid| ids(pid) == nobody_ids()).await;
    let seen: Vec<_> = sc
        .job_processes()
        .into_iter()
        .map(|p| (p.comm.clone(), ids(p.pid)))
        .collect();
    assert!(pid.is_some(), "no {comm} as 65534: {seen:?}\n{}", sc.logs());
    let pid = pid.unwrap();
    eprintln!("{comm} ({pid}): {:?}", ids(pid));
    pid
}

/// Waits until the job has met the fault armed on `path` (so no later job meets it).
async fn stalled_by(origin: &FixtureServer, path: &str) {
    assert!(
        wait_until(SLOW, || origin.armed(path) == 0).await,
        "{path} never asked"
    );
}

async fn jobs_run_as_the_job_user(pool: bool) {
    let ytdlp = JobYtDlp::new();
    let parent = passable_dir();
    // A playlist the native fetcher refuses: yt-dlp's own downloader (its ffmpeg) streams
    // it, with the info JSON on /dev/fd/4 and its metadata line on /dev/fd/3.
    let page = Page::hls_for_yt_dlp();
    let origin = FixtureServer::start_on(fixtures(), ([127, 0, 0, 1], 0).into(), vec![page]);
    let sc = Sidecar::start(SidecarOptions {
        pool: Some(pool),
        yt_dlp: Some(ytdlp.path()),
        work_dir: Some(parent.path().join("work")),
        extra: vec!["--job-user".into(), "65534:65534".into()],
        ..Default::default()
    })
    .await;
    assert_eq!(
        sc.logs().contains("pool ready"),
        pool,
        "the pool imports yt_dlp from the venv\n{}",
        sc.logs()
    );
    // The forkserver keeps the sidecar's uid (it joins namespaces for its workers).
    for p in sc.pool_processes() {
        if p.comm == "sg-forkserver" {
            assert!(status_field(p.pid, "Uid").starts_with("0\t"), "{p:?}");
        }
    }
    let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(
        mode(sc.work_dir()),
        0o711,
        "the work root: passable, not listable"
    );

    // yt-dlp, stalled by its page: a resolve that waits.
    let resolve = stalled_resolve(&sc, &origin).await;
    live_as_nobody(&sc, "yt-dlp").await;
    stalled_by(&origin, "/page.html").await;
    let jobs: Vec<_> = std::fs::read_dir(sc.work_dir())
        .unwrap()
        .map(|e| std::fs::metadata(e.unwrap().path()).unwrap())
        .collect();
    assert!(!jobs.is_empty());
    for meta in &jobs {
        assert_eq!(
            (meta.uid(), meta.gid(), meta.permissions().mode() & 0o777),
            (NOBODY, NOBODY, 0o700),
            "a job's directory is the job user's alone"
        );
    }
    drop(resolve);

    // A whole file (extracted by yt-dlp as the job user, fetched by the sidecar).
    let t = Client::stream(sc.socket(), &origin.url("progressive.mp4"), "b").await;
    t.assert_complete(&sc.logs(), "mp4", "video/mp4");
    let file = sha256_file(&fixtures().join("progressive.mp4")).unwrap();
    assert_eq!(sha256_hex(&t.data), file);
    assert_eq!(
        sc.logs().contains("pool worker took the job"),
        pool,
        "{}",
        sc.logs()
    );

    // yt-dlp's downloader and the ffmpeg it starts, stalled by the first segment.
    let hls = origin.url("uplynk/index.m3u8");
    origin.arm("/hls/seg000.ts", http::Fault::StallAfter(1000));
    let mut stalled = Client::connect(sc.socket()).await.unwrap();
    stalled.start_stream(&hls, "b").await.unwrap();
    live_as_nobody(&sc, "ffmpeg").await;
    live_as_nobody(&sc, "yt-dlp").await;
    stalled_by(&origin, "/hls/seg000.ts").await;
    drop(stalled);
    assert!(wait_until(SLOW, || sc.job_processes().is_empty()).await);
    let t = Client::stream(sc.socket(), &hls, "b").await;
    t.assert_complete(&sc.logs(), "ts", "video/mp2t");
    assert_eq!(t.metadata.as_ref().unwrap().served_by, "yt-dlp");
    let (u, f) = (hls.clone(), "b");
    let direct =
        blocking(move || direct_ytdlp(&u, f, streamgate_sidecar::STREAM_DOWNLOADERS)).await;
    assert_eq!(
        sha256_hex(&t.data),
        sha256_hex(&direct),
        "as a direct yt-dlp run"
    );

    // The sidecar's ffmpeg, merging a DASH video whose first video segment stalls.
    let merge = stalled_merge(&sc, &origin, "/dash/chunk-stream0-00001.m4s").await;
    live_as_nobody(&sc, "ffmpeg").await;
    stalled_by(&origin, "/dash/chunk-stream0-00001.m4s").await;
    drop(merge);
    assert!(wait_until(SLOW, || sc.job_processes().is_empty()).await);
    let t = Client::stream(sc.socket(), &origin.url("dash/manifest.mpd"), "bv+ba").await;
    t.assert_complete(&sc.logs(), "mp4", "video/mp4");
    let merged = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(merged.path(), &t.data).unwrap();
    let mut streams = ffprobe_streams(merged.path());
    streams.sort();
    assert_eq!(streams, ["audio", "video"]);
    assert!(
        wait_until(SLOW, || std::fs::read_dir(sc.work_dir())
            .unwrap()
            .next()
            .is_none())
        .await,
        "every job directory removed"
    );
    eprintln!(
        "job user 65534 (pool {pool}): progressive sha256 {file}, HLS by yt-dlp {} bytes as a direct run, merge {} bytes {streams:?}",
        direct.len(),
        t.data.len()
    );
}

both_paths!(jobs_run_as_the_job_user);

/// `streamgate-sidecar ARGS` run to its exit (it must not start: killed after 90 s, and
/// the test fails): its status and stderr.
async fn refused_start(args: Vec<String>, as_nobody: bool) -> (std::process::ExitStatus, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let log = dir.path().join("stderr");
    // A copy uid 65534 can run wherever the checkout is (under /root, say).
    let binary = dir.path().join("streamgate-sidecar");
    std::fs::copy(release_bin("streamgate-sidecar"), &binary).unwrap();
    let mut cmd = std::process::Command::new(&binary);
    cmd.arg("--socket")
        .arg(dir.path().join("sidecar.sock"))
        .args(args)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    if as_nobody {
        std::os::unix::process::CommandExt::uid(&mut cmd, NOBODY);
        std::os::unix::process::CommandExt::gid(&mut cmd, NOBODY);
    }
    let mut child = ChildGuard::spawn(cmd, "streamgate-sidecar").unwrap();
    let mut status = None;
    wait_until(Duration::from_secs(90), || {
        status = child.try_wait();
        status.is_some()
    })
    .await;
    let stderr = std::fs::read_to_string(&log).unwrap_or_default();
    let status = status.unwrap_or_else(|| panic!("the sidecar started:\n{stderr}"));
    assert!(
        !dir.path().join("sidecar.sock").exists(),
        "no socket is bound"
    );
    (status, stderr)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_user_that_cannot_run_yt_dlp_stops_the_start() {
    let parent = passable_dir();
    let work = parent.path().join("work");
    // The project's yt-dlp: its python is under /root (0700).
    let args = |ytdlp: &Path, work: &Path| {
        ["--job-user", "65534:65534", "--yt-dlp"]
            .map(String::from)
            .into_iter()
            .chain([ytdlp.display().to_string()])
            .chain(["--work-dir".into(), work.display().to_string()])
            .collect::<Vec<_>>()
    };
    let (status, stderr) = refused_start(args(&yt_dlp(), &work), false).await;
    assert!(!status.success(), "{stderr}");
    let want = format!(
        "yt-dlp at {} is not usable: as uid 65534 gid 65534 (--job-user): Permission denied (os error 13); uid 65534 gid 65534 cannot search /root (mode 0700, owner 0:0)",
        yt_dlp().display()
    );
    assert!(stderr.contains(&want), "{stderr}");
    eprintln!("{}", stderr.trim());

    // A yt-dlp it can run, in a work dir it cannot reach (its parent is 0700).
    let ytdlp = JobYtDlp::new();
    let private = tempfile::tempdir().unwrap();
    std::fs::set_permissions(private.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let (status, stderr) =
        refused_start(args(&ytdlp.path(), &private.path().join("work")), false).await;
    assert!(!status.success(), "{stderr}");
    let want = format!(
        "Permission denied (os error 13); uid 65534 gid 65534 cannot search {} (mode 0700, owner 0:0)",
        private.path().display()
    );
    assert!(stderr.contains(&want), "{stderr}");
    eprintln!("{}", stderr.trim());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_user_needs_a_root_sidecar() {
    let parent = tempfile::tempdir().unwrap();
    std::fs::set_permissions(parent.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let args = ["--job-user", "65534:65534", "--work-dir"]
        .map(String::from)
        .into_iter()
        .chain([parent.path().join("work").display().to_string()])
        .collect();
    let (status, stderr) = refused_start(args, true).await;
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains("--job-user: jobs cannot switch to uid 65534 gid 65534: the sidecar runs as uid 65534, not root"),
        "{stderr}"
    );
    // Refused before anything is made.
    assert!(!parent.path().join("work").exists());
    eprintln!("{}", stderr.trim());
}
