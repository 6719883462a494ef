//! Shared by the misbehaving-processor and load tests: the pipeline service run in this
//! process with a probe on its state (so a test reads `active_sessions()`), fake
//! processors registered with a control plane, and the checks every such test makes.

#![allow(dead_code)] // each test file uses a different part of this module

use std::{net::SocketAddr, time::Duration};

use flowplane_grpc::config::ClientArgs;
use flowplane_pipeline::{ServiceLimits, ServiceProbe};
use flowplane_proto::{
    controlplane::v1::ListComponentsRequest,
    streaming::v1::{
        ControlCommand, PipelineManifest,
        streaming_pipeline_service_client::StreamingPipelineServiceClient,
    },
};
use flowplane_test_support::{
    fake_processor::{FakeConfig, FakeProcessor, Mode},
    wait_until,
};
use flowplane_tests::{
    Running,
    data::*,
    pipeline_with,
    session::{Outcome, Session},
};
use tonic::transport::Channel;

/// What the tests give the pipeline as its node timeout, once `SessionLimits` has one.
pub const NODE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long past the node timeout a session may take to end: scheduling slack on a
/// shared 2-core machine, not a performance figure.
pub const SLACK: Duration = Duration::from_secs(8);

/// How soon a cancelled session must be released.
pub const RELEASE_WITHIN: Duration = Duration::from_secs(1);

/// The hard bound on one test, so a hang is a failure and not a stuck CI.
pub const TEST_LIMIT: Duration = Duration::from_secs(30);

/// The node id every test manifest uses, so status messages can be checked for it.
pub const NODE: &str = "victim";

/// The limits the tests run the pipeline with.
pub fn limits() -> ServiceLimits {
    let mut limits = ServiceLimits::default();
    limits.session.node_timeout = NODE_TIMEOUT;
    limits
}

/// The real pipeline service (`flowplane_pipeline::run`) in this process, with a probe
/// on its state; stopped when dropped.
pub struct Pipeline {
    pub addr: SocketAddr,
    /// Open sessions and budget of the running service.
    pub service: ServiceProbe,
    _running: Running,
}

impl Pipeline {
    /// Starts the service discovering processors through `control_plane`.
    pub async fn start(control_plane: &str, limits: ServiceLimits) -> Self {
        let probe = ServiceProbe::default();
        let mut config = flowplane_pipeline::Config::new(control_plane);
        config.limits = limits;
        config.probe = probe.clone();
        let running = pipeline_with(config).await;
        Self {
            addr: running.addr,
            service: probe,
            _running: running,
        }
    }

    /// One channel with flowplane's client settings (the h2 windows under test).
    pub async fn channel(&self) -> Channel {
        flowplane_grpc::client::connect(&self.addr.to_string(), &ClientArgs::default())
            .await
            .unwrap()
    }

    /// A client on a fresh channel.
    pub async fn client(&self) -> StreamingPipelineServiceClient<Channel> {
        client(self.channel().await)
    }

    /// Waits until `manifest` validates: the pipeline's view has its processors.
    pub async fn wait_until_runnable(&self, manifest: &PipelineManifest) {
        flowplane_tests::wait_until_runnable(self.client().await, manifest).await;
    }

    /// Waits until no session is open; panics if that takes longer than `within`.
    pub async fn wait_until_idle(&self, within: Duration, what: &str) {
        let service = self.service.clone();
        let idle = async {
            while service.active_sessions() > 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        if tokio::time::timeout(within, idle).await.is_err() {
            panic!(
                "{what}: {} sessions still active after {within:?}",
                self.service.active_sessions()
            );
        }
    }
}

/// A pipeline client with flowplane's message limits.
pub fn client(channel: Channel) -> StreamingPipelineServiceClient<Channel> {
    StreamingPipelineServiceClient::new(channel)
        .max_decoding_message_size(flowplane_grpc::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(flowplane_grpc::MAX_MESSAGE_BYTES)
}

/// A one-node pipeline `in -> victim(processor) -> out`.
pub fn one_node(processor: &str) -> PipelineManifest {
    manifest(&format!(
        r#"
nodes: [{{ id: {NODE}, processor: {processor} }}]
inputs: [{{ name: in, targets: [{{ node: {NODE} }}] }}]
outputs: [{{ name: out, source: {{ node: {NODE} }} }}]
"#
    ))
}

/// Starts a fake and waits until the control plane lists it.
pub async fn fake(control_plane: &str, id: &str, mode: Mode) -> FakeProcessor {
    fake_with(FakeConfig::new(control_plane, id, mode)).await
}

/// Starts a fake with a custom config and waits until the control plane lists it.
pub async fn fake_with(config: FakeConfig) -> FakeProcessor {
    let control_plane = config.control_plane.clone();
    let id = config.id.clone();
    let fake = FakeProcessor::start(config).await;
    let channel = flowplane_grpc::client::connect(&control_plane, &ClientArgs::default())
        .await
        .unwrap();
    let cp = flowplane_proto::controlplane::v1::control_plane_service_client::ControlPlaneServiceClient::new(channel);
    wait_until(
        &format!("the control plane to list {id} as healthy"),
        || {
            let mut cp = cp.clone();
            let id = id.clone();
            async move {
                cp.list_components(ListComponentsRequest {
                    status: flowplane_proto::common::v1::HealthStatus::Healthy as i32,
                    ..Default::default()
                })
                .await
                .is_ok_and(|r| r.into_inner().components.iter().any(|c| c.id == id))
            }
        },
    )
    .await;
    fake
}

/// The text chunk `c{i}` for input `in`.
pub fn text_chunk(i: u64) -> flowplane_proto::streaming::v1::StreamPipelineRequest {
    send(chunk(i, "in", text(&format!("c{i}"))))
}

/// Opens a session, sends `n` text chunks and CLOSE, and reads it to the end.
pub async fn full_session(
    client: &mut StreamingPipelineServiceClient<Channel>,
    manifest: &PipelineManifest,
    n: u64,
) -> Result<Outcome, tonic::Status> {
    let mut session = Session::open(client, init(manifest.clone())).await?;
    for i in 0..n {
        session.send(text_chunk(i)).await;
    }
    session.send(control(ControlCommand::Close)).await;
    session.finish_sending();
    Ok(session.read_to_end().await)
}

/// The session ended with an error status that names the node and a sequence.
pub fn assert_ended_naming_node(outcome: &Outcome) -> tonic::Status {
    let status = outcome
        .status
        .clone()
        .unwrap_or_else(|| panic!("session should end with an error, got {outcome:?}"));
    assert_ne!(status.code(), tonic::Code::Ok);
    let message = status.message();
    assert!(
        message.contains(NODE),
        "status does not name node {NODE:?}: {status:?}"
    );
    assert!(
        message.contains("sequence"),
        "status does not name a sequence: {status:?}"
    );
    status
}
