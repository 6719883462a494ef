//! Standing pipelines: stored pipeline resources (a source, a processor DAG, a consumer
//! per output) that runner replicas of the pipeline service claim one at a time, with
//! committed offsets and counters. Every rule (apply, pause, reset, claim, commit,
//! release) is written once here, over a compare-and-swap [`PipelineStore`]; the
//! backends (redb beside the memory registry, etcd beside the etcd one) never see a rule.
//! Time is the server's ([`WallClock`]); a client's clock never decides a claim.

mod embedded;
mod etcd;
mod service;
mod spec;
mod store;

use std::{
    collections::HashMap,
    path::Path,
    sync::Arc,
    time::{Duration, SystemTime},
};

use flowplane_proto::controlplane::v1::{self as pb, PipelineStats, RunnerClaim, StandingPipeline};

pub use embedded::{EmbeddedStore, FILE_NAME};
pub use etcd::EtcdStore;
pub use service::StandingService;
pub use spec::{
    CLAIM_TTL, DEFAULT_CLAIM_TTL, MAX_ATTEMPTS, MAX_IN_FLIGHT, MAX_NAME_LEN, MAX_PARTITIONS,
    MAX_SPEC_BYTES, PipelineName, RETRY_BACKOFF, ValidSpec, claim_ttl, runner_id,
};
pub use store::{Listed, PipelineStore, Versioned};

use crate::{Error, Result, clock::WallClock, instruments};

/// Fully qualified name of the service, as health checks and reflection know it.
pub const SERVICE_NAME: &str = "flowplane.controlplane.v1.StandingPipelineService";

/// Tries of one request whose compare-and-swap write keeps losing to other writes.
pub const ATTEMPTS: usize = 8;

/// Checks a data dir before the server binds: creates it if needed, and opens and
/// closes its database, so a bad or busy `--data-dir` stops the binary before any port.
pub fn check_data_dir(dir: &Path) -> Result<()> {
    drop(EmbeddedStore::open(dir)?);
    Ok(())
}

/// What one update does with the record it read.
enum Step {
    /// Write the changed record (compare-and-swap on the version read).
    Write,
    /// Leave it as it is and answer with it.
    Keep,
}

/// The standing pipeline rules over one store.
#[derive(Clone)]
pub struct Pipelines {
    store: Arc<dyn PipelineStore>,
    clock: WallClock,
}

impl std::fmt::Debug for Pipelines {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipelines").finish_non_exhaustive()
    }
}

fn timestamp(at: SystemTime) -> prost_types::Timestamp {
    at.into()
}

