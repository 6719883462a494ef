//! The gRPC handlers of `flowplane.controlplane.v1.StandingPipelineService`. Auth is
//! checked before a call reaches them (the server's policy, by method path); each handler
//! checks its request into domain values once, calls [`Pipelines`] and wraps the answer;
//! it never builds a `Status` itself.

use flowplane_proto::controlplane::v1::{
    self as pb,
    standing_pipeline_service_server::{StandingPipelineService, StandingPipelineServiceServer},
};
use prost::Message;
use tonic::{Request, Response, Status};

use super::{Commit, PipelineName, Pipelines, ValidSpec, claim_ttl, runner_id};
use crate::paging;

/// A page of ListPipelines stops growing at this many encoded bytes, so a page of large
/// specs still fits in one message; the next token continues after it.
const PAGE_BYTES_BUDGET: usize = flowplane_grpc::MAX_MESSAGE_BYTES / 2;

/// The standing pipeline service: handlers over [`Pipelines`].
#[derive(Clone, Debug)]
pub struct StandingService {
    pipelines: Pipelines,
}

impl StandingService {
    /// Handlers over `pipelines`.
    pub fn new(pipelines: Pipelines) -> Self {
        Self { pipelines }
    }

    /// The generated tonic server around this service, with flowplane's message limits.
    pub fn into_server(self) -> StandingPipelineServiceServer<Self> {
        StandingPipelineServiceServer::new(self)
            .max_decoding_message_size(flowplane_grpc::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(flowplane_grpc::MAX_MESSAGE_BYTES)
    }
}

fn name(raw: &str) -> crate::Result<PipelineName> {
    PipelineName::parse("name", raw)
}

#[tonic::async_trait]
impl StandingPipelineService for StandingService {
    async fn apply_pipeline(
        &self,
        request: Request<pb::ApplyPipelineRequest>,
    ) -> Result<Response<pb::ApplyPipelineResponse>, Status> {
        let spec = ValidSpec::try_from(request.into_inner().spec)?;
        let (pipeline, created) = self.pipelines.apply(spec).await?;
        Ok(Response::new(pb::ApplyPipelineResponse {
            pipeline: Some(pipeline),
            created,
        }))
    }

    async fn get_pipeline(
        &self,
        request: Request<pb::GetPipelineRequest>,
    ) -> Result<Response<pb::GetPipelineResponse>, Status> {
        let name = name(&request.into_inner().name)?;
        let pipeline = self.pipelines.get(&name).await?;
        Ok(Response::new(pb::GetPipelineResponse {
            pipeline: Some(pipeline),
        }))
    }

    /// Pipelines in name order, a page at a time; tokens continue after the last name,
    /// so concurrent applies and deletes never make a listing skip or repeat one that stayed.
    async fn list_pipelines(
        &self,
        request: Request<pb::ListPipelinesRequest>,
    ) -> Result<Response<pb::ListPipelinesResponse>, Status> {
        let page = request.into_inner().page.unwrap_or_default();
        let after = paging::decode_with(&page.page_token, PipelineName::parse)?;
        let limit = paging::page_size(page.page_size);
        let (found, mut more) = self.pipelines.list(after.as_ref(), limit).await?;
        let mut bytes = 0;
        let mut pipelines = Vec::with_capacity(found.len());
        for pipeline in found {
            let size = pipeline.encoded_len() + 8;
            if !pipelines.is_empty() && bytes + size > PAGE_BYTES_BUDGET {
                more = true;
                break;
            }
            bytes += size;
            pipelines.push(pipeline);
        }
        let next_page_token = match pipelines.last().and_then(|p| p.spec.as_ref()) {
            Some(last) if more => paging::encode(&last.name),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListPipelinesResponse {
            pipelines,
            page: Some(flowplane_proto::common::v1::PageResponse { next_page_token }),
        }))
    }

    async fn pause_pipeline(
        &self,
        request: Request<pb::PausePipelineRequest>,
    ) -> Result<Response<pb::PausePipelineResponse>, Status> {
        let name = name(&request.into_inner().name)?;
        let pipeline = self.pipelines.pause(&name).await?;
        Ok(Response::new(pb::PausePipelineResponse {
            pipeline: Some(pipeline),
        }))
    }

    async fn resume_pipeline(
        &self,
        request: Request<pb::ResumePipelineRequest>,
    ) -> Result<Response<pb::ResumePipelineResponse>, Status> {
        let name = name(&request.into_inner().name)?;
        let pipeline = self.pipelines.resume(&name).await?;
        Ok(Response::new(pb::ResumePipelineResponse {
            pipeline: Some(pipeline),
        }))
    }

    async fn delete_pipeline(
        &self,
        request: Request<pb::DeletePipelineRequest>,
    ) -> Result<Response<pb::DeletePipelineResponse>, Status> {
        let name = name(&request.into_inner().name)?;
        self.pipelines.delete(&name).await?;
        Ok(Response::new(pb::DeletePipelineResponse {}))
    }

    async fn reset_pipeline_offsets(
        &self,
        request: Request<pb::ResetPipelineOffsetsRequest>,
    ) -> Result<Response<pb::ResetPipelineOffsetsResponse>, Status> {
        let request = request.into_inner();
        let name = name(&request.name)?;
        let pipeline = self
            .pipelines
            .reset_offsets(&name, request.offsets, request.earliest)
            .await?;
        Ok(Response::new(pb::ResetPipelineOffsetsResponse {
            pipeline: Some(pipeline),
        }))
    }

    async fn claim_pipeline(
        &self,
        request: Request<pb::ClaimPipelineRequest>,
    ) -> Result<Response<pb::ClaimPipelineResponse>, Status> {
        let request = request.into_inner();
        let name = name(&request.name)?;
        let runner = runner_id(&request.runner_id)?;
        let ttl = claim_ttl(request.ttl)?;
        let pipeline = self.pipelines.claim(&name, &runner, ttl).await?;
        Ok(Response::new(pb::ClaimPipelineResponse {
            pipeline: Some(pipeline),
        }))
    }

    async fn commit_pipeline(
        &self,
        request: Request<pb::CommitPipelineRequest>,
    ) -> Result<Response<pb::CommitPipelineResponse>, Status> {
        let commit = Commit::try_from(request.into_inner())?;
        let pipeline = self.pipelines.commit(commit).await?;
        Ok(Response::new(pb::CommitPipelineResponse {
            pipeline: Some(pipeline),
        }))
    }

    async fn release_pipeline(
        &self,
        request: Request<pb::ReleasePipelineRequest>,
    ) -> Result<Response<pb::ReleasePipelineResponse>, Status> {
        let request = request.into_inner();
        let name = name(&request.name)?;
        let runner = runner_id(&request.runner_id)?;
        self.pipelines
            .release(&name, &runner, request.epoch)
            .await?;
        Ok(Response::new(pb::ReleasePipelineResponse {}))
    }
}
