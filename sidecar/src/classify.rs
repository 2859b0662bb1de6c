//! yt-dlp's exit status and stderr → a stable [`ErrorCode`] and a short message.
//!
//! yt-dlp has no machine-readable errors; its `ERROR:` lines are stable enough in practice
//! and the tests below pin the exact lines of the pinned version.

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use streamgate_protocol::{ErrorCode, JobError};

/// yt-dlp's warning when the formats of a `+` request cannot be merged to stdout: it would
/// then send them one after the other, which no player can use.
const MERGE_REFUSED: &str = "The formats will be streamed one after the other";
/// yt-dlp's exit status when `--break-match-filters` rejected the format (the protocol
/// filter of `ytdlp.rs`, the only match filter the sidecar sets).
const REJECTED: i32 = 101;
/// Longest message passed on; yt-dlp can quote whole pages.
const MAX_MESSAGE: usize = 400;

/// Whether yt-dlp announced that it would concatenate instead of merge.
pub fn merge_refused(stderr: &str) -> bool {
    stderr.contains(MERGE_REFUSED)
}

/// Patterns in the order they are tried; the first match wins. More specific first: a 404
/// reads "Unable to download webpage: HTTP Error 404".
const RULES: &[(&str, ErrorCode)] = &[
    (MERGE_REFUSED, ErrorCode::FormatUnavailable),
    (
        "Requested format is not available",
        ErrorCode::FormatUnavailable,
    ),
    ("Invalid format specification", ErrorCode::FormatUnavailable),
    ("is not a valid URL", ErrorCode::UnsupportedUrl),
    ("Unsupported URL", ErrorCode::UnsupportedUrl),
    ("HTTP Error 404", ErrorCode::NotFound),
    ("HTTP Error 410", ErrorCode::NotFound),
    ("Video unavailable", ErrorCode::NotFound),
    ("This video is unavailable", ErrorCode::NotFound),
    ("Private video", ErrorCode::NotFound),
    ("No video formats found", ErrorCode::NotFound),
    ("timed out", ErrorCode::Timeout),
    ("ffmpeg is not installed", ErrorCode::Internal),
    ("ffmpeg could not be found", ErrorCode::Internal),
    ("Traceback (most recent call last)", ErrorCode::Internal),
];

/// Classifies a failed run. `stderr` is everything yt-dlp wrote; `status` is `None` when the
/// process had to be killed. Any other `ERROR:` is an upstream failure (a site or network
/// problem); a failure without one is `internal` (yt-dlp crashed or was killed).
pub fn classify(stderr: &str, status: Option<ExitStatus>) -> JobError {
    if let Some(limit) = past_a_limit(stderr, status) {
        return limit;
    }
    let first_error = stderr.lines().find_map(|line| line.strip_prefix("ERROR: "));
    for (pattern, code) in RULES {
        if stderr.contains(pattern) {
            let line = stderr
                .lines()
                .find(|l| l.contains(pattern))
                .unwrap_or(pattern);
            let message = first_error.filter(|e| e.contains(pattern)).unwrap_or(line);
            return JobError::new(*code, trim(message));
        }
    }
    if let Some(message) = first_error {
        return JobError::new(ErrorCode::UpstreamFailed, trim(message));
    }
    if status.and_then(|s| s.code()) == Some(REJECTED) {
        return JobError::new(
            ErrorCode::FormatUnavailable,
            "the format's protocol needs a downloader that writes fragments to disk",
        );
    }
    let message = match status {
        Some(s) => format!("yt-dlp failed ({s}) without an error message"),
        None => "yt-dlp did not exit and was killed".to_owned(),
    };
    JobError::new(ErrorCode::Internal, message)
}

/// Signs that a job process (yt-dlp or ffmpeg) hit a limit of its confinement (confine.rs),
/// and the flag that sets it: an allocation refused (Python's `MemoryError`, the dynamic
/// loader unable to map a library, `ENOMEM`'s text), no descriptor left, or the kernel's
/// signal at the CPU limit. The operator learns which flag to raise.
const LIMITS: &[(&str, &str)] = &[
    (
        "MemoryError",
        "ran out of memory (its address space limit, --job-memory-mib)",
    ),
    (
        "failed to map segment from shared object",
        "ran out of memory (its address space limit, --job-memory-mib)",
    ),
    (
        "Cannot allocate memory",
        "ran out of memory (its address space limit, --job-memory-mib)",
    ),
    (
        "Too many open files",
        "ran out of file descriptors (--job-open-files)",
    ),
];

/// The failure of a job process past a limit of its confinement, if that is what `stderr`
/// and `status` show; `internal`: the sidecar's settings, not the media, are the cause.
pub(crate) fn past_a_limit(stderr: &str, status: Option<ExitStatus>) -> Option<JobError> {
    if status.and_then(|s| s.signal()) == Some(libc::SIGXCPU) {
        let msg = "the job used up its CPU time (--job-cpu-secs)";
        return Some(JobError::new(ErrorCode::Internal, msg));
    }
    let (_, what) = LIMITS.iter().find(|(sign, _)| stderr.contains(sign))?;
    Some(JobError::new(
        ErrorCode::Internal,
        format!("the job {what}"),
    ))
}

