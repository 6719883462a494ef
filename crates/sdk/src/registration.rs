//! The host's lifecycle with the control plane: register, heartbeat at the lease's
//! interval with metrics and an honest status, register again when the control plane no
//! longer knows the host or no longer accepts its lease, and on shutdown report STOPPING
//! and deregister. Failures are told apart with `flowplane_grpc::retry::classify`: a
//! transient one (control plane down, slow) is retried with jittered backoff; a refusal
//! of the request itself (wrong join token, processor id in use, ...) is logged once at
//! error level naming the setting, then retried only every `max_backoff`, since an
//! operator may fix either side's configuration without restarting this host. It must
//! never touch open streams: a control plane that is down only means nobody new can find
//! this host. With several control-plane replicas (a comma-separated list), every call
//! goes to the replica in use and, when that one is gone, to the next at once
//! (`flowplane_grpc::replicas`): heartbeats carry on under the same lease token, and only
//! a replica that does not know the lease (NOT_FOUND) makes the host register again.

use std::{collections::HashMap, sync::Arc, time::Duration};

use flowplane_grpc::{
    auth::AttachBearer,
    client::TracedChannel,
    config::ClientArgs,
    replicas::Replicas,
    retry::{Backoff, Retry, classify},
};
use flowplane_proto::{
    common::v1::HealthStatus,
    controlplane::v1::{
        ConsumerHeartbeatRequest, DeregisterRequest, ProcessorHeartbeatRequest,
        RegisterConsumerRequest, RegisterProcessorRequest, RegisterSourceRequest,
        SourceHeartbeatRequest, control_plane_service_client::ControlPlaneServiceClient,
    },
    processor::v1::ProcessorCapability,
};
use tokio::{sync::watch, time::Instant};
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status, service::interceptor::InterceptedService, transport::Channel};

use crate::{Error, ProcessorHost, Result};

/// Longest wait for one control-plane call, so a hung control plane cannot stall heartbeats.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(5);
/// Heartbeat interval used when the control plane's answer does not give one.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);
/// Shortest heartbeat interval honoured, whatever the control plane says.
const MIN_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(10);

/// How to reach the control plane and what to register as.
#[derive(Clone, Debug)]
pub struct RegistrationConfig {
    /// Control plane address, `host:port` or a URI (`https://` uses TLS), or a
    /// comma-separated list of them: replicas tried in order when one fails.
    pub control_plane: String,
    /// TLS trust for `https://` control planes.
    pub client: ClientArgs,
    /// Join token presented as `authorization: Bearer <token>`.
    pub join_token: Option<String>,
    /// Wanted component id; `None` lets the control plane assign one.
    pub processor_id: Option<String>,
    /// Labels registered with the host.
    pub metadata: HashMap<String, String>,
    /// First retry delay of a registration that failed transiently (jittered).
    pub initial_backoff: Duration,
    /// Longest retry delay of a failed registration, and the delay between attempts
    /// once the control plane has refused the request itself.
    pub max_backoff: Duration,
}

impl RegistrationConfig {
    /// Registers with the control plane at `control_plane`, with default backoff
    /// (from 100 ms, jittered, up to 5 s).
    pub fn new(control_plane: impl Into<String>) -> Self {
        Self {
            control_plane: control_plane.into(),
            client: ClientArgs::default(),
            join_token: None,
            processor_id: None,
            metadata: HashMap::new(),
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        }
    }
}

/// Where the lifecycle stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegistrationState {
    /// Trying to register, or to register again.
    Registering,
    /// The control plane refused the registration itself (`code` is UNAUTHENTICATED,
    /// ALREADY_EXISTS, ...; `setting` names what to fix); retried every `max_backoff`.
    Refused {
        /// The refusal's code.
        code: Code,
        /// The configuration most likely at fault, for example "join token".
        setting: &'static str,
        /// The control plane's message.
        message: String,
    },
    /// Registered and heartbeating.
    Registered {
        /// The component id.
        processor_id: String,
        /// The interval heartbeats are sent at.
        heartbeat_interval: Duration,
    },
    /// Stopped: deregistered, or shut down before registering.
    Stopped,
}

