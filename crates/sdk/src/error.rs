//! The SDK's errors: [`Error`] ends a stream or fails a host, and `From<Error> for Status`
//! is the one table from error kind to gRPC code and machine-readable reason; every status
//! the SDK sends carries the standard `google.rpc.Status` details built by
//! `flowplane_grpc::status`. [`ProcessError`] and [`ParamError`] are what processor code
//! returns; they never end a stream by themselves.

use std::borrow::Cow;

use flowplane_proto::common::v1::ErrorDetail;
use tonic::{Code, Status};

/// Errors of the processor host and its lifecycle with the control plane.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the first message of a process stream must be init")]
    MissingInit,
    #[error("init sent twice on one process stream")]
    DuplicateInit,
    #[error("process request carries neither init nor chunk")]
    EmptyRequest,
    #[error("{position} is over the message limit of {limit} bytes (MAX_MESSAGE_BYTES): {detail}")]
    MessageTooLarge {
        /// Which request, for example "the process request after sequence 4".
        position: String,
        limit: usize,
        detail: String,
    },
    #[error("{position} could not be decoded: {detail}")]
    UndecodableRequest { position: String, detail: String },
    #[error("init.processor is empty; this host serves: {known}")]
    MissingProcessorName { known: String },
    #[error("unknown processor {name:?}; this host serves: {known}")]
    UnknownProcessor { name: String, known: String },
    #[error("processor {processor:?}: {source}")]
    InvalidParam {
        processor: String,
        #[source]
        source: ParamError,
    },
    #[error("processor {processor:?} panicked at sequence {sequence}: {message}")]
    ProcessorPanicked {
        processor: String,
        sequence: u64,
        message: String,
    },
    #[error("processor {processor:?} panicked while starting: {message}")]
    CreatePanicked { processor: String, message: String },
    #[error("processor host is shutting down and the grace period is over")]
    ShuttingDown,
    #[error("processor host is draining and opens no new process streams; use another host")]
    Draining,
    #[error("processor {processor:?} is declared wrongly: {message}")]
    InvalidCapability { processor: String, message: String },
    #[error("processor {0:?} is registered twice")]
    DuplicateProcessor(String),
    #[error("invalid {setting}: {message}")]
    InvalidConfig {
        setting: &'static str,
        message: String,
    },
    #[error("the first message of a {stream} stream must be open")]
    MissingOpen { stream: &'static str },
    #[error("open sent twice on one {stream} stream")]
    DuplicateOpen { stream: &'static str },
    #[error("{stream} request carries no message")]
    EmptyConnectorRequest { stream: &'static str },
    #[error("unknown {kind} {id:?}; this host serves: {known}")]
    UnknownConnector {
        /// "source" or "consumer".
        kind: &'static str,
        id: String,
        known: String,
    },
    #[error("{kind} {connector:?}: {source}")]
    Connector {
        kind: &'static str,
        connector: String,
        #[source]
        source: ConnectorError,
    },
    #[error("credit.records is 0; grant at least one record")]
    ZeroCredit,
    #[error(
        "credit.records {granted} would make {total} records of outstanding credit, over the limit of {limit}"
    )]
    CreditOverflow {
        granted: u32,
        total: u64,
        limit: u64,
    },
    #[error(
        "ack.partition {partition} is not a partition of source {source_name:?}; its partitions are: {known}"
    )]
    UnknownPartition {
        source_name: String,
        partition: u32,
        known: String,
    },
    #[error(
        "ack.next_offset {next_offset} of partition {partition} is beyond the records sent (next unsent offset {unsent})"
    )]
    AckAhead {
        partition: u32,
        next_offset: u64,
        unsent: u64,
    },
    #[error("delivery {delivery_id} carries no lineage")]
    MissingLineage { delivery_id: u64 },
    #[error("source {source_name:?} misbehaved: {message}")]
    SourceMisbehaved {
        source_name: String,
        message: String,
    },
    #[error("a {stream} stream's connector panicked: {message}")]
    ConnectorPanicked {
        stream: &'static str,
        message: String,
    },
    #[error("connector host is draining and opens no new streams; use another host")]
    ConnectorDraining,
    #[error("connector host is shutting down and the grace period is over")]
    ConnectorShuttingDown,
    #[error("{kind} {connector:?} is declared wrongly: {message}")]
    InvalidConnector {
        kind: &'static str,
        connector: String,
        message: String,
    },
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Grpc(#[from] flowplane_grpc::Error),
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The one table: gRPC code, machine-readable reason and the request field at fault.
    fn classify(&self) -> (Code, &'static str, String) {
        let none = String::new;
        match self {
            Error::MissingInit => (Code::FailedPrecondition, "MISSING_INIT", "init".into()),
            Error::DuplicateInit => (Code::FailedPrecondition, "DUPLICATE_INIT", "init".into()),
            Error::EmptyRequest => (Code::InvalidArgument, "EMPTY_REQUEST", "request".into()),
            Error::MessageTooLarge { .. } => (Code::ResourceExhausted, "MESSAGE_TOO_LARGE", none()),
            Error::UndecodableRequest { .. } => {
                (Code::InvalidArgument, "UNDECODABLE_REQUEST", none())
            }
            Error::MissingProcessorName { .. } => (
                Code::InvalidArgument,
                "MISSING_PROCESSOR",
                "init.processor".into(),
            ),
            Error::UnknownProcessor { .. } => {
                (Code::NotFound, "UNKNOWN_PROCESSOR", "init.processor".into())
            }
            Error::InvalidParam { source, .. } => (
                Code::InvalidArgument,
                "INVALID_PARAM",
                format!("init.params.{}", source.param()),
            ),
            Error::ShuttingDown => (Code::Unavailable, "SHUTTING_DOWN", none()),
            Error::Draining => (Code::Unavailable, "DRAINING", none()),
            Error::ProcessorPanicked { .. } => (Code::Internal, "PROCESSOR_PANICKED", none()),
            Error::CreatePanicked { .. } => (Code::Internal, "CREATE_PANICKED", none()),
            Error::InvalidCapability { .. } => (Code::Internal, "INVALID_CAPABILITY", none()),
            Error::DuplicateProcessor(_) => (Code::Internal, "DUPLICATE_PROCESSOR", none()),
            Error::InvalidConfig { .. } => (Code::Internal, "INVALID_CONFIG", none()),
            Error::MissingOpen { .. } => (Code::FailedPrecondition, "MISSING_OPEN", "open".into()),
            Error::DuplicateOpen { .. } => {
                (Code::FailedPrecondition, "DUPLICATE_OPEN", "open".into())
            }
            Error::EmptyConnectorRequest { .. } => {
                (Code::InvalidArgument, "EMPTY_REQUEST", "request".into())
            }
            Error::UnknownConnector { kind, .. } => (
                Code::NotFound,
                "UNKNOWN_CONNECTOR",
                format!("open.{kind}_id"),
            ),
            Error::Connector { source, .. } => {
                (source.code(), source.reason_static(), source.field().into())
            }
            Error::ZeroCredit => (
                Code::InvalidArgument,
                "ZERO_CREDIT",
                "credit.records".into(),
            ),
            Error::CreditOverflow { .. } => (
                Code::InvalidArgument,
                "CREDIT_OVERFLOW",
                "credit.records".into(),
            ),
            Error::UnknownPartition { .. } => (
                Code::InvalidArgument,
                "UNKNOWN_PARTITION",
                "ack.partition".into(),
            ),
            Error::AckAhead { .. } => {
                (Code::InvalidArgument, "ACK_AHEAD", "ack.next_offset".into())
            }
            Error::MissingLineage { .. } => (
                Code::InvalidArgument,
                "MISSING_LINEAGE",
                "delivery.lineage".into(),
            ),
            Error::SourceMisbehaved { .. } => (Code::Internal, "SOURCE_MISBEHAVED", none()),
            Error::ConnectorPanicked { .. } => (Code::Internal, "CONNECTOR_PANICKED", none()),
            Error::ConnectorDraining => (Code::Unavailable, "DRAINING", none()),
            Error::ConnectorShuttingDown => (Code::Unavailable, "SHUTTING_DOWN", none()),
            Error::InvalidConnector { .. } => (Code::Internal, "INVALID_CONNECTOR", none()),
            Error::Io(_) => (Code::Internal, "IO", none()),
            Error::Grpc(_) => (Code::Internal, "GRPC_STACK", none()),
        }
    }
}

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        let (code, reason, field) = error.classify();
        let sequence = match &error {
            Error::ProcessorPanicked { sequence, .. } => Some(*sequence),
            _ => None,
        };
        flowplane_grpc::status::with_detail(
            code,
            error.to_string(),
            ErrorDetail {
                reason: reason.into(),
                field,
                sequence,
                ..Default::default()
            },
        )
    }
}

