//! Host-side bindings of the WIT worlds in `wit/` (0.1.0) and `wit/v0.2.0/`. The policy
//! world reuses the token world's shared interfaces (`types`, `config`, `log`, `clock`), so
//! one `HostState` implementation and one `Linker` serve both kinds of plugin. 0.2.0's
//! imports are other names on the wire (`…/config@0.2.0`) and are linked beside 0.1.0's;
//! its records are 0.1.0's, field for field, so the Rust types are shared.

/// The `token-plugin` world.
pub mod token {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "token-plugin",
        exports: { default: async },
    });
}

/// The `policy-plugin` world.
pub mod policy {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "policy-plugin",
        exports: { default: async },
        with: {
            "streamgate:plugin/types": crate::plugin::bindings::token::streamgate::plugin::types,
            "streamgate:plugin/config": crate::plugin::bindings::token::streamgate::plugin::config,
            "streamgate:plugin/log": crate::plugin::bindings::token::streamgate::plugin::log,
            "streamgate:plugin/clock": crate::plugin::bindings::token::streamgate::plugin::clock,
        },
    });
}

/// `streamgate:plugin@0.2.0`'s `media-policy-plugin` world. Its `policy` export is also
/// what a component of 0.2.0's `policy-plugin` world exports: `policy.rs` loads each
/// export by itself (`GuestIndices`), so this one binding serves both 0.2.0 worlds.
pub mod v2 {
    wasmtime::component::bindgen!({
        path: "../wit/v0.2.0",
        world: "media-policy-plugin",
        exports: { default: async },
        with: {
            "streamgate:plugin/types": crate::plugin::bindings::token::streamgate::plugin::types,
        },
    });
}

pub use token::streamgate::plugin::{clock, config, log, types};
