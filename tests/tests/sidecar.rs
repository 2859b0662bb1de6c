//! End-to-end tests of `streamgate-sidecar`: the release binary, the venv's yt-dlp, ffmpeg,
//! fixtures from `tests/fixtures/make-media` served on 127.0.0.1.

use std::time::{Duration, Instant};

use futures::future::join_all;
use streamgate_protocol::{ByteRange, Frame, StreamJob, kind};
use streamgate_tests::http::Fault;
use streamgate_tests::*;

async fn sidecar(pool: bool) -> Sidecar {
    let opts = SidecarOptions {
        pool: Some(pool),
        ..Default::default()
    };
    Sidecar::start(opts).await
}

both_paths!(
    progressive_mp4_is_relayed_byte_for_byte,
    hls_is_mpeg_ts_and_matches_a_direct_run,
    dash_video_plus_audio_is_merged_by_ffmpeg,
    failures_get_their_code_and_no_data,
    resolve_returns_trimmed_info,
    cancel_or_close_kills_the_process_group_within_a_second,
    twenty_abandoned_jobs_leave_no_process_and_the_sidecar_keeps_serving,
    a_full_queue_answers_busy_at_once,
    no_media_byte_touches_disk,
    sigterm_stops_accepting_then_kills_after_the_drain_deadline,
);

/// A direct `yt-dlp -o -` run with the sidecar's downloader choice (ffmpeg for HLS and DASH:
/// yt-dlp's own writes every fragment to disk first).
async fn direct(url: &str, format: &str) -> Vec<u8> {
    let (url, format) = (url.to_owned(), format.to_owned());
    tokio::task::spawn_blocking(move || {
        direct_ytdlp(&url, &format, streamgate_sidecar::STREAM_DOWNLOADERS)
    })
    .await
    .unwrap()
}

/// A direct `yt-dlp -o -` run with its default downloaders: what the sidecar's own fetcher
/// must give byte for byte (for HLS, yt-dlp's native downloader, not ffmpeg's remux).
async fn direct_default(url: &str, format: &str) -> Vec<u8> {
    let (url, format) = (url.to_owned(), format.to_owned());
    tokio::task::spawn_blocking(move || direct_ytdlp(&url, &format, &[]))
        .await
        .unwrap()
}

async fn progressive_mp4_is_relayed_byte_for_byte(pool: bool) {
    let sc = sidecar(pool).await;
    let url = server().url("progressive.mp4");
    let t = Client::stream(sc.socket(), &url, "b").await;
    t.assert_complete(&sc.logs(), "mp4", "video/mp4");
    let file = sha256_file(&fixtures().join("progressive.mp4")).unwrap();
    assert_eq!(sha256_hex(&t.data), sha256_hex(&direct(&url, "b").await));
    assert_eq!(
        sha256_hex(&t.data),
        file,
        "a progressive download is the file itself"
    );
    let pooled = sc.logs().contains("pool worker took the job");
    assert_eq!(pooled, pool, "{}", sc.logs());
    eprintln!("progressive: {} bytes, sha256 {file}", t.data.len());
}

async fn hls_is_mpeg_ts_and_matches_a_direct_run(pool: bool) {
    let sc = sidecar(pool).await;
    let url = server().url("hls/index.m3u8");
    let t = Client::stream(sc.socket(), &url, "b").await;
    // yt-dlp says "mp4" for this format; the bytes are MPEG-TS.
    t.assert_complete(&sc.logs(), "ts", "video/mp2t");
    let meta = t.metadata.as_ref().unwrap();
    assert_eq!(meta.served_by, "native", "{}", sc.logs());
    assert_eq!((meta.size, meta.range), (None, None));
    let reference = direct_default(&url, "b").await;
    assert_eq!(sha256_hex(&t.data), sha256_hex(&reference));
    eprintln!(
        "hls: {} bytes, sha256 {}",
        t.data.len(),
        sha256_hex(&t.data)
    );
}

