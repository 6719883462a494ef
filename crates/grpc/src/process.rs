//! The opening of a `Process` stream as every caller sees it (the pipeline's nodes, the
//! SDK's client): the init is the first request, and the host's first message must be
//! `ready`, whether the stream is a gRPC call or in memory. Callers keep their own error mapping; what counts as ready is decided here.

use flowplane_proto::processor::v1::{
    ProcessInit, ProcessReady, ProcessRequest, ProcessResponse, process_request, process_response,
};
use tonic::Status;

/// The request that opens a stream.
pub fn init_request(init: ProcessInit) -> ProcessRequest {
    ProcessRequest {
        request: Some(process_request::Request::Init(init)),
    }
}

/// Why a stream did not open.
#[derive(Debug)]
pub enum NotReady {
    /// The call failed: the host's status for an init it refused, or the transport's.
    Failed(Status),
    /// The host's first message was not `ready`; says what it was.
    Unexpected(&'static str),
    /// The host closed the stream before `ready`.
    Closed,
}

/// Reads the host's first message: its `ready`, or why the stream did not open.
pub async fn await_ready<S>(inbound: &mut S) -> Result<ProcessReady, NotReady>
where
    S: futures::Stream<Item = Result<ProcessResponse, Status>> + Unpin,
{
    use futures::StreamExt as _;
    match inbound.next().await.transpose().map_err(NotReady::Failed)? {
        Some(ProcessResponse {
            response: Some(process_response::Response::Ready(ready)),
        }) => Ok(ready),
        Some(ProcessResponse {
            response: Some(process_response::Response::Result(_)),
        }) => Err(NotReady::Unexpected("a result")),
        Some(ProcessResponse { response: None }) => Err(NotReady::Unexpected("an empty message")),
        None => Err(NotReady::Closed),
    }
}
