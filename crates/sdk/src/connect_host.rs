//! The connector host: serves `SourceService` and `ConsumerService` for any number of
//! [`Source`]s and [`Consumer`]s, one task per stream. A `Read` stream never sends a
//! record the reader has no credit for, and checks every record the source yields
//! (declared partition, next offset, declared type, size); a `Deliver` stream consumes
//! one delivery at a time and acknowledges each. Every queue is bounded, and a stream
//! whose peer goes away drops its reader or sink at once. It must never let one stream's
//! failure touch another.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use flowplane_grpc::lifecycle::{Admitted, Lifecycle};
use flowplane_proto::{
    connect::v1::{
        AckOutcome, DeliverOpen, DeliverOpened, DeliverRequest, DeliverResponse, DeliveryAck,
        ReadOpen, ReadOpened, ReadRequest, ReadResponse, SourcePending, SourceRecord,
        consumer_service_server::{ConsumerService, ConsumerServiceServer},
        deliver_request, deliver_response, read_request, read_response,
        source_service_server::{SourceService, SourceServiceServer},
    },
    data::v1::DataTypeHint,
};
use tokio::sync::Notify;
use tokio_stream::Stream;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status, Streaming};

use crate::{
    Ack, CAPABILITY_LABEL, ConnectorSpec, Consumer, ConsumerOpen, Delivery, Error, Params, Result,
    Source, SourceOpen,
    host::{Responses, Tx, next_request, panic_message, read_error},
    registration::{Announce, Subject},
};

/// Messages a stream may have queued for a slow peer before the host stops producing
/// (records) or reading (deliveries); bytes are bounded by [`crate::STREAM_BUFFER_BYTES`].
pub const CONNECTOR_STREAM_BUFFER: usize = 32;

/// Most credit a reader may have outstanding: more is refused as `CREDIT_OVERFLOW`.
pub const MAX_OUTSTANDING_CREDIT: u64 = u32::MAX as u64;

/// Which role a connector plays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectorKind {
    /// Serves `SourceService.Read`.
    Source,
    /// Serves `ConsumerService.Deliver`.
    Consumer,
}

impl ConnectorKind {
    /// "source" or "consumer", as messages and ids spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectorKind::Source => "source",
            ConnectorKind::Consumer => "consumer",
        }
    }
}

/// Counters of one hosted connector, for heartbeats.
#[derive(Debug, Default)]
struct Counters {
    streams_total: AtomicU64,
    active_streams: AtomicU64,
    /// Records sent (source) or deliveries acknowledged (consumer).
    items: AtomicU64,
    /// Deliveries answered RETRY or REJECT, and streams ended by the connector's error.
    errors: AtomicU64,
}

/// One hosted connector as the control plane sees it: its own component.
#[derive(Debug)]
pub(crate) struct Slot {
    kind: ConnectorKind,
    spec: ConnectorSpec,
    /// The id granted by the control plane; empty until registered.
    id: RwLock<String>,
    max_streams: usize,
    counters: Counters,
}

impl Slot {
    fn id(&self) -> String {
        self.id.read().map(|id| id.clone()).unwrap_or_default()
    }

    /// The id to ask the control plane for: `<host-id>-<kind>-<name>`.
    pub(crate) fn wanted_id(&self, host_id: &str) -> String {
        format!("{host_id}-{}-{}", self.kind.as_str(), self.spec.name())
    }

    fn matches(&self, id: &str, host_id: Option<&str>) -> bool {
        id == self.spec.name()
            || (!id.is_empty() && id == self.id())
            || host_id.is_some_and(|h| id == self.wanted_id(h))
    }

    /// Counts a stream open until the guard drops.
    fn open_stream(self: &Arc<Self>) -> StreamGuard {
        self.counters.streams_total.fetch_add(1, Ordering::Relaxed);
        self.counters.active_streams.fetch_add(1, Ordering::Relaxed);
        StreamGuard(self.clone())
    }

    /// The labels registered: the host's, plus the capability label.
    pub(crate) fn labels(&self, mut labels: HashMap<String, String>) -> HashMap<String, String> {
        labels.insert(CAPABILITY_LABEL.into(), self.spec.name().into());
        labels
    }
}

