//! A pipeline session's I/O shell: the one task that owns a session. It feeds client
//! and processor events to the [`Sequencer`] (which decides routing and order) and
//! carries out its actions, and it owns everything with a clock or a socket: node
//! links and failover, the per-node progress deadline, the client's read deadline and
//! disconnect detection. It must never wait without a deadline: every session ends
//! within a bounded time of its last progress, whatever its peers do.
//!
//! Memory is bounded twice: per session by the admission window (count and bytes of
//! input in flight), and across sessions by the service's [`Budget`], which every
//! client chunk and every processor result is charged to until its ticket is handed
//! to the client. Nothing is dropped to make room: readers stop and HTTP/2 flow control
//! slows the peer.

use std::{
    collections::VecDeque,
    pin::Pin,
    sync::Arc,
    time::{Duration, Instant},
};

use flowplane_manifest::{Placement, Plan};
use flowplane_proto::{
    common::v1::ErrorDetail,
    streaming::v1::{
        ControlCommand, NodeAssignment, StreamClosed, StreamPipelineResponse, StreamReady,
        stream_pipeline_response::Response,
    },
};
use futures::{Stream, StreamExt as _};
use tokio::sync::{OwnedSemaphorePermit, mpsc};

use crate::{
    Error, Result,
    budget::{Budget, Charge},
    directory::Directory,
    instruments,
    node::{NodeEvent, NodeLink, OpenError, is_instance_failure},
    queue,
    sequencer::{Action, Sequencer},
};

/// Per-session limits.
#[derive(Clone, Debug)]
pub struct SessionLimits {
    /// Input chunks in flight (admitted, results not yet all delivered).
    pub window: usize,
    /// Payload bytes in flight, in KiB units of the byte semaphore.
    pub window_bytes: usize,
    /// A session with no client message, or whose client reads no response, for this
    /// long ends with DEADLINE_EXCEEDED.
    pub idle_timeout: Duration,
    /// A node that sends no `ready` within this long of its init, or does not answer
    /// its oldest outstanding chunk within this long, fails over or fails the session.
    pub node_timeout: Duration,
    /// How long a client chunk may wait for room in the service's memory budget before
    /// the session ends with RESOURCE_EXHAUSTED.
    pub budget_timeout: Duration,
    /// How many times one node may move to another instance in one session.
    pub max_failovers: u32,
    /// Trace one chunk in every this many as its own span (0: none); the rest are
    /// aggregated into per-node metrics and the session span.
    pub chunk_span_every: u64,
}

impl Default for SessionLimits {
    fn default() -> Self {
        Self {
            window: 256,
            window_bytes: 32 * 1024 * 1024,
            idle_timeout: Duration::from_secs(300),
            node_timeout: Duration::from_secs(5),
            budget_timeout: Duration::from_secs(10),
            max_failovers: 3,
            chunk_span_every: 1000,
        }
    }
}

/// How long after its last result a closed session waits for the client's half-close
/// before it ends: a chunk that arrives in that time is FAILED_PRECONDITION, not lost.
const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// What a ticket holds until its results are handed out; dropping it gives the room back.
#[allow(dead_code, reason = "held only to be dropped")]
pub enum Hold {
    /// A place in the session's window (count, bytes).
    Window(OwnedSemaphorePermit, OwnedSemaphorePermit),
    /// Bytes in the service's memory budget.
    Memory(Charge),
    /// Told when the response stream takes the message that carries it; dropped unsent
    /// when the stream goes away with the message still queued.
    Delivered(Option<tokio::sync::oneshot::Sender<()>>),
    /// Holds nothing: a caller that reads responses with their holds (a standing
    /// pipeline's runner) learns from it which response is its chunk's last.
    Marker,
}

/// Tells every [`Hold::Delivered`] among `holds` that its message was taken.
pub fn mark_taken(holds: &mut [Hold]) {
    for hold in holds {
        if let Hold::Delivered(tx) = hold
            && let Some(tx) = tx.take()
        {
            let _ = tx.send(());
        }
    }
}

/// What the client's side hands the session.
pub enum ClientEvent {
    /// A chunk (legacy audio already converted), with what holds its place.
    Chunk(flowplane_proto::data::v1::DataChunk, Vec<Hold>),
    /// A control command.
    Control(ControlCommand),
    /// The client half-closed the request stream.
    Ended,
    /// The request stream failed or broke the protocol.
    Failed(Error),
}

