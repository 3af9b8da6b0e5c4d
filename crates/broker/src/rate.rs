//! Token buckets: how fast a client may publish, and a listener accept connections.
//!
//! Pure logic over the instants the caller passes in (no clock read, no timer), so it
//! is property-tested against its contract: over any interval, what was taken is at
//! most one burst plus the rate times the interval, plus the one take that went into
//! debt.
//!
//! A take never fails: it may leave the bucket in debt, and then says how long to
//! wait until the debt is repaid. The client loop processes the PUBLISH it already
//! read (nothing is lost) and stops reading its socket for that long, so TCP slows
//! the publisher down.

use std::time::{Duration, Instant};

/// A token bucket refilled at `rate` tokens a second, holding at most `burst`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket: `rate` tokens a second, one second of burst (at least one token).
    pub fn new(rate: f64, now: Instant) -> TokenBucket {
        let burst = rate.max(1.0);
        TokenBucket {
            rate,
            burst,
            tokens: burst,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.last = self.last.max(now);
    }

    /// Takes `n` tokens at `now`. `None` when the bucket was not left in debt;
    /// otherwise how long until it is out of debt (the caller should not take again
    /// before then).
    pub fn take(&mut self, n: f64, now: Instant) -> Option<Duration> {
        self.refill(now);
        self.tokens -= n;
        (self.tokens < 0.0).then(|| Duration::from_secs_f64(-self.tokens / self.rate))
    }

    /// Takes one token if the bucket holds one (a refusal takes nothing).
    pub fn try_take_one(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The shortest pause of a throttled client: it then reads a few milliseconds' worth of
/// messages per pause, and costs one timer per pause rather than one per message.
pub const MIN_PAUSE: Duration = Duration::from_millis(10);

/// What a client may publish: messages and bytes per second (either may be off).
#[derive(Debug, Clone)]
pub struct PublishLimiter {
    messages: Option<TokenBucket>,
    bytes: Option<TokenBucket>,
}

/// Which limit a publisher ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exceeded {
    /// `limits.max_publish_rate`.
    MessageRate,
    /// `limits.max_publish_bytes_rate`.
    ByteRate,
}

impl PublishLimiter {
    /// A limiter for `max_rate` messages and `max_bytes_rate` bytes a second (0 = no
    /// limit); `None` when both are off.
    pub fn new(max_rate: u32, max_bytes_rate: u64, now: Instant) -> Option<PublishLimiter> {
        let bucket = |r: f64| (r > 0.0).then(|| TokenBucket::new(r, now));
        let limiter = PublishLimiter {
            messages: bucket(f64::from(max_rate)),
            bytes: bucket(max_bytes_rate as f64),
        };
        (limiter.messages.is_some() || limiter.bytes.is_some()).then_some(limiter)
    }

    /// Accounts one PUBLISH of `size` bytes: how long to stop reading, and why, when
    /// a limit is exceeded (the longer wait of the two, at least [`MIN_PAUSE`]; waiting
    /// longer than the debt only lets tokens refill, up to the burst, so the rate
    /// still holds).
    pub fn publish(&mut self, size: usize, now: Instant) -> Option<(Duration, Exceeded)> {
        let m = self.messages.as_mut().and_then(|b| b.take(1.0, now));
        let b = self.bytes.as_mut().and_then(|b| b.take(size as f64, now));
        let (wait, why) = match (m, b) {
            (Some(m), Some(b)) if b > m => (b, Exceeded::ByteRate),
            (Some(m), _) => (m, Exceeded::MessageRate),
            (None, Some(b)) => (b, Exceeded::ByteRate),
            (None, None) => return None,
        };
        Some((wait.max(MIN_PAUSE), why))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_full_bucket_gives_one_burst_then_waits() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10.0, t0);
        for _ in 0..10 {
            assert_eq!(b.take(1.0, t0), None);
        }
        let wait = b.take(1.0, t0).expect("in debt");
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-9, "{wait:?}");
        // Repaid after the wait: the next take goes into debt again by one token.
        let wait = b.take(1.0, t0 + wait).expect("in debt again");
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-9, "{wait:?}");
    }

    #[test]
    fn limiter_reports_the_longer_wait() {
        let t0 = Instant::now();
        let mut l = PublishLimiter::new(100, 1000, t0).unwrap();
        assert_eq!(l.publish(1000, t0), None);
        let (wait, why) = l.publish(500, t0).unwrap();
        assert_eq!(why, Exceeded::ByteRate);
        assert!((wait.as_secs_f64() - 0.5).abs() < 1e-9);
        assert!(PublishLimiter::new(0, 0, t0).is_none());
        // A tiny debt still pauses for MIN_PAUSE.
        let mut l = PublishLimiter::new(1_000_000, 0, t0).unwrap();
        for _ in 0..1_000_000 {
            l.publish(1, t0);
        }
        assert_eq!(l.publish(1, t0), Some((MIN_PAUSE, Exceeded::MessageRate)));
    }

    #[test]
    fn try_take_one_refuses_without_debt() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(2.0, t0);
        assert!(b.try_take_one(t0));
        assert!(b.try_take_one(t0));
        assert!(!b.try_take_one(t0));
        assert!(!b.try_take_one(t0 + Duration::from_millis(400)));
        assert!(b.try_take_one(t0 + Duration::from_millis(500)));
    }

    proptest! {
        /// A caller that honours the waits takes at most burst + rate * elapsed, plus
        /// the one take that went into debt; and never waits longer than needed to
        /// repay that take.
        #[test]
        fn takes_stay_within_rate_and_burst(
            rate in 1u32..5000,
            steps in prop::collection::vec((0u64..50_000, 1u32..2000), 1..200),
        ) {
            let rate = f64::from(rate);
            let t0 = Instant::now();
            let mut b = TokenBucket::new(rate, t0);
            let mut now = t0;
            let mut taken = 0.0;
            let mut largest = 0.0f64;
            for (gap_us, n) in steps {
                now += Duration::from_micros(gap_us);
                let n = f64::from(n);
                taken += n;
                largest = largest.max(n);
                if let Some(wait) = b.take(n, now) {
                    prop_assert!(wait.as_secs_f64() <= n / rate + 1e-6);
                    now += wait;
                }
                let elapsed = (now - t0).as_secs_f64();
                prop_assert!(
                    taken <= rate.max(1.0) + rate * elapsed + largest + 1e-6,
                    "taken {taken} in {elapsed}s at {rate}/s"
                );
            }
        }

        /// Without debt, acceptances over any run never exceed burst + rate * elapsed.
        #[test]
        fn try_take_one_stays_within_rate(
            rate in 1u32..1000,
            gaps in prop::collection::vec(0u64..20_000, 1..500),
        ) {
            let rate = f64::from(rate);
            let t0 = Instant::now();
            let mut b = TokenBucket::new(rate, t0);
            let mut now = t0;
            let mut accepted = 0.0;
            for gap in gaps {
                now += Duration::from_micros(gap);
                if b.try_take_one(now) {
                    accepted += 1.0;
                }
                let elapsed = (now - t0).as_secs_f64();
                prop_assert!(accepted <= rate + rate * elapsed + 1e-6);
            }
        }
    }
}
