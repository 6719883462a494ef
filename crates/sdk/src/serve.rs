//! Runs a host the production way: the shared gRPC stack (health, reflection, limits,
//! TLS), the lifecycle with the control plane when one is configured, and a graceful
//! shutdown through the host's `Lifecycle`: NOT_SERVING and deregistered at once, new
//! streams refused UNAVAILABLE, open streams given the grace period, then ended
//! UNAVAILABLE, and only then the server closed. It must never cut an open stream
//! before the grace period is over.

use std::{future::Future, pin::pin, time::Duration};

use flowplane_grpc::{
    auth::{Access, AccessTable, Policy, Role, Tokens},
    server::GrpcServer,
};
use flowplane_proto::processor::v1::processor_service_server::SERVICE_NAME;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{service::Routes, transport::ServerTlsConfig};

use crate::{ProcessorHost, Registration, RegistrationConfig, Result};

/// How long the server may take to close after the grace period ended the open streams.
const AFTER_ABORT: Duration = Duration::from_secs(5);

/// The role each RPC of a host needs when it is given tokens: `process`, held by the
/// pipeline, so an outsider who lists the hosts cannot run their processors directly.
pub const HOST_ACCESS: &AccessTable = &[
    (
        "/flowplane.processor.v1.ProcessorService/Process",
        Access::Needs(Role::Process),
    ),
    (
        "/flowplane.processor.v1.ProcessorService/GetCapabilities",
        Access::Needs(Role::Process),
    ),
];

/// How to serve a host.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// TLS identity; `None` serves plaintext.
    pub tls: Option<ServerTlsConfig>,
    /// Address registered with the control plane; `None` uses the bound address.
    pub advertise: Option<String>,
    /// Register with this control plane; `None` serves without registering.
    pub registration: Option<RegistrationConfig>,
    /// How long open streams may go on after shutdown before they end UNAVAILABLE.
    pub grace_period: Duration,
    /// Tokens by role (`--token-file`); when set, `Process` and `GetCapabilities` need a
    /// `process` token (see [`HOST_ACCESS`]). `None` serves every caller.
    pub tokens: Option<Tokens>,
    /// Serve reflection (`--reflection`), listing the host service, health and reflection.
    pub reflection: bool,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            tls: None,
            advertise: None,
            registration: None,
            grace_period: Duration::from_secs(10),
            tokens: None,
            reflection: true,
        }
    }
}

/// Serves `host` on `listener` until `shutdown` resolves. Then: health NOT_SERVING,
/// STOPPING reported and the host deregistered, new `Process` streams refused at once
/// with UNAVAILABLE (reason `DRAINING`), open streams drained within the grace period and
/// ended UNAVAILABLE (reason `SHUTTING_DOWN`) after it; then the server closes.
pub async fn serve(
    host: ProcessorHost,
    options: ServeOptions,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    let bound = listener.local_addr()?;
    let endpoint = options
        .advertise
        .clone()
        .unwrap_or_else(|| bound.to_string());
    let registration = options
        .registration
        .map(|config| Registration::new(config, endpoint.clone(), host.clone()))
        .transpose()?;
    let server = GrpcServer::new()?
        .with_tls(options.tls)
        .with_auth(
            options
                .tokens
                .map(|tokens| Policy::new(tokens, HOST_ACCESS)),
        )
        .with_reflection(options.reflection, &[SERVICE_NAME])
        .with_routes(Routes::new(host.service()));
    crate::stats::describe();
    crate::stats::register_processors(host.capabilities().iter().map(|c| c.name.as_str()));
    flowplane_grpc::server::set_serving(&server.health(), SERVICE_NAME).await;
    tracing::info!(
        listen = %bound,
        endpoint = %endpoint,
        processors = ?host.capabilities().iter().map(|c| c.name.clone()).collect::<Vec<_>>(),
        "processor host serving"
    );

    // `stop`: the shutdown has started (or the server failed); `close`: the drain is over
    // and the server may stop accepting and close its connections.
    let stop = CancellationToken::new();
    let close = CancellationToken::new();
    let watch_shutdown = async {
        tokio::select! {
            () = shutdown => {
                tracing::info!("processor host shutting down");
                stop.cancel();
            }
            () = stop.cancelled() => {}
        }
    };
    let lifecycle = async {
        if let Some(registration) = registration {
            registration.run(stop.clone()).await;
        }
    };
    let health = server.health();
    let grace = options.grace_period;
    let drain = async {
        stop.cancelled().await;
        // Connections stay open while draining, so a new stream meets the host's own
        // UNAVAILABLE (naming the drain) instead of a transport error.
        flowplane_grpc::server::set_not_serving(&health, SERVICE_NAME).await;
        let left = host.drain(grace).await;
        if left > 0 {
            tracing::warn!(
                open_streams = left,
                "grace period over, ended open streams UNAVAILABLE"
            );
        }
        close.cancel();
    };
    let serving = async {
        let mut serve = pin!(server.serve(listener, close.clone().cancelled_owned()));
        let result = tokio::select! {
            result = &mut serve => result,
            () = drain => match tokio::time::timeout(AFTER_ABORT, &mut serve).await {
                Ok(result) => result,
                Err(_) => {
                    tracing::warn!("server did not close after the grace period; leaving it");
                    Ok(())
                }
            },
        };
        // A server that failed by itself takes the lifecycle down with it.
        stop.cancel();
        result
    };
    let ((), result, ()) = tokio::join!(watch_shutdown, serving, lifecycle);
    result?;
    // Every response has ended by now; let the stream tasks drop their processors.
    if tokio::time::timeout(AFTER_ABORT, host.streams_ended())
        .await
        .is_err()
    {
        tracing::warn!("some stream tasks had not ended when the host stopped");
    }
    tracing::info!("processor host stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rpc_is_in_the_access_table() {
        assert_eq!(
            flowplane_grpc::auth::unlisted_methods(SERVICE_NAME, HOST_ACCESS),
            Vec::<String>::new()
        );
    }
}
