//! streamgate: an HTTP gateway that opens signed links with a tenant's token plugin, checks
//! them with its policy plugin, and relays the media one sidecar job per request.

pub mod cli;
pub mod config;
pub mod error;
pub mod headers;
pub mod limits;
pub mod metrics;
pub mod plugin;
pub mod range;
pub mod relay;
pub mod reload;
pub mod resolve;
pub mod routes;
pub mod secrets;
pub mod server;
pub mod sidecar;
pub mod state;
pub mod tenant;
