//! The autoscaling signal: `flowplane_processor_in_flight_chunks` counts the chunks a host
//! has read and not yet answered, over all its streams, is exported at 0 before the first
//! chunk, and comes back to 0 once every chunk is answered. Its own test binary, because
//! the Prometheus recorder is one per process and the gauge one per host.

mod common;

use std::{
    sync::{Condvar, Mutex},
    time::Duration,
};

use common::{Server, text};
use flowplane_sdk::{
    Capability, Input, Output, ParamError, Params, ProcessError, Processor, ProcessorHost,
    client::chunk, proto::data::v1::DataTypeHint,
};
use flowplane_test_support::wait_until;

/// Closed until the test opens it: a processor call waits here, so its chunk stays in flight.
static GATE: (Mutex<bool>, Condvar) = (Mutex::new(false), Condvar::new());

/// How long a gated call waits at most, so a failing test cannot hang the blocking pool.
const GATE_LIMIT: Duration = Duration::from_secs(30);

struct Gated;

impl Processor for Gated {
    fn capability() -> Capability {
        Capability::new("test.gated", "answers once the test opens the gate")
            .input("text", [DataTypeHint::Text], "text")
            .output("text", [DataTypeHint::Text], "the same text")
            .stateless()
    }
    fn create(_: &Params) -> Result<Self, ParamError> {
        Ok(Self)
    }
    fn process(&mut self, input: Input<'_>) -> Result<Vec<Output>, ProcessError> {
        let (open, opened) = &GATE;
        let guard = open.lock().unwrap();
        let (guard, _) = opened
            .wait_timeout_while(guard, GATE_LIMIT, |open| !*open)
            .unwrap();
        drop(guard);
        Ok(vec![Output::new("text", input.payload)])
    }
}

fn in_flight() -> Option<f64> {
    let text = flowplane_telemetry::metrics::render().unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix("flowplane_processor_in_flight_chunks "))
        .map(|value| value.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_chunks_rise_with_unanswered_chunks_and_fall_to_zero() {
    flowplane_telemetry::metrics::install().unwrap();
    let host = ProcessorHost::builder("gated-host")
        .processor::<Gated>()
        .max_concurrent_calls(4)
        .build()
        .unwrap();
    let server = Server::start(host, Duration::from_secs(5)).await;
    wait_until("the gauge to be exported before any chunk", || async {
        in_flight() == Some(0.0)
    })
    .await;
    let exposition = flowplane_telemetry::metrics::render().unwrap();
    assert!(
        exposition.contains("# HELP flowplane_processor_in_flight_chunks "),
        "{exposition}"
    );

    let mut streams = Vec::new();
    for _ in 0..2 {
        let stream = server.open("test.gated", serde_json::json!({})).await;
        stream.send(chunk(1, "text", text("held"))).await.unwrap();
        streams.push(stream);
    }
    // One chunk waits in each stream's call: two in flight, over two streams.
    wait_until("two chunks in flight", || async {
        in_flight() == Some(2.0)
    })
    .await;

    {
        let (open, opened) = &GATE;
        *open.lock().unwrap() = true;
        opened.notify_all();
    }
    for stream in &mut streams {
        let result = tokio::time::timeout(Duration::from_secs(20), stream.result())
            .await
            .expect("the held chunk's result within 20s")
            .unwrap()
            .expect("a result");
        assert_eq!((result.input_sequence, result.error), (1, None));
    }
    wait_until("no chunk in flight", || async { in_flight() == Some(0.0) }).await;
    drop(streams);
    server.shutdown().await;
}
