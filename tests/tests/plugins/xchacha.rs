//! `token-xchacha`: round trips, and every kind of bad token refused with a 4xx.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use streamgate::plugin::{StreamRequest, TokenPlugin, builtin, unix_now};

use super::{assert_denied, config, engine, open, seal, stream};

const KEY_A: &str = "ka:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";
const KEY_B: &str = "kb:HyAhIiMkJSYnKCkqKywtLi8wMTIzNDU2Nzg5Ojs8PT4";

pub fn xchacha(pairs: &[(&str, &str)]) -> TokenPlugin {
    engine()
        .load_token("token-xchacha", builtin::TOKEN_XCHACHA, config(pairs))
        .expect("load token-xchacha")
}

#[tokio::test]
async fn xchacha_seal_then_open_round_trips() {
    let _quiet = super::shared().await;
    let plugin = xchacha(&[("keys", KEY_A)]);
    for req in [
        stream("https://media.example.com/v/1"),
        StreamRequest {
            url: "https://media.example.com/v/2?x=1&y=ü".into(),
            format: "bestvideo+bestaudio/best".into(),
            filename: None,
            expires_at: None,
        },
    ] {
        let token = seal(&plugin, "acme", &req).await;
        assert!(!token.contains(['+', '/', '=']), "base64url: {token}");
        assert_eq!(open(&plugin, "acme", &token).await.unwrap(), req);
    }
}

#[tokio::test]
async fn xchacha_refuses_tampered_truncated_and_garbage_tokens() {
    let _quiet = super::shared().await;
    let plugin = xchacha(&[("keys", KEY_A)]);
    let token = seal(&plugin, "acme", &stream("https://media.example.com/v/1")).await;
    let raw = URL_SAFE_NO_PAD.decode(&token).unwrap();
    // Flip one bit in the header, the nonce, the ciphertext and the tag in turn.
    for index in [0, 1, 5, raw.len() / 2, raw.len() - 1] {
        let mut bad = raw.clone();
        bad[index] ^= 0x01;
        let denial = assert_denied(
            open(&plugin, "acme", &URL_SAFE_NO_PAD.encode(&bad)).await,
            &format!("bit flipped at byte {index}"),
        );
        assert!(denial.status == 400 || denial.status == 403, "{denial:?}");
    }
    for cut in [1, 4, 20, 40, raw.len() - 1] {
        assert_denied(
            open(&plugin, "acme", &URL_SAFE_NO_PAD.encode(&raw[..cut])).await,
            &format!("truncated to {cut} bytes"),
        );
    }
    for garbage in ["", "not base64!", "%%%", "AAAA"] {
        let denial = assert_denied(open(&plugin, "acme", garbage).await, garbage);
        assert_eq!(denial.status, 400, "{garbage:?}: {denial:?}");
    }
}

#[tokio::test]
async fn xchacha_refuses_wrong_key_and_wrong_tenant() {
    let _quiet = super::shared().await;
    let sealer = xchacha(&[("keys", KEY_A)]);
    let token = seal(&sealer, "acme", &stream("https://media.example.com/v/1")).await;
    // Same key id, other secret.
    let other = xchacha(&[("keys", &KEY_B.replace("kb:", "ka:"))]);
    assert_eq!(
        assert_denied(open(&other, "acme", &token).await, "wrong key").status,
        403
    );
    // The tenant is bound through the AAD.
    assert_eq!(
        assert_denied(open(&sealer, "globex", &token).await, "wrong tenant").status,
        403
    );
}

#[tokio::test]
async fn xchacha_refuses_expired_tokens() {
    let _quiet = super::shared().await;
    let plugin = xchacha(&[("keys", KEY_A)]);
    let mut req = stream("https://media.example.com/v/1");
    req.expires_at = Some(unix_now() - 5);
    let token = seal(&plugin, "acme", &req).await;
    let denial = assert_denied(open(&plugin, "acme", &token).await, "expired");
    assert_eq!(denial.status, 410, "{denial:?}");
    // default_ttl gives an expiry to requests without one.
    let plugin = xchacha(&[("keys", KEY_A), ("default_ttl", "60")]);
    let mut req = stream("https://media.example.com/v/1");
    req.expires_at = None;
    let opened = open(&plugin, "acme", &seal(&plugin, "acme", &req).await).await;
    let exp = opened.unwrap().expires_at.expect("default_ttl applied");
    assert!(exp.abs_diff(unix_now() + 60) <= 2, "{exp}");
}

#[tokio::test]
async fn xchacha_key_rotation_and_removal() {
    let _quiet = super::shared().await;
    let req = stream("https://media.example.com/v/1");
    let old_only = xchacha(&[("keys", KEY_A)]);
    let old_token = seal(&old_only, "acme", &req).await;
    // Rotation: the new key seals, the old one still opens.
    let rotated = xchacha(&[("keys", &format!("{KEY_A},{KEY_B}")), ("seal_key", "kb")]);
    let new_token = seal(&rotated, "acme", &req).await;
    assert_eq!(
        &URL_SAFE_NO_PAD.decode(&new_token).unwrap()[1..4],
        b"\x02kb"
    );
    assert_eq!(open(&rotated, "acme", &old_token).await.unwrap(), req);
    assert_eq!(open(&rotated, "acme", &new_token).await.unwrap(), req);
    // Retired: once `ka` leaves the ring its tokens stop opening.
    let retired = xchacha(&[("keys", KEY_B)]);
    assert_eq!(open(&retired, "acme", &new_token).await.unwrap(), req);
    let denial = assert_denied(open(&retired, "acme", &old_token).await, "removed key");
    assert_eq!(denial.status, 403);
}

#[tokio::test]
async fn xchacha_without_keys_cannot_seal_and_denies() {
    let _quiet = super::shared().await;
    let plugin = xchacha(&[]);
    let req = stream("https://media.example.com/v/1");
    let err = plugin.seal("acme", &req).await.unwrap().unwrap_err();
    assert!(err.contains("keys"), "{err}");
    let bad_seal_key = xchacha(&[("keys", KEY_A), ("seal_key", "nope")]);
    assert!(bad_seal_key.seal("acme", &req).await.unwrap().is_err());
    let token = seal(&xchacha(&[("keys", KEY_A)]), "acme", &req).await;
    assert_denied(open(&plugin, "acme", &token).await, "no keys");
}

#[tokio::test]
async fn generated_key_works_as_the_ring() {
    let _quiet = super::shared().await;
    let key = builtin::xchacha_generate_key();
    let plugin = xchacha(&[("keys", &key)]);
    let req = stream("https://media.example.com/v/1");
    let token = seal(&plugin, "t", &req).await;
    assert_eq!(open(&plugin, "t", &token).await.unwrap(), req);
}
