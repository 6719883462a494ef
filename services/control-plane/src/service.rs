//! The gRPC handlers of `flowplane.controlplane.v1.ControlPlaneService`. Auth is checked
//! before a call reaches them (the server's policy, by method path); each handler
//! converts the request into domain types once, calls the [`Registry`] and converts
//! back; it never holds registry state or builds a `Status` itself.

use std::{sync::Arc, time::Duration};

use flowplane_grpc::auth::Policy;
use flowplane_proto::controlplane::v1::{
    self as pb,
    control_plane_service_server::{ControlPlaneService, ControlPlaneServiceServer},
};
use prost::Message;
use tokio::{task::JoinHandle, time::Instant};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::{
    Config, Error, Result,
    model::{
        ComponentId, Heartbeat, LeaseToken, ListFilter, Registration, WatchFilter,
        parse_kind_filter, parse_status_filter, validate_labels,
    },
    paging,
    registry::{EtcdRegistry, Lease, MemoryRegistry, Registry},
    standing::{EmbeddedStore, EtcdStore, Pipelines},
    watch::{self, WatchStream},
};

/// The sweeper never wakes more often than this, however dense the deadlines.
const MIN_SWEEP_GAP: Duration = Duration::from_millis(50);

/// A page of ListComponents stops growing at this many encoded bytes, so a page of
/// large components still fits in one message; the next token continues after it.
const PAGE_BYTES_BUDGET: usize = flowplane_grpc::MAX_MESSAGE_BYTES / 2;

/// The control plane service: handlers over a [`Registry`], plus the sweeper that
/// applies the server clock and the token that ends watches on shutdown; and the standing
/// pipelines served beside it.
#[derive(Clone)]
pub struct ControlPlane {
    registry: Arc<dyn Registry>,
    pipelines: Pipelines,
    auth: Option<Policy>,
    shutdown: CancellationToken,
}

impl ControlPlane {
    /// A control plane over the in-memory registry configured by `config`, with its
    /// standing pipelines in memory too (`config.data_dir` is for [`ControlPlane::build`],
    /// which can report a data dir it cannot open).
    pub fn new(config: &Config) -> Self {
        let registry =
            MemoryRegistry::new(config.lease_ttl, config.max_components, config.watch_buffer);
        Self::with_registry(Arc::new(registry), None).with_auth(crate::auth_policy(
            config.tokens.as_ref(),
            config.join_token.as_deref(),
        ))
    }

    /// A control plane over the registry `config` names (connecting to etcd when it is
    /// that), with the auth policy of its token settings.
    /// Standing pipelines live beside the registry: in redb (`config.data_dir`, or in
    /// memory without one) with the memory registry, in etcd with the etcd one.
    pub async fn build(config: &Config) -> Result<Self> {
        let (registry, pipelines): (Arc<dyn Registry>, Pipelines) = match &config.registry {
            crate::Backend::Memory => {
                let store = match &config.data_dir {
                    Some(dir) => EmbeddedStore::open(dir)?,
                    None => EmbeddedStore::in_memory()?,
                };
                if let Some(path) = store.path() {
                    tracing::info!(path = %path.display(), "standing pipelines stored in redb");
                }
                let registry = MemoryRegistry::new(
                    config.lease_ttl,
                    config.max_components,
                    config.watch_buffer,
                );
                (Arc::new(registry), Pipelines::new(Arc::new(store)))
            }
            crate::Backend::Etcd(etcd) => {
                let registry = EtcdRegistry::connect(
                    etcd,
                    config.lease_ttl,
                    config.max_components,
                    config.watch_buffer,
                )
                .await?;
                let store = EtcdStore::new(&registry);
                (Arc::new(registry), Pipelines::new(Arc::new(store)))
            }
        };
        Ok(Self::with_registry(registry, None)
            .with_pipelines(pipelines)
            .with_auth(crate::auth_policy(
                config.tokens.as_ref(),
                config.join_token.as_deref(),
            )))
    }

    /// A control plane over any registry backend; `join_token` guards the register RPCs.
    /// Its standing pipelines are in memory until [`ControlPlane::with_pipelines`].
    pub fn with_registry(registry: Arc<dyn Registry>, join_token: Option<String>) -> Self {
        Self {
            registry,
            pipelines: Pipelines::in_memory().expect("redb's in-memory backend opens"),
            auth: crate::auth_policy(None, join_token.as_deref()),
            shutdown: CancellationToken::new(),
        }
    }

    /// Serves these standing pipelines (another store, or a test's clock).
    pub fn with_pipelines(mut self, pipelines: Pipelines) -> Self {
        self.pipelines = pipelines;
        self
    }

    /// The standing pipelines served beside the registry.
    pub fn pipelines(&self) -> &Pipelines {
        &self.pipelines
    }

