//! The runner's clients: the control plane's StandingPipelineService and registry
//! (through the replica list, moving to the next replica as the directory's watch
//! does), and the sources and consumers a pipeline names, found in the registry and
//! reached over the directory's shared channels (with the service's TLS and token).

use std::{collections::HashMap, time::Duration};

use flowplane_grpc::{auth::AttachBearer, client::TracedChannel, replicas::Replicas};
use flowplane_proto::{
    common::v1::{ComponentKind, HealthStatus, PageRequest},
    connect::v1::{
        DeliverRequest, DeliverResponse, ReadRequest, ReadResponse,
        consumer_service_client::ConsumerServiceClient, source_service_client::SourceServiceClient,
    },
    controlplane::v1::{
        ClaimPipelineRequest, CommitPipelineRequest, Component, ConnectorRef, GetComponentRequest,
        ListComponentsRequest, ListPipelinesRequest, ReleasePipelineRequest, StandingPipeline,
        connector_ref::Selector, control_plane_service_client::ControlPlaneServiceClient,
        standing_pipeline_service_client::StandingPipelineServiceClient,
    },
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Status, codegen::InterceptedService};

use crate::directory::Directory;

/// The label a source or consumer registers its capability under.
pub const CAPABILITY_LABEL: &str = "flowplane.io/capability";

type Authed = InterceptedService<TracedChannel, AttachBearer>;

/// The control plane as the runner uses it.
#[derive(Clone)]
pub struct ControlPlane {
    replicas: Replicas,
    auth: AttachBearer,
}

impl ControlPlane {
    pub fn new(replicas: Replicas, token: Option<&str>) -> Result<Self, Status> {
        Ok(Self {
            replicas,
            auth: AttachBearer::new(token)?,
        })
    }

    fn standing(
        &self,
        channel: tonic::transport::Channel,
    ) -> StandingPipelineServiceClient<Authed> {
        StandingPipelineServiceClient::with_interceptor(
            flowplane_grpc::client::traced(channel),
            self.auth.clone(),
        )
        .max_decoding_message_size(flowplane_grpc::MAX_MESSAGE_BYTES)
    }

    fn registry(&self, channel: tonic::transport::Channel) -> ControlPlaneServiceClient<Authed> {
        ControlPlaneServiceClient::with_interceptor(
            flowplane_grpc::client::traced(channel),
            self.auth.clone(),
        )
        .max_decoding_message_size(flowplane_grpc::MAX_MESSAGE_BYTES)
    }

    /// Every stored pipeline, all pages.
    pub async fn list_pipelines(&self) -> Result<Vec<StandingPipeline>, Status> {
        let mut all = Vec::new();
        let mut token = String::new();
        // Bounded: a listing longer than this many pages is cut, not looped on.
        for _ in 0..1000 {
            let page = PageRequest {
                page_size: 500,
                page_token: token.clone(),
            };
            let response = self
                .replicas
                .call(|channel| {
                    let mut client = self.standing(channel);
                    let page = page.clone();
                    async move {
                        client
                            .list_pipelines(ListPipelinesRequest { page: Some(page) })
                            .await
                            .map(tonic::Response::into_inner)
                    }
                })
                .await?;
            all.extend(response.pipelines);
            token = response.page.map(|p| p.next_page_token).unwrap_or_default();
            if token.is_empty() {
                break;
            }
        }
        Ok(all)
    }

    pub async fn claim(
        &self,
        name: &str,
        runner_id: &str,
        ttl: Duration,
    ) -> Result<StandingPipeline, Status> {
        let request = ClaimPipelineRequest {
            name: name.to_string(),
            runner_id: runner_id.to_string(),
            ttl: prost_types::Duration::try_from(ttl).ok(),
        };
        self.replicas
            .call(|channel| {
                let mut client = self.standing(channel);
                let request = request.clone();
                async move { client.claim_pipeline(request).await }
            })
            .await
            .map(|r| r.into_inner().pipeline.unwrap_or_default())
    }

    pub async fn commit(&self, request: CommitPipelineRequest) -> Result<StandingPipeline, Status> {
        self.replicas
            .call(|channel| {
                let mut client = self.standing(channel);
                let request = request.clone();
                async move { client.commit_pipeline(request).await }
            })
            .await
            .map(|r| r.into_inner().pipeline.unwrap_or_default())
    }

    pub async fn release(&self, name: &str, runner_id: &str, epoch: u64) -> Result<(), Status> {
        let request = ReleasePipelineRequest {
            name: name.to_string(),
            runner_id: runner_id.to_string(),
            epoch,
        };
        self.replicas
            .call(|channel| {
                let mut client = self.standing(channel);
                let request = request.clone();
                async move { client.release_pipeline(request).await }
            })
            .await
            .map(|_| ())
    }

