//! Standing pipelines on this replica: a supervisor lists the stored pipelines, claims
//! the ones nobody runs (the control plane grants one runner per pipeline at a time),
//! and keeps a run going for each claim it holds, from the committed offsets, until
//! the pipeline is paused, deleted or claimed by another runner, or the service stops.
//! A run that fails is started again after a capped backoff; nothing here waits
//! without a deadline, and a stopped run gives its claim back at once.

mod connect;
mod offsets;
mod run;

use std::{collections::HashMap, sync::Arc, time::Duration};

use flowplane_grpc::{replicas::Replicas, retry::Backoff};
use flowplane_proto::controlplane::v1::{CommitPipelineRequest, PipelineStats, StandingPipeline};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use connect::CAPABILITY_LABEL;
use connect::ControlPlane;
use run::{Outcome, RunEnv, RunMode, Stop};

use crate::{directory::Directory, service::PipelineService};

/// Source records read, per pipeline.
pub const RECORDS_READ: &str = "flowplane_standing_records_read_total";
/// Results a consumer acknowledged, per pipeline.
pub const RESULTS_DELIVERED: &str = "flowplane_standing_results_delivered_total";
/// Deliveries sent again after RETRY, per pipeline.
pub const RETRIES: &str = "flowplane_standing_retries_total";
/// Records and results sent to the dead-letter consumer (or logged without one).
pub const DEAD_LETTERED: &str = "flowplane_standing_dead_lettered_total";
/// Dead letters the dead-letter consumer did not take either.
pub const DEAD_LETTER_FAILED: &str = "flowplane_standing_dead_letter_failed_total";
/// Records the source holds and has not sent, per pipeline.
pub const CONSUMER_LAG: &str = "flowplane_standing_consumer_lag_records";
/// The next offset to read per pipeline and partition, as committed.
pub const COMMITTED_OFFSET: &str = "flowplane_standing_committed_offset";
/// Pipelines this replica runs now.
pub const RUNNING: &str = "flowplane_standing_pipelines_running";
/// Runs that failed and were started again, per pipeline and reason.
pub const RESTARTS: &str = "flowplane_standing_run_restarts_total";

/// Describes the runner's metrics for /metrics.
pub fn describe() {
    metrics::describe_counter!(RECORDS_READ, "Source records read by standing pipelines");
    metrics::describe_counter!(
        RESULTS_DELIVERED,
        "Standing pipeline results acknowledged by their consumer"
    );
    metrics::describe_counter!(RETRIES, "Deliveries sent again after RETRY");
    metrics::describe_counter!(DEAD_LETTERED, "Records and results dead-lettered");
    metrics::describe_counter!(
        DEAD_LETTER_FAILED,
        "Dead letters the dead-letter consumer did not take"
    );
    metrics::describe_gauge!(CONSUMER_LAG, "Records the source holds and has not sent");
    metrics::describe_gauge!(COMMITTED_OFFSET, "Committed next offset per partition");
    metrics::describe_gauge!(RUNNING, "Standing pipelines this replica runs");
    metrics::describe_counter!(
        RESTARTS,
        "Standing pipeline runs started again after a failure"
    );
}

/// How this replica runs standing pipelines.
#[derive(Clone, Debug)]
pub struct RunnerSettings {
    /// Run standing pipelines at all (`--standing`).
    pub enabled: bool,
    /// This runner's id in claims (`--runner-id`); unique per replica.
    pub runner_id: String,
    /// How long a claim lasts unless renewed; commits renew it.
    pub claim_ttl: Duration,
    /// How often the stored pipelines are listed for ones to claim.
    pub poll_interval: Duration,
    /// How often a run commits its offsets (and renews its claim).
    pub commit_interval: Duration,
    /// How long a consumer may take to acknowledge a delivery before the run starts over.
    pub ack_timeout: Duration,
    /// How long opening a source or consumer stream, or a commit, may take.
    pub open_timeout: Duration,
}

impl Default for RunnerSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            runner_id: format!(
                "pipeline-{}",
                &uuid::Uuid::new_v4().simple().to_string()[..12]
            ),
            claim_ttl: Duration::from_secs(5),
            poll_interval: Duration::from_secs(1),
            commit_interval: Duration::from_millis(500),
            ack_timeout: Duration::from_secs(60),
            open_timeout: Duration::from_secs(10),
        }
    }
}

/// Starts the supervisor; the handle ends once `stop` fired and every run has stopped
/// and released its claim (each within the open timeout).
pub fn spawn(
    service: PipelineService,
    directory: Arc<Directory>,
    replicas: Replicas,
    settings: RunnerSettings,
    stop: CancellationToken,
) -> Result<JoinHandle<()>, tonic::Status> {
    let control = ControlPlane::new(replicas, directory.client_args().token.as_deref())?;
    let env = Arc::new(RunEnv {
        service,
        directory,
        control,
        settings,
    });
    Ok(tokio::spawn(supervise(env, stop)))
}