async fn dash_video_plus_audio_is_merged_by_ffmpeg(pool: bool) {
    let sc = sidecar(pool).await;
    let t = Client::stream(sc.socket(), &server().url("dash/manifest.mpd"), "bv+ba").await;
    // Merged by ffmpeg from the sidecar's pipes, as fragmented MP4 (what browsers play).
    t.assert_complete(&sc.logs(), "mp4", "video/mp4");
    assert_eq!(t.metadata.as_ref().unwrap().served_by, "native");
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &t.data).unwrap();
    let mut streams = ffprobe_streams(file.path());
    streams.sort();
    assert_eq!(
        streams,
        ["audio", "video"],
        "one video and one audio stream"
    );
    eprintln!("dash bv+ba: {} bytes, streams {streams:?}", t.data.len());
}

async fn failures_get_their_code_and_no_data(pool: bool) {
    let sc = sidecar(pool).await;
    let s = server();
    let cases = [
        (s.url("no-such-file.mp4"), "b", "not_found"),
        (s.url("page.html"), "b", "unsupported_url"),
        (s.url("progressive.mp4"), "999", "format_unavailable"),
        (
            format!("-{}", s.url("progressive.mp4")),
            "b",
            "unsupported_url",
        ),
        ("--exec=touch pwned".to_owned(), "b", "unsupported_url"),
        // Two `ism` formats: yt-dlp cannot merge them to stdout and would concatenate.
        (s.url("ism/manifest.ism"), "bv+ba", "format_unavailable"),
        (s.url("progressive.mp4"), "-x", "format_unavailable"),
    ];
    let runs = cases
        .iter()
        .map(|(url, format, _)| Client::stream(sc.socket(), url, format));
    for ((url, format, code), t) in cases.iter().zip(join_all(runs).await) {
        let what = format!("{url} -f {format}: {t:?}");
        assert_eq!(t.error_code(), *code, "{what}\n{}", sc.logs());
        assert_eq!(
            t.kinds,
            [kind::ERROR],
            "exactly one error frame, no metadata or data: {what}"
        );
        assert!(!t.error.as_ref().unwrap().message.is_empty());
        eprintln!(
            "{url} -f {format} → {code}: {}",
            t.error.as_ref().unwrap().message
        );
    }
    assert!(std::fs::read_dir(sc.work_dir()).unwrap().next().is_none());
}

async fn resolve_returns_trimmed_info(pool: bool) {
    let sc = sidecar(pool).await;
    let t = Client::resolve(sc.socket(), &server().url("dash/manifest.mpd")).await;
    assert_eq!(t.kinds, [kind::INFO], "{t:?}\n{}", sc.logs());
    let info = t.info.unwrap();
    assert_eq!(info.title.as_deref(), Some("manifest"));
    assert_eq!(info.formats.len(), 2, "{info:?}");
    let video = info
        .formats
        .iter()
        .find(|f| f.acodec.as_deref() == Some("none"))
        .unwrap();
    assert!(
        video.vcodec.as_deref().unwrap().starts_with("avc1"),
        "{video:?}"
    );
    assert_eq!(video.resolution.as_deref(), Some("1280x720"));
    assert_eq!(video.protocol.as_deref(), Some("http_dash_segments"));
    let missing = Client::resolve(sc.socket(), &server().url("gone.mpd")).await;
    assert_eq!(missing.error_code(), "not_found", "{missing:?}");
}

/// Starts a DASH merge (yt-dlp + ffmpeg), waits for data and for ffmpeg to be running.
async fn merge_in_flight(sc: &Sidecar) -> Client {
    let mut client = Client::connect(sc.socket()).await.unwrap();
    client
        .start_stream(&server().url("dash/manifest.mpd"), "bv+ba")
        .await
        .unwrap();
    let mut t = Transcript::default();
    client
        .collect_until(&mut t, |t| t.data_frames() > 0 || t.error.is_some())
        .await;
    assert!(t.data_frames() > 0, "{t:?}\n{}", sc.logs());
    let ffmpeg = || sc.job_processes().iter().any(|p| p.comm == "ffmpeg");
    assert!(
        wait_until(SLOW, ffmpeg).await,
        "no ffmpeg under the sidecar"
    );
    client
}

