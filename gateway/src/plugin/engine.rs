//! One wasmtime engine per process: compiles components, owns the instance pool, the epoch
//! ticker and the linker, and runs each call in a fresh store under the limits.
//!
//! A call's deadline is kept twice: epoch interruption stops a plugin busy in its own code
//! (a trap that says where), and a wall-clock timeout around the whole call stops one
//! waiting inside a host call (`wasi:io/poll`, a sleep), which epochs never interrupt.
//! Each tenant's calls hold at most its share of the instance permits, so one tenant's slow
//! plugin cannot take them all.
//!
//! Models: Spin's `crates/core` (engine set-up, weak-engine ticker, deadline in ticks) and
//! wasmtime's `serve` (a semaphore permit taken before instantiating from a fixed pool).

use std::collections::{BTreeMap, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::future::Future;

use tokio::sync::Semaphore;
use wasmtime::component::{Component, HasSelf, InstancePre, Linker, ResourceTable};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap};
use wasmtime_wasi::WasiCtx;

use super::bindings;
use super::cache::{self, ComponentCache};
use super::host::{CappedPipe, HostState, MemoryLimiter};
use super::policy::PolicyWorld;
use super::{EngineSettings, PluginError, PolicyPlugin, TokenPlugin};

/// How often the epoch advances; the deadline's resolution.
const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Per-component maxima for the pool. A `wasm32-wasip2` Rust component has one main module
/// plus a few adapter/shim instances; these leave room for other toolchains.
const CORE_INSTANCES_PER_COMPONENT: u32 = 64;
const MEMORIES_PER_COMPONENT: u32 = 4;
const TABLES_PER_COMPONENT: u32 = 16;

/// The plugin engine. Cheap to clone; every loaded plugin keeps it alive.
#[derive(Clone)]
pub struct PluginEngine {
    inner: Arc<EngineInner>,
}

struct EngineInner {
    engine: Engine,
    linker: Linker<HostState>,
    settings: EngineSettings,
    /// One permit per pooled instance: calls beyond the pool wait, up to the queue timeout.
    permits: Semaphore,
    /// Each tenant's share of `permits` (`[plugins] tenant_instances`), made on its first call.
    tenant_permits: Mutex<HashMap<String, Arc<Semaphore>>>,
    deadline_ticks: u64,
    /// Linked components by content: many tenants load the same built-in plugin, and each
    /// distinct component is compiled only once.
    compiled: Mutex<HashMap<u64, Vec<Compiled>>>,
    /// Compiled components kept on disk between starts (`[plugins] cache_dir`).
    cache: Option<ComponentCache>,
}

/// A component's bytes and its linked, pre-instantiated form.
type Compiled = (Arc<[u8]>, InstancePre<HostState>);

impl PluginEngine {
    /// Sets up wasmtime (component model, epoch interruption, pooling allocator sized from
    /// `settings`) and starts the epoch ticker, which ends once the engine is dropped.
    pub fn new(settings: EngineSettings) -> Result<Self, PluginError> {
        let engine_err = |e: wasmtime::Error| PluginError::Engine {
            message: format!("{e:#}"),
        };
        let n = settings.max_instances.max(1);
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(n)
            .total_core_instances(n * CORE_INSTANCES_PER_COMPONENT)
            .max_core_instances_per_component(CORE_INSTANCES_PER_COMPONENT)
            .total_memories(n * MEMORIES_PER_COMPONENT)
            .max_memories_per_component(MEMORIES_PER_COMPONENT)
            .total_tables(n * TABLES_PER_COMPONENT)
            .max_tables_per_component(TABLES_PER_COMPONENT)
            .total_stacks(n)
            .max_memory_size(settings.memory_limit);
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config).map_err(engine_err)?;

        let mut linker = Linker::new(&engine);
        link_wasi(&mut linker).map_err(engine_err)?;
        bindings::token::TokenPlugin::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
            .map_err(engine_err)?;
        bindings::v2::MediaPolicyPlugin::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
            .map_err(engine_err)?;

        let cache = settings
            .cache_dir
            .clone()
            .or_else(cache::default_dir)
            .filter(|dir| !dir.as_os_str().is_empty())
            .and_then(|dir| ComponentCache::open(&dir, &engine));

