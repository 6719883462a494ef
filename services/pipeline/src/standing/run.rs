//! One run of one standing pipeline under its claim: read the source with credits,
//! feed each record to a session of the pipeline's DAG (the same session engine a
//! client's stream gets: order, failover, deadlines), deliver every result to the
//! consumer of its output, retry and dead-letter within bounds, and commit each
//! partition's contiguous low watermark. Nothing is dropped quietly: a record leaves
//! the window only acknowledged, dead-lettered, or (when the dead-letter consumer
//! refuses it too) logged at error and counted.
//!
//! A run ends at the first failure of its source, a consumer stream or the session;
//! the caller starts a new one from the committed offsets, so every recovery is a
//! replay of at most the window, deduped downstream by lineage.

use std::{
    cmp::Reverse,
    collections::{BTreeMap, BinaryHeap, HashMap},
    sync::Arc,
    time::Duration,
};

use flowplane_manifest::Manifest;
use flowplane_proto::{
    common::v1::{ComponentKind, ErrorDetail},
    connect::v1::{
        AckOutcome, DeliverOpen, DeliverRequest, DeliverResponse, Delivery, Lineage, ReadAck,
        ReadCredit, ReadOpen, ReadRequest, ReadResponse, deliver_request, deliver_response,
        read_request, read_response,
    },
    controlplane::v1::{
        CommitPipelineRequest, ConnectorRef, PipelineStats, StandingPipeline, StandingPipelineSpec,
    },
    data::v1::{DataBuffer, DataChunk},
    streaming::v1::{ControlCommand, stream_pipeline_response::Response},
};
use futures::StreamExt;
use tokio::{sync::mpsc, time::Instant};
use tokio_stream::StreamMap;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use super::{
    RunnerSettings,
    connect::{ControlPlane, describe, open_consumer, open_source},
    offsets::Watermarks,
};
use crate::{
    directory::Directory,
    service::{PipelineService, SessionStream},
    session::{ClientEvent, Hold, channel_events},
};

/// What a run needs from its runner.
pub struct RunEnv {
    pub service: PipelineService,
    pub directory: Arc<Directory>,
    pub control: ControlPlane,
    pub settings: RunnerSettings,
}

/// Why a run stopped without failing.
#[derive(Debug, PartialEq, Eq)]
pub enum Stop {
    /// The pipeline was paused.
    Paused,
    /// The pipeline was deleted.
    Deleted,
    /// Another runner holds the claim now, or it could not be renewed in time.
    Lost(String),
    /// A new spec was applied: run again with it.
    Respec,
    /// A probe (one record at a time) got through the records that were in flight
    /// when runs kept failing: run normally again.
    Probed,
    /// The runner is shutting down.
    Shutdown,
}

/// How a run ended.
pub enum Outcome {
    Stopped(Stop),
    /// A failure the next run may not meet (a consumer down, a processor lost): the
    /// caller backs off and runs again from the committed offsets.
    Failed(ErrorDetail),
}

/// How a run differs from a normal one after runs kept failing at the same offsets.
#[derive(Clone, Debug, Default)]
pub struct RunMode {
    /// One record in flight at a time, until this many are committed: a record that
    /// makes the session fail is then the one in flight.
    pub probe: Option<u64>,
    /// A record that made the session fail alone: it is dead-lettered unprocessed.
    pub quarantine: Option<(u32, u64, ErrorDetail)>,
}

/// The reason of a run that failed because its session did (a node lost beyond failover).
pub const SESSION_FAILED: &str = "SESSION_FAILED";

/// The stream name a dead-letter consumer is opened with.
pub const DEAD_LETTER_OUTPUT: &str = "dead-letter";
const DEFAULT_MAX_ATTEMPTS: u32 = 5;
const DEFAULT_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
const DEFAULT_MAX_IN_FLIGHT: u32 = 256;
/// Index of the dead-letter consumer among the run's delivery streams.
const DLQ: usize = usize::MAX;

fn failure(reason: &str, code: tonic::Code, message: impl Into<String>) -> ErrorDetail {
    ErrorDetail {
        reason: reason.into(),
        message: message.into(),
        code: code as i32,
        ..Default::default()
    }
}

fn from_status(reason: &str, what: &str, status: &Status) -> ErrorDetail {
    ErrorDetail {
        reason: reason.into(),
        message: format!("{what}: {} ({:?})", status.message(), status.code()),
        code: status.code() as i32,
        ..Default::default()
    }
}

/// A consumer's acknowledgements, ending with an error when the stream ends: a
/// `StreamMap` forgets an ended stream without a word, and a consumer that went away
/// must fail the run rather than leave its deliveries waiting.
type AckStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<DeliverResponse, Status>> + Send>>;

fn ack_stream(rx: tonic::Streaming<DeliverResponse>) -> AckStream {
    Box::pin(rx.chain(futures::stream::once(async {
        Err(Status::unavailable("the consumer ended its stream"))
    })))
}

struct Record {
    partition: u32,
    offset: u64,
    /// The source's payload, kept for the dead-letter consumer if a node rejects it.
    input: DataBuffer,
    /// Deliveries sent or waiting for a retry.
    pending: u32,
    /// Results seen so far per output, for each result's `output_index`.
    outputs: HashMap<String, u32>,
}

struct Outgoing {
    consumer: usize,
    sequence: u64,
    delivery: Delivery,
    sent_at: Instant,
}

/// A commit sent and not yet answered, with what it carried.
struct Committing {
    sent_at: Instant,
    advanced: u64,
    answer: std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<StandingPipeline, Status>> + Send>,
    >,
    offsets: BTreeMap<u32, u64>,
    delta: Delta,
    last_error: Option<ErrorDetail>,
}

