//! The queues between a session and its streams: a node link's requests (the session
//! pushes, the node's stream takes: tonic's request body, or the embedded host) and a
//! session's responses (the session pushes, the client's response stream takes). A
//! `VecDeque` under a lock with the wakers it needs, in place of tokio's channels,
//! because a tokio channel allocates a first block of 32 slots with every channel
//! (6.4 KiB of `ProcessRequest`s, 5.4 KiB of responses), which every idle session paid
//! for nothing; this queue holds what is in it and keeps the capacity it grew to, at
//! most its bound. A node's requests are bounded by the session's window and the
//! service's memory budget (every chunk and result in them is charged to it), not here.

use std::{
    collections::VecDeque,
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard},
    task::{Context, Poll, Waker},
};

use futures::Stream;

struct State<T> {
    items: VecDeque<T>,
    /// Most items queued at once.
    cap: usize,
    /// Live senders: the receiver ends once they are gone and `items` is empty.
    senders: usize,
    /// The receiver is gone or closed: sends fail.
    gone: bool,
    /// The receiver waiting for an item.
    receiver: Option<Waker>,
    /// Senders waiting for room (woken when an item is taken, or the receiver goes).
    room: Vec<Waker>,
    /// Tasks waiting for the receiver to go (woken only then, not per item).
    closed: Vec<Waker>,
}

/// The sending end; the last one dropped ends the receiver after what is queued.
pub struct Sender<T> {
    state: Arc<Mutex<State<T>>>,
}

/// The receiving end, also a [`Stream`]; dropping it drops what is queued.
pub struct Receiver<T> {
    state: Arc<Mutex<State<T>>>,
}

/// Why an item was not queued; the item comes back.
#[derive(Debug)]
pub enum TrySendError<T> {
    /// The queue holds its bound.
    Full(T),
    /// The receiver is gone.
    Closed(T),
}

/// A new, empty queue of at most `cap` items (nothing is allocated for items until the
/// first send).
pub fn bounded<T>(cap: usize) -> (Sender<T>, Receiver<T>) {
    let state = Arc::new(Mutex::new(State {
        items: VecDeque::new(),
        cap: cap.max(1),
        senders: 1,
        gone: false,
        receiver: None,
        room: Vec::new(),
        closed: Vec::new(),
    }));
    (
        Sender {
            state: state.clone(),
        },
        Receiver { state },
    )
}

/// A queue bounded by its users, not by a count.
pub fn unbounded<T>() -> (Sender<T>, Receiver<T>) {
    bounded(usize::MAX)
}

impl<T> State<T> {
    /// Marks the receiver gone; returns every waiting sender to wake.
    fn go(&mut self) -> Vec<Waker> {
        self.gone = true;
        let mut waiting = std::mem::take(&mut self.room);
        waiting.append(&mut self.closed);
        waiting
    }
}

fn lock<T>(state: &Mutex<State<T>>) -> MutexGuard<'_, State<T>> {
    // Nothing panics while holding the lock; a poisoned one is still consistent.
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Keeps `waker` in `wakers` unless it is there already (a task polled again).
fn register(wakers: &mut Vec<Waker>, waker: &Waker) {
    if !wakers.iter().any(|w| w.will_wake(waker)) {
        wakers.push(waker.clone());
    }
}

fn wake_all(wakers: Vec<Waker>) {
    for waker in wakers {
        waker.wake();
    }
}

impl<T> Sender<T> {
    /// Queues `item` if there is room.
    pub fn try_send(&self, item: T) -> Result<(), TrySendError<T>> {
        let receiver = {
            let mut state = lock(&self.state);
            if state.gone {
                return Err(TrySendError::Closed(item));
            }
            if state.items.len() >= state.cap {
                return Err(TrySendError::Full(item));
            }
            state.items.push_back(item);
            state.receiver.take()
        };
        if let Some(waker) = receiver {
            waker.wake();
        }
        Ok(())
    }

    /// Queues `item` once there is room; gives it back if the receiver goes first.
    pub async fn send(&self, item: T) -> Result<(), T> {
        let mut item = Some(item);
        std::future::poll_fn(|cx| {
            let held = item.take().expect("polled after completion");
            match self.try_send(held) {
                Ok(()) => Poll::Ready(Ok(())),
                Err(TrySendError::Closed(held)) => Poll::Ready(Err(held)),
                Err(TrySendError::Full(held)) => {
                    let mut state = lock(&self.state);
                    // Room may have come since the try: look again under the lock.
                    if state.gone || state.items.len() < state.cap {
                        drop(state);
                        item = Some(held);
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                    register(&mut state.room, cx.waker());
                    item = Some(held);
                    Poll::Pending
                }
            }
        })
        .await
    }

    /// Resolves once the receiver is gone or closed.
    pub async fn closed(&self) {
        std::future::poll_fn(|cx| {
            let mut state = lock(&self.state);
            if state.gone {
                return Poll::Ready(());
            }
            register(&mut state.closed, cx.waker());
            Poll::Pending
        })
        .await;
    }
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        lock(&self.state).senders += 1;
        Self {
            state: self.state.clone(),
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let receiver = {
            let mut state = lock(&self.state);
            state.senders -= 1;
            if state.senders > 0 {
                return;
            }
            state.receiver.take()
        };
        if let Some(waker) = receiver {
            waker.wake();
        }
    }
}

impl<T> Receiver<T> {
    /// The next item; `None` once nothing is queued and every sender is gone or the
    /// queue was closed.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let (item, waiting) = {
            let mut state = lock(&self.state);
            match state.items.pop_front() {
                Some(item) => (item, std::mem::take(&mut state.room)),
                // Closed and drained ends it too, senders or not.
                None if state.senders == 0 || state.gone => return Poll::Ready(None),
                None => {
                    match &mut state.receiver {
                        Some(waker) if waker.will_wake(cx.waker()) => {}
                        slot => *slot = Some(cx.waker().clone()),
                    }
                    return Poll::Pending;
                }
            }
        };
        wake_all(waiting);
        Poll::Ready(Some(item))
    }

    /// The next item if one is queued.
    pub fn try_recv(&mut self) -> Option<T> {
        let (item, waiting) = {
            let mut state = lock(&self.state);
            let item = state.items.pop_front()?;
            (item, std::mem::take(&mut state.room))
        };
        wake_all(waiting);
        Some(item)
    }

    /// Refuses every further send; what is queued can still be taken, and then the
    /// receiver ends.
    pub fn close(&mut self) {
        let waiting = lock(&self.state).go();
        wake_all(waiting);
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let (items, waiting) = {
            let mut state = lock(&self.state);
            (std::mem::take(&mut state.items), state.go())
        };
        // Dropped outside the lock: an item's drop may release what others wait on.
        drop(items);
        wake_all(waiting);
    }
}