        let weak = engine.weak();
        std::thread::Builder::new()
            .name("plugin-epoch".into())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })
            .map_err(|e| PluginError::Engine {
                message: format!("cannot start the epoch ticker: {e}"),
            })?;

        Ok(Self {
            inner: Arc::new(EngineInner {
                engine,
                linker,
                deadline_ticks: deadline_ticks(settings.deadline),
                permits: Semaphore::new(n as usize),
                tenant_permits: Mutex::default(),
                compiled: Mutex::default(),
                cache,
                settings,
            }),
        })
    }

    /// The limits this engine applies.
    pub fn settings(&self) -> &EngineSettings {
        &self.inner.settings
    }

    /// Compiles and links a token plugin (world `token-plugin`) with its tenant config.
    pub fn load_token(
        &self,
        name: &str,
        wasm: &[u8],
        config: BTreeMap<String, String>,
    ) -> Result<TokenPlugin, PluginError> {
        let pre = self.pre_instantiate(name, wasm)?;
        let pre = bindings::token::TokenPluginPre::new(pre).map_err(|e| link_err(name, e))?;
        Ok(TokenPlugin::new(self.clone(), name, config, pre))
    }

    /// Compiles and links a policy plugin (world `policy-plugin` of 0.1.0 or 0.2.0, or
    /// 0.2.0's `media-policy-plugin`) with its tenant config.
    pub fn load_policy(
        &self,
        name: &str,
        wasm: &[u8],
        config: BTreeMap<String, String>,
    ) -> Result<PolicyPlugin, PluginError> {
        let pre = self.pre_instantiate(name, wasm)?;
        let world = PolicyWorld::detect(pre).map_err(|e| link_err(name, e))?;
        Ok(PolicyPlugin::new(self.clone(), name, config, world))
    }

    /// Compiles and links `wasm`, or returns the cached result for identical bytes.
    fn pre_instantiate(
        &self,
        name: &str,
        wasm: &[u8],
    ) -> Result<InstancePre<HostState>, PluginError> {
        let mut hasher = DefaultHasher::new();
        wasm.hash(&mut hasher);
        let key = hasher.finish();
        let lock = || {
            self.inner
                .compiled
                .lock()
                .unwrap_or_else(|e| e.into_inner())
        };
        if let Some((_, pre)) = lock()
            .get(&key)
            .into_iter()
            .flatten()
            .find(|(b, _)| **b == *wasm)
        {
            return Ok(pre.clone());
        }
        // Compiled outside the lock: it takes a while, and two racing loads are harmless.
        let started = std::time::Instant::now();
        let engine = &self.inner.engine;
        let (component, source) = match &self.inner.cache {
            Some(cache) => cache.load_or_compile(engine, wasm),
            None => Component::new(engine, wasm).map(|c| (c, cache::Source::Compiled)),
        }
        .map_err(|e| PluginError::Compile {
            plugin: name.to_string(),
            message: format!("{e:#}"),
        })?;
        tracing::info!(plugin = name, ?source, took = ?started.elapsed(), "plugin component ready");
        let pre = self
            .inner
            .linker
            .instantiate_pre(&component)
            .map_err(|e| link_err(name, e))?;
        lock()
            .entry(key)
            .or_default()
            .push((wasm.into(), pre.clone()));
        Ok(pre)
    }

    /// One plugin call, the only way plugins run: one of `tenant`'s permits and a pool
    /// slot, a fresh store under the limits, `pre` instantiated into it, `run` given the
    /// instance and the store (and handing the store back), all within the wall-clock
    /// deadline; then the plugin's output logged and any failure named.
    pub(crate) async fn call<P, T, F>(
        &self,
        tenant: &str,
        plugin: &Arc<str>,
        config: &Arc<BTreeMap<String, String>>,
        pre: &P,
        run: impl FnOnce(P::Instance, Store<HostState>) -> F,
    ) -> Result<T, PluginError>
    where
        P: Instantiate,
        F: Future<Output = (Store<HostState>, wasmtime::Result<T>)>,
    {
        let inner = &*self.inner;
        let tenant_permits = self.tenant_permits(tenant);
        let permits = async {
            let tenant = tenant_permits.acquire().await.expect("never closed");
            let all = inner.permits.acquire().await.expect("never closed");
            (tenant, all)
        };
        let waited = inner.settings.queue_timeout();
        let Ok((_tenant, _permit)) = tokio::time::timeout(waited, permits).await else {
            let error = PluginError::Busy {
                plugin: plugin.to_string(),
                tenant: tenant.to_owned(),
                waited,
            };
            tracing::warn!(plugin = &**plugin, tenant, "plugin call refused: {error}");
            return Err(error);
        };
        let cap = inner.settings.log_cap_bytes;
        let (stdout, stderr) = (CappedPipe::new(cap), CappedPipe::new(cap));
        // No env, args, preopens or network; stdin is empty.
        let wasi = WasiCtx::builder()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .build();
        let mut store = Store::new(
            &inner.engine,
            HostState {
                plugin: plugin.clone(),
                config: config.clone(),
                wasi,
                table: ResourceTable::new(),
                limiter: MemoryLimiter::new(inner.settings.memory_limit),
                log_budget: cap,
            },
        );
        store.limiter(|s| &mut s.limiter);
        store.set_epoch_deadline(inner.deadline_ticks);
        store.epoch_deadline_trap();
        let work = async move {
            match pre.instantiate(&mut store).await {
                Ok(instance) => {
                    let (store, result) = run(instance, store).await;
                    (store, Phase::Call, result)
                }
                Err(e) => (store, Phase::Instantiate, Err(e)),
            }
        };
        // Past the epoch deadline by two ticks: a busy plugin still gets its trap. On
        // timeout the future is dropped with the store and the instance in it (wasmtime
        // unwinds the suspended call; nothing of it can run again), which returns the
        // instance's slots to the pool and the permits above.
        let ended = tokio::time::timeout(inner.settings.deadline + 2 * EPOCH_TICK, work).await;
        for (stream, pipe) in [("stdout", &stdout), ("stderr", &stderr)] {
            let (text, truncated) = pipe.take();
            if !text.is_empty() {
                tracing::info!(
                    plugin = &**plugin,
                    stream,
                    truncated,
                    "plugin output: {}",
                    text.trim_end()
                );
            }
        }
        match ended {
            Ok((store, phase, result)) => result.map_err(|e| failure(plugin, &store, phase, e)),
            Err(_) => {
                let error = PluginError::Deadline {
                    plugin: plugin.to_string(),
                };
                tracing::warn!(
                    plugin = &**plugin,
                    "plugin call failed: {error} (waiting in a host call)"
                );
                Err(error)
            }
        }
    }

    /// `tenant`'s share of the instance permits.
    fn tenant_permits(&self, tenant: &str) -> Arc<Semaphore> {
        let mut all = self
            .inner
            .tenant_permits
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let share = self.inner.settings.tenant_instances();
        let permits = all
            .entry(tenant.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(share as usize)));
        Arc::clone(permits)
    }
}

