//! `token`: a link's token opened by the real token plugins the gateway embeds
//! (`token-xchacha`, `token-fernet`), through the gateway's wasmtime host.

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::Duration;

use streamgate::plugin::{EngineSettings, PluginEngine, RequestInfo, TokenPlugin, builtin};
use tokio::runtime::Runtime;

/// The tenant every token is opened for; seeds sealed for another are refused.
const TENANT: &str = "acme";
/// `token-xchacha`'s key ring (the committed seeds were minted with it).
const XCHACHA_KEYS: &str = "ka:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";
/// `token-fernet`'s key (the committed seeds were minted with it by Python `cryptography`).
const FERNET_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

struct Host {
    runtime: Runtime,
    xchacha: TokenPlugin,
    fernet: TokenPlugin,
}

/// One engine per process, as in the gateway. The deadline is generous: a call that still
/// overruns it loops in the plugin, a finding, not a busy machine.
fn host() -> &'static Host {
    static HOST: OnceLock<Host> = OnceLock::new();
    HOST.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let settings = EngineSettings {
            deadline: Duration::from_secs(5),
            max_instances: 2,
            ..EngineSettings::default()
        };
        let engine = runtime.block_on(async { PluginEngine::new(settings) });
        let engine = engine.expect("the plugin engine");
        let config = |key: &str, value: &str| BTreeMap::from([(key.into(), value.into())]);
        let load = |name, wasm, config| engine.load_token(name, wasm, config).expect(name);
        Host {
            xchacha: load(
                "token-xchacha",
                builtin::TOKEN_XCHACHA,
                config("keys", XCHACHA_KEYS),
            ),
            fernet: load(
                "token-fernet",
                builtin::TOKEN_FERNET,
                config("key", FERNET_KEY),
            ),
            runtime,
        }
    })
}

/// `input` is a plugin letter (`f`: token-fernet, anything else: token-xchacha) then the
/// token. The plugin must answer, never trap or overrun: a denial (always 4xx), or a stream
/// request that token-xchacha (the gateway's sealing plugin) seals into a token that opens
/// to the same request. True when the token opened.
pub fn token(input: &[u8]) -> bool {
    let Some((which, token)) = input.split_first() else {
        return false;
    };
    let Ok(token) = std::str::from_utf8(token) else {
        return false;
    };
    let host = host();
    let plugin = if *which == b'f' {
        &host.fernet
    } else {
        &host.xchacha
    };
    let request = RequestInfo {
        method: "GET".into(),
        path: "/stream".into(),
        tenant: TENANT.into(),
        ..RequestInfo::default()
    };
    host.runtime.block_on(async {
        let opened = plugin.open(&request, token).await;
        let opened = opened.unwrap_or_else(|e| panic!("{token:?}: {e}"));
        let wanted = match opened {
            Err(denial) => {
                assert!((400..500).contains(&denial.status), "{denial:?}");
                return false;
            }
            Ok(wanted) => wanted,
        };
        let sealed = host.xchacha.seal(TENANT, &wanted).await;
        let sealed = sealed.unwrap_or_else(|e| panic!("sealing {wanted:?}: {e}"));
        let sealed = sealed.unwrap_or_else(|why| panic!("{wanted:?} does not seal: {why}"));
        let again = host.xchacha.open(&request, &sealed).await;
        let again = again.unwrap_or_else(|e| panic!("re-opening {sealed:?}: {e}"));
        assert_eq!(again.as_ref(), Ok(&wanted), "the re-sealed token");
        true
    })
}
