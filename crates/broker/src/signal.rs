//! [`Signal`]: wakes the one task that waits on it (a connection's loop), remembering
//! a wake-up that came while nobody waited.
//!
//! It does what tokio's `Notify` with `notify_one` does for a single waiter, but its
//! wait is a poll function rather than a future with a waiter list node: an idle
//! connection waits on two of these in every pass of its loop, and each `Notified`
//! future would add 80 bytes to the connection's task.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use atomic_waker::AtomicWaker;

/// A wake-up for one waiting task.
#[derive(Debug, Default)]
pub struct Signal {
    pending: AtomicBool,
    waker: AtomicWaker,
}

impl Signal {
    /// Wakes the waiting task, or the next one to wait if none waits now.
    pub fn notify(&self) {
        self.pending.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Ready once [`Signal::notify`] was called since the last time this was ready.
    pub fn poll_wait(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.pending.swap(false, Ordering::AcqRel) {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        // A notify between the check and the registration woke no one: look again.
        if self.pending.swap(false, Ordering::AcqRel) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Resolves as [`Signal::poll_wait`] does. Cancel-safe.
    pub fn wait(&self) -> impl Future<Output = ()> + Send + '_ {
        std::future::poll_fn(move |cx| self.poll_wait(cx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn a_notify_before_the_wait_is_kept() {
        let s = Signal::default();
        s.notify();
        tokio::time::timeout(Duration::from_secs(5), s.wait())
            .await
            .expect("the earlier notify counts");
        // Consumed: the next wait blocks until another notify.
        assert!(tokio::time::timeout(Duration::from_millis(50), s.wait())
            .await
            .is_err());
    }

    #[tokio::test]
    async fn a_notify_wakes_a_waiting_task() {
        let s = Arc::new(Signal::default());
        let waiter = tokio::spawn({
            let s = s.clone();
            async move { s.wait().await }
        });
        tokio::task::yield_now().await;
        s.notify();
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .unwrap();
    }
}
