//! Config files of end-to-end gateways, written one way: `[[tenant]]` blocks that stream the
//! loopback fixtures, the file itself, and links minted for a tenant of it.

use std::path::{Path, PathBuf};

use crate::gateway::{LOOPBACK_EGRESS, mint};

/// A fresh token-xchacha key.
pub fn new_key() -> String {
    streamgate::plugin::builtin::xchacha_generate_key()
}

/// The token-xchacha plugin with the key ring `keys`, as a TOML value.
pub fn xchacha(keys: &str) -> String {
    format!(r#"{{ builtin = "token-xchacha", config = {{ keys = "{keys}" }} }}"#)
}

/// The allowlist policy open to every host, loopback URLs included (the fixtures are on
/// 127.0.0.1), with `extra` config fields (e.g. `, resolve_clients = "127.0.0.0/8"`).
pub fn open_policy(extra: &str) -> String {
    format!(
        r#"{{ builtin = "policy-allowlist", config = {{ hosts = "*", allow_private = "true"{extra} }} }}"#
    )
}

/// One `[[tenant]]`: its `hosts` (none: reached as the default tenant only), `token` and
/// `policy` as TOML values, the loopback egress, then `extra` lines (e.g. `limits = { … }`).
pub fn tenant(id: &str, hosts: &[&str], token: &str, policy: &str, extra: &str) -> String {
    let hosts = match hosts {
        [] => String::new(),
        hosts => format!("hosts = {hosts:?}\n"),
    };
    format!(
        "\n[[tenant]]\nid = \"{id}\"\n{hosts}token = {token}\npolicy = {policy}\negress = {LOOPBACK_EGRESS}\n{extra}\n"
    )
}

/// Writes `text` as `dir/streamgate.toml`.
pub fn write(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("streamgate.toml");
    std::fs::write(&path, text).expect("write the config");
    path
}

/// A link token for `tenant` of `config` (`streamgate mint --config F --tenant ID`).
pub fn mint_for(config: &Path, tenant: &str, url: &str, format: &str) -> String {
    let config = config.display().to_string();
    mint(&[
        "--config", &config, "--tenant", tenant, "--url", url, "--format", format,
    ])
}
