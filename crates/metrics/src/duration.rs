//! How long something took, as the reports and the training log print it.

/// `s` seconds as `1h02m03s`, `2m03s` or `3s` (rounded to the second; negative is 0): the wall
/// times of report tables and the progress lines' estimate of the time left.
///
/// ```
/// assert_eq!(recallseg_metrics::format_seconds(3723.4), "1h02m03s");
/// assert_eq!(recallseg_metrics::format_seconds(123.0), "2m03s");
/// assert_eq!(recallseg_metrics::format_seconds(-1.0), "0s");
/// ```
pub fn format_seconds(s: f64) -> String {
    let s = s.max(0.0).round() as u64;
    let (h, m, s) = (s / 3600, (s / 60) % 60, s % 60);
    if h > 0 {
        format!("{h}h{m:02}m{s:02}s")
    } else if m > 0 {
        format!("{m}m{s:02}s")
    } else {
        format!("{s}s")
    }
}
