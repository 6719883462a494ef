//! The StreamingPipelineService handlers: session admission and init, the client reader
//! (window permits, idle timeout, legacy audio conversion), ExecutePipeline on the same
//! session machinery, and ValidatePipeline on the same validation path.

use std::{pin::Pin, sync::Arc, time::Duration};

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
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::{StreamExt, wrappers::ReceiverStream};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::{
    Error, Result,
    directory::Directory,
    session::{Admission, ClientEvent, Session, SessionLimits},
};

/// Service-wide settings.
#[derive(Clone, Debug)]
pub struct ServiceLimits {
    /// Sessions open at once; more get RESOURCE_EXHAUSTED.
    pub max_sessions: usize,
    /// How long a new stream may take to send its init.
    pub init_timeout: Duration,
    /// Per-session limits.
    pub session: SessionLimits,
}

impl Default for ServiceLimits {
    fn default() -> Self {
        Self {
            max_sessions: 10_000,
            init_timeout: Duration::from_secs(10),
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
    stop: CancellationToken,
}

impl PipelineService {
    /// A service discovering processors through `directory`; `stop` ends every session.
    pub fn new(directory: Arc<Directory>, limits: ServiceLimits, stop: CancellationToken) -> Self {
        Self {
            sessions: Arc::new(Semaphore::new(limits.max_sessions)),
            directory,
            limits: Arc::new(limits),
            stop,
        }
    }

    /// Sessions open right now.
    pub fn active_sessions(&self) -> usize {
        self.limits.max_sessions - self.sessions.available_permits()
    }

    /// Validates, opens and starts a session fed by `events`; returns its response stream.
    async fn start(
        &self,
        manifest: &Manifest,
        events: mpsc::Receiver<ClientEvent>,
    ) -> Result<ReceiverStream<std::result::Result<StreamPipelineResponse, tonic::Status>>> {
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
        let (out, responses) = mpsc::channel(64);
        let (session, ready) = Session::open(
            session_id,
            plan,
            self.directory.clone(),
            self.limits.session.clone(),
            out.clone(),
        )
        .instrument(span.clone())
        .await?;
        out.send(Ok(StreamPipelineResponse {
            response: Some(Response::Ready(ready)),
        }))
        .await
        .map_err(|_| Error::Cancelled)?;
        let stop = self.stop.clone();
        metrics::gauge!("flowplane_pipeline_sessions_active").increment(1.0);
        tokio::spawn(
            async move {
                let outcome = tokio::select! {
                    outcome = session.run(events) => outcome,
                    _ = stop.cancelled() => Err(Error::ShuttingDown),
                };
                let code = match outcome {
                    Ok(()) => tonic::Code::Ok,
                    Err(err) => {
                        let status = tonic::Status::from(err);
                        tracing::info!(code = ?status.code(), error = %status.message(), "session ended");
                        let code = status.code();
                        let _ = out.send(Err(status)).await;
                        code
                    }
                };
                metrics::counter!("flowplane_pipeline_sessions_total", "code" => flowplane_telemetry::rpc::code_name(code))
                    .increment(1);
                metrics::gauge!("flowplane_pipeline_sessions_active").decrement(1.0);
                drop(admission);
            }
            .instrument(span),
        );
        Ok(ReceiverStream::new(responses))
    }
}

type ResponseStream =
    Pin<Box<dyn Stream<Item = std::result::Result<StreamPipelineResponse, tonic::Status>> + Send>>;

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
        let (events_tx, events_rx) = mpsc::channel(64);
        let responses = self.start(&manifest, events_rx).await?;
        let limits = self.limits.session.clone();
        tokio::spawn(read_client(inbound, events_tx, limits, audio_input));
        Ok(tonic::Response::new(Box::pin(responses)))
    }

