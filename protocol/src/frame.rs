//! The typed frames. Control frames carry JSON (readable in a packet dump, easy to extend
//! with optional fields); `data` carries raw bytes and `end` a fixed-width integer, so the
//! hot path never touches a serializer.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Version spoken by this build. A peer with another version is refused at the handshake.
pub const PROTOCOL_VERSION: u16 = 3;

/// One frame of the protocol. See `docs/protocol.md` for who sends what, and when.
#[derive(Clone, Debug, PartialEq)]
pub enum Frame {
    /// Client → sidecar, first frame on every connection.
    Hello(Hello),
    /// Sidecar → client, the answer to a compatible `Hello`.
    Welcome(Welcome),
    /// Client → sidecar: stream a URL's media in a format.
    Stream(StreamJob),
    /// Client → sidecar: report a URL's info and formats, download nothing.
    Resolve(ResolveJob),
    /// Sidecar → client: what the data frames will be; always before the first `Data`.
    Metadata(Metadata),
    /// Sidecar → client: the answer to `Resolve`.
    Info(MediaInfo),
    /// Sidecar → client, only for a `StreamJob` with `review`: what the extraction found,
    /// before the media is opened; the sidecar then waits for `Proceed` (or `Cancel`).
    Facts(MediaFacts),
    /// Sidecar → client: the next bytes of the media.
    Data(Bytes),
    /// Sidecar → client: the job finished; `total_bytes` data bytes were sent.
    End {
        /// Sum of the lengths of every `Data` payload of the job.
        total_bytes: u64,
    },
    /// Sidecar → client: the job failed (or was refused); nothing follows.
    Error(JobError),
    /// Client → sidecar: stop the job now.
    Cancel,
    /// Client → sidecar, the answer to `Facts` that lets the job open the media.
    Proceed,
}

/// Wire values of the type byte. Kept apart from [`Frame`] so the spec's table has one home.
pub mod kind {
    pub const HELLO: u8 = 0x01;
    pub const WELCOME: u8 = 0x02;
    pub const STREAM: u8 = 0x10;
    pub const RESOLVE: u8 = 0x11;
    pub const METADATA: u8 = 0x20;
    pub const INFO: u8 = 0x21;
    pub const FACTS: u8 = 0x22;
    pub const DATA: u8 = 0x30;
    pub const END: u8 = 0x31;
    pub const ERROR: u8 = 0x3f;
    pub const CANCEL: u8 = 0x40;
    pub const PROCEED: u8 = 0x41;
}

impl Frame {
    /// The type byte this frame is sent with.
    pub fn kind(&self) -> u8 {
        match self {
            Frame::Hello(_) => kind::HELLO,
            Frame::Welcome(_) => kind::WELCOME,
            Frame::Stream(_) => kind::STREAM,
            Frame::Resolve(_) => kind::RESOLVE,
            Frame::Metadata(_) => kind::METADATA,
            Frame::Info(_) => kind::INFO,
            Frame::Facts(_) => kind::FACTS,
            Frame::Data(_) => kind::DATA,
            Frame::End { .. } => kind::END,
            Frame::Error(_) => kind::ERROR,
            Frame::Cancel => kind::CANCEL,
            Frame::Proceed => kind::PROCEED,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub version: u16,
    /// Free-form name of the client, for the sidecar's logs.
    #[serde(default)]
    pub client: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    pub version: u16,
    /// The sidecar's own version.
    pub sidecar: String,
    /// `yt-dlp --version` of the yt-dlp the sidecar runs.
    pub yt_dlp: String,
    /// How the sidecar confines its jobs' network access.
    pub egress: EgressMode,
}

/// How a sidecar makes every connection of a job pass its egress check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EgressMode {
    /// Jobs run in a network namespace holding only the job's proxy: fails closed.
    Netns,
    /// Jobs are told to use the job's proxy (`--proxy`), with nothing to stop a process
    /// that ignores it.
    Proxy,
}

impl EgressMode {
    /// The wire spelling, also shown by the gateway's `/readyz`.
    pub fn as_str(self) -> &'static str {
        match self {
            EgressMode::Netns => "netns",
            EgressMode::Proxy => "proxy",
        }
    }
}

/// Where a job's outbound connections may go, decided per tenant by the gateway and enforced
/// by the sidecar after DNS, on every connection. The default is the strict one: public
/// addresses on ports 80 and 443, directly.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EgressRules {
    /// Let connections reach internal addresses (loopback, private, link-local, …).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_private: bool,
    /// Address blocks reachable even though internal (an intranet), e.g. `10.1.0.0/16`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_cidrs: Vec<String>,
    /// Address blocks never reachable, whatever else allows them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny_cidrs: Vec<String>,
    /// Ports allowed besides 80 and 443.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
    /// Every port allowed (local testing).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub any_port: bool,
    /// Upstream proxy the egress chains to after its check: `http://[user:pass@]host:port`
    /// or `socks5://[user:pass@]host:port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamJob {
    pub url: String,
    /// A yt-dlp format selector (`-f`), e.g. `best`, `18`, `bv+ba`.
    pub format: String,
    /// Tenant the job runs for (logs, extraction cache key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// The gateway's request id, so one id follows a stream through both logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Where the job's connections may go.
    #[serde(default)]
    pub egress: EgressRules,
    /// Largest media (bytes) the tenant serves; bigger ends with `too_large`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_filesize: Option<u64>,
    /// Only these bytes of a single-file format (an HTTP `Range`); formats that cannot be
    /// cut are sent whole, and the metadata says which happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<ByteRange>,
    /// Metadata only (an HTTP `HEAD`): no media is fetched; `end` follows at once.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub head: bool,
    /// The client reviews the media before it is opened (a tenant's media policy): after
    /// the extraction the sidecar sends `facts` and opens nothing until `proceed`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub review: bool,
}

