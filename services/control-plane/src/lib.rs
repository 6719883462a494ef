//! The control plane: processors, sources and consumers register under leases and
//! heartbeat; the pipeline service and people discover, list and watch them here.
//! This crate owns the registry semantics; it never imports another service.
//!
//! Liveness, on the server's clock: a component shows what it last reported; two
//! heartbeat intervals without a heartbeat (its heartbeat is late by more than one
//! interval) shows UNHEALTHY; a whole lease TTL of silence removes it (REMOVED, EXPIRED).

pub mod clock;
mod error;
pub mod instruments;
pub mod model;
pub mod paging;
pub mod registry;
mod service;
mod watch;

use std::{future::Future, time::Duration};

use flowplane_grpc::server::{GrpcServer, set_not_serving, set_serving};
use tokio::net::TcpListener;
use tonic::{service::Routes, transport::ServerTlsConfig};

pub use error::{Error, Result, error_detail};
pub use registry::{LeaseSettings, MemoryRegistry, Registry};
pub use service::ControlPlane;
pub use watch::WatchStream;

/// Fully qualified name of the service, as health checks and reflection know it.
pub const SERVICE_NAME: &str = "flowplane.controlplane.v1.ControlPlaneService";

/// Default lease TTL.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(15);
/// Shortest lease TTL accepted.
pub const MIN_LEASE_TTL: Duration = Duration::from_millis(100);
/// Longest lease TTL accepted.
pub const MAX_LEASE_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// Default most live components.
pub const DEFAULT_MAX_COMPONENTS: usize = 100_000;

/// Everything the control plane needs to run.
#[derive(Clone, Debug)]
pub struct Config {
    /// How long a lease lives without a heartbeat; heartbeats are due every third of it.
    pub lease_ttl: Duration,
    /// When set, the register RPCs need `authorization: Bearer <join_token>`.
    pub join_token: Option<String>,
    /// Most live components; registrations beyond it get RESOURCE_EXHAUSTED.
    pub max_components: usize,
    /// Changes buffered per watcher before it is told to resync.
    pub watch_buffer: usize,
    /// TLS identity; `None` serves plaintext.
    pub tls: Option<ServerTlsConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            lease_ttl: DEFAULT_LEASE_TTL,
            join_token: None,
            max_components: DEFAULT_MAX_COMPONENTS,
            watch_buffer: registry::DEFAULT_WATCH_BUFFER,
            tls: None,
        }
    }
}

impl Config {
    /// Checks the settings, naming the flag of the first bad one.
    pub fn validate(&self) -> Result<()> {
        if !(MIN_LEASE_TTL..=MAX_LEASE_TTL).contains(&self.lease_ttl) {
            return Err(Error::Config(format!(
                "--lease-ttl must be between {MIN_LEASE_TTL:?} and {MAX_LEASE_TTL:?}, got {:?}",
                self.lease_ttl
            )));
        }
        if self.max_components == 0 {
            return Err(Error::Config("--max-components must be at least 1".into()));
        }
        if self.watch_buffer == 0 {
            return Err(Error::Config("--watch-buffer must be at least 1".into()));
        }
        if self
            .join_token
            .as_deref()
            .is_some_and(|t| t.is_empty() || t.chars().any(|c| !c.is_ascii_graphic()))
        {
            return Err(Error::Config(
                "--join-token must be non-empty printable ascii without spaces".into(),
            ));
        }
        Ok(())
    }
}

/// Serves the control plane on `listener` until `shutdown` resolves, with the in-memory
/// registry. On shutdown: health goes NOT_SERVING, watches end cleanly, in-flight calls
/// finish, then this returns.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    config.validate()?;
    let control_plane = ControlPlane::new(&config);
    serve(control_plane, config.tls, listener, shutdown).await
}

/// Like [`run`], for a [`ControlPlane`] built by the caller (another registry backend,
/// or a test that keeps a handle on the registry).
pub async fn serve(
    control_plane: ControlPlane,
    tls: Option<ServerTlsConfig>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    instruments::describe();
    let address = listener
        .local_addr()
        .map_or_else(|_| "unknown".to_string(), |a| a.to_string());
    let stop = control_plane.shutdown_token();
    let sweeper = control_plane.spawn_sweeper();
    let server = GrpcServer::new()?
        .with_routes(Routes::new(control_plane.clone().into_server()))
        .with_tls(tls);
    let health = server.health();
    set_serving(&health, SERVICE_NAME).await;
    let settings = control_plane.registry().settings();
    tracing::info!(
        address = %address,
        lease_ttl = ?settings.ttl,
        heartbeat_interval = ?settings.heartbeat_interval,
        "control plane serving"
    );
    let drain = {
        let stop = stop.clone();
        async move {
            shutdown.await;
            tracing::info!("control plane draining");
            set_not_serving(&health, SERVICE_NAME).await;
            stop.cancel();
        }
    };
    let served = server.serve(listener, drain).await;
    stop.cancel();
    let _ = sweeper.await;
    tracing::info!("control plane stopped");
    served.map_err(Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_validation_names_the_flag() {
        let short = Config {
            lease_ttl: Duration::from_millis(10),
            ..Config::default()
        };
        assert!(
            short
                .validate()
                .unwrap_err()
                .to_string()
                .contains("--lease-ttl")
        );
        let full = Config {
            max_components: 0,
            ..Config::default()
        };
        assert!(
            full.validate()
                .unwrap_err()
                .to_string()
                .contains("--max-components")
        );
        let token = Config {
            join_token: Some("has space".into()),
            ..Config::default()
        };
        assert!(
            token
                .validate()
                .unwrap_err()
                .to_string()
                .contains("--join-token")
        );
        assert!(Config::default().validate().is_ok());
    }
}
