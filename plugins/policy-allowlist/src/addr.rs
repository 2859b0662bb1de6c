//! Which IP addresses a tenant may not reach unless it opts in: everything that is not a
//! public unicast address. The gateway fetches what the URL names, so a URL pointing at
//! the gateway's own network would be a server-side request forgery.

use std::net::{Ipv4Addr, Ipv6Addr};

/// True for loopback, private, link-local, unspecified ("this network"), shared (CGNAT),
/// IETF-reserved, multicast, reserved and broadcast IPv4 addresses.
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

/// True for the IPv6 equivalents, and for any IPv6 form that embeds an internal IPv4
/// address (mapped `::ffff:a.b.c.d`, compatible `::a.b.c.d`, NAT64 `64:ff9b::/96`, 6to4).
pub fn v6_is_internal(ip: Ipv6Addr) -> bool {
    if ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() {
        return true;
    }
    let seg = ip.segments();
    if (seg[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
        || (seg[0] & 0xffc0) == 0xfec0 // deprecated site-local fec0::/10
        || (seg[0] & 0xfe00) == 0xfc00
    // unique local fc00::/7
    {
        return true;
    }
    let low_v4 = Ipv4Addr::new(
        (seg[6] >> 8) as u8,
        seg[6] as u8,
        (seg[7] >> 8) as u8,
        seg[7] as u8,
    );
    if let Some(v4) = ip.to_ipv4_mapped() {
        return v4_is_internal(v4);
    }
    if seg[..6].iter().all(|&s| s == 0) {
        return v4_is_internal(low_v4); // IPv4-compatible (deprecated)
    }
    if seg[0] == 0x64 && seg[1] == 0xff9b && seg[2..6].iter().all(|&s| s == 0) {
        return v4_is_internal(low_v4); // NAT64 well-known prefix
    }
    if seg[0] == 0x2002 {
        let v4 = Ipv4Addr::new(
            (seg[1] >> 8) as u8,
            seg[1] as u8,
            (seg[2] >> 8) as u8,
            seg[2] as u8,
        );
        return v4_is_internal(v4); // 6to4
    }
    false
}

/// Host names that resolve to loopback by definition (RFC 6761).
pub fn name_is_internal(host: &str) -> bool {
    let host = host.trim_end_matches('.');
    host == "localhost" || host.ends_with(".localhost")
}
