//! Token plugins (world `token-plugin`): open a link's token into a stream request, and
//! seal one into a token.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use wasmtime::Store;

use super::bindings::token::{TokenPlugin as Instance, TokenPluginPre};
use super::bindings::types;
use super::engine::{Instantiate, PluginEngine};
use super::host::HostState;
use super::{Denial, PluginError, RequestInfo, StreamRequest};

/// A loaded token plugin with its tenant config. Cheap to clone; `Send + Sync`.
#[derive(Clone)]
pub struct TokenPlugin {
    inner: Arc<Inner>,
}

struct Inner {
    engine: PluginEngine,
    name: Arc<str>,
    config: Arc<BTreeMap<String, String>>,
    pre: TokenPluginPre<HostState>,
}

impl TokenPlugin {
    pub(crate) fn new(
        engine: PluginEngine,
        name: &str,
        config: BTreeMap<String, String>,
        pre: TokenPluginPre<HostState>,
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

    /// Opens `token`: the stream request, or the plugin's denial (bad, expired, foreign
    /// token). `Err` only when the plugin itself failed (trap, deadline, memory).
    pub async fn open(
        &self,
        req: &RequestInfo,
        token: &str,
    ) -> Result<Result<StreamRequest, Denial>, PluginError> {
        let inner = &*self.inner;
        let tenant = req.tenant.as_str();
        let req = to_wit_request(req);
        let run = |instance: Instance, mut store: Store<HostState>| async move {
            let plugin = instance.streamgate_plugin_token();
            let result = plugin.call_open(&mut store, &req, token).await;
            (store, result)
        };
        let opened = inner
            .engine
            .call(tenant, &inner.name, &inner.config, &inner.pre, run)
            .await?;
        Ok(opened.map(from_wit_stream).map_err(from_wit_denial))
    }

    /// Seals `req` for `tenant`: the token, or the plugin's reason why it cannot seal.
    pub async fn seal(
        &self,
        tenant: &str,
        req: &StreamRequest,
    ) -> Result<Result<String, String>, PluginError> {
        let inner = &*self.inner;
        let req = to_wit_stream(req);
        let run = |instance: Instance, mut store: Store<HostState>| async move {
            let plugin = instance.streamgate_plugin_token();
            let result = plugin.call_seal(&mut store, tenant, &req).await;
            (store, result)
        };
        inner
            .engine
            .call(tenant, &inner.name, &inner.config, &inner.pre, run)
            .await
    }
}

impl Instantiate for TokenPluginPre<HostState> {
    type Instance = Instance;

    fn instantiate<'a>(
        &'a self,
        store: &'a mut Store<HostState>,
    ) -> impl Future<Output = wasmtime::Result<Instance>> + Send + 'a {
        self.instantiate_async(store)
    }
}

pub(crate) fn to_wit_request(req: &RequestInfo) -> types::HttpRequest {
    types::HttpRequest {
        method: req.method.clone(),
        path: req.path.clone(),
        query: req.query.clone(),
        headers: req.headers.clone(),
        client_addr: req.client_addr.clone(),
        tenant: req.tenant.clone(),
    }
}

pub(crate) fn to_wit_stream(req: &StreamRequest) -> types::StreamRequest {
    types::StreamRequest {
        url: req.url.clone(),
        format: req.format.clone(),
        filename: req.filename.clone(),
        expires_at: req.expires_at,
    }
}

fn from_wit_stream(req: types::StreamRequest) -> StreamRequest {
    StreamRequest {
        url: req.url,
        format: req.format,
        filename: req.filename,
        expires_at: req.expires_at,
    }
}

/// A plugin may only refuse with a client error; anything else becomes 403.
pub(crate) fn from_wit_denial(denial: types::Denial) -> Denial {
    Denial {
        status: if (400..500).contains(&denial.status) {
            denial.status
        } else {
            403
        },
        reason: denial.reason,
    }
}
