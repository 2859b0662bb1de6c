//! The real built plugin components (`gateway/build.rs` output) under the real host:
//! tokens round-trip and refuse every kind of bad token with a 4xx, Fernet links minted by
//! Python's `cryptography` open, the allowlist sorts hosts and addresses, the example auth
//! plugin checks signatures, and misbehaving plugins cost one request each, in bounded time.

mod fernet;
mod policies;
mod sandbox;
mod xchacha;

use std::collections::BTreeMap;
use std::sync::OnceLock;

use tokio::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use streamgate::plugin::{
    Denial, EngineSettings, PluginEngine, RequestInfo, StreamRequest, TokenPlugin, unix_now,
};

/// Timing tests hold this exclusively and every other test shares it, so the CPU-heavy
/// work of other tests (compiling components, Python) never runs while a deadline is timed.
static QUIET: RwLock<()> = RwLock::const_new(());

pub async fn shared() -> RwLockReadGuard<'static, ()> {
    QUIET.read().await
}

pub async fn exclusive() -> RwLockWriteGuard<'static, ()> {
    QUIET.write().await
}

pub fn engine() -> &'static PluginEngine {
    static ENGINE: OnceLock<PluginEngine> = OnceLock::new();
    ENGINE.get_or_init(|| PluginEngine::new(EngineSettings::default()).expect("engine"))
}

pub fn config(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

pub fn request(tenant: &str) -> RequestInfo {
    RequestInfo {
        method: "GET".into(),
        path: "/stream".into(),
        query: String::new(),
        headers: vec![("host".into(), "gateway.test".into())],
        client_addr: "127.0.0.1:40000".into(),
        tenant: tenant.into(),
    }
}

pub fn stream(url: &str) -> StreamRequest {
    StreamRequest {
        url: url.into(),
        format: "best".into(),
        filename: Some("clip.mp4".into()),
        expires_at: Some(unix_now() + 3600),
    }
}

pub async fn seal(plugin: &TokenPlugin, tenant: &str, req: &StreamRequest) -> String {
    plugin
        .seal(tenant, req)
        .await
        .expect("plugin ran")
        .expect("sealed")
}

pub async fn open(
    plugin: &TokenPlugin,
    tenant: &str,
    token: &str,
) -> Result<StreamRequest, Denial> {
    plugin
        .open(&request(tenant), token)
        .await
        .expect("plugin ran")
}

pub fn assert_denied(result: Result<StreamRequest, Denial>, what: &str) -> Denial {
    let denial = result.expect_err(what);
    assert!(
        (400..500).contains(&denial.status),
        "{what}: status {}",
        denial.status
    );
    denial
}