struct StreamGuard(Arc<Slot>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0
            .counters
            .active_streams
            .fetch_sub(1, Ordering::Relaxed);
    }
}

impl Subject for Slot {
    fn announce(&self) -> Announce {
        let data_types = self.spec.types().iter().map(|t| *t as i32).collect();
        match self.kind {
            ConnectorKind::Source => Announce::Source { data_types },
            ConnectorKind::Consumer => Announce::Consumer { data_types },
        }
    }

    fn metrics(&self) -> HashMap<String, f64> {
        let c = &self.counters;
        let items = match self.kind {
            ConnectorKind::Source => "records_total",
            ConnectorKind::Consumer => "deliveries_total",
        };
        [
            ("streams_total", c.streams_total.load(Ordering::Relaxed)),
            ("active_streams", c.active_streams.load(Ordering::Relaxed)),
            (items, c.items.load(Ordering::Relaxed)),
            ("errors_total", c.errors.load(Ordering::Relaxed)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v as f64))
        .collect()
    }

    fn overloaded(&self) -> bool {
        self.counters.active_streams.load(Ordering::Relaxed) > self.max_streams as u64
    }

    fn set_id(&self, id: &str) {
        if let Ok(mut current) = self.id.write() {
            id.clone_into(&mut current);
        }
    }
}

/// Builds a [`ConnectorHost`].
pub struct ConnectorHostBuilder {
    name: String,
    version: String,
    host_id: Option<String>,
    max_streams: usize,
    sources: Vec<Arc<dyn Source>>,
    consumers: Vec<Arc<dyn Consumer>>,
}