/// A component linked for one world, ready to instantiate into a call's store.
pub(crate) trait Instantiate: Sync {
    /// The world's typed instance.
    type Instance: Send;
    /// Instantiates into `store` (its limits and deadline already set).
    fn instantiate<'a>(
        &'a self,
        store: &'a mut Store<HostState>,
    ) -> impl Future<Output = wasmtime::Result<Self::Instance>> + Send + 'a;
}

/// The phase a call failed in, for errors that are not traps.
#[derive(Clone, Copy)]
enum Phase {
    Instantiate,
    Call,
}

/// Names a failed call: the memory cap, the deadline, a trap, or an instantiation failure.
fn failure(
    plugin: &str,
    store: &Store<HostState>,
    phase: Phase,
    err: wasmtime::Error,
) -> PluginError {
    let plugin = plugin.to_owned();
    let error = if store.data().limiter.hit {
        PluginError::MemoryLimit { plugin }
    } else {
        match (err.downcast_ref::<Trap>(), phase) {
            (Some(Trap::Interrupt), _) => PluginError::Deadline { plugin },
            (None, Phase::Instantiate) => PluginError::Instantiate {
                plugin,
                message: format!("{err:#}"),
            },
            // `{:#}`, not `{:?}`: the chain keeps the wasm backtrace, while Debug would also
            // symbolise the Rust backtrace anyhow captured under RUST_BACKTRACE=1 (0.2–0.9 s,
            // past any deadline).
            (Some(_), _) | (None, Phase::Call) => PluginError::Trap {
                plugin,
                message: format!("{err:#}"),
            },
        }
    };
    tracing::warn!(plugin = error.plugin(), "plugin call failed: {error}");
    error
}

