//! `token-xchacha`: the default token plugin.
//!
//! Token = base64url(no pad) of `version ‖ key-id-len ‖ key-id ‖ nonce(24) ‖ ciphertext+tag`,
//! the plaintext being JSON `{url, format, filename?, exp?}`. The AAD is the header
//! (`version ‖ key-id-len ‖ key-id`) followed by the tenant id, so a token minted for one
//! tenant never opens for another and the key id cannot be swapped.
//!
//! Config: `keys` = `id:base64url(32 bytes),...` (the ring; every key opens), `seal_key` =
//! the id that seals (default: the first key), `default_ttl` = seconds added as `exp` when a
//! sealed request has no expiry (default: none).

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};

wit_bindgen::generate!({ path: "../../wit", world: "token-plugin" });

use exports::streamgate::plugin::token::Guest;
use streamgate::plugin::types::{Denial, HttpRequest, StreamRequest};
use streamgate::plugin::{clock, config};

const VERSION: u8 = 1;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
const MAX_ID_LEN: usize = 32;

/// The sealed JSON; short field names keep links short.
#[derive(Serialize, Deserialize)]
struct Claims {
    url: String,
    format: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    filename: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    exp: Option<u64>,
}

struct Key {
    id: String,
    cipher: XChaCha20Poly1305,
}

/// Parses the `keys` config; a malformed entry is an error, not silently skipped, so a
/// typo in a rotation never leaves the ring without the key the operator meant.
fn key_ring() -> Result<Vec<Key>, String> {
    let raw = config::get("keys").ok_or("token-xchacha: config `keys` is not set")?;
    let mut ring = Vec::new();
    for entry in raw.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (id, secret) = entry
            .split_once(':')
            .ok_or("token-xchacha: a `keys` entry is not `id:key`")?;
        if id.is_empty() || id.len() > MAX_ID_LEN {
            return Err("token-xchacha: a key id must be 1-32 bytes".into());
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(secret.trim_end_matches('='))
            .map_err(|_| format!("token-xchacha: key `{id}` is not base64url"))?;
        let cipher = XChaCha20Poly1305::new_from_slice(&bytes)
            .map_err(|_| format!("token-xchacha: key `{id}` is not 32 bytes"))?;
        ring.push(Key {
            id: id.to_string(),
            cipher,
        });
    }
    if ring.is_empty() {
        return Err("token-xchacha: config `keys` is empty".into());
    }
    Ok(ring)
}

fn header(id: &str) -> Vec<u8> {
    let mut h = Vec::with_capacity(2 + id.len());
    h.push(VERSION);
    h.push(id.len() as u8);
    h.extend_from_slice(id.as_bytes());
    h
}

fn aad(header: &[u8], tenant: &str) -> Vec<u8> {
    [header, tenant.as_bytes()].concat()
}

fn deny(status: u16, reason: &str) -> Denial {
    Denial {
        status,
        reason: reason.to_string(),
    }
}

struct Component;

impl Guest for Component {
    fn open(request: HttpRequest, token: String) -> Result<StreamRequest, Denial> {
        let raw = URL_SAFE_NO_PAD
            .decode(token.trim().trim_end_matches('='))
            .map_err(|_| deny(400, "malformed token"))?;
        let (&version, rest) = raw.split_first().ok_or(deny(400, "malformed token"))?;
        if version != VERSION {
            return Err(deny(400, "unsupported token version"));
        }
        let (&id_len, rest) = rest.split_first().ok_or(deny(400, "malformed token"))?;
        let id_len = id_len as usize;
        if rest.len() < id_len + NONCE_LEN + TAG_LEN {
            return Err(deny(400, "truncated token"));
        }
        let (id, rest) = rest.split_at(id_len);
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let id = std::str::from_utf8(id).map_err(|_| deny(400, "malformed token"))?;
        let ring = key_ring().map_err(|e| deny(403, &e))?;
        let key = ring
            .iter()
            .find(|k| k.id == id)
            .ok_or(deny(403, "token key is not in the key ring"))?;
        let header = header(id);
        let plain = key
            .cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: &aad(&header, &request.tenant),
                },
            )
            .map_err(|_| deny(403, "invalid token"))?;
        let claims: Claims =
            serde_json::from_slice(&plain).map_err(|_| deny(400, "malformed token payload"))?;
        if let Some(exp) = claims.exp
            && clock::now() > exp
        {
            return Err(deny(410, "token expired"));
        }
        Ok(StreamRequest {
            url: claims.url,
            format: claims.format,
            filename: claims.filename,
            expires_at: claims.exp,
        })
    }

    fn seal(tenant: String, request: StreamRequest) -> Result<String, String> {
        let ring = key_ring()?;
        let key = match config::get("seal_key") {
            Some(id) => ring
                .iter()
                .find(|k| k.id == id)
                .ok_or_else(|| format!("token-xchacha: seal_key `{id}` is not in `keys`"))?,
            None => &ring[0],
        };
        let exp = match (request.expires_at, config::get("default_ttl")) {
            (Some(exp), _) => Some(exp),
            (None, Some(ttl)) => {
                let ttl: u64 = ttl
                    .parse()
                    .map_err(|_| "token-xchacha: default_ttl is not a number of seconds")?;
                Some(clock::now().saturating_add(ttl))
            }
            (None, None) => None,
        };
        let claims = Claims {
            url: request.url,
            format: request.format,
            filename: request.filename,
            exp,
        };
        let plain = serde_json::to_vec(&claims).map_err(|e| e.to_string())?;
        let header = header(&key.id);
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let sealed = key
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: &plain,
                    aad: &aad(&header, &tenant),
                },
            )
            .map_err(|_| "token-xchacha: encryption failed".to_string())?;
        let token = [header.as_slice(), nonce.as_slice(), &sealed].concat();
        Ok(URL_SAFE_NO_PAD.encode(token))
    }
}

export!(Component);
