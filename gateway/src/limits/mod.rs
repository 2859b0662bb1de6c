//! Per-tenant limits: concurrent streams and resolves per minute, each per tenant and per
//! client address within a tenant. Counters live in this process ([`memory`]) or, with
//! `[limits] redis_url`, in Redis ([`redis`]) so that every replica shares them.
//!
//! A stream holds a [`StreamSlot`] for as long as its body lives; dropping it releases the
//! slot. In Redis a slot also carries an expiry refreshed by a heartbeat, so the slots of a
//! replica that dies free themselves.

mod memory;
mod redis;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::config::{LimitsConfig, OnLimiterError, TenantLimits};
use crate::metrics::Metrics;

/// Seconds a client is told to wait when a concurrency limit is reached: slots free when
/// some stream ends, which cannot be predicted; a short wait keeps clients polite.
pub const STREAM_RETRY_AFTER_SECS: u32 = 5;

/// `resolves_per_minute` (and its per-client twin) counts in fixed windows that start with
/// a tenant's (a client's) first resolve (one `INCR` + `EXPIRE` in Redis); `Retry-After` is
/// what is left of the window.
pub(crate) const RESOLVE_WINDOW: Duration = Duration::from_secs(60);

/// Which limit refused a request (also the `limit` label of the rejection metric).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// `max_streams`.
    MaxStreams,
    /// `max_streams_per_client`.
    MaxStreamsPerClient,
    /// `resolves_per_minute`.
    ResolvesPerMinute,
    /// `resolves_per_minute_per_client`.
    ResolvesPerMinutePerClient,
}

impl Limit {
    /// The field's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::MaxStreams => "max_streams",
            Limit::MaxStreamsPerClient => "max_streams_per_client",
            Limit::ResolvesPerMinute => "resolves_per_minute",
            Limit::ResolvesPerMinutePerClient => "resolves_per_minute_per_client",
        }
    }
}

/// Why the limiter refused; `error::GatewayError::Limit` turns it into 429 or 503.
#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    /// A limit is reached: 429, with `Retry-After` when waiting can help.
    #[error("tenant {tenant:?} {}", limited_reason(*.limit, .retry_after_secs.is_none()))]
    Limited {
        /// The tenant.
        tenant: String,
        /// Which limit.
        limit: Limit,
        /// Seconds the client is told to wait; `None` for a limit of 0, which no wait
        /// lifts (as Envoy's local rate limit with no tokens: a 429 with no retry time).
        retry_after_secs: Option<u32>,
    },
    /// The counters could not be reached and `on_limiter_error = "deny"`: 503.
    #[error("the limiter's backend failed: {0}")]
    Unavailable(String),
}

/// The refusal's words: a limit of 0 is never "reached", it allows nothing.
fn limited_reason(limit: Limit, never: bool) -> String {
    match never {
        true => format!("allows none: its {} limit is 0", limit.as_str()),
        false => format!("reached its {} limit", limit.as_str()),
    }
}

/// A backend failure, before `on_limiter_error` decides what it means.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct BackendError(String);

/// Held by a running stream; dropping it gives the slot back.
pub struct StreamSlot {
    _release: Option<Box<dyn Send + Sync>>,
}

impl StreamSlot {
    /// A slot that holds nothing (no limit set, or the backend failed and `allow` said so).
    pub fn unlimited() -> Self {
        StreamSlot { _release: None }
    }

    pub(crate) fn holding(release: impl Send + Sync + 'static) -> Self {
        StreamSlot {
            _release: Some(Box::new(release)),
        }
    }
}

/// The concurrency keys a stream takes and the limit of each.
pub(crate) struct SlotRequest {
    pub tenant: Option<(String, u32)>,
    pub client: Option<(String, u32)>,
}

/// The window a resolve counts in: the tenant's, or one client's within the tenant.
pub(crate) struct ResolveKey<'a> {
    pub tenant: &'a str,
    pub client: Option<IpAddr>,
}

enum Backend {
    Memory(memory::MemoryCounters),
    Redis(redis::RedisCounters),
}

/// The limits of every tenant and the counters; survives config reloads ([`Limiter::reload`]).
#[derive(Clone)]
pub struct Limiter {
    inner: Arc<Inner>,
}

struct Inner {
    backend: Backend,
    on_error: OnLimiterError,
    limits: ArcSwap<HashMap<String, TenantLimits>>,
    metrics: Metrics,
}

impl Limiter {
    /// The backend is chosen once (by `[limits] redis_url`); Redis is connected lazily, so a
    /// gateway starts even while Redis is down. `tenants`: each tenant's limits by id.
    pub fn new(
        config: &LimitsConfig,
        tenants: HashMap<String, TenantLimits>,
        metrics: Metrics,
    ) -> Limiter {
        let backend = match &config.redis_url {
            Some(url) => {
                let ttl = Duration::from_secs(config.slot_ttl_secs);
                Backend::Redis(redis::RedisCounters::new(url.info(), ttl))
            }
            None => Backend::Memory(memory::MemoryCounters::default()),
        };
        Limiter {
            inner: Arc::new(Inner {
                backend,
                on_error: config.on_limiter_error,
                limits: ArcSwap::from_pointee(tenants),
                metrics,
            }),
        }
    }

