//! The plugin host: operator-written token and policy logic as WebAssembly components
//! (`wit/`, package `streamgate:plugin@0.1.0`, and `wit/v0.2.0/`, whose policies may also
//! review the media once it is extracted), run sandboxed by wasmtime.
//!
//! Each component is compiled once at load time into an `InstancePre`; every call gets a
//! fresh `Store` and instance (no state leaks between requests), an epoch deadline and a
//! memory cap. A plugin that traps, overruns its deadline or its memory fails that one call
//! with a [`PluginError`] naming it; the gateway answers 5xx and the next call is unaffected.

mod bindings;
pub mod builtin;
mod cache;
mod engine;
mod host;
mod policy;
mod token;

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The engine's limits are a configuration section (`[plugins]`).
pub use crate::config::EngineSettings;
pub use engine::PluginEngine;
pub use host::unix_now;
pub use policy::PolicyPlugin;
pub use token::TokenPlugin;

/// The HTTP request as a plugin sees it (WIT `http-request`).
#[derive(Clone, Debug, Default)]
pub struct RequestInfo {
    /// Upper-case method.
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// Raw query string without `?`.
    pub query: String,
    /// Lower-case names, in order, repeated headers repeated.
    pub headers: Vec<(String, String)>,
    /// Client address, e.g. `127.0.0.1:50312`.
    pub client_addr: String,
    /// The tenant the request belongs to.
    pub tenant: String,
}

/// What to stream (WIT `stream-request`); a token's contents.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamRequest {
    /// Media page or file URL for yt-dlp.
    pub url: String,
    /// yt-dlp format selector.
    pub format: String,
    /// `Content-Disposition` file name.
    pub filename: Option<String>,
    /// Unix seconds after which the request is void.
    pub expires_at: Option<u64>,
}

/// A plugin's refusal (WIT `denial`); `status` is always 4xx (the host maps others to 403).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denial {
    /// HTTP status, 400..=499.
    pub status: u16,
    /// Short reason for the client; never a secret.
    pub reason: String,
}

/// What the extraction found, for a media policy's review (WIT `media-info`, 0.2.0).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MediaInfo {
    /// yt-dlp's extractor, e.g. `Generic`.
    pub extractor: Option<String>,
    /// The media's title.
    pub title: Option<String>,
    /// Who published it.
    pub uploader: Option<String>,
    /// Seconds.
    pub duration: Option<f64>,
    /// A live stream.
    pub is_live: bool,
    /// The format(s) the selector chose.
    pub formats: Vec<ChosenFormat>,
}

/// One chosen format (WIT `chosen-format`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChosenFormat {
    /// yt-dlp's `format_id`.
    pub format_id: String,
    /// File extension.
    pub ext: Option<String>,
    /// Video codec (`none`: audio only).
    pub vcodec: Option<String>,
    /// Audio codec (`none`: video only).
    pub acodec: Option<String>,
    /// Bytes, exact or yt-dlp's estimate.
    pub size: Option<u64>,
}

/// A policy plugin's verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicyDecision {
    /// Serve it, with these values forced when set.
    Allow {
        /// Forced format selector.
        format: Option<String>,
        /// Forced file name.
        filename: Option<String>,
    },
    /// Refuse it.
    Deny(Denial),
}

/// Why a plugin could not be loaded or could not answer. Load errors happen at start-up;
/// call errors cost one request (a 5xx) and are logged with the plugin's name.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The wasmtime engine could not be set up (e.g. the pool could not be reserved).
    #[error("plugin engine: {message}")]
    Engine {
        /// wasmtime's error.
        message: String,
    },
    /// The bytes are not a valid component for this host.
    #[error("plugin `{plugin}`: cannot compile: {message}")]
    Compile {
        /// The plugin's name.
        plugin: String,
        /// wasmtime's error.
        message: String,
    },
    /// The component imports something the host does not provide (filesystem, sockets…)
    /// or does not export the world of its kind.
    #[error("plugin `{plugin}`: cannot link: {message}")]
    Link {
        /// The plugin's name.
        plugin: String,
        /// wasmtime's error.
        message: String,
    },
    /// A per-call instance could not be created.
    #[error("plugin `{plugin}`: cannot instantiate: {message}")]
    Instantiate {
        /// The plugin's name.
        plugin: String,
        /// wasmtime's error.
        message: String,
    },
    /// The plugin trapped (panic, `unreachable`, bad host call…).
    #[error("plugin `{plugin}` trapped: {message}")]
    Trap {
        /// The plugin's name.
        plugin: String,
        /// The trap and its wasm backtrace.
        message: String,
    },
    /// The plugin ran past its deadline and was stopped.
    #[error("plugin `{plugin}` exceeded its deadline")]
    Deadline {
        /// The plugin's name.
        plugin: String,
    },
    /// No instance became free for the call within `[plugins] queue_timeout_ms`.
    #[error("plugin `{plugin}`: no instance free for tenant `{tenant}` within {waited:?}")]
    Busy {
        /// The plugin's name.
        plugin: String,
        /// The tenant whose call waited.
        tenant: String,
        /// How long it waited.
        waited: Duration,
    },
    /// The plugin tried to use more memory than allowed and was stopped.
    #[error("plugin `{plugin}` exceeded its memory limit")]
    MemoryLimit {
        /// The plugin's name.
        plugin: String,
    },
}

impl PluginError {
    /// The plugin concerned, if any.
    pub fn plugin(&self) -> Option<&str> {
        match self {
            Self::Engine { .. } => None,
            Self::Compile { plugin, .. }
            | Self::Link { plugin, .. }
            | Self::Instantiate { plugin, .. }
            | Self::Trap { plugin, .. }
            | Self::Deadline { plugin }
            | Self::Busy { plugin, .. }
            | Self::MemoryLimit { plugin } => Some(plugin),
        }
    }
}
