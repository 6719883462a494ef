//! Load on one client channel: 1,000 concurrent sessions share ONE HTTP/2 connection to
//! an in-process pipeline with a real processor host; each queues its init, 20 chunks
//! and CLOSE at once (so chunks wait unread while the session opens its node, the case
//! that fed h2's small-frame budget) and must get its 20 results in order. This checks
//! correctness under load, not speed: the figures are in the bench (B8).

mod common;

use std::time::Duration;

use common::{Pipeline, client};
use flowplane_pipeline::ServiceLimits;
use flowplane_proto::streaming::v1::{
    ControlCommand, PipelineManifest, StreamPipelineRequest, StreamPipelineResponse,
    stream_pipeline_response::Response,
};
use flowplane_tests::{control_plane, data::*, processor};
use tonic::transport::Channel;

const SESSIONS: usize = 1_000;
const CHUNKS: u64 = 20;
/// A hang is a failure: generous for a debug build on a shared 2-core machine.
const LIMIT: Duration = Duration::from_secs(240);

const PASS: &str = r#"
nodes: [{ id: copy, processor: passthrough }]
inputs: [{ name: in, targets: [{ node: copy }] }]
outputs: [{ name: out, source: { node: copy } }]
"#;

/// One session with everything queued up front; `Err` describes what went wrong.
async fn session(channel: Channel, manifest: PipelineManifest, id: usize) -> Result<(), String> {
    let mut requests: Vec<StreamPipelineRequest> = vec![init(manifest)];
    requests.extend((0..CHUNKS).map(|i| send(chunk(i, "in", text(&format!("s{id}c{i}"))))));
    requests.push(control(ControlCommand::Close));
    let mut responses = client(channel)
        .stream_pipeline(tokio_stream::iter(requests))
        .await
        .map_err(|s| format!("session {id}: open: {s:?}"))?
        .into_inner();
    let mut ready = false;
    let mut sequences = Vec::new();
    let mut closed = false;
    loop {
        match responses.message().await {
            Ok(Some(StreamPipelineResponse { response })) => match response {
                Some(Response::Ready(_)) => ready = true,
                Some(Response::Result(r)) => {
                    let got = text_of(r.buffer.as_ref().unwrap().payload.as_ref().unwrap());
                    if got != format!("s{id}c{}", r.input_sequence) {
                        return Err(format!("session {id}: wrong result {got:?}"));
                    }
                    sequences.push(r.input_sequence);
                }
                Some(Response::Error(e)) => return Err(format!("session {id}: error {e:?}")),
                Some(Response::Closed(_)) => closed = true,
                _ => {}
            },
            Ok(None) => break,
            Err(status) => return Err(format!("session {id}: {status:?}")),
        }
    }
    if !ready || !closed || sequences != (0..CHUNKS).collect::<Vec<_>>() {
        return Err(format!(
            "session {id}: ready {ready}, closed {closed}, results {sequences:?}"
        ));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_sessions_on_one_channel_each_get_twenty_ordered_results() {
    tokio::time::timeout(LIMIT, async {
        let cp = control_plane(Duration::from_secs(3)).await;
        let _host = processor(&cp.url(), "proc-0").await;
        let pipe = Pipeline::start(&cp.url(), ServiceLimits::default()).await;
        let manifest = manifest(PASS);
        pipe.wait_until_runnable(&manifest).await;
        let channel = pipe.channel().await;
        let tasks: Vec<_> = (0..SESSIONS)
            .map(|id| tokio::spawn(session(channel.clone(), manifest.clone(), id)))
            .collect();
        let mut failures = Vec::new();
        for task in tasks {
            if let Err(failure) = task.await.expect("session task") {
                failures.push(failure);
            }
        }
        assert!(
            failures.is_empty(),
            "{} of {SESSIONS} sessions failed; first: {}",
            failures.len(),
            failures[0]
        );
        pipe.wait_until_idle(Duration::from_secs(10), "after the load")
            .await;
    })
    .await
    .expect("1,000 sessions finished within the bound");
}