    async fn execute_pipeline(
        &self,
        request: tonic::Request<ExecutePipelineRequest>,
    ) -> std::result::Result<tonic::Response<ExecutePipelineResponse>, tonic::Status> {
        let request = request.into_inner();
        let manifest = Manifest::from_proto(&request.manifest.unwrap_or_default());
        let (events_tx, events_rx) = mpsc::channel(64);
        let mut responses = self.start(&manifest, events_rx).await?;
        // Feed every input, then CLOSE; the window still bounds what is in flight.
        let limits = self.limits.session.clone();
        tokio::spawn(async move {
            let windows = Windows::new(&limits);
            for chunk in request.inputs {
                let admission = windows.admit(&chunk).await;
                if events_tx
                    .send(ClientEvent::Chunk(chunk, Some(admission)))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            let _ = events_tx
                .send(ClientEvent::Control(ControlCommand::Close))
                .await;
        });
        let mut response = ExecutePipelineResponse::default();
        while let Some(message) = responses.next().await {
            match message?.response {
                Some(Response::Result(r)) => response.results.push(r),
                Some(Response::Error(e)) => response.errors.push(e),
                Some(Response::Closed(closed)) => response.metrics = closed.metrics,
                _ => {}
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

/// The count and byte semaphores of one session's admission window.
struct Windows {
    count: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
    byte_units: usize,
}

const BYTE_UNIT: usize = 1024;

impl Windows {
    fn new(limits: &SessionLimits) -> Self {
        let byte_units = (limits.window_bytes / BYTE_UNIT).max(1);
        Self {
            count: Arc::new(Semaphore::new(limits.window.max(1))),
            bytes: Arc::new(Semaphore::new(byte_units)),
            byte_units,
        }
    }

    /// Waits for room for `chunk`. A chunk larger than the whole byte window takes all of
    /// it, so it still runs, alone.
    async fn admit(&self, chunk: &DataChunk) -> Admission {
        let len = chunk.buffer.as_ref().map_or(0, |b| b.payload_len());
        let units = (len / BYTE_UNIT + 1).min(self.byte_units) as u32;
        let count = self
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
        Admission::new(count, bytes)
    }
}

/// Reads the client's stream into session events, holding each chunk until the window
/// has room (this is where backpressure reaches the client).
async fn read_client(
    mut inbound: tonic::Streaming<StreamPipelineRequest>,
    events: mpsc::Sender<ClientEvent>,
    limits: SessionLimits,
    audio_input: String,
) {
    let windows = Windows::new(&limits);
    loop {
        let next = tokio::select! {
            next = tokio::time::timeout(limits.idle_timeout, inbound.message()) => next,
            _ = events.closed() => return,
        };
        let event = match next {
            Err(_) => ClientEvent::Failed(Error::Timeout(format!(
                "session idle for {:?} (idle_timeout)",
                limits.idle_timeout
            ))),
            Ok(Err(status)) => ClientEvent::Failed(Error::Protocol(format!(
                "client stream failed: {}",
                status.message()
            ))),
            Ok(Ok(None)) => ClientEvent::Ended,
            Ok(Ok(Some(message))) => match message.request {
                Some(Request::Chunk(chunk)) => {
                    let admission = windows.admit(&chunk).await;
                    ClientEvent::Chunk(chunk, Some(admission))
                }
                #[allow(deprecated)]
                Some(Request::AudioChunk(legacy)) => {
                    let chunk = legacy_audio(legacy, &audio_input);
                    let admission = windows.admit(&chunk).await;
                    ClientEvent::Chunk(chunk, Some(admission))
                }
                Some(Request::Control(control)) => ClientEvent::Control(
                    ControlCommand::try_from(control.command)
                        .unwrap_or(ControlCommand::Unspecified),
                ),
                Some(Request::Init(_)) => {
                    ClientEvent::Failed(Error::Protocol("init sent twice".into()))
                }
                None => ClientEvent::Failed(Error::InvalidInput(
                    "request has no init, chunk, audio_chunk or control".into(),
                )),
            },
        };
        let last = matches!(event, ClientEvent::Ended | ClientEvent::Failed(_));
        if events.send(event).await.is_err() || last {
            return;
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
