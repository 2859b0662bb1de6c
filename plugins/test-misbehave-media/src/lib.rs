//! `test-misbehave-media`: for tests only. A 0.2.0 media policy whose `check` allows
//! everything and whose `review` misbehaves when the stream's URL asks, so tests can prove a
//! bad review costs one request and never the gateway:
//! - a URL containing `review=loop` spins forever (the epoch deadline must stop it),
//! - `review=trap` hits `unreachable`,
//! - `review=deny` denies with 451; anything else is allowed.

use std::hint::black_box;

wit_bindgen::generate!({ path: "../../wit/v0.2.0", world: "media-policy-plugin" });

use exports::streamgate::plugin::media_policy::{self, MediaInfo};
use exports::streamgate::plugin::policy::{self, Changes, Decision};
use streamgate::plugin::types::{Denial, HttpRequest, StreamRequest};

struct Component;

impl policy::Guest for Component {
    fn check(_request: HttpRequest, _wanted: StreamRequest) -> Decision {
        Decision::Allow(Changes {
            format: None,
            filename: None,
        })
    }
}

impl media_policy::Guest for Component {
    fn review(
        _request: HttpRequest,
        wanted: StreamRequest,
        _media: MediaInfo,
    ) -> Result<(), Denial> {
        if wanted.url.contains("review=loop") {
            let mut n = 0u64;
            loop {
                n = black_box(n.wrapping_add(1));
            }
        }
        if wanted.url.contains("review=trap") {
            core::arch::wasm32::unreachable();
        }
        if wanted.url.contains("review=deny") {
            return Err(Denial {
                status: 451,
                reason: "test-misbehave-media denies".into(),
            });
        }
        Ok(())
    }
}

export!(Component);
