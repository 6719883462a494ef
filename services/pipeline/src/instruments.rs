//! The pipeline service's metric names, their descriptions and the series that exist
//! from start (at zero), in one place. Labels stay bounded: codes, processor names (of
//! live processors only), and capped sets of error reasons, pipeline names and node ids
//! (the first ones seen keep their series, later ones share `other`); never a session id
//! or a sequence number.

use std::sync::Mutex;

/// Gauge: sessions open now.
pub const SESSIONS_ACTIVE: &str = "flowplane_pipeline_sessions_active";
/// Counter: sessions ended, by `code`.
pub const SESSIONS_TOTAL: &str = "flowplane_pipeline_sessions_total";
/// Counter: client chunks admitted into sessions.
pub const CHUNKS_TOTAL: &str = "flowplane_pipeline_chunks_total";
/// Counter: payload bytes of the client chunks admitted.
pub const BYTES_TOTAL: &str = "flowplane_pipeline_bytes_total";
/// Counter: per-chunk errors sent to clients, by `code` and `reason`.
pub const CHUNK_ERRORS_TOTAL: &str = "flowplane_pipeline_chunk_errors_total";
/// Counter: chunks sent to a node, by `pipeline`, `node` and `processor`.
pub const NODE_CHUNKS_TOTAL: &str = "flowplane_pipeline_node_chunks_total";
/// Counter: payload bytes sent to a node, by `pipeline`, `node` and `processor`.
pub const NODE_BYTES_TOTAL: &str = "flowplane_pipeline_node_bytes_total";
/// Counter: chunks a node answered with an error, by `pipeline`, `node` and `processor`.
pub const NODE_ERRORS_TOTAL: &str = "flowplane_pipeline_node_errors_total";
/// Histogram: time from sending a chunk to a node to its result, by `pipeline`, `node`
/// and `processor`.
pub const NODE_LATENCY_SECONDS: &str = "flowplane_pipeline_node_latency_seconds";
/// Counter: nodes moved to another instance, by `processor`.
pub const FAILOVERS_TOTAL: &str = "flowplane_pipeline_failovers_total";
/// Counter: node outputs the manifest leaves unconnected, discarded, by `processor`.
pub const UNROUTED_OUTPUTS_TOTAL: &str = "flowplane_pipeline_unrouted_outputs_total";
/// Gauge: bytes charged against the memory budget now.
pub const MEMORY_BUDGET_USED_BYTES: &str = "flowplane_pipeline_memory_budget_used_bytes";
/// Counter: reads that had to wait for room in the memory budget.
pub const MEMORY_BUDGET_WAITS_TOTAL: &str = "flowplane_pipeline_memory_budget_waits_total";

/// Distinct `reason` values [`CHUNK_ERRORS_TOTAL`] takes before any further one is
/// counted as [`OTHER_REASON`]: reasons come from processors, so they are capped here.
pub const MAX_REASONS: usize = 32;
/// The `reason` of a chunk error past the cap, or one that is not an UPPER_SNAKE word.
pub const OTHER_REASON: &str = "OTHER";
/// The `reason` of a chunk error that carried none.
pub const UNSPECIFIED_REASON: &str = "UNSPECIFIED";

/// The chunk errors the pipeline gives itself, by code and reason: their
/// [`CHUNK_ERRORS_TOTAL`] series exist from start.
const OWN_CHUNK_ERRORS: [(&str, &str); 5] = [
    ("INVALID_ARGUMENT", "MISSING_PAYLOAD"),
    ("INVALID_ARGUMENT", "MISSING_INPUT"),
    ("INVALID_ARGUMENT", "UNKNOWN_INPUT"),
    ("INVALID_ARGUMENT", "TYPE_MISMATCH"),
    ("RESOURCE_EXHAUSTED", "PAYLOAD_TOO_LARGE"),
];

/// Registers every description with the installed recorder (a no-op without one) and
/// creates the main series at zero, so a scrape before the first session shows 0.
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_gauge!(SESSIONS_ACTIVE, "streaming sessions open now");
    describe_counter!(
        SESSIONS_TOTAL,
        "streaming sessions ended, by status code (OK for a session closed normally)"
    );
    describe_counter!(CHUNKS_TOTAL, "client chunks admitted into sessions");
    describe_counter!(
        BYTES_TOTAL,
        Unit::Bytes,
        "payload bytes of the client chunks admitted into sessions"
    );
    describe_counter!(
        CHUNK_ERRORS_TOTAL,
        "per-chunk errors sent to clients, by status code and reason (capped: further reasons count as OTHER)"
    );
    describe_counter!(
        NODE_CHUNKS_TOTAL,
        "chunks sent to a node, by pipeline, node and processor"
    );
    describe_counter!(
        NODE_BYTES_TOTAL,
        Unit::Bytes,
        "payload bytes sent to a node, by pipeline, node and processor"
    );
    describe_counter!(
        NODE_ERRORS_TOTAL,
        "chunks a node answered with an error, by pipeline, node and processor"
    );
    describe_histogram!(
        NODE_LATENCY_SECONDS,
        Unit::Seconds,
        "time from sending a chunk to a node to its result, by pipeline, node and processor"
    );
    describe_counter!(
        FAILOVERS_TOTAL,
        "nodes moved to another processor instance, by processor"
    );
    describe_counter!(
        UNROUTED_OUTPUTS_TOTAL,
        "node outputs the manifest leaves unconnected (discarded), by processor"
    );
    describe_gauge!(
        MEMORY_BUDGET_USED_BYTES,
        Unit::Bytes,
        "bytes held against the service-wide memory budget now"
    );
    describe_counter!(
        MEMORY_BUDGET_WAITS_TOTAL,
        "reads that waited for room in the memory budget"
    );
    // Adding nothing: another service in this process may already have counted.
    metrics::gauge!(SESSIONS_ACTIVE).increment(0.0);
    metrics::counter!(SESSIONS_TOTAL, "code" => "OK").increment(0);
    metrics::counter!(CHUNKS_TOTAL).increment(0);
    metrics::counter!(BYTES_TOTAL).increment(0);
    metrics::counter!(MEMORY_BUDGET_WAITS_TOTAL).increment(0);
    metrics::gauge!(MEMORY_BUDGET_USED_BYTES).increment(0.0);
    for (code, reason) in OWN_CHUNK_ERRORS {
        metrics::counter!(CHUNK_ERRORS_TOTAL, "code" => code, "reason" => reason_label(reason))
            .increment(0);
    }
}