/// One byte range of a media file, as HTTP's `Range: bytes=…` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ByteRange {
    /// `start-` or `start-end` (inclusive).
    From { start: u64, end: Option<u64> },
    /// `-len`: the last `len` bytes.
    Suffix { len: u64 },
}

impl ByteRange {
    /// The inclusive span this range covers in a file of `size` bytes; `None` when it
    /// covers nothing (RFC 9110: unsatisfiable).
    pub fn resolve(self, size: u64) -> Option<(u64, u64)> {
        match self {
            ByteRange::From { start, end } if start < size => {
                Some((start, end.map_or(size - 1, |e| e.min(size - 1))))
            }
            ByteRange::Suffix { len } if len > 0 && size > 0 => {
                Some((size.saturating_sub(len), size - 1))
            }
            _ => None,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolveJob {
    pub url: String,
    /// The selector the answer's `stream_url` streams with: the sidecar selects it in the
    /// same yt-dlp run and caches the choice, so that stream starts without yt-dlp.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(default)]
    pub egress: EgressRules,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    /// Suggested file name (title + real extension), not sanitised for any header.
    pub filename: String,
    /// Extension of the container actually emitted (`mp4`, `ts`, `webm`, …).
    pub ext: String,
    /// MIME type of the bytes actually emitted (sniffed, not guessed from the extension).
    pub mime: String,
    /// Total size of the media, only when it is known exactly before the transfer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// The inclusive span the data frames carry, when the job asked for a range and the
    /// format could be cut (`size` is then known); absent: the whole media.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<(u64, u64)>,
    /// Which path moves the bytes: `native` (the sidecar's own fetcher) or `yt-dlp`.
    #[serde(default)]
    pub served_by: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MediaInfo {
    pub title: Option<String>,
    /// Seconds.
    pub duration: Option<f64>,
    pub thumbnail: Option<String>,
    pub formats: Vec<FormatInfo>,
}

/// What a stream's extraction found, for a review before any media byte moves: yt-dlp's
/// info of the media and the format(s) its selector chose (several when they are merged).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MediaFacts {
    /// yt-dlp's extractor (`extractor_key`), e.g. `Generic`, `Youtube`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extractor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uploader: Option<String>,
    /// Seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<f64>,
    /// A live stream (yt-dlp's `is_live`); false when yt-dlp does not say.
    #[serde(default)]
    pub is_live: bool,
    /// The chosen format(s).
    pub formats: Vec<FormatInfo>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FormatInfo {
    pub id: String,
    pub ext: Option<String>,
    pub resolution: Option<String>,
    pub vcodec: Option<String>,
    pub acodec: Option<String>,
    /// Exact (`filesize`) or approximate (`filesize_approx`) size in bytes.
    pub size: Option<u64>,
    pub protocol: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobError {
    pub code: ErrorCode,
    /// Human-readable detail (yt-dlp's own message, trimmed).
    pub message: String,
    /// The media's size, with `range_not_satisfiable` (for `Content-Range: bytes */size`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

/// Stable, machine-readable failure codes. Clients map these, never the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The URL or the media behind it does not exist (HTTP 404/410 upstream).
    NotFound,
    /// No extractor understands the URL, or the URL is not acceptable at all.
    UnsupportedUrl,
    /// The requested format does not exist, or cannot be delivered as one stream.
    FormatUnavailable,
    /// The upstream failed in another way (5xx, refused connection, broken download).
    UpstreamFailed,
    /// No byte for the stall timeout, or extraction took too long.
    Timeout,
    /// The sidecar's job queue is full.
    Busy,
    /// An outbound connection of the job was refused by the egress rules (an internal
    /// address, a port not allowed, a scheme other than http(s)).
    EgressDenied,
    /// The media is larger than the tenant's `max_filesize`.
    TooLarge,
    /// The requested range starts past the end of the media.
    RangeNotSatisfiable,
    /// The peer broke the protocol (bad frame, wrong version, unexpected frame).
    Protocol,
    /// Anything else: a bug or a broken installation.
    Internal,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 11] = [
        ErrorCode::NotFound,
        ErrorCode::UnsupportedUrl,
        ErrorCode::FormatUnavailable,
        ErrorCode::UpstreamFailed,
        ErrorCode::Timeout,
        ErrorCode::Busy,
        ErrorCode::EgressDenied,
        ErrorCode::TooLarge,
        ErrorCode::RangeNotSatisfiable,
        ErrorCode::Protocol,
        ErrorCode::Internal,
    ];

    /// The wire spelling, also used as a metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::NotFound => "not_found",
            ErrorCode::UnsupportedUrl => "unsupported_url",
            ErrorCode::FormatUnavailable => "format_unavailable",
            ErrorCode::UpstreamFailed => "upstream_failed",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Busy => "busy",
            ErrorCode::EgressDenied => "egress_denied",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::RangeNotSatisfiable => "range_not_satisfiable",
            ErrorCode::Protocol => "protocol",
            ErrorCode::Internal => "internal",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl JobError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        JobError {
            code,
            message: message.into(),
            size: None,
        }
    }
}

impl std::fmt::Display for JobError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for JobError {}
