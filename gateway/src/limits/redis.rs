//! Counters in Redis, shared by every replica. Each concurrency key is a sorted set of slot
//! ids scored by their expiry (Redis server time, so replicas' clocks do not matter): one
//! Lua script drops expired ids, checks every key's size and adds the slot to all of them,
//! atomically. A heartbeat pushes the expiry forward while the stream runs; dropping the
//! slot removes it at once; a replica that dies leaves ids that expire after `slot_ttl`.
//! Keys carry the tenant in a hash tag (`{tenant}`) so a cluster keeps them in one slot.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Script, ScriptInvocation};
use tokio::sync::OnceCell;
use tokio::task::JoinHandle;

use super::{BackendError, Limit, RESOLVE_WINDOW, ResolveKey, SlotRequest, StreamSlot};

/// Every Redis round trip is bounded: a hung Redis must not hang requests.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// KEYS: the sets; ARGV: ttl ms, slot id, then one limit per key. 0 = taken, i = KEYS[i] full.
const ACQUIRE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  if redis.call('ZCARD', key) >= tonumber(ARGV[2 + i]) then return i end
end
for _, key in ipairs(KEYS) do
  redis.call('ZADD', key, now + ttl, ARGV[2])
  redis.call('PEXPIRE', key, ttl)
end
return 0
";

/// KEYS: the sets; ARGV: ttl ms, slot id. Adds the slot back when it is gone (a Redis that
/// restarted empty), so a running stream keeps counting against its limits.
const REFRESH: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for _, key in ipairs(KEYS) do
  redis.call('ZADD', key, now + tonumber(ARGV[1]), ARGV[2])
  redis.call('PEXPIRE', key, ARGV[1])
end
return 0
";

/// KEYS: the sets; ARGV: slot id.
const RELEASE: &str = r"
for _, key in ipairs(KEYS) do redis.call('ZREM', key, ARGV[1]) end
return 0
";

/// KEYS[1]: the window's counter; ARGV: limit, window ms. -1 = allowed, else ms left.
const RESOLVE: &str = r"
local n = redis.call('INCR', KEYS[1])
local left = redis.call('PTTL', KEYS[1])
if left < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  left = tonumber(ARGV[2])
end
if n > tonumber(ARGV[1]) then return left end
return -1
";

pub(crate) struct RedisCounters {
    shared: Arc<Shared>,
}

struct Shared {
    client: redis::Client,
    conn: OnceCell<ConnectionManager>,
    slot_ttl: Duration,
    acquire: Script,
    refresh: Script,
    release: Script,
    resolve: Script,
}

impl RedisCounters {
    /// `info`: the URL parsed when the configuration was read.
    pub fn new(info: &redis::ConnectionInfo, slot_ttl: Duration) -> Self {
        // A `ConnectionInfo` converts into itself: `open` cannot fail here.
        let client = redis::Client::open(info.clone()).expect("a parsed Redis URL opens");
        RedisCounters {
            shared: Arc::new(Shared {
                client,
                conn: OnceCell::new(),
                slot_ttl,
                acquire: Script::new(ACQUIRE),
                refresh: Script::new(REFRESH),
                release: Script::new(RELEASE),
                resolve: Script::new(RESOLVE),
            }),
        }
    }

    pub async fn acquire(
        &self,
        req: SlotRequest,
    ) -> Result<Result<StreamSlot, Limit>, BackendError> {
        let mut keys = Vec::new();
        let mut limits = Vec::new();
        let mut kinds = Vec::new();
        if let Some((tenant, n)) = req.tenant {
            keys.push(format!("streamgate:{{{tenant}}}:streams"));
            limits.push(n);
            kinds.push(Limit::MaxStreams);
        }
        if let Some((key, n)) = req.client {
            let (tenant, ip) = key.split_once('\u{0}').unwrap_or((&key, ""));
            keys.push(format!("streamgate:{{{tenant}}}:client:{ip}"));
            limits.push(n);
            kinds.push(Limit::MaxStreamsPerClient);
        }
        let id = format!("{:016x}", rand::random::<u64>());
        let shared = &self.shared;
        let mut call = shared.acquire.prepare_invoke();
        for k in &keys {
            call.key(k);
        }
        call.arg(shared.ttl_ms()).arg(&id);
        for n in &limits {
            call.arg(n);
        }
        let full: usize = shared.invoke(&call).await?;
        if full > 0 {
            return Ok(Err(kinds[full - 1]));
        }
        let heartbeat = tokio::spawn(heartbeat(shared.clone(), keys.clone(), id.clone()));
        Ok(Ok(StreamSlot::holding(Held {
            shared: shared.clone(),
            keys,
            id,
            heartbeat,
        })))
    }

