//! Issue 13: the soak's 60-second version, the same code as `scripts/soak` (the bench's
//! `soak` subcommand): 64 clients of mixed requests against one gateway + sidecar. It fails
//! on any unexpected outcome (a 5xx above all), on growth of the gateway's or the sidecar's
//! PSS or descriptors, or on a job process or descriptor left once the load stops; the
//! report and the plot stay in `target/soak-test/`.

use std::process::Command;

use streamgate_tests::paths::{release_bin, repo_root, target_dir, without_test_env, yt_dlp};

#[test]
fn sixty_seconds_of_mixed_load_leave_no_5xx_growth_or_leftover() {
    // Built the same way as the gateway (one `cargo build --release --bin`, or none under
    // scripts/test), so the bench and the binaries it runs are of the same tree.
    let gateway = release_bin("streamgate");
    release_bin("streamgate-sidecar");
    let bench = release_bin("streamgate-bench");
    let work = target_dir().join("soak-test");
    let mut cmd = Command::new(bench);
    let status = without_test_env(&mut cmd)
        .current_dir(repo_root())
        .args(["soak", "--secs", "60", "--concurrency", "64"])
        .arg("--gateway")
        .arg(gateway)
        .arg("--yt-dlp")
        .arg(yt_dlp())
        .arg("--work")
        .arg(&work)
        .arg("--out")
        .arg(work.join("soak.md"))
        .status()
        .expect("run streamgate-bench soak");
    assert!(
        status.success(),
        "the soak failed ({status}): {}",
        work.join("soak.md").display()
    );
}
