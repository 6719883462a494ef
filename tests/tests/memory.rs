//! The pipeline's memory stays bounded while a processor amplifies: 200 sessions stream
//! through a processor that answers every chunk with 100 times its bytes, into the real
//! pipeline binary run with a small memory budget. The budget must come under pressure
//! (readers waited) and the process's peak RSS must stay within the documented bound.

use std::time::Duration;

use flowplane_proto::{
    data::v1::{BinaryData, DataTypeHint, data_buffer::Payload},
    streaming::v1::{
        ControlCommand, streaming_pipeline_service_client::StreamingPipelineServiceClient,
    },
};
use flowplane_sdk::{
    Capability, Input, Output, ParamError, Params, ProcessError, Processor, ProcessorHost,
    RegistrationConfig, ServeOptions,
};
use flowplane_test_support::{local_listener, wait_for};
use flowplane_tests::{
    data::*,
    process::{free_port, samples, scrape, start, value},
    session::Session,
};

const AMPLIFY: usize = 100;
const SESSIONS: usize = 200;
const CHUNKS: u64 = 40;
const CHUNK_BYTES: usize = 2 * 1024;
const BUDGET_MIB: usize = 16;

/// Answers every chunk with `AMPLIFY` times its bytes.
struct Amplify;

impl Processor for Amplify {
    fn capability() -> Capability {
        Capability::new("test.amplify", "answers with 100 times the input")
            .input("in", [DataTypeHint::Binary], "bytes")
            .output("out", [DataTypeHint::Binary], "the bytes, 100 times")
            .stateless()
    }

    fn create(_: &Params) -> Result<Self, ParamError> {
        Ok(Self)
    }

    fn process(&mut self, input: Input<'_>) -> Result<Vec<Output>, ProcessError> {
        let Payload::Binary(b) = input.payload else {
            return Err(ProcessError::internal("TYPE", "binary only"));
        };
        Ok(vec![Output::new(
            "out",
            Payload::Binary(BinaryData {
                data: b.data.repeat(AMPLIFY).into(),
                ..Default::default()
            }),
        )])
    }
}

