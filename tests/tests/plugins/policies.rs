//! `policy-allowlist` (hosts, addresses in every spelling, schemes, API keys) and the
//! example `auth-hmac` (signed links, bearer tokens).

use hmac::{Hmac, Mac};
use sha2::Sha256;
use streamgate::plugin::{PolicyDecision, PolicyPlugin, RequestInfo, builtin, unix_now};

use super::{config, engine, request, stream};

fn allowlist(pairs: &[(&str, &str)]) -> PolicyPlugin {
    engine()
        .load_policy("policy-allowlist", builtin::POLICY_ALLOWLIST, config(pairs))
        .expect("load policy-allowlist")
}

async fn check(plugin: &PolicyPlugin, req: &RequestInfo, url: &str) -> PolicyDecision {
    plugin.check(req, &stream(url)).await.expect("plugin ran")
}

/// The status of a denial, or 200 for an allow.
async fn status(plugin: &PolicyPlugin, url: &str) -> u16 {
    match check(plugin, &request("acme"), url).await {
        PolicyDecision::Allow { .. } => 200,
        PolicyDecision::Deny(denial) => denial.status,
    }
}

#[tokio::test]
async fn allowlist_matches_exact_suffix_and_any_hosts() {
    let _quiet = super::shared().await;
    let plugin = allowlist(&[("hosts", "media.example.com, *.cdn.example.net")]);
    for (url, want) in [
        ("https://media.example.com/v/1", 200),
        ("http://MEDIA.example.com./v/1", 200),
        ("https://a.cdn.example.net/x", 200),
        ("https://a.b.cdn.example.net/x", 200),
        ("https://cdn.example.net/x", 403), // `*.suffix` is subdomains only
        ("https://evilcdn.example.net/x", 403), // not a label boundary
        ("https://media.example.com.evil.io/", 403),
        ("https://other.example.com/", 403),
        ("https://user@media.example.com/", 200),
        ("https://media.example.com@evil.io/", 403), // userinfo trick: host is evil.io
    ] {
        assert_eq!(status(&plugin, url).await, want, "{url}");
    }
    let any = allowlist(&[("hosts", "*")]);
    assert_eq!(status(&any, "https://anything.example.org/x").await, 200);
    let none = allowlist(&[]);
    assert_eq!(status(&none, "https://media.example.com/").await, 403);
}

#[tokio::test]
async fn allowlist_allows_only_http_and_https() {
    let _quiet = super::shared().await;
    let plugin = allowlist(&[("hosts", "*")]);
    for url in [
        "ftp://media.example.com/x",
        "file:///etc/passwd",
        "javascript:alert(1)",
        "ytsearch:cats",
        "not a url",
        "",
        "https://",
    ] {
        assert_eq!(status(&plugin, url).await, 400, "{url:?}");
    }
}

/// Every spelling of an internal address from the issue, plus the usual ranges.
const INTERNAL: &[&str] = &[
    "http://127.0.0.1/",
    "http://127.8.9.10:8080/",
    "http://10.0.0.1/",
    "http://172.16.5.4/",
    "http://172.31.255.255/",
    "http://192.168.1.1/",
    "http://169.254.169.254/latest/meta-data/",
    "http://0.0.0.0/",
    "http://100.64.0.1/",
    "http://224.0.0.1/",
    "http://255.255.255.255/",
    "http://[::1]/",
    "http://[::]/",
    "http://[fe80::1]/",
    "http://[fc00::1]/",
    "http://[fd12:3456::1]/",
    "http://[::ffff:127.0.0.1]/",
    "http://[::ffff:7f00:1]/",
    "http://[::ffff:10.1.2.3]/",
    "http://[::ffff:169.254.169.254]/",
    "http://[::127.0.0.1]/",
    "http://[64:ff9b::7f00:1]/",
    "http://[2002:7f00:1::]/",
    "http://2130706433/",
    "http://0x7f.1/",
    "http://0x7f000001/",
    "http://0177.0.0.1/",
    "http://0177.1/",
    "http://127.1/",
    "http://0/",
    "http://localhost/",
    "http://LOCALHOST./",
    "http://api.localhost/",
];

#[tokio::test]
async fn allowlist_denies_internal_addresses_in_every_form() {
    let _quiet = super::shared().await;
    let plugin = allowlist(&[("hosts", "*")]);
    for url in INTERNAL {
        assert_eq!(status(&plugin, url).await, 403, "{url}");
    }
    for url in [
        "http://93.184.216.34/",
        "http://8.8.8.8/",
        "http://[2606:4700::1111]/",
        "http://[::ffff:8.8.8.8]/",
        "http://172.32.0.1/",
        "http://192.169.0.1/",
        "http://1.1/", // 1.0.0.1, public
    ] {
        assert_eq!(status(&plugin, url).await, 200, "{url}");
    }
}