    /// Replaces the auth policy (see [`crate::auth_policy`]); `None` serves every caller.
    pub fn with_auth(mut self, auth: Option<Policy>) -> Self {
        self.auth = auth;
        self
    }

    /// The auth policy the server applies to every call, if any.
    pub fn auth(&self) -> Option<&Policy> {
        self.auth.as_ref()
    }

    /// The registry behind the handlers.
    pub fn registry(&self) -> Arc<dyn Registry> {
        self.registry.clone()
    }

    /// Cancelling this token ends every watch cleanly and stops the sweeper.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Runs the expiry sweeper on the server clock until shutdown: late components turn
    /// UNHEALTHY and silent ones are removed, at the moment each transition is due.
    pub fn spawn_sweeper(&self) -> JoinHandle<()> {
        let registry = self.registry.clone();
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let longest = registry.settings().heartbeat_interval.max(MIN_SWEEP_GAP);
            loop {
                let next = registry.sweep().await.unwrap_or_else(|error| {
                    tracing::warn!(%error, "expiry sweep failed; retrying");
                    None
                });
                let now = Instant::now();
                let wake = next
                    .unwrap_or(now + longest)
                    .max(now + MIN_SWEEP_GAP)
                    .min(now + longest);
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep_until(wake) => {}
                }
            }
        })
    }

    /// The generated tonic server around this service, with flowplane's message limits.
    pub fn into_server(self) -> ControlPlaneServiceServer<Self> {
        ControlPlaneServiceServer::new(self)
            .max_decoding_message_size(flowplane_grpc::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(flowplane_grpc::MAX_MESSAGE_BYTES)
    }

    async fn register<T>(&self, request: Request<T>) -> Result<Lease>
    where
        Registration: TryFrom<T, Error = Error>,
    {
        let registration = Registration::try_from(request.into_inner())?;
        self.registry.register(registration).await
    }

    async fn heartbeat<T>(&self, request: Request<T>) -> Result<Lease>
    where
        Heartbeat: TryFrom<T, Error = Error>,
    {
        let heartbeat = Heartbeat::try_from(request.into_inner())?;
        self.registry.heartbeat(heartbeat).await
    }
}

fn proto_duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

struct Granted {
    id: String,
    token: String,
    ttl: Option<prost_types::Duration>,
    interval: Option<prost_types::Duration>,
    expires_at: Option<prost_types::Timestamp>,
}

impl From<Lease> for Granted {
    fn from(lease: Lease) -> Self {
        Granted {
            id: lease.id.to_string(),
            token: lease.token.expose().to_string(),
            ttl: Some(proto_duration(lease.settings.ttl)),
            interval: Some(proto_duration(lease.settings.heartbeat_interval)),
            expires_at: Some(lease.expires_at.into()),
        }
    }
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

#[tonic::async_trait]
impl ControlPlaneService for ControlPlane {
    async fn register_processor(
        &self,
        request: Request<pb::RegisterProcessorRequest>,
    ) -> Result<Response<pb::RegisterProcessorResponse>, Status> {
        let g = Granted::from(self.register(request).await?);
        Ok(Response::new(pb::RegisterProcessorResponse {
            processor_id: g.id,
            lease_token: g.token,
            lease_ttl: g.ttl,
            heartbeat_interval: g.interval,
            lease_expires_at: g.expires_at,
        }))
    }

    async fn processor_heartbeat(
        &self,
        request: Request<pb::ProcessorHeartbeatRequest>,
    ) -> Result<Response<pb::ProcessorHeartbeatResponse>, Status> {
        let g = Granted::from(self.heartbeat(request).await?);
        Ok(Response::new(pb::ProcessorHeartbeatResponse {
            lease_expires_at: g.expires_at,
            heartbeat_interval: g.interval,
        }))
    }

    async fn register_source(
        &self,
        request: Request<pb::RegisterSourceRequest>,
    ) -> Result<Response<pb::RegisterSourceResponse>, Status> {
        let g = Granted::from(self.register(request).await?);
        Ok(Response::new(pb::RegisterSourceResponse {
            source_id: g.id,
            lease_token: g.token,
            lease_ttl: g.ttl,
            heartbeat_interval: g.interval,
            lease_expires_at: g.expires_at,
        }))
    }

    async fn source_heartbeat(
        &self,
        request: Request<pb::SourceHeartbeatRequest>,
    ) -> Result<Response<pb::SourceHeartbeatResponse>, Status> {
        let g = Granted::from(self.heartbeat(request).await?);
        Ok(Response::new(pb::SourceHeartbeatResponse {
            lease_expires_at: g.expires_at,
            heartbeat_interval: g.interval,
        }))
    }