/// Peak resident set of a process, in bytes (Linux `VmHWM`).
fn peak_rss(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: usize = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// The value of `series` (no labels) on the metrics endpoint at `port`.
async fn metric(port: u16, series: &str) -> Option<f64> {
    value(&samples(&scrape(port).await?), series, &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rss_stays_bounded_while_a_processor_amplifies_100x_across_200_sessions() {
    let control_plane = flowplane_tests::control_plane(Duration::from_secs(3)).await;
    let host = ProcessorHost::builder("amplifier")
        .processor::<Amplify>()
        .build()
        .unwrap();
    let listener = local_listener().await;
    let mut registration = RegistrationConfig::new(control_plane.url());
    registration.processor_id = Some("amp-0".into());
    let stop = tokio_util::sync::CancellationToken::new();
    let serving = tokio::spawn(flowplane_sdk::serve(
        host,
        ServeOptions {
            registration: Some(registration),
            ..Default::default()
        },
        listener,
        stop.clone().cancelled_owned(),
    ));

    let port = free_port();
    let metrics_port = free_port();
    let pipeline = start(
        "flowplane-pipeline",
        &[
            "--listen".to_string(),
            format!("127.0.0.1:{port}"),
            "--metrics-listen".to_string(),
            format!("127.0.0.1:{metrics_port}"),
            "--control-plane".to_string(),
            control_plane.url(),
            "--memory-budget-mib".to_string(),
            BUDGET_MIB.to_string(),
            // This test is about memory, not deadlines: 200 sessions opening at once on
            // a loaded 2-core machine may take longer than the default to get `ready`.
            "--node-timeout".to_string(),
            "60s".to_string(),
        ],
    );
    let pid = pipeline.0.id();
    let m = manifest(
        r#"
nodes: [{ id: amp, processor: test.amplify }]
inputs: [{ name: bytes, targets: [{ node: amp }] }]
outputs: [{ name: out, source: { node: amp } }]
"#,
    );
    let client = wait_for("the pipeline to run test.amplify", || {
        let m = m.clone();
        async move {
            let mut client =
                StreamingPipelineServiceClient::connect(format!("http://127.0.0.1:{port}"))
                    .await
                    .ok()?
                    .max_decoding_message_size(flowplane_grpc::MAX_MESSAGE_BYTES);
            let problems = client
                .validate_pipeline(flowplane_proto::streaming::v1::ValidatePipelineRequest {
                    manifest: Some(m),
                })
                .await
                .ok()?
                .into_inner()
                .problems;
            problems.is_empty().then_some(client)
        }
    })
    .await;
    let baseline = peak_rss(pid);

    let payload = vec![0xabu8; CHUNK_BYTES];
    // Clients read nothing until the pipeline's budget is full (or 30 s passed), so
    // results pile up in the service, which is what the budget must bound.
    let (go_tx, go) = tokio::sync::watch::channel(false);
    let sessions: Vec<_> = (0..SESSIONS)
        .map(|_| {
            let mut client = client.clone();
            let m = m.clone();
            let payload = payload.clone();
            let mut go = go.clone();
            tokio::spawn(async move {
                let mut session = Session::open(&mut client, init(m)).await.expect("open");
                for s in 0..CHUNKS {
                    session
                        .send(send(chunk(s, "bytes", binary(&payload))))
                        .await;
                }
                session.send(control(ControlCommand::Close)).await;
                session.finish_sending();
                let _ = go.wait_for(|go| *go).await;
                session.read_to_end().await
            })
        })
        .collect();
    let limit = (BUDGET_MIB * 1024 * 1024) as f64;
    let filled = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if metric(metrics_port, "flowplane_pipeline_memory_budget_used_bytes")
                .await
                .is_some_and(|used| used >= limit)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .is_ok();
    go_tx.send_replace(true);
    let outcomes = tokio::time::timeout(
        Duration::from_secs(240),
        futures::future::join_all(sessions),
    )
    .await
    .expect("every session finishes");
    for outcome in outcomes {
        let outcome = outcome.unwrap();
        assert!(outcome.status.is_none(), "{:?}", outcome.status);
        assert_eq!(outcome.results.len(), CHUNKS as usize);
        assert!(outcome.results.iter().all(|r| {
            matches!(&r.buffer.as_ref().unwrap().payload, Some(Payload::Binary(b)) if b.data.len() == CHUNK_BYTES * AMPLIFY)
        }));
    }
    let waits = metric(metrics_port, "flowplane_pipeline_memory_budget_waits_total")
        .await
        .unwrap_or(0.0);
    let peak = peak_rss(pid);
    // The documented bound (services/pipeline/README.md), term by term:
    let mib = 1024 * 1024;
    let budget = BUDGET_MIB * mib;
    // one message past the budget check per reader: a client stream and a node stream
    // per session;
    let past_the_check = 2 * SESSIONS * (CHUNK_BYTES * AMPLIFY + 1024);
    // HTTP/2 receive windows: unread data per connection (one client connection, one to
    // the processor host);
    let receive_windows = 2 * flowplane_grpc::server::CONNECTION_WINDOW as usize;
    // HTTP/2 send buffers: hyper buffers up to 400 KiB per response stream;
    let send_buffers = SESSIONS * 400 * 1024;
    // and the process itself (what it used before any session), doubled for allocator
    // slack, plus 64 MiB of headroom for a loaded machine.
    let process = 2 * baseline + 64 * mib;
    let bound = budget + past_the_check + receive_windows + send_buffers + process;
    let total_out = SESSIONS * CHUNKS as usize * CHUNK_BYTES * AMPLIFY;
    eprintln!(
        "pipeline peak RSS {} MiB (baseline {} MiB, bound {} MiB) for {} MiB streamed out; {waits} budget waits",
        peak >> 20,
        baseline >> 20,
        bound >> 20,
        total_out >> 20
    );
    assert!(
        filled && waits > 0.0,
        "the budget never filled: the test put no pressure on it"
    );
    assert!(peak <= bound, "peak RSS {peak} over the bound {bound}");
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(20), serving).await;
}
