//! Issue 13's latency figure: how much idle half-open connections delay a normal request.
//!
//! Starts `streamgate serve` (embedded default, its admin listener on a free port) and times
//! `--samples` requests `GET /healthz`, each on a fresh connection (`Connection: close`, from
//! just before the connect to the end of the answer), in three rounds of one run: with no
//! idle connection, with `--idle` connections open (half of them sent half a request head,
//! half nothing), and again once the gateway has closed those. Prints median and p99 of each
//! round side by side, the gateway's `streamgate_connections` gauge around the loaded round
//! (every idle connection still open while it is timed), and when the gateway closed them
//! (its header timeout, 10 s on the embedded default). Documented in bench/README.md.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use streamgate_testkit::serve::{Serve, admin_url, listening_url};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// Command line.
#[derive(Parser)]
struct Args {
    /// Idle connections held during the loaded round.
    #[arg(long, default_value_t = 2000)]
    idle: usize,
    /// Requests timed per round.
    #[arg(long, default_value_t = 300)]
    samples: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = std::env::temp_dir().join(format!("streamgate-idle-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let (_gateway, public, admin) = start_gateway(&dir).await?;

    let quiet = round(public, args.samples).await?;
    let opened = Instant::now();
    let mut idle = Vec::with_capacity(args.idle);
    for i in 0..args.idle {
        let mut conn = TcpStream::connect(public).await?;
        if i % 2 == 0 {
            conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
                .await?;
        }
        idle.push(conn);
    }
    let open_took = opened.elapsed();
    let open_before = gauge(admin).await?;
    let loaded = round(public, args.samples).await?;
    let open_after = gauge(admin).await?;
    let held = opened.elapsed();
    let answered = futures::future::join_all(idle.iter_mut().map(until_closed)).await;
    let all_closed = opened.elapsed();
    let answered = answered.into_iter().filter(|&n| n > 0).count();
    let after = round(public, args.samples).await?;
    let open_end = gauge(admin).await?;

    println!("| round | `streamgate_connections` | median | p99 | max |");
    println!("|---|---|---|---|---|");
    let rounds = [
        ("no idle connection", "0".to_owned(), &quiet),
        (
            "during the idle connections",
            format!("{open_before} before, {open_after} after"),
            &loaded,
        ),
        (
            "after the gateway closed them",
            open_end.to_string(),
            &after,
        ),
    ];
    for (name, open, times) in rounds {
        println!(
            "| {name} | {open} | {} | {} | {} |",
            ms(quantile(times, 0.5)),
            ms(quantile(times, 0.99)),
            ms(quantile(times, 1.0)),
        );
    }
    println!();
    println!(
        "{} idle connections opened in {}, all still open at the end of the loaded round \
         ({} after the first); all closed by the gateway {} after the first opened, {} of \
         them with an answer; {} requests per round, each on a fresh connection.",
        args.idle,
        ms(millis(open_took)),
        ms(millis(held)),
        ms(millis(all_closed)),
        answered,
        args.samples,
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// `streamgate serve` next to this binary, on free ports; its public and admin addresses.
async fn start_gateway(dir: &Path) -> anyhow::Result<(Child, SocketAddr, SocketAddr)> {
    let bin = std::env::current_exe()?.with_file_name("streamgate");
    let serve = Serve {
        listen: "127.0.0.1:0".into(),
        state_dir: dir.join("state"),
        allow_private_urls: true,
        extra: vec!["--admin-listen".into(), "127.0.0.1:0".into()],
        ..Serve::default()
    };
    let log = dir.join("gateway.log");
    let mut cmd = Command::from(serve.command(&bin));
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .kill_on_drop(true);
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let (Some(public), Some(admin)) = (listening_url(&text), admin_url(&text)) {
            let addr = |url: String| url.trim_start_matches("http://").parse();
            return Ok((child, addr(public)?, addr(admin)?));
        }
        if Instant::now() > deadline {
            bail!("the gateway did not listen within 30 s:\n{text}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `samples` timed requests, one after the other; their durations in milliseconds, sorted.
async fn round(at: SocketAddr, samples: usize) -> anyhow::Result<Vec<f64>> {
    let mut times = Vec::with_capacity(samples);
    for _ in 0..samples {
        let started = Instant::now();
        let answer = get(at, "/healthz").await?;
        times.push(millis(started.elapsed()));
        if !answer.starts_with("HTTP/1.1 200") {
            bail!("GET /healthz: {answer}");
        }
    }
    times.sort_by(f64::total_cmp);
    Ok(times)
}

/// GET `path` on a fresh connection that closes after the answer; the whole answer.
async fn get(at: SocketAddr, path: &str) -> anyhow::Result<String> {
    let mut conn = TcpStream::connect(at).await?;
    let head = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    conn.write_all(head.as_bytes()).await?;
    let mut answer = Vec::new();
    conn.read_to_end(&mut answer).await?;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

/// `streamgate_connections` from the admin listener's `/metrics`.
async fn gauge(admin: SocketAddr) -> anyhow::Result<u64> {
    let text = get(admin, "/metrics").await?;
    text.lines()
        .find_map(|l| l.strip_prefix("streamgate_connections "))
        .and_then(|v| v.trim().parse().ok())
        .context("no streamgate_connections in /metrics")
}

/// Reads until the gateway closes `conn`; how many bytes it sent first.
async fn until_closed(conn: &mut TcpStream) -> usize {
    let mut got = 0;
    let mut buf = [0u8; 1024];
    loop {
        match conn.read(&mut buf).await {
            Ok(0) | Err(_) => return got,
            Ok(n) => got += n,
        }
    }
}

/// The `q` quantile of sorted `times` (nearest rank).
fn quantile(times: &[f64], q: f64) -> f64 {
    let rank = (q * times.len() as f64).ceil() as usize;
    times[rank.clamp(1, times.len()) - 1]
}

/// `v` milliseconds, as printed.
fn ms(v: f64) -> String {
    format!("{v:.2} ms")
}

/// A duration in milliseconds.
fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
