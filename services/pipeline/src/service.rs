//! The StreamingPipelineService handlers: session admission (draining, session count,
//! memory budget) and init, the client reader (window permits, budget, idle timeout,
//! legacy audio conversion), ExecutePipeline on the same session machinery, and
//! ValidatePipeline on the same validation path. A session's response stream always
//! ends with the session's real outcome: never OK for a session that did not deliver.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::{
    future::Future as _,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use flowplane_grpc::lifecycle::Lifecycle;
use flowplane_manifest::{Manifest, validate};
use flowplane_proto::{
    data::v1::{AudioBuffer, AudioFormat, DataBuffer, DataChunk, data_buffer::Payload},
    streaming::v1::{
        ControlCommand, ExecutePipelineRequest, ExecutePipelineResponse, StreamPipelineRequest,
        StreamPipelineResponse, ValidatePipelineRequest, ValidatePipelineResponse,
        stream_pipeline_request::Request, stream_pipeline_response::Response,
        streaming_pipeline_service_server::StreamingPipelineService,
    },
};
use futures::Stream;
use prost::Message;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tracing::Instrument;

use crate::{
    Error, Result,
    budget::Budget,
    directory::Directory,
    queue,
    session::{
        ClientEvent, ClientEvents, EARLY_EVENTS, Hold, Session, SessionContext, SessionLimits,
        channel_events,
    },
};

/// Service-wide settings.
#[derive(Clone, Debug)]
pub struct ServiceLimits {
    /// Sessions open at once; more get RESOURCE_EXHAUSTED.
    pub max_sessions: usize,
    /// How long a new stream may take to send its init.
    pub init_timeout: Duration,
    /// Bytes of chunks and results held across every session (see `Budget`).
    pub memory_budget: usize,
    /// Per-session limits.
    pub session: SessionLimits,
}

impl Default for ServiceLimits {
    fn default() -> Self {
        Self {
            max_sessions: 10_000,
            init_timeout: Duration::from_secs(10),
            memory_budget: 512 * 1024 * 1024,
            session: SessionLimits::default(),
        }
    }
}

/// The service state shared by every session.
#[derive(Clone)]
pub struct PipelineService {
    directory: Arc<Directory>,
    limits: Arc<ServiceLimits>,
    sessions: Arc<Semaphore>,
    budget: Arc<Budget>,
    lifecycle: Lifecycle,
    /// Sessions ended so far, by gRPC code (the index), as `sessions_total` counts them.
    ended: Arc<[AtomicUsize; 17]>,
    /// Sessions whose `closed` is queued but not yet taken by their response stream.
    awaiting_delivery: Arc<AtomicUsize>,
}

impl std::fmt::Debug for PipelineService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PipelineService")
            .field("active_sessions", &self.active_sessions())
            .field("budget_used", &self.budget.used())
            .finish_non_exhaustive()
    }
}

impl PipelineService {
    /// A service discovering processors through `directory`; `lifecycle` admits sessions
    /// and, once its grace period is over, ends the open ones.
    pub fn new(directory: Arc<Directory>, limits: ServiceLimits, lifecycle: Lifecycle) -> Self {
        Self {
            sessions: Arc::new(Semaphore::new(limits.max_sessions)),
            budget: Budget::new(limits.memory_budget),
            directory,
            limits: Arc::new(limits),
            lifecycle,
            ended: Arc::new(std::array::from_fn(|_| AtomicUsize::new(0))),
            awaiting_delivery: Arc::default(),
        }
    }

    /// Sessions that have queued their `closed` and wait for the client to take it.
    pub fn sessions_awaiting_delivery(&self) -> usize {
        self.awaiting_delivery.load(Ordering::Relaxed)
    }

    /// Sessions that have ended with `code` since the service started.
    pub fn sessions_ended(&self, code: tonic::Code) -> usize {
        self.ended
            .get(code as usize)
            .map_or(0, |n| n.load(Ordering::Relaxed))
    }

    /// Sessions open right now.
    pub fn active_sessions(&self) -> usize {
        self.limits.max_sessions - self.sessions.available_permits()
    }

    /// Bytes held in the service's memory budget right now.
    pub fn budget_used(&self) -> usize {
        self.budget.used()
    }

