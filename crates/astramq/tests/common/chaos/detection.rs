//! Time of failure detection, from the nodes' logs (tracing's timestamps).

use super::*;

/// `2026-11-25T06:40:01.123456Z` (tracing's default timestamp) as a SystemTime.
pub fn parse_log_time(s: &str) -> Option<SystemTime> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>());
    let (y, m, dd) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut t = time.split(':');
    let (hh, mm) = (
        t.next()?.parse::<i64>().ok()?,
        t.next()?.parse::<i64>().ok()?,
    );
    let secs: f64 = t.next()?.parse().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + dd - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    let whole = days * 86400 + hh * 3600 + mm * 60;
    let t = Duration::from_secs(whole as u64) + Duration::from_secs_f64(secs);
    Some(SystemTime::UNIX_EPOCH + t)
}

/// Milliseconds from `at` to the first line containing `needle` in any running node's
/// log, if there is one.
pub fn first_log_ms(c: &TestCluster, needle: &str, at: SystemTime) -> Option<u64> {
    (0..c.len())
        .filter(|&i| c.is_running(i))
        .flat_map(|i| {
            c.node(i)
                .stderr()
                .lines()
                .filter(|l| l.contains(needle))
                .filter_map(|l| parse_log_time(l.split_whitespace().next()?))
                .collect::<Vec<_>>()
        })
        .filter_map(|t| t.duration_since(at).ok())
        .min()
        .map(|d| d.as_millis() as u64)
}

/// Milliseconds from `at` to the first line, on any node still running, saying that
/// node `failed` was declared failed (`node failed; … node=nX`).
pub fn detect_ms(c: &TestCluster, failed: usize, at: SystemTime) -> Option<u64> {
    let token = format!("node={}", c.id(failed));
    (0..c.len())
        .filter(|&i| i != failed && c.is_running(i))
        .flat_map(|i| {
            c.node(i)
                .stderr()
                .lines()
                .filter(|l| l.contains("node failed") && l.split_whitespace().any(|w| w == token))
                .filter_map(|l| parse_log_time(l.split_whitespace().next()?))
                .collect::<Vec<_>>()
        })
        .filter_map(|t| t.duration_since(at).ok())
        .min()
        .map(|d| d.as_millis() as u64)
}
