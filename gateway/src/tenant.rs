//! Tenants are first-class: every request is resolved to one (by the host of its
//! `:authority` or `Host`) before any plugin runs, and each tenant carries its own token and
//! policy plugins.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use streamgate_protocol::EgressRules;

use crate::config::{Config, ConfigError, PluginConfig};
use crate::plugin::{PluginEngine, PolicyPlugin, TokenPlugin, builtin};

/// One tenant, ready to serve.
pub struct Tenant {
    /// Its id (`[[tenant]] id`).
    pub id: String,
    /// Opens and seals its links.
    pub token: TokenPlugin,
    /// Decides what its requests may fetch.
    pub policy: PolicyPlugin,
    /// Lifetime of links minted without an explicit TTL.
    pub default_ttl: Duration,
    /// Where its jobs may connect: sent with every job, enforced by the sidecar.
    pub egress: EgressRules,
    /// Largest media a stream of this tenant relays (bytes).
    pub max_filesize: Option<u64>,
    /// Longest a stream may last (`limits.max_stream_secs`).
    pub max_stream: Option<Duration>,
}

/// Every tenant, indexed by host name, with an optional fallback for unknown hosts.
pub struct Tenants {
    all: Vec<Arc<Tenant>>,
    by_host: HashMap<String, usize>,
    /// `default_tenant`, else the first: what `mint` uses without `--tenant`.
    default: usize,
    /// `default_tenant` only: without it an unknown Host is a 404, never a guess.
    fallback: Option<usize>,
}

impl Tenants {
    /// Loads each tenant's plugins into `engine` and turns its `[tenant.egress]` into the
    /// rules its jobs carry.
    pub fn build(engine: &PluginEngine, config: &Config) -> Result<Tenants, ConfigError> {
        let mut all = Vec::with_capacity(config.tenants.len());
        let mut by_host = HashMap::new();
        for (i, t) in config.tenants.iter().enumerate() {
            let field = |kind: &str| format!("tenant[{i}].{kind}");
            let egress = t.egress.rules(&field("egress"))?;
            let (name, wasm) = plugin_source(&t.token, &field("token"))?;
            let config = t.token.resolved(&field("token.config"))?;
            let token = engine
                .load_token(&name, &wasm, config)
                .map_err(|e| invalid(&field("token"), e))?;
            let (name, wasm) = plugin_source(&t.policy, &field("policy"))?;
            let config = t.policy.resolved(&field("policy.config"))?;
            let policy = engine
                .load_policy(&name, &wasm, config)
                .map_err(|e| invalid(&field("policy"), e))?;
            for h in &t.hosts {
                by_host.insert(h.to_ascii_lowercase(), i);
            }
            all.push(Arc::new(Tenant {
                id: t.id.clone(),
                token,
                policy,
                default_ttl: Duration::from_secs(t.default_ttl_secs),
                egress,
                max_filesize: t.max_filesize,
                max_stream: t.limits.max_stream_secs.map(Duration::from_secs),
            }));
        }
        let fallback = config
            .default_tenant
            .as_ref()
            .and_then(|id| all.iter().position(|t| &t.id == id));
        Ok(Tenants {
            all,
            by_host,
            default: fallback.unwrap_or(0),
            fallback,
        })
    }

    /// The tenant for a request's host (`:authority` or `Host`; port and case ignored), else
    /// `default_tenant`; `None` when neither matches (the caller answers 404).
    pub fn for_host(&self, host: Option<&str>) -> Option<&Arc<Tenant>> {
        host.map(strip_port)
            .and_then(|h| self.by_host.get(&h.to_ascii_lowercase()))
            .copied()
            .or(self.fallback)
            .map(|i| &self.all[i])
    }

    /// The tenant with id `id`.
    pub fn get(&self, id: &str) -> Option<&Arc<Tenant>> {
        self.all.iter().find(|t| t.id == id)
    }

    /// `default_tenant`, else the first tenant: whom `mint` seals for without `--tenant`.
    pub fn default_tenant(&self) -> &Arc<Tenant> {
        &self.all[self.default]
    }
}

fn invalid(field: &str, err: impl std::fmt::Display) -> ConfigError {
    ConfigError::Invalid(format!("{field}: loading the plugin: {err}"))
}

/// `host:port`, `[v6]:port` or a bare host → the host.
fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

/// The name and bytes of a plugin: embedded for built-ins, read from disk otherwise.
fn plugin_source(p: &PluginConfig, field: &str) -> Result<(String, Vec<u8>), ConfigError> {
    if let Some(name) = &p.builtin {
        let wasm = builtin::by_name(name).ok_or_else(|| {
            ConfigError::Invalid(format!("{field}.builtin: no built-in plugin {name:?}"))
        })?;
        return Ok((name.clone(), wasm.to_vec()));
    }
    let path = p.wasm.as_ref().expect("validated: builtin or wasm");
    let wasm = std::fs::read(path).map_err(|e| {
        ConfigError::Invalid(format!("{field}.wasm: reading {}: {e}", path.display()))
    })?;
    let name = path
        .file_stem()
        .map_or_else(|| "plugin".into(), |s| s.to_string_lossy().into_owned());
    Ok((name, wasm))
}

#[cfg(test)]
mod tests {
    use super::strip_port;

    #[test]
    fn host_header_forms() {
        assert_eq!(strip_port("a.example:8080"), "a.example");
        assert_eq!(strip_port("a.example"), "a.example");
        assert_eq!(strip_port("[::1]:8080"), "::1");
        assert_eq!(strip_port("[::1]"), "::1");
    }
}
