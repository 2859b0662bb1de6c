//! The sidecar's egress rules at the protocol level (the gateway's end-to-end SSRF tests,
//! in a network namespace of their own, are `egress.rs`): a job's tenant rules, its
//! upstream proxy (HTTP CONNECT and SOCKS5, real ones written here), `max_filesize`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use streamgate_protocol::{EgressRules, Frame, StreamJob, kind};
use streamgate_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn stream(sc: &Sidecar, url: &str, egress: EgressRules, max: Option<u64>) -> Transcript {
    let mut client = Client::connect(sc.socket()).await.unwrap();
    let job = StreamJob {
        url: url.to_owned(),
        format: "b".into(),
        egress,
        max_filesize: max,
        ..Default::default()
    };
    client.send(Frame::Stream(job)).await.unwrap();
    client.collect(SLOW).await
}

fn fixture_sha() -> String {
    sha256_file(&fixtures().join("progressive.mp4")).unwrap()
}

#[tokio::test]
async fn strict_rules_refuse_loopback_before_any_request() {
    let sc = Sidecar::start(SidecarOptions::default()).await;
    let s = FixtureServer::start(fixtures());
    let url = s.url("progressive.mp4");
    let t = stream(&sc, &url, EgressRules::default(), None).await;
    assert_eq!(t.error_code(), "egress_denied", "{t:?}");
    assert!(t.data.is_empty());
    // Allowed blocks open exactly what they name; denied blocks win.
    let intranet = EgressRules {
        allow_cidrs: vec!["127.0.0.0/8".into()],
        any_port: true,
        ..Default::default()
    };
    let t = stream(&sc, &url, intranet.clone(), None).await;
    assert_eq!(sha256_hex(&t.data), fixture_sha(), "{t:?}\n{}", sc.logs());
    let denied = EgressRules {
        deny_cidrs: vec!["127.0.0.1/32".into()],
        ..intranet
    };
    let hits = s.total_hits();
    assert_eq!(
        stream(&sc, &url, denied, None).await.error_code(),
        "egress_denied"
    );
    // A port not allowed is refused too.
    let ports = EgressRules {
        allow_private: true,
        ..Default::default()
    };
    assert_eq!(
        stream(&sc, &url, ports, None).await.error_code(),
        "egress_denied"
    );
    assert_eq!(s.total_hits(), hits, "refused jobs sent no request");
}

#[tokio::test]
async fn max_filesize_ends_a_larger_transfer_with_too_large() {
    let sc = Sidecar::start(SidecarOptions::default()).await;
    let url = server().url("progressive.mp4");
    let size = std::fs::metadata(fixtures().join("progressive.mp4"))
        .unwrap()
        .len();
    // A direct file's size is not in its extraction: the limit ends the transfer when the
    // count passes it, never sending more than the limit.
    let t = stream(&sc, &url, loopback_egress(), Some(size / 2)).await;
    assert_eq!(
        t.error.as_ref().map(|e| e.code.as_str()),
        Some("too_large"),
        "{:?}",
        t.kinds
    );
    assert!(
        t.data.len() as u64 <= size / 2,
        "{} bytes sent",
        t.data.len()
    );
    let t = stream(&sc, &url, loopback_egress(), Some(size)).await;
    assert_eq!(sha256_hex(&t.data), fixture_sha());
}

/// A real forward proxy of the given kind on loopback, counting the tunnels it opened.
struct UpstreamProxy {
    addr: SocketAddr,
    tunnels: Arc<AtomicUsize>,
}

impl UpstreamProxy {
    async fn start(socks: bool) -> UpstreamProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tunnels = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&tunnels);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let count = Arc::clone(&count);
                tokio::spawn(async move {
                    let opened = match socks {
                        true => socks5_accept(client).await,
                        false => connect_accept(client).await,
                    };
                    if let Some((mut client, mut target)) = opened {
                        count.fetch_add(1, Ordering::SeqCst);
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut target).await;
                    }
                });
            }
        });
        UpstreamProxy { addr, tunnels }
    }
}

/// `CONNECT ip:port` with the credentials `u:p`.
async fn connect_accept(mut client: TcpStream) -> Option<(TcpStream, TcpStream)> {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8];
        client.read_exact(&mut byte).await.ok()?;
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).ok()?;
    let target = head.strip_prefix("CONNECT ")?.split(' ').next()?.to_owned();
    // base64("u:p")
    if !head.contains("Proxy-Authorization: Basic dTpw\r\n") {
        client.write_all(b"HTTP/1.1 407 No\r\n\r\n").await.ok()?;
        return None;
    }
    let target = TcpStream::connect(target).await.ok()?;
    client.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.ok()?;
    Some((client, target))
}

/// SOCKS5 without authentication, CONNECT to an IPv4 address.
async fn socks5_accept(mut client: TcpStream) -> Option<(TcpStream, TcpStream)> {
    let mut greeting = [0u8; 2];
    client.read_exact(&mut greeting).await.ok()?;
    let mut methods = vec![0u8; greeting[1] as usize];
    client.read_exact(&mut methods).await.ok()?;
    client.write_all(&[5, 0]).await.ok()?;
    let mut req = [0u8; 10];
    client.read_exact(&mut req).await.ok()?;
    if req[..4] != [5, 1, 0, 1] {
        return None;
    }
    let ip = std::net::Ipv4Addr::new(req[4], req[5], req[6], req[7]);
    let port = u16::from_be_bytes([req[8], req[9]]);
    let target = TcpStream::connect((ip, port)).await.ok()?;
    client
        .write_all(&[5, 0, 0, 1, 0, 0, 0, 0, 0, 0])
        .await
        .ok()?;
    Some((client, target))
}

#[tokio::test]
async fn connections_chain_through_the_tenants_upstream_proxy() {
    let sc = Sidecar::start(SidecarOptions::default()).await;
    let url = server().url("progressive.mp4");
    for socks in [false, true] {
        let proxy = UpstreamProxy::start(socks).await;
        let via = match socks {
            true => format!("socks5://{}", proxy.addr),
            false => format!("http://u:p@{}", proxy.addr),
        };
        let egress = EgressRules {
            proxy: Some(via.clone()),
            ..loopback_egress()
        };
        let t = stream(&sc, &url, egress.clone(), None).await;
        assert_eq!(
            t.kinds.last(),
            Some(&kind::END),
            "{via}: {t:?}\n{}",
            sc.logs()
        );
        assert_eq!(sha256_hex(&t.data), fixture_sha(), "{via}");
        assert!(
            proxy.tunnels.load(Ordering::SeqCst) >= 1,
            "{via}: no tunnel"
        );
        // The egress decides before the upstream proxy is asked.
        let before = proxy.tunnels.load(Ordering::SeqCst);
        let strict = EgressRules {
            proxy: Some(via.clone()),
            ..Default::default()
        };
        assert_eq!(
            stream(&sc, &url, strict, None).await.error_code(),
            "egress_denied"
        );
        assert_eq!(proxy.tunnels.load(Ordering::SeqCst), before, "{via}");
    }
}
