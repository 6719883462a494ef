//! The harness's one error type. A scenario that fails to set up or to run ends its
//! own row with this error; it never aborts the other scenarios.

/// Errors of the benchmark harness.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or socket operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A gRPC channel could not be opened.
    #[error("cannot connect to {endpoint}: {message}")]
    Connect {
        /// The address tried.
        endpoint: String,
        /// The transport's complaint.
        message: String,
    },
    /// An RPC the harness depends on failed.
    #[error("rpc {rpc} failed: {code:?}: {message}")]
    Rpc {
        /// The RPC.
        rpc: &'static str,
        /// The status code.
        code: tonic::Code,
        /// The status message.
        message: String,
    },
    /// Something the scenario needs is not there (a binary, a port, a processor).
    #[error("{0}")]
    Setup(String),
    /// A bounded wait ran out.
    #[error("timed out: {0}")]
    Timeout(String),
}

impl Error {
    /// An RPC failure from its status.
    pub fn rpc(rpc: &'static str, status: tonic::Status) -> Self {
        Self::Rpc {
            rpc,
            code: status.code(),
            message: status.message().to_string(),
        }
    }

    /// An I/O failure while doing `what`.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io {
            what: what.into(),
            source,
        }
    }
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
