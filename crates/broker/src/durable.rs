//! What a publisher's acknowledgement waits for: a message's copies stored on other
//! nodes (the cluster's bus), and its deliveries to persistent sessions stored (the
//! session store) and then queued. A [`Durable`] is a future the publisher's own
//! connection polls, so a QoS 1/2 PUBLISH to persistent sessions costs no task of
//! its own; only deliveries that then find a connected subscriber's queue full are
//! placed by a task, which waits for room (`limits.queue_full_wait_ms`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll, Waker};

use tokio::sync::oneshot;

use crate::broker::Broker;
use crate::store::{ClusterError, JournalOutcome};

/// Resolves once a message is durable as its acknowledgement requires: `Ok`, or the
/// first error that kept a copy from being stored. Dropped unresolved (the publisher's
/// connection ended), the deliveries it waits for are still queued.
#[derive(Debug)]
pub struct Durable {
    /// Copies sent to other nodes, stored in the cluster.
    stored: Option<oneshot::Receiver<Result<(), ClusterError>>>,
    journal: Journal,
    failed: Option<ClusterError>,
}

/// Deliveries to persistent sessions, stored first and queued after.
#[derive(Debug)]
enum Journal {
    None,
    /// Waiting for the store; then the deliveries are queued (some may find their
    /// queue full: `broker` places them).
    Storing(oneshot::Receiver<JournalOutcome>, Arc<Broker>),
    /// A task waits for room in full queues.
    Placing(oneshot::Receiver<()>),
}

fn stopped() -> ClusterError {
    ClusterError::unavailable("session store or cluster stopped")
}

impl Durable {
    /// Waits for `stored` alone: copies on other nodes, or a session change.
    pub fn stored(stored: oneshot::Receiver<Result<(), ClusterError>>) -> Durable {
        Durable {
            stored: Some(stored),
            journal: Journal::None,
            failed: None,
        }
    }

    /// Waits for the remote copies (if any) and for deliveries to persistent
    /// sessions that `journal` stores; those that then find a connected session's
    /// queue full are placed by `broker` (see `Broker::place_blocked`).
    pub(crate) fn journaled(
        stored: Option<oneshot::Receiver<Result<(), ClusterError>>>,
        journal: oneshot::Receiver<JournalOutcome>,
        broker: Arc<Broker>,
    ) -> Durable {
        Durable {
            stored,
            journal: Journal::Storing(journal, broker),
            failed: None,
        }
    }

    /// The outcome if the message is durable already, without waiting.
    pub fn try_outcome(&mut self) -> Option<Result<(), ClusterError>> {
        match Pin::new(self).poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(outcome) => Some(outcome),
            Poll::Pending => None,
        }
    }
}

/// Queues deliveries that found their queue full, waiting for room as long as
/// `limits.queue_full_wait_ms` allows, on a task of their own.
fn place(broker: Arc<Broker>, mut full: Vec<crate::router::Blocked>) -> oneshot::Receiver<()> {
    let (tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        broker.place_blocked(&mut full).await;
        let _ = tx.send(());
    });
    rx
}

impl Future for Durable {
    type Output = Result<(), ClusterError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if let Some(rx) = this.stored.as_mut() {
            let outcome = ready!(Pin::new(rx).poll(cx)).unwrap_or_else(|_| Err(stopped()));
            this.stored = None;
            if let Err(e) = outcome {
                this.failed.get_or_insert(e);
            }
        }
        loop {
            match &mut this.journal {
                Journal::None => break,
                Journal::Storing(rx, broker) => {
                    let outcome = ready!(Pin::new(rx).poll(cx)).unwrap_or_else(|_| Err(stopped()));
                    this.journal = match outcome {
                        Ok(full) if full.is_empty() => Journal::None,
                        Ok(full) => Journal::Placing(place(broker.clone(), full)),
                        Err(e) => {
                            this.failed.get_or_insert(e);
                            Journal::None
                        }
                    };
                }
                Journal::Placing(rx) => {
                    // Closed only if the runtime is shutting down: nothing to wait for.
                    let _ = ready!(Pin::new(rx).poll(cx));
                    this.journal = Journal::None;
                }
            }
        }
        Poll::Ready(this.failed.take().map_or(Ok(()), Err))
    }
}

impl Drop for Durable {
    /// The publisher went away before its message was durable: the deliveries still
    /// being stored are queued all the same once they are (nothing is acknowledged,
    /// but subscribers that were sent the message keep getting it in order).
    fn drop(&mut self) {
        let Journal::Storing(rx, broker) = std::mem::replace(&mut self.journal, Journal::None)
        else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            if let Ok(Ok(mut full)) = rx.await {
                broker.place_blocked(&mut full).await;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::auth::Authenticator;
    use crate::config::Config;
    use crate::mailbox::Mailbox;
    use crate::test_support::{blocked, mailbox};

    fn broker() -> Arc<Broker> {
        let config = Config::default();
        let auth = Authenticator::load(&config).expect("anonymous");
        Broker::new(config, auth)
    }

    /// Waits (bounded) until `mailbox` holds `n` deliveries.
    async fn queued(mailbox: &Mailbox, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while mailbox.len() < n {
            assert!(
                Instant::now() < deadline,
                "{} queued, want {n}",
                mailbox.len()
            );
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn pending_until_both_the_remote_copies_and_the_journal_are_stored() {
        let (remote_tx, remote) = oneshot::channel();
        let (journal_tx, journal) = oneshot::channel();
        let mut durable = Durable::journaled(Some(remote), journal, broker());
        assert!(durable.try_outcome().is_none());
        remote_tx.send(Ok(())).unwrap();
        assert!(
            durable.try_outcome().is_none(),
            "the journal is not stored yet"
        );
        journal_tx.send(Ok(Vec::new())).unwrap();
        assert!(matches!(durable.try_outcome(), Some(Ok(()))));
    }

    #[tokio::test]
    async fn the_first_error_is_the_outcome() {
        let (remote_tx, remote) = oneshot::channel();
        let (journal_tx, journal) = oneshot::channel();
        let durable = Durable::journaled(Some(remote), journal, broker());
        remote_tx
            .send(Err(ClusterError::unavailable("remote")))
            .unwrap();
        journal_tx
            .send(Err(ClusterError::Full("journal".into())))
            .unwrap();
        let err = durable.await.expect_err("both failed");
        assert!(
            matches!(&err, ClusterError::Unavailable(r) if r == "remote"),
            "{err}"
        );
        // A sender gone without an answer is a failure, never a success.
        let (tx, rx) = oneshot::channel::<Result<(), ClusterError>>();
        drop(tx);
        assert!(Durable::stored(rx).await.is_err());
    }

    /// Deliveries the store found a full queue for are queued before the
    /// acknowledgement resolves.
    #[tokio::test]
    async fn full_queues_are_placed_before_it_resolves() {
        let m = mailbox(10);
        let (journal_tx, journal) = oneshot::channel();
        let durable = Durable::journaled(None, journal, broker());
        journal_tx.send(Ok(vec![blocked(&m)])).unwrap();
        durable.await.expect("stored");
        assert_eq!(m.len(), 1);
    }

    /// The publisher's connection ended first: what the store then hands back is
    /// queued all the same.
    #[tokio::test]
    async fn dropped_unresolved_its_deliveries_are_still_queued() {
        let m = mailbox(10);
        let (journal_tx, journal) = oneshot::channel();
        drop(Durable::journaled(None, journal, broker()));
        journal_tx.send(Ok(vec![blocked(&m)])).unwrap();
        queued(&m, 1).await;
    }
}
