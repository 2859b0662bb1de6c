//! `[limits]` (where counters live, what a backend failure means) and each tenant's
//! `limits` table. The Redis URL is parsed here, once, while the file is read.

use redis::{ConnectionInfo, IntoConnectionInfo};
use serde::{Deserialize, Deserializer};

/// A tenant's `limits` table; every limit is optional (unset = unlimited).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TenantLimits {
    /// Concurrent streams of the tenant, across every replica sharing the counters.
    pub max_streams: Option<u32>,
    /// Concurrent streams of one client address (IP, any port) within the tenant.
    pub max_streams_per_client: Option<u32>,
    /// `POST /v1/resolve` calls per minute (a window opened by the first one).
    pub resolves_per_minute: Option<u32>,
    /// The same per client address (IP), so one client cannot spend the tenant's budget.
    pub resolves_per_minute_per_client: Option<u32>,
    /// Seconds one stream may last; then its response is cut and its job cancelled, so a
    /// client reading slowly forever cannot keep a job slot forever.
    pub max_stream_secs: Option<u64>,
}

/// The top-level `[limits]` table: where counters live and what a backend failure means.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// `redis://host:port/db`; unset: counters in memory, per process.
    #[serde(default)]
    pub redis_url: Option<RedisUrl>,
    /// Refuse (the default) or allow requests while the counters cannot be reached.
    #[serde(default)]
    pub on_limiter_error: OnLimiterError,
    /// Seconds a Redis slot outlives its last heartbeat (a dead replica's slots free then).
    #[serde(default = "default_slot_ttl")]
    pub slot_ttl_secs: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            redis_url: None,
            on_limiter_error: OnLimiterError::default(),
            slot_ttl_secs: default_slot_ttl(),
        }
    }
}

fn default_slot_ttl() -> u64 {
    30
}

/// What to do when the counters cannot be reached: refuse (503) or let the request through.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OnLimiterError {
    /// Refuse with 503.
    #[default]
    Deny,
    /// Serve without counting.
    Allow,
}

impl OnLimiterError {
    /// The spelling in the file, also the `decision` label of `limiter_errors`.
    pub fn as_str(self) -> &'static str {
        match self {
            OnLimiterError::Deny => "deny",
            OnLimiterError::Allow => "allow",
        }
    }
}

/// A Redis URL, parsed by the redis crate as the file is read: a bad one fails the load.
#[derive(Clone, Debug)]
pub struct RedisUrl {
    text: String,
    info: ConnectionInfo,
}

impl RedisUrl {
    /// Where to connect.
    pub fn info(&self) -> &ConnectionInfo {
        &self.info
    }
}

/// Equal when written the same: a reload compares the file's text.
impl PartialEq for RedisUrl {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Eq for RedisUrl {}

impl<'de> Deserialize<'de> for RedisUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let info = text
            .as_str()
            .into_connection_info()
            .map_err(|e| serde::de::Error::custom(format!("not a Redis URL: {e}")))?;
        Ok(RedisUrl { text, info })
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    use super::*;

    const BASE: &str = r#"
        [[tenant]]
        id = "a"
        token = { builtin = "token-xchacha" }
        policy = { builtin = "policy-allowlist" }
        limits = { max_streams = 3 }
    "#;

    fn parse(global: &str) -> Result<Config, String> {
        let c: Config = toml::from_str(&format!("{global}\n{BASE}")).map_err(|e| e.to_string())?;
        c.validate().map_err(|e| e.to_string())?;
        Ok(c)
    }

    #[test]
    fn limits_tables_parse_with_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.limits, LimitsConfig::default());
        assert_eq!(c.limits.on_limiter_error, OnLimiterError::Deny);
        assert_eq!(c.tenants[0].limits.max_streams, Some(3));
        assert_eq!(c.tenants[0].limits.resolves_per_minute, None);
        let per_client = BASE.replace("max_streams = 3", "resolves_per_minute_per_client = 7");
        let c: Config = toml::from_str(&per_client).unwrap();
        assert_eq!(c.tenants[0].limits.resolves_per_minute_per_client, Some(7));
        let c =
            parse("[limits]\nredis_url = \"redis://127.0.0.1:1/\"\non_limiter_error = \"allow\"")
                .unwrap();
        assert_eq!(c.limits.on_limiter_error, OnLimiterError::Allow);
        assert_eq!(c.limits.slot_ttl_secs, 30);
        assert!(c.limits.redis_url.is_some());
    }

    #[test]
    fn bad_limits_are_refused() {
        for bad in [
            "[limits]\non_limiter_error = \"maybe\"",
            "[limits]\nslot_ttl = 5",
            "[limits]\nslot_ttl_secs = 1",
            "[limits]\nredis_url = \"http://x\"",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        let typo = BASE.replace("max_streams", "max_stream");
        assert!(toml::from_str::<Config>(&typo).is_err());
    }
}
