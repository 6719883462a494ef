//! The `ProcessorService` host: one task per `Process` stream runs one processor
//! instance, answering every chunk with exactly one result, in order, through a queue
//! bounded in results and bytes. Processor code (`create`, `process`) runs on the blocking
//! pool, at most `max_concurrent_calls` at once, never on an async worker, so a busy
//! processor cannot stall other streams or the heartbeat. It must never let one stream's
//! failure (bad chunk, panic, a huge result) touch another, and never end a stream OK
//! when a request could not be read.

use std::{
    collections::{HashMap, VecDeque},
    panic::{AssertUnwindSafe, catch_unwind},
    pin::{Pin, pin},
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use flowplane_grpc::lifecycle::{Admitted, Lifecycle};

use flowplane_proto::{
    data::v1::{DataBuffer, DataChunk, DataTypeHint, data_buffer::Payload},
    processor::v1::{
        GetCapabilitiesRequest, GetCapabilitiesResponse, ProcessInit, ProcessOutput, ProcessReady,
        ProcessRequest, ProcessResponse, ProcessResult, ProcessorCapability, process_request,
        process_response,
        processor_service_server::{ProcessorService, ProcessorServiceServer},
    },
};
use prost::Message;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_stream::{Stream, StreamExt, wrappers::ReceiverStream};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::{Code, Request, Response, Status, Streaming};
use tracing::Instrument;

use crate::{
    Capability, Error, Input, Output, Params, ProcessError, Processor, ProcessorFactory, Result,
    TypedFactory, payload,
    stats::{self, HostStats},
};

/// Results a stream may have queued for a slow client before the host stops reading its
/// requests: this, plus HTTP/2 flow control, bounds a stream's in-flight work.
pub const STREAM_BUFFER: usize = 32;

/// Encoded bytes of results a stream may have queued for a slow client, whatever their
/// number: with [`STREAM_BUFFER`] alone an amplifying processor could queue 32 maximal
/// messages per stream. Two messages, so one can be sent while the next waits.
pub const STREAM_BUFFER_BYTES: usize = 2 * flowplane_grpc::MAX_MESSAGE_BYTES;

/// Processor calls (`create` or `process`) a host runs at once by default, over all its
/// streams. Enough that a few CPU-heavy streams cannot take every slot from cheap ones
/// (the OS shares the cores between the calls running), few enough to bound the blocking
/// threads and the memory of chunks in processing.
pub const DEFAULT_MAX_CONCURRENT_CALLS: usize = 64;

/// Chunks already received that one trip to the blocking pool may take together, and
/// their payload bytes: batching saves a thread hand-off per small chunk of a busy
/// stream, and the bounds keep a batch from holding much memory.
const MAX_BATCH: usize = 64;
const MAX_BATCH_BYTES: usize = 1 << 20;
/// Output bytes after which a batch returns, so results flow while the rest wait.
const MAX_BATCH_OUTPUT_BYTES: usize = flowplane_grpc::MAX_MESSAGE_BYTES;
/// Processing time after which a batch returns, so a slow processor's results are
/// sent chunk by chunk instead of after the whole batch.
const BATCH_TIME: Duration = Duration::from_millis(1);

/// Processing time of one batch on a stream's own task (a processor declared
/// [`Capability::inline`]) past which the stream's later batches go to the blocking pool.
pub const INLINE_BUDGET: Duration = Duration::from_micros(500);

/// Reason of a chunk whose payload type the input port does not accept.
pub const TYPE_MISMATCH: &str = "TYPE_MISMATCH";
/// Reason of a chunk naming an input port the processor does not have.
pub const UNKNOWN_INPUT: &str = "UNKNOWN_INPUT";
/// Reason of a chunk with an empty `input` sent to a processor with several inputs.
pub const AMBIGUOUS_INPUT: &str = "AMBIGUOUS_INPUT";
/// Reason of a chunk without a payload.
pub const MISSING_PAYLOAD: &str = "MISSING_PAYLOAD";
/// Reason of an output the processor did not declare (a processor bug, INTERNAL).
pub const UNDECLARED_OUTPUT: &str = "UNDECLARED_OUTPUT";
/// Reason of a result whose outputs together exceed the message limit (RESOURCE_EXHAUSTED).
pub const RESULT_TOO_LARGE: &str = "RESULT_TOO_LARGE";
/// Reason of a chunk whose sequence is lower than an earlier chunk's on the same stream.
pub const SEQUENCE_OUT_OF_ORDER: &str = "SEQUENCE_OUT_OF_ORDER";

/// Builds a [`ProcessorHost`].
pub struct HostBuilder {
    name: String,
    version: String,
    host_id: Option<String>,
    max_streams: usize,
    max_concurrent_calls: usize,
    factories: Vec<Arc<dyn ProcessorFactory>>,
}

impl HostBuilder {
    /// A host called `name` (shown by `GetCapabilities`), serving nothing yet.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            host_id: None,
            max_streams: 1024,
            max_concurrent_calls: DEFAULT_MAX_CONCURRENT_CALLS,
            factories: Vec::new(),
        }
    }

    /// The host software version.
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.version = version.into();
        self
    }

    /// The id to report before the control plane assigns one.
    pub fn host_id(mut self, id: impl Into<String>) -> Self {
        self.host_id = Some(id.into());
        self
    }

    /// Open streams above which the host reports itself DEGRADED.
    pub fn max_streams(mut self, max: usize) -> Self {
        self.max_streams = max;
        self
    }

    /// Processor calls run at once over all streams (at least 1); further calls wait for
    /// a slot, and their streams stop reading requests meanwhile (backpressure).
    pub fn max_concurrent_calls(mut self, max: usize) -> Self {
        self.max_concurrent_calls = max.max(1);
        self
    }

    /// Serves processor type `P`.
    pub fn processor<P: Processor>(self) -> Self {
        self.factory(TypedFactory::<P>::new())
    }

    /// Serves the processor a factory makes.
    pub fn factory(mut self, factory: impl ProcessorFactory) -> Self {
        self.factories.push(Arc::new(factory));
        self
    }

    /// Keeps only the processors named in `names` (`--processors`); an empty list keeps
    /// them all. A name this builder does not serve fails, listing the ones it does.
    pub fn only(mut self, names: &[String]) -> Result<Self> {
        if names.is_empty() {
            return Ok(self);
        }
        let known = self.processor_names();
        if let Some(unknown) = names.iter().find(|n| !known.contains(n)) {
            return Err(Error::InvalidConfig {
                setting: "--processors",
                message: format!(
                    "unknown processor {unknown:?}; this host serves: {}",
                    known.join(", ")
                ),
            });
        }
        let mut kept = known.iter();
        self.factories.retain(|_| {
            kept.next()
                .is_some_and(|name| names.iter().any(|n| n == name))
        });
        Ok(self)
    }

    /// The names of the processors added so far, in order.
    pub fn processor_names(&self) -> Vec<String> {
        self.factories
            .iter()
            .map(|f| f.capability().name().to_string())
            .collect()
    }

    /// The host name given to [`HostBuilder::new`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The host software version ([`HostBuilder::version`]).
    pub fn host_version(&self) -> &str {
        &self.version
    }

    /// Checks every capability and builds the host.
    pub fn build(self) -> Result<ProcessorHost> {
        let mut processors: HashMap<String, Arc<Entry>> = HashMap::new();
        let mut order = Vec::new();
        for factory in self.factories {
            let capability = factory.capability();
            let entry = Entry::new(capability, factory)?;
            let name = entry.name.clone();
            if processors.insert(name.clone(), Arc::new(entry)).is_some() {
                return Err(Error::DuplicateProcessor(name));
            }
            order.push(name);
        }
        Ok(ProcessorHost {
            inner: Arc::new(HostInner {
                name: self.name,
                version: self.version,
                host_id: RwLock::new(self.host_id.unwrap_or_default()),
                max_streams: self.max_streams,
                processors,
                order,
                stats: Arc::new(HostStats::default()),
                lifecycle: Lifecycle::new(),
                calls: Arc::new(Semaphore::new(self.max_concurrent_calls)),
                tasks: TaskTracker::new(),
            }),
        })
    }
}

