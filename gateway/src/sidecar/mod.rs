//! The sidecar, seen from the gateway: a [`client`] that opens one connection per job (the
//! connection is the job's lifetime, so dropping it cancels) with its own error type, and a
//! [`supervisor`] that runs the sidecar process and restarts it when it dies. Neither knows
//! anything of HTTP: `error.rs` turns a [`SidecarError`] into a status.

mod client;
mod supervisor;

pub use client::{CHUNK, JobConnection, Reviewing, SidecarClient, SidecarError, Started};
pub use supervisor::{Supervisor, SupervisorSettings};
