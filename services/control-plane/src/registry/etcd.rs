//! The etcd registry: several control-plane replicas over one etcd serve one registry.
//! One key per component, `<prefix>/components/<kind>/<id>`, holds a `RegistryRecord`
//! attached to one etcd lease per component (its id is in the record, so whichever
//! replica takes a heartbeat renews it). Every write is a transaction on the key's
//! revisions, so two replicas never both accept an id, and nothing is ever put under a
//! lease that died. Reads and watches come from a per-replica cache fed by one prefix
//! watch, served only after it has caught up with etcd's current revision: a replica
//! that cannot reach etcd answers UNAVAILABLE and reports NOT_SERVING, never stale data.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    ops::Bound,
    sync::{
        Arc, RwLock, RwLockReadGuard, RwLockWriteGuard,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, SystemTime},
};

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity,
    PutOptions, TlsOptions, Txn, TxnOp, TxnOpResponse, WatchOptions, WatchRequestSender,
    WatchResponse,
};
use flowplane_proto::{
    common::v1::{ComponentKind, HealthStatus},
    controlplane::v1::{self as pb, RegistryRecord, RemovalReason},
};
use futures::StreamExt;
use prost::Message;
use sha2::{Digest, Sha256};
use tokio::{
    sync::{broadcast, mpsc, oneshot, watch},
    time::Instant,
};
use tokio_util::sync::CancellationToken;

use super::{Change, Event, Lease, LeaseSettings, Page, Registry, Subscription};
use crate::{
    Error, Result, instruments,
    model::{
        Component, ComponentId, Heartbeat, LeaseToken, ListFilter, Registration, WatchFilter,
        id_field, kind_label, status_label,
    },
};

/// Default key prefix; several registries can share one etcd under different prefixes.
pub const DEFAULT_PREFIX: &str = "/flowplane/v1";
/// Shortest lease TTL with etcd: etcd grants whole seconds and raises very short leases
/// to its own minimum, so anything shorter would not mean what it says.
pub const MIN_ETCD_LEASE_TTL: Duration = Duration::from_secs(2);

/// Renewals in flight at once on the keepalive task.
const RENEW_CONCURRENCY: usize = 256;
/// Renewals queued for the keepalive task before heartbeats get UNAVAILABLE.
const RENEW_QUEUE: usize = 4096;
/// Keys read per range request when the cache loads, so a large registry never needs
/// one response over the gRPC message limit.
const LOAD_PAGE: i64 = 500;
/// Write attempts when a transaction loses a race with another replica's write.
pub(crate) const ATTEMPTS: usize = 4;

/// How the control plane reaches etcd.
#[derive(Clone)]
pub struct EtcdSettings {
    /// `host:port` of each member (or a proxy or load balancer in front of them).
    pub endpoints: Vec<String>,
    /// Key prefix, starting with `/` and not ending with one.
    pub prefix: String,
    /// TLS towards etcd; `None` dials plaintext.
    pub tls: Option<EtcdTls>,
    /// etcd user and password, when etcd has authentication on.
    pub credentials: Option<EtcdCredentials>,
}

/// TLS towards etcd: the CA etcd's certificates are checked against, and optionally a
/// client certificate for etcd's `--client-cert-auth`.
#[derive(Clone)]
pub struct EtcdTls {
    /// PEM of the CA (`--etcd-ca`).
    pub ca_pem: Vec<u8>,
    /// PEM certificate and key (`--etcd-cert`, `--etcd-key`).
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

/// An etcd user; the password comes from a file and is never shown by `Debug`.
#[derive(Clone)]
pub struct EtcdCredentials {
    /// The etcd user name (`--etcd-user`).
    pub user: String,
    /// The password (`--etcd-password-file`).
    pub password: String,
}

impl fmt::Debug for EtcdSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdSettings")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .field("tls", &self.tls.as_ref().map(|t| t.identity.is_some()))
            .field("user", &self.credentials.as_ref().map(|c| &c.user))
            .finish()
    }
}

impl EtcdSettings {
    /// Settings for `etcd://HOST:PORT[,HOST:PORT...]` under the default prefix.
    pub fn from_url(raw: &str) -> Result<Self> {
        const FIELD: &str = "--registry";
        let rest = raw.strip_prefix("etcd://").ok_or_else(|| {
            Error::Config(format!(
                "{FIELD} must be memory or etcd://HOST:PORT[,HOST:PORT...], got {raw:?}"
            ))
        })?;
        let endpoints: Vec<String> = rest.split(',').map(|e| e.trim().to_string()).collect();
        for endpoint in &endpoints {
            let valid = endpoint.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0)
            }) && endpoint.parse::<http::uri::Authority>().is_ok()
                && !endpoint.contains('/');
            if !valid {
                return Err(Error::Config(format!(
                    "{FIELD}: {endpoint:?} is not HOST:PORT (in {raw:?})"
                )));
            }
        }
        Ok(Self {
            endpoints,
            prefix: DEFAULT_PREFIX.to_string(),
            tls: None,
            credentials: None,
        })
    }

    /// Checks the settings, naming the flag of the first bad one.
    pub fn validate(&self) -> Result<()> {
        let p = &self.prefix;
        if !p.starts_with('/') || p.ends_with('/') || p.len() < 2 {
            return Err(Error::Config(format!(
                "--etcd-prefix must start with / and not end with one, like {DEFAULT_PREFIX}, got {p:?}"
            )));
        }
        if p.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(Error::Config(format!(
                "--etcd-prefix must not contain whitespace, got {p:?}"
            )));
        }
        if self.endpoints.is_empty() {
            return Err(Error::Config("--registry names no etcd endpoint".into()));
        }
        if let Some(c) = &self.credentials
            && (c.user.is_empty() || c.password.is_empty())
        {
            return Err(Error::Config(
                "--etcd-user and --etcd-password-file must both be given and non-empty".into(),
            ));
        }
        Ok(())
    }

    fn urls(&self) -> Vec<String> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        self.endpoints
            .iter()
            .map(|e| format!("{scheme}://{e}"))
            .collect()
    }

    fn connect_options(&self, timeout: Duration) -> ConnectOptions {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(timeout)
            .with_timeout(timeout)
            // A member that vanishes without closing the connection is noticed this fast.
            .with_keep_alive(timeout, timeout)
            .with_keep_alive_while_idle(true)
            // A member cut off from its quorum must not answer: reads would be stale.
            .with_require_leader(true);
        if let Some(tls) = &self.tls {
            let mut config = TlsOptions::new().ca_certificate(Certificate::from_pem(&tls.ca_pem));
            if let Some((cert, key)) = &tls.identity {
                config = config.identity(Identity::from_pem(cert, key));
            }
            options = options.with_tls(config);
        }
        if let Some(c) = &self.credentials {
            options = options.with_user(c.user.clone(), c.password.clone());
        }
        options
    }
}

