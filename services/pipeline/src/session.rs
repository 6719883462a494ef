//! A pipeline session: the one task that owns a session's state. It admits client chunks,
//! routes every chunk along the plan's edges to node links, matches each processor result
//! to the input it answers, and releases results to the client strictly in input order.
//!
//! A node with several inputs (fan-in) sees its chunks in input order too, whatever path
//! each took: a chunk for it is held until no older input can still produce a chunk for
//! it, so a pipeline's output does not depend on which branch happened to be faster.
//!
//! Memory is bounded by the admission window: a client chunk is admitted only with a
//! permit (count and bytes) that is returned when every result of that chunk has been
//! handed to the client. Everything inside a session (node queues, buffered results,
//! replay copies) therefore stays within `window` chunks and `window_bytes` of payload
//! times the pipeline's fan-out. Nothing is ever dropped to make room: a full window stops
//! the reader, and HTTP/2 flow control slows the client.

use std::{
    collections::VecDeque,
    sync::Arc,
    time::{Duration, Instant},
};

use flowplane_manifest::{Destination, Plan};
use flowplane_proto::{
    any_accepts,
    common::v1::ErrorDetail,
    data::v1::{DataChunk, DataTypeHint},
    processor::v1::ProcessResult,
    streaming::v1::{
        ChunkResult, ControlCommand, NodeAssignment, SessionMetrics, StreamClosed,
        StreamPipelineResponse, StreamReady, stream_pipeline_response::Response,
    },
    type_set_name,
};
use tokio::sync::{OwnedSemaphorePermit, mpsc};

use crate::{
    Error, Result,
    directory::Directory,
    node::{NodeEvent, NodeLink, OpenError, is_instance_failure},
};

/// Per-session limits.
#[derive(Clone, Debug)]
pub struct SessionLimits {
    /// Input chunks in flight (admitted, results not yet all delivered).
    pub window: usize,
    /// Payload bytes in flight, in KiB units of the byte semaphore.
    pub window_bytes: usize,
    /// A session with no client message for this long ends with DEADLINE_EXCEEDED.
    pub idle_timeout: Duration,
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
            max_failovers: 3,
            chunk_span_every: 1000,
        }
    }
}

/// Permits that hold a chunk's place in the window until its results are delivered.
pub struct Admission {
    _count: OwnedSemaphorePermit,
    _bytes: OwnedSemaphorePermit,
}

impl Admission {
    /// Wraps the two permits.
    pub fn new(count: OwnedSemaphorePermit, bytes: OwnedSemaphorePermit) -> Self {
        Self {
            _count: count,
            _bytes: bytes,
        }
    }
}

/// What the client reader hands the session.
pub enum ClientEvent {
    /// A chunk (legacy audio already converted), with its window permits.
    Chunk(DataChunk, Option<Admission>),
    /// A control command.
    Control(ControlCommand),
    /// The client half-closed the request stream.
    Ended,
    /// The request stream failed or broke the protocol.
    Failed(Error),
}

/// Sender of responses to the client.
pub type Outbound = mpsc::Sender<std::result::Result<StreamPipelineResponse, tonic::Status>>;

type NodeTag = (usize, u64);

struct Pending {
    ticket: u64,
    sequence: u64,
    /// Kept only for stateless nodes, to replay on another instance after a failure.
    replay: Option<DataChunk>,
    sent_at: Instant,
}

struct NodeSlot {
    link: NodeLink,
    generation: u64,
    unacked: VecDeque<Pending>,
    failed_instances: Vec<String>,
    failovers: u32,
    stateless: bool,
    chunks: metrics::Counter,
    bytes: metrics::Counter,
    errors: metrics::Counter,
    latency: metrics::Histogram,
}

struct Ticket {
    sequence: u64,
    remaining: u32,
    /// Per fan-in node: deliveries of this ticket still pending at its ancestors.
    upstream: Vec<u32>,
    results: Vec<StreamPipelineResponse>,
    _admission: Option<Admission>,
    span: Option<(tracing::Span, Instant)>,
}

#[derive(Default)]
struct Stats {
    chunks_in: u64,
    results_out: u64,
    errors: u64,
    bytes_in: u64,
    bytes_out: u64,
    failovers: u64,
}

