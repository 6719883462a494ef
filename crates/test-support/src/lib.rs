//! Test helpers shared by every crate's tests. Tests wait for conditions, never for
//! fixed sleeps: these helpers poll a condition until it holds or a generous deadline
//! passes, and then fail loudly with what was being waited for.

pub mod binary;
#[cfg(feature = "etcd")]
pub mod etcd;
#[cfg(feature = "fake-processor")]
pub mod fake_processor;
#[cfg(feature = "pki")]
pub mod pki;
pub mod ports;

use std::{future::Future, time::Duration};

/// How long `wait_until` waits before failing: generous, because CI machines are shared.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(20);

/// Polls `condition` until it returns `Some`, and returns that value.
/// Panics naming `what` if it does not happen within [`DEFAULT_WAIT`].
pub async fn wait_for<T, F, Fut>(what: &str, mut condition: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + DEFAULT_WAIT;
    let mut pause = Duration::from_millis(5);
    loop {
        if let Some(value) = condition().await {
            return value;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {DEFAULT_WAIT:?} waiting for {what}");
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// Polls `condition` until it is true. Panics naming `what` on timeout.
pub async fn wait_until<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    wait_for(what, || {
        let fut = condition();
        async move { fut.await.then_some(()) }
    })
    .await
}

/// A listener on 127.0.0.1 with a port the OS picked, so tests never race for ports.
pub async fn local_listener() -> tokio::net::TcpListener {
    tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0")
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    };

    use super::*;

    #[tokio::test]
    async fn returns_once_the_condition_holds() {
        let calls = Arc::new(AtomicU32::new(0));
        let seen = wait_for("the third call", || {
            let calls = calls.clone();
            async move {
                let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                (n >= 3).then_some(n)
            }
        })
        .await;
        assert_eq!(seen, 3);
    }

    #[tokio::test(start_paused = true)]
    #[should_panic(expected = "waiting for something that never happens")]
    async fn panics_naming_the_condition_on_timeout() {
        wait_until("something that never happens", || async { false }).await;
    }
}