pub(crate) fn backend(what: &str, error: impl fmt::Display) -> Error {
    Error::Backend(format!("etcd {what}: {error}"))
}

fn unavailable(what: &str) -> Error {
    Error::Backend(format!("not connected to etcd: {what}"))
}

/// True when etcd says the lease is gone (expired or revoked).
fn lease_gone(error: &etcd_client::Error) -> bool {
    match error {
        etcd_client::Error::LeaseKeepAliveError(m) => m.contains("not found"),
        etcd_client::Error::GRpcStatus(s) => s.message().contains("lease not found"),
        _ => false,
    }
}

/// How a call that failed may be tried again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Repeat {
    /// The call may be applied twice without harm (reads, lease grants, renewals and
    /// revokes, compare-and-set writes that re-read when their compare fails): tried again
    /// after any failure of the connection or member, even one that may have reached etcd.
    Safe,
    /// The call must not be applied twice (a create whose loser revokes its own lease):
    /// tried again only when the request cannot have reached a member.
    NeverSent,
}

/// True when the request cannot have reached a working member: no connection could be
/// made (refused, a name that no longer resolves: a killed member's container), or the
/// member has no leader. The client's balanced channel keeps a dead member in its set,
/// so a share of all calls fails this way until it is back.
fn never_sent(error: &etcd_client::Error) -> bool {
    match error {
        etcd_client::Error::TransportError(_) => true,
        etcd_client::Error::GRpcStatus(s) => {
            s.code() == tonic::Code::Unavailable
                && (s.message().contains("no leader") || connect_failure(s))
        }
        _ => false,
    }
}

/// A status the client made itself because it could not connect.
fn connect_failure(status: &tonic::Status) -> bool {
    // Only what a failed connect says: "connection error" or "connection closed" can come
    // from a connection that broke after the request went out.
    let message = status.message().to_ascii_lowercase();
    if [
        "dns error",
        "tcp connect error",
        "error trying to connect",
        "connection refused",
    ]
    .iter()
    .any(|m| message.contains(m))
    {
        return true;
    }
    let mut source = std::error::Error::source(status);
    while let Some(error) = source {
        if format!("{error:?}").contains("ConnectError") {
            return true;
        }
        source = error.source();
    }
    false
}

/// True when trying again may succeed: [`never_sent`], or a member or connection that
/// failed mid-call (a broken connection, the client's own request timeout, "leader
/// changed", "request timed out"), where the first try may or may not have applied.
fn transient(error: &etcd_client::Error, repeat: Repeat) -> bool {
    if never_sent(error) {
        return true;
    }
    if repeat == Repeat::NeverSent {
        return false;
    }
    match error {
        etcd_client::Error::GRpcStatus(s) => match s.code() {
            tonic::Code::Unavailable => true,
            // Made by the client from a transport failure, not answered by etcd.
            tonic::Code::Unknown | tonic::Code::Cancelled => std::error::Error::source(s).is_some(),
            _ => false,
        },
        _ => false,
    }
}

/// Pause between tries of a call that failed transiently.
const RETRY_PAUSE: Duration = Duration::from_millis(25);

/// Why an etcd call failed.
pub(crate) enum Failed {
    Etcd(etcd_client::Error),
    Timeout(Duration),
}

impl Failed {
    pub(crate) fn into_error(self, what: &str) -> Error {
        match self {
            Failed::Etcd(e) => backend(what, e),
            Failed::Timeout(t) => backend(what, format!("no answer within {t:?}")),
        }
    }

    fn lease_gone(&self) -> bool {
        matches!(self, Failed::Etcd(e) if lease_gone(e))
    }
}

/// Runs `call` on a clone of `client` until it succeeds, fails for real, or `timeout`
/// has passed; transient failures are tried again.
pub(crate) async fn call<T, F, Fut>(
    client: &Client,
    timeout: Duration,
    call: F,
) -> Result<T, Failed>
where
    F: FnMut(Client) -> Fut,
    Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
{
    call_with(client, timeout, Repeat::Safe, call).await
}

/// [`call`] for a request that must not be applied twice ([`Repeat::NeverSent`]).
async fn call_with<T, F, Fut>(
    client: &Client,
    timeout: Duration,
    repeat: Repeat,
    mut call: F,
) -> Result<T, Failed>
where
    F: FnMut(Client) -> Fut,
    Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(remaining, call(client.clone())).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(e)) if transient(&e, repeat) && Instant::now() + RETRY_PAUSE < deadline => {
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            Ok(Err(e)) => return Err(Failed::Etcd(e)),
            Err(_) => return Err(Failed::Timeout(timeout)),
        }
    }
}

fn digest(token: &LeaseToken) -> Vec<u8> {
    Sha256::digest(token.expose().as_bytes()).to_vec()
}

/// Constant-time comparison of two digests.
fn same_digest(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn kind_from_label(label: &str) -> Option<ComponentKind> {
    [
        ComponentKind::Processor,
        ComponentKind::Source,
        ComponentKind::Consumer,
    ]
    .into_iter()
    .find(|k| kind_label(*k) == label)
}

const KINDS: [ComponentKind; 3] = [
    ComponentKind::Processor,
    ComponentKind::Source,
    ComponentKind::Consumer,
];

/// The end of the key range that holds every key starting with `prefix`.
pub(crate) fn range_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}

/// One component as stored in etcd.
#[derive(Clone, Debug)]
struct Stored {
    /// The component with `status` holding what it reported (effective status is derived).
    component: Component,
    lease_id: i64,
    token_sha256: Vec<u8>,
    deregistered: bool,
    /// The key's mod revision: the write transactions compare on it.
    mod_revision: i64,
}

impl Stored {
    fn decode(value: &[u8], mod_revision: i64) -> Option<Self> {
        let record = RegistryRecord::decode(value).ok()?;
        let component = from_wire(record.component?)?;
        Some(Self {
            component,
            lease_id: record.lease_id,
            token_sha256: record.lease_token_sha256.to_vec(),
            deregistered: record.deregistered,
            mod_revision,
        })
    }

    fn encode(&self) -> Vec<u8> {
        RegistryRecord {
            component: Some(pb::Component::from(self.component.clone())),
            lease_id: self.lease_id,
            lease_token_sha256: self.token_sha256.clone().into(),
            deregistered: self.deregistered,
        }
        .encode_to_vec()
    }

    fn registered_as(&self, r: &Registration) -> bool {
        let c = &self.component;
        c.endpoint == r.endpoint
            && c.metadata == r.metadata
            && c.capabilities == r.capabilities
            && c.data_types == r.data_types
            && c.version == r.version
    }
}

