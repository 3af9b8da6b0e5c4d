//! Arrival order across connections: bytes that reach the broker in order on two
//! sockets take effect in that order, as far as the runtime lets us see the order.
//!
//! Why this is needed: when one poll of tokio's I/O driver finds several sockets
//! readable, it wakes their tasks in the order the kernel reported them (the order
//! their data arrived), but the scheduler does not run them in that order: the task
//! woken last goes first (each worker's LIFO slot), and an idle worker may steal the
//! first while the waking worker runs the second. A client's PUBLISH was routed
//! before another client's SUBSCRIBE that had arrived microseconds earlier, and the
//! subscriber missed the message (in up to half the tries on two worker threads,
//! nine in ten on one: tests/arrival_order.rs).
//!
//! So a plain-TCP connection waits for its socket with its own waker, a [`ReadWake`].
//! Waking it numbers the wake-up (the I/O driver is polled by one thread at a time,
//! so the numbers follow the kernel's order) and marks the number *unhandled*. A
//! connection that is about to handle its new bytes first waits, with
//! [`wait_for_earlier`], while any of the [`LOOKBACK`] wake-ups numbered just before
//! its own is unhandled, and marks its own handled once it has handled the first
//! packet it read ([`handled`]). The wait is bounded by [`MAX_WAIT`], so a connection
//! whose task does not get to its bytes delays the others once, a little, never
//! indefinitely; and it ends once [`BUSY_AFTER`] later wake-ups were numbered: in a
//! busy broker connections queue for the CPU anyway, and waiting for every earlier
//! one would form a convoy. The order is kept where it is cheap to keep, a broker
//! that is not saturated; `astramq_arrival_waits_total` counts how waits ended.
//!
//! What is and is not promised: docs/architecture.md, "Arrival order".

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Wake;
use std::time::Duration;

use atomic_waker::AtomicWaker;

/// How long a connection that overtook others waits for them to handle what they
/// read: long enough to cover a worker thread the OS descheduled for a time slice
/// or two on a busy machine after taking an earlier connection (at 5 ms, four
/// brokers sharing 2 cores missed the order in 2.5 % of the rounds of
/// tests/arrival_order.rs; at 20 ms, under 2 %), short enough that a stuck one
/// costs the others little.
pub const MAX_WAIT: Duration = Duration::from_millis(20);

/// A connection stops waiting once this many wake-ups were numbered after its own:
/// the broker is busy, its connections queue for the CPU anyway, and waiting would
/// only hold up every one behind the earliest (a convoy: under the QoS 1 pairs
/// benchmark nearly every read waited, dozens of yields each, and throughput fell
/// by a fifth).
pub const BUSY_AFTER: u64 = 16;

/// How many wake-ups just before its own a connection waits for. Wake-ups further
/// back belong to earlier polls of the sockets, long since handled or stuck.
pub const LOOKBACK: u64 = 64;

const WINDOW_WORDS: usize = 64;
const WINDOW: u64 = WINDOW_WORDS as u64 * 64;

/// The next wake-up's number (0 means none).
static NEXT: AtomicU64 = AtomicU64::new(1);

/// The process's unhandled wake-ups.
static UNHANDLED: Unhandled = Unhandled::new();

/// Unhandled wake-ups, one bit each, indexed by number modulo the window.
struct Unhandled([AtomicU64; WINDOW_WORDS]);

impl Unhandled {
    const fn new() -> Self {
        Self([const { AtomicU64::new(0) }; WINDOW_WORDS])
    }

    fn word_and_bit(&self, n: u64) -> (&AtomicU64, u64) {
        let slot = n % WINDOW;
        (&self.0[(slot / 64) as usize], 1 << (slot % 64))
    }

    fn mark(&self, n: u64) {
        let (word, bit) = self.word_and_bit(n);
        word.fetch_or(bit, Ordering::Release);
    }

