//! `config`: the gateway's TOML configuration, parsed and validated (gateway/src/config/).

use std::path::Path;

use streamgate::config::Config;

/// `input` as a config file: refused with a `ConfigError`, or accepted, and then everything
/// start-up derives from it (limits, egress rules, plugin configs) is computed without a
/// panic, and the config is still valid. True when accepted.
pub fn config(input: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(input) else {
        return false;
    };
    let Ok(config) = Config::from_toml(text, Path::new("fuzz.toml")) else {
        return false;
    };
    config.validate().expect("an accepted config stays valid");
    let _ = (config.drain(), config.tenant_limits());
    for (i, tenant) in config.tenants.iter().enumerate() {
        let _ = tenant.egress.rules(&format!("tenant[{i}].egress"));
        let _ = tenant.token.resolved(&format!("tenant[{i}].token.config"));
        let _ = tenant
            .policy
            .resolved(&format!("tenant[{i}].policy.config"));
    }
    true
}
