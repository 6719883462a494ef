//! One node's link to a processor instance: a `Process` stream opened with an init,
//! confirmed by `ready` within a deadline, fed from an unbounded sender (the session's
//! window bounds what is in it) and read by a task that forwards every result to the
//! session, charging it to the service's memory budget and reading no further while the
//! budget is full. Links never decide what a failure means; the session does.

use std::{sync::Arc, time::Duration};

use flowplane_grpc::process::{self, NotReady};
use flowplane_manifest::PlanNode;
use flowplane_proto::{
    data::v1::DataChunk,
    processor::v1::{
        ProcessInit, ProcessRequest, ProcessResult, process_request, process_response,
    },
};
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tracing::Instrument;

use crate::{
    budget::{Budget, Charge},
    directory::{Directory, Instance, LoadGuard},
};

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
    requests: mpsc::UnboundedSender<ProcessRequest>,
    _load: LoadGuard,
    reader: tokio::task::JoinHandle<()>,
    graceful: bool,
}

/// How long a dropped link's processor gets to end its stream after the half-close.
const CLOSE_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

impl Drop for NodeLink {
    /// Half-closes the request stream so the processor ends its side with OK, and reads
    /// to that end; a processor that does not end within the grace is cut off. A link
    /// dropped after [`NodeLink::abort`] is cut off at once (the stream is reset).
    fn drop(&mut self) {
        if !self.graceful {
            self.reader.abort();
            return;
        }
        let abort = self.reader.abort_handle();
        let reader = std::mem::replace(&mut self.reader, tokio::spawn(async {}));
        tokio::spawn(async move {
            if tokio::time::timeout(CLOSE_GRACE, reader).await.is_err() {
                abort.abort();
            }
        });
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
    /// the reader reports as [`NodeEvent::Ended`].
    pub fn send(&self, chunk: DataChunk) -> bool {
        self.requests
            .send(ProcessRequest {
                request: Some(process_request::Request::Chunk(chunk)),
            })
            .is_ok()
    }

    /// Opens `node` on `instance` and waits up to `ready_timeout` for `ready`. Events
    /// carry `tag` so the session can tell a replaced link's late events from the
    /// current one's.
    #[allow(clippy::too_many_arguments)]
    pub async fn open<T: Clone + Send + 'static>(
        directory: &Arc<Directory>,
        instance: Instance,
        node: &PlanNode,
        session_id: &str,
        tag: T,
        events: mpsc::UnboundedSender<(T, NodeEvent)>,
        budget: Arc<Budget>,
        ready_timeout: Duration,
    ) -> Result<Self, OpenError> {
        let load = directory.hold(&instance);
        let mut client = directory
            .processor_client(&instance.endpoint)
            .map_err(OpenError::Unreachable)?;
        let (requests, rx) = mpsc::unbounded_channel();
        let init = process::init_request(ProcessInit {
            processor: node.processor.clone(),
            node_id: node.id.clone(),
            params: Some(flowplane_proto::json_to_struct(&node.params)),
            session_id: session_id.to_string(),
        });
        requests
            .send(init)
            .expect("receiver is alive until the call starts");
        let span = tracing::info_span!(
            "pipeline.node",
            flowplane.node_id = %node.id,
            flowplane.processor = %node.processor,
            flowplane.instance = %instance.id,
            flowplane.endpoint = %instance.endpoint,
        );
        let opening = async {
            let mut stream = client
                .process(UnboundedReceiverStream::new(rx))
                .instrument(span.clone())
                .await
                .map_err(classify)?
                .into_inner();
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
        let mut stream = match tokio::time::timeout(ready_timeout, opening).await {
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
        let reader = tokio::spawn(
            async move {
                loop {
                    // Read no further while the service is over its memory budget: the
                    // processor then meets HTTP/2 flow control.
                    budget.room().await;
                    let event = match stream.message().await {
                        Ok(Some(response)) => match response.response {
                            Some(process_response::Response::Result(result)) => {
                                let charge = budget.charge(result.encoded_len());
                                NodeEvent::Result(result, charge)
                            }
                            // A second ready or an empty message carries nothing to route.
                            _ => continue,
                        },
                        Ok(None) => NodeEvent::Ended(None),
                        Err(status) => NodeEvent::Ended(Some(status)),
                    };
                    let ended = matches!(event, NodeEvent::Ended(_));
                    if events.send((tag.clone(), event)).is_err() || ended {
                        return;
                    }
                }
            }
            .instrument(span),
        );
        Ok(Self {
            instance,
            requests,
            _load: load,
            reader,
            graceful: true,
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
