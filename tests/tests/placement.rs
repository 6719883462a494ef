//! Co-located placement: nodes placed `local` run on the pipeline service's embedded
//! processor host (in memory, no socket), `auto` ones there when it hosts the processor,
//! `remote` ones on processor hosts found through the control plane, all in one session
//! with the same order, checks and errors. A placement the service cannot honour is
//! refused naming the node and the field.

use flowplane_proto::streaming::v1::{ControlCommand, ValidatePipelineRequest};
use flowplane_tests::{
    Platform,
    data::*,
    session::{Session, assert_one_result_each_in_order},
};

/// `upper` local, `reverse` remote, `copy` auto (passthrough is not hosted locally here).
const MIXED: &str = r#"
name: mixed-placement
nodes:
  - { id: upper, processor: text.transform, params: { mode: upper }, placement: local }
  - { id: reverse, processor: text.transform, params: { mode: reverse } }
  - { id: copy, processor: passthrough, placement: auto }
edges:
  - { from_node: upper, to_node: reverse }
  - { from_node: reverse, to_node: copy }
inputs:
  - { name: text, targets: [{ node: upper }] }
outputs:
  - { name: out, source: { node: copy } }
"#;

/// A one-node pipeline `in -> <node> -> out`; `node` is the node's YAML flow mapping.
fn one_node(id: &str, node: &str) -> flowplane_proto::streaming::v1::PipelineManifest {
    manifest(&format!(
        "name: {id}-pipeline\nnodes:\n  - {node}\ninputs:\n  - {{ name: in, targets: [{{ node: {id} }}] }}\noutputs:\n  - {{ name: out, source: {{ node: {id} }} }}\n"
    ))
}

fn with_local(
    names: &[&str],
) -> impl FnOnce(flowplane_pipeline::Config) -> flowplane_pipeline::Config {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    move |mut config| {
        config.local_processors = names;
        config
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_remote_and_auto_nodes_run_in_one_session_in_order() {
    let platform = Platform::start_with(1, with_local(&["text.transform"])).await;
    let m = manifest(MIXED);
    platform.wait_until_runnable(&m).await;
    let mut client = platform.pipeline_client().await;
    let mut session = Session::open(&mut client, init(m)).await.unwrap();
    let placed: Vec<(&str, &str, &str)> = session
        .ready
        .nodes
        .iter()
        .map(|n| {
            (
                n.node_id.as_str(),
                n.instance_id.as_str(),
                n.endpoint.as_str(),
            )
        })
        .collect();
    assert!(
        placed.contains(&("upper", "local", "in-process")),
        "{placed:?}"
    );
    for remote in ["reverse", "copy"] {
        let (_, instance, endpoint) = placed.iter().find(|p| p.0 == remote).unwrap();
        assert_eq!(
            *instance, "proc-0",
            "{remote} runs on the remote host: {placed:?}"
        );
        assert_ne!(*endpoint, "in-process");
    }
    let n = 300u64;
    for i in 0..n {
        session
            .send(send(chunk(i, "text", text(&format!("ab{i}")))))
            .await;
    }
    session.send(control(ControlCommand::Close)).await;
    session.finish_sending();
    let outcome = session.read_to_end().await;
    assert_one_result_each_in_order(&outcome, n);
    let texts = outcome.texts();
    for (i, t) in texts.iter().enumerate() {
        let want: String = format!("AB{i}").chars().rev().collect();
        assert_eq!(*t, want, "result {i}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_node_runs_with_no_processor_host_and_keeps_the_hosts_checks() {
    // No remote host at all: everything the session needs is in the pipeline process.
    let platform = Platform::start_with(0, with_local(&["all"])).await;
    let m = one_node(
        "upper",
        "{ id: upper, processor: text.transform, params: { mode: upper }, placement: local }",
    );
    platform.wait_until_runnable(&m).await;
    let mut client = platform.pipeline_client().await;
    let mut session = Session::open(&mut client, init(m)).await.unwrap();
    assert_eq!(session.ready.nodes[0].instance_id, "local");
    session.send(send(chunk(0, "in", text("quiet")))).await;
    // The embedded host checks types exactly as a remote one: binary into a text port.
    session
        .send(send(chunk(1, "in", binary(b"\x00\x01"))))
        .await;
    session.send(send(chunk(2, "in", text("loud")))).await;
    session.send(control(ControlCommand::Close)).await;
    session.finish_sending();
    let outcome = session.read_to_end().await;
    assert!(outcome.status.is_none(), "{:?}", outcome.status);
    assert_eq!(outcome.texts(), ["QUIET", "LOUD"]);
    assert_eq!(outcome.errors.len(), 1, "{:?}", outcome.errors);
    assert_eq!(outcome.errors[0].sequence, Some(1));
    assert_eq!(outcome.errors[0].reason, "TYPE_MISMATCH");
    assert_eq!(outcome.errors[0].node_id, "upper");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_placement_the_service_cannot_honour_is_refused_naming_node_and_field() {
    let platform = Platform::start_with(1, with_local(&["text.transform"])).await;
    let mut client = platform.pipeline_client().await;
    let wanted_local = one_node(
        "copy",
        "{ id: copy, processor: passthrough, placement: local }",
    );
    // ValidatePipeline and session start say the same.
    let problems = client
        .validate_pipeline(ValidatePipelineRequest {
            manifest: Some(wanted_local.clone()),
        })
        .await
        .unwrap()
        .into_inner()
        .problems;
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].reason, "LOCAL_PLACEMENT_UNAVAILABLE");
    assert_eq!(problems[0].field, "nodes[0].placement");
    assert_eq!(problems[0].node_id, "copy");
    assert!(
        problems[0].message.contains("text.transform"),
        "{}",
        problems[0].message
    );
    let refused = Session::open(&mut client, init(wanted_local))
        .await
        .err()
        .unwrap();
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    assert!(
        refused.message().contains("placement local"),
        "{}",
        refused.message()
    );

    // A placement number this version does not know is the manifest's fault.
    let mut unknown = one_node("copy", "{ id: copy, processor: passthrough }");
    unknown.nodes[0].placement = 9;
    let refused = Session::open(&mut client, init(unknown))
        .await
        .err()
        .unwrap();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(
        refused.message().contains("placement 9"),
        "{}",
        refused.message()
    );

    // Params are checked against the embedded host's declaration for a local node.
    let bad_param = one_node(
        "t",
        "{ id: t, processor: text.transform, params: { mode: shout }, placement: local }",
    );
    let refused = Session::open(&mut client, init(bad_param))
        .await
        .err()
        .unwrap();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("shout"), "{}", refused.message());
}

#[test]
fn an_unknown_local_processor_names_the_flag() {
    let message = flowplane_processors::local_host(&["audio.gian".into()], "--local-processors")
        .unwrap_err()
        .to_string();
    assert!(message.contains("--local-processors"), "{message}");
    assert!(message.contains("audio.gian"), "{message}");
    assert!(message.contains("audio.gain"), "{message}");
}
