//! The web page at `/` (every tenant's): paste a URL, `POST /v1/resolve`, see the formats,
//! play one or download it. No framework and no build step: the files beside this module
//! are embedded as they are and served with a strict Content-Security-Policy, so the page
//! runs only its own script, whatever a title or a thumbnail URL contains.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use bytes::Bytes;
use warp::host::Authority;
use warp::http::{HeaderMap, HeaderValue, StatusCode, header};
use warp::{Filter, Rejection};

use crate::app::App;
use crate::error::{GatewayError, Problem};
use crate::request::host;
use crate::tenant::Tenant;

/// What the page may load. Script and style only from this origin (no inline code,
/// Trusted Types for what is left of DOM injection sinks); media, API calls and the icon
/// from this origin too. Thumbnails are the one exception: they live on the media site's
/// own servers, so `img-src` allows any `https:` origin (never `http:`, never `data:`).
/// The browser fetches them directly, with no referrer (`Referrer-Policy`), so the media
/// site learns the viewer's address, as it would when the viewer opens the page itself.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' https:; media-src 'self'; connect-src 'self'; \
     form-action 'none'; base-uri 'none'; frame-ancestors 'none'; \
     require-trusted-types-for 'script'";

/// The page; `{{key_header}}` and `{{key_required}}` are filled per tenant.
const INDEX: &str = include_str!("index.html");

/// Where the page sends the API key when the tenant's policy settings do not name a
/// header: `policy-allowlist`'s own default.
const DEFAULT_KEY_HEADER: &str = "x-api-key";

/// The page's other files, at `/web/<name>`.
const ASSETS: [(&str, &str, &str); 3] = [
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("app.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("style.css"),
    ),
    ("icon.svg", "image/svg+xml", include_str!("icon.svg")),
];

/// `GET|HEAD /` (for the request's tenant) and `GET|HEAD /web/<file>`.
pub(crate) fn routes(
    app: Arc<App>,
) -> impl Filter<Extract = (warp::reply::Response,), Error = Rejection> + Clone {
    let get_or_head = warp::get().or(warp::head()).unify();
    let page = warp::path::end()
        .and(get_or_head.clone())
        .and(host())
        .and(warp::header::headers_cloned())
        .and_then(move |host: Option<Authority>, headers: HeaderMap| {
            let app = app.clone();
            async move {
                let tenants = app.tenants.load();
                let name = host.as_ref().map(Authority::host);
                let Some(tenant) = tenants.for_host(name) else {
                    let error = GatewayError::UnknownHost(name.unwrap_or("").into());
                    return Err(warp::reject::custom(Problem {
                        error,
                        request_id: None,
                    }));
                };
                let page = render(tenant);
                Ok(respond(&headers, "text/html; charset=utf-8", page.into()))
            }
        });
    let asset = warp::path!("web" / String)
        .and(get_or_head)
        .and(warp::header::headers_cloned())
        .and_then(|name: String, headers: HeaderMap| async move {
            match ASSETS.iter().find(|(n, ..)| *n == name) {
                Some((_, content_type, body)) => Ok(respond(
                    &headers,
                    content_type,
                    Bytes::from_static(body.as_bytes()),
                )),
                None => Err(warp::reject::not_found()),
            }
        });
    page.or(asset).unify()
}

/// The page for `tenant`: whether its resolve asks for an API key, and in which header.
fn render(tenant: &Tenant) -> String {
    let (header, required) = key_field(tenant);
    INDEX
        .replace("{{key_header}}", &header)
        .replace("{{key_required}}", if required { "true" } else { "false" })
}

/// Read the way `policy-allowlist` reads its settings: `api_key`/`api_keys` set means
/// every request (resolve included) needs a key, sent in `api_key_header`. Another policy
/// that takes keys can use the same setting names; the page also offers the field after a
/// resolve was refused with 401. A header name that is no header name falls back to the
/// default (the policy would never see it either).
fn key_field(tenant: &Tenant) -> (String, bool) {
    let setting = |key| tenant.policy.setting(key).filter(|v| !v.trim().is_empty());
    let required = setting("api_key").is_some() || setting("api_keys").is_some();
    let header = setting("api_key_header")
        .and_then(|h| header::HeaderName::try_from(h.trim()).ok())
        // A header name is a token: `&` is the one character an attribute needs escaped.
        .map_or(DEFAULT_KEY_HEADER.to_owned(), |h| {
            h.as_str().replace('&', "&amp;")
        });
    (header, required)
}

/// 200 with `body`, or 304 when `If-None-Match` names its ETag; the same protective
/// headers either way. HEAD: hyper sends the head only.
fn respond(request: &HeaderMap, content_type: &str, body: Bytes) -> warp::reply::Response {
    let etag = etag(&body);
    let fresh = request
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().trim_start_matches("W/"))
        .any(|t| t == etag || t == "*");
    let mut resp = match fresh {
        true => {
            let mut r = warp::reply::Response::new(Default::default());
            *r.status_mut() = StatusCode::NOT_MODIFIED;
            r
        }
        false => warp::reply::Response::new(body.into()),
    };
    let h = resp.headers_mut();
    // RFC 9110 §15.4.5: a 304 carries the validators, not the representation's metadata.
    if !fresh {
        let content_type = HeaderValue::from_str(content_type).expect("static");
        h.insert(header::CONTENT_TYPE, content_type);
    }
    h.insert(header::ETAG, HeaderValue::from_str(&etag).expect("hex"));
    // Revalidated on every use: a new binary (or tenant setting) shows at once.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    let csp = HeaderValue::from_static(CONTENT_SECURITY_POLICY);
    h.insert(header::CONTENT_SECURITY_POLICY, csp);
    let nosniff = HeaderValue::from_static("nosniff");
    h.insert(header::X_CONTENT_TYPE_OPTIONS, nosniff);
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}

/// A strong validator: a hash of the exact bytes served (stable for one binary, which is
/// all a validator needs).
fn etag(body: &[u8]) -> String {
    let mut hasher = DefaultHasher::new();
    body.hash(&mut hasher);
    format!("\"{:016x}\"", hasher.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_etag_is_answered_with_304() {
        let body = b"<p>x</p>";
        let mut req = HeaderMap::new();
        let first = respond(&req, "text/html", Bytes::from_static(body));
        assert_eq!(first.status(), StatusCode::OK);
        let tag = first.headers()[header::ETAG].clone();
        req.insert(header::IF_NONE_MATCH, tag.clone());
        let again = respond(&req, "text/html", Bytes::from_static(body));
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(again.headers()[header::ETAG], tag);
        assert!(!again.headers().contains_key(header::CONTENT_TYPE));
        assert_eq!(first.headers()[header::CONTENT_TYPE], "text/html");
        let changed = respond(&req, "text/html", Bytes::from_static(b"<p>y</p>"));
        assert_eq!(changed.status(), StatusCode::OK);
    }

    #[test]
    fn every_asset_is_in_the_page_or_the_script() {
        let script = ASSETS[0].2;
        for (name, ..) in ASSETS {
            let path = format!("/web/{name}");
            assert!(
                INDEX.contains(&path) || script.contains(&path),
                "{path} unused"
            );
        }
    }
}
