//! `[plugins]`: the limits every plugin call runs under, one set per plugin engine. Read at
//! start; a reload that changes them asks for a restart (the instance pool is sized once).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// Limits every plugin call runs under; the defaults suit the built-in plugins.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct EngineSettings {
    /// Wall-clock budget of one call, instantiation included (`deadline_ms`, default 50).
    #[serde(rename = "deadline_ms", deserialize_with = "millis")]
    pub deadline: Duration,
    /// Linear memory one instance may use, all memories together (`memory_limit_bytes`,
    /// default 16 MiB).
    #[serde(rename = "memory_limit_bytes")]
    pub memory_limit: usize,
    /// Instances alive at once (the pooling allocator's size); further calls wait.
    pub max_instances: u32,
    /// Instances one tenant's calls may hold at once, so that one tenant's slow plugin cannot
    /// take them all (`tenant_instances`; default half of `max_instances`, rounded up).
    pub tenant_instances: Option<u32>,
    /// How long a call may wait for an instance before it is refused as an overload
    /// (`queue_timeout_ms`; default ten deadlines), so a tenant whose plugin is slow sheds
    /// its excess requests instead of piling them up on the gateway's connections.
    #[serde(rename = "queue_timeout_ms", deserialize_with = "some_millis")]
    pub queue_timeout: Option<Duration>,
    /// Bytes of plugin output (stdout, stderr, `log`) kept per call and stream (default 16 KiB).
    pub log_cap_bytes: usize,
    /// Where compiled components are kept between starts (`cache_dir`; default
    /// `$XDG_CACHE_HOME/streamgate/plugins`, else `~/.cache/streamgate/plugins`; `""`: none).
    pub cache_dir: Option<PathBuf>,
}

impl Default for EngineSettings {
    fn default() -> Self {
        Self {
            deadline: Duration::from_millis(50),
            memory_limit: 16 << 20,
            max_instances: 32,
            tenant_instances: None,
            queue_timeout: None,
            log_cap_bytes: 16 << 10,
            cache_dir: None,
        }
    }
}

impl EngineSettings {
    /// Instances one tenant may hold: `tenant_instances`, at least 1 and at most all.
    pub fn tenant_instances(&self) -> u32 {
        let all = self.max_instances.max(1);
        self.tenant_instances
            .unwrap_or(all.div_ceil(2))
            .clamp(1, all)
    }

    /// The longest wait for an instance: `queue_timeout_ms`, else ten deadlines.
    pub fn queue_timeout(&self) -> Duration {
        self.queue_timeout.unwrap_or(self.deadline * 10)
    }
}

fn millis<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    u64::deserialize(d).map(Duration::from_millis)
}

fn some_millis<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    millis(d).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plugins_table_overrides_the_defaults_it_names() {
        let s: EngineSettings = toml::from_str("deadline_ms = 20\nmax_instances = 4").unwrap();
        assert_eq!(s.deadline, Duration::from_millis(20));
        assert_eq!(s.max_instances, 4);
        assert_eq!(s.memory_limit, EngineSettings::default().memory_limit);
        assert!(toml::from_str::<EngineSettings>("deadline = 20").is_err());
        assert_eq!(s.tenant_instances(), 2, "half of 4 by default");
        assert_eq!(
            s.queue_timeout(),
            Duration::from_millis(200),
            "ten deadlines"
        );
        let s: EngineSettings = toml::from_str("queue_timeout_ms = 5").unwrap();
        assert_eq!(s.queue_timeout(), Duration::from_millis(5));
        let s: EngineSettings = toml::from_str("tenant_instances = 40").unwrap();
        assert_eq!(s.tenant_instances(), 32, "never more than max_instances");
    }
}