    /// The live components `connector` names, best first: the one with that id, or every
    /// healthy (then degraded) component of `kind` registered with that capability.
    pub async fn resolve(
        &self,
        kind: ComponentKind,
        connector: &ConnectorRef,
    ) -> Result<Vec<Component>, Status> {
        let mut found = match &connector.selector {
            Some(Selector::Id(id)) => {
                let request = GetComponentRequest {
                    component_id: id.clone(),
                };
                let component = self
                    .replicas
                    .call(|channel| {
                        let mut client = self.registry(channel);
                        let request = request.clone();
                        async move { client.get_component(request).await }
                    })
                    .await?
                    .into_inner()
                    .component
                    .unwrap_or_default();
                if component.kind != kind as i32 {
                    return Err(Status::failed_precondition(format!(
                        "component {id} is not a {}",
                        kind_name(kind)
                    )));
                }
                vec![component]
            }
            Some(Selector::Capability(capability)) => {
                let request = ListComponentsRequest {
                    kind: kind as i32,
                    labels: HashMap::from([(CAPABILITY_LABEL.to_string(), capability.clone())]),
                    page: Some(PageRequest {
                        page_size: 100,
                        page_token: String::new(),
                    }),
                    ..Default::default()
                };
                self.replicas
                    .call(|channel| {
                        let mut client = self.registry(channel);
                        let request = request.clone();
                        async move { client.list_components(request).await }
                    })
                    .await?
                    .into_inner()
                    .components
            }
            None => {
                return Err(Status::invalid_argument(
                    "connector names no id or capability",
                ));
            }
        };
        found.retain(|c| {
            c.status == HealthStatus::Healthy as i32 || c.status == HealthStatus::Degraded as i32
        });
        found.sort_by_key(|c| (c.status != HealthStatus::Healthy as i32, c.id.clone()));
        if found.is_empty() {
            return Err(Status::unavailable(format!(
                "no live {} {}",
                kind_name(kind),
                describe(connector)
            )));
        }
        Ok(found)
    }
}

/// How a connector reference reads in messages: `id X` or `with capability Y`.
pub fn describe(connector: &ConnectorRef) -> String {
    match &connector.selector {
        Some(Selector::Id(id)) => format!("with id {id}"),
        Some(Selector::Capability(c)) => format!("with capability {c}"),
        None => "(none named)".into(),
    }
}

fn kind_name(kind: ComponentKind) -> &'static str {
    match kind {
        ComponentKind::Source => "source",
        ComponentKind::Consumer => "consumer",
        _ => "component",
    }
}

/// An open bidirectional stream: what the runner sends, and what comes back.
pub struct Link<Req, Resp> {
    pub tx: mpsc::UnboundedSender<Req>,
    pub rx: tonic::Streaming<Resp>,
}

/// Opens a stream on `component` with `call`, `open` queued as its first message; the
/// caller waits for the answer to it. The request queue is unbounded, but what the runner
/// queues is bounded by its window: credits and acks a few per commit, deliveries only
/// for records in flight (and a record is in flight only with credit).
async fn open_link<Req, Resp, Fut>(
    directory: &Directory,
    component: &Component,
    open: Req,
    call: impl FnOnce(Authed, UnboundedReceiverStream<Req>) -> Fut,
) -> Result<Link<Req, Resp>, Status>
where
    Fut: std::future::Future<Output = Result<tonic::Response<tonic::Streaming<Resp>>, Status>>,
{
    let channel = directory
        .channel(&component.endpoint)
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let auth = AttachBearer::new(directory.client_args().token.as_deref())?;
    let (tx, requests) = mpsc::unbounded_channel();
    tx.send(open).expect("the receiver is held below");
    let rx = call(
        InterceptedService::new(channel, auth),
        UnboundedReceiverStream::new(requests),
    )
    .await
    .inspect_err(|_| directory.forget_channel(&component.endpoint))?
    .into_inner();
    Ok(Link { tx, rx })
}

/// Opens `Read` on `component`.
pub async fn open_source(
    directory: &Directory,
    component: Component,
    open: ReadRequest,
) -> Result<Link<ReadRequest, ReadResponse>, Status> {
    open_link(
        directory,
        &component,
        open,
        |service, requests| async move {
            SourceServiceClient::new(service)
                .max_decoding_message_size(flowplane_grpc::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(flowplane_grpc::MAX_MESSAGE_BYTES)
                .read(requests)
                .await
        },
    )
    .await
}

/// Opens `Deliver` on `component`.
pub async fn open_consumer(
    directory: &Directory,
    component: Component,
    open: DeliverRequest,
) -> Result<Link<DeliverRequest, DeliverResponse>, Status> {
    open_link(
        directory,
        &component,
        open,
        |service, requests| async move {
            ConsumerServiceClient::new(service)
                .max_decoding_message_size(flowplane_grpc::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(flowplane_grpc::MAX_MESSAGE_BYTES)
                .deliver(requests)
                .await
        },
    )
    .await
}