/// A declared port, with its accepted types as a bit mask for a cheap check per chunk.
#[derive(Debug)]
struct Port {
    name: String,
    mask: u32,
    types: String,
}

impl Port {
    fn new(spec: &flowplane_proto::processor::v1::PortSpec) -> Result<Self, String> {
        if spec.name.is_empty() {
            return Err("a port has an empty name".into());
        }
        if spec.types.is_empty() {
            return Err(format!("port {:?} declares no types", spec.name));
        }
        let mut mask = 0;
        let mut names = Vec::new();
        for t in &spec.types {
            match DataTypeHint::try_from(*t) {
                Ok(DataTypeHint::Unspecified) | Err(_) => {
                    return Err(format!("port {:?} declares type {t}", spec.name));
                }
                Ok(hint) => {
                    mask |= bit(hint);
                    names.push(hint.short_name());
                }
            }
        }
        Ok(Self {
            name: spec.name.clone(),
            mask,
            types: names.join(", "),
        })
    }

    fn accepts(&self, hint: DataTypeHint) -> bool {
        self.mask & (bit(DataTypeHint::Any) | bit(hint)) != 0
    }
}

fn bit(hint: DataTypeHint) -> u32 {
    1 << (hint as i32)
}

/// One registered processor.
struct Entry {
    name: String,
    capability: Capability,
    factory: Arc<dyn ProcessorFactory>,
    inputs: Vec<Port>,
    outputs: Vec<Port>,
    input_names: String,
}

impl Entry {
    fn new(capability: Capability, factory: Arc<dyn ProcessorFactory>) -> Result<Self> {
        let name = capability.name().to_string();
        let invalid = |message: String| Error::InvalidCapability {
            processor: name.clone(),
            message,
        };
        if name.is_empty() {
            return Err(invalid("the name is empty".into()));
        }
        let proto = capability.proto();
        if proto.inputs.is_empty() {
            return Err(invalid("it declares no input".into()));
        }
        let ports = |specs: &[flowplane_proto::processor::v1::PortSpec], what: &str| {
            let ports = specs
                .iter()
                .map(Port::new)
                .collect::<Result<Vec<_>, _>>()
                .map_err(invalid)?;
            for (i, p) in ports.iter().enumerate() {
                if ports[..i].iter().any(|q| q.name == p.name) {
                    return Err(invalid(format!(
                        "{what} port {:?} is declared twice",
                        p.name
                    )));
                }
            }
            Ok(ports)
        };
        let inputs = ports(&proto.inputs, "input")?;
        let outputs = ports(&proto.outputs, "output")?;
        let input_names = inputs
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        Ok(Self {
            name,
            capability,
            factory,
            inputs,
            outputs,
            input_names,
        })
    }
}

struct HostInner {
    name: String,
    version: String,
    host_id: RwLock<String>,
    max_streams: usize,
    processors: HashMap<String, Arc<Entry>>,
    /// Registration order, so listings are stable.
    order: Vec<String>,
    stats: Arc<HostStats>,
    /// Admits streams while serving; its abort token ends open streams UNAVAILABLE once
    /// a shutdown's grace period is over.
    lifecycle: Lifecycle,
    /// Slots for processor calls on the blocking pool, shared by every stream.
    calls: Arc<Semaphore>,
    tasks: TaskTracker,
}

