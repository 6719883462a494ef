//! The one drain mechanism every server uses: while serving, work is admitted and
//! counted; once draining starts, new work is refused at once (UNAVAILABLE, so clients
//! go elsewhere) and open work gets a grace period, after which it is told to end.
//! It never decides how a piece of work ends: holders watch [`Lifecycle::aborted`].

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Admission and drain state shared by a server's handlers. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Lifecycle {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    draining: AtomicBool,
    active: AtomicUsize,
    idle: Notify,
    abort: CancellationToken,
}

/// Holds one admitted piece of work (a session, a stream) until dropped.
#[derive(Debug)]
pub struct Admitted {
    inner: Arc<Inner>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if self.inner.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.inner.idle.notify_waiters();
        }
    }
}

/// New work was refused because the server is draining.
#[derive(Debug, thiserror::Error)]
#[error("server is draining and accepts no new work; retry on another instance")]
pub struct Draining;

impl Lifecycle {
    /// A lifecycle that admits work.
    pub fn new() -> Self {
        Self::default()
    }

    /// Admits one piece of work, or refuses it when draining has started.
    pub fn admit(&self) -> Result<Admitted, Draining> {
        // Count first, then check: a drain that starts in between sees the count.
        self.inner.active.fetch_add(1, Ordering::AcqRel);
        let admitted = Admitted {
            inner: self.inner.clone(),
        };
        if self.inner.draining.load(Ordering::Acquire) {
            return Err(Draining);
        }
        Ok(admitted)
    }

    /// Work admitted and not yet finished.
    pub fn active(&self) -> usize {
        self.inner.active.load(Ordering::Acquire)
    }

    /// True once draining has started.
    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::Acquire)
    }

    /// Fires when the grace period is over: open work must end now.
    pub fn aborted(&self) -> CancellationToken {
        self.inner.abort.clone()
    }

    /// Refuses new work from now on, waits up to `grace` for open work to finish, then
    /// fires [`Lifecycle::aborted`]. Returns how much work was still open at the end.
    pub async fn drain(&self, grace: Duration) -> usize {
        self.inner.draining.store(true, Ordering::Release);
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            let idle = self.inner.idle.notified();
            if self.active() == 0 {
                break;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                break;
            }
        }
        let left = self.active();
        self.inner.abort.cancel();
        left
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn draining_refuses_new_work_and_waits_for_open_work() {
        let lifecycle = Lifecycle::new();
        let open = lifecycle.admit().expect("serving admits");
        let drain = tokio::spawn({
            let lifecycle = lifecycle.clone();
            async move { lifecycle.drain(Duration::from_secs(10)).await }
        });
        tokio::task::yield_now().await;
        assert!(lifecycle.is_draining());
        assert!(
            lifecycle.admit().is_err(),
            "a draining server admits nothing"
        );
        assert!(!lifecycle.aborted().is_cancelled());
        drop(open);
        assert_eq!(drain.await.unwrap(), 0);
        assert!(lifecycle.aborted().is_cancelled());
    }

    #[tokio::test(start_paused = true)]
    async fn the_grace_period_ends_work_that_does_not_finish() {
        let lifecycle = Lifecycle::new();
        let _stuck = lifecycle.admit().unwrap();
        let started = tokio::time::Instant::now();
        assert_eq!(lifecycle.drain(Duration::from_secs(3)).await, 1);
        assert_eq!(started.elapsed(), Duration::from_secs(3));
        assert!(lifecycle.aborted().is_cancelled());
    }

    #[test]
    fn a_refused_admission_is_not_counted() {
        let lifecycle = Lifecycle::new();
        lifecycle.inner.draining.store(true, Ordering::Release);
        assert!(lifecycle.admit().is_err());
        assert_eq!(lifecycle.active(), 0);
    }
}
