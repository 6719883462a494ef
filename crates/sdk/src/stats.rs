//! Counters a host keeps about itself, for heartbeats (chunks, errors, streams, latency
//! percentiles since the last heartbeat) and for Prometheus through the `metrics` macros.
//! Recording is lock-free and allocation-free, because it runs once per chunk.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// Chunks in and out, by processor and direction ("in", "out").
pub const CHUNKS_TOTAL: &str = "flowplane_processor_chunks_total";
/// Chunks answered with an error, and streams ended by a panic, by processor.
pub const ERRORS_TOTAL: &str = "flowplane_processor_errors_total";
/// Time from a chunk's arrival to its result, by processor.
pub const LATENCY_SECONDS: &str = "flowplane_processor_latency_seconds";
/// Open Process streams, by processor.
pub const ACTIVE_STREAMS: &str = "flowplane_processor_active_streams";
/// Chunks the host has read and not yet answered, over all its streams: the per-pod load
/// signal for an autoscaler. No labels, so one series per host, present at 0 from start.
pub const IN_FLIGHT_CHUNKS: &str = "flowplane_processor_in_flight_chunks";

/// Describes the metrics above to the installed recorder (a no-op without one) and
/// registers the in-flight gauge.
pub fn describe() {
    metrics::describe_counter!(
        CHUNKS_TOTAL,
        "Chunks a processor received (direction=in) and output chunks it produced (direction=out)"
    );
    metrics::describe_counter!(
        ERRORS_TOTAL,
        "Chunks answered with an error, and streams ended by a processor panic"
    );
    metrics::describe_histogram!(
        LATENCY_SECONDS,
        metrics::Unit::Seconds,
        "Time from a chunk's arrival at the host to its result"
    );
    metrics::describe_gauge!(ACTIVE_STREAMS, "Open Process streams");
    metrics::describe_gauge!(
        IN_FLIGHT_CHUNKS,
        "Chunks this host has read and not yet answered, over all its streams (autoscaling signal)"
    );
    // Registered now (adding nothing: another host in this process may be busy), so a
    // scrape before the first chunk reads 0 rather than nothing.
    metrics::gauge!(IN_FLIGHT_CHUNKS).increment(0.0);
}

/// Creates the per-processor series of the processors a host serves at zero (adding
/// nothing), so a dashboard shows 0 for a processor before its first stream.
pub fn register_processors<'a>(processors: impl IntoIterator<Item = &'a str>) {
    for name in processors {
        let name = name.to_string();
        for direction in ["in", "out"] {
            metrics::counter!(CHUNKS_TOTAL, "processor" => name.clone(), "direction" => direction)
                .increment(0);
        }
        metrics::counter!(ERRORS_TOTAL, "processor" => name.clone()).increment(0);
        metrics::gauge!(ACTIVE_STREAMS, "processor" => name).increment(0.0);
    }
}

/// Sub-buckets per power of two: about 19% resolution, plenty for p50/p99 in heartbeats.
const SUB_BUCKETS: usize = 4;
/// Powers of two of microseconds covered: 1 us up to about 2^40 us.
const OCTAVES: usize = 40;
const BUCKETS: usize = SUB_BUCKETS * OCTAVES + 1;

/// A log-bucketed latency histogram of microseconds, drained at each heartbeat.
#[derive(Debug)]
struct LatencyHistogram {
    buckets: Box<[AtomicU64]>,
}

