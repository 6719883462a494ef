//! The default, in-process registry: one ordered map under a lock, and a bounded
//! broadcast of changes. Every change is announced while the lock is held, so revisions
//! and events come out in the same order for every watcher. It never blocks on a watcher.

use std::{
    collections::{BTreeMap, HashMap},
    ops::Bound,
    sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard},
    time::Duration,
};

use flowplane_proto::{
    common::v1::{ComponentKind, HealthStatus},
    controlplane::v1::RemovalReason,
    data::v1::DataTypeHint,
    processor::v1::ProcessorCapability,
};
use tokio::{sync::broadcast, time::Instant};

use super::{Change, Event, Lease, LeaseSettings, Page, Registry, Subscription};
use crate::{
    Error, Result,
    clock::WallClock,
    instruments,
    model::{
        Component, ComponentId, Heartbeat, LeaseToken, ListFilter, Registration, WatchFilter,
        id_field, kind_label, status_label,
    },
};

/// Default number of changes buffered per watcher before it must resync.
pub const DEFAULT_WATCH_BUFFER: usize = 1024;

struct Entry {
    kind: ComponentKind,
    endpoint: String,
    metadata: BTreeMap<String, String>,
    capabilities: Vec<ProcessorCapability>,
    data_types: Vec<DataTypeHint>,
    version: String,
    token: LeaseToken,
    reported: HealthStatus,
    /// The effective status watchers and the gauge last saw; a change of the effective
    /// status is announced once, by whoever notices it first.
    published: HealthStatus,
    metrics: BTreeMap<String, f64>,
    registered_at: Instant,
    last_heartbeat: Instant,
}

enum Liveness {
    Live(HealthStatus),
    Expired,
}

impl Entry {
    fn liveness(&self, now: Instant, settings: &LeaseSettings) -> Liveness {
        let silent = now.saturating_duration_since(self.last_heartbeat);
        if silent >= settings.ttl {
            Liveness::Expired
        } else if silent >= settings.unhealthy_after() {
            Liveness::Live(HealthStatus::Unhealthy)
        } else {
            Liveness::Live(self.reported)
        }
    }

    /// The next instant at which this entry's liveness changes on its own.
    fn next_transition(&self, now: Instant, settings: &LeaseSettings) -> Instant {
        let unhealthy_at = self.last_heartbeat + settings.unhealthy_after();
        if now < unhealthy_at {
            unhealthy_at
        } else {
            self.last_heartbeat + settings.ttl
        }
    }

    fn same_registration(&self, r: &Registration) -> bool {
        self.endpoint == r.endpoint
            && self.metadata == r.metadata
            && self.capabilities == r.capabilities
            && self.data_types == r.data_types
            && self.version == r.version
    }
}

#[derive(Default)]
struct State {
    entries: BTreeMap<ComponentId, Entry>,
    revision: u64,
    counts: HashMap<(ComponentKind, HealthStatus), usize>,
}

impl State {
    fn count(&mut self, kind: ComponentKind, status: HealthStatus, delta: isize) {
        let count = self.counts.entry((kind, status)).or_default();
        *count = count.saturating_add_signed(delta);
        metrics::gauge!(instruments::COMPONENTS, "kind" => kind_label(kind), "status" => status_label(status))
            .set(*count as f64);
    }
}

/// The in-memory [`Registry`]: the default backend.
pub struct MemoryRegistry {
    state: RwLock<State>,
    events: broadcast::Sender<Arc<Event>>,
    settings: LeaseSettings,
    max_components: usize,
    clock: WallClock,
}

