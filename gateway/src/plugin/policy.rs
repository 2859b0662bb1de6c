//! Policy plugins (world `policy-plugin`): allow a stream request, possibly with changes,
//! or deny it.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use wasmtime::Store;

use super::bindings::policy::exports::streamgate::plugin::policy::Decision;
use super::bindings::policy::{PolicyPlugin as Instance, PolicyPluginPre};
use super::engine::{Instantiate, PluginEngine};
use super::host::HostState;
use super::token::{from_wit_denial, to_wit_request, to_wit_stream};
use super::{PluginError, PolicyDecision, RequestInfo, StreamRequest};

/// A loaded policy plugin with its tenant config. Cheap to clone; `Send + Sync`.
#[derive(Clone)]
pub struct PolicyPlugin {
    inner: Arc<Inner>,
}

struct Inner {
    engine: PluginEngine,
    name: Arc<str>,
    config: Arc<BTreeMap<String, String>>,
    pre: PolicyPluginPre<HostState>,
}

impl PolicyPlugin {
    pub(crate) fn new(
        engine: PluginEngine,
        name: &str,
        config: BTreeMap<String, String>,
        pre: PolicyPluginPre<HostState>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                engine,
                name: name.into(),
                config: Arc::new(config),
                pre,
            }),
        }
    }

    /// The name it was loaded under (used in logs and errors).
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The plugin's verdict on `stream` arriving with `req`. `Err` only when the plugin
    /// itself failed (trap, deadline, memory): the caller must then refuse (fail closed).
    pub async fn check(
        &self,
        req: &RequestInfo,
        stream: &StreamRequest,
    ) -> Result<PolicyDecision, PluginError> {
        let inner = &*self.inner;
        let (req, stream) = (to_wit_request(req), to_wit_stream(stream));
        let run = |instance: Instance, mut store: Store<HostState>| async move {
            let plugin = instance.streamgate_plugin_policy();
            let result = plugin.call_check(&mut store, &req, &stream).await;
            (store, result)
        };
        let decision = inner
            .engine
            .call(&inner.name, &inner.config, &inner.pre, run)
            .await?;
        Ok(match decision {
            Decision::Allow(changes) => PolicyDecision::Allow {
                format: changes.format,
                filename: changes.filename,
            },
            Decision::Deny(denial) => PolicyDecision::Deny(from_wit_denial(denial)),
        })
    }
}

impl Instantiate for PolicyPluginPre<HostState> {
    type Instance = Instance;

    fn instantiate<'a>(
        &'a self,
        store: &'a mut Store<HostState>,
    ) -> impl Future<Output = wasmtime::Result<Instance>> + Send + 'a {
        self.instantiate_async(store)
    }
}