fn from_wire(c: pb::Component) -> Option<Component> {
    let time = |t: Option<prost_types::Timestamp>| {
        t.and_then(|t| SystemTime::try_from(t).ok())
            .unwrap_or(SystemTime::UNIX_EPOCH)
    };
    let reported = HealthStatus::try_from(c.reported_status).ok()?;
    Some(Component {
        id: c.id,
        kind: ComponentKind::try_from(c.kind).ok()?,
        endpoint: c.endpoint,
        metadata: c.metadata.into_iter().collect(),
        capabilities: c.capabilities,
        data_types: c
            .data_types
            .into_iter()
            .filter_map(|t| flowplane_proto::data::v1::DataTypeHint::try_from(t).ok())
            .collect(),
        version: c.version,
        status: reported,
        reported_status: reported,
        metrics: c
            .metrics
            .map(|m| m.values.into_iter().collect())
            .unwrap_or_default(),
        registered_at: time(c.registered_at),
        last_heartbeat: time(c.last_heartbeat),
        lease_expires_at: time(c.lease_expires_at),
    })
}

/// The effective status of `c` at `now`: what it reported, or UNHEALTHY once its
/// heartbeat is late by more than one interval. Derived from the last heartbeat time
/// stored in etcd, so every replica (with a synchronised clock) answers the same.
fn effective(c: &Component, settings: &LeaseSettings, now: SystemTime) -> HealthStatus {
    let silent = now.duration_since(c.last_heartbeat).unwrap_or_default();
    if silent >= settings.unhealthy_after() {
        HealthStatus::Unhealthy
    } else {
        c.reported_status
    }
}

struct Cached {
    stored: Stored,
    /// The effective status watchers and the gauge last saw.
    published: HealthStatus,
}

#[derive(Default)]
struct CacheState {
    entries: BTreeMap<ComponentId, Cached>,
    /// Local event sequence: grows by one per change announced to this replica's watchers.
    seq: u64,
    /// The etcd revision the cache reflects.
    revision: i64,
    counts: HashMap<(ComponentKind, HealthStatus), usize>,
}

impl CacheState {
    fn count(&mut self, kind: ComponentKind, status: HealthStatus, delta: isize) {
        let count = self.counts.entry((kind, status)).or_default();
        *count = count.saturating_add_signed(delta);
        metrics::gauge!(instruments::COMPONENTS, "kind" => kind_label(kind), "status" => status_label(status))
            .set(*count as f64);
    }
}

/// What the cache, the feed and the probe share.
struct Shared {
    prefix: String,
    settings: LeaseSettings,
    state: RwLock<CacheState>,
    events: broadcast::Sender<Arc<Event>>,
    /// The etcd revision the cache has applied, for consistent reads to wait on.
    applied: watch::Sender<i64>,
    /// True while the feed is connected and has loaded the registry.
    current: watch::Sender<bool>,
    /// Health: the cache is current and etcd answered the last probe.
    serving: watch::Sender<bool>,
    probe_ok: AtomicBool,
    /// The feed's watch stream, for asking etcd for a progress notification.
    progress: tokio::sync::Mutex<Option<WatchRequestSender>>,
}

impl Shared {
    fn read(&self) -> RwLockReadGuard<'_, CacheState> {
        // Every mutation under the lock is a single insert, remove or assignment.
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, CacheState> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }

    fn components_prefix(&self) -> String {
        format!("{}/components/", self.prefix)
    }

    fn key(&self, kind: ComponentKind, id: &ComponentId) -> String {
        format!("{}/components/{}/{}", self.prefix, kind_label(kind), id)
    }

    /// The kind and id a key names, if it is a component key of this prefix.
    fn parse_key(&self, key: &[u8]) -> Option<(ComponentKind, ComponentId)> {
        let key = std::str::from_utf8(key).ok()?;
        let rest = key.strip_prefix(&self.components_prefix())?;
        let (kind, id) = rest.split_once('/')?;
        Some((kind_from_label(kind)?, ComponentId::parse("key", id).ok()?))
    }

    fn view(&self, cached: &Cached, status: HealthStatus) -> Component {
        let mut c = cached.stored.component.clone();
        c.status = status;
        c.lease_expires_at = c.last_heartbeat + self.settings.ttl;
        c
    }

    fn live_view(&self, cached: &Cached, now: SystemTime) -> Component {
        self.view(
            cached,
            effective(&cached.stored.component, &self.settings, now),
        )
    }

    fn emit(&self, state: &mut CacheState, change: Change) {
        state.seq += 1;
        // No receivers is fine: nobody is watching.
        let _ = self.events.send(Arc::new(Event {
            revision: state.seq,
            change,
        }));
    }

    fn refresh_serving(&self) {
        let serving = *self.current.borrow() && self.probe_ok.load(Ordering::SeqCst);
        let changed = self
            .serving
            .send_if_modified(|s| std::mem::replace(s, serving) != serving);
        if changed {
            if serving {
                tracing::info!("etcd registry current: serving");
            } else {
                tracing::warn!("etcd registry not current: NOT_SERVING, writes refused");
                // Watchers must not go on showing a view nobody keeps current: a resync
                // makes each subscribe again, which fails with UNAVAILABLE until etcd is back.
                let mut state = self.write();
                self.emit(&mut state, Change::Resync);
            }
        }
    }

    fn set_current(&self, current: bool) {
        self.current.send_replace(current);
        self.refresh_serving();
    }

    /// Replaces the cache with `loaded` at `revision` and tells every watcher to resync.
    fn replace(&self, loaded: Vec<Stored>, revision: i64) {
        let now = SystemTime::now();
        let mut state = self.write();
        let old = std::mem::take(&mut state.entries);
        for ((kind, status), _) in std::mem::take(&mut state.counts) {
            metrics::gauge!(instruments::COMPONENTS, "kind" => kind_label(kind), "status" => status_label(status)).set(0.0);
        }
        let old_count = old.len();
        for stored in loaded.into_iter().filter(|s| !s.deregistered) {
            let Ok(id) = ComponentId::parse("id", &stored.component.id) else {
                continue;
            };
            let status = effective(&stored.component, &self.settings, now);
            state.count(stored.component.kind, status, 1);
            state.entries.insert(
                id,
                Cached {
                    stored,
                    published: status,
                },
            );
        }
        state.revision = revision;
        self.current.send_replace(true);
        tracing::info!(
            components = state.entries.len(),
            before = old_count,
            revision,
            "etcd registry loaded"
        );
        self.emit(&mut state, Change::Resync);
        drop(state);
        self.applied.send_replace(revision);
        self.refresh_serving();
    }

    /// Applies one watch response: every event in it, then its revision.
    fn apply(&self, response: &WatchResponse) {
        let now = SystemTime::now();
        let mut state = self.write();
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            let Some((kind, id)) = self.parse_key(kv.key()) else {
                tracing::warn!(key = %String::from_utf8_lossy(kv.key()), "ignoring a key that is not a component key");
                continue;
            };
            match event.event_type() {
                EventType::Put => match Stored::decode(kv.value(), kv.mod_revision()) {
                    Some(stored) if stored.component.kind == kind => {
                        self.put(&mut state, id, stored, now);
                    }
                    _ => {
                        // Not ours to interpret: leave it out of the registry, loudly.
                        tracing::warn!(component_id = %id, "ignoring an undecodable registry record");
                        self.remove(&mut state, &id, RemovalReason::Unspecified);
                    }
                },
                EventType::Delete => self.remove(&mut state, &id, RemovalReason::Expired),
            }
        }
        // A response with events is complete up to its last event. One without is either
        // the creation notice, whose header revision may be ahead of catch-up events still
        // to come (so it says nothing), or a progress notification: the store's revision,
        // with every event up to it delivered.
        let reached = match response.events().last().and_then(|e| e.kv()) {
            Some(kv) => kv.mod_revision(),
            None if response.created() => 0,
            None => response.header().map_or(0, |h| h.revision()),
        };
        state.revision = state.revision.max(reached);
        let revision = state.revision;
        drop(state);
        self.applied.send_replace(revision);
    }

    fn put(&self, state: &mut CacheState, id: ComponentId, stored: Stored, now: SystemTime) {
        if stored.deregistered {
            self.remove(state, &id, RemovalReason::Deregistered);
            return;
        }
        let status = effective(&stored.component, &self.settings, now);
        match state.entries.get_mut(&id) {
            Some(cached) => {
                let old = &cached.stored.component;
                let fields_changed = old.endpoint != stored.component.endpoint
                    || old.metadata != stored.component.metadata
                    || old.capabilities != stored.component.capabilities
                    || old.data_types != stored.component.data_types
                    || old.version != stored.component.version
                    || old.kind != stored.component.kind;
                let previous = cached.published;
                cached.stored = stored;
                cached.published = status;
                if previous != status || fields_changed {
                    let view = self.view(cached, status);
                    let kind = view.kind;
                    if previous != status {
                        state.count(kind, previous, -1);
                        state.count(kind, status, 1);
                    }
                    self.emit(state, Change::Updated(view));
                }
            }
            None => {
                let kind = stored.component.kind;
                let cached = Cached {
                    stored,
                    published: status,
                };
                let view = self.view(&cached, status);
                state.entries.insert(id, cached);
                state.count(kind, status, 1);
                self.emit(state, Change::Added(view));
            }
        }
    }

    fn remove(&self, state: &mut CacheState, id: &ComponentId, reason: RemovalReason) {
        let Some(cached) = state.entries.remove(id) else {
            return;
        };
        let kind = cached.stored.component.kind;
        state.count(kind, cached.published, -1);
        if reason == RemovalReason::Expired {
            metrics::counter!(instruments::EXPIRED_TOTAL, "kind" => kind_label(kind)).increment(1);
        }
        let last_seen = self.view(&cached, cached.published);
        self.emit(state, Change::Removed(last_seen, reason));
    }
}

