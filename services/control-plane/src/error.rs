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

    /// A standing pipeline spec with problems: every one of them, each naming its field.
    #[error("{}", Violation::join(.0))]
    InvalidSpec(Vec<Violation>),

    /// No standing pipeline of this name is stored.
    #[error("name: no standing pipeline {name:?} is stored")]
    PipelineNotFound { name: String },

    /// A paused pipeline cannot be claimed.
    #[error("name: pipeline {name:?} is paused: resume it before a runner can claim it")]
    PipelinePaused { name: String },

    /// A paused pipeline's runner must stop: its commits are refused.
    #[error("name: pipeline {name:?} is paused: its runner must stop, the commit is refused")]
    CommitWhilePaused { name: String },

    /// Offsets are reset only while the pipeline is paused (no runner can overwrite them).
    #[error("name: pipeline {name:?} is not paused: pause it before resetting its offsets")]
    PipelineNotPaused { name: String },

    /// Another runner holds a live claim.
    #[error(
        "runner_id: pipeline {name:?} is claimed by runner {holder:?} (epoch {epoch}) until {until}"
    )]
    PipelineClaimed {
        name: String,
        holder: String,
        epoch: u64,
        until: String,
    },

    /// The runner's claim is no longer the stored one: another runner claimed since, or the
    /// pipeline was paused.
    #[error("epoch: runner {runner:?} no longer holds pipeline {name:?} at epoch {epoch}: {now}")]
    ClaimLost {
        name: String,
        runner: String,
        epoch: u64,
        now: String,
    },

    /// Concurrent writes to one pipeline kept winning over this request.
    #[error(
        "name: pipeline {name:?} kept changing during this request ({attempts} tries); try again"
    )]
    PipelineConflict { name: String, attempts: usize },
}

/// One problem of a request, naming its field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The field, as a dotted path like `spec.consumers[1].output`.
    pub field: String,
    /// Machine-readable cause, for example `INVALID_FIELD` or the manifest's `NO_OUTPUTS`.
    pub reason: &'static str,
    /// Lowercase explanation, without the field.
    pub message: String,
}

impl Violation {
    /// A problem of `field` with the generic reason `INVALID_FIELD`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: "INVALID_FIELD",
            message: message.into(),
        }
    }

    fn join(all: &[Violation]) -> String {
        let parts: Vec<String> = all
            .iter()
            .map(|v| format!("{}: {}", v.field, v.message))
            .collect();
        parts.join("; ")
    }

    fn to_detail(&self) -> ErrorDetail {
        ErrorDetail {
            reason: self.reason.to_string(),
            field: self.field.clone(),
            message: format!("{}: {}", self.field, self.message),
            ..Default::default()
        }
    }
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
            Error::InvalidSpec(_) => (Code::InvalidArgument, "INVALID_FIELD"),
            Error::PipelineNotFound { .. } => (Code::NotFound, "PIPELINE_NOT_FOUND"),
            Error::PipelinePaused { .. } => (Code::FailedPrecondition, "PIPELINE_PAUSED"),
            Error::CommitWhilePaused { .. } => (Code::Aborted, "PIPELINE_PAUSED"),
            Error::PipelineNotPaused { .. } => (Code::FailedPrecondition, "PIPELINE_NOT_PAUSED"),
            Error::PipelineClaimed { .. } => (Code::Aborted, "PIPELINE_CLAIMED"),
            Error::ClaimLost { .. } => (Code::Aborted, "CLAIM_LOST"),
            Error::PipelineConflict { .. } => (Code::Aborted, "PIPELINE_CONFLICT"),
        }
    }

    /// The request field this error concerns, as a dotted path.
    fn field(&self) -> &str {
        match self {
            Error::InvalidArgument { field, .. } => field,
            Error::NotFound { field, .. } | Error::AlreadyExists { field, .. } => field,
            Error::LeaseMismatch { .. } => "lease_token",
            Error::InvalidSpec(all) => all.first().map_or("spec", |v| v.field.as_str()),
            Error::PipelineNotFound { .. }
            | Error::PipelinePaused { .. }
            | Error::CommitWhilePaused { .. }
            | Error::PipelineNotPaused { .. }
            | Error::PipelineConflict { .. } => "name",
            Error::PipelineClaimed { .. } => "runner_id",
            Error::ClaimLost { .. } => "epoch",
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
        // A spec's problems all travel in one status: the first is the detail, every one
        // is a field violation of the standard BadRequest.
        let more: Vec<ErrorDetail> = match &error {
            Error::InvalidSpec(all) => all.iter().skip(1).map(Violation::to_detail).collect(),
            _ => Vec::new(),
        };
        flowplane_grpc::status::with_violations(code, error.to_string(), detail, &more)
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
