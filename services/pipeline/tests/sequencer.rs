//! The sequencer with plain values: protocol rules, and properties over random
//! completion orders, failovers (replay) and fan-out/fan-in graphs. Whatever order
//! processors answer in, and however often a node is replayed, the client sees exactly
//! the results of a one-at-a-time run, in input order, each once.

use std::{collections::HashMap, sync::Arc};

use flowplane_manifest::{Manifest, Plan, validate};
use flowplane_pipeline::{
    Error,
    sequencer::{Action, Sequencer},
};
use flowplane_proto::{
    common::v1::ErrorDetail,
    data::v1::{DataBuffer, DataChunk, DataTypeHint as T, TextData, data_buffer::Payload},
    processor::v1::{PortSpec, ProcessOutput, ProcessResult, ProcessorCapability},
    streaming::v1::stream_pipeline_response::Response,
};
use rand::{Rng, SeedableRng, rngs::StdRng};

fn port(name: &str) -> PortSpec {
    PortSpec {
        name: name.into(),
        types: vec![T::Text as i32],
        description: String::new(),
    }
}

fn catalog() -> HashMap<String, ProcessorCapability> {
    let cap = |name: &str, inputs: &[&str], stateless: bool| ProcessorCapability {
        name: name.into(),
        inputs: inputs.iter().map(|p| port(p)).collect(),
        outputs: vec![port("out")],
        stateless,
        ..Default::default()
    };
    [
        cap("pass", &["in"], true),
        cap("mix", &["a", "b"], true),
        cap("stateful", &["in"], false),
    ]
    .into_iter()
    .map(|c| (c.name.clone(), c))
    .collect()
}

fn plan(yaml: &str) -> Arc<Plan> {
    Arc::new(validate(&Manifest::from_text(yaml).unwrap(), &catalog()).unwrap())
}

const CHAIN: &str = r#"
name: chain
nodes:
  - { id: a, processor: pass }
  - { id: b, processor: pass }
edges:
  - { from_node: a, to_node: b }
inputs:
  - { name: text, targets: [{ node: a }] }
outputs:
  - { name: out, source: { node: b } }
"#;

const FAN_OUT: &str = r#"
name: fan-out
nodes:
  - { id: split, processor: pass }
  - { id: x, processor: pass }
  - { id: y, processor: pass }
edges:
  - { from_node: split, to_node: x }
  - { from_node: split, to_node: y }
inputs:
  - { name: text, targets: [{ node: split }] }
outputs:
  - { name: from_x, source: { node: x } }
  - { name: from_y, source: { node: y } }
  - { name: raw, source: { node: split } }
"#;

const DIAMOND: &str = r#"
name: diamond
nodes:
  - { id: split, processor: pass }
  - { id: left, processor: pass }
  - { id: right, processor: pass }
  - { id: deep, processor: pass }
  - { id: mix, processor: mix }
edges:
  - { from_node: split, to_node: left }
  - { from_node: split, to_node: right }
  - { from_node: right, to_node: deep }
  - { from_node: left, to_node: mix, to_input: a }
  - { from_node: deep, to_node: mix, to_input: b }
inputs:
  - { name: text, targets: [{ node: split }] }
outputs:
  - { name: mixed, source: { node: mix } }
  - { name: side, source: { node: left } }
"#;

fn text(s: &str) -> Option<DataBuffer> {
    Some(DataBuffer {
        payload: Some(Payload::Text(TextData {
            text: s.into(),
            ..Default::default()
        })),
        metadata: Default::default(),
    })
}

fn text_of(buffer: &Option<DataBuffer>) -> String {
    match buffer.as_ref().and_then(|b| b.payload.as_ref()) {
        Some(Payload::Text(t)) => t.text.clone(),
        other => panic!("not text: {other:?}"),
    }
}

fn chunk(sequence: u64, body: &str) -> DataChunk {
    DataChunk {
        sequence,
        buffer: text(body),
        ..Default::default()
    }
}

/// What a fake processor at node `node` answers: its node id around the input, or an
/// error for inputs that say so.
fn answer(plan: &Plan, node: usize, chunk: &DataChunk) -> ProcessResult {
    let id = &plan.nodes[node].id;
    let body = text_of(&chunk.buffer);
    if body.contains(&format!("fail@{id}")) {
        return ProcessResult {
            input_sequence: chunk.sequence,
            outputs: vec![],
            error: Some(ErrorDetail {
                reason: "TEST".into(),
                message: format!("refused {body}"),
                code: tonic::Code::InvalidArgument as i32,
                ..Default::default()
            }),
        };
    }
    ProcessResult {
        input_sequence: chunk.sequence,
        outputs: vec![ProcessOutput {
            output: "out".into(),
            chunk: Some(DataChunk {
                sequence: chunk.sequence,
                buffer: text(&format!("{id}[{}:{body}]", chunk.input)),
                ..Default::default()
            }),
        }],
        error: None,
    }
}

