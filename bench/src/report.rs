//! The results: one row per figure, each next to its raw tonic baseline and the ratio of
//! the two, printed as an aligned table and written as JSON with the machine it ran on.
//! Goals are reported, never asserted: a missed goal is a row, not a failure.

use std::{path::Path, time::SystemTime};

use serde::Serialize;

use crate::{
    Error, Result,
    stats::{LatencySummary, MemorySummary},
};

/// One figure of one scenario.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Row {
    /// Scenario id, e.g. `B1`.
    pub id: String,
    /// What ran, in a few words.
    pub scenario: String,
    /// `in-process` or `real processes`, for flowplane and the baseline.
    pub servers: String,
    /// What `value` measures, with its unit.
    pub figure: String,
    /// flowplane's figure.
    pub value: Option<f64>,
    /// What the baseline is.
    pub baseline_name: String,
    /// The baseline's figure.
    pub baseline: Option<f64>,
    /// `value / baseline`.
    pub ratio: Option<f64>,
    /// The goal, as the issue states it.
    pub goal: String,
    /// Whether the goal was met (reported, never asserted).
    pub goal_met: Option<bool>,
    /// flowplane's per-chunk (or per-call) latency.
    pub latency: Option<LatencySummary>,
    /// The baseline's latency.
    pub baseline_latency: Option<LatencySummary>,
    /// Memory of the measured server process over the run.
    pub memory: Option<MemorySummary>,
    /// Errors seen by the load generator.
    pub errors: u64,
    /// Scenario-specific numbers (steps, CPU split, rounds).
    pub details: serde_json::Value,
    /// Why the scenario could not produce its figure.
    pub failure: Option<String>,
    /// Wall time of the scenario that produced the row, seconds.
    pub seconds: f64,
}

impl Row {
    /// A row for scenario `id`.
    pub fn new(id: &str, scenario: &str, servers: &str, figure: &str) -> Self {
        Self {
            id: id.into(),
            scenario: scenario.into(),
            servers: servers.into(),
            figure: figure.into(),
            details: serde_json::Value::Null,
            ..Default::default()
        }
    }

    /// A row saying the scenario failed.
    pub fn failed(id: &str, scenario: &str, error: &Error) -> Self {
        Self {
            failure: Some(error.to_string()),
            ..Self::new(id, scenario, "", "")
        }
    }

    /// Sets value, baseline and their ratio.
    pub fn values(mut self, value: f64, baseline_name: &str, baseline: f64) -> Self {
        self.value = Some(value);
        self.baseline_name = baseline_name.into();
        self.baseline = Some(baseline);
        self.ratio = (baseline != 0.0).then(|| value / baseline);
        self
    }

    /// Sets the goal and whether it was met.
    pub fn goal(mut self, goal: &str, met: bool) -> Self {
        self.goal = goal.into();
        self.goal_met = Some(met);
        self
    }
}

/// Everything one run produced.
#[derive(Debug, Serialize)]
pub struct Report {
    /// When the run started (UTC).
    pub date: String,
    /// `full` or `quick`.
    pub profile: String,
    /// The machine.
    pub machine: Machine,
    /// Wall time of the whole run, seconds.
    pub total_seconds: f64,
    /// /proc/loadavg when the run started and ended: other work on a shared machine.
    pub load_average: (String, String),
    /// Every figure.
    pub rows: Vec<Row>,
}

/// The machine a run happened on.
#[derive(Debug, Serialize)]
pub struct Machine {
    /// CPUs available to the process.
    pub nproc: usize,
    /// CPU model from /proc/cpuinfo.
    pub cpu_model: String,
    /// Total memory, MiB.
    pub memory_mib: u64,
    /// Kernel release.
    pub kernel: String,
    /// Open-files limit the run had (soft).
    pub nofile_limit: u64,
}

impl Machine {
    /// Reads the machine's description from /proc.
    pub fn detect() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .map(|m| m.trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_mib = meminfo
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kib| kib.parse::<u64>().ok())
            .map_or(0, |kib| kib / 1024);
        Self {
            nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model,
            memory_mib,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_string())
                .unwrap_or_default(),
            nofile_limit: rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(0, |(soft, _)| soft),
        }
    }
}