struct Renewal {
    lease: i64,
    /// `Ok(false)` when the lease is gone.
    reply: oneshot::Sender<Result<bool>>,
}

/// The etcd-backed [`Registry`].
pub struct EtcdRegistry {
    shared: Arc<Shared>,
    client: Client,
    renewals: mpsc::Sender<Renewal>,
    max_components: usize,
    timeout: Duration,
    stop: CancellationToken,
}

impl Drop for EtcdRegistry {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl EtcdRegistry {
    /// Connects to etcd and starts the cache feed, the health probe and the lease
    /// keepalive task. Returns at once when etcd is down (without a user to log in as):
    /// the registry then reports NOT_SERVING until etcd answers.
    pub async fn connect(
        settings: &EtcdSettings,
        lease_ttl: Duration,
        max_components: usize,
        watch_buffer: usize,
    ) -> Result<Self> {
        settings.validate()?;
        let lease = LeaseSettings::new(lease_ttl);
        // Every etcd call is bounded: a third of the heartbeat interval, between 0.5 s
        // and 5 s, so a heartbeat fails (and the client retries elsewhere) in time.
        let timeout = (lease.heartbeat_interval / 3)
            .clamp(Duration::from_millis(500), Duration::from_secs(5));
        let client = Client::connect(settings.urls(), Some(settings.connect_options(timeout)))
            .await
            .map_err(|e| backend(&format!("connect to {}", settings.endpoints.join(",")), e))?;
        let (events, _) = broadcast::channel(watch_buffer.max(1));
        let shared = Arc::new(Shared {
            prefix: settings.prefix.clone(),
            settings: lease,
            state: RwLock::new(CacheState::default()),
            events,
            applied: watch::Sender::new(0),
            current: watch::Sender::new(false),
            serving: watch::Sender::new(false),
            probe_ok: AtomicBool::new(false),
            progress: tokio::sync::Mutex::new(None),
        });
        let stop = CancellationToken::new();
        let (renewals, queue) = mpsc::channel(RENEW_QUEUE);
        tokio::spawn(feed(shared.clone(), client.clone(), stop.clone()));
        tokio::spawn(probe(shared.clone(), client.clone(), timeout, stop.clone()));
        tokio::spawn(keepalive(client.clone(), queue, timeout, stop.clone()));
        tracing::info!(endpoints = ?settings.endpoints, prefix = %settings.prefix, "etcd registry started");
        Ok(Self {
            shared,
            client,
            renewals,
            max_components,
            timeout,
            stop,
        })
    }

    /// The connection, key prefix and per-call timeout of this registry, for other
    /// records this control plane keeps in the same etcd (its standing pipelines).
    pub(crate) fn connection(&self) -> (Client, String, Duration) {
        (
            self.client.clone(),
            self.shared.prefix.clone(),
            self.timeout,
        )
    }

    async fn bounded<T, F, Fut>(&self, what: &str, f: F) -> Result<T>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        call(&self.client, self.timeout, f)
            .await
            .map_err(|e| e.into_error(what))
    }

    /// Waits until the cache reflects everything etcd had committed when this was called,
    /// so a read through any replica sees every write acknowledged before it.
    async fn sync(&self) -> Result<()> {
        // A feed reloading after a broken watch is back within the timeout, or etcd is gone.
        let mut current = self.shared.current.subscribe();
        if tokio::time::timeout(self.timeout, current.wait_for(|c| *c))
            .await
            .is_err()
        {
            return Err(unavailable("the registry cache is not loaded"));
        }
        let probe_key = self.shared.components_prefix();
        let response = self
            .bounded("read revision", |mut c| {
                let key = probe_key.clone();
                async move { c.get(key, Some(GetOptions::new().with_keys_only())).await }
            })
            .await?;
        let revision = response.header().map_or(0, |h| h.revision());
        let mut applied = self.shared.applied.subscribe();
        if *applied.borrow() >= revision {
            return Ok(());
        }
        // Writes outside the prefix move the revision without an event reaching us:
        // a progress notification brings the cache's revision up to date.
        if let Some(sender) = self.shared.progress.lock().await.as_mut() {
            let _ = sender.request_progress().await;
        }
        let caught_up =
            tokio::time::timeout(self.timeout, applied.wait_for(|r| *r >= revision)).await;
        match caught_up {
            Ok(Ok(_)) => Ok(()),
            _ => Err(unavailable(&format!(
                "the registry cache did not reach etcd revision {revision} within {:?}",
                self.timeout
            ))),
        }
    }

