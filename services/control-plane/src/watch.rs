//! WatchComponents streams: a snapshot, then the changes that match the watch. A watcher
//! reads from a bounded broadcast, so it can never hold up registration or heartbeats;
//! one that falls behind gets a fresh snapshot marked `resync`. It never buffers without bound.
//! A snapshot larger than one message goes out as a first part marked `continued` and the
//! rest as ADDED events at the same revision, so even a client unaware of the split ends
//! with every component.

use std::{
    collections::{HashSet, VecDeque},
    pin::Pin,
    sync::Arc,
};

use flowplane_proto::controlplane::v1::{
    self as pb, ComponentRemoved, ComponentSnapshot, RemovalReason, WatchComponentsResponse,
    watch_components_response::Event as WireEvent,
};
use futures::Stream;
use prost::Message;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::{
    instruments,
    model::{Component, WatchFilter},
    registry::{Change, Event, Registry, Subscription},
};

/// The stream type of the WatchComponents handler.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchComponentsResponse, Status>> + Send>>;

/// Bytes of components the first message of a snapshot carries before the rest is sent
/// as ADDED events: half the message limit leaves room for the envelope.
const SNAPSHOT_PART_BYTES: usize = flowplane_grpc::MAX_MESSAGE_BYTES / 2;

/// Opens a watch from `subscription`. The stream ends cleanly when `shutdown` fires.
pub(crate) fn open(
    registry: Arc<dyn Registry>,
    filter: WatchFilter,
    subscription: Subscription,
    shutdown: CancellationToken,
) -> WatchStream {
    let Subscription {
        revision,
        snapshot,
        events,
    } = subscription;
    let mut watcher = Watcher {
        registry,
        filter,
        events,
        revision,
        in_view: HashSet::new(),
        shutdown,
        pending: VecDeque::new(),
        failed: false,
        _gauge: WatcherGauge::open(),
    };
    watcher.snapshot(snapshot, revision, false);
    Box::pin(futures::stream::unfold(watcher, |mut w| async move {
        w.next().await.map(|item| (item, w))
    }))
}

struct Watcher {
    registry: Arc<dyn Registry>,
    filter: WatchFilter,
    events: broadcast::Receiver<Arc<Event>>,
    revision: u64,
    /// Ids the client currently holds, so a component that starts or stops matching
    /// the filter is reported as ADDED or REMOVED rather than UPDATED.
    in_view: HashSet<String>,
    shutdown: CancellationToken,
    /// Messages of a snapshot not sent yet; bounded by the snapshot itself.
    pending: VecDeque<WatchComponentsResponse>,
    failed: bool,
    _gauge: WatcherGauge,
}

impl Watcher {
    /// Queues a snapshot of `components` at `revision`, split into messages that fit.
    fn snapshot(&mut self, components: Vec<Component>, revision: u64, resync: bool) {
        self.revision = revision;
        self.in_view = components.iter().map(|c| c.id.clone()).collect();
        self.pending.clear();
        let mut first = Vec::new();
        let mut bytes = 0;
        let mut rest = components.into_iter().map(pb::Component::from).peekable();
        while let Some(next) = rest.peek() {
            let size = next.encoded_len() + 8;
            if !first.is_empty() && bytes + size > SNAPSHOT_PART_BYTES {
                break;
            }
            bytes += size;
            first.extend(rest.next());
        }
        let continued = rest.peek().is_some();
        self.pending.push_back(WatchComponentsResponse {
            event: Some(WireEvent::Snapshot(ComponentSnapshot {
                components: first,
                resync,
                continued,
            })),
            revision,
        });
        self.pending
            .extend(rest.map(|component| WatchComponentsResponse {
                event: Some(WireEvent::Added(component)),
                revision,
            }));
    }

    /// A fresh snapshot after the watcher lost single changes; ends the watch when the
    /// registry cannot give one (it is not current).
    async fn resubscribe(&mut self) -> Option<Result<WatchComponentsResponse, Status>> {
        metrics::counter!(instruments::WATCH_RESYNCS_TOTAL).increment(1);
        match self.registry.subscribe(&self.filter).await {
            Ok(sub) => {
                self.events = sub.events;
                self.snapshot(sub.snapshot, sub.revision, true);
                self.pending.pop_front().map(Ok)
            }
            Err(e) => {
                self.failed = true;
                Some(Err(Status::from(e)))
            }
        }
    }

    async fn next(&mut self) -> Option<Result<WatchComponentsResponse, Status>> {
        if let Some(message) = self.pending.pop_front() {
            return Some(Ok(message));
        }
        if self.failed {
            return None;
        }
        loop {
            let received = tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return None,
                received = self.events.recv() => received,
            };
            match received {
                Ok(event) => {
                    if event.revision <= self.revision {
                        continue;
                    }
                    if matches!(event.change, Change::Resync) {
                        tracing::info!("registry asked for a resync, sending a fresh snapshot");
                        return self.resubscribe().await;
                    }
                    self.revision = event.revision;
                    if let Some(message) = self.translate(&event) {
                        return Some(Ok(message));
                    }
                }
                Err(RecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "watcher fell behind, sending a fresh snapshot");
                    return self.resubscribe().await;
                }
                Err(RecvError::Closed) => return None,
            }
        }
    }

    fn translate(&mut self, event: &Event) -> Option<WatchComponentsResponse> {
        let wire = match &event.change {
            Change::Added(c) => self.filter.matches(c).then(|| {
                self.in_view.insert(c.id.clone());
                WireEvent::Added(c.clone().into())
            }),
            Change::Updated(c) => match (self.in_view.contains(&c.id), self.filter.matches(c)) {
                (true, true) => Some(WireEvent::Updated(c.clone().into())),
                (false, true) => {
                    self.in_view.insert(c.id.clone());
                    Some(WireEvent::Added(c.clone().into()))
                }
                // Still registered, but no longer what this watch asked for.
                (true, false) => {
                    self.in_view.remove(&c.id);
                    Some(removed(c, RemovalReason::Unspecified))
                }
                (false, false) => None,
            },
            Change::Removed(c, reason) => self.in_view.remove(&c.id).then(|| removed(c, *reason)),
            // Handled before translation: it needs a fresh subscription.
            Change::Resync => None,
        }?;
        Some(WatchComponentsResponse {
            event: Some(wire),
            revision: event.revision,
        })
    }
}

fn removed(c: &Component, reason: RemovalReason) -> WireEvent {
    WireEvent::Removed(ComponentRemoved {
        component: Some(pb::Component::from(c.clone())),
        reason: reason as i32,
    })
}

struct WatcherGauge;

impl WatcherGauge {
    fn open() -> Self {
        metrics::gauge!(instruments::WATCHERS).increment(1.0);
        WatcherGauge
    }
}

impl Drop for WatcherGauge {
    fn drop(&mut self) {
        metrics::gauge!(instruments::WATCHERS).decrement(1.0);
    }
}