/// The answer of the commit under way (never ready when there is none).
async fn poll_commit(committing: &mut Option<Committing>) -> Result<StandingPipeline, Status> {
    match committing {
        Some(commit) => (&mut commit.answer).await,
        None => std::future::pending().await,
    }
}

struct ConsumerLink {
    component_id: String,
    tx: mpsc::UnboundedSender<DeliverRequest>,
}

#[derive(Default)]
struct Delta {
    read: u64,
    delivered: u64,
    retries: u64,
    dead_lettered: u64,
}

impl Delta {
    fn add(&mut self, other: &Delta) {
        self.read += other.read;
        self.delivered += other.delivered;
        self.retries += other.retries;
        self.dead_lettered += other.dead_lettered;
    }
}

struct Counters {
    read: metrics::Counter,
    delivered: metrics::Counter,
    retries: metrics::Counter,
    dead_lettered: metrics::Counter,
    dropped: metrics::Counter,
    lag: metrics::Gauge,
}

impl Counters {
    fn new(pipeline: &str) -> Self {
        let labels = [("pipeline", pipeline.to_string())];
        Self {
            read: metrics::counter!(super::RECORDS_READ, &labels),
            delivered: metrics::counter!(super::RESULTS_DELIVERED, &labels),
            retries: metrics::counter!(super::RETRIES, &labels),
            dead_lettered: metrics::counter!(super::DEAD_LETTERED, &labels),
            dropped: metrics::counter!(super::DEAD_LETTER_FAILED, &labels),
            lag: metrics::gauge!(super::CONSUMER_LAG, &labels),
        }
    }
}

/// Runs `pipeline` (as the claim returned it) until it stops or fails.
/// `claimed_at` is when the claim that returned `pipeline` was sent: the claim is this
/// run's for a ttl from then.
/// Besides the outcome, returns the records in flight when it failed.
pub async fn run(
    env: &RunEnv,
    pipeline: StandingPipeline,
    claimed_at: Instant,
    mode: &RunMode,
    stop: CancellationToken,
) -> (Outcome, Vec<(u32, u64)>) {
    let spec = pipeline.spec.clone().unwrap_or_default();
    let name = spec.name.clone();
    let epoch = pipeline.runner.as_ref().map_or(0, |r| r.epoch);
    let settings = &env.settings;
    // Opening (the session, the source, every consumer) may take longer than the claim
    // lives: the claim is renewed meanwhile, and a stop is heard.
    let mut claim_until = claimed_at + settings.claim_ttl;
    let opening = Run::open(env, &pipeline, spec);
    tokio::pin!(opening);
    let mut renew = tokio::time::interval(settings.claim_ttl / 3);
    renew.tick().await;
    let opened = loop {
        tokio::select! {
            () = stop.cancelled() => return (Outcome::Stopped(Stop::Shutdown), Vec::new()),
            opened = &mut opening => break opened,
            _ = renew.tick() => {
                let sent = Instant::now();
                let renewed = tokio::time::timeout(
                    commit_timeout(settings),
                    env.control.claim(&name, &settings.runner_id, settings.claim_ttl),
                )
                .await;
                match renewed {
                    Ok(Ok(p)) if p.runner.as_ref().is_some_and(|r| r.epoch == epoch) => {
                        claim_until = sent + settings.claim_ttl;
                    }
                    Ok(Ok(_)) => {
                        let lost = Stop::Lost("the claim lapsed while the run opened".into());
                        return (Outcome::Stopped(lost), Vec::new());
                    }
                    Ok(Err(status)) => {
                        let lost = Stop::Lost(status.message().to_string());
                        return (Outcome::Stopped(lost), Vec::new());
                    }
                    Err(_) if Instant::now() >= claim_until => {
                        let lost = Stop::Lost("the claim could not be renewed while the run opened".into());
                        return (Outcome::Stopped(lost), Vec::new());
                    }
                    Err(_) => {}
                }
            }
        }
    };
    let mut state = match opened {
        Ok(mut state) => {
            state.claim_until = claim_until;
            if let Some(records) = mode.probe {
                state.max_in_flight = 1;
                state.credit = 1;
                state.probe_until = Some(records);
            }
            state.quarantine = mode.quarantine.clone();
            state
        }
        Err(detail) => return (Outcome::Failed(detail), Vec::new()),
    };
    tracing::info!(
        flowplane.pipeline = %name,
        epoch,
        source = %state.source_id,
        offsets = ?state.marks.committed(),
        "standing pipeline running"
    );
    let outcome = state.serve(&stop).await;
    // What finished before the end is committed now, so the next run replays less.
    if matches!(
        outcome,
        Outcome::Failed(_) | Outcome::Stopped(Stop::Shutdown | Stop::Respec)
    ) {
        if let Outcome::Failed(detail) = &outcome {
            state.last_error = Some(detail.clone());
        }
        let _ = state.commit().await;
    }
    let in_flight = state
        .records
        .values()
        .map(|r| (r.partition, r.offset))
        .collect();
    (outcome, in_flight)
}

