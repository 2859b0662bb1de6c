//! The one egress decision: every outbound connection of a job comes through
//! [`Egress::connect`], which resolves the name itself, refuses the whole name when any of
//! its addresses is not allowed, and connects to an address it checked (no second lookup,
//! so no DNS-rebinding window). yt-dlp and ffmpeg reach it through the job's forward proxy
//! ([`proxy`]); in netns mode ([`netns`]) nothing else is reachable from the job.

pub mod netns;
pub mod proxy;
mod upstream;

use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::Duration;

use streamgate_addr::{Cidr, is_internal};
use streamgate_protocol::EgressRules;
use tokio::net::{TcpSocket, TcpStream};
use url::{Host, Url};

pub use upstream::Upstream;

/// Ports every tenant may reach.
const DEFAULT_PORTS: [u16; 2] = [80, 443];
/// Bounds a name lookup and a TCP connect each: a black-holed address must not pin a job.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// `SO_RCVBUF` of an upstream socket. Left to itself Linux grows it towards `tcp_rmem`'s
/// maximum (up to 32 MiB) while bytes come fast, and a stalled client then parks all of it
/// in the kernel, per stream. 1 MiB (the kernel doubles it for its bookkeeping) still lets
/// ≈1 MiB be in flight per round trip: ≈20 MB/s at 50 ms, far more on a LAN or loopback.
const UPSTREAM_RCVBUF: u32 = 1 << 20;

/// Why a connection was not made.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    /// The rules refuse it: the job is told `egress_denied`.
    #[error("refused by the egress rules: {0}")]
    Denied(String),
    /// The name does not resolve.
    #[error("cannot resolve {host}: {reason}")]
    Resolve { host: String, reason: String },
    /// No checked address accepted the connection.
    #[error("cannot connect to {host}:{port}: {reason}")]
    Connect {
        host: String,
        port: u16,
        reason: String,
    },
    /// The tenant's upstream proxy failed or refused.
    #[error("upstream proxy: {0}")]
    Upstream(String),
}

/// 128 random bits from the kernel (per-job proxy passwords and directory names).
pub(crate) fn random_u128() -> u128 {
    let mut buf = [0u8; 16];
    // SAFETY: getrandom writes into our own buffer of the given length.
    let got = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    assert_eq!(got, buf.len() as isize, "getrandom failed");
    u128::from_le_bytes(buf)
}

/// A tenant's [`EgressRules`], parsed once per job.
#[derive(Clone, Debug)]
pub struct Rules {
    allow_private: bool,
    allow: Vec<Cidr>,
    deny: Vec<Cidr>,
    ports: Vec<u16>,
    any_port: bool,
}

impl Rules {
    /// Parses the wire form; a bad CIDR is an error (the gateway validated it already).
    pub fn parse(rules: &EgressRules) -> Result<Rules, String> {
        let cidrs = |list: &[String]| -> Result<Vec<Cidr>, String> {
            list.iter()
                .map(|c| c.parse().map_err(|e| format!("{c:?}: {e}")))
                .collect()
        };
        Ok(Rules {
            allow_private: rules.allow_private,
            allow: cidrs(&rules.allow_cidrs)?,
            deny: cidrs(&rules.deny_cidrs)?,
            ports: rules.ports.clone(),
            any_port: rules.any_port,
        })
    }

    /// The decision for one address and port. Denied blocks win over everything; allowed
    /// blocks open internal addresses; otherwise internal addresses need `allow_private`.
    pub fn check(&self, ip: IpAddr, port: u16) -> Result<(), String> {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        if self.deny.iter().any(|c| c.contains(ip)) {
            return Err(format!("{ip} is in a denied block"));
        }
        if !(self.any_port || DEFAULT_PORTS.contains(&port) || self.ports.contains(&port)) {
            return Err(format!("port {port} is not allowed"));
        }
        if self.allow.iter().any(|c| c.contains(ip)) {
            return Ok(());
        }
        if is_internal(ip) && !self.allow_private {
            return Err(format!("{ip} is an internal address"));
        }
        Ok(())
    }
}

/// One job's egress: its rules, its upstream proxy, and what it refused (so a failed job
/// can be reported as `egress_denied` rather than as whatever yt-dlp made of a 403).
pub struct Egress {
    rules: Rules,
    upstream: Option<Upstream>,
    denied: Mutex<Vec<String>>,
}

impl Egress {
    pub fn new(rules: Rules, upstream: Option<Upstream>) -> Egress {
        Egress {
            rules,
            upstream,
            denied: Mutex::new(Vec::new()),
        }
    }

    /// The first refusal of this job, if any.
    pub fn first_denial(&self) -> Option<String> {
        self.denied
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .first()
            .cloned()
    }

    fn deny(&self, reason: String) -> EgressError {
        tracing::info!(%reason, "egress refused");
        let mut denied = self.denied.lock().unwrap_or_else(|e| e.into_inner());
        if denied.len() < 16 {
            denied.push(reason.clone());
        }
        EgressError::Denied(reason)
    }

    /// Checks the host and port of a job's own URL before any process starts.
    pub async fn check_url(&self, url: &Url) -> Result<(), EgressError> {
        let host = url
            .host()
            .ok_or_else(|| self.deny("the URL has no host".into()))?;
        let port = url
            .port_or_known_default()
            .ok_or_else(|| self.deny(format!("scheme {} is not allowed", url.scheme())))?;
        self.resolve(&host.to_owned(), port).await.map(|_| ())
    }

