//! A real `redis-server` (Debian's) on a free loopback port, with no persistence
//! (`--save '' --appendonly no`), killed on drop; plus the gateway configs the limit and
//! metrics tests share: two tenants on their own keys and hosts, with limits.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::process::ChildGuard;

/// A running `redis-server`.
pub struct RedisServer {
    child: Option<ChildGuard>,
    port: u16,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts one and waits until it answers `PING`.
    pub fn start() -> RedisServer {
        let port = streamgate_testkit::net::free_port().expect("a free port");
        let dir = tempfile::tempdir().expect("redis temp dir");
        let child = spawn(port, dir.path());
        RedisServer {
            child: Some(child),
            port,
            dir,
        }
    }

    /// Kills the server and starts an empty one on the same port (a restart without
    /// persistence: every key is gone).
    pub fn restart(&mut self) {
        self.stop();
        self.child = Some(spawn(self.port, self.dir.path()));
    }

    /// `redis://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Whether it answers `PING` with `+PONG`.
    pub fn ping(&self) -> bool {
        ping(self.port)
    }

    /// Sends one inline command and returns the first reply read (raw RESP).
    pub fn command(&self, line: &str) -> Option<String> {
        command(self.port, line)
    }

    /// Members of a sorted set (`ZCARD`), e.g. the slots of `streamgate:{a}:streams`.
    pub fn zcard(&self, key: &str) -> i64 {
        let reply = self.command(&format!("ZCARD {key}")).unwrap_or_default();
        reply.trim().trim_start_matches(':').parse().unwrap_or(-1)
    }

    /// Kills the server (SIGKILL) and waits until it is gone.
    pub fn stop(&mut self) {
        drop(self.child.take());
    }
}

/// Runs `redis-server` on `port` and waits until it answers `PING`.
fn spawn(port: u16, dir: &Path) -> ChildGuard {
    let mut cmd = Command::new("redis-server");
    cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let child = ChildGuard::spawn(cmd, "redis-server").expect("spawn redis-server");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ping(port) {
        assert!(
            Instant::now() < deadline,
            "redis-server did not answer PING"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

fn ping(port: u16) -> bool {
    command(port, "PING").is_some_and(|r| r.starts_with("+PONG"))
}

/// Sends one inline command to `port` and returns the first reply read (raw RESP).
fn command(port: u16, line: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(format!("{line}\r\n").as_bytes()).ok()?;
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// The limits of one tenant of [`two_tenants`], as TOML inline-table fields
/// (e.g. `max_streams = 2`); empty for none.
pub struct TwoTenants<'a> {
    /// Limits of tenant `a` (host `a.test`, the default tenant).
    pub a: &'a str,
    /// Limits of tenant `b` (host `b.test`).
    pub b: &'a str,
    /// The `[limits]` table's body (e.g. `redis_url = "…"`); empty for the defaults.
    pub global: &'a str,
    /// Sidecar stall timeout: stalled fixtures hold a stream open this long.
    pub stall_secs: u32,
}

/// Writes `streamgate.toml` in `dir`: tenants `a` and `b`, each with its own token key, an
/// allow-all policy that lets loopback clients resolve, and the loopback egress.
pub fn two_tenants(dir: &Path, t: &TwoTenants<'_>) -> PathBuf {
    use crate::config::{new_key, open_policy, tenant, write, xchacha};
    let policy = open_policy(r#", resolve_clients = "127.0.0.0/8""#);
    let head = format!(
        "default_tenant = \"a\"\n[sidecar]\nargs = [\"--stall-timeout={}\", \"--max-jobs=8\"]\n[limits]\n{}\n",
        t.stall_secs, t.global
    );
    let tenants = [("a", t.a), ("b", t.b)].map(|(id, limits)| {
        let host = format!("{id}.test");
        let limits = format!("limits = {{ {limits} }}");
        tenant(id, &[&host], &xchacha(&new_key()), &policy, &limits)
    });
    write(dir, &(head + &tenants.concat()))
}
