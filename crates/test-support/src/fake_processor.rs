//! A processor host that misbehaves on demand, for testing how the pipeline copes with a
//! processor it cannot trust. It is a raw tonic `ProcessorService` (not the SDK), serves
//! on the shared server stack and registers and heartbeats with the control plane like a
//! real host. It must never misbehave towards the control plane: only its Process streams
//! misbehave, so a test sees the pipeline's handling of streams, not of discovery.

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use flowplane_proto::{
    common::v1::HealthStatus,
    controlplane::v1::{
        DeregisterRequest, ProcessorHeartbeatRequest, RegisterProcessorRequest,
        control_plane_service_client::ControlPlaneServiceClient,
    },
    data::v1::{BinaryData, DataChunk, DataTypeHint, TextData, data_buffer::Payload},
    processor::v1::{
        GetCapabilitiesRequest, GetCapabilitiesResponse, PortSpec, ProcessOutput, ProcessReady,
        ProcessRequest, ProcessResponse, ProcessResult, ProcessorCapability, process_request,
        process_response,
        processor_service_server::{ProcessorService, ProcessorServiceServer},
    },
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

/// The port name the fake declares for its one input and its one output.
pub const PORT: &str = "data";

/// How the fake answers a Process stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Echoes every chunk on `data`, in order: the control case.
    Healthy,
    /// Sends ready, reads every chunk and never answers one.
    NeverAnswer,
    /// Sends ready, then never reads the request stream again (HTTP/2 flow control
    /// eventually stops the sender).
    NeverRead,
    /// Reads the init and never sends ready.
    NeverReady,
    /// Answers every chunk naming an input_sequence 1,000 past the real one.
    WrongSequence,
    /// Answers every chunk twice.
    AnswerTwice,
    /// Answers the first chunk, then ends the stream with INTERNAL on the second.
    Abort,
    /// Answers the first chunk, then drops the stream on the second: it ends cleanly,
    /// without a status, the way a host that loses its stream state does.
    Vanish,
    /// Answers each chunk with `factor` times its payload bytes.
    Amplify(u32),
    /// Spins this long per chunk on the async worker thread (on purpose), then echoes.
    BurnCpu(Duration),
}

impl Mode {
    /// The processor name this mode declares by default, e.g. `fake.never_answer`.
    pub fn processor_name(&self) -> &'static str {
        match self {
            Mode::Healthy => "fake.healthy",
            Mode::NeverAnswer => "fake.never_answer",
            Mode::NeverRead => "fake.never_read",
            Mode::NeverReady => "fake.never_ready",
            Mode::WrongSequence => "fake.wrong_sequence",
            Mode::AnswerTwice => "fake.answer_twice",
            Mode::Abort => "fake.abort",
            Mode::Vanish => "fake.vanish",
            Mode::Amplify(_) => "fake.amplify",
            Mode::BurnCpu(_) => "fake.burn_cpu",
        }
    }
}

/// What a test reads off a running fake.
#[derive(Debug, Default)]
pub struct Counters {
    streams_opened: AtomicU64,
    streams_active: AtomicU64,
    chunks_seen: AtomicU64,
    results_sent: AtomicU64,
}

impl Counters {
    /// Process streams accepted so far.
    pub fn streams_opened(&self) -> u64 {
        self.streams_opened.load(Ordering::SeqCst)
    }

    /// Process streams whose handler still runs (it ends when the pipeline goes away).
    pub fn streams_active(&self) -> u64 {
        self.streams_active.load(Ordering::SeqCst)
    }

    /// Chunks read from every stream.
    pub fn chunks_seen(&self) -> u64 {
        self.chunks_seen.load(Ordering::SeqCst)
    }

    /// Results sent on every stream.
    pub fn results_sent(&self) -> u64 {
        self.results_sent.load(Ordering::SeqCst)
    }
}

