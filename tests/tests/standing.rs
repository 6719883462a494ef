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
        wait_long("the control plane", Duration::from_secs(20), || async move {
            Channel::from_shared(url(port))
                .unwrap()
                .connect()
                .await
                .ok()
        })
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
        wait_long("a control-plane connection", Duration::from_secs(20), || async move {
            StandingPipelineServiceClient::connect(url(port)).await.ok()
        })
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
    async fn wait_committed(&self, name: &str, want: &BTreeMap<u32, u64>, limit: Duration) -> StandingPipeline {
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
        params: Some(match flowplane_proto::json_to_value(&params).kind {
            Some(prost_types::value::Kind::StructValue(s)) => s,
            _ => panic!("params must be an object"),
        }),
    }
}

/// generator -> json.calculator -> file consumer (and an optional dead-letter file).
fn calculator_spec(name: &str, source: Value, out: &Path, dead_letter: Option<&Path>) -> StandingPipelineSpec {
    StandingPipelineSpec {
        name: name.into(),
        source: Some(connector("generator", source)),
        source_input: String::new(),
        manifest: Some(flowplane_tests::data::manifest(
            "name: calc\nnodes:\n  - { id: calc, processor: json.calculator }\ninputs:\n  - { name: requests, targets: [{ node: calc }] }\noutputs:\n  - { name: results, source: { node: calc } }\n",
        )),
        consumers: vec![ConsumerBinding {
            output: "results".into(),
            consumer: Some(connector("file", json!({ "path": out.display().to_string() }))),
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
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut rows = BTreeMap::new();
    let mut last: HashMap<u32, u64> = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let row: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("line {n}: {e}: {line}"));
        let lineage = &row["lineage"];
        let partition = lineage["partition"].as_u64().unwrap_or(0) as u32;
        let offset = lineage["offset"].as_u64().unwrap_or(0);
        if let Some(&previous) = last.get(&partition) {
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

fn line_count(path: &Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |t| t.lines().count())
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
        .wait_committed("poison", &BTreeMap::from([(0, 1000)]), Duration::from_secs(60))
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
            error.contains("DIVISION_BY_ZERO") && error.contains("calc") && error.contains(&format!("offset {offset}")),
            "the dead letter names the reason, node and offset: {row}"
        );
        assert_eq!(row["payload"]["poison"], json!(true), "the record itself: {row}");
    }
    let stats = done.stats.unwrap_or_default();
    assert_eq!(stats.dead_lettered, 10, "{stats:?}");
    assert_eq!(stats.results_delivered, 990, "{stats:?}");
}