/// Serves `ProcessorService` for a set of processors. Cheap to clone: clones share state.
#[derive(Clone)]
pub struct ProcessorHost {
    inner: Arc<HostInner>,
}

impl std::fmt::Debug for ProcessorHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessorHost")
            .field("name", &self.inner.name)
            .field("processors", &self.inner.order)
            .finish_non_exhaustive()
    }
}

impl ProcessorHost {
    /// Starts describing a host.
    pub fn builder(name: impl Into<String>) -> HostBuilder {
        HostBuilder::new(name)
    }

    /// The tonic service, with flowplane's message limits, to add to a server's routes.
    pub fn service(&self) -> ProcessorServiceServer<ProcessorHost> {
        ProcessorServiceServer::new(self.clone())
            .max_decoding_message_size(flowplane_grpc::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(flowplane_grpc::MAX_MESSAGE_BYTES)
    }

    /// Every processor served, in registration order.
    pub fn capabilities(&self) -> Vec<ProcessorCapability> {
        self.inner
            .order
            .iter()
            .map(|n| self.inner.processors[n].capability.to_proto())
            .collect()
    }

    /// The host's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The host software version.
    pub fn version(&self) -> &str {
        &self.inner.version
    }

    /// The component id streams and `GetCapabilities` report.
    pub fn host_id(&self) -> String {
        self.inner
            .host_id
            .read()
            .map(|id| id.clone())
            .unwrap_or_default()
    }

    /// Sets the id, once the control plane has assigned it.
    pub fn set_host_id(&self, id: &str) {
        if let Ok(mut current) = self.inner.host_id.write() {
            id.clone_into(&mut current);
        }
    }

    /// The host's counters.
    pub fn stats(&self) -> &Arc<HostStats> {
        &self.inner.stats
    }

    /// True when more streams are open than the host is configured for.
    pub fn overloaded(&self) -> bool {
        self.inner.stats.active_streams() > self.inner.max_streams as u64
    }

    /// Ends every open stream with UNAVAILABLE: the end of a shutdown's grace period.
    pub fn abort_streams(&self) {
        self.inner.lifecycle.aborted().cancel();
    }

    /// Refuses new streams with UNAVAILABLE from now on, waits up to `grace` for open
    /// ones to end, then ends the rest UNAVAILABLE. Returns how many were still open.
    pub async fn drain(&self, grace: Duration) -> usize {
        self.inner.lifecycle.drain(grace).await
    }

    /// True once [`ProcessorHost::drain`] has started.
    pub fn is_draining(&self) -> bool {
        self.inner.lifecycle.is_draining()
    }

    /// Waits until every stream task has ended; call after the server stopped accepting.
    pub async fn streams_ended(&self) {
        self.inner.tasks.close();
        self.inner.tasks.wait().await;
    }

    fn known(&self) -> String {
        if self.inner.order.is_empty() {
            "nothing".into()
        } else {
            self.inner.order.join(", ")
        }
    }

    /// Validates an init and creates the processor instance on the blocking pool. `None`
    /// when the grace period ended first.
    async fn open(&self, init: ProcessInit) -> Option<Result<StreamState>> {
        if init.processor.is_empty() {
            return Some(Err(Error::MissingProcessorName {
                known: self.known(),
            }));
        }
        let Some(entry) = self.inner.processors.get(&init.processor).cloned() else {
            return Some(Err(Error::UnknownProcessor {
                name: init.processor,
                known: self.known(),
            }));
        };
        let params = match Params::validate(&entry.capability.proto().params, init.params.as_ref())
        {
            Ok(params) => params,
            Err(source) => {
                return Some(Err(Error::InvalidParam {
                    processor: entry.name.clone(),
                    source,
                }));
            }
        };
        let factory = entry.factory.clone();
        let created = self
            .blocking(move || catch_unwind(AssertUnwindSafe(|| factory.create(&params))))
            .await?;
        let processor = match created {
            Ok(Ok(p)) => p,
            Ok(Err(source)) => {
                return Some(Err(Error::InvalidParam {
                    processor: entry.name.clone(),
                    source,
                }));
            }
            Err(panic) => {
                return Some(Err(Error::CreatePanicked {
                    processor: entry.name.clone(),
                    message: panic_message(&panic),
                }));
            }
        };
        Some(Ok(StreamState::new(self, entry, processor, init.node_id)))
    }

    /// Runs processor code on the blocking pool once a call slot is free. The slot is held
    /// until the code returns, even if the stream has gone, since the thread is busy until
    /// then. `None` when the grace period ended (or the runtime stopped) first.
    async fn blocking<T: Send + 'static>(
        &self,
        call: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        let abort = self.inner.lifecycle.aborted();
        let permit = tokio::select! {
            biased;
            () = abort.cancelled() => return None,
            permit = self.inner.calls.clone().acquire_owned() => permit.ok()?,
        };
        let task = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            call()
        });
        tokio::select! {
            biased;
            () = abort.cancelled() => None,
            joined = task => joined.ok(),
        }
    }
}

/// The responses of one `Process` stream: `ready`, then one result per chunk, in order;
/// a stream that fails ends with its status.
pub type ResponseStream = Pin<Box<dyn Stream<Item = Result<ProcessResponse, Status>> + Send>>;

impl ProcessorHost {
    /// Opens a `Process` stream inside this process: the same stream machinery as a
    /// gRPC call (init and ready, type checks, order, one result per chunk, limits,
    /// metrics, draining), with the messages handed over in memory: no socket, no
    /// encoding, no copy of a payload. The stream's work runs on its own task, as a gRPC
    /// stream's does: measured against running it on the caller's task when polled
    /// (docs/benchmarks.md, issue 18), that was as fast or faster in every pattern. The
    /// stream of `requests` ending is the client's half-close; dropping the responses is
    /// its reset. A pipeline service embeds a host this way for co-located
    /// (`placement: local`) nodes.
    pub fn process_local<S>(&self, requests: S) -> Result<ResponseStream, Status>
    where
        S: Stream<Item = ProcessRequest> + Send + Unpin + 'static,
    {
        self.open_stream(requests.map(Ok))
    }