/// Decrements `streams_active` when a stream's handler ends, however it ends.
struct Active(Arc<Counters>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.streams_active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// How to start a fake.
#[derive(Clone, Debug)]
pub struct FakeConfig {
    /// Control plane address, `http://127.0.0.1:PORT`.
    pub control_plane: String,
    /// Component id to register as.
    pub id: String,
    /// The misbehaviour.
    pub mode: Mode,
    /// Processor name declared; `None` is [`Mode::processor_name`]. Two fakes with one
    /// name (one misbehaving, one healthy) let a test watch a failover.
    pub processor: Option<String>,
    /// Declared stateless, so the pipeline may move the node to another instance.
    pub stateless: bool,
}

impl FakeConfig {
    /// A stateless fake registered as `id`, declaring the mode's processor name.
    pub fn new(control_plane: impl Into<String>, id: impl Into<String>, mode: Mode) -> Self {
        Self {
            control_plane: control_plane.into(),
            id: id.into(),
            mode,
            processor: None,
            stateless: true,
        }
    }

    /// Declares `name` instead of the mode's processor name.
    pub fn processor(mut self, name: impl Into<String>) -> Self {
        self.processor = Some(name.into());
        self
    }
}

/// A running fake; it deregisters and stops serving when stopped or dropped.
pub struct FakeProcessor {
    /// Where it serves ProcessorService.
    pub addr: std::net::SocketAddr,
    /// The processor name it declares.
    pub processor: String,
    counters: Arc<Counters>,
    stop: CancellationToken,
}

impl FakeProcessor {
    /// Serves on a fresh 127.0.0.1 port and starts registering with the control plane
    /// (in the background: use the control plane's view to wait until it is HEALTHY).
    pub async fn start(config: FakeConfig) -> Self {
        let listener = crate::local_listener().await;
        let addr = listener.local_addr().expect("fake processor address");
        let processor = config
            .processor
            .clone()
            .unwrap_or_else(|| config.mode.processor_name().to_string());
        let capability = capability(&processor, config.stateless);
        let counters = Arc::new(Counters::default());
        let stop = CancellationToken::new();
        let service = Fake {
            mode: config.mode,
            host_id: config.id.clone(),
            capability: capability.clone(),
            counters: counters.clone(),
        };
        let server = flowplane_grpc::server::GrpcServer::new()
            .expect("server stack")
            .with_routes(tonic::service::Routes::new(
                ProcessorServiceServer::new(service)
                    .max_decoding_message_size(flowplane_grpc::MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(usize::MAX),
            ));
        let serving = stop.clone();
        tokio::spawn(async move {
            let _ = server
                .serve(listener, async move { serving.cancelled().await })
                .await;
        });
        tokio::spawn(register(config, addr.to_string(), capability, stop.clone()));
        Self {
            addr,
            processor,
            counters,
            stop,
        }
    }

    /// The fake's counters.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Deregisters and stops serving.
    pub fn stop(&self) {
        self.stop.cancel();
    }
}

impl Drop for FakeProcessor {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn capability(name: &str, stateless: bool) -> ProcessorCapability {
    let port = || PortSpec {
        name: PORT.into(),
        types: vec![DataTypeHint::Any as i32],
        description: String::new(),
    };
    ProcessorCapability {
        name: name.into(),
        description: "a fake processor for tests; it may misbehave on purpose".into(),
        version: "0.0.0".into(),
        inputs: vec![port()],
        outputs: vec![port()],
        stateless,
        params: Vec::new(),
    }
}

/// Registers (retrying every 50 ms until the control plane answers), heartbeats HEALTHY
/// at the interval it asks for, and deregisters when stopped.
async fn register(
    config: FakeConfig,
    endpoint: String,
    capability: ProcessorCapability,
    stop: CancellationToken,
) {
    let Ok(channel) =
        flowplane_grpc::client::lazy_channel(&config.control_plane, &Default::default())
    else {
        return;
    };
    let mut client = ControlPlaneServiceClient::new(channel);
    let request = RegisterProcessorRequest {
        processor_id: config.id.clone(),
        endpoint,
        metadata: Default::default(),
        capabilities: vec![capability],
        lease_token: String::new(),
        version: "0.0.0".into(),
    };
    let lease = loop {
        let attempt = tokio::select! {
            () = stop.cancelled() => return,
            attempt = client.register_processor(request.clone()) => attempt,
        };
        match attempt {
            Ok(response) => break response.into_inner(),
            Err(_) => tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(Duration::from_millis(50)) => {}
            },
        }
    };
    let interval = |d: Option<prost_types::Duration>| {
        d.and_then(|d| Duration::try_from(d).ok())
            .filter(|d| !d.is_zero())
    };
    let mut every = interval(lease.heartbeat_interval)
        .or_else(|| interval(lease.lease_ttl).map(|ttl| ttl / 3))
        .unwrap_or(Duration::from_secs(1))
        .max(Duration::from_millis(10));
    loop {
        let heartbeat = ProcessorHeartbeatRequest {
            processor_id: lease.processor_id.clone(),
            timestamp: None,
            metrics: Default::default(),
            status: HealthStatus::Healthy as i32,
            lease_token: lease.lease_token.clone(),
        };
        let sent = tokio::select! {
            () = stop.cancelled() => break,
            sent = client.processor_heartbeat(heartbeat) => sent,
        };
        if let Some(asked) = sent
            .ok()
            .and_then(|r| interval(r.into_inner().heartbeat_interval))
        {
            every = asked.max(Duration::from_millis(10));
        }
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(every) => {}
        }
    }
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        client.deregister(DeregisterRequest {
            component_id: lease.processor_id,
            lease_token: lease.lease_token,
        }),
    )
    .await;
}

#[derive(Clone)]
struct Fake {
    mode: Mode,
    host_id: String,
    capability: ProcessorCapability,
    counters: Arc<Counters>,
}

