//! The server stack: every flowplane server gets grpc.health.v1, reflection (v1 and
//! v1alpha, so grpcurl works), message limits, keepalives, TLS when configured, trace
//! propagation and RPC metrics (the flowplane_telemetry layers) and graceful shutdown.
//! A service hands over its routes; it never builds a server itself.

use std::{future::Future, time::Duration};

use tokio::net::TcpListener;
use tonic::{
    service::Routes,
    transport::{Server, ServerTlsConfig, server::TcpIncoming},
};
use tonic_health::{ServingStatus, server::HealthReporter};

use crate::Result;

/// Health, reflection and transport settings shared by every server.
pub struct GrpcServer {
    health: HealthReporter,
    routes: Routes,
    tls: Option<ServerTlsConfig>,
}

impl GrpcServer {
    /// A server with health and reflection for the flowplane and health packages.
    pub fn new() -> Result<Self> {
        let (health, health_service) = tonic_health::server::health_reporter();
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(flowplane_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        // Start from a router without tonic's UNIMPLEMENTED fallback: axum refuses to
        // merge two routers that both have one, and the service's routes bring theirs.
        let mut routes = Routes::default();
        *routes.axum_router_mut() = Default::default();
        let routes = routes
            .add_service(health_service)
            .add_service(reflection().build_v1()?)
            .add_service(reflection().build_v1alpha()?);
        Ok(Self {
            health,
            routes,
            tls: None,
        })
    }

    /// The health reporter, for a service to set its status.
    pub fn health(&self) -> HealthReporter {
        self.health.clone()
    }

    /// Adds the service's own routes, built with `Routes::new(svc).add_service(..)`; call
    /// once, so that their UNIMPLEMENTED fallback is the server's.
    pub fn with_routes(mut self, routes: Routes) -> Self {
        let mut merged = self.routes.into_axum_router();
        merged = merged.merge(routes.into_axum_router());
        self.routes = Routes::from(merged);
        self
    }

    /// Serves TLS with this identity; `None` keeps plaintext.
    pub fn with_tls(mut self, tls: Option<ServerTlsConfig>) -> Self {
        self.tls = tls;
        self
    }

    /// Serves on `listener` until `shutdown` resolves, then marks every service
    /// NOT_SERVING, stops accepting and waits for in-flight calls to finish.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<()> {
        let mut builder = Server::builder()
            .tcp_nodelay(true)
            .http2_keepalive_interval(Some(Duration::from_secs(20)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .http2_adaptive_window(Some(true));
        if let Some(tls) = self.tls {
            builder = builder.tls_config(tls)?;
        }
        // Tracing outermost, so the metrics of a call are recorded inside its span.
        let builder = builder
            .layer(flowplane_telemetry::grpc::server_layer())
            .layer(flowplane_telemetry::metrics::server_layer())
            .layer(crate::decode::DecodeErrorsLayer);
        let health = self.health;
        let signal = async move {
            shutdown.await;
            set_all_not_serving(&health).await;
        };
        // Serving a pre-bound listener ignores the builder's tcp_nodelay, so set it per
        // accepted socket: with Nagle on, small frames wait for a delayed ACK (~40 ms).
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        builder
            .serve_with_incoming_shutdown(self.routes, incoming, signal)
            .await?;
        Ok(())
    }
}

/// Marks the whole server (the empty service name) NOT_SERVING.
async fn set_all_not_serving(health: &HealthReporter) {
    health
        .set_service_status("", ServingStatus::NotServing)
        .await;
}

/// Marks `service` (a fully qualified gRPC service name) and the whole server SERVING.
pub async fn set_serving(health: &HealthReporter, service: &str) {
    health
        .set_service_status(service, ServingStatus::Serving)
        .await;
    health.set_service_status("", ServingStatus::Serving).await;
}

/// Marks `service` and the whole server NOT_SERVING, for the start of a drain.
pub async fn set_not_serving(health: &HealthReporter, service: &str) {
    health
        .set_service_status(service, ServingStatus::NotServing)
        .await;
    set_all_not_serving(health).await;
}
