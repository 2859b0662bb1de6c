//! Counters in this process: exact, instant, and lost with it (which is fine: so are its
//! streams). One short `Mutex` section per check, never held across an await, so a tenant
//! at its limit cannot slow another.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::{Limit, RESOLVE_WINDOW, ResolveKey, SlotRequest, StreamSlot};

#[derive(Default)]
pub(crate) struct MemoryCounters {
    streams: Arc<Mutex<HashMap<String, u32>>>,
    resolves: Mutex<Windows>,
}

/// Resolve windows: tenant (or tenant + client) → (start of its window, resolves in it).
/// Closed windows are dropped once per window length, so clients that came and went do
/// not accumulate.
#[derive(Default)]
struct Windows {
    open: HashMap<String, (Instant, u32)>,
    pruned: Option<Instant>,
}

/// Gives its keys back on drop.
struct Held {
    streams: Arc<Mutex<HashMap<String, u32>>>,
    keys: Vec<String>,
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut streams = self.streams.lock().expect("never poisoned");
        for key in &self.keys {
            if let Some(n) = streams.get_mut(key) {
                *n -= 1;
                if *n == 0 {
                    streams.remove(key);
                }
            }
        }
    }
}

impl MemoryCounters {
    /// Both keys or neither: checked and taken under one lock.
    pub fn acquire(&self, req: SlotRequest) -> Result<StreamSlot, Limit> {
        let wanted = [
            req.tenant
                .map(|(k, n)| (format!("t\u{0}{k}"), n, Limit::MaxStreams)),
            req.client
                .map(|(k, n)| (format!("c\u{0}{k}"), n, Limit::MaxStreamsPerClient)),
        ];
        let mut streams = self.streams.lock().expect("never poisoned");
        for (key, max, limit) in wanted.iter().flatten() {
            if streams.get(key).copied().unwrap_or(0) >= *max {
                return Err(*limit);
            }
        }
        let mut keys = Vec::with_capacity(2);
        for (key, _, _) in wanted.into_iter().flatten() {
            *streams.entry(key.clone()).or_default() += 1;
            keys.push(key);
        }
        drop(streams);
        Ok(StreamSlot::holding(Held {
            streams: self.streams.clone(),
            keys,
        }))
    }

