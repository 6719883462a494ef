//! WatchComponents streams: a snapshot, then the changes that match the watch. A watcher
//! reads from a bounded broadcast, so it can never hold up registration or heartbeats;
//! one that falls behind gets a fresh snapshot marked `resync`. It never buffers without bound.

use std::{collections::HashSet, pin::Pin, sync::Arc};

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
    Error, Result, instruments,
    model::{Component, WatchFilter},
    registry::{Change, Event, Registry, Subscription},
};

/// The stream type of the WatchComponents handler.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchComponentsResponse, Status>> + Send>>;

/// Opens a watch from `subscription`. Fails when the first snapshot does not fit in
/// one message. The stream ends cleanly when `shutdown` fires.
pub(crate) fn open(
    registry: Arc<dyn Registry>,
    filter: WatchFilter,
    subscription: Subscription,
    shutdown: CancellationToken,
) -> Result<WatchStream> {
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
        first: None,
        failed: false,
        _gauge: WatcherGauge::open(),
    };
    watcher.first = Some(watcher.snapshot(snapshot, revision, false)?);
    Ok(Box::pin(futures::stream::unfold(
        watcher,
        |mut w| async move { w.next().await.map(|item| (item, w)) },
    )))
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
    first: Option<WatchComponentsResponse>,
    failed: bool,
    _gauge: WatcherGauge,
}

impl Watcher {
    fn snapshot(
        &mut self,
        components: Vec<Component>,
        revision: u64,
        resync: bool,
    ) -> Result<WatchComponentsResponse> {
        self.revision = revision;
        self.in_view = components.iter().map(|c| c.id.clone()).collect();
        let count = components.len();
        let message = WatchComponentsResponse {
            event: Some(WireEvent::Snapshot(ComponentSnapshot {
                components: components.into_iter().map(Into::into).collect(),
                resync,
            })),
            revision,
        };
        let bytes = message.encoded_len();
        if bytes > flowplane_grpc::MAX_MESSAGE_BYTES {
            return Err(Error::SnapshotTooLarge {
                components: count,
                bytes,
                limit: flowplane_grpc::MAX_MESSAGE_BYTES,
            });
        }
        Ok(message)
    }

    async fn next(&mut self) -> Option<Result<WatchComponentsResponse, Status>> {
        if let Some(first) = self.first.take() {
            return Some(Ok(first));
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
                    self.revision = event.revision;
                    if let Some(message) = self.translate(&event) {
                        return Some(Ok(message));
                    }
                }
                Err(RecvError::Lagged(missed)) => {
                    metrics::counter!(instruments::WATCH_RESYNCS_TOTAL).increment(1);
                    tracing::warn!(missed, "watcher fell behind, sending a fresh snapshot");
                    let resync = match self.registry.subscribe(&self.filter).await {
                        Ok(sub) => {
                            self.events = sub.events;
                            self.snapshot(sub.snapshot, sub.revision, true)
                        }
                        Err(e) => Err(e),
                    };
                    if resync.is_err() {
                        self.failed = true;
                    }
                    return Some(resync.map_err(Status::from));
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
