//! One streamed session through the pipeline and two processor hosts yields ONE trace:
//! the client's span, the StreamPipeline RPC, the pipeline session, each node with its
//! Process RPC to a processor host, and the sampled chunk span, with the parent chain and
//! attributes checked in an in-process OTLP collector.

use fake_opentelemetry_collector::FakeCollectorServer;
use flowplane_grpc::{client, config::ClientArgs};
use flowplane_proto::streaming::v1::{
    ControlCommand, streaming_pipeline_service_client::StreamingPipelineServiceClient,
};
use flowplane_telemetry::{TelemetryArgs, TraceExport};
use flowplane_tests::{
    Platform,
    data::*,
    trace::{Received, attribute, child},
};
use tracing::Instrument;

const STREAM: &str = "flowplane.streaming.v1.StreamingPipelineService/StreamPipeline";
const PROCESS: &str = "flowplane.processor.v1.ProcessorService/Process";

const CHAIN: &str = r#"
name: traced-chain
nodes:
  - { id: upper, processor: text.transform, params: { mode: upper } }
  - { id: reverse, processor: text.transform, params: { mode: reverse } }
  - { id: copy, processor: passthrough }
edges:
  - { from_node: upper, to_node: reverse }
  - { from_node: reverse, to_node: copy }
inputs: [{ name: text, targets: [{ node: upper }] }]
outputs: [{ name: out, source: { node: copy } }]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_is_one_trace_from_the_client_through_every_node() {
    let collector = FakeCollectorServer::start().await.unwrap();
    let telemetry = flowplane_telemetry::init_with(
        "flowplane-e2e",
        &TelemetryArgs {
            log_filter: Some("warn".into()),
            ..TelemetryArgs::default()
        },
        TraceExport::Otlp(collector.endpoint()),
    )
    .unwrap();
    let received = Received::new(collector);
    let platform = Platform::start(2).await;
    let m = manifest(CHAIN);
    platform.wait_until_runnable(&m).await;

    let channel = client::connect_traced(&platform.pipeline.url(), &ClientArgs::default())
        .await
        .unwrap();
    let mut pipeline = StreamingPipelineServiceClient::new(channel);
    let outcome = async {
        let mut session = flowplane_tests::session::Session::open(&mut pipeline, init(m))
            .await
            .unwrap();
        for i in 0..10 {
            session.send(send(chunk(i, "text", text("abc")))).await;
        }
        session.send(control(ControlCommand::Close)).await;
        session.finish_sending();
        session.read_to_end().await
    }
    .instrument(tracing::info_span!("test.client"))
    .await;
    assert_eq!(outcome.results.len(), 10, "{outcome:?}");

    let trace = received
        .trace(&telemetry, "test.client", |trace| {
            trace
                .iter()
                .filter(|s| s.name == PROCESS && s.kind == "SPAN_KIND_SERVER")
                .count()
                == 3
                && trace.iter().any(|s| s.name == "pipeline.session")
                && trace
                    .iter()
                    .any(|s| s.name == STREAM && s.kind == "SPAN_KIND_SERVER")
        })
        .await;
    let root = trace.iter().find(|s| s.name == "test.client").unwrap();
    assert_eq!(root.parent_span_id, "");
    let client_rpc = child(&trace, root, "SPAN_KIND_CLIENT", STREAM);
    let server_rpc = child(&trace, client_rpc, "SPAN_KIND_SERVER", STREAM);
    let session = child(&trace, server_rpc, "SPAN_KIND_INTERNAL", "pipeline.session");
    assert!(!attribute(session, "flowplane.session_id").is_empty());
    assert!(attribute(session, "flowplane.pipeline").contains("traced-chain"));
    assert!(attribute(session, "flowplane.node_count").contains('3'));

    let nodes: Vec<_> = trace
        .iter()
        .filter(|s| s.name == "pipeline.node" && s.parent_span_id == session.span_id)
        .collect();
    assert_eq!(nodes.len(), 3, "{trace:#?}");
    let mut node_ids = Vec::new();
    for node in nodes {
        node_ids.push(attribute(node, "flowplane.node_id").to_string());
        assert!(!attribute(node, "flowplane.processor").is_empty());
        assert!(attribute(node, "flowplane.endpoint").contains("127.0.0.1"));
        let process_client = child(&trace, node, "SPAN_KIND_CLIENT", PROCESS);
        let process_server = child(&trace, process_client, "SPAN_KIND_SERVER", PROCESS);
        assert!(attribute(process_server, "rpc.service").contains("ProcessorService"));
    }
    node_ids.sort();
    assert_eq!(node_ids.len(), 3);
    for (id, want) in node_ids.iter().zip(["copy", "reverse", "upper"]) {
        assert!(id.contains(want), "{node_ids:?}");
    }
    // The first chunk is traced on its own (one in every 1000 by default).
    let chunk_span = child(&trace, session, "SPAN_KIND_INTERNAL", "pipeline.chunk");
    assert!(attribute(chunk_span, "flowplane.payload_type").contains("text"));
    assert!(!attribute(chunk_span, "latency_ms").is_empty());
    telemetry.shutdown().await;
}
