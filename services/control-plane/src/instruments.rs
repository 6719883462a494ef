//! Metric names and descriptions. Labels are bounded (kind, status); never a component
//! id. Recording goes through the `metrics` macros, which are no-ops without a recorder.

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

/// Registers descriptions with the installed recorder, if any.
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
}
