//! Resident memory and CPU time of a process, read from `/proc/PID/{status,stat}`.
//!
//! The bench samples the broker (given `--broker-pid`) and itself, so a report shows
//! how much CPU each side used: a load generator near 100 % of its cores is the
//! bottleneck, not the broker.

use std::io;

/// One reading of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcSample {
    /// Resident set size (`VmRSS`), in bytes.
    pub rss_bytes: u64,
    /// User plus system CPU time, in clock ticks.
    pub cpu_ticks: u64,
}

/// Reads process `pid`, or this process when `None`.
pub fn sample(pid: Option<u32>) -> io::Result<ProcSample> {
    let dir = match pid {
        Some(p) => format!("/proc/{p}"),
        None => "/proc/self".to_string(),
    };
    let status = std::fs::read_to_string(format!("{dir}/status"))?;
    let stat = std::fs::read_to_string(format!("{dir}/stat"))?;
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("{dir}: {what}"));
    Ok(ProcSample {
        rss_bytes: parse_rss(&status).ok_or_else(|| bad("no VmRSS"))?,
        cpu_ticks: parse_cpu_ticks(&stat).ok_or_else(|| bad("unreadable stat"))?,
    })
}

/// Clock ticks per second (`_SC_CLK_TCK`, almost always 100).
#[allow(unsafe_code)]
pub fn ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions; it returns -1 on error.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// CPU use between two samples taken `secs` apart, in percent of one core.
pub fn cpu_percent(before: &ProcSample, after: &ProcSample, secs: f64) -> f64 {
    if secs <= 0.0 {
        return 0.0;
    }
    let ticks = after.cpu_ticks.saturating_sub(before.cpu_ticks) as f64;
    100.0 * ticks / ticks_per_second() as f64 / secs
}

/// `VmRSS:   1234 kB` → bytes.
fn parse_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// utime + stime (fields 14 and 15) of `/proc/PID/stat`. The command name (field 2)
/// may hold spaces and parentheses, so fields are counted after its last `)`.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // After ")": state is field 3, so utime (14) is the 12th, stime (15) the 13th.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Raises this process' open-file limit to its hard limit, for thousands of sockets.
/// Returns the soft limit now in force.
#[allow(unsafe_code)]
pub fn raise_nofile_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: `lim` is a valid rlimit with cur <= max.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    #[allow(clippy::unnecessary_cast)] // rlim_t is not u64 on every target
    Ok(lim.rlim_cur as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_and_stat() {
        let status = "Name:\tmosquitto\nVmPeak:\t  9000 kB\nVmRSS:\t    5120 kB\nThreads:\t1\n";
        assert_eq!(parse_rss(status), Some(5120 * 1024));
        let stat = "1234 (my (odd) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 \
                    250 75 0 0 20 0 1 0 100 1000 200";
        assert_eq!(parse_cpu_ticks(stat), Some(325));
        assert_eq!(parse_rss("Name: x\n"), None);
    }

    #[test]
    fn reads_itself() {
        let s = sample(None).unwrap();
        assert!(s.rss_bytes > 0);
        let a = ProcSample {
            rss_bytes: 0,
            cpu_ticks: 0,
        };
        let b = ProcSample {
            rss_bytes: 0,
            cpu_ticks: ticks_per_second(),
        };
        assert!((cpu_percent(&a, &b, 2.0) - 50.0).abs() < 1e-9);
    }

    #[test]
    fn raises_the_file_limit() {
        assert!(raise_nofile_limit().unwrap() > 0);
    }
}