/// Ticks covering `deadline`, plus one for the tick already in progress (Spin's rule).
fn deadline_ticks(deadline: Duration) -> u64 {
    let tick = EPOCH_TICK.as_nanos();
    (deadline.as_nanos().div_ceil(tick) as u64).max(1) + 1
}

fn link_err(plugin: &str, e: wasmtime::Error) -> PluginError {
    PluginError::Link {
        plugin: plugin.to_string(),
        message: format!("{e:#}"),
    }
}

/// Only the WASI that Rust `wasm32-wasip2` components import: I/O streams (for stdio),
/// clocks, random (nonces) and the CLI basics. No filesystem, no sockets: a component that
/// imports them fails to link at load time.
fn link_wasi(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    use wasmtime_wasi::cli::{WasiCli, WasiCliView};
    use wasmtime_wasi::clocks::{WasiClocks, WasiClocksView};
    use wasmtime_wasi::p2::bindings::{cli, clocks, random};
    use wasmtime_wasi::random::{WasiRandom, WasiRandomView};
    use wasmtime_wasi_io::bindings::wasi::io;

    let l = linker;
    io::error::add_to_linker::<_, HasTable>(l, |s| &mut s.table)?;
    io::poll::add_to_linker::<_, HasTable>(l, |s| &mut s.table)?;
    io::streams::add_to_linker::<_, HasTable>(l, |s| &mut s.table)?;
    clocks::wall_clock::add_to_linker::<_, WasiClocks>(l, HostState::clocks)?;
    clocks::monotonic_clock::add_to_linker::<_, WasiClocks>(l, HostState::clocks)?;
    random::random::add_to_linker::<_, WasiRandom>(l, HostState::random)?;
    random::insecure::add_to_linker::<_, WasiRandom>(l, HostState::random)?;
    random::insecure_seed::add_to_linker::<_, WasiRandom>(l, HostState::random)?;
    cli::exit::add_to_linker::<_, WasiCli>(l, HostState::cli)?;
    cli::environment::add_to_linker::<_, WasiCli>(l, HostState::cli)?;
    cli::stdin::add_to_linker::<_, WasiCli>(l, HostState::cli)?;
    cli::stdout::add_to_linker::<_, WasiCli>(l, HostState::cli)?;
    cli::stderr::add_to_linker::<_, WasiCli>(l, HostState::cli)?;
    cli::terminal_input::add_to_linker::<_, WasiCli>(l, HostState::cli)?;
    cli::terminal_output::add_to_linker::<_, WasiCli>(l, HostState::cli)?;
    cli::terminal_stdin::add_to_linker::<_, WasiCli>(l, HostState::cli)?;
    cli::terminal_stdout::add_to_linker::<_, WasiCli>(l, HostState::cli)?;
    cli::terminal_stderr::add_to_linker::<_, WasiCli>(l, HostState::cli)?;
    Ok(())
}

struct HasTable;

impl wasmtime::component::HasData for HasTable {
    type Data<'a> = &'a mut ResourceTable;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadline_is_rounded_up_plus_one_tick() {
        assert_eq!(deadline_ticks(Duration::from_millis(50)), 11);
        assert_eq!(deadline_ticks(Duration::from_millis(51)), 12);
        assert_eq!(deadline_ticks(Duration::ZERO), 2);
    }

    #[test]
    fn engine_starts_with_default_settings() {
        let engine = PluginEngine::new(EngineSettings::default()).unwrap();
        assert_eq!(engine.settings().deadline, Duration::from_millis(50));
    }
}
