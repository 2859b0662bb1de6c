//! `[server]`: what one client may hold of the HTTP listener — time to send a request head
//! or a resolve body, time a response may wait on a client that reads nothing, and how many
//! connections are open at once. Every default is finite: an unset table is still defended.
//! Also where the admin listener (`/metrics`, the detailed `/readyz`) is, apart from clients.

use std::net::{AddrParseError, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

use super::ConfigError;

/// The `[server]` table.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Seconds a client has to send a whole request head, counted from the connection (or
    /// from the previous response on keep-alive); then the connection closes (slowloris).
    #[serde(default = "default_header_read_timeout")]
    pub header_read_timeout_secs: u64,
    /// Seconds a response may wait on a client that takes no byte; then the connection
    /// closes and its stream's sidecar job is cancelled.
    #[serde(default = "default_idle_write_timeout")]
    pub idle_write_timeout_secs: u64,
    /// Seconds a `POST /v1/resolve` body may take to arrive whole (408 after).
    #[serde(default = "default_body_timeout")]
    pub resolve_body_timeout_secs: u64,
    /// Client connections open at once; past it a new connection is accepted and closed at
    /// once (Envoy's `max_connections`), counted in `connections_refused_total`.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Seconds between HTTP/2 keep-alive pings on a quiet connection; a ping unanswered for
    /// as long closes it.
    #[serde(default = "default_http2_keep_alive")]
    pub http2_keep_alive_secs: u64,
    /// Address of the admin listener (`/metrics`, the detailed `/readyz`), or `"off"`;
    /// loopback by default: tenant names, traffic and versions are not for clients.
    #[serde(default = "default_admin_listen")]
    pub admin_listen: AdminListen,
}

/// `admin_listen`: an address, or `"off"` (no admin listener).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct AdminListen(pub Option<SocketAddr>);

impl FromStr for AdminListen {
    type Err = AddrParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "off" => Ok(AdminListen(None)),
            addr => addr.parse().map(|a| AdminListen(Some(a))),
        }
    }
}

impl TryFrom<String> for AdminListen {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
            .map_err(|e| format!("admin_listen: {e} (an address, or \"off\")"))
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            header_read_timeout_secs: default_header_read_timeout(),
            idle_write_timeout_secs: default_idle_write_timeout(),
            resolve_body_timeout_secs: default_body_timeout(),
            max_connections: default_max_connections(),
            http2_keep_alive_secs: default_http2_keep_alive(),
            admin_listen: default_admin_listen(),
        }
    }
}

fn default_header_read_timeout() -> u64 {
    10
}
fn default_idle_write_timeout() -> u64 {
    60
}
fn default_body_timeout() -> u64 {
    10
}
fn default_max_connections() -> usize {
    4096
}
fn default_http2_keep_alive() -> u64 {
    30
}
fn default_admin_listen() -> AdminListen {
    AdminListen(Some(SocketAddr::from(([127, 0, 0, 1], 9091))))
}

impl ServerConfig {
    /// Every duration at least one second, at least one connection.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let secs = [
            ("header_read_timeout_secs", self.header_read_timeout_secs),
            ("idle_write_timeout_secs", self.idle_write_timeout_secs),
            ("resolve_body_timeout_secs", self.resolve_body_timeout_secs),
            ("http2_keep_alive_secs", self.http2_keep_alive_secs),
        ];
        if let Some((name, _)) = secs.iter().find(|(_, v)| *v == 0) {
            return Err(ConfigError::Invalid(format!(
                "server.{name} must be at least 1"
            )));
        }
        if self.max_connections == 0 {
            return Err(ConfigError::Invalid(
                "server.max_connections must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// [`Self::header_read_timeout_secs`].
    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_secs(self.header_read_timeout_secs)
    }

    /// [`Self::idle_write_timeout_secs`].
    pub fn idle_write_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_write_timeout_secs)
    }

    /// [`Self::resolve_body_timeout_secs`].
    pub fn resolve_body_timeout(&self) -> Duration {
        Duration::from_secs(self.resolve_body_timeout_secs)
    }

    /// [`Self::http2_keep_alive_secs`].
    pub fn http2_keep_alive(&self) -> Duration {
        Duration::from_secs(self.http2_keep_alive_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_finite_and_zero_is_refused() {
        let unset: ServerConfig = toml::from_str("").unwrap();
        assert_eq!(unset, ServerConfig::default());
        unset.validate().unwrap();
        let set: ServerConfig =
            toml::from_str("max_connections = 3\nidle_write_timeout_secs = 2").unwrap();
        assert_eq!(
            (set.max_connections, set.idle_write_timeout().as_secs()),
            (3, 2)
        );
        for zero in [
            "header_read_timeout_secs = 0",
            "idle_write_timeout_secs = 0",
            "resolve_body_timeout_secs = 0",
            "http2_keep_alive_secs = 0",
            "max_connections = 0",
        ] {
            let c: ServerConfig = toml::from_str(zero).unwrap();
            let err = c.validate().unwrap_err().to_string();
            let field = zero.split(' ').next().unwrap();
            assert_eq!(err, format!("server.{field} must be at least 1"));
        }
        assert!(toml::from_str::<ServerConfig>("header_timeout_secs = 5").is_err());
        let admin = |text: &str| toml::from_str::<ServerConfig>(text).map(|c| c.admin_listen.0);
        assert_eq!(admin("").unwrap(), Some("127.0.0.1:9091".parse().unwrap()));
        assert_eq!(admin("admin_listen = \"off\"").unwrap(), None);
        assert_eq!(
            admin("admin_listen = \"[::1]:9\"").unwrap(),
            Some("[::1]:9".parse().unwrap())
        );
        let err = admin("admin_listen = \"9091\"").unwrap_err().to_string();
        assert!(err.contains("an address, or \"off\""), "{err}");
    }
}
