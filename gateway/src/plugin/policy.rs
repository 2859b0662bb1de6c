//! Policy plugins: allow a stream request, possibly with changes, or deny it (`check`); a
//! 0.2.0 component may also export `media-policy` and then reviews the media itself, after
//! the extraction and before the first byte (`review`). Which world a component implements
//! is read from its exports at load time.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use wasmtime::Store;
use wasmtime::component::{Instance as Raw, InstancePre};

use super::bindings::policy::exports::streamgate::plugin::policy::Decision;
use super::bindings::policy::{PolicyPlugin as Instance, PolicyPluginPre};
use super::bindings::v2::exports::streamgate::plugin::{media_policy, policy as policy_v2};
use super::engine::{Instantiate, PluginEngine};
use super::host::HostState;
use super::token::{from_wit_denial, to_wit_request, to_wit_stream};
use super::{Denial, MediaInfo, PluginError, PolicyDecision, RequestInfo, StreamRequest};

/// The export a 0.1.0 policy has.
const POLICY_V1: &str = "streamgate:plugin/policy@0.1.0";
/// The exports of a 0.2.0 policy; the second one makes it a media policy.
const POLICY_V2: &str = "streamgate:plugin/policy@0.2.0";
const MEDIA_V2: &str = "streamgate:plugin/media-policy@0.2.0";

/// A loaded policy plugin with its tenant config. Cheap to clone; `Send + Sync`.
#[derive(Clone)]
pub struct PolicyPlugin {
    inner: Arc<Inner>,
}

struct Inner {
    engine: PluginEngine,
    name: Arc<str>,
    config: Arc<BTreeMap<String, String>>,
    world: PolicyWorld,
}

/// The world a policy component implements, with its exports looked up once.
pub(crate) enum PolicyWorld {
    /// `streamgate:plugin@0.1.0`'s `policy-plugin`.
    V1(PolicyPluginPre<HostState>),
    /// `streamgate:plugin@0.2.0`: `policy`, and `media-policy` when it reviews media.
    V2 {
        pre: InstancePre<HostState>,
        policy: policy_v2::GuestIndices,
        media: Option<media_policy::GuestIndices>,
    },
}

impl PolicyWorld {
    /// Reads the world from the component's exports: a 0.1.0 `policy`, else a 0.2.0 one.
    pub(crate) fn detect(pre: InstancePre<HostState>) -> wasmtime::Result<Self> {
        let exports = |name| pre.component().get_export_index(None, name).is_some();
        if exports(POLICY_V1) {
            return Ok(Self::V1(PolicyPluginPre::new(pre)?));
        }
        if !exports(POLICY_V2) {
            wasmtime::bail!("the component exports neither `{POLICY_V1}` nor `{POLICY_V2}`");
        }
        let policy = policy_v2::GuestIndices::new(&pre)?;
        let media = match exports(MEDIA_V2) {
            true => Some(media_policy::GuestIndices::new(&pre)?),
            false => None,
        };
        Ok(Self::V2 { pre, policy, media })
    }
}