/// One running session.
pub struct Session {
    id: String,
    plan: Arc<Plan>,
    directory: Arc<Directory>,
    limits: SessionLimits,
    nodes: Vec<NodeSlot>,
    fan_in: FanIn,
    tickets: VecDeque<Ticket>,
    first_ticket: u64,
    next_ticket: u64,
    flush_marks: VecDeque<u64>,
    closing: bool,
    client_open: bool,
    last_delivered: Option<u64>,
    out: Outbound,
    node_tx: mpsc::UnboundedSender<(NodeTag, NodeEvent)>,
    node_rx: mpsc::UnboundedReceiver<(NodeTag, NodeEvent)>,
    stats: Stats,
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
        directory: Arc<Directory>,
        limits: SessionLimits,
        out: Outbound,
    ) -> Result<(Self, StreamReady)> {
        let (node_tx, node_rx) = mpsc::unbounded_channel();
        let opened = futures::future::join_all(
            (0..plan.nodes.len())
                .map(|i| open_node(&directory, &plan, i, &id, 0, Vec::new(), node_tx.clone())),
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
                ("node", node.id.clone()),
                ("processor", node.processor.clone()),
            ];
            nodes.push(NodeSlot {
                link,
                generation: 0,
                unacked: VecDeque::new(),
                failed_instances: failed,
                failovers: 0,
                stateless: node.capability.stateless,
                chunks: metrics::counter!("flowplane_pipeline_node_chunks_total", &labels),
                bytes: metrics::counter!("flowplane_pipeline_node_bytes_total", &labels),
                errors: metrics::counter!("flowplane_pipeline_node_errors_total", &labels),
                latency: metrics::histogram!("flowplane_pipeline_node_latency_seconds", &labels),
            });
        }
        let ready = StreamReady {
            session_id: id.clone(),
            nodes: assignments,
        };
        Ok((
            Self {
                id,
                fan_in: FanIn::new(&plan),
                plan,
                directory,
                limits,
                nodes,
                tickets: VecDeque::new(),
                first_ticket: 0,
                next_ticket: 0,
                flush_marks: VecDeque::new(),
                closing: false,
                client_open: true,
                last_delivered: None,
                out,
                node_tx,
                node_rx,
                stats: Stats::default(),
                started: Instant::now(),
                chunks_in: metrics::counter!("flowplane_pipeline_chunks_total"),
                bytes_in: metrics::counter!("flowplane_pipeline_bytes_total"),
            },
            ready,
        ))
    }

    /// Runs until the session closes (Ok, after `closed` was sent) or fails.
    pub async fn run(mut self, mut client: mpsc::Receiver<ClientEvent>) -> Result<()> {
        loop {
            tokio::select! {
                biased;
                Some((tag, event)) = self.node_rx.recv() => self.on_node(tag, event).await?,
                event = client.recv(), if self.client_open => match event {
                    Some(event) => self.on_client(event).await?,
                    None => self.on_client(ClientEvent::Ended).await?,
                },
            }
            if self.closing && self.tickets.is_empty() {
                let metrics = self.metrics();
                tracing::info!(
                    flowplane.session_id = %self.id,
                    chunks_in = metrics.chunks_in,
                    results_out = metrics.results_out,
                    errors = metrics.errors,
                    failovers = metrics.failovers,
                    "session closed"
                );
                self.send(Response::Closed(StreamClosed {
                    metrics: Some(metrics),
                }))
                .await?;
                return Ok(());
            }
        }
    }

    async fn on_client(&mut self, event: ClientEvent) -> Result<()> {
        match event {
            ClientEvent::Chunk(chunk, admission) => {
                if self.closing {
                    return Err(Error::Protocol(format!(
                        "chunk sequence {} arrived after close",
                        chunk.sequence
                    )));
                }
                self.admit(chunk, admission);
                self.drain().await
            }
            ClientEvent::Control(ControlCommand::Flush) => {
                self.flush_marks.push_back(self.next_ticket);
                self.drain().await
            }
            ClientEvent::Control(ControlCommand::Close) => {
                if self.closing {
                    return Err(Error::Protocol("close sent twice".into()));
                }
                self.closing = true;
                self.drain().await
            }
            ClientEvent::Control(ControlCommand::Cancel) => Err(Error::Cancelled),
            ClientEvent::Control(ControlCommand::Unspecified) => Err(Error::InvalidInput(
                "control.command must be FLUSH, CLOSE or CANCEL".into(),
            )),
            ClientEvent::Ended => {
                self.client_open = false;
                self.closing = true;
                self.drain().await
            }
            ClientEvent::Failed(err) => Err(err),
        }
    }

    /// Checks a client chunk and routes it to the nodes its input feeds.
    fn admit(&mut self, mut chunk: DataChunk, admission: Option<Admission>) {
        let ticket_id = self.next_ticket;
        self.next_ticket += 1;
        let bytes = chunk.buffer.as_ref().map_or(0, |b| b.payload_len());
        self.stats.chunks_in += 1;
        self.stats.bytes_in += bytes as u64;
        self.chunks_in.increment(1);
        self.bytes_in.increment(bytes as u64);
        let span = (self.limits.chunk_span_every > 0
            && ticket_id.is_multiple_of(self.limits.chunk_span_every))
        .then(|| {
            let payload = chunk
                .buffer
                .as_ref()
                .map_or(DataTypeHint::Unspecified, |b| b.type_hint());
            (
                tracing::info_span!(
                    "pipeline.chunk",
                    flowplane.sequence = chunk.sequence,
                    flowplane.payload_type = payload.short_name(),
                    flowplane.bytes = bytes,
                    latency_ms = tracing::field::Empty,
                ),
                Instant::now(),
            )
        });
        self.tickets.push_back(Ticket {
            sequence: chunk.sequence,
            remaining: 0,
            upstream: vec![0; self.fan_in.held.len()],
            results: Vec::new(),
            _admission: admission,
            span,
        });
        let plan = self.plan.clone();
        match check_input(&plan, &mut chunk, bytes) {
            Ok(destinations) => self.route(ticket_id, chunk, destinations),
            Err(detail) => self.push_error(ticket_id, detail),
        }
    }

    /// Sends `chunk` (with its input sequence) to every destination.
    fn route(&mut self, ticket_id: u64, chunk: DataChunk, destinations: &[Destination]) {
        let plan = self.plan.clone();
        let mut chunk = Some(chunk);
        let last = destinations.len().saturating_sub(1);
        for (i, destination) in destinations.iter().enumerate() {
            let mut c = if i == last {
                chunk.take().expect("the last destination takes the chunk")
            } else {
                chunk
                    .clone()
                    .expect("chunk kept until the last destination")
            };
            match destination {
                Destination::Node { node, port } => {
                    let target = &plan.nodes[*node];
                    let actual = c
                        .buffer
                        .as_ref()
                        .map_or(DataTypeHint::Unspecified, |b| b.type_hint());
                    if !any_accepts(target.input_types(port), actual) {
                        let detail = error_detail(
                            tonic::Code::InvalidArgument,
                            "TYPE_MISMATCH",
                            format!(
                                "chunk sequence {}: node {:?} input {:?} accepts {}, got {}",
                                c.sequence,
                                target.id,
                                port,
                                type_set_name(target.input_types(port)),
                                actual.short_name()
                            ),
                            &target.id,
                            c.sequence,
                            "chunk.buffer.payload",
                        );
                        self.push_error(ticket_id, detail);
                        continue;
                    }
                    c.input.clone_from(port);
                    let ticket = &mut self.tickets[(ticket_id - self.first_ticket) as usize];
                    ticket.remaining += 1;
                    for &f in &self.fan_in.feeds[*node] {
                        ticket.upstream[f] += 1;
                    }
                    match self.fan_in.index[*node] {
                        Some(f) => self.fan_in.held[f].entry(ticket_id).or_default().push(c),
                        None => self.dispatch(*node, ticket_id, c),
                    }
                }
                Destination::Output(name) => {
                    let result = Response::Result(ChunkResult {
                        input_sequence: c.sequence,
                        output: name.clone(),
                        buffer: c.buffer,
                    });
                    self.ticket(ticket_id).results.push(StreamPipelineResponse {
                        response: Some(result),
                    });
                }
            }
        }
    }

    /// Sends a chunk to a node's processor and remembers it until it is answered.
    fn dispatch(&mut self, node: usize, ticket_id: u64, chunk: DataChunk) {
        let slot = &mut self.nodes[node];
        let bytes = chunk.buffer.as_ref().map_or(0, |b| b.payload_len());
        slot.chunks.increment(1);
        slot.bytes.increment(bytes as u64);
        slot.unacked.push_back(Pending {
            ticket: ticket_id,
            sequence: chunk.sequence,
            replay: slot.stateless.then(|| chunk.clone()),
            sent_at: Instant::now(),
        });
        // A send to a dead stream is noticed by its reader, which reports the end; the
        // chunk stays unacked and is replayed or reported then.
        let _ = slot.link.send(chunk);
    }

    /// Sends held fan-in chunks whose turn has come: those of the oldest held ticket, once
    /// neither it nor any older ticket has work pending upstream of the fan-in node.
    fn release_fan_in(&mut self) {
        for f in 0..self.fan_in.held.len() {
            while let Some(entry) = self.fan_in.held[f].first_entry() {
                let ticket_id = *entry.key();
                let upto = (ticket_id - self.first_ticket) as usize;
                if self
                    .tickets
                    .iter()
                    .take(upto + 1)
                    .any(|t| t.upstream[f] > 0)
                {
                    break;
                }
                let mut chunks = entry.remove();
                chunks.sort_by(|a, b| a.input.cmp(&b.input));
                let node = self.fan_in.nodes[f];
                for chunk in chunks {
                    self.dispatch(node, ticket_id, chunk);
                }
            }
        }
    }

    fn ticket(&mut self, ticket_id: u64) -> &mut Ticket {
        let index = (ticket_id - self.first_ticket) as usize;
        &mut self.tickets[index]
    }

    fn push_error(&mut self, ticket_id: u64, detail: ErrorDetail) {
        self.ticket(ticket_id).results.push(StreamPipelineResponse {
            response: Some(Response::Error(detail)),
        });
    }

    async fn on_node(&mut self, (node, generation): NodeTag, event: NodeEvent) -> Result<()> {
        if self.nodes[node].generation != generation {
            return Ok(()); // a replaced link's last words
        }
        match event {
            NodeEvent::Result(result) => {
                self.on_result(node, result)?;
                self.drain().await
            }
            NodeEvent::Ended(status) => self.on_node_lost(node, status).await,
        }
    }

    fn on_result(&mut self, node: usize, result: ProcessResult) -> Result<()> {
        let plan = self.plan.clone();
        let spec = &plan.nodes[node];
        let slot = &mut self.nodes[node];
        let Some(pending) = slot.unacked.pop_front() else {
            return Err(self.node_failed(
                node,
                tonic::Code::Internal,
                format!(
                    "processor answered sequence {} with no chunk outstanding",
                    result.input_sequence
                ),
            ));
        };
        if pending.sequence != result.input_sequence {
            let expected = pending.sequence;
            return Err(self.node_failed(
                node,
                tonic::Code::Internal,
                format!(
                    "processor answered sequence {} but sequence {expected} was next",
                    result.input_sequence
                ),
            ));
        }
        slot.latency.record(pending.sent_at.elapsed().as_secs_f64());
        if let Some(mut error) = result.error {
            slot.errors.increment(1);
            if error.node_id.is_empty() {
                error.node_id.clone_from(&spec.id);
            }
            error.sequence = Some(pending.sequence);
            if !error.message.contains(&spec.id) {
                error.message =
                    format!("node {:?} ({}): {}", spec.id, spec.processor, error.message);
            }
            self.push_error(pending.ticket, error);
        } else {
            for output in result.outputs {
                let Some(mut chunk) = output.chunk else {
                    continue;
                };
                chunk.sequence = pending.sequence;
                match spec.routes.get(&output.output) {
                    Some(destinations) => self.route(pending.ticket, chunk, destinations),
                    // An output the manifest leaves unconnected is discarded by design.
                    None => metrics::counter!(
                        "flowplane_pipeline_unrouted_outputs_total",
                        "processor" => spec.processor.clone()
                    )
                    .increment(1),
                }
            }
        }
        let feeds = &self.fan_in.feeds[node];
        let ticket = &mut self.tickets[(pending.ticket - self.first_ticket) as usize];
        ticket.remaining -= 1;
        for &f in feeds {
            ticket.upstream[f] -= 1;
        }
        Ok(())
    }

    /// A node's stream ended: move it to another instance and replay what it had not
    /// answered, or end the session naming the node and the last delivered sequence.
    async fn on_node_lost(&mut self, node: usize, status: Option<tonic::Status>) -> Result<()> {
        let plan = self.plan.clone();
        let spec = &plan.nodes[node];
        let lost = self.nodes[node].link.instance.clone();
        let why = status.as_ref().map_or_else(
            || "stream closed by the processor".to_string(),
            |s| format!("{:?}: {}", s.code(), s.message()),
        );
        if let Some(status) = status.as_ref().filter(|s| !is_instance_failure(s)) {
            return Err(self.node_failed(node, status.code(), status.message().to_string()));
        }
        if !self.nodes[node].stateless {
            return Err(self.node_unavailable(
                node,
                format!(
                    "lost instance {} ({why}) and its processor is stateful",
                    lost.id
                ),
            ));
        }
        if self.nodes[node].failovers >= self.limits.max_failovers {
            return Err(self.node_unavailable(
                node,
                format!(
                    "lost instance {} ({why}) after {} failovers",
                    lost.id, self.limits.max_failovers
                ),
            ));
        }
        self.directory.forget_channel(&lost.endpoint);
        let slot = &mut self.nodes[node];
        slot.failed_instances.push(lost.id.clone());
        let generation = slot.generation + 1;
        let exclude = slot.failed_instances.clone();
        let opened = open_node(
            &self.directory,
            &plan,
            node,
            &self.id,
            generation,
            exclude,
            self.node_tx.clone(),
        )
        .await;
        let (link, failed) = match opened {
            Ok(opened) => opened,
            Err(Error::NodeUnavailable { message, .. }) => {
                return Err(self.node_unavailable(
                    node,
                    format!("lost instance {} ({why}); {message}", lost.id),
                ));
            }
            Err(other) => return Err(other),
        };
        tracing::warn!(
            flowplane.session_id = %self.id,
            flowplane.node_id = %spec.id,
            flowplane.processor = %spec.processor,
            from = %lost.id,
            to = %link.instance.id,
            replayed = self.nodes[node].unacked.len(),
            error = %why,
            "failover"
        );
        metrics::counter!("flowplane_pipeline_failovers_total", "processor" => spec.processor.clone())
            .increment(1);
        self.stats.failovers += 1;
        let slot = &mut self.nodes[node];
        slot.failed_instances = failed;
        slot.failovers += 1;
        slot.generation = generation;
        slot.link = link;
        for pending in &slot.unacked {
            if let Some(chunk) = &pending.replay {
                let _ = slot.link.send(chunk.clone());
            }
        }
        Ok(())
    }

    fn node_failed(&self, node: usize, code: tonic::Code, message: String) -> Error {
        let spec = &self.plan.nodes[node];
        let message = format!(
            "node {:?} (processor {}) failed: {message}; last sequence fully delivered: {}",
            spec.id,
            spec.processor,
            self.last_delivered_text()
        );
        Error::NodeFailed {
            code,
            detail: Box::new(self.node_detail(node, code, "NODE_FAILED", &message)),
            message,
        }
    }

    fn node_unavailable(&self, node: usize, why: String) -> Error {
        let spec = &self.plan.nodes[node];
        let message = format!(
            "node {:?} (processor {}) {why}; last sequence fully delivered: {}",
            spec.id,
            spec.processor,
            self.last_delivered_text()
        );
        Error::NodeUnavailable {
            detail: Box::new(self.node_detail(
                node,
                tonic::Code::Unavailable,
                "NODE_UNAVAILABLE",
                &message,
            )),
            message,
        }
    }

    fn node_detail(
        &self,
        node: usize,
        code: tonic::Code,
        reason: &str,
        message: &str,
    ) -> ErrorDetail {
        ErrorDetail {
            reason: reason.into(),
            message: message.into(),
            node_id: self.plan.nodes[node].id.clone(),
            sequence: self.last_delivered,
            field: String::new(),
            code: code as i32,
        }
    }

    fn last_delivered_text(&self) -> String {
        self.last_delivered
            .map_or_else(|| "none".to_string(), |s| s.to_string())
    }

    /// Hands the oldest tickets' results to the client, in input order, releasing each
    /// ticket's window permits once all its work is done. A ticket's results go out when
    /// the ticket is complete, ordered by the manifest's output order (errors last, by
    /// node), so a chunk's results never depend on which branch answered first.
    async fn drain(&mut self) -> Result<()> {
        if !self.fan_in.held.is_empty() {
            self.release_fan_in();
        }
        while self.tickets.front().is_some_and(|t| t.remaining == 0) {
            let mut ticket = self.tickets.pop_front().expect("front exists");
            if ticket.results.len() > 1 {
                let plan = &self.plan;
                ticket.results.sort_by_cached_key(|r| match &r.response {
                    Some(Response::Result(r)) => (plan.output_index(&r.output), String::new()),
                    Some(Response::Error(e)) => (usize::MAX, e.node_id.clone()),
                    _ => (usize::MAX, String::new()),
                });
            }
            for response in std::mem::take(&mut ticket.results) {
                self.send(response.response.expect("results carry a response"))
                    .await?;
            }
            self.first_ticket += 1;
            self.last_delivered = Some(ticket.sequence);
            if let Some((span, started)) = ticket.span {
                span.record("latency_ms", started.elapsed().as_secs_f64() * 1000.0);
            }
        }
        while self
            .flush_marks
            .front()
            .is_some_and(|&mark| self.first_ticket >= mark)
        {
            self.flush_marks.pop_front();
            let metrics = self.metrics();
            self.send(Response::Metrics(metrics)).await?;
        }
        Ok(())
    }

    async fn send(&mut self, response: Response) -> Result<()> {
        match &response {
            Response::Result(r) => {
                self.stats.results_out += 1;
                self.stats.bytes_out += r.buffer.as_ref().map_or(0, |b| b.payload_len()) as u64;
            }
            Response::Error(e) => {
                self.stats.errors += 1;
                let code = flowplane_telemetry::rpc::code_name(tonic::Code::from_i32(e.code));
                metrics::counter!("flowplane_pipeline_chunk_errors_total", "code" => code)
                    .increment(1);
            }
            _ => {}
        }
        self.out
            .send(Ok(StreamPipelineResponse {
                response: Some(response),
            }))
            .await
            .map_err(|_| Error::Cancelled)
    }

    fn metrics(&self) -> SessionMetrics {
        let elapsed = self.started.elapsed();
        SessionMetrics {
            chunks_in: self.stats.chunks_in,
            results_out: self.stats.results_out,
            errors: self.stats.errors,
            bytes_in: self.stats.bytes_in,
            bytes_out: self.stats.bytes_out,
            elapsed: Some(prost_types::Duration {
                seconds: elapsed.as_secs() as i64,
                nanos: elapsed.subsec_nanos() as i32,
            }),
            failovers: self.stats.failovers,
        }
    }
}