    /// Admits a stream (refused at once while draining, so the client goes to another
    /// host) and starts its task. The response starts at once; init errors arrive as the
    /// stream's status, so a client that waits for response headers before sending its
    /// init cannot deadlock.
    fn open_stream<S>(&self, inbound: S) -> Result<ResponseStream, Status>
    where
        S: Stream<Item = Result<ProcessRequest, Status>> + Send + Unpin + 'static,
    {
        let admitted = self
            .inner
            .lifecycle
            .admit()
            .map_err(|_| Status::from(Error::Draining))?;
        let (tx, responses) = Tx::channel(STREAM_BUFFER, self.inner.lifecycle.aborted());
        // The caller's span (a pipeline node's, for a local stream) covers the stream.
        self.inner.tasks.spawn(
            run_stream(self.clone(), inbound, tx, admitted).instrument(tracing::Span::current()),
        );
        Ok(responses)
    }
}

/// The next request of a stream; `Ok(None)` is the client's half-close.
pub(crate) async fn next_request<S, M>(inbound: &mut S) -> Result<Option<M>, Status>
where
    S: Stream<Item = Result<M, Status>> + Unpin,
{
    inbound.next().await.transpose()
}

/// One queued response and the stream's queue bytes it holds until tonic takes it.
type Queued<M> = (Result<M, Status>, Option<OwnedSemaphorePermit>);

#[tonic::async_trait]
impl ProcessorService for ProcessorHost {
    type ProcessStream = ResponseStream;

    async fn process(
        &self,
        request: Request<Streaming<ProcessRequest>>,
    ) -> Result<Response<Self::ProcessStream>, Status> {
        self.open_stream(request.into_inner()).map(Response::new)
    }

    async fn get_capabilities(
        &self,
        _request: Request<GetCapabilitiesRequest>,
    ) -> Result<Response<GetCapabilitiesResponse>, Status> {
        Ok(Response::new(GetCapabilitiesResponse {
            host_id: self.host_id(),
            name: self.inner.name.clone(),
            version: self.inner.version.clone(),
            processors: self.capabilities(),
        }))
    }
}

/// The sending side of one stream's response queue, bounded in messages and in encoded
/// bytes; shared by the processor and the connector hosts.
pub(crate) struct Tx<M> {
    tx: mpsc::Sender<Queued<M>>,
    /// Encoded bytes of queued responses, [`STREAM_BUFFER_BYTES`] in all.
    bytes: Arc<Semaphore>,
    pub(crate) abort: CancellationToken,
}

impl<M> Clone for Tx<M> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            bytes: self.bytes.clone(),
            abort: self.abort.clone(),
        }
    }
}

/// The responses of one stream, as tonic sends them.
pub(crate) type Responses<M> = Pin<Box<dyn Stream<Item = Result<M, Status>> + Send>>;

impl<M: Message + Send + 'static> Tx<M> {
    /// A queue of at most `capacity` messages and [`STREAM_BUFFER_BYTES`], and the stream
    /// that takes from it; `abort` is the end of the shutdown's grace period.
    pub(crate) fn channel(capacity: usize, abort: CancellationToken) -> (Self, Responses<M>) {
        let (tx, rx) = mpsc::channel::<Queued<M>>(capacity);
        let tx = Tx {
            tx,
            bytes: Arc::new(Semaphore::new(STREAM_BUFFER_BYTES)),
            abort,
        };
        // Dropping the permit as the response is taken returns its bytes to the queue.
        let responses = ReceiverStream::new(rx).map(|(response, _permit)| response);
        (tx, Box::pin(responses))
    }

    /// Queues a response once there is room in messages and bytes. `false` when the
    /// client has gone or the grace period is over.
    pub(crate) async fn send(&self, response: M) -> bool {
        // Results are checked against MAX_MESSAGE_BYTES before, so this always fits.
        let size = response.encoded_len().clamp(1, STREAM_BUFFER_BYTES) as u32;
        if self.abort.is_cancelled() {
            return false;
        }
        // Room in bytes and results: queued without a wait (and without registering on
        // the shutdown token, which a wait needs).
        let held = self.bytes.clone().try_acquire_many_owned(size).ok();
        let response = if held.is_some() {
            match self.tx.try_reserve() {
                Ok(slot) => {
                    slot.send((Ok(response), held));
                    return true;
                }
                Err(mpsc::error::TrySendError::Closed(())) => return false,
                Err(mpsc::error::TrySendError::Full(())) => response,
            }
        } else {
            response
        };
        let queue = async {
            let permit = match held {
                Some(permit) => permit,
                None => self.bytes.clone().acquire_many_owned(size).await.ok()?,
            };
            self.tx.send((Ok(response), Some(permit))).await.ok()
        };
        tokio::select! {
            biased;
            () = self.abort.cancelled() => false,
            sent = queue => sent.is_some(),
        }
    }

    /// Ends the stream with `error`'s status. It waits for room behind the results
    /// already queued, unless the shutdown's grace period is over: then a client that
    /// stopped reading loses the status with the stream.
    pub(crate) async fn end(&self, error: Error) {
        tokio::select! {
            biased;
            _ = self.tx.send((Err(error.into()), None)) => {}
            () = self.abort.cancelled() => {}
        }
    }
}

/// Where a stream's reading stands, to name the request that could not be read.
fn position(last_sequence: Option<u64>, opened: bool) -> String {
    match (last_sequence, opened) {
        (Some(sequence), _) => format!("the process request after sequence {sequence}"),
        (None, true) => "the process request after init".into(),
        (None, false) => "the first process request".into(),
    }
}

