//! The gateway's configuration: plain TOML structs that refuse unknown fields (a typo must
//! not silently disable a setting), their checks, and the embedded default used when no file
//! is given. A leaf: it imports no other gateway module, and reading it writes nothing.

mod limits;
mod plugins;
mod secrets;
mod server;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use streamgate_addr::Cidr;
use streamgate_protocol::EgressRules;
use url::Url;

pub use limits::{LimitsConfig, OnLimiterError, RedisUrl, TenantLimits};
pub use plugins::EngineSettings;
use secrets::resolve_map;
pub use secrets::{ConfigValue, EnvRef, FileRef};
pub use server::{AdminListen, ServerConfig};

/// Tenant id of the embedded default configuration.
pub const DEFAULT_TENANT: &str = "default";

/// Why a configuration could not be loaded or used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML or does not fit the structs.
    // Not a `source`: toml's message already is the whole story (line, field, snippet).
    #[error("{}: {error}", .path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// toml's message.
        error: Box<toml::de::Error>,
    },
    /// The embedded default's state directory (its key file) could not be used.
    #[error("state directory {path}: {source}")]
    State {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A value breaks a rule serde cannot express; the message names the field.
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
    /// Timeouts and caps of the HTTP listener (`[server]`).
    #[serde(default)]
    pub server: ServerConfig,
    /// Where the sidecar is (`[sidecar]`).
    #[serde(default)]
    pub sidecar: SidecarConfig,
    /// Tenant serving requests whose Host matches no tenant; the first tenant when unset.
    #[serde(default)]
    pub default_tenant: Option<String>,
    /// Every `[[tenant]]`.
    #[serde(rename = "tenant")]
    pub tenants: Vec<TenantConfig>,
    /// Where limit counters live (`redis_url`) and what a limiter failure means.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// The limits every plugin call runs under (`[plugins]`).
    #[serde(default)]
    pub plugins: EngineSettings,
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
    /// Unique id: metrics label, the `tenant` plugins and jobs see.
    pub id: String,
    /// Host names (without port) routed to this tenant.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Lifetime of links minted without `--ttl`.
    #[serde(default = "default_ttl_secs")]
    pub default_ttl_secs: u64,
    /// Opens and seals link tokens.
    pub token: PluginConfig,
    /// Allows or denies what a token (or a resolve body) asks for.
    pub policy: PluginConfig,
    /// Concurrent streams and resolves per minute; every limit optional (unset: unlimited).
    #[serde(default)]
    pub limits: TenantLimits,
    /// Where the tenant's jobs may connect; unset: the strict default.
    #[serde(default)]
    pub egress: EgressConfig,
    /// Largest media (bytes) a stream may relay; bigger ends with `too_large`.
    #[serde(default)]
    pub max_filesize: Option<u64>,
}