/// What the client saw, rendered for comparison.
fn render(response: &Response) -> String {
    match response {
        Response::Result(r) => format!("{} {} {}", r.input_sequence, r.output, text_of(&r.buffer)),
        Response::Error(e) => format!("{:?} error {} {}", e.sequence, e.node_id, e.message),
        Response::Metrics(_) => "metrics".into(),
        other => format!("{other:?}"),
    }
}

/// Runs `inputs` through `yaml`'s plan with processors answering in an order chosen by
/// `rng` (None: always the first node with work, one chunk at a time), replaying a
/// random stateless node now and then. Returns what the client saw.
fn run(yaml: &str, inputs: &[&str], mut rng: Option<&mut StdRng>, failovers: bool) -> Vec<String> {
    let plan = plan(yaml);
    let mut seq: Sequencer<()> = Sequencer::new(plan.clone(), 0);
    let mut queues: Vec<std::collections::VecDeque<DataChunk>> =
        vec![Default::default(); plan.nodes.len()];
    let mut seen = Vec::new();
    let mut sent_to: Vec<Vec<u64>> = vec![Vec::new(); plan.nodes.len()];
    let absorb = |seq: &mut Sequencer<()>,
                  queues: &mut Vec<std::collections::VecDeque<DataChunk>>,
                  seen: &mut Vec<String>,
                  sent_to: &mut Vec<Vec<u64>>| {
        for action in seq.take_actions() {
            match action {
                Action::Send { node, chunk } => {
                    sent_to[node].push(chunk.sequence);
                    queues[node].push_back(chunk);
                }
                Action::Emit(response, _) => seen.push(render(&response)),
            }
        }
    };
    let mut next_input = 0;
    loop {
        let busy: Vec<usize> = (0..queues.len())
            .filter(|&n| !queues[n].is_empty())
            .collect();
        let feed = next_input < inputs.len();
        if busy.is_empty() && !feed {
            break;
        }
        let feed_now = match rng.as_deref_mut() {
            Some(rng) => feed && (busy.is_empty() || rng.random_bool(0.4)),
            None => feed && busy.is_empty(),
        };
        if feed_now {
            let sequence = 10 + 3 * next_input as u64;
            seq.chunk(chunk(sequence, inputs[next_input]), vec![()])
                .unwrap();
            next_input += 1;
        } else {
            let node = match rng.as_deref_mut() {
                Some(rng) => busy[rng.random_range(0..busy.len())],
                None => busy[0],
            };
            if failovers
                && let Some(rng) = rng.as_deref_mut()
                && rng.random_bool(0.1)
            {
                // The instance died: everything it had is replayed on a new one.
                queues[node] = seq.replay(node).into();
                assert_eq!(queues[node].len(), seq.unacked(node));
                continue;
            }
            let c = queues[node].pop_front().unwrap();
            let result = answer(&plan, node, &c);
            seq.result(node, result, vec![()]).unwrap();
        }
        absorb(&mut seq, &mut queues, &mut seen, &mut sent_to);
    }
    seq.close().unwrap();
    absorb(&mut seq, &mut queues, &mut seen, &mut sent_to);
    assert!(seq.is_done(), "every ticket delivered");
    assert_eq!(seq.in_flight(), 0);
    // A fan-in node sees its chunks in input order, whatever path each took.
    for (node, spec) in plan.nodes.iter().enumerate() {
        if spec.capability.inputs.len() > 1 {
            assert!(
                sent_to[node].is_sorted(),
                "fan-in {} got {:?}",
                spec.id,
                sent_to[node]
            );
        }
    }
    seen
}

fn inputs(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| match i % 7 {
            3 => format!("in{i} fail@left fail@a"),
            5 => format!("in{i} fail@deep fail@y"),
            _ => format!("in{i}"),
        })
        .collect()
}

#[test]
fn random_completion_orders_and_replays_never_change_what_the_client_sees() {
    let inputs = inputs(40);
    let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
    for yaml in [CHAIN, FAN_OUT, DIAMOND] {
        let reference = run(yaml, &inputs, None, false);
        assert!(!reference.is_empty());
        for seed in 0..150 {
            let mut rng = StdRng::seed_from_u64(seed);
            let seen = run(yaml, &inputs, Some(&mut rng), seed % 2 == 0);
            assert_eq!(seen, reference, "seed {seed} changed the output of {yaml}");
        }
    }
}

#[test]
fn results_come_in_input_order_each_once() {
    let inputs = inputs(20);
    let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
    let mut rng = StdRng::seed_from_u64(7);
    let seen = run(DIAMOND, &inputs, Some(&mut rng), true);
    let sequences: Vec<u64> = seen
        .iter()
        .map(|line| {
            let first = line.split(' ').next().unwrap();
            first
                .trim_start_matches("Some(")
                .trim_end_matches(')')
                .parse()
                .unwrap()
        })
        .collect();
    assert!(sequences.is_sorted(), "{sequences:?}");
    // Every input yields mixed + side, or errors where a node refused it.
    for i in 0..20u64 {
        let s = 10 + 3 * i;
        let n = sequences.iter().filter(|&&x| x == s).count();
        assert!(n >= 1, "input {s} produced nothing");
    }
    let mixed = seen.iter().filter(|l| l.contains(" mixed ")).count();
    // mix answers each of its two inputs; inputs refused by left (3) or deep (3) bring
    // one chunk fewer each.
    assert_eq!(mixed, 2 * 20 - 3 - 3, "{seen:#?}");
}

