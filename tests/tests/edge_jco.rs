//! Edge compatibility: the very `token-xchacha` component the gateway runs also runs in
//! Node, transpiled by jco, with the host imports written in a few lines of JavaScript
//! (`tests/js/host.js`). A token sealed by the gateway's host opens in Node and vice versa.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};
use streamgate::plugin::{
    EngineSettings, PluginEngine, RequestInfo, StreamRequest, TokenPlugin, builtin, unix_now,
};

const KEYS: &str = "edge1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";

fn js_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("js")
}

/// Transpiles the built component into `tests/js/out/<name>` (inside tests/js so Node finds
/// `@bytecodealliance/preview2-shim` in its node_modules) and returns the JS module path.
fn transpile(wasm: &Path, name: &str) -> PathBuf {
    let js = js_dir();
    let jco = js.join("node_modules/.bin/jco");
    assert!(
        jco.is_file(),
        "{} missing: run scripts/setup (npm ci in tests/js)",
        jco.display()
    );
    let out = js
        .join("out")
        .join(format!("{name}-{}", std::process::id()));
    let host = js.join("host.js");
    let status = Command::new(&jco)
        .arg("transpile")
        .arg(wasm)
        .arg("-o")
        .arg(&out)
        .args(["--name", name, "--quiet", "--no-typescript", "--map"])
        .arg(format!("streamgate:plugin/*={}#*", host.display()))
        .status()
        .expect("run jco");
    assert!(status.success(), "jco transpile failed");
    out.join(format!("{name}.js"))
}

/// Runs one operation of `tests/js/edge.mjs`; returns its `{"ok"|"err": ...}` answer.
fn node(module: &Path, op: &str, tenant: &str, arg: &str) -> Value {
    let out = Command::new("node")
        .current_dir(js_dir())
        .arg("edge.mjs")
        .arg(module)
        .args([op, tenant, arg])
        .env(
            "STREAMGATE_PLUGIN_CONFIG",
            json!({ "keys": KEYS }).to_string(),
        )
        .output()
        .expect("run node");
    assert!(
        out.status.success(),
        "node failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON line")
}

fn host_plugin() -> TokenPlugin {
    let engine = PluginEngine::new(EngineSettings::default()).unwrap();
    let config = BTreeMap::from([("keys".to_string(), KEYS.to_string())]);
    engine
        .load_token("token-xchacha", builtin::TOKEN_XCHACHA, config)
        .unwrap()
}

fn request(tenant: &str) -> RequestInfo {
    RequestInfo {
        method: "GET".into(),
        path: "/stream".into(),
        tenant: tenant.into(),
        ..RequestInfo::default()
    }
}

#[tokio::test]
async fn tokens_cross_between_wasmtime_and_node() {
    let wasm = builtin::plugin_dir().join("token_xchacha.wasm");
    let module = transpile(&wasm, "token_xchacha");
    let host = host_plugin();
    let req = StreamRequest {
        url: "https://media.example.com/watch?v=edge".into(),
        format: "best[height<=720]".into(),
        filename: Some("edge.mp4".into()),
        expires_at: Some(unix_now() + 600),
    };

    // Gateway seals, Node opens.
    let token = host.seal("edge-tenant", &req).await.unwrap().unwrap();
    let opened = node(&module, "open", "edge-tenant", &token);
    assert_eq!(
        opened["ok"],
        json!({
            "url": req.url, "format": req.format,
            "filename": "edge.mp4", "expiresAt": req.expires_at,
        }),
        "{opened}"
    );
    // The tenant binding holds in Node too: a denial, as a WIT `denial`.
    let other = node(&module, "open", "other-tenant", &token);
    assert_eq!(other["err"]["status"], 403, "{other}");

    // Node seals, gateway opens.
    let sealed = node(
        &module,
        "seal",
        "edge-tenant",
        &serde_json::to_string(&req).unwrap(),
    );
    let token = sealed["ok"].as_str().expect("a token");
    let back = host.open(&request("edge-tenant"), token).await.unwrap();
    assert_eq!(back.unwrap(), req);
    assert!(host.open(&request("x"), token).await.unwrap().is_err());

    let dir = module.parent().unwrap();
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_dir(dir.parent().unwrap()); // `out/`, when no other run uses it
}