/// The client's events, read by the session's own task when it polls them (no reader
/// task and no channel between a gRPC request stream and its session). Whatever waits
/// inside (admission to the window and the budget) keeps its place while the session
/// handles other events, and goes when the session drops the stream.
pub type ClientEvents = Pin<Box<dyn Stream<Item = ClientEvent> + Send>>;

/// Client events fed through a channel, by a caller that is not a gRPC request stream.
pub fn channel_events(events: mpsc::Receiver<ClientEvent>) -> ClientEvents {
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(events))
}

/// Client events read before the session opened, at most this many (chunks among them
/// hold window places, so the window bounds those; this bounds control messages too).
pub const EARLY_EVENTS: usize = 64;

/// Sender of responses to the client, each with the holds it releases once taken.
pub type Outbound = queue::Sender<(StreamPipelineResponse, Vec<Hold>)>;

struct NodeSlot {
    link: NodeLink,
    /// Registrations this node gave up on in this session.
    failed: Vec<String>,
    failovers: u32,
    /// When the oldest outstanding chunk must have been answered.
    deadline: Option<tokio::time::Instant>,
    chunks: metrics::Counter,
    bytes: metrics::Counter,
    errors: metrics::Counter,
    latency: metrics::Histogram,
}

/// Why a node is being moved to another instance.
enum Loss {
    /// The stream ended (None: closed cleanly by the processor).
    Ended(Option<tonic::Status>),
    /// No answer to `sequence` within the node timeout.
    Timeout { sequence: u64 },
}

/// Everything a session needs from the service.
#[derive(Clone)]
pub struct SessionContext {
    pub directory: Arc<Directory>,
    pub budget: Arc<Budget>,
    pub limits: SessionLimits,
    /// Sessions that have queued `closed` and wait for the client's stream to take it.
    pub awaiting_delivery: Arc<std::sync::atomic::AtomicUsize>,
}

/// One running session.
pub struct Session {
    id: String,
    plan: Arc<Plan>,
    cx: SessionContext,
    seq: Sequencer<Hold>,
    nodes: Vec<NodeSlot>,
    client_open: bool,
    out: Outbound,
    /// The node polled first next time, so one busy node cannot starve the others.
    turn: usize,
    /// Actions taken from the sequencer, kept for their capacity (see `carry_out`).
    actions: Vec<Action<Hold>>,
    started: Instant,
    chunks_in: metrics::Counter,
    bytes_in: metrics::Counter,
}

impl Session {
    /// Opens a Process stream for every node (concurrently) and returns the session and
    /// its `ready` message. Fails if a node cannot be placed on any live instance.
    pub async fn open(
        id: String,
        plan: Arc<Plan>,
        cx: SessionContext,
        out: Outbound,
    ) -> Result<(Self, StreamReady)> {
        let opened = futures::future::join_all(
            (0..plan.nodes.len()).map(|i| open_node(&cx, &plan, i, &id, Vec::new())),
        )
        .await;
        let mut nodes = Vec::with_capacity(opened.len());
        let mut assignments = Vec::with_capacity(opened.len());
        for (i, result) in opened.into_iter().enumerate() {
            let (link, failed) = result?;
            let node = &plan.nodes[i];
            assignments.push(NodeAssignment {
                node_id: node.id.clone(),
                processor: node.processor.clone(),
                instance_id: link.instance.id.clone(),
                endpoint: link.instance.endpoint.clone(),
            });
            let labels = [
                ("pipeline", instruments::pipeline_label(&plan.name)),
                ("node", instruments::node_label(&node.id)),
                ("processor", node.processor.clone()),
            ];
            nodes.push(NodeSlot {
                link,
                failed,
                failovers: 0,
                deadline: None,
                chunks: metrics::counter!(instruments::NODE_CHUNKS_TOTAL, &labels),
                bytes: metrics::counter!(instruments::NODE_BYTES_TOTAL, &labels),
                errors: metrics::counter!(instruments::NODE_ERRORS_TOTAL, &labels),
                latency: metrics::histogram!(instruments::NODE_LATENCY_SECONDS, &labels),
            });
        }
        let ready = StreamReady {
            session_id: id.clone(),
            nodes: assignments,
        };
        Ok((
            Self {
                id,
                seq: Sequencer::new(plan.clone(), cx.limits.chunk_span_every),
                plan,
                cx,
                nodes,
                client_open: true,
                out,
                turn: 0,
                actions: Vec::new(),
                started: Instant::now(),
                chunks_in: metrics::counter!(instruments::CHUNKS_TOTAL),
                bytes_in: metrics::counter!(instruments::BYTES_TOTAL),
            },
            ready,
        ))
    }