async fn supervise(env: Arc<RunEnv>, stop: CancellationToken) {
    let mut runs: HashMap<String, (JoinHandle<()>, CancellationToken)> = HashMap::new();
    let mut refused = None;
    let mut first = true;
    loop {
        if !first {
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(env.settings.poll_interval) => {}
            }
        }
        first = false;
        runs.retain(|_, (handle, _)| !handle.is_finished());
        metrics::gauge!(RUNNING).set(runs.len() as f64);
        let listed = tokio::time::timeout(env.settings.open_timeout, env.control.list_pipelines())
            .await
            .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("listing timed out")));
        let pipelines = match listed {
            Ok(pipelines) => {
                refused = None;
                pipelines
            }
            Err(status) => {
                // Said once per kind of failure, not once a second.
                if refused.replace(status.code()) != Some(status.code()) {
                    tracing::warn!(code = ?status.code(), error = %status.message(), "cannot list standing pipelines; trying again");
                }
                continue;
            }
        };
        let now = std::time::SystemTime::now();
        for pipeline in pipelines {
            let name = pipeline
                .spec
                .as_ref()
                .map(|s| s.name.clone())
                .unwrap_or_default();
            if name.is_empty() || pipeline.paused || runs.contains_key(&name) {
                continue;
            }
            let held_elsewhere = pipeline.runner.as_ref().is_some_and(|r| {
                r.runner_id != env.settings.runner_id
                    && r.expires_at
                        .and_then(|t| std::time::SystemTime::try_from(t).ok())
                        .is_some_and(|t| t > now)
            });
            if held_elsewhere {
                continue;
            }
            let sent = tokio::time::Instant::now();
            let claimed = tokio::time::timeout(
                env.settings.open_timeout,
                env.control
                    .claim(&name, &env.settings.runner_id, env.settings.claim_ttl),
            )
            .await
            .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("claim timed out")));
            match claimed {
                Ok(claimed) => {
                    let token = stop.child_token();
                    let handle =
                        tokio::spawn(keep_running(env.clone(), claimed, sent, token.clone()));
                    runs.insert(name, (handle, token));
                }
                // Taken by another runner, or paused since it was listed.
                Err(status)
                    if matches!(
                        status.code(),
                        tonic::Code::Aborted | tonic::Code::FailedPrecondition
                    ) =>
                {
                    tracing::debug!(flowplane.pipeline = %name, code = ?status.code(), error = %status.message(), "pipeline not claimed");
                }
                Err(status) => {
                    tracing::warn!(flowplane.pipeline = %name, code = ?status.code(), error = %status.message(), "claiming the pipeline failed");
                }
            }
        }
    }
    // Every run stops, commits what it finished and releases its claim; each is bounded
    // by the open timeout of its last commit and release.
    for (_, (_, token)) in runs.iter() {
        token.cancel();
    }
    let left = runs.len();
    let all = futures::future::join_all(runs.into_values().map(|(handle, _)| handle));
    if tokio::time::timeout(env.settings.open_timeout * 2, all)
        .await
        .is_err()
    {
        tracing::warn!(runs = left, "standing runs did not all stop in time");
    }
    metrics::gauge!(RUNNING).set(0.0);
}

