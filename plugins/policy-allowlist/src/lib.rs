//! `policy-allowlist`: which URLs a tenant may stream, and (optionally) who may ask.
//!
//! Config (all optional):
//! - `hosts`: comma-separated allowed hosts: `example.com` (exact), `*.example.com` (any
//!   subdomain, not the name itself), `*` (any host). Unset or empty: nothing is allowed.
//! - `allow_private`: `true` lets URLs reach loopback, private, link-local and unspecified
//!   addresses (for local testing); default `false`.
//! - `api_key` / `api_keys`: one or several (comma-separated) keys; when set, requests must
//!   carry one in the header named by `api_key_header` (default `x-api-key`).
//! - `force_format`, `force_filename`: changes applied to every allowed request.
//! - `public_resolve`: `true` lets anyone who reaches the gateway call `POST /v1/resolve`
//!   without an API key; default `false`.
//! - `resolve_clients`: comma-separated address blocks (`127.0.0.0/8,::1/128`) whose
//!   clients may resolve without an API key.
//!
//! Resolve runs yt-dlp against any URL a caller names, so it needs credentials: an API key,
//! `public_resolve`, or a client inside `resolve_clients`; anything else is a 401.
//!
//! Host names are parsed as browsers do (WHATWG URL), which also turns `2130706433`,
//! `0x7f.1`, `0177.0.0.1` and `127.1` into `127.0.0.1` before the address check.

use std::net::{IpAddr, SocketAddr};

use sha2::{Digest, Sha256};
use streamgate_addr::Cidr;
use subtle::ConstantTimeEq;
use url::{Host, Url};

wit_bindgen::generate!({ path: "../../wit", world: "policy-plugin" });

use exports::streamgate::plugin::policy::{Changes, Decision, Guest};
use streamgate::plugin::config;
use streamgate::plugin::log::{Level, log};
use streamgate::plugin::types::{Denial, HttpRequest, StreamRequest};

fn deny(status: u16, reason: &str) -> Decision {
    Decision::Deny(Denial {
        status,
        reason: reason.to_string(),
    })
}

fn list(key: &str) -> Vec<String> {
    config::get(key)
        .unwrap_or_default()
        .split(',')
        .map(|s| s.trim().to_ascii_lowercase())
        .filter(|s| !s.is_empty())
        .collect()
}

/// `host` is already lower-case (the URL parser folds it).
fn host_allowed(host: &str, allowed: &[String]) -> bool {
    let host = host.trim_end_matches('.');
    allowed.iter().any(|pattern| {
        let pattern = pattern.trim_end_matches('.');
        match pattern.strip_prefix("*.") {
            _ if pattern == "*" => true,
            Some(suffix) => host.len() > suffix.len() + 1 && host.ends_with(&format!(".{suffix}")),
            None => host == pattern,
        }
    })
}

/// Compares digests so that neither the content nor the length of a key leaks through
/// timing, and checks every configured key (no early exit).
fn api_key_matches(given: &str, keys: &[String]) -> bool {
    let given = Sha256::digest(given.as_bytes());
    keys.iter().fold(false, |ok, key| {
        let key = Sha256::digest(key.as_bytes());
        ok | bool::from(given.ct_eq(&key))
    })
}

/// A resolve request: the only POST route, whatever spelling of its path reached it.
fn is_resolve(request: &HttpRequest) -> bool {
    request.method == "POST" || request.path.trim_end_matches('/') == "/v1/resolve"
}

/// Whether an anonymous client may resolve: `public_resolve`, or its address (`ip:port`,
/// `[v6]:port`) is inside `resolve_clients`. A block that does not parse matches nothing.
fn anonymous_resolve_allowed(client_addr: &str) -> bool {
    if config::get("public_resolve").is_some_and(|v| v == "true") {
        return true;
    }
    let client = client_addr
        .parse::<SocketAddr>()
        .map(|a| a.ip())
        .or_else(|_| client_addr.parse::<IpAddr>());
    let Ok(client) = client else {
        return false;
    };
    list("resolve_clients")
        .iter()
        .any(|block| match block.parse::<Cidr>() {
            Ok(cidr) => cidr.contains(client),
            Err(e) => {
                log(Level::Warn, &format!("resolve_clients: {block:?}: {e}"));
                false
            }
        })
}

struct Component;

impl Guest for Component {
    fn check(request: HttpRequest, wanted: StreamRequest) -> Decision {
        // API keys are case-sensitive secrets, so read them unfolded.
        let keys: Vec<String> = config::get("api_key")
            .into_iter()
            .chain(config::get("api_keys"))
            .flat_map(|v| {
                v.split(',')
                    .map(|k| k.trim().to_string())
                    .collect::<Vec<_>>()
            })
            .filter(|k| !k.is_empty())
            .collect();
        if !keys.is_empty() {
            let header = config::get("api_key_header")
                .unwrap_or_else(|| "x-api-key".into())
                .to_ascii_lowercase();
            let given = request
                .headers
                .iter()
                .find(|(name, _)| name.eq_ignore_ascii_case(&header))
                .map(|(_, value)| value.as_str());
            match given {
                None => return deny(401, "missing API key"),
                Some(given) if !api_key_matches(given, &keys) => {
                    return deny(401, "invalid API key");
                }
                Some(_) => {}
            }
        } else if is_resolve(&request) && !anonymous_resolve_allowed(&request.client_addr) {
            return deny(401, "resolve needs credentials");
        }

        let Ok(url) = Url::parse(wanted.url.trim()) else {
            return deny(400, "not a valid URL");
        };
        if !matches!(url.scheme(), "http" | "https") {
            return deny(400, "only http and https URLs are allowed");
        }
        let allow_private = config::get("allow_private").is_some_and(|v| v == "true");
        let internal = match url.host() {
            None => return deny(400, "URL has no host"),
            Some(Host::Ipv4(ip)) => streamgate_addr::v4_is_internal(ip),
            Some(Host::Ipv6(ip)) => streamgate_addr::v6_is_internal(ip),
            Some(Host::Domain(name)) => streamgate_addr::name_is_internal(name),
        };
        if internal && !allow_private {
            return deny(403, "URL points at a private or local address");
        }
        let host = url.host_str().unwrap_or_default();
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if !host_allowed(host, &list("hosts")) {
            return deny(403, "URL host is not allowed");
        }
        Decision::Allow(Changes {
            format: config::get("force_format"),
            filename: config::get("force_filename"),
        })
    }
}

export!(Component);