/// A label whose values come from outside (processors' reasons, clients' pipeline names and
/// node ids): a value keeps its own series while it has the label's shape, at most 64
/// bytes, and is one of the first `max` distinct values this process saw; every other
/// value shares the `other` series, so no client can grow the series without bound.
struct BoundedLabel {
    max: usize,
    other: &'static str,
    shaped: fn(u8) -> bool,
    seen: Mutex<Vec<String>>,
}

impl BoundedLabel {
    const fn new(max: usize, other: &'static str, shaped: fn(u8) -> bool) -> Self {
        Self {
            max,
            other,
            shaped,
            seen: Mutex::new(Vec::new()),
        }
    }

    fn label(&self, value: &str) -> String {
        if value.len() > 64 || !value.bytes().all(self.shaped) {
            return self.other.to_string();
        }
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.iter().any(|s| s == value) {
            return value.to_string();
        }
        if seen.len() < self.max {
            seen.push(value.to_string());
            return value.to_string();
        }
        self.other.to_string()
    }
}

/// Distinct pipeline names and node ids with series of their own; later ones are `other`.
pub const MAX_PIPELINE_LABELS: usize = 64;
/// Distinct node ids with series of their own.
pub const MAX_NODE_LABELS: usize = 256;

fn reason_byte(b: u8) -> bool {
    b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_'
}

fn name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.')
}

static REASONS: BoundedLabel = BoundedLabel::new(MAX_REASONS, OTHER_REASON, reason_byte);
static PIPELINES: BoundedLabel = BoundedLabel::new(MAX_PIPELINE_LABELS, "other", name_byte);
static NODES: BoundedLabel = BoundedLabel::new(MAX_NODE_LABELS, "other", name_byte);

/// The `reason` label for a chunk error's reason: the reason itself while it is an
/// UPPER_SNAKE word of at most 64 characters and one of the first [`MAX_REASONS`] seen,
/// else [`OTHER_REASON`].
pub fn reason_label(reason: &str) -> String {
    if reason.is_empty() {
        return UNSPECIFIED_REASON.to_string();
    }
    REASONS.label(reason)
}

/// The `pipeline` label for a manifest's name: `unnamed` for a pipeline without one,
/// `other` past [`MAX_PIPELINE_LABELS`] names or for a name that is not a plain word.
pub fn pipeline_label(name: &str) -> String {
    if name.is_empty() {
        return "unnamed".to_string();
    }
    PIPELINES.label(name)
}

/// The `node` label for a node id, bounded like [`pipeline_label`] ([`MAX_NODE_LABELS`]).
pub fn node_label(id: &str) -> String {
    NODES.label(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_capped_and_shaped() {
        assert_eq!(reason_label(""), UNSPECIFIED_REASON);
        assert_eq!(reason_label("not a reason"), OTHER_REASON);
        assert_eq!(reason_label("INVALID_JSON"), "INVALID_JSON");
        for i in 0..2 * MAX_REASONS {
            let label = reason_label(&format!("REASON_{i}"));
            assert!(label == format!("REASON_{i}") || label == OTHER_REASON);
        }
        assert_eq!(reason_label("ONE_REASON_TOO_MANY"), OTHER_REASON);
        // A reason seen before the cap keeps its label.
        assert_eq!(reason_label("INVALID_JSON"), "INVALID_JSON");
    }

    #[test]
    fn client_chosen_names_get_a_bounded_set_of_series() {
        assert_eq!(pipeline_label(""), "unnamed");
        assert_eq!(pipeline_label("has space"), "other");
        assert_eq!(pipeline_label(&"p".repeat(65)), "other");
        assert_eq!(pipeline_label("audio-chain"), "audio-chain");
        for i in 0..2 * MAX_PIPELINE_LABELS {
            let label = pipeline_label(&format!("pipeline-{i}"));
            assert!(label == format!("pipeline-{i}") || label == "other");
        }
        assert_eq!(pipeline_label("one-too-many"), "other");
        assert_eq!(pipeline_label("audio-chain"), "audio-chain");
        for i in 0..2 * MAX_NODE_LABELS {
            let label = node_label(&format!("n{i}"));
            assert!(label == format!("n{i}") || label == "other");
        }
        assert_eq!(node_label("one-too-many"), "other");
    }
}
