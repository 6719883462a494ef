//! A payload is never copied between arriving at the pipeline and leaving it: the
//! sequencer hands the same bytes to a node and from a node's result to the client,
//! and the embedded (co-located) host gives a passthrough's output the input's own
//! bytes. Checked by address: the buffer that comes out is the buffer that went in.
//! (The two copies that remain are tonic's, at the edges of a gRPC hop: into its decode
//! buffer and into its encode buffer.)

mod common;

use bytes::Bytes;
use flowplane_pipeline::sequencer::{Action, Sequencer};
use flowplane_proto::{
    data::v1::{BinaryData, DataBuffer, DataChunk, data_buffer::Payload},
    processor::v1::{
        ProcessInit, ProcessOutput, ProcessRequest, ProcessResult, process_request,
        process_response,
    },
    streaming::v1::stream_pipeline_response::Response,
};
use tokio_stream::StreamExt as _;

const CHUNK: usize = 64 * 1024;

fn payload() -> Bytes {
    Bytes::from((0..CHUNK).map(|i| (i % 251) as u8).collect::<Vec<u8>>())
}

fn binary(data: Bytes) -> Option<DataBuffer> {
    Some(DataBuffer {
        payload: Some(Payload::Binary(BinaryData {
            data,
            mime_type: String::new(),
        })),
        metadata: Default::default(),
    })
}

fn bytes_of(buffer: &Option<DataBuffer>) -> &Bytes {
    match buffer.as_ref().and_then(|b| b.payload.as_ref()) {
        Some(Payload::Binary(b)) => &b.data,
        other => panic!("not binary: {other:?}"),
    }
}

#[test]
fn the_sequencer_routes_a_payload_to_each_node_and_to_the_client_without_copying_it() {
    let plan = common::plan_over_pass(
        r#"
name: two-hops
nodes:
  - { id: a, processor: pass }
  - { id: b, processor: pass }
edges: [{ from_node: a, to_node: b }]
inputs: [{ name: in, targets: [{ node: a }] }]
outputs: [{ name: out, source: { node: b } }]
"#,
    );
    let mut seq: Sequencer<()> = Sequencer::new(plan, 0);
    let data = payload();
    seq.chunk(
        DataChunk {
            sequence: 0,
            buffer: binary(data.clone()),
            ..Default::default()
        },
        Vec::new(),
    )
    .unwrap();
    let mut hops = 0;
    loop {
        let actions = seq.take_actions();
        let Some(action) = actions.into_iter().next() else {
            panic!("the sequencer stopped before a result");
        };
        match action {
            Action::Send { node, chunk } => {
                let sent = bytes_of(&chunk.buffer);
                assert_eq!(sent.as_ptr(), data.as_ptr(), "node {node} got a copy");
                hops += 1;
                // A passthrough answers with the very bytes it was given.
                let result = ProcessResult {
                    input_sequence: chunk.sequence,
                    outputs: vec![ProcessOutput {
                        output: "out".into(),
                        chunk: Some(chunk.clone()),
                    }],
                    error: None,
                };
                seq.result(node, result, Vec::new()).unwrap();
            }
            Action::Emit(Response::Result(result), _) => {
                let out = bytes_of(&result.buffer);
                assert_eq!(out.as_ptr(), data.as_ptr(), "the client got a copy");
                assert_eq!(out.len(), CHUNK);
                break;
            }
            Action::Emit(other, _) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(hops, 2);
}

#[tokio::test]
async fn the_embedded_host_gives_a_passthrough_the_input_bytes_back() {
    let host =
        flowplane_processors::local_host(&["passthrough".into()], "--local-processors").unwrap();
    let data = payload();
    let requests = tokio_stream::iter([
        ProcessRequest {
            request: Some(process_request::Request::Init(ProcessInit {
                processor: "passthrough".into(),
                node_id: "n".into(),
                params: None,
                session_id: "s".into(),
            })),
        },
        ProcessRequest {
            request: Some(process_request::Request::Chunk(DataChunk {
                sequence: 7,
                buffer: binary(data.clone()),
                ..Default::default()
            })),
        },
    ]);
    let mut responses = host.process_local(requests).unwrap();
    let ready = responses.next().await.unwrap().unwrap();
    assert!(matches!(
        ready.response,
        Some(process_response::Response::Ready(_))
    ));
    let answer = responses.next().await.unwrap().unwrap();
    let Some(process_response::Response::Result(result)) = answer.response else {
        panic!("expected a result, got {answer:?}");
    };
    assert_eq!(result.input_sequence, 7);
    let out = bytes_of(&result.outputs[0].chunk.as_ref().unwrap().buffer);
    assert_eq!(
        out.as_ptr(),
        data.as_ptr(),
        "the embedded host copied the payload"
    );
    // The requests ended: the stream ends OK after the last result.
    assert!(responses.next().await.is_none());
}