/// What a failed read of the request stream means. `None`: the client broke the stream
/// (reset, connection lost), so nobody is left to read a status.
pub(crate) fn read_error(status: &Status, position: String) -> Option<Error> {
    // Transport failures carry their h2/hyper error as the source (an h2 reset with
    // ENHANCE_YOUR_CALM even reads RESOURCE_EXHAUSTED); tonic's decoder errors have none.
    if std::error::Error::source(status).is_some() {
        return None;
    }
    match status.code() {
        // A length prefix over max_decoding_message_size (OUT_OF_RANGE), or a
        // compressed message that inflates past it (RESOURCE_EXHAUSTED).
        Code::OutOfRange | Code::ResourceExhausted => Some(Error::MessageTooLarge {
            position,
            limit: flowplane_grpc::MAX_MESSAGE_BYTES,
            detail: status.message().to_string(),
        }),
        // Undecodable protobuf (invalid UTF-8 in a string, bad wire types), a truncated
        // message or a bad compression flag.
        Code::Internal => Some(Error::UndecodableRequest {
            position,
            detail: status.message().to_string(),
        }),
        _ => None,
    }
}

async fn run_stream<S>(
    host: ProcessorHost,
    mut inbound: S,
    tx: Tx<ProcessResponse>,
    _admitted: Admitted,
) where
    S: Stream<Item = Result<ProcessRequest, Status>> + Unpin,
{
    let mut abort = pin!(tx.abort.clone().cancelled_owned());
    let first = tokio::select! {
        biased;
        () = &mut abort => return tx.end(Error::ShuttingDown).await,
        first = next_request(&mut inbound) => first,
    };
    let init = match first {
        Ok(Some(ProcessRequest {
            request: Some(process_request::Request::Init(init)),
        })) => init,
        Ok(Some(_)) => return tx.end(Error::MissingInit).await,
        // The client went away before saying anything: nobody to answer.
        Ok(None) => return,
        Err(status) => {
            return match read_error(&status, position(None, false)) {
                Some(error) => {
                    tracing::info!(error = %error, "process stream refused");
                    tx.end(error).await
                }
                None => {
                    tracing::info!(%status, "process stream broken by the client before init")
                }
            };
        }
    };
    let node_id = init.node_id.clone();
    let opened = tokio::select! {
        biased;
        () = &mut abort => None,
        opened = host.open(init) => opened,
    };
    let mut stream = match opened {
        Some(Ok(stream)) => stream,
        Some(Err(error)) => {
            tracing::info!(node_id = %node_id, error = %error, "process stream refused");
            return tx.end(error).await;
        }
        None => return tx.end(Error::ShuttingDown).await,
    };
    let ready = ProcessResponse {
        response: Some(process_response::Response::Ready(ProcessReady {
            processor: stream.entry.name.clone(),
            node_id: stream.node_id.clone(),
            host_id: host.host_id(),
        })),
    };
    if !tx.send(ready).await {
        return;
    }
    tracing::debug!(processor = %stream.entry.name, node_id = %stream.node_id, "process stream opened");
    // A message read ahead while batching that was not a chunk for the batch.
    let mut deferred: Option<Result<Option<ProcessRequest>, Status>> = None;
    loop {
        let message = match deferred.take() {
            Some(message) => message,
            None => tokio::select! {
                biased;
                () = &mut abort => return tx.end(Error::ShuttingDown).await,
                message = next_request(&mut inbound) => message,
            },
        };
        let chunk = match message {
            Ok(Some(ProcessRequest {
                request: Some(process_request::Request::Chunk(chunk)),
            })) => chunk,
            Ok(Some(ProcessRequest {
                request: Some(process_request::Request::Init(_)),
            })) => return tx.end(Error::DuplicateInit).await,
            Ok(Some(ProcessRequest { request: None })) => {
                return tx.end(Error::EmptyRequest).await;
            }
            // The client closed its side (tonic reports a reset by the client the same
            // way): every chunk has been answered.
            Ok(None) => {
                tracing::debug!(processor = %stream.entry.name, node_id = %stream.node_id, last_sequence = ?stream.last_sequence, "process stream closed by the client");
                return;
            }
            Err(status) => {
                let position = position(stream.last_received, true);
                return match read_error(&status, position) {
                    Some(error) => {
                        tracing::warn!(processor = %stream.entry.name, node_id = %stream.node_id, error = %error, "process stream ended: unreadable request");
                        tx.end(error).await
                    }
                    None => {
                        tracing::info!(processor = %stream.entry.name, node_id = %stream.node_id, %status, last_sequence = ?stream.last_sequence, "process stream broken by the client")
                    }
                };
            }
        };
        let mut jobs = VecDeque::new();
        // A chunk refused before its call, answered after the jobs ahead of it.
        let mut refused = None;
        match stream.prepare(chunk) {
            Prepared::Job(job) => jobs.push_back(job),
            Prepared::Refused(response) => refused = Some(response),
        }
        // Chunks that have already arrived join the batch, so one trip to the blocking
        // pool serves many small chunks; nothing waits for more to come.
        let mut batch_bytes = jobs.front().map_or(0, Job::bytes);
        while refused.is_none()
            && !jobs.is_empty()
            && jobs.len() < MAX_BATCH
            && batch_bytes < MAX_BATCH_BYTES
        {
            let next = tokio::select! {
                biased;
                next = next_request(&mut inbound) => next,
                () = std::future::ready(()) => break,
            };
            match next {
                Ok(Some(ProcessRequest {
                    request: Some(process_request::Request::Chunk(chunk)),
                })) => match stream.prepare(chunk) {
                    Prepared::Job(job) => {
                        batch_bytes += job.bytes();
                        jobs.push_back(job);
                    }
                    Prepared::Refused(response) => refused = Some(response),
                },
                other => {
                    deferred = Some(other);
                    break;
                }
            }
        }
        while !jobs.is_empty() {
            let Some((responses, fatal)) = stream.call(&host, &mut jobs).await else {
                return tx.end(Error::ShuttingDown).await;
            };
            for response in responses {
                if !tx.send(response).await {
                    return gone(&tx).await;
                }
            }
            if let Some(fatal) = fatal {
                tracing::error!(processor = %stream.entry.name, node_id = %stream.node_id, error = %fatal, "process stream failed");
                return tx.end(fatal).await;
            }
        }
        if let Some(response) = refused
            && !tx.send(response).await
        {
            return gone(&tx).await;
        }
    }
}

