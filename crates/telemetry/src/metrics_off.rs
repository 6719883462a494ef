//! The metrics API of a binary built without the `prometheus` feature: the `metrics`
//! macros record into nothing, no RPC layer counts, and asking for a /metrics endpoint
//! fails naming `--metrics-listen`. It must keep the names a server binary calls, so the
//! feature changes what is served, never whether a binary compiles.

use std::{future::Future, net::SocketAddr};

use crate::{Error, Result};

/// No recorder is installed, so no layer is needed: calls pass through untouched.
pub fn server_layer() -> tower::layer::util::Identity {
    tower::layer::util::Identity::new()
}

/// Without the exporter there is nothing to serve: `None` binds nothing, an address fails.
pub async fn spawn(
    addr: Option<SocketAddr>,
    _shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Option<SocketAddr>> {
    match addr {
        None => Ok(None),
        Some(addr) => Err(Error::MetricsNotBuilt { addr }),
    }
}

/// Nothing records without the exporter, so there is no build info to set.
pub fn build_info(_service: &str, _version: &str) -> Result<()> {
    Ok(())
}
