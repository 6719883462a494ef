//! The pipeline service's errors and the one table that turns them into gRPC statuses.
//! Every message names the node, input, field or sequence it concerns, and every status
//! carries its `ErrorDetail` in the standard `google.rpc.Status` envelope.

use flowplane_proto::common::v1::ErrorDetail;

/// Errors of the pipeline service.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The manifest is invalid or cannot run now; carries every problem.
    #[error(transparent)]
    Manifest(#[from] flowplane_manifest::Problems),
    /// The stream broke the session protocol (no init, data after close, ...).
    #[error("{0}")]
    Protocol(String),
    /// A client request field is invalid, or a request could not be decoded.
    #[error("{0}")]
    InvalidInput(String),
    /// A chunk's sequence does not strictly increase.
    #[error("{0}")]
    Sequence(String),
    /// A session or payload limit was hit; the message names the limit.
    #[error("{0}")]
    LimitExceeded(String),
    /// The session was idle too long or init did not arrive in time.
    #[error("{0}")]
    Timeout(String),
    /// The client stopped reading responses for the idle timeout.
    #[error("{0}")]
    ClientStalled(String),
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
    /// The service is shutting down: open sessions ran past the grace period.
    #[error("pipeline service is shutting down")]
    ShuttingDown,
    /// The service is draining and admits no new session.
    #[error("pipeline service is draining and admits no new session; retry on another instance")]
    Draining,
    /// The server itself could not start or serve.
    #[error(transparent)]
    Server(#[from] flowplane_grpc::Error),
    /// The embedded host could not be built (`--local-processors` names the flag).
    #[error(transparent)]
    LocalHost(#[from] flowplane_sdk::Error),
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<tonic::Status> for Error {
    /// A failed read of the client's own stream: an oversized message is a limit, an
    /// undecodable one bad input, a reset a cancellation.
    fn from(status: tonic::Status) -> Self {
        let message = status.message();
        match status.code() {
            tonic::Code::OutOfRange | tonic::Code::ResourceExhausted => {
                Error::LimitExceeded(format!(
                    "request message over the limit of {} bytes (max_message_bytes): {message}",
                    flowplane_grpc::MAX_MESSAGE_BYTES
                ))
            }
            tonic::Code::Internal if message.contains("decode") => {
                Error::InvalidInput(format!("request could not be decoded: {message}"))
            }
            tonic::Code::Cancelled => Error::Cancelled,
            _ => Error::Protocol(format!("client stream failed: {message}")),
        }
    }
}

impl Error {
    /// The one table: gRPC code, machine-readable reason and the detail to send (for a
    /// manifest, its first problem's; [`From<Error>`] lists the rest as field violations).
    fn parts(self) -> (tonic::Code, String, ErrorDetail) {
        let message = self.to_string();
        let plain = |code, reason: &str, field: &str| {
            (
                code,
                message.clone(),
                ErrorDetail {
                    reason: reason.into(),
                    field: field.into(),
                    ..Default::default()
                },
            )
        };
        match self {
            Error::Manifest(problems) => {
                let code = problems.code();
                let detail = problems
                    .0
                    .first()
                    .map(|p| p.to_detail())
                    .unwrap_or_default();
                (code, message, detail)
            }
            Error::Protocol(_) => plain(tonic::Code::FailedPrecondition, "PROTOCOL_VIOLATION", ""),
            Error::InvalidInput(_) => plain(tonic::Code::InvalidArgument, "INVALID_REQUEST", ""),
            Error::Sequence(_) => plain(
                tonic::Code::InvalidArgument,
                "SEQUENCE_NOT_INCREASING",
                "chunk.sequence",
            ),
            Error::LimitExceeded(_) => plain(tonic::Code::ResourceExhausted, "LIMIT_EXCEEDED", ""),
            Error::Timeout(_) => plain(tonic::Code::DeadlineExceeded, "TIMEOUT", ""),
            Error::ClientStalled(_) => {
                plain(tonic::Code::DeadlineExceeded, "CLIENT_NOT_READING", "")
            }
            Error::NodeUnavailable { detail, .. } => (tonic::Code::Unavailable, message, *detail),
            Error::NodeFailed { code, detail, .. } => (code, message, *detail),
            Error::Cancelled => plain(tonic::Code::Cancelled, "CANCELLED", ""),
            Error::ShuttingDown => plain(tonic::Code::Unavailable, "SHUTTING_DOWN", ""),
            Error::Draining => plain(tonic::Code::Unavailable, "DRAINING", ""),
            Error::Server(_) | Error::LocalHost(_) => plain(tonic::Code::Internal, "SERVER", ""),
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(err: Error) -> Self {
        let more: Vec<ErrorDetail> = match &err {
            Error::Manifest(problems) => problems.0.iter().skip(1).map(|p| p.to_detail()).collect(),
            _ => Vec::new(),
        };
        let (code, message, detail) = err.parts();
        flowplane_grpc::status::with_violations(code, message, detail, &more)
    }
}

#[cfg(test)]
mod tests {
    use tonic_types::StatusExt;

    use super::*;

    #[test]
    fn statuses_carry_standard_details_with_reason_and_field() {
        let status = tonic::Status::from(Error::Sequence("chunk sequence 3 is not greater".into()));
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        let details = status.check_error_details().expect("google.rpc.Status");
        assert_eq!(
            details.error_info().unwrap().reason,
            "SEQUENCE_NOT_INCREASING"
        );
        assert_eq!(
            details.bad_request().unwrap().field_violations[0].field,
            "chunk.sequence"
        );
        let detail = flowplane_grpc::status::error_detail(&status).unwrap();
        assert_eq!(detail.code, tonic::Code::InvalidArgument as i32);
    }

    #[test]
    fn client_read_failures_map_to_precise_codes() {
        let over = Error::from(tonic::Status::out_of_range(
            "decoded message length too large",
        ));
        assert_eq!(
            tonic::Status::from(over).code(),
            tonic::Code::ResourceExhausted
        );
        let utf8 = Error::from(tonic::Status::internal(
            "failed to decode Protobuf message: invalid string value: data is not UTF-8 encoded",
        ));
        let status = tonic::Status::from(utf8);
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().contains("UTF-8"), "{}", status.message());
        assert_eq!(
            tonic::Status::from(Error::from(tonic::Status::cancelled("reset"))).code(),
            tonic::Code::Cancelled
        );
    }
}
