//! The client side of the protocol, for tests: a handshake, one job, and a [`Transcript`] of
//! every frame that came back (data kept whole, so it can be hashed).

use std::path::Path;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use streamgate_protocol::{
    Connection, EgressRules, Frame, JobError, MediaInfo, Metadata, ProtocolError, ResolveJob,
    StreamJob, Welcome, client_handshake, connection, kind,
};
use tokio::net::UnixStream;

/// A connected, greeted client.
pub struct Client {
    conn: Connection<UnixStream>,
    /// The sidecar's welcome.
    pub welcome: Welcome,
}

/// Everything a job sent back, in order.
#[derive(Debug, Default)]
pub struct Transcript {
    /// The type byte of every frame, in arrival order.
    pub kinds: Vec<u8>,
    /// The metadata frame, if any.
    pub metadata: Option<Metadata>,
    /// The info frame (resolve jobs).
    pub info: Option<MediaInfo>,
    /// All data payloads, concatenated.
    pub data: Vec<u8>,
    /// `end.total_bytes`, if the job ended well.
    pub end: Option<u64>,
    /// The error frame, if the job failed.
    pub error: Option<JobError>,
    /// A protocol-level failure reading the replies (the sidecar broke the protocol).
    pub broken: Option<String>,
}

impl Transcript {
    /// Number of data frames.
    pub fn data_frames(&self) -> usize {
        self.kinds.iter().filter(|k| **k == kind::DATA).count()
    }

    /// Whether a metadata frame came before every data frame.
    pub fn metadata_first(&self) -> bool {
        let first_data = self.kinds.iter().position(|k| *k == kind::DATA);
        let meta = self.kinds.iter().position(|k| *k == kind::METADATA);
        match (meta, first_data) {
            (Some(m), Some(d)) => m < d,
            (_, None) => true,
            (None, Some(_)) => false,
        }
    }

    /// Asserts a job that ended well: metadata first, with `ext` and `mime`; data; an `end`
    /// equal to the bytes received. `logs` (the server's) is shown when it fails.
    pub fn assert_complete(&self, logs: &str, ext: &str, mime: &str) {
        let head = &self.kinds[..self.kinds.len().min(4)];
        let ctx = || {
            format!(
                "kinds {head:?}…, error {:?}, broken {:?}\n{logs}",
                self.error, self.broken
            )
        };
        assert!(self.error.is_none() && self.broken.is_none(), "{}", ctx());
        assert_eq!(self.kinds.first(), Some(&kind::METADATA), "{}", ctx());
        assert!(self.metadata_first() && self.data_frames() > 0, "{}", ctx());
        assert_eq!(
            self.end,
            Some(self.data.len() as u64),
            "end.total_bytes must count the data"
        );
        assert_eq!(self.kinds.last(), Some(&kind::END));
        let meta = self.metadata.as_ref().expect("metadata");
        assert_eq!(
            (meta.ext.as_str(), meta.mime.as_str()),
            (ext, mime),
            "{meta:?}"
        );
        assert!(meta.filename.ends_with(&format!(".{ext}")), "{meta:?}");
    }

    /// The error code as its wire string, or `"-"`.
    pub fn error_code(&self) -> &'static str {
        self.error.as_ref().map_or("-", |e| e.code.as_str())
    }
}

impl Client {
    /// Connects to `socket` and does the handshake.
    pub async fn connect(socket: &Path) -> Result<Client, ProtocolError> {
        let stream = UnixStream::connect(socket).await?;
        let mut conn = connection(stream);
        let welcome = client_handshake(&mut conn, "streamgate-tests").await?;
        Ok(Client { conn, welcome })
    }

    /// Sends one frame.
    pub async fn send(&mut self, frame: Frame) -> Result<(), ProtocolError> {
        self.conn.send(frame).await
    }

    /// The next frame; `None` when the sidecar closed the connection.
    pub async fn next(&mut self) -> Option<Result<Frame, ProtocolError>> {
        self.conn.next().await
    }

