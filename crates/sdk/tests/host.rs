//! The host over a real `Process` stream on 127.0.0.1: init handling, one result per
//! chunk in order, per-chunk errors with their codes, panics, state and shutdown.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{Server, binary, one, output_text, text};
use flowplane_sdk::{
    Capability, Input, Output, Param, ParamError, Params, ProcessError, Processor, ProcessorHost,
    client::{ProcessStream, chunk, init},
    proto::{
        data::v1::{
            DataTypeHint, JsonData, TensorBuffer, TensorDtype, TextData, data_buffer::Payload,
        },
        processor::v1::{
            GetCapabilitiesRequest, ProcessRequest, ProcessResult, process_request,
            processor_service_client::ProcessorServiceClient,
        },
    },
};
use serde_json::json;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

/// Upper-cases text; counts chunks per stream in the `count` metadata; fails or panics
/// on request.
struct Upper {
    count: u64,
    suffix: String,
}

impl Processor for Upper {
    fn capability() -> Capability {
        Capability::new("test.upper", "upper-cases text")
            .input("text", [DataTypeHint::Text], "text")
            .output("text", [DataTypeHint::Text], "upper-cased text")
            .param(Param::string("suffix", "appended to every output").default(json!("")))
            .param(Param::number("limit", "largest count allowed").default(json!(1000)))
    }

    fn create(params: &Params) -> Result<Self, ParamError> {
        if params.f64("limit")? < 1.0 {
            return Err(ParamError::new("limit", "must be at least 1"));
        }
        Ok(Self {
            count: 0,
            suffix: params.str("suffix")?.to_string(),
        })
    }

    fn process(&mut self, input: Input<'_>) -> Result<Vec<Output>, ProcessError> {
        let Payload::Text(text) = input.payload else {
            unreachable!("the host checks types")
        };
        self.count += 1;
        match text.text.as_str() {
            "fail" => Err(ProcessError::invalid(
                "FAIL_REQUESTED",
                "chunk.buffer.text.text",
                "asked to fail",
            )),
            "panic" => panic!("asked to panic"),
            "undeclared" => Ok(vec![Output::new("nope", Payload::Text(text))]),
            "wrong-type" => Ok(vec![Output::new("text", binary(b"x"))]),
            "nothing" => Ok(vec![]),
            _ => Ok(vec![
                Output::new(
                    "",
                    Payload::Text(TextData {
                        text: format!("{}{}", text.text.to_uppercase(), self.suffix),
                        language: text.language,
                    }),
                )
                .with_metadata("count", self.count.to_string()),
            ]),
        }
    }
}

/// Two inputs: `left` (text) and `right` (anything); echoes to `out`, twice for `right`.
struct Merge;

impl Processor for Merge {
    fn capability() -> Capability {
        Capability::new("test.merge", "echoes two inputs")
            .input("left", [DataTypeHint::Text], "text")
            .input("right", [DataTypeHint::Any], "anything")
            .output("out", [DataTypeHint::Any], "the input")
            .output("copy", [DataTypeHint::Any], "a copy of right inputs")
            .stateless()
    }

    fn create(_params: &Params) -> Result<Self, ParamError> {
        Ok(Self)
    }

    fn process(&mut self, input: Input<'_>) -> Result<Vec<Output>, ProcessError> {
        if input.port == "right" {
            return Ok(vec![
                Output::new("out", input.payload.clone()),
                Output::new("copy", input.payload),
            ]);
        }
        Ok(vec![Output::new("out", input.payload)])
    }
}

/// A host serving `Upper` and `Merge` as "host-1".
async fn start(grace_period: Duration) -> Server {
    let host = ProcessorHost::builder("test-host")
        .host_id("host-1")
        .processor::<Upper>()
        .processor::<Merge>()
        .build()
        .unwrap();
    Server::start(host, grace_period).await
}

/// Opens a stream for node "node-a", checking that the host took it for `processor`.
async fn open(server: &Server, processor: &str, params: serde_json::Value) -> ProcessStream {
    let (stream, ready) = server.try_open(processor, "node-a", params).await.unwrap();
    assert_eq!(ready.processor, processor);
    stream
}

