//! End-to-end pipeline tests: a real control plane, two processor hosts and the
//! pipeline service, all over gRPC on 127.0.0.1, with exact expected outputs.

use flowplane_proto::{
    data::v1::data_buffer::Payload,
    streaming::v1::{ControlCommand, ExecutePipelineRequest, ValidatePipelineRequest},
};
use flowplane_tests::{
    Platform,
    data::*,
    session::{Outcome, Session},
};
use serde_json::json;

const TEXT_CHAIN: &str = r#"
name: text-chain
nodes:
  - { id: upper, processor: text.transform, params: { mode: upper } }
  - { id: reverse, processor: text.transform, params: { mode: reverse } }
  - { id: copy, processor: passthrough }
edges:
  - { from_node: upper, to_node: reverse }
  - { from_node: reverse, to_node: copy }
inputs:
  - { name: text, targets: [{ node: upper }] }
outputs:
  - { name: out, source: { node: copy } }
"#;

fn payload(result: &flowplane_proto::streaming::v1::ChunkResult) -> &Payload {
    result
        .buffer
        .as_ref()
        .and_then(|b| b.payload.as_ref())
        .expect("result carries a payload")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_chunks_cross_three_nodes_complete_and_in_order() {
    let platform = Platform::start(2).await;
    let m = manifest(TEXT_CHAIN);
    platform.wait_until_runnable(&m).await;
    let client = platform.pipeline_client().await;
    // Nodes are spread over both hosts once the pipeline's view has both healthy.
    let mut session = flowplane_test_support::wait_for("a session placed on both hosts", || {
        let mut client = client.clone();
        let m = m.clone();
        async move {
            let session = Session::open(&mut client, init(m)).await.unwrap();
            let hosts: std::collections::BTreeSet<_> = session
                .ready
                .nodes
                .iter()
                .map(|n| n.instance_id.clone())
                .collect();
            (hosts.len() == 2).then_some(session)
        }
    })
    .await;

    let sender = async {
        for i in 0..1000u64 {
            session_send(&session, i).await;
        }
        session.send(control(ControlCommand::Close)).await;
    };
    async fn session_send(session: &Session, i: u64) {
        session
            .send(send(chunk(i, "text", text(&format!("chunk-{i}")))))
            .await;
    }
    sender.await;
    session.finish_sending();
    let outcome = session.read_to_end().await;
    assert!(outcome.status.is_none(), "{:?}", outcome.status);
    assert!(outcome.closed);
    assert!(outcome.errors.is_empty(), "{:?}", outcome.errors);
    assert_eq!(outcome.results.len(), 1000);
    for (i, result) in outcome.results.iter().enumerate() {
        assert_eq!(result.input_sequence, i as u64);
        assert_eq!(result.output, "out");
        let want: String = format!("CHUNK-{i}").chars().rev().collect();
        assert_eq!(text_of(payload(result)), want);
    }
}

/// One session per data type, each with exact expected values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_data_type_through_its_processor() {
    let platform = Platform::start(2).await;
    let client = platform.pipeline_client().await;

    let single = |processor: &str, params: &str| {
        manifest(&format!(
            "nodes: [{{ id: n, processor: {processor}, params: {params} }}]\n\
             inputs: [{{ name: in, targets: [{{ node: n }}] }}]\n\
             outputs: [{{ name: out, source: {{ node: n }} }}]"
        ))
    };
    let run = |m, chunks: Vec<Payload>| {
        let mut client = client.clone();
        let platform = &platform;
        async move {
            platform.wait_until_runnable(&m).await;
            let inputs = chunks
                .into_iter()
                .enumerate()
                .map(|(i, p)| chunk(i as u64, "in", p))
                .collect();
            client
                .execute_pipeline(ExecutePipelineRequest {
                    manifest: Some(m),
                    inputs,
                })
                .await
                .unwrap()
                .into_inner()
        }
    };

    // JSON calculator, with a per-chunk error in the middle.
    let calc = run(
        single("json.calculator", "{}"),
        vec![
            json(json!({"op": "add", "operands": [1, 2, 3.5]})),
            json(json!({"op": "div", "operands": [1, 0]})),
            json(json!({"op": "mul", "operands": [2, -4]})),
        ],
    )
    .await;
    let values: Vec<_> = calc.results.iter().map(|r| json_of(payload(r))).collect();
    assert_eq!(values, [json!({"result": 6.5}), json!({"result": -8})]);
    assert_eq!(calc.errors.len(), 1);
    assert_eq!(calc.errors[0].sequence, Some(1));
    assert_eq!(calc.errors[0].node_id, "n");
    assert_eq!(calc.errors[0].code, tonic::Code::InvalidArgument as i32);
    assert!(
        calc.errors[0].message.contains("zero"),
        "{}",
        calc.errors[0].message
    );

    // Audio gain: +6.0206 dB doubles; I16 clips at the rails.
    let gain = run(
        single("audio.gain", "{ gain_db: 6.020599913279624 }"),
        vec![
            audio_f32(48_000, &[0.25, -0.125, 0.0]),
            audio_i16(48_000, &[20_000, -20_000, 100]),
        ],
    )
    .await;
    let doubled = f32_samples(payload(&gain.results[0]));
    for (got, want) in doubled.iter().zip([0.5f32, -0.25, 0.0]) {
        assert!((got - want).abs() < 1e-6, "{doubled:?}");
    }
    assert_eq!(
        i16_samples(payload(&gain.results[1])),
        [32_767, -32_768, 200]
    );

    // Audio level: a full-scale square wave is 0 dBFS RMS and peak.
    let level = run(
        single("audio.level", "{}"),
        vec![audio_f32(8_000, &[1.0, -1.0, 1.0, -1.0])],
    )
    .await;
    let reading = json_of(payload(&level.results[0]));
    assert_eq!(reading["rms_dbfs"], json!(0.0));
    assert_eq!(reading["peak_dbfs"], json!(0.0));
    assert_eq!(reading["frames"], json!(4));

    // Video grayscale with BT.601 integer weights.
    let gray = run(
        single("video.grayscale", "{}"),
        vec![rgb(3, 1, &[255, 0, 0, 0, 255, 0, 0, 0, 255])],
    )
    .await;
    match payload(&gray.results[0]) {
        Payload::Video(v) => {
            assert_eq!((v.width, v.height), (3, 1));
            assert_eq!(&v.pixels[..], &[76, 150, 29]);
        }
        other => panic!("expected video, got {other:?}"),
    }

    // Tensor normalize: zero mean, unit (population) variance.
    let norm = run(
        single("tensor.normalize", "{}"),
        vec![tensor_f32(&[2, 2], &[1.0, 2.0, 3.0, 4.0])],
    )
    .await;
    let z = f32_samples(payload(&norm.results[0]));
    for (got, want) in z
        .iter()
        .zip([-1.3416408f32, -0.4472136, 0.4472136, 1.3416408])
    {
        assert!((got - want).abs() < 1e-5, "{z:?}");
    }

    // Binary digest.
    let digest = run(single("binary.digest", "{}"), vec![binary(b"abc")]).await;
    assert_eq!(
        text_of(payload(&digest.results[0])),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}

const MIXED: &str = r#"
name: mixed
nodes:
  - { id: gain, processor: audio.gain, params: { gain_db: 0 } }
  - { id: level, processor: audio.level }
  # No ramp: each control shows in full in the next audio chunk (the ramp has its own tests).
  - { id: mix, processor: audio.dynamic_gain, params: { ramp_ms: 0 } }
edges:
  - { from_node: gain, to_node: mix, to_input: audio }
inputs:
  - { name: audio, targets: [{ node: gain }, { node: level }] }
  - { name: control, targets: [{ node: mix, port: control }] }
outputs:
  - { name: mixed, source: { node: mix } }
  - { name: levels, source: { node: level } }
"#;

/// Fan-out (the audio input feeds two nodes) and fan-in (the mixer takes audio from one
/// node and control straight from a pipeline input); the mixer sees its inputs in input
/// order whatever path each took, so the outputs are exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_and_fan_in_with_mixed_types_are_exact_and_ordered() {
    let platform = Platform::start(2).await;
    let m = manifest(MIXED);
    platform.wait_until_runnable(&m).await;
    let mut client = platform.pipeline_client().await;
    let mut inputs = Vec::new();
    let mut seq = 0;
    // audio, control(-6 dB), audio, control(-12 dB), audio ... repeated
    for round in 0..50u64 {
        inputs.push(chunk(seq, "audio", audio_f32(48_000, &[0.5, -0.5])));
        seq += 1;
        let db = if round % 2 == 0 {
            -6.020599913279624
        } else {
            0.0
        };
        inputs.push(chunk(seq, "control", json(json!({ "gain_db": db }))));
        seq += 1;
    }
    let response = client
        .execute_pipeline(ExecutePipelineRequest {
            manifest: Some(m),
            inputs,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(response.errors.is_empty(), "{:?}", response.errors);
    let mixed: Vec<_> = response
        .results
        .iter()
        .filter(|r| r.output == "mixed")
        .collect();
    let levels: Vec<_> = response
        .results
        .iter()
        .filter(|r| r.output == "levels")
        .collect();
    assert_eq!(mixed.len(), 50);
    assert_eq!(levels.len(), 50);
    for (round, result) in mixed.iter().enumerate() {
        assert_eq!(result.input_sequence, 2 * round as u64);
        // Round 0 plays at the initial 0 dB; later rounds at the control sent just before.
        let want = match round {
            0 => 0.5,
            r if (r - 1) % 2 == 0 => 0.25,
            _ => 0.5,
        };
        let samples = f32_samples(payload(result));
        assert!(
            (samples[0] - want).abs() < 1e-6,
            "round {round}: {samples:?}"
        );
    }
    for (round, result) in levels.iter().enumerate() {
        assert_eq!(result.input_sequence, 2 * round as u64);
        let reading = json_of(payload(result));
        let rms = reading["rms_dbfs"].as_f64().unwrap();
        assert!((rms - -6.0206).abs() < 1e-3, "{reading}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_delivers_everything_sent_so_far_then_metrics() {
    let platform = Platform::start(1).await;
    let m = manifest(TEXT_CHAIN);
    platform.wait_until_runnable(&m).await;
    let mut client = platform.pipeline_client().await;
    let mut session = Session::open(&mut client, init(m)).await.unwrap();
    for i in 0..20 {
        session.send(send(chunk(i, "", text("ab")))).await;
    }
    session.send(control(ControlCommand::Flush)).await;
    let mut outcome = Outcome::default();
    session.read(20, &mut outcome).await;
    assert_eq!(outcome.results.len(), 20);
    session.send(control(ControlCommand::Close)).await;
    session.finish_sending();
    let rest = session.read_to_end().await;
    assert!(rest.closed && rest.status.is_none(), "{rest:?}");
    assert!(rest.results.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_pipeline_lists_problems_and_init_rejects_them() {
    let platform = Platform::start(1).await;
    let mut client = platform.pipeline_client().await;
    platform.wait_until_runnable(&manifest(TEXT_CHAIN)).await;
    let bad = manifest(
        r#"
nodes:
  - { id: level, processor: audio.level }
  - { id: up, processor: text.transform, params: { mode: upper } }
  - { id: ghost, processor: no.such.processor }
edges: [{ from_node: level, to_node: up }]
inputs: [{ name: in, targets: [{ node: level }] }]
outputs: [{ name: out, source: { node: up } }]"#,
    );
    let problems = client
        .validate_pipeline(ValidatePipelineRequest {
            manifest: Some(bad.clone()),
        })
        .await
        .unwrap()
        .into_inner()
        .problems;
    let reasons: Vec<&str> = problems.iter().map(|p| p.reason.as_str()).collect();
    assert!(reasons.contains(&"TYPE_MISMATCH"), "{reasons:?}");
    assert!(reasons.contains(&"PROCESSOR_UNAVAILABLE"), "{reasons:?}");
    let status = Session::open(&mut client, init(bad))
        .await
        .err()
        .expect("init fails");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("edges[0]"),
        "{}",
        status.message()
    );
    assert!(
        status.message().contains("no.such.processor"),
        "{}",
        status.message()
    );

    // A param outside the values the processor declares: ValidatePipeline and session
    // start refuse it alike (one validation path), naming node, param and the values,
    // before any processor is opened; the status lists every problem as a field violation.
    let rejected = manifest(
        r#"
nodes:
  - { id: t, processor: text.transform, params: { mode: shout } }
  - { id: t2, processor: text.transform, params: { mdoe: upper } }
edges: [{ from_node: t, to_node: t2 }]
inputs: [{ name: in, targets: [{ node: t }] }]
outputs: [{ name: out, source: { node: t2 } }]"#,
    );
    let problems = client
        .validate_pipeline(ValidatePipelineRequest {
            manifest: Some(rejected.clone()),
        })
        .await
        .unwrap()
        .into_inner()
        .problems;
    let reasons: Vec<&str> = problems.iter().map(|p| p.reason.as_str()).collect();
    assert_eq!(
        reasons,
        ["PARAM_NOT_ALLOWED", "UNKNOWN_PARAM", "MISSING_PARAM"],
        "{problems:?}"
    );
    assert!(
        problems[1].message.ends_with("did you mean \"mode\"?"),
        "{}",
        problems[1].message
    );
    let status = Session::open(&mut client, init(rejected))
        .await
        .err()
        .expect("init fails");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    for needle in [
        "node \"t\"",
        "param \"mode\"",
        "one of \"upper\", \"lower\", \"reverse\"",
        "got \"shout\"",
    ] {
        assert!(
            status.message().contains(needle),
            "{needle}: {}",
            status.message()
        );
    }
    let details = tonic_types::StatusExt::check_error_details(&status).expect("details");
    let fields: Vec<&str> = details
        .bad_request()
        .expect("bad request")
        .field_violations
        .iter()
        .map(|v| v.field.as_str())
        .collect();
    assert_eq!(
        fields,
        [
            "nodes[0].params.mode",
            "nodes[1].params.mdoe",
            "nodes[1].params.mode"
        ]
    );
    assert_eq!(details.error_info().unwrap().reason, "PARAM_NOT_ALLOWED");
}

/// The pipeline keeps its last view of the processors: with the control plane gone, new
/// sessions still start and run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_sessions_start_while_the_control_plane_is_unreachable() {
    let platform = Platform::start(1).await;
    let m = manifest(TEXT_CHAIN);
    platform.wait_until_runnable(&m).await;
    let mut client = platform.pipeline_client().await;
    let Platform {
        control_plane,
        processors: _hosts,
        pipeline: _pipeline,
    } = platform;
    control_plane.stop().await;
    let mut session = Session::open(&mut client, init(m)).await.unwrap();
    session
        .send(send(chunk(0, "text", text("still here"))))
        .await;
    session.send(control(ControlCommand::Close)).await;
    session.finish_sending();
    let outcome = session.read_to_end().await;
    assert!(outcome.status.is_none(), "{:?}", outcome.status);
    assert_eq!(text_of(payload(&outcome.results[0])), "EREH LLITS");
}
