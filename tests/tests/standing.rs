//! Standing pipelines through the real binaries: a generator source, json.calculator on
//! a processor host, the file consumer, pipeline replicas as runners and the control
//! plane storing the pipeline in its data directory. Each test reads what the consumer
//! wrote and checks it against what the source produced: every record once, in offset
//! order per partition, whatever was killed on the way.

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    time::Duration,
};

use flowplane_proto::controlplane::v1::{
    ApplyPipelineRequest, ConnectorRef, ConsumerBinding, DeliveryPolicy, GetPipelineRequest,
    PausePipelineRequest, ResetPipelineOffsetsRequest, ResumePipelineRequest, StandingPipeline,
    StandingPipelineSpec, connector_ref::Selector,
    standing_pipeline_service_client::StandingPipelineServiceClient,
};
use flowplane_tests::process::{Process, free_port, start};
use serde_json::{Value, json};
use tonic::transport::Channel;

fn listen(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

fn url(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

/// Waits for `condition` up to `limit`, polling; panics naming `what` after.
async fn wait_long<T, F, Fut>(what: &str, limit: Duration, mut condition: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = condition().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A platform of real processes on 127.0.0.1, each restartable on its own port.
struct Stack {
    dir: tempfile::TempDir,
    cp_port: u16,
    control_plane: Option<Process>,
    processors: Vec<(u16, String, Option<Process>)>,
    connect: Option<Process>,
    connect_port: u16,
    connect_metrics: u16,
    pipelines: Vec<(u16, String, Option<Process>)>,
}

impl Stack {
    async fn start(processors: usize, pipelines: usize) -> Self {
        let mut stack = Self {
            dir: tempfile::tempdir().unwrap(),
            cp_port: free_port(),
            control_plane: None,
            processors: Vec::new(),
            connect: None,
            connect_port: free_port(),
            connect_metrics: free_port(),
            pipelines: Vec::new(),
        };
        stack.start_control_plane().await;
        for i in 0..processors {
            stack
                .processors
                .push((free_port(), format!("standing-proc-{i}"), None));
            stack.start_processor(i);
        }
        stack.start_connect();
        for i in 0..pipelines {
            stack
                .pipelines
                .push((free_port(), format!("runner-{i}"), None));
            stack.start_pipeline(i);
        }
        stack
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    async fn start_control_plane(&mut self) {
        let data = self.path("control-plane-data");
        self.control_plane = Some(start(
            "flowplane-control-plane",
            &[
                "--listen".into(),
                listen(self.cp_port),
                "--lease-ttl".into(),
                "3s".into(),
                "--data-dir".into(),
                data.display().to_string(),
            ],
        ));
        let port = self.cp_port;
        wait_long(
            "the control plane",
            Duration::from_secs(20),
            || async move {
                Channel::from_shared(url(port))
                    .unwrap()
                    .connect()
                    .await
                    .ok()
            },
        )
        .await;
    }

    fn start_processor(&mut self, i: usize) {
        let (port, id, _) = &self.processors[i];
        let process = start(
            "flowplane-processor",
            &[
                "--listen".into(),
                listen(*port),
                "--control-plane".into(),
                url(self.cp_port),
                "--id".into(),
                id.clone(),
            ],
        );
        self.processors[i].2 = Some(process);
    }

    fn start_connect(&mut self) {
        self.connect = Some(start(
            "flowplane-connect",
            &[
                "--listen".into(),
                listen(self.connect_port),
                "--metrics-listen".into(),
                listen(self.connect_metrics),
                "--control-plane".into(),
                url(self.cp_port),
                "--id".into(),
                "standing-connect".into(),
            ],
        ));
    }

    fn start_pipeline(&mut self, i: usize) {
        let (port, runner, _) = &self.pipelines[i];
        let process = start(
            "flowplane-pipeline",
            &[
                "--listen".into(),
                listen(*port),
                "--control-plane".into(),
                url(self.cp_port),
                "--runner-id".into(),
                runner.clone(),
                "--claim-ttl".into(),
                "2s".into(),
            ],
        );
        self.pipelines[i].2 = Some(process);
    }

    /// SIGKILL: no drain, no deregistration, no last commit.
    fn kill(process: &mut Option<Process>) {
        if let Some(mut p) = process.take() {
            p.0.kill().unwrap();
            p.0.wait().unwrap();
        }
    }

    async fn client(&self) -> StandingPipelineServiceClient<Channel> {
        let port = self.cp_port;
        wait_long(
            "a control-plane connection",
            Duration::from_secs(20),
            || async move { StandingPipelineServiceClient::connect(url(port)).await.ok() },
        )
        .await
    }

    async fn get(&self, name: &str) -> Option<StandingPipeline> {
        self.client()
            .await
            .get_pipeline(GetPipelineRequest { name: name.into() })
            .await
            .ok()
            .and_then(|r| r.into_inner().pipeline)
    }

    /// Waits until the committed offsets of `name` reach `want` per partition.
    async fn wait_committed(
        &self,
        name: &str,
        want: &BTreeMap<u32, u64>,
        limit: Duration,
    ) -> StandingPipeline {
        wait_long(
            &format!("pipeline {name} to commit {want:?}"),
            limit,
            || async {
                let p = self.get(name).await?;
                let offsets: BTreeMap<u32, u64> = p.offsets.clone().into_iter().collect();
                want.iter()
                    .all(|(k, v)| offsets.get(k).is_some_and(|o| o >= v))
                    .then_some(p)
            },
        )
        .await
    }
}

fn connector(capability: &str, params: Value) -> ConnectorRef {
    ConnectorRef {
        selector: Some(Selector::Capability(capability.into())),
        params: Some(flowplane_proto::json_to_struct(
            params.as_object().expect("params are an object"),
        )),
    }
}

/// generator -> json.calculator -> file consumer (and an optional dead-letter file).
fn calculator_spec(
    name: &str,
    source: Value,
    out: &Path,
    dead_letter: Option<&Path>,
) -> StandingPipelineSpec {
    StandingPipelineSpec {
        name: name.into(),
        source: Some(connector("generator", source)),
        source_input: String::new(),
        manifest: Some(flowplane_tests::data::manifest(
            "name: calc\nnodes:\n  - { id: calc, processor: json.calculator }\ninputs:\n  - { name: requests, targets: [{ node: calc }] }\noutputs:\n  - { name: results, source: { node: calc } }\n",
        )),
        consumers: vec![ConsumerBinding {
            output: "results".into(),
            consumer: Some(connector(
                "file",
                json!({ "path": out.display().to_string() }),
            )),
        }],
        dead_letter: dead_letter
            .map(|p| connector("file", json!({ "path": p.display().to_string() }))),
        delivery: Some(DeliveryPolicy {
            max_attempts: 3,
            retry_backoff: None,
            max_in_flight: 256,
        }),
    }
}

async fn apply(stack: &Stack, spec: StandingPipelineSpec) {
    stack
        .client()
        .await
        .apply_pipeline(ApplyPipelineRequest { spec: Some(spec) })
        .await
        .expect("apply");
}

/// The file consumer's lines: (partition, offset) -> the line, checking that each key
/// appears once and that offsets grow within a partition.
fn read_output(path: &Path) -> BTreeMap<(u32, u64), Value> {
    read_lines(path, true)
}

/// [`read_output`] of a file whose order depends on retries (a dead-letter file).
fn read_unordered(path: &Path) -> BTreeMap<(u32, u64), Value> {
    read_lines(path, false)
}

fn read_lines(path: &Path, ordered: bool) -> BTreeMap<(u32, u64), Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut rows = BTreeMap::new();
    let mut last: HashMap<u32, u64> = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let row: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("line {n}: {e}: {line}"));
        let lineage = &row["lineage"];
        let partition = lineage["partition"].as_u64().unwrap_or(0) as u32;
        let offset = lineage["offset"].as_u64().unwrap_or(0);
        if ordered && let Some(&previous) = last.get(&partition) {
            assert!(
                offset > previous,
                "line {n}: partition {partition} offset {offset} after {previous}: out of order"
            );
        }
        last.insert(partition, offset);
        assert!(
            rows.insert((partition, offset), row).is_none(),
            "line {n}: partition {partition} offset {offset} written twice"
        );
    }
    rows
}

/// What json.calculator answers for the generator's record at (partition, offset): the
/// generator asks `op(a, b)` with op cycling add, sub, mul, div, a = offset % 1000 + 1
/// and b = (partition + offset) % 9 + 1.
fn expected_result(partition: u32, offset: u64) -> f64 {
    let a = (offset % 1000 + 1) as f64;
    let b = ((u64::from(partition) + offset) % 9 + 1) as f64;
    match offset % 4 {
        0 => a + b,
        1 => a - b,
        2 => a * b,
        _ => a / b,
    }
}

fn check_results(rows: &BTreeMap<(u32, u64), Value>) {
    for (&(partition, offset), row) in rows {
        let got = row["payload"]["result"]
            .as_f64()
            .unwrap_or_else(|| panic!("partition {partition} offset {offset}: no result in {row}"));
        let want = expected_result(partition, offset);
        assert!(
            (got - want).abs() < 1e-9,
            "partition {partition} offset {offset}: result {got}, want {want}"
        );
    }
}

fn every_offset(partitions: u32, count: u64) -> Vec<(u32, u64)> {
    (0..partitions)
        .flat_map(|p| (0..count).map(move |o| (p, o)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_thousand_records_reach_the_file_once_each_in_offset_order() {
    let stack = Stack::start(1, 1).await;
    let out = stack.path("results.jsonl");
    apply(
        &stack,
        calculator_spec(
            "hundred-k",
            json!({ "count": 50_000, "partitions": 2 }),
            &out,
            None,
        ),
    )
    .await;
    let done = stack
        .wait_committed(
            "hundred-k",
            &BTreeMap::from([(0, 50_000), (1, 50_000)]),
            Duration::from_secs(240),
        )
        .await;
    let rows = read_output(&out);
    assert_eq!(
        rows.keys().copied().collect::<Vec<_>>(),
        every_offset(2, 50_000),
        "every record once"
    );
    check_results(&rows);
    let stats = done.stats.unwrap_or_default();
    assert_eq!(stats.results_delivered, 100_000, "{stats:?}");
    assert_eq!(stats.records_committed, 100_000, "{stats:?}");
    assert_eq!(stats.dead_lettered, 0, "{stats:?}");
    assert_eq!(
        done.runner.map(|r| r.runner_id).as_deref(),
        Some("runner-0")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_record_is_dead_lettered_with_its_offset_and_the_rest_flows() {
    let stack = Stack::start(1, 1).await;
    let (out, dead) = (stack.path("ok.jsonl"), stack.path("dead.jsonl"));
    apply(
        &stack,
        calculator_spec(
            "poison",
            json!({ "count": 1000, "poison_every": 100 }),
            &out,
            Some(&dead),
        ),
    )
    .await;
    let done = stack
        .wait_committed(
            "poison",
            &BTreeMap::from([(0, 1000)]),
            Duration::from_secs(60),
        )
        .await;
    let rows = read_output(&out);
    let poisoned: Vec<u64> = (0..1000).filter(|o| (o + 1) % 100 == 0).collect();
    let want: Vec<(u32, u64)> = (0..1000)
        .filter(|o| !poisoned.contains(o))
        .map(|o| (0, o))
        .collect();
    assert_eq!(rows.keys().copied().collect::<Vec<_>>(), want);
    check_results(&rows);
    let dead_rows = read_output(&dead);
    assert_eq!(
        dead_rows.keys().map(|&(_, o)| o).collect::<Vec<_>>(),
        poisoned,
        "each poison record dead-lettered once, by offset"
    );
    for (&(_, offset), row) in &dead_rows {
        let error = row["error"].to_string();
        assert!(
            error.contains("DIVISION_BY_ZERO")
                && error.contains("calc")
                && error.contains(&format!("offset {offset}")),
            "the dead letter names the reason, node and offset: {row}"
        );
        assert_eq!(
            row["payload"]["poison"],
            json!(true),
            "the record itself: {row}"
        );
    }
    let stats = done.stats.unwrap_or_default();
    assert_eq!(stats.dead_lettered, 10, "{stats:?}");
    assert_eq!(stats.results_delivered, 990, "{stats:?}");
}

/// Deliveries the file consumer acknowledged without writing (already written).
async fn duplicates_deduped(metrics_port: u16) -> u64 {
    let text = flowplane_tests::process::scrape(metrics_port)
        .await
        .expect("the connector host serves /metrics");
    let samples = flowplane_tests::process::samples(&text);
    samples
        .iter()
        .filter(|(name, _)| name.starts_with("flowplane_connector_duplicates_total"))
        .map(|(_, v)| *v as u64)
        .sum()
}

/// The committed offsets of `name` summed over its partitions.
async fn committed_total(stack: &Stack, name: &str) -> u64 {
    stack
        .get(name)
        .await
        .map_or(0, |p| p.offsets.values().sum())
}

/// Waits until `name` has committed `more` records past `from`, and returns the total.
async fn wait_progress(stack: &Stack, name: &str, from: u64, more: u64, what: &str) -> u64 {
    wait_long(
        &format!("{more} more records committed after {what}"),
        Duration::from_secs(90),
        || async {
            let total = committed_total(stack, name).await;
            (total >= from + more).then_some(total)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_the_runner_consumer_processor_and_control_plane_loses_nothing() {
    const PER_PARTITION: u64 = 6000;
    const WINDOW: u64 = 256;
    let mut stack = Stack::start(2, 2).await;
    let out = stack.path("survived.jsonl");
    // 2 x 400 records/s: the stream runs long enough to kill four things in it.
    let mut spec = calculator_spec(
        "survivor",
        json!({ "count": PER_PARTITION, "partitions": 2, "rate": 400 }),
        &out,
        None,
    );
    spec.delivery = Some(DeliveryPolicy {
        max_attempts: 3,
        retry_backoff: None,
        max_in_flight: WINDOW as u32,
    });
    apply(&stack, spec).await;
    let name = "survivor";

    // 1. The runner holding the claim.
    let at = wait_progress(&stack, name, 0, 500, "the start").await;
    let holder = stack
        .get(name)
        .await
        .and_then(|p| p.runner)
        .map(|r| r.runner_id)
        .expect("a runner holds the claim");
    let index = stack
        .pipelines
        .iter()
        .position(|(_, id, _)| *id == holder)
        .unwrap();
    Stack::kill(&mut stack.pipelines[index].2);
    let at = wait_progress(&stack, name, at, 500, "the runner was killed").await;
    let taken_by = stack
        .get(name)
        .await
        .and_then(|p| p.runner)
        .map(|r| r.runner_id)
        .unwrap();
    assert_ne!(taken_by, holder, "the other replica took the pipeline over");

    // 2. The consumer (its host serves the source too), restarted on the same port. What
    // it deduped so far is read first: its counter dies with it.
    let deduped_before = duplicates_deduped(stack.connect_metrics).await;
    Stack::kill(&mut stack.connect);
    stack.start_connect();
    let at = wait_progress(&stack, name, at, 500, "the consumer was killed").await;

    // 3. A processor: the node fails over to the other host.
    Stack::kill(&mut stack.processors[0].2);
    let at = wait_progress(&stack, name, at, 500, "a processor was killed").await;

    // 4. The control plane, restarted on its data directory: the pipeline, its offsets
    // and its claim are still there, and every component registers again.
    Stack::kill(&mut stack.control_plane);
    stack.start_control_plane().await;
    wait_progress(&stack, name, at, 500, "the control plane was killed").await;

    let done = stack
        .wait_committed(
            name,
            &BTreeMap::from([(0, PER_PARTITION), (1, PER_PARTITION)]),
            Duration::from_secs(120),
        )
        .await;
    let rows = read_output(&out);
    assert_eq!(
        rows.keys().copied().collect::<Vec<_>>(),
        every_offset(2, PER_PARTITION),
        "the deduped output is the input, exactly"
    );
    check_results(&rows);
    // Duplicates before dedupe: results delivered again after a kill, which the file
    // consumer acknowledged without writing. At most a window per kill.
    let duplicates = deduped_before + duplicates_deduped(stack.connect_metrics).await;
    let stats = done.stats.unwrap_or_default();
    println!(
        "standing kill -9: {duplicates} duplicate deliveries deduped by the consumer over 4 kills (window {WINDOW}); {} records read as counted by commits, {} in the source",
        stats.records_read,
        2 * PER_PARTITION
    );
    assert!(
        duplicates <= 4 * WINDOW,
        "duplicates ({duplicates}) exceed the in-flight window at each of 4 kills"
    );
}

/// A consumer written on the SDK's trait, as a user would: it keeps every delivery it
/// sees (no dedupe, so replays show), and stalls on its first one when told to.
struct Recorder {
    seen: std::sync::Arc<std::sync::Mutex<Vec<(u32, u64)>>>,
    stall: Option<Duration>,
    stalled: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

struct RecorderSink {
    seen: std::sync::Arc<std::sync::Mutex<Vec<(u32, u64)>>>,
    stall: Option<Duration>,
    stalled: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

#[flowplane_sdk::async_trait]
impl flowplane_sdk::Consumer for Recorder {
    fn spec(&self) -> flowplane_sdk::ConnectorSpec {
        flowplane_sdk::ConnectorSpec::new("recorder", "keeps every delivery, for tests")
            .data_types([flowplane_proto::data::v1::DataTypeHint::Any])
    }

    async fn open(
        &self,
        _open: flowplane_sdk::ConsumerOpen<'_>,
    ) -> Result<Box<dyn flowplane_sdk::ConsumerSink>, flowplane_sdk::ConnectorError> {
        Ok(Box::new(RecorderSink {
            seen: self.seen.clone(),
            stall: self.stall,
            stalled: self.stalled.clone(),
        }))
    }
}

#[flowplane_sdk::async_trait]
impl flowplane_sdk::ConsumerSink for RecorderSink {
    async fn consume(&mut self, delivery: flowplane_sdk::Delivery) -> flowplane_sdk::Ack {
        if let Some(stall) = self.stall
            && !self.stalled.swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            tokio::time::sleep(stall).await;
        }
        self.seen
            .lock()
            .unwrap()
            .push((delivery.lineage.partition, delivery.lineage.offset));
        flowplane_sdk::Ack::Success
    }
}

/// Serves a [`Recorder`] registered with the stack's control plane; stops on drop.
struct RecorderHost {
    seen: std::sync::Arc<std::sync::Mutex<Vec<(u32, u64)>>>,
    stop: tokio_util::sync::CancellationToken,
}

impl Drop for RecorderHost {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl RecorderHost {
    async fn start(stack: &Stack, stall: Option<Duration>) -> Self {
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let builder =
            flowplane_sdk::ConnectorHostBuilder::new("recorder-host").consumer(Recorder {
                seen: seen.clone(),
                stall,
                stalled: Default::default(),
            });
        let config = flowplane_sdk::HostConfig {
            control_plane: Some(url(stack.cp_port)),
            id: Some("recorder-host".into()),
            ..Default::default()
        };
        let stop = tokio_util::sync::CancellationToken::new();
        let listener = flowplane_test_support::local_listener().await;
        let shutdown = stop.clone().cancelled_owned();
        tokio::spawn(async move {
            flowplane_sdk::run_connectors(builder, config, listener, shutdown)
                .await
                .expect("recorder host runs");
        });
        Self { seen, stop }
    }

    fn seen(&self) -> Vec<(u32, u64)> {
        self.seen.lock().unwrap().clone()
    }
}

fn recorder_spec(name: &str, source: Value, max_in_flight: u32) -> StandingPipelineSpec {
    StandingPipelineSpec {
        consumers: vec![ConsumerBinding {
            output: "results".into(),
            consumer: Some(connector("recorder", json!({}))),
        }],
        delivery: Some(DeliveryPolicy {
            max_attempts: 3,
            retry_backoff: None,
            max_in_flight,
        }),
        ..calculator_spec(name, source, Path::new("unused"), None)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_stalls_for_30s_throttles_the_source_and_loses_nothing() {
    const WINDOW: u64 = 64;
    let stack = Stack::start(1, 1).await;
    let recorder = RecorderHost::start(&stack, Some(Duration::from_secs(30))).await;
    // An endless source, as fast as credit allows.
    apply(
        &stack,
        recorder_spec("stalled", json!({ "count": 0 }), WINDOW as u32),
    )
    .await;
    // The first delivery stalls; meanwhile the source may not run ahead of the window.
    wait_long("the first delivery", Duration::from_secs(30), || async {
        stack
            .get("stalled")
            .await
            .and_then(|p| p.stats)
            .is_some_and(|s| s.records_read > 0)
            .then_some(())
    })
    .await;
    let mut most_read = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while tokio::time::Instant::now() < deadline {
        if let Some(p) = stack.get("stalled").await {
            let stats = p.stats.unwrap_or_default();
            most_read = most_read.max(stats.records_read);
            assert!(
                stats.records_read <= WINDOW,
                "{} records read while the consumer stalls: more than the window of {WINDOW}",
                stats.records_read
            );
            assert!(
                recorder.seen().is_empty(),
                "nothing delivered during the stall"
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(most_read > 0);
    // After the stall everything flows, in order, nothing missing.
    let offsets = wait_long(
        "deliveries after the stall",
        Duration::from_secs(60),
        || async {
            let seen = recorder.seen();
            (seen.len() >= 1000).then_some(seen)
        },
    )
    .await;
    let first: Vec<u64> = offsets.iter().take(1000).map(|&(_, o)| o).collect();
    assert_eq!(
        first,
        (0..1000).collect::<Vec<_>>(),
        "no record lost or reordered"
    );
    stack
        .client()
        .await
        .pause_pipeline(PausePipelineRequest {
            name: "stalled".into(),
        })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_reset_and_resume_replay_from_the_reset_point() {
    let stack = Stack::start(1, 1).await;
    let recorder = RecorderHost::start(&stack, None).await;
    apply(
        &stack,
        recorder_spec("replayed", json!({ "count": 500 }), 64),
    )
    .await;
    stack
        .wait_committed(
            "replayed",
            &BTreeMap::from([(0, 500)]),
            Duration::from_secs(60),
        )
        .await;
    let mut client = stack.client().await;
    client
        .pause_pipeline(PausePipelineRequest {
            name: "replayed".into(),
        })
        .await
        .unwrap();
    let before = recorder.seen();
    assert_eq!(
        before.iter().map(|&(_, o)| o).collect::<Vec<_>>(),
        (0..500).collect::<Vec<_>>()
    );
    client
        .reset_pipeline_offsets(ResetPipelineOffsetsRequest {
            name: "replayed".into(),
            offsets: HashMap::from([(0, 200)]),
            earliest: false,
        })
        .await
        .unwrap();
    // Nothing runs while paused.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        recorder.seen().len(),
        500,
        "a paused pipeline delivers nothing"
    );
    client
        .resume_pipeline(ResumePipelineRequest {
            name: "replayed".into(),
        })
        .await
        .unwrap();
    stack
        .wait_committed(
            "replayed",
            &BTreeMap::from([(0, 500)]),
            Duration::from_secs(60),
        )
        .await;
    let replay: Vec<u64> = wait_long("the replay", Duration::from_secs(30), || async {
        let seen = recorder.seen();
        (seen.len() >= 800).then(|| seen[500..].iter().map(|&(_, o)| o).collect())
    })
    .await;
    assert_eq!(
        replay,
        (200..500).collect::<Vec<_>>(),
        "replayed from 200, once"
    );
}

/// A consumer that asks for a retry of one offset every time and rejects another: the
/// runner retries a bounded number of times, then dead-letters both; the rest is taken.
struct Picky {
    seen: std::sync::Arc<std::sync::Mutex<Vec<(u64, u32)>>>,
}

#[flowplane_sdk::async_trait]
impl flowplane_sdk::Consumer for Picky {
    fn spec(&self) -> flowplane_sdk::ConnectorSpec {
        flowplane_sdk::ConnectorSpec::new("picky", "retries offset 10 forever, rejects offset 20")
            .data_types([flowplane_proto::data::v1::DataTypeHint::Any])
    }

    async fn open(
        &self,
        _open: flowplane_sdk::ConsumerOpen<'_>,
    ) -> Result<Box<dyn flowplane_sdk::ConsumerSink>, flowplane_sdk::ConnectorError> {
        Ok(Box::new(Picky {
            seen: self.seen.clone(),
        }))
    }
}

#[flowplane_sdk::async_trait]
impl flowplane_sdk::ConsumerSink for Picky {
    async fn consume(&mut self, delivery: flowplane_sdk::Delivery) -> flowplane_sdk::Ack {
        let offset = delivery.lineage.offset;
        self.seen.lock().unwrap().push((offset, delivery.attempt));
        match offset {
            10 => flowplane_sdk::Ack::Retry("disk busy".into()),
            20 => flowplane_sdk::Ack::Reject("not valid for this sink".into()),
            _ => flowplane_sdk::Ack::Success,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_are_bounded_then_dead_lettered_and_a_rejected_result_too() {
    let stack = Stack::start(1, 1).await;
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let builder = flowplane_sdk::ConnectorHostBuilder::new("picky-host")
        .consumer(Picky { seen: seen.clone() });
    let config = flowplane_sdk::HostConfig {
        control_plane: Some(url(stack.cp_port)),
        id: Some("picky-host".into()),
        ..Default::default()
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let _stop = stop.clone().drop_guard();
    let listener = flowplane_test_support::local_listener().await;
    tokio::spawn(flowplane_sdk::run_connectors(
        builder,
        config,
        listener,
        stop.cancelled_owned(),
    ));
    let dead = stack.path("dead.jsonl");
    let spec = StandingPipelineSpec {
        consumers: vec![ConsumerBinding {
            output: "results".into(),
            consumer: Some(connector("picky", json!({}))),
        }],
        delivery: Some(DeliveryPolicy {
            max_attempts: 4,
            retry_backoff: Some(prost_types_duration(Duration::from_millis(20))),
            max_in_flight: 16,
        }),
        ..calculator_spec(
            "picky",
            json!({ "count": 100 }),
            Path::new("unused"),
            Some(&dead),
        )
    };
    apply(&stack, spec).await;
    let done = stack
        .wait_committed(
            "picky",
            &BTreeMap::from([(0, 100)]),
            Duration::from_secs(60),
        )
        .await;
    let seen = seen.lock().unwrap().clone();
    let attempts_of = |o: u64| -> Vec<u32> {
        seen.iter()
            .filter(|(s, _)| *s == o)
            .map(|&(_, a)| a)
            .collect()
    };
    assert_eq!(
        attempts_of(10),
        vec![1, 2, 3, 4],
        "tried max_attempts times, no more"
    );
    assert_eq!(attempts_of(20), vec![1], "a rejection is not retried");
    for offset in (0..100).filter(|o| ![10, 20].contains(o)) {
        assert_eq!(attempts_of(offset), vec![1], "offset {offset} taken once");
    }
    let dead_rows = read_unordered(&dead);
    assert_eq!(
        dead_rows.keys().map(|&(_, o)| o).collect::<Vec<_>>(),
        vec![10, 20]
    );
    let retried = dead_rows[&(0, 10)]["error"].to_string();
    assert!(
        retried.contains("RETRIES_EXHAUSTED")
            && retried.contains("offset 10")
            && retried.contains("disk busy"),
        "{retried}"
    );
    let rejected = dead_rows[&(0, 20)]["error"].to_string();
    assert!(
        rejected.contains("REJECTED")
            && rejected.contains("offset 20")
            && rejected.contains("picky-host"),
        "{rejected}"
    );
    let stats = done.stats.unwrap_or_default();
    assert_eq!(stats.retries, 3, "{stats:?}");
    assert_eq!(stats.dead_lettered, 2, "{stats:?}");
    assert_eq!(stats.results_delivered, 98, "{stats:?}");
}

fn prost_types_duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration::try_from(d).unwrap()
}

/// A processor that takes its stream down (a panic) on a poison record: the session
/// cannot answer it anywhere, so no node error ever names it.
struct Fragile;

impl flowplane_sdk::Processor for Fragile {
    fn capability() -> flowplane_sdk::Capability {
        flowplane_sdk::Capability::new("test.fragile", "passes json through; panics on poison")
            .input(
                "json",
                [flowplane_proto::data::v1::DataTypeHint::Json],
                "anything",
            )
            .output(
                "json",
                [flowplane_proto::data::v1::DataTypeHint::Json],
                "the input",
            )
            .stateless()
    }

    fn create(_: &flowplane_sdk::Params) -> Result<Self, flowplane_sdk::ParamError> {
        Ok(Self)
    }

    fn process(
        &mut self,
        input: flowplane_sdk::Input<'_>,
    ) -> Result<Vec<flowplane_sdk::Output>, flowplane_sdk::ProcessError> {
        if let flowplane_proto::data::v1::data_buffer::Payload::Json(json) = &input.payload {
            assert!(!json.json.contains("\"poison\":true"), "poison record");
        }
        Ok(vec![flowplane_sdk::Output::new("json", input.payload)])
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_that_takes_the_processor_down_is_dead_lettered_and_the_rest_flows() {
    let stack = Stack::start(0, 1).await;
    let stop = tokio_util::sync::CancellationToken::new();
    let _stop = stop.clone().drop_guard();
    let listener = flowplane_test_support::local_listener().await;
    let config = flowplane_sdk::HostConfig {
        control_plane: Some(url(stack.cp_port)),
        id: Some("fragile-host".into()),
        ..Default::default()
    };
    tokio::spawn(flowplane_sdk::run(
        flowplane_sdk::ProcessorHost::builder("fragile").processor::<Fragile>(),
        config,
        listener,
        stop.cancelled_owned(),
    ));
    let (out, dead) = (stack.path("out.jsonl"), stack.path("dead.jsonl"));
    let spec = StandingPipelineSpec {
        manifest: Some(flowplane_tests::data::manifest(
            "name: fragile\nnodes:\n  - { id: weak, processor: test.fragile }\ninputs:\n  - { name: requests, targets: [{ node: weak }] }\noutputs:\n  - { name: results, source: { node: weak } }\n",
        )),
        ..calculator_spec(
            "fragile",
            json!({ "count": 60, "poison_every": 25 }),
            &out,
            Some(&dead),
        )
    };
    apply(&stack, spec).await;
    let done = stack
        .wait_committed(
            "fragile",
            &BTreeMap::from([(0, 60)]),
            Duration::from_secs(90),
        )
        .await;
    let rows = read_output(&out);
    let want: Vec<(u32, u64)> = (0..60)
        .filter(|o| ![24, 49].contains(o))
        .map(|o| (0, o))
        .collect();
    assert_eq!(
        rows.keys().copied().collect::<Vec<_>>(),
        want,
        "the rest flowed, once each, in order"
    );
    let dead_rows = read_unordered(&dead);
    assert_eq!(
        dead_rows.keys().map(|&(_, o)| o).collect::<Vec<_>>(),
        vec![24, 49],
        "each record that took the processor down, dead-lettered"
    );
    for (&(_, offset), row) in &dead_rows {
        let error = row["error"].to_string();
        assert!(
            error.contains("POISON_RECORD") && error.contains(&format!("offset {offset}")),
            "{row}"
        );
        assert_eq!(
            row["payload"]["poison"],
            json!(true),
            "the record itself: {row}"
        );
    }
    assert_eq!(done.stats.unwrap_or_default().dead_lettered, 2);
}