impl ConnectorHostBuilder {
    /// A host called `name` (the binary's name in `--help`, logs and traces).
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            host_id: None,
            max_streams: 1024,
            sources: Vec::new(),
            consumers: Vec::new(),
        }
    }

    /// The host software version.
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = version.into();
        self
    }

    /// The host's id (`--id`): each connector registers as `<id>-source-<name>` or
    /// `<id>-consumer-<name>`. Unset lets the control plane assign ids.
    pub fn host_id(mut self, id: impl Into<String>) -> Self {
        self.host_id = Some(id.into());
        self
    }

    /// Open streams of one connector above which it reports itself DEGRADED.
    pub fn max_streams(mut self, max: usize) -> Self {
        self.max_streams = max;
        self
    }

    /// Serves a source.
    pub fn source(mut self, source: impl Source) -> Self {
        self.sources.push(Arc::new(source));
        self
    }

    /// Serves a consumer.
    pub fn consumer(mut self, consumer: impl Consumer) -> Self {
        self.consumers.push(Arc::new(consumer));
        self
    }

    /// The host name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The host software version.
    pub fn host_version(&self) -> &str {
        &self.version
    }

    /// The connectors added so far, as `source/<name>` and `consumer/<name>`.
    pub fn connector_names(&self) -> Vec<String> {
        let sources = self
            .sources
            .iter()
            .map(|s| format!("source/{}", s.spec().name()));
        let consumers = self
            .consumers
            .iter()
            .map(|c| format!("consumer/{}", c.spec().name()));
        sources.chain(consumers).collect()
    }

    /// Keeps only the connectors named in `names` (`--connectors`), each a bare name
    /// (every kind) or `source/<name>` / `consumer/<name>`; an empty list keeps them all.
    pub fn only(mut self, names: &[String]) -> Result<Self> {
        if names.is_empty() {
            return Ok(self);
        }
        let known = self.connector_names();
        let wanted = |kind: &str, name: &str| {
            names
                .iter()
                .any(|n| n == name || *n == format!("{kind}/{name}"))
        };
        if let Some(unknown) = names.iter().find(|n| {
            !known
                .iter()
                .any(|k| k == *n || k.split_once('/').is_some_and(|(_, name)| name == *n))
        }) {
            return Err(Error::InvalidConfig {
                setting: "--connectors",
                message: format!(
                    "unknown connector {unknown:?}; this host serves: {}",
                    known.join(", ")
                ),
            });
        }
        self.sources.retain(|s| wanted("source", s.spec().name()));
        self.consumers
            .retain(|c| wanted("consumer", c.spec().name()));
        Ok(self)
    }

    /// Checks every spec and builds the host.
    pub fn build(self) -> Result<ConnectorHost> {
        let slot = |kind: ConnectorKind, spec: ConnectorSpec| -> Result<Arc<Slot>> {
            let invalid = |message: String| Error::InvalidConnector {
                kind: kind.as_str(),
                connector: spec.name().to_string(),
                message,
            };
            let name = spec.name();
            if name.is_empty()
                || !name.starts_with(|c: char| c.is_ascii_alphanumeric())
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
            {
                return Err(invalid(
                    "the name must be [A-Za-z0-9._-], starting with a letter or digit".into(),
                ));
            }
            if spec.types().is_empty() {
                return Err(invalid("it declares no data type".into()));
            }
            if spec.types().contains(&DataTypeHint::Unspecified) {
                return Err(invalid("it declares DATA_TYPE_HINT_UNSPECIFIED".into()));
            }
            Ok(Arc::new(Slot {
                kind,
                spec,
                id: RwLock::new(String::new()),
                max_streams: self.max_streams,
                counters: Counters::default(),
            }))
        };
        let mut sources = Vec::new();
        for source in self.sources {
            let slot = slot(ConnectorKind::Source, source.spec())?;
            sources.push((slot, source));
        }
        let mut consumers = Vec::new();
        for consumer in self.consumers {
            let slot = slot(ConnectorKind::Consumer, consumer.spec())?;
            consumers.push((slot, consumer));
        }
        for (i, (slot, _)) in sources.iter().enumerate() {
            if sources[..i]
                .iter()
                .any(|(s, _)| s.spec.name() == slot.spec.name())
            {
                return Err(Error::InvalidConnector {
                    kind: "source",
                    connector: slot.spec.name().into(),
                    message: "it is served twice".into(),
                });
            }
        }
        for (i, (slot, _)) in consumers.iter().enumerate() {
            if consumers[..i]
                .iter()
                .any(|(s, _)| s.spec.name() == slot.spec.name())
            {
                return Err(Error::InvalidConnector {
                    kind: "consumer",
                    connector: slot.spec.name().into(),
                    message: "it is served twice".into(),
                });
            }
        }
        Ok(ConnectorHost {
            inner: Arc::new(Inner {
                name: self.name,
                version: self.version,
                host_id: self.host_id,
                sources,
                consumers,
                lifecycle: Lifecycle::new(),
                tasks: TaskTracker::new(),
            }),
        })
    }
}

struct Inner {
    name: String,
    version: String,
    host_id: Option<String>,
    sources: Vec<(Arc<Slot>, Arc<dyn Source>)>,
    consumers: Vec<(Arc<Slot>, Arc<dyn Consumer>)>,
    lifecycle: Lifecycle,
    tasks: TaskTracker,
}

/// Serves `SourceService` and `ConsumerService` for a set of connectors. Cheap to clone:
/// clones share state.
#[derive(Clone)]
pub struct ConnectorHost {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ConnectorHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectorHost")
            .field("name", &self.inner.name)
            .field("sources", &self.sources())
            .field("consumers", &self.consumers())
            .finish_non_exhaustive()
    }
}

impl ConnectorHost {
    /// Starts describing a host.
    pub fn builder(name: impl Into<String>) -> ConnectorHostBuilder {
        ConnectorHostBuilder::new(name)
    }

    /// The host's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The host software version.
    pub fn version(&self) -> &str {
        &self.inner.version
    }

    /// The specs of the sources served, in order.
    pub fn sources(&self) -> Vec<ConnectorSpec> {
        self.inner
            .sources
            .iter()
            .map(|(s, _)| s.spec.clone())
            .collect()
    }

    /// The specs of the consumers served, in order.
    pub fn consumers(&self) -> Vec<ConnectorSpec> {
        self.inner
            .consumers
            .iter()
            .map(|(s, _)| s.spec.clone())
            .collect()
    }

