//! The rules on redb's in-memory store and tokio's paused clock: claims expire exactly
//! when the server clock says so, with no waiting.

use std::sync::atomic::{AtomicUsize, Ordering};

use flowplane_proto::{
    common::v1::ErrorDetail,
    controlplane::v1::{ConnectorRef, ConsumerBinding, DeliveryPolicy, StandingPipelineSpec},
    streaming::v1::{NodeSpec, PipelineInput, PipelineManifest, PipelineOutput, PortRef},
};
use tonic::Code;

use super::*;

fn capability(name: &str) -> Option<ConnectorRef> {
    Some(ConnectorRef {
        selector: Some(pb::connector_ref::Selector::Capability(name.into())),
        params: None,
    })
}

fn port(node: &str) -> PortRef {
    PortRef {
        node: node.into(),
        port: String::new(),
    }
}

/// One node, input `text`, outputs `out` and `copy`, each bound to a consumer.
fn spec(name: &str) -> StandingPipelineSpec {
    StandingPipelineSpec {
        name: name.into(),
        source: capability("generator"),
        source_input: String::new(),
        manifest: Some(PipelineManifest {
            name: String::new(),
            nodes: vec![NodeSpec {
                id: "up".into(),
                processor: "text.transform".into(),
                ..Default::default()
            }],
            edges: vec![],
            inputs: vec![PipelineInput {
                name: "text".into(),
                targets: vec![port("up")],
            }],
            outputs: vec![
                PipelineOutput {
                    name: "out".into(),
                    source: Some(port("up")),
                },
                PipelineOutput {
                    name: "copy".into(),
                    source: Some(port("up")),
                },
            ],
        }),
        consumers: vec![
            ConsumerBinding {
                output: "out".into(),
                consumer: capability("file"),
            },
            ConsumerBinding {
                output: "copy".into(),
                consumer: capability("log"),
            },
        ],
        dead_letter: None,
        delivery: None,
    }
}

fn valid(spec: StandingPipelineSpec) -> ValidSpec {
    ValidSpec::try_from(Some(spec)).expect("valid spec")
}

fn name(raw: &str) -> PipelineName {
    PipelineName::parse("name", raw).unwrap()
}

fn pipelines() -> Pipelines {
    Pipelines::in_memory().unwrap()
}

fn commit(p: &str, runner: &str, epoch: u64, offsets: &[(u32, u64)]) -> Commit {
    Commit {
        name: name(p),
        runner: runner.into(),
        epoch,
        offsets: offsets.iter().copied().collect(),
        stats: None,
        ttl: DEFAULT_CLAIM_TTL,
    }
}

fn epoch(p: &StandingPipeline) -> u64 {
    p.runner.as_ref().unwrap().epoch
}

fn code_and_reason(error: Error) -> (Code, String) {
    let status = tonic::Status::from(error);
    let reason = crate::error_detail(&status).unwrap_or_default().reason;
    (status.code(), reason)
}

/// The fields a spec's problems name, in order.
fn fields(spec: StandingPipelineSpec) -> Vec<String> {
    match ValidSpec::try_from(Some(spec)) {
        Err(Error::InvalidSpec(all)) => all.into_iter().map(|v| v.field).collect(),
        other => panic!("expected problems, got {other:?}"),
    }
}

#[test]
fn a_valid_spec_passes() {
    let checked = valid(spec("orders"));
    assert_eq!(checked.name().as_str(), "orders");
}

#[test]
fn each_problem_names_its_field() {
    let mut s = spec("Bad_Name");
    s.source = None;
    s.consumers[1].output = "nowhere".into();
    s.dead_letter = Some(ConnectorRef::default());
    s.delivery = Some(DeliveryPolicy {
        max_attempts: 101,
        retry_backoff: Some(prost_types::Duration {
            seconds: 61,
            nanos: 0,
        }),
        max_in_flight: 65_537,
    });
    assert_eq!(
        fields(s),
        [
            "spec.name",
            "spec.source",
            "spec.dead_letter",
            "spec.delivery.max_attempts",
            "spec.delivery.max_in_flight",
            "spec.delivery.retry_backoff",
            "spec.consumers[1].output",
            "spec.consumers",
        ]
    );

    let mut s = spec("p");
    s.consumers.push(ConsumerBinding {
        output: "out".into(),
        consumer: None,
    });
    assert_eq!(
        fields(s),
        ["spec.consumers[2].output", "spec.consumers[2].consumer"]
    );

    let mut s = spec("p");
    s.manifest.as_mut().unwrap().outputs.clear();
    s.consumers.clear();
    assert_eq!(fields(s), ["spec.manifest.outputs"]);

    let mut s = spec("p");
    let manifest = s.manifest.as_mut().unwrap();
    manifest.nodes.clear();
    assert!(fields(s).contains(&"spec.manifest.nodes".to_string()));

    let mut s = spec("p");
    s.manifest = None;
    assert_eq!(fields(s), ["spec.manifest"]);

    let mut s = spec("p");
    s.source_input = "audio".into();
    assert_eq!(fields(s), ["spec.source_input"]);

    let mut s = spec("p");
    s.manifest.as_mut().unwrap().inputs.push(PipelineInput {
        name: "more".into(),
        targets: vec![port("up")],
    });
    // Two inputs and none named.
    assert_eq!(fields(s.clone()), ["spec.source_input"]);
    s.source_input = "more".into();
    assert!(ValidSpec::try_from(Some(s)).is_ok());

    let status = tonic::Status::from(ValidSpec::try_from(None).unwrap_err());
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(crate::error_detail(&status).unwrap().field, "spec");
}

