//! Percentiles and formatting.

use std::time::Duration;

/// Nearest-rank percentile of unsorted samples; None when empty.
pub fn pct(samples: &[f64], p: f64) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    let mut v = samples.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    Some(v[rank.clamp(1, v.len()) - 1])
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// MB/s with MB = 10^6 bytes.
pub fn mbps(bytes: u64, d: Duration) -> f64 {
    if d.is_zero() {
        return 0.0;
    }
    bytes as f64 / 1e6 / d.as_secs_f64()
}

pub fn fmt_ms(v: Option<f64>) -> String {
    match v {
        None => "–".into(),
        Some(v) if v < 10.0 => format!("{v:.2} ms"),
        Some(v) if v < 1000.0 => format!("{v:.1} ms"),
        Some(v) => format!("{:.2} s", v / 1000.0),
    }
}

pub fn fmt_mbps(v: Option<f64>) -> String {
    match v {
        None => "–".into(),
        Some(v) => format!("{v:.1} MB/s"),
    }
}

pub fn fmt_kib(v: Option<f64>) -> String {
    match v {
        None => "–".into(),
        Some(v) if v.abs() < 10240.0 => format!("{v:.0} KiB"),
        Some(v) => format!("{:.1} MiB", v / 1024.0),
    }
}

/// `a / b` as "0.42×", or "–" when either side is missing.
pub fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b != 0.0 => format!("{:.2}×", a / b),
        _ => "–".into(),
    }
}

/// Today's date (UTC) as YYYY-MM-DD and the time as HH:MM, from the system clock.
pub fn utc_now() -> (String, String) {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let days = secs.div_euclid(86_400);
    let tod = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    (
        format!("{y:04}-{m:02}-{d:02}"),
        format!("{:02}:{:02}", tod / 3600, (tod % 3600) / 60),
    )
}