    fn clear(&self, n: u64) {
        let (word, bit) = self.word_and_bit(n);
        word.fetch_and(!bit, Ordering::Release);
    }

    /// Whether one of the [`LOOKBACK`] wake-ups before `n` is unhandled.
    fn any_before(&self, n: u64) -> bool {
        let mut m = n.saturating_sub(LOOKBACK).max(1);
        while m < n {
            let (word, _) = self.word_and_bit(m);
            let bits = word.load(Ordering::Acquire);
            // The numbers m..end share this word.
            let end = n.min((m / 64 + 1) * 64);
            let mask = (u64::MAX >> (63 - (end - 1) % 64)) & (u64::MAX << (m % 64));
            if bits & mask != 0 {
                return true;
            }
            m = end;
        }
        false
    }
}

/// Wake-up `n` has been handled (or never will be).
pub fn handled(n: u64) {
    UNHANDLED.clear(n);
}

/// Whether a connection woken `n`-th must wait before handling its bytes: one of
/// the [`LOOKBACK`] wake-ups numbered before it is unhandled.
pub fn must_wait(n: u64) -> bool {
    UNHANDLED.any_before(n)
}

/// How waits for earlier connections ended: in order, given up because the broker
/// is busy ([`BUSY_AFTER`]), given up after [`MAX_WAIT`].
static IN_ORDER: AtomicU64 = AtomicU64::new(0);
static BUSY: AtomicU64 = AtomicU64::new(0);
static TIMED_OUT: AtomicU64 = AtomicU64::new(0);

/// The `astramq_arrival_waits_total` metric: how a connection's wait for connections
/// woken before it ended.
#[derive(Debug)]
pub struct Waits;

impl prometheus_client::collector::Collector for Waits {
    fn encode(
        &self,
        encoder: prometheus_client::encoding::DescriptorEncoder<'_>,
    ) -> std::fmt::Result {
        crate::metrics::Scrape::new(encoder).counters(
            "astramq_arrival_waits",
            "Reads that waited for connections woken before them to take effect first \
             (arrival order across connections), by how the wait ended: in_order, busy \
             (given up: many later wake-ups, the broker is busy), timed_out (given up \
             after 20 ms)",
            "outcome",
            &[
                ("in_order", IN_ORDER.load(Ordering::Relaxed)),
                ("busy", BUSY.load(Ordering::Relaxed)),
                ("timed_out", TIMED_OUT.load(Ordering::Relaxed)),
            ],
        )
    }
}

/// Waits, at most [`MAX_WAIT`], until every wake-up numbered just before `n` was
/// handled. Yields to the runtime meanwhile, so an earlier connection queued on this
/// worker runs first; one taken by the other worker is running already. Gives up
/// once [`BUSY_AFTER`] later wake-ups were numbered: the broker is busy.
pub async fn wait_for_earlier(n: u64) {
    if !must_wait(n) {
        return;
    }
    let deadline = tokio::time::Instant::now() + MAX_WAIT;
    loop {
        tokio::task::yield_now().await;
        if !UNHANDLED.any_before(n) {
            IN_ORDER.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if NEXT.load(Ordering::Relaxed).saturating_sub(n) > BUSY_AFTER {
            BUSY.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            TIMED_OUT.fetch_add(1, Ordering::Relaxed);
            // Count them as handled: the next connection need not wait for them too.
            let first = n.saturating_sub(LOOKBACK).max(1);
            (first..n).for_each(handled);
            return;
        }
    }
}

/// A connection's read-readiness waker: numbers each wake-up, then wakes the
/// connection's task.
#[derive(Debug, Default)]
pub struct ReadWake {
    task: AtomicWaker,
    /// The first wake-up not yet taken by the connection (0: none).
    number: AtomicU64,
    /// Whether the connection is reading ([`ReadWake::arm`]). A wake-up while its
    /// reading is paused gets no number: no one should wait for bytes the connection
    /// will not handle soon.
    armed: AtomicBool,
}

impl ReadWake {
    /// A waker for the socket's readiness that wakes `task` through this.
    pub fn waker(self: &Arc<Self>, task: &std::task::Waker) -> std::task::Waker {
        self.task.register(task);
        std::task::Waker::from(self.clone())
    }

    /// The connection is reading: its wake-ups get numbers.
    pub fn arm(&self) {
        self.armed.store(true, Ordering::Release);
    }

    /// The connection stopped reading for a while (backpressure): its wake-ups get
    /// no numbers until it [`arm`](Self::arm)s again, and one not yet taken is
    /// handled (no one waits for it).
    pub fn disarm(&self) {
        self.armed.store(false, Ordering::Release);
        if let Some(n) = self.take() {
            handled(n);
        }
    }

    /// The wake-up that made the socket readable, if one did since the last call;
    /// the caller handles it ([`wait_for_earlier`], then [`handled`]).
    pub fn take(&self) -> Option<u64> {
        match self.number.swap(0, Ordering::AcqRel) {
            0 => None,
            n => Some(n),
        }
    }
}

impl Wake for ReadWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // Only the first wake-up before the connection reads counts: its bytes came
        // first.
        if self.armed.load(Ordering::Acquire) && self.number.load(Ordering::Acquire) == 0 {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            UNHANDLED.mark(n);
            if self
                .number
                .compare_exchange(0, n, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                handled(n);
            }
        }
        self.task.wake();
    }
}