struct Run<'a> {
    env: &'a RunEnv,
    name: String,
    epoch: u64,
    generation: u64,
    source_input: String,
    source_id: String,
    max_in_flight: u32,
    max_attempts: u32,
    backoff: Duration,
    source_tx: mpsc::UnboundedSender<ReadRequest>,
    source_rx: tonic::Streaming<ReadResponse>,
    session: SessionStream,
    events: mpsc::Sender<ClientEvent>,
    consumers: Vec<ConsumerLink>,
    dead_letter: Option<ConsumerLink>,
    acks: StreamMap<usize, AckStream>,
    by_output: HashMap<String, usize>,
    records: BTreeMap<u64, Record>,
    next_sequence: u64,
    /// Every record up to this sequence has had all of its session responses.
    session_through: Option<u64>,
    /// Records up to here were checked for being finished when `session_through` moved.
    swept_through: Option<u64>,
    /// The mark of each FLUSH sent and not yet answered: the last sequence sent before it.
    flushes: std::collections::VecDeque<Option<u64>>,
    session_moved: bool,
    marks: Watermarks,
    /// The offsets of the last commit the control plane stored.
    last_committed: BTreeMap<u32, u64>,
    /// The commit under way, if any: one at a time, beside the loop's other work.
    committing: Option<Committing>,
    /// [`Watermarks::advanced`] as of the last commit stored.
    advanced_committed: u64,
    /// In a probe: stop once this many records are committed.
    probe_until: Option<u64>,
    /// A record to dead-letter unprocessed (see [`RunMode`]).
    quarantine: Option<(u32, u64, ErrorDetail)>,
    /// Credit granted to the source and not yet used. Credit comes back only when a
    /// record's offset is committed, so records read and not committed (what a restart
    /// replays) never exceed the window.
    credit: u64,
    sent: HashMap<u64, Outgoing>,
    parked: HashMap<u64, Outgoing>,
    retry_at: BinaryHeap<Reverse<(Instant, u64)>>,
    next_delivery: u64,
    delta: Delta,
    lag: u64,
    last_error: Option<ErrorDetail>,
    /// Until when the claim is surely this run's: the send time of the last renewal that
    /// the control plane accepted, plus the ttl. Past it another runner may hold the
    /// pipeline, so the run stops rather than deliver beside it.
    claim_until: Instant,
    counters: Counters,
}

impl<'a> Run<'a> {
    async fn open(
        env: &'a RunEnv,
        pipeline: &StandingPipeline,
        spec: StandingPipelineSpec,
    ) -> Result<Run<'a>, ErrorDetail> {
        let settings = &env.settings;
        let name = spec.name.clone();
        let delivery = spec.delivery.unwrap_or_default();
        let max_in_flight = match delivery.max_in_flight {
            0 => DEFAULT_MAX_IN_FLIGHT,
            n => n,
        };
        let manifest = spec.manifest.clone().unwrap_or_default();
        let source_input = if spec.source_input.is_empty() {
            match manifest.inputs.as_slice() {
                [only] => only.name.clone(),
                _ => {
                    return Err(failure(
                        "INVALID_SPEC",
                        tonic::Code::FailedPrecondition,
                        "source_input is empty and the manifest has not exactly one input",
                    ));
                }
            }
        } else {
            spec.source_input.clone()
        };
        let source_ref = spec.source.clone().unwrap_or_default();
        let offsets: HashMap<u32, u64> = pipeline.offsets.clone();

        // The session first: a DAG that cannot run now (a processor missing) is the
        // likeliest failure, and it needs no source stream to find out.
        let (events, events_rx) = mpsc::channel(max_in_flight as usize + 4);
        let session = env
            .service
            .start(&Manifest::from_proto(&manifest), channel_events(events_rx))
            .await
            .map_err(|err| {
                let status = Status::from(err);
                from_status(
                    "DAG_UNAVAILABLE",
                    "the pipeline's DAG cannot start",
                    &status,
                )
            })?;

        let (source, source_rx, source_id) = open_one(
            env,
            ComponentKind::Source,
            &source_ref,
            |id| ReadRequest {
                request: Some(read_request::Request::Open(ReadOpen {
                    pipeline: name.clone(),
                    start_offsets: offsets.clone(),
                    params: source_ref.params.clone(),
                    source_id: id.to_string(),
                })),
            },
            |directory, component, open| Box::pin(open_source(directory, component, open)),
            |message: &ReadResponse| {
                matches!(message.response, Some(read_response::Response::Opened(_)))
            },
            settings.open_timeout,
        )
        .await?;

