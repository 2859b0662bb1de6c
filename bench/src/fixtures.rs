//! Media fixtures: generated offline with ffmpeg into `target/bench-fixtures/`, served on
//! 127.0.0.1 by a warp static server (with Range support) on its own runtime and threads.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

/// Where a fixture came from, for the report.
#[derive(Clone, Debug)]
pub struct Fixture {
    pub path: PathBuf,
    pub secs: u32,
    pub size: u64,
    pub generator: String,
}

/// Makes (or reuses) `root/<secs>s/progressive.mp4`: H.264+AAC 1280x720, 4 Mb/s, faststart.
///
/// Uses the project's generator `tests/fixtures/make-media OUT_DIR SECONDS` when it exists;
/// otherwise runs the same ffmpeg recipe itself (the one of make-media.sh, progressive file
/// only: the benchmark needs no HLS/DASH copies of a 200 MB file).
pub fn ensure(repo: &Path, root: &Path, secs: u32) -> anyhow::Result<Fixture> {
    let dir = root.join(format!("{secs}s"));
    let out = dir.join("progressive.mp4");
    let stamp = dir.join(".done");
    let project_gen = repo.join("tests/fixtures/make-media");
    let generator;
    if stamp.exists() && out.exists() {
        generator = std::fs::read_to_string(&stamp)
            .unwrap_or_default()
            .trim()
            .to_string();
    } else {
        std::fs::create_dir_all(&dir)?;
        eprintln!("bench: generating a {secs} s fixture in {}", dir.display());
        if is_executable(&project_gen) {
            let st = Command::new(&project_gen)
                .arg(&dir)
                .arg(secs.to_string())
                .status()
                .with_context(|| format!("running {}", project_gen.display()))?;
            if !st.success() || !out.exists() {
                bail!(
                    "{} {} {secs} failed ({st})",
                    project_gen.display(),
                    dir.display()
                );
            }
            generator = "tests/fixtures/make-media".to_string();
        } else {
            let secs_s = secs.to_string();
            let st = Command::new("ffmpeg")
                .args(["-nostdin", "-hide_banner", "-loglevel", "error", "-y"])
                .args(["-f", "lavfi", "-i"])
                .arg(format!("testsrc2=size=1280x720:rate=30:duration={secs_s}"))
                .args(["-f", "lavfi", "-i"])
                .arg(format!(
                    "sine=frequency=440:sample_rate=48000:duration={secs_s}"
                ))
                .args(["-c:v", "libx264", "-preset", "ultrafast", "-g", "60"])
                .args(["-pix_fmt", "yuv420p", "-b:v", "4M", "-bitexact"])
                .args(["-c:a", "aac", "-b:a", "128k", "-bitexact"])
                .args([
                    "-map_metadata",
                    "-1",
                    "-movflags",
                    "+faststart",
                    "-fflags",
                    "+bitexact",
                ])
                .arg(&out)
                .status()
                .context("running ffmpeg (apt-get install -y ffmpeg)")?;
            if !st.success() {
                bail!("ffmpeg failed ({st})");
            }
            generator =
                "bench's ffmpeg call (make-media.sh recipe, progressive.mp4 only)".to_string();
        }
        std::fs::write(&stamp, &generator)?;
    }
    let size = std::fs::metadata(&out)?.len();
    Ok(Fixture {
        path: out,
        secs,
        size,
        generator,
    })
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Serves `root` on 127.0.0.1 (ephemeral port) from two threads of its own, so the measuring
/// client's runtime never waits behind the file server. Query strings are ignored, which is
/// how the benchmark makes "new" URLs for the same file (`…/progressive.mp4?cold=17`).
pub fn serve(root: PathBuf) -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    std::thread::Builder::new()
        .name("fixture-server".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("fixture-server")
                .enable_all()
                .build()
                .expect("fixture runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                warp::serve(warp::fs::dir(root))
                    .incoming(listener)
                    .run()
                    .await;
            });
        })?;
    Ok(addr)
}