/// A chunk failed: answered with an error for that sequence; the stream goes on.
///
/// `code` is the gRPC code the client sees in `ErrorDetail.code`, `reason` is a
/// machine-readable UPPER_SNAKE_CASE cause and `field` the dotted path of the offending
/// request field (for example `chunk.buffer.json.json`), when there is one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ProcessError {
    code: Code,
    reason: Cow<'static, str>,
    field: String,
    message: String,
}

impl ProcessError {
    /// An error with any code.
    pub fn new(
        code: Code,
        reason: impl Into<Cow<'static, str>>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            code,
            reason: reason.into(),
            field: String::new(),
            message: message.into(),
        }
    }

    /// The input was wrong (bad JSON, a zero divisor, a malformed payload): INVALID_ARGUMENT
    /// naming `field`.
    pub fn invalid(
        reason: impl Into<Cow<'static, str>>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self::new(Code::InvalidArgument, reason, message).with_field(field)
    }

    /// The processor itself misbehaved: INTERNAL.
    pub fn internal(reason: impl Into<Cow<'static, str>>, message: impl Into<String>) -> Self {
        Self::new(Code::Internal, reason, message)
    }

    /// Names the offending request field as a dotted path.
    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = field.into();
        self
    }

    /// The gRPC code.
    pub fn code(&self) -> Code {
        self.code
    }

    /// The machine-readable cause.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// The offending field, empty when there is none.
    pub fn field(&self) -> &str {
        &self.field
    }

    /// The human-readable explanation.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The wire form, naming the node and the sequence it concerns.
    pub fn into_detail(self, node_id: &str, sequence: u64) -> ErrorDetail {
        ErrorDetail {
            reason: self.reason.into_owned(),
            message: format!("sequence {sequence}: {}", self.message),
            node_id: node_id.to_string(),
            sequence: Some(sequence),
            field: self.field,
            code: self.code as i32,
        }
    }
}

