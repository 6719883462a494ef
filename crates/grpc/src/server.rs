//! The server stack: every flowplane server gets grpc.health.v1, reflection (v1 and
//! v1alpha, so grpcurl works; it lists only the services the server serves, or is off),
//! message limits, keepalives, TLS when configured, trace propagation and RPC metrics
//! (the flowplane_telemetry layers) and graceful shutdown; for orchestrators, a plaintext
//! health-only port and a maximum connection age (see [`ServingOptions`]).
//! A service hands over its routes; it never builds a server itself.

use std::{cell::Cell, future::Future, time::Duration};

use tokio::net::TcpListener;
use tonic::{
    service::Routes,
    transport::{Server, ServerTlsConfig, server::TcpIncoming},
};
use tonic_health::{
    ServingStatus,
    pb::health_server::HealthServer,
    server::{HealthReporter, HealthService},
};

use crate::{
    Result,
    auth::{AuthLayer, Policy},
};

// HTTP/2 settings, chosen for h2 0.4.20's small-DATA-frame budget. h2 charges every
// non-final DATA frame under 256 bytes (256 - its length) against a per-connection
// budget until the application reads it; a frame of 256 bytes or more pays back. When
// the budget runs out h2 ends the whole connection with GOAWAY(ENHANCE_YOUR_CALM,
// "too_many_data_frames"). The budget is half the connection's receive window, at least
// 25,600: at the spec's 64 KiB window about 140 unread 20-byte chunks kill a connection,
// which a few hundred sessions each sending a first chunk before they are read do at once.
// Both ends use the same windows (the client imports these), so each side can take the
// same unread load from the other.

/// Receive window of one connection: 32 MiB. The data-frame budget is half of it, 16 MiB,
/// so about 65,000 unread small frames (65 per session at 1,000 sessions on a connection)
/// before h2 calls for calm. Memory: a peer may push at most this much unread data per
/// connection, the same as one session's default byte window (`window_bytes`).
pub const CONNECTION_WINDOW: u32 = 32 * 1024 * 1024;

/// Receive window of one stream: 1 MiB. A stream can then hold at most 1 MiB unread,
/// which at 16 bytes a message (5 of them the gRPC header) is 65,536 frames charging 240
/// each, 15.7 MB: no single stream can exhaust the 16 MiB budget alone. 1 MiB still keeps
/// sixteen 64 KiB chunks in flight per stream, more than a localhost round trip needs.
pub const STREAM_WINDOW: u32 = 1024 * 1024;

/// Largest HTTP/2 frame this side accepts: 256 KiB, not the spec's 16 KiB default, so a
/// 64 KiB chunk crosses as one DATA frame instead of five, with one wake-up of the reader
/// and one flow-control update instead of five. Every flowplane client and server
/// advertises it; h2 buffers one frame at a time, so it bounds a frame's memory too.
pub const MAX_FRAME_SIZE: u32 = 256 * 1024;

/// Streams one connection may have open at once: no limit, deliberately. The pipeline
/// multiplexes the node stream of every session placed on a host over one connection, so
/// a limit here would cap the sessions per host, and streams past it wait at the client
/// for ever (4,096 hung B4's 10,000 idle sessions). Sessions are bounded where that means
/// something (the pipeline's `max_sessions`, the host's `max_streams`), and unread data by
/// [`CONNECTION_WINDOW`] whatever the number of streams.
pub const MAX_CONCURRENT_STREAMS: Option<u32> = None;

/// Streams a client may reset before the server has accepted them (h2's default is 20,
/// its rapid-reset guard; past it h2 ends the connection with GOAWAY(ENHANCE_YOUR_CALM,
/// "too_many_resets")). A client cancelling a burst of sessions it just opened resets
/// that many at once; 1,024 covers the bench's bursts, and each such stream is only a
/// header entry until h2 drops it, so the guard still bounds the work a peer can cause.
pub const MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 1024;

/// The service name a liveness probe asks about: SERVING from the start of
/// [`GrpcServer::serve`] to the end of the process, drain included. Readiness asks about
/// the whole server (the empty name), which goes NOT_SERVING when the drain starts.
pub const LIVENESS_SERVICE: &str = "grpc.health.v1.Health";