    /// Every address of `host`, each one checked; any refused address refuses the name (a
    /// name mixing public and internal records is how rebinding attacks start).
    pub async fn resolve(
        &self,
        host: &Host<String>,
        port: u16,
    ) -> Result<Vec<IpAddr>, EgressError> {
        let addrs = match host {
            Host::Ipv4(ip) => vec![IpAddr::V4(*ip)],
            Host::Ipv6(ip) => vec![IpAddr::V6(*ip)],
            Host::Domain(name) => {
                let fail = |reason: String| EgressError::Resolve {
                    host: name.clone(),
                    reason,
                };
                let found = tokio::time::timeout(
                    CONNECT_TIMEOUT,
                    tokio::net::lookup_host((name.as_str(), port)),
                )
                .await
                .map_err(|_| fail("lookup timed out".into()))?
                .map_err(|e| fail(e.to_string()))?;
                let mut addrs: Vec<IpAddr> = found.map(|a| a.ip()).collect();
                addrs.dedup();
                if addrs.is_empty() {
                    return Err(fail("no address".into()));
                }
                addrs
            }
        };
        for ip in &addrs {
            if let Err(why) = self.rules.check(*ip, port) {
                return Err(self.deny(format!("{host}:{port}: {why}")));
            }
        }
        Ok(addrs)
    }

    /// Connects to `host:port` through the checks (and the tenant's upstream proxy, if any).
    pub async fn connect(&self, host: &Host<String>, port: u16) -> Result<TcpStream, EgressError> {
        let addrs = self.resolve(host, port).await?;
        let mut last = String::from("no address");
        for ip in addrs {
            let target = SocketAddr::new(ip, port);
            let attempt = async {
                match &self.upstream {
                    Some(up) => up.connect(target).await,
                    None => tcp_connect(target).await.map_err(|e| EgressError::Connect {
                        host: host.to_string(),
                        port,
                        reason: e.to_string(),
                    }),
                }
            };
            match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
                Ok(Ok(stream)) => return Ok(stream),
                Ok(Err(e @ EgressError::Upstream(_))) => return Err(e),
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = format!("connecting to {target} timed out"),
            }
        }
        Err(EgressError::Connect {
            host: host.to_string(),
            port,
            reason: last,
        })
    }
}

/// A TCP connection to `target` whose receive buffer is capped before the handshake (the
/// window scale is agreed then).
async fn tcp_connect(target: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = match target {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    socket.set_recv_buffer_size(UPSTREAM_RCVBUF)?;
    socket.connect(target).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(f: impl FnOnce(&mut EgressRules)) -> Rules {
        let mut r = EgressRules::default();
        f(&mut r);
        Rules::parse(&r).unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn strict_by_default() {
        let r = rules(|_| {});
        assert!(r.check(ip("198.51.100.2"), 80).is_ok());
        assert!(r.check(ip("198.51.100.2"), 443).is_ok());
        assert!(r.check(ip("198.51.100.2"), 8080).is_err());
        for internal in [
            "127.0.0.1",
            "10.0.0.1",
            "169.254.169.254",
            "::1",
            "::ffff:127.0.0.1",
            "64:ff9b::7f00:1",
            "2002:7f00:1::1",
            "fd00::1",
            "0.0.0.0",
            "100.64.1.1",
        ] {
            assert!(r.check(ip(internal), 80).is_err(), "{internal}");
        }
    }

    #[test]
    fn tenant_rules() {
        let r = rules(|r| {
            r.allow_cidrs = vec!["10.1.0.0/16".into()];
            r.deny_cidrs = vec!["198.51.100.0/24".into(), "10.1.2.0/24".into()];
            r.ports = vec![8080];
        });
        assert!(r.check(ip("10.1.0.5"), 8080).is_ok());
        assert!(r.check(ip("::ffff:10.1.0.5"), 80).is_ok());
        assert!(r.check(ip("10.1.2.5"), 80).is_err(), "deny wins over allow");
        assert!(r.check(ip("10.2.0.5"), 80).is_err());
        assert!(r.check(ip("198.51.100.7"), 443).is_err());
        assert!(r.check(ip("203.0.113.1"), 8081).is_err());
        let open = rules(|r| {
            r.allow_private = true;
            r.any_port = true;
        });
        assert!(open.check(ip("127.0.0.1"), 9999).is_ok());
        assert!(
            Rules::parse(&EgressRules {
                allow_cidrs: vec!["nope".into()],
                ..Default::default()
            })
            .is_err()
        );
    }

    #[tokio::test]
    async fn names_are_checked_after_resolution() {
        let egress = Egress::new(rules(|_| {}), None);
        let host = Host::Domain("localhost".to_owned());
        assert!(matches!(
            egress.resolve(&host, 80).await,
            Err(EgressError::Denied(_))
        ));
        assert!(egress.first_denial().unwrap().contains("internal"));
        let literal: Url = "http://[::ffff:127.0.0.1]/".parse().unwrap();
        assert!(egress.check_url(&literal).await.is_err());
    }

    #[tokio::test]
    async fn upstream_sockets_have_a_capped_receive_buffer() {
        use nix::sys::socket::{getsockopt, sockopt::RcvBuf};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stream = tcp_connect(listener.local_addr().unwrap()).await.unwrap();
        // The kernel doubles the asked size and never grows a size that was set.
        let size = getsockopt(&stream, RcvBuf).unwrap();
        assert_eq!(size, 2 * UPSTREAM_RCVBUF as usize);
    }
}