    /// Validates, opens and starts a session fed by `events`; returns its response stream.
    pub(crate) async fn start(
        &self,
        manifest: &Manifest,
        mut events: ClientEvents,
    ) -> Result<SessionStream> {
        let draining = self.lifecycle.admit().map_err(|_| Error::Draining)?;
        let admission = self.sessions.clone().try_acquire_owned().map_err(|_| {
            Error::LimitExceeded(format!(
                "session limit reached: {} sessions open (max_sessions)",
                self.limits.max_sessions
            ))
        })?;
        let plan = Arc::new(validate(manifest, self.directory.as_ref())?);
        let session_id = uuid::Uuid::new_v4().to_string();
        let span = tracing::info_span!(
            "pipeline.session",
            flowplane.session_id = %session_id,
            flowplane.pipeline = %plan.name,
            flowplane.node_count = plan.nodes.len(),
        );
        let (out, responses) = queue::bounded(RESPONSE_QUEUE);
        let responses = Arc::new(std::sync::Mutex::new(responses));
        let (ending_tx, ending) = oneshot::channel();
        // Weak: the receiver must die with the client's stream, which is how the session
        // learns the client went away.
        let queue = Arc::downgrade(&responses);
        let idle_timeout = self.limits.session.idle_timeout;
        let stream = SessionStream {
            responses,
            ending: Some(ending),
            last: None,
            done: false,
        };
        let cx = SessionContext {
            awaiting_delivery: self.awaiting_delivery.clone(),
            directory: self.directory.clone(),
            budget: self.budget.clone(),
            limits: self.limits.session.clone(),
        };
        // The client is read while the nodes open, so its first chunks do not sit unread
        // in HTTP/2 buffers (where they count against the connection's small-frame guard).
        let opening = Session::open(session_id, plan, cx, out.clone()).instrument(span.clone());
        let (opened, early) = read_while(opening, &mut events).await;
        let (session, ready) = opened?;
        out.send((
            StreamPipelineResponse {
                response: Some(Response::Ready(ready)),
            },
            Vec::new(),
        ))
        .await
        .map_err(|_| Error::Cancelled)?;
        let abort = self.lifecycle.aborted();
        let ended = self.ended.clone();
        metrics::gauge!("flowplane_pipeline_sessions_active").increment(1.0);
        tokio::spawn(
            async move {
                let outcome = tokio::select! {
                    outcome = session.run(events, early) => outcome,
                    () = abort.cancelled() => Err(Error::ShuttingDown),
                };
                let code = match outcome {
                    Ok(()) => tonic::Code::Ok,
                    Err(err) => {
                        let stalled = matches!(err, Error::ClientStalled(_));
                        let status = tonic::Status::from(err);
                        tracing::info!(code = ?status.code(), error = %status.message(), "session ended");
                        let code = status.code();
                        let _ = ending_tx.send(Ending { status });
                        // Responses the client does not read must not pin the budget: a
                        // client that stopped reading loses them now (its status goes
                        // first), any other gets the idle timeout to read them.
                        if stalled {
                            discard(&queue);
                        } else if queue.strong_count() > 0 {
                            tokio::spawn(async move {
                                tokio::time::sleep(idle_timeout).await;
                                discard(&queue);
                            });
                        }
                        code
                    }
                };
                metrics::counter!("flowplane_pipeline_sessions_total", "code" => flowplane_telemetry::rpc::code_name(code))
                    .increment(1);
                if let Some(n) = ended.get(code as usize) {
                    n.fetch_add(1, Ordering::Relaxed);
                }
                metrics::gauge!("flowplane_pipeline_sessions_active").decrement(1.0);
                // Only now may the response stream end: its ending is already there.
                drop(out);
                drop(admission);
                drop(draining);
            }
            .instrument(span),
        );
        Ok(stream)
    }
}

/// Responses a session queues for its client's stream before it waits.
const RESPONSE_QUEUE: usize = 64;

/// A response with the holds it releases once the client has it.
pub(crate) type Held = (StreamPipelineResponse, Vec<Hold>);

/// How a failed session ends its response stream.
struct Ending {
    status: tonic::Status,
}

/// Closes a session's response queue and drops what is in it (with its holds): the
/// stream then ends with the session's status at once.
fn discard(queue: &std::sync::Weak<std::sync::Mutex<queue::Receiver<Held>>>) {
    let Some(queue) = queue.upgrade() else {
        return; // the client's stream is gone, and its queue with it
    };
    let mut queue = queue.lock().expect("response queue lock");
    queue.close();
    while queue.try_recv().is_some() {}
}

/// A session's responses, then its outcome: the failed session's status, or the end
/// of the stream (OK) only after a session that closed cleanly.
pub struct SessionStream {
    /// Shared with the session's task, which may discard what the client left unread.
    responses: Arc<std::sync::Mutex<queue::Receiver<Held>>>,
    /// `None` once resolved (a oneshot must not be polled again).
    ending: Option<oneshot::Receiver<Ending>>,
    last: Option<tonic::Status>,
    done: bool,
}

