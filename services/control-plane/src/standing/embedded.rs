//! The embedded store: one redb database, `<data-dir>/standing.redb`, or redb's in-memory
//! backend when there is no data dir. redb locks its file, so one control plane process
//! owns a data dir; a second one fails at startup naming it. Calls run on the blocking
//! pool: a commit waits for its fsync, which must not stall the runtime.

use std::{
    ops::Bound,
    path::{Path, PathBuf},
    sync::Arc,
};

use flowplane_proto::controlplane::v1::StandingPipeline;
use prost::Message;
use redb::{
    Database, DatabaseError, ReadableDatabase, ReadableTable, ReadableTableMetadata,
    TableDefinition, backends::InMemoryBackend,
};

use super::store::{Listed, PipelineStore, Versioned};
use crate::{Error, Result};

/// The database file inside the data dir.
pub const FILE_NAME: &str = "standing.redb";

/// name -> (version, encoded `StandingPipeline`).
const PIPELINES: TableDefinition<&str, (u64, &[u8])> = TableDefinition::new("pipelines");
/// `revision` -> the last version handed out, so versions never repeat.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const REVISION: &str = "revision";

/// Pages cached in memory: the records are small and few.
const CACHE_BYTES: usize = 16 * 1024 * 1024;

/// The redb-backed [`PipelineStore`].
pub struct EmbeddedStore {
    db: Arc<Database>,
    /// The file, or `None` in memory; for messages.
    path: Option<PathBuf>,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("path", &self.path)
            .finish()
    }
}

fn failed(what: &str, error: impl std::fmt::Display) -> Error {
    Error::Backend(format!("standing pipeline store: {what}: {error}"))
}

fn data_dir_error(dir: &Path, problem: impl std::fmt::Display) -> Error {
    Error::Config(format!("--data-dir {}: {problem}", dir.display()))
}

impl EmbeddedStore {
    /// A store in memory: gone with the process (for tests and embedders).
    pub fn in_memory() -> Result<Self> {
        let db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create_with_backend(InMemoryBackend::new())
            .map_err(|e| failed("create in memory", e))?;
        Self::ready(db, None)
    }

    /// Opens (creating it and the directory if needed) `<dir>/standing.redb`. Errors name
    /// `--data-dir`: a directory that cannot be made or written, or one another control
    /// plane has open.
    pub fn open(dir: &Path) -> Result<Self> {
        if dir.as_os_str().is_empty() {
            return Err(Error::Config("--data-dir must not be empty".into()));
        }
        std::fs::create_dir_all(dir).map_err(|e| data_dir_error(dir, e))?;
        if !dir.is_dir() {
            return Err(data_dir_error(dir, "is not a directory"));
        }
        let path = dir.join(FILE_NAME);
        let db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create(&path)
            .map_err(|e| match e {
                DatabaseError::DatabaseAlreadyOpen | DatabaseError::LockProtocolMismatch => {
                    data_dir_error(
                        dir,
                        format!(
                            "{} is open in another control plane: one process per data dir; give each its own --data-dir, or use an etcd --registry for replicas",
                            path.display()
                        ),
                    )
                }
                other => data_dir_error(dir, format!("cannot open {}: {other}", path.display())),
            })?;
        Self::ready(db, Some(path))
    }

    /// Creates the tables, so that reads of a new database find them.
    fn ready(db: Database, path: Option<PathBuf>) -> Result<Self> {
        let created = (|| -> std::result::Result<(), redb::Error> {
            let txn = db.begin_write()?;
            txn.open_table(PIPELINES)?;
            txn.open_table(META)?;
            txn.commit()?;
            Ok(())
        })();
        created.map_err(|e| match &path {
            Some(p) => Error::Config(format!("--data-dir: cannot write {}: {e}", p.display())),
            None => failed("create tables", e),
        })?;
        Ok(Self {
            db: Arc::new(db),
            path,
        })
    }

    /// The database file, or `None` in memory.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    async fn blocking<T: Send + 'static>(
        &self,
        what: &'static str,
        f: impl FnOnce(&Database) -> std::result::Result<T, redb::Error> + Send + 'static,
    ) -> Result<T> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(|e| failed(what, e))?
            .map_err(|e| failed(what, e))
    }
}

fn decode(name: &str, version: u64, bytes: &[u8]) -> std::result::Result<Versioned, redb::Error> {
    let pipeline = StandingPipeline::decode(bytes).map_err(|e| {
        redb::Error::Corrupted(format!("record of pipeline {name:?} does not decode: {e}"))
    })?;
    Ok(Versioned { version, pipeline })
}

#[async_trait::async_trait]
impl PipelineStore for EmbeddedStore {
    async fn get(&self, name: &str) -> Result<Option<Versioned>> {
        let name = name.to_string();
        self.blocking("read", move |db| {
            let table = db.begin_read()?.open_table(PIPELINES)?;
            let Some(found) = table.get(name.as_str())? else {
                return Ok(None);
            };
            let (version, bytes) = found.value();
            decode(&name, version, bytes).map(Some)
        })
        .await
    }

    async fn list(&self, after: Option<&str>, limit: usize) -> Result<Listed> {
        let after = after.map(str::to_string);
        self.blocking("list", move |db| {
            let table = db.begin_read()?.open_table(PIPELINES)?;
            let start = after.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
            let mut listed = Listed::default();
            for entry in table.range::<&str>((start, Bound::Unbounded))? {
                let (key, value) = entry?;
                if listed.records.len() == limit {
                    listed.more = true;
                    break;
                }
                let (version, bytes) = value.value();
                listed.records.push(decode(key.value(), version, bytes)?);
            }
            Ok(listed)
        })
        .await
    }

    async fn put(
        &self,
        name: &str,
        pipeline: &StandingPipeline,
        expected: u64,
    ) -> Result<Option<u64>> {
        let name = name.to_string();
        let bytes = pipeline.encode_to_vec();
        self.blocking("write", move |db| {
            let txn = db.begin_write()?;
            let written = {
                let mut table = txn.open_table(PIPELINES)?;
                let current = table.get(name.as_str())?.map_or(0, |g| g.value().0);
                if current == expected {
                    let mut meta = txn.open_table(META)?;
                    let version = meta.get(REVISION)?.map_or(0, |g| g.value()) + 1;
                    meta.insert(REVISION, version)?;
                    table.insert(name.as_str(), (version, bytes.as_slice()))?;
                    Some(version)
                } else {
                    None
                }
            };
            match written {
                Some(version) => {
                    txn.commit()?;
                    Ok(Some(version))
                }
                None => {
                    txn.abort()?;
                    Ok(None)
                }
            }
        })
        .await
    }

    async fn delete(&self, name: &str) -> Result<bool> {
        let name = name.to_string();
        self.blocking("delete", move |db| {
            let txn = db.begin_write()?;
            let removed = txn.open_table(PIPELINES)?.remove(name.as_str())?.is_some();
            txn.commit()?;
            Ok(removed)
        })
        .await
    }

    async fn count(&self) -> Result<u64> {
        self.blocking("count", |db| {
            Ok(db.begin_read()?.open_table(PIPELINES)?.len()?)
        })
        .await
    }
}
