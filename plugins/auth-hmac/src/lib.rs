//! `auth-hmac`: an example auth plugin to copy. A request passes when it carries either
//! - a signed link: query parameters `expires` (unix seconds, not past) and `sig` =
//!   lower-case hex HMAC-SHA256(`secret`, path + "?" + query without `sig`), or
//! - `Authorization: Bearer <token>` with a token listed in `bearer_tokens`.
//!
//! Config: `secret` (the HMAC key, as text), `bearer_tokens` (comma-separated, optional),
//! `max_ttl` (optional: seconds; links expiring further ahead are refused).
//! It never changes the request: its verdict is allow (no changes) or 401/403.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

wit_bindgen::generate!({ path: "../../wit", world: "policy-plugin" });

use exports::streamgate::plugin::policy::{Changes, Decision, Guest};
use streamgate::plugin::types::{Denial, HttpRequest, StreamRequest};
use streamgate::plugin::{clock, config, log};

fn deny(status: u16, reason: &str) -> Decision {
    Decision::Deny(Denial {
        status,
        reason: reason.to_string(),
    })
}

fn allow() -> Decision {
    Decision::Allow(Changes {
        format: None,
        filename: None,
    })
}

/// Digests first, so the comparison takes the same time whatever the lengths.
fn bearer_ok(request: &HttpRequest) -> bool {
    let Some(given) = request
        .headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case("authorization"))
        .and_then(|(_, value)| value.strip_prefix("Bearer "))
    else {
        return false;
    };
    let given = Sha256::digest(given.trim().as_bytes());
    config::get("bearer_tokens")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .fold(false, |ok, token| {
            ok | bool::from(given.ct_eq(&Sha256::digest(token.as_bytes())))
        })
}

/// Splits the raw query into the signed part (every parameter but `sig`, order kept, bytes
/// untouched) and the `sig` and `expires` values.
fn split_query(query: &str) -> (String, Option<&str>, Option<&str>) {
    let (mut signed, mut sig, mut expires) = (Vec::new(), None, None);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("sig", value)) => sig = Some(value),
            Some(("expires", value)) => {
                expires = Some(value);
                signed.push(pair);
            }
            _ => signed.push(pair),
        }
    }
    (signed.join("&"), sig, expires)
}

fn signed_link(request: &HttpRequest, secret: &str) -> Decision {
    let (signed, sig, expires) = split_query(&request.query);
    let (Some(sig), Some(expires)) = (sig, expires) else {
        return deny(401, "missing signature or bearer token");
    };
    let Ok(expires) = expires.parse::<u64>() else {
        return deny(400, "`expires` is not a unix time");
    };
    let Ok(sig) = hex::decode(sig) else {
        return deny(403, "invalid signature");
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(format!("{}?{}", request.path, signed).as_bytes());
    if mac.verify_slice(&sig).is_err() {
        return deny(403, "invalid signature");
    }
    let now = clock::now();
    if now > expires {
        return deny(403, "link expired");
    }
    if let Some(max_ttl) = config::get("max_ttl").and_then(|v| v.parse::<u64>().ok())
        && expires - now > max_ttl
    {
        return deny(403, "link expires too far ahead");
    }
    allow()
}

struct Component;

impl Guest for Component {
    fn check(request: HttpRequest, _wanted: StreamRequest) -> Decision {
        if bearer_ok(&request) {
            return allow();
        }
        match config::get("secret").filter(|s| !s.is_empty()) {
            Some(secret) => signed_link(&request, &secret),
            None => {
                log::log(log::Level::Warn, "auth-hmac: no `secret` configured");
                deny(401, "missing bearer token")
            }
        }
    }
}

export!(Component);
