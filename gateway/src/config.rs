//! The gateway's configuration: TOML structs that refuse unknown fields (a typo must not
//! silently disable a setting), and the embedded default used when no file is given.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::limits::{LimitsConfig, TenantLimits};
use crate::secrets::{ConfigValue, resolve_map};
use crate::state;

/// Tenant id of the embedded default configuration.
pub const DEFAULT_TENANT: &str = "default";

/// Why a configuration could not be loaded or used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    // Not a `source`: toml's message already is the whole story (line, field, snippet).
    #[error("{}: {error}", .path.display())]
    Parse {
        path: PathBuf,
        error: Box<toml::de::Error>,
    },
    #[error("state directory {path}: {source}")]
    State {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

/// A whole configuration file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address the HTTP server binds.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Seconds running streams may take to finish after SIGTERM.
    #[serde(default = "default_drain_secs")]
    pub drain_secs: u64,
    #[serde(default)]
    pub sidecar: SidecarConfig,
    /// Tenant serving requests whose Host matches no tenant; the first tenant when unset.
    #[serde(default)]
    pub default_tenant: Option<String>,
    #[serde(rename = "tenant")]
    pub tenants: Vec<TenantConfig>,
    /// Where limit counters live (`redis_url`) and what a limiter failure means.
    #[serde(default)]
    pub limits: LimitsConfig,
}

/// Where the sidecar is: a socket to connect to, or a process the gateway runs itself.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SidecarConfig {
    /// Connect to an already-running sidecar at this socket; nothing is spawned.
    #[serde(default)]
    pub connect: Option<PathBuf>,
    /// Sidecar binary to spawn; default: `streamgate-sidecar` next to the gateway's executable.
    #[serde(default)]
    pub binary: Option<PathBuf>,
    /// Socket of a spawned sidecar; default: `sidecar.sock` in the state directory.
    #[serde(default)]
    pub socket: Option<PathBuf>,
    /// yt-dlp for a spawned sidecar (its `--yt-dlp`).
    #[serde(default)]
    pub yt_dlp: Option<PathBuf>,
    /// Concurrent jobs of a spawned sidecar (its `--max-jobs`).
    #[serde(default)]
    pub max_jobs: Option<u32>,
    /// Further arguments for a spawned sidecar.
    #[serde(default)]
    pub args: Vec<String>,
    /// Seconds to wait for the metadata of a job before answering 504.
    #[serde(default = "default_metadata_secs")]
    pub metadata_timeout_secs: u64,
}

/// One tenant: the hosts it answers for and the plugins that guard it.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    pub id: String,
    /// Host names (without port) routed to this tenant.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Lifetime of links minted without `--ttl`.
    #[serde(default = "default_ttl_secs")]
    pub default_ttl_secs: u64,
    pub token: PluginConfig,
    pub policy: PluginConfig,
    /// Concurrent streams and resolves per minute; every limit optional (unset: unlimited).
    #[serde(default)]
    pub limits: TenantLimits,
}

/// A plugin: a built-in one by name, or a component file, and its configuration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// `token-xchacha`, `token-fernet`, `policy-allowlist` or `auth-hmac`.
    #[serde(default)]
    pub builtin: Option<String>,
    /// Path of a wasm32-wasip2 component.
    #[serde(default)]
    pub wasm: Option<PathBuf>,
    /// Handed to the plugin (secrets included); values may be `{ env }` / `{ file }`.
    #[serde(default)]
    pub config: BTreeMap<String, ConfigValue>,
}

impl Default for SidecarConfig {
    /// What a file without `[sidecar]` gets: a spawned sidecar with its own defaults.
    fn default() -> Self {
        SidecarConfig {
            connect: None,
            binary: None,
            socket: None,
            yt_dlp: None,
            max_jobs: None,
            args: Vec::new(),
            metadata_timeout_secs: default_metadata_secs(),
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_drain_secs() -> u64 {
    30
}
fn default_metadata_secs() -> u64 {
    120
}
fn default_ttl_secs() -> u64 {
    24 * 3600
}

impl Config {
    /// Reads and validates a TOML file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut config: Config = toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            error: Box::new(e),
        })?;
        config.validate()?;
        config.resolve_secrets()?;
        Ok(config)
    }

    /// Replaces every `{ env }` / `{ file }` plugin value by its content, so a missing
    /// secret fails the load and the plugins see plain strings.
    pub fn resolve_secrets(&mut self) -> Result<(), ConfigError> {
        for (i, t) in self.tenants.iter_mut().enumerate() {
            for (kind, p) in [("token", &mut t.token), ("policy", &mut t.policy)] {
                let resolved = resolve_map(&p.config, &format!("tenant[{i}].{kind}.config"))?;
                p.config = resolved.into_iter().map(|(k, v)| (k, v.into())).collect();
            }
        }
        Ok(())
    }