impl MemoryRegistry {
    /// A registry granting leases of `lease_ttl`, holding at most `max_components`, and
    /// buffering `watch_buffer` changes per watcher.
    pub fn new(lease_ttl: Duration, max_components: usize, watch_buffer: usize) -> Self {
        let (events, _) = broadcast::channel(watch_buffer.max(1));
        Self {
            state: RwLock::new(State::default()),
            events,
            settings: LeaseSettings::new(lease_ttl),
            max_components,
            clock: WallClock::new(),
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        // A panic while holding the lock cannot leave an entry half-written (every
        // mutation is a single assignment or insert), so a poisoned lock is still usable.
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    fn view(&self, id: &ComponentId, entry: &Entry, status: HealthStatus) -> Component {
        Component {
            id: id.as_str().to_string(),
            kind: entry.kind,
            endpoint: entry.endpoint.clone(),
            metadata: entry.metadata.clone(),
            capabilities: entry.capabilities.clone(),
            data_types: entry.data_types.clone(),
            version: entry.version.clone(),
            status,
            reported_status: entry.reported,
            metrics: entry.metrics.clone(),
            registered_at: self.clock.wall(entry.registered_at),
            last_heartbeat: self.clock.wall(entry.last_heartbeat),
            lease_expires_at: self.clock.wall(entry.last_heartbeat + self.settings.ttl),
        }
    }

    fn live_view(&self, id: &ComponentId, entry: &Entry, now: Instant) -> Option<Component> {
        match entry.liveness(now, &self.settings) {
            Liveness::Live(status) => Some(self.view(id, entry, status)),
            Liveness::Expired => None,
        }
    }

    fn lease(&self, id: &ComponentId, entry: &Entry) -> Lease {
        Lease {
            id: id.clone(),
            token: entry.token.clone(),
            settings: self.settings,
            expires_at: self.clock.wall(entry.last_heartbeat + self.settings.ttl),
        }
    }

    /// Announces a change. Called with the write lock held, which orders revisions.
    fn emit(&self, state: &mut State, change: Change) {
        state.revision += 1;
        // No receivers is fine: nobody is watching.
        let _ = self.events.send(Arc::new(Event {
            revision: state.revision,
            change,
        }));
    }

    fn remove(&self, state: &mut State, id: &ComponentId, reason: RemovalReason) {
        let Some(entry) = state.entries.remove(id) else {
            return;
        };
        state.count(entry.kind, entry.published, -1);
        if reason == RemovalReason::Expired {
            metrics::counter!(instruments::EXPIRED_TOTAL, "kind" => kind_label(entry.kind))
                .increment(1);
            tracing::info!(component_id = %id, kind = kind_label(entry.kind), "lease expired, component removed");
        } else {
            tracing::info!(component_id = %id, kind = kind_label(entry.kind), "component deregistered");
        }
        let last_seen = self.view(id, &entry, entry.published);
        self.emit(state, Change::Removed(last_seen, reason));
    }

    /// Publishes the entry's effective status if it changed (or `force` when its
    /// registered fields changed), as one UPDATED event.
    fn publish(&self, state: &mut State, id: &ComponentId, status: HealthStatus, force: bool) {
        let Some(entry) = state.entries.get_mut(id) else {
            return;
        };
        let previous = entry.published;
        if previous == status && !force {
            return;
        }
        entry.published = status;
        let kind = entry.kind;
        let view = self.view(id, entry, status);
        if previous != status {
            state.count(kind, previous, -1);
            state.count(kind, status, 1);
            tracing::info!(
                component_id = %id,
                from = status_label(previous),
                to = status_label(status),
                "component status changed"
            );
        }
        self.emit(state, Change::Updated(view));
    }

    /// Removes `id` if its lease ran out; true when it did (or it was absent).
    fn expire_if_due(&self, state: &mut State, id: &ComponentId, now: Instant) -> bool {
        match state.entries.get(id) {
            None => true,
            Some(entry) => match entry.liveness(now, &self.settings) {
                Liveness::Expired => {
                    self.remove(state, id, RemovalReason::Expired);
                    true
                }
                Liveness::Live(_) => false,
            },
        }
    }
}

#[async_trait::async_trait]
impl Registry for MemoryRegistry {
    async fn register(&self, registration: Registration) -> Result<Lease> {
        let now = self.clock.now();
        let mut state = self.write();
        let kind = registration.kind;
        let id = match &registration.id {
            Some(id) => {
                if !self.expire_if_due(&mut state, id, now) {
                    let entry = state.entries.get_mut(id).expect("live entry checked above");
                    let refresh = registration
                        .lease_token
                        .as_ref()
                        .is_some_and(|t| t.matches(&entry.token));
                    if !refresh {
                        return Err(Error::AlreadyExists {
                            field: id_field(kind),
                            id: id.to_string(),
                            detail: "under a live lease: present its lease_token to refresh, or pick another id".into(),
                        });
                    }
                    if entry.kind != kind {
                        return Err(Error::AlreadyExists {
                            field: id_field(kind),
                            id: id.to_string(),
                            detail: format!(
                                "as a {}, not a {}",
                                kind_label(entry.kind),
                                kind_label(kind)
                            ),
                        });
                    }
                    let changed = !entry.same_registration(&registration);
                    entry.endpoint = registration.endpoint;
                    entry.metadata = registration.metadata;
                    entry.capabilities = registration.capabilities;
                    entry.data_types = registration.data_types;
                    entry.version = registration.version;
                    entry.last_heartbeat = now;
                    let status = entry.reported;
                    let lease = self.lease(id, entry);
                    self.publish(&mut state, id, status, changed);
                    tracing::debug!(component_id = %id, "registration refreshed");
                    return Ok(lease);
                }
                id.clone()
            }
            None => loop {
                let candidate = ComponentId::assigned(kind);
                if !state.entries.contains_key(&candidate) {
                    break candidate;
                }
            },
        };
        if state.entries.len() >= self.max_components {
            // Full: make room from leases that ran out but were not swept yet.
            let expired: Vec<ComponentId> = state
                .entries
                .iter()
                .filter(|(_, e)| matches!(e.liveness(now, &self.settings), Liveness::Expired))
                .map(|(id, _)| id.clone())
                .collect();
            for id in &expired {
                self.remove(&mut state, id, RemovalReason::Expired);
            }
        }
        if state.entries.len() >= self.max_components {
            return Err(Error::RegistryFull {
                max: self.max_components,
            });
        }
        let entry = Entry {
            kind,
            endpoint: registration.endpoint,
            metadata: registration.metadata,
            capabilities: registration.capabilities,
            data_types: registration.data_types,
            version: registration.version,
            token: LeaseToken::generate(),
            // Not offered for discovery until the component says it is ready.
            reported: HealthStatus::Starting,
            published: HealthStatus::Starting,
            metrics: BTreeMap::new(),
            registered_at: now,
            last_heartbeat: now,
        };
        let lease = self.lease(&id, &entry);
        let view = self.view(&id, &entry, entry.published);
        state.count(kind, entry.published, 1);
        state.entries.insert(id.clone(), entry);
        self.emit(&mut state, Change::Added(view));
        tracing::info!(component_id = %id, kind = kind_label(kind), "component registered");
        Ok(lease)
    }

    async fn heartbeat(&self, heartbeat: Heartbeat) -> Result<Lease> {
        let now = self.clock.now();
        let mut state = self.write();
        let id = &heartbeat.id;
        let not_found = || Error::NotFound {
            field: id_field(heartbeat.kind),
            kind: kind_label(heartbeat.kind),
            id: id.to_string(),
        };
        if self.expire_if_due(&mut state, id, now) {
            return Err(not_found());
        }
        let entry = state.entries.get_mut(id).expect("live entry checked above");
        if entry.kind != heartbeat.kind {
            return Err(not_found());
        }
        if !heartbeat.lease_token.matches(&entry.token) {
            return Err(Error::LeaseMismatch { id: id.to_string() });
        }
        let due = entry.last_heartbeat + self.settings.heartbeat_interval;
        let lag = now.saturating_duration_since(due);
        metrics::histogram!(instruments::HEARTBEAT_LAG_SECONDS).record(lag.as_secs_f64());
        metrics::counter!(instruments::HEARTBEATS_TOTAL, "kind" => kind_label(entry.kind))
            .increment(1);
        entry.reported = heartbeat.status;
        entry.metrics = heartbeat.metrics;
        entry.last_heartbeat = now;
        let lease = self.lease(id, entry);
        self.publish(&mut state, id, heartbeat.status, false);
        Ok(lease)
    }

    async fn deregister(&self, id: &ComponentId, token: &LeaseToken) -> Result<()> {
        let now = self.clock.now();
        let mut state = self.write();
        let not_found = || Error::NotFound {
            field: "component_id",
            kind: "component",
            id: id.to_string(),
        };
        if self.expire_if_due(&mut state, id, now) {
            return Err(not_found());
        }
        let entry = state.entries.get(id).expect("live entry checked above");
        if !token.matches(&entry.token) {
            return Err(Error::LeaseMismatch { id: id.to_string() });
        }
        self.remove(&mut state, id, RemovalReason::Deregistered);
        Ok(())
    }

    async fn get(&self, id: &ComponentId) -> Result<Component> {
        let now = self.clock.now();
        let state = self.read();
        state
            .entries
            .get(id)
            .and_then(|entry| self.live_view(id, entry, now))
            .ok_or_else(|| Error::NotFound {
                field: "component_id",
                kind: "component",
                id: id.to_string(),
            })
    }

    async fn list(
        &self,
        filter: &ListFilter,
        after: Option<&ComponentId>,
        limit: usize,
    ) -> Result<Page> {
        let now = self.clock.now();
        let state = self.read();
        let start = after.map_or(Bound::Unbounded, |id| Bound::Excluded(id.clone()));
        let mut page = Page::default();
        for (id, entry) in state.entries.range((start, Bound::Unbounded)) {
            let Some(component) = self.live_view(id, entry, now) else {
                continue;
            };
            if !filter.matches(&component) {
                continue;
            }
            if page.components.len() == limit {
                page.more = true;
                break;
            }
            page.components.push(component);
        }
        Ok(page)
    }

    async fn subscribe(&self, filter: &WatchFilter) -> Result<Subscription> {
        let now = self.clock.now();
        // Subscribing under the lock means no change can slip between the snapshot and
        // the first event the receiver sees.
        let state = self.read();
        let events = self.events.subscribe();
        let snapshot = state
            .entries
            .iter()
            .filter_map(|(id, entry)| self.live_view(id, entry, now))
            .filter(|c| filter.matches(c))
            .collect();
        Ok(Subscription {
            revision: state.revision,
            snapshot,
            events,
        })
    }

    async fn sweep(&self) -> Result<Option<Instant>> {
        let now = self.clock.now();
        let mut state = self.write();
        let mut expired = Vec::new();
        let mut changed = Vec::new();
        let mut next: Option<Instant> = None;
        for (id, entry) in &state.entries {
            match entry.liveness(now, &self.settings) {
                Liveness::Expired => expired.push(id.clone()),
                Liveness::Live(status) => {
                    if status != entry.published {
                        changed.push((id.clone(), status));
                    }
                    let at = entry.next_transition(now, &self.settings);
                    next = Some(next.map_or(at, |n| n.min(at)));
                }
            }
        }
        for id in &expired {
            self.remove(&mut state, id, RemovalReason::Expired);
        }
        for (id, status) in &changed {
            self.publish(&mut state, id, *status, false);
        }
        Ok(next)
    }

    fn settings(&self) -> LeaseSettings {
        self.settings
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registration(id: &str) -> Registration {
        Registration {
            kind: ComponentKind::Processor,
            id: Some(ComponentId::parse("processor_id", id).unwrap()),
            endpoint: "127.0.0.1:7000".into(),
            metadata: BTreeMap::new(),
            capabilities: vec![],
            data_types: vec![],
            version: String::new(),
            lease_token: None,
        }
    }

    fn heartbeat(lease: &Lease, status: HealthStatus) -> Heartbeat {
        Heartbeat {
            kind: ComponentKind::Processor,
            id: lease.id.clone(),
            status,
            metrics: BTreeMap::new(),
            lease_token: lease.token.clone(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn effective_status_follows_the_server_clock() {
        let registry = MemoryRegistry::new(Duration::from_secs(15), 10, 16);
        let lease = registry.register(registration("p1")).await.unwrap();
        let id = lease.id.clone();
        assert_eq!(
            registry.get(&id).await.unwrap().status,
            HealthStatus::Starting
        );
        registry
            .heartbeat(heartbeat(&lease, HealthStatus::Healthy))
            .await
            .unwrap();
        tokio::time::advance(Duration::from_millis(9_999)).await;
        assert_eq!(
            registry.get(&id).await.unwrap().status,
            HealthStatus::Healthy
        );
        tokio::time::advance(Duration::from_millis(1)).await;
        let late = registry.get(&id).await.unwrap();
        assert_eq!(late.status, HealthStatus::Unhealthy);
        assert_eq!(late.reported_status, HealthStatus::Healthy);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(matches!(
            registry.get(&id).await,
            Err(Error::NotFound { .. })
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn sweep_reports_the_next_transition() {
        let registry = MemoryRegistry::new(Duration::from_secs(15), 10, 16);
        assert_eq!(registry.sweep().await.unwrap(), None);
        let start = Instant::now();
        registry.register(registration("p1")).await.unwrap();
        assert_eq!(
            registry.sweep().await.unwrap(),
            Some(start + Duration::from_secs(10))
        );
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(
            registry.sweep().await.unwrap(),
            Some(start + Duration::from_secs(15))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_registry_makes_room_from_expired_leases() {
        let registry = MemoryRegistry::new(Duration::from_secs(15), 1, 16);
        let first = registry.register(registration("p1")).await.unwrap();
        tokio::time::advance(Duration::from_secs(15)).await;
        registry.register(registration("p2")).await.unwrap();
        assert!(matches!(
            registry.get(&first.id).await,
            Err(Error::NotFound { .. })
        ));
    }

    #[tokio::test]
    async fn registry_full_is_resource_exhausted() {
        let registry = MemoryRegistry::new(Duration::from_secs(15), 1, 16);
        registry.register(registration("p1")).await.unwrap();
        let err = registry.register(registration("p2")).await.unwrap_err();
        assert!(matches!(err, Error::RegistryFull { max: 1 }));
    }
}