/// Runs one claimed pipeline, again after each failure, until it stops.
async fn keep_running(
    env: Arc<RunEnv>,
    mut pipeline: StandingPipeline,
    mut claimed_at: tokio::time::Instant,
    stop: CancellationToken,
) {
    let name = pipeline
        .spec
        .as_ref()
        .map(|s| s.name.clone())
        .unwrap_or_default();
    let runner_id = env.settings.runner_id.clone();
    let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(5));
    let mut mode = RunMode::default();
    // Session failures in a row that committed nothing: a record that takes a
    // processor down (past its failovers) would otherwise stop the pipeline for good.
    let mut stuck = 0u32;
    loop {
        let epoch = pipeline.runner.as_ref().map_or(0, |r| r.epoch);
        let started = std::time::Instant::now();
        let offsets_before = pipeline.offsets.clone();
        let (outcome, in_flight) =
            run::run(&env, pipeline.clone(), claimed_at, &mode, stop.clone()).await;
        let mut session_failed = None;
        match outcome {
            Outcome::Stopped(Stop::Shutdown) => {
                let _ = tokio::time::timeout(
                    env.settings.open_timeout,
                    env.control.release(&name, &runner_id, epoch),
                )
                .await;
                tracing::info!(flowplane.pipeline = %name, "standing pipeline released at shutdown");
                return;
            }
            Outcome::Stopped(Stop::Respec) => {
                tracing::info!(flowplane.pipeline = %name, "new spec applied; running it");
                backoff.reset();
                mode = RunMode::default();
                stuck = 0;
            }
            Outcome::Stopped(Stop::Probed) => {
                tracing::info!(flowplane.pipeline = %name, "the probe got through; running with the whole window again");
                mode = RunMode::default();
                stuck = 0;
            }
            Outcome::Stopped(stop) => {
                tracing::info!(flowplane.pipeline = %name, reason = ?stop, "standing pipeline stopped on this runner");
                return;
            }
            Outcome::Failed(detail) => {
                tracing::warn!(flowplane.pipeline = %name, reason = %detail.reason, error = %detail.message, "standing run failed; starting again from the committed offsets");
                // A run that went well for a while starts the backoff over.
                if started.elapsed() > Duration::from_secs(30) {
                    backoff.reset();
                }
                metrics::counter!(RESTARTS, "pipeline" => name.clone(), "reason" => detail.reason.clone())
                    .increment(1);
                if detail.reason == run::SESSION_FAILED {
                    session_failed = Some(detail.clone());
                }
                // Record why, renewing the claim meanwhile (a run that failed to open
                // committed nothing).
                let record = CommitPipelineRequest {
                    name: name.clone(),
                    runner_id: runner_id.clone(),
                    epoch,
                    offsets: HashMap::new(),
                    stats: Some(PipelineStats {
                        last_error: Some(detail),
                        ..Default::default()
                    }),
                    ttl: prost_types::Duration::try_from(env.settings.claim_ttl).ok(),
                };
                let _ = tokio::time::timeout(env.settings.open_timeout, env.control.commit(record))
                    .await;
                tokio::select! {
                    () = stop.cancelled() => {
                        let _ = tokio::time::timeout(
                            env.settings.open_timeout,
                            env.control.release(&name, &runner_id, epoch),
                        )
                        .await;
                        return;
                    }
                    () = tokio::time::sleep(backoff.next_delay()) => {}
                }
            }
        }
        // The claim again: renewed if still ours, with the stored spec and offsets.
        claimed_at = tokio::time::Instant::now();
        match tokio::time::timeout(
            env.settings.open_timeout,
            env.control.claim(&name, &runner_id, env.settings.claim_ttl),
        )
        .await
        {
            Ok(Ok(claimed)) => pipeline = claimed,
            Ok(Err(status)) => {
                tracing::info!(flowplane.pipeline = %name, code = ?status.code(), error = %status.message(), "claim not renewed; leaving the pipeline to others");
                return;
            }
            Err(_) => {
                tracing::warn!(flowplane.pipeline = %name, "claim renewal timed out; leaving the pipeline to others");
                return;
            }
        }
        if let Some(cause) = session_failed {
            mode = next_mode(
                &name,
                mode,
                &mut stuck,
                pipeline.offsets != offsets_before,
                &in_flight,
                cause,
            );
        }
    }
}

/// Session failures in a row, with nothing committed, before runs go one record at a time.
const PROBE_AFTER: u32 = 2;

/// What the next run does after one whose session failed: a probe after repeated failures
/// with no progress (one record in flight, through as many records as a window holds),
/// and, when a probe's session fails with one record in flight, that record dead-lettered
/// unprocessed by the next run; the rest of the pipeline then flows on.
fn next_mode(
    name: &str,
    mode: RunMode,
    stuck: &mut u32,
    progressed: bool,
    in_flight: &[(u32, u64)],
    cause: flowplane_proto::common::v1::ErrorDetail,
) -> RunMode {
    if mode.probe.is_some()
        && let [(partition, offset)] = in_flight
    {
        tracing::warn!(flowplane.pipeline = %name, partition, offset, error = %cause.message, "this record made the session fail on its own; the next run dead-letters it unprocessed");
        *stuck = 0;
        return RunMode {
            probe: mode.probe,
            quarantine: Some((*partition, *offset, cause)),
        };
    }
    if progressed {
        *stuck = 0;
        return mode;
    }
    *stuck += 1;
    if *stuck >= PROBE_AFTER && mode.probe.is_none() {
        let records = in_flight.len().max(1) as u64;
        tracing::warn!(flowplane.pipeline = %name, failures = *stuck, records, "runs keep failing at the same offsets; probing one record at a time");
        return RunMode {
            probe: Some(records),
            quarantine: mode.quarantine,
        };
    }
    mode
}
