//! `flowplane-connect`: hosts the built-in sources and consumers behind
//! `flowplane.connect.v1.SourceService` and `ConsumerService` with the SDK, each
//! registered with the control plane as its own component when one is configured. It
//! never imports another service; everything shared lives in the SDK.

use std::{
    future::Future,
    net::{IpAddr, Ipv4Addr, SocketAddr},
};

pub use flowplane_connectors::built_ins;
use flowplane_sdk::ConnectorHost;
use tokio::net::TcpListener;

/// Where `flowplane-connect` listens unless `--listen` says otherwise.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 50081);

/// Errors of the connect service.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The SDK host failed: a setting (the message names the flag), bind, TLS,
    /// registration set-up.
    #[error(transparent)]
    Sdk(#[from] flowplane_sdk::Error),
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The SDK's host settings; `processors` selects built-ins by name (`--connectors`).
pub type Config = flowplane_sdk::HostConfig;

/// The host serving the configured built-ins.
pub fn host(config: &Config) -> Result<ConnectorHost> {
    Ok(config.connector_host(built_ins())?)
}

/// Serves the built-ins on `listener` until `shutdown` resolves; registers each with the
/// control plane when configured. On shutdown: NOT_SERVING, STOPPING, deregistered, open
/// streams drained within the grace period.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    flowplane_sdk::run_connectors(built_ins(), config, listener, shutdown).await?;
    Ok(())
}
