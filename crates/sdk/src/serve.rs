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
use flowplane_proto::{
    connect::v1::{
        consumer_service_server::SERVICE_NAME as CONSUMER_SERVICE,
        source_service_server::SERVICE_NAME as SOURCE_SERVICE,
    },
    processor::v1::processor_service_server::SERVICE_NAME,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{service::Routes, transport::ServerTlsConfig};

use crate::{ConnectorHost, ProcessorHost, Registration, RegistrationConfig, Result};

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

/// The role each RPC of a connector host needs when it is given tokens: `process`, as
/// for processor hosts, held by the pipeline that reads sources and delivers results.
pub const CONNECT_ACCESS: &AccessTable = &[
    (
        "/flowplane.connect.v1.SourceService/Read",
        Access::Needs(Role::Process),
    ),
    (
        "/flowplane.connect.v1.ConsumerService/Deliver",
        Access::Needs(Role::Process),
    ),
];

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
    let endpoint = advertised(&options, bound);
    let registrations = options
        .registration
        .clone()
        .map(|config| Registration::new(config, endpoint, host.clone()))
        .into_iter()
        .collect::<Result<Vec<_>>>()?;
    crate::stats::describe();
    crate::stats::register_processors(host.capabilities().iter().map(|c| c.name.as_str()));
    tracing::info!(
        listen = %bound,
        endpoint = %advertised(&options, bound),
        processors = ?host.capabilities().iter().map(|c| c.name.clone()).collect::<Vec<_>>(),
        "processor host serving"
    );
    let served = Served {
        what: "processor host",
        services: &[SERVICE_NAME],
        access: HOST_ACCESS,
        routes: Routes::new(host.service()),
        registrations,
    };
    serve_host(host, served, options, listener, shutdown).await
}

/// Serves a connector host on `listener` until `shutdown` resolves, exactly as
/// [`serve`] serves a processor host (health, reflection, TLS, tokens with
/// [`CONNECT_ACCESS`], drain), with every hosted connector registered as its own
/// component: kind SOURCE or CONSUMER, id `<id>-source-<name>` or `<id>-consumer-<name>`
/// when the registration asks for an id (else one the control plane assigns), label
/// [`crate::CAPABILITY_LABEL`] = the connector's name, and its data types.
pub async fn serve_connectors(
    host: ConnectorHost,
    options: ServeOptions,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    let bound = listener.local_addr()?;
    let endpoint = advertised(&options, bound);
    let mut registrations = Vec::new();
    if let Some(config) = &options.registration {
        let base = host
            .host_id()
            .map(str::to_string)
            .or_else(|| config.processor_id.clone());
        for slot in host.slots() {
            let mut config = config.clone();
            config.processor_id = base.as_deref().map(|base| slot.wanted_id(base));
            config.metadata = slot.labels(config.metadata);
            registrations.push(Registration::for_subject(
                config,
                endpoint.clone(),
                slot.clone(),
            )?);
        }
    }
    // Only the services with connectors behind them; both when the host is empty, so a
    // caller meets NOT_FOUND naming what the host serves rather than UNIMPLEMENTED.
    let (routes, services): (Routes, &'static [&'static str]) =
        match (host.sources().is_empty(), host.consumers().is_empty()) {
            (false, true) => (Routes::new(host.source_service()), &[SOURCE_SERVICE]),
            (true, false) => (Routes::new(host.consumer_service()), &[CONSUMER_SERVICE]),
            _ => (
                Routes::new(host.source_service()).add_service(host.consumer_service()),
                &[SOURCE_SERVICE, CONSUMER_SERVICE],
            ),
        };
    tracing::info!(
        listen = %bound,
        endpoint = %endpoint,
        sources = ?host.sources().iter().map(|c| c.name().to_string()).collect::<Vec<_>>(),
        consumers = ?host.consumers().iter().map(|c| c.name().to_string()).collect::<Vec<_>>(),
        "connector host serving"
    );
    let served = Served {
        what: "connector host",
        services,
        access: CONNECT_ACCESS,
        routes,
        registrations,
    };
    serve_host(host, served, options, listener, shutdown).await
}

fn advertised(options: &ServeOptions, bound: std::net::SocketAddr) -> String {
    options
        .advertise
        .clone()
        .unwrap_or_else(|| bound.to_string())
}

/// What [`serve_host`] needs of a host: its drain and the end of its stream tasks.
pub(crate) trait Drains: Send + Sync + 'static {
    fn drain(&self, grace: Duration) -> impl Future<Output = usize> + Send;
    fn streams_ended(&self) -> impl Future<Output = ()> + Send;
}

impl Drains for ProcessorHost {
    fn drain(&self, grace: Duration) -> impl Future<Output = usize> + Send {
        ProcessorHost::drain(self, grace)
    }
    fn streams_ended(&self) -> impl Future<Output = ()> + Send {
        ProcessorHost::streams_ended(self)
    }
}

impl Drains for ConnectorHost {
    fn drain(&self, grace: Duration) -> impl Future<Output = usize> + Send {
        ConnectorHost::drain(self, grace)
    }
    fn streams_ended(&self) -> impl Future<Output = ()> + Send {
        ConnectorHost::streams_ended(self)
    }
}

/// A host's routes and what they are called, its access table and its registrations.
struct Served {
    /// "processor host" or "connector host", for logs.
    what: &'static str,
    services: &'static [&'static str],
    access: &'static AccessTable,
    routes: Routes,
    registrations: Vec<Registration>,
}

/// The one serving path of every host kind: server stack, registrations, drain.
async fn serve_host<H: Drains>(
    host: H,
    served: Served,
    options: ServeOptions,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    let Served {
        what,
        services,
        access,
        routes,
        registrations,
    } = served;
    let server = GrpcServer::new()?
        .with_tls(options.tls)
        .with_auth(options.tokens.map(|tokens| Policy::new(tokens, access)))
        .with_reflection(options.reflection, services)
        .with_routes(routes);
    for service in services {
        flowplane_grpc::server::set_serving(&server.health(), service).await;
    }

    // `stop`: the shutdown has started (or the server failed); `close`: the drain is over
    // and the server may stop accepting and close its connections.
    let stop = CancellationToken::new();
    let close = CancellationToken::new();
    let watch_shutdown = async {
        tokio::select! {
            () = shutdown => {
                tracing::info!("{what} shutting down");
                stop.cancel();
            }
            () = stop.cancelled() => {}
        }
    };
    let lifecycle = async {
        let mut running = tokio::task::JoinSet::new();
        for registration in registrations {
            running.spawn(registration.run(stop.clone()));
        }
        while running.join_next().await.is_some() {}
    };
    let health = server.health();
    let grace = options.grace_period;
    let drain = async {
        stop.cancelled().await;
        // Connections stay open while draining, so a new stream meets the host's own
        // UNAVAILABLE (naming the drain) instead of a transport error.
        for service in services {
            flowplane_grpc::server::set_not_serving(&health, service).await;
        }
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
    tracing::info!("{what} stopped");
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
        for service in [SOURCE_SERVICE, CONSUMER_SERVICE] {
            assert_eq!(
                flowplane_grpc::auth::unlisted_methods(service, CONNECT_ACCESS),
                Vec::<String>::new()
            );
        }
    }
}