    /// Sends a stream job.
    pub async fn start_stream(&mut self, url: &str, format: &str) -> Result<(), ProtocolError> {
        self.send(Frame::Stream(StreamJob {
            url: url.to_owned(),
            format: format.to_owned(),
            tenant: Some("tests".into()),
            request_id: None,
            egress: loopback_egress(),
            ..StreamJob::default()
        }))
        .await
    }

    /// Reads frames until `stop` says so or the connection closes, recording them.
    pub async fn collect_until(
        &mut self,
        transcript: &mut Transcript,
        mut stop: impl FnMut(&Transcript) -> bool,
    ) {
        while !stop(transcript) {
            match self.conn.next().await {
                None => return,
                Some(Err(e)) => {
                    transcript.broken = Some(e.to_string());
                    return;
                }
                Some(Ok(frame)) => record(transcript, frame),
            }
        }
    }

    /// Reads every frame until the sidecar closes the connection (at most `limit`).
    pub async fn collect(&mut self, limit: Duration) -> Transcript {
        let mut transcript = Transcript::default();
        let all = self.collect_until(&mut transcript, |_| false);
        if tokio::time::timeout(limit, all).await.is_err() {
            transcript.broken = Some(format!("no end of job within {limit:?}"));
        }
        transcript
    }

    /// Connect, stream `url` in `format`, collect everything.
    pub async fn stream(socket: &Path, url: &str, format: &str) -> Transcript {
        let mut client = Client::connect(socket)
            .await
            .expect("connect to the sidecar");
        client
            .start_stream(url, format)
            .await
            .expect("send stream job");
        client.collect(crate::SLOW).await
    }

    /// Connect, resolve `url`, collect the answer.
    pub async fn resolve(socket: &Path, url: &str) -> Transcript {
        let mut client = Client::connect(socket)
            .await
            .expect("connect to the sidecar");
        let job = ResolveJob {
            url: url.to_owned(),
            format: None,
            tenant: None,
            request_id: None,
            egress: loopback_egress(),
        };
        client
            .send(Frame::Resolve(job))
            .await
            .expect("send resolve job");
        client.collect(crate::SLOW).await
    }
}

/// The rules for jobs whose fixtures are served on 127.0.0.1 by the tests: internal
/// addresses and any port allowed (what `--allow-private-urls` gives a gateway tenant).
pub fn loopback_egress() -> EgressRules {
    EgressRules {
        allow_private: true,
        any_port: true,
        ..EgressRules::default()
    }
}

fn record(t: &mut Transcript, frame: Frame) {
    t.kinds.push(frame.kind());
    match frame {
        Frame::Metadata(m) => t.metadata = Some(m),
        Frame::Info(i) => t.info = Some(i),
        Frame::Data(d) => t.data.extend_from_slice(&d),
        Frame::End { total_bytes } => t.end = Some(total_bytes),
        Frame::Error(e) => t.error = Some(e),
        _ => {}
    }
}

/// Writes raw `bytes` to the server at `socket` (after a proper handshake if asked), closes
/// the write half, and returns every frame that came back before the server closed.
pub async fn send_raw(socket: &Path, bytes: &[u8], handshake: bool) -> Vec<Frame> {
    use tokio::io::AsyncWriteExt;
    let stream = UnixStream::connect(socket).await.expect("connect");
    let mut conn = connection(stream);
    if handshake {
        client_handshake(&mut conn, "hostile")
            .await
            .expect("handshake");
    }
    let _ = conn.get_mut().write_all(bytes).await;
    let _ = conn.get_mut().shutdown().await; // what was sent is all there is
    let mut replies = Vec::new();
    let read = async {
        while let Some(Ok(frame)) = conn.next().await {
            replies.push(frame);
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .expect("the server must close");
    replies
}

/// Deterministic byte soup (xorshift64) for hostile-input tests: a failure can be replayed.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.max(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