async fn cancel_or_close_kills_the_process_group_within_a_second(pool: bool) {
    let sc = sidecar(pool).await;
    for how in ["cancel", "close"] {
        let mut client = merge_in_flight(&sc).await;
        let before = sc.job_processes();
        let started = Instant::now();
        if how == "cancel" {
            client.send(Frame::Cancel).await.unwrap();
        } else {
            drop(client);
        }
        let gone = wait_until(Duration::from_secs(1), || sc.job_processes().is_empty()).await;
        let took = started.elapsed();
        assert!(
            gone,
            "{how}: still running after 1 s: {:?}",
            sc.job_processes()
        );
        let names: Vec<_> = before.iter().map(|p| p.comm.as_str()).collect();
        eprintln!("{how}: {names:?} gone in {took:?}");
    }
}

async fn twenty_abandoned_jobs_leave_no_process_and_the_sidecar_keeps_serving(pool: bool) {
    let opts = SidecarOptions {
        max_jobs: Some(4),
        queue: Some(32),
        pool: Some(pool),
        ..Default::default()
    };
    let sc = Sidecar::start(opts).await;
    let saw_ffmpeg = std::sync::atomic::AtomicBool::new(false);
    let jobs = (0..20).map(|i| {
        let (sc, saw_ffmpeg) = (&sc, &saw_ffmpeg);
        async move {
            let (path, format) = if i % 2 == 0 {
                ("progressive.mp4", "b")
            } else {
                ("dash/manifest.mpd", "bv+ba")
            };
            let mut client = Client::connect(sc.socket()).await.unwrap();
            client
                .start_stream(&server().url(path), format)
                .await
                .unwrap();
            let mut t = Transcript::default();
            let one_mb =
                |t: &Transcript| t.data.len() >= 1 << 20 || t.error.is_some() || t.end.is_some();
            tokio::time::timeout(SLOW, client.collect_until(&mut t, one_mb))
                .await
                .expect("first MB in time");
            assert!(
                t.data.len() >= 1 << 20 && t.end.is_none(),
                "job {i}: {:?} {:?}",
                t.error,
                t.end
            );
            if sc.job_processes().iter().any(|p| p.comm == "ffmpeg") {
                saw_ffmpeg.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            drop(client);
        }
    });
    join_all(jobs).await;
    let last_close = Instant::now();
    let clean = wait_until(Duration::from_secs(2), || sc.job_processes().is_empty()).await;
    assert!(clean, "left after 2 s: {:?}", sc.job_processes());
    eprintln!(
        "20 abandoned jobs: no process left {:?} after the last close",
        last_close.elapsed()
    );
    assert!(saw_ffmpeg.into_inner(), "the merges should have run ffmpeg");
    let t = Client::stream(sc.socket(), &server().url("progressive.mp4"), "b").await;
    t.assert_complete(&sc.logs(), "mp4", "video/mp4");
}

async fn a_full_queue_answers_busy_at_once(pool: bool) {
    let opts = SidecarOptions {
        queue: Some(1),
        pool: Some(pool),
        extra: vec!["--max-streams".into(), "1".into()],
        ..Default::default()
    };
    let sc = Sidecar::start(opts).await;
    // A holds the only stream slot: it stops reading, so backpressure keeps it open.
    let mut a = Client::connect(sc.socket()).await.unwrap();
    a.start_stream(&server().url("progressive.mp4"), "b")
        .await
        .unwrap();
    let mut first = Transcript::default();
    a.collect_until(&mut first, |t| t.data_frames() > 0 || t.error.is_some())
        .await;
    assert!(first.data_frames() > 0, "{first:?}");
    // B and C: one takes the queue place, the other finds it full.
    let url = server().url("progressive.mp4");
    let mut b = tokio::spawn(collect(sc.socket().to_owned(), url.clone()));
    let mut c = tokio::spawn(collect(sc.socket().to_owned(), url));
    let (refused, waiting) = tokio::select! {
        r = &mut b => (r.unwrap(), c),
        r = &mut c => (r.unwrap(), b),
        _ = tokio::time::sleep(Duration::from_secs(60)) => panic!("nobody got busy\n{}", sc.logs()),
    };
    assert_eq!(refused.error_code(), "busy", "{refused:?}");
    assert_eq!(refused.kinds, [kind::ERROR]);
    assert!(
        !waiting.is_finished(),
        "the queued job cannot finish while A holds the slot"
    );
    drop(a);
    let served = waiting.await.unwrap();
    served.assert_complete(&sc.logs(), "mp4", "video/mp4");
}

async fn collect(socket: std::path::PathBuf, url: String) -> Transcript {
    Client::stream(&socket, &url, "b").await
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_bytes_get_a_protocol_error_and_no_big_allocation() {
    let sc = sidecar(true).await;
    let rss_before = sc.rss_kib();
    let mut cases: Vec<(String, Vec<u8>)> = vec![
        (
            "4 GiB length".into(),
            vec![0xff, 0xff, 0xff, 0xff, kind::DATA],
        ),
        (
            "1 MiB + 1 length".into(),
            vec![0x00, 0x10, 0x00, 0x01, kind::STREAM],
        ),
        (
            "truncated payload".into(),
            vec![0, 0, 0, 100, kind::STREAM, b'{'],
        ),
        ("truncated header".into(), vec![0, 0]),
        ("unknown type".into(), vec![0, 0, 0, 1, 0x77]),
        ("empty frame".into(), vec![0, 0, 0, 0]),
        (
            "json missing fields".into(),
            vec![0, 0, 0, 3, kind::STREAM, b'{', b'}'],
        ),
        (
            "data from the client".into(),
            vec![0, 0, 0, 2, kind::DATA, 0],
        ),
        (
            "hello version 99".into(),
            [&[0, 0, 0, 15, kind::HELLO][..], br#"{"version":99}"#].concat(),
        ),
    ];
    for seed in 1..=8 {
        cases.push((format!("noise seed {seed}"), noise(seed, 64 * 1024)));
    }
    for (name, bytes) in &cases {
        for handshake in [false, true] {
            if handshake && name.starts_with("hello") {
                continue;
            }
            let replies = send_raw(sc.socket(), bytes, handshake).await;
            let what = format!("{name} (after handshake: {handshake}): {replies:?}");
            let last = replies
                .last()
                .unwrap_or_else(|| panic!("no reply: {what}\n{}", sc.logs()));
            assert!(
                matches!(last, Frame::Error(e) if e.code.as_str() == "protocol"),
                "{what}"
            );
            assert!(
                !replies
                    .iter()
                    .any(|f| matches!(f, Frame::Data(_) | Frame::Metadata(_))),
                "{what}"
            );
        }
    }
    let mut sc = sc;
    assert!(sc.child().is_running(), "the sidecar died:\n{}", sc.logs());
    let grown = sc.rss_kib().saturating_sub(rss_before);
    assert!(grown < 32 * 1024, "RSS grew by {grown} KiB");
    eprintln!(
        "{} hostile inputs ×2: all refused; RSS grew {grown} KiB",
        cases.len()
    );
    let t = Client::resolve(sc.socket(), &server().url("progressive.mp4")).await;
    assert_eq!(t.kinds, [kind::INFO], "still serving: {t:?}");
}

async fn no_media_byte_touches_disk(pool: bool) {
    let sc = sidecar(pool).await;
    let work = sc.work_dir().to_owned();
    // Any file or directory created, written or moved in, even briefly, is an event.
    let watch = DirWatch::new(&work).unwrap();
    let s = server();
    let jobs = [
        ("progressive.mp4", "b", "mp4", "video/mp4"),
        ("video-only.mp4", "b", "mp4", "video/mp4"),
        ("audio-only.m4a", "b", "m4a", "audio/mp4"),
        ("hls/index.m3u8", "b", "ts", "video/mp2t"),
        ("dash/manifest.mpd", "bv+ba", "mp4", "video/mp4"),
        ("dash/manifest.mpd", "ba", "m4a", "audio/mp4"),
    ];
    for (path, format, ext, mime) in jobs {
        let mut client = Client::connect(sc.socket()).await.unwrap();
        client.start_stream(&s.url(path), format).await.unwrap();
        let mut t = Transcript::default();
        client
            .collect_until(&mut t, |t| {
                t.data.len() >= 256 * 1024 || t.error.is_some() || t.end.is_some()
            })
            .await;
        let files = files_in_job_dirs(&work);
        assert!(files.is_empty(), "{path}: files mid-stream: {files:?}");
        tokio::time::timeout(SLOW, client.collect_until(&mut t, |_| false))
            .await
            .unwrap();
        t.assert_complete(&sc.logs(), ext, mime);
        eprintln!("{path} -f {format}: {} bytes as {mime}", t.data.len());
    }
    let t = Client::resolve(sc.socket(), &s.url("hls/index.m3u8")).await;
    assert!(t.info.is_some(), "{t:?}");
    // Each job had a directory of its own; nothing was ever written into one.
    let touched = watch.touched();
    assert!(
        touched
            .iter()
            .all(|t| t.starts_with("job-") && !t.contains('/')),
        "the work dir was written to: {touched:?}"
    );
    assert!(
        touched.len() >= jobs.len(),
        "one directory per job: {touched:?}"
    );
    let left: Vec<_> = std::fs::read_dir(&work)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "left in the work dir: {left:?}");
}

/// Entries inside the jobs' own directories under `work`.
fn files_in_job_dirs(work: &std::path::Path) -> Vec<std::path::PathBuf> {
    let dirs = std::fs::read_dir(work).unwrap().map(|e| e.unwrap().path());
    dirs.flat_map(|d| {
        std::fs::read_dir(d)
            .into_iter()
            .flatten()
            .map(|e| e.unwrap().path())
    })
    .collect()
}

async fn sigterm_stops_accepting_then_kills_after_the_drain_deadline(pool: bool) {
    let opts = SidecarOptions {
        drain_timeout: Some(2.0),
        pool: Some(pool),
        ..Default::default()
    };
    let mut sc = Sidecar::start(opts).await;
    let mut client = merge_in_flight(&sc).await;
    let group: Vec<i32> = sc.job_processes().iter().map(|p| p.pgid).collect();
    let signalled = Instant::now();
    sc.child().signal(nix::sys::signal::Signal::SIGTERM);
    let socket = sc.socket().to_owned();
    assert!(
        wait_until(Duration::from_secs(5), || !socket.exists()).await,
        "socket still there"
    );
    assert!(
        Client::connect(&socket).await.is_err(),
        "accepted a connection while draining"
    );
    assert!(
        !sc.job_processes().is_empty(),
        "the running job must get the drain period"
    );
    let status = sc.child().wait_timeout(Duration::from_secs(30)).await;
    let took = signalled.elapsed();
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        sc.logs()
    );
    assert!(
        took >= Duration::from_secs(2),
        "killed before the deadline: {took:?}"
    );
    assert!(
        took < Duration::from_secs(8),
        "the deadline was not enforced: {took:?}"
    );
    let t = client.collect(Duration::from_secs(30)).await;
    assert!(t.end.is_none(), "the job cannot have finished: {t:?}");
    let orphans: Vec<_> = group
        .iter()
        .flat_map(|g| streamgate_tests::process::in_group(*g))
        .collect();
    assert!(orphans.is_empty(), "{orphans:?}");
    eprintln!("sigterm: exited {took:?} after the signal, job killed at the 2 s deadline");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_socket_is_private_single_and_replaces_a_stale_file() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    // A stale socket: bound, then its owner gone without unlinking it.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    let opts = SidecarOptions {
        socket: Some(path.clone()),
        ..Default::default()
    };
    let sc = Sidecar::start(opts).await;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let second = std::process::Command::new(release_bin("streamgate-sidecar"))
        .arg("--socket")
        .arg(&path)
        .arg("--yt-dlp")
        .arg(yt_dlp())
        .output()
        .unwrap();
    assert!(!second.status.success());
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("already listening"), "{err}");
    let t = Client::resolve(sc.socket(), &server().url("progressive.mp4")).await;
    assert_eq!(t.kinds, [kind::INFO], "the first one still serves");
    let file = dir.path().join("not-a-socket");
    std::fs::write(&file, "keep me").unwrap();
    let third = std::process::Command::new(release_bin("streamgate-sidecar"))
        .arg("--socket")
        .arg(&file)
        .arg("--yt-dlp")
        .arg(yt_dlp())
        .output()
        .unwrap();
    assert!(!third.status.success());
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
}

