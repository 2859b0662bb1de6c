//! The `streamgate` command line, and how its flags turn into a [`Config`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::{AdminListen, Config, ConfigError};
use crate::state;

/// The command line.
#[derive(Debug, Parser)]
#[command(
    long_about = None,
    name = "streamgate",
    version,
    about = "Streaming gateway: signed links → media via yt-dlp"
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// Log lines as `text` (control characters escaped: client text cannot forge a line;
    /// colours only on a terminal) or `json`; a spawned sidecar logs the same way.
    #[arg(
        long,
        global = true,
        value_enum,
        env = "STREAMGATE_LOG_FORMAT",
        default_value = "text"
    )]
    pub log_format: LogFormat,
}

/// `--log-format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One escaped line per event.
    Text,
    /// One JSON object per line.
    Json,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve HTTP (the embedded default config unless --config is given).
    Serve(ServeArgs),
    /// Print a link token for URL, sealed by the tenant's token plugin.
    Mint(MintArgs),
    /// Print a new token-xchacha key ring entry (`id:base64key`).
    Keygen,
    /// Validate a config file without serving: syntax, fields, secrets, plugins.
    CheckConfig {
        /// The TOML file (docs/config.md).
        file: PathBuf,
    },
}

/// Where the configuration comes from: a file, or the embedded default and its state dir.
#[derive(Debug, Args)]
pub struct ConfigSource {
    /// TOML configuration file (see docs/config.md); without it, the embedded default.
    #[arg(long, env = "STREAMGATE_CONFIG")]
    pub config: Option<PathBuf>,
    /// State directory of the embedded default: token key, sidecar socket.
    #[arg(long, env = "STREAMGATE_STATE_DIR", default_value = ".streamgate")]
    pub state_dir: PathBuf,
}

/// `serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Where the configuration comes from.
    #[command(flatten)]
    pub source: ConfigSource,
    /// Address to listen on (overrides the config; default 127.0.0.1:8080).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Address of the admin listener (`/metrics`, detailed `/readyz`), or `off` (overrides
    /// `[server] admin_listen`; default 127.0.0.1:9091).
    #[arg(long, value_name = "ADDR|off")]
    pub admin_listen: Option<AdminListen>,
    /// Let the default tenant fetch loopback and private-network URLs, any port (local testing).
    #[arg(long)]
    pub allow_private_urls: bool,
    /// Sidecar binary to run (default: streamgate-sidecar next to this executable).
    #[arg(long, env = "STREAMGATE_SIDECAR")]
    pub sidecar: Option<PathBuf>,
    /// yt-dlp for the sidecar.
    #[arg(long)]
    pub yt_dlp: Option<PathBuf>,
    /// Concurrent jobs of the sidecar.
    #[arg(long)]
    pub max_jobs: Option<u32>,
    /// Seconds running streams may take to finish after SIGTERM.
    #[arg(long)]
    pub drain_secs: Option<u64>,
    /// One more argument for the sidecar (repeatable), e.g. `--sidecar-arg=--max-jobs=8`.
    #[arg(long = "sidecar-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub sidecar_args: Vec<String>,
}

/// `mint`.
#[derive(Debug, Args)]
pub struct MintArgs {
    /// Where the configuration comes from.
    #[command(flatten)]
    pub source: ConfigSource,
    /// Media page or file URL.
    #[arg(long)]
    pub url: String,
    /// yt-dlp format selector.
    #[arg(long, default_value = "best")]
    pub format: String,
    /// File name offered to the client (its extension follows the real container).
    #[arg(long)]
    pub filename: Option<String>,
    /// Lifetime of the link in seconds (default: the tenant's).
    #[arg(long)]
    pub ttl: Option<u64>,
    /// Tenant to mint for (default: the default tenant).
    #[arg(long, requires = "config")]
    pub tenant: Option<String>,
}

impl ConfigSource {
    /// The file's configuration, or the embedded default (creating its key on first use).
    pub fn load(&self, allow_private_urls: bool) -> Result<Config, ConfigError> {
        match &self.config {
            Some(path) if allow_private_urls => Err(ConfigError::Invalid(format!(
                "--allow-private-urls applies to the embedded config only; \
                 set it in the policy's config in {}",
                path.display()
            ))),
            Some(path) => Config::load(path),
            None => state::embedded_config(&self.state_dir, allow_private_urls),
        }
    }
}

impl ServeArgs {
    /// The configuration with the command line's overrides applied.
    pub fn config(&self) -> Result<Config, ConfigError> {
        let mut config = self.source.load(self.allow_private_urls)?;
        if let Some(listen) = self.listen {
            config.listen = listen;
        }
        if let Some(admin) = self.admin_listen {
            config.server.admin_listen = admin;
        }
        if let Some(secs) = self.drain_secs {
            config.drain_secs = secs;
        }
        let sidecar = &mut config.sidecar;
        if self.sidecar.is_some() {
            sidecar.binary.clone_from(&self.sidecar);
        }
        if self.yt_dlp.is_some() {
            sidecar.yt_dlp.clone_from(&self.yt_dlp);
        }
        if self.max_jobs.is_some() {
            sidecar.max_jobs = self.max_jobs;
        }
        sidecar.args.extend(self.sidecar_args.iter().cloned());
        Ok(config)
    }

    /// Socket of a spawned sidecar: the config's, else one in the state directory (created).
    pub fn sidecar_socket(&self, config: &Config) -> Result<PathBuf, ConfigError> {
        match &config.sidecar.socket {
            Some(socket) => Ok(socket.clone()),
            None => {
                state::ensure_dir(&self.source.state_dir)?;
                Ok(state::sidecar_socket(&self.source.state_dir))
            }
        }
    }
}

/// The sidecar binary installed next to `exe` (both are built into `target/release/`).
pub fn sidecar_next_to(exe: &Path) -> PathBuf {
    exe.with_file_name("streamgate-sidecar")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_commands() {
        let cli = Cli::try_parse_from([
            "streamgate",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--allow-private-urls",
            "--admin-listen",
            "off",
        ])
        .unwrap();
        assert!(matches!(cli.command,
            Command::Serve(a) if a.allow_private_urls && a.admin_listen == Some(AdminListen(None))));
        let cli =
            Cli::try_parse_from(["streamgate", "mint", "--url", "https://x/y", "--ttl", "60"])
                .unwrap();
        assert!(matches!(cli.command, Command::Mint(a) if a.ttl == Some(60)));
        // --tenant only makes sense with a config file.
        let lone = ["streamgate", "mint", "--url", "u", "--tenant", "t"];
        assert!(Cli::try_parse_from(lone).is_err());
    }
}
