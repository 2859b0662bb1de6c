//! Which IP addresses a job may not reach unless its tenant opts in, written once for the
//! sidecar's egress (the real check, after DNS) and the `policy-allowlist` plugin (an early
//! check of a URL's literal host). Internal = everything that is not a public unicast
//! address: a URL pointing there would be a server-side request forgery.

#![no_std]
#![deny(missing_docs)]

use core::fmt;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use core::str::FromStr;

/// True for loopback, private (RFC 1918), link-local, unspecified ("this network"), shared
/// (CGNAT), IETF-reserved, benchmarking, multicast, reserved and broadcast IPv4 addresses.
pub fn v4_is_internal(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    a == 0 // 0.0.0.0/8, "this network", includes the unspecified address
        || a == 10
        || a == 127
        || (a == 100 && (64..128).contains(&b)) // 100.64.0.0/10 shared address space
        || (a == 169 && b == 254)
        || (a == 172 && (16..32).contains(&b))
        || (a == 192 && b == 168)
        || (a == 192 && b == 0 && c == 0) // 192.0.0.0/24 IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // 198.18.0.0/15 benchmarking
        || a >= 224 // multicast, reserved, broadcast
}

/// The IPv4 address an IPv6 address stands for: mapped `::ffff:a.b.c.d`, compatible
/// `::a.b.c.d` (deprecated), NAT64 `64:ff9b::a.b.c.d` and 6to4 `2002:aabb:ccdd::/48`.
pub fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let seg = ip.segments();
    let v4 = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(v4);
    }
    if seg[..6].iter().all(|&s| s == 0) && !ip.is_unspecified() && !ip.is_loopback() {
        return Some(v4(seg[6], seg[7]));
    }
    if seg[0] == 0x64 && seg[1] == 0xff9b && seg[2..6].iter().all(|&s| s == 0) {
        return Some(v4(seg[6], seg[7]));
    }
    if seg[0] == 0x2002 {
        return Some(v4(seg[1], seg[2]));
    }
    None
}

/// True for the IPv6 equivalents (unspecified, loopback, multicast, link-local, site-local,
/// unique local) and for any IPv6 form that embeds an internal IPv4 address.
pub fn v6_is_internal(ip: Ipv6Addr) -> bool {
    if ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() {
        return true;
    }
    let first = ip.segments()[0];
    if (first & 0xffc0) == 0xfe80 // link-local fe80::/10
        || (first & 0xffc0) == 0xfec0 // deprecated site-local fec0::/10
        || (first & 0xfe00) == 0xfc00
    // unique local fc00::/7
    {
        return true;
    }
    embedded_v4(ip).is_some_and(v4_is_internal)
}

/// [`v4_is_internal`] or [`v6_is_internal`].
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4_is_internal(v4),
        IpAddr::V6(v6) => v6_is_internal(v6),
    }
}

/// Host names that resolve to loopback by definition (RFC 6761).
pub fn name_is_internal(host: &str) -> bool {
    let host = host.trim_end_matches('.');
    host.eq_ignore_ascii_case("localhost")
        || host.len() > ".localhost".len()
            && host[host.len() - ".localhost".len()..].eq_ignore_ascii_case(".localhost")
}

/// An address block such as `10.1.0.0/16` or `2001:db8::/32` (a bare address is a /32 or
/// /128). IPv4 blocks also match the IPv4-mapped form of their addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

/// Why a text is not a [`Cidr`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CidrError;

impl fmt::Display for CidrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("not an address block such as 10.0.0.0/8 or fd00::/8")
    }
}

impl Cidr {
    /// The block of `addr` with `prefix` leading bits; host bits are cleared.
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Cidr, CidrError> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(CidrError);
        }
        let addr = match addr {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask32(prefix))),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask128(prefix))),
        };
        Ok(Cidr { addr, prefix })
    }

    /// Whether `ip` is in the block (an IPv4-mapped IPv6 address counts as its IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(a)) => {
                u32::from(a) & mask32(self.prefix) == u32::from(net)
            }
            (IpAddr::V6(net), IpAddr::V6(a)) => {
                u128::from(a) & mask128(self.prefix) == u128::from(net)
            }
            _ => false,
        }
    }
}

fn mask32(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn mask128(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Cidr, CidrError> {
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s.trim(), None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| CidrError)?;
        let prefix = match prefix {
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                p.parse().map_err(|_| CidrError)?
            }
            Some(_) => return Err(CidrError),
            None if addr.is_ipv4() => 32,
            None => 128,
        };
        Cidr::new(addr, prefix)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[cfg(test)]
extern crate std;

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::ToString;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn internal_v4() {
        for s in [
            "0.0.0.0",
            "10.1.2.3",
            "127.0.0.1",
            "127.255.0.1",
            "100.64.0.1",
            "100.127.255.254",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "192.0.0.8",
            "198.18.0.1",
            "224.0.0.1",
            "239.1.1.1",
            "240.0.0.1",
            "255.255.255.255",
        ] {
            assert!(is_internal(ip(s)), "{s}");
        }
        for s in [
            "8.8.8.8",
            "1.1.1.1",
            "100.63.255.255",
            "100.128.0.1",
            "172.32.0.1",
            "198.51.100.2",
            "203.0.113.9",
            "192.0.2.1",
            "169.253.1.1",
        ] {
            assert!(!is_internal(ip(s)), "{s}");
        }
    }

    #[test]
    fn internal_v6_and_embedded_v4() {
        for s in [
            "::",
            "::1",
            "fe80::1",
            "febf::1",
            "fec0::1",
            "fc00::1",
            "fd12:3456::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "::169.254.169.254",
            "64:ff9b::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::",
            "2002:c0a8:0101::1",
        ] {
            assert!(is_internal(ip(s)), "{s}");
        }
        for s in [
            "2001:4860:4860::8888",
            "::ffff:8.8.8.8",
            "64:ff9b::8.8.8.8",
            "2002:0808:0808::1",
            "2606:4700::1111",
        ] {
            assert!(!is_internal(ip(s)), "{s}");
        }
        assert_eq!(
            embedded_v4(ip("::ffff:1.2.3.4").to_string().parse().unwrap()),
            Some(Ipv4Addr::new(1, 2, 3, 4))
        );
    }

    #[test]
    fn names() {
        assert!(name_is_internal("localhost"));
        assert!(name_is_internal("LOCALHOST."));
        assert!(name_is_internal("a.b.localhost"));
        assert!(!name_is_internal("localhost.example"));
        assert!(!name_is_internal("notlocalhost"));
    }

    #[test]
    fn cidrs() {
        let net: Cidr = "10.1.0.0/16".parse().unwrap();
        assert!(net.contains(ip("10.1.200.3")));
        assert!(net.contains(ip("::ffff:10.1.0.9")));
        assert!(!net.contains(ip("10.2.0.1")));
        let host: Cidr = "198.51.100.7".parse().unwrap();
        assert_eq!(host.to_string(), "198.51.100.7/32");
        assert!(host.contains(ip("198.51.100.7")) && !host.contains(ip("198.51.100.8")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("1.2.3.4")) && !all.contains(ip("2001:db8::1")));
        let v6: Cidr = "2001:db8::1/32".parse().unwrap();
        assert_eq!(v6.to_string(), "2001:db8::/32");
        assert!(v6.contains(ip("2001:db8:ffff::1")));
        for bad in [
            "",
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/",
            "10.0.0/8",
            "x/8",
            "10.0.0.0/+8",
        ] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad:?}");
        }
    }
}
