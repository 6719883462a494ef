//! Benchmark harness: flowplane scenarios side by side with raw tonic baselines.
//! [`run`] executes the scenarios of issue 8 (B1-B8, plus the D1 diagnostic), each with
//! bounded counts and times, and returns one report; goals are reported, never asserted.

pub mod echo;
mod error;
pub mod load;
pub mod peer;
pub mod platform;
pub mod report;
pub mod scenarios;
pub mod stats;

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

pub use error::{Error, Result};
use platform::Binaries;
use report::{Machine, Report, Row};
use scenarios::Profile;

/// A scenario id, as `--only` takes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// One session, 64 KiB chunks, [passthrough].
    B1,
    /// One session, 100 B JSON chunks, [passthrough].
    B2,
    /// N real-time audio sessions through [audio.gain].
    B3,
    /// 10,000 idle sessions: pipeline memory per session.
    B4,
    /// Heartbeats from 10,000 components.
    B5,
    /// B5 through two control-plane replicas on etcd.
    B5Etcd,
    /// Legacy audio_chunk vs DataChunk audio.
    B6,
    /// Telemetry on vs off (B1 and B3).
    B7,
    /// CPU split per chunk with the services as real processes.
    D1,
    /// Sessions per client channel until the first failure, and a burst on one channel.
    B8,
    /// One session like the in-process peer comparison: 100 B and 64 KiB, lockstep to all in flight.
    B9,
}

/// What [`run`] needs.
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// The smoke profile instead of the full one.
    pub quick: bool,
    /// Scenarios to run; empty runs all.
    pub only: Vec<Scenario>,
    /// Directory of the release binaries; `None` is next to the running executable.
    pub bin_dir: Option<PathBuf>,
    /// Where child processes write their logs.
    pub log_dir: PathBuf,
    /// The log filter of the service processes the harness starts.
    pub child_log_filter: String,
}

/// Raises the open-files limit to the hard limit: B3 and B4 open thousands of sockets.
pub fn raise_open_files_limit() -> u64 {
    rlimit::increase_nofile_limit(u64::MAX).unwrap_or(0)
}

async fn scenario<F>(id: &str, what: &str, limit: Duration, rows: &mut Vec<Row>, run: F)
where
    F: Future<Output = Result<Vec<Row>>>,
{
    eprintln!("[bench] {id}: {what} ...");
    let started = Instant::now();
    let outcome = match tokio::time::timeout(limit, run).await {
        Ok(outcome) => outcome,
        Err(_) => Err(Error::Timeout(format!(
            "{id} did not finish within {limit:?}"
        ))),
    };
    let seconds = started.elapsed().as_secs_f64();
    match outcome {
        Ok(new) => {
            for mut row in new {
                row.seconds = seconds;
                rows.push(row);
            }
        }
        Err(error) => {
            eprintln!("[bench] {id} failed: {error}");
            let mut row = Row::failed(id, what, &error);
            row.seconds = seconds;
            rows.push(row);
        }
    }
    eprintln!("[bench] {id}: done in {seconds:.1} s");
}

/// Runs the selected scenarios one after the other and reports every figure.
pub async fn run(config: RunConfig) -> Result<Report> {
    let started = Instant::now();
    let date = report::utc_now();
    let load_start = report::load_average();
    raise_open_files_limit();
    let profile = if config.quick {
        Profile::quick()
    } else {
        Profile::full()
    };
    let bins = Binaries::locate(
        config.bin_dir.clone(),
        config.log_dir.clone(),
        config.child_log_filter.clone(),
    )?;
    let wanted = |s: Scenario| config.only.is_empty() || config.only.contains(&s);
    let mut rows = Vec::new();
    let p = &profile;
    if wanted(Scenario::B1) {
        scenario(
            "B1",
            "64 KiB chunks through [passthrough] vs raw bidi echo",
            Duration::from_secs(240),
            &mut rows,
            scenarios::b1(p),
        )
        .await;
    }
    if wanted(Scenario::B2) {
        scenario(
            "B2",
            "100 B JSON chunks through [passthrough] vs raw bidi echo",
            Duration::from_secs(240),
            &mut rows,
            scenarios::b2(p),
        )
        .await;
    }
    let mut b3_best = None;
    if wanted(Scenario::B3) {
        let mut best = 0;
        scenario(
            "B3",
            "real-time audio sessions through [audio.gain], stepping N",
            Duration::from_secs(240),
            &mut rows,
            async {
                let (rows, n) = scenarios::b3(p).await?;
                best = n;
                Ok(rows)
            },
        )
        .await;
        b3_best = Some(best);
    }
    if wanted(Scenario::B4) {
        scenario(
            "B4",
            "idle open sessions: pipeline memory per session (real processes)",
            Duration::from_secs(180),
            &mut rows,
            scenarios::b4(p, &bins),
        )
        .await;
    }
    if wanted(Scenario::B5) {
        scenario(
            "B5",
            "heartbeats from registered components vs raw unary echo",
            Duration::from_secs(120),
            &mut rows,
            scenarios::b5(p),
        )
        .await;
    }
    if wanted(Scenario::B5Etcd) {
        scenario(
            "B5-etcd",
            "heartbeats through two control-plane replicas on etcd vs the in-memory registry",
            Duration::from_secs(240),
            &mut rows,
            scenarios::b5_etcd(p),
        )
        .await;
    }
    if wanted(Scenario::B6) {
        scenario(
            "B6",
            "legacy audio_chunk vs DataChunk audio",
            Duration::from_secs(120),
            &mut rows,
            scenarios::b6(p),
        )
        .await;
    }
    if wanted(Scenario::B7) {
        scenario(
            "B7",
            "telemetry on vs off, B1 and B3, one process per variant",
            Duration::from_secs(300),
            &mut rows,
            scenarios::b7(p, &bins, b3_best),
        )
        .await;
    }
    if wanted(Scenario::D1) {
        scenario(
            "D1",
            "CPU split per chunk, services as real processes",
            Duration::from_secs(90),
            &mut rows,
            scenarios::d1(p, &bins),
        )
        .await;
    }
    if wanted(Scenario::B8) {
        scenario(
            "B8",
            "sessions on one client channel until the first failure, and a burst",
            Duration::from_secs(300),
            &mut rows,
            scenarios::b8(p),
        )
        .await;
    }
    if wanted(Scenario::B9) {
        scenario(
            "B9",
            "one session like the in-process peer comparison, raw echo and each placement",
            Duration::from_secs(600),
            &mut rows,
            peer::b9(p),
        )
        .await;
    }
    Ok(Report {
        date,
        profile: if config.quick { "quick" } else { "full" }.into(),
        machine: Machine::detect(),
        total_seconds: started.elapsed().as_secs_f64(),
        load_average: (load_start, report::load_average()),
        rows,
    })
}

/// The B7 child's work after its telemetry is set up: see [`scenarios::b7_child`].
pub async fn b7_child(
    quick: bool,
    telemetry: &str,
    sessions: usize,
) -> Result<scenarios::ChildResult> {
    raise_open_files_limit();
    let profile = if quick {
        Profile::quick()
    } else {
        Profile::full()
    };
    scenarios::b7_child(&profile, telemetry, sessions).await
}
