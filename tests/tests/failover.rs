//! Failover: a node whose processor instance fails mid-session moves to another live
//! instance and replays what was not yet answered; the client sees every result exactly
//! once and in order. Covered both for an abrupt stream error (a host whose stream is cut
//! with UNAVAILABLE) and for kill -9 of a real processor process.

use std::{pin::Pin, process::Stdio, time::Duration};

use flowplane_proto::{
    processor::v1::{
        GetCapabilitiesRequest, GetCapabilitiesResponse, ProcessRequest, ProcessResponse,
        processor_service_server::{ProcessorService, ProcessorServiceServer},
    },
    streaming::v1::ControlCommand,
};
use flowplane_sdk::{ProcessorHost, Registration, RegistrationConfig};
use flowplane_test_support::{local_listener, wait_for};
use flowplane_tests::{
    Running, control_plane,
    data::*,
    pipeline, processor,
    session::{Outcome, Session, assert_complete_in_order},
};
use futures::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;

const PASS: &str = r#"
nodes: [{ id: copy, processor: passthrough }]
inputs: [{ name: in, targets: [{ node: copy }] }]
outputs: [{ name: out, source: { node: copy } }]
"#;

/// A processor host that answers `cut_after` chunks of its first stream normally, then
/// breaks that stream with UNAVAILABLE, the way a dying instance does.
#[derive(Clone)]
struct Cutter {
    inner: ProcessorHost,
    cut_after: usize,
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<ProcessResponse, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl ProcessorService for Cutter {
    type ProcessStream = ResponseStream;

    async fn process(
        &self,
        request: tonic::Request<tonic::Streaming<ProcessRequest>>,
    ) -> Result<tonic::Response<ResponseStream>, tonic::Status> {
        let inner = self.inner.process(request).await?.into_inner();
        // One `ready`, then `cut_after` results, then the break.
        let cut = inner
            .take(self.cut_after + 1)
            .chain(futures::stream::once(async {
                Err(tonic::Status::unavailable(
                    "connection to the instance was lost (cut by test)",
                ))
            }));
        Ok(tonic::Response::new(Box::pin(cut)))
    }

    async fn get_capabilities(
        &self,
        request: tonic::Request<GetCapabilitiesRequest>,
    ) -> Result<tonic::Response<GetCapabilitiesResponse>, tonic::Status> {
        self.inner.get_capabilities(request).await
    }
}

/// Serves a Cutter registered as `id`; stops with the token.
async fn cutter(control_plane: &str, id: &str, cut_after: usize, stop: CancellationToken) {
    let host = flowplane_processor::host(&Default::default()).unwrap();
    let listener = local_listener().await;
    let endpoint = listener.local_addr().unwrap().to_string();
    let mut config = RegistrationConfig::new(control_plane.to_string());
    config.processor_id = Some(id.to_string());
    let registration = Registration::new(config, endpoint, host.clone()).unwrap();
    tokio::spawn(registration.run(stop.clone()));
    let server = flowplane_grpc::server::GrpcServer::new()
        .unwrap()
        .with_routes(tonic::service::Routes::new(ProcessorServiceServer::new(
            Cutter {
                inner: host,
                cut_after,
            },
        )));
    tokio::spawn(async move {
        server
            .serve(listener, async move { stop.cancelled().await })
            .await
            .unwrap()
    });
}

/// Opens probe sessions until one lands on `id`: proof the pipeline's view offers it.
async fn wait_until_placed_on(platform_pipeline: &Running, id: &str) {
    let client = pipeline_client(platform_pipeline).await;
    wait_for(&format!("the pipeline to place a node on {id}"), || {
        let mut client = client.clone();
        async move {
            let session = Session::open(&mut client, init(manifest(PASS)))
                .await
                .ok()?;
            (session.ready.nodes[0].instance_id == id).then_some(())
        }
    })
    .await;
}

async fn pipeline_client(
    running: &Running,
) -> flowplane_proto::streaming::v1::streaming_pipeline_service_client::StreamingPipelineServiceClient<
    tonic::transport::Channel,
>{
    flowplane_proto::streaming::v1::streaming_pipeline_service_client::StreamingPipelineServiceClient::connect(running.url())
        .await
        .unwrap()
}

/// Sends `range` as text chunks.
async fn send_range(session: &Session, range: std::ops::Range<u64>) {
    for i in range {
        session
            .send(send(chunk(i, "in", text(&format!("c{i}")))))
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abrupt_stream_error_moves_the_node_and_loses_nothing() {
    let cp = control_plane(Duration::from_secs(3)).await;
    let stop = CancellationToken::new();
    cutter(&cp.url(), "cutter", 100, stop.clone()).await;
    let pipe = pipeline(&cp.url()).await;
    let mut client = pipeline_client(&pipe).await;
    wait_until_placed_on(&pipe, "cutter").await;

    let mut session = Session::open(&mut client, init(manifest(PASS)))
        .await
        .unwrap();
    assert_eq!(session.ready.nodes[0].instance_id, "cutter");
    let _spare = processor(&cp.url(), "spare").await;
    wait_until_placed_on(&pipe, "spare").await;

    send_range(&session, 0..500).await;
    session.send(control(ControlCommand::Close)).await;
    session.finish_sending();
    let outcome = session.read_to_end().await;
    assert_complete_in_order(&outcome, 500);
    assert!(outcome.closed);
    stop.cancel();
}

/// The real `flowplane-processor` binary, built next to this test's executable.
fn processor_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|d| d.parent()).unwrap();
    let bin = dir.join("flowplane-processor");
    assert!(
        bin.exists(),
        "{} is missing: build the binaries first (`cargo build --workspace --bins`, which `make test` does)",
        bin.display()
    );
    bin
}

struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_processor(control_plane: &str, id: &str) -> Child {
    Child(
        std::process::Command::new(processor_binary())
            .args([
                "--listen",
                "127.0.0.1:0",
                "--control-plane",
                control_plane,
                "--id",
                id,
            ])
            .env("FLOWPLANE_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start flowplane-processor"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_dash_nine_of_a_processor_process_mid_stream_loses_nothing() {
    let cp = control_plane(Duration::from_secs(3)).await;
    let mut children = [
        Some(spawn_processor(&cp.url(), "bin-0")),
        Some(spawn_processor(&cp.url(), "bin-1")),
    ];
    let pipe = pipeline(&cp.url()).await;
    wait_until_placed_on(&pipe, "bin-0").await;
    wait_until_placed_on(&pipe, "bin-1").await;

    let mut client = pipeline_client(&pipe).await;
    let mut session = Session::open(&mut client, init(manifest(PASS)))
        .await
        .unwrap();
    let victim = session.ready.nodes[0].instance_id.clone();
    send_range(&session, 0..300).await;
    let mut outcome = Outcome::default();
    session.read(100, &mut outcome).await;
    // SIGKILL the instance serving the node, mid-stream.
    let index = if victim == "bin-0" { 0 } else { 1 };
    let mut child = children[index].take().unwrap();
    child.0.kill().unwrap();
    child.0.wait().unwrap();
    send_range(&session, 300..600).await;
    session.send(control(ControlCommand::Close)).await;
    session.finish_sending();
    while !session.read_one(&mut outcome).await {}
    assert_complete_in_order(&outcome, 600);
    assert!(outcome.closed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stateful_node_that_loses_its_instance_ends_with_unavailable_naming_it() {
    let cp = control_plane(Duration::from_secs(3)).await;
    let stop = CancellationToken::new();
    cutter(&cp.url(), "cutter", 10, stop.clone()).await;
    let pipe = pipeline(&cp.url()).await;
    let resample = manifest(
        r#"
nodes: [{ id: rs, processor: audio.resample, params: { target_rate: 16000 } }]
inputs: [{ name: in, targets: [{ node: rs }] }]
outputs: [{ name: out, source: { node: rs } }]"#,
    );
    let platform_client = pipeline_client(&pipe).await;
    wait_for("the pipeline to offer audio.resample", || {
        let mut client = platform_client.clone();
        let m = resample.clone();
        async move { Session::open(&mut client, init(m)).await.ok() }
    })
    .await;
    let mut client = pipeline_client(&pipe).await;
    let session = Session::open(&mut client, init(resample)).await.unwrap();
    for i in 0..50 {
        // The session may end (the cutter drops the stream) before all 50 are queued.
        if !session
            .try_send(send(chunk(i, "in", audio_f32(48_000, &[0.1; 480]))))
            .await
        {
            break;
        }
    }
    let outcome = session.read_to_end().await;
    let status = outcome.status.expect("session ends with an error");
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert!(status.message().contains("\"rs\""), "{}", status.message());
    assert!(
        status.message().contains("stateful"),
        "{}",
        status.message()
    );
    assert!(
        status
            .message()
            .contains("last sequence fully delivered: 9"),
        "{}",
        status.message()
    );
    assert_eq!(outcome.results.len(), 10);
    stop.cancel();
}
