//! `url`: the one URL canonicalisation (`streamgate_protocol::input::canonical_url`), which
//! the gateway applies to every client URL and the sidecar checks again on every job.

use streamgate_protocol::input::canonical_url;
use url::Url;

/// `input` as a URL: refused, or a canonical form that is a fixed point (the sidecar refuses
/// a job whose URL is not already canonical) and that re-parses to itself, without fragment.
pub fn url(input: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(input) else {
        return false;
    };
    let Ok(canonical) = canonical_url(text) else {
        return false;
    };
    assert_eq!(
        canonical_url(&canonical).as_deref(),
        Ok(canonical.as_str()),
        "the canonical form of {text:?} is not a fixed point"
    );
    let parsed = Url::parse(&canonical).expect("a canonical URL parses");
    assert_eq!(parsed.as_str(), canonical, "re-parsed differently");
    assert!(matches!(parsed.scheme(), "http" | "https"));
    assert!(parsed.fragment().is_none() && parsed.username().is_empty());
    true
}