#[tokio::test]
async fn ready_names_the_processor_node_and_host() {
    let server = start(Duration::from_secs(5)).await;
    let (_stream, ready) = server
        .try_open("test.upper", "node-7", serde_json::Value::Null)
        .await
        .unwrap();
    assert_eq!(
        (
            ready.processor.as_str(),
            ready.node_id.as_str(),
            ready.host_id.as_str()
        ),
        ("test.upper", "node-7", "host-1")
    );
}

#[tokio::test]
async fn the_first_message_must_be_init() {
    let server = start(Duration::from_secs(5)).await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(ProcessRequest {
        request: Some(process_request::Request::Chunk(chunk(0, "", text("a")))),
    })
    .await
    .unwrap();
    let mut client = ProcessorServiceClient::new(server.channel().await);
    let outcome = match client.process(ReceiverStream::new(rx)).await {
        Ok(response) => response.into_inner().message().await.map(|_| ()),
        Err(status) => Err(status),
    };
    let status = outcome.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().contains("must be init"), "{status:?}");
}

#[tokio::test]
async fn a_second_init_ends_the_stream() {
    let server = start(Duration::from_secs(5)).await;
    let mut stream = open(&server, "test.upper", json!({})).await;
    stream
        .send_raw(ProcessRequest {
            request: Some(process_request::Request::Init(init(
                "test.upper",
                "",
                json!({}),
            ))),
        })
        .await
        .unwrap();
    assert_eq!(
        stream.result().await.unwrap_err().code(),
        Code::FailedPrecondition
    );
}

#[tokio::test]
async fn unknown_processors_are_not_found_naming_them() {
    let server = start(Duration::from_secs(5)).await;
    let status = server.open_err("no.such", json!({})).await;
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(
        status.message(),
        "unknown processor \"no.such\"; this host serves: test.upper, test.merge"
    );
    let status = server.open_err("", json!({})).await;
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("init.processor"), "{status:?}");
}

#[tokio::test]
async fn bad_params_are_invalid_argument_naming_the_param() {
    let server = start(Duration::from_secs(5)).await;
    for (params, param) in [
        (json!({"sufix": "!"}), "sufix"),
        (json!({"suffix": 3}), "suffix"),
        (json!({"limit": 0}), "limit"),
    ] {
        let status = server.open_err("test.upper", params).await;
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(
            status.message().starts_with(&format!(
                "processor \"test.upper\": invalid param \"{param}\""
            )),
            "{status:?}"
        );
    }
}

#[tokio::test]
async fn every_chunk_gets_exactly_one_result_in_order() {
    let server = start(Duration::from_secs(5)).await;
    let stream = open(&server, "test.upper", json!({"suffix": "!"})).await;
    let (tx, mut rx) = stream.split();
    let tx = tx.unwrap();
    const N: u64 = 300;
    // Send and read at once, as a real client does, so many chunks are in flight.
    let send = async move {
        for i in 0..N {
            let payload = match i % 5 {
                0 => text("fail"),
                1 => binary(b"wrong type"),
                2 => text("nothing"),
                _ => text(&format!("chunk {i}")),
            };
            tx.send(chunk(i * 10, "", payload)).await.unwrap();
        }
    };
    let read = async {
        let mut upper = 0;
        for i in 0..N {
            let result = rx.result().await.unwrap().unwrap();
            assert_eq!(result.input_sequence, i * 10);
            match i % 5 {
                0 => assert_eq!(result.error.as_ref().unwrap().reason, "FAIL_REQUESTED"),
                1 => assert_eq!(result.error.as_ref().unwrap().reason, "TYPE_MISMATCH"),
                2 => assert!(result.outputs.is_empty() && result.error.is_none()),
                _ => {
                    upper += 1;
                    assert_eq!(output_text(&result), format!("CHUNK {i}!"));
                    assert_eq!(result.outputs[0].chunk.as_ref().unwrap().sequence, i * 10);
                }
            }
        }
        upper
    };
    let ((), upper) = tokio::join!(send, read);
    assert_eq!(upper, 120);
    assert!(
        rx.result().await.unwrap().is_none(),
        "the stream ends cleanly once the client closes"
    );
}

