//! Token plugins (world `token-plugin`): open a link's token into a stream request, and
//! seal one into a token.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::bindings::token::TokenPluginPre;
use super::bindings::types;
use super::engine::{Phase, PluginEngine};
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
        let mut call = inner.engine.begin(&inner.name, &inner.config).await;
        let instance = match inner.pre.instantiate_async(&mut call.store).await {
            Ok(instance) => instance,
            Err(e) => return call.finish(Phase::Instantiate, Err(e)),
        };
        let result = instance
            .streamgate_plugin_token()
            .call_open(&mut call.store, &to_wit_request(req), token)
            .await;
        let opened = call.finish(Phase::Call, result)?;
        Ok(opened.map(from_wit_stream).map_err(from_wit_denial))
    }

    /// Seals `req` for `tenant`: the token, or the plugin's reason why it cannot seal.
    pub async fn seal(
        &self,
        tenant: &str,
        req: &StreamRequest,
    ) -> Result<Result<String, String>, PluginError> {
        let inner = &*self.inner;
        let mut call = inner.engine.begin(&inner.name, &inner.config).await;
        let instance = match inner.pre.instantiate_async(&mut call.store).await {
            Ok(instance) => instance,
            Err(e) => return call.finish(Phase::Instantiate, Err(e)),
        };
        let result = instance
            .streamgate_plugin_token()
            .call_seal(&mut call.store, tenant, &to_wit_stream(req))
            .await;
        call.finish(Phase::Call, result)
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
