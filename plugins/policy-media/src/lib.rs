//! `policy-media`: a media policy (`streamgate:plugin@0.2.0`, world `media-policy-plugin`).
//! `check` lets every stream through, and a resolve (`POST /v1/resolve`, which makes the
//! sidecar fetch any URL it is given) only with `public_resolve = "true"`, else 401, as
//! `policy-allowlist` does; `review` judges the media the extraction found, before any
//! media byte moves. Config (every key optional):
//! - `deny_live = "true"`: refuse live streams;
//! - `max_duration_secs = "7200"`: refuse media longer than this;
//! - `max_size_bytes = "2000000000"`: refuse media whose chosen formats add up to more
//!   (yt-dlp's exact or approximate sizes).
//!
//! Unknown facts pass: a direct file link has no duration, and most HLS no size (the
//! tenant's `max_filesize` still ends any stream at that many bytes). A value that is not a
//! number is a configuration error, and every review then fails (a 500 naming the plugin).

wit_bindgen::generate!({ path: "../../wit/v0.2.0", world: "media-policy-plugin" });

use exports::streamgate::plugin::media_policy::{self, MediaInfo};
use exports::streamgate::plugin::policy::{self, Changes, Decision};
use streamgate::plugin::config;
use streamgate::plugin::types::{Denial, HttpRequest, StreamRequest};

/// A number from the config, or none when unset.
fn limit<T: std::str::FromStr>(key: &str) -> Option<T> {
    let value = config::get(key)?;
    match value.trim().parse() {
        Ok(n) => Some(n),
        Err(_) => panic!("policy-media: `{key}` is not a number: {value:?}"),
    }
}

fn deny(reason: String) -> Result<(), Denial> {
    Err(Denial {
        status: 403,
        reason,
    })
}

struct Component;

impl policy::Guest for Component {
    fn check(request: HttpRequest, _wanted: StreamRequest) -> Decision {
        let resolve =
            request.method == "POST" || request.path.trim_end_matches('/') == "/v1/resolve";
        if resolve && config::get("public_resolve").as_deref() != Some("true") {
            return Decision::Deny(Denial {
                status: 401,
                reason: "resolve needs credentials".into(),
            });
        }
        Decision::Allow(Changes {
            format: None,
            filename: None,
        })
    }
}

impl media_policy::Guest for Component {
    fn review(
        _request: HttpRequest,
        _wanted: StreamRequest,
        media: MediaInfo,
    ) -> Result<(), Denial> {
        if media.is_live && config::get("deny_live").as_deref() == Some("true") {
            return deny("live streams are not served".into());
        }
        if let (Some(max), Some(duration)) = (limit::<f64>("max_duration_secs"), media.duration)
            && duration > max
        {
            return deny(format!(
                "the media lasts {duration:.0} s, more than {max:.0} s"
            ));
        }
        let sizes: Option<Vec<u64>> = media.formats.iter().map(|f| f.size).collect();
        let size = sizes
            .filter(|s| !s.is_empty())
            .map(|s| s.iter().sum::<u64>());
        if let (Some(max), Some(size)) = (limit::<u64>("max_size_bytes"), size)
            && size > max
        {
            return deny(format!("the media has {size} bytes, more than {max}"));
        }
        Ok(())
    }
}

export!(Component);
