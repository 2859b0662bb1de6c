//! The bodies of streamgate's fuzz targets, one module per parser, in a normal library:
//! the cargo-fuzz harnesses (`fuzz/harness`, coverage-guided, scripts/fuzz) and the replay
//! test (`tests/replay.rs`, the release build scripts/test already made) run the same code.
//!
//! Each target takes arbitrary bytes and calls the owning crate's real public function. It
//! must never panic; the property it checks is an assertion, so a violation is a crash the
//! fuzzer keeps. Each returns whether the parser accepted the input: a replay can then tell
//! that its corpus still reaches the accepting paths, not only the refusals.

mod canonical;
#[cfg(feature = "gateway")]
mod config;
mod frame;
#[cfg(feature = "sidecar")]
mod hls;
#[cfg(feature = "gateway")]
mod range;
#[cfg(feature = "gateway")]
mod token;

pub use canonical::url;
#[cfg(feature = "gateway")]
pub use config::config;
pub use frame::decode;
#[cfg(feature = "sidecar")]
pub use hls::hls;
#[cfg(feature = "gateway")]
pub use range::range;
#[cfg(feature = "gateway")]
pub use token::token;
