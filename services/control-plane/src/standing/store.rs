//! The storage seam of standing pipelines: a compare-and-swap record store. Backends only
//! get, list, put-if-version and delete whole `StandingPipeline` records; every rule
//! (apply, pause, claim, commit) lives once above them, in [`super::Pipelines`].

use flowplane_proto::controlplane::v1::StandingPipeline;

use crate::Result;

/// A stored record and the version a conditional write compares against. Versions grow
/// with every write to the store and are never reused, so a record deleted and created
/// again never matches a version read before.
#[derive(Clone, Debug, PartialEq)]
pub struct Versioned {
    /// Never 0 for a stored record; 0 stands for "absent" in [`PipelineStore::put`].
    pub version: u64,
    /// The record.
    pub pipeline: StandingPipeline,
}

/// One page of a listing.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Listed {
    /// Records in name order.
    pub records: Vec<Versioned>,
    /// True when more records follow the last one.
    pub more: bool,
}

/// A record store with compare-and-swap writes, keyed by pipeline name.
#[async_trait::async_trait]
pub trait PipelineStore: Send + Sync + 'static {
    /// The record named `name`, if any.
    async fn get(&self, name: &str) -> Result<Option<Versioned>>;

    /// Up to `limit` records with names strictly after `after`, in name order.
    async fn list(&self, after: Option<&str>, limit: usize) -> Result<Listed>;

    /// Writes `pipeline` under `name` if the stored version is still `expected` (0: no
    /// record). Returns the new version, or `None` when another write got there first.
    async fn put(
        &self,
        name: &str,
        pipeline: &StandingPipeline,
        expected: u64,
    ) -> Result<Option<u64>>;

    /// Removes the record; false when there was none.
    async fn delete(&self, name: &str) -> Result<bool>;

    /// How many records are stored.
    async fn count(&self) -> Result<u64>;
}