#[tokio::test]
async fn allowlist_lets_a_tenant_opt_into_private_addresses() {
    let _quiet = super::shared().await;
    let plugin = allowlist(&[("hosts", "*"), ("allow_private", "true")]);
    for url in INTERNAL {
        assert_eq!(status(&plugin, url).await, 200, "{url}");
    }
    // Opting in does not widen the host list.
    let listed = allowlist(&[("hosts", "127.0.0.1"), ("allow_private", "true")]);
    assert_eq!(status(&listed, "http://127.0.0.1:9000/a.mp4").await, 200);
    assert_eq!(status(&listed, "http://2130706433/").await, 200);
    assert_eq!(status(&listed, "http://10.0.0.1/").await, 403);
}

#[tokio::test]
async fn allowlist_api_key_and_forced_changes() {
    let _quiet = super::shared().await;
    let plugin = allowlist(&[
        ("hosts", "*"),
        ("api_keys", "k-one, k-two"),
        ("api_key_header", "X-Tenant-Key"),
        ("force_format", "18"),
    ]);
    let url = "https://media.example.com/v";
    let with_key = |key: &str| {
        let mut req = request("acme");
        req.headers.push(("x-tenant-key".into(), key.into()));
        req
    };
    let denied = |d: PolicyDecision| match d {
        PolicyDecision::Deny(denial) => denial.status,
        allow => panic!("expected a denial, got {allow:?}"),
    };
    assert_eq!(denied(check(&plugin, &request("acme"), url).await), 401);
    assert_eq!(denied(check(&plugin, &with_key("k-three"), url).await), 401);
    assert_eq!(denied(check(&plugin, &with_key("K-ONE"), url).await), 401);
    assert_eq!(denied(check(&plugin, &with_key("k-on"), url).await), 401);
    for key in ["k-one", "k-two"] {
        assert_eq!(
            check(&plugin, &with_key(key), url).await,
            PolicyDecision::Allow {
                format: Some("18".into()),
                filename: None
            }
        );
    }
}

/// A resolve request (`POST /v1/resolve`) from `client_addr`, with an optional API key.
fn resolve_from(client_addr: &str, key: Option<&str>) -> RequestInfo {
    let mut req = request("acme");
    req.method = "POST".into();
    req.path = "/v1/resolve".into();
    req.client_addr = client_addr.into();
    if let Some(key) = key {
        req.headers.push(("x-api-key".into(), key.into()));
    }
    req
}

async fn verdict(plugin: &PolicyPlugin, req: &RequestInfo) -> (u16, String) {
    match check(plugin, req, "https://media.example.com/v").await {
        PolicyDecision::Allow { .. } => (200, String::new()),
        PolicyDecision::Deny(denial) => (denial.status, denial.reason),
    }
}

#[tokio::test]
async fn allowlist_resolve_needs_credentials_by_default() {
    let _quiet = super::shared().await;
    let plugin = allowlist(&[("hosts", "*")]);
    for client in ["127.0.0.1:40000", "198.51.100.2:5000", "[::1]:4000", ""] {
        let got = verdict(&plugin, &resolve_from(client, None)).await;
        assert_eq!(got, (401, "resolve needs credentials".into()), "{client}");
    }
    // Any POST is a resolve, whatever spelling of the path reached it.
    let mut odd = resolve_from("198.51.100.2:5000", None);
    odd.path = "/v1/resolve/".into();
    assert_eq!(verdict(&plugin, &odd).await.0, 401);
    odd.method = "GET".into();
    assert_eq!(verdict(&plugin, &odd).await.0, 401);
    // Streams stay anonymous.
    let stream = request("acme");
    assert_eq!(verdict(&plugin, &stream).await.0, 200);
}