impl PolicyPlugin {
    pub(crate) fn new(
        engine: PluginEngine,
        name: &str,
        config: BTreeMap<String, String>,
        world: PolicyWorld,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                engine,
                name: name.into(),
                config: Arc::new(config),
                world,
            }),
        }
    }

    /// The name it was loaded under (used in logs and errors).
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The value of `key` in its tenant config (secrets included: never for a client).
    pub fn setting(&self, key: &str) -> Option<&str> {
        self.inner.config.get(key).map(String::as_str)
    }

    /// Whether it exports `media-policy`: its tenant's streams wait for [`Self::review`].
    pub fn reviews_media(&self) -> bool {
        matches!(self.inner.world, PolicyWorld::V2 { media: Some(_), .. })
    }

    /// The plugin's verdict on `stream` arriving with `req`. `Err` only when the plugin
    /// itself failed (trap, deadline, memory): the caller must then refuse (fail closed).
    pub async fn check(
        &self,
        req: &RequestInfo,
        stream: &StreamRequest,
    ) -> Result<PolicyDecision, PluginError> {
        let inner = &*self.inner;
        let tenant = req.tenant.as_str();
        let (req, stream) = (to_wit_request(req), to_wit_stream(stream));
        match &inner.world {
            PolicyWorld::V1(pre) => {
                let run = |instance: Instance, mut store: Store<HostState>| async move {
                    let plugin = instance.streamgate_plugin_policy();
                    let result = plugin.call_check(&mut store, &req, &stream).await;
                    (store, result)
                };
                let decision = inner
                    .engine
                    .call(tenant, &inner.name, &inner.config, pre, run)
                    .await?;
                Ok(match decision {
                    Decision::Allow(changes) => PolicyDecision::Allow {
                        format: changes.format,
                        filename: changes.filename,
                    },
                    Decision::Deny(denial) => PolicyDecision::Deny(from_wit_denial(denial)),
                })
            }
            PolicyWorld::V2 { pre, policy, .. } => {
                let run = |instance: Raw, mut store: Store<HostState>| async move {
                    let result = match policy.load(&mut store, &instance) {
                        Ok(plugin) => plugin.call_check(&mut store, &req, &stream).await,
                        Err(e) => Err(e),
                    };
                    (store, result)
                };
                let decision = inner
                    .engine
                    .call(tenant, &inner.name, &inner.config, pre, run)
                    .await?;
                Ok(match decision {
                    policy_v2::Decision::Allow(changes) => PolicyDecision::Allow {
                        format: changes.format,
                        filename: changes.filename,
                    },
                    policy_v2::Decision::Deny(denial) => {
                        PolicyDecision::Deny(from_wit_denial(denial))
                    }
                })
            }
        }
    }

    /// The plugin's review of `media`, found for `stream` (as `check` allowed it): `None`
    /// lets the stream start, a denial refuses it. A plugin that does not review media
    /// allows everything. `Err` only when the plugin itself failed.
    pub async fn review(
        &self,
        req: &RequestInfo,
        stream: &StreamRequest,
        media: &MediaInfo,
    ) -> Result<Option<Denial>, PluginError> {
        let inner = &*self.inner;
        let PolicyWorld::V2 {
            pre,
            media: Some(indices),
            ..
        } = &inner.world
        else {
            return Ok(None);
        };
        let tenant = req.tenant.as_str();
        let (req, stream, media) = (
            to_wit_request(req),
            to_wit_stream(stream),
            to_wit_media(media),
        );
        let run = |instance: Raw, mut store: Store<HostState>| async move {
            let result = match indices.load(&mut store, &instance) {
                Ok(plugin) => plugin.call_review(&mut store, &req, &stream, &media).await,
                Err(e) => Err(e),
            };
            (store, result)
        };
        let verdict = inner
            .engine
            .call(tenant, &inner.name, &inner.config, pre, run)
            .await?;
        Ok(verdict.err().map(from_wit_denial))
    }
}

fn to_wit_media(media: &MediaInfo) -> media_policy::MediaInfo {
    media_policy::MediaInfo {
        extractor: media.extractor.clone(),
        title: media.title.clone(),
        uploader: media.uploader.clone(),
        duration: media.duration,
        is_live: media.is_live,
        formats: media
            .formats
            .iter()
            .map(|f| media_policy::ChosenFormat {
                format_id: f.format_id.clone(),
                ext: f.ext.clone(),
                vcodec: f.vcodec.clone(),
                acodec: f.acodec.clone(),
                size: f.size,
            })
            .collect(),
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

/// A 0.2.0 policy: instantiated bare, each export loaded by the call that uses it.
impl Instantiate for InstancePre<HostState> {
    type Instance = Raw;

    fn instantiate<'a>(
        &'a self,
        store: &'a mut Store<HostState>,
    ) -> impl Future<Output = wasmtime::Result<Raw>> + Send + 'a {
        self.instantiate_async(store)
    }
}
