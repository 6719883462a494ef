//! Each service's own Prometheus endpoint: the three real binaries run as processes (so
//! each has its own registry). Before any traffic every family is described (`# HELP`),
//! `flowplane_build_info` is 1 and the main series read 0; after a session the named
//! series carry the expected values.

use std::collections::BTreeSet;

use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use flowplane_proto::streaming::v1::{
    ControlCommand, ValidatePipelineRequest,
    streaming_pipeline_service_client::StreamingPipelineServiceClient,
};
use flowplane_test_support::{wait_for, wait_until};
use flowplane_tests::{
    data::*,
    process::{Process, free_port, samples, scrape, start, value},
    session::Session,
};

const UPPER: &str = r#"
name: upper
nodes: [{ id: up, processor: text.transform, params: { mode: upper } }]
inputs: [{ name: text, targets: [{ node: up }] }]
outputs: [{ name: out, source: { node: up } }]
"#;

/// Families with a `# TYPE` line but no `# HELP` line; panics when there are none at all.
fn undescribed(text: &str) -> Vec<String> {
    let names = |prefix: &str| -> BTreeSet<String> {
        text.lines()
            .filter_map(|l| l.strip_prefix(prefix))
            .filter_map(|rest| rest.split_whitespace().next())
            .map(str::to_string)
            .collect()
    };
    let (typed, described) = (names("# TYPE "), names("# HELP "));
    assert!(!typed.is_empty(), "no metric families in:\n{text}");
    typed.difference(&described).cloned().collect()
}

/// The three binaries with their metrics endpoints, the processor host registered.
struct Stack {
    _processes: [Process; 3],
    _data: tempfile::TempDir,
    pipe: u16,
    /// Each binary's name, gRPC service and port, and metrics port.
    metrics: [(&'static str, &'static str, u16, u16); 3],
}

/// Waits until the server on `port` reports its `service` SERVING (the whole server is
/// SERVING from the start): each service has described its metrics and created its zero
/// series by then.
async fn wait_serving(port: u16, service: &'static str) {
    wait_until("the service to report SERVING", || async move {
        let Ok(channel) =
            tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
                .expect("a valid address")
                .connect()
                .await
        else {
            return false;
        };
        HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .is_ok_and(|r| r.into_inner().status == ServingStatus::Serving as i32)
    })
    .await;
}

fn start_stack() -> Stack {
    let [cp, cp_m, proc, proc_m, pipe, pipe_m] = std::array::from_fn(|_| free_port());
    let listen = |p: u16| format!("127.0.0.1:{p}");
    let control_plane = format!("http://127.0.0.1:{cp}");
    let data = tempfile::tempdir().unwrap();
    let cp_process = start(
        "flowplane-control-plane",
        &[
            "--listen".into(),
            listen(cp),
            "--metrics-listen".into(),
            listen(cp_m),
            "--lease-ttl".into(),
            "3s".into(),
            "--data-dir".into(),
            data.path().display().to_string(),
        ],
    );
    let proc_process = start(
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
    let pipe_process = start(
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
    Stack {
        _processes: [cp_process, proc_process, pipe_process],
        _data: data,
        pipe,
        metrics: [
            (
                "flowplane-control-plane",
                "flowplane.controlplane.v1.ControlPlaneService",
                cp,
                cp_m,
            ),
            (
                "flowplane-processor",
                "flowplane.processor.v1.ProcessorService",
                proc,
                proc_m,
            ),
            (
                "flowplane-pipeline",
                "flowplane.streaming.v1.StreamingPipelineService",
                pipe,
                pipe_m,
            ),
        ],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn before_any_traffic_every_family_is_described_and_the_main_series_read_zero() {
    let stack = start_stack();
    let mut scraped = Vec::new();
    for (service, grpc_service, grpc, port) in stack.metrics {
        wait_serving(grpc, grpc_service).await;
        let text = scrape(port).await.expect("the metrics endpoint answers");
        let missing = undescribed(&text);
        assert!(missing.is_empty(), "{service}: no # HELP for {missing:?}");
        let s = samples(&text);
        assert_eq!(
            value(
                &s,
                "flowplane_build_info",
                &[("service", service), ("version", env!("CARGO_PKG_VERSION"))]
            ),
            Some(1.0),
            "{service}:\n{text}"
        );
        scraped.push(s);
    }
    let [control, processor, pipeline] = <[_; 3]>::try_from(scraped).unwrap();
    for (series, labels) in [
        ("flowplane_pipeline_sessions_active", &[][..]),
        ("flowplane_pipeline_sessions_total", &[("code", "OK")][..]),
        ("flowplane_pipeline_chunks_total", &[]),
        ("flowplane_pipeline_bytes_total", &[]),
        ("flowplane_pipeline_memory_budget_waits_total", &[]),
        (
            "flowplane_pipeline_chunk_errors_total",
            &[("code", "INVALID_ARGUMENT"), ("reason", "TYPE_MISMATCH")],
        ),
    ] {
        assert_eq!(value(&pipeline, series, labels), Some(0.0), "{series}");
    }
    for (series, labels) in [
        (
            "flowplane_processor_chunks_total",
            &[("processor", "audio.resample"), ("direction", "in")][..],
        ),
        (
            "flowplane_processor_chunks_total",
            &[("processor", "text.transform"), ("direction", "out")][..],
        ),
        (
            "flowplane_processor_errors_total",
            &[("processor", "json.calculator")],
        ),
        (
            "flowplane_processor_active_streams",
            &[("processor", "audio.gain")],
        ),
        ("flowplane_processor_in_flight_chunks", &[]),
    ] {
        assert_eq!(
            value(&processor, series, labels),
            Some(0.0),
            "{series} {labels:?}"
        );
    }
    // Kinds nothing registered as yet: their series exist at 0.
    for (series, labels) in [
        (
            "flowplane_controlplane_components",
            &[("kind", "source"), ("status", "healthy")][..],
        ),
        (
            "flowplane_controlplane_heartbeats_total",
            &[("kind", "consumer")],
        ),
        (
            "flowplane_controlplane_expired_total",
            &[("kind", "processor")],
        ),
        ("flowplane_controlplane_watch_resyncs_total", &[]),
    ] {
        assert_eq!(
            value(&control, series, labels),
            Some(0.0),
            "{series} {labels:?}"
        );
    }
    assert!(value(&control, "flowplane_controlplane_watchers", &[]).is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_service_exposes_its_series_with_the_right_values() {
    let stack = start_stack();
    let pipe = stack.pipe;
    let [(.., cp_m), (.., proc_m), (.., pipe_m)] = stack.metrics;
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
            &[
                ("pipeline", "upper"),
                ("node", "up"),
                ("processor", "text.transform")
            ]
        ),
        Some(10.0),
        "the mistyped chunk never reaches the node"
    );
    assert_eq!(
        value(
            &pipeline,
            "flowplane_pipeline_chunk_errors_total",
            &[("code", "INVALID_ARGUMENT"), ("reason", "TYPE_MISMATCH")]
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

    let text = scrape(pipe_m).await.unwrap();
    let missing = undescribed(&text);
    assert!(
        missing.is_empty(),
        "pipeline after traffic: no # HELP for {missing:?}"
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
