//! The extraction cache: info JSON kept in memory only, for a short TTL (well under the
//! lifetime of the media URLs inside it), keyed by tenant + a key: the URL for a resolve's
//! full info, the URL and format selector for a stream's extraction (`extract::key`). A
//! stream whose selection is cached skips yt-dlp altogether (a seeking player asks many
//! times); one whose URL was resolved skips the network part (`--load-info-json`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;

/// Bounds and lifetime of the cache.
#[derive(Clone, Copy, Debug)]
pub struct CacheLimits {
    /// How long an entry is used; zero disables the cache.
    pub ttl: Duration,
    /// Most entries kept.
    pub entries: usize,
    /// Most bytes of JSON kept, all entries together.
    pub bytes: usize,
}

/// Info JSON by (tenant, URL).
pub struct Cache {
    limits: CacheLimits,
    map: Mutex<HashMap<(String, String), (Instant, Bytes)>>,
}

impl Cache {
    /// An empty cache.
    pub fn new(limits: CacheLimits) -> Cache {
        Cache {
            limits,
            map: Mutex::new(HashMap::new()),
        }
    }

    fn key(tenant: Option<&str>, url: &str) -> (String, String) {
        (tenant.unwrap_or_default().to_owned(), url.to_owned())
    }

    /// The fresh entry for `url`, if any (an expired one is dropped).
    pub fn get(&self, tenant: Option<&str>, url: &str) -> Option<Bytes> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let key = Self::key(tenant, url);
        let (at, json) = map.get(&key)?;
        if at.elapsed() < self.limits.ttl {
            return Some(json.clone());
        }
        map.remove(&key);
        None
    }

    /// Drops an entry (its media URLs stopped working).
    pub fn remove(&self, tenant: Option<&str>, url: &str) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(&Self::key(tenant, url));
    }

    /// Keeps `json`, evicting the oldest entries to stay within the bounds.
    pub fn put(&self, tenant: Option<&str>, url: &str, json: Bytes) {
        let l = self.limits;
        if l.ttl.is_zero() || l.entries == 0 || json.len() > l.bytes {
            return;
        }
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, (at, _)| at.elapsed() < l.ttl);
        map.insert(Self::key(tenant, url), (Instant::now(), json));
        let mut total: usize = map.values().map(|(_, j)| j.len()).sum();
        while map.len() > l.entries || total > l.bytes {
            let oldest = map
                .iter()
                .min_by_key(|(_, (at, _))| *at)
                .map(|(k, _)| k.clone());
            let Some(key) = oldest else { break };
            total -= map.remove(&key).map_or(0, |(_, j)| j.len());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(ttl_ms: u64, entries: usize, bytes: usize) -> CacheLimits {
        CacheLimits {
            ttl: Duration::from_millis(ttl_ms),
            entries,
            bytes,
        }
    }

    #[test]
    fn keyed_by_tenant_and_url_and_expires() {
        let c = Cache::new(limits(50, 8, 1000));
        c.put(Some("a"), "u", Bytes::from_static(b"{}"));
        assert!(c.get(Some("a"), "u").is_some());
        assert!(c.get(Some("b"), "u").is_none());
        assert!(c.get(None, "u").is_none());
        std::thread::sleep(Duration::from_millis(60));
        assert!(c.get(Some("a"), "u").is_none());
    }

    #[test]
    fn bounded_in_entries_and_bytes() {
        let c = Cache::new(limits(60_000, 2, 10));
        for u in ["1", "2", "3"] {
            c.put(None, u, Bytes::from_static(b"abc"));
            std::thread::sleep(Duration::from_millis(2));
        }
        assert!(c.get(None, "1").is_none(), "oldest evicted");
        assert!(c.get(None, "3").is_some());
        c.put(None, "big", Bytes::from(vec![b'x'; 11]));
        assert!(c.get(None, "big").is_none(), "larger than the byte bound");
        c.put(None, "nine", Bytes::from(vec![b'x'; 9]));
        assert!(c.get(None, "nine").is_some());
        assert!(c.get(None, "3").is_none(), "evicted for bytes");
    }
}
