//! SIGHUP: re-read the configuration and reload every tenant's plugins for new requests.
//! Streams already running keep the `Arc<Tenant>` they started with, so they are untouched;
//! a new configuration that does not load is refused and the old one stays in force.

use std::sync::Arc;

use tokio::signal::unix::{SignalKind, signal};

use crate::config::{Config, ConfigError};
use crate::plugin::PluginEngine;
use crate::routes::AppState;
use crate::tenant::Tenants;

/// Produces the configuration to switch to: the file again, or the embedded default (which
/// re-reads the key file of its state directory).
pub type Loader = Box<dyn Fn() -> Result<Config, ConfigError> + Send + Sync>;

/// What a reload did.
#[derive(Debug, PartialEq, Eq)]
pub struct Reloaded {
    pub tenants: usize,
    /// Settings read only at start (listen, sidecar, drain): they need a restart.
    pub restart_needed: Vec<&'static str>,
}

/// Loads the new configuration and its plugins, and swaps the tenants in on success only.
pub async fn reload(
    state: &AppState,
    engine: &PluginEngine,
    load: &Loader,
    running: &Config,
) -> Result<(Config, Reloaded), ConfigError> {
    let config = load()?;
    // Compiling components takes a while: keep it off the request workers.
    let (engine, built) = (engine.clone(), config.clone());
    let tenants = tokio::task::spawn_blocking(move || Tenants::build(&engine, &built))
        .await
        .map_err(|e| ConfigError::Invalid(format!("loading plugins: {e}")))??;
    let mut restart_needed = Vec::new();
    if config.listen != running.listen {
        restart_needed.push("listen");
    }
    if config.sidecar != running.sidecar {
        restart_needed.push("sidecar");
    }
    if config.drain_secs != running.drain_secs {
        restart_needed.push("drain_secs");
    }
    let count = config.tenants.len();
    state.tenants.store(Arc::new(tenants));
    state.limiter.reload(&config);
    // Per-tenant limits follow the new file; `[limits]` (backend, policy) needs a restart.
    state.limiter.reload(&config);
    if config.limits != running.limits {
        restart_needed.push("limits");
    }
    let reloaded = Reloaded {
        tenants: count,
        restart_needed,
    };
    Ok((config, reloaded))
}

/// Reloads on every SIGHUP until the process ends; each outcome is one log line.
pub fn spawn_on_sighup(
    state: Arc<AppState>,
    engine: PluginEngine,
    load: Loader,
    mut running: Config,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let mut hup = signal(SignalKind::hangup())?;
    Ok(tokio::spawn(async move {
        while hup.recv().await.is_some() {
            match reload(&state, &engine, &load, &running).await {
                Ok((config, done)) => {
                    for setting in &done.restart_needed {
                        tracing::warn!(
                            setting,
                            "changed, but only read at start: restart to apply it"
                        );
                    }
                    tracing::info!(tenants = done.tenants, "configuration reloaded");
                    // Start-only settings stay as they run, so the warning repeats until
                    // a restart instead of being forgotten after one reload.
                    running = Config {
                        listen: running.listen,
                        sidecar: running.sidecar.clone(),
                        drain_secs: running.drain_secs,
                        ..config
                    };
                }
                Err(e) => tracing::error!(
                    error = %e,
                    "configuration reload refused; the previous one stays in force"
                ),
            }
        }
    }))
}
