//! What a plugin instance can touch: its store data, the host imports (`config`, `log`,
//! `clock`), a memory limiter, and capped in-memory stdout/stderr. Nothing else: no
//! filesystem, network, environment or inherited stdio.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::v2::streamgate::plugin as v2;
use super::bindings::{clock, config, log, types};

/// Store data of one plugin call; dropped with the store when the call ends.
pub(crate) struct HostState {
    pub plugin: Arc<str>,
    pub config: Arc<BTreeMap<String, String>>,
    pub wasi: WasiCtx,
    pub table: ResourceTable,
    pub limiter: MemoryLimiter,
    /// Bytes of `log` messages this call may still emit.
    pub log_budget: usize,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl types::Host for HostState {}

impl config::Host for HostState {
    fn get(&mut self, key: String) -> Option<String> {
        self.config.get(&key).cloned()
    }
}

impl log::Host for HostState {
    fn log(&mut self, level: log::Level, message: String) {
        if self.log_budget == 0 {
            return;
        }
        let mut message = message;
        if message.len() > self.log_budget {
            let mut cut = self.log_budget;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push_str(" [plugin log cap reached]");
            self.log_budget = 0;
        } else {
            self.log_budget -= message.len();
        }
        let plugin = &*self.plugin;
        match level {
            log::Level::Trace => tracing::trace!(plugin, "{message}"),
            log::Level::Debug => tracing::debug!(plugin, "{message}"),
            log::Level::Info => tracing::info!(plugin, "{message}"),
            log::Level::Warn => tracing::warn!(plugin, "{message}"),
            log::Level::Error => tracing::error!(plugin, "{message}"),
        }
    }
}

impl clock::Host for HostState {
    fn now(&mut self) -> u64 {
        unix_now()
    }
}

// 0.2.0's imports: the same host, under 0.2.0's names.
impl v2::config::Host for HostState {
    fn get(&mut self, key: String) -> Option<String> {
        config::Host::get(self, key)
    }
}

impl v2::log::Host for HostState {
    fn log(&mut self, level: v2::log::Level, message: String) {
        let level = match level {
            v2::log::Level::Trace => log::Level::Trace,
            v2::log::Level::Debug => log::Level::Debug,
            v2::log::Level::Info => log::Level::Info,
            v2::log::Level::Warn => log::Level::Warn,
            v2::log::Level::Error => log::Level::Error,
        };
        log::Host::log(self, level, message);
    }
}

impl v2::clock::Host for HostState {
    fn now(&mut self) -> u64 {
        unix_now()
    }
}

/// Seconds since the Unix epoch on the gateway's wall clock.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Caps the total linear memory of one instance (all its memories together), and records
/// that the cap was hit so that the resulting trap is reported as `MemoryLimit`.
pub(crate) struct MemoryLimiter {
    limit: usize,
    used: usize,
    pub hit: bool,
}

impl MemoryLimiter {
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            used: 0,
            hit: false,
        }
    }
}

/// Table elements one instance may have; generous, only there to bound host memory.
const MAX_TABLE_ELEMENTS: usize = 100_000;

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let after = self.used.saturating_sub(current).saturating_add(desired);
        if after > self.limit {
            // Refused growth makes `memory.grow` return -1; Rust guests then abort (a trap).
            self.hit = true;
            return Ok(false);
        }
        self.used = after;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}

/// A plugin's stdout or stderr: kept in memory up to `cap` bytes and logged after the call.
/// Writes beyond the cap are dropped, never an error, so a chatty plugin is not failed for it.
#[derive(Clone)]
pub(crate) struct CappedPipe {
    cap: usize,
    inner: Arc<Mutex<Captured>>,
}

#[derive(Default)]
struct Captured {
    bytes: Vec<u8>,
    truncated: bool,
}

impl CappedPipe {
    pub fn new(cap: usize) -> Self {
        Self {
            cap,
            inner: Arc::default(),
        }
    }

    fn push(&self, data: &[u8]) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let room = self.cap.saturating_sub(inner.bytes.len());
        if data.len() > room {
            inner.truncated = true;
        }
        inner.bytes.extend_from_slice(&data[..data.len().min(room)]);
    }

    /// The captured text (lossy UTF-8) and whether anything was dropped.
    pub fn take(&self) -> (String, bool) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let text = String::from_utf8_lossy(&inner.bytes).into_owned();
        inner.bytes.clear();
        (text, std::mem::take(&mut inner.truncated))
    }
}

impl IsTerminal for CappedPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CappedPipe {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
}

/// Room announced to the guest per write; it may write again at once.
const WRITE_CHUNK: usize = 64 * 1024;

impl OutputStream for CappedPipe {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(WRITE_CHUNK)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for CappedPipe {
    async fn ready(&mut self) {}
}

impl AsyncWrite for CappedPipe {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipe_keeps_at_most_cap_bytes_and_says_so() {
        let pipe = CappedPipe::new(8);
        pipe.push(b"hello ");
        pipe.push(b"world");
        assert_eq!(pipe.take(), ("hello wo".to_string(), true));
        assert_eq!(pipe.take(), (String::new(), false));
    }

    #[test]
    fn limiter_counts_all_memories_together() {
        let mut limiter = MemoryLimiter::new(100);
        assert!(limiter.memory_growing(0, 60, None).unwrap());
        assert!(limiter.memory_growing(0, 40, None).unwrap());
        assert!(!limiter.memory_growing(40, 41, None).unwrap());
        assert!(limiter.hit);
    }
}
