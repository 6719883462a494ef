//! The session protocol under clients that misbehave or go away: a chunk after CLOSE,
//! repeated sequences, a client that cancels, one that stops reading, a draining
//! service and an ExecutePipeline whose answer would not fit. Each ends with its precise
//! code and standard details, never OK, and the session is released.

use std::time::Duration;

use flowplane_proto::streaming::v1::{ControlCommand, ExecutePipelineRequest};
use flowplane_test_support::wait_until;
use flowplane_tests::{
    Platform,
    data::*,
    session::{Outcome, Session},
};
use tonic_types::StatusExt;

const UPPER: &str = r#"
nodes: [{ id: up, processor: text.transform, params: { mode: upper } }]
inputs: [{ name: text, targets: [{ node: up }] }]
outputs: [{ name: out, source: { node: up } }]
"#;

const TWICE: &str = r#"
nodes:
  - { id: left, processor: passthrough }
  - { id: right, processor: passthrough }
inputs: [{ name: bytes, targets: [{ node: left }, { node: right }] }]
outputs:
  - { name: l, source: { node: left } }
  - { name: r, source: { node: right } }
"#;

async fn sessions_drop_to_zero(platform: &Platform, probe: &flowplane_pipeline::ServiceProbe) {
    let _ = platform;
    wait_until("the pipeline to release every session", || async {
        probe.active_sessions() == 0
    })
    .await;
}