    /// Runs until the session closes (Ok, after `closed` was sent) or fails. On failure
    /// every node stream is reset at once, so nothing lingers behind the session.
    /// `early` are the client's events read while the nodes opened, handled first.
    pub async fn run(
        mut self,
        mut client: ClientEvents,
        early: VecDeque<ClientEvent>,
    ) -> Result<()> {
        let outcome = self.serve(&mut client, early).await;
        if outcome.is_err() {
            for slot in &mut self.nodes {
                slot.link.abort();
            }
        }
        outcome
    }

    async fn serve(
        &mut self,
        client: &mut ClientEvents,
        early: VecDeque<ClientEvent>,
    ) -> Result<()> {
        for event in early {
            self.on_client(event)?;
        }
        self.carry_out().await?;
        if self.seq.is_done() {
            return self.finish(client).await;
        }
        // Waits that last the whole session are made once, not per turn of the loop: a
        // timer or a waiter registered and dropped per chunk costs more than the chunk's
        // routing. The timer serves every node deadline; deadlines only move later as
        // answers come, so it is re-armed only when it fires early (at most once per
        // node timeout) or a new deadline is earlier than the one armed.
        let out = self.out.clone();
        let client_gone = out.closed();
        tokio::pin!(client_gone);
        let timer = tokio::time::sleep(self.cx.limits.node_timeout);
        tokio::pin!(timer);
        let mut armed: Option<tokio::time::Instant> = None;
        loop {
            let deadline = self.nodes.iter().filter_map(|n| n.deadline).min();
            if let Some(d) = deadline
                && armed.is_none_or(|a| d < a)
            {
                timer.as_mut().reset(d);
                armed = Some(d);
            }
            // Node streams are read here, on the session's task: no reader task and no
            // channel per node. While the memory budget is full they wait unread (HTTP/2
            // flow control then slows the processors) until room is freed.
            let budget = self.cx.budget.clone();
            let budget_full = budget.is_full();
            let (nodes, turn) = (&mut self.nodes, &mut self.turn);
            let node_event = std::future::poll_fn(|cx| poll_nodes(nodes, turn, &budget, cx));
            tokio::select! {
                biased;
                () = &mut client_gone => return Err(Error::Cancelled),
                (node, event) = node_event, if !budget_full => self.on_node(node, event).await?,
                () = budget.room(), if budget_full => {}
                event = client.next(), if self.client_open => {
                    self.on_client(event.unwrap_or(ClientEvent::Ended))?;
                }
                () = &mut timer, if armed.is_some() => {
                    armed = None;
                    self.on_deadline().await?;
                }
            }
            self.carry_out().await?;
            if self.seq.is_done() {
                return self.finish(client).await;
            }
        }
    }