type Client = ControlPlaneServiceClient<InterceptedService<TracedChannel, AttachBearer>>;

/// What a component registers as, by kind: the one difference between the register and
/// heartbeat RPCs of processors, sources and consumers.
#[derive(Clone, Debug)]
pub(crate) enum Announce {
    Processor {
        capabilities: Vec<ProcessorCapability>,
        version: String,
    },
    Source {
        data_types: Vec<i32>,
    },
    Consumer {
        data_types: Vec<i32>,
    },
}

/// The component a [`Registration`] keeps registered: a processor host, or one
/// connector of a connector host.
pub(crate) trait Subject: Send + Sync + 'static {
    /// What to register as.
    fn announce(&self) -> Announce;
    /// Heartbeat readings.
    fn metrics(&self) -> HashMap<String, f64>;
    /// True when the component should report DEGRADED.
    fn overloaded(&self) -> bool;
    /// The id the control plane granted.
    fn set_id(&self, id: &str);
}

impl Subject for ProcessorHost {
    fn announce(&self) -> Announce {
        Announce::Processor {
            capabilities: self.capabilities(),
            version: self.version().to_string(),
        }
    }
    fn metrics(&self) -> HashMap<String, f64> {
        self.stats().snapshot().to_metrics()
    }
    fn overloaded(&self) -> bool {
        ProcessorHost::overloaded(self)
    }
    fn set_id(&self, id: &str) {
        self.set_host_id(id);
    }
}

/// A register request of any kind, and the lease any kind's answer grants.
struct Register {
    id: String,
    endpoint: String,
    metadata: HashMap<String, String>,
    lease_token: String,
    announce: Announce,
}

struct Granted {
    id: String,
    lease_token: String,
    lease_ttl: Option<prost_types::Duration>,
    heartbeat_interval: Option<prost_types::Duration>,
}

macro_rules! granted {
    ($response:expr, $id:ident) => {{
        let r = $response;
        Granted {
            id: r.$id,
            lease_token: r.lease_token,
            lease_ttl: r.lease_ttl,
            heartbeat_interval: r.heartbeat_interval,
        }
    }};
}

async fn register_call(
    mut client: Client,
    timeout: Duration,
    r: Register,
) -> Result<Granted, Status> {
    let Register {
        id,
        endpoint,
        metadata,
        lease_token,
        announce,
    } = r;
    Ok(match announce {
        Announce::Processor {
            capabilities,
            version,
        } => {
            let request = RegisterProcessorRequest {
                processor_id: id,
                endpoint,
                metadata,
                capabilities,
                lease_token,
                version,
            };
            granted!(
                call(timeout, client.register_processor(request)).await?,
                processor_id
            )
        }
        Announce::Source { data_types } => {
            let request = RegisterSourceRequest {
                source_id: id,
                endpoint,
                metadata,
                data_types,
                lease_token,
            };
            granted!(
                call(timeout, client.register_source(request)).await?,
                source_id
            )
        }
        Announce::Consumer { data_types } => {
            let request = RegisterConsumerRequest {
                consumer_id: id,
                endpoint,
                metadata,
                data_types,
                lease_token,
            };
            granted!(
                call(timeout, client.register_consumer(request)).await?,
                consumer_id
            )
        }
    })
}

/// One heartbeat of any kind; `Ok` carries the interval the control plane asks for.
async fn heartbeat_call(
    mut client: Client,
    timeout: Duration,
    announce: &Announce,
    id: String,
    metrics: HashMap<String, f64>,
    status: HealthStatus,
    lease_token: String,
) -> Result<Option<prost_types::Duration>, Status> {
    let timestamp = Some(prost_types::Timestamp::from(std::time::SystemTime::now()));
    let status = status as i32;
    Ok(match announce {
        Announce::Processor { .. } => {
            let request = ProcessorHeartbeatRequest {
                processor_id: id,
                timestamp,
                metrics,
                status,
                lease_token,
            };
            call(timeout, client.processor_heartbeat(request))
                .await?
                .heartbeat_interval
        }
        Announce::Source { .. } => {
            let request = SourceHeartbeatRequest {
                source_id: id,
                timestamp,
                metrics,
                status,
                lease_token,
            };
            call(timeout, client.source_heartbeat(request))
                .await?
                .heartbeat_interval
        }
        Announce::Consumer { .. } => {
            let request = ConsumerHeartbeatRequest {
                consumer_id: id,
                timestamp,
                metrics,
                status,
                lease_token,
            };
            call(timeout, client.consumer_heartbeat(request))
                .await?
                .heartbeat_interval
        }
    })
}