/// One processor host and a pipeline whose service the returned probe looks into.
async fn probed_platform() -> (Platform, flowplane_pipeline::ServiceProbe) {
    let probe = flowplane_pipeline::ServiceProbe::default();
    let platform = Platform::start_with(1, |mut c| {
        c.probe = probe.clone();
        c
    })
    .await;
    (platform, probe)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_after_close_is_failed_precondition_naming_its_sequence() {
    let platform = Platform::start(1).await;
    let m = manifest(UPPER);
    platform.wait_until_runnable(&m).await;
    let mut client = platform.pipeline_client().await;
    let mut session = Session::open(&mut client, init(m)).await.unwrap();
    session.send(send(chunk(1, "text", text("a")))).await;
    session.send(control(ControlCommand::Close)).await;
    let mut outcome = Outcome::default();
    while !outcome.closed {
        assert!(
            !session.read_one(&mut outcome).await,
            "ended before closed: {outcome:?}"
        );
    }
    session.send(send(chunk(2, "text", text("late")))).await;
    let outcome = session.read_to_end().await;
    let status = outcome.status.expect("a late chunk never ends with OK");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    assert!(
        status
            .message()
            .contains("chunk sequence 2 arrived after close"),
        "{status:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_sequence_is_invalid_argument_with_standard_details() {
    let platform = Platform::start(1).await;
    let m = manifest(UPPER);
    platform.wait_until_runnable(&m).await;
    let mut client = platform.pipeline_client().await;
    let session = Session::open(&mut client, init(m)).await.unwrap();
    session.send(send(chunk(5, "text", text("a")))).await;
    session.send(send(chunk(5, "text", text("b")))).await;
    let outcome = session.read_to_end().await;
    assert!(
        outcome.results.len() <= 1,
        "sequence 5 answered once at most"
    );
    let status = outcome.status.expect("ends with an error");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("sequence 5"), "{status:?}");
    let details = status
        .check_error_details()
        .expect("a google.rpc.Status envelope");
    assert_eq!(
        details.error_info().expect("ErrorInfo").reason,
        "SEQUENCE_NOT_INCREASING"
    );
    assert_eq!(
        details.bad_request().expect("BadRequest").field_violations[0].field,
        "chunk.sequence"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_cancels_releases_its_session_within_a_second() {
    let (platform, probe) = probed_platform().await;
    let m = manifest(UPPER);
    platform.wait_until_runnable(&m).await;
    let mut client = platform.pipeline_client().await;
    let session = Session::open(&mut client, init(m)).await.unwrap();
    for s in 0..10 {
        session.send(send(chunk(s, "text", text("x")))).await;
    }
    assert_eq!(probe.active_sessions(), 1);
    drop(session);
    tokio::time::timeout(
        Duration::from_secs(1),
        sessions_drop_to_zero(&platform, &probe),
    )
    .await
    .expect("a cancelled session is released within a second");
}

/// `closed` in the response queue is not delivered: a client that resets its stream
/// while `closed` still waits behind HTTP/2 flow control ends CANCELLED, never OK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_resets_before_taking_closed_ends_cancelled_not_ok() {
    let (platform, probe) = probed_platform().await;
    let m = manifest(UPPER);
    platform.wait_until_runnable(&m).await;
    let mut client = platform.pipeline_client().await;
    let mut session = Session::open(&mut client, init(m)).await.unwrap();
    // 40 results of 64 KiB: more than the 1 MiB stream window and the transport's
    // buffer take, fewer than the response queue holds, so `closed` gets queued.
    let big = "x".repeat(64 * 1024);
    for s in 0..40 {
        session.send(send(chunk(s, "text", text(&big)))).await;
    }
    session.send(control(ControlCommand::Close)).await;
    session.finish_sending();
    wait_until("the session to queue closed", || async {
        probe.sessions_awaiting_delivery() == 1
    })
    .await;
    drop(session);
    sessions_drop_to_zero(&platform, &probe).await;
    assert_eq!(probe.sessions_ended(tonic::Code::Ok), 0);
    assert_eq!(probe.sessions_ended(tonic::Code::Cancelled), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_ended_after_the_idle_timeout() {
    let probe = flowplane_pipeline::ServiceProbe::default();
    let platform = Platform::start_with(1, |mut c| {
        c.probe = probe.clone();
        c.limits.session.idle_timeout = Duration::from_secs(1);
        c
    })
    .await;
    let m = manifest(TWICE);
    platform.wait_until_runnable(&m).await;
    let mut client = platform.pipeline_client().await;
    let session = Session::open(&mut client, init(m)).await.unwrap();
    // Far more output than the response queue and the HTTP/2 windows hold, never read.
    let payload = vec![7u8; 256 * 1024];
    let sender = tokio::spawn(async move {
        for s in 0..400 {
            if tokio::time::timeout(
                Duration::from_secs(5),
                session.send(send(chunk(s, "bytes", binary(&payload)))),
            )
            .await
            .is_err()
            {
                break;
            }
        }
        session
    });
    wait_until("the stalled session to end", || async {
        probe.active_sessions() == 0
    })
    .await;
    assert_eq!(probe.budget_used(), 0, "its memory is released");
    sender.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_refuses_new_sessions_and_finishes_open_ones() {
    let platform = Platform::start_with(1, |mut c| {
        c.grace_period = Duration::from_secs(20);
        c
    })
    .await;
    let m = manifest(UPPER);
    platform.wait_until_runnable(&m).await;
    let mut client = platform.pipeline_client().await;
    let mut open = Session::open(&mut client, init(m.clone())).await.unwrap();
    platform.pipeline.begin_stop();
    let refused = flowplane_test_support::wait_for("a draining refusal", || {
        let mut client = client.clone();
        let m = m.clone();
        async move {
            match Session::open(&mut client, init(m)).await {
                Err(status) if status.code() == tonic::Code::Unavailable => Some(status),
                _ => None,
            }
        }
    })
    .await;
    assert!(refused.message().contains("draining"), "{refused:?}");
    assert_eq!(
        refused.get_details_error_info().map(|i| i.reason),
        Some("DRAINING".into())
    );
    // The session that was open before the drain still runs to the end.
    open.send(send(chunk(1, "text", text("still here")))).await;
    open.send(control(ControlCommand::Close)).await;
    open.finish_sending();
    let outcome = open.read_to_end().await;
    assert!(outcome.status.is_none(), "{:?}", outcome.status);
    assert!(outcome.closed);
    assert_eq!(outcome.texts(), ["STILL HERE"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn execute_pipeline_answers_over_the_message_limit_are_resource_exhausted() {
    let platform = Platform::start(1).await;
    let m = manifest(TWICE);
    platform.wait_until_runnable(&m).await;
    let mut client = platform.pipeline_client().await;
    // 4.5 MiB in, 9 MiB out: more than one response message may carry.
    let inputs = (0..3)
        .map(|s| chunk(s, "bytes", binary(&vec![1u8; 1536 * 1024])))
        .collect();
    let status = client
        .execute_pipeline(ExecutePipelineRequest {
            manifest: Some(m.clone()),
            inputs,
        })
        .await
        .expect_err("the answer cannot fit in one message");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("max_message_bytes"), "{status:?}");
    // The service goes on.
    let small = client
        .execute_pipeline(ExecutePipelineRequest {
            manifest: Some(m),
            inputs: vec![chunk(0, "bytes", binary(b"ok"))],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(small.results.len(), 2);
}