/// Drops the `WARNING:`/`ERROR:` prefix, yt-dlp's exception chain and bug-report footer,
/// and caps the length on a character boundary.
fn trim(line: &str) -> String {
    let line = line.trim();
    let line = line.strip_prefix("WARNING: ").unwrap_or(line);
    let line = line.split(" (caused by ").next().unwrap_or(line);
    let line = line
        .split("; please report this issue")
        .next()
        .unwrap_or(line)
        .trim();
    if line.len() <= MAX_MESSAGE {
        return line.to_owned();
    }
    let mut end = MAX_MESSAGE;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &line[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn past_a_limit_of_the_confinement() {
        let oom = "Traceback (most recent call last):\n  File \"x\", line 1\nMemoryError\n";
        let e = classify(oom, Some(ExitStatus::from_raw(1 << 8)));
        assert_eq!(e.code, ErrorCode::Internal);
        assert!(e.message.contains("--job-memory-mib"), "{e:?}");
        let e = classify("", Some(ExitStatus::from_raw(libc::SIGXCPU)));
        assert!(e.message.contains("--job-cpu-secs"), "{e:?}");
        // ffmpeg under a too small address space: the loader's line, exit 127.
        let ld = "ffmpeg: error while loading shared libraries: libx265.so.199: failed to map segment from shared object\n";
        let e = past_a_limit(ld, Some(ExitStatus::from_raw(127 << 8))).expect("a limit");
        assert_eq!(e.code, ErrorCode::Internal);
        assert!(e.message.contains("--job-memory-mib"), "{e:?}");
        let e = past_a_limit("pipe:3: Too many open files\n", None).expect("a limit");
        assert!(e.message.contains("--job-open-files"), "{e:?}");
        assert!(past_a_limit("pipe:3: Invalid data found when processing input\n", None).is_none());
    }

    fn code(stderr: &str) -> (ErrorCode, String) {
        let e = classify(stderr, Some(ExitStatus::from_raw(1 << 8)));
        (e.code, e.message)
    }

    // Lines below are verbatim from yt-dlp 2026.10.26 against the test fixtures.
    const FMT_WARNING: &str = "WARNING: \"-f best\" selects the best pre-merged format which is often not the best option.\n";

    #[test]
    fn not_found() {
        let err = "ERROR: [generic] missing: Unable to download webpage: HTTP Error 404: File not found (caused by <HTTPError 404: File not found>)\n";
        let (c, m) = code(&format!("{FMT_WARNING}{err}"));
        assert_eq!(c, ErrorCode::NotFound);
        assert_eq!(
            m,
            "[generic] missing: Unable to download webpage: HTTP Error 404: File not found"
        );
    }

    #[test]
    fn unsupported() {
        let page = "WARNING: [generic] Falling back on generic information extractor\nERROR: Unsupported URL: http://127.0.0.1:8799/page.html\n";
        assert_eq!(
            code(page),
            (
                ErrorCode::UnsupportedUrl,
                "Unsupported URL: http://127.0.0.1:8799/page.html".into()
            )
        );
        let dash = "ERROR: [generic] '-http://x' is not a valid URL\n";
        assert_eq!(code(dash).0, ErrorCode::UnsupportedUrl);
    }

    #[test]
    fn format_unavailable() {
        let err = "ERROR: [generic] progressive: Requested format is not available. Use --list-formats for a list of available formats\n";
        assert_eq!(code(err).0, ErrorCode::FormatUnavailable);
    }

    #[test]
    fn unmergeable_pair_wins_over_later_errors() {
        let err = "WARNING: [generic] Falling back on generic information extractor\n\
            WARNING: You have requested downloading multiple formats to stdout but the formats are incompatible for simultaneous download. The formats will be streamed one after the other\n\
            ERROR: The downloaded file is empty\nERROR: The downloaded file is empty\n";
        assert!(merge_refused(err));
        let (c, m) = code(err);
        assert_eq!(c, ErrorCode::FormatUnavailable);
        assert!(
            m.starts_with("You have requested downloading multiple formats"),
            "{m}"
        );
    }

    #[test]
    fn upstream_and_timeout() {
        let refused = "ERROR: [generic] x: Unable to download webpage: [Errno 111] Connection refused (caused by TransportError('[Errno 111] Connection refused'))\n";
        assert_eq!(
            code(refused),
            (
                ErrorCode::UpstreamFailed,
                "[generic] x: Unable to download webpage: [Errno 111] Connection refused".into()
            )
        );
        let five = "ERROR: unable to download video data: HTTP Error 503: Service Unavailable\n";
        assert_eq!(code(five).0, ErrorCode::UpstreamFailed);
        let slow = "ERROR: [generic] x: Unable to download webpage: The read operation timed out (caused by TransportError('The read operation timed out'))\n";
        assert_eq!(code(slow).0, ErrorCode::Timeout);
    }

    #[test]
    fn internal_without_error_line() {
        assert_eq!(code("").0, ErrorCode::Internal);
        assert_eq!(classify("", None).code, ErrorCode::Internal);
        let crash = "Traceback (most recent call last):\n  File \"yt_dlp/__main__.py\", line 1\nKeyError: 'x'\n";
        assert_eq!(code(crash).0, ErrorCode::Internal);
    }

    #[test]
    fn protocol_filter_rejection() {
        let e = classify("", Some(ExitStatus::from_raw(101 << 8)));
        assert_eq!(e.code, ErrorCode::FormatUnavailable);
    }

    #[test]
    fn long_messages_are_capped_on_a_char_boundary() {
        let long = format!("ERROR: {}\n", "é".repeat(1000));
        let (_, m) = code(&long);
        assert!(m.len() <= MAX_MESSAGE + '…'.len_utf8(), "{}", m.len());
    }
}