type Tx = mpsc::Sender<Result<ProcessResponse, Status>>;
type ResponseStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<ProcessResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ProcessorService for Fake {
    type ProcessStream = ResponseStream;

    async fn process(
        &self,
        request: Request<Streaming<ProcessRequest>>,
    ) -> Result<Response<ResponseStream>, Status> {
        self.counters.streams_opened.fetch_add(1, Ordering::SeqCst);
        self.counters.streams_active.fetch_add(1, Ordering::SeqCst);
        let active = Active(self.counters.clone());
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(self.clone().run(request.into_inner(), tx, active));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_capabilities(
        &self,
        _request: Request<GetCapabilitiesRequest>,
    ) -> Result<Response<GetCapabilitiesResponse>, Status> {
        Ok(Response::new(GetCapabilitiesResponse {
            host_id: self.host_id.clone(),
            name: "fake-processor".into(),
            version: "0.0.0".into(),
            processors: vec![self.capability.clone()],
        }))
    }
}

impl Fake {
    /// One Process stream. Every wait also watches `tx.closed()`: when the pipeline drops
    /// the stream, the handler ends, so `streams_active` tells whether it did.
    async fn run(self, mut inbound: Streaming<ProcessRequest>, tx: Tx, _active: Active) {
        let init = tokio::select! {
            () = tx.closed() => return,
            first = inbound.message() => match first {
                Ok(Some(ProcessRequest { request: Some(process_request::Request::Init(init)) })) => init,
                Ok(Some(_)) => {
                    let _ = tx.send(Err(Status::failed_precondition("the first message must be init"))).await;
                    return;
                }
                Ok(None) | Err(_) => return,
            },
        };
        if self.mode == Mode::NeverReady {
            // Keep the stream (and its unread requests) open until the pipeline gives up.
            tx.closed().await;
            return;
        }
        let ready = ProcessResponse {
            response: Some(process_response::Response::Ready(ProcessReady {
                processor: init.processor.clone(),
                node_id: init.node_id.clone(),
                host_id: self.host_id.clone(),
            })),
        };
        if tx.send(Ok(ready)).await.is_err() {
            return;
        }
        if self.mode == Mode::NeverRead {
            tx.closed().await;
            drop(inbound);
            return;
        }
        let mut answered = 0u64;
        loop {
            let chunk = tokio::select! {
                () = tx.closed() => return,
                message = inbound.message() => match message {
                    Ok(Some(ProcessRequest { request: Some(process_request::Request::Chunk(chunk)) })) => chunk,
                    Ok(Some(_)) => {
                        let _ = tx.send(Err(Status::failed_precondition("expected a chunk"))).await;
                        return;
                    }
                    // Half-closed by the pipeline: end cleanly, as a real host does.
                    Ok(None) | Err(_) => return,
                },
            };
            self.counters.chunks_seen.fetch_add(1, Ordering::SeqCst);
            let sequence = chunk.sequence;
            let answers = match self.mode {
                Mode::NeverAnswer => {
                    // Keep reading (so flow control never pushes back); answer nothing.
                    continue;
                }
                Mode::Healthy => vec![echo(sequence, chunk)],
                Mode::WrongSequence => vec![echo(sequence + 1000, chunk)],
                Mode::AnswerTwice => vec![echo(sequence, chunk.clone()), echo(sequence, chunk)],
                Mode::Abort | Mode::Vanish if answered >= 1 => {
                    if self.mode == Mode::Abort {
                        let _ = tx
                            .send(Err(Status::internal(format!(
                                "fake processor aborted the stream at sequence {sequence}"
                            ))))
                            .await;
                    }
                    return;
                }
                Mode::Abort | Mode::Vanish => vec![echo(sequence, chunk)],
                Mode::Amplify(factor) => vec![echo(sequence, amplify(chunk, factor))],
                Mode::BurnCpu(burn) => {
                    let until = std::time::Instant::now() + burn;
                    while std::time::Instant::now() < until {
                        std::hint::spin_loop();
                    }
                    vec![echo(sequence, chunk)]
                }
                Mode::NeverRead | Mode::NeverReady => unreachable!("handled before the loop"),
            };
            for answer in answers {
                if tx.send(Ok(answer)).await.is_err() {
                    return;
                }
                self.counters.results_sent.fetch_add(1, Ordering::SeqCst);
            }
            answered += 1;
        }
    }
}

fn echo(input_sequence: u64, chunk: DataChunk) -> ProcessResponse {
    ProcessResponse {
        response: Some(process_response::Response::Result(ProcessResult {
            input_sequence,
            outputs: vec![ProcessOutput {
                output: PORT.into(),
                chunk: Some(chunk),
            }],
            error: None,
        })),
    }
}

/// The chunk with its payload's bytes repeated `factor` times (text stays text, anything
/// else becomes binary of that many bytes).
fn amplify(mut chunk: DataChunk, factor: u32) -> DataChunk {
    let factor = factor.max(1) as usize;
    if let Some(buffer) = chunk.buffer.as_mut() {
        buffer.payload = Some(match buffer.payload.take() {
            Some(Payload::Text(t)) => Payload::Text(TextData {
                text: t.text.repeat(factor),
                language: t.language,
            }),
            Some(Payload::Binary(b)) => Payload::Binary(BinaryData {
                data: Bytes::from(b.data.repeat(factor)),
                mime_type: b.mime_type,
            }),
            other => {
                let len = other.as_ref().map_or(0, Payload::payload_len);
                Payload::Binary(BinaryData {
                    data: Bytes::from(vec![0u8; len * factor]),
                    mime_type: String::new(),
                })
            }
        });
    }
    chunk
}
