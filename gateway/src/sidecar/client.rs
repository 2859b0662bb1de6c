//! Jobs on the sidecar's socket (docs/protocol.md): connect, handshake, send one job frame,
//! wait for its first answer under the metadata timeout. Stream and resolve jobs share that
//! one path ([`SidecarClient::job`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use futures::SinkExt;
use streamgate_protocol::{
    Connection, Frame, FrameCodec, JobError, MediaFacts, MediaInfo, Metadata, ProtocolError,
    ResolveJob, StreamJob, Welcome, client_handshake, next_frame,
};
use tokio::net::UnixStream;
use tokio_util::codec::Framed;

/// Name the gateway gives itself in `hello`.
const CLIENT_NAME: &str = concat!("streamgate/", env!("CARGO_PKG_VERSION"));

/// Connect + handshake must be quick: the sidecar is local, a slow one is a sick one.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A job connection's read buffer, and so the largest media chunk a body yields at once.
pub const CHUNK: usize = 32 * 1024;

/// A connection whose job has produced its metadata; the rest is data, then end or error.
pub type JobConnection = Connection<UnixStream>;

/// Why a job produced no first answer.
#[derive(Debug, thiserror::Error)]
pub enum SidecarError {
    /// No connection, no handshake, or the connection closed before the first answer.
    #[error("the sidecar is unavailable: {0}")]
    Unavailable(String),
    /// The same, before any handshake ever succeeded: the sidecar is still starting.
    #[error("the sidecar is not up yet: {0}")]
    NotUpYet(String),
    /// The sidecar answered with an error frame.
    #[error("the sidecar failed the job: {0}")]
    Job(JobError),
    /// A frame that breaks docs/protocol.md.
    #[error("the sidecar broke the protocol: {0}")]
    Protocol(#[from] ProtocolError),
    /// No first answer within the metadata timeout.
    #[error("the sidecar sent no metadata in time")]
    MetadataTimeout,
}

/// What the client has seen of the sidecar ([`SidecarClient::seen`]).
const NEVER_UP: u8 = 0;
const WAITING_LOGGED: u8 = 1;
const BEEN_UP: u8 = 2;

/// Opens jobs on the sidecar's socket.
#[derive(Clone, Debug)]
pub struct SidecarClient {
    socket: PathBuf,
    metadata_timeout: Duration,
    /// Whether a handshake ever succeeded: until then a refused connection is the start-up
    /// every `/readyz` poll sees (logged once), after it an outage.
    seen: Arc<AtomicU8>,
}

impl SidecarClient {
    /// A client of the sidecar listening on `socket`; nothing is connected yet.
    pub fn new(socket: PathBuf, metadata_timeout: Duration) -> Self {
        SidecarClient {
            socket,
            metadata_timeout,
            seen: Arc::new(AtomicU8::new(NEVER_UP)),
        }
    }

    /// A fresh connection, past the handshake.
    async fn connect(&self) -> Result<(JobConnection, Welcome), SidecarError> {
        let attempt = async {
            let io = UnixStream::connect(&self.socket)
                .await
                .map_err(|e| SidecarError::Unavailable(e.to_string()))?;
            // Sized for the relay's chunks: the buffer a stream reads media into.
            let mut conn = Framed::with_capacity(io, FrameCodec::new(), CHUNK);
            let welcome = client_handshake(&mut conn, CLIENT_NAME).await?;
            Ok((conn, welcome))
        };
        let result = tokio::time::timeout(CONNECT_TIMEOUT, attempt)
            .await
            .unwrap_or_else(|_| Err(SidecarError::Unavailable("handshake timed out".into())));
        match result {
            Ok(up) => {
                self.seen.store(BEEN_UP, Ordering::Relaxed);
                Ok(up)
            }
            Err(SidecarError::Unavailable(e)) if self.seen.load(Ordering::Relaxed) != BEEN_UP => {
                let first = self
                    .seen
                    .compare_exchange(
                        NEVER_UP,
                        WAITING_LOGGED,
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    )
                    .is_ok();
                if first {
                    tracing::info!(socket = %self.socket.display(), "waiting for the sidecar: {e}");
                }
                Err(SidecarError::NotUpYet(e))
            }
            Err(e) => Err(e),
        }
    }