/// After a send failed: the client has gone (nothing to do) or the grace period is over.
async fn gone(tx: &Tx<ProcessResponse>) {
    if tx.abort.is_cancelled() {
        tx.end(Error::ShuttingDown).await;
    }
}

pub(crate) fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-string panic payload".into())
}

/// One open stream: its processor instance and its metric handles.
struct StreamState {
    entry: Arc<Entry>,
    /// `None` only while a call has it on the blocking pool.
    processor: Option<Box<dyn Processor>>,
    node_id: String,
    /// Highest sequence received so far on this stream.
    last_sequence: Option<u64>,
    /// Sequence of the chunk received last, to say where an unreadable request came.
    last_received: Option<u64>,
    stats: Arc<HostStats>,
    chunks_in: metrics::Counter,
    chunks_out: metrics::Counter,
    errors: metrics::Counter,
    latency: metrics::Histogram,
    active: metrics::Gauge,
    /// The host's chunks read and not yet answered, and how many of them are this
    /// stream's, so a stream that ends with chunks unanswered takes them off the gauge.
    in_flight: metrics::Gauge,
    in_flight_here: u64,
    /// Batches run on this task ([`Capability::inline`]) until one is over budget.
    inline: bool,
}

/// A chunk that passed the host's checks, waiting for its processor call.
struct Job {
    envelope: Envelope,
    port: usize,
    payload: Payload,
}

impl Job {
    fn bytes(&self) -> usize {
        self.payload.payload_len()
    }
}

/// A chunk after the host's checks: a job for the processor, or already answered.
enum Prepared {
    Job(Job),
    Refused(ProcessResponse),
}

/// What a chunk's outputs inherit, and when the chunk arrived.
struct Envelope {
    sequence: u64,
    timestamp_us: i64,
    metadata: HashMap<String, String>,
    buffer_metadata: HashMap<String, String>,
    started: Instant,
}

/// A processor's answer to one chunk, or its panic.
type Answer = std::thread::Result<Result<Vec<Output>, ProcessError>>;

impl StreamState {
    fn new(
        host: &ProcessorHost,
        entry: Arc<Entry>,
        processor: Box<dyn Processor>,
        node_id: String,
    ) -> Self {
        let name = entry.name.clone();
        let stats = host.inner.stats.clone();
        stats.stream_opened();
        let active = metrics::gauge!(stats::ACTIVE_STREAMS, "processor" => name.clone());
        active.increment(1.0);
        Self {
            chunks_in: metrics::counter!(stats::CHUNKS_TOTAL, "processor" => name.clone(), "direction" => "in"),
            chunks_out: metrics::counter!(stats::CHUNKS_TOTAL, "processor" => name.clone(), "direction" => "out"),
            errors: metrics::counter!(stats::ERRORS_TOTAL, "processor" => name.clone()),
            latency: metrics::histogram!(stats::LATENCY_SECONDS, "processor" => name),
            active,
            in_flight: metrics::gauge!(stats::IN_FLIGHT_CHUNKS),
            in_flight_here: 0,
            inline: entry.capability.is_inline(),
            entry,
            processor: Some(processor),
            node_id,
            last_sequence: None,
            last_received: None,
            stats,
        }
    }

    /// The response to one chunk: its outputs or its error, failed instead when the
    /// outputs cannot fit one message; counted in the stats.
    fn respond(
        &mut self,
        sequence: u64,
        started: Instant,
        outcome: Result<Vec<ProcessOutput>, ProcessError>,
    ) -> ProcessResponse {
        // Every chunk `prepare` counted is answered here exactly once, refused or not.
        self.in_flight_here = self.in_flight_here.saturating_sub(1);
        self.in_flight.decrement(1.0);
        let result = match outcome {
            Ok(outputs) => {
                self.stats.chunks_out(outputs.len() as u64);
                self.chunks_out.increment(outputs.len() as u64);
                ProcessResult {
                    input_sequence: sequence,
                    outputs,
                    error: None,
                }
            }
            Err(error) => {
                self.stats.error();
                self.errors.increment(1);
                tracing::debug!(processor = %self.entry.name, sequence, reason = error.reason(), "chunk failed");
                ProcessResult {
                    input_sequence: sequence,
                    outputs: Vec::new(),
                    error: Some(error.into_detail(&self.node_id, sequence)),
                }
            }
        };
        let mut response = ProcessResponse {
            response: Some(process_response::Response::Result(result)),
        };
        // Sending an over-limit message would break the whole stream; fail the chunk instead.
        let size = response.encoded_len();
        if size > flowplane_grpc::MAX_MESSAGE_BYTES {
            self.stats.error();
            self.errors.increment(1);
            let error = self.too_large(size, false);
            response.response = Some(process_response::Response::Result(ProcessResult {
                input_sequence: sequence,
                outputs: Vec::new(),
                error: Some(error.into_detail(&self.node_id, sequence)),
            }));
        }
        let elapsed = started.elapsed();
        self.stats.latency(elapsed);
        self.latency.record(elapsed.as_secs_f64());
        response
    }