/// A live lease.
struct Lease {
    processor_id: String,
    lease_token: String,
    heartbeat_interval: Duration,
}

/// Registers a host and keeps it registered until shut down.
pub struct Registration {
    replicas: Replicas,
    auth: AttachBearer,
    config: RegistrationConfig,
    endpoint: String,
    host: Arc<dyn Subject>,
    state: watch::Sender<RegistrationState>,
}

impl Registration {
    /// Prepares the lifecycle of `host`, advertised at `endpoint`. Connects lazily: the
    /// control plane need not be up. Fails on an address or token that cannot be used.
    pub fn new(config: RegistrationConfig, endpoint: String, host: ProcessorHost) -> Result<Self> {
        Self::for_subject(config, endpoint, Arc::new(host))
    }

    /// The lifecycle of any component kind.
    pub(crate) fn for_subject(
        config: RegistrationConfig,
        endpoint: String,
        host: Arc<dyn Subject>,
    ) -> Result<Self> {
        let replicas = Replicas::new(&config.control_plane, "--control-plane", &config.client)?;
        let auth =
            AttachBearer::new(config.join_token.as_deref()).map_err(|e| Error::InvalidConfig {
                setting: "join token",
                message: e.message().to_string(),
            })?;
        let (state, _) = watch::channel(RegistrationState::Registering);
        Ok(Self {
            replicas,
            auth,
            config,
            endpoint,
            host,
            state,
        })
    }

