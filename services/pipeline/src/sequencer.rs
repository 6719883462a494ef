//! The pure core of a session: tickets, routing along the plan's edges, fan-in release,
//! matching processor results to the inputs they answer, replay after a failover and
//! release of results to the client strictly in input order. Events go in, actions
//! come out; nothing here touches a channel, a clock deadline or tonic, so every rule
//! is testable with plain values (see the tests below and `tests/sequencer.rs`).
//!
//! A node with several inputs (fan-in) sees its chunks in input order too, whatever path
//! each took: a chunk for it is held until no older input can still produce a chunk for
//! it, so a pipeline's output does not depend on which branch happened to be faster.
//!
//! Every ticket carries "holds" of type `H` (window permits, memory charges): they leave
//! with the ticket's last response and are dropped once the client has taken it, which
//! is what returns the session's and the service's budgets.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::Arc,
    time::{Duration, Instant},
};

use flowplane_manifest::{Destination, Plan};
use flowplane_proto::{
    any_accepts,
    common::v1::ErrorDetail,
    data::v1::{DataChunk, DataTypeHint},
    processor::v1::ProcessResult,
    streaming::v1::{ChunkResult, SessionMetrics, stream_pipeline_response::Response},
    type_set_name,
};

use crate::{Error, Result};

/// What the shell must do after an event.
#[derive(Debug, PartialEq)]
pub enum Action<H> {
    /// Send `chunk` to the current instance of node `node`.
    Send { node: usize, chunk: DataChunk },
    /// Hand this response to the client (results, per-chunk errors, flush metrics),
    /// with the holds to release once the client has it (a ticket's holds go with its
    /// last response).
    Emit(Response, Vec<H>),
}

struct Pending {
    ticket: u64,
    sequence: u64,
    /// Kept only for stateless nodes, to replay on another instance after a failure.
    replay: Option<DataChunk>,
    sent_at: Instant,
}

struct NodeQueue {
    unacked: VecDeque<Pending>,
    stateless: bool,
}

struct Ticket<H> {
    sequence: u64,
    /// Deliveries to nodes not yet answered.
    remaining: u32,
    /// Per fan-in node: deliveries of this ticket still pending at its ancestors.
    upstream: Vec<u32>,
    /// Most tickets get one result: it is kept inline, with no allocation.
    results: smallvec::SmallVec<[Response; 1]>,
    _holds: Vec<H>,
    span: Option<(tracing::Span, Instant)>,
}

/// Counters reported in `SessionMetrics`.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub chunks_in: u64,
    pub results_out: u64,
    pub errors: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub failovers: u64,
}

/// Tickets, routes and ordered release for one session.
pub struct Sequencer<H> {
    plan: Arc<Plan>,
    nodes: Vec<NodeQueue>,
    fan_in: FanIn,
    tickets: VecDeque<Ticket<H>>,
    first_ticket: u64,
    next_ticket: u64,
    flush_marks: VecDeque<u64>,
    closing: bool,
    last_input: Option<u64>,
    last_delivered: Option<u64>,
    chunk_span_every: u64,
    stats: Stats,
    actions: Vec<Action<H>>,
}

impl<H> Sequencer<H> {
    /// A sequencer for `plan`; `chunk_span_every` traces one ticket in that many (0: none).
    pub fn new(plan: Arc<Plan>, chunk_span_every: u64) -> Self {
        Self {
            nodes: plan
                .nodes
                .iter()
                .map(|n| NodeQueue {
                    unacked: VecDeque::new(),
                    stateless: n.capability.stateless,
                })
                .collect(),
            fan_in: FanIn::new(&plan),
            plan,
            tickets: VecDeque::new(),
            first_ticket: 0,
            next_ticket: 0,
            flush_marks: VecDeque::new(),
            closing: false,
            last_input: None,
            last_delivered: None,
            chunk_span_every,
            stats: Stats::default(),
            actions: Vec::new(),
        }
    }