/// Which nodes take several inputs, and which nodes lie upstream of each of them.
struct FanIn {
    /// Node index -> its fan-in index, for nodes with more than one input.
    index: Vec<Option<usize>>,
    /// Fan-in index -> node index.
    nodes: Vec<usize>,
    /// Node index -> fan-in indexes of the fan-in nodes it is a (strict) ancestor of.
    feeds: Vec<Vec<usize>>,
    /// Fan-in index -> chunks waiting for their turn, by ticket.
    held: Vec<std::collections::BTreeMap<u64, Vec<DataChunk>>>,
}

impl FanIn {
    fn new(plan: &Plan) -> Self {
        let n = plan.nodes.len();
        let mut index = vec![None; n];
        let mut nodes = Vec::new();
        for (i, node) in plan.nodes.iter().enumerate() {
            if node.capability.inputs.len() > 1 {
                index[i] = Some(nodes.len());
                nodes.push(i);
            }
        }
        let children = |i: usize| {
            plan.nodes[i]
                .routes
                .values()
                .flatten()
                .filter_map(|d| match d {
                    Destination::Node { node, .. } => Some(*node),
                    Destination::Output(_) => None,
                })
        };
        // Plan nodes are in topological order, so descendants are found walking forward.
        let mut feeds = vec![Vec::new(); n];
        for (i, feed) in feeds.iter_mut().enumerate() {
            let mut reach = vec![false; n];
            let mut stack: Vec<usize> = children(i).collect();
            while let Some(j) = stack.pop() {
                if !std::mem::replace(&mut reach[j], true) {
                    stack.extend(children(j));
                }
            }
            *feed = (0..n)
                .filter(|&j| reach[j])
                .filter_map(|j| index[j])
                .collect();
        }
        Self {
            index,
            held: vec![Default::default(); nodes.len()],
            nodes,
            feeds,
        }
    }
}