/// A connector could not open or read a stream: the stream ends with `code`. A bad
/// param converts from a [`ParamError`] (INVALID_ARGUMENT, reason `INVALID_PARAM`,
/// field `open.params.<name>`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ConnectorError {
    code: Code,
    reason: &'static str,
    field: String,
    message: String,
}

impl ConnectorError {
    /// An error with any code; `reason` is UPPER_SNAKE_CASE.
    pub fn new(code: Code, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            field: String::new(),
            message: message.into(),
        }
    }

    /// Something the connector depends on is not there now (a file, a broker):
    /// UNAVAILABLE, so the runner tries again later.
    pub fn unavailable(reason: &'static str, message: impl Into<String>) -> Self {
        Self::new(Code::Unavailable, reason, message)
    }

    /// The connector itself misbehaved: INTERNAL.
    pub fn internal(reason: &'static str, message: impl Into<String>) -> Self {
        Self::new(Code::Internal, reason, message)
    }

    /// Names the offending request field as a dotted path.
    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = field.into();
        self
    }

    /// The gRPC code.
    pub fn code(&self) -> Code {
        self.code
    }

    /// The machine-readable cause.
    pub fn reason(&self) -> &str {
        self.reason
    }

    fn reason_static(&self) -> &'static str {
        self.reason
    }

    /// The offending field, empty when there is none.
    pub fn field(&self) -> &str {
        &self.field
    }

    /// The human-readable explanation.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl From<ParamError> for ConnectorError {
    fn from(error: ParamError) -> Self {
        Self::new(Code::InvalidArgument, "INVALID_PARAM", error.to_string())
            .with_field(format!("open.params.{}", error.param()))
    }
}

/// A parameter was missing, of the wrong type or out of range; the stream does not open.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid param {param:?}: {message}")]
pub struct ParamError {
    param: String,
    message: String,
}

impl ParamError {
    /// An error about parameter `param`.
    pub fn new(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            param: param.into(),
            message: message.into(),
        }
    }

    /// The parameter's name.
    pub fn param(&self) -> &str {
        &self.param
    }

    /// The explanation.
    pub fn message(&self) -> &str {
        &self.message
    }
}

#[cfg(test)]
mod tests {
    use tonic_types::StatusExt;

    use super::*;

    #[test]
    fn every_stream_error_maps_to_its_documented_code() {
        let cases = [
            (Error::MissingInit, Code::FailedPrecondition),
            (Error::DuplicateInit, Code::FailedPrecondition),
            (Error::EmptyRequest, Code::InvalidArgument),
            (
                Error::UnknownProcessor {
                    name: "nope".into(),
                    known: "passthrough".into(),
                },
                Code::NotFound,
            ),
            (
                Error::InvalidParam {
                    processor: "audio.gain".into(),
                    source: ParamError::new("gain_db", "must be a number"),
                },
                Code::InvalidArgument,
            ),
            (
                Error::ProcessorPanicked {
                    processor: "x".into(),
                    sequence: 3,
                    message: "boom".into(),
                },
                Code::Internal,
            ),
            (Error::ShuttingDown, Code::Unavailable),
            (Error::Draining, Code::Unavailable),
            (
                Error::MessageTooLarge {
                    position: "the first process request".into(),
                    limit: 8,
                    detail: "found 9 bytes".into(),
                },
                Code::ResourceExhausted,
            ),
            (
                Error::UndecodableRequest {
                    position: "the first process request".into(),
                    detail: "bad utf-8".into(),
                },
                Code::InvalidArgument,
            ),
        ];
        for (error, code) in cases {
            let text = error.to_string();
            let status = Status::from(error);
            assert_eq!(status.code(), code, "{text}");
            assert_eq!(status.message(), text);
        }
    }