        let mut consumers = Vec::new();
        let mut acks = StreamMap::new();
        let mut by_output = HashMap::new();
        for (i, binding) in spec.consumers.iter().enumerate() {
            let connector = binding.consumer.clone().unwrap_or_default();
            let (tx, rx, component_id) =
                open_delivery(env, &name, &binding.output, &connector).await?;
            by_output.insert(binding.output.clone(), i);
            consumers.push(ConsumerLink { component_id, tx });
            acks.insert(i, ack_stream(rx));
        }
        let dead_letter = match &spec.dead_letter {
            Some(connector) if connector.selector.is_some() => {
                let (tx, rx, component_id) =
                    open_delivery(env, &name, DEAD_LETTER_OUTPUT, connector).await?;
                acks.insert(DLQ, ack_stream(rx));
                Some(ConsumerLink { component_id, tx })
            }
            _ => None,
        };
        let backoff = delivery
            .retry_backoff
            .and_then(|d| Duration::try_from(d).ok())
            .filter(|d| !d.is_zero())
            .unwrap_or(DEFAULT_BACKOFF);
        let marks = Watermarks::new(&offsets);
        Ok(Run {
            env,
            epoch: pipeline.runner.as_ref().map_or(0, |r| r.epoch),
            generation: pipeline.generation,
            source_input,
            source_id,
            max_in_flight,
            max_attempts: match delivery.max_attempts {
                0 => DEFAULT_MAX_ATTEMPTS,
                n => n,
            },
            backoff,
            source_tx: source,
            source_rx,
            session,
            events,
            consumers,
            dead_letter,
            acks,
            by_output,
            records: BTreeMap::new(),
            next_sequence: 0,
            session_through: None,
            swept_through: None,
            flushes: std::collections::VecDeque::new(),
            session_moved: false,
            last_committed: marks.committed(),
            committing: None,
            advanced_committed: 0,
            probe_until: None,
            quarantine: None,
            marks,
            credit: u64::from(max_in_flight),
            sent: HashMap::new(),
            parked: HashMap::new(),
            retry_at: BinaryHeap::new(),
            next_delivery: 0,
            delta: Delta::default(),
            lag: 0,
            last_error: None,
            claim_until: Instant::now(),
            counters: Counters::new(&name),
            name,
        })
    }

    async fn serve(&mut self, stop: &CancellationToken) -> Outcome {
        let _ = self.source_tx.send(ReadRequest {
            request: Some(read_request::Request::Credit(ReadCredit {
                records: self.max_in_flight,
            })),
        });
        let mut tick = tokio::time::interval(self.env.settings.commit_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let retry = tokio::time::sleep(Duration::from_secs(3600));
        tokio::pin!(retry);
        let mut armed: Option<Instant> = None;
        loop {
            if let Some(&Reverse((due, _))) = self.retry_at.peek()
                && armed.is_none_or(|a| due < a)
            {
                retry.as_mut().reset(due);
                armed = Some(due);
            }
            let step = tokio::select! {
                biased;
                () = stop.cancelled() => Err(Outcome::Stopped(Stop::Shutdown)),
                held = self.session.next_held() => self.on_session(held),
                Some((index, message)) = self.acks.next() => self.on_ack(index, message),
                message = self.source_rx.message() => self.on_source(message),
                () = &mut retry, if armed.is_some() => {
                    armed = None;
                    self.resend_due();
                    Ok(())
                }
                answer = poll_commit(&mut self.committing), if self.committing.is_some() => {
                    match self.on_committed(answer) {
                        Some(stop) => Err(Outcome::Stopped(stop)),
                        None => Ok(()),
                    }
                }
                _ = tick.tick() => self.on_tick(),
            };
            if let Err(outcome) = step {
                return outcome;
            }
            self.commit_if_due();
        }
    }

    fn on_source(&mut self, message: Result<Option<ReadResponse>, Status>) -> Result<(), Outcome> {
        let message = match message {
            Ok(Some(message)) => message,
            Ok(None) => {
                return Err(Outcome::Failed(failure(
                    "SOURCE_LOST",
                    tonic::Code::Unavailable,
                    format!("source {} ended its stream", self.source_id),
                )));
            }
            Err(status) => {
                return Err(Outcome::Failed(from_status(
                    "SOURCE_LOST",
                    &format!("source {} stream failed", self.source_id),
                    &status,
                )));
            }
        };
        match message.response {
            Some(read_response::Response::Record(record)) => {
                if self.credit == 0 {
                    return Err(Outcome::Failed(failure(
                        "SOURCE_PROTOCOL",
                        tonic::Code::Internal,
                        format!(
                            "source {} sent partition {} offset {} without credit",
                            self.source_id, record.partition, record.offset
                        ),
                    )));
                }
                self.credit -= 1;
                if let Err(e) = self.marks.read(record.partition, record.offset) {
                    return Err(Outcome::Failed(failure(
                        "SOURCE_PROTOCOL",
                        tonic::Code::Internal,
                        format!(
                            "source {} sent partition {} offset {} where offset {} was next",
                            self.source_id, e.partition, e.got, e.expected
                        ),
                    )));
                }
                self.delta.read += 1;
                self.counters.read.increment(1);
                let sequence = self.next_sequence;
                self.next_sequence += 1;
                let input = record.buffer.unwrap_or_default();
                if let Some((_, _, cause)) = self
                    .quarantine
                    .as_ref()
                    .filter(|(p, o, _)| (*p, *o) == (record.partition, record.offset))
                {
                    // The session never sees it: its sequence is skipped, and the next
                    // response (or a flush) tells that everything before is through.
                    let detail = ErrorDetail {
                        reason: "POISON_RECORD".into(),
                        message: format!(
                            "partition {} offset {} was not processed: each run that processed it failed, the last alone: {}",
                            record.partition, record.offset, cause.message
                        ),
                        code: tonic::Code::Internal as i32,
                        ..cause.clone()
                    };
                    let lineage = Lineage {
                        pipeline: self.name.clone(),
                        source_id: self.source_id.clone(),
                        partition: record.partition,
                        offset: record.offset,
                        output: DEAD_LETTER_OUTPUT.into(),
                        output_index: 0,
                    };
                    self.records.insert(
                        sequence,
                        Record {
                            partition: record.partition,
                            offset: record.offset,
                            input: input.clone(),
                            pending: 0,
                            outputs: HashMap::new(),
                        },
                    );
                    self.dead_letter(sequence, lineage, input, detail);
                    return Ok(());
                }
                let chunk = DataChunk {
                    sequence,
                    input: self.source_input.clone(),
                    buffer: Some(input.clone()),
                    ..Default::default()
                };
                self.records.insert(
                    sequence,
                    Record {
                        partition: record.partition,
                        offset: record.offset,
                        input,
                        pending: 0,
                        outputs: HashMap::new(),
                    },
                );
                // Room is certain: the channel holds the whole window and more.
                self.events
                    .try_send(ClientEvent::Chunk(chunk, vec![Hold::Marker]))
                    .map_err(|_| {
                        Outcome::Failed(failure(
                            "SESSION_FAILED",
                            tonic::Code::Internal,
                            "the pipeline session stopped taking records",
                        ))
                    })?;
            }
            Some(read_response::Response::Pending(pending)) => {
                self.lag = pending.records.values().sum();
                self.counters.lag.set(self.lag as f64);
            }
            Some(read_response::Response::Opened(_)) | None => {}
        }
        Ok(())
    }

    fn on_session(
        &mut self,
        held: Option<Result<crate::service::Held, Status>>,
    ) -> Result<(), Outcome> {
        let (message, holds) = match held {
            Some(Ok(held)) => held,
            Some(Err(status)) => {
                return Err(Outcome::Failed(from_status(
                    "SESSION_FAILED",
                    "the pipeline session failed",
                    &status,
                )));
            }
            None => {
                return Err(Outcome::Failed(failure(
                    "SESSION_FAILED",
                    tonic::Code::Internal,
                    "the pipeline session ended",
                )));
            }
        };
        let last = !holds.is_empty();
        match message.response {
            Some(Response::Result(result)) => {
                let sequence = result.input_sequence;
                self.session_reached(sequence.checked_sub(1));
                let consumer = *self.by_output.get(&result.output).ok_or_else(|| {
                    Outcome::Failed(failure(
                        "INVALID_SPEC",
                        tonic::Code::FailedPrecondition,
                        format!("output {} has no consumer", result.output),
                    ))
                })?;
                let Some(record) = self.records.get_mut(&sequence) else {
                    return Err(Outcome::Failed(failure(
                        "SESSION_FAILED",
                        tonic::Code::Internal,
                        format!("the session answered sequence {sequence}, which is not in flight"),
                    )));
                };
                let index = record.outputs.entry(result.output.clone()).or_insert(0);
                let lineage = Lineage {
                    pipeline: self.name.clone(),
                    source_id: self.source_id.clone(),
                    partition: record.partition,
                    offset: record.offset,
                    output: result.output,
                    output_index: *index,
                };
                *index += 1;
                record.pending += 1;
                let buffer = result.buffer.unwrap_or_default();
                self.send(consumer, sequence, lineage, buffer, None);
                if last {
                    self.session_reached(Some(sequence));
                }
            }
            Some(Response::Error(error)) => {
                let Some(sequence) = error.sequence else {
                    tracing::warn!(flowplane.pipeline = %self.name, reason = %error.reason, error = %error.message, "session error without a sequence");
                    return Ok(());
                };
                self.session_reached(sequence.checked_sub(1));
                if let Some(record) = self.records.get_mut(&sequence) {
                    // A node rejected the record: it goes to the dead-letter consumer
                    // whole, with the node's error, and the rest flows on. Numbered, as
                    // two nodes of a fan-out may both reject it.
                    let index = record
                        .outputs
                        .entry(DEAD_LETTER_OUTPUT.to_string())
                        .or_insert(0);
                    let lineage = Lineage {
                        pipeline: self.name.clone(),
                        source_id: self.source_id.clone(),
                        partition: record.partition,
                        offset: record.offset,
                        output: DEAD_LETTER_OUTPUT.into(),
                        output_index: *index,
                    };
                    *index += 1;
                    let detail = ErrorDetail {
                        message: format!(
                            "partition {} offset {} rejected: {}",
                            record.partition, record.offset, error.message
                        ),
                        sequence: None,
                        ..error
                    };
                    let input = record.input.clone();
                    self.dead_letter(sequence, lineage, input, detail);
                }
                if last {
                    self.session_reached(Some(sequence));
                }
            }
            Some(Response::Metrics(_)) => {
                if let Some(through) = self.flushes.pop_front() {
                    self.session_reached(through);
                }
            }
            Some(Response::Closed(_)) => {
                return Err(Outcome::Failed(failure(
                    "SESSION_FAILED",
                    tonic::Code::Internal,
                    "the pipeline session closed",
                )));
            }
            Some(Response::Ready(ready)) => {
                tracing::debug!(flowplane.pipeline = %self.name, nodes = ?ready.nodes, "standing session ready");
            }
            None => {}
        }
        Ok(())
    }

    /// Every record up to `through` has had all its session responses.
    fn session_reached(&mut self, through: Option<u64>) {
        let Some(through) = through else { return };
        if self.session_through.is_some_and(|t| t >= through) {
            return;
        }
        self.session_through = Some(through);
        self.session_moved = true;
        let from = self.swept_through.map_or(0, |s| s + 1);
        let ready: Vec<u64> = self
            .records
            .range(from..=through)
            .filter(|(_, r)| r.pending == 0)
            .map(|(&s, _)| s)
            .collect();
        self.swept_through = Some(through);
        for sequence in ready {
            self.finish(sequence);
        }
    }

    /// One delivery of `sequence` is done: the record may be finished.
    fn settle(&mut self, sequence: u64) {
        let Some(record) = self.records.get_mut(&sequence) else {
            return;
        };
        record.pending = record.pending.saturating_sub(1);
        if record.pending == 0 && self.session_through.is_some_and(|t| sequence <= t) {
            self.finish(sequence);
        }
    }

    fn finish(&mut self, sequence: u64) {
        let Some(record) = self.records.remove(&sequence) else {
            return;
        };
        self.marks.finish(record.partition, record.offset);
    }

    fn link(&self, consumer: usize) -> Option<&ConsumerLink> {
        if consumer == DLQ {
            self.dead_letter.as_ref()
        } else {
            self.consumers.get(consumer)
        }
    }

    fn send(
        &mut self,
        consumer: usize,
        sequence: u64,
        lineage: Lineage,
        buffer: DataBuffer,
        error: Option<ErrorDetail>,
    ) {
        let delivery_id = self.next_delivery;
        self.next_delivery += 1;
        let delivery = Delivery {
            delivery_id,
            lineage: Some(lineage),
            buffer: Some(buffer),
            attempt: 1,
            error,
        };
        self.transmit(Outgoing {
            consumer,
            sequence,
            delivery,
            sent_at: Instant::now(),
        });
    }

    fn transmit(&mut self, mut out: Outgoing) {
        out.sent_at = Instant::now();
        if let Some(link) = self.link(out.consumer) {
            // A closed stream shows as its ack stream ending, which fails the run.
            let _ = link.tx.send(DeliverRequest {
                request: Some(deliver_request::Request::Delivery(out.delivery.clone())),
            });
        }
        self.sent.insert(out.delivery.delivery_id, out);
    }

    /// Sends the record (or result) to the dead-letter consumer (one more delivery the
    /// record waits for), or, with none configured, logs and counts it; either way the
    /// rest of the pipeline flows. A caller replacing a delivery settles that one.
    fn dead_letter(
        &mut self,
        sequence: u64,
        lineage: Lineage,
        buffer: DataBuffer,
        detail: ErrorDetail,
    ) {
        self.delta.dead_lettered += 1;
        self.counters.dead_lettered.increment(1);
        tracing::warn!(
            flowplane.pipeline = %self.name,
            partition = lineage.partition,
            offset = lineage.offset,
            output = %lineage.output,
            node = %detail.node_id,
            reason = %detail.reason,
            error = %detail.message,
            dead_letter = self.dead_letter.as_ref().map(|d| d.component_id.as_str()),
            "dead-lettered"
        );
        self.last_error = Some(detail.clone());
        if self.dead_letter.is_some() {
            if let Some(record) = self.records.get_mut(&sequence) {
                record.pending += 1;
            }
            self.send(DLQ, sequence, lineage, buffer, Some(detail));
        }
    }

    fn on_ack(
        &mut self,
        index: usize,
        message: Result<DeliverResponse, Status>,
    ) -> Result<(), Outcome> {
        let consumer = self
            .link(index)
            .map(|l| l.component_id.clone())
            .unwrap_or_default();
        let ack = match message {
            Ok(DeliverResponse {
                response: Some(deliver_response::Response::Ack(ack)),
            }) => ack,
            Ok(_) => return Ok(()),
            Err(status) => {
                return Err(Outcome::Failed(from_status(
                    "CONSUMER_LOST",
                    &format!("consumer {consumer} stream failed"),
                    &status,
                )));
            }
        };
        let Some(mut out) = self.sent.remove(&ack.delivery_id) else {
            return Err(Outcome::Failed(failure(
                "CONSUMER_PROTOCOL",
                tonic::Code::Internal,
                format!(
                    "consumer {consumer} acknowledged delivery {} that is not outstanding",
                    ack.delivery_id
                ),
            )));
        };
        if out.consumer != index {
            return Err(Outcome::Failed(failure(
                "CONSUMER_PROTOCOL",
                tonic::Code::Internal,
                format!(
                    "consumer {consumer} acknowledged delivery {}, which went to another stream",
                    ack.delivery_id
                ),
            )));
        }
        let lineage = out.delivery.lineage.clone().unwrap_or_default();
        let outcome = AckOutcome::try_from(ack.outcome).unwrap_or(AckOutcome::Retry);
        match (outcome, index == DLQ) {
            (AckOutcome::Success, dlq) => {
                if !dlq {
                    self.delta.delivered += 1;
                    self.counters.delivered.increment(1);
                }
                self.settle(out.sequence);
            }
            (AckOutcome::Retry | AckOutcome::Unspecified, dlq) => {
                if out.delivery.attempt >= self.max_attempts {
                    let detail = failure(
                        "RETRIES_EXHAUSTED",
                        tonic::Code::Unavailable,
                        format!(
                            "consumer {consumer} asked to retry partition {} offset {} output {} {} times: {}",
                            lineage.partition,
                            lineage.offset,
                            lineage.output,
                            out.delivery.attempt,
                            ack.message
                        ),
                    );
                    if dlq {
                        self.give_up(out, detail);
                    } else {
                        let buffer = out.delivery.buffer.take().unwrap_or_default();
                        self.dead_letter(out.sequence, lineage, buffer, detail);
                        // The dead letter replaces this delivery.
                        self.settle(out.sequence);
                    }
                } else {
                    self.delta.retries += 1;
                    self.counters.retries.increment(1);
                    let wait = self
                        .backoff
                        .saturating_mul(1 << (out.delivery.attempt - 1).min(16))
                        .min(MAX_BACKOFF);
                    out.delivery.attempt += 1;
                    let id = out.delivery.delivery_id;
                    self.retry_at.push(Reverse((Instant::now() + wait, id)));
                    self.parked.insert(id, out);
                }
            }
            (AckOutcome::Reject, false) => {
                let detail = failure(
                    "REJECTED",
                    tonic::Code::FailedPrecondition,
                    format!(
                        "consumer {consumer} rejected partition {} offset {} output {}: {}",
                        lineage.partition, lineage.offset, lineage.output, ack.message
                    ),
                );
                let buffer = out.delivery.buffer.take().unwrap_or_default();
                let sequence = out.sequence;
                self.dead_letter(sequence, lineage, buffer, detail);
                self.settle(sequence);
            }
            (AckOutcome::Reject, true) => {
                let detail = failure(
                    "DEAD_LETTER_REJECTED",
                    tonic::Code::FailedPrecondition,
                    format!(
                        "dead-letter consumer {consumer} rejected partition {} offset {}: {}",
                        lineage.partition, lineage.offset, ack.message
                    ),
                );
                self.give_up(out, detail);
            }
        }
        Ok(())
    }

    /// The dead-letter consumer did not take a record: it cannot go anywhere, so it is
    /// logged at error, counted and left behind rather than blocking the pipeline.
    fn give_up(&mut self, out: Outgoing, detail: ErrorDetail) {
        let lineage = out.delivery.lineage.unwrap_or_default();
        tracing::error!(
            flowplane.pipeline = %self.name,
            partition = lineage.partition,
            offset = lineage.offset,
            reason = %detail.reason,
            error = %detail.message,
            first_error = out.delivery.error.as_ref().map(|e| e.message.as_str()),
            "the dead-letter consumer did not take a record; it is counted in flowplane_standing_dead_letter_failed_total and not delivered"
        );
        self.counters.dropped.increment(1);
        self.last_error = Some(detail);
        self.settle(out.sequence);
    }

    fn resend_due(&mut self) {
        let now = Instant::now();
        while let Some(&Reverse((due, id))) = self.retry_at.peek() {
            if due > now {
                break;
            }
            self.retry_at.pop();
            if let Some(out) = self.parked.remove(&id) {
                self.transmit(out);
            }
        }
    }

    fn on_tick(&mut self) -> Result<(), Outcome> {
        let now = Instant::now();
        if now >= self.claim_until {
            return Err(Outcome::Stopped(Stop::Lost(format!(
                "the claim was not renewed within its ttl of {:?}",
                self.env.settings.claim_ttl
            ))));
        }
        let ack_timeout = self.env.settings.ack_timeout;
        if let Some(late) = self
            .sent
            .values()
            .filter(|o| now.duration_since(o.sent_at) > ack_timeout)
            .min_by_key(|o| o.sent_at)
        {
            let lineage = late.delivery.lineage.clone().unwrap_or_default();
            let consumer = self
                .link(late.consumer)
                .map(|l| l.component_id.clone())
                .unwrap_or_default();
            return Err(Outcome::Failed(failure(
                "CONSUMER_TIMEOUT",
                tonic::Code::DeadlineExceeded,
                format!(
                    "consumer {consumer} did not acknowledge partition {} offset {} output {} within {:?} (ack timeout)",
                    lineage.partition, lineage.offset, lineage.output, ack_timeout
                ),
            )));
        }
        // Records that produced no result at all are finished by a flush: its mark
        // comes back once the session has released everything sent before it.
        let last_sent = self.next_sequence.checked_sub(1);
        let unresolved = last_sent.is_some_and(|s| self.session_through.is_none_or(|t| t < s));
        if self.flushes.is_empty()
            && unresolved
            && !self.session_moved
            && self
                .events
                .try_send(ClientEvent::Control(ControlCommand::Flush))
                .is_ok()
        {
            self.flushes.push_back(last_sent);
        }
        self.session_moved = false;
        if self.committing.is_none() {
            self.start_commit();
        }
        Ok(())
    }

    /// Records finished under the watermark and not yet committed.
    fn uncommitted(&self) -> u64 {
        self.marks.advanced() - self.advanced_committed
    }

    /// Commits early when a quarter of the window waits for it: credit comes back only
    /// with a commit, so waiting for the timer would idle the source.
    fn commit_if_due(&mut self) {
        if self.committing.is_none()
            && self.uncommitted() >= u64::from((self.max_in_flight / 4).max(1))
        {
            self.start_commit();
        }
    }

    /// Sends a commit of the watermarks and counters (renewing the claim), to be
    /// answered in [`Run::on_committed`] while the loop goes on.
    fn start_commit(&mut self) {
        let offsets = self.marks.committed();
        let delta = std::mem::take(&mut self.delta);
        let last_error = self.last_error.take();
        let stats = PipelineStats {
            records_read: delta.read,
            results_delivered: delta.delivered,
            retries: delta.retries,
            dead_lettered: delta.dead_lettered,
            consumer_lag: self.lag,
            records_committed: moved(&self.last_committed, &offsets),
            last_error: last_error.clone(),
        };
        let request = CommitPipelineRequest {
            name: self.name.clone(),
            runner_id: self.env.settings.runner_id.clone(),
            epoch: self.epoch,
            offsets: offsets.clone().into_iter().collect(),
            stats: Some(stats),
            ttl: prost_types::Duration::try_from(self.env.settings.claim_ttl).ok(),
        };
        // One span per batch of records committed: the per-record path is in the session
        // span's sampled chunk spans and in the counters.
        let span = tracing::info_span!(
            "standing.commit",
            flowplane.pipeline = %self.name,
            records = moved(&self.last_committed, &offsets),
            in_flight = self.records.len()
        );
        let control = self.env.control.clone();
        let timeout = commit_timeout(&self.env.settings);
        let sent_at = Instant::now();
        let answer = Box::pin(async move {
            tokio::time::timeout(
                timeout,
                tracing::Instrument::instrument(control.commit(request), span),
            )
            .await
            .unwrap_or_else(|_| Err(Status::deadline_exceeded("commit timed out")))
        });
        self.committing = Some(Committing {
            sent_at,
            advanced: self.marks.advanced(),
            answer,
            offsets,
            delta,
            last_error,
        });
    }

    /// The control plane answered a commit; `Some` when the run must stop.
    fn on_committed(&mut self, answer: Result<StandingPipeline, Status>) -> Option<Stop> {
        let commit = self.committing.take()?;
        match answer {
            Ok(stored) => {
                self.claim_until = commit.sent_at + self.env.settings.claim_ttl;
                self.advanced_committed = commit.advanced;
                let records = moved(&self.last_committed, &commit.offsets);
                for (&partition, &next) in &commit.offsets {
                    if self.last_committed.get(&partition) != Some(&next) {
                        let _ = self.source_tx.send(ReadRequest {
                            request: Some(read_request::Request::Ack(ReadAck {
                                partition,
                                next_offset: next,
                            })),
                        });
                        metrics::gauge!(super::COMMITTED_OFFSET, "pipeline" => self.name.clone(), "partition" => partition.to_string())
                            .set(next as f64);
                    }
                }
                self.last_committed = commit.offsets;
                if records > 0 {
                    self.credit += records;
                    let _ = self.source_tx.send(ReadRequest {
                        request: Some(read_request::Request::Credit(ReadCredit {
                            records: u32::try_from(records).unwrap_or(u32::MAX),
                        })),
                    });
                }
                // A paused pipeline refuses commits (PIPELINE_PAUSED, below).
                if stored.generation != self.generation {
                    Some(Stop::Respec)
                } else if self
                    .probe_until
                    .is_some_and(|n| self.advanced_committed >= n)
                {
                    Some(Stop::Probed)
                } else {
                    None
                }
            }
            Err(status) => {
                // What the commit carried goes with the next one.
                self.delta.add(&commit.delta);
                if self.last_error.is_none() {
                    self.last_error = commit.last_error;
                }
                // Two writers racing on the stored record is not a lost claim: the next
                // commit tries again.
                let reason = flowplane_grpc::status::error_detail(&status).map(|d| d.reason);
                match (status.code(), reason.as_deref()) {
                    (tonic::Code::NotFound, _) => Some(Stop::Deleted),
                    (_, Some("PIPELINE_PAUSED")) => Some(Stop::Paused),
                    (tonic::Code::Aborted | tonic::Code::FailedPrecondition, reason)
                        if reason != Some("PIPELINE_CONFLICT") =>
                    {
                        Some(Stop::Lost(status.message().to_string()))
                    }
                    _ => {
                        tracing::warn!(flowplane.pipeline = %self.name, code = ?status.code(), error = %status.message(), "commit failed; trying again");
                        None
                    }
                }
            }
        }
    }

    /// The last commit of a run: waits for one under way, then commits what finished
    /// since. Bounded by the open timeout of each.
    async fn commit(&mut self) -> Option<Stop> {
        if let Some(commit) = self.committing.as_mut() {
            let answer = (&mut commit.answer).await;
            if let Some(stop) = self.on_committed(answer) {
                return Some(stop);
            }
        }
        self.start_commit();
        let commit = self.committing.as_mut().expect("just started");
        let answer = (&mut commit.answer).await;
        self.on_committed(answer)
    }
}