    /// Sends `closed`, then waits briefly for the client's half-close so that a chunk
    /// sent after CLOSE is reported, not dropped.
    async fn finish(&mut self, client: &mut ClientEvents) -> Result<()> {
        let metrics = self.seq.metrics(self.started.elapsed());
        tracing::info!(
            flowplane.session_id = %self.id,
            chunks_in = metrics.chunks_in,
            results_out = metrics.results_out,
            errors = metrics.errors,
            failovers = metrics.failovers,
            "session closed"
        );
        // The session is OK only once the client's stream has taken `closed`: queued is
        // not delivered, and a client that resets now has not seen it.
        let (delivered_tx, delivered) = tokio::sync::oneshot::channel();
        self.send_held(
            Response::Closed(StreamClosed {
                metrics: Some(metrics),
            }),
            vec![Hold::Delivered(Some(delivered_tx))],
        )
        .await?;
        let awaiting = self.cx.awaiting_delivery.clone();
        awaiting.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let taken = tokio::time::timeout(self.cx.limits.idle_timeout, delivered).await;
        awaiting.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        match taken {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(Error::Cancelled),
            Err(_) => {
                return Err(Error::ClientStalled(format!(
                    "client did not read the session's last responses for {:?} (idle_timeout)",
                    self.cx.limits.idle_timeout
                )));
            }
        }
        if !self.client_open {
            return Ok(());
        }
        let linger = tokio::time::sleep(CLOSE_LINGER);
        tokio::pin!(linger);
        loop {
            tokio::select! {
                () = &mut linger => return Ok(()),
                () = self.out.closed() => return Ok(()),
                event = client.next() => match event {
                    None | Some(ClientEvent::Ended) => return Ok(()),
                    Some(ClientEvent::Chunk(chunk, _)) => {
                        return Err(Error::Protocol(format!(
                            "chunk sequence {} arrived after close (chunk.sequence)",
                            chunk.sequence
                        )));
                    }
                    Some(ClientEvent::Control(ControlCommand::Close)) => {
                        return Err(Error::Protocol("close sent twice".into()));
                    }
                    Some(ClientEvent::Control(ControlCommand::Cancel)) => return Err(Error::Cancelled),
                    Some(ClientEvent::Control(_)) => {}
                    Some(ClientEvent::Failed(err)) => return Err(err),
                },
            }
        }
    }

    fn on_client(&mut self, event: ClientEvent) -> Result<()> {
        match event {
            ClientEvent::Chunk(chunk, holds) => {
                let bytes = chunk.buffer.as_ref().map_or(0, |b| b.payload_len());
                self.chunks_in.increment(1);
                self.bytes_in.increment(bytes as u64);
                self.seq.chunk(chunk, holds)
            }
            ClientEvent::Control(ControlCommand::Flush) => {
                self.seq.flush();
                Ok(())
            }
            ClientEvent::Control(ControlCommand::Close) => self.seq.close(),
            ClientEvent::Control(ControlCommand::Cancel) => Err(Error::Cancelled),
            ClientEvent::Control(ControlCommand::Unspecified) => Err(Error::InvalidInput(
                "control.command must be FLUSH, CLOSE or CANCEL".into(),
            )),
            ClientEvent::Ended => {
                self.client_open = false;
                self.seq.client_ended();
                Ok(())
            }
            ClientEvent::Failed(err) => Err(err),
        }
    }

    async fn on_node(&mut self, node: usize, event: NodeEvent) -> Result<()> {
        match event {
            NodeEvent::Result(result, charge) => {
                let failed = result.error.is_some();
                let latency =
                    self.seq
                        .result(node, result, std::iter::once(Hold::Memory(charge)))?;
                let slot = &mut self.nodes[node];
                slot.latency.record(latency.as_secs_f64());
                if failed {
                    slot.errors.increment(1);
                }
                // Progress: the next outstanding chunk gets a fresh deadline.
                slot.deadline = None;
                Ok(())
            }
            NodeEvent::Ended(status) => self.fail_over(node, Loss::Ended(status)).await,
        }
    }

    async fn on_deadline(&mut self) -> Result<()> {
        let now = tokio::time::Instant::now();
        for node in 0..self.nodes.len() {
            if self.nodes[node].deadline.is_some_and(|d| d <= now) {
                let Some(sequence) = self.seq.oldest_unacked(node) else {
                    self.nodes[node].deadline = None;
                    continue;
                };
                if self.cx.budget.is_full() {
                    return Err(Error::LimitExceeded(format!(
                        "node {:?} could not deliver sequence {sequence} within {:?}: the service memory budget of {} bytes is in use (memory_budget)",
                        self.plan.nodes[node].id,
                        self.cx.limits.node_timeout,
                        self.cx.budget.limit()
                    )));
                }
                self.fail_over(node, Loss::Timeout { sequence }).await?;
            }
        }
        Ok(())
    }