    /// A client over `channel`, the replica in use, with flowplane's limits and the token.
    fn client(&self, channel: Channel) -> Client {
        ControlPlaneServiceClient::with_interceptor(
            flowplane_grpc::client::traced(channel),
            self.auth.clone(),
        )
        .max_decoding_message_size(flowplane_grpc::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(flowplane_grpc::MAX_MESSAGE_BYTES)
    }

    /// Follows the lifecycle's state.
    pub fn watch(&self) -> watch::Receiver<RegistrationState> {
        self.state.subscribe()
    }

    /// Runs until `shutdown` is cancelled, then reports STOPPING and deregisters.
    pub async fn run(self, shutdown: CancellationToken) {
        let Some(mut lease) = self.register(&shutdown, None).await else {
            self.state.send_replace(RegistrationState::Stopped);
            return;
        };
        let mut failing = false;
        // The first heartbeat goes at once: a registration alone leaves the host STARTING.
        let mut next = Instant::now();
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep_until(next) => {}
            }
            next = Instant::now() + lease.heartbeat_interval;
            let status = if self.host.overloaded() {
                HealthStatus::Degraded
            } else {
                HealthStatus::Healthy
            };
            match self.heartbeat(&lease, status).await {
                Ok(interval) => {
                    if failing {
                        tracing::info!(processor_id = %lease.processor_id, "control plane reachable again");
                        failing = false;
                    }
                    if let Some(interval) = interval.filter(|i| *i != lease.heartbeat_interval) {
                        lease.heartbeat_interval = interval;
                        self.publish(&lease);
                    }
                }
                // NOT_FOUND: the lease expired or the control plane lost its state;
                // PERMISSION_DENIED: the lease token is no longer the id's live lease.
                Err(status) if matches!(status.code(), Code::NotFound | Code::PermissionDenied) => {
                    tracing::warn!(
                        processor_id = %lease.processor_id,
                        code = ?status.code(),
                        message = status.message(),
                        "control plane no longer accepts this host's lease, registering again"
                    );
                    self.state.send_replace(RegistrationState::Registering);
                    match self.register(&shutdown, Some(&lease)).await {
                        Some(renewed) => lease = renewed,
                        // Shut down while unregistered: there is nothing to deregister.
                        None => {
                            self.state.send_replace(RegistrationState::Stopped);
                            return;
                        }
                    }
                    failing = false;
                    next = Instant::now();
                }
                Err(status) => {
                    // Open streams carry on; only discovery of this host suffers.
                    if failing {
                        tracing::debug!(processor_id = %lease.processor_id, code = ?status.code(), message = status.message(), "heartbeat failed again");
                    } else {
                        tracing::warn!(processor_id = %lease.processor_id, code = ?status.code(), message = status.message(), "heartbeat failed; streams are unaffected");
                        failing = true;
                    }
                }
            }
        }
        self.stop(&lease).await;
    }

    fn publish(&self, lease: &Lease) {
        self.state.send_replace(RegistrationState::Registered {
            processor_id: lease.processor_id.clone(),
            heartbeat_interval: lease.heartbeat_interval,
        });
    }

    /// Registers, retrying transient failures with jittered backoff and refusals every
    /// `max_backoff`. Registering again, it asks for the id it had and presents its old
    /// lease token, so a lease that is still its own is refreshed. `None` when shut down
    /// first.
    async fn register(
        &self,
        shutdown: &CancellationToken,
        previous: Option<&Lease>,
    ) -> Option<Lease> {
        let mut backoff = Backoff::new(self.config.initial_backoff, self.config.max_backoff);
        let wanted_id = previous
            .map(|lease| lease.processor_id.clone())
            .or_else(|| self.config.processor_id.clone())
            .unwrap_or_default();
        let lease_token = previous
            .map(|lease| lease.lease_token.clone())
            .unwrap_or_default();
        // The refusal already logged at error level, so a refusal repeated every
        // max_backoff is logged once, and again only when its code changes.
        let mut refused: Option<Code> = None;
        loop {
            let announce = self.host.announce();
            let attempt = self.replicas.call(|channel| {
                let request = Register {
                    id: wanted_id.clone(),
                    endpoint: self.endpoint.clone(),
                    metadata: self.config.metadata.clone(),
                    lease_token: lease_token.clone(),
                    announce: announce.clone(),
                };
                register_call(self.client(channel), RPC_TIMEOUT, request)
            });
            if shutdown.is_cancelled() {
                return None;
            }
            // An attempt under way when shutdown comes is finished (it is bounded by
            // RPC_TIMEOUT): a registration that went through is then deregistered at once
            // by the caller, instead of being left to expire.
            let outcome = attempt.await;
            let delay = match outcome {
                Ok(response) => {
                    let lease = lease_from(response);
                    self.host.set_id(&lease.processor_id);
                    tracing::info!(
                        processor_id = %lease.processor_id,
                        endpoint = %self.endpoint,
                        heartbeat_interval_ms = lease.heartbeat_interval.as_millis() as u64,
                        after_refusal = refused.is_some(),
                        "registered with the control plane"
                    );
                    self.publish(&lease);
                    return Some(lease);
                }
                Err(status) => match classify(&status) {
                    Retry::Fatal => {
                        let setting = refused_setting(status.code());
                        if refused != Some(status.code()) {
                            tracing::error!(
                                control_plane = %self.config.control_plane,
                                setting,
                                processor_id = %wanted_id,
                                code = ?status.code(),
                                message = status.message(),
                                retry_every_ms = backoff.max().as_millis() as u64,
                                "the control plane refused this host's registration; check the {setting}. Retrying rarely until it is accepted"
                            );
                            self.state.send_replace(RegistrationState::Refused {
                                code: status.code(),
                                setting,
                                message: status.message().to_string(),
                            });
                            refused = Some(status.code());
                        } else {
                            tracing::debug!(code = ?status.code(), "registration refused again");
                        }
                        backoff.max()
                    }
                    Retry::Transient => {
                        let delay = backoff.next_delay();
                        tracing::warn!(
                            control_plane = %self.config.control_plane,
                            code = ?status.code(),
                            message = status.message(),
                            retry_in_ms = delay.as_millis() as u64,
                            "registration failed, retrying"
                        );
                        delay
                    }
                },
            };
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return None,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// One heartbeat; `Ok` carries the interval the control plane asks for, if any.
    async fn heartbeat(
        &self,
        lease: &Lease,
        status: HealthStatus,
    ) -> Result<Option<Duration>, Status> {
        let announce = self.host.announce();
        let metrics = self.host.metrics();
        // A replica silent for one interval counts as gone: the next replica then gets the
        // same heartbeat before the lease notices anything.
        let timeout = lease
            .heartbeat_interval
            .clamp(MIN_HEARTBEAT_INTERVAL, RPC_TIMEOUT);
        let response = self
            .replicas
            .call(|channel| {
                let client = self.client(channel);
                let (announce, metrics) = (announce.clone(), metrics.clone());
                let (id, token) = (lease.processor_id.clone(), lease.lease_token.clone());
                async move {
                    heartbeat_call(client, timeout, &announce, id, metrics, status, token).await
                }
            })
            .await?;
        Ok(response.and_then(duration_from))
    }

    /// Reports STOPPING, then deregisters. Failures are logged: the lease then expires.
    async fn stop(&self, lease: &Lease) {
        if let Err(status) = self.heartbeat(lease, HealthStatus::Stopping).await {
            tracing::debug!(code = ?status.code(), message = status.message(), "stopping heartbeat failed");
        }
        let request = DeregisterRequest {
            component_id: lease.processor_id.clone(),
            lease_token: lease.lease_token.clone(),
        };
        let deregistered = self
            .replicas
            .call(|channel| {
                let mut client = self.client(channel);
                let request = request.clone();
                async move { call(RPC_TIMEOUT, client.deregister(request)).await }
            })
            .await;
        match deregistered {
            Ok(_) => {
                tracing::info!(processor_id = %lease.processor_id, "deregistered from the control plane")
            }
            Err(status) => tracing::warn!(
                processor_id = %lease.processor_id,
                code = ?status.code(),
                message = status.message(),
                "deregistration failed; the lease will expire"
            ),
        }
        self.state.send_replace(RegistrationState::Stopped);
    }
}

/// The setting most likely at fault when the control plane refuses a registration.
fn refused_setting(code: Code) -> &'static str {
    match code {
        Code::Unauthenticated | Code::PermissionDenied => "join token",
        Code::AlreadyExists => "processor id (another live host holds it)",
        Code::InvalidArgument => "registration request (endpoint, labels, capabilities)",
        Code::Unimplemented => "control plane address (it serves no ControlPlaneService)",
        _ => "control plane configuration",
    }
}