/// `[tenant.egress]`: where a tenant's jobs may connect. The sidecar enforces it on every
/// connection, after DNS; unset fields keep the strict default (public addresses, ports 80
/// and 443, no upstream proxy).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressConfig {
    /// Let jobs reach internal addresses (loopback, private, link-local, …).
    #[serde(default)]
    pub allow_private: bool,
    /// Address blocks reachable even though internal, e.g. an intranet's `10.1.0.0/16`.
    #[serde(default)]
    pub allow_cidrs: Vec<String>,
    /// Address blocks never reachable, whatever else allows them.
    #[serde(default)]
    pub deny_cidrs: Vec<String>,
    /// Ports allowed besides 80 and 443.
    #[serde(default)]
    pub ports: Vec<u16>,
    /// Every port allowed (local testing).
    #[serde(default)]
    pub any_port: bool,
    /// Upstream proxy the egress chains to: `http://` or `socks5://[user:pass@]host:port`.
    /// May be `{ env }` / `{ file }`, as it may carry a password.
    #[serde(default)]
    pub proxy: Option<ConfigValue>,
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
        Config::from_toml(&text, path)
    }

    /// Parses and validates the text of a file at `path` (named in errors): [`Config::load`]
    /// without the read, public so the config fuzz target (`fuzz/`) feeds it text directly.
    pub fn from_toml(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            error: Box::new(e),
        })?;
        config.validate()?;
        config.resolve_secrets()?;
        Ok(config)
    }

    /// Replaces every `{ env }` / `{ file }` plugin value by its content, so a missing
    /// secret fails the load and the plugins see plain strings.
    fn resolve_secrets(&mut self) -> Result<(), ConfigError> {
        for (i, t) in self.tenants.iter_mut().enumerate() {
            for (kind, p) in [("token", &mut t.token), ("policy", &mut t.policy)] {
                let resolved = resolve_map(&p.config, &format!("tenant[{i}].{kind}.config"))?;
                p.config = resolved.into_iter().map(|(k, v)| (k, v.into())).collect();
            }
        }
        Ok(())
    }

    /// The configuration used without `--config`: one tenant with the default plugins,
    /// sealing with the first key of `key_ring` (`id:base64key[,…]`, kept by the caller), and
    /// a spawned sidecar.
    pub fn embedded(key_ring: &str, allow_private_urls: bool) -> Config {
        let token = BTreeMap::from([("keys".to_owned(), key_ring.to_owned())]);
        let policy = BTreeMap::from([
            ("hosts".to_owned(), "*".to_owned()),
            ("allow_private".to_owned(), allow_private_urls.to_string()),
            // Resolve needs credentials; the default has no API key, so: this machine only.
            (
                "resolve_clients".to_owned(),
                "127.0.0.0/8,::1/128".to_owned(),
            ),
        ]);
        Config {
            listen: default_listen(),
            drain_secs: default_drain_secs(),
            server: ServerConfig::default(),
            sidecar: SidecarConfig::default(),
            default_tenant: Some(DEFAULT_TENANT.to_owned()),
            tenants: vec![TenantConfig {
                id: DEFAULT_TENANT.to_owned(),
                hosts: Vec::new(),
                default_ttl_secs: default_ttl_secs(),
                token: PluginConfig::builtin("token-xchacha", token),
                policy: PluginConfig::builtin("policy-allowlist", policy),
                limits: TenantLimits::default(),
                // `--allow-private-urls` serves files of this machine: any address, any port.
                egress: EgressConfig {
                    allow_private: allow_private_urls,
                    any_port: allow_private_urls,
                    ..EgressConfig::default()
                },
                max_filesize: None,
            }],
            limits: LimitsConfig::default(),
            plugins: EngineSettings::default(),
        }
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
            if t.limits.max_stream_secs == Some(0) {
                return invalid(format!(
                    "tenant[{i}].limits.max_stream_secs must be at least 1"
                ));
            }
            if t.max_filesize == Some(0) {
                return invalid(format!("tenant[{i}].max_filesize must be at least 1"));
            }
            for (kind, p) in [("token", &t.token), ("policy", &t.policy)] {
                if p.builtin.is_some() == p.wasm.is_some() {
                    return invalid(format!(
                        "tenant[{i}].{kind}: needs exactly one of `builtin` or `wasm`"
                    ));
                }
            }
        }
        if self.limits.slot_ttl_secs < 3 {
            return invalid(
                "limits.slot_ttl_secs must be at least 3 (heartbeats every third)".into(),
            );
        }
        self.server.validate()?;
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

    /// How long running streams may take to finish after SIGTERM.
    pub fn drain(&self) -> Duration {
        Duration::from_secs(self.drain_secs)
    }

    /// Each tenant's `limits` table by tenant id: what the limiter enforces.
    pub fn tenant_limits(&self) -> HashMap<String, TenantLimits> {
        let all = self.tenants.iter();
        all.map(|t| (t.id.clone(), t.limits.clone())).collect()
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

impl EgressConfig {
    /// The rules every job of the tenant carries: blocks in canonical form, the proxy's
    /// secret read and its form checked. `field` (`tenant[N].egress`) names errors.
    pub fn rules(&self, field: &str) -> Result<EgressRules, ConfigError> {
        let blocks = |list: &[String], name: &str| {
            list.iter()
                .map(|text| match text.parse::<Cidr>() {
                    Ok(block) => Ok(block.to_string()),
                    Err(e) => Err(ConfigError::Invalid(format!(
                        "{field}.{name}: {text:?} is {e}"
                    ))),
                })
                .collect::<Result<Vec<_>, _>>()
        };
        if self.ports.contains(&0) {
            return Err(ConfigError::Invalid(format!(
                "{field}.ports: 0 is not a port"
            )));
        }
        let proxy = match &self.proxy {
            None => None,
            Some(value) => {
                let text = value.resolve(&format!("{field}.proxy"))?;
                // The text may hold a password: the message never repeats it.
                Some(proxy_url(&text).ok_or_else(|| {
                    ConfigError::Invalid(format!(
                        "{field}.proxy: not of the form http://[user:pass@]host:port \
                         or socks5://[user:pass@]host:port"
                    ))
                })?)
            }
        };
        Ok(EgressRules {
            allow_private: self.allow_private,
            allow_cidrs: blocks(&self.allow_cidrs, "allow_cidrs")?,
            deny_cidrs: blocks(&self.deny_cidrs, "deny_cidrs")?,
            ports: self.ports.clone(),
            any_port: self.any_port,
            proxy,
        })
    }
}

/// An upstream proxy URL as the sidecar gets it, `scheme://[user[:pass]@]host:port` with
/// the port always written; `None` unless http or socks5 with a host and a port and nothing
/// after them.
fn proxy_url(text: &str) -> Option<String> {
    let url = Url::parse(text.trim()).ok()?;
    if !matches!(url.scheme(), "http" | "socks5")
        || !matches!(url.path(), "" | "/")
        || url.query().is_some()
        || url.fragment().is_some()
    {
        return None;
    }
    let host = url.host_str().filter(|h| !h.is_empty())?;
    // WHATWG drops a scheme's default port (`http://p:80` has none): was one written?
    let written = || {
        let authority = text
            .trim()
            .split_once("://")?
            .1
            .split(['/', '?', '#'])
            .next()?;
        let (_, port) = authority.rsplit('@').next()?.rsplit_once(':')?;
        let digits = !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit());
        digits.then(|| url.port_or_known_default()).flatten()
    };
    let port = url.port().or_else(written)?;
    let user = match (url.username(), url.password()) {
        ("", None) => String::new(),
        (name, None) => format!("{name}@"),
        (name, Some(password)) => format!("{name}:{password}@"),
    };
    Some(format!("{}://{user}{host}:{port}", url.scheme()))
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

    /// `TWO_TENANTS` with `extra` added to tenant `b` (its last lines).
    fn with_b(extra: &str) -> Result<Config, String> {
        let c: Config =
            toml::from_str(&format!("{TWO_TENANTS}\n{extra}")).map_err(|e| e.to_string())?;
        c.validate().map_err(|e| e.to_string())?;
        Ok(c)
    }

    fn rules_of(extra: &str) -> Result<EgressRules, String> {
        let c = with_b(extra)?;
        c.tenants[1]
            .egress
            .rules("tenant[1].egress")
            .map_err(|e| e.to_string())
    }

    #[test]
    fn egress_defaults_to_strict_rules() {
        let c = with_b("").unwrap();
        assert_eq!(c.tenants[1].max_filesize, None);
        let rules = c.tenants[1].egress.rules("tenant[1].egress").unwrap();
        assert_eq!(rules, EgressRules::default());
    }

    #[test]
    fn egress_table_parses_into_rules() {
        let rules = rules_of(
            r#"
            max_filesize = 2000000000
            [tenant.egress]
            allow_private = true
            allow_cidrs = ["10.1.2.3/16", "fd00::1/8", "192.0.2.7"]
            deny_cidrs = ["10.1.99.0/24"]
            ports = [8080, 8443]
            any_port = false
            proxy = "socks5://user:p%40ss@proxy.corp:1080"
            "#,
        )
        .unwrap();
        assert_eq!(
            rules,
            EgressRules {
                allow_private: true,
                allow_cidrs: vec![
                    "10.1.0.0/16".into(),
                    "fd00::/8".into(),
                    "192.0.2.7/32".into()
                ],
                deny_cidrs: vec!["10.1.99.0/24".into()],
                ports: vec![8080, 8443],
                any_port: false,
                proxy: Some("socks5://user:p%40ss@proxy.corp:1080".into()),
            }
        );
        let c = with_b("max_filesize = 5").unwrap();
        assert_eq!(c.tenants[1].max_filesize, Some(5));
    }

    #[test]
    fn egress_mistakes_name_their_field() {
        let refused = |extra: &str, expected: &str| {
            let err = rules_of(extra).unwrap_err();
            assert!(err.contains(expected), "{extra}: {expected:?} in {err}");
        };
        refused(
            "[tenant.egress]\nallow_cidrs = [\"10.0.0.0/8\", \"10.0.0.0/33\"]",
            "tenant[1].egress.allow_cidrs: \"10.0.0.0/33\" is not an address block",
        );
        refused(
            "[tenant.egress]\ndeny_cidrs = [\"intranet\"]",
            "tenant[1].egress.deny_cidrs: \"intranet\" is not an address block",
        );
        refused(
            "[tenant.egress]\nports = [0]",
            "tenant[1].egress.ports: 0 is not a port",
        );
        refused("[tenant.egress]\nports = [70000]", "invalid value");
        refused(
            "[tenant.egress]\nallow_privat = true",
            "unknown field `allow_privat`",
        );
        refused(
            "max_filesize = 0",
            "tenant[1].max_filesize must be at least 1",
        );
        for bad in [
            "https://proxy:3128",
            "ftp://proxy:21",
            "http://proxy",
            "socks5://proxy",
            "http://proxy:3128/path",
            "http://proxy:3128?x=1",
            "socks5://:1080",
            "proxy:3128",
            "http://user:s3cret@proxy",
        ] {
            let err = rules_of(&format!("[tenant.egress]\nproxy = {bad:?}")).unwrap_err();
            assert!(
                err.starts_with("tenant[1].egress.proxy: not of the form"),
                "{bad}: {err}"
            );
            assert!(
                !err.contains("s3cret"),
                "the password stays out of messages: {err}"
            );
        }
    }

    #[test]
    fn proxy_urls_are_written_with_their_port() {
        for (given, sent) in [
            ("http://proxy.corp:3128", "http://proxy.corp:3128"),
            ("http://proxy.corp:80/", "http://proxy.corp:80"),
            ("HTTP://u:p@Proxy.Corp:8080", "http://u:p@proxy.corp:8080"),
            ("socks5://10.0.0.5:1080", "socks5://10.0.0.5:1080"),
            ("socks5://[fd00::5]:1080", "socks5://[fd00::5]:1080"),
            ("http://[fd00::5]:80", "http://[fd00::5]:80"),
        ] {
            assert_eq!(proxy_url(given).as_deref(), Some(sent), "{given}");
        }
        assert_eq!(proxy_url("http://[fd00::5]"), None);
    }

    #[test]
    fn the_proxy_may_be_a_secret() {
        // SAFETY: this test alone uses this variable name.
        unsafe { std::env::set_var("SG_CONFIG_TEST_PROXY", "http://u:pw@proxy.corp:3128") };
        let rules =
            rules_of("[tenant.egress]\nproxy = { env = \"SG_CONFIG_TEST_PROXY\" }").unwrap();
        assert_eq!(rules.proxy.as_deref(), Some("http://u:pw@proxy.corp:3128"));
        let err =
            rules_of("[tenant.egress]\nproxy = { env = \"SG_CONFIG_TEST_UNSET\" }").unwrap_err();
        assert!(
            err.starts_with("tenant[1].egress.proxy: environment variable"),
            "{err}"
        );
    }

    #[test]
    fn the_embedded_default_is_strict_unless_private_urls_are_allowed() {
        let strict = Config::embedded("k1:AAAA", false);
        strict.validate().unwrap();
        let rules = strict.tenants[0].egress.rules("tenant[0].egress").unwrap();
        assert_eq!(rules, EgressRules::default());
        let policy = strict.tenants[0].policy.resolved("p").unwrap();
        assert_eq!(policy["resolve_clients"], "127.0.0.0/8,::1/128");
        let open = Config::embedded("k1:AAAA", true);
        let rules = open.tenants[0].egress.rules("tenant[0].egress").unwrap();
        assert!(rules.allow_private && rules.any_port);
        assert_eq!((rules.allow_cidrs.len(), rules.proxy), (0, None));
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
