//! The one gRPC stack every flowplane server and client uses: health and reflection on
//! every server, the same message limits on both ends, TLS and bearer-token auth when
//! configured, and signal-driven graceful shutdown. Services add their own handlers; they
//! never build a `tonic::transport::Server` themselves.

pub mod auth;
pub mod binary;
pub mod client;
pub mod config;
pub mod decode;
pub mod lifecycle;
pub mod process;
pub mod replicas;
pub mod retry;
pub mod server;
pub mod shutdown;
pub mod status;

/// Largest payload a single chunk may carry. Checked by the handlers so that an
/// oversized chunk gets RESOURCE_EXHAUSTED naming this limit instead of a transport error.
pub const MAX_PAYLOAD_BYTES: usize = 4 * 1024 * 1024;

/// Largest encoded gRPC message either side accepts: a maximal payload plus headroom
/// for the envelope, so the payload check above is what a client normally meets.
pub const MAX_MESSAGE_BYTES: usize = 2 * MAX_PAYLOAD_BYTES;

/// Errors of the shared gRPC stack.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {what} from {path}: {source}")]
    ReadFile {
        what: &'static str,
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    /// TLS flags that do not go together; the message names them.
    #[error("{0}")]
    TlsFlags(&'static str),
    #[error("invalid endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint { endpoint: String, reason: String },
    /// A bad entry in a list of replica URLs; names the flag and the entry.
    #[error("{flag}: invalid entry {entry:?}: {reason}")]
    InvalidReplica {
        flag: &'static str,
        entry: String,
        reason: String,
    },
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("{what} {path} line {line}: {reason}")]
    TokenFile {
        what: &'static str,
        path: std::path::PathBuf,
        line: usize,
        reason: String,
    },
    #[error("{what} {path} lists nothing: add lines of `{key} ROLE[,ROLE...]`")]
    NoTokens {
        what: &'static str,
        key: &'static str,
        path: std::path::PathBuf,
    },
    #[error("client token file {path} (--client-token-file): {reason}")]
    ClientToken {
        path: std::path::PathBuf,
        reason: &'static str,
    },
    /// A call without a valid token; the message says what was wrong, never the token.
    #[error("{0}")]
    Unauthenticated(&'static str),
    /// A valid token that lacks the role the call needs.
    #[error("this call needs a token with role {0}")]
    RoleRequired(auth::Role),
}

impl Error {
    /// The gRPC code and machine-readable reason of this error: the one table.
    fn code_and_reason(&self) -> (tonic::Code, &'static str) {
        use tonic::Code;
        match self {
            Error::Unauthenticated(_) => (Code::Unauthenticated, "UNAUTHENTICATED"),
            Error::RoleRequired(_) => (Code::PermissionDenied, "ROLE_REQUIRED"),
            Error::InvalidEndpoint { .. } | Error::InvalidReplica { .. } => {
                (Code::InvalidArgument, "INVALID_ENDPOINT")
            }
            Error::Transport(_) => (Code::Unavailable, "TRANSPORT"),
            Error::ReadFile { .. }
            | Error::TlsFlags(_)
            | Error::TokenFile { .. }
            | Error::NoTokens { .. }
            | Error::ClientToken { .. } => (Code::Internal, "CONFIG"),
            Error::Reflection(_) => (Code::Internal, "GRPC_STACK"),
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(error: Error) -> Self {
        let (code, reason) = error.code_and_reason();
        status::with_reason(code, error.to_string(), reason, "")
    }
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
