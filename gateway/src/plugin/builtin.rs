//! The plugins shipped with the gateway, built by `gateway/build.rs` for wasm32-wasip2 and
//! embedded here, plus key generation in the format `token-xchacha` expects.

use std::path::PathBuf;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;

macro_rules! plugin_file {
    ($file:literal) => {
        concat!(env!("STREAMGATE_PLUGIN_DIR"), "/", $file)
    };
}

/// `token-xchacha`: the default token plugin.
pub const TOKEN_XCHACHA: &[u8] = include_bytes!(plugin_file!("token_xchacha.wasm"));
/// `token-fernet`: opens the old service's links.
pub const TOKEN_FERNET: &[u8] = include_bytes!(plugin_file!("token_fernet.wasm"));
/// `policy-allowlist`: URL host allowlist and private-address guard.
pub const POLICY_ALLOWLIST: &[u8] = include_bytes!(plugin_file!("policy_allowlist.wasm"));
/// `auth-hmac`: example auth plugin (signed links, bearer tokens).
pub const AUTH_HMAC: &[u8] = include_bytes!(plugin_file!("auth_hmac.wasm"));
/// `policy-media`: example media policy (WIT 0.2.0): live streams, duration, size.
pub const POLICY_MEDIA: &[u8] = include_bytes!(plugin_file!("policy_media.wasm"));

/// The built plugins' directory (`<target>/plugins/wasm32-wasip2/wasm`).
pub fn plugin_dir() -> PathBuf {
    PathBuf::from(env!("STREAMGATE_PLUGIN_DIR"))
}

/// `test-misbehave`, for tests only: not embedded in the binary.
pub fn test_misbehave_path() -> PathBuf {
    PathBuf::from(plugin_file!("test_misbehave.wasm"))
}

/// `test-misbehave-media` (a 0.2.0 media policy whose review loops or traps on demand), for
/// tests only: not embedded in the binary.
pub fn test_misbehave_media_path() -> PathBuf {
    PathBuf::from(plugin_file!("test_misbehave_media.wasm"))
}

/// The embedded plugin called `name` (`token-xchacha`, `token-fernet`, `policy-allowlist`,
/// `auth-hmac`, `policy-media`), if any.
pub fn by_name(name: &str) -> Option<&'static [u8]> {
    match name {
        "token-xchacha" => Some(TOKEN_XCHACHA),
        "token-fernet" => Some(TOKEN_FERNET),
        "policy-allowlist" => Some(POLICY_ALLOWLIST),
        "auth-hmac" => Some(AUTH_HMAC),
        "policy-media" => Some(POLICY_MEDIA),
        _ => None,
    }
}

/// A new `token-xchacha` key-ring entry, `id:base64url(32 random bytes)`, e.g.
/// `k3f9a1c2e:Vq…`. Use it as (or prepend it to) the plugin's `keys`; the first key seals
/// unless `seal_key` names another.
pub fn xchacha_generate_key() -> String {
    let mut bytes = [0u8; 36];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    let (id, secret) = bytes.split_at(4);
    let id: String = id.iter().map(|b| format!("{b:02x}")).collect();
    format!("k{id}:{}", URL_SAFE_NO_PAD.encode(secret))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_id_colon_32_bytes() {
        let key = xchacha_generate_key();
        let (id, secret) = key.split_once(':').unwrap();
        assert_eq!(id.len(), 9);
        assert_eq!(URL_SAFE_NO_PAD.decode(secret).unwrap().len(), 32);
        assert_ne!(key, xchacha_generate_key());
    }

    #[test]
    fn built_plugins_are_components() {
        for wasm in [
            TOKEN_XCHACHA,
            TOKEN_FERNET,
            POLICY_ALLOWLIST,
            AUTH_HMAC,
            POLICY_MEDIA,
        ] {
            // component-model preamble: magic, then layer 1 / version 0x0d
            assert_eq!(&wasm[..8], b"\0asm\x0d\0\x01\0");
        }
        assert!(test_misbehave_path().is_file());
        assert!(test_misbehave_media_path().is_file());
    }
}
