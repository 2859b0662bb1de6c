//! A stand-in for `streamgate-sidecar` that measures the relay alone: it speaks
//! docs/protocol.md (through `streamgate-protocol`) and answers every `stream` job with
//! `metadata` and N MiB of `data` frames (256 KiB each unless `--frame-kib` says otherwise), written as fast as the socket drains, then `end`.
//! No yt-dlp, no network: the only costs left are the gateway's and the client's.
//!
//!     streamgate-bench-fake-sidecar --socket PATH [--mib N]
//!
//! A job's URL may override the size with a `mib=N` query parameter
//! (`http://fake.invalid/x?mib=2048`). `--max-jobs` and `--yt-dlp` are accepted and ignored
//! so that the binary can also be launched in place of the real sidecar.

use std::path::PathBuf;

use anyhow::Context;
use bytes::{Bytes, BytesMut};
use clap::Parser;
use futures::SinkExt;
use streamgate_protocol::{
    ErrorCode, FormatInfo, Frame, FrameCodec, JobError, MAX_DATA_LEN, MediaInfo, Metadata,
    PROTOCOL_VERSION, Welcome, connection, next_frame, server_handshake,
};
use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};
use tokio_util::codec::Encoder;

#[derive(Parser, Debug)]
#[command(about = "Protocol-speaking fake sidecar for the relay benchmark")]
struct Args {
    /// Unix socket to listen on (replaced if it exists).
    #[arg(long)]
    socket: PathBuf,
    /// MiB of data per stream job, unless the job's URL says `mib=N`.
    #[arg(long, default_value_t = 1024)]
    mib: u64,
    /// Data payload per frame, in KiB (the protocol's maximum, 256, is what the real
    /// sidecar sends at full speed). Must divide 1024.
    #[arg(long, default_value_t = 256)]
    frame_kib: usize,
    /// Ignored (accepted for command-line compatibility with the real sidecar).
    #[arg(long)]
    max_jobs: Option<usize>,
    /// Ignored (accepted for command-line compatibility with the real sidecar).
    #[arg(long)]
    yt_dlp: Option<PathBuf>,
}

/// Bytes per pre-encoded block handed to one `write_all`.
const BLOCK: usize = 4 * 1024 * 1024;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _ = std::fs::remove_file(&args.socket);
    let listener = UnixListener::bind(&args.socket)
        .with_context(|| format!("binding {}", args.socket.display()))?;

    // One data frame and one block of frames, encoded once with the protocol's own codec.
    anyhow::ensure!(
        args.frame_kib > 0 && args.frame_kib * 1024 <= MAX_DATA_LEN && 1024 % args.frame_kib == 0,
        "--frame-kib must divide 1024 and be at most {}",
        MAX_DATA_LEN / 1024
    );
    let frame_len = args.frame_kib * 1024;
    let frames_per_block = (BLOCK / frame_len) as u64;
    let payload = Bytes::from(vec![0x47u8; frame_len]);
    let mut codec = FrameCodec::new();
    let mut one = BytesMut::new();
    codec.encode(Frame::Data(payload.clone()), &mut one)?;
    let one = one.freeze();
    let mut block = BytesMut::with_capacity(one.len() * frames_per_block as usize);
    for _ in 0..frames_per_block {
        block.extend_from_slice(&one);
    }
    let block = block.freeze();
    eprintln!(
        "fake-sidecar: listening on {} ({} MiB per job, {} KiB frames)",
        args.socket.display(),
        args.mib,
        args.frame_kib
    );

    loop {
        let (sock, _) = listener.accept().await?;
        let (one, block, mib) = (one.clone(), block.clone(), args.mib);
        tokio::spawn(async move {
            if let Err(e) = serve(sock, one, block, frames_per_block, frame_len, mib).await {
                eprintln!("fake-sidecar: connection ended: {e:#}");
            }
        });
    }
}

fn mib_from_url(url: &str, default: u64) -> u64 {
    url.split(['?', '&'])
        .find_map(|kv| kv.strip_prefix("mib="))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn serve(
    sock: UnixStream,
    one: Bytes,
    block: Bytes,
    frames_per_block: u64,
    frame_len: usize,
    default_mib: u64,
) -> anyhow::Result<()> {
    let mut conn = connection(sock);
    server_handshake(
        &mut conn,
        Welcome {
            version: PROTOCOL_VERSION,
            sidecar: "fake-0.1.0".into(),
            yt_dlp: "none".into(),
            // It makes no connection at all.
            egress: streamgate_protocol::EgressMode::Netns,
        },
    )
    .await?;
    match next_frame(&mut conn, "awaiting a job").await? {
        Frame::Stream(job) => {
            let mib = mib_from_url(&job.url, default_mib);
            let total = mib * 1024 * 1024;
            conn.send(Frame::Metadata(Metadata {
                filename: "fake.ts".into(),
                ext: "ts".into(),
                mime: "video/mp2t".into(),
                size: Some(total),
                title: Some("fake".into()),
                ..Default::default()
            }))
            .await?;
            // From here on, raw pre-encoded frames straight onto the socket.
            let mut io = conn.into_inner();
            let frames = total / frame_len as u64;
            for _ in 0..frames / frames_per_block {
                io.write_all(&block).await?;
            }
            for _ in 0..frames % frames_per_block {
                io.write_all(&one).await?;
            }
            let mut conn = connection(io);
            conn.send(Frame::End { total_bytes: total }).await?;
        }
        Frame::Resolve(job) => {
            conn.send(Frame::Info(MediaInfo {
                title: Some("fake".into()),
                duration: Some(1.0),
                thumbnail: None,
                formats: vec![FormatInfo {
                    id: "best".into(),
                    ext: Some("ts".into()),
                    resolution: None,
                    vcodec: None,
                    acodec: None,
                    size: Some(mib_from_url(&job.url, default_mib) * 1024 * 1024),
                    protocol: Some("fake".into()),
                }],
            }))
            .await?;
        }
        other => {
            conn.send(Frame::Error(JobError::new(
                ErrorCode::Protocol,
                format!("unexpected frame type 0x{:02x}", other.kind()),
            )))
            .await?;
        }
    }
    Ok(())
}
