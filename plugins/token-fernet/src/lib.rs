//! `token-fernet`: opens the tokens of the service streamgate replaces, so links its clients
//! already hold keep working on `/stream?data=`.
//!
//! Those tokens are Fernet (Python `cryptography`) over JSON `{url, format_id, filename}`.
//! Config: `key` = the old Fernet key (urlsafe base64 of 32 bytes); `keys` = more old keys,
//! comma-separated, also tried (rotation); `max_age` = seconds after minting a token stops
//! opening (default: no limit, as the old service had none). It cannot seal: new links are
//! minted by the tenant's primary token plugin.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE;
use fernet::Fernet;
use serde::Deserialize;

wit_bindgen::generate!({ path: "../../wit", world: "token-plugin" });

use exports::streamgate::plugin::token::Guest;
use streamgate::plugin::types::{Denial, HttpRequest, StreamRequest};
use streamgate::plugin::{clock, config, log};

/// The old service's payload; `format_id` is yt-dlp's selector.
#[derive(Deserialize)]
struct Legacy {
    url: String,
    #[serde(default)]
    format_id: Option<String>,
    #[serde(default)]
    filename: Option<String>,
}

fn deny(status: u16, reason: &str) -> Denial {
    Denial {
        status,
        reason: reason.to_string(),
    }
}

fn keys() -> Result<Vec<Fernet>, String> {
    let mut all = Vec::new();
    let listed = config::get("key").into_iter().chain(config::get("keys"));
    for key in listed.flat_map(|v| {
        v.split(',')
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .map(String::from)
            .collect::<Vec<_>>()
    }) {
        all.push(Fernet::new(&key).ok_or("token-fernet: a configured key is not a Fernet key")?);
    }
    if all.is_empty() {
        return Err("token-fernet: config `key` is not set".into());
    }
    Ok(all)
}

/// The mint time, bytes 1..9 of the decoded token; read only after the HMAC verified.
fn minted_at(token: &str) -> Option<u64> {
    let raw = URL_SAFE.decode(token).ok()?;
    Some(u64::from_be_bytes(raw.get(1..9)?.try_into().ok()?))
}

struct Component;

impl Guest for Component {
    fn open(_request: HttpRequest, token: String) -> Result<StreamRequest, Denial> {
        let token = token.trim();
        let keys = keys().map_err(|e| {
            log::log(log::Level::Error, &e);
            deny(403, "legacy tokens are not configured")
        })?;
        let now = clock::now();
        // No TTL here: age is checked below so that "too old" gets its own status.
        let plain = keys
            .iter()
            .find_map(|k| k.decrypt_at_time(token, None, now).ok())
            .ok_or(deny(403, "invalid token"))?;
        if let Some(max_age) = config::get("max_age") {
            let max_age: u64 = max_age.parse().map_err(|_| {
                log::log(log::Level::Error, "token-fernet: max_age is not a number");
                deny(403, "legacy tokens are misconfigured")
            })?;
            let minted = minted_at(token).ok_or(deny(400, "malformed token"))?;
            if now.saturating_sub(minted) > max_age {
                return Err(deny(410, "token expired"));
            }
        }
        let legacy: Legacy =
            serde_json::from_slice(&plain).map_err(|_| deny(400, "malformed token payload"))?;
        Ok(StreamRequest {
            url: legacy.url,
            format: legacy.format_id.unwrap_or_else(|| "best".to_string()),
            filename: legacy.filename,
            expires_at: None,
        })
    }

    fn seal(_tenant: String, _request: StreamRequest) -> Result<String, String> {
        Err("token-fernet only opens the old service's tokens; it cannot seal".to_string())
    }
}

export!(Component);