#[tokio::test]
async fn chunk_errors_carry_code_reason_field_node_and_sequence() {
    let server = start(Duration::from_secs(5)).await;
    let mut upper = open(&server, "test.upper", json!({})).await;

    let failed = one(&mut upper, 4, "", text("fail")).await;
    let error = failed.error.unwrap();
    assert_eq!(error.code, Code::InvalidArgument as i32);
    assert_eq!(error.field, "chunk.buffer.text.text");
    assert_eq!(error.node_id, "node-a");
    assert_eq!(error.sequence, Some(4));
    assert_eq!(error.message, "sequence 4: asked to fail");
    assert!(failed.outputs.is_empty());

    let mismatch = one(&mut upper, 5, "", binary(b"x")).await.error.unwrap();
    assert_eq!(
        (mismatch.code, mismatch.reason.as_str()),
        (Code::InvalidArgument as i32, "TYPE_MISMATCH")
    );
    assert_eq!(
        mismatch.message,
        "sequence 5: input \"text\" of processor \"test.upper\" accepts text, not binary"
    );

    let unknown = one(&mut upper, 6, "audio", text("x")).await.error.unwrap();
    assert_eq!(unknown.reason, "UNKNOWN_INPUT");
    assert_eq!(unknown.field, "chunk.input");
    assert_eq!(
        unknown.message,
        "sequence 6: processor \"test.upper\" has no input \"audio\"; its inputs are: text"
    );

    upper
        .send(flowplane_sdk::proto::data::v1::DataChunk {
            sequence: 7,
            ..Default::default()
        })
        .await
        .unwrap();
    let missing = upper.result().await.unwrap().unwrap().error.unwrap();
    assert_eq!(
        (missing.reason.as_str(), missing.field.as_str()),
        ("MISSING_PAYLOAD", "chunk.buffer")
    );

    let undeclared = one(&mut upper, 8, "", text("undeclared"))
        .await
        .error
        .unwrap();
    assert_eq!(
        (undeclared.code, undeclared.reason.as_str()),
        (Code::Internal as i32, "UNDECLARED_OUTPUT")
    );
    let wrong = one(&mut upper, 9, "", text("wrong-type"))
        .await
        .error
        .unwrap();
    assert_eq!(wrong.reason, "UNDECLARED_OUTPUT");
    assert!(
        wrong.message.contains("produced binary on output \"text\""),
        "{wrong:?}"
    );

    // The stream goes on after every one of them.
    assert_eq!(
        output_text(&one(&mut upper, 10, "", text("ok")).await),
        "OK"
    );
}

#[tokio::test]
async fn several_inputs_need_a_port_name_and_outputs_keep_the_chunk_context() {
    let server = start(Duration::from_secs(5)).await;
    let mut merge = open(&server, "test.merge", json!({})).await;
    let ambiguous = one(&mut merge, 1, "", text("x")).await.error.unwrap();
    assert_eq!(ambiguous.reason, "AMBIGUOUS_INPUT");
    assert_eq!(
        ambiguous.message,
        "sequence 1: processor \"test.merge\" has several inputs (left, right); chunk.input must name one"
    );

    let mut input = chunk(2, "right", text("hello"));
    input.timestamp_us = 1_700_000_000_000_000;
    input.metadata.insert("correlation".into(), "c-1".into());
    input
        .buffer
        .as_mut()
        .unwrap()
        .metadata
        .insert("lang".into(), "en".into());
    merge.send(input).await.unwrap();
    let result = merge.result().await.unwrap().unwrap();
    assert_eq!(result.input_sequence, 2);
    let ports: Vec<&str> = result.outputs.iter().map(|o| o.output.as_str()).collect();
    assert_eq!(ports, ["out", "copy"]);
    for output in &result.outputs {
        let chunk = output.chunk.as_ref().unwrap();
        assert_eq!(chunk.sequence, 2);
        assert_eq!(chunk.timestamp_us, 1_700_000_000_000_000);
        assert_eq!(chunk.metadata["correlation"], "c-1");
        assert_eq!(chunk.buffer.as_ref().unwrap().metadata["lang"], "en");
        assert_eq!(chunk.buffer.as_ref().unwrap().payload, Some(text("hello")));
    }
}