    /// The actions produced since the last call, in order.
    pub fn take_actions(&mut self) -> Vec<Action<H>> {
        let mut actions = Vec::new();
        self.take_actions_into(&mut actions);
        actions
    }

    /// [`Sequencer::take_actions`] into `into` (emptied first), which the sequencer
    /// keeps using in exchange: a caller that hands the emptied vector back each time
    /// costs no allocation per event.
    pub fn take_actions_into(&mut self, into: &mut Vec<Action<H>>) {
        into.clear();
        std::mem::swap(&mut self.actions, into);
        for action in into.iter() {
            if let Action::Emit(response, _) = action {
                self.count_out(response);
            }
        }
    }

    /// True once CLOSE (or the client's half-close) came and every result is out.
    pub fn is_done(&self) -> bool {
        self.closing && self.tickets.is_empty()
    }

    /// True once CLOSE came.
    pub fn is_closing(&self) -> bool {
        self.closing
    }

    /// Inputs admitted and not yet fully delivered.
    pub fn in_flight(&self) -> usize {
        self.tickets.len()
    }

    /// Chunks sent to `node` and not yet answered.
    pub fn unacked(&self, node: usize) -> usize {
        self.nodes[node].unacked.len()
    }

    /// The input sequence of the oldest chunk `node` has not answered.
    pub fn oldest_unacked(&self, node: usize) -> Option<u64> {
        self.nodes[node].unacked.front().map(|p| p.sequence)
    }

    /// Whether `node` may move to another instance (its processor keeps no state).
    pub fn stateless(&self, node: usize) -> bool {
        self.nodes[node].stateless
    }

    /// The last input sequence whose results have all been handed out.
    pub fn last_delivered(&self) -> Option<u64> {
        self.last_delivered
    }

    /// The session's counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Counts a failover in the session's metrics.
    pub fn count_failover(&mut self) {
        self.stats.failovers += 1;
    }

    /// A client chunk, with the holds that keep its place in the budgets. Fails when it
    /// breaks the protocol: after CLOSE, or a sequence that does not strictly increase.
    pub fn chunk(&mut self, mut chunk: DataChunk, holds: Vec<H>) -> Result<()> {
        let sequence = chunk.sequence;
        if self.closing {
            return Err(Error::Protocol(format!(
                "chunk sequence {sequence} arrived after close (chunk.sequence)"
            )));
        }
        if let Some(last) = self.last_input.filter(|&last| sequence <= last) {
            return Err(Error::Sequence(format!(
                "chunk sequence {sequence} is not greater than the previous chunk's sequence {last}: chunk.sequence must strictly increase within a session"
            )));
        }
        self.last_input = Some(sequence);
        let ticket_id = self.next_ticket;
        self.next_ticket += 1;
        let bytes = chunk.buffer.as_ref().map_or(0, |b| b.payload_len());
        self.stats.chunks_in += 1;
        self.stats.bytes_in += bytes as u64;
        let span = (self.chunk_span_every > 0 && ticket_id.is_multiple_of(self.chunk_span_every))
            .then(|| {
                let payload = chunk
                    .buffer
                    .as_ref()
                    .map_or(DataTypeHint::Unspecified, |b| b.type_hint());
                (
                    tracing::info_span!(
                        "pipeline.chunk",
                        flowplane.sequence = sequence,
                        flowplane.payload_type = payload.short_name(),
                        flowplane.bytes = bytes,
                        latency_ms = tracing::field::Empty,
                    ),
                    Instant::now(),
                )
            });
        self.tickets.push_back(Ticket {
            sequence,
            remaining: 0,
            upstream: vec![0; self.fan_in.held.len()],
            results: smallvec::SmallVec::new(),
            _holds: holds,
            span,
        });
        let plan = self.plan.clone();
        match check_input(&plan, &mut chunk, bytes) {
            Ok(destinations) => self.route(ticket_id, chunk, destinations),
            Err(detail) => self.push_error(ticket_id, detail),
        }
        self.drain();
        Ok(())
    }

