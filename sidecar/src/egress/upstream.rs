//! A tenant's own outbound proxy (corporate or residential), chained after the egress check:
//! the proxy is asked for the address the egress checked, never for a name it would resolve
//! again. `http://[user:pass@]host:port` (CONNECT) or `socks5://[user:pass@]host:port`.

use std::net::SocketAddr;

use base64::Engine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use url::Url;

use super::EgressError;
use super::proxy::read_head;

/// Largest response head accepted from an upstream HTTP proxy.
const MAX_HEAD: usize = 16 * 1024;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Kind {
    Http,
    Socks5,
}

/// A parsed upstream proxy.
#[derive(Clone, Debug)]
pub struct Upstream {
    kind: Kind,
    host: String,
    port: u16,
    user: Option<(String, String)>,
}

impl Upstream {
    /// Parses the tenant's `proxy` setting.
    pub fn parse(text: &str) -> Result<Upstream, String> {
        let url = Url::parse(text).map_err(|e| format!("proxy URL: {e}"))?;
        let kind = match url.scheme() {
            "http" => Kind::Http,
            "socks5" => Kind::Socks5,
            other => return Err(format!("proxy scheme {other:?}: only http and socks5")),
        };
        let host = url.host_str().ok_or("proxy URL has no host")?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = url.port().ok_or("proxy URL has no port")?;
        let decode =
            |s: &str| percent_decode(s).ok_or_else(|| "proxy credentials are not UTF-8".to_owned());
        let user = match (url.username(), url.password()) {
            ("", None) => None,
            (u, p) => Some((decode(u)?, decode(p.unwrap_or(""))?)),
        };
        Ok(Upstream {
            kind,
            host,
            port,
            user,
        })
    }

    /// A tunnel to `target` through the proxy.
    pub async fn connect(&self, target: SocketAddr) -> Result<TcpStream, EgressError> {
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            EgressError::Upstream(format!("{}:{}: {what}: {e}", self.host, self.port))
        };
        let mut stream = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| fail("connect", &e))?;
        match self.kind {
            Kind::Http => self.http_connect(&mut stream, target).await,
            Kind::Socks5 => self.socks5_connect(&mut stream, target).await,
        }
        .map_err(|e| fail("handshake", &e))?;
        Ok(stream)
    }

    async fn http_connect(
        &self,
        stream: &mut TcpStream,
        target: SocketAddr,
    ) -> std::io::Result<()> {
        let mut head = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
        if let Some((user, pass)) = &self.user {
            let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
            head.push_str(&format!("Proxy-Authorization: Basic {token}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).await?;
        let (head, rest) = read_head(stream, MAX_HEAD).await?;
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        resp.parse(&head).map_err(std::io::Error::other)?;
        match resp.code {
            Some(200..=299) if rest.is_empty() => Ok(()),
            Some(200..=299) => Err(std::io::Error::other("proxy sent bytes before the tunnel")),
            code => Err(std::io::Error::other(format!("CONNECT answered {code:?}"))),
        }
    }

    async fn socks5_connect(
        &self,
        stream: &mut TcpStream,
        target: SocketAddr,
    ) -> std::io::Result<()> {
        let bad = |m: &str| std::io::Error::other(m.to_owned());
        let method = if self.user.is_some() { 0x02 } else { 0x00 };
        stream.write_all(&[5, 1, method]).await?;
        let mut reply = [0u8; 2];
        stream.read_exact(&mut reply).await?;
        if reply != [5, method] {
            return Err(bad("the proxy refused the authentication method"));
        }
        if let Some((user, pass)) = &self.user {
            if user.len() > 255 || pass.len() > 255 {
                return Err(bad("credentials longer than 255 bytes"));
            }
            let mut auth = vec![1, user.len() as u8];
            auth.extend_from_slice(user.as_bytes());
            auth.push(pass.len() as u8);
            auth.extend_from_slice(pass.as_bytes());
            stream.write_all(&auth).await?;
            stream.read_exact(&mut reply).await?;
            if reply[1] != 0 {
                return Err(bad("the proxy refused the credentials"));
            }
        }
        let mut request = vec![5, 1, 0];
        match target {
            SocketAddr::V4(a) => {
                request.push(1);
                request.extend_from_slice(&a.ip().octets());
            }
            SocketAddr::V6(a) => {
                request.push(4);
                request.extend_from_slice(&a.ip().octets());
            }
        }
        request.extend_from_slice(&target.port().to_be_bytes());
        stream.write_all(&request).await?;
        let mut head = [0u8; 4];
        stream.read_exact(&mut head).await?;
        if head[0] != 5 || head[1] != 0 {
            return Err(std::io::Error::other(format!(
                "SOCKS5 CONNECT answered {}",
                head[1]
            )));
        }
        let skip = match head[3] {
            1 => 4 + 2,
            4 => 16 + 2,
            3 => {
                let mut len = [0u8; 1];
                stream.read_exact(&mut len).await?;
                usize::from(len[0]) + 2
            }
            _ => return Err(bad("SOCKS5 reply with an unknown address type")),
        };
        let mut bound = vec![0u8; skip];
        stream.read_exact(&mut bound).await?;
        Ok(())
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proxies() {
        let p = Upstream::parse("socks5://us%40er:p%3Ass@10.0.0.1:1080").unwrap();
        assert_eq!(p.kind, Kind::Socks5);
        assert_eq!((p.host.as_str(), p.port), ("10.0.0.1", 1080));
        assert_eq!(p.user, Some(("us@er".into(), "p:ss".into())));
        let p = Upstream::parse("http://[::1]:3128").unwrap();
        assert_eq!((p.kind, p.host.as_str(), p.user), (Kind::Http, "::1", None));
        assert!(Upstream::parse("https://proxy:443").is_err());
        assert!(Upstream::parse("http://proxy").is_err());
    }
}
