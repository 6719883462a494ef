//! What the harness measures besides counts: latency histograms (HDR, microseconds),
//! resident memory and CPU time of a process read from /proc, and a sampler that watches
//! memory over a run. Reading /proc is all it does: it never changes the process it reads.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Latencies are recorded in microseconds, from 1 µs to 5 minutes, 3 significant digits.
const MAX_MICROS: u64 = 300_000_000;

/// A latency histogram.
#[derive(Clone)]
pub struct Latency {
    histogram: hdrhistogram::Histogram<u64>,
}

impl std::fmt::Debug for Latency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.summary().fmt(f)
    }
}

impl Default for Latency {
    fn default() -> Self {
        Self::new()
    }
}

impl Latency {
    /// An empty histogram.
    pub fn new() -> Self {
        Self {
            histogram: hdrhistogram::Histogram::new_with_bounds(1, MAX_MICROS, 3)
                .expect("static histogram bounds are valid"),
        }
    }

    /// Records one latency; values beyond the range are clamped to it.
    pub fn record(&mut self, latency: Duration) {
        let micros = (latency.as_micros() as u64).clamp(1, MAX_MICROS);
        self.histogram.saturating_record(micros);
    }

    /// Adds every value of `other`.
    pub fn merge(&mut self, other: &Latency) {
        self.histogram
            .add(&other.histogram)
            .expect("histograms share their bounds");
    }

    /// Values recorded.
    pub fn count(&self) -> u64 {
        self.histogram.len()
    }

    /// The percentiles the report shows.
    pub fn summary(&self) -> LatencySummary {
        let h = &self.histogram;
        let ms = |micros: u64| micros as f64 / 1000.0;
        LatencySummary {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            max_ms: ms(h.max()),
            mean_ms: h.mean() / 1000.0,
        }
    }
}

/// Latency percentiles in milliseconds.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct LatencySummary {
    /// Values recorded.
    pub count: u64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Largest value.
    pub max_ms: f64,
    /// Mean.
    pub mean_ms: f64,
}

/// Which process to read: this one or a child by pid.
#[derive(Clone, Copy, Debug)]
pub enum Proc {
    /// The harness itself (and every in-process server).
    This,
    /// A process the harness started.
    Pid(u32),
}

impl Proc {
    fn path(self, file: &str) -> String {
        match self {
            Proc::This => format!("/proc/self/{file}"),
            Proc::Pid(pid) => format!("/proc/{pid}/{file}"),
        }
    }

    /// Resident set size in bytes (VmRSS), if the process is readable.
    pub fn rss(self) -> Option<u64> {
        let status = std::fs::read_to_string(self.path("status")).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }

    /// User plus system CPU time consumed so far (all threads), if readable.
    pub fn cpu(self) -> Option<Duration> {
        let stat = std::fs::read_to_string(self.path("stat")).ok()?;
        // The command name may hold spaces; fields are counted after its closing paren.
        let after = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = after.split_whitespace().collect();
        // Fields 14 and 15 of stat (utime, stime) are 11 and 12 after the name and state.
        let utime: u64 = fields.get(11)?.parse().ok()?;
        let stime: u64 = fields.get(12)?.parse().ok()?;
        // /proc reports in USER_HZ, which Linux fixes at 100 for user space.
        Some(Duration::from_millis((utime + stime) * 10))
    }

    /// Kernel counters of the process: read and write syscalls (socket reads and writes
    /// included, from /proc/PID/io) and context switches of all its threads.
    pub fn counters(self) -> Counters {
        let io = std::fs::read_to_string(self.path("io")).unwrap_or_default();
        let field = |name: &str| {
            io.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0)
        };
        let mut switches = 0;
        if let Ok(tasks) = std::fs::read_dir(self.path("task")) {
            for task in tasks.flatten() {
                let status =
                    std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
                for line in status.lines() {
                    if let Some(v) = line
                        .strip_prefix("voluntary_ctxt_switches:")
                        .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"))
                    {
                        switches += v.trim().parse::<u64>().unwrap_or(0);
                    }
                }
            }
        }
        Counters {
            cpu: self.cpu().unwrap_or_default(),
            read_syscalls: field("syscr:"),
            write_syscalls: field("syscw:"),
            context_switches: switches,
        }
    }

    /// Open file descriptors (sockets included), if readable.
    pub fn open_fds(self) -> Option<usize> {
        Some(std::fs::read_dir(self.path("fd")).ok()?.count())
    }
}

