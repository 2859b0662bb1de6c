//! Tenants are first-class: every request is resolved to one (by its Host header) before any
//! plugin runs, and each tenant carries its own token and policy plugins.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{Config, ConfigError, PluginConfig};
use crate::plugin::{PluginEngine, PolicyPlugin, TokenPlugin, builtin};

/// One tenant, ready to serve.
pub struct Tenant {
    pub id: String,
    pub hosts: Vec<String>,
    pub token: TokenPlugin,
    pub policy: PolicyPlugin,
    /// Lifetime of links minted without an explicit TTL.
    pub default_ttl: Duration,
}

/// Every tenant, indexed by host name, with a fallback for unknown hosts.
pub struct Tenants {
    all: Vec<Arc<Tenant>>,
    by_host: HashMap<String, usize>,
    default: usize,
}

impl Tenants {
    /// Loads each tenant's plugins into `engine`.
    pub fn build(engine: &PluginEngine, config: &Config) -> Result<Tenants, ConfigError> {
        let mut all = Vec::with_capacity(config.tenants.len());
        let mut by_host = HashMap::new();
        for (i, t) in config.tenants.iter().enumerate() {
            let (name, wasm) = plugin_source(&t.token)?;
            let token = engine
                .load_token(&name, &wasm, t.token.config.clone())
                .map_err(|e| invalid(&t.id, "token", e))?;
            let (name, wasm) = plugin_source(&t.policy)?;
            let policy = engine
                .load_policy(&name, &wasm, t.policy.config.clone())
                .map_err(|e| invalid(&t.id, "policy", e))?;
            for h in &t.hosts {
                by_host.insert(h.to_ascii_lowercase(), i);
            }
            all.push(Arc::new(Tenant {
                id: t.id.clone(),
                hosts: t.hosts.clone(),
                token,
                policy,
                default_ttl: Duration::from_secs(t.default_ttl_secs),
            }));
        }
        let default = match &config.default_tenant {
            Some(id) => all.iter().position(|t| &t.id == id).unwrap_or(0),
            None => 0,
        };
        Ok(Tenants {
            all,
            by_host,
            default,
        })
    }

    /// The tenant for a request's Host header (port and case ignored), else the default.
    pub fn for_host(&self, host: Option<&str>) -> &Arc<Tenant> {
        let index = host
            .map(strip_port)
            .and_then(|h| self.by_host.get(&h.to_ascii_lowercase()))
            .copied()
            .unwrap_or(self.default);
        &self.all[index]
    }

    pub fn get(&self, id: &str) -> Option<&Arc<Tenant>> {
        self.all.iter().find(|t| t.id == id)
    }

    pub fn default_tenant(&self) -> &Arc<Tenant> {
        &self.all[self.default]
    }
}

fn invalid(tenant: &str, kind: &str, err: impl std::fmt::Display) -> ConfigError {
    ConfigError::Invalid(format!(
        "tenant {tenant:?}: loading its {kind} plugin: {err}"
    ))
}

/// `host:port`, `[v6]:port` or a bare host → the host.
fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

/// The name and bytes of a plugin: embedded for built-ins, read from disk otherwise.
fn plugin_source(p: &PluginConfig) -> Result<(String, Vec<u8>), ConfigError> {
    if let Some(name) = &p.builtin {
        let wasm = builtin::by_name(name)
            .ok_or_else(|| ConfigError::Invalid(format!("no built-in plugin {name:?}")))?;
        return Ok((name.clone(), wasm.to_vec()));
    }
    let path = p.wasm.as_ref().expect("validated: builtin or wasm");
    let wasm = std::fs::read(path).map_err(|source| ConfigError::Read {
        path: path.clone(),
        source,
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
