//! What the end-to-end tests (`tests/`) and the bench (`bench/`) both need, written once:
//!
//! - [`procfs`]: processes as `/proc` shows them (the table, a subtree, RSS, PSS, CPU time,
//!   open descriptors);
//! - [`net`]: a free loopback port;
//! - [`serve`]: the `streamgate serve` command line and the log line that says where it
//!   listens.

#![deny(missing_docs)]

pub mod net;
pub mod procfs;
pub mod serve;