/// Kernel counters of a process at one moment (see [`Proc::counters`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct Counters {
    /// CPU time, user plus system.
    pub cpu: Duration,
    /// read-family syscalls (read, recv, readv, ...).
    pub read_syscalls: u64,
    /// write-family syscalls (write, send, writev, ...).
    pub write_syscalls: u64,
    /// Voluntary plus involuntary context switches of every thread alive now.
    pub context_switches: u64,
}

impl Counters {
    /// What happened between `self` (earlier) and `later`, per `n` units of work.
    pub fn per(&self, later: &Counters, n: u64) -> serde_json::Value {
        let n = n.max(1) as f64;
        serde_json::json!({
            "cpu_us": later.cpu.saturating_sub(self.cpu).as_secs_f64() * 1e6 / n,
            "read_syscalls": later.read_syscalls.saturating_sub(self.read_syscalls) as f64 / n,
            "write_syscalls": later.write_syscalls.saturating_sub(self.write_syscalls) as f64 / n,
            "context_switches": later.context_switches.saturating_sub(self.context_switches) as f64 / n,
        })
    }
}

/// Memory over a run: first, last and highest RSS sample, and whether it stayed flat.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize)]
pub struct MemorySummary {
    /// RSS when sampling started, MiB.
    pub start_mib: f64,
    /// RSS a quarter into the run (after warm-up allocations), MiB.
    pub settled_mib: f64,
    /// RSS when sampling stopped, MiB.
    pub end_mib: f64,
    /// Highest RSS seen, MiB.
    pub max_mib: f64,
    /// Samples taken.
    pub samples: usize,
    /// True when RSS grew by at most max(8 MiB, 10%) from a quarter into the run to the end.
    pub flat: bool,
}

/// Samples a process's RSS at a fixed interval until stopped.
pub struct MemorySampler {
    stop: CancellationToken,
    task: JoinHandle<Vec<u64>>,
}

impl MemorySampler {
    /// Starts sampling `proc` every `every`.
    pub fn start(proc: Proc, every: Duration) -> Self {
        let stop = CancellationToken::new();
        let token = stop.clone();
        let task = tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut tick = tokio::time::interval(every);
            loop {
                tokio::select! {
                    _ = token.cancelled() => break,
                    _ = tick.tick() => {
                        if let Some(rss) = proc.rss() {
                            samples.push(rss);
                        }
                    }
                }
            }
            if let Some(rss) = proc.rss() {
                samples.push(rss);
            }
            samples
        });
        Self { stop, task }
    }

    /// Stops sampling and summarises.
    pub async fn finish(self) -> MemorySummary {
        self.stop.cancel();
        let samples = self.task.await.unwrap_or_default();
        summarise(&samples)
    }
}

fn summarise(samples: &[u64]) -> MemorySummary {
    let Some(&start) = samples.first() else {
        return MemorySummary::default();
    };
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    let end = *samples.last().expect("not empty");
    let settled = samples[samples.len() / 4];
    let max = samples.iter().copied().max().unwrap_or(start);
    let allowed = (8 * 1024 * 1024).max(settled / 10);
    MemorySummary {
        start_mib: mib(start),
        settled_mib: mib(settled),
        end_mib: mib(end),
        max_mib: mib(max),
        samples: samples.len(),
        flat: end <= settled + allowed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_the_recorded_values() {
        let mut latency = Latency::new();
        for ms in 1..=100 {
            latency.record(Duration::from_millis(ms));
        }
        let s = latency.summary();
        assert_eq!(s.count, 100);
        assert!((s.p50_ms - 50.0).abs() < 0.1, "{s:?}");
        assert!((s.p99_ms - 99.0).abs() < 0.1, "{s:?}");
        assert!((s.max_ms - 100.0).abs() < 0.1, "{s:?}");
    }

    #[test]
    fn this_process_is_readable() {
        assert!(Proc::This.rss().unwrap() > 0);
        assert!(Proc::This.cpu().is_some());
        assert!(Proc::This.open_fds().unwrap() > 0);
    }

    #[test]
    fn growth_after_warm_up_is_not_flat() {
        let mib = 1024 * 1024;
        let flat = summarise(&[10 * mib, 50 * mib, 50 * mib, 51 * mib, 52 * mib]);
        assert!(flat.flat, "{flat:?}");
        let growing = summarise(&[10 * mib, 50 * mib, 70 * mib, 90 * mib, 120 * mib]);
        assert!(!growing.flat, "{growing:?}");
    }
}