/// A unary call bounded by `timeout`, answering DEADLINE_EXCEEDED when it runs out.
async fn call<T>(
    timeout: Duration,
    call: impl Future<Output = Result<tonic::Response<T>, Status>>,
) -> Result<T, Status> {
    match tokio::time::timeout(timeout, call).await {
        Ok(result) => result.map(tonic::Response::into_inner),
        Err(_) => Err(Status::deadline_exceeded(format!(
            "control plane did not answer within {timeout:?}"
        ))),
    }
}

fn duration_from(d: prost_types::Duration) -> Option<Duration> {
    Duration::try_from(d)
        .ok()
        .filter(|d| !d.is_zero())
        .map(|d| d.max(MIN_HEARTBEAT_INTERVAL))
}

fn lease_from(response: Granted) -> Lease {
    let heartbeat_interval = response
        .heartbeat_interval
        .and_then(duration_from)
        .or_else(|| {
            response
                .lease_ttl
                .and_then(duration_from)
                .map(|ttl| ttl / 3)
        })
        .unwrap_or(DEFAULT_HEARTBEAT_INTERVAL)
        .max(MIN_HEARTBEAT_INTERVAL);
    Lease {
        processor_id: response.id,
        lease_token: response.lease_token,
        heartbeat_interval,
    }
}
