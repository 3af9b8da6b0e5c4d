//! The session store of a node with neither Redis nor a data directory: sessions
//! live in the broker's memory (the registry and each session's mailbox) and end with
//! the process, so there is nothing to write. The broker always has a store; this one
//! says it does not persist ([`SessionStore::persists`]), so no mailbox is marked
//! stored and the broker never journals through it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::oneshot;

use super::{
    BoxFuture, ClaimRequest, ClusterClaim, ClusterError, JournalOutcome, SessionChange,
    SessionStore,
};
use crate::mailbox::Mailbox;
use crate::message::Message;
use crate::router::Blocked;

/// Sessions in memory only (see the module comment).
#[derive(Debug, Default)]
pub struct InMemory {
    ids: AtomicU64,
}

impl InMemory {
    /// A store that keeps nothing beyond the process.
    pub const fn new() -> InMemory {
        InMemory {
            ids: AtomicU64::new(0),
        }
    }
}

impl SessionStore for InMemory {
    fn persists(&self) -> bool {
        false
    }

    /// Nobody else can own a client id: epoch 0, no session to hand over (the
    /// registry keeps this node's own).
    fn claim<'a>(
        &'a self,
        _client_id: &'a str,
        _request: ClaimRequest<'a>,
    ) -> BoxFuture<'a, Result<ClusterClaim, ClusterError>> {
        Box::pin(std::future::ready(Ok(ClusterClaim::default())))
    }

    /// Stored at once (in memory is where they already are): queued now.
    fn journal(&self, entries: Vec<Blocked>) -> oneshot::Receiver<JournalOutcome> {
        let mut full = Vec::new();
        for b in entries {
            if !b.mailbox.is_online() {
                b.mailbox.push(b.delivery);
            } else if let Err(delivery) = b.mailbox.try_push(b.delivery) {
                full.push(Blocked {
                    mailbox: b.mailbox,
                    delivery,
                });
            }
        }
        let (tx, rx) = oneshot::channel();
        let _ = tx.send(Ok(full));
        rx
    }

    fn resumed(&self, _client_id: &Arc<str>, _mailbox: &Arc<Mailbox>) {}

    fn message_id<'m>(&self, msg: &'m Message) -> &'m str {
        msg.id.get_or_init(|| {
            let n = self.ids.fetch_add(1, Ordering::Relaxed);
            format!("m{n:016x}").into()
        })
    }

    fn session_changed(&self, _change: SessionChange) {}

    fn session_changed_stored(
        &self,
        _change: SessionChange,
    ) -> oneshot::Receiver<Result<(), ClusterError>> {
        let (tx, rx) = oneshot::channel();
        let _ = tx.send(Ok(()));
        rx
    }

    fn retained(&self, _msg: &Arc<Message>) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{blocked, mailbox};

    #[tokio::test]
    async fn it_claims_at_epoch_zero_and_says_it_does_not_persist() {
        let store = InMemory::new();
        assert!(!store.persists());
        let claim = store
            .claim(
                "c",
                ClaimRequest {
                    expiry_secs: 60,
                    clean_start: false,
                    will: None,
                    username: None,
                },
            )
            .await
            .expect("always");
        assert_eq!(claim.epoch, 0);
        assert!(claim.session.is_none() && claim.spilled.is_empty());
    }

    /// What it is asked to store is queued at once; a connected session's full
    /// queue hands the delivery back (the publisher waits for room), an offline
    /// session's applies its overflow policy.
    #[tokio::test]
    async fn journal_queues_at_once_and_hands_back_full_queues() {
        let online = mailbox(1);
        online.set_online(true);
        let offline = mailbox(1);
        let store = InMemory::new();
        let entries = vec![
            blocked(&online),
            blocked(&online),
            blocked(&offline),
            blocked(&offline),
        ];
        let full = store.journal(entries).await.unwrap().unwrap();
        assert_eq!(
            full.len(),
            1,
            "the second delivery to the connected session"
        );
        assert!(Arc::ptr_eq(&full[0].mailbox, &online));
        assert_eq!((online.len(), offline.len()), (1, 1));
    }
}