    /// Carries out the sequencer's actions, then arms or clears each node's deadline.
    async fn carry_out(&mut self) -> Result<()> {
        // The vector goes back and forth between the sequencer and here, so an event
        // costs no allocation for its actions.
        let mut actions = std::mem::take(&mut self.actions);
        self.seq.take_actions_into(&mut actions);
        for action in actions.drain(..) {
            match action {
                Action::Send { node, chunk } => {
                    let slot = &mut self.nodes[node];
                    slot.chunks.increment(1);
                    slot.bytes
                        .increment(chunk.buffer.as_ref().map_or(0, |b| b.payload_len()) as u64);
                    // A send to a dead stream is noticed by its reader, which reports the
                    // end; the chunk stays unacked and is replayed or reported then.
                    let _ = slot.link.send(chunk);
                }
                Action::Emit(Response::Metrics(_), holds) => {
                    let metrics = self.seq.metrics(self.started.elapsed());
                    self.send_held(Response::Metrics(metrics), holds).await?;
                }
                Action::Emit(response, holds) => self.send_held(response, holds).await?,
            }
        }
        self.actions = actions;
        let now = tokio::time::Instant::now();
        for (node, slot) in self.nodes.iter_mut().enumerate() {
            if self.seq.unacked(node) == 0 {
                slot.deadline = None;
            } else if slot.deadline.is_none() {
                slot.deadline = Some(now + self.cx.limits.node_timeout);
            }
        }
        Ok(())
    }

    /// Moves `node` to another instance and replays what it had not answered, or ends
    /// the session naming the node, the instance and the sequence concerned.
    async fn fail_over(&mut self, node: usize, loss: Loss) -> Result<()> {
        let plan = self.plan.clone();
        let spec = &plan.nodes[node];
        let lost = self.nodes[node].link.instance.clone();
        let timeout = self.cx.limits.node_timeout;
        let why = match &loss {
            Loss::Ended(None) => format!("stream closed by the processor on instance {}", lost.id),
            Loss::Ended(Some(s)) => {
                format!("instance {}: {:?}: {}", lost.id, s.code(), s.message())
            }
            Loss::Timeout { sequence } => format!(
                "instance {} did not answer sequence {sequence} within {timeout:?} (node_timeout)",
                lost.id
            ),
        };
        if let Loss::Ended(Some(status)) = &loss
            && !is_instance_failure(status)
        {
            return Err(self.seq.node_failed(
                node,
                status.code(),
                format!("instance {}: {}", lost.id, status.message()),
            ));
        }
        let give_up = |seq: &Sequencer<Hold>, why: String| match &loss {
            Loss::Timeout { .. } => seq.node_timed_out(node, why),
            Loss::Ended(_) => seq.node_unavailable(node, why),
        };
        if !self.seq.stateless(node) {
            return Err(give_up(
                &self.seq,
                format!("lost its instance ({why}) and its processor is stateful"),
            ));
        }
        if self.nodes[node].failovers >= self.cx.limits.max_failovers {
            return Err(give_up(
                &self.seq,
                format!(
                    "lost its instance ({why}) after {} failovers",
                    self.cx.limits.max_failovers
                ),
            ));
        }
        if matches!(loss, Loss::Ended(_)) {
            self.cx.directory.forget_channel(&lost.endpoint);
        }
        let slot = &mut self.nodes[node];
        slot.link.abort();
        slot.failed.push(lost.registration.clone());
        let exclude = slot.failed.clone();
        let opened = open_node(&self.cx, &plan, node, &self.id, exclude).await;
        let (link, failed) = match opened {
            Ok(opened) => opened,
            Err(Error::NodeUnavailable { message, .. }) => {
                return Err(give_up(
                    &self.seq,
                    format!("lost its instance ({why}); {message}"),
                ));
            }
            Err(other) => return Err(other),
        };
        let replay = self.seq.replay(node);
        tracing::warn!(
            flowplane.session_id = %self.id,
            flowplane.node_id = %spec.id,
            flowplane.processor = %spec.processor,
            from = %lost.id,
            to = %link.instance.id,
            replayed = replay.len(),
            error = %why,
            "failover"
        );
        metrics::counter!(instruments::FAILOVERS_TOTAL, "processor" => spec.processor.clone())
            .increment(1);
        self.seq.count_failover();
        let slot = &mut self.nodes[node];
        slot.failed = failed;
        slot.failovers += 1;
        slot.link = link;
        slot.deadline = None;
        for chunk in replay {
            let _ = slot.link.send(chunk);
        }
        Ok(())
    }