    #[test]
    fn statuses_carry_standard_details_with_reason_and_field() {
        let status = Status::from(Error::InvalidParam {
            processor: "audio.resample".into(),
            source: ParamError::new("target_rate", "must be between 1 and 768000 Hz, got 0"),
        });
        let details = status.check_error_details().expect("standard envelope");
        let info = details.error_info().expect("error info");
        assert_eq!(info.reason, "INVALID_PARAM");
        assert_eq!(info.domain, flowplane_grpc::status::ERROR_DOMAIN);
        let bad = details.bad_request().expect("bad request");
        assert_eq!(bad.field_violations[0].field, "init.params.target_rate");
        let detail = flowplane_grpc::status::error_detail(&status).expect("flowplane detail");
        assert_eq!(detail.code, Code::InvalidArgument as i32);

        let panicked = Status::from(Error::ProcessorPanicked {
            processor: "x".into(),
            sequence: 9,
            message: "boom".into(),
        });
        let details = panicked.check_error_details().unwrap();
        let info = details.error_info().unwrap();
        assert_eq!(info.reason, "PROCESSOR_PANICKED");
        assert_eq!(info.metadata["sequence"], "9");
        assert!(details.bad_request().is_none());

        let unknown = Status::from(Error::UnknownProcessor {
            name: "nope".into(),
            known: "passthrough".into(),
        });
        let details = unknown.check_error_details().unwrap();
        assert_eq!(details.error_info().unwrap().reason, "UNKNOWN_PROCESSOR");
        assert_eq!(
            details.bad_request().unwrap().field_violations[0].field,
            "init.processor"
        );
    }

    #[test]
    fn param_errors_name_the_processor_and_the_param() {
        let status = Status::from(Error::InvalidParam {
            processor: "text.transform".into(),
            source: ParamError::new("mode", "must be one of upper, lower, reverse"),
        });
        assert_eq!(
            status.message(),
            "processor \"text.transform\": invalid param \"mode\": must be one of upper, lower, reverse"
        );
    }

    #[test]
    fn connector_errors_keep_the_connectors_code_and_name_the_param_field() {
        let status = Status::from(Error::Connector {
            kind: "source",
            connector: "generator".into(),
            source: ParamError::new("partitions", "must be between 1 and 1024, got 0").into(),
        });
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(
            status.message(),
            "source \"generator\": invalid param \"partitions\": must be between 1 and 1024, got 0"
        );
        let details = status.check_error_details().unwrap();
        assert_eq!(details.error_info().unwrap().reason, "INVALID_PARAM");
        assert_eq!(
            details.bad_request().unwrap().field_violations[0].field,
            "open.params.partitions"
        );
        let unavailable = Status::from(Error::Connector {
            kind: "source",
            connector: "file".into(),
            source: ConnectorError::unavailable("FILE_UNAVAILABLE", "cannot open /x"),
        });
        assert_eq!(unavailable.code(), Code::Unavailable);
        let cases = [
            (
                Error::MissingOpen { stream: "read" },
                Code::FailedPrecondition,
            ),
            (
                Error::DuplicateOpen { stream: "deliver" },
                Code::FailedPrecondition,
            ),
            (Error::ZeroCredit, Code::InvalidArgument),
            (
                Error::UnknownConnector {
                    kind: "consumer",
                    id: "nope".into(),
                    known: "file, log".into(),
                },
                Code::NotFound,
            ),
            (Error::ConnectorDraining, Code::Unavailable),
        ];
        for (error, code) in cases {
            assert_eq!(Status::from(error).code(), code);
        }
    }

    #[test]
    fn chunk_errors_carry_code_sequence_and_node() {
        let detail = ProcessError::invalid("INVALID_JSON", "chunk.buffer.json.json", "not json")
            .into_detail("calc", 7);
        assert_eq!(detail.code, Code::InvalidArgument as i32);
        assert_eq!(detail.reason, "INVALID_JSON");
        assert_eq!(detail.field, "chunk.buffer.json.json");
        assert_eq!(detail.node_id, "calc");
        assert_eq!(detail.sequence, Some(7));
        assert_eq!(detail.message, "sequence 7: not json");
    }
}
