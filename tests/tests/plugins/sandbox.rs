//! The sandbox: a plugin that loops, traps or eats memory fails only its own request,
//! within deadline + 50 ms, with the right error naming it; the next request works.

use std::time::{Duration, Instant};

use streamgate::plugin::{EngineSettings, PluginEngine, PluginError, TokenPlugin, builtin};

use super::{config, engine, open, request};

fn misbehave(engine: &PluginEngine) -> TokenPlugin {
    let wasm = std::fs::read(builtin::test_misbehave_path()).expect("built test-misbehave");
    engine
        .load_token("test-misbehave", &wasm, config(&[("greeting", "hi")]))
        .expect("load test-misbehave")
}

/// Opens `mode` and returns the plugin error and how long the failure took.
async fn fail(plugin: &TokenPlugin, mode: &str) -> (PluginError, Duration) {
    let started = Instant::now();
    let err = plugin
        .open(&request("acme"), mode)
        .await
        .expect_err("the plugin must fail");
    (err, started.elapsed())
}

/// After a failure, the same plugin and a good one both still answer.
async fn still_works(plugin: &TokenPlugin) {
    let opened = open(plugin, "acme", "ok").await.expect("ok mode");
    assert_eq!(opened.url, "https://example.com/ok");
    let good = engine()
        .load_token("token-xchacha", builtin::TOKEN_XCHACHA, config(&[]))
        .unwrap();
    // Behaves: a denial, not an error (no keys configured).
    assert!(good.open(&request("acme"), "AAAA").await.unwrap().is_err());
}

#[tokio::test]
async fn endless_loop_hits_the_deadline() {
    let _quiet = super::exclusive().await;
    let engine = PluginEngine::new(EngineSettings::default()).unwrap();
    let plugin = misbehave(&engine);
    let deadline = engine.settings().deadline;
    for _ in 0..3 {
        let (err, took) = fail(&plugin, "loop").await;
        eprintln!("loop failed after {took:?}");
        assert!(
            matches!(&err, PluginError::Deadline { plugin } if plugin == "test-misbehave"),
            "{err:?}"
        );
        assert!(
            took >= deadline && took < deadline + Duration::from_millis(50),
            "{took:?}"
        );
        still_works(&plugin).await;
    }
}

#[tokio::test]
async fn trap_fails_the_call_only() {
    let _quiet = super::exclusive().await;
    let plugin = misbehave(engine());
    let (err, took) = fail(&plugin, "trap").await;
    eprintln!("trap failed after {took:?}");
    assert!(
        matches!(&err, PluginError::Trap { plugin, .. } if plugin == "test-misbehave"),
        "{err:?}"
    );
    assert!(err.to_string().contains("test-misbehave"), "{err}");
    assert!(took < Duration::from_millis(100), "{took:?}");
    still_works(&plugin).await;
}

#[tokio::test]
async fn unbounded_allocation_hits_the_memory_limit() {
    let _quiet = super::exclusive().await;
    let plugin = misbehave(engine());
    let (err, took) = fail(&plugin, "alloc").await;
    eprintln!("alloc failed after {took:?}");
    assert!(
        matches!(&err, PluginError::MemoryLimit { plugin } if plugin == "test-misbehave"),
        "{err:?}"
    );
    assert!(
        took < engine().settings().deadline + Duration::from_millis(50),
        "{took:?}"
    );
    still_works(&plugin).await;
}

#[tokio::test]
async fn settings_are_honoured() {
    let _quiet = super::exclusive().await;
    // A shorter deadline and a smaller memory limit.
    let engine = PluginEngine::new(EngineSettings {
        deadline: Duration::from_millis(20),
        memory_limit: 4 << 20,
        max_instances: 2,
        log_cap_bytes: 1024,
        ..EngineSettings::default()
    })
    .unwrap();
    let plugin = misbehave(&engine);
    let (err, took) = fail(&plugin, "loop").await;
    assert!(matches!(err, PluginError::Deadline { .. }), "{err:?}");
    assert!(took < Duration::from_millis(70), "{took:?}");
    let (err, _) = fail(&plugin, "alloc").await;
    assert!(matches!(err, PluginError::MemoryLimit { .. }), "{err:?}");
    // 1 MiB of stdout and stderr against a 1 KiB cap: logged truncated, call unharmed.
    assert_eq!(
        open(&plugin, "acme", "print").await.unwrap().url,
        "https://example.com/ok"
    );
    // Config reaches the plugin through the `config` import.
    let opened = open(&plugin, "acme", "config:greeting").await.unwrap();
    assert_eq!(opened.filename.as_deref(), Some("hi"));
    assert_eq!(
        open(&plugin, "acme", "config:missing")
            .await
            .unwrap()
            .filename,
        None
    );
}