fn time_of(at: Option<&prost_types::Timestamp>) -> SystemTime {
    at.and_then(|t| SystemTime::try_from(*t).ok())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

fn not_found(name: &PipelineName) -> Error {
    Error::PipelineNotFound {
        name: name.to_string(),
    }
}

/// The claim as held at `now`: `Some` while it has not lapsed.
fn live_claim(pipeline: &StandingPipeline, now: SystemTime) -> Option<&RunnerClaim> {
    pipeline
        .runner
        .as_ref()
        .filter(|r| !r.runner_id.is_empty() && time_of(r.expires_at.as_ref()) > now)
}

impl Pipelines {
    /// The rules over `store`, on the server clock.
    pub fn new(store: Arc<dyn PipelineStore>) -> Self {
        Self::with_clock(store, WallClock::new())
    }

    /// The rules over `store` on `clock` (a test's paused clock).
    pub fn with_clock(store: Arc<dyn PipelineStore>, clock: WallClock) -> Self {
        Self { store, clock }
    }

    /// The rules over redb's in-memory backend: pipelines live as long as the process.
    pub fn in_memory() -> Result<Self> {
        Ok(Self::new(Arc::new(EmbeddedStore::in_memory()?)))
    }

    /// The store behind the rules.
    pub fn store(&self) -> Arc<dyn PipelineStore> {
        self.store.clone()
    }

    fn now(&self) -> SystemTime {
        self.clock.wall(self.clock.now())
    }

    /// Sets the pipeline gauge from the store's count.
    pub async fn refresh_gauge(&self) {
        match self.store.count().await {
            Ok(count) => metrics::gauge!(instruments::STANDING_PIPELINES).set(count as f64),
            Err(error) => tracing::debug!(%error, "cannot count standing pipelines"),
        }
    }

    /// Reads the record, lets `step` change it, and writes it back if the version is
    /// still the one read; tries again from a fresh read when another write got there
    /// first, at most [`ATTEMPTS`] times.
    async fn update(
        &self,
        name: &PipelineName,
        mut step: impl FnMut(&mut StandingPipeline, SystemTime) -> Result<Step>,
    ) -> Result<StandingPipeline> {
        for _ in 0..ATTEMPTS {
            let Some(stored) = self.store.get(name.as_str()).await? else {
                return Err(not_found(name));
            };
            let now = self.now();
            let mut next = stored.pipeline.clone();
            match step(&mut next, now)? {
                Step::Keep => return Ok(stored.pipeline),
                Step::Write => {
                    next.updated_at = Some(timestamp(now));
                    if self
                        .store
                        .put(name.as_str(), &next, stored.version)
                        .await?
                        .is_some()
                    {
                        return Ok(next);
                    }
                }
            }
        }
        Err(Error::PipelineConflict {
            name: name.to_string(),
            attempts: ATTEMPTS,
        })
    }

    /// Creates a pipeline (generation 1) or replaces its spec (generation + 1; the same
    /// spec again changes nothing). Offsets, pause and counters stay. True when created.
    pub async fn apply(&self, spec: ValidSpec) -> Result<(StandingPipeline, bool)> {
        let name = spec.name().clone();
        for _ in 0..ATTEMPTS {
            let now = self.now();
            let Some(stored) = self.store.get(name.as_str()).await? else {
                let created = StandingPipeline {
                    spec: Some(spec.spec().clone()),
                    generation: 1,
                    created_at: Some(timestamp(now)),
                    updated_at: Some(timestamp(now)),
                    ..Default::default()
                };
                if self.store.put(name.as_str(), &created, 0).await?.is_some() {
                    tracing::info!(pipeline = %name, "standing pipeline created");
                    self.refresh_gauge().await;
                    return Ok((created, true));
                }
                continue;
            };
            if stored.pipeline.spec.as_ref() == Some(spec.spec()) {
                return Ok((stored.pipeline, false));
            }
            let mut replaced = stored.pipeline.clone();
            replaced.spec = Some(spec.spec().clone());
            replaced.generation += 1;
            replaced.updated_at = Some(timestamp(now));
            if self
                .store
                .put(name.as_str(), &replaced, stored.version)
                .await?
                .is_some()
            {
                tracing::info!(pipeline = %name, generation = replaced.generation, "standing pipeline replaced");
                return Ok((replaced, false));
            }
        }
        Err(Error::PipelineConflict {
            name: name.to_string(),
            attempts: ATTEMPTS,
        })
    }

    /// One pipeline.
    pub async fn get(&self, name: &PipelineName) -> Result<StandingPipeline> {
        self.store
            .get(name.as_str())
            .await?
            .map(|v| v.pipeline)
            .ok_or_else(|| not_found(name))
    }

    /// Up to `limit` pipelines named after `after`, in name order, and whether more follow.
    pub async fn list(
        &self,
        after: Option<&PipelineName>,
        limit: usize,
    ) -> Result<(Vec<StandingPipeline>, bool)> {
        let listed = self
            .store
            .list(after.map(PipelineName::as_str), limit)
            .await?;
        Ok((
            listed.records.into_iter().map(|v| v.pipeline).collect(),
            listed.more,
        ))
    }

    /// Removes a pipeline and its offsets.
    pub async fn delete(&self, name: &PipelineName) -> Result<()> {
        if !self.store.delete(name.as_str()).await? {
            return Err(not_found(name));
        }
        tracing::info!(pipeline = %name, "standing pipeline deleted");
        self.refresh_gauge().await;
        Ok(())
    }

    /// Pauses a pipeline and takes the claim from its runner: the claim lapses now and
    /// keeps only its epoch (no runner id), so the runner's next commit is refused even
    /// after a resume, and the next claim's epoch is higher. Idempotent.
    pub async fn pause(&self, name: &PipelineName) -> Result<StandingPipeline> {
        let paused = self
            .update(name, |p, now| {
                let held = p.runner.as_ref().is_some_and(|r| !r.runner_id.is_empty());
                if p.paused && !held {
                    return Ok(Step::Keep);
                }
                p.paused = true;
                if let Some(runner) = p.runner.as_mut() {
                    runner.runner_id.clear();
                    let expires = time_of(runner.expires_at.as_ref());
                    runner.expires_at = Some(timestamp(expires.min(now)));
                }
                Ok(Step::Write)
            })
            .await?;
        tracing::info!(pipeline = %name, "standing pipeline paused");
        Ok(paused)
    }

    /// Lets a paused pipeline be claimed again. Idempotent.
    pub async fn resume(&self, name: &PipelineName) -> Result<StandingPipeline> {
        self.update(name, |p, _| {
            if !p.paused {
                return Ok(Step::Keep);
            }
            p.paused = false;
            Ok(Step::Write)
        })
        .await
    }

    /// Sets where a paused pipeline resumes: every known partition to 0 (`earliest`), or
    /// the named partitions to the given offsets, backwards or forwards.
    pub async fn reset_offsets(
        &self,
        name: &PipelineName,
        offsets: HashMap<u32, u64>,
        earliest: bool,
    ) -> Result<StandingPipeline> {
        if earliest && !offsets.is_empty() {
            return Err(Error::invalid(
                "offsets",
                "must be empty with earliest: earliest sets every partition to 0",
            ));
        }
        let offsets = spec::offsets("offsets", offsets)?;
        self.update(name, |p, _| {
            if !p.paused {
                return Err(Error::PipelineNotPaused {
                    name: name.to_string(),
                });
            }
            if earliest {
                p.offsets.values_mut().for_each(|o| *o = 0);
            } else {
                p.offsets.extend(&offsets);
                check_partitions(&p.offsets)?;
            }
            Ok(Step::Write)
        })
        .await
    }

    /// Grants or renews `runner`'s claim for `ttl`: renewed (same epoch) while it holds
    /// it, new (epoch + 1) when the claim is free or lapsed; refused while paused or held
    /// by another runner.
    pub async fn claim(
        &self,
        name: &PipelineName,
        runner: &str,
        ttl: Duration,
    ) -> Result<StandingPipeline> {
        let claimed = self
            .update(name, |p, now| {
                if p.paused {
                    return Err(Error::PipelinePaused {
                        name: name.to_string(),
                    });
                }
                let expires_at = Some(timestamp(now + ttl));
                let epoch = match live_claim(p, now) {
                    Some(held) if held.runner_id != runner => {
                        return Err(Error::PipelineClaimed {
                            name: name.to_string(),
                            holder: held.runner_id.clone(),
                            epoch: held.epoch,
                            until: held.expires_at.map(|t| t.to_string()).unwrap_or_default(),
                        });
                    }
                    Some(held) => held.epoch,
                    None => p.runner.as_ref().map_or(0, |r| r.epoch) + 1,
                };
                p.runner = Some(RunnerClaim {
                    runner_id: runner.to_string(),
                    epoch,
                    expires_at,
                });
                Ok(Step::Write)
            })
            .await?;
        tracing::debug!(pipeline = %name, runner, epoch = claimed.runner.as_ref().map(|r| r.epoch), "standing pipeline claimed");
        Ok(claimed)
    }

    /// Records a runner's progress under its claim (`runner` at `epoch`, lapsed or not, as
    /// long as nobody claimed since): offsets only move forward, counters add up,
    /// `consumer_lag` and a set `last_error` replace; the claim is renewed for `ttl`.
    pub async fn commit(&self, commit: Commit) -> Result<StandingPipeline> {
        let Commit {
            name,
            runner,
            epoch,
            offsets,
            stats,
            ttl,
        } = commit;
        let offsets = spec::offsets("offsets", offsets)?;
        self.update(&name, |p, now| {
            if p.paused {
                return Err(Error::CommitWhilePaused {
                    name: name.to_string(),
                });
            }
            let held = p
                .runner
                .as_mut()
                .filter(|r| r.runner_id == runner && r.epoch == epoch);
            let Some(claim) = held else {
                let now_held = match live_claim(p, now) {
                    Some(r) => format!("runner {:?} holds it at epoch {}", r.runner_id, r.epoch),
                    None => match &p.runner {
                        Some(r) => {
                            format!("the claim is at epoch {} and free; claim it again", r.epoch)
                        }
                        None => "nobody claimed it; claim it first".to_string(),
                    },
                };
                return Err(Error::ClaimLost {
                    name: name.to_string(),
                    runner: runner.clone(),
                    epoch,
                    now: now_held,
                });
            };
            claim.expires_at = Some(timestamp(now + ttl));
            for (partition, offset) in &offsets {
                let stored = p.offsets.entry(*partition).or_default();
                *stored = (*stored).max(*offset);
            }
            check_partitions(&p.offsets)?;
            if let Some(delta) = &stats {
                add_stats(p.stats.get_or_insert_default(), delta);
            }
            Ok(Step::Write)
        })
        .await
    }

    /// Gives up `runner`'s claim at `epoch`: it lapses now, keeping its epoch so the next
    /// claim's is higher. A claim that is not the runner's, or a pipeline that is gone,
    /// is left alone.
    pub async fn release(&self, name: &PipelineName, runner: &str, epoch: u64) -> Result<()> {
        let released = self
            .update(name, |p, now| {
                let Some(claim) = p
                    .runner
                    .as_mut()
                    .filter(|r| r.runner_id == runner && r.epoch == epoch)
                else {
                    return Ok(Step::Keep);
                };
                if time_of(claim.expires_at.as_ref()) <= now {
                    return Ok(Step::Keep);
                }
                claim.expires_at = Some(timestamp(now));
                Ok(Step::Write)
            })
            .await;
        match released {
            Ok(_) | Err(Error::PipelineNotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// A runner's commit, checked at the edge.
#[derive(Clone, Debug)]
pub struct Commit {
    /// The pipeline.
    pub name: PipelineName,
    /// The runner's id.
    pub runner: String,
    /// The claim's epoch.
    pub epoch: u64,
    /// Next offset to read, per partition.
    pub offsets: HashMap<u32, u64>,
    /// Counters since the runner's previous commit.
    pub stats: Option<PipelineStats>,
    /// How long the claim lasts from now.
    pub ttl: Duration,
}

impl TryFrom<pb::CommitPipelineRequest> for Commit {
    type Error = Error;

    fn try_from(request: pb::CommitPipelineRequest) -> Result<Self> {
        Ok(Self {
            name: PipelineName::parse("name", &request.name)?,
            runner: runner_id(&request.runner_id)?,
            epoch: request.epoch,
            offsets: spec::offsets("offsets", request.offsets)?,
            stats: request.stats,
            ttl: claim_ttl(request.ttl)?,
        })
    }
}

fn check_partitions(offsets: &HashMap<u32, u64>) -> Result<()> {
    if offsets.len() > MAX_PARTITIONS {
        return Err(Error::invalid(
            "offsets",
            format!("the pipeline would keep offsets of more than {MAX_PARTITIONS} partitions"),
        ));
    }
    Ok(())
}

fn add_stats(stored: &mut PipelineStats, delta: &PipelineStats) {
    stored.records_read = stored.records_read.saturating_add(delta.records_read);
    stored.results_delivered = stored
        .results_delivered
        .saturating_add(delta.results_delivered);
    stored.retries = stored.retries.saturating_add(delta.retries);
    stored.dead_lettered = stored.dead_lettered.saturating_add(delta.dead_lettered);
    stored.records_committed = stored
        .records_committed
        .saturating_add(delta.records_committed);
    stored.consumer_lag = delta.consumer_lag;
    if delta.last_error.is_some() {
        stored.last_error.clone_from(&delta.last_error);
    }
}

#[cfg(test)]
mod tests;