impl Drop for ReadWake {
    fn drop(&mut self) {
        if let Some(n) = self.take() {
            handled(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_before_looks_at_the_lookback_window_only() {
        let u = Unhandled::new();
        let n = 3 * WINDOW + 10;
        u.mark(n);
        assert!(!u.any_before(n), "its own number is not earlier");
        assert!(u.any_before(n + 1));
        assert!(u.any_before(n + LOOKBACK));
        assert!(!u.any_before(n + LOOKBACK + 1));
        u.clear(n);
        assert!(!u.any_before(n + 1));
    }

    #[test]
    fn the_lookback_spans_word_boundaries_and_the_window_wraps() {
        let u = Unhandled::new();
        for n in [63, WINDOW - 1, 5 * WINDOW + 127] {
            u.mark(n);
            assert!(u.any_before(n + 2), "{n} seen from the next word");
            assert!(u.any_before(n + 1), "{n}");
            u.clear(n);
            assert!(!u.any_before(n + 2), "{n}");
        }
        assert!(!u.any_before(1) && !u.any_before(0));
    }

    /// Against a naive model: any number in `n - LOOKBACK .. n` marked, numbers a
    /// whole window apart being one (the ring).
    #[test]
    fn any_before_agrees_with_a_naive_scan() {
        let u = Unhandled::new();
        let marked = [1, 64, 65, 130, 200, 4095, 4096, 4160];
        marked.iter().for_each(|&m| u.mark(m));
        for n in 0..3 * WINDOW {
            let naive = (n.saturating_sub(LOOKBACK).max(1)..n)
                .any(|k| marked.iter().any(|&m| m % WINDOW == k % WINDOW));
            assert_eq!(u.any_before(n), naive, "n = {n}");
        }
    }

    #[test]
    fn a_second_wake_before_the_read_keeps_the_first_number() {
        let wake = Arc::new(ReadWake::default());
        let waker = wake.waker(std::task::Waker::noop());
        waker.wake_by_ref();
        assert_eq!(wake.take(), None, "not armed: not numbered");
        wake.arm();
        waker.wake_by_ref();
        let first = wake.number.load(Ordering::Acquire);
        waker.wake_by_ref();
        assert_eq!(wake.take(), Some(first));
        assert_eq!(wake.take(), None);
        handled(first);
        waker.wake_by_ref();
        let second = wake.number.load(Ordering::Acquire);
        assert!(second > first);
        wake.disarm();
        assert_eq!(wake.take(), None, "disarming handles the wake-up not taken");
    }
}