    /// Takes the tenants' limits of a new configuration; counters and held slots carry
    /// over. (`[limits]` itself — backend, policy — needs a restart.)
    pub fn reload(&self, tenants: HashMap<String, TenantLimits>) {
        self.inner.limits.store(Arc::new(tenants));
    }

    fn limits(&self, tenant: &str) -> TenantLimits {
        self.inner
            .limits
            .load()
            .get(tenant)
            .cloned()
            .unwrap_or_default()
    }

    /// One more stream for `tenant` from `client`, or the limit it would break.
    pub async fn acquire_stream(
        &self,
        tenant: &str,
        client: Option<IpAddr>,
    ) -> Result<StreamSlot, LimitError> {
        let limits = self.limits(tenant);
        let request = SlotRequest {
            tenant: limits.max_streams.map(|n| (tenant.to_owned(), n)),
            client: match (limits.max_streams_per_client, client) {
                (Some(n), Some(ip)) => Some((format!("{tenant}\u{0}{ip}"), n)),
                _ => None,
            },
        };
        if request.tenant.is_none() && request.client.is_none() {
            return Ok(StreamSlot::unlimited());
        }
        let zero = [
            (
                request.client.as_ref().map(|c| c.1),
                Limit::MaxStreamsPerClient,
            ),
            (request.tenant.as_ref().map(|t| t.1), Limit::MaxStreams),
        ];
        if let Some(limit) = never(&zero) {
            return Err(self.limited(tenant, limit, None));
        }
        let result = match &self.inner.backend {
            Backend::Memory(m) => Ok(m.acquire(request)),
            Backend::Redis(r) => r.acquire(request).await,
        };
        match result {
            Ok(Ok(slot)) => Ok(slot),
            Ok(Err(limit)) => Err(self.limited(tenant, limit, Some(STREAM_RETRY_AFTER_SECS))),
            Err(e) => self.backend_failed(e).map(|()| StreamSlot::unlimited()),
        }
    }

    /// Counts one resolve of `tenant` from `client`; refuses past
    /// `resolves_per_minute_per_client`, then past `resolves_per_minute`. The client's window
    /// is counted first, so a client over its own limit spends none of the tenant's; a limit
    /// of 0 refuses before either is counted.
    pub async fn check_resolve(
        &self,
        tenant: &str,
        client: Option<IpAddr>,
    ) -> Result<(), LimitError> {
        let limits = self.limits(tenant);
        let per_client = limits.resolves_per_minute_per_client.zip(client);
        let zero = [
            (
                per_client.map(|(max, _)| max),
                Limit::ResolvesPerMinutePerClient,
            ),
            (limits.resolves_per_minute, Limit::ResolvesPerMinute),
        ];
        if let Some(limit) = never(&zero) {
            return Err(self.limited(tenant, limit, None));
        }
        let windows = [
            (
                per_client.map(|(max, ip)| (max, Some(ip))),
                Limit::ResolvesPerMinutePerClient,
            ),
            (
                limits.resolves_per_minute.map(|max| (max, None)),
                Limit::ResolvesPerMinute,
            ),
        ];
        for (window, limit) in windows {
            let Some((max, client)) = window else {
                continue;
            };
            let key = ResolveKey { tenant, client };
            let result = match &self.inner.backend {
                Backend::Memory(m) => Ok(m.count_resolve(&key, max)),
                Backend::Redis(r) => r.count_resolve(&key, max).await,
            };
            match result {
                Ok(None) => {}
                Ok(Some(wait)) => return Err(self.limited(tenant, limit, Some(wait))),
                // Same backend for the next window: one failure, one decision.
                Err(e) => return self.backend_failed(e),
            }
        }
        Ok(())
    }

    fn limited(&self, tenant: &str, limit: Limit, retry_after_secs: Option<u32>) -> LimitError {
        self.inner.metrics.limiter_rejection(tenant, limit.as_str());
        LimitError::Limited {
            tenant: tenant.to_owned(),
            limit,
            retry_after_secs,
        }
    }

    /// Applies `on_limiter_error`, and says so in the log and the metrics.
    fn backend_failed(&self, e: BackendError) -> Result<(), LimitError> {
        let decision = self.inner.on_error;
        tracing::warn!(error = %e, decision = decision.as_str(), "limiter backend failed");
        self.inner.metrics.limiter_error(decision.as_str());
        match decision {
            OnLimiterError::Deny => Err(LimitError::Unavailable(e.0)),
            OnLimiterError::Allow => Ok(()),
        }
    }
}

/// The first of `limits` that is set to 0: it refuses every request, so nothing is counted
/// (no backend round trip) and no wait is promised.
fn never(limits: &[(Option<u32>, Limit)]) -> Option<Limit> {
    limits
        .iter()
        .find_map(|&(max, limit)| (max == Some(0)).then_some(limit))
}