#[test]
fn sequences_must_strictly_increase() {
    let mut seq: Sequencer<()> = Sequencer::new(plan(CHAIN), 0);
    seq.chunk(chunk(5, "x"), vec![]).unwrap();
    let err = seq.chunk(chunk(5, "again"), vec![]).unwrap_err();
    assert!(matches!(err, Error::Sequence(_)), "{err:?}");
    assert!(err.to_string().contains("sequence 5"), "{err}");
    let err = seq.chunk(chunk(3, "back"), vec![]).unwrap_err();
    assert!(
        err.to_string().contains("previous chunk's sequence 5"),
        "{err}"
    );
    assert_eq!(
        tonic::Status::from(err).code(),
        tonic::Code::InvalidArgument
    );
}

#[test]
fn a_chunk_after_close_is_a_protocol_error_naming_its_sequence() {
    let mut seq: Sequencer<()> = Sequencer::new(plan(CHAIN), 0);
    seq.close().unwrap();
    let err = seq.chunk(chunk(1, "late"), vec![]).unwrap_err();
    assert!(
        err.to_string()
            .contains("chunk sequence 1 arrived after close"),
        "{err}"
    );
    assert_eq!(
        tonic::Status::from(err).code(),
        tonic::Code::FailedPrecondition
    );
    assert!(seq.close().is_err(), "close twice");
}

#[test]
fn wrong_or_extra_answers_fail_the_node_naming_sequences() {
    let p = plan(CHAIN);
    let mut seq: Sequencer<()> = Sequencer::new(p.clone(), 0);
    seq.chunk(chunk(4, "x"), vec![]).unwrap();
    let sent = seq.take_actions();
    let Action::Send { node: 0, chunk: c } = &sent[0] else {
        panic!("{sent:?}")
    };
    let mut wrong = answer(&p, 0, c);
    wrong.input_sequence = 9;
    let err = seq.result(0, wrong, vec![]).unwrap_err();
    assert!(
        err.to_string()
            .contains("answered sequence 9 but sequence 4 was next"),
        "{err}"
    );
    assert!(err.to_string().contains("\"a\""), "names the node: {err}");
    let extra = answer(&p, 1, c);
    let err = seq.result(1, extra, vec![]).unwrap_err();
    assert!(err.to_string().contains("no chunk outstanding"), "{err}");
}

#[test]
fn holds_are_released_when_the_ticket_is_delivered() {
    let p = plan(CHAIN);
    let mut seq: Sequencer<Arc<()>> = Sequencer::new(p.clone(), 0);
    let hold = Arc::new(());
    seq.chunk(chunk(1, "x"), vec![hold.clone()]).unwrap();
    assert_eq!(Arc::strong_count(&hold), 2, "held while in flight");
    let mut pending: Vec<(usize, DataChunk)> = Vec::new();
    let mut delivered = Vec::new();
    loop {
        for action in seq.take_actions() {
            match action {
                Action::Send { node, chunk } => pending.push((node, chunk)),
                Action::Emit(_, holds) => delivered.extend(holds),
            }
        }
        let Some((node, c)) = pending.pop() else {
            break;
        };
        seq.result(node, answer(&p, node, &c), vec![hold.clone()])
            .unwrap();
    }
    assert_eq!(
        delivered.len(),
        3,
        "the ticket's holds leave with its response"
    );
    drop(delivered);
    assert_eq!(
        Arc::strong_count(&hold),
        1,
        "released once the client has it"
    );
    assert_eq!(seq.last_delivered(), Some(1));
}

#[test]
fn flush_metrics_wait_for_every_earlier_input() {
    let p = plan(CHAIN);
    let mut seq: Sequencer<()> = Sequencer::new(p.clone(), 0);
    seq.chunk(chunk(1, "x"), vec![]).unwrap();
    seq.flush();
    let actions = seq.take_actions();
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a, Action::Emit(Response::Metrics(_), _))),
        "metrics before the result: {actions:?}"
    );
    let Action::Send { chunk: c, .. } = &actions[0] else {
        panic!()
    };
    seq.result(0, answer(&p, 0, c), vec![]).unwrap();
    let actions = seq.take_actions();
    let Action::Send { chunk: c, .. } = &actions[0] else {
        panic!()
    };
    seq.result(1, answer(&p, 1, c), vec![]).unwrap();
    let actions = seq.take_actions();
    assert!(
        matches!(actions.last(), Some(Action::Emit(Response::Metrics(_), _))),
        "{actions:?}"
    );
}