/// Places node `index` on a live instance, trying others when one is unreachable.
/// Returns the link and the instances that failed on the way.
async fn open_node(
    directory: &Arc<Directory>,
    plan: &Plan,
    index: usize,
    session_id: &str,
    generation: u64,
    mut exclude: Vec<String>,
    events: mpsc::UnboundedSender<(NodeTag, NodeEvent)>,
) -> Result<(NodeLink, Vec<String>)> {
    let node = &plan.nodes[index];
    let mut last_error = None;
    loop {
        let Some(instance) = directory.pick(&node.processor, &exclude) else {
            let why = last_error.map_or_else(String::new, |s: tonic::Status| {
                format!(" (last error: {:?}: {})", s.code(), s.message())
            });
            let message = format!(
                "node {:?}: no live instance of processor {:?} could be reached{why}",
                node.id, node.processor
            );
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
        let endpoint = instance.endpoint.clone();
        match NodeLink::open(
            directory,
            instance,
            node,
            session_id,
            (index, generation),
            events.clone(),
        )
        .await
        {
            Ok(link) => return Ok((link, exclude)),
            Err(OpenError::Unreachable(status)) => {
                tracing::warn!(flowplane.node_id = %node.id, instance = %id, error = %status.message(), "instance unreachable, trying another");
                directory.forget_channel(&endpoint);
                exclude.push(id);
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

/// Checks a client chunk's payload, size and input; returns where it goes.
fn check_input<'p>(
    plan: &'p Plan,
    chunk: &mut DataChunk,
    bytes: usize,
) -> std::result::Result<&'p [Destination], ErrorDetail> {
    let sequence = chunk.sequence;
    let invalid = |reason: &str, field: &str, message: String| {
        error_detail(
            tonic::Code::InvalidArgument,
            reason,
            message,
            "",
            sequence,
            field,
        )
    };
    if chunk
        .buffer
        .as_ref()
        .and_then(|b| b.payload.as_ref())
        .is_none()
    {
        return Err(invalid(
            "MISSING_PAYLOAD",
            "chunk.buffer.payload",
            format!("chunk sequence {sequence} has no payload (chunk.buffer.payload)"),
        ));
    }
    if bytes > flowplane_grpc::MAX_PAYLOAD_BYTES {
        return Err(error_detail(
            tonic::Code::ResourceExhausted,
            "PAYLOAD_TOO_LARGE",
            format!(
                "chunk sequence {sequence} carries {bytes} bytes, over the limit of {} bytes per chunk (max_payload_bytes)",
                flowplane_grpc::MAX_PAYLOAD_BYTES
            ),
            "",
            sequence,
            "chunk.buffer.payload",
        ));
    }
    if chunk.input.is_empty() {
        match plan.default_input() {
            Some(only) => chunk.input = only.to_string(),
            None => {
                let names: Vec<&str> = plan.inputs.keys().map(String::as_str).collect();
                return Err(invalid(
                    "MISSING_INPUT",
                    "chunk.input",
                    format!(
                        "chunk sequence {sequence} names no input and the pipeline has several ({})",
                        names.join(", ")
                    ),
                ));
            }
        }
    }
    match plan.inputs.get(&chunk.input) {
        Some(destinations) => Ok(destinations),
        None => {
            let names: Vec<&str> = plan.inputs.keys().map(String::as_str).collect();
            Err(invalid(
                "UNKNOWN_INPUT",
                "chunk.input",
                format!(
                    "chunk sequence {sequence} names unknown input {:?} (pipeline inputs: {})",
                    chunk.input,
                    names.join(", ")
                ),
            ))
        }
    }
}

fn error_detail(
    code: tonic::Code,
    reason: &str,
    message: String,
    node_id: &str,
    sequence: u64,
    field: &str,
) -> ErrorDetail {
    ErrorDetail {
        reason: reason.into(),
        message,
        node_id: node_id.into(),
        sequence: Some(sequence),
        field: field.into(),
        code: code as i32,
    }
}
