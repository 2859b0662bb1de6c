//! How a `streamgate serve` is started by the tests and the bench: one command line, and the
//! log line that tells where it listens (so it can be started on port 0).

use std::path::{Path, PathBuf};
use std::process::Command;

/// The log line's marker: `… listening on http://127.0.0.1:PORT …`.
const LISTENING: &str = "listening on http://";
/// The admin listener's line (logged before [`LISTENING`]'s):
/// `… admin listener on http://127.0.0.1:PORT …`.
const ADMIN: &str = "admin listener on http://";

/// What `streamgate serve` is started with.
#[derive(Clone, Debug, Default)]
pub struct Serve {
    /// `--listen`, e.g. `127.0.0.1:0`.
    pub listen: String,
    /// `--state-dir`.
    pub state_dir: PathBuf,
    /// `--config FILE`; none: the embedded default.
    pub config: Option<PathBuf>,
    /// `--allow-private-urls` (only applies to the embedded default).
    pub allow_private_urls: bool,
    /// `--yt-dlp`; none: the gateway's own default.
    pub yt_dlp: Option<PathBuf>,
    /// `--sidecar-arg` values, e.g. `--max-jobs=1`.
    pub sidecar_args: Vec<String>,
    /// `--drain-secs`.
    pub drain_secs: Option<u64>,
    /// Anything else, last.
    pub extra: Vec<String>,
}

impl Serve {
    /// `BIN serve …`, with no stdio or environment set: the caller decides those.
    pub fn command(&self, bin: &Path) -> Command {
        let mut cmd = Command::new(bin);
        cmd.args(["serve", "--listen", &self.listen, "--state-dir"])
            .arg(&self.state_dir);
        if let Some(yt_dlp) = &self.yt_dlp {
            cmd.arg("--yt-dlp").arg(yt_dlp);
        }
        if let Some(config) = &self.config {
            cmd.arg("--config").arg(config);
        }
        if self.allow_private_urls {
            cmd.arg("--allow-private-urls");
        }
        for arg in &self.sidecar_args {
            cmd.arg(format!("--sidecar-arg={arg}"));
        }
        if let Some(secs) = self.drain_secs {
            cmd.arg("--drain-secs").arg(secs.to_string());
        }
        cmd.args(&self.extra);
        cmd
    }
}

/// The base URL (`http://127.0.0.1:PORT`) from the gateway's "listening on" log line, if the
/// log has it yet.
pub fn listening_url(log: &str) -> Option<String> {
    url_after(log, LISTENING)
}

/// The admin listener's base URL (`/metrics`, the detailed `/readyz`) from its log line.
pub fn admin_url(log: &str) -> Option<String> {
    url_after(log, ADMIN)
}

/// The URL that starts at `marker`'s `http://` on the first line holding `marker`.
fn url_after(log: &str, marker: &str) -> Option<String> {
    log.lines().find_map(|line| {
        let at = line.find(marker)?;
        let url = line[at + marker.len() - "http://".len()..]
            .split_whitespace()
            .next()?;
        Some(url.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_listening_line() {
        let log = "INFO starting\nINFO streamgate: listening on http://127.0.0.1:4242 tenants=1\n";
        assert_eq!(listening_url(log).as_deref(), Some("http://127.0.0.1:4242"));
        assert_eq!(listening_url("INFO starting\n"), None);
        let log = "INFO admin listener on http://127.0.0.1:4243 (/metrics, /readyz)\n";
        assert_eq!(listening_url(log), None, "not the public line");
        assert_eq!(admin_url(log).as_deref(), Some("http://127.0.0.1:4243"));
    }

    #[test]
    fn command_line_in_order() {
        let serve = Serve {
            listen: "127.0.0.1:0".into(),
            state_dir: "/s".into(),
            allow_private_urls: true,
            sidecar_args: vec!["--max-jobs=1".into()],
            drain_secs: Some(3),
            ..Serve::default()
        };
        let cmd = serve.command(Path::new("/bin/streamgate"));
        let args: Vec<_> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args,
            [
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--state-dir",
                "/s",
                "--allow-private-urls",
                "--sidecar-arg=--max-jobs=1",
                "--drain-secs",
                "3"
            ]
        );
    }
}
