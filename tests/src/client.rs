//! The client side of the protocol, for tests: a handshake, one job, and a [`Transcript`] of
//! every frame that came back (data kept whole, so it can be hashed).

use std::path::Path;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use streamgate_protocol::{
    Connection, Frame, JobError, MediaInfo, Metadata, ProtocolError, ResolveJob, StreamJob,
    Welcome, client_handshake, connection, kind,
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
            tenant: None,
            request_id: None,
        };
        client
            .send(Frame::Resolve(job))
            .await
            .expect("send resolve job");
        client.collect(crate::SLOW).await
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