/// Services every server serves besides its own, as reflection lists them.
const STACK_SERVICES: &[&str] = &[
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

/// What reflection lists.
enum Reflection {
    /// No reflection service at all (`--reflection=false`).
    Off,
    /// Every service in the descriptor sets: for test servers that never name theirs.
    All,
    /// These services (fully qualified), health and reflection.
    Only(Vec<String>),
}

/// How a server meets an orchestrator such as Kubernetes: a plaintext port for its
/// probes, and an age after which each connection is asked to go away. The default has
/// neither, which is how tests and embedded servers run.
#[derive(Debug, Default)]
pub struct ServingOptions {
    /// A second, plaintext listener serving only `grpc.health.v1.Health`, with the very
    /// statuses of the main server. kubelet's gRPC probes speak no TLS, so with TLS on the
    /// main port this is what they call (`--health-listen`).
    pub health_listener: Option<TcpListener>,
    /// After this long a connection gets a GOAWAY: its open calls go on, new ones go over
    /// a fresh connection, which a load balancer may place on another (newer) pod.
    pub max_connection_age: Option<Duration>,
    /// How long calls may outlive [`ServingOptions::max_connection_age`] before the
    /// connection is closed under them; `None` waits for them to end on their own.
    pub max_connection_age_grace: Option<Duration>,
}

tokio::task_local! {
    /// The options a binary's `main` gives the one server its `run` builds. A task-local
    /// rather than a field of every service's config keeps the services' `run(config,
    /// listener, shutdown)` as they are; it only reaches servers built inside the scope.
    static PROCESS_OPTIONS: Cell<Option<ServingOptions>>;
}

/// Runs `future` (a service's `run`) so that the first [`GrpcServer`] it builds takes
/// `options`; what [`crate::binary::serve_main`] does with the `ServeArgs` settings.
pub async fn scope_serving_options<F: Future>(options: ServingOptions, future: F) -> F::Output {
    PROCESS_OPTIONS
        .scope(Cell::new(Some(options)), future)
        .await
}

/// Health, reflection and transport settings shared by every server.
pub struct GrpcServer {
    health: HealthReporter,
    routes: Routes,
    tls: Option<ServerTlsConfig>,
    auth: Option<Policy>,
    reflection: Reflection,
    options: ServingOptions,
}

impl GrpcServer {
    /// A server with health, and reflection over the flowplane and health packages; a
    /// service names what it serves with [`GrpcServer::with_reflection`]. Inside
    /// [`scope_serving_options`] it takes the scope's options (once).
    pub fn new() -> Result<Self> {
        let (health, health_service) = tonic_health::server::health_reporter();
        // Start from a router without tonic's UNIMPLEMENTED fallback: axum refuses to
        // merge two routers that both have one, and the service's routes bring theirs.
        let mut routes = Routes::default();
        *routes.axum_router_mut() = Default::default();
        let routes = routes.add_service(health_service);
        Ok(Self {
            health,
            routes,
            tls: None,
            auth: None,
            reflection: Reflection::All,
            options: PROCESS_OPTIONS
                .try_with(Cell::take)
                .ok()
                .flatten()
                .unwrap_or_default(),
        })
    }

    /// Serves with these orchestrator settings instead of the scope's.
    pub fn with_serving_options(mut self, options: ServingOptions) -> Self {
        self.options = options;
        self
    }

    /// Reflection lists exactly `services` (fully qualified names), health and
    /// reflection when `enabled`; when not, no reflection service is served at all.
    pub fn with_reflection(mut self, enabled: bool, services: &[&str]) -> Self {
        self.reflection = if enabled {
            Reflection::Only(services.iter().map(|s| s.to_string()).collect())
        } else {
            Reflection::Off
        };
        self
    }

    /// The reflection routes for the configured listing, none when it is off.
    fn reflection_routes(&self) -> Result<Option<Routes>> {
        let names: Option<Vec<&str>> = match &self.reflection {
            Reflection::Off => return Ok(None),
            Reflection::All => None,
            Reflection::Only(own) => Some(
                own.iter()
                    .map(String::as_str)
                    .chain(STACK_SERVICES.iter().copied())
                    .collect(),
            ),
        };
        // Describe only what is listed: a service left out of the listing must not be
        // fetchable by its exact name either.
        let own = match &names {
            Some(names) => served_descriptors(flowplane_proto::FILE_DESCRIPTOR_SET, names)?,
            None => flowplane_proto::FILE_DESCRIPTOR_SET.to_vec(),
        };
        let builder = || {
            let mut builder = tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(&own)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
            for name in names.iter().flatten() {
                builder = builder.with_service_name(*name);
            }
            builder
        };
        let mut routes = Routes::default();
        *routes.axum_router_mut() = Default::default();
        Ok(Some(
            routes
                .add_service(builder().build_v1()?)
                .add_service(builder().build_v1alpha()?),
        ))
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

    /// Checks every call against `policy` (tokens and the service's access table);
    /// `None` lets every call through. Health and reflection are always open.
    pub fn with_auth(mut self, policy: Option<Policy>) -> Self {
        self.auth = policy;
        self
    }

    /// Serves on `listener` until `shutdown` resolves, then marks every service
    /// NOT_SERVING, stops accepting and waits for in-flight calls to finish.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<()> {
        let reflection = self.reflection_routes()?;
        let mut routes = self.routes;
        if let Some(reflection) = reflection {
            routes = Routes::from(
                routes
                    .into_axum_router()
                    .merge(reflection.into_axum_router()),
            );
        }
        let mut builder = Server::builder()
            .tcp_nodelay(true)
            .http2_keepalive_interval(Some(Duration::from_secs(20)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            // Fixed windows, not the adaptive one: hyper's adaptive window starts at the
            // 64 KiB of the spec, and h2 sizes the small-frame budget from it.
            .http2_adaptive_window(Some(false))
            .initial_connection_window_size(CONNECTION_WINDOW)
            .initial_stream_window_size(STREAM_WINDOW)
            .max_frame_size(MAX_FRAME_SIZE)
            .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
            .http2_max_pending_accept_reset_streams(Some(MAX_PENDING_ACCEPT_RESET_STREAMS));
        if let Some(age) = self.options.max_connection_age {
            builder = builder.max_connection_age(age);
        }
        if let Some(grace) = self.options.max_connection_age_grace {
            builder = builder.max_connection_age_grace(grace);
        }
        if let Some(tls) = self.tls {
            builder = builder.tls_config(tls)?;
        }
        // Tracing outermost, so the metrics of a call are recorded inside its span; auth
        // inside both, so refused calls are traced and counted with their status.
        let builder = builder
            .layer(flowplane_telemetry::grpc::server_layer())
            .layer(flowplane_telemetry::metrics::server_layer())
            .layer(AuthLayer::new(self.auth))
            .layer(crate::decode::DecodeErrorsLayer);
        // Liveness, unlike readiness (the whole server, ""), must not fail while the
        // server drains, or the orchestrator kills it mid-drain: the health service's own
        // name is SERVING for as long as the process answers, and nothing changes it.
        self.health
            .set_service_status(LIVENESS_SERVICE, ServingStatus::Serving)
            .await;
        let health_service = HealthService::from_health_reporter(self.health.clone());
        let health = self.health;
        let signal = async move {
            shutdown.await;
            set_all_not_serving(&health).await;
        };
        // Serving a pre-bound listener ignores the builder's tcp_nodelay, so set it per
        // accepted socket: with Nagle on, small frames wait for a delayed ACK (~40 ms).
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        let main = builder.serve_with_incoming_shutdown(routes, incoming, signal);
        let Some(health_listener) = self.options.health_listener else {
            main.await?;
            return Ok(());
        };
        // The health port lives exactly as long as the main server, so probes see the
        // drain (NOT_SERVING) until the main server has closed.
        let closed = tokio_util::sync::CancellationToken::new();
        let health_only = serve_health_only(health_service, health_listener, closed.clone());
        let main = async {
            let served = main.await;
            closed.cancel();
            served
        };
        let (main, health_only) = tokio::join!(main, health_only);
        main?;
        health_only?;
        Ok(())
    }
}

/// Serves `grpc.health.v1.Health` alone, in plaintext, until `closed`. No auth, tracing
/// or metrics layers: a probe every few seconds is not traffic worth a span, and health
/// is open on the main port too.
async fn serve_health_only(
    health: HealthService,
    listener: TcpListener,
    closed: tokio_util::sync::CancellationToken,
) -> Result<()> {
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    Server::builder()
        .add_service(HealthServer::new(health))
        .serve_with_incoming_shutdown(incoming, closed.cancelled_owned())
        .await?;
    Ok(())
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

/// The part of an encoded descriptor set that describes `services`: the files defining
/// them and everything those files import, in dependency order, without the services
/// that are not in `services`.
fn served_descriptors(encoded: &[u8], services: &[&str]) -> Result<Vec<u8>> {
    use prost::Message as _;
    use prost_types::{FileDescriptorProto, FileDescriptorSet};

    let set =
        FileDescriptorSet::decode(encoded).map_err(tonic_reflection::server::Error::DecodeError)?;
    let by_name: std::collections::HashMap<&str, &FileDescriptorProto> =
        set.file.iter().map(|f| (f.name(), f)).collect();
    let defines = |file: &FileDescriptorProto, service: &str| {
        file.service
            .iter()
            .any(|s| format!("{}.{}", file.package(), s.name()) == service)
    };
    let mut wanted: Vec<&str> = set
        .file
        .iter()
        .filter(|f| services.iter().any(|s| defines(f, s)))
        .map(|f| f.name())
        .collect();
    let mut keep = std::collections::HashSet::new();
    while let Some(name) = wanted.pop() {
        if keep.insert(name)
            && let Some(file) = by_name.get(name)
        {
            wanted.extend(file.dependency.iter().map(String::as_str));
        }
    }
    // The set is in dependency order already (each file after its imports); keep it. An
    // imported file keeps its messages but not services of its own that are not served.
    let file = set
        .file
        .iter()
        .filter(|f| keep.contains(f.name()))
        .map(|f| {
            let mut f = f.clone();
            let package = f.package().to_string();
            f.service
                .retain(|s| services.contains(&format!("{package}.{}", s.name()).as_str()));
            f
        })
        .collect();
    Ok(FileDescriptorSet { file }.encode_to_vec())
}