/// A stream job of format `b` with the loopback egress, ranged or HEAD as the test says.
fn job(url: &str) -> StreamJob {
    StreamJob {
        url: url.to_owned(),
        format: "b".into(),
        tenant: Some("tests".into()),
        egress: loopback_egress(),
        ..StreamJob::default()
    }
}

async fn run_job(sc: &Sidecar, job: StreamJob) -> Transcript {
    let mut client = Client::connect(sc.socket()).await.unwrap();
    client.send(Frame::Stream(job)).await.unwrap();
    client.collect(SLOW).await
}

/// The `Range` values of `path`'s GETs, in order (`-` for none).
fn ranges(server: &FixtureServer, path: &str) -> Vec<String> {
    let gets = server.gets(path).into_iter();
    gets.map(|g| g.range.unwrap_or_else(|| "-".into()))
        .collect()
}

/// The sidecar's own HLS fetcher (issue 10) on AES-128 MPEG-TS and on fragmented MP4 with
/// an init section and byte ranges: the bytes of a direct `yt-dlp -o -` run; the same again
/// when the upstream drops or stalls mid-segment (resumed at the byte offset with `Range`,
/// mid-block for the encrypted one); a range request gets the whole stream; HEAD fetches no
/// segment.
#[tokio::test(flavor = "multi_thread")]
async fn hls_aes_and_fmp4_byte_ranges_are_fetched_natively() {
    // A short stall timeout, for the stalled segment (it bounds the extraction too).
    let opts = SidecarOptions {
        pool: Some(true),
        stall_timeout: Some(5.0),
        ..Default::default()
    };
    let sc = Sidecar::start(opts).await;
    let server = FixtureServer::start(fixtures());
    // (playlist, the resource cut, GETs of it to let through first, where, its start)
    let cases = [
        ("hls-aes/index.m3u8", "/hls-aes/seg002.ts", 0, 300_001, 0),
        (
            "hls-fmp4/index.m3u8",
            "/hls-fmp4/index.m4s",
            1,
            500_001,
            1354,
        ),
    ];
    for (playlist, cut, skip, at, start) in cases {
        let url = server.url(playlist);
        let (ext, mime) = match playlist.contains("fmp4") {
            true => ("mp4", "video/mp4"),
            false => ("ts", "video/mp2t"),
        };
        let reference = sha256_hex(&direct_default(&url, "b").await);
        let t = run_job(&sc, job(&url)).await;
        t.assert_complete(&sc.logs(), ext, mime);
        assert_eq!(t.metadata.as_ref().unwrap().served_by, "native");
        assert_eq!(sha256_hex(&t.data), reference, "{playlist}");
        let whole = t.data.len();

        for fault in [Fault::DropAfter(at), Fault::StallAfter(at)] {
            let what = format!("{playlist}, {fault:?}");
            for _ in 0..skip {
                server.arm(cut, Fault::DropAfter(u64::MAX)); // the init section: no cut
            }
            server.arm(cut, fault);
            let before = server.gets(cut).len();
            let t = run_job(&sc, job(&url)).await;
            t.assert_complete(&sc.logs(), ext, mime);
            assert_eq!(sha256_hex(&t.data), reference, "{what}: resumed");
            let resumed = &ranges(&server, cut)[before + skip + 1..];
            let offset = resumed
                .first()
                .and_then(|r| r.strip_prefix("bytes="))
                .and_then(|r| r.split('-').next()?.parse::<u64>().ok());
            assert!(
                offset.is_some_and(|o| o > start && o <= start + at),
                "{what}: resumed at the offset, not from the start: {:?}",
                ranges(&server, cut)
            );
        }

        let mut ranged = job(&url);
        ranged.range = Some(ByteRange::From {
            start: 100,
            end: Some(199),
        });
        let t = run_job(&sc, ranged).await;
        t.assert_complete(&sc.logs(), ext, mime);
        let meta = t.metadata.as_ref().unwrap();
        assert_eq!(
            (meta.range, meta.size),
            (None, None),
            "sent whole: {meta:?}"
        );
        assert_eq!(t.data.len(), whole);

        let segments_before = server.total_hits();
        let mut head = job(&url);
        head.head = true;
        let t = run_job(&sc, head).await;
        assert_eq!(t.kinds, [kind::METADATA, kind::END], "{t:?}");
        let meta = t.metadata.as_ref().unwrap();
        assert_eq!(
            (meta.ext.as_str(), meta.served_by.as_str()),
            (ext, "native")
        );
        assert_eq!(
            server.total_hits(),
            segments_before + 1,
            "HEAD: the playlist only: {:?}",
            server.all_hits()
        );
        eprintln!(
            "{playlist}: {whole} bytes, as direct yt-dlp, also after a drop and a stall at {at}"
        );
    }
}

