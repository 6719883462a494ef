//! A node link's request queue: the session pushes, the node's stream (tonic's request
//! body, or the embedded host) takes. A `VecDeque` under a lock with one waker, in
//! place of a tokio unbounded channel, because the channel allocates its first block of
//! 32 slots (6.4 KiB of `ProcessRequest`s) with every link, which an idle session pays
//! for nothing; this queue holds what is in it and keeps the capacity it grew to. What
//! is in it is bounded by the session's window and the service's memory budget, which
//! every chunk and result it carries is charged to.

use std::{
    collections::VecDeque,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll, Waker},
};

use futures::Stream;

struct State<T> {
    items: VecDeque<T>,
    /// The sender is gone: the stream ends once `items` is empty.
    closed: bool,
    /// The receiver is gone: pushes fail.
    gone: bool,
    waker: Option<Waker>,
}

/// The pushing end; dropping it ends the stream after what is queued.
pub struct Sender<T> {
    state: Arc<Mutex<State<T>>>,
}

/// The taking end, a [`Stream`]; dropping it drops what is queued.
pub struct Receiver<T> {
    state: Arc<Mutex<State<T>>>,
}

/// A new, empty queue (nothing allocated for items until the first push).
pub fn queue<T>() -> (Sender<T>, Receiver<T>) {
    let state = Arc::new(Mutex::new(State {
        items: VecDeque::new(),
        closed: false,
        gone: false,
        waker: None,
    }));
    (
        Sender {
            state: state.clone(),
        },
        Receiver { state },
    )
}

fn lock<T>(state: &Mutex<State<T>>) -> std::sync::MutexGuard<'_, State<T>> {
    // Nothing panics while holding the lock; a poisoned one is still consistent.
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl<T> Sender<T> {
    /// Queues `item`; false (and `item` dropped) when the receiver is gone.
    pub fn send(&self, item: T) -> bool {
        let waker = {
            let mut state = lock(&self.state);
            if state.gone {
                return false;
            }
            state.items.push_back(item);
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        true
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let waker = {
            let mut state = lock(&self.state);
            state.closed = true;
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let items = {
            let mut state = lock(&self.state);
            state.gone = true;
            std::mem::take(&mut state.items)
        };
        drop(items);
    }
}

impl<T> Stream for Receiver<T> {
    type Item = T;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut state = lock(&self.state);
        if let Some(item) = state.items.pop_front() {
            return Poll::Ready(Some(item));
        }
        if state.closed {
            return Poll::Ready(None);
        }
        match &mut state.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures::StreamExt as _;

    use super::*;

    #[tokio::test]
    async fn items_come_out_in_order_and_the_stream_ends_after_the_sender() {
        let (tx, mut rx) = queue();
        for i in 0..100 {
            assert!(tx.send(i));
        }
        drop(tx);
        let got: Vec<i32> = (&mut rx).collect().await;
        assert_eq!(got, (0..100).collect::<Vec<_>>());
        assert_eq!(rx.next().await, None, "ended stays ended");
    }

    #[tokio::test]
    async fn a_waiting_receiver_is_woken_by_a_push_and_by_the_end() {
        let (tx, mut rx) = queue::<u32>();
        let reader = tokio::spawn(async move {
            let first = rx.next().await;
            let end = rx.next().await;
            (first, end)
        });
        tokio::task::yield_now().await;
        assert!(tx.send(7));
        tokio::task::yield_now().await;
        drop(tx);
        let (first, end) = tokio::time::timeout(Duration::from_secs(5), reader)
            .await
            .expect("the reader was woken")
            .unwrap();
        assert_eq!((first, end), (Some(7), None));
    }

    #[test]
    fn a_push_after_the_receiver_went_fails_and_drops_what_was_queued() {
        let (tx, rx) = queue();
        let item = Arc::new(());
        assert!(tx.send(item.clone()));
        drop(rx);
        assert_eq!(Arc::strong_count(&item), 1, "the queued item was dropped");
        assert!(!tx.send(item.clone()));
        assert_eq!(Arc::strong_count(&item), 1, "the refused item was dropped");
    }
}
