//! `test-misbehave`: for tests only. `open` misbehaves on request, so tests can prove a
//! bad plugin costs one request and never the gateway:
//! - `loop`: spins forever (the epoch deadline must stop it),
//! - `sleep`: sleeps a minute inside a host call (`wasi:clocks/monotonic-clock`
//!   `subscribe-duration`, then `wasi:io/poll`), where epochs never interrupt it: the
//!   host's wall-clock timeout must stop it,
//! - `trap`: hits `unreachable`,
//! - `alloc`: allocates without bound (the memory limit must stop it),
//! - `print`: writes 1 MiB to stdout and stderr, then behaves (the log cap must hold),
//! - `config:KEY`: behaves, with the config value of KEY as the filename,
//! - `ok`: a fixed stream request. Anything else: a 400 denial.

use std::hint::black_box;
use std::io::Write;

wit_bindgen::generate!({ path: "../../wit", world: "token-plugin" });

use exports::streamgate::plugin::token::Guest;
use streamgate::plugin::types::{Denial, HttpRequest, StreamRequest};
use streamgate::plugin::{clock, config, log};

fn ok(filename: Option<String>) -> StreamRequest {
    StreamRequest {
        url: "https://example.com/ok".to_string(),
        format: "best".to_string(),
        filename,
        expires_at: Some(clock::now() + 60),
    }
}

struct Component;

impl Guest for Component {
    fn open(_request: HttpRequest, token: String) -> Result<StreamRequest, Denial> {
        match token.as_str() {
            "loop" => {
                let mut n = 0u64;
                loop {
                    n = black_box(n.wrapping_add(1));
                }
            }
            "trap" => core::arch::wasm32::unreachable(),
            "sleep" => {
                // std's sleep on wasip2 is a monotonic-clock pollable, blocked on.
                std::thread::sleep(std::time::Duration::from_secs(60));
                Ok(ok(None))
            }
            "alloc" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(black_box(vec![1u8; 1 << 20]));
                }
            }
            "print" => {
                let chunk = vec![b'x'; 64 * 1024];
                for _ in 0..16 {
                    let _ = std::io::stdout().write_all(&chunk);
                    let _ = std::io::stderr().write_all(&chunk);
                }
                log::log(log::Level::Info, "test-misbehave printed 1 MiB");
                Ok(ok(None))
            }
            "ok" => Ok(ok(None)),
            other => match other.strip_prefix("config:") {
                Some(key) => Ok(ok(config::get(key))),
                None => Err(Denial {
                    status: 400,
                    reason: format!("unknown mode `{other}`"),
                }),
            },
        }
    }

    fn seal(_tenant: String, _request: StreamRequest) -> Result<String, String> {
        Err("test-misbehave cannot seal".to_string())
    }
}

export!(Component);
