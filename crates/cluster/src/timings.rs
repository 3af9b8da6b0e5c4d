//! Every timing of the takeover and repair protocols that must agree with another,
//! in one place, with why it has its value and which others it depends on. A timing
//! used by one file only, with no partner, stays there (probe periods, block times).
//!
//! ```text
//! a session moves (claim)           a node dies (repair)
//! ───────────────────────           ────────────────────
//! HANDOVER_WAIT ≤ HANDOVER_WAIT_MAX  REPAIR_LOCK_TTL > REPAIR_LOCK_WAIT
//! HANDOVER_GRACE (old node           DEAD_INBOX_DRAINS (1 s, 2 s, 1 s: ~4 s)
//!   keeps journaling for the new)    ⊂ LATE_COPY_POLLS (0.5 … 4 s after: 10 s)
//!                                    DRAINING_MARK ≥ the drains
//! ```

use std::time::Duration;

/// How long a node that handed a persistent session over keeps its subscriptions,
/// journaling (not queueing) what still arrives for the new owner, until every node
/// knows the new owner's routes. Defined by the broker (`broker::HANDOVER_GRACE`),
/// which runs it; the new owner's [`LATE_COPY_POLLS`] cover it.
pub const HANDOVER_GRACE: Duration = broker::broker::HANDOVER_GRACE;

/// How long a claim waits for the previous node to hand its session over (it closes
/// the old connection first, which may take a moment).
pub const HANDOVER_WAIT: Duration = Duration::from_secs(3);

/// How long a claim waits in all for a previous owner that is alive (by gossip and
/// Redis) or committed to the handover: a busy node works through its inbox first.
/// At least [`HANDOVER_WAIT`].
pub const HANDOVER_WAIT_MAX: Duration = Duration::from_secs(15);

/// After a session moved here, when to look in its journal for copies that reached
/// the store late (through a failed node's inbox drains, [`DEAD_INBOX_DRAINS`], or
/// from the previous node during [`HANDOVER_GRACE`]): milliseconds after the previous
/// look. They add up to 10 s, past both.
pub const LATE_COPY_POLLS: [u64; 5] = [500, 1000, 1500, 3000, 4000];

/// The lock one node holds while it takes a dead node's sessions over. Longer than
/// any repair takes, so that it expires only if its holder died too.
pub const REPAIR_LOCK_TTL: Duration = Duration::from_secs(30);

/// How long the other nodes wait for that lock before going on without the repair
/// (their own sessions are unaffected). Shorter than [`REPAIR_LOCK_TTL`]: a holder
/// that died is not waited for to the end.
pub const REPAIR_LOCK_WAIT: Duration = Duration::from_secs(15);

/// After a repair, the dead node's inbox is drained again at these delays (seconds),
/// its routes dropped at the second (`true`): until every node knows the routes of
/// the sessions' new homes, copies keep going into the dead inbox.
pub const DEAD_INBOX_DRAINS: [(u64, bool); 3] = [(1, false), (2, true), (1, false)];

/// How long the "draining" mark of a repaired node lives: longer than
/// [`DEAD_INBOX_DRAINS`] in all, so another repair does not drop the routes early.
pub const DRAINING_MARK: Duration = Duration::from_secs(15);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timings_agree() {
        assert!(HANDOVER_WAIT <= HANDOVER_WAIT_MAX);
        assert!(REPAIR_LOCK_WAIT < REPAIR_LOCK_TTL);
        let drains: u64 = DEAD_INBOX_DRAINS.iter().map(|(s, _)| s * 1000).sum();
        let polls: u64 = LATE_COPY_POLLS.iter().sum();
        assert!(
            polls > drains,
            "late-copy polls outlast the dead inbox drains"
        );
        assert!(
            polls > HANDOVER_GRACE.as_millis() as u64,
            "late-copy polls outlast the handover grace"
        );
        assert!(DRAINING_MARK.as_millis() as u64 > drains);
    }
}
