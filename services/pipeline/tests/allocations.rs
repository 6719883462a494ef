//! The sequencer's hot path allocates nothing per chunk beyond two names: the replay
//! copy a stateless node keeps of its input (its `input` string; the payload is
//! shared) and the output name on the result the client gets. Everything else (the
//! ticket, the node's queue entry, the actions, a ticket's single result) costs no
//! allocation once the session's queues have grown to their working size. Counted with a counting global allocator, around the
//! sequencer's calls only (the test's own messages are built outside the count).

mod common;

use std::alloc::System;

use bytes::Bytes;
use flowplane_pipeline::sequencer::{Action, Sequencer};
use flowplane_proto::{
    data::v1::{BinaryData, DataBuffer, DataChunk, data_buffer::Payload},
    processor::v1::{ProcessOutput, ProcessResult},
    streaming::v1::stream_pipeline_response::Response,
};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Runs `f`, counting the allocations made meanwhile (this test is the binary's only
/// one, so its thread is the only one allocating).
fn counted<T>(f: impl FnOnce() -> T) -> (T, u64) {
    let region = Region::new(GLOBAL);
    let out = f();
    let change = region.change();
    (out, (change.allocations + change.reallocations) as u64)
}

fn passthrough_plan() -> std::sync::Arc<flowplane_manifest::Plan> {
    common::plan_over_pass(
        r#"
name: one-hop
nodes: [{ id: a, processor: pass }]
inputs: [{ name: in, targets: [{ node: a }] }]
outputs: [{ name: out, source: { node: a } }]
"#,
    )
}

/// Streams `chunks` chunks through the sequencer with up to `window` in flight, the
/// node answering each with its own chunk; returns the allocations the sequencer made
/// and how many results reached the client.
fn stream(seq: &mut Sequencer<()>, first: u64, chunks: u64, window: usize) -> (u64, u64) {
    let payload = Bytes::from(vec![7u8; 100]);
    let mut actions = Vec::new();
    let mut in_flight: std::collections::VecDeque<(usize, DataChunk)> = Default::default();
    let (mut allocations, mut delivered) = (0, 0);
    let mut next = first;
    while delivered < chunks {
        if next < first + chunks && in_flight.len() < window {
            let chunk = DataChunk {
                sequence: next,
                input: "in".into(),
                buffer: Some(DataBuffer {
                    payload: Some(Payload::Binary(BinaryData {
                        data: payload.clone(),
                        mime_type: String::new(),
                    })),
                    metadata: Default::default(),
                }),
                ..Default::default()
            };
            next += 1;
            let holds = Vec::new();
            let (routed, n) = counted(|| {
                let routed = seq.chunk(chunk, holds);
                seq.take_actions_into(&mut actions);
                routed
            });
            routed.unwrap();
            allocations += n;
        } else {
            let (node, chunk) = in_flight.pop_front().expect("a chunk is in flight");
            let result = ProcessResult {
                input_sequence: chunk.sequence,
                outputs: vec![ProcessOutput {
                    output: "out".into(),
                    chunk: Some(chunk),
                }],
                error: None,
            };
            let (answered, n) = counted(|| {
                let answered = seq.result(node, result, std::iter::empty());
                seq.take_actions_into(&mut actions);
                answered
            });
            answered.unwrap();
            allocations += n;
        }
        for action in actions.drain(..) {
            match action {
                Action::Send { node, chunk } => in_flight.push_back((node, chunk)),
                Action::Emit(Response::Result(_), _) => delivered += 1,
                Action::Emit(other, _) => panic!("unexpected {other:?}"),
            }
        }
    }
    (allocations, delivered)
}

#[test]
fn a_chunk_through_the_sequencer_allocates_only_two_names() {
    const WINDOW: usize = 64;
    const CHUNKS: u64 = 2_000;
    let mut seq: Sequencer<()> = Sequencer::new(passthrough_plan(), 0);
    // Warm-up: the ticket and node queues grow to the window once.
    let (_, warmed) = stream(&mut seq, 0, 500, WINDOW);
    assert_eq!(warmed, 500);
    let (allocations, delivered) = stream(&mut seq, 500, CHUNKS, WINDOW);
    assert_eq!(delivered, CHUNKS, "every chunk's result reached the client");
    // Two allocations per chunk (the replay copy's input name, the result's output
    // name), and a few one-off growths of the queues.
    eprintln!("{allocations} allocations for {CHUNKS} chunks");
    assert!(
        allocations <= 2 * CHUNKS + 16,
        "{allocations} allocations for {CHUNKS} chunks: the hot path allocates more than two names per chunk"
    );
}