#[tokio::test(start_paused = true)]
async fn apply_creates_then_bumps_the_generation_only_when_the_spec_changes() {
    let p = pipelines();
    let (created, was_created) = p.apply(valid(spec("orders"))).await.unwrap();
    assert!(was_created);
    assert_eq!(created.generation, 1);
    assert!(created.created_at.is_some());
    assert_eq!(created.created_at, created.updated_at);

    let claimed = p
        .claim(&name("orders"), "r1", DEFAULT_CLAIM_TTL)
        .await
        .unwrap();
    p.commit(commit("orders", "r1", epoch(&claimed), &[(0, 7)]))
        .await
        .unwrap();
    p.pause(&name("orders")).await.unwrap();

    let (same, was_created) = p.apply(valid(spec("orders"))).await.unwrap();
    assert!(!was_created);
    assert_eq!(same.generation, 1);

    tokio::time::advance(Duration::from_secs(3)).await;
    let mut changed = spec("orders");
    changed.source_input = "text".into();
    let (replaced, was_created) = p.apply(valid(changed.clone())).await.unwrap();
    assert!(!was_created);
    assert_eq!(replaced.generation, 2);
    assert_eq!(replaced.spec, Some(changed));
    assert_eq!(replaced.offsets, HashMap::from([(0, 7)]));
    assert!(replaced.paused);
    assert_eq!(replaced.created_at, created.created_at);
    assert_ne!(replaced.updated_at, created.updated_at);
    assert_eq!(p.get(&name("orders")).await.unwrap(), replaced);

    let missing = p.get(&name("nope")).await.unwrap_err();
    assert_eq!(
        missing.to_string(),
        "name: no standing pipeline \"nope\" is stored"
    );
    assert_eq!(
        code_and_reason(missing),
        (Code::NotFound, "PIPELINE_NOT_FOUND".into())
    );
    p.delete(&name("orders")).await.unwrap();
    assert_eq!(
        code_and_reason(p.delete(&name("orders")).await.unwrap_err()).0,
        Code::NotFound
    );
}