#[tokio::test]
async fn allowlist_resolve_opens_to_a_key_public_resolve_or_resolve_clients() {
    let _quiet = super::shared().await;
    let keyed = allowlist(&[("hosts", "*"), ("api_key", "k")]);
    let far = "198.51.100.2:5000";
    assert_eq!(verdict(&keyed, &resolve_from(far, Some("k"))).await.0, 200);
    assert_eq!(verdict(&keyed, &resolve_from(far, Some("x"))).await.0, 401);
    assert_eq!(verdict(&keyed, &resolve_from(far, None)).await.0, 401);

    let public = allowlist(&[("hosts", "*"), ("public_resolve", "true")]);
    assert_eq!(verdict(&public, &resolve_from(far, None)).await.0, 200);
    let not_public = allowlist(&[("hosts", "*"), ("public_resolve", "yes")]);
    assert_eq!(verdict(&not_public, &resolve_from(far, None)).await.0, 401);

    // The embedded default's blocks, an intranet block, and one that does not parse.
    let blocks = "127.0.0.0/8, ::1/128, 10.20.0.0/16, not-a-block";
    let clients = allowlist(&[("hosts", "*"), ("resolve_clients", blocks)]);
    for (client, want) in [
        ("127.0.0.1:40000", 200),
        ("127.9.8.7:1", 200),
        ("[::1]:4000", 200),
        ("[::ffff:127.0.0.1]:4000", 200),
        ("10.20.3.4:80", 200),
        ("10.21.0.1:80", 401),
        ("198.51.100.2:5000", 401),
        ("[2001:db8::1]:443", 401),
        ("[::2]:4000", 401),
        ("", 401),
        ("garbage", 401),
    ] {
        let got = verdict(&clients, &resolve_from(client, None)).await.0;
        assert_eq!(got, want, "{client}");
    }
    // A key, when configured, is the only way in: the client's address does not replace it.
    let both = allowlist(&[
        ("hosts", "*"),
        ("api_key", "k"),
        ("resolve_clients", "127.0.0.0/8"),
    ]);
    let local = "127.0.0.1:40000";
    assert_eq!(verdict(&both, &resolve_from(local, None)).await.0, 401);
    // Credentials do not lift the URL checks.
    let req = resolve_from(local, None);
    let inner = check(&clients, &req, "http://169.254.169.254/latest/meta-data/").await;
    assert!(matches!(inner, PolicyDecision::Deny(d) if d.status == 403));
}

fn auth_hmac(pairs: &[(&str, &str)]) -> PolicyPlugin {
    engine()
        .load_policy("auth-hmac", builtin::AUTH_HMAC, config(pairs))
        .expect("load auth-hmac")
}

/// Signs like the README says: hex HMAC-SHA256 over `path?query-without-sig`.
fn signed(path: &str, query: &str, secret: &str) -> RequestInfo {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{path}?{query}").as_bytes());
    let sig = hex::encode(mac.finalize().into_bytes());
    let mut req = request("acme");
    req.path = path.into();
    req.query = format!("{query}&sig={sig}");
    req
}

#[tokio::test]
async fn auth_hmac_checks_signed_links_and_bearer_tokens() {
    let _quiet = super::shared().await;
    let plugin = auth_hmac(&[("secret", "s3cret"), ("bearer_tokens", "tok-1,tok-2")]);
    let url = "https://media.example.com/v";
    let verdict = |d: PolicyDecision| match d {
        PolicyDecision::Allow { .. } => 200,
        PolicyDecision::Deny(denial) => denial.status,
    };
    let exp = unix_now() + 300;
    let query = format!("url=https%3A%2F%2Fmedia.example.com%2Fv&expires={exp}");
    let good = signed("/stream", &query, "s3cret");
    assert_eq!(
        verdict(plugin.check(&good, &stream(url)).await.unwrap()),
        200
    );

    let mut tampered = good.clone();
    tampered.query = tampered
        .query
        .replace("media.example.com", "evil.example.com");
    assert_eq!(
        verdict(plugin.check(&tampered, &stream(url)).await.unwrap()),
        403
    );
    let mut other_path = good.clone();
    other_path.path = "/info".into();
    assert_eq!(
        verdict(plugin.check(&other_path, &stream(url)).await.unwrap()),
        403
    );
    let wrong_secret = signed("/stream", &query, "guess");
    assert_eq!(
        verdict(plugin.check(&wrong_secret, &stream(url)).await.unwrap()),
        403
    );
    let expired = signed("/stream", &format!("expires={}", unix_now() - 1), "s3cret");
    assert_eq!(
        verdict(plugin.check(&expired, &stream(url)).await.unwrap()),
        403
    );
    assert_eq!(
        verdict(plugin.check(&request("acme"), &stream(url)).await.unwrap()),
        401
    );

    let bearer = |token: &str| {
        let mut req = request("acme");
        req.headers
            .push(("authorization".into(), format!("Bearer {token}")));
        req
    };
    assert_eq!(
        verdict(plugin.check(&bearer("tok-2"), &stream(url)).await.unwrap()),
        200
    );
    assert_eq!(
        verdict(plugin.check(&bearer("tok-3"), &stream(url)).await.unwrap()),
        401
    );
}
