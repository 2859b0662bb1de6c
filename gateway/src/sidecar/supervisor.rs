//! Runs the sidecar process: restarts it with backoff when it dies, stops it (SIGTERM, then
//! SIGKILL after a grace period) when the gateway stops. It starts with a cleared
//! environment: the gateway's secrets (`{ env = … }` values, whatever else its environment
//! holds) never reach the sidecar nor yt-dlp and ffmpeg.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How to run the sidecar process.
#[derive(Clone, Debug)]
pub struct SupervisorSettings {
    /// The `streamgate-sidecar` executable.
    pub binary: PathBuf,
    /// The socket it listens on (its `--socket`).
    pub socket: PathBuf,
    /// Its further arguments.
    pub args: Vec<String>,
    /// First delay before a restart; doubled after each quick death, up to `max_backoff`.
    pub min_backoff: Duration,
    /// Longest delay between restarts.
    pub max_backoff: Duration,
}

impl SupervisorSettings {
    /// Settings with the default backoff (100 ms doubling up to 10 s).
    pub fn new(binary: PathBuf, socket: PathBuf, args: Vec<String>) -> Self {
        SupervisorSettings {
            binary,
            socket,
            args,
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
        }
    }
}

/// Keeps one sidecar process alive until [`Supervisor::stop`].
pub struct Supervisor {
    stop: watch::Sender<Option<Duration>>,
    task: JoinHandle<()>,
}

impl Supervisor {
    /// Spawns the sidecar now, and again whenever it exits.
    pub fn start(settings: SupervisorSettings) -> Supervisor {
        let (stop, stopped) = watch::channel(None);
        let task = tokio::spawn(supervise(settings, stopped));
        Supervisor { stop, task }
    }

    /// SIGTERM to the sidecar (it drains its own jobs), SIGKILL after `grace`.
    pub async fn stop(self, grace: Duration) {
        let _ = self.stop.send(Some(grace));
        let _ = self.task.await;
    }
}

async fn supervise(settings: SupervisorSettings, mut stopped: watch::Receiver<Option<Duration>>) {
    let mut backoff = settings.min_backoff;
    loop {
        let started = Instant::now();
        match spawn(&settings) {
            Ok(mut child) => {
                let id = child.id().unwrap_or(0);
                tracing::info!(pid = id, socket = %settings.socket.display(), "sidecar started");
                tokio::select! {
                    status = child.wait() => {
                        tracing::warn!(pid = id, ?status, "sidecar exited; restarting");
                    }
                    grace = stop_requested(&mut stopped) => {
                        terminate(&mut child, grace).await;
                        return;
                    }
                }
            }
            Err(e) => tracing::error!(
                binary = %settings.binary.display(), error = %e, "cannot start the sidecar"
            ),
        }
        // A sidecar that ran a while earns a quick restart; one that keeps dying backs off.
        if started.elapsed() > settings.max_backoff * 3 {
            backoff = settings.min_backoff;
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop_requested(&mut stopped) => return,
        }
        backoff = (backoff * 2).min(settings.max_backoff);
    }
}

/// Resolves with the grace period once [`Supervisor::stop`] was called (or the handle dropped).
async fn stop_requested(stopped: &mut watch::Receiver<Option<Duration>>) -> Duration {
    match stopped.wait_for(Option::is_some).await {
        Ok(grace) => grace.unwrap_or_default(),
        Err(_) => Duration::ZERO,
    }
}

fn spawn(settings: &SupervisorSettings) -> std::io::Result<Child> {
    let mut cmd = Command::new(&settings.binary);
    cmd.arg("--socket")
        .arg(&settings.socket)
        .args(&settings.args)
        .env_clear()
        .envs(environment(&settings.args, std::env::vars_os()))
        .stdin(Stdio::null())
        // Its own process group: a Ctrl-C on the terminal reaches the gateway only, which
        // drains its streams first and then stops the sidecar itself.
        .process_group(0)
        .kill_on_drop(true);
    // SAFETY: prctl is async-signal-safe. The sidecar must not outlive a gateway killed with
    // SIGKILL: the kernel sends it SIGTERM when the spawning thread (a runtime worker) exits.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// What the sidecar needs of the gateway's environment: where programs are (PATH), the
/// locale and time zone, the temp dir, its log settings; and the variables its arguments
/// pass on to yt-dlp by name (`--pass-env NAME`, e.g. a proxy the operator chose). Nothing
/// else: whatever the gateway was given (secrets included) stays with it.
fn environment(
    args: &[String],
    vars: impl Iterator<Item = (OsString, OsString)>,
) -> Vec<(OsString, OsString)> {
    const KEEP: &[&str] = &[
        "PATH",
        "LANG",
        "TZ",
        "TMPDIR",
        "RUST_LOG",
        "RUST_BACKTRACE",
        "RUST_LIB_BACKTRACE",
        "NO_COLOR",
    ];
    let mut passed = Vec::new();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.strip_prefix("--pass-env") {
            Some("") => passed.extend(args.next().map(String::as_str)),
            Some(named) => passed.extend(named.strip_prefix('=')),
            None => {}
        }
    }
    vars.filter(|(name, _)| {
        let name = name.to_str().unwrap_or_default();
        KEEP.contains(&name) || name.starts_with("LC_") || passed.contains(&name)
    })
    .collect()
}

async fn terminate(child: &mut Child, grace: Duration) {
    if let Some(id) = child.id() {
        let pid = nix::unistd::Pid::from_raw(id as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        if let Ok(status) = tokio::time::timeout(grace, child.wait()).await {
            tracing::info!(pid = id, ?status, "sidecar stopped");
            return;
        }
        tracing::warn!(pid = id, "sidecar did not stop in time; killing it");
    }
    let _ = child.kill().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_allowlist_and_passed_names_are_kept() {
        let vars = [
            "PATH",
            "LC_ALL",
            "TZ",
            "MEDIA_TOKEN_KEYS",
            "HTTPS_PROXY",
            "NO_PROXY",
            "AWS_SECRET",
        ]
        .map(|n| (OsString::from(n), OsString::from("v")));
        let args = [
            "--max-jobs",
            "2",
            "--pass-env",
            "HTTPS_PROXY",
            "--pass-env=NO_PROXY",
        ]
        .map(String::from);
        let kept: Vec<_> = environment(&args, vars.into_iter())
            .into_iter()
            .map(|(n, _)| n.into_string().unwrap())
            .collect();
        assert_eq!(kept, ["PATH", "LC_ALL", "TZ", "HTTPS_PROXY", "NO_PROXY"]);
    }
}
