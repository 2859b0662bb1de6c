//! Host-side bindings of the WIT worlds in `wit/`. The policy world reuses the token world's
//! shared interfaces (`types`, `config`, `log`, `clock`), so one `HostState` implementation
//! and one `Linker` serve both kinds of plugin.

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

pub use token::streamgate::plugin::{clock, config, log, types};
