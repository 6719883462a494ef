//! Requests that do not decode: invalid UTF-8 in a string field, on the unary and the
//! streaming RPC. Each gets INVALID_ARGUMENT with standard details, never INTERNAL and
//! never OK, and the service answers the next request normally.

use flowplane_proto::{
    data::v1::{DataBuffer, DataChunk, TextData, data_buffer::Payload},
    streaming::v1::{
        ExecutePipelineResponse, StreamInit, StreamPipelineResponse,
        stream_pipeline_response::Response,
    },
};
use flowplane_tests::{Platform, data::*};
use prost::Message;
use tonic::{Code, codegen::http::uri::PathAndQuery};
use tonic_types::StatusExt;

const UPPER: &str = r#"
nodes: [{ id: up, processor: text.transform, params: { mode: upper } }]
inputs: [{ name: text, targets: [{ node: up }] }]
outputs: [{ name: out, source: { node: up } }]
"#;

/// ExecutePipelineRequest / StreamPipelineRequest on the wire, with raw bytes where
/// the real messages have string or message fields, so a test can send what a real
/// client library would refuse to encode.
#[derive(Clone, PartialEq, Message)]
struct Raw {
    #[prost(bytes = "vec", optional, tag = "1")]
    first: Option<Vec<u8>>,
    #[prost(bytes = "vec", optional, tag = "2")]
    second: Option<Vec<u8>>,
}

/// A DataChunk whose `input` (field 2, a string) is not UTF-8.
fn chunk_with_bad_input(sequence: u64) -> Vec<u8> {
    let mut bytes = DataChunk {
        sequence,
        buffer: Some(DataBuffer {
            payload: Some(Payload::Text(TextData {
                text: "x".into(),
                ..Default::default()
            })),
            metadata: Default::default(),
        }),
        ..Default::default()
    }
    .encode_to_vec();
    bytes.extend_from_slice(&[0x12, 0x02, 0xff, 0xfe]);
    bytes
}

async fn grpc(platform: &Platform) -> tonic::client::Grpc<tonic::transport::Channel> {
    let channel = tonic::transport::Channel::from_shared(platform.pipeline.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    tonic::client::Grpc::new(channel)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_is_invalid_argument_on_unary_and_streaming_rpcs() {
    let platform = Platform::start(1).await;
    let m = manifest(UPPER);
    platform.wait_until_runnable(&m).await;

    let mut client = grpc(&platform).await;
    client.ready().await.unwrap();
    let bad_manifest = vec![0x0a, 0x02, 0xff, 0xfe]; // PipelineManifest.name = "\xff\xfe"
    let status = client
        .unary::<Raw, ExecutePipelineResponse, _>(
            tonic::Request::new(Raw {
                first: Some(bad_manifest),
                second: None,
            }),
            PathAndQuery::from_static(
                "/flowplane.streaming.v1.StreamingPipelineService/ExecutePipeline",
            ),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .expect_err("undecodable");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("decode"), "{status:?}");
    assert_eq!(
        status.get_details_error_info().map(|i| i.reason),
        Some("UNDECODABLE_REQUEST".into())
    );

    let init = StreamInit {
        manifest: Some(m.clone()),
        ..Default::default()
    }
    .encode_to_vec();
    let requests = tokio_stream::iter(vec![
        Raw {
            first: Some(init),
            second: None,
        },
        Raw {
            first: None,
            second: Some(chunk_with_bad_input(3)),
        },
    ]);
    client.ready().await.unwrap();
    let mut responses = client
        .streaming::<_, Raw, StreamPipelineResponse, _>(
            tonic::Request::new(requests),
            PathAndQuery::from_static(
                "/flowplane.streaming.v1.StreamingPipelineService/StreamPipeline",
            ),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .unwrap()
        .into_inner();
    let mut ended = None;
    loop {
        match responses.message().await {
            Ok(Some(StreamPipelineResponse {
                response: Some(Response::Result(r)),
            })) => panic!("an undecodable chunk got a result: {r:?}"),
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(status) => {
                ended = Some(status);
                break;
            }
        }
    }
    let status = ended.expect("never OK for an undecodable chunk");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("UTF-8"), "{status:?}");
    assert!(status.check_error_details().is_ok(), "standard details");

    // And the service goes on.
    let mut typed = platform.pipeline_client().await;
    let ok = typed
        .execute_pipeline(flowplane_proto::streaming::v1::ExecutePipelineRequest {
            manifest: Some(m),
            inputs: vec![chunk(1, "text", text("fine"))],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.results.len(), 1);
}