impl SessionStream {
    /// Takes the session's ending, if it has come. A session that closed cleanly drops
    /// its sender without sending.
    fn poll_ending(&mut self, cx: &mut Context<'_>) -> Option<Ending> {
        let receiver = self.ending.as_mut()?;
        match Pin::new(receiver).poll(cx) {
            Poll::Ready(outcome) => {
                self.ending = None;
                outcome.ok()
            }
            Poll::Pending => None,
        }
    }

    /// The next response with the holds it carries, for a caller that keeps results
    /// charged to the budget while it gathers them.
    pub(crate) async fn next_held(&mut self) -> Option<std::result::Result<Held, tonic::Status>> {
        std::future::poll_fn(|cx| self.poll_held(cx)).await
    }

    fn poll_held(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<Held, tonic::Status>>> {
        if self.done {
            return Poll::Ready(None);
        }
        if self.last.is_none()
            && let Some(ending) = self.poll_ending(cx)
        {
            self.last = Some(ending.status);
        }
        let next = self
            .responses
            .lock()
            .expect("response queue lock")
            .poll_recv(cx);
        match next {
            Poll::Ready(Some(mut held)) => {
                crate::session::mark_taken(&mut held.1);
                Poll::Ready(Some(Ok(held)))
            }
            Poll::Ready(None) => {
                // The session's task sends its ending before it lets go of the last
                // sender; an ending not yet seen is about to be.
                if self.last.is_none() && self.ending.is_some() {
                    match self.poll_ending(cx) {
                        Some(ending) => self.last = Some(ending.status),
                        None if self.ending.is_some() => return Poll::Pending,
                        None => {}
                    }
                }
                self.done = true;
                Poll::Ready(self.last.take().map(Err))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Stream for SessionStream {
    type Item = std::result::Result<StreamPipelineResponse, tonic::Status>;

    /// Yields a response and drops its holds: from here HTTP/2 flow control bounds it.
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.poll_held(cx)
            .map(|item| item.map(|result| result.map(|(response, _holds)| response)))
    }
}

type ResponseStream = SessionStream;

#[tonic::async_trait]
impl StreamingPipelineService for PipelineService {
    type StreamPipelineStream = ResponseStream;

    async fn stream_pipeline(
        &self,
        request: tonic::Request<tonic::Streaming<StreamPipelineRequest>>,
    ) -> std::result::Result<tonic::Response<Self::StreamPipelineStream>, tonic::Status> {
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(self.limits.init_timeout, inbound.message())
            .await
            .map_err(|_| {
                Error::Timeout(format!(
                    "no init within {:?} of opening the stream (init_timeout)",
                    self.limits.init_timeout
                ))
            })??;
        let init = match first.and_then(|r| r.request) {
            Some(Request::Init(init)) => init,
            Some(other) => {
                return Err(Error::Protocol(format!(
                    "the first message must be init, got {}",
                    request_kind(&other)
                ))
                .into());
            }
            None => return Err(Error::Protocol("stream ended before init".into()).into()),
        };
        let manifest = Manifest::from_proto(&init.manifest.unwrap_or_default());
        let audio_input = init.audio_input;
        let windows = Windows::new(&self.limits.session, self.budget.clone());
        let events = client_events(
            inbound,
            windows,
            self.limits.session.idle_timeout,
            audio_input,
        );
        let responses = self.start(&manifest, events).await?;
        Ok(tonic::Response::new(responses))
    }

    async fn execute_pipeline(
        &self,
        request: tonic::Request<ExecutePipelineRequest>,
    ) -> std::result::Result<tonic::Response<ExecutePipelineResponse>, tonic::Status> {
        let request = request.into_inner();
        let manifest = Manifest::from_proto(&request.manifest.unwrap_or_default());
        let (events_tx, events_rx) = mpsc::channel(64);
        let mut responses = self.start(&manifest, channel_events(events_rx)).await?;
        // Feed every input, then CLOSE; the window still bounds what is in flight.
        let windows = Windows::new(&self.limits.session, self.budget.clone());
        tokio::spawn(async move {
            for chunk in request.inputs {
                let event = match windows.admit(&chunk).await {
                    Ok(holds) => ClientEvent::Chunk(chunk, holds),
                    Err(err) => ClientEvent::Failed(err),
                };
                let failed = matches!(event, ClientEvent::Failed(_));
                if events_tx.send(event).await.is_err() || failed {
                    return;
                }
            }
            let _ = events_tx
                .send(ClientEvent::Control(ControlCommand::Close))
                .await;
        });
        // The whole answer is one message: past the message limit it could not be sent.
        let limit = flowplane_grpc::MAX_MESSAGE_BYTES;
        let mut response = ExecutePipelineResponse::default();
        // Results stay charged to the budget until the answer is built.
        let mut charged = Vec::new();
        while let Some(message) = responses.next_held().await {
            let (message, holds) = message?;
            charged.extend(holds);
            match message.response {
                Some(Response::Result(r)) => response.results.push(r),
                Some(Response::Error(e)) => response.errors.push(e),
                Some(Response::Closed(closed)) => response.metrics = closed.metrics,
                _ => {}
            }
            let size = response.encoded_len();
            if size > limit {
                // Dropping `responses` cancels the session.
                return Err(Error::LimitExceeded(format!(
                    "ExecutePipeline results reached {size} bytes after {} results, over the response limit of {limit} bytes (max_message_bytes); use StreamPipeline for large outputs",
                    response.results.len()
                ))
                .into());
            }
        }
        Ok(tonic::Response::new(response))
    }

    async fn validate_pipeline(
        &self,
        request: tonic::Request<ValidatePipelineRequest>,
    ) -> std::result::Result<tonic::Response<ValidatePipelineResponse>, tonic::Status> {
        let manifest = Manifest::from_proto(&request.into_inner().manifest.unwrap_or_default());
        let problems = match validate(&manifest, self.directory.as_ref()) {
            Ok(_) => Vec::new(),
            Err(problems) => problems.0.iter().map(|p| p.to_detail()).collect(),
        };
        Ok(tonic::Response::new(ValidatePipelineResponse { problems }))
    }
}

/// One session's admission: the window's count and byte semaphores, then room in the
/// service's memory budget.
struct Windows {
    count: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
    byte_units: usize,
    budget: Arc<Budget>,
    budget_timeout: Duration,
}

const BYTE_UNIT: usize = 1024;

impl Windows {
    fn new(limits: &SessionLimits, budget: Arc<Budget>) -> Self {
        let byte_units = (limits.window_bytes / BYTE_UNIT).max(1);
        Self {
            count: Arc::new(Semaphore::new(limits.window.max(1))),
            bytes: Arc::new(Semaphore::new(byte_units)),
            byte_units,
            budget,
            budget_timeout: limits.budget_timeout,
        }
    }

    /// Waits for room for `chunk`. A chunk larger than the whole byte window takes all of
    /// it, so it still runs, alone. Waiting on the session's own window is waiting on its
    /// own progress (bounded by the node timeout); waiting on the shared budget is bounded
    /// here and ends the session with RESOURCE_EXHAUSTED naming the budget.
    async fn admit(&self, chunk: &DataChunk) -> Result<Vec<Hold>> {
        let len = chunk.buffer.as_ref().map_or(0, |b| b.payload_len());
        let units = (len / BYTE_UNIT + 1).min(self.byte_units) as u32;
        let count: OwnedSemaphorePermit = self
            .count
            .clone()
            .acquire_owned()
            .await
            .expect("window semaphore is never closed");
        let bytes = self
            .bytes
            .clone()
            .acquire_many_owned(units)
            .await
            .expect("window semaphore is never closed");
        if tokio::time::timeout(self.budget_timeout, self.budget.room())
            .await
            .is_err()
        {
            return Err(Error::LimitExceeded(format!(
                "chunk sequence {} waited {:?} for room in the service memory budget of {} bytes (memory_budget)",
                chunk.sequence,
                self.budget_timeout,
                self.budget.limit()
            )));
        }
        // Room for a third hold, the first result's charge, which joins these on the
        // ticket: no reallocation on the way.
        let mut holds = Vec::with_capacity(3);
        holds.push(Hold::Window(count, bytes));
        holds.push(Hold::Memory(self.budget.charge(chunk.encoded_len())));
        Ok(holds)
    }
}

/// Polls `opening` to its end while reading the client's first events (at most
/// [`EARLY_EVENTS`], each chunk admitted to the window as usual); returns what it opened
/// and the events read, for the session to handle first.
async fn read_while<T>(
    opening: impl std::future::Future<Output = T>,
    events: &mut ClientEvents,
) -> (T, std::collections::VecDeque<ClientEvent>) {
    use futures::StreamExt as _;
    tokio::pin!(opening);
    let mut early = std::collections::VecDeque::new();
    let mut reading = true;
    loop {
        tokio::select! {
            biased;
            opened = &mut opening => return (opened, early),
            event = events.next(), if reading && early.len() < EARLY_EVENTS => {
                let event = event.unwrap_or(ClientEvent::Ended);
                reading = !matches!(event, ClientEvent::Ended | ClientEvent::Failed(_));
                early.push_back(event);
            }
        }
    }
}

/// The client's request stream as session events, read on the session's task whenever
/// it polls them: each chunk is held until the window and the budget have room (this is
/// where backpressure reaches the client). Ends after `Ended` or `Failed`.
fn client_events(
    inbound: tonic::Streaming<StreamPipelineRequest>,
    windows: Windows,
    idle_timeout: Duration,
    audio_input: String,
) -> ClientEvents {
    let reader = ClientReader {
        inbound,
        windows,
        idle: Box::pin(tokio::time::sleep(idle_timeout)),
        idle_timeout,
        audio_input,
        done: false,
    };
    let events = futures::stream::unfold(reader, |mut reader| async move {
        if reader.done {
            return None;
        }
        let event = reader.next_event().await;
        reader.done = matches!(event, ClientEvent::Ended | ClientEvent::Failed(_));
        Some((event, reader))
    });
    // Fused: polled after its end it says so again (an unfold would panic).
    Box::pin(futures::StreamExt::fuse(events))
}

/// The state of a client's request stream between the session's reads.
struct ClientReader {
    inbound: tonic::Streaming<StreamPipelineRequest>,
    windows: Windows,
    /// One idle timer for the whole stream, not one per message: pushed back only when it
    /// fires before the stream has been idle for the whole timeout.
    idle: Pin<Box<tokio::time::Sleep>>,
    idle_timeout: Duration,
    audio_input: String,
    done: bool,
}

impl ClientReader {
    /// The next event. Idle time counts from when the session asks for it (as before any
    /// wait for the window) until a message arrives.
    async fn next_event(&mut self) -> ClientEvent {
        let reading_since = tokio::time::Instant::now();
        let idle_timeout = self.idle_timeout;
        let next = loop {
            tokio::select! {
                biased;
                next = self.inbound.message() => break Some(next),
                () = &mut self.idle => {
                    let quiet_until = reading_since + idle_timeout;
                    if tokio::time::Instant::now() < quiet_until {
                        self.idle.as_mut().reset(quiet_until);
                        continue;
                    }
                    break None;
                }
            }
        };
        let chunk = match next {
            None => {
                return ClientEvent::Failed(Error::Timeout(format!(
                    "session idle for {idle_timeout:?}: no client message (idle_timeout)"
                )));
            }
            Some(Err(status)) => return ClientEvent::Failed(Error::from(status)),
            Some(Ok(None)) => return ClientEvent::Ended,
            Some(Ok(Some(message))) => match message.request {
                Some(Request::Chunk(chunk)) => chunk,
                #[allow(deprecated)]
                Some(Request::AudioChunk(legacy)) => legacy_audio(legacy, &self.audio_input),
                Some(Request::Control(control)) => {
                    return ClientEvent::Control(
                        ControlCommand::try_from(control.command)
                            .unwrap_or(ControlCommand::Unspecified),
                    );
                }
                Some(Request::Init(_)) => {
                    return ClientEvent::Failed(Error::Protocol("init sent twice".into()));
                }
                None => {
                    return ClientEvent::Failed(Error::InvalidInput(
                        "request has no init, chunk, audio_chunk or control".into(),
                    ));
                }
            },
        };
        match self.windows.admit(&chunk).await {
            Ok(holds) => ClientEvent::Chunk(chunk, holds),
            Err(err) => ClientEvent::Failed(err),
        }
    }
}

/// The legacy audio-only chunk is exactly a DataChunk with an F32LE AudioBuffer.
#[allow(deprecated)]
fn legacy_audio(
    legacy: flowplane_proto::streaming::v1::AudioChunk,
    audio_input: &str,
) -> DataChunk {
    let channels = legacy.channels.max(1);
    let num_samples = (legacy.samples.len() / 4 / channels as usize) as u64;
    DataChunk {
        sequence: legacy.sequence,
        input: audio_input.to_string(),
        buffer: Some(DataBuffer {
            payload: Some(Payload::Audio(AudioBuffer {
                samples: legacy.samples,
                sample_rate: legacy.sample_rate,
                channels: legacy.channels,
                format: AudioFormat::F32le as i32,
                num_samples,
            })),
            metadata: Default::default(),
        }),
        timestamp_us: 0,
        metadata: Default::default(),
    }
}

#[allow(deprecated)]
fn request_kind(request: &Request) -> &'static str {
    match request {
        Request::Init(_) => "init",
        Request::Chunk(_) => "chunk",
        Request::AudioChunk(_) => "audio_chunk",
        Request::Control(_) => "control",
    }
}
