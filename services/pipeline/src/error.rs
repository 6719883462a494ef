//! The pipeline service's errors and the one table that turns them into gRPC statuses.
//! Every message names the node, input, field or sequence it concerns.

use flowplane_proto::common::v1::ErrorDetail;
use prost::Message;

/// Errors of the pipeline service.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The manifest is invalid or cannot run now; carries every problem.
    #[error(transparent)]
    Manifest(#[from] flowplane_manifest::Problems),
    /// The stream broke the session protocol (no init, data after close, ...).
    #[error("{0}")]
    Protocol(String),
    /// A client request field is invalid.
    #[error("{0}")]
    InvalidInput(String),
    /// A session or payload limit was hit; the message names the limit.
    #[error("{0}")]
    LimitExceeded(String),
    /// The session was idle too long or init did not arrive in time.
    #[error("{0}")]
    Timeout(String),
    /// A node lost its processor instance and could not move to another one.
    #[error("{message}")]
    NodeUnavailable {
        message: String,
        detail: Box<ErrorDetail>,
    },
    /// A processor rejected its init or failed its stream for a reason other than
    /// losing its instance; carries the processor's code.
    #[error("{message}")]
    NodeFailed {
        code: tonic::Code,
        message: String,
        detail: Box<ErrorDetail>,
    },
    /// The client cancelled the session.
    #[error("session cancelled by client")]
    Cancelled,
    /// The service is shutting down.
    #[error("pipeline service is shutting down")]
    ShuttingDown,
    /// The server itself could not start or serve.
    #[error(transparent)]
    Server(#[from] flowplane_grpc::Error),
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<tonic::Status> for Error {
    /// A failed read of the client's own stream.
    fn from(status: tonic::Status) -> Self {
        Error::Protocol(format!("client stream failed: {}", status.message()))
    }
}

impl From<Error> for tonic::Status {
    fn from(err: Error) -> Self {
        let message = err.to_string();
        let (code, detail) = match err {
            Error::Manifest(problems) => {
                let code = problems.code();
                let first = problems.0.first().map(|p| p.to_detail());
                (code, first)
            }
            Error::Protocol(_) => (tonic::Code::FailedPrecondition, None),
            Error::InvalidInput(_) => (tonic::Code::InvalidArgument, None),
            Error::LimitExceeded(_) => (tonic::Code::ResourceExhausted, None),
            Error::Timeout(_) => (tonic::Code::DeadlineExceeded, None),
            Error::NodeUnavailable { detail, .. } => (tonic::Code::Unavailable, Some(*detail)),
            Error::NodeFailed { code, detail, .. } => (code, Some(*detail)),
            Error::Cancelled => (tonic::Code::Cancelled, None),
            Error::ShuttingDown => (tonic::Code::Unavailable, None),
            Error::Server(_) => (tonic::Code::Internal, None),
        };
        match detail {
            Some(detail) => {
                tonic::Status::with_details(code, message, detail.encode_to_vec().into())
            }
            None => tonic::Status::new(code, message),
        }
    }
}
