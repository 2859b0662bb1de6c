//! streamgate: an HTTP gateway that opens signed links with a tenant's token plugin, checks
//! them with its policy plugin, and relays the media one sidecar job per request.
//!
//! One stream request, in order: [`server`] (the connection, the route table) → `stream.rs`
//! (the handler) → [`request`] (tenant, authorize) → [`sidecar`] (the job) → [`body`] (the
//! relay).
//! docs/architecture.md has the module map.

#![deny(missing_docs)]

pub mod app;
pub mod body;
pub mod cli;
pub mod config;
pub mod error;
pub mod headers;
pub mod limits;
pub mod metrics;
pub mod plugin;
pub mod range;
pub mod request;
mod resolve;
pub mod server;
pub mod sidecar;
pub mod state;
mod stream;
pub mod tenant;
mod web;
