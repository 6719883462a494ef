//! Metric names, their descriptions and the series that exist from start (at zero).
//! Labels are bounded (kind, status); never a component id. Recording goes through the
//! `metrics` macros, which are no-ops without a recorder.

use flowplane_proto::common::v1::{ComponentKind, HealthStatus};

use crate::model::{kind_label, status_label};

/// Gauge: live components by `kind` and effective `status`.
pub const COMPONENTS: &str = "flowplane_controlplane_components";
/// Counter: accepted heartbeats by `kind`.
pub const HEARTBEATS_TOTAL: &str = "flowplane_controlplane_heartbeats_total";
/// Counter: components removed because their lease ran out, by `kind`.
pub const EXPIRED_TOTAL: &str = "flowplane_controlplane_expired_total";
/// Histogram: how late a heartbeat arrived past its due time (0 when on time).
pub const HEARTBEAT_LAG_SECONDS: &str = "flowplane_controlplane_heartbeat_lag_seconds";
/// Gauge: open WatchComponents streams.
pub const WATCHERS: &str = "flowplane_controlplane_watchers";
/// Counter: watchers that fell behind and were sent a fresh snapshot.
pub const WATCH_RESYNCS_TOTAL: &str = "flowplane_controlplane_watch_resyncs_total";
/// Gauge: standing pipelines stored.
pub const STANDING_PIPELINES: &str = "flowplane_controlplane_standing_pipelines";

/// The kinds a component can register as, each a `kind` label value from start.
const KINDS: [ComponentKind; 3] = [
    ComponentKind::Processor,
    ComponentKind::Source,
    ComponentKind::Consumer,
];
/// The statuses a live component can have, each a `status` label value from start.
const STATUSES: [HealthStatus; 5] = [
    HealthStatus::Starting,
    HealthStatus::Healthy,
    HealthStatus::Degraded,
    HealthStatus::Unhealthy,
    HealthStatus::Stopping,
];

/// Registers descriptions with the installed recorder, if any, and creates every series
/// of a bounded label set at zero, so a scrape before the first registration shows 0.
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_gauge!(COMPONENTS, "live components by kind and effective status");
    describe_counter!(HEARTBEATS_TOTAL, "accepted heartbeats by kind");
    describe_counter!(
        EXPIRED_TOTAL,
        "components removed because their lease ran out"
    );
    describe_histogram!(
        HEARTBEAT_LAG_SECONDS,
        Unit::Seconds,
        "how late a heartbeat arrived past its due time"
    );
    describe_gauge!(WATCHERS, "open WatchComponents streams");
    describe_counter!(
        WATCH_RESYNCS_TOTAL,
        "watchers sent a fresh snapshot after falling behind"
    );
    // Adding nothing, so a registry already counting (etcd, a second service in this
    // process) keeps its values.
    for kind in KINDS.map(kind_label) {
        for status in STATUSES.map(status_label) {
            metrics::gauge!(COMPONENTS, "kind" => kind, "status" => status).increment(0.0);
        }
        metrics::counter!(HEARTBEATS_TOTAL, "kind" => kind).increment(0);
        metrics::counter!(EXPIRED_TOTAL, "kind" => kind).increment(0);
    }
    describe_gauge!(STANDING_PIPELINES, "standing pipelines stored");
    metrics::gauge!(WATCHERS).increment(0.0);
    metrics::gauge!(STANDING_PIPELINES).increment(0.0);
    metrics::counter!(WATCH_RESYNCS_TOTAL).increment(0);
}