    /// `size` is exact, or a lower bound when `at_least`.
    fn too_large(&self, size: usize, at_least: bool) -> ProcessError {
        let at_least = if at_least { "at least " } else { "" };
        ProcessError::new(
            Code::ResourceExhausted,
            RESULT_TOO_LARGE,
            format!(
                "the outputs of processor {:?} encode to {at_least}{size} bytes, over the message limit of {} bytes (MAX_MESSAGE_BYTES)",
                self.entry.name,
                flowplane_grpc::MAX_MESSAGE_BYTES
            ),
        )
    }

    /// Checks a chunk before its processor call: order, input port, payload. A chunk that
    /// fails is answered at once with its error.
    fn prepare(&mut self, chunk: DataChunk) -> Prepared {
        let started = Instant::now();
        let DataChunk {
            sequence,
            input,
            buffer,
            timestamp_us,
            metadata,
        } = chunk;
        self.stats.chunk_in();
        self.chunks_in.increment(1);
        self.in_flight_here += 1;
        self.in_flight.increment(1.0);
        let checked = self.check_chunk(sequence, &input, buffer);
        match checked {
            Ok((port, payload, buffer_metadata)) => Prepared::Job(Job {
                envelope: Envelope {
                    sequence,
                    timestamp_us,
                    metadata,
                    buffer_metadata,
                    started,
                },
                port,
                payload,
            }),
            Err(error) => Prepared::Refused(self.respond(sequence, started, Err(error))),
        }
    }

    #[allow(clippy::type_complexity)]
    fn check_chunk(
        &mut self,
        sequence: u64,
        input: &str,
        buffer: Option<DataBuffer>,
    ) -> Result<(usize, Payload, HashMap<String, String>), ProcessError> {
        self.last_received = Some(sequence);
        // Equal sequences are allowed: a pipeline sends one node several chunks of the
        // same input sequence (fan-in from branches, several outputs of one chunk).
        if let Some(previous) = self.last_sequence
            && sequence < previous
        {
            return Err(ProcessError::invalid(
                SEQUENCE_OUT_OF_ORDER,
                "chunk.sequence",
                format!(
                    "chunk.sequence {sequence} is lower than sequence {previous} of an earlier chunk on this stream; sequences must not go backwards"
                ),
            ));
        }
        self.last_sequence = Some(sequence);
        let port = self.resolve_input(input)?;
        let Some(DataBuffer {
            payload: Some(payload),
            metadata: buffer_metadata,
        }) = buffer
        else {
            return Err(ProcessError::invalid(
                MISSING_PAYLOAD,
                "chunk.buffer",
                "chunk carries no payload",
            ));
        };
        self.check_payload(port, &payload)?;
        Ok((port, payload, buffer_metadata))
    }

    /// Runs jobs from the front of `jobs` in one call on the blocking pool: as many as
    /// fit [`BATCH_TIME`] (at least one) and [`MAX_BATCH_OUTPUT_BYTES`] of outputs, so a
    /// slow processor still answers chunk by chunk. Returns their responses in order and,
    /// when one panicked, the error that ends the stream (the jobs after it are dropped).
    /// `None` when the grace period ended first.
    async fn call(
        &mut self,
        host: &ProcessorHost,
        jobs: &mut VecDeque<Job>,
    ) -> Option<(Vec<ProcessResponse>, Option<Error>)> {
        let entry = self.entry.clone();
        let mut processor = self.processor.take()?;
        let mut batch = std::mem::take(jobs);
        let work = move || {
            let started = Instant::now();
            let mut answered: Vec<(Envelope, Answer)> = Vec::new();
            let mut output_bytes = 0usize;
            while let Some(Job {
                envelope,
                port,
                payload,
            }) = batch.pop_front()
            {
                let input = Input {
                    port: entry.inputs[port].name.as_str(),
                    sequence: envelope.sequence,
                    payload,
                };
                let answer = catch_unwind(AssertUnwindSafe(|| processor.process(input)));
                let stop = match &answer {
                    Ok(Ok(outputs)) => {
                        output_bytes += outputs
                            .iter()
                            .map(|o| o.payload.payload_len())
                            .sum::<usize>();
                        output_bytes > MAX_BATCH_OUTPUT_BYTES
                    }
                    Ok(Err(_)) => false,
                    Err(_) => true,
                };
                answered.push((envelope, answer));
                if stop || started.elapsed() > BATCH_TIME {
                    break;
                }
            }
            (processor, answered, batch)
        };
        let (processor, answered, rest) = if self.inline {
            if host.inner.lifecycle.aborted().is_cancelled() {
                return None;
            }
            let started = Instant::now();
            let done = work();
            if started.elapsed() > INLINE_BUDGET {
                self.inline = false;
                tracing::debug!(processor = %self.entry.name, node_id = %self.node_id, took = ?started.elapsed(), "inline batch over budget; the stream's later batches run on the blocking pool");
            }
            done
        } else {
            host.blocking(work).await?
        };
        *jobs = rest;
        let mut responses = Vec::with_capacity(answered.len());
        for (envelope, answer) in answered {
            let Envelope {
                sequence,
                timestamp_us,
                metadata,
                buffer_metadata,
                started,
            } = envelope;
            let outcome = match answer {
                Ok(Ok(outputs)) => {
                    self.wrap_outputs(outputs, sequence, timestamp_us, metadata, buffer_metadata)
                }
                Ok(Err(e)) => Err(e),
                Err(panic) => {
                    // The instance may be half-updated: it is dropped with the stream.
                    self.stats.error();
                    self.errors.increment(1);
                    return Some((
                        responses,
                        Some(Error::ProcessorPanicked {
                            processor: self.entry.name.clone(),
                            sequence,
                            message: panic_message(&panic),
                        }),
                    ));
                }
            };
            responses.push(self.respond(sequence, started, outcome));
        }
        self.processor = Some(processor);
        Some((responses, None))
    }

