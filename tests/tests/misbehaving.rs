//! A processor that misbehaves (never answers, never reads, never sends ready, answers
//! the wrong sequence or twice, aborts, vanishes, amplifies, burns CPU) must cost the
//! pipeline one session at most: the session ends within the node timeout with a status
//! naming the node and sequence (or moves to a healthy instance), the client never sees a
//! wrong or duplicated result, other sessions keep working, and the pipeline's open
//! sessions return to zero. A client that cancels is released within a second whatever
//! the processor does. Each test is bounded, so a hang fails instead of sticking.

mod common;

use std::time::Duration;

use common::*;
use flowplane_proto::streaming::v1::{ControlCommand, PipelineManifest, StreamPipelineRequest};
use flowplane_test_support::{
    fake_processor::{FakeConfig, FakeProcessor, Mode},
    wait_for, wait_until,
};
use flowplane_tests::{
    Running, control_plane,
    data::*,
    session::{Outcome, Session, assert_complete_in_order, assert_results_are_echoes},
};

/// Fails the test, instead of hanging it, past [`TEST_LIMIT`].
async fn bounded(test: impl Future<Output = ()>) {
    tokio::time::timeout(TEST_LIMIT, test)
        .await
        .expect("the test finished within its 30 s bound");
}

/// A control plane, one misbehaving fake, one healthy fake and a pipeline that sees both.
struct Rig {
    _control_plane: Running,
    bad: FakeProcessor,
    _good: FakeProcessor,
    pipe: Pipeline,
    bad_manifest: PipelineManifest,
    good_manifest: PipelineManifest,
}

async fn rig(mode: Mode) -> Rig {
    let cp = control_plane(Duration::from_secs(3)).await;
    let bad = fake(&cp.url(), "bad", mode).await;
    let good = fake(&cp.url(), "good", Mode::Healthy).await;
    let pipe = Pipeline::start(&cp.url(), limits()).await;
    let bad_manifest = one_node(&bad.processor);
    let good_manifest = one_node(&good.processor);
    pipe.wait_until_runnable(&bad_manifest).await;
    pipe.wait_until_runnable(&good_manifest).await;
    Rig {
        _control_plane: cp,
        bad,
        _good: good,
        pipe,
        bad_manifest,
        good_manifest,
    }
}

impl Rig {
    /// Runs a session against the misbehaving node: `requests` then CLOSE; while it is
    /// stuck, a healthy session on the same pipeline must run to completion; then the bad
    /// session must end within the node timeout (plus slack) and leave nothing open.
    async fn misbehave(&self, requests: Vec<StreamPipelineRequest>) -> Outcome {
        let mut client = self.pipe.client().await;
        let mut session = Session::open(&mut client, init(self.bad_manifest.clone()))
            .await
            .expect("the misbehaving node sends ready");
        for request in requests {
            session.send(request).await;
        }
        session.send(control(ControlCommand::Close)).await;
        session.finish_sending();
        self.healthy_neighbour_completes().await;
        let outcome = tokio::time::timeout(NODE_TIMEOUT + SLACK, session.read_to_end())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "the session did not end within node_timeout + slack ({:?}): the pipeline waits for the processor forever",
                    NODE_TIMEOUT + SLACK
                )
            });
        self.healthy_neighbour_completes().await;
        self.pipe
            .wait_until_idle(SLACK, "after the misbehaving session ended")
            .await;
        outcome
    }

    async fn healthy_neighbour_completes(&self) {
        let mut client = self.pipe.client().await;
        let outcome =
            tokio::time::timeout(SLACK, full_session(&mut client, &self.good_manifest, 50))
                .await
                .expect("a healthy session beside the misbehaving one finishes")
                .expect("a healthy session beside the misbehaving one opens");
        assert_complete_in_order(&outcome, 50);
    }
}

