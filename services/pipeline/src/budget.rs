//! The service-wide memory budget: every client chunk admitted and every processor
//! result read is charged here until its ticket has been handed to the client. Readers
//! wait for room before they read more (so HTTP/2 flow control slows the peer instead of
//! memory growing); nothing already read is ever dropped to make room.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use tokio::sync::Notify;

/// Bytes a held message costs beyond its encoded size, charged with it: its decoded
/// form (a `DataChunk` is 200 bytes before its payload), its queue slot and its share of
/// the ticket and response that carry it.
pub const MESSAGE_OVERHEAD: usize = 256;

/// Bytes charged across every session, against a limit.
#[derive(Debug)]
pub struct Budget {
    limit: usize,
    used: AtomicUsize,
    freed: Notify,
    in_use: metrics::Gauge,
    waits: metrics::Counter,
}

/// Bytes held against the budget until dropped.
#[derive(Debug)]
pub struct Charge {
    budget: Arc<Budget>,
    bytes: usize,
}

impl Drop for Charge {
    fn drop(&mut self) {
        if self.bytes > 0 {
            let before = self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
            let after = before - self.bytes;
            self.budget.in_use.set(after as f64);
            // Readers wait only while the budget is full, so only a drop that makes room
            // wakes them (a waiter that registered before this saw it full, or sees room).
            if before >= self.budget.limit && after < self.budget.limit {
                self.budget.freed.notify_waiters();
            }
        }
    }
}

impl Budget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit: limit.max(1),
            used: AtomicUsize::new(0),
            freed: Notify::new(),
            in_use: metrics::gauge!(crate::instruments::MEMORY_BUDGET_USED_BYTES),
            waits: metrics::counter!(crate::instruments::MEMORY_BUDGET_WAITS_TOTAL),
        })
    }

    /// The limit in bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes charged now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    /// True when readers must wait.
    pub fn is_full(&self) -> bool {
        self.used() >= self.limit
    }

    /// Waits until the budget is below its limit. A reader that passes reads at most one
    /// message (bounded by the message limit) before it checks again, so the budget can
    /// be overshot by at most one message per reader.
    pub async fn room(&self) {
        let mut counted = false;
        loop {
            let freed = self.freed.notified();
            if !self.is_full() {
                return;
            }
            if !std::mem::replace(&mut counted, true) {
                self.waits.increment(1);
            }
            freed.await;
        }
    }

    /// Charges a processor result of `encoded_len` bytes, plus [`MESSAGE_OVERHEAD`]: what
    /// the session keeps for it besides its bytes, so the budget bounds how many results
    /// are held, not only their bytes (a processor that answers with a flood of empty
    /// results fills it too). Client chunks are counted by the session's window and
    /// charged their bytes only: charged more, a burst of sessions' chunks alone could fill
    /// the budget and leave no room for the results that would free it.
    pub fn charge_result(self: &Arc<Self>, encoded_len: usize) -> Charge {
        self.charge(encoded_len + MESSAGE_OVERHEAD)
    }

    /// Charges `bytes` that are already in memory.
    pub fn charge(self: &Arc<Self>, bytes: usize) -> Charge {
        let before = self.used.fetch_add(bytes, Ordering::AcqRel);
        self.in_use.set((before + bytes) as f64);
        Charge {
            budget: self.clone(),
            bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn readers_wait_while_full_and_go_on_when_a_charge_drops() {
        let budget = Budget::new(100);
        let big = budget.charge(150);
        assert!(budget.is_full());
        let waiter = tokio::spawn({
            let budget = budget.clone();
            async move { budget.room().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "a full budget makes readers wait");
        drop(big);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("room after the charge dropped")
            .unwrap();
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn an_empty_result_still_takes_room() {
        let budget = Budget::new(10 * MESSAGE_OVERHEAD);
        let held: Vec<_> = (0..10).map(|_| budget.charge_result(0)).collect();
        assert!(
            budget.is_full(),
            "ten empty results fill a budget of ten overheads"
        );
        drop(held);
        assert_eq!(budget.used(), 0);
    }

    #[tokio::test]
    async fn charges_add_up_and_release_exactly() {
        let budget = Budget::new(1000);
        let a = budget.charge(300);
        let b = budget.charge(200);
        assert_eq!(budget.used(), 500);
        drop(a);
        assert_eq!(budget.used(), 200);
        drop(b);
        assert_eq!(budget.used(), 0);
        budget.room().await;
    }
}