impl<T> Stream for Receiver<T> {
    type Item = T;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        self.get_mut().poll_recv(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures::StreamExt as _;

    use super::*;

    const WAIT: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn items_come_out_in_order_and_the_receiver_ends_after_the_last_sender() {
        let (tx, mut rx) = unbounded();
        let second = tx.clone();
        for i in 0..100 {
            tx.try_send(i).unwrap();
        }
        drop(tx);
        second.try_send(100).unwrap();
        drop(second);
        let got: Vec<i32> = (&mut rx).collect().await;
        assert_eq!(got, (0..=100).collect::<Vec<_>>());
        assert_eq!(rx.next().await, None, "ended stays ended");
    }

    #[tokio::test]
    async fn a_waiting_receiver_is_woken_by_a_send_and_by_the_end() {
        let (tx, mut rx) = unbounded::<u32>();
        let reader = tokio::spawn(async move { (rx.next().await, rx.next().await) });
        tokio::task::yield_now().await;
        tx.try_send(7).unwrap();
        tokio::task::yield_now().await;
        drop(tx);
        let got = tokio::time::timeout(WAIT, reader)
            .await
            .expect("woken")
            .unwrap();
        assert_eq!(got, (Some(7), None));
    }

    #[tokio::test]
    async fn a_full_queue_makes_senders_wait_until_an_item_is_taken() {
        let (tx, mut rx) = bounded(2);
        tx.try_send(1).unwrap();
        tx.try_send(2).unwrap();
        assert!(matches!(tx.try_send(3), Err(TrySendError::Full(3))));
        let tx = Arc::new(tx);
        let sender = tokio::spawn({
            let tx = tx.clone();
            async move { tx.send(3).await }
        });
        tokio::task::yield_now().await;
        assert!(!sender.is_finished(), "the sender waits for room");
        assert_eq!(rx.next().await, Some(1));
        tokio::time::timeout(WAIT, sender)
            .await
            .expect("the sender was woken by the room")
            .unwrap()
            .unwrap();
        assert_eq!(rx.try_recv(), Some(2));
        assert_eq!(rx.try_recv(), Some(3));
        assert_eq!(rx.try_recv(), None);
    }

    #[tokio::test]
    async fn senders_learn_that_the_receiver_went_and_get_their_item_back() {
        let (tx, rx) = bounded(1);
        tx.try_send(Arc::new(())).unwrap();
        let tx = Arc::new(tx);
        let item = Arc::new(());
        let blocked = tokio::spawn({
            let (tx, item) = (tx.clone(), item.clone());
            async move { tx.send(item).await }
        });
        let closed = tokio::spawn({
            let tx = tx.clone();
            async move { tx.closed().await }
        });
        tokio::task::yield_now().await;
        assert!(!closed.is_finished());
        drop(rx);
        let back = tokio::time::timeout(WAIT, blocked)
            .await
            .expect("woken")
            .unwrap();
        assert!(back.is_err_and(|back| Arc::ptr_eq(&back, &item)));
        tokio::time::timeout(WAIT, closed)
            .await
            .expect("closed resolved")
            .unwrap();
        assert!(matches!(
            tx.try_send(item.clone()),
            Err(TrySendError::Closed(_))
        ));
        assert_eq!(
            Arc::strong_count(&item),
            1,
            "nothing holds the refused item"
        );
    }

    #[test]
    fn closing_refuses_sends_but_keeps_what_is_queued() {
        let (tx, mut rx) = bounded(4);
        tx.try_send(1).unwrap();
        rx.close();
        assert!(matches!(tx.try_send(2), Err(TrySendError::Closed(2))));
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert_eq!(rx.poll_recv(&mut cx), Poll::Ready(Some(1)));
        assert_eq!(
            rx.poll_recv(&mut cx),
            Poll::Ready(None),
            "closed and drained ends, though a sender is alive"
        );
        drop(tx);
    }

    #[test]
    fn dropping_the_receiver_drops_what_was_queued() {
        let (tx, rx) = unbounded();
        let item = Arc::new(());
        tx.try_send(item.clone()).unwrap();
        drop(rx);
        assert_eq!(Arc::strong_count(&item), 1, "the queued item was dropped");
    }
}