    /// The component id a connector registered as; `None` before it registered.
    pub fn component_id(&self, kind: ConnectorKind, name: &str) -> Option<String> {
        self.slots()
            .find(|s| s.kind == kind && s.spec.name() == name)
            .map(|s| s.id())
            .filter(|id| !id.is_empty())
    }

    /// Every hosted connector, sources first.
    pub(crate) fn slots(&self) -> impl Iterator<Item = &Arc<Slot>> {
        let sources = self.inner.sources.iter().map(|(s, _)| s);
        sources.chain(self.inner.consumers.iter().map(|(s, _)| s))
    }

    /// The configured host id (`--id`), if any.
    pub(crate) fn host_id(&self) -> Option<&str> {
        self.inner.host_id.as_deref()
    }

    /// `SourceService`, with flowplane's message limits.
    pub fn source_service(&self) -> SourceServiceServer<ConnectorHost> {
        SourceServiceServer::new(self.clone())
            .max_decoding_message_size(flowplane_grpc::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(flowplane_grpc::MAX_MESSAGE_BYTES)
    }

    /// `ConsumerService`, with flowplane's message limits.
    pub fn consumer_service(&self) -> ConsumerServiceServer<ConnectorHost> {
        ConsumerServiceServer::new(self.clone())
            .max_decoding_message_size(flowplane_grpc::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(flowplane_grpc::MAX_MESSAGE_BYTES)
    }

    /// Refuses new streams with UNAVAILABLE from now on, waits up to `grace` for open
    /// ones to end, then ends the rest UNAVAILABLE. Returns how many were still open.
    pub async fn drain(&self, grace: Duration) -> usize {
        self.inner.lifecycle.drain(grace).await
    }

    /// Waits until every stream task has ended; call after the server stopped accepting.
    pub async fn streams_ended(&self) {
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }

    fn known(&self, kind: ConnectorKind) -> String {
        let names: Vec<String> = self
            .slots()
            .filter(|s| s.kind == kind)
            .map(|s| {
                let id = s.id();
                if id.is_empty() {
                    s.spec.name().to_string()
                } else {
                    format!("{} ({id})", s.spec.name())
                }
            })
            .collect();
        if names.is_empty() {
            "nothing".into()
        } else {
            names.join(", ")
        }
    }

    /// Admits a stream and runs `work` on its own task; a panic in connector code ends
    /// that stream INTERNAL, nothing else.
    fn spawn<M, W, F>(&self, stream: &'static str, work: W) -> Result<Responses<M>, Status>
    where
        M: prost::Message + Send + 'static,
        W: FnOnce(Tx<M>, Admitted) -> F,
        F: Future<Output = ()> + Send + 'static,
    {
        let admitted = self
            .inner
            .lifecycle
            .admit()
            .map_err(|_| Status::from(Error::ConnectorDraining))?;
        let (tx, responses) = Tx::channel(CONNECTOR_STREAM_BUFFER, self.inner.lifecycle.aborted());
        let task = tokio::spawn(work(tx.clone(), admitted));
        self.inner.tasks.spawn(async move {
            if let Err(error) = task.await
                && error.is_panic()
            {
                let message = panic_message(&error.into_panic());
                tracing::error!(stream, %message, "connector panicked");
                tx.end(Error::ConnectorPanicked { stream, message }).await;
            }
        });
        Ok(responses)
    }
}

/// What the two halves of a `Read` stream share: credit, the next offset per partition
/// and the acks not yet handed to the reader (one per partition, so bounded).
#[derive(Default)]
struct ReadState {
    credit: u64,
    next: HashMap<u32, u64>,
    acks: HashMap<u32, u64>,
}

#[tonic::async_trait]
impl SourceService for ConnectorHost {
    type ReadStream = Responses<ReadResponse>;

    async fn read(
        &self,
        request: Request<Streaming<ReadRequest>>,
    ) -> Result<Response<Self::ReadStream>, Status> {
        let host = self.clone();
        let inbound = request.into_inner();
        self.spawn("read", move |tx, admitted| {
            run_read(host, inbound, tx, admitted)
        })
        .map(Response::new)
    }
}

#[tonic::async_trait]
impl ConsumerService for ConnectorHost {
    type DeliverStream = Responses<DeliverResponse>;

    async fn deliver(
        &self,
        request: Request<Streaming<DeliverRequest>>,
    ) -> Result<Response<Self::DeliverStream>, Status> {
        let host = self.clone();
        let inbound = request.into_inner();
        self.spawn("deliver", move |tx, admitted| {
            run_deliver(host, inbound, tx, admitted)
        })
        .map(Response::new)
    }
}

/// The first message of a stream, which must be its open; `Ok(None)`: nobody to answer.
async fn first_message<S, M, O>(
    inbound: &mut S,
    stream: &'static str,
    open: impl FnOnce(M) -> Option<O>,
) -> Result<Option<O>, Error>
where
    S: Stream<Item = Result<M, Status>> + Unpin,
{
    match next_request(inbound).await {
        Ok(Some(message)) => open(message).map(Some).ok_or(Error::MissingOpen { stream }),
        Ok(None) => Ok(None),
        Err(status) => match read_error(&status, format!("the first {stream} request")) {
            Some(error) => Err(error),
            None => Ok(None),
        },
    }
}

/// Ends a stream with `error`, counted against the connector.
async fn fail<M: prost::Message + Send + 'static>(tx: &Tx<M>, slot: Option<&Slot>, error: Error) {
    if let Some(slot) = slot {
        slot.counters.errors.fetch_add(1, Ordering::Relaxed);
    }
    tracing::info!(error = %error, "connector stream ended");
    tx.end(error).await;
}

/// An `open` message of either stream: the connector it names and its params.
trait OpenMessage: Send {
    fn connector_id(&self) -> &str;
    fn take_params(&mut self) -> Option<prost_types::Struct>;
}

impl OpenMessage for ReadOpen {
    fn connector_id(&self) -> &str {
        &self.source_id
    }
    fn take_params(&mut self) -> Option<prost_types::Struct> {
        self.params.take()
    }
}

impl OpenMessage for DeliverOpen {
    fn connector_id(&self) -> &str {
        &self.consumer_id
    }
    fn take_params(&mut self) -> Option<prost_types::Struct> {
        self.params.take()
    }
}

/// A stream past its `open`: the connector it names, counted open, and checked params.
struct Accepted<O, C: ?Sized> {
    open: O,
    slot: Arc<Slot>,
    connector: Arc<C>,
    params: Params,
    _guard: StreamGuard,
}

impl<O, C: ?Sized> Accepted<O, C> {
    fn error(&self, source: crate::ConnectorError) -> Error {
        Error::Connector {
            kind: self.slot.kind.as_str(),
            connector: self.slot.spec.name().to_string(),
            source,
        }
    }

    /// Runs the connector's `open`; `None` (the stream ended with a status) when it
    /// fails or the grace period ends first.
    async fn open_with<T, R: prost::Message + Send + 'static>(
        &self,
        tx: &Tx<R>,
        opening: impl Future<Output = Result<T, crate::ConnectorError>>,
    ) -> Option<T> {
        let opened = tokio::select! {
            biased;
            () = tx.abort.cancelled() => Err(Error::ConnectorShuttingDown),
            opened = opening => opened.map_err(|e| self.error(e)),
        };
        match opened {
            Ok(opened) => Some(opened),
            Err(error) => {
                fail(tx, Some(&self.slot), error).await;
                None
            }
        }
    }
}

/// Reads a stream's `open`, finds the connector it names among `connectors` and checks
/// its params; `None` once the stream has ended (with its status, when anyone is left).
async fn accept<M, O, C, R>(
    host: &ConnectorHost,
    kind: ConnectorKind,
    connectors: &[(Arc<Slot>, Arc<C>)],
    inbound: &mut Streaming<M>,
    tx: &Tx<R>,
    extract: impl FnOnce(M) -> Option<O>,
) -> Option<Accepted<O, C>>
where
    M: Send + 'static,
    O: OpenMessage,
    C: ?Sized,
    R: prost::Message + Send + 'static,
    Streaming<M>: Stream<Item = Result<M, Status>>,
{
    let stream = match kind {
        ConnectorKind::Source => "read",
        ConnectorKind::Consumer => "deliver",
    };
    let first = tokio::select! {
        biased;
        () = tx.abort.cancelled() => Err(Error::ConnectorShuttingDown),
        first = first_message(inbound, stream, extract) => first,
    };
    let mut open = match first {
        Ok(Some(open)) => open,
        Ok(None) => return None,
        Err(error) => {
            fail(tx, None, error).await;
            return None;
        }
    };
    let host_id = host.host_id();
    let Some((slot, connector)) = connectors
        .iter()
        .find(|(s, _)| s.matches(open.connector_id(), host_id))
        .cloned()
    else {
        let error = Error::UnknownConnector {
            kind: kind.as_str(),
            id: open.connector_id().to_string(),
            known: host.known(kind),
        };
        fail(tx, None, error).await;
        return None;
    };
    let _guard = slot.open_stream();
    let raw = open.take_params();
    let mut accepted = Accepted {
        open,
        slot,
        connector,
        params: Params::default(),
        _guard,
    };
    match Params::validate(accepted.slot.spec.params(), raw.as_ref()) {
        Ok(params) => accepted.params = params,
        Err(e) => {
            let error = accepted.error(e.into());
            fail(tx, Some(&accepted.slot), error).await;
            return None;
        }
    }
    Some(accepted)
}

async fn run_read(
    host: ConnectorHost,
    mut inbound: Streaming<ReadRequest>,
    tx: Tx<ReadResponse>,
    _admitted: Admitted,
) {
    let sources = &host.inner.sources;
    let extract = |m: ReadRequest| match m.request {
        Some(read_request::Request::Open(open)) => Some(open),
        _ => None,
    };
    let Some(accepted) = accept(
        &host,
        ConnectorKind::Source,
        sources,
        &mut inbound,
        &tx,
        extract,
    )
    .await
    else {
        return;
    };
    let abort = tx.abort.clone();
    let ReadOpen {
        pipeline,
        start_offsets,
        ..
    } = &accepted.open;
    let slot = accepted.slot.clone();
    let name = slot.spec.name().to_string();
    let connector_error = |source| accepted.error(source);
    let opening = accepted.connector.open(SourceOpen {
        pipeline,
        params: &accepted.params,
        start_offsets,
    });
    let Some(mut reader) = accepted.open_with(&tx, opening).await else {
        return;
    };
    let partitions = reader.partitions();
    let data_type = reader.data_type();
    let state = Mutex::new(ReadState {
        next: partitions
            .iter()
            .map(|p| (*p, start_offsets.get(p).copied().unwrap_or(0)))
            .collect(),
        ..ReadState::default()
    });
    let wake = Notify::new();
    let opened = ReadResponse {
        response: Some(read_response::Response::Opened(ReadOpened {
            partitions: partitions.clone(),
            data_type: data_type as i32,
        })),
    };
    if !tx.send(opened).await {
        return;
    }
    tracing::debug!(source = %name, pipeline = %pipeline, ?partitions, "read stream opened");
    let pending = |records: HashMap<u32, u64>, exhausted| ReadResponse {
        response: Some(read_response::Response::Pending(SourcePending {
            records,
            exhausted,
        })),
    };

    // Yields records while there is credit, handing acks to the reader between records.
    let produce = async {
        if !tx.send(pending(reader.pending().await, false)).await {
            return None;
        }
        loop {
            loop {
                let (credit, acks) = {
                    let mut state = state.lock().unwrap();
                    (state.credit, std::mem::take(&mut state.acks))
                };
                for (partition, next_offset) in acks {
                    reader.ack(partition, next_offset);
                }
                if credit > 0 {
                    break;
                }
                wake.notified().await;
            }
            let record = match reader.next().await {
                Ok(Some(record)) => record,
                Ok(None) => {
                    tracing::debug!(source = %name, pipeline = %pipeline, "source exhausted");
                    if !tx.send(pending(reader.pending().await, true)).await {
                        return None;
                    }
                    // The reader may still ack; the stream ends when it closes.
                    return std::future::pending().await;
                }
                Err(e) => return Some(connector_error(e)),
            };
            let left = {
                let mut state = state.lock().unwrap();
                let misbehaved = |message: String| Error::SourceMisbehaved {
                    source_name: name.clone(),
                    message,
                };
                let Some(next) = state.next.get_mut(&record.partition) else {
                    return Some(misbehaved(format!(
                        "it yielded partition {}, which it did not declare",
                        record.partition
                    )));
                };
                if record.offset != *next {
                    return Some(misbehaved(format!(
                        "it yielded offset {} of partition {} where offset {next} was due",
                        record.offset, record.partition
                    )));
                }
                let hint = record.payload.type_hint();
                if data_type != DataTypeHint::Any && hint != data_type {
                    return Some(misbehaved(format!(
                        "it yielded {} at offset {} of partition {}, not the declared {}",
                        hint.short_name(),
                        record.offset,
                        record.partition,
                        data_type.short_name()
                    )));
                }
                let len = record.payload.payload_len();
                if len > flowplane_grpc::MAX_PAYLOAD_BYTES {
                    return Some(misbehaved(format!(
                        "it yielded {len} bytes at offset {} of partition {}, over the limit of {} bytes (MAX_PAYLOAD_BYTES)",
                        record.offset,
                        record.partition,
                        flowplane_grpc::MAX_PAYLOAD_BYTES
                    )));
                }
                *next += 1;
                state.credit -= 1;
                state.credit
            };
            slot.counters.items.fetch_add(1, Ordering::Relaxed);
            let message = ReadResponse {
                response: Some(read_response::Response::Record(SourceRecord {
                    partition: record.partition,
                    offset: record.offset,
                    buffer: Some(record.into_buffer()),
                })),
            };
            if !tx.send(message).await {
                return None;
            }
            if left == 0 && !tx.send(pending(reader.pending().await, false)).await {
                return None;
            }
        }
    };

    // Takes credits and acks; `None` once the reader has closed or gone.
    let take = async {
        loop {
            let message = match next_request(&mut inbound).await {
                Ok(Some(message)) => message,
                Ok(None) => return None,
                Err(status) => return read_error(&status, "a read request after open".into()),
            };
            match message.request {
                Some(read_request::Request::Credit(credit)) => {
                    if credit.records == 0 {
                        return Some(Error::ZeroCredit);
                    }
                    let mut state = state.lock().unwrap();
                    let total = state.credit + u64::from(credit.records);
                    if total > MAX_OUTSTANDING_CREDIT {
                        return Some(Error::CreditOverflow {
                            granted: credit.records,
                            total,
                            limit: MAX_OUTSTANDING_CREDIT,
                        });
                    }
                    state.credit = total;
                }
                Some(read_request::Request::Ack(ack)) => {
                    let mut state = state.lock().unwrap();
                    let Some(unsent) = state.next.get(&ack.partition).copied() else {
                        return Some(Error::UnknownPartition {
                            source_name: name.clone(),
                            partition: ack.partition,
                            known: partitions
                                .iter()
                                .map(u32::to_string)
                                .collect::<Vec<_>>()
                                .join(", "),
                        });
                    };
                    if ack.next_offset > unsent {
                        return Some(Error::AckAhead {
                            partition: ack.partition,
                            next_offset: ack.next_offset,
                            unsent,
                        });
                    }
                    let acked = state.acks.entry(ack.partition).or_default();
                    *acked = (*acked).max(ack.next_offset);
                }
                Some(read_request::Request::Open(_)) => {
                    return Some(Error::DuplicateOpen { stream: "read" });
                }
                None => return Some(Error::EmptyConnectorRequest { stream: "read" }),
            }
            wake.notify_one();
        }
    };

    let ended = tokio::select! {
        biased;
        () = abort.cancelled() => Some(Error::ConnectorShuttingDown),
        ended = take => ended,
        ended = produce => ended,
    };
    match ended {
        Some(error) => fail(&tx, Some(&slot), error).await,
        None => tracing::debug!(source = %name, pipeline = %pipeline, "read stream closed"),
    }
}

async fn run_deliver(
    host: ConnectorHost,
    mut inbound: Streaming<DeliverRequest>,
    tx: Tx<DeliverResponse>,
    _admitted: Admitted,
) {
    let consumers = &host.inner.consumers;
    let extract = |m: DeliverRequest| match m.request {
        Some(deliver_request::Request::Open(open)) => Some(open),
        _ => None,
    };
    let Some(accepted) = accept(
        &host,
        ConnectorKind::Consumer,
        consumers,
        &mut inbound,
        &tx,
        extract,
    )
    .await
    else {
        return;
    };
    let abort = tx.abort.clone();
    let DeliverOpen {
        pipeline, output, ..
    } = &accepted.open;
    let slot = accepted.slot.clone();
    let name = slot.spec.name().to_string();
    let opening = accepted.connector.open(ConsumerOpen {
        pipeline,
        output,
        params: &accepted.params,
    });
    let Some(mut sink) = accepted.open_with(&tx, opening).await else {
        return;
    };
    let opened = DeliverResponse {
        response: Some(deliver_response::Response::Opened(DeliverOpened {})),
    };
    if !tx.send(opened).await {
        return;
    }
    tracing::debug!(consumer = %name, pipeline = %pipeline, output = %output, "deliver stream opened");
    loop {
        let message = tokio::select! {
            biased;
            () = abort.cancelled() => return fail(&tx, Some(&slot), Error::ConnectorShuttingDown).await,
            message = next_request(&mut inbound) => message,
        };
        let delivery = match message {
            Ok(Some(DeliverRequest {
                request: Some(deliver_request::Request::Delivery(delivery)),
            })) => delivery,
            Ok(Some(DeliverRequest {
                request: Some(deliver_request::Request::Open(_)),
            })) => return fail(&tx, Some(&slot), Error::DuplicateOpen { stream: "deliver" }).await,
            Ok(Some(DeliverRequest { request: None })) => {
                let error = Error::EmptyConnectorRequest { stream: "deliver" };
                return fail(&tx, Some(&slot), error).await;
            }
            Ok(None) => {
                tracing::debug!(consumer = %name, output = %output, "deliver stream closed");
                return;
            }
            Err(status) => {
                if let Some(error) = read_error(&status, "a deliver request after open".into()) {
                    fail(&tx, Some(&slot), error).await;
                }
                return;
            }
        };
        let delivery_id = delivery.delivery_id;
        let Some(lineage) = delivery.lineage else {
            return fail(&tx, Some(&slot), Error::MissingLineage { delivery_id }).await;
        };
        let buffer = delivery.buffer.unwrap_or_default();
        let refused = buffer
            .payload
            .as_ref()
            .map(|p| p.type_hint())
            .filter(|hint| !slot.spec.accepts(*hint));
        let ack = match refused {
            Some(hint) => Ack::Reject(format!(
                "consumer {name:?} accepts {}, not {}",
                slot.spec
                    .types()
                    .iter()
                    .map(|t| t.short_name())
                    .collect::<Vec<_>>()
                    .join(", "),
                hint.short_name()
            )),
            None => {
                let consuming = sink.consume(Delivery {
                    lineage,
                    buffer,
                    attempt: delivery.attempt,
                    error: delivery.error,
                });
                tokio::select! {
                    biased;
                    () = abort.cancelled() => return fail(&tx, Some(&slot), Error::ConnectorShuttingDown).await,
                    ack = consuming => ack,
                }
            }
        };
        let (outcome, message) = match ack {
            Ack::Success => (AckOutcome::Success, String::new()),
            Ack::Retry(message) => (AckOutcome::Retry, message),
            Ack::Reject(message) => (AckOutcome::Reject, message),
        };
        if outcome == AckOutcome::Success {
            slot.counters.items.fetch_add(1, Ordering::Relaxed);
        } else {
            slot.counters.errors.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(consumer = %name, delivery_id, ?outcome, %message, "delivery not consumed");
        }
        let response = DeliverResponse {
            response: Some(deliver_response::Response::Ack(DeliveryAck {
                delivery_id,
                outcome: outcome as i32,
                message,
            })),
        };
        if !tx.send(response).await {
            return;
        }
    }
}
