//! The load generator, on the tonic client: one stream with a fixed number of chunks in
//! flight (B1, B2, B6), many sessions at real-time pace (B3), many idle sessions (B4) and
//! closed-loop unary calls (B5). Every run stops by itself: a chunk or call count and a
//! time limit, whichever comes first, and a hard timeout on every wait.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use flowplane_manifest::{Manifest, Node, PipelineInput, PipelineOutput, Placement, PortRef};
use flowplane_proto::{
    data::v1::{
        AudioBuffer, AudioFormat, BinaryData, DataBuffer, DataChunk, JsonData, data_buffer::Payload,
    },
    streaming::v1::{
        AudioChunk, PipelineManifest, StreamInit, StreamPipelineRequest, StreamPipelineResponse,
        stream_pipeline_request::Request, stream_pipeline_response::Response,
    },
};
use futures::{Stream, StreamExt, stream};
use tokio::{
    sync::{Semaphore, oneshot, watch},
    time::{Instant, MissedTickBehavior},
};
use tokio_util::sync::CancellationToken;
use tonic::{Status, Streaming};

use crate::{
    Error, Result,
    echo::EchoClient,
    platform::{connect, pipeline_client},
    stats::Latency,
};

/// Real-time audio: 20 ms of 48 kHz mono F32LE per chunk.
pub const AUDIO_PERIOD: Duration = Duration::from_millis(20);
/// Samples per audio chunk.
pub const AUDIO_SAMPLES: usize = 960;
/// Sample rate of the audio chunks.
pub const AUDIO_RATE: u32 = 48_000;

/// Slack after a run's time limit for the last results to arrive.
const DRAIN_GRACE: Duration = Duration::from_secs(15);

/// What each chunk carries.
#[derive(Clone, Debug)]
pub enum ChunkKind {
    /// Opaque bytes of this size.
    Binary(Bytes),
    /// A JSON document of exactly this text.
    Json(String),
    /// 20 ms of F32LE mono audio, as a DataChunk.
    Audio(Bytes),
    /// The same audio as the legacy `audio_chunk` message.
    LegacyAudio(Bytes),
}

impl ChunkKind {
    /// `size` bytes of binary payload.
    pub fn binary(size: usize) -> Self {
        Self::Binary(Bytes::from(
            (0..size).map(|i| (i % 251) as u8).collect::<Vec<u8>>(),
        ))
    }

    /// A JSON document of exactly `size` bytes (at least 16).
    pub fn json(size: usize) -> Self {
        let head = r#"{"v":1,"pad":""#;
        let tail = r#""}"#;
        let pad = size.saturating_sub(head.len() + tail.len());
        Self::Json(format!("{head}{}{tail}", "x".repeat(pad)))
    }

    /// 20 ms of a 440 Hz tone at 48 kHz, as DataChunk audio or as the legacy message.
    pub fn audio(legacy: bool) -> Self {
        let samples: Vec<u8> = (0..AUDIO_SAMPLES)
            .flat_map(|i| {
                let t = i as f32 / AUDIO_RATE as f32;
                (0.25 * (2.0 * std::f32::consts::PI * 440.0 * t).sin()).to_le_bytes()
            })
            .collect();
        let samples = Bytes::from(samples);
        if legacy {
            Self::LegacyAudio(samples)
        } else {
            Self::Audio(samples)
        }
    }

    /// Payload bytes per chunk (what MB/s counts).
    pub fn payload_len(&self) -> usize {
        match self {
            Self::Binary(b) | Self::Audio(b) | Self::LegacyAudio(b) => b.len(),
            Self::Json(j) => j.len(),
        }
    }

    /// The chunk as a DataChunk (legacy audio too: the echo has no legacy message).
    pub fn data_chunk(&self, sequence: u64) -> DataChunk {
        let payload = match self {
            Self::Binary(data) => Payload::Binary(BinaryData {
                data: data.clone(),
                mime_type: String::new(),
            }),
            Self::Json(json) => Payload::Json(JsonData {
                json: json.clone(),
                schema_hint: String::new(),
            }),
            Self::Audio(samples) | Self::LegacyAudio(samples) => Payload::Audio(AudioBuffer {
                samples: samples.clone(),
                sample_rate: AUDIO_RATE,
                channels: 1,
                format: AudioFormat::F32le as i32,
                num_samples: AUDIO_SAMPLES as u64,
            }),
        };
        DataChunk {
            sequence,
            input: String::new(),
            buffer: Some(DataBuffer {
                payload: Some(payload),
                metadata: HashMap::new(),
            }),
            timestamp_us: 0,
            metadata: HashMap::new(),
        }
    }