/// The 1, 5 and 15 minute load averages.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Today's date and time in UTC, ISO 8601, without a calendar crate.
pub fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil-from-days (Howard Hinnant's algorithm), valid for the Unix era.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

fn num(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if v.abs() >= 1000.0 => format!("{v:.0}"),
        Some(v) if v.abs() >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.3}"),
    }
}

fn ms(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

/// The aligned terminal table.
pub fn table(report: &Report) -> String {
    let header = [
        "id",
        "figure",
        "flowplane",
        "baseline",
        "ratio",
        "goal",
        "met",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
        "mem MiB start>end (max) flat",
        "errors",
    ];
    let mut lines: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    for row in &report.rows {
        if let Some(failure) = &row.failure {
            lines.push(vec![row.id.clone(), format!("FAILED: {failure}")]);
            continue;
        }
        let (p50, p90, p99, max) = row.latency.map_or_else(
            || ("-".into(), "-".into(), "-".into(), "-".into()),
            |l| (ms(l.p50_ms), ms(l.p90_ms), ms(l.p99_ms), ms(l.max_ms)),
        );
        let memory = row.memory.map_or_else(
            || "-".to_string(),
            |m| {
                format!(
                    "{:.0}>{:.0} ({:.0}) {}",
                    m.start_mib,
                    m.end_mib,
                    m.max_mib,
                    if m.flat { "yes" } else { "NO" }
                )
            },
        );
        lines.push(vec![
            row.id.clone(),
            row.figure.clone(),
            num(row.value),
            if row.baseline.is_some() {
                format!("{} ({})", num(row.baseline), row.baseline_name)
            } else {
                "-".into()
            },
            row.ratio.map_or_else(|| "-".into(), |r| format!("{r:.3}")),
            row.goal.clone(),
            match row.goal_met {
                Some(true) => "yes".into(),
                Some(false) => "NO".into(),
                None => "-".into(),
            },
            p50,
            p90,
            p99,
            max,
            memory,
            row.errors.to_string(),
        ]);
    }
    let columns = header.len();
    let mut widths = vec![0; columns];
    for line in &lines {
        if line.len() == columns {
            for (w, cell) in widths.iter_mut().zip(line) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    for (i, line) in lines.iter().enumerate() {
        let cells: Vec<String> = line
            .iter()
            .enumerate()
            .map(|(c, cell)| {
                if line.len() == columns {
                    format!("{cell:<width$}", width = widths[c])
                } else {
                    cell.clone()
                }
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
        if i == 0 {
            let rule: usize = widths.iter().sum::<usize>() + 2 * (columns - 1);
            out.push_str(&"-".repeat(rule));
            out.push('\n');
        }
    }
    out
}

/// Writes the report as pretty JSON, creating the directory.
pub fn write_json(report: &Report, path: &Path) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
    }
    let text = serde_json::to_string_pretty(report)
        .map_err(|e| Error::Setup(format!("encode the report: {e}")))?;
    std::fs::write(path, text + "\n").map_err(|e| Error::io(format!("write {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_and_failures_show_in_the_table() {
        let report = Report {
            date: utc_now(),
            profile: "quick".into(),
            machine: Machine::detect(),
            total_seconds: 1.0,
            load_average: (load_average(), load_average()),
            rows: vec![
                Row::new("B1", "one session", "in-process", "MB/s")
                    .values(100.0, "raw echo", 400.0)
                    .goal(">= 0.45", false),
                Row::failed("B4", "idle", &Error::Setup("no binary".into())),
            ],
        };
        let text = table(&report);
        assert!(text.contains("0.250"), "{text}");
        assert!(text.contains("NO"), "{text}");
        assert!(text.contains("FAILED: no binary"), "{text}");
    }

    #[test]
    fn the_date_is_iso_8601() {
        let now = utc_now();
        assert_eq!(now.len(), 20, "{now}");
        assert!(now.starts_with("20"), "{now}");
        assert!(now.ends_with('Z'), "{now}");
    }
}
