//! Bad input on the stream itself, session limits, auth and the legacy audio message:
//! each case gets its documented code and a message naming the field, input or
//! sequence, and the service serves the next session normally.

use std::time::Duration;

use flowplane_grpc::auth::AttachBearer;
use flowplane_proto::{
    data::v1::DataChunk,
    streaming::v1::{
        AudioChunk, ControlCommand, StreamInit, StreamPipelineRequest,
        stream_pipeline_request::Request,
        streaming_pipeline_service_client::StreamingPipelineServiceClient,
    },
};
use flowplane_tests::{
    Platform,
    data::*,
    pipeline_with,
    session::{Outcome, Session},
};

const UPPER: &str = r#"
nodes: [{ id: up, processor: text.transform, params: { mode: upper } }]
inputs: [{ name: text, targets: [{ node: up }] }]
outputs: [{ name: out, source: { node: up } }]
"#;

/// What a case expects.
enum Expect {
    /// The RPC fails with this code and a message containing the text.
    Status(tonic::Code, &'static str),
    /// A per-chunk error with this code, for this sequence, containing the text; the
    /// session then goes on and closes normally.
    ChunkError(tonic::Code, u64, &'static str),
}

fn raw(request: Request) -> StreamPipelineRequest {
    StreamPipelineRequest {
        request: Some(request),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_stream_input_gets_its_code_and_the_service_goes_on() {
    let platform = Platform::start(1).await;
    let m = manifest(UPPER);
    platform.wait_until_runnable(&m).await;
    let oversized = chunk(
        7,
        "text",
        binary(&vec![0u8; flowplane_grpc::MAX_PAYLOAD_BYTES + 1]),
    );
    let no_payload = DataChunk {
        sequence: 4,
        input: "text".into(),
        ..Default::default()
    };
    let cases: Vec<(&str, Vec<StreamPipelineRequest>, Expect)> = vec![
        (
            "no init",
            vec![send(chunk(0, "text", text("a")))],
            Expect::Status(
                tonic::Code::FailedPrecondition,
                "first message must be init, got chunk",
            ),
        ),
        (
            "init twice",
            vec![init(m.clone()), init(m.clone())],
            Expect::Status(tonic::Code::FailedPrecondition, "init sent twice"),
        ),
        (
            "oversized chunk",
            vec![init(m.clone()), send(oversized)],
            Expect::ChunkError(
                tonic::Code::ResourceExhausted,
                7,
                "over the limit of 4194304 bytes",
            ),
        ),
        (
            "wrong type for an input",
            vec![
                init(m.clone()),
                send(chunk(3, "text", json(serde_json::json!({"a": 1})))),
            ],
            Expect::ChunkError(
                tonic::Code::InvalidArgument,
                3,
                "node \"up\" input \"text\" accepts {text}, got json",
            ),
        ),
        (
            "unknown input name",
            vec![init(m.clone()), send(chunk(5, "txet", text("a")))],
            Expect::ChunkError(tonic::Code::InvalidArgument, 5, "unknown input \"txet\""),
        ),
        (
            "chunk without payload",
            vec![init(m.clone()), send(no_payload)],
            Expect::ChunkError(tonic::Code::InvalidArgument, 4, "chunk.buffer.payload"),
        ),
        (
            "data after close",
            vec![
                init(m.clone()),
                send(chunk(0, "text", text("a"))),
                control(ControlCommand::Close),
                send(chunk(1, "text", text("b"))),
            ],
            Expect::Status(
                tonic::Code::FailedPrecondition,
                "chunk sequence 1 arrived after close",
            ),
        ),
        (
            "unspecified control",
            vec![init(m.clone()), control(ControlCommand::Unspecified)],
            Expect::Status(tonic::Code::InvalidArgument, "control.command"),
        ),
        (
            "empty request",
            vec![init(m.clone()), StreamPipelineRequest { request: None }],
            Expect::Status(tonic::Code::InvalidArgument, "no init, chunk"),
        ),
        (
            "init without a manifest",
            vec![raw(Request::Init(StreamInit::default()))],
            Expect::Status(tonic::Code::InvalidArgument, "no nodes"),
        ),
    ];
    let mut client = platform.pipeline_client().await;
    for (name, requests, expect) in cases {
        let mut requests = requests;
        if matches!(expect, Expect::ChunkError(..)) {
            requests.push(control(ControlCommand::Close));
        }
        let outcome = match client
            .stream_pipeline(futures::stream::iter(requests))
            .await
        {
            Err(status) => Outcome {
                status: Some(status),
                ..Default::default()
            },
            Ok(response) => {
                let mut stream = response.into_inner();
                let mut outcome = Outcome::default();
                loop {
                    match stream.message().await {
                        Ok(Some(m)) => match m.response {
                            Some(flowplane_proto::streaming::v1::stream_pipeline_response::Response::Error(e)) => outcome.errors.push(e),
                            Some(flowplane_proto::streaming::v1::stream_pipeline_response::Response::Closed(_)) => outcome.closed = true,
                            _ => {}
                        },
                        Ok(None) => break,
                        Err(status) => {
                            outcome.status = Some(status);
                            break;
                        }
                    }
                }
                outcome
            }
        };
        match expect {
            Expect::Status(code, text) => {
                let status = outcome
                    .status
                    .unwrap_or_else(|| panic!("{name}: no error status"));
                assert_eq!(status.code(), code, "{name}: {status:?}");
                assert!(
                    status.message().contains(text),
                    "{name}: {:?} lacks {text:?}",
                    status.message()
                );
            }
            Expect::ChunkError(code, sequence, text) => {
                assert!(outcome.status.is_none(), "{name}: {:?}", outcome.status);
                assert!(outcome.closed, "{name}: the session goes on and closes");
                let error = outcome
                    .errors
                    .first()
                    .unwrap_or_else(|| panic!("{name}: no chunk error"));
                assert_eq!(error.code, code as i32, "{name}: {error:?}");
                assert_eq!(error.sequence, Some(sequence), "{name}");
                assert!(
                    error.message.contains(text),
                    "{name}: {:?} lacks {text:?}",
                    error.message
                );
            }
        }
    }
    // The service serves the next session normally.
    let mut session = Session::open(&mut client, init(m)).await.unwrap();
    session.send(send(chunk(0, "text", text("ok")))).await;
    session.send(control(ControlCommand::Close)).await;
    session.finish_sending();
    let outcome = session.read_to_end().await;
    assert_eq!(
        text_of(
            outcome.results[0]
                .buffer
                .as_ref()
                .unwrap()
                .payload
                .as_ref()
                .unwrap()
        ),
        "OK"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_limit_init_deadline_and_idle_timeout() {
    let platform = Platform::start(1).await;
    let m = manifest(UPPER);
    let mut config = flowplane_pipeline::Config::new(platform.control_plane.url());
    config.limits.max_sessions = 1;
    config.limits.init_timeout = Duration::from_millis(300);
    config.limits.session.idle_timeout = Duration::from_millis(300);
    let limited = pipeline_with(config).await;
    let mut client = StreamingPipelineServiceClient::connect(limited.url())
        .await
        .unwrap();
    // Take the only session slot (earlier probes may still be releasing theirs).
    let held = flowplane_test_support::wait_for("the only session slot", || {
        let mut client = client.clone();
        let m = m.clone();
        async move { Session::open(&mut client, init(m)).await.ok() }
    })
    .await;
    let full = Session::open(&mut client, init(m.clone()))
        .await
        .err()
        .expect("limit bites");
    assert_eq!(full.code(), tonic::Code::ResourceExhausted);
    assert!(
        full.message().contains("max_sessions"),
        "{}",
        full.message()
    );
    // The held session goes silent and is ended by the idle timeout.
    let idle = held
        .read_to_end()
        .await
        .status
        .expect("idle session ends with a status");
    assert_eq!(idle.code(), tonic::Code::DeadlineExceeded);
    assert!(
        idle.message().contains("idle_timeout"),
        "{}",
        idle.message()
    );
    // A stream that never sends init is ended by the init deadline.
    let status = flowplane_test_support::wait_for("a slot to free up", || {
        let mut client = client.clone();
        async move {
            let (_tx, rx) = tokio::sync::mpsc::channel::<StreamPipelineRequest>(1);
            let status = client
                .stream_pipeline(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
                .err()?;
            (status.code() != tonic::Code::ResourceExhausted).then_some(status)
        }
    })
    .await;
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    assert!(
        status.message().contains("init_timeout"),
        "{}",
        status.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_rpcs_need_the_token_when_one_is_configured() {
    let platform = Platform::start(1).await;
    let m = manifest(UPPER);
    let mut config = flowplane_pipeline::Config::new(platform.control_plane.url());
    config.auth_token = Some("pipeline-secret".into());
    let guarded = pipeline_with(config).await;
    let channel = flowplane_grpc::client::connect(&guarded.url(), &Default::default())
        .await
        .unwrap();
    let mut anonymous = StreamingPipelineServiceClient::new(channel.clone());
    let status = Session::open(&mut anonymous, init(m.clone()))
        .await
        .err()
        .unwrap();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    let auth = AttachBearer::new(Some("pipeline-secret")).unwrap();
    let mut authed = StreamingPipelineServiceClient::with_interceptor(channel, auth);
    let probe = flowplane_test_support::wait_for("an authorised session", || {
        let mut client = authed.clone();
        let m = m.clone();
        async move {
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            tx.send(init(m)).await.unwrap();
            tx.send(control(ControlCommand::Close)).await.unwrap();
            client
                .stream_pipeline(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
                .ok()
        }
    })
    .await;
    drop(probe);
    let validate = authed
        .validate_pipeline(flowplane_proto::streaming::v1::ValidatePipelineRequest {
            manifest: Some(m),
        })
        .await;
    assert!(validate.is_ok(), "{validate:?}");
}

/// An audio-only client sends the deprecated `audio_chunk`; it is handled exactly as a
/// DataChunk carrying the same samples.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(deprecated)]
async fn legacy_audio_chunks_work_unchanged() {
    let platform = Platform::start(1).await;
    let m = manifest(
        r#"
nodes: [{ id: g, processor: audio.gain, params: { gain_db: 6.020599913279624 } }]
inputs: [{ name: audio, targets: [{ node: g }] }]
outputs: [{ name: out, source: { node: g } }]"#,
    );
    platform.wait_until_runnable(&m).await;
    let mut client = platform.pipeline_client().await;
    let samples = [0.25f32, -0.125, 0.5];
    let bytes: bytes::Bytes = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
    let mut session = Session::open(&mut client, init(m)).await.unwrap();
    session
        .send(raw(Request::AudioChunk(AudioChunk {
            samples: bytes,
            sample_rate: 48_000,
            channels: 1,
            sequence: 0,
        })))
        .await;
    session
        .send(send(chunk(1, "", audio_f32(48_000, &samples))))
        .await;
    session.send(control(ControlCommand::Close)).await;
    session.finish_sending();
    let outcome = session.read_to_end().await;
    assert!(
        outcome.status.is_none() && outcome.errors.is_empty(),
        "{outcome:?}"
    );
    let legacy = outcome.results[0].buffer.clone().unwrap();
    let modern = outcome.results[1].buffer.clone().unwrap();
    assert_eq!(
        legacy, modern,
        "legacy and DataChunk audio give identical results"
    );
    let doubled = f32_samples(legacy.payload.as_ref().unwrap());
    assert!(
        (doubled[0] - 0.5).abs() < 1e-6 && (doubled[2] - 1.0).abs() < 1e-6,
        "{doubled:?}"
    );
}

/// SIGTERM (here: the shutdown future) drains: an open session may finish within the
/// grace period, then it is ended with UNAVAILABLE and the server stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_sessions_finish_then_ends_the_rest() {
    let platform = Platform::start(1).await;
    let m = manifest(UPPER);
    let mut config = flowplane_pipeline::Config::new(platform.control_plane.url());
    config.grace_period = Duration::from_millis(300);
    let pipeline = pipeline_with(config).await;
    let mut client = StreamingPipelineServiceClient::connect(pipeline.url())
        .await
        .unwrap();
    let session = flowplane_test_support::wait_for("a session", || {
        let mut client = client.clone();
        let m = m.clone();
        async move { Session::open(&mut client, init(m)).await.ok() }
    })
    .await;
    session.send(send(chunk(0, "text", text("before")))).await;
    let stopping = tokio::spawn(pipeline.stop());
    let outcome = session.read_to_end().await;
    assert_eq!(
        outcome.results.len(),
        1,
        "work sent before shutdown is delivered"
    );
    let status = outcome
        .status
        .expect("the session is ended after the grace period");
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert!(
        status.message().contains("shutting down"),
        "{}",
        status.message()
    );
    stopping.await.unwrap();
    assert!(
        Session::open(&mut client, init(m)).await.is_err(),
        "the server has stopped"
    );
}