    /// `None` if allowed, else the seconds left in the window.
    pub async fn count_resolve(
        &self,
        key: &ResolveKey<'_>,
        limit: u32,
    ) -> Result<Option<u32>, BackendError> {
        let shared = &self.shared;
        let mut call = shared.resolve.prepare_invoke();
        let tenant = key.tenant;
        call.key(match key.client {
            None => format!("streamgate:{{{tenant}}}:resolves"),
            Some(ip) => format!("streamgate:{{{tenant}}}:resolves:client:{ip}"),
        });
        call.arg(limit).arg(RESOLVE_WINDOW.as_millis() as u64);
        let left: i64 = shared.invoke(&call).await?;
        Ok((left >= 0).then(|| (left as u64).div_ceil(1000).max(1) as u32))
    }
}

impl Shared {
    fn ttl_ms(&self) -> u64 {
        self.slot_ttl.as_millis() as u64
    }

    /// Connects on first use (and again after a failed first connect); the manager then
    /// reconnects by itself.
    async fn connection(&self) -> Result<ConnectionManager, BackendError> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(CALL_TIMEOUT)
            .set_response_timeout(CALL_TIMEOUT)
            .set_number_of_retries(1);
        let init = self.client.get_connection_manager_with_config(config);
        let conn = self.conn.get_or_try_init(|| init).await;
        conn.cloned()
            .map_err(|e| BackendError(format!("connecting to redis: {e}")))
    }

    async fn invoke<T: redis::FromRedisValue>(
        &self,
        call: &ScriptInvocation<'_>,
    ) -> Result<T, BackendError> {
        let attempt = async {
            let mut conn = self.connection().await?;
            let reply = call.invoke_async(&mut conn).await;
            reply.map_err(|e| BackendError(format!("redis: {e}")))
        };
        tokio::time::timeout(CALL_TIMEOUT, attempt)
            .await
            .unwrap_or_else(|_| Err(BackendError("redis: timed out".into())))
    }
}

/// Keeps a slot alive: refreshes its expiry three times per `slot_ttl`.
async fn heartbeat(shared: Arc<Shared>, keys: Vec<String>, id: String) {
    let period = shared.slot_ttl / 3;
    loop {
        tokio::time::sleep(period).await;
        let mut call = shared.refresh.prepare_invoke();
        for k in &keys {
            call.key(k);
        }
        call.arg(shared.ttl_ms()).arg(&id);
        if let Err(e) = shared.invoke::<i64>(&call).await {
            tracing::warn!(error = %e, slot = %id, "limiter heartbeat failed");
        }
    }
}

/// A slot in Redis: stops its heartbeat and removes itself on drop.
struct Held {
    shared: Arc<Shared>,
    keys: Vec<String>,
    id: String,
    heartbeat: JoinHandle<()>,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.heartbeat.abort();
        let (shared, keys, id) = (
            self.shared.clone(),
            std::mem::take(&mut self.keys),
            self.id.clone(),
        );
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return; // No runtime (process exiting): the slot expires instead.
        };
        rt.spawn(async move {
            let mut call = shared.release.prepare_invoke();
            for k in &keys {
                call.key(k);
            }
            call.arg(&id);
            if let Err(e) = shared.invoke::<i64>(&call).await {
                tracing::warn!(error = %e, slot = %id, "releasing a slot failed; it will expire");
            }
        });
    }
}
