//! A loopback origin for one file whose behaviour the test switches at any moment (the fault
//! tests): served normally (`Range` answered with 206, as nginx does), held until the mode
//! changes, stalled after its head, dropped mid-body (and then down), or down. Unlike the
//! one-shot faults of [`crate::http::FixtureServer`], a mode holds for every request until
//! the test changes it, so a fault outlasts however many times the sidecar resumes.
//!
//! HTTP/1.1 by hand, one request per connection (`Connection: close`), on the test's runtime.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// How the origin answers from now on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// The file (or the range asked for).
    Serve,
    /// Reads the request and answers nothing until the mode changes, then answers by it.
    Hold,
    /// A GET gets its head (status, exact length) and then silence until the peer leaves.
    StallAfterHead,
    /// The next GET gets its head and this many body bytes, then the connection closes and
    /// the origin is [`Mode::Down`] (a server that died mid-body).
    DropAfter(u64),
    /// Every connection is closed as soon as it is accepted.
    Down,
}

/// One request as the origin saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    /// `GET`, `HEAD`, …
    pub method: String,
    /// The `Range` header, if any.
    pub range: Option<String>,
}

/// A running origin; stops accepting on drop.
pub struct Origin {
    addr: SocketAddr,
    mode: watch::Sender<Mode>,
    seen: Arc<Mutex<Vec<Seen>>>,
    held: watch::Receiver<usize>,
    accept: tokio::task::JoinHandle<()>,
}

impl Origin {
    /// Serves `body` as `video/mp4` on 127.0.0.1 at a free port (needs a Tokio runtime).
    pub async fn start(body: Vec<u8>) -> Origin {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind origin");
        let addr = listener.local_addr().expect("origin addr");
        let (mode, modes) = watch::channel(Mode::Serve);
        let (held_tx, held) = watch::channel(0usize);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let shared = Arc::new(Shared {
            body,
            modes,
            mode: mode.clone(),
            seen: Arc::clone(&seen),
            held: held_tx,
        });
        let accept = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(Arc::clone(&shared).answer(conn));
            }
        });
        Origin {
            addr,
            mode,
            seen,
            held,
            accept,
        }
    }

    /// `http://127.0.0.1:PORT/NAME` (any name: the one file is served at every path).
    pub fn url(&self, name: &str) -> String {
        format!("http://{}/{name}", self.addr)
    }

    /// Switches the mode for every request from now on (held ones included).
    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    /// Requests seen so far, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits until at least `n` requests are being held ([`Mode::Hold`]).
    pub async fn await_held(&self, n: usize) {
        let mut held = self.held.clone();
        held.wait_for(|h| *h >= n).await.expect("origin running");
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

struct Shared {
    body: Vec<u8>,
    modes: watch::Receiver<Mode>,
    mode: watch::Sender<Mode>,
    seen: Arc<Mutex<Vec<Seen>>>,
    held: watch::Sender<usize>,
}

impl Shared {
    async fn answer(self: Arc<Self>, mut conn: TcpStream) {
        if *self.modes.borrow() == Mode::Down {
            return;
        }
        let Some(seen) = read_head(&mut conn).await else {
            return;
        };
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(seen.clone());
        let mut modes = self.modes.clone();
        if *modes.borrow_and_update() == Mode::Hold {
            self.held.send_modify(|h| *h += 1);
            let _ = modes.wait_for(|m| *m != Mode::Hold).await;
            self.held.send_modify(|h| *h -= 1);
        }
        let mode = *modes.borrow();
        let size = self.body.len() as u64;
        let span = seen.range.as_deref().and_then(|r| parse_range(r, size));
        let (start, end) = span.unwrap_or((0, size.saturating_sub(1)));
        let status = match span {
            Some(_) => format!("206 Partial Content\r\nContent-Range: bytes {start}-{end}/{size}"),
            None => "200 OK".to_owned(),
        };
        let head = format!(
            "HTTP/1.1 {status}\r\nContent-Type: video/mp4\r\nAccept-Ranges: bytes\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n",
            end + 1 - start
        );
        if mode == Mode::Down || conn.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        if seen.method == "HEAD" {
            return;
        }
        let body = &self.body[start as usize..=end as usize];
        match mode {
            Mode::StallAfterHead => {
                // Silence until the peer gives up.
                let mut sink = [0u8; 1024];
                while matches!(conn.read(&mut sink).await, Ok(n) if n > 0) {}
            }
            Mode::DropAfter(n) => {
                let cut = (n as usize).min(body.len());
                let _ = conn.write_all(&body[..cut]).await;
                let _ = conn.flush().await;
                self.mode.send_replace(Mode::Down);
            }
            _ => {
                let _ = conn.write_all(body).await;
            }
        }
    }
}

/// The request head (up to 16 KiB): method and `Range`.
async fn read_head(conn: &mut TcpStream) -> Option<Seen> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut chunk).await.ok()?;
        if n == 0 || buf.len() > 16 * 1024 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&buf);
    let method = text.split_whitespace().next()?.to_owned();
    let range = text.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("range")
            .then(|| value.trim().to_owned())
    });
    Some(Seen { method, range })
}

/// `bytes=A-` or `bytes=A-B` within `size`, as an inclusive span.
fn parse_range(spec: &str, size: u64) -> Option<(u64, u64)> {
    let (a, b) = spec.strip_prefix("bytes=")?.split_once('-')?;
    let start: u64 = a.parse().ok()?;
    let end = match b {
        "" => size - 1,
        b => b.parse::<u64>().ok()?.min(size - 1),
    };
    (start <= end).then_some((start, end))
}