/// How long a commit may take: well within the claim's ttl, so that a run whose commits
/// hang learns it may have lost the claim before another runner can take it.
fn commit_timeout(settings: &RunnerSettings) -> Duration {
    settings.open_timeout.min(settings.claim_ttl / 2)
}

/// Records between two commits' offsets.
fn moved(from: &BTreeMap<u32, u64>, to: &BTreeMap<u32, u64>) -> u64 {
    to.iter()
        .map(|(p, &next)| next.saturating_sub(from.get(p).copied().unwrap_or(0)))
        .sum()
}

/// Opens a delivery stream to the consumer `connector` names, for `output`.
async fn open_delivery(
    env: &RunEnv,
    pipeline: &str,
    output: &str,
    connector: &ConnectorRef,
) -> Result<
    (
        mpsc::UnboundedSender<DeliverRequest>,
        tonic::Streaming<DeliverResponse>,
        String,
    ),
    ErrorDetail,
> {
    open_one(
        env,
        ComponentKind::Consumer,
        connector,
        |id| DeliverRequest {
            request: Some(deliver_request::Request::Open(DeliverOpen {
                pipeline: pipeline.to_string(),
                output: output.to_string(),
                params: connector.params.clone(),
                consumer_id: id.to_string(),
            })),
        },
        |directory, component, open| Box::pin(open_consumer(directory, component, open)),
        |message: &DeliverResponse| {
            matches!(
                message.response,
                Some(deliver_response::Response::Opened(_))
            )
        },
        env.settings.open_timeout,
    )
    .await
}

