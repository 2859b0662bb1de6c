//! `token-fernet`: links minted by the old service (Python `cryptography`) keep opening.

use std::path::PathBuf;
use std::process::Command;

use streamgate::plugin::{StreamRequest, TokenPlugin, builtin};

use super::{assert_denied, config, engine, open, stream};

fn python() -> PathBuf {
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    assert!(
        venv.is_file(),
        "{} missing: run scripts/setup (it installs `cryptography`)",
        venv.display()
    );
    venv
}

/// Mints like the old service (`mint.py`): key, then one token per (url, age seconds).
fn python_fernet(key: Option<&str>, tokens: &[(&str, u64)]) -> (String, Vec<String>) {
    const SCRIPT: &str = r#"
import json, sys, time
from cryptography.fernet import Fernet
key = sys.argv[1].encode() if sys.argv[1] != "-" else Fernet.generate_key()
f = Fernet(key)
print(key.decode())
for url, age in zip(sys.argv[2::2], sys.argv[3::2]):
    payload = json.dumps({"url": url, "format_id": "18", "filename": "old.mp4"})
    print(f.encrypt_at_time(payload.encode(), int(time.time()) - int(age)).decode())
"#;
    let mut cmd = Command::new(python());
    cmd.arg("-c").arg(SCRIPT).arg(key.unwrap_or("-"));
    for (url, age) in tokens {
        cmd.arg(url).arg(age.to_string());
    }
    let out = cmd.output().expect("run python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(String::from)
        .collect::<Vec<_>>();
    let key = lines.remove(0);
    (key, lines)
}

fn fernet(pairs: &[(&str, &str)]) -> TokenPlugin {
    engine()
        .load_token("token-fernet", builtin::TOKEN_FERNET, config(pairs))
        .expect("load token-fernet")
}

#[tokio::test]
async fn fernet_opens_python_minted_tokens() {
    let _quiet = super::shared().await;
    let (key, tokens) = python_fernet(None, &[("https://old.example.com/watch?v=1", 0)]);
    let plugin = fernet(&[("key", &key)]);
    let opened = open(&plugin, "legacy", &tokens[0]).await.unwrap();
    assert_eq!(
        opened,
        StreamRequest {
            url: "https://old.example.com/watch?v=1".into(),
            format: "18".into(),
            filename: Some("old.mp4".into()),
            expires_at: None,
        }
    );
    // A token under a key the plugin does not have is refused; listing that key in
    // `keys` (the old service rotated keys too) makes it open.
    let (other_key, other) = python_fernet(None, &[("https://old.example.com/y", 0)]);
    assert_denied(open(&plugin, "legacy", &other[0]).await, "unknown key");
    let both = fernet(&[("key", &key), ("keys", &other_key)]);
    assert_eq!(
        open(&both, "legacy", &other[0]).await.unwrap().url,
        "https://old.example.com/y"
    );
    assert!(open(&both, "legacy", &tokens[0]).await.is_ok());
}

#[tokio::test]
async fn fernet_refuses_tampered_and_too_old_tokens_and_cannot_seal() {
    let _quiet = super::shared().await;
    let (key, tokens) = python_fernet(
        None,
        &[
            ("https://old.example.com/a", 0),
            ("https://old.example.com/b", 7200),
        ],
    );
    let plugin = fernet(&[("key", &key), ("max_age", "3600")]);
    assert!(open(&plugin, "legacy", &tokens[0]).await.is_ok());
    // Tampered: change one character in the middle (still valid base64).
    let mut bad = tokens[0].clone().into_bytes();
    let mid = bad.len() / 2;
    bad[mid] = if bad[mid] == b'A' { b'B' } else { b'A' };
    let bad = String::from_utf8(bad).unwrap();
    assert_eq!(
        assert_denied(open(&plugin, "legacy", &bad).await, "tampered").status,
        403
    );
    assert_denied(open(&plugin, "legacy", &tokens[0][..40]).await, "truncated");
    let denial = assert_denied(open(&plugin, "legacy", &tokens[1]).await, "too old");
    assert_eq!(denial.status, 410);
    // Without max_age the old service's rule holds: no age limit.
    let no_limit = fernet(&[("key", &key)]);
    assert!(open(&no_limit, "legacy", &tokens[1]).await.is_ok());
    // A wrong key, and no key at all.
    let (other_key, _) = python_fernet(None, &[]);
    assert_denied(
        open(&fernet(&[("key", &other_key)]), "legacy", &tokens[0]).await,
        "wrong key",
    );
    assert_denied(open(&fernet(&[]), "legacy", &tokens[0]).await, "no key");
    let err = plugin
        .seal("legacy", &stream("https://x.example"))
        .await
        .unwrap()
        .unwrap_err();
    assert!(err.contains("cannot seal"), "{err}");
}
