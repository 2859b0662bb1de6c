//! The three systems under test: the gateway (+ its sidecar), the old service (peer), and
//! direct `yt-dlp -o -` (the ceiling). Each turns a media URL into a prepared request
//! (minting tokens happens here, outside any timing) and then fetches it.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use streamgate_testkit::net::free_port;
use streamgate_testkit::serve::Serve;
use tokio::process::{Child, Command};

use crate::client::{self, Outcome};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Gateway,
    Peer,
    Direct,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Gateway => "gateway",
            Kind::Peer => "peer",
            Kind::Direct => "direct yt-dlp",
        }
    }
}

/// Percent-encodes a query value (tokens may carry `=`, `+`, `/`).
pub fn qenc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            o.push(b as char);
        } else {
            o.push_str(&format!("%{b:02X}"));
        }
    }
    o
}

/// Waits until `GET base+path` answers 200.
pub async fn wait_ready(
    base: &str,
    path: &str,
    within: Duration,
    child: &mut Child,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait()? {
            bail!("exited before it was ready ({st})");
        }
        let o = client::get(&format!("{base}{path}"), None, Duration::from_secs(2)).await;
        if o.status == 200 {
            return Ok(start.elapsed());
        }
        if start.elapsed() > within {
            bail!(
                "{base}{path} not ready after {within:?} (last: status {} {:?})",
                o.status,
                o.error
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn stop(child: &mut Child) {
    if let Some(pid) = child.id() {
        // SAFETY: plain kill(2) on a child we started and have not reaped.
        unsafe {
            libc::kill(pid as i32, libc::SIGTERM);
        }
        if tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .is_err()
        {
            let _ = child.kill().await;
        }
    }
}

pub struct Gateway {
    pub bin: PathBuf,
    pub state_dir: PathBuf,
    pub base: String,
    /// Base URL of its admin listener (`/metrics`).
    pub admin: String,
    pub child: Child,
    pub log: PathBuf,
    pub ready_after: Duration,
    pub stream_path: String,
    /// The config file it runs on; None for the embedded default.
    pub config: Option<PathBuf>,
}

impl Gateway {
    /// `streamgate serve --allow-private-urls --listen 127.0.0.1:PORT --state-dir DIR`, or with
    /// `--config FILE` instead of `--allow-private-urls` (which only applies to the embedded
    /// default: a file sets `allow_private` in its policy's config).
    pub async fn start(
        bin: &Path,
        state_dir: &Path,
        config: Option<&Path>,
        extra: &[String],
        log: &Path,
    ) -> anyhow::Result<Gateway> {
        std::fs::create_dir_all(state_dir)?;
        let port = free_port()?;
        let admin_port = free_port()?;
        let logf = std::fs::File::create(log)?;
        let admin_listen = ["--admin-listen".into(), format!("127.0.0.1:{admin_port}")];
        let serve = Serve {
            listen: format!("127.0.0.1:{port}"),
            state_dir: state_dir.to_path_buf(),
            config: config.map(Path::to_path_buf),
            allow_private_urls: config.is_none(),
            extra: [extra, &admin_listen].concat(),
            ..Serve::default()
        };
        let mut cmd = Command::from(serve.command(bin));
        cmd.stdin(Stdio::null())
            .stdout(logf.try_clone()?)
            .stderr(logf)
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let base = format!("http://127.0.0.1:{port}");
        let ready_after = wait_ready(&base, "/readyz", Duration::from_secs(90), &mut child)
            .await
            .with_context(|| format!("gateway (log: {})", log.display()))?;
        Ok(Gateway {
            bin: bin.to_path_buf(),
            state_dir: state_dir.to_path_buf(),
            base,
            admin: format!("http://127.0.0.1:{admin_port}"),
            child,
            log: log.to_path_buf(),
            ready_after,
            stream_path: "/v1/stream".into(),
            config: config.map(Path::to_path_buf),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// `streamgate mint --url URL --state-dir DIR` → the token it prints.
    pub async fn mint(&self, url: &str) -> anyhow::Result<String> {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("mint").arg("--url").arg(url);
        match &self.config {
            Some(c) => cmd.arg("--config").arg(c),
            None => cmd.arg("--state-dir").arg(&self.state_dir),
        };
        let out = cmd.stdin(Stdio::null()).output().await?;
        if !out.status.success() {
            bail!(
                "streamgate mint failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let tok = String::from_utf8(out.stdout)?.trim().to_string();
        // Tolerate a mint that prints a whole link rather than the bare token.
        let tok = match tok.split_once("data=") {
            Some((_, t)) => t.to_string(),
            None => tok,
        };
        if tok.is_empty() {
            bail!("streamgate mint printed nothing");
        }
        Ok(tok)
    }

    pub fn stream_url(&self, token: &str) -> String {
        format!("{}{}?data={}", self.base, self.stream_path, qenc(token))
    }

    pub async fn shutdown(mut self) {
        stop(&mut self.child).await;
    }
}

pub struct Peer {
    pub dir: PathBuf,
    pub python: PathBuf,
    pub key: String,
    pub base: String,
    pub child: Child,
}

impl Peer {
    /// `python -m uvicorn main:app --host 127.0.0.1 --port PORT` in the peer's folder.
    pub async fn start(dir: &Path, python: &Path, log: &Path) -> anyhow::Result<Peer> {
        let key = String::from_utf8(
            Command::new(python)
                .arg("mint.py")
                .arg("--keygen")
                .current_dir(dir)
                .output()
                .await
                .context("peer mint.py --keygen")?
                .stdout,
        )?
        .trim()
        .to_string();
        if key.is_empty() {
            bail!("peer mint.py --keygen printed nothing");
        }
        let port = free_port()?;
        let logf = std::fs::File::create(log)?;
        let mut child = Command::new(python)
            .args(["-m", "uvicorn", "main:app", "--host", "127.0.0.1", "--port"])
            .arg(port.to_string())
            .args(["--log-level", "warning"])
            .current_dir(dir)
            .env("SEED_KEY", &key)
            .stdin(Stdio::null())
            .stdout(logf.try_clone()?)
            .stderr(logf)
            .kill_on_drop(true)
            .spawn()
            .context("starting the peer with uvicorn")?;
        let base = format!("http://127.0.0.1:{port}");
        // The peer has no health route: any HTTP answer (its 404) means it is up.
        let start = Instant::now();
        loop {
            if let Some(st) = child.try_wait()? {
                bail!("peer exited at start ({st}); log: {}", log.display());
            }
            let o = client::get(&format!("{base}/healthz"), None, Duration::from_secs(2)).await;
            if o.status != 0 {
                break;
            }
            if start.elapsed() > Duration::from_secs(60) {
                bail!("peer not answering after 60 s; log: {}", log.display());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(Peer {
            dir: dir.to_path_buf(),
            python: python.to_path_buf(),
            key,
            base,
            child,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// `python mint.py URL best video.mp4` with SEED_KEY → its token.
    pub async fn mint(&self, url: &str) -> anyhow::Result<String> {
        let out = Command::new(&self.python)
            .arg("mint.py")
            .arg(url)
            .arg("best")
            .arg("video.mp4")
            .current_dir(&self.dir)
            .env("SEED_KEY", &self.key)
            .stdin(Stdio::null())
            .output()
            .await?;
        if !out.status.success() {
            bail!(
                "peer mint.py failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8(out.stdout)?.trim().to_string())
    }

    pub fn stream_url(&self, token: &str) -> String {
        format!("{}/stream?data={}", self.base, qenc(token))
    }

    pub async fn shutdown(mut self) {
        stop(&mut self.child).await;
    }
}

pub struct Direct {
    pub yt_dlp: PathBuf,
}

impl Direct {
    pub fn command(&self, url: &str) -> Command {
        let mut c = Command::new(&self.yt_dlp);
        c.args([
            "-q",
            "--no-warnings",
            "--no-progress",
            "-f",
            "best",
            "-o",
            "-",
            url,
        ]);
        c
    }
}

/// The systems present in this run.
pub struct Systems {
    pub gateway: Option<Gateway>,
    pub peer: Option<Peer>,
    pub direct: Option<Direct>,
}

impl Systems {
    pub fn kinds(&self) -> Vec<Kind> {
        let mut v = Vec::new();
        if self.gateway.is_some() {
            v.push(Kind::Gateway);
        }
        if self.peer.is_some() {
            v.push(Kind::Peer);
        }
        if self.direct.is_some() {
            v.push(Kind::Direct);
        }
        v
    }

    /// Turns a media URL into what `fetch` takes: a stream URL with a fresh token, or the
    /// media URL itself for direct yt-dlp.
    pub async fn prepare(&self, kind: Kind, media_url: &str) -> anyhow::Result<String> {
        match kind {
            Kind::Gateway => {
                let g = self.gateway.as_ref().ok_or_else(|| anyhow!("no gateway"))?;
                Ok(g.stream_url(&g.mint(media_url).await?))
            }
            Kind::Peer => {
                let p = self.peer.as_ref().ok_or_else(|| anyhow!("no peer"))?;
                Ok(p.stream_url(&p.mint(media_url).await?))
            }
            Kind::Direct => Ok(media_url.to_string()),
        }
    }

    pub async fn fetch(
        &self,
        kind: Kind,
        prepared: &str,
        limit: Option<u64>,
        timeout: Duration,
    ) -> Outcome {
        match kind {
            Kind::Gateway | Kind::Peer => client::get(prepared, limit, timeout).await,
            Kind::Direct => {
                let d = self.direct.as_ref().expect("direct present");
                client::run_stdout(d.command(prepared), limit, timeout).await
            }
        }
    }
}