    /// The chunk as a pipeline request.
    #[allow(deprecated)]
    pub fn request(&self, sequence: u64) -> StreamPipelineRequest {
        let request = match self {
            Self::LegacyAudio(samples) => Request::AudioChunk(AudioChunk {
                samples: samples.clone(),
                sample_rate: AUDIO_RATE,
                channels: 1,
                sequence,
            }),
            _ => Request::Chunk(self.data_chunk(sequence)),
        };
        StreamPipelineRequest {
            request: Some(request),
        }
    }
}

/// A one-node pipeline: input `in` -> `processor` -> output `out`.
pub fn one_node_manifest(processor: &str, params: serde_json::Value) -> PipelineManifest {
    placed_manifest(processor, params, Placement::Remote)
}

/// [`one_node_manifest`] with the node on the pipeline's embedded host (`placement: local`).
pub fn local_manifest(processor: &str) -> PipelineManifest {
    local_manifest_with(processor, serde_json::json!({}))
}

/// [`local_manifest`] with params.
pub fn local_manifest_with(processor: &str, params: serde_json::Value) -> PipelineManifest {
    placed_manifest(processor, params, Placement::Local)
}

fn placed_manifest(
    processor: &str,
    params: serde_json::Value,
    placement: Placement,
) -> PipelineManifest {
    let params = match params {
        serde_json::Value::Object(map) => map,
        _ => serde_json::Map::new(),
    };
    Manifest {
        name: format!("bench-{processor}"),
        nodes: vec![Node {
            id: "n".into(),
            processor: processor.into(),
            params,
            placement,
        }],
        edges: Vec::new(),
        inputs: vec![PipelineInput {
            name: "in".into(),
            targets: vec![PortRef {
                node: "n".into(),
                port: String::new(),
            }],
        }],
        outputs: vec![PipelineOutput {
            name: "out".into(),
            source: PortRef {
                node: "n".into(),
                port: String::new(),
            },
        }],
    }
    .to_proto()
}

/// The init request of a session running `manifest`.
pub fn init(manifest: &PipelineManifest) -> StreamPipelineRequest {
    StreamPipelineRequest {
        request: Some(Request::Init(StreamInit {
            manifest: Some(manifest.clone()),
            metadata: HashMap::new(),
            audio_input: String::new(),
        })),
    }
}

/// Where a stream goes.
#[derive(Clone, Debug)]
pub enum Target {
    /// A StreamPipeline session running this manifest.
    Pipeline {
        /// The pipeline service.
        addr: SocketAddr,
        /// The pipeline to run.
        manifest: PipelineManifest,
    },
    /// The raw bidi echo.
    Echo {
        /// The echo server.
        addr: SocketAddr,
    },
}

impl Target {
    fn addr(&self) -> SocketAddr {
        match self {
            Target::Pipeline { addr, .. } | Target::Echo { addr } => *addr,
        }
    }
}

/// What came back on a stream, reduced to what the generator counts.
enum Seen {
    Ready,
    Result(u64),
    Error,
    Closed,
    Other,
}

fn seen_pipeline(message: StreamPipelineResponse) -> Seen {
    match message.response {
        Some(Response::Ready(_)) => Seen::Ready,
        Some(Response::Result(r)) => Seen::Result(r.input_sequence),
        Some(Response::Error(_)) => Seen::Error,
        Some(Response::Closed(_)) => Seen::Closed,
        _ => Seen::Other,
    }
}

/// Either side's response stream behind one reader.
enum Responses {
    Pipeline(Streaming<StreamPipelineResponse>),
    Echo(Streaming<flowplane_proto::data::v1::DataChunk>),
}

impl Responses {
    async fn next(&mut self) -> Result<Option<Seen>, Status> {
        match self {
            Responses::Pipeline(s) => Ok(s.message().await?.map(seen_pipeline)),
            Responses::Echo(s) => Ok(s.message().await?.map(|c| Seen::Result(c.sequence))),
        }
    }
}

