//! Policy plugins (world `policy-plugin`): allow a stream request, possibly with changes,
//! or deny it.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::bindings::policy::PolicyPluginPre;
use super::bindings::policy::exports::streamgate::plugin::policy::Decision;
use super::engine::{Phase, PluginEngine};
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
        let mut call = inner.engine.begin(&inner.name, &inner.config).await;
        let instance = match inner.pre.instantiate_async(&mut call.store).await {
            Ok(instance) => instance,
            Err(e) => return call.finish(Phase::Instantiate, Err(e)),
        };
        let result = instance
            .streamgate_plugin_policy()
            .call_check(
                &mut call.store,
                &to_wit_request(req),
                &to_wit_stream(stream),
            )
            .await;
        Ok(match call.finish(Phase::Call, result)? {
            Decision::Allow(changes) => PolicyDecision::Allow {
                format: changes.format,
                filename: changes.filename,
            },
            Decision::Deny(denial) => PolicyDecision::Deny(from_wit_denial(denial)),
        })
    }
}