/// A playlist the native fetcher refuses (here: ad markers, which yt-dlp's own downloader
/// would act on) streams through yt-dlp's downloader exactly as before.
#[tokio::test(flavor = "multi_thread")]
async fn hls_the_native_fetcher_refuses_goes_to_yt_dlp() {
    let page = Page::hls_for_yt_dlp();
    let server = FixtureServer::start_on(fixtures(), ([127, 0, 0, 1], 0).into(), vec![page]);
    let sc = sidecar(true).await;
    let url = server.url("uplynk/index.m3u8");
    let t = run_job(&sc, job(&url)).await;
    t.assert_complete(&sc.logs(), "ts", "video/mp2t");
    assert_eq!(t.metadata.as_ref().unwrap().served_by, "yt-dlp");
    assert!(sc.logs().contains("UPLYNK"), "{}", sc.logs());
    assert_eq!(sha256_hex(&t.data), sha256_hex(&direct(&url, "b").await));
}

/// A client that leaves mid-HLS closes the segment's upstream connection within a second,
/// by cancel or by closing. The one segment is large, so that it is mid-body, not sitting
/// whole in socket buffers, when the client stops reading.
#[tokio::test(flavor = "multi_thread")]
async fn a_cancelled_hls_stream_closes_its_upstream_connection() {
    let dir = large_fixture().parent().unwrap();
    let playlist = "#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXT-X-MEDIA-SEQUENCE:0\n\
        #EXTINF:10,\n/large.mp4\n#EXT-X-ENDLIST\n";
    let page = Page::new("/big/index.m3u8", "application/vnd.apple.mpegurl", playlist);
    let server = FixtureServer::start_on(dir, ([127, 0, 0, 1], 0).into(), vec![page]);
    let sc = sidecar(true).await;
    for how in ["cancel", "close"] {
        let mut client = Client::connect(sc.socket()).await.unwrap();
        client
            .start_stream(&server.url("big/index.m3u8"), "b")
            .await
            .unwrap();
        let mut t = Transcript::default();
        let four_mib = |t: &Transcript| t.data.len() >= 4 << 20 || t.error.is_some();
        tokio::time::timeout(SLOW, client.collect_until(&mut t, four_mib))
            .await
            .unwrap();
        assert_eq!(t.metadata.as_ref().unwrap().served_by, "native", "{t:?}");
        let open = || server.open_responses("/large.mp4");
        assert_eq!(open(), 1, "{how}: the segment is being sent");
        let started = Instant::now();
        match how {
            "cancel" => client.send(Frame::Cancel).await.unwrap(),
            _ => drop(client),
        }
        let closed = wait_until(Duration::from_secs(1), || open() == 0).await;
        assert!(
            closed,
            "{how}: the upstream still open after 1 s\n{}",
            sc.logs()
        );
        eprintln!("{how}: upstream closed after {:?}", started.elapsed());
    }
}