/// Opens a stream to `target` on `channel`, fed by `chunks` (the pipeline gets its init
/// first), and for a pipeline waits for `ready`.
async fn open_stream<S>(
    target: &Target,
    channel: tonic::transport::Channel,
    kind: &ChunkKind,
    chunks: S,
) -> Result<Responses>
where
    S: Stream<Item = u64> + Send + 'static,
{
    match target {
        Target::Pipeline { manifest, .. } => {
            let kind = kind.clone();
            let requests = stream::once(std::future::ready(init(manifest)))
                .chain(chunks.map(move |seq| kind.request(seq)));
            let mut responses = pipeline_client(channel)
                .stream_pipeline(requests)
                .await
                .map_err(|s| Error::rpc("StreamPipeline", s))?
                .into_inner();
            match responses.message().await {
                Ok(Some(m)) if matches!(seen_pipeline(m.clone()), Seen::Ready) => {
                    Ok(Responses::Pipeline(responses))
                }
                Ok(other) => Err(Error::Setup(format!("expected ready, got {other:?}"))),
                Err(status) => Err(Error::rpc("StreamPipeline", status)),
            }
        }
        Target::Echo { .. } => {
            let kind = kind.clone();
            let requests = chunks.map(move |seq| kind.data_chunk(seq));
            let responses = EchoClient::new(channel)
                .bidi(requests)
                .await
                .map_err(|s| Error::rpc("Echo/Bidi", s))?;
            Ok(Responses::Echo(responses))
        }
    }
}

/// One stream with a fixed window of chunks in flight.
#[derive(Clone, Debug)]
pub struct WindowSpec {
    /// Where to.
    pub target: Target,
    /// What each chunk carries.
    pub kind: ChunkKind,
    /// Chunks in flight at most.
    pub window: usize,
    /// Chunks to send at most.
    pub count: u64,
    /// Time to send for at most.
    pub max_time: Duration,
}

/// What one windowed stream did.
#[derive(Clone, Debug, Default)]
pub struct WindowOutcome {
    /// Chunks sent.
    pub sent: u64,
    /// Results received.
    pub results: u64,
    /// Per-chunk errors and a failed stream.
    pub errors: u64,
    /// From the first send to the last result.
    pub elapsed: Duration,
    /// Payload bytes answered.
    pub bytes: u64,
    /// Round trip of each chunk.
    pub latency: Latency,
    /// How the stream ended, when not cleanly.
    pub failure: Option<String>,
}