    /// FLUSH: metrics go out once every input admitted so far is delivered.
    pub fn flush(&mut self) {
        self.flush_marks.push_back(self.next_ticket);
        self.drain();
    }

    /// CLOSE: no more chunks; the session is done once every result is out.
    pub fn close(&mut self) -> Result<()> {
        if self.closing {
            return Err(Error::Protocol("close sent twice".into()));
        }
        self.closing = true;
        self.drain();
        Ok(())
    }

    /// The client half-closed its stream: the same as CLOSE, sent or not.
    pub fn client_ended(&mut self) {
        self.closing = true;
        self.drain();
    }

    /// A processor result from `node`, with the holds charged for it. Returns how long
    /// the node took. Fails when the result answers nothing outstanding, or answers
    /// out of order: the processor broke the protocol.
    pub fn result(
        &mut self,
        node: usize,
        result: ProcessResult,
        holds: impl IntoIterator<Item = H>,
    ) -> Result<Duration> {
        let plan = self.plan.clone();
        let spec = &plan.nodes[node];
        let Some(expected) = self.nodes[node].unacked.front().map(|p| p.sequence) else {
            return Err(self.node_failed(
                node,
                tonic::Code::Internal,
                format!(
                    "processor answered sequence {} with no chunk outstanding",
                    result.input_sequence
                ),
            ));
        };
        if expected != result.input_sequence {
            return Err(self.node_failed(
                node,
                tonic::Code::Internal,
                format!(
                    "processor answered sequence {} but sequence {expected} was next",
                    result.input_sequence
                ),
            ));
        }
        let pending = self.nodes[node]
            .unacked
            .pop_front()
            .expect("front checked above");
        let index = (pending.ticket - self.first_ticket) as usize;
        self.tickets[index]._holds.extend(holds);
        if let Some(mut error) = result.error {
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
                        crate::instruments::UNROUTED_OUTPUTS_TOTAL,
                        "processor" => spec.processor.clone()
                    )
                    .increment(1),
                }
            }
        }
        let ticket = &mut self.tickets[index];
        ticket.remaining -= 1;
        for &f in &self.fan_in.feeds[node] {
            ticket.upstream[f] -= 1;
        }
        self.drain();
        Ok(pending.sent_at.elapsed())
    }

    /// After `node` moved to another instance: the chunks to send it again, oldest first.
    /// Only stateless nodes keep copies; the shell never fails over a stateful one.
    pub fn replay(&mut self, node: usize) -> Vec<DataChunk> {
        let now = Instant::now();
        self.nodes[node]
            .unacked
            .iter_mut()
            .filter_map(|p| {
                p.sent_at = now;
                p.replay.clone()
            })
            .collect()
    }

    /// The session's metrics now, `elapsed` after it started.
    pub fn metrics(&self, elapsed: Duration) -> SessionMetrics {
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

    /// The error that ends the session when `node`'s processor failed its stream.
    pub fn node_failed(&self, node: usize, code: tonic::Code, why: String) -> Error {
        let (message, detail) =
            self.node_error(node, code, "NODE_FAILED", format!("failed: {why}"));
        Error::NodeFailed {
            code,
            message,
            detail: Box::new(detail),
        }
    }

    /// The error that ends the session when `node` lost its instance for good.
    pub fn node_unavailable(&self, node: usize, why: String) -> Error {
        let (message, detail) =
            self.node_error(node, tonic::Code::Unavailable, "NODE_UNAVAILABLE", why);
        Error::NodeUnavailable {
            message,
            detail: Box::new(detail),
        }
    }

    /// The error that ends the session when `node` made no progress within the deadline;
    /// its detail names the sequence the node did not answer.
    pub fn node_timed_out(&self, node: usize, why: String) -> Error {
        let code = tonic::Code::DeadlineExceeded;
        let (message, mut detail) = self.node_error(node, code, "NODE_TIMEOUT", why);
        detail.sequence = self.oldest_unacked(node).or(self.last_delivered);
        Error::NodeFailed {
            code,
            message,
            detail: Box::new(detail),
        }
    }

    /// A node error's message (naming node, processor and the last sequence delivered)
    /// and its detail.
    fn node_error(
        &self,
        node: usize,
        code: tonic::Code,
        reason: &str,
        why: String,
    ) -> (String, ErrorDetail) {
        let spec = &self.plan.nodes[node];
        let message = format!(
            "node {:?} (processor {}) {why}; last sequence fully delivered: {}",
            spec.id,
            spec.processor,
            self.last_delivered_text()
        );
        let detail = ErrorDetail {
            reason: reason.into(),
            message: message.clone(),
            node_id: spec.id.clone(),
            sequence: self.last_delivered,
            field: String::new(),
            code: code as i32,
        };
        (message, detail)
    }

    fn last_delivered_text(&self) -> String {
        self.last_delivered
            .map_or_else(|| "none".to_string(), |s| s.to_string())
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
                    let index = (ticket_id - self.first_ticket) as usize;
                    let ticket = &mut self.tickets[index];
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
                    self.ticket(ticket_id).results.push(result);
                }
            }
        }
    }

    /// Sends a chunk to a node and remembers it until it is answered.
    fn dispatch(&mut self, node: usize, ticket_id: u64, chunk: DataChunk) {
        let queue = &mut self.nodes[node];
        queue.unacked.push_back(Pending {
            ticket: ticket_id,
            sequence: chunk.sequence,
            replay: queue.stateless.then(|| chunk.clone()),
            sent_at: Instant::now(),
        });
        self.actions.push(Action::Send { node, chunk });
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

    fn ticket(&mut self, ticket_id: u64) -> &mut Ticket<H> {
        let index = (ticket_id - self.first_ticket) as usize;
        &mut self.tickets[index]
    }

    fn push_error(&mut self, ticket_id: u64, detail: ErrorDetail) {
        self.ticket(ticket_id).results.push(Response::Error(detail));
    }

    /// Releases held fan-in chunks whose turn came, then hands the oldest complete
    /// tickets' results out in input order. A ticket's results are ordered by the
    /// manifest's output order (errors last, by node), so a chunk's results never depend
    /// on which branch answered first. A ticket's holds drop with it.
    fn drain(&mut self) {
        if !self.fan_in.held.is_empty() {
            self.release_fan_in();
        }
        while self.tickets.front().is_some_and(|t| t.remaining == 0) {
            let mut ticket = self.tickets.pop_front().expect("front exists");
            if ticket.results.len() > 1 {
                let plan = &self.plan;
                ticket.results.sort_by_cached_key(|r| match r {
                    Response::Result(r) => (plan.output_index(&r.output), String::new()),
                    Response::Error(e) => (usize::MAX, e.node_id.clone()),
                    _ => (usize::MAX, String::new()),
                });
            }
            let mut holds = std::mem::take(&mut ticket._holds);
            let last = ticket.results.len().saturating_sub(1);
            for (i, response) in ticket.results.drain(..).enumerate() {
                let holds = if i == last {
                    std::mem::take(&mut holds)
                } else {
                    Vec::new()
                };
                self.actions.push(Action::Emit(response, holds));
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
            // Metrics are stamped by the shell when it emits them.
            self.actions.push(Action::Emit(
                Response::Metrics(SessionMetrics::default()),
                Vec::new(),
            ));
        }
    }

    fn count_out(&mut self, response: &Response) {
        match response {
            Response::Result(r) => {
                self.stats.results_out += 1;
                self.stats.bytes_out += r.buffer.as_ref().map_or(0, |b| b.payload_len()) as u64;
            }
            Response::Error(_) => self.stats.errors += 1,
            _ => {}
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
    held: Vec<BTreeMap<u64, Vec<DataChunk>>>,
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
