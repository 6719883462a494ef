//! Standard error details: every flowplane status carries a `google.rpc.Status` in
//! `grpc-status-details-bin` holding a `google.rpc.ErrorInfo` (reason, domain, node,
//! sequence), a `google.rpc.BadRequest` when a field is at fault, and the full
//! `flowplane.common.v1.ErrorDetail`, so stock decoders (`tonic-types`, Python
//! `grpc_status`) and flowplane clients read the same envelope. Nothing else builds one.

use std::collections::HashMap;

use flowplane_proto::common::v1::ErrorDetail;
use prost::Message;
use tonic::{Code, Status};
use tonic_types::pb;

/// Domain of every `google.rpc.ErrorInfo` flowplane sends.
pub const ERROR_DOMAIN: &str = "flowplane.dev";

/// Type URL of the packed [`ErrorDetail`].
pub const ERROR_DETAIL_TYPE_URL: &str = "type.googleapis.com/flowplane.common.v1.ErrorDetail";

const ERROR_INFO_TYPE_URL: &str = "type.googleapis.com/google.rpc.ErrorInfo";
const BAD_REQUEST_TYPE_URL: &str = "type.googleapis.com/google.rpc.BadRequest";

/// A status with `code` and `message` whose details carry `detail` in the standard
/// envelope. The detail's own code is set to `code`, so the two never disagree.
pub fn with_detail(code: Code, message: impl Into<String>, detail: ErrorDetail) -> Status {
    with_violations(code, message, detail, &[])
}

/// [`with_detail`], and the `google.rpc.BadRequest` also lists a field violation for each
/// of `more` that names a field: one status for every problem of one request.
pub fn with_violations(
    code: Code,
    message: impl Into<String>,
    mut detail: ErrorDetail,
    more: &[ErrorDetail],
) -> Status {
    let message = message.into();
    detail.code = code as i32;
    if detail.message.is_empty() {
        detail.message.clone_from(&message);
    }
    let mut metadata = HashMap::new();
    if !detail.node_id.is_empty() {
        metadata.insert("node_id".to_string(), detail.node_id.clone());
    }
    if let Some(sequence) = detail.sequence {
        metadata.insert("sequence".to_string(), sequence.to_string());
    }
    if !detail.field.is_empty() {
        metadata.insert("field".to_string(), detail.field.clone());
    }
    let mut details = vec![any(
        ERROR_INFO_TYPE_URL,
        &pb::ErrorInfo {
            reason: detail.reason.clone(),
            domain: ERROR_DOMAIN.to_string(),
            metadata,
        },
    )];
    let field_violations: Vec<_> = std::iter::once(&detail)
        .chain(more)
        .filter(|d| !d.field.is_empty())
        .map(|d| pb::bad_request::FieldViolation {
            field: d.field.clone(),
            description: d.message.clone(),
            reason: d.reason.clone(),
            localized_message: None,
        })
        .collect();
    if !field_violations.is_empty() {
        details.push(any(
            BAD_REQUEST_TYPE_URL,
            &pb::BadRequest { field_violations },
        ));
    }
    details.push(any(ERROR_DETAIL_TYPE_URL, &detail));
    let envelope = pb::Status {
        code: code as i32,
        message: message.clone(),
        details,
    };
    Status::with_details(code, message, envelope.encode_to_vec().into())
}

/// A status whose detail has just a machine-readable `reason` and the field at fault.
pub fn with_reason(code: Code, message: impl Into<String>, reason: &str, field: &str) -> Status {
    with_detail(
        code,
        message,
        ErrorDetail {
            reason: reason.to_string(),
            field: field.to_string(),
            ..Default::default()
        },
    )
}

/// The [`ErrorDetail`] packed in a status's `google.rpc.Status` envelope, if any.
pub fn error_detail(status: &Status) -> Option<ErrorDetail> {
    let envelope = pb::Status::decode(status.details()).ok()?;
    envelope
        .details
        .iter()
        .find(|any| any.type_url == ERROR_DETAIL_TYPE_URL)
        .and_then(|any| ErrorDetail::decode(any.value.as_slice()).ok())
}

fn any(type_url: &str, message: &impl Message) -> prost_types::Any {
    prost_types::Any {
        type_url: type_url.to_string(),
        value: message.encode_to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use tonic_types::StatusExt;

    use super::*;

    #[test]
    fn a_standard_decoder_reads_reason_node_sequence_and_field() {
        let status = with_detail(
            Code::InvalidArgument,
            "chunk sequence 7: bad",
            ErrorDetail {
                reason: "INVALID_JSON".into(),
                node_id: "calc".into(),
                sequence: Some(7),
                field: "chunk.buffer.json".into(),
                ..Default::default()
            },
        );
        let details = status.check_error_details().expect("standard envelope");
        let info = details.error_info().expect("error info");
        assert_eq!(info.reason, "INVALID_JSON");
        assert_eq!(info.domain, ERROR_DOMAIN);
        assert_eq!(info.metadata["node_id"], "calc");
        assert_eq!(info.metadata["sequence"], "7");
        let bad = details.bad_request().expect("bad request");
        assert_eq!(bad.field_violations[0].field, "chunk.buffer.json");
        let detail = error_detail(&status).expect("flowplane detail");
        assert_eq!(detail.code, Code::InvalidArgument as i32);
        assert_eq!(detail.message, "chunk sequence 7: bad");
        assert_eq!(detail.sequence, Some(7));
    }

    #[test]
    fn no_field_means_no_bad_request() {
        let status = with_reason(Code::Unavailable, "draining", "SHUTTING_DOWN", "");
        let details = status.check_error_details().unwrap();
        assert!(details.bad_request().is_none());
        assert_eq!(details.error_info().unwrap().reason, "SHUTTING_DOWN");
    }
}