    /// Renews `lease` on the keepalive task; false when etcd says it is gone.
    async fn renew(&self, lease: i64) -> Result<bool> {
        let (reply, answer) = oneshot::channel();
        self.renewals
            .try_send(Renewal { lease, reply })
            .map_err(|_| unavailable("too many lease renewals queued"))?;
        match tokio::time::timeout(self.timeout * 2, answer).await {
            Ok(Ok(result)) => result,
            _ => Err(unavailable("lease renewal did not finish in time")),
        }
    }

    /// The stored records of `id` under every kind (at most one is live).
    async fn read(&self, id: &ComponentId) -> Result<Vec<(ComponentKind, Stored)>> {
        let gets: Vec<TxnOp> = KINDS
            .iter()
            .map(|k| TxnOp::get(self.shared.key(*k, id), None))
            .collect();
        let txn = Txn::new().and_then(gets);
        let response = self
            .bounded("read", |mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await?;
        let mut found = Vec::new();
        for (kind, op) in KINDS.iter().zip(response.op_responses()) {
            if let TxnOpResponse::Get(get) = op
                && let Some(kv) = get.kvs().first()
            {
                let stored = Stored::decode(kv.value(), kv.mod_revision())
                    .ok_or_else(|| backend("read", format!("undecodable record for {id}")))?;
                found.push((*kind, stored));
            }
        }
        Ok(found)
    }

    /// Puts `stored` under its lease if the key is still at `mod_revision`; false when
    /// another write got there first. NOT_FOUND when the lease died meanwhile.
    async fn put_if_unchanged(&self, stored: &Stored, mod_revision: i64) -> Result<bool> {
        let id = ComponentId::parse("id", &stored.component.id)?;
        let key = self.shared.key(stored.component.kind, &id);
        let txn = Txn::new()
            .when([Compare::mod_revision(
                key.clone(),
                CompareOp::Equal,
                mod_revision,
            )])
            .and_then([TxnOp::put(
                key,
                stored.encode(),
                Some(PutOptions::new().with_lease(stored.lease_id)),
            )]);
        let written = call(&self.client, self.timeout, |mut c| {
            let txn = txn.clone();
            async move { c.txn(txn).await }
        })
        .await;
        match written {
            Ok(response) => Ok(response.succeeded()),
            Err(e) if e.lease_gone() => Err(not_found(stored.component.kind, &id)),
            Err(e) => Err(e.into_error("write")),
        }
    }

    fn lease_of(&self, id: &ComponentId, token: LeaseToken, now: SystemTime) -> Lease {
        Lease {
            id: id.clone(),
            token,
            settings: self.shared.settings,
            expires_at: now + self.shared.settings.ttl,
        }
    }

    /// Revokes a lease in the background, for leases granted to a registration that lost.
    fn revoke_later(&self, lease: i64) {
        let client = self.client.clone();
        let timeout = self.timeout;
        tokio::spawn(async move {
            let _ = call(&client, timeout, |mut c| async move {
                c.lease_revoke(lease).await
            })
            .await;
        });
    }

    async fn create(
        &self,
        id: &ComponentId,
        registration: Registration,
        tombstones: &[(ComponentKind, Stored)],
        now: SystemTime,
    ) -> Result<Option<Lease>> {
        if self.shared.read().entries.len() >= self.max_components {
            return Err(Error::RegistryFull {
                max: self.max_components,
            });
        }
        let ttl = i64::try_from(self.shared.settings.ttl.as_secs()).unwrap_or(i64::MAX);
        let lease_id = self
            .bounded("grant lease", |mut c| async move {
                c.lease_grant(ttl, None).await
            })
            .await?
            .id();
        let token = LeaseToken::generate();
        let kind = registration.kind;
        let stored = Stored {
            component: Component {
                id: id.to_string(),
                kind,
                endpoint: registration.endpoint,
                metadata: registration.metadata,
                capabilities: registration.capabilities,
                data_types: registration.data_types,
                version: registration.version,
                // Not offered for discovery until the component says it is ready.
                status: HealthStatus::Starting,
                reported_status: HealthStatus::Starting,
                metrics: BTreeMap::new(),
                registered_at: now,
                last_heartbeat: now,
                lease_expires_at: now + self.shared.settings.ttl,
            },
            lease_id,
            token_sha256: digest(&token),
            deregistered: false,
            mod_revision: 0,
        };
        // Unique across kinds: no key of any kind may hold the id, except a record that
        // is being deregistered, compared at the revision we saw.
        let compares: Vec<Compare> = KINDS
            .iter()
            .map(|k| {
                let key = self.shared.key(*k, id);
                match tombstones.iter().find(|(tk, _)| tk == k) {
                    Some((_, t)) => Compare::mod_revision(key, CompareOp::Equal, t.mod_revision),
                    None => Compare::create_revision(key, CompareOp::Equal, 0),
                }
            })
            .collect();
        let txn = Txn::new().when(compares).and_then([TxnOp::put(
            self.shared.key(kind, id),
            stored.encode(),
            Some(PutOptions::new().with_lease(lease_id)),
        )]);
        // A create applied twice would lose its compare the second time and revoke the
        // lease the first one wrote under: only a request that never left is tried again.
        let written = call_with(&self.client, self.timeout, Repeat::NeverSent, |mut c| {
            let txn = txn.clone();
            async move { c.txn(txn).await }
        })
        .await
        .map_err(|e| e.into_error("register"));
        match written {
            Ok(response) if response.succeeded() => {
                tracing::info!(component_id = %id, kind = kind_label(kind), "component registered");
                Ok(Some(self.lease_of(id, token, now)))
            }
            Ok(_) => {
                self.revoke_later(lease_id);
                Ok(None)
            }
            Err(e) => {
                self.revoke_later(lease_id);
                Err(e)
            }
        }
    }
}

fn not_found(kind: ComponentKind, id: &ComponentId) -> Error {
    Error::NotFound {
        field: id_field(kind),
        kind: kind_label(kind),
        id: id.to_string(),
    }
}

#[async_trait::async_trait]
impl Registry for EtcdRegistry {
    async fn register(&self, registration: Registration) -> Result<Lease> {
        let kind = registration.kind;
        for _ in 0..ATTEMPTS {
            let now = SystemTime::now();
            let Some(id) = registration.id.clone() else {
                let id = ComponentId::assigned(kind);
                if let Some(lease) = self.create(&id, registration.clone(), &[], now).await? {
                    return Ok(lease);
                }
                continue;
            };
            let found = self.read(&id).await?;
            let (tombstones, live): (Vec<_>, Vec<_>) =
                found.into_iter().partition(|(_, s)| s.deregistered);
            let Some((live_kind, stored)) = live.into_iter().next() else {
                if let Some(lease) = self
                    .create(&id, registration.clone(), &tombstones, now)
                    .await?
                {
                    return Ok(lease);
                }
                continue;
            };
            let presented = registration
                .lease_token
                .as_ref()
                .filter(|t| same_digest(&digest(t), &stored.token_sha256));
            let Some(token) = presented else {
                return Err(Error::AlreadyExists {
                    field: id_field(kind),
                    id: id.to_string(),
                    detail:
                        "under a live lease: present its lease_token to refresh, or pick another id"
                            .into(),
                });
            };
            if live_kind != kind {
                return Err(Error::AlreadyExists {
                    field: id_field(kind),
                    id: id.to_string(),
                    detail: format!("as a {}, not a {}", kind_label(live_kind), kind_label(kind)),
                });
            }
            if !self.renew(stored.lease_id).await? {
                // Its lease died: the key goes with it, so the next attempt registers anew.
                continue;
            }
            let changed = !stored.registered_as(&registration);
            let mut refreshed = stored.clone();
            let c = &mut refreshed.component;
            c.endpoint = registration.endpoint.clone();
            c.metadata = registration.metadata.clone();
            c.capabilities = registration.capabilities.clone();
            c.data_types = registration.data_types.clone();
            c.version = registration.version.clone();
            c.last_heartbeat = now;
            match self.put_if_unchanged(&refreshed, stored.mod_revision).await {
                Ok(true) => {
                    tracing::debug!(component_id = %id, changed, "registration refreshed");
                    return Ok(self.lease_of(&id, token.clone(), now));
                }
                Ok(false) | Err(Error::NotFound { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(Error::Backend(
            "registration kept losing races with other writes to the same id; try again".into(),
        ))
    }

    async fn heartbeat(&self, heartbeat: Heartbeat) -> Result<Lease> {
        let id = &heartbeat.id;
        let kind = heartbeat.kind;
        let mut renewed = None;
        for attempt in 0..ATTEMPTS {
            let now = SystemTime::now();
            // The cache usually holds the latest record; when it is behind, the write's
            // revision check fails and the next attempt reads etcd itself.
            let cached = (attempt == 0)
                .then(|| {
                    self.shared
                        .read()
                        .entries
                        .get(id)
                        .filter(|c| c.stored.component.kind == kind)
                        .map(|c| c.stored.clone())
                })
                .flatten();
            let stored = match cached {
                Some(stored) => stored,
                None => match self.read(id).await?.into_iter().find(|(k, _)| *k == kind) {
                    Some((_, stored)) => stored,
                    None => return Err(not_found(kind, id)),
                },
            };
            if stored.deregistered {
                return Err(not_found(kind, id));
            }
            if !same_digest(&digest(&heartbeat.lease_token), &stored.token_sha256) {
                return Err(Error::LeaseMismatch { id: id.to_string() });
            }
            if renewed != Some(stored.lease_id) {
                if !self.renew(stored.lease_id).await? {
                    // Never put again under a dead lease: the component registers anew.
                    return Err(not_found(kind, id));
                }
                renewed = Some(stored.lease_id);
            }
            let due = stored.component.last_heartbeat + self.shared.settings.heartbeat_interval;
            let mut beat = stored.clone();
            beat.component.reported_status = heartbeat.status;
            beat.component.status = heartbeat.status;
            beat.component.metrics = heartbeat.metrics.clone();
            beat.component.last_heartbeat = now;
            if self.put_if_unchanged(&beat, stored.mod_revision).await? {
                let lag = now.duration_since(due).unwrap_or_default();
                metrics::histogram!(instruments::HEARTBEAT_LAG_SECONDS).record(lag.as_secs_f64());
                metrics::counter!(instruments::HEARTBEATS_TOTAL, "kind" => kind_label(kind))
                    .increment(1);
                return Ok(self.lease_of(id, heartbeat.lease_token.clone(), now));
            }
        }
        Err(Error::Backend(format!(
            "heartbeat of {id} kept losing races with other writes; try again"
        )))
    }

    async fn deregister(&self, id: &ComponentId, token: &LeaseToken) -> Result<()> {
        let not_found = || Error::NotFound {
            field: "component_id",
            kind: "component",
            id: id.to_string(),
        };
        for _ in 0..ATTEMPTS {
            let Some((_, stored)) = self
                .read(id)
                .await?
                .into_iter()
                .find(|(_, s)| !s.deregistered)
            else {
                return Err(not_found());
            };
            if !same_digest(&digest(token), &stored.token_sha256) {
                return Err(Error::LeaseMismatch { id: id.to_string() });
            }
            // Mark first, then revoke: the deletion that follows (now, or at expiry if
            // this replica dies in between) is then reported as DEREGISTERED everywhere.
            let mut marked = stored.clone();
            marked.deregistered = true;
            match self.put_if_unchanged(&marked, stored.mod_revision).await {
                Ok(true) => {
                    let lease = stored.lease_id;
                    let revoked = self
                        .bounded("revoke lease", |mut c| async move {
                            c.lease_revoke(lease).await
                        })
                        .await;
                    if let Err(e) = revoked {
                        tracing::warn!(component_id = %id, error = %e, "deregistered, but the lease was not revoked: it expires on its own");
                    }
                    tracing::info!(component_id = %id, "component deregistered");
                    return Ok(());
                }
                Ok(false) => continue,
                Err(Error::NotFound { .. }) => return Err(not_found()),
                Err(e) => return Err(e),
            }
        }
        Err(Error::Backend(format!(
            "deregistration of {id} kept losing races with other writes; try again"
        )))
    }

    async fn get(&self, id: &ComponentId) -> Result<Component> {
        self.sync().await?;
        let now = SystemTime::now();
        let state = self.shared.read();
        state
            .entries
            .get(id)
            .map(|c| self.shared.live_view(c, now))
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
        self.sync().await?;
        let now = SystemTime::now();
        let state = self.shared.read();
        let start = after.map_or(Bound::Unbounded, |id| Bound::Excluded(id.clone()));
        let mut page = Page::default();
        for (_, cached) in state.entries.range((start, Bound::Unbounded)) {
            let component = self.shared.live_view(cached, now);
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
        self.sync().await?;
        let now = SystemTime::now();
        // Under the lock: no change can slip between the snapshot and the first event.
        let state = self.shared.read();
        if !*self.shared.current.borrow() {
            return Err(unavailable("the registry cache is not loaded"));
        }
        let events = self.shared.events.subscribe();
        let snapshot = state
            .entries
            .values()
            .map(|c| self.shared.live_view(c, now))
            .filter(|c| filter.matches(c))
            .collect();
        Ok(Subscription {
            revision: state.seq,
            snapshot,
            events,
        })
    }

    /// Publishes UNHEALTHY (and back) as each component's silence crosses the line, on
    /// this replica's clock against the heartbeat time in etcd. Expiry is etcd's: the
    /// lease deletes the key and every replica's feed reports the removal.
    async fn sweep(&self) -> Result<Option<Instant>> {
        let now = SystemTime::now();
        let settings = self.shared.settings;
        let mut state = self.shared.write();
        let mut changed = Vec::new();
        let mut next: Option<Duration> = None;
        for (id, cached) in &state.entries {
            let c = &cached.stored.component;
            let status = effective(c, &settings, now);
            if status != cached.published {
                changed.push((id.clone(), status));
            }
            let unhealthy_at = c.last_heartbeat + settings.unhealthy_after();
            if let Ok(wait) = unhealthy_at.duration_since(now) {
                next = Some(next.map_or(wait, |n| n.min(wait)));
            }
        }
        for (id, status) in changed {
            let Some(cached) = state.entries.get_mut(&id) else {
                continue;
            };
            let previous = cached.published;
            cached.published = status;
            let view = self.shared.view(cached, status);
            let kind = view.kind;
            state.count(kind, previous, -1);
            state.count(kind, status, 1);
            tracing::info!(component_id = %id, from = status_label(previous), to = status_label(status), "component status changed");
            self.shared.emit(&mut state, Change::Updated(view));
        }
        Ok(next.map(|wait| Instant::now() + wait))
    }

    fn settings(&self) -> LeaseSettings {
        self.shared.settings
    }

    fn serving(&self) -> Option<watch::Receiver<bool>> {
        Some(self.shared.serving.subscribe())
    }
}

/// Reads every component key at one revision, a page at a time.
async fn load(shared: &Shared, client: &Client, timeout: Duration) -> Result<(Vec<Stored>, i64)> {
    let prefix = shared.components_prefix();
    let end = range_end(&prefix);
    let mut start = prefix.into_bytes();
    let mut revision = 0;
    let mut loaded = Vec::new();
    loop {
        let mut options = GetOptions::new()
            .with_range(end.clone())
            .with_limit(LOAD_PAGE);
        if revision > 0 {
            options = options.with_revision(revision);
        }
        let key = start.clone();
        let response = call(client, timeout, |mut c| {
            let (key, options) = (key.clone(), options.clone());
            async move { c.get(key, Some(options)).await }
        })
        .await
        .map_err(|e| e.into_error("load"))?;
        if revision == 0 {
            revision = response.header().map_or(0, |h| h.revision());
        }
        for kv in response.kvs() {
            match shared
                .parse_key(kv.key())
                .and_then(|_| Stored::decode(kv.value(), kv.mod_revision()))
            {
                Some(stored) => loaded.push(stored),
                None => {
                    tracing::warn!(key = %String::from_utf8_lossy(kv.key()), "ignoring an undecodable registry record")
                }
            }
        }
        match response.kvs().last() {
            Some(last) if response.more() => {
                start = last.key().to_vec();
                start.push(0);
            }
            _ => break,
        }
    }
    Ok((loaded, revision))
}

/// The one prefix watch that feeds the cache: load, then watch from the next revision;
/// on compaction or a broken watch, load again (every watcher resyncs). Never skips.
async fn feed(shared: Arc<Shared>, client: Client, stop: CancellationToken) {
    let timeout = shared
        .settings
        .heartbeat_interval
        .clamp(Duration::from_millis(500), Duration::from_secs(5));
    let mut backoff = Duration::from_millis(50);
    while !stop.is_cancelled() {
        let revision = match load(&shared, &client, timeout).await {
            Ok((loaded, revision)) => {
                shared.replace(loaded, revision);
                revision
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot load the registry from etcd; retrying");
                shared.set_current(false);
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        backoff = Duration::from_millis(50);
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision + 1)
            .with_progress_notify();
        let prefix = shared.components_prefix();
        let watched = call(&client, timeout, |mut c| {
            let (prefix, options) = (prefix.clone(), options.clone());
            async move { c.watch(prefix, Some(options)).await }
        })
        .await;
        let stream = match watched {
            Ok(stream) => stream,
            Err(e) => {
                let e = e.into_error("watch");
                tracing::warn!(error = %e, "cannot watch the registry in etcd; reloading");
                shared.set_current(false);
                continue;
            }
        };
        let (sender, mut responses) = stream.split();
        *shared.progress.lock().await = Some(sender);
        let broke = loop {
            let message = tokio::select! {
                () = stop.cancelled() => return,
                message = responses.message() => message,
            };
            match message {
                Ok(Some(response)) => {
                    if response.compact_revision() > 0 {
                        break format!(
                            "history compacted at revision {}",
                            response.compact_revision()
                        );
                    }
                    if response.canceled() {
                        break format!("watch canceled: {}", response.cancel_reason());
                    }
                    shared.apply(&response);
                }
                Ok(None) => break "watch ended".to_string(),
                Err(e) => break e.to_string(),
            }
        };
        shared.progress.lock().await.take();
        tracing::warn!(reason = %broke, "etcd registry watch broke; reloading");
        // Reads wait on the reload; health drops only if etcd does not answer it.
        shared.current.send_replace(false);
    }
}

/// Asks etcd for its revision on a steady beat, so health turns NOT_SERVING when etcd
/// stops answering even while no watch event says so. Two misses in a row are needed:
/// a leader election (about a second) should not end every watch on every replica, and
/// reads stay safe meanwhile because each one checks etcd's revision itself.
async fn probe(shared: Arc<Shared>, client: Client, timeout: Duration, stop: CancellationToken) {
    let every = (shared.settings.heartbeat_interval / 2)
        .clamp(Duration::from_millis(200), Duration::from_secs(2));
    let key = shared.components_prefix();
    let mut misses = 0u32;
    loop {
        let answered = call(&client, timeout, |mut c| {
            let key = key.clone();
            async move { c.get(key, Some(GetOptions::new().with_keys_only())).await }
        })
        .await;
        misses = if answered.is_ok() { 0 } else { misses + 1 };
        if misses == 2 {
            tracing::warn!("etcd did not answer two health probes in a row");
        }
        shared.probe_ok.store(misses < 2, Ordering::SeqCst);
        shared.refresh_serving();
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}

/// Lease renewals, on their own task so heartbeats queue here instead of each opening
/// etcd streams unbounded; at most [`RENEW_CONCURRENCY`] run at once.
async fn keepalive(
    client: Client,
    queue: mpsc::Receiver<Renewal>,
    timeout: Duration,
    stop: CancellationToken,
) {
    let renewals = tokio_stream::wrappers::ReceiverStream::new(queue).for_each_concurrent(
        RENEW_CONCURRENCY,
        |renewal| {
            let client = client.clone();
            async move {
                let lease = renewal.lease;
                let renewed = call(&client, timeout, |mut c| async move {
                    c.lease_keep_alive(lease).await.map(|_| ())
                })
                .await;
                let result = match renewed {
                    Ok(()) => Ok(true),
                    Err(e) if e.lease_gone() => Ok(false),
                    Err(e) => Err(e.into_error("renew lease")),
                };
                let _ = renewal.reply.send(result);
            }
        },
    );
    tokio::select! {
        () = stop.cancelled() => {}
        () = renewals => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(status: tonic::Status) -> etcd_client::Error {
        etcd_client::Error::GRpcStatus(status)
    }

    #[test]
    fn a_request_that_could_not_connect_is_tried_again_even_when_it_must_not_apply_twice() {
        // What the client reports for a killed member whose name no longer resolves.
        for never_left in [
            status(tonic::Status::unavailable("dns error")),
            status(tonic::Status::unavailable("tcp connect error")),
            status(tonic::Status::unavailable("etcdserver: no leader")),
        ] {
            assert!(never_sent(&never_left), "{never_left:?}");
            assert!(transient(&never_left, Repeat::NeverSent), "{never_left:?}");
            assert!(transient(&never_left, Repeat::Safe), "{never_left:?}");
        }
    }

    #[test]
    fn a_call_that_may_have_applied_is_tried_again_only_when_safe_to_repeat() {
        let broken = std::io::Error::new(std::io::ErrorKind::BrokenPipe, "stream closed");
        for maybe_applied in [
            status(tonic::Status::unavailable(
                "h2 protocol error: connection error received: not a result of an error",
            )),
            status(tonic::Status::unavailable(
                "connection closed before message completed",
            )),
            status(tonic::Status::unavailable("etcdserver: leader changed")),
            status(tonic::Status::unavailable("etcdserver: request timed out")),
            status(tonic::Status::from_error(Box::new(broken))),
        ] {
            assert!(!never_sent(&maybe_applied), "{maybe_applied:?}");
            assert!(transient(&maybe_applied, Repeat::Safe), "{maybe_applied:?}");
            assert!(
                !transient(&maybe_applied, Repeat::NeverSent),
                "{maybe_applied:?}"
            );
        }
    }

    #[test]
    fn answers_of_etcd_itself_are_final() {
        for answer in [
            status(tonic::Status::not_found(
                "etcdserver: requested lease not found",
            )),
            status(tonic::Status::invalid_argument(
                "etcdserver: key is not provided",
            )),
            status(tonic::Status::unknown(
                "an answer without a transport cause",
            )),
            etcd_client::Error::LeaseKeepAliveError("lease not found".into()),
        ] {
            assert!(!transient(&answer, Repeat::Safe), "{answer:?}");
        }
    }

    #[test]
    fn registry_urls_name_the_flag() {
        let s = EtcdSettings::from_url("etcd://127.0.0.1:2379,10.0.0.2:2379").unwrap();
        assert_eq!(s.endpoints, ["127.0.0.1:2379", "10.0.0.2:2379"]);
        assert_eq!(s.prefix, DEFAULT_PREFIX);
        assert_eq!(s.urls()[1], "http://10.0.0.2:2379");
        for bad in [
            "etcd://",
            "etcd://host",
            "etcd://host:0",
            "etcd://a:1,",
            "http://a:1",
            "etcd://a:1/x",
        ] {
            let err = EtcdSettings::from_url(bad).unwrap_err().to_string();
            assert!(err.contains("--registry"), "{bad}: {err}");
        }
    }

    #[test]
    fn prefixes_are_absolute_without_a_trailing_slash() {
        let mut s = EtcdSettings::from_url("etcd://127.0.0.1:2379").unwrap();
        assert!(s.validate().is_ok());
        for bad in ["", "/", "flowplane", "/flowplane/", "/a b"] {
            s.prefix = bad.into();
            let err = s.validate().unwrap_err().to_string();
            assert!(err.contains("--etcd-prefix"), "{bad}: {err}");
        }
    }

    #[test]
    fn records_round_trip_and_keys_parse() {
        let shared_prefix = "/fp/v1";
        let key = format!("{shared_prefix}/components/source/src-1");
        let (events, _) = broadcast::channel(1);
        let shared = Shared {
            prefix: shared_prefix.into(),
            settings: LeaseSettings::new(Duration::from_secs(3)),
            state: RwLock::default(),
            events,
            applied: watch::Sender::new(0),
            current: watch::Sender::new(false),
            serving: watch::Sender::new(false),
            probe_ok: AtomicBool::new(false),
            progress: tokio::sync::Mutex::new(None),
        };
        let id = ComponentId::parse("id", "src-1").unwrap();
        assert_eq!(shared.key(ComponentKind::Source, &id), key);
        assert_eq!(
            shared.parse_key(key.as_bytes()),
            Some((ComponentKind::Source, id))
        );
        assert_eq!(shared.parse_key(b"/fp/v1/components/robot/x"), None);
        assert_eq!(shared.parse_key(b"/other/components/source/x"), None);

        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let stored = Stored {
            component: Component {
                id: "src-1".into(),
                kind: ComponentKind::Source,
                endpoint: "127.0.0.1:1".into(),
                metadata: [("zone".to_string(), "a".to_string())].into(),
                capabilities: vec![],
                data_types: vec![flowplane_proto::data::v1::DataTypeHint::Json],
                version: "1".into(),
                status: HealthStatus::Healthy,
                reported_status: HealthStatus::Healthy,
                metrics: [("load".to_string(), 0.5)].into(),
                registered_at: now,
                last_heartbeat: now,
                lease_expires_at: now,
            },
            lease_id: 42,
            token_sha256: digest(&LeaseToken::generate()),
            deregistered: false,
            mod_revision: 0,
        };
        let back = Stored::decode(&stored.encode(), 7).unwrap();
        assert_eq!(back.component, stored.component);
        assert_eq!(back.lease_id, 42);
        assert_eq!(back.mod_revision, 7);
        assert!(same_digest(&back.token_sha256, &stored.token_sha256));
        let settings = LeaseSettings::new(Duration::from_secs(3));
        assert_eq!(
            effective(
                &back.component,
                &settings,
                now + Duration::from_millis(1999)
            ),
            HealthStatus::Healthy
        );
        assert_eq!(
            effective(&back.component, &settings, now + Duration::from_secs(2)),
            HealthStatus::Unhealthy
        );
    }
}