    /// `None` if allowed, else the seconds until the window resets.
    pub fn count_resolve(&self, key: &ResolveKey<'_>, limit: u32) -> Option<u32> {
        let now = Instant::now();
        let key = match key.client {
            None => format!("t\u{0}{}", key.tenant),
            Some(ip) => format!("c\u{0}{}\u{0}{ip}", key.tenant),
        };
        let mut windows = self.resolves.lock().expect("never poisoned");
        if windows
            .pruned
            .is_none_or(|at| now.duration_since(at) >= RESOLVE_WINDOW)
        {
            windows
                .open
                .retain(|_, (start, _)| now.duration_since(*start) < RESOLVE_WINDOW);
            windows.pruned = Some(now);
        }
        let entry = windows.open.entry(key).or_insert((now, 0));
        if now.duration_since(entry.0) >= RESOLVE_WINDOW {
            *entry = (now, 0);
        }
        if entry.1 >= limit {
            let left = RESOLVE_WINDOW.saturating_sub(now.duration_since(entry.0));
            return Some(left.as_secs() as u32 + 1);
        }
        entry.1 += 1;
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::{LimitError, Limiter};
    use crate::metrics::Metrics;

    fn limiter(limits: &str) -> (Limiter, Metrics) {
        let text = format!(
            r#"
            [[tenant]]
            id = "a"
            token = {{ builtin = "token-xchacha" }}
            policy = {{ builtin = "policy-allowlist" }}
            limits = {{ {limits} }}
            [[tenant]]
            id = "b"
            token = {{ builtin = "token-xchacha" }}
            policy = {{ builtin = "policy-allowlist" }}
            "#
        );
        let config: crate::config::Config = toml::from_str(&text).unwrap();
        let metrics = Metrics::new();
        let limiter = Limiter::new(&config.limits, config.tenant_limits(), metrics.clone());
        (limiter, metrics)
    }

    fn limit_of(e: LimitError) -> Limit {
        match e {
            LimitError::Limited { limit, .. } => limit,
            other => panic!("{other}"),
        }
    }

    #[tokio::test]
    async fn tenant_limit_holds_and_frees_on_drop() {
        let (l, m) = limiter("max_streams = 2");
        let ip = Some("10.0.0.1".parse().unwrap());
        let s1 = l.acquire_stream("a", ip).await.unwrap();
        let _s2 = l.acquire_stream("a", None).await.unwrap();
        let e = l.acquire_stream("a", ip).await.err().unwrap();
        assert_eq!(limit_of(e), Limit::MaxStreams);
        for _ in 0..10 {
            let _ = l.acquire_stream("b", ip).await.unwrap();
        }
        drop(s1);
        let _s3 = l.acquire_stream("a", ip).await.unwrap();
        assert!(
            m.encode().contains(
                "streamgate_limiter_rejections_total{tenant=\"a\",limit=\"max_streams\"} 1"
            )
        );
    }

    #[tokio::test]
    async fn per_client_limit_counts_addresses_not_connections() {
        let (l, _) = limiter("max_streams = 10, max_streams_per_client = 1");
        let (x, y) = (
            Some("10.0.0.1".parse().unwrap()),
            Some("10.0.0.2".parse().unwrap()),
        );
        let _s = l.acquire_stream("a", x).await.unwrap();
        let e = l.acquire_stream("a", x).await.err().unwrap();
        assert_eq!(limit_of(e), Limit::MaxStreamsPerClient);
        let _t = l.acquire_stream("a", y).await.unwrap();
    }

    #[tokio::test]
    async fn resolves_per_minute_and_reload() {
        let (l, _) = limiter("resolves_per_minute = 3");
        let ip = Some("10.0.0.1".parse().unwrap());
        for _ in 0..3 {
            l.check_resolve("a", ip).await.unwrap();
        }
        match l.check_resolve("a", None).await {
            Err(LimitError::Limited {
                retry_after_secs: Some(secs),
                ..
            }) => assert!((1..=60).contains(&secs)),
            other => panic!("{other:?}"),
        }
        l.check_resolve("b", ip).await.unwrap();
        l.reload(reloaded().tenant_limits());
        l.check_resolve("a", ip).await.unwrap();
    }

    #[tokio::test]
    async fn resolves_per_client_spend_only_their_own_window() {
        let (l, m) = limiter("resolves_per_minute = 5, resolves_per_minute_per_client = 2");
        let (x, y) = (
            Some("10.0.0.1".parse().unwrap()),
            Some("10.0.0.2".parse().unwrap()),
        );
        l.check_resolve("a", x).await.unwrap();
        l.check_resolve("a", x).await.unwrap();
        for _ in 0..3 {
            let e = l.check_resolve("a", x).await.err().unwrap();
            assert_eq!(limit_of(e), Limit::ResolvesPerMinutePerClient);
        }
        // x's refusals cost the tenant nothing: 3 more fit (y twice, an unknown address once).
        l.check_resolve("a", y).await.unwrap();
        l.check_resolve("a", y).await.unwrap();
        l.check_resolve("a", None).await.unwrap();
        let e = l.check_resolve("a", None).await.err().unwrap();
        assert_eq!(limit_of(e), Limit::ResolvesPerMinute);
        // Another tenant's windows are its own.
        l.check_resolve("b", x).await.unwrap();
        assert!(m.encode().contains(
            "streamgate_limiter_rejections_total{tenant=\"a\",limit=\"resolves_per_minute_per_client\"} 3"
        ));
    }

    /// Tenant `a` with a higher resolve limit.
    fn reloaded() -> crate::config::Config {
        let text = r#"
            [[tenant]]
            id = "a"
            token = { builtin = "token-xchacha" }
            policy = { builtin = "policy-allowlist" }
            limits = { resolves_per_minute = 5 }
        "#;
        toml::from_str(text).unwrap()
    }
}
