//! A network namespace per test, so a test can have a "public" origin without touching the
//! machine's own network: the test re-executes its own test binary under
//! `unshare --net --mount --fork` (as root, or with `--map-root-user` otherwise), only that
//! test (`--exact NAME --nocapture --test-threads 1`), with [`INSIDE_ENV`] set. Inside:
//!
//! - `lo` up, carrying [`PUBLIC_IP`] (`198.51.100.2`, TEST-NET-2: classified public) for the
//!   public origin and [`CLIENT_IP`] (`198.51.100.3`), a second, non-loopback client address;
//! - `/etc/hosts` replaced by [`HOSTS`] with a bind mount in the private mount namespace:
//!   `public.test` → `198.51.100.2`, `private.test` → `127.0.0.1`, `mixed.test` → both, so
//!   names are resolved for real (glibc, Python, Rust all read it).
//!
//! Every address is added inside the new namespace only: the child refuses to configure
//! anything unless its network and mount namespaces differ from the parent's (passed in
//! [`INSIDE_ENV`]), and the parent checks afterwards that its own namespace carries no
//! TEST-NET-2 address and that `/etc/hosts` is unchanged.
//!
//! ```no_run
//! #[test]
//! fn my_test() {
//!     streamgate_tests::netns::run("my_test", async {
//!         // inside: 198.51.100.2 is up, public.test resolves to it
//!     });
//! }
//! ```

use std::future::Future;
use std::io::Read;
use std::net::Ipv4Addr;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The "public" origin's address (TEST-NET-2; not internal by the egress rules).
pub const PUBLIC_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
/// A second address on the namespace's `lo`: a client that is not loopback.
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 3);
/// The namespace's `/etc/hosts`. `mixed.test` has two lines: both addresses are returned.
pub const HOSTS: &str = "\
127.0.0.1 localhost
::1 localhost ip6-localhost ip6-loopback
198.51.100.2 public.test
127.0.0.1 private.test
198.51.100.2 mixed.test
127.0.0.1 mixed.test
";
/// Set in the re-executed child: `NET_INODE:MNT_INODE` of the parent's namespaces.
pub const INSIDE_ENV: &str = "STREAMGATE_TEST_NETNS";
/// Longest a namespace child may run.
pub const CHILD_LIMIT: Duration = Duration::from_secs(900);

/// Whether this process is a namespace child.
pub fn inside() -> bool {
    std::env::var_os(INSIDE_ENV).is_some()
}

/// Runs `body` in a namespace of its own. `test` must be the test's full name as libtest
/// knows it (the function name for a top-level test in `tests/*.rs`). Outside a namespace,
/// `body` is dropped unpolled, the binary is re-executed for `test` inside a new one and
/// this panics (with the child's output) unless the child passed. Inside, the namespace is
/// set up once and `body` runs on a multi-thread tokio runtime.
pub fn run<F: Future<Output = ()>>(test: &str, body: F) {
    if let Some(thread) = std::thread::current().name() {
        // libtest names a test's thread after the test: catches a mistyped `test`.
        if thread != "main" {
            assert_eq!(thread, test, "netns::run's name must be the test's name");
        }
    }
    if inside() {
        setup();
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
            .block_on(body);
        return;
    }
    drop(body);
    rerun_inside(test);
}