impl LatencyHistogram {
    fn new() -> Self {
        Self {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn bucket(micros: u64) -> usize {
        if micros == 0 {
            return 0;
        }
        let octave = 63 - micros.leading_zeros() as usize;
        let sub = if octave >= 2 {
            ((micros >> (octave - 2)) & 0b11) as usize
        } else {
            ((micros << (2 - octave)) & 0b11) as usize
        };
        (1 + octave * SUB_BUCKETS + sub).min(BUCKETS - 1)
    }

    /// The upper bound of a bucket, in microseconds.
    fn upper_bound(bucket: usize) -> f64 {
        if bucket == 0 {
            return 1.0;
        }
        let octave = (bucket - 1) / SUB_BUCKETS;
        let sub = (bucket - 1) % SUB_BUCKETS;
        2f64.powi(octave as i32) * (1.0 + (sub as f64 + 1.0) / SUB_BUCKETS as f64)
    }

    fn record(&self, micros: u64) {
        self.buckets[Self::bucket(micros)].fetch_add(1, Ordering::Relaxed);
    }

    /// p50 and p99 in milliseconds of what was recorded since the last drain.
    fn drain_percentiles(&self) -> (f64, f64) {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.swap(0, Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return (0.0, 0.0);
        }
        let quantile = |q: f64| {
            let rank = ((total as f64) * q).ceil().max(1.0) as u64;
            let mut seen = 0;
            for (i, c) in counts.iter().enumerate() {
                seen += c;
                if seen >= rank {
                    return Self::upper_bound(i) / 1000.0;
                }
            }
            Self::upper_bound(BUCKETS - 1) / 1000.0
        };
        (quantile(0.50), quantile(0.99))
    }
}

/// What a host reports about itself.
#[derive(Debug)]
pub struct HostStats {
    chunks_in: AtomicU64,
    chunks_out: AtomicU64,
    errors: AtomicU64,
    streams_total: AtomicU64,
    active_streams: AtomicI64,
    latency: LatencyHistogram,
}

impl Default for HostStats {
    fn default() -> Self {
        Self {
            chunks_in: AtomicU64::new(0),
            chunks_out: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            streams_total: AtomicU64::new(0),
            active_streams: AtomicI64::new(0),
            latency: LatencyHistogram::new(),
        }
    }
}

/// One reading of [`HostStats`], as sent in a heartbeat.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StatsSnapshot {
    /// Chunks received since the host started.
    pub chunks_in: u64,
    /// Output chunks sent since the host started.
    pub chunks_out: u64,
    /// Chunks answered with an error, plus streams ended by a panic.
    pub errors: u64,
    /// Streams opened since the host started.
    pub streams_total: u64,
    /// Streams open now.
    pub active_streams: u64,
    /// Median chunk latency since the previous snapshot, in milliseconds.
    pub latency_p50_ms: f64,
    /// 99th percentile chunk latency since the previous snapshot, in milliseconds.
    pub latency_p99_ms: f64,
}

impl StatsSnapshot {
    /// The heartbeat's metric map.
    pub fn to_metrics(&self) -> std::collections::HashMap<String, f64> {
        [
            ("chunks_in_total", self.chunks_in as f64),
            ("chunks_out_total", self.chunks_out as f64),
            ("errors_total", self.errors as f64),
            ("streams_total", self.streams_total as f64),
            ("active_streams", self.active_streams as f64),
            ("latency_p50_ms", self.latency_p50_ms),
            ("latency_p99_ms", self.latency_p99_ms),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}

impl HostStats {
    pub(crate) fn chunk_in(&self) {
        self.chunks_in.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn chunks_out(&self, n: u64) {
        self.chunks_out.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn latency(&self, elapsed: std::time::Duration) {
        self.latency
            .record(u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX));
    }

    pub(crate) fn stream_opened(&self) {
        self.streams_total.fetch_add(1, Ordering::Relaxed);
        self.active_streams.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn stream_closed(&self) {
        self.active_streams.fetch_sub(1, Ordering::Relaxed);
    }

    /// Streams open now.
    pub fn active_streams(&self) -> u64 {
        self.active_streams.load(Ordering::Relaxed).max(0) as u64
    }

    /// Reads the counters and drains the latency histogram.
    pub fn snapshot(&self) -> StatsSnapshot {
        let (latency_p50_ms, latency_p99_ms) = self.latency.drain_percentiles();
        StatsSnapshot {
            chunks_in: self.chunks_in.load(Ordering::Relaxed),
            chunks_out: self.chunks_out.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            streams_total: self.streams_total.load(Ordering::Relaxed),
            active_streams: self.active_streams(),
            latency_p50_ms,
            latency_p99_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn buckets_grow_monotonically_and_bound_their_values() {
        let mut last = 0;
        for micros in [0u64, 1, 2, 3, 4, 5, 7, 8, 100, 1000, 123_456, u64::MAX] {
            let b = LatencyHistogram::bucket(micros);
            assert!(b >= last, "bucket of {micros}");
            last = b;
            if micros > 0 && b < BUCKETS - 1 {
                assert!(
                    LatencyHistogram::upper_bound(b) >= micros as f64,
                    "{micros}"
                );
            }
        }
    }

    #[test]
    fn percentiles_come_from_the_window_since_the_last_snapshot() {
        let stats = HostStats::default();
        for _ in 0..98 {
            stats.latency(Duration::from_micros(100));
        }
        stats.latency(Duration::from_millis(50));
        stats.latency(Duration::from_millis(50));
        let snap = stats.snapshot();
        assert!((0.1..0.125).contains(&snap.latency_p50_ms), "{snap:?}");
        assert!((50.0..62.5).contains(&snap.latency_p99_ms), "{snap:?}");
        let empty = stats.snapshot();
        assert_eq!((empty.latency_p50_ms, empty.latency_p99_ms), (0.0, 0.0));
    }

    #[test]
    fn counts_streams_and_chunks() {
        let stats = HostStats::default();
        stats.stream_opened();
        stats.stream_opened();
        stats.stream_closed();
        stats.chunk_in();
        stats.chunks_out(2);
        stats.error();
        let snap = stats.snapshot();
        assert_eq!(
            (
                snap.active_streams,
                snap.streams_total,
                snap.chunks_in,
                snap.chunks_out,
                snap.errors
            ),
            (1, 2, 1, 2, 1)
        );
        let metrics = snap.to_metrics();
        assert_eq!(metrics["active_streams"], 1.0);
        assert_eq!(metrics["chunks_out_total"], 2.0);
    }
}