#[tokio::test]
async fn malformed_and_oversized_payloads_are_chunk_errors() {
    let server = start(Duration::from_secs(5)).await;
    let mut merge = open(&server, "test.merge", json!({})).await;
    let tensor = Payload::Tensor(TensorBuffer {
        data: Bytes::from(vec![0u8; 20]),
        shape: vec![2, 3],
        dtype: TensorDtype::F32 as i32,
    });
    let malformed = one(&mut merge, 3, "right", tensor).await.error.unwrap();
    assert_eq!(
        (
            malformed.code,
            malformed.reason.as_str(),
            malformed.field.as_str()
        ),
        (
            Code::InvalidArgument as i32,
            "MALFORMED_PAYLOAD",
            "chunk.buffer.tensor.shape"
        )
    );
    assert_eq!(
        malformed.message,
        "sequence 3: tensor.shape [2, 3] of f32 needs 24 bytes but tensor.data has 20"
    );

    let limit = flowplane_grpc::MAX_PAYLOAD_BYTES;
    let oversized = one(&mut merge, 4, "right", binary(&vec![7u8; limit + 1])).await;
    let error = oversized.error.unwrap();
    assert_eq!(
        (error.code, error.reason.as_str(), error.field.as_str()),
        (
            Code::ResourceExhausted as i32,
            "PAYLOAD_TOO_LARGE",
            "chunk.buffer.binary.data"
        )
    );
    assert_eq!(
        error.message,
        format!(
            "sequence 4: chunk.buffer.binary.data has {} bytes, over the limit of {limit} bytes (MAX_PAYLOAD_BYTES)",
            limit + 1
        )
    );
    // Exactly at the limit is fine.
    let at_limit = one(&mut merge, 5, "left", text(&"a".repeat(limit))).await;
    assert!(at_limit.error.is_none());
    assert_eq!(at_limit.outputs.len(), 1);
    // Two such outputs do not fit one message: the chunk fails, the stream goes on.
    let too_big = one(&mut merge, 6, "right", binary(&vec![7u8; limit]))
        .await
        .error
        .unwrap();
    assert_eq!(
        (too_big.code, too_big.reason.as_str()),
        (Code::ResourceExhausted as i32, "RESULT_TOO_LARGE")
    );
    assert!(
        too_big
            .message
            .contains("over the message limit of 8388608 bytes"),
        "{too_big:?}"
    );
    let json = Payload::Json(JsonData {
        json: "{}".into(),
        schema_hint: String::new(),
    });
    assert!(one(&mut merge, 7, "right", json).await.error.is_none());
}

#[tokio::test]
async fn a_panic_fails_only_its_own_stream() {
    let server = start(Duration::from_secs(5)).await;
    let mut doomed = open(&server, "test.upper", json!({})).await;
    let mut bystander = open(&server, "test.upper", json!({})).await;
    assert_eq!(output_text(&one(&mut doomed, 1, "", text("a")).await), "A");
    doomed.send(chunk(2, "", text("panic"))).await.unwrap();
    let status = doomed.result().await.unwrap_err();
    assert_eq!(status.code(), Code::Internal);
    assert_eq!(
        status.message(),
        "processor \"test.upper\" panicked at sequence 2: asked to panic"
    );
    assert_eq!(
        output_text(&one(&mut bystander, 1, "", text("b")).await),
        "B"
    );
    let mut fresh = open(&server, "test.upper", json!({})).await;
    assert_eq!(output_text(&one(&mut fresh, 1, "", text("c")).await), "C");
}

#[tokio::test]
async fn a_panic_amid_chunks_in_flight_answers_those_before_it_first() {
    let server = start(Duration::from_secs(5)).await;
    let stream = open(&server, "test.upper", json!({})).await;
    let (tx, mut rx) = stream.split();
    let tx = tx.unwrap();
    // Sent without waiting, so the host may take them in one trip to the blocking pool.
    for (i, t) in ["a", "b", "panic", "c"].into_iter().enumerate() {
        tx.send(chunk(i as u64, "", text(t))).await.unwrap();
    }
    assert_eq!(output_text(&rx.result().await.unwrap().unwrap()), "A");
    assert_eq!(output_text(&rx.result().await.unwrap().unwrap()), "B");
    let status = rx.result().await.unwrap_err();
    assert_eq!(status.code(), Code::Internal);
    assert_eq!(
        status.message(),
        "processor \"test.upper\" panicked at sequence 2: asked to panic"
    );
}