/// The parent's side: prepare what the child must not build, run it, check the machine.
fn rerun_inside(test: &str) {
    // Binaries, fixtures and yt-dlp are made here: the child has no network (cargo) and
    // must not race other processes on the build lock from inside.
    crate::release_bin("streamgate");
    crate::release_bin("streamgate-sidecar");
    crate::fixtures();
    crate::yt_dlp();
    let hosts_before = std::fs::read("/etc/hosts").unwrap_or_default();
    assert!(
        test_net_addresses().is_empty(),
        "the machine's namespace already carries TEST-NET-2 addresses: {:?}",
        test_net_addresses()
    );
    let out_dir = tempfile::tempdir().expect("temp dir");
    let out_path = out_dir.path().join("output");
    let out = std::fs::File::create(&out_path).expect("child output file");
    let mut cmd = Command::new("unshare");
    if !nix::unistd::geteuid().is_root() {
        cmd.args(["--user", "--map-root-user"]);
    }
    cmd.args(["--net", "--mount", "--fork", "--kill-child", "--"])
        .arg(std::env::current_exe().expect("current exe"))
        .args(["--exact", test, "--nocapture", "--test-threads", "1"])
        .env(
            INSIDE_ENV,
            format!("{}:{}", ns_inode("net"), ns_inode("mnt")),
        )
        .env("STREAMGATE_TEST_NO_BUILD", "1")
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("dup output file"))
        .stderr(out);
    let started = Instant::now();
    let mut child = cmd.spawn().expect("run unshare (util-linux)");
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for unshare") {
            break Some(status);
        }
        if started.elapsed() > CHILD_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut output = String::new();
    let _ = std::fs::File::open(&out_path).map(|mut f| f.read_to_string(&mut output));
    eprintln!(
        "---- {test} in its own network namespace ({:.1} s) ----\n{output}---- end of {test} ----",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(
        std::fs::read("/etc/hosts").unwrap_or_default(),
        hosts_before,
        "/etc/hosts of the machine changed"
    );
    assert!(
        test_net_addresses().is_empty(),
        "a TEST-NET-2 address leaked into the machine's namespace: {:?}",
        test_net_addresses()
    );
    match status {
        None => panic!("{test}: no end within {CHILD_LIMIT:?} in its namespace:\n{output}"),
        Some(s) if !s.success() => panic!("{test} failed in its namespace ({s}):\n{output}"),
        Some(_) => {
            // An `--exact` name that matched nothing also "passes": make sure it ran.
            assert!(
                output.contains("1 passed"),
                "{test}: the child did not run exactly this test:\n{output}"
            );
        }
    }
}

/// Inode of `/proc/self/ns/NAME`: two processes share a namespace iff these are equal.
pub fn ns_inode(name: &str) -> u64 {
    std::fs::metadata(format!("/proc/self/ns/{name}"))
        .unwrap_or_else(|e| panic!("/proc/self/ns/{name}: {e}"))
        .ino()
}

/// Addresses in 198.51.100.0/24 on any interface of the current namespace (`ip -o addr`).
pub fn test_net_addresses() -> Vec<String> {
    let out = Command::new("ip")
        .args(["-o", "addr", "show"])
        .output()
        .expect("run ip addr");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter(|w| w.starts_with("198.51.100."))
        .map(str::to_owned)
        .collect()
}

/// The child's side, once per process.
fn setup() {
    static DONE: OnceLock<PathBuf> = OnceLock::new();
    DONE.get_or_init(|| {
        let parent = std::env::var(INSIDE_ENV).expect("inside a namespace child");
        let (net, mnt) = parent.split_once(':').expect("NET:MNT inodes");
        // Never configure the machine's own namespaces, whatever launched us.
        assert_ne!(
            net,
            ns_inode("net").to_string(),
            "not in a new network namespace: refusing to add addresses"
        );
        assert_ne!(
            mnt,
            ns_inode("mnt").to_string(),
            "not in a new mount namespace: refusing to mount over /etc/hosts"
        );
        sh("ip", &["link", "set", "lo", "up"]);
        for ip in [PUBLIC_IP, CLIENT_IP] {
            sh("ip", &["addr", "add", &format!("{ip}/32"), "dev", "lo"]);
        }
        // Kept for the life of the process: the mount refers to it.
        let dir = tempfile::Builder::new()
            .prefix("streamgate-netns-")
            .tempdir()
            .expect("temp dir")
            .keep();
        let hosts = dir.join("hosts");
        std::fs::write(&hosts, HOSTS).expect("write hosts");
        sh(
            "mount",
            &["--bind", &hosts.display().to_string(), "/etc/hosts"],
        );
        assert_eq!(
            std::fs::read_to_string("/etc/hosts").unwrap_or_default(),
            HOSTS
        );
        dir
    });
}

fn sh(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