impl WindowOutcome {
    /// Results a second.
    pub fn rate(&self) -> f64 {
        self.results as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Payload MB (10^6 bytes) a second, one way.
    pub fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Sends up to `count` chunks with at most `window` unanswered, timing each round trip.
pub async fn windowed(spec: &WindowSpec) -> Result<WindowOutcome> {
    let channel = connect(spec.target.addr()).await?;
    let count = spec.count;
    let window = Arc::new(Semaphore::new(spec.window.max(1)));
    let sent_at: Arc<Vec<AtomicU64>> = Arc::new((0..count).map(|_| AtomicU64::new(0)).collect());
    let sent = Arc::new(AtomicU64::new(0));
    let (go_tx, go_rx) = oneshot::channel::<Instant>();
    let chunks = {
        let window = window.clone();
        let sent_at = sent_at.clone();
        let sent = sent.clone();
        let max_time = spec.max_time;
        stream::unfold(
            (0u64, Some(go_rx), None::<Instant>),
            move |(seq, go, base)| {
                let window = window.clone();
                let sent_at = sent_at.clone();
                let sent = sent.clone();
                async move {
                    // Chunks start only once the session is ready, so its set-up is not timed.
                    let base = match (go, base) {
                        (Some(go), _) => go.await.ok()?,
                        (None, Some(base)) => base,
                        (None, None) => return None,
                    };
                    if seq >= count || base.elapsed() >= max_time {
                        return None;
                    }
                    window.acquire().await.ok()?.forget();
                    sent_at[seq as usize]
                        .store(base.elapsed().as_nanos() as u64, Ordering::Relaxed);
                    sent.fetch_add(1, Ordering::Relaxed);
                    Some((seq, (seq + 1, None, Some(base))))
                }
            },
        )
    };
    let mut responses = open_stream(&spec.target, channel, &spec.kind, chunks).await?;
    let base = Instant::now();
    let _ = go_tx.send(base);
    let mut outcome = WindowOutcome::default();
    let payload = spec.kind.payload_len() as u64;
    let hard_stop = base + spec.max_time + DRAIN_GRACE;
    let mut last = base;
    loop {
        let next = tokio::time::timeout_at(hard_stop, responses.next()).await;
        match next {
            Err(_) => {
                outcome.failure = Some(format!(
                    "no end of stream within {:?} of the send limit",
                    DRAIN_GRACE
                ));
                break;
            }
            Ok(Err(status)) => {
                outcome.errors += 1;
                outcome.failure = Some(format!("{:?}: {}", status.code(), status.message()));
                break;
            }
            Ok(Ok(None)) | Ok(Ok(Some(Seen::Closed))) => break,
            Ok(Ok(Some(Seen::Result(seq)))) => {
                let now = Instant::now();
                if let Some(at) = sent_at.get(seq as usize) {
                    let sent_ns = at.load(Ordering::Relaxed);
                    let rtt = (now - base).saturating_sub(Duration::from_nanos(sent_ns));
                    outcome.latency.record(rtt);
                }
                outcome.results += 1;
                outcome.bytes += payload;
                last = now;
                window.add_permits(1);
            }
            Ok(Ok(Some(Seen::Error))) => {
                outcome.errors += 1;
                window.add_permits(1);
            }
            Ok(Ok(Some(Seen::Ready | Seen::Other))) => {}
        }
    }
    outcome.sent = sent.load(Ordering::Relaxed);
    outcome.elapsed = last - base;
    if outcome.results + outcome.errors < outcome.sent {
        outcome.errors += outcome.sent - outcome.results - outcome.errors;
    }
    Ok(outcome)
}

/// Many sessions, each on its own connection, each sending one 20 ms audio chunk every
/// 20 ms (phases spread evenly over the period) for `chunks` chunks.
#[derive(Clone, Debug)]
pub struct PacedSpec {
    /// Where to.
    pub target: Target,
    /// Sessions.
    pub sessions: usize,
    /// Chunks per session.
    pub chunks: u64,
    /// Connections and sessions opened at once while ramping up.
    pub open_concurrency: usize,
    /// Client connections the sessions share, round robin, as a gateway multiplexes its
    /// users; 0 gives every session its own.
    pub connections: usize,
}

/// What a paced step did.
#[derive(Clone, Debug, Default)]
pub struct PacedOutcome {
    /// Sessions that opened.
    pub opened: usize,
    /// Sessions that failed to open.
    pub open_failures: usize,
    /// How long opening every session took.
    pub open_time: Duration,
    /// Chunks that should have been answered.
    pub expected: u64,
    /// Results received.
    pub results: u64,
    /// Per-chunk errors, failed streams and missing results.
    pub errors: u64,
    /// From each chunk's scheduled send time (its capture time) to its result.
    pub latency: Latency,
    /// How late the client sent each chunk after its scheduled time.
    pub send_lag: Latency,
    /// The first failure seen, for the report.
    pub first_failure: Option<String>,
}

/// Runs one paced step.
pub async fn paced(spec: &PacedSpec) -> PacedOutcome {
    let kind = ChunkKind::audio(false);
    let n = spec.sessions.max(1);
    let (start_tx, start_rx) = watch::channel(None::<Instant>);
    let send_lag = Arc::new(Mutex::new(Latency::new()));
    let open_started = Instant::now();
    let mut shared = Vec::with_capacity(spec.connections);
    for _ in 0..spec.connections {
        match connect(spec.target.addr()).await {
            Ok(channel) => shared.push(channel),
            Err(error) => {
                return PacedOutcome {
                    open_failures: n,
                    first_failure: Some(error.to_string()),
                    ..Default::default()
                };
            }
        }
    }
    let opened: Vec<Result<(usize, Responses, tonic::transport::Channel)>> = stream::iter(0..n)
        .map(|i| {
            let shared = (!shared.is_empty()).then(|| shared[i % shared.len()].clone());
            let target = spec.target.clone();
            let kind = kind.clone();
            let start_rx = start_rx.clone();
            let send_lag = send_lag.clone();
            let chunks = spec.chunks;
            let offset = AUDIO_PERIOD * i as u32 / n as u32;
            async move {
                let channel = match shared {
                    Some(channel) => channel,
                    None => connect(target.addr()).await?,
                };
                let pace = paced_sequence(start_rx, offset, chunks, send_lag);
                let responses = open_stream(&target, channel.clone(), &kind, pace).await?;
                Ok((i, responses, channel))
            }
        })
        .buffer_unordered(spec.open_concurrency.max(1))
        .collect()
        .await;
    let mut outcome = PacedOutcome {
        open_time: open_started.elapsed(),
        ..Default::default()
    };
    let mut sessions = Vec::with_capacity(n);
    for result in opened {
        match result {
            Ok(session) => sessions.push(session),
            Err(error) => {
                outcome.open_failures += 1;
                outcome
                    .first_failure
                    .get_or_insert_with(|| error.to_string());
            }
        }
    }
    outcome.opened = sessions.len();
    outcome.expected = spec.chunks * sessions.len() as u64;
    // Everyone starts together, a little after the last session opened.
    let start = Instant::now() + Duration::from_millis(100);
    let _ = start_tx.send(Some(start));
    let run_time = AUDIO_PERIOD * spec.chunks as u32;
    let hard_stop = start + run_time + AUDIO_PERIOD + DRAIN_GRACE;
    let readers: Vec<_> = sessions
        .into_iter()
        .map(|(i, mut responses, channel)| {
            let offset = AUDIO_PERIOD * i as u32 / n as u32;
            let chunks = spec.chunks;
            tokio::spawn(async move {
                let first = start + offset;
                let mut latency = Latency::new();
                let mut results = 0u64;
                let mut errors = 0u64;
                let mut failure = None;
                loop {
                    match tokio::time::timeout_at(hard_stop, responses.next()).await {
                        Err(_) => {
                            failure =
                                Some("results still missing at the step's time limit".to_string());
                            break;
                        }
                        Ok(Err(status)) => {
                            failure = Some(format!("{:?}: {}", status.code(), status.message()));
                            errors += 1;
                            break;
                        }
                        Ok(Ok(None | Some(Seen::Closed))) => break,
                        Ok(Ok(Some(Seen::Result(seq)))) => {
                            let scheduled = first + AUDIO_PERIOD * seq as u32;
                            latency.record(Instant::now().saturating_duration_since(scheduled));
                            results += 1;
                        }
                        Ok(Ok(Some(Seen::Error))) => errors += 1,
                        Ok(Ok(Some(Seen::Ready | Seen::Other))) => {}
                    }
                }
                drop(channel);
                let missing = chunks.saturating_sub(results + errors);
                (latency, results, errors + missing, failure)
            })
        })
        .collect();
    for reader in readers {
        match reader.await {
            Ok((latency, results, errors, failure)) => {
                outcome.latency.merge(&latency);
                outcome.results += results;
                outcome.errors += errors;
                if let Some(f) = failure {
                    outcome.first_failure.get_or_insert(f);
                }
            }
            Err(join) => {
                outcome.errors += spec.chunks;
                outcome
                    .first_failure
                    .get_or_insert_with(|| join.to_string());
            }
        }
    }
    outcome.send_lag = send_lag.lock().expect("send lag lock").clone();
    outcome
}

/// The sequence numbers of one paced session: waits for the common start, then yields
/// sequence `k` at `start + offset + k * 20 ms`, recording how late each one goes out.
fn paced_sequence(
    start: watch::Receiver<Option<Instant>>,
    offset: Duration,
    chunks: u64,
    send_lag: Arc<Mutex<Latency>>,
) -> impl Stream<Item = u64> + Send + 'static {
    stream::unfold(
        (0u64, Some(start), None::<tokio::time::Interval>),
        move |(seq, start, interval)| {
            let send_lag = send_lag.clone();
            async move {
                if seq >= chunks {
                    return None;
                }
                let mut interval = match (start, interval) {
                    (Some(mut start), _) => {
                        let at = (*start.wait_for(Option::is_some).await.ok()?)?;
                        // Burst: a late client catches up rather than silently slowing down.
                        let mut interval = tokio::time::interval_at(at + offset, AUDIO_PERIOD);
                        interval.set_missed_tick_behavior(MissedTickBehavior::Burst);
                        interval
                    }
                    (None, Some(interval)) => interval,
                    (None, None) => return None,
                };
                let scheduled = interval.tick().await;
                let lag = Instant::now().saturating_duration_since(scheduled);
                send_lag.lock().expect("send lag lock").record(lag);
                Some((seq, (seq + 1, None, Some(interval))))
            }
        },
    )
}

/// Idle sessions held open until [`IdleSessions::close`].
pub struct IdleSessions {
    /// Sessions that opened.
    pub opened: usize,
    /// Sessions that failed to open.
    pub failures: usize,
    /// The first failure seen.
    pub first_failure: Option<String>,
    /// How long opening took.
    pub open_time: Duration,
    stop: CancellationToken,
    held: Vec<(Responses, tonic::transport::Channel)>,
}

impl IdleSessions {
    /// Ends every session (half-close) and drops the connections.
    pub async fn close(self) {
        self.stop.cancel();
        let closing = self
            .held
            .into_iter()
            .map(|(mut responses, channel)| async move {
                let _ = tokio::time::timeout(Duration::from_secs(10), async {
                    while let Ok(Some(seen)) = responses.next().await {
                        if matches!(seen, Seen::Closed) {
                            break;
                        }
                    }
                })
                .await;
                drop(channel);
            });
        stream::iter(closing)
            .buffer_unordered(256)
            .collect::<Vec<_>>()
            .await;
    }
}

/// Opens `sessions` sessions that send nothing, `per_connection` of them on each
/// connection, at most `concurrency` opening at once.
pub async fn idle(
    target: &Target,
    sessions: usize,
    per_connection: usize,
    concurrency: usize,
) -> IdleSessions {
    let stop = CancellationToken::new();
    let started = Instant::now();
    let per_connection = per_connection.max(1);
    let mut result = IdleSessions {
        opened: 0,
        failures: 0,
        first_failure: None,
        open_time: Duration::ZERO,
        stop: stop.clone(),
        held: Vec::with_capacity(sessions),
    };
    let mut channels = Vec::new();
    for _ in 0..sessions.div_ceil(per_connection) {
        match connect(target.addr()).await {
            Ok(channel) => channels.push(channel),
            Err(error) => {
                result.failures = sessions;
                result.first_failure = Some(error.to_string());
                return result;
            }
        }
    }
    let kind = ChunkKind::binary(0);
    let opened: Vec<Result<(Responses, tonic::transport::Channel)>> = stream::iter(0..sessions)
        .map(|i| {
            let silent = stream::once(stop.clone().cancelled_owned())
                .filter_map(|()| std::future::ready(None::<u64>));
            let target = target.clone();
            let kind = kind.clone();
            let channel = channels[i / per_connection].clone();
            async move {
                let responses = open_stream(&target, channel.clone(), &kind, silent).await?;
                Ok((responses, channel))
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    for session in opened {
        match session {
            Ok(session) => {
                result.opened += 1;
                result.held.push(session);
            }
            Err(error) => {
                result.failures += 1;
                result
                    .first_failure
                    .get_or_insert_with(|| error.to_string());
            }
        }
    }
    result.open_time = started.elapsed();
    result
}

/// Closed-loop unary calls: `in_flight` callers spread over `connections` channels, each
/// calling again as soon as its previous call returns.
#[derive(Clone, Debug)]
pub struct UnarySpec {
    /// Calls in flight.
    pub in_flight: usize,
    /// Calls at most.
    pub count: u64,
    /// Time at most.
    pub max_time: Duration,
}

/// What a unary run did.
#[derive(Clone, Debug, Default)]
pub struct UnaryOutcome {
    /// Calls that succeeded.
    pub ok: u64,
    /// Calls that failed.
    pub errors: u64,
    /// Wall time of the run.
    pub elapsed: Duration,
    /// Latency of each successful call.
    pub latency: Latency,
    /// The first failure seen.
    pub first_failure: Option<String>,
}

impl UnaryOutcome {
    /// Successful calls a second.
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Runs `call(i)` for i = 0, 1, 2, ... with `in_flight` concurrent callers.
pub async fn unary<F, Fut>(spec: &UnarySpec, call: F) -> UnaryOutcome
where
    F: Fn(usize, u64) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<(), Status>> + Send,
{
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + spec.max_time;
    let hard_stop = deadline + DRAIN_GRACE;
    let callers: Vec<_> = (0..spec.in_flight.max(1))
        .map(|caller| {
            let next = next.clone();
            let call = call.clone();
            let count = spec.count;
            tokio::spawn(async move {
                let mut outcome = UnaryOutcome::default();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count || Instant::now() >= deadline {
                        break;
                    }
                    let t = Instant::now();
                    match tokio::time::timeout_at(hard_stop, call(caller, i)).await {
                        Ok(Ok(())) => {
                            outcome.latency.record(t.elapsed());
                            outcome.ok += 1;
                        }
                        Ok(Err(status)) => {
                            outcome.errors += 1;
                            outcome.first_failure.get_or_insert_with(|| {
                                format!("{:?}: {}", status.code(), status.message())
                            });
                        }
                        Err(_) => {
                            outcome.errors += 1;
                            outcome
                                .first_failure
                                .get_or_insert_with(|| "a call outlived the run".into());
                            break;
                        }
                    }
                }
                outcome
            })
        })
        .collect();
    let mut total = UnaryOutcome::default();
    for caller in callers {
        if let Ok(outcome) = caller.await {
            total.ok += outcome.ok;
            total.errors += outcome.errors;
            total.latency.merge(&outcome.latency);
            if total.first_failure.is_none() {
                total.first_failure = outcome.first_failure;
            }
        }
    }
    total.elapsed = started.elapsed();
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_chunks_have_the_exact_size() {
        let ChunkKind::Json(text) = ChunkKind::json(100) else {
            panic!("not json")
        };
        assert_eq!(text.len(), 100);
        serde_json::from_str::<serde_json::Value>(&text).unwrap();
    }

    #[test]
    #[allow(deprecated)] // the legacy message is what B6 measures
    fn audio_chunks_are_20ms_of_48khz_f32() {
        assert_eq!(ChunkKind::audio(false).payload_len(), 960 * 4);
        let legacy = ChunkKind::audio(true).request(7);
        assert!(matches!(legacy.request, Some(Request::AudioChunk(ref a)) if a.sequence == 7));
    }
}

/// What `sessions` concurrent sessions sharing one client channel did (B8).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ChannelStep {
    /// Sessions started at once on the channel.
    pub sessions: usize,
    /// Sessions that got every result and ended cleanly.
    pub ok: usize,
    /// Sessions that failed (open, a result missing, an error, the connection lost).
    pub failed: usize,
    /// Wall time of the step, seconds.
    pub seconds: f64,
    /// The first failure seen.
    pub first_failure: Option<String>,
}

/// Starts `sessions` sessions at once on ONE channel; each queues its init and `chunks`
/// chunks at once (so they sit unread while the session opens), half-closes, and must
/// get `chunks` results before its stream ends. Bounded by `limit` for the whole step.
pub async fn sessions_on_one_channel(
    target: &Target,
    sessions: usize,
    chunks: u64,
    kind: &ChunkKind,
    limit: Duration,
) -> ChannelStep {
    let started = Instant::now();
    let mut step = ChannelStep {
        sessions,
        ..Default::default()
    };
    let channel = match connect(target.addr()).await {
        Ok(channel) => channel,
        Err(error) => {
            step.failed = sessions;
            step.first_failure = Some(error.to_string());
            return step;
        }
    };
    let one = |target: Target, channel: tonic::transport::Channel, kind: ChunkKind| async move {
        let mut responses = open_stream(&target, channel, &kind, stream::iter(0..chunks)).await?;
        let mut results = 0;
        loop {
            match responses.next().await {
                Ok(Some(Seen::Result(_))) => results += 1,
                Ok(Some(Seen::Error)) => return Err(Error::Setup("a chunk error".into())),
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(status) => return Err(Error::rpc("stream", status)),
            }
        }
        if results == chunks {
            Ok(())
        } else {
            Err(Error::Setup(format!("{results} of {chunks} results")))
        }
    };
    let tasks: Vec<_> = (0..sessions)
        .map(|_| {
            tokio::spawn(tokio::time::timeout(
                limit,
                one(target.clone(), channel.clone(), kind.clone()),
            ))
        })
        .collect();
    for task in tasks {
        let failure = match task.await {
            Ok(Ok(Ok(()))) => None,
            Ok(Ok(Err(error))) => Some(error.to_string()),
            Ok(Err(_)) => Some(format!("not done within {limit:?}")),
            Err(join) => Some(format!("session task: {join}")),
        };
        match failure {
            None => step.ok += 1,
            Some(failure) => {
                step.failed += 1;
                step.first_failure.get_or_insert(failure);
            }
        }
    }
    step.seconds = started.elapsed().as_secs_f64();
    step
}