    /// Whether the sidecar answers a handshake; its `Welcome` names the yt-dlp version.
    pub async fn probe(&self) -> Result<Welcome, SidecarError> {
        self.connect().await.map(|(_, welcome)| welcome)
    }

    /// Starts `job` and waits for its metadata (or, with `review`, the media's facts), so
    /// the caller can still answer with a real status if the job fails early. Dropping the
    /// returned connection cancels the job.
    pub async fn start(&self, job: StreamJob) -> Result<Started, SidecarError> {
        const DURING: &str = "awaiting metadata";
        let review = job.review;
        match self.job(Frame::Stream(job), DURING).await? {
            (Frame::Metadata(meta), conn) => Ok(Started::Ready(meta, conn)),
            (Frame::Facts(facts), conn) if review => Ok(Started::Review(
                facts,
                Reviewing {
                    conn,
                    metadata_timeout: self.metadata_timeout,
                },
            )),
            (other, _) => Err(unexpected(&other, DURING)),
        }
    }

    /// Runs a resolve job (yt-dlp's metadata, no media) under the metadata timeout.
    pub async fn resolve(&self, job: ResolveJob) -> Result<MediaInfo, SidecarError> {
        const DURING: &str = "awaiting info";
        match self.job(Frame::Resolve(job), DURING).await? {
            (Frame::Info(info), _) => Ok(info),
            (other, _) => Err(unexpected(&other, DURING)),
        }
    }

    /// Sends one job frame on a fresh connection and returns the first frame that is not an
    /// error, with the connection.
    async fn job(
        &self,
        frame: Frame,
        during: &'static str,
    ) -> Result<(Frame, JobConnection), SidecarError> {
        let (mut conn, _) = self.connect().await?;
        conn.send(frame).await?;
        let first = tokio::time::timeout(self.metadata_timeout, next_frame(&mut conn, during))
            .await
            .map_err(|_| SidecarError::MetadataTimeout)?;
        match first.map_err(|e| closed_is_unavailable(e, during))? {
            Frame::Error(e) => Err(SidecarError::Job(e)),
            frame => Ok((frame, conn)),
        }
    }
}

/// A stream job's first answer.
pub enum Started {
    /// The media is open: its metadata, then the data on the connection.
    Ready(Metadata, JobConnection),
    /// (A job with `review`.) What the extraction found; nothing is opened until
    /// [`Reviewing::proceed`]. Dropping it stops the job.
    Review(MediaFacts, Reviewing),
}

/// A job waiting for the verdict on its media's facts.
pub struct Reviewing {
    conn: JobConnection,
    metadata_timeout: Duration,
}

impl Reviewing {
    /// Lets the job open the media and waits for its metadata under the timeout.
    pub async fn proceed(mut self) -> Result<(Metadata, JobConnection), SidecarError> {
        const DURING: &str = "awaiting metadata after proceed";
        self.conn.send(Frame::Proceed).await?;
        let first = tokio::time::timeout(self.metadata_timeout, next_frame(&mut self.conn, DURING))
            .await
            .map_err(|_| SidecarError::MetadataTimeout)?;
        match first.map_err(|e| closed_is_unavailable(e, DURING))? {
            Frame::Metadata(meta) => Ok((meta, self.conn)),
            Frame::Error(e) => Err(SidecarError::Job(e)),
            other => Err(unexpected(&other, DURING)),
        }
    }
}

/// The sidecar going away mid-job (a crash, a restart) is an outage, not a bug.
fn closed_is_unavailable(e: ProtocolError, during: &'static str) -> SidecarError {
    match e {
        ProtocolError::Closed { .. } => {
            SidecarError::Unavailable(format!("connection closed {during}"))
        }
        e => e.into(),
    }
}

fn unexpected(got: &Frame, during: &'static str) -> SidecarError {
    SidecarError::Protocol(ProtocolError::Unexpected {
        got: got.kind(),
        during,
    })
}
