//! The control plane's one error type and the one table that turns it into a gRPC status.
//! Every failed RPC leaves through `From<Error> for Status`; handlers never build a
//! `Status` themselves, so a code always means the same thing.

use flowplane_proto::common::v1::ErrorDetail;
use tonic::{Code, Status};

/// Everything that can go wrong in the control plane.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request field is missing, malformed or too large.
    #[error("{field}: {reason}")]
    InvalidArgument { field: String, reason: String },

    /// No live component with this id (never registered, deregistered or expired).
    #[error(
        "{field}: no {kind} {id:?} is registered (unknown, deregistered or lease expired); register again"
    )]
    NotFound {
        field: &'static str,
        kind: &'static str,
        id: String,
    },

    /// A live lease holds the id and the request did not present its token.
    #[error("{field}: {id:?} is already registered {detail}")]
    AlreadyExists {
        field: &'static str,
        id: String,
        detail: String,
    },

    /// The lease token does not belong to the component's live lease.
    #[error("lease_token: does not match the lease of component {id:?}")]
    LeaseMismatch { id: String },

    /// The registry holds `max_components` live components already.
    #[error("registry is full: it holds the maximum of {max} components (--max-components)")]
    RegistryFull { max: usize },

    /// The server is shutting down.
    #[error("the control plane is shutting down")]
    ShuttingDown,

    /// Invalid server configuration, naming the setting.
    #[error("invalid configuration: {0}")]
    Config(String),

    /// The shared gRPC stack failed (bind, TLS, reflection).
    #[error(transparent)]
    Grpc(#[from] flowplane_grpc::Error),

    /// A storage backend failed.
    #[error("registry backend: {0}")]
    Backend(String),
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Shorthand for [`Error::InvalidArgument`].
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The gRPC code and machine-readable reason of this error: the one table.
    fn code_and_reason(&self) -> (Code, &'static str) {
        match self {
            Error::InvalidArgument { .. } => (Code::InvalidArgument, "INVALID_FIELD"),
            Error::NotFound { .. } => (Code::NotFound, "COMPONENT_NOT_FOUND"),
            Error::AlreadyExists { .. } => (Code::AlreadyExists, "ALREADY_REGISTERED"),
            Error::LeaseMismatch { .. } => (Code::PermissionDenied, "LEASE_TOKEN_MISMATCH"),
            Error::RegistryFull { .. } => (Code::ResourceExhausted, "REGISTRY_FULL"),
            Error::ShuttingDown => (Code::Unavailable, "SHUTTING_DOWN"),
            Error::Config(_) => (Code::Internal, "CONFIG"),
            Error::Grpc(_) => (Code::Internal, "GRPC_STACK"),
            Error::Backend(_) => (Code::Unavailable, "REGISTRY_BACKEND"),
        }
    }

    /// The request field this error concerns, as a dotted path.
    fn field(&self) -> &str {
        match self {
            Error::InvalidArgument { field, .. } => field,
            Error::NotFound { field, .. } | Error::AlreadyExists { field, .. } => field,
            Error::LeaseMismatch { .. } => "lease_token",
            _ => "",
        }
    }
}

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        let (code, reason) = error.code_and_reason();
        let detail = ErrorDetail {
            reason: reason.to_string(),
            field: error.field().to_string(),
            ..Default::default()
        };
        flowplane_grpc::status::with_detail(code, error.to_string(), detail)
    }
}

/// The [`ErrorDetail`] a control-plane status carries, if any: `field` names the
/// offending request field and `reason` is machine-readable.
pub use flowplane_grpc::status::error_detail;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_carries_code_message_and_detail() {
        let status = Status::from(Error::invalid("endpoint", "must not be empty"));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), "endpoint: must not be empty");
        let detail = error_detail(&status).expect("error detail");
        assert_eq!(detail.field, "endpoint");
        assert_eq!(detail.reason, "INVALID_FIELD");
    }

    #[test]
    fn lease_mismatch_is_permission_denied_naming_the_token() {
        let status = Status::from(Error::LeaseMismatch { id: "p-1".into() });
        assert_eq!(status.code(), Code::PermissionDenied);
        assert!(status.message().contains("lease_token"));
        assert_eq!(error_detail(&status).unwrap().field, "lease_token");
    }
}
