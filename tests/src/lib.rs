//! Harness for cross-service tests: starts the real services through their `run`
//! functions on 127.0.0.1 listeners (control plane, processor hosts, pipeline), and
//! gives tests typed clients. Every service stops when its handle is stopped or dropped.

pub mod data;
pub mod process;
pub mod replicas;
pub mod session;
pub mod trace;

use std::{net::SocketAddr, time::Duration};

use flowplane_proto::{
    common::v1::{ComponentKind, HealthStatus},
    controlplane::v1::{
        ListComponentsRequest, control_plane_service_client::ControlPlaneServiceClient,
    },
    streaming::v1::{
        PipelineManifest, ValidatePipelineRequest,
        streaming_pipeline_service_client::StreamingPipelineServiceClient,
    },
};
use flowplane_test_support::{local_listener, wait_until};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// A service started in this process.
pub struct Running {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Running {
    fn spawn<F>(
        addr: SocketAddr,
        name: &'static str,
        run: impl FnOnce(CancellationToken) -> F,
    ) -> Self
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let stop = CancellationToken::new();
        let fut = run(stop.clone());
        let task = tokio::spawn(async move {
            if let Err(err) = fut.await {
                panic!("{name} failed: {err:#}");
            }
        });
        Self {
            addr,
            stop,
            task: Some(task),
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Signals shutdown without waiting: the service drains while the test goes on.
    pub fn begin_stop(&self) {
        self.stop.cancel();
    }

    /// Graceful stop: signals shutdown and waits for `run` to return.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(30), task)
                .await
                .expect("service stops within 30s")
                .expect("service task");
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A control plane with this lease TTL.
pub async fn control_plane(lease_ttl: Duration) -> Running {
    control_plane_on(local_listener().await, lease_ttl).await
}

/// A control plane on a given listener (to restart one on the same port).
pub async fn control_plane_on(listener: tokio::net::TcpListener, lease_ttl: Duration) -> Running {
    let addr = listener.local_addr().expect("addr");
    let config = flowplane_control_plane::Config {
        lease_ttl,
        ..Default::default()
    };
    Running::spawn(addr, "control plane", move |stop| async move {
        flowplane_control_plane::run(config, listener, async move { stop.cancelled().await })
            .await
            .map_err(Into::into)
    })
}

/// A control plane with a custom configuration.
pub async fn control_plane_with(config: flowplane_control_plane::Config) -> Running {
    let listener = local_listener().await;
    let addr = listener.local_addr().expect("addr");
    Running::spawn(addr, "control plane", move |stop| async move {
        flowplane_control_plane::run(config, listener, async move { stop.cancelled().await })
            .await
            .map_err(Into::into)
    })
}

/// A processor host with a custom configuration.
pub async fn processor_with(config: flowplane_processor::Config) -> Running {
    let listener = local_listener().await;
    let addr = listener.local_addr().expect("addr");
    Running::spawn(addr, "processor", move |stop| async move {
        flowplane_processor::run(config, listener, async move { stop.cancelled().await })
            .await
            .map_err(Into::into)
    })
}

/// A processor host with every built-in, registered as `id` with the control plane.
pub async fn processor(control_plane: &str, id: &str) -> Running {
    let listener = local_listener().await;
    let addr = listener.local_addr().expect("addr");
    let config = flowplane_processor::Config {
        control_plane: Some(control_plane.to_string()),
        id: Some(id.to_string()),
        grace_period: Duration::from_secs(2),
        ..Default::default()
    };
    Running::spawn(addr, "processor", move |stop| async move {
        flowplane_processor::run(config, listener, async move { stop.cancelled().await })
            .await
            .map_err(Into::into)
    })
}

/// A pipeline service discovering processors through `control_plane`.
pub async fn pipeline(control_plane: &str) -> Running {
    pipeline_with(flowplane_pipeline::Config::new(control_plane)).await
}

/// A pipeline service with a custom configuration.
pub async fn pipeline_with(config: flowplane_pipeline::Config) -> Running {
    let listener = local_listener().await;
    let addr = listener.local_addr().expect("addr");
    Running::spawn(addr, "pipeline", move |stop| async move {
        flowplane_pipeline::run(config, listener, async move { stop.cancelled().await })
            .await
            .map_err(Into::into)
    })
}

/// A control plane, some processor hosts and a pipeline service.
pub struct Platform {
    /// The control plane.
    pub control_plane: Running,
    /// The processor hosts, named `proc-0`, `proc-1`, ...
    pub processors: Vec<Option<Running>>,
    /// The pipeline service.
    pub pipeline: Running,
}

impl Platform {
    /// Starts everything and waits until `processors` hosts are HEALTHY.
    pub async fn start(processors: usize) -> Self {
        Self::start_with(processors, |config| config).await
    }

    /// [`Platform::start`] with the pipeline's configuration adjusted by `configure`.
    pub async fn start_with(
        processors: usize,
        configure: impl FnOnce(flowplane_pipeline::Config) -> flowplane_pipeline::Config,
    ) -> Self {
        let control_plane = control_plane(Duration::from_secs(3)).await;
        let mut hosts = Vec::new();
        for i in 0..processors {
            hosts.push(Some(
                processor(&control_plane.url(), &format!("proc-{i}")).await,
            ));
        }
        let pipeline = pipeline_with(configure(flowplane_pipeline::Config::new(
            control_plane.url(),
        )))
        .await;
        let platform = Self {
            control_plane,
            processors: hosts,
            pipeline,
        };
        platform.wait_for_healthy_processors(processors).await;
        platform
    }

    /// A client of the control plane.
    pub async fn control_plane_client(&self) -> ControlPlaneServiceClient<Channel> {
        ControlPlaneServiceClient::connect(self.control_plane.url())
            .await
            .expect("control plane reachable")
    }

    /// A client of the pipeline service with flowplane's message limits.
    pub async fn pipeline_client(&self) -> StreamingPipelineServiceClient<Channel> {
        StreamingPipelineServiceClient::connect(self.pipeline.url())
            .await
            .expect("pipeline reachable")
            .max_decoding_message_size(flowplane_grpc::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(flowplane_grpc::MAX_MESSAGE_BYTES)
    }

    /// Waits until the control plane lists `n` HEALTHY processor hosts.
    pub async fn wait_for_healthy_processors(&self, n: usize) {
        let client = self.control_plane_client().await;
        wait_until(&format!("{n} healthy processor hosts"), || {
            let mut client = client.clone();
            async move {
                client
                    .list_components(ListComponentsRequest {
                        kind: ComponentKind::Processor as i32,
                        status: HealthStatus::Healthy as i32,
                        ..Default::default()
                    })
                    .await
                    .is_ok_and(|r| r.into_inner().components.len() == n)
            }
        })
        .await;
    }

    /// Waits until the pipeline service can run `manifest` (its view has the processors).
    pub async fn wait_until_runnable(&self, manifest: &PipelineManifest) {
        wait_until_runnable(self.pipeline_client().await, manifest).await;
    }
}

/// Waits until the pipeline behind `client` can run `manifest`: it validates with no
/// problem, so the pipeline's view has every processor the manifest names.
pub async fn wait_until_runnable(
    client: StreamingPipelineServiceClient<Channel>,
    manifest: &PipelineManifest,
) {
    wait_until("the pipeline service to see the processors", || {
        let mut client = client.clone();
        let manifest = manifest.clone();
        async move {
            client
                .validate_pipeline(ValidatePipelineRequest {
                    manifest: Some(manifest),
                })
                .await
                .is_ok_and(|r| r.into_inner().problems.is_empty())
        }
    })
    .await;
}
