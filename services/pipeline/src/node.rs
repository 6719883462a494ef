//! One node's link to a processor instance: a `Process` stream opened with an init
//! (over gRPC to a remote host, or in memory to the service's embedded host: the same
//! stream either way, and everything below is placement-blind), confirmed by `ready`
//! within a deadline, fed from a queue (the session's window and the memory budget bound
//! what is in it) and read by the session's own task through [`NodeLink::poll_event`],
//! which charges every result to the service's memory budget (the session reads no
//! further while the budget is full). No task or channel stands between the stream and the
//! session. Links never decide what a failure means; the session does.

use std::{
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use flowplane_grpc::process::{self, NotReady};
use flowplane_manifest::PlanNode;
use flowplane_proto::{
    data::v1::DataChunk,
    processor::v1::{
        ProcessInit, ProcessRequest, ProcessResult, process_request, process_response,
    },
};
use prost::Message;
use tokio_stream::StreamExt as _;
use tracing::Instrument;

use crate::{
    budget::{Budget, Charge},
    directory::{Directory, Instance, LoadGuard},
    queue,
};

/// A node's responses, whichever transport carries them.
type Responses = flowplane_sdk::ResponseStream;

/// What a node link reports to its session.
#[derive(Debug)]
pub enum NodeEvent {
    /// The processor answered one chunk; the charge holds its bytes in the budget.
    Result(ProcessResult, Charge),
    /// The stream ended: `None` when the processor closed it cleanly.
    Ended(Option<tonic::Status>),
}

/// A live Process stream for one node.
pub struct NodeLink {
    /// Where the node runs.
    pub instance: Instance,
    requests: queue::Sender<ProcessRequest>,
    _load: LoadGuard,
    /// `None` once the stream has ended (it is never polled again).
    responses: Option<Responses>,
    graceful: bool,
    span: tracing::Span,
}

/// How long a dropped link's processor gets to end its stream after the half-close.
const CLOSE_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

impl Drop for NodeLink {
    /// Half-closes the request stream so the processor ends its side with OK, and reads
    /// to that end; a processor that does not end within the grace is cut off. A link
    /// dropped after [`NodeLink::abort`] is cut off at once (the stream is reset).
    fn drop(&mut self) {
        let Some(mut responses) = self.responses.take() else {
            return;
        };
        if !self.graceful {
            return;
        }
        // The request sender drops with the link, right after this: that is the half-close.
        tokio::spawn(
            async move {
                let drained = async { while responses.next().await.is_some() {} };
                let _ = tokio::time::timeout(CLOSE_GRACE, drained).await;
            }
            .instrument(self.span.clone()),
        );
    }
}

/// Why a link could not be opened.
pub enum OpenError {
    /// No instance, or the instance could not be reached: another instance may work.
    Unreachable(tonic::Status),
    /// The processor refused the init (bad params, unknown processor): no instance will do better.
    Refused(tonic::Status),
}

impl NodeLink {
    /// Marks the link to be cut off at once when dropped: the session failed, so nothing
    /// the processor still says matters, and its stream and load count go now.
    pub fn abort(&mut self) {
        self.graceful = false;
    }

    /// Sends a chunk to the processor. Fails only when the stream is already gone, which
    /// [`NodeLink::poll_event`] reports as [`NodeEvent::Ended`].
    pub fn send(&self, chunk: DataChunk) -> bool {
        self.requests
            .try_send(ProcessRequest {
                request: Some(process_request::Request::Chunk(chunk)),
            })
            .is_ok()
    }

    /// The processor's next result (charged to `budget`) or the end of its stream;
    /// pending forever once the stream has ended. The caller checks the budget first.
    pub fn poll_event(&mut self, cx: &mut Context<'_>, budget: &Arc<Budget>) -> Poll<NodeEvent> {
        let Some(stream) = self.responses.as_mut() else {
            return Poll::Pending;
        };
        loop {
            let ended = match std::task::ready!(stream.as_mut().poll_next(cx)) {
                Some(Ok(response)) => match response.response {
                    Some(process_response::Response::Result(result)) => {
                        let charge = budget.charge_result(result.encoded_len());
                        return Poll::Ready(NodeEvent::Result(result, charge));
                    }
                    // A second ready or an empty message carries nothing to route.
                    _ => continue,
                },
                Some(Err(status)) => Some(status),
                None => None,
            };
            self.responses = None;
            return Poll::Ready(NodeEvent::Ended(ended));
        }
    }

    /// Opens `node` on `instance` and waits up to `ready_timeout` for `ready`.
    pub async fn open(
        directory: &Arc<Directory>,
        instance: Instance,
        node: &PlanNode,
        session_id: &str,
        ready_timeout: Duration,
    ) -> Result<Self, OpenError> {
        let load = directory.hold(&instance);
        let (requests, rx) = queue::unbounded();
        let init = process::init_request(ProcessInit {
            processor: node.processor.clone(),
            node_id: node.id.clone(),
            params: Some(flowplane_proto::json_to_struct(&node.params)),
            session_id: session_id.to_string(),
        });
        // The receiver is alive (it is only handed to the call below), and unbounded.
        let _ = requests.try_send(init);
        let span = tracing::info_span!(
            "pipeline.node",
            flowplane.node_id = %node.id,
            flowplane.processor = %node.processor,
            flowplane.instance = %instance.id,
            flowplane.endpoint = %instance.endpoint,
        );
        let opening = async {
            let requests = rx;
            let mut stream: Responses = if instance.local {
                let host = directory.local_host().ok_or_else(|| {
                    OpenError::Unreachable(tonic::Status::unavailable(
                        "this pipeline service hosts no processor in-process",
                    ))
                })?;
                let _entered = span.enter();
                host.process_local(requests).map_err(classify)?
            } else {
                let mut client = directory
                    .processor_client(&instance.endpoint)
                    .map_err(OpenError::Unreachable)?;
                Box::pin(
                    client
                        .process(requests)
                        .instrument(span.clone())
                        .await
                        .map_err(classify)?
                        .into_inner(),
                )
            };
            match process::await_ready(&mut stream).await {
                Ok(_) => Ok(stream),
                Err(NotReady::Failed(status)) => Err(classify(status)),
                Err(NotReady::Unexpected(what)) => {
                    Err(OpenError::Refused(tonic::Status::internal(format!(
                        "processor {:?} on {} answered init with {what} instead of ready",
                        node.processor, instance.id
                    ))))
                }
                Err(NotReady::Closed) => {
                    Err(OpenError::Unreachable(tonic::Status::unavailable(format!(
                        "processor host {} closed the stream before ready",
                        instance.id
                    ))))
                }
            }
        };
        let stream = match tokio::time::timeout(ready_timeout, opening).await {
            Ok(opened) => opened?,
            Err(_) => {
                return Err(OpenError::Unreachable(tonic::Status::deadline_exceeded(
                    format!(
                        "processor {:?} on instance {} sent no ready within {ready_timeout:?} of init (node_timeout)",
                        node.processor, instance.id
                    ),
                )));
            }
        };
        Ok(Self {
            instance,
            requests,
            _load: load,
            responses: Some(stream),
            graceful: true,
            span,
        })
    }
}

/// Transport trouble means another instance may work; anything else is the processor's verdict.
fn classify(status: tonic::Status) -> OpenError {
    if is_instance_failure(&status) {
        OpenError::Unreachable(status)
    } else {
        OpenError::Refused(status)
    }
}

/// Codes that mean the instance (or the way to it) failed, not the request.
pub fn is_instance_failure(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable
            | tonic::Code::Unknown
            | tonic::Code::Cancelled
            | tonic::Code::Aborted
            | tonic::Code::DeadlineExceeded
    )
}
