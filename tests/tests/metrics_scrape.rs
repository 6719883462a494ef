//! Each service's own Prometheus endpoint, scraped after real traffic: the three real
//! binaries run as processes (so each has its own registry), a session streams chunks,
//! and the named series carry the expected values.

use flowplane_proto::streaming::v1::{
    ControlCommand, ValidatePipelineRequest,
    streaming_pipeline_service_client::StreamingPipelineServiceClient,
};
use flowplane_test_support::{wait_for, wait_until};
use flowplane_tests::{
    data::*,
    process::{free_port, samples, scrape, start, value},
    session::Session,
};

const UPPER: &str = r#"
nodes: [{ id: up, processor: text.transform, params: { mode: upper } }]
inputs: [{ name: text, targets: [{ node: up }] }]
outputs: [{ name: out, source: { node: up } }]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_service_exposes_its_series_with_the_right_values() {
    let [cp, cp_m, proc, proc_m, pipe, pipe_m] = std::array::from_fn(|_| free_port());
    let listen = |p: u16| format!("127.0.0.1:{p}");
    let control_plane = format!("http://127.0.0.1:{cp}");
    let _cp = start(
        "flowplane-control-plane",
        &[
            "--listen".into(),
            listen(cp),
            "--metrics-listen".into(),
            listen(cp_m),
            "--lease-ttl".into(),
            "3s".into(),
        ],
    );
    let _proc = start(
        "flowplane-processor",
        &[
            "--listen".into(),
            listen(proc),
            "--metrics-listen".into(),
            listen(proc_m),
            "--control-plane".into(),
            control_plane.clone(),
            "--id".into(),
            "scraped".into(),
        ],
    );
    let _pipe = start(
        "flowplane-pipeline",
        &[
            "--listen".into(),
            listen(pipe),
            "--metrics-listen".into(),
            listen(pipe_m),
            "--control-plane".into(),
            control_plane,
        ],
    );
    let m = manifest(UPPER);
    let client = wait_for("the pipeline service to answer", || async move {
        StreamingPipelineServiceClient::connect(format!("http://127.0.0.1:{pipe}"))
            .await
            .ok()
    })
    .await;
    wait_until("the pipeline to see the processor", || {
        let mut client = client.clone();
        let m = m.clone();
        async move {
            client
                .validate_pipeline(ValidatePipelineRequest { manifest: Some(m) })
                .await
                .is_ok_and(|r| r.into_inner().problems.is_empty())
        }
    })
    .await;

    let mut client = client;
    let mut session = Session::open(&mut client, init(m)).await.unwrap();
    for i in 0..10 {
        session.send(send(chunk(i, "text", text("hi")))).await;
    }
    session
        .send(send(chunk(10, "text", json(serde_json::json!({})))))
        .await;
    session.send(control(ControlCommand::Close)).await;
    session.finish_sending();
    let outcome = session.read_to_end().await;
    assert_eq!((outcome.results.len(), outcome.errors.len()), (10, 1));

    // The pipeline: the session, its chunks, and the node's work by node and processor.
    let pipeline = wait_for("pipeline metrics after the session", || async move {
        let s = samples(&scrape(pipe_m).await?);
        (value(&s, "flowplane_pipeline_sessions_total", &[("code", "OK")]) == Some(1.0))
            .then_some(s)
    })
    .await;
    assert_eq!(
        value(&pipeline, "flowplane_pipeline_chunks_total", &[]),
        Some(11.0)
    );
    assert_eq!(
        value(
            &pipeline,
            "flowplane_pipeline_node_chunks_total",
            &[("node", "up"), ("processor", "text.transform")]
        ),
        Some(10.0),
        "the mistyped chunk never reaches the node"
    );
    assert_eq!(
        value(
            &pipeline,
            "flowplane_pipeline_chunk_errors_total",
            &[("code", "INVALID_ARGUMENT")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(&pipeline, "flowplane_pipeline_sessions_active", &[]),
        Some(0.0)
    );
    assert_eq!(
        value(
            &pipeline,
            "flowplane_pipeline_node_latency_seconds_count",
            &[("node", "up")]
        ),
        Some(10.0)
    );
    assert_eq!(
        value(
            &pipeline,
            "flowplane_grpc_server_requests_total",
            &[("method", "StreamPipeline"), ("code", "OK")]
        ),
        Some(1.0)
    );

    // The processor host: chunks in and out by processor, latency, no open streams.
    let processor = wait_for("processor metrics after the stream ends", || async move {
        let s = samples(&scrape(proc_m).await?);
        (value(&s, "flowplane_processor_active_streams", &[]) == Some(0.0)).then_some(s)
    })
    .await;
    for direction in ["in", "out"] {
        assert_eq!(
            value(
                &processor,
                "flowplane_processor_chunks_total",
                &[("processor", "text.transform"), ("direction", direction)]
            ),
            Some(10.0),
            "{direction}"
        );
    }
    assert_eq!(
        value(
            &processor,
            "flowplane_processor_latency_seconds_count",
            &[("processor", "text.transform")]
        ),
        Some(10.0)
    );

    // The control plane: one healthy processor host and its registration.
    let control = wait_for("control plane metrics", || async move {
        let s = samples(&scrape(cp_m).await?);
        (value(
            &s,
            "flowplane_controlplane_components",
            &[("kind", "processor"), ("status", "healthy")],
        ) == Some(1.0))
        .then_some(s)
    })
    .await;
    assert_eq!(
        value(
            &control,
            "flowplane_grpc_server_requests_total",
            &[("method", "RegisterProcessor"), ("code", "OK")]
        ),
        Some(1.0)
    );
    assert!(
        value(
            &control,
            "flowplane_controlplane_heartbeats_total",
            &[("kind", "processor")]
        )
        .unwrap_or(0.0)
            >= 1.0
    );
}