#[tokio::test(start_paused = true)]
async fn a_claim_is_exclusive_renewed_by_its_holder_and_taken_over_after_expiry() {
    let p = pipelines();
    p.apply(valid(spec("orders"))).await.unwrap();
    let orders = name("orders");
    let ttl = Duration::from_secs(5);

    let first = p.claim(&orders, "r1", ttl).await.unwrap();
    assert_eq!(epoch(&first), 1);
    let taken = p.claim(&orders, "r2", ttl).await.unwrap_err();
    assert!(taken.to_string().contains("\"r1\""), "{taken}");
    assert_eq!(
        code_and_reason(taken),
        (Code::Aborted, "PIPELINE_CLAIMED".into())
    );

    tokio::time::advance(Duration::from_secs(4)).await;
    let renewed = p.claim(&orders, "r1", ttl).await.unwrap();
    assert_eq!(epoch(&renewed), 1);
    // Renewed at 4s for 5s: still held at 8.9s.
    tokio::time::advance(Duration::from_millis(4900)).await;
    assert!(p.claim(&orders, "r2", ttl).await.is_err());
    tokio::time::advance(Duration::from_millis(100)).await;
    let takeover = p.claim(&orders, "r2", ttl).await.unwrap();
    assert_eq!(takeover.runner.as_ref().unwrap().runner_id, "r2");
    assert_eq!(epoch(&takeover), 2);
    assert_eq!(
        SystemTime::try_from(takeover.runner.unwrap().expires_at.unwrap()).unwrap(),
        p.now() + ttl
    );

    // The old holder's commit is fenced off.
    let stale = p
        .commit(commit("orders", "r1", 1, &[(0, 99)]))
        .await
        .unwrap_err();
    assert_eq!(code_and_reason(stale), (Code::Aborted, "CLAIM_LOST".into()));
    assert!(p.get(&orders).await.unwrap().offsets.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_lapsed_claim_still_commits_until_another_runner_claims() {
    let p = pipelines();
    p.apply(valid(spec("orders"))).await.unwrap();
    let orders = name("orders");
    p.claim(&orders, "r1", Duration::from_secs(1))
        .await
        .unwrap();
    tokio::time::advance(Duration::from_secs(2)).await;
    // Lapsed, nobody claimed since: the commit goes through and renews the claim.
    let committed = p
        .commit(commit("orders", "r1", 1, &[(0, 5)]))
        .await
        .unwrap();
    assert_eq!(committed.offsets[&0], 5);
    assert!(p.claim(&orders, "r2", DEFAULT_CLAIM_TTL).await.is_err());
    // The holder's own claim after a lapse is a new one.
    tokio::time::advance(Duration::from_secs(6)).await;
    let again = p.claim(&orders, "r1", DEFAULT_CLAIM_TTL).await.unwrap();
    assert_eq!(epoch(&again), 2);
}

#[tokio::test(start_paused = true)]
async fn offsets_never_move_back_and_counters_add_up() {
    let p = pipelines();
    p.apply(valid(spec("orders"))).await.unwrap();
    let orders = name("orders");
    p.claim(&orders, "r1", DEFAULT_CLAIM_TTL).await.unwrap();
    let stats = |read, lag, error: Option<&str>| PipelineStats {
        records_read: read,
        results_delivered: read,
        retries: 1,
        dead_lettered: 0,
        consumer_lag: lag,
        records_committed: read,
        last_error: error.map(|m| ErrorDetail {
            message: m.into(),
            ..Default::default()
        }),
    };
    let mut c = commit("orders", "r1", 1, &[(0, 10), (1, 4)]);
    c.stats = Some(stats(10, 50, Some("consumer went away")));
    p.commit(c).await.unwrap();
    let mut c = commit("orders", "r1", 1, &[(0, 3), (1, 9), (2, 1)]);
    c.stats = Some(stats(5, 20, None));
    let after = p.commit(c).await.unwrap();
    assert_eq!(after.offsets, HashMap::from([(0, 10), (1, 9), (2, 1)]));
    let s = after.stats.unwrap();
    assert_eq!(
        (s.records_read, s.retries, s.records_committed),
        (15, 2, 15)
    );
    assert_eq!(s.consumer_lag, 20);
    assert_eq!(s.last_error.unwrap().message, "consumer went away");
}

#[tokio::test(start_paused = true)]
async fn pause_fences_the_runner_and_offsets_reset_only_while_paused() {
    let p = pipelines();
    p.apply(valid(spec("orders"))).await.unwrap();
    let orders = name("orders");
    p.claim(&orders, "r1", DEFAULT_CLAIM_TTL).await.unwrap();
    p.commit(commit("orders", "r1", 1, &[(0, 10), (1, 20)]))
        .await
        .unwrap();

    let not_paused = p
        .reset_offsets(&orders, HashMap::from([(0, 0)]), false)
        .await
        .unwrap_err();
    assert_eq!(
        code_and_reason(not_paused),
        (Code::FailedPrecondition, "PIPELINE_NOT_PAUSED".into())
    );

    let paused = p.pause(&orders).await.unwrap();
    assert!(paused.paused);
    let runner = paused.runner.as_ref().unwrap();
    assert!(runner.runner_id.is_empty());
    assert!(SystemTime::try_from(runner.expires_at.unwrap()).unwrap() <= p.now());
    assert_eq!(
        p.pause(&orders).await.unwrap(),
        paused,
        "pause is idempotent"
    );

    let refused = p
        .commit(commit("orders", "r1", 1, &[(0, 11)]))
        .await
        .unwrap_err();
    assert_eq!(
        code_and_reason(refused),
        (Code::Aborted, "PIPELINE_PAUSED".into())
    );
    let claim = p.claim(&orders, "r1", DEFAULT_CLAIM_TTL).await.unwrap_err();
    assert_eq!(
        code_and_reason(claim),
        (Code::FailedPrecondition, "PIPELINE_PAUSED".into())
    );

    let earliest_with_offsets = p
        .reset_offsets(&orders, HashMap::from([(0, 1)]), true)
        .await
        .unwrap_err();
    assert!(earliest_with_offsets.to_string().starts_with("offsets: "));
    let back = p
        .reset_offsets(&orders, HashMap::from([(0, 3)]), false)
        .await
        .unwrap();
    assert_eq!(back.offsets, HashMap::from([(0, 3), (1, 20)]));
    let earliest = p
        .reset_offsets(&orders, HashMap::new(), true)
        .await
        .unwrap();
    assert_eq!(earliest.offsets, HashMap::from([(0, 0), (1, 0)]));

    // A runner that missed the whole pause, reset and resume still cannot write over the
    // reset: the pause took its claim.
    let resumed = p.resume(&orders).await.unwrap();
    assert!(!resumed.paused);
    assert_eq!(
        p.resume(&orders).await.unwrap(),
        resumed,
        "resume is idempotent"
    );
    let stale = p
        .commit(commit("orders", "r1", 1, &[(0, 10)]))
        .await
        .unwrap_err();
    assert_eq!(code_and_reason(stale), (Code::Aborted, "CLAIM_LOST".into()));
    let next = p.claim(&orders, "r1", DEFAULT_CLAIM_TTL).await.unwrap();
    assert_eq!(epoch(&next), 2);
    assert_eq!(next.offsets, HashMap::from([(0, 0), (1, 0)]));
}

#[tokio::test(start_paused = true)]
async fn release_frees_the_claim_at_once_and_the_next_epoch_is_higher() {
    let p = pipelines();
    p.apply(valid(spec("orders"))).await.unwrap();
    let orders = name("orders");
    p.claim(&orders, "r1", DEFAULT_CLAIM_TTL).await.unwrap();
    // Not the holder, or not its epoch: nothing happens.
    p.release(&orders, "r2", 1).await.unwrap();
    p.release(&orders, "r1", 7).await.unwrap();
    assert!(p.claim(&orders, "r2", DEFAULT_CLAIM_TTL).await.is_err());
    p.release(&orders, "r1", 1).await.unwrap();
    let released = p.get(&orders).await.unwrap();
    assert_eq!(released.runner.as_ref().unwrap().runner_id, "r1");
    let next = p.claim(&orders, "r2", DEFAULT_CLAIM_TTL).await.unwrap();
    assert_eq!(epoch(&next), 2);
    p.release(&name("gone"), "r1", 1).await.unwrap();
}

#[tokio::test]
async fn listing_pages_by_name() {
    let p = pipelines();
    for n in ["c", "a", "b", "d"] {
        p.apply(valid(spec(n))).await.unwrap();
    }
    let names = |page: &[StandingPipeline]| -> Vec<String> {
        page.iter()
            .map(|p| p.spec.as_ref().unwrap().name.clone())
            .collect()
    };
    let (first, more) = p.list(None, 3).await.unwrap();
    assert_eq!(
        (names(&first), more),
        (vec!["a".into(), "b".into(), "c".into()], true)
    );
    let (rest, more) = p.list(Some(&name("c")), 3).await.unwrap();
    assert_eq!((names(&rest), more), (vec!["d".to_string()], false));
    assert_eq!(p.store().count().await.unwrap(), 4);
}

#[tokio::test]
async fn versions_never_repeat_after_a_delete() {
    let store = EmbeddedStore::in_memory().unwrap();
    let record = StandingPipeline::default();
    let v1 = store.put("a", &record, 0).await.unwrap().unwrap();
    assert_eq!(
        store.put("a", &record, 0).await.unwrap(),
        None,
        "create of an existing key"
    );
    assert!(store.delete("a").await.unwrap());
    let v2 = store.put("a", &record, 0).await.unwrap().unwrap();
    assert!(v2 > v1);
    assert_eq!(
        store.put("a", &record, v1).await.unwrap(),
        None,
        "stale version"
    );
    assert!(store.put("a", &record, v2).await.unwrap().is_some());
}

/// A store whose every conditional write loses, as if another replica always won.
struct AlwaysLoses {
    inner: EmbeddedStore,
    puts: AtomicUsize,
}

#[async_trait::async_trait]
impl PipelineStore for AlwaysLoses {
    async fn get(&self, name: &str) -> Result<Option<Versioned>> {
        self.inner.get(name).await
    }
    async fn list(&self, after: Option<&str>, limit: usize) -> Result<Listed> {
        self.inner.list(after, limit).await
    }
    async fn put(&self, _: &str, _: &StandingPipeline, _: u64) -> Result<Option<u64>> {
        self.puts.fetch_add(1, Ordering::SeqCst);
        Ok(None)
    }
    async fn delete(&self, name: &str) -> Result<bool> {
        self.inner.delete(name).await
    }
    async fn count(&self) -> Result<u64> {
        self.inner.count().await
    }
}

#[tokio::test]
async fn lost_races_are_tried_a_bounded_number_of_times() {
    let inner = EmbeddedStore::in_memory().unwrap();
    inner
        .put("orders", &StandingPipeline::default(), 0)
        .await
        .unwrap();
    let store = Arc::new(AlwaysLoses {
        inner,
        puts: AtomicUsize::new(0),
    });
    let p = Pipelines::new(store.clone());
    let error = p
        .claim(&name("orders"), "r1", DEFAULT_CLAIM_TTL)
        .await
        .unwrap_err();
    assert_eq!(
        code_and_reason(error),
        (Code::Aborted, "PIPELINE_CONFLICT".into())
    );
    assert_eq!(store.puts.load(Ordering::SeqCst), ATTEMPTS);
}