#[tokio::test]
async fn state_belongs_to_one_stream() {
    let server = start(Duration::from_secs(5)).await;
    let mut first = open(&server, "test.upper", json!({})).await;
    let mut second = open(&server, "test.upper", json!({})).await;
    let count = |r: &ProcessResult| {
        r.outputs[0]
            .chunk
            .as_ref()
            .unwrap()
            .buffer
            .as_ref()
            .unwrap()
            .metadata["count"]
            .clone()
    };
    assert_eq!(count(&one(&mut first, 1, "", text("a")).await), "1");
    assert_eq!(count(&one(&mut first, 2, "", text("a")).await), "2");
    assert_eq!(count(&one(&mut second, 1, "", text("a")).await), "1");
    assert_eq!(server.host.stats().active_streams(), 2);
    drop(first);
    flowplane_test_support::wait_until("the closed stream to be counted", || async {
        server.host.stats().active_streams() == 1
    })
    .await;
}

#[tokio::test]
async fn capabilities_describe_every_processor() {
    let server = start(Duration::from_secs(5)).await;
    let mut client = ProcessorServiceClient::new(server.channel().await);
    let caps = client
        .get_capabilities(GetCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (caps.host_id.as_str(), caps.name.as_str()),
        ("host-1", "test-host")
    );
    let names: Vec<&str> = caps.processors.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["test.upper", "test.merge"]);
    let upper = &caps.processors[0];
    assert!(!upper.stateless);
    assert!(caps.processors[1].stateless);
    assert_eq!(upper.inputs[0].types, [DataTypeHint::Text as i32]);
    let params: Vec<&str> = upper.params.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(params, ["suffix", "limit"]);
}

#[tokio::test]
async fn many_chunks_in_flight_flow_without_deadlock() {
    let server = start(Duration::from_secs(5)).await;
    let stream = open(&server, "test.merge", json!({})).await;
    let (tx, mut rx) = stream.split();
    let tx = tx.unwrap();
    const N: u64 = 5_000;
    let payload = binary(&[1u8; 100]);
    let send = tokio::spawn(async move {
        for i in 0..N {
            tx.send(chunk(i, "right", payload.clone())).await.unwrap();
        }
    });
    for i in 0..N {
        let result = rx.result().await.unwrap().unwrap();
        assert_eq!(result.input_sequence, i);
        assert_eq!(result.outputs.len(), 2);
    }
    send.await.unwrap();
    assert!(rx.result().await.unwrap().is_none());
    let stats = server.host.stats().snapshot();
    assert_eq!((stats.chunks_in, stats.chunks_out), (N, 2 * N));
}

#[tokio::test]
async fn shutdown_drains_then_ends_open_streams_unavailable() {
    let server = start(Duration::from_millis(300)).await;
    let mut stream = open(&server, "test.upper", json!({})).await;
    server.stop.cancel();
    // Within the grace period the open stream still works.
    assert_eq!(
        output_text(&one(&mut stream, 1, "", text("still")).await),
        "STILL"
    );
    let status = stream.result().await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(status.message().contains("shutting down"), "{status:?}");
    server.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_host_refuses_duplicate_or_portless_processors() {
    let duplicate = ProcessorHost::builder("h")
        .processor::<Upper>()
        .processor::<Upper>()
        .build()
        .unwrap_err();
    assert_eq!(
        duplicate.to_string(),
        "processor \"test.upper\" is registered twice"
    );

    struct NoInput;
    impl Processor for NoInput {
        fn capability() -> Capability {
            Capability::new("no.input", "nothing")
        }
        fn create(_: &Params) -> Result<Self, ParamError> {
            Ok(Self)
        }
        fn process(&mut self, _: Input<'_>) -> Result<Vec<Output>, ProcessError> {
            Ok(vec![])
        }
    }
    let error = ProcessorHost::builder("h")
        .processor::<NoInput>()
        .build()
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "processor \"no.input\" is declared wrongly: it declares no input"
    );
}
