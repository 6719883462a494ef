//! The storage seam: handlers talk to a [`Registry`], never to a map, so a distributed
//! backend can replace [`MemoryRegistry`] without touching them. A registry owns lease
//! math and change events; it never sees wire types or builds gRPC statuses.

pub mod etcd;
mod memory;

use std::{sync::Arc, time::Duration};

use flowplane_proto::controlplane::v1::RemovalReason;
use tokio::{
    sync::{broadcast, watch},
    time::Instant,
};

pub use etcd::{EtcdRegistry, EtcdSettings};
pub use memory::{DEFAULT_WATCH_BUFFER, MemoryRegistry};

use crate::{
    Result,
    model::{Component, ComponentId, Heartbeat, LeaseToken, ListFilter, Registration, WatchFilter},
};

/// Lease timing, derived from one TTL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseSettings {
    /// How long a lease lives without a heartbeat; after that the component is removed.
    pub ttl: Duration,
    /// How often components should heartbeat: a third of the TTL.
    pub heartbeat_interval: Duration,
}

impl LeaseSettings {
    /// Settings for `ttl`, with the heartbeat interval a third of it.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            heartbeat_interval: ttl / 3,
        }
    }

    /// Silence after which a component shows UNHEALTHY: its heartbeat is due one
    /// interval after the last, and it is late by more than one further interval.
    pub fn unhealthy_after(&self) -> Duration {
        self.heartbeat_interval * 2
    }
}

/// What a successful register or heartbeat grants.
#[derive(Clone, Debug)]
pub struct Lease {
    /// The registered id (assigned when the request left it empty).
    pub id: ComponentId,
    /// The secret for heartbeats and deregistration.
    pub token: LeaseToken,
    /// Lease timing.
    pub settings: LeaseSettings,
    /// When the lease runs out unless renewed (wall clock).
    pub expires_at: std::time::SystemTime,
}

/// One page of a listing.
#[derive(Clone, Debug, Default)]
pub struct Page {
    /// Matching components in id order.
    pub components: Vec<Component>,
    /// True when more matching components follow the last one.
    pub more: bool,
}

/// A change to the registry.
#[derive(Clone, Debug)]
pub enum Change {
    /// A component registered.
    Added(Component),
    /// A component's effective status or registered fields changed.
    Updated(Component),
    /// A component left, as last seen, and why.
    Removed(Component, RemovalReason),
    /// The registry lost track of single changes (its backend's history was compacted,
    /// or its feed broke): every watcher must subscribe again for a fresh snapshot.
    Resync,
}

/// A change with the registry revision it produced.
#[derive(Clone, Debug)]
pub struct Event {
    /// Registry revision after this change; grows by one per change.
    pub revision: u64,
    /// What changed.
    pub change: Change,
}

/// A consistent starting point for a watch: the matching state at `revision`, and
/// every change after it.
pub struct Subscription {
    /// Revision the snapshot reflects.
    pub revision: u64,
    /// Every live component matching the filter, in id order.
    pub snapshot: Vec<Component>,
    /// Changes after `revision`, unfiltered. Bounded: a receiver that falls behind
    /// gets `Lagged` and must subscribe again.
    pub events: broadcast::Receiver<Arc<Event>>,
}

/// The registry of components under leases.
///
/// Time is the server's: implementations derive liveness from their own clock, never
/// from client timestamps. Errors are [`crate::Error`] values; the handlers map them.
#[async_trait::async_trait]
pub trait Registry: Send + Sync + 'static {
    /// Registers a component, or refreshes it when the request carries the token of its
    /// live lease. ALREADY_EXISTS when a live lease holds the id and no matching token
    /// was presented.
    async fn register(&self, registration: Registration) -> Result<Lease>;

    /// Renews a lease and records the reported status and metrics. NOT_FOUND when the id
    /// is unknown or expired (or of another kind), PERMISSION_DENIED on a wrong token.
    async fn heartbeat(&self, heartbeat: Heartbeat) -> Result<Lease>;

    /// Removes a component at once; needs its lease token.
    async fn deregister(&self, id: &ComponentId, token: &LeaseToken) -> Result<()>;

    /// One live component.
    async fn get(&self, id: &ComponentId) -> Result<Component>;

    /// Up to `limit` matching components with ids strictly after `after`, in id order.
    async fn list(
        &self,
        filter: &ListFilter,
        after: Option<&ComponentId>,
        limit: usize,
    ) -> Result<Page>;

    /// A snapshot of the matching components and the changes that follow it.
    async fn subscribe(&self, filter: &WatchFilter) -> Result<Subscription>;

    /// Applies the clock: marks late components UNHEALTHY and removes expired ones,
    /// announcing both. Returns when the next such transition is due, if any.
    async fn sweep(&self) -> Result<Option<Instant>>;

    /// The lease timing this registry grants.
    fn settings(&self) -> LeaseSettings;

    /// Whether the registry can serve as current, for backends that can lose their
    /// store: health follows it. `None` for a registry that is always current.
    fn serving(&self) -> Option<watch::Receiver<bool>> {
        None
    }
}