    fn resolve_input(&self, input: &str) -> Result<usize, ProcessError> {
        let inputs = &self.entry.inputs;
        if input.is_empty() {
            if inputs.len() == 1 {
                return Ok(0);
            }
            return Err(ProcessError::invalid(
                AMBIGUOUS_INPUT,
                "chunk.input",
                format!(
                    "processor {:?} has several inputs ({}); chunk.input must name one",
                    self.entry.name, self.entry.input_names
                ),
            ));
        }
        inputs.iter().position(|p| p.name == input).ok_or_else(|| {
            ProcessError::invalid(
                UNKNOWN_INPUT,
                "chunk.input",
                format!(
                    "processor {:?} has no input {input:?}; its inputs are: {}",
                    self.entry.name, self.entry.input_names
                ),
            )
        })
    }

    fn check_payload(&self, port: usize, payload: &Payload) -> Result<(), ProcessError> {
        let port = &self.entry.inputs[port];
        let hint = payload.type_hint();
        if !port.accepts(hint) {
            return Err(ProcessError::invalid(
                TYPE_MISMATCH,
                "chunk.buffer",
                format!(
                    "input {:?} of processor {:?} accepts {}, not {}",
                    port.name,
                    self.entry.name,
                    port.types,
                    hint.short_name()
                ),
            ));
        }
        payload::check_size(payload, flowplane_grpc::MAX_PAYLOAD_BYTES)?;
        payload::check(payload)
    }

    fn wrap_outputs(
        &self,
        outputs: Vec<Output>,
        sequence: u64,
        timestamp_us: i64,
        mut metadata: HashMap<String, String>,
        mut buffer_metadata: HashMap<String, String>,
    ) -> Result<Vec<ProcessOutput>, ProcessError> {
        let count = outputs.len();
        // Every output gets a copy of the input's maps: refuse a result that cannot fit one
        // message before making the copies, so many small outputs of a chunk with large
        // metadata cannot amplify into gigabytes.
        let shared = map_bytes(&metadata) + map_bytes(&buffer_metadata) + OUTPUT_OVERHEAD;
        let mut estimate = 0usize;
        for output in &outputs {
            estimate = estimate
                .saturating_add(shared)
                .saturating_add(output.port.len())
                .saturating_add(output.payload.encoded_len())
                .saturating_add(map_bytes(&output.metadata));
            if estimate > flowplane_grpc::MAX_MESSAGE_BYTES {
                return Err(self.too_large(estimate, true));
            }
        }
        let mut wrapped = Vec::with_capacity(count);
        for (i, output) in outputs.into_iter().enumerate() {
            let port = self.resolve_output(&output)?;
            let last = i + 1 == count;
            // The last output takes the input's maps, so a single output copies nothing.
            let (chunk_metadata, mut buffer_meta) = if last {
                (
                    std::mem::take(&mut metadata),
                    std::mem::take(&mut buffer_metadata),
                )
            } else {
                (metadata.clone(), buffer_metadata.clone())
            };
            buffer_meta.extend(output.metadata);
            wrapped.push(ProcessOutput {
                output: port.name.clone(),
                chunk: Some(DataChunk {
                    sequence,
                    input: String::new(),
                    buffer: Some(DataBuffer {
                        payload: Some(output.payload),
                        metadata: buffer_meta,
                    }),
                    timestamp_us,
                    metadata: chunk_metadata,
                }),
            });
        }
        Ok(wrapped)
    }

    fn resolve_output(&self, output: &Output) -> Result<&Port, ProcessError> {
        let outputs = &self.entry.outputs;
        let port = if output.port.is_empty() && outputs.len() == 1 {
            Some(&outputs[0])
        } else {
            outputs.iter().find(|p| p.name == output.port)
        };
        let Some(port) = port else {
            return Err(ProcessError::internal(
                UNDECLARED_OUTPUT,
                format!(
                    "processor {:?} produced output {:?}, which it does not declare",
                    self.entry.name, output.port
                ),
            ));
        };
        let hint = output.payload.type_hint();
        if !port.accepts(hint) {
            return Err(ProcessError::new(
                Code::Internal,
                UNDECLARED_OUTPUT,
                format!(
                    "processor {:?} produced {} on output {:?}, which declares {}",
                    self.entry.name,
                    hint.short_name(),
                    port.name,
                    port.types
                ),
            ));
        }
        let len = output.payload.payload_len();
        if len > flowplane_grpc::MAX_PAYLOAD_BYTES {
            return Err(ProcessError::new(
                Code::ResourceExhausted,
                RESULT_TOO_LARGE,
                format!(
                    "processor {:?} produced {len} bytes on output {:?}, over the limit of {} bytes (MAX_PAYLOAD_BYTES)",
                    self.entry.name,
                    port.name,
                    flowplane_grpc::MAX_PAYLOAD_BYTES
                ),
            ));
        }
        Ok(port)
    }
}

/// A lower bound of the framing one output adds beyond its payload, port and maps.
const OUTPUT_OVERHEAD: usize = 8;

/// A lower bound of a string map's encoded size, so estimates never exceed the truth.
fn map_bytes(map: &HashMap<String, String>) -> usize {
    map.iter().map(|(k, v)| k.len() + v.len() + 4).sum()
}

impl Drop for StreamState {
    fn drop(&mut self) {
        self.stats.stream_closed();
        self.active.decrement(1.0);
        // Chunks never answered: the stream failed, was cut by the grace period or its
        // client went away.
        self.in_flight.decrement(self.in_flight_here as f64);
    }
}