    /// Hands one response, with what it holds, to the client; a client that reads
    /// nothing for the idle timeout ends the session, and one that went away cancels it.
    async fn send_held(&mut self, response: Response, holds: Vec<Hold>) -> Result<()> {
        if let Response::Error(e) = &response {
            let code = flowplane_telemetry::rpc::code_name(tonic::Code::from_i32(e.code));
            metrics::counter!(
                instruments::CHUNK_ERRORS_TOTAL,
                "code" => code,
                "reason" => instruments::reason_label(&e.reason)
            )
            .increment(1);
        }
        let message = StreamPipelineResponse {
            response: Some(response),
        };
        // Room in the queue: no wait, so no timer.
        let (message, holds) = match self.out.try_send((message, holds)) {
            Ok(()) => return Ok(()),
            Err(queue::TrySendError::Closed(_)) => return Err(Error::Cancelled),
            Err(queue::TrySendError::Full(held)) => held,
        };
        let sent = self.out.send((message, holds));
        match tokio::time::timeout(self.cx.limits.idle_timeout, sent).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Error::Cancelled),
            Err(_) => Err(Error::ClientStalled(format!(
                "client read no response for {:?} (idle_timeout)",
                self.cx.limits.idle_timeout
            ))),
        }
    }
}

/// The next event of any node's stream, starting the round at `turn`.
fn poll_nodes(
    nodes: &mut [NodeSlot],
    turn: &mut usize,
    budget: &Arc<Budget>,
    cx: &mut std::task::Context<'_>,
) -> std::task::Poll<(usize, NodeEvent)> {
    let n = nodes.len();
    for k in 0..n {
        let i = (*turn + k) % n;
        if let std::task::Poll::Ready(event) = nodes[i].link.poll_event(cx, budget) {
            *turn = (i + 1) % n;
            return std::task::Poll::Ready((i, event));
        }
    }
    std::task::Poll::Pending
}

/// Places node `index` on a live instance, trying others when one is unreachable.
/// Returns the link and the registrations that failed on the way.
async fn open_node(
    cx: &SessionContext,
    plan: &Plan,
    index: usize,
    session_id: &str,
    mut exclude: Vec<String>,
) -> Result<(NodeLink, Vec<String>)> {
    let node = &plan.nodes[index];
    let mut last_error = None;
    loop {
        let Some(instance) = cx
            .directory
            .place(&node.processor, node.placement, &exclude)
        else {
            let why = last_error.map_or_else(String::new, |s: tonic::Status| {
                format!(" (last error: {:?}: {})", s.code(), s.message())
            });
            let message = match node.placement {
                Placement::Local => format!(
                    "node {:?}: placement local, and the in-process host cannot run processor {:?}{why}",
                    node.id, node.processor
                ),
                _ => format!(
                    "node {:?}: no live instance of processor {:?} could be reached{why}",
                    node.id, node.processor
                ),
            };
            return Err(Error::NodeUnavailable {
                detail: Box::new(ErrorDetail {
                    reason: "NODE_UNAVAILABLE".into(),
                    message: message.clone(),
                    node_id: node.id.clone(),
                    code: tonic::Code::Unavailable as i32,
                    ..Default::default()
                }),
                message,
            });
        };
        let id = instance.id.clone();
        let registration = instance.registration.clone();
        let endpoint = instance.endpoint.clone();
        match NodeLink::open(
            &cx.directory,
            instance,
            node,
            session_id,
            cx.limits.node_timeout,
        )
        .await
        {
            Ok(link) => return Ok((link, exclude)),
            Err(OpenError::Unreachable(status)) => {
                tracing::warn!(flowplane.node_id = %node.id, instance = %id, error = %status.message(), "instance unreachable, trying another");
                if status.code() != tonic::Code::DeadlineExceeded {
                    cx.directory.forget_channel(&endpoint);
                }
                exclude.push(registration);
                last_error = Some(status);
            }
            Err(OpenError::Refused(status)) => {
                let message = format!(
                    "node {:?} (processor {}) refused init on instance {id}: {}",
                    node.id,
                    node.processor,
                    status.message()
                );
                return Err(Error::NodeFailed {
                    code: status.code(),
                    detail: Box::new(ErrorDetail {
                        reason: "NODE_INIT_REFUSED".into(),
                        message: message.clone(),
                        node_id: node.id.clone(),
                        code: status.code() as i32,
                        ..Default::default()
                    }),
                    message,
                });
            }
        }
    }
}
