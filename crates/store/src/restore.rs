//! Puts what the data directory held back into a fresh broker, before it accepts
//! anyone: retained messages, and every persistent session as if its connection had
//! just been lost, with the time the process was stopped counted against its expiry
//! and its will's delay (wall-clock time, [MQTT-3.1.2-23] and [MQTT-3.1.3-9]).

use broker::handle::LocalBroker;
use broker::session::PendingWill;

use crate::db::Loaded;
use crate::records::unix_ms;

/// What [`install`] did, for the start-up log line.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Installed {
    /// Sessions waiting for their clients again.
    pub sessions: usize,
    /// Sessions that expired while the process was stopped (ended now).
    pub expired: usize,
    /// Deliveries queued or in flight again.
    pub messages: usize,
    /// Retained messages.
    pub retained: usize,
}

/// Installs `loaded` into `broker` (whose store is already the disk store, so the
/// sessions' parking and ends are written back).
pub async fn install(broker: &LocalBroker, loaded: Loaded) -> Installed {
    let mut done = Installed::default();
    for msg in loaded.retained {
        broker.set_retained(&msg);
        done.retained += 1;
    }
    let now = unix_ms();
    for s in loaded.sessions {
        let down_secs = now.saturating_sub(s.ended_at_ms) / 1000;
        let client_id = s.client_id.clone();
        let mut will = s.row.will.map(|will| PendingWill {
            client_id: client_id.clone(),
            username: s.row.username.clone(),
            will,
        });
        let expiry = s.row.expiry_secs;
        let left = if expiry == u32::MAX {
            Some(expiry)
        } else {
            u64::from(expiry)
                .checked_sub(down_secs)
                .filter(|l| *l > 0)
                .map(|l| l as u32)
        };
        let Some(left) = left else {
            // Expired while stopped: the session ends now, and a will still waiting
            // goes out now, late, rather than never.
            done.expired += 1;
            tracing::debug!(%client_id, "stored session expired while the broker was stopped");
            broker.end_expired(client_id, will);
            continue;
        };
        if let Some(w) = will.as_mut() {
            let delay = w.will.properties.will_delay_interval.unwrap_or(0);
            let delay_left = u64::from(delay).saturating_sub(down_secs) as u32;
            w.will.properties.will_delay_interval = (delay_left > 0).then_some(delay_left);
        }
        let mut snapshot = s.snapshot;
        snapshot.expiry_secs = left;
        done.messages += snapshot.queued.len() + snapshot.inflight.len();
        let username = s.row.username.as_deref();
        if broker.adopt(client_id, 1, snapshot, will, username).await {
            done.sessions += 1;
        }
    }
    done
}
