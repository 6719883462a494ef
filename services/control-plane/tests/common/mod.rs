//! Shared helpers for the control plane's integration tests: start the real server on
//! 127.0.0.1 through `run`, connect clients, and build requests.
#![allow(dead_code)]

use std::{net::SocketAddr, time::Duration};

use flowplane_control_plane::{Config, ControlPlane};
use flowplane_grpc::{auth::AttachBearer, config::ClientArgs};
use flowplane_proto::{
    common::v1::HealthStatus,
    controlplane::v1::{self as pb, control_plane_service_client::ControlPlaneServiceClient},
    processor::v1::ProcessorCapability,
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::{service::interceptor::InterceptedService, transport::Channel};

pub type Client = ControlPlaneServiceClient<InterceptedService<Channel, AttachBearer>>;

/// A control plane served on 127.0.0.1 by `run`, stopped by `stop`.
pub struct Server {
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<flowplane_control_plane::Result<()>>,
}

impl Server {
    pub async fn start(config: Config) -> Self {
        let listener = flowplane_test_support::local_listener().await;
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let signal = shutdown.clone();
        let task = tokio::spawn(flowplane_control_plane::run(config, listener, async move {
            signal.cancelled().await
        }));
        Self {
            addr,
            shutdown,
            task,
        }
    }

    pub async fn start_default() -> Self {
        Self::start(Config::default()).await
    }

    /// Serves a control plane built by the test, so it can keep a handle on it.
    pub async fn serve(control_plane: ControlPlane) -> Self {
        let listener = flowplane_test_support::local_listener().await;
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let signal = shutdown.clone();
        let task = tokio::spawn(flowplane_control_plane::serve(
            control_plane,
            None,
            listener,
            async move { signal.cancelled().await },
        ));
        Self {
            addr,
            shutdown,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn client(&self) -> Client {
        self.client_with_token(None).await
    }

    pub async fn client_with_token(&self, token: Option<&str>) -> Client {
        connect(&self.url(), &ClientArgs::default(), token).await
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .expect("server stops within 20s")
            .expect("server task")
            .expect("server exits cleanly");
    }
}

pub async fn connect(url: &str, args: &ClientArgs, token: Option<&str>) -> Client {
    let channel = flowplane_grpc::client::connect(url, args)
        .await
        .expect("connect to the control plane");
    ControlPlaneServiceClient::with_interceptor(channel, AttachBearer::new(token).unwrap())
        .max_decoding_message_size(flowplane_grpc::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(flowplane_grpc::MAX_MESSAGE_BYTES)
}

pub fn capability(name: &str) -> ProcessorCapability {
    ProcessorCapability {
        name: name.into(),
        description: format!("{name} for tests"),
        version: "1.0.0".into(),
        ..Default::default()
    }
}

pub fn processor(id: &str, capabilities: &[&str]) -> pb::RegisterProcessorRequest {
    pb::RegisterProcessorRequest {
        processor_id: id.into(),
        endpoint: "127.0.0.1:7000".into(),
        capabilities: capabilities.iter().map(|c| capability(c)).collect(),
        version: "0.1.0".into(),
        ..Default::default()
    }
}

pub fn processor_heartbeat(
    id: &str,
    token: &str,
    status: HealthStatus,
) -> pb::ProcessorHeartbeatRequest {
    pb::ProcessorHeartbeatRequest {
        processor_id: id.into(),
        lease_token: token.into(),
        status: status as i32,
        ..Default::default()
    }
}

/// Every component matching `request`, following page tokens.
pub async fn list_all(
    client: &mut Client,
    mut request: pb::ListComponentsRequest,
) -> Vec<pb::Component> {
    let mut all = Vec::new();
    for _ in 0..10_000 {
        let response = client
            .list_components(request.clone())
            .await
            .expect("list")
            .into_inner();
        all.extend(response.components);
        let token = response.page.unwrap_or_default().next_page_token;
        if token.is_empty() {
            return all;
        }
        request.page.get_or_insert_default().page_token = token;
    }
    panic!("listing did not end after 10000 pages");
}

pub fn ids(components: &[pb::Component]) -> Vec<String> {
    components.iter().map(|c| c.id.clone()).collect()
}