type Opening<'d, Req, Resp> = std::pin::Pin<
    Box<
        dyn std::future::Future<Output = Result<super::connect::Link<Req, Resp>, Status>>
            + Send
            + 'd,
    >,
>;

/// Resolves `connector` and opens a stream on the first live component that answers
/// `opened` in time, trying the next on failure; returns the stream and the component id.
#[allow(clippy::too_many_arguments)]
async fn open_one<'d, Req, Resp>(
    env: &'d RunEnv,
    kind: ComponentKind,
    connector: &ConnectorRef,
    open: impl Fn(&str) -> Req,
    connect: impl Fn(
        &'d Directory,
        flowplane_proto::controlplane::v1::Component,
        Req,
    ) -> Opening<'d, Req, Resp>,
    is_opened: impl Fn(&Resp) -> bool,
    timeout: Duration,
) -> Result<(mpsc::UnboundedSender<Req>, tonic::Streaming<Resp>, String), ErrorDetail> {
    let what = if kind == ComponentKind::Source {
        "source"
    } else {
        "consumer"
    };
    let reason = if kind == ComponentKind::Source {
        "SOURCE_UNAVAILABLE"
    } else {
        "CONSUMER_UNAVAILABLE"
    };
    let candidates = tokio::time::timeout(timeout, env.control.resolve(kind, connector))
        .await
        .unwrap_or_else(|_| {
            Err(Status::deadline_exceeded(
                "the registry did not answer in time",
            ))
        })
        .map_err(|status| {
            from_status(reason, &format!("{what} {}", describe(connector)), &status)
        })?;
    let mut last = None;
    for component in candidates {
        let id = component.id.clone();
        let attempt = async {
            let mut link = connect(env.directory.as_ref(), component, open(&id)).await?;
            match link.rx.message().await? {
                Some(message) if is_opened(&message) => Ok(link),
                Some(_) => Err(Status::internal("the first message was not opened")),
                None => Err(Status::unavailable("the stream ended before opened")),
            }
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(Ok(link)) => return Ok((link.tx, link.rx, id)),
            Ok(Err(status)) => {
                // A refusal of the open itself (bad params) is the spec's fault: the
                // next component would refuse it too.
                if matches!(
                    status.code(),
                    tonic::Code::InvalidArgument | tonic::Code::NotFound
                ) {
                    return Err(from_status(
                        "CONNECTOR_REFUSED",
                        &format!("{what} {id} refused the stream"),
                        &status,
                    ));
                }
                last = Some(from_status(reason, &format!("{what} {id}"), &status));
            }
            Err(_) => {
                last = Some(failure(
                    reason,
                    tonic::Code::DeadlineExceeded,
                    format!("{what} {id} did not open its stream within {timeout:?}"),
                ));
            }
        }
    }
    Err(last.unwrap_or_else(|| {
        failure(
            reason,
            tonic::Code::Unavailable,
            format!("no {what} {}", describe(connector)),
        )
    }))
}