    async fn register_consumer(
        &self,
        request: Request<pb::RegisterConsumerRequest>,
    ) -> Result<Response<pb::RegisterConsumerResponse>, Status> {
        let g = Granted::from(self.register(request).await?);
        Ok(Response::new(pb::RegisterConsumerResponse {
            consumer_id: g.id,
            lease_token: g.token,
            lease_ttl: g.ttl,
            heartbeat_interval: g.interval,
            lease_expires_at: g.expires_at,
        }))
    }

    async fn consumer_heartbeat(
        &self,
        request: Request<pb::ConsumerHeartbeatRequest>,
    ) -> Result<Response<pb::ConsumerHeartbeatResponse>, Status> {
        let g = Granted::from(self.heartbeat(request).await?);
        Ok(Response::new(pb::ConsumerHeartbeatResponse {
            lease_expires_at: g.expires_at,
            heartbeat_interval: g.interval,
        }))
    }

    async fn deregister(
        &self,
        request: Request<pb::DeregisterRequest>,
    ) -> Result<Response<pb::DeregisterResponse>, Status> {
        let request = request.into_inner();
        let id = ComponentId::parse("component_id", &request.component_id)?;
        let token = LeaseToken::parse_required(&request.lease_token)?;
        self.registry.deregister(&id, &token).await?;
        Ok(Response::new(pb::DeregisterResponse {}))
    }

    async fn get_component(
        &self,
        request: Request<pb::GetComponentRequest>,
    ) -> Result<Response<pb::GetComponentResponse>, Status> {
        let id = ComponentId::parse("component_id", &request.into_inner().component_id)?;
        let component = self.registry.get(&id).await?;
        Ok(Response::new(pb::GetComponentResponse {
            component: Some(component.into()),
        }))
    }

    /// Lists components in id order, a page at a time.
    ///
    /// Filters combine with AND. `status` matches the effective status. `capability`
    /// makes this a discovery query: without an explicit `status`, only hosts whose
    /// effective status is HEALTHY or DEGRADED are returned (STARTING, UNHEALTHY and
    /// STOPPING hosts are left out); with `status` set, exactly that status is returned.
    /// Page tokens encode the last id returned, so concurrent changes never make a
    /// listing skip or repeat a component that stayed registered.
    async fn list_components(
        &self,
        request: Request<pb::ListComponentsRequest>,
    ) -> Result<Response<pb::ListComponentsResponse>, Status> {
        let request = request.into_inner();
        let filter = ListFilter {
            kind: parse_kind_filter("kind", request.kind)?,
            status: parse_status_filter("status", request.status)?,
            capability: non_empty(request.capability),
            labels: validate_labels(request.labels)?,
        };
        let page = request.page.unwrap_or_default();
        let after = paging::decode(&page.page_token)?;
        let limit = paging::page_size(page.page_size);
        let found = self.registry.list(&filter, after.as_ref(), limit).await?;
        let mut more = found.more;
        let mut bytes = 0;
        let mut components = Vec::with_capacity(found.components.len());
        for component in found.components {
            let component = pb::Component::from(component);
            let size = component.encoded_len() + 8;
            if !components.is_empty() && bytes + size > PAGE_BYTES_BUDGET {
                more = true;
                break;
            }
            bytes += size;
            components.push(component);
        }
        let next_page_token = match components.last() {
            Some(last) if more => paging::encode(&last.id),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListComponentsResponse {
            components,
            page: Some(flowplane_proto::common::v1::PageResponse { next_page_token }),
        }))
    }

    type WatchComponentsStream = WatchStream;

    /// Sends a snapshot of the matching components, then ADDED / UPDATED / REMOVED.
    ///
    /// Unlike a capability listing, a watch shows every status: a host going UNHEALTHY
    /// or STOPPING arrives as UPDATED, so the watcher decides what to offer. UPDATED is
    /// sent when the effective status or registered fields change, not on every
    /// heartbeat. A component that stops matching the filter while staying registered
    /// arrives as REMOVED with reason UNSPECIFIED. A watcher that falls behind gets a
    /// fresh snapshot with `resync = true`. The stream ends cleanly on server shutdown.
    async fn watch_components(
        &self,
        request: Request<pb::WatchComponentsRequest>,
    ) -> Result<Response<Self::WatchComponentsStream>, Status> {
        let request = request.into_inner();
        let filter = WatchFilter {
            kind: parse_kind_filter("kind", request.kind)?,
            capability: non_empty(request.capability),
        };
        if self.shutdown.is_cancelled() {
            return Err(Error::ShuttingDown.into());
        }
        let subscription = self.registry.subscribe(&filter).await?;
        let stream = watch::open(
            self.registry.clone(),
            filter,
            subscription,
            self.shutdown.clone(),
        );
        Ok(Response::new(stream))
    }
}