fn text_chunks(n: u64) -> Vec<StreamPipelineRequest> {
    (0..n).map(text_chunk).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_that_never_answers_ends_the_session_naming_node_and_sequence() {
    bounded(async {
        let rig = rig(Mode::NeverAnswer).await;
        let outcome = rig.misbehave(text_chunks(3)).await;
        assert_ended_naming_node(&outcome);
        assert!(outcome.results.is_empty(), "{:?}", outcome.results);
        assert_eq!(rig.bad.counters().chunks_seen(), 3);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_that_stops_reading_ends_the_session_naming_node_and_sequence() {
    bounded(async {
        let rig = rig(Mode::NeverRead).await;
        // 4 MiB in all, past the 1 MiB stream window: the pipeline's sends stop moving.
        let big = "x".repeat(512 * 1024);
        let requests = (0..8).map(|i| send(chunk(i, "in", text(&big)))).collect();
        let outcome = rig.misbehave(requests).await;
        assert_ended_naming_node(&outcome);
        assert!(outcome.results.is_empty());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_that_never_sends_ready_fails_the_open_naming_the_node() {
    bounded(async {
        let rig = rig(Mode::NeverReady).await;
        let mut client = rig.pipe.client().await;
        let opened = tokio::time::timeout(
            NODE_TIMEOUT + SLACK,
            Session::open(&mut client, init(rig.bad_manifest.clone())),
        )
        .await
        .expect("the open ends within the ready deadline (node_timeout + slack): the pipeline waits for ready forever");
        let status = match opened {
            Ok(_) => panic!("a node that never sends ready cannot open"),
            Err(status) => status,
        };
        assert!(status.message().contains(NODE), "{status:?}");
        rig.healthy_neighbour_completes().await;
        rig.pipe.wait_until_idle(SLACK, "after the failed open").await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wrong_input_sequence_ends_the_session_and_is_never_delivered() {
    bounded(async {
        let rig = rig(Mode::WrongSequence).await;
        let outcome = rig.misbehave(text_chunks(5)).await;
        assert_ended_naming_node(&outcome);
        assert_results_are_echoes(&outcome);
        assert!(outcome.results.is_empty(), "{:?}", outcome.results);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_answer_sent_twice_ends_the_session_and_is_delivered_once() {
    bounded(async {
        let rig = rig(Mode::AnswerTwice).await;
        let outcome = rig.misbehave(text_chunks(5)).await;
        assert_ended_naming_node(&outcome);
        assert_results_are_echoes(&outcome);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_aborted_stream_ends_the_session_naming_node_and_sequence() {
    bounded(async {
        let rig = rig(Mode::Abort).await;
        let outcome = rig.misbehave(text_chunks(5)).await;
        let status = assert_ended_naming_node(&outcome);
        assert_eq!(status.code(), tonic::Code::Internal, "{status:?}");
        assert_results_are_echoes(&outcome);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_amplifying_node_cannot_push_an_oversized_result_through() {
    bounded(async {
        let rig = rig(Mode::Amplify(200)).await;
        // 64 KiB x 200 = 12.5 MiB, over the 8 MiB message limit of every hop.
        let payload = "a".repeat(64 * 1024);
        let outcome = rig
            .misbehave(vec![send(chunk(0, "in", text(&payload)))])
            .await;
        assert_ended_naming_node(&outcome);
        assert!(outcome.results.is_empty());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_burning_cpu_past_the_node_timeout_ends_only_its_session() {
    bounded(async {
        let rig = rig(Mode::BurnCpu(NODE_TIMEOUT + Duration::from_secs(1))).await;
        let outcome = rig.misbehave(text_chunks(3)).await;
        assert_ended_naming_node(&outcome);
        assert_results_are_echoes(&outcome);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_vanishing_instance_fails_over_to_a_healthy_one_and_loses_nothing() {
    bounded(async {
        let cp = control_plane(Duration::from_secs(3)).await;
        let flaky =
            fake_with(FakeConfig::new(cp.url(), "vanishing", Mode::Vanish).processor("fake.flaky"))
                .await;
        let pipe = Pipeline::start(&cp.url(), limits()).await;
        let manifest = one_node("fake.flaky");
        pipe.wait_until_runnable(&manifest).await;
        let mut client = pipe.client().await;
        let mut session = Session::open(&mut client, init(manifest.clone()))
            .await
            .unwrap();
        assert_eq!(session.ready.nodes[0].instance_id, "vanishing");
        let spare =
            fake_with(FakeConfig::new(cp.url(), "spare", Mode::Healthy).processor("fake.flaky"))
                .await;
        // The vanishing instance carries our session, so least-loaded picking tries the
        // spare as soon as the pipeline's view has it.
        let probe_client = pipe.client().await;
        wait_for("the pipeline to place a node on the spare", || {
            let mut client = probe_client.clone();
            let manifest = manifest.clone();
            async move {
                let probe = Session::open(&mut client, init(manifest)).await.ok()?;
                (probe.ready.nodes[0].instance_id == "spare").then_some(())
            }
        })
        .await;
        for i in 0..20 {
            session.send(text_chunk(i)).await;
        }
        session.send(control(ControlCommand::Close)).await;
        session.finish_sending();
        let outcome = tokio::time::timeout(NODE_TIMEOUT + SLACK, session.read_to_end())
            .await
            .expect("the session ends");
        assert_complete_in_order(&outcome, 20);
        assert!(spare.counters().chunks_seen() >= 19, "the spare took over");
        drop(flaky);
        pipe.wait_until_idle(SLACK, "after the failover").await;
    })
    .await;
}

/// Opens a session on `mode`, sends a few chunks, drops the client's side of it, and
/// checks the pipeline releases the session within a second and the processor's stream
/// is released too.
async fn cancel_mid_session(mode: Mode) {
    let rig = rig(mode).await;
    let mut client = rig.pipe.client().await;
    let session = Session::open(&mut client, init(rig.bad_manifest.clone()))
        .await
        .unwrap();
    for i in 0..3 {
        session.send(text_chunk(i)).await;
    }
    if mode != Mode::NeverRead {
        let counters = rig.bad.counters();
        wait_until("the processor to see the chunks", || async {
            counters.chunks_seen() == 3
        })
        .await;
    }
    assert_eq!(rig.pipe.service.active_sessions(), 1);
    drop(session);
    rig.pipe
        .wait_until_idle(RELEASE_WITHIN, "a cancelled session")
        .await;
    let counters = rig.bad.counters();
    wait_until("the processor's stream to be released", || async {
        counters.streams_active() == 0
    })
    .await;
    rig.healthy_neighbour_completes().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_cancelling_while_the_node_never_answers_is_released_within_a_second() {
    bounded(cancel_mid_session(Mode::NeverAnswer)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_cancelling_while_the_node_never_reads_is_released_within_a_second() {
    bounded(cancel_mid_session(Mode::NeverRead)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_cancelling_while_the_node_burns_cpu_is_released_within_a_second() {
    bounded(cancel_mid_session(Mode::BurnCpu(Duration::from_millis(
        300,
    ))))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_cancelling_while_the_node_never_sends_ready_is_released_within_a_second() {
    bounded(async {
        let rig = rig(Mode::NeverReady).await;
        let mut client = rig.pipe.client().await;
        let manifest = rig.bad_manifest.clone();
        let opening = tokio::spawn(async move {
            let _ = Session::open(&mut client, init(manifest)).await;
        });
        let counters = rig.bad.counters();
        wait_until("the pipeline to open the node's stream", || async {
            counters.streams_opened() == 1
        })
        .await;
        assert_eq!(rig.pipe.service.active_sessions(), 1);
        opening.abort();
        rig.pipe
            .wait_until_idle(RELEASE_WITHIN, "a session cancelled while its node opens")
            .await;
        wait_until("the processor's stream to be released", || async {
            counters.streams_active() == 0
        })
        .await;
        rig.healthy_neighbour_completes().await;
    })
    .await;
}