    /// The configuration used without `--config`: one tenant with the default plugins and
    /// a token key kept in `state_dir` (created on first use), and a spawned sidecar.
    pub fn embedded(state_dir: &Path, allow_private_urls: bool) -> Result<Config, ConfigError> {
        let keys = state::load_or_create_key(state_dir)?;
        let mut token = BTreeMap::new();
        token.insert("keys".to_owned(), keys.ring());
        token.insert("seal_key".to_owned(), keys.seal_id().to_owned());
        let mut policy = BTreeMap::new();
        policy.insert("hosts".to_owned(), "*".to_owned());
        policy.insert("allow_private".to_owned(), allow_private_urls.to_string());
        Ok(Config {
            listen: default_listen(),
            drain_secs: default_drain_secs(),
            sidecar: SidecarConfig::default(),
            default_tenant: Some(DEFAULT_TENANT.to_owned()),
            tenants: vec![TenantConfig {
                id: DEFAULT_TENANT.to_owned(),
                hosts: Vec::new(),
                default_ttl_secs: default_ttl_secs(),
                token: PluginConfig::builtin("token-xchacha", token),
                policy: PluginConfig::builtin("policy-allowlist", policy),
                limits: TenantLimits::default(),
            }],
            limits: LimitsConfig::default(),
        })
    }

    /// Checks what serde cannot: ids and hosts are unique, each plugin names one source.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.tenants.is_empty() {
            return invalid("at least one [[tenant]] is required".into());
        }
        let mut ids = std::collections::HashSet::new();
        let mut hosts = std::collections::HashSet::new();
        for (i, t) in self.tenants.iter().enumerate() {
            if t.id.is_empty() || !ids.insert(t.id.as_str()) {
                return invalid(format!(
                    "tenant[{i}].id: {:?} is empty or appears twice",
                    t.id
                ));
            }
            for h in &t.hosts {
                if h.is_empty() || h.contains([':', '/', ' ']) {
                    return invalid(format!("tenant[{i}].hosts: {h:?} is not a host name"));
                }
                if !hosts.insert(h.to_ascii_lowercase()) {
                    return invalid(format!(
                        "tenant[{i}].hosts: {h:?} already belongs to another tenant"
                    ));
                }
            }
            for (kind, p) in [("token", &t.token), ("policy", &t.policy)] {
                if p.builtin.is_some() == p.wasm.is_some() {
                    return invalid(format!(
                        "tenant[{i}].{kind}: needs exactly one of `builtin` or `wasm`"
                    ));
                }
            }
        }
        if let Some(url) = &self.limits.redis_url
            && let Err(e) = redis::Client::open(url.as_str())
        {
            return invalid(format!("limits.redis_url: {e}"));
        }
        if self.limits.slot_ttl_secs < 3 {
            return invalid(
                "limits.slot_ttl_secs must be at least 3 (heartbeats every third)".into(),
            );
        }
        if self.sidecar.metadata_timeout_secs == 0 {
            return invalid("sidecar.metadata_timeout_secs must be at least 1".into());
        }
        if let Some(d) = &self.default_tenant
            && !ids.contains(d.as_str())
        {
            return invalid(format!("default_tenant: {d:?} is not a tenant id"));
        }
        Ok(())
    }

    pub fn drain(&self) -> Duration {
        Duration::from_secs(self.drain_secs)
    }
}

impl PluginConfig {
    fn builtin(name: &str, config: BTreeMap<String, String>) -> Self {
        PluginConfig {
            builtin: Some(name.to_owned()),
            wasm: None,
            config: config.into_iter().map(|(k, v)| (k, v.into())).collect(),
        }
    }

    /// The config as plugins get it; `field` names the map in errors.
    pub fn resolved(&self, field: &str) -> Result<BTreeMap<String, String>, ConfigError> {
        resolve_map(&self.config, field)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TWO_TENANTS: &str = r#"
        listen = "127.0.0.1:9000"
        [sidecar]
        connect = "/run/streamgate/sidecar.sock"
        [[tenant]]
        id = "a"
        hosts = ["a.example"]
        token = { builtin = "token-xchacha", config = { keys = "k1:AAAA", seal_key = "k1" } }
        policy = { builtin = "policy-allowlist" }
        [[tenant]]
        id = "b"
        token = { wasm = "/plugins/t.wasm" }
        policy = { builtin = "auth-hmac", config = { secret = "s" } }
    "#;

    #[test]
    fn parses_a_multi_tenant_file() {
        let c: Config = toml::from_str(TWO_TENANTS).unwrap();
        c.validate().unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.tenants.len(), 2);
        assert_eq!(c.tenants[1].default_ttl_secs, 24 * 3600);
        assert!(c.sidecar.connect.is_some());
        assert_eq!(c.sidecar.metadata_timeout_secs, 120);
        let bare = TWO_TENANTS.replace(
            "[sidecar]\n        connect = \"/run/streamgate/sidecar.sock\"",
            "",
        );
        let c: Config = toml::from_str(&bare).unwrap();
        assert_eq!(
            c.sidecar.metadata_timeout_secs, 120,
            "defaults without [sidecar] too"
        );
    }

    #[test]
    fn refuses_unknown_fields() {
        let typo = TWO_TENANTS.replace("hosts =", "hostz =");
        assert!(toml::from_str::<Config>(&typo).is_err());
    }

    #[test]
    fn refuses_a_plugin_with_two_sources() {
        let both = TWO_TENANTS.replace(
            "token = { wasm = \"/plugins/t.wasm\" }",
            "token = { wasm = \"/t.wasm\", builtin = \"token-fernet\" }",
        );
        let c: Config = toml::from_str(&both).unwrap();
        assert!(c.validate().is_err());
    }
}