#[tokio::test]
async fn calls_beyond_the_pool_wait_instead_of_failing() {
    let _quiet = super::shared().await;
    let engine = PluginEngine::new(EngineSettings {
        max_instances: 2,
        ..EngineSettings::default()
    })
    .unwrap();
    let plugin = misbehave(&engine);
    let calls = (0..24).map(|_| {
        let plugin = plugin.clone();
        tokio::spawn(async move { plugin.open(&request("acme"), "ok").await })
    });
    for call in futures::future::join_all(calls).await {
        assert!(call.unwrap().unwrap().is_ok());
    }
    // A failing call releases its slot too.
    let (err, _) = fail(&plugin, "trap").await;
    assert!(matches!(err, PluginError::Trap { .. }));
    let (err, _) = fail(&plugin, "trap").await;
    assert!(matches!(err, PluginError::Trap { .. }));
    assert!(open(&plugin, "acme", "ok").await.is_ok());
}

/// A tenant whose plugin sleeps holds its one instance; its next call is refused once it
/// has waited the queue timeout (not after the sleeper's deadline), while another tenant's
/// call runs on the instance left; when the sleeper is stopped, the tenant is served again.
#[tokio::test]
async fn a_call_waiting_past_the_queue_timeout_is_refused_while_others_run() {
    let _quiet = super::shared().await;
    let engine = PluginEngine::new(EngineSettings {
        max_instances: 2,
        tenant_instances: Some(1),
        deadline: Duration::from_secs(3),
        queue_timeout: Some(Duration::from_millis(200)),
        ..EngineSettings::default()
    })
    .unwrap();
    let plugin = misbehave(&engine);
    let sleeper = {
        let plugin = plugin.clone();
        tokio::spawn(async move { fail(&plugin, "sleep").await })
    };
    // The sleeper holds acme's instance once acme's next call no longer gets one.
    let mut refused = None;
    for _ in 0..50 {
        match plugin.open(&request("acme"), "ok").await {
            Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let busy = refused.expect("a call refused while the sleeper holds the instance");
    let PluginError::Busy { tenant, waited, .. } = &busy else {
        panic!("{busy:?}");
    };
    assert_eq!(
        (tenant.as_str(), *waited),
        ("acme", Duration::from_millis(200))
    );
    assert!(
        !sleeper.is_finished(),
        "refused before the sleeper's deadline"
    );
    assert!(
        open(&plugin, "other", "ok").await.is_ok(),
        "another tenant runs"
    );
    let (err, _) = sleeper.await.unwrap();
    assert!(matches!(err, PluginError::Deadline { .. }), "{err:?}");
    assert!(
        open(&plugin, "acme", "ok").await.is_ok(),
        "its instance is back"
    );
}

#[tokio::test]
async fn loading_rejects_garbage_and_the_wrong_world() {
    let _quiet = super::shared().await;
    let err = engine()
        .load_token("junk", b"\0asm not really", config(&[]))
        .err()
        .expect("garbage must not load");
    assert!(
        matches!(&err, PluginError::Compile { plugin, .. } if plugin == "junk"),
        "{err:?}"
    );
    let err = engine()
        .load_policy("token-as-policy", builtin::TOKEN_XCHACHA, config(&[]))
        .err()
        .expect("a token plugin is not a policy plugin");
    assert!(matches!(err, PluginError::Link { .. }), "{err:?}");
    let err = engine()
        .load_token("policy-as-token", builtin::POLICY_ALLOWLIST, config(&[]))
        .err()
        .expect("a policy plugin is not a token plugin");
    assert!(matches!(err, PluginError::Link { .. }), "{err:?}");
}
