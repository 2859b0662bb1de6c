//! The application: the state every request shares, built from a [`Config`] in one place —
//! `serve`, `check-config` and a SIGHUP reload all go through [`App::new`] / [`App::reload`],
//! so what one accepts the others accept.

use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::signal::unix::{SignalKind, signal};

use crate::body::Drain;
use crate::config::{Config, ConfigError, ServerConfig};
use crate::limits::Limiter;
use crate::metrics::Metrics;
use crate::plugin::PluginEngine;
use crate::sidecar::SidecarClient;
use crate::tenant::Tenants;

/// Everything handlers share. Tenants sit behind an `ArcSwap` so a reload can replace them
/// while requests in flight keep the set they started with.
pub struct App {
    /// Every tenant with its loaded plugins.
    pub tenants: ArcSwap<Tenants>,
    /// Jobs on the sidecar.
    pub sidecar: SidecarClient,
    /// The bodies relaying now, and the switch that cuts them.
    pub drain: Drain,
    /// Counters of every tenant's limits; kept across reloads.
    pub limiter: Limiter,
    /// What `/metrics` shows.
    pub metrics: Metrics,
    /// The listener's timeouts and caps; read at start.
    pub server: ServerConfig,
    /// Runs the plugins; its limits (`[plugins]`) are set once.
    engine: PluginEngine,
}

/// What a reload did.
#[derive(Debug, PartialEq, Eq)]
pub struct Reloaded {
    /// Tenants now serving.
    pub tenants: usize,
    /// Settings read only at start (listen, server, sidecar, drain, limits, plugins): they need a
    /// restart.
    pub restart_needed: Vec<&'static str>,
}

impl App {
    /// The plugin engine, every tenant's plugins and the limiter, from `config`; jobs go to
    /// `sidecar` (not connected until a request needs it).
    pub fn new(config: &Config, sidecar: SidecarClient) -> Result<App, ConfigError> {
        let engine = PluginEngine::new(config.plugins.clone())
            .map_err(|e| ConfigError::Invalid(format!("plugins: {e}")))?;
        let tenants = Tenants::build(&engine, config)?;
        let metrics = Metrics::new();
        let limiter = Limiter::new(&config.limits, config.tenant_limits(), metrics.clone());
        Ok(App {
            tenants: ArcSwap::from_pointee(tenants),
            sidecar,
            drain: Drain::default(),
            limiter,
            metrics,
            server: config.server.clone(),
            engine,
        })
    }

    /// Switches to `config`'s tenants and limits for new requests; streams running keep
    /// the `Arc<Tenant>` they started with. Refused (the running set stays) when the new
    /// configuration does not load. `running` names what needs a restart instead.
    pub async fn reload(&self, config: &Config, running: &Config) -> Result<Reloaded, ConfigError> {
        // Compiling components takes a while: keep it off the request workers.
        let (engine, built) = (self.engine.clone(), config.clone());
        let tenants = tokio::task::spawn_blocking(move || Tenants::build(&engine, &built))
            .await
            .map_err(|e| ConfigError::Invalid(format!("loading plugins: {e}")))??;
        self.tenants.store(Arc::new(tenants));
        self.limiter.reload(config.tenant_limits());
        let changed = [
            ("listen", config.listen != running.listen),
            ("sidecar", config.sidecar != running.sidecar),
            ("drain_secs", config.drain_secs != running.drain_secs),
            ("server", config.server != running.server),
            ("limits", config.limits != running.limits),
            ("plugins", config.plugins != running.plugins),
        ];
        Ok(Reloaded {
            tenants: config.tenants.len(),
            restart_needed: changed.iter().filter(|c| c.1).map(|c| c.0).collect(),
        })
    }
}

/// Produces the configuration to switch to: the file again, or the embedded default (which
/// re-reads the key file of its state directory).
pub type Loader = Box<dyn Fn() -> Result<Config, ConfigError> + Send + Sync>;

/// Reloads on every SIGHUP until the process ends; each outcome is one log line naming
/// `source` (the file, or the embedded default's state directory). Settings read only at
/// start stay as they run, so their warning repeats until a restart.
pub fn reload_on_sighup(
    app: Arc<App>,
    load: Loader,
    source: String,
    running: Config,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let mut hup = signal(SignalKind::hangup())?;
    Ok(tokio::spawn(async move {
        while hup.recv().await.is_some() {
            let reloaded = match load() {
                Ok(config) => app.reload(&config, &running).await,
                Err(e) => Err(e),
            };
            app.metrics.config_reload(reloaded.is_ok());
            match reloaded {
                Ok(done) => {
                    for setting in &done.restart_needed {
                        tracing::warn!(
                            setting,
                            "changed, but only read at start: restart to apply it"
                        );
                    }
                    tracing::info!(
                        tenants = done.tenants,
                        config = source,
                        "configuration reloaded"
                    );
                }
                Err(e) => tracing::error!(
                    error = %e,
                    config = source,
                    "configuration reload refused; the previous one stays in force"
                ),
            }
        }
    }))
}
