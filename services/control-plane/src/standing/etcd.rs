//! The etcd store: one key per pipeline, `<prefix>/pipelines/<name>`, holding the encoded
//! `StandingPipeline`; its version is the key's mod revision, and a conditional write is
//! a transaction comparing it (a create compares the key's version with 0). It shares the
//! registry's etcd connection and retry rules; it keeps no cache, so every read is etcd's.

use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp, TxnOpResponse};
use flowplane_proto::controlplane::v1::StandingPipeline;
use prost::Message;

use super::store::{Listed, PipelineStore, Versioned};
use crate::{
    EtcdRegistry, Result,
    registry::etcd::{backend, call, range_end},
};

/// The etcd-backed [`PipelineStore`].
pub struct EtcdStore {
    client: Client,
    /// `<prefix>/pipelines/`.
    dir: String,
    timeout: Duration,
}

impl EtcdStore {
    /// A store in the etcd of `registry`, under its prefix.
    pub fn new(registry: &EtcdRegistry) -> Self {
        let (client, prefix, timeout) = registry.connection();
        Self {
            client,
            dir: format!("{prefix}/pipelines/"),
            timeout,
        }
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.dir)
    }

    fn decode(&self, key: &[u8], value: &[u8], mod_revision: i64) -> Result<Versioned> {
        let pipeline = StandingPipeline::decode(value).map_err(|e| {
            backend(
                "read pipeline",
                format!(
                    "record {} does not decode: {e}",
                    String::from_utf8_lossy(key)
                ),
            )
        })?;
        Ok(Versioned {
            version: u64::try_from(mod_revision).unwrap_or(0),
            pipeline,
        })
    }
}

#[async_trait::async_trait]
impl PipelineStore for EtcdStore {
    async fn get(&self, name: &str) -> Result<Option<Versioned>> {
        let key = self.key(name);
        let response = call(&self.client, self.timeout, |mut c| {
            let key = key.clone();
            async move { c.get(key, None).await }
        })
        .await
        .map_err(|e| e.into_error("read pipeline"))?;
        response
            .kvs()
            .first()
            .map(|kv| self.decode(kv.key(), kv.value(), kv.mod_revision()))
            .transpose()
    }

    async fn list(&self, after: Option<&str>, limit: usize) -> Result<Listed> {
        let start = match after {
            // The smallest key after `<dir><after>`.
            Some(after) => {
                let mut key = self.key(after).into_bytes();
                key.push(0);
                key
            }
            None => self.dir.clone().into_bytes(),
        };
        let options = GetOptions::new()
            .with_range(range_end(&self.dir))
            .with_limit(i64::try_from(limit).unwrap_or(i64::MAX).saturating_add(1));
        let response = call(&self.client, self.timeout, |mut c| {
            let (start, options) = (start.clone(), options.clone());
            async move { c.get(start, Some(options)).await }
        })
        .await
        .map_err(|e| e.into_error("list pipelines"))?;
        let mut listed = Listed::default();
        for kv in response.kvs() {
            if listed.records.len() == limit {
                listed.more = true;
                break;
            }
            listed
                .records
                .push(self.decode(kv.key(), kv.value(), kv.mod_revision())?);
        }
        Ok(listed)
    }

    async fn put(
        &self,
        name: &str,
        pipeline: &StandingPipeline,
        expected: u64,
    ) -> Result<Option<u64>> {
        let key = self.key(name);
        let value = pipeline.encode_to_vec();
        let compare = if expected == 0 {
            Compare::version(key.clone(), CompareOp::Equal, 0)
        } else {
            let revision = i64::try_from(expected).unwrap_or(i64::MAX);
            Compare::mod_revision(key.clone(), CompareOp::Equal, revision)
        };
        let txn = Txn::new()
            .when([compare])
            .and_then([TxnOp::put(key.clone(), value.clone(), None)])
            .or_else([TxnOp::get(key, None)]);
        // Tried again after a failure that may have applied: a try that finds the key holding
        // exactly these bytes (a timestamp is in them) knows the earlier one did.
        let response = call(&self.client, self.timeout, |mut c| {
            let txn = txn.clone();
            async move { c.txn(txn).await }
        })
        .await
        .map_err(|e| e.into_error("write pipeline"))?;
        if response.succeeded() {
            let revision = response.header().map_or(0, |h| h.revision());
            return Ok(Some(u64::try_from(revision).unwrap_or(0)));
        }
        let current = response.op_responses().into_iter().find_map(|op| match op {
            TxnOpResponse::Get(get) => get.kvs().first().cloned(),
            _ => None,
        });
        Ok(current
            .filter(|kv| kv.value() == value.as_slice())
            .map(|kv| u64::try_from(kv.mod_revision()).unwrap_or(0)))
    }

    async fn delete(&self, name: &str) -> Result<bool> {
        let key = self.key(name);
        let response = call(&self.client, self.timeout, |mut c| {
            let key = key.clone();
            async move { c.delete(key, None).await }
        })
        .await
        .map_err(|e| e.into_error("delete pipeline"))?;
        Ok(response.deleted() > 0)
    }

    async fn count(&self) -> Result<u64> {
        let options = GetOptions::new()
            .with_range(range_end(&self.dir))
            .with_count_only();
        let response = call(&self.client, self.timeout, |mut c| {
            let (dir, options) = (self.dir.clone(), options.clone());
            async move { c.get(dir, Some(options)).await }
        })
        .await
        .map_err(|e| e.into_error("count pipelines"))?;
        Ok(u64::try_from(response.count()).unwrap_or(0))
    }
}
