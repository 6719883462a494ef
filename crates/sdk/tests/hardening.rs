//! What no client or processor can do to a host, over real `Process` streams on
//! 127.0.0.1: stall other streams or timers with CPU-heavy processor code, exceed the
//! host-wide limit of processor calls, end a stream OK with an unreadable request, send
//! sequences backwards, queue unbounded result bytes, amplify a chunk into gigabytes, or
//! open a stream on a draining host.

mod common;

use std::{
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use bytes::Bytes;
use common::{Echo, Server, binary, one, output_text, text};
use flowplane_sdk::{
    Capability, Input, Output, ParamError, Params, ProcessError, Processor, ProcessorHost,
    client::{chunk, init},
    proto::{
        data::v1::{BinaryData, DataBuffer, DataTypeHint, data_buffer::Payload},
        processor::v1::{
            ProcessRequest, ProcessResponse, ProcessResult, process_request, process_response,
            processor_service_client::ProcessorServiceClient,
        },
    },
};
use flowplane_test_support::wait_until;
use prost::Message;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Code, transport::Channel};
use tonic_types::StatusExt;

/// The text of the first output of a result that must not be an error.
fn text_of(result: &ProcessResult) -> String {
    assert!(result.error.is_none(), "{:?}", result.error);
    output_text(result).to_string()
}

/// Processor calls of `Burn` running now.
static BURNING: AtomicUsize = AtomicUsize::new(0);

/// Spins a core for two seconds per chunk.
struct Burn;

impl Processor for Burn {
    fn capability() -> Capability {
        Capability::new("test.burn", "burns two seconds of CPU per chunk")
            .input("text", [DataTypeHint::Text], "anything")
            .output("text", [DataTypeHint::Text], "\"burnt\"")
    }
    fn create(_: &Params) -> Result<Self, ParamError> {
        Ok(Self)
    }
    fn process(&mut self, _: Input<'_>) -> Result<Vec<Output>, ProcessError> {
        BURNING.fetch_add(1, Ordering::SeqCst);
        let started = Instant::now();
        let mut spins = 0u64;
        while started.elapsed() < Duration::from_secs(2) {
            spins = std::hint::black_box(spins.wrapping_add(1));
        }
        BURNING.fetch_sub(1, Ordering::SeqCst);
        Ok(vec![Output::new("text", text("burnt"))])
    }
}

static SLOW_NOW: AtomicUsize = AtomicUsize::new(0);
static SLOW_MOST: AtomicUsize = AtomicUsize::new(0);

/// Blocks its thread for 100 ms per chunk, recording how many run at once.
struct Slow;

impl Processor for Slow {
    fn capability() -> Capability {
        Capability::new("test.slow", "blocks 100 ms per chunk")
            .input("text", [DataTypeHint::Text], "anything")
            .output("text", [DataTypeHint::Text], "the same text")
    }
    fn create(_: &Params) -> Result<Self, ParamError> {
        Ok(Self)
    }
    fn process(&mut self, input: Input<'_>) -> Result<Vec<Output>, ProcessError> {
        let now = SLOW_NOW.fetch_add(1, Ordering::SeqCst) + 1;
        SLOW_MOST.fetch_max(now, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(100));
        SLOW_NOW.fetch_sub(1, Ordering::SeqCst);
        Ok(vec![Output::new("text", input.payload)])
    }
}

/// Answers text "n" with n empty text outputs.
struct Fanout;

impl Processor for Fanout {
    fn capability() -> Capability {
        Capability::new("test.fanout", "n empty outputs for text \"n\"")
            .input("text", [DataTypeHint::Text], "a count")
            .output("text", [DataTypeHint::Text], "empty text")
    }
    fn create(_: &Params) -> Result<Self, ParamError> {
        Ok(Self)
    }
    fn process(&mut self, input: Input<'_>) -> Result<Vec<Output>, ProcessError> {
        let Payload::Text(t) = input.payload else {
            unreachable!("the host checks types")
        };
        let n: usize = t.text.parse().unwrap();
        Ok(vec![Output::new("text", text("")); n])
    }
}

static BIG_CALLS: AtomicUsize = AtomicUsize::new(0);

/// Answers every chunk with 3 MiB.
struct Big;

impl Processor for Big {
    fn capability() -> Capability {
        Capability::new("test.big", "3 MiB per chunk")
            .input("text", [DataTypeHint::Text], "anything")
            .output("data", [DataTypeHint::Binary], "3 MiB of zeros")
    }
    fn create(_: &Params) -> Result<Self, ParamError> {
        Ok(Self)
    }
    fn process(&mut self, _: Input<'_>) -> Result<Vec<Output>, ProcessError> {
        BIG_CALLS.fetch_add(1, Ordering::SeqCst);
        Ok(vec![Output::new(
            "data",
            Payload::Binary(BinaryData {
                data: Bytes::from(vec![0u8; 3 << 20]),
                mime_type: String::new(),
            }),
        )])
    }
}

fn host() -> ProcessorHost {
    ProcessorHost::builder("test-host")
        .processor::<Echo>()
        .processor::<Burn>()
        .processor::<Fanout>()
        .processor::<Big>()
        .build()
        .unwrap()
}

/// Before processor calls left the async workers, four of these streams on two workers
/// stopped every other stream, the heartbeat and any timer for seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_heavy_processors_never_stall_other_streams_or_timers() {
    let server = Server::start(host(), Duration::from_secs(5)).await;
    let mut cheap = server.open("test.echo", json!({})).await;
    assert_eq!(text_of(&one(&mut cheap, 0, "", text("warm")).await), "warm");

    let done = CancellationToken::new();
    let ticker = tokio::spawn({
        let done = done.clone();
        async move {
            let mut interval = tokio::time::interval(Duration::from_millis(50));
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            interval.tick().await;
            let mut last = Instant::now();
            let mut worst = Duration::ZERO;
            while !done.is_cancelled() {
                interval.tick().await;
                worst = worst.max(last.elapsed());
                last = Instant::now();
            }
            worst
        }
    });
    // More CPU-bound streams than cores.
    let mut burns = Vec::new();
    for i in 0..4u64 {
        let mut stream = server.open("test.burn", json!({})).await;
        burns.push(tokio::spawn(async move {
            let result = one(&mut stream, i, "", text("go")).await;
            assert_eq!(text_of(&result), "burnt");
        }));
    }
    wait_until("all four burns to run at once", || async {
        BURNING.load(Ordering::SeqCst) == 4
    })
    .await;
    let mut worst_round_trip = Duration::ZERO;
    let mut round_trips = 0u64;
    while BURNING.load(Ordering::SeqCst) > 0 {
        round_trips += 1;
        let started = Instant::now();
        let echoed = text_of(&one(&mut cheap, round_trips, "", text("ping")).await);
        assert_eq!(echoed, "ping");
        worst_round_trip = worst_round_trip.max(started.elapsed());
    }
    for burn in burns {
        burn.await.unwrap();
    }
    done.cancel();
    let worst_tick = ticker.await.unwrap();
    // Generous bounds: the machine is shared; the bug they catch is a stall of seconds.
    assert!(
        round_trips >= 5,
        "only {round_trips} round trips while burning"
    );
    assert!(
        worst_round_trip < Duration::from_secs(1),
        "a cheap stream waited {worst_round_trip:?}"
    );
    assert!(
        worst_tick < Duration::from_secs(1),
        "a 50 ms timer was late by {worst_tick:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processor_calls_are_limited_host_wide() {
    let host = ProcessorHost::builder("limited")
        .max_concurrent_calls(1)
        .processor::<Slow>()
        .build()
        .unwrap();
    let server = Server::start(host, Duration::from_secs(5)).await;
    let mut streams = Vec::new();
    for i in 0..3u64 {
        let mut stream = server.open("test.slow", json!({})).await;
        streams.push(tokio::spawn(async move {
            for sequence in 0..2 {
                let result = one(&mut stream, sequence, "", text(&format!("{i}"))).await;
                assert_eq!(text_of(&result), format!("{i}"));
            }
        }));
    }
    for stream in streams {
        stream.await.unwrap();
    }
    assert_eq!(SLOW_MOST.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn sequences_must_not_go_backwards_but_may_repeat() {
    let server = Server::start(host(), Duration::from_secs(5)).await;
    let mut stream = server.open("test.echo", json!({})).await;
    assert_eq!(text_of(&one(&mut stream, 5, "", text("a")).await), "a");
    let back = one(&mut stream, 3, "", text("b")).await.error.unwrap();
    assert_eq!(
        (back.code, back.reason.as_str(), back.field.as_str()),
        (
            Code::InvalidArgument as i32,
            "SEQUENCE_OUT_OF_ORDER",
            "chunk.sequence"
        )
    );
    assert_eq!(
        back.message,
        "sequence 3: chunk.sequence 3 is lower than sequence 5 of an earlier chunk on this stream; sequences must not go backwards"
    );
    // A pipeline sends one node several chunks of one input sequence (fan-in).
    assert_eq!(text_of(&one(&mut stream, 5, "", text("c")).await), "c");
    assert_eq!(text_of(&one(&mut stream, 6, "", text("d")).await), "d");
    let back = one(&mut stream, 4, "", text("e")).await.error.unwrap();
    assert!(back.message.contains("lower than sequence 6"), "{back:?}");
    // A chunk that fails for another reason still counts as received.
    let mismatch = one(&mut stream, 10, "", binary(b"x")).await.error.unwrap();
    assert_eq!(mismatch.reason, "TYPE_MISMATCH");
    let back = one(&mut stream, 9, "", text("f")).await.error.unwrap();
    assert!(back.message.contains("lower than sequence 10"), "{back:?}");
}

/// Stand-ins for `ProcessRequest` and `DataChunk` with the same tags, whose string fields
/// are bytes, so a test can send what a real client's encoder never would.
#[derive(Clone, PartialEq, prost::Message)]
struct RawRequest {
    /// An encoded `ProcessInit`.
    #[prost(bytes = "vec", optional, tag = "1")]
    init: Option<Vec<u8>>,
    #[prost(message, optional, tag = "2")]
    chunk: Option<RawChunk>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct RawChunk {
    #[prost(uint64, tag = "1")]
    sequence: u64,
    /// `DataChunk.input`, a string.
    #[prost(bytes = "vec", tag = "2")]
    input: Vec<u8>,
    /// An encoded `DataBuffer`.
    #[prost(bytes = "vec", optional, tag = "3")]
    buffer: Option<Vec<u8>>,
}

/// Opens a stream of raw requests; returns their sender and the response stream.
async fn raw_stream(
    channel: Channel,
) -> (
    mpsc::Sender<RawRequest>,
    Result<tonic::Streaming<ProcessResponse>, tonic::Status>,
) {
    let (tx, rx) = mpsc::channel(8);
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(
        "/flowplane.processor.v1.ProcessorService/Process",
    );
    let codec = tonic_prost::ProstCodec::<RawRequest, ProcessResponse>::default();
    let responses = grpc
        .streaming(tonic::Request::new(ReceiverStream::new(rx)), path, codec)
        .await
        .map(tonic::Response::into_inner);
    (tx, responses)
}

fn raw_text_chunk(sequence: u64, input: &[u8], s: &str) -> RawRequest {
    RawRequest {
        init: None,
        chunk: Some(RawChunk {
            sequence,
            input: input.to_vec(),
            buffer: Some(
                DataBuffer {
                    payload: Some(text(s)),
                    metadata: Default::default(),
                }
                .encode_to_vec(),
            ),
        }),
    }
}

async fn next_result(responses: &mut tonic::Streaming<ProcessResponse>) -> ProcessResult {
    match responses.message().await.unwrap().unwrap().response {
        Some(process_response::Response::Result(result)) => result,
        other => panic!("not a result: {other:?}"),
    }
}

#[tokio::test]
async fn undecodable_requests_end_the_stream_invalid_argument_never_ok() {
    let server = Server::start(host(), Duration::from_secs(5)).await;
    let (tx, responses) = raw_stream(server.channel().await).await;
    let mut responses = responses.unwrap();
    tx.send(RawRequest {
        init: Some(init("test.echo", "node-a", json!({})).encode_to_vec()),
        chunk: None,
    })
    .await
    .unwrap();
    let ready = responses.message().await.unwrap().unwrap();
    assert!(matches!(
        ready.response,
        Some(process_response::Response::Ready(_))
    ));
    tx.send(raw_text_chunk(1, b"", "fine")).await.unwrap();
    assert_eq!(text_of(&next_result(&mut responses).await), "fine");
    // chunk.input with bytes that are not UTF-8.
    tx.send(raw_text_chunk(2, &[0x74, 0xff, 0xfe], "never read"))
        .await
        .unwrap();
    let status = responses.message().await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status
            .message()
            .starts_with("the process request after sequence 1 could not be decoded"),
        "{status:?}"
    );
    assert!(status.message().contains("UTF-8"), "{status:?}");
    let details = status.check_error_details().unwrap();
    assert_eq!(details.error_info().unwrap().reason, "UNDECODABLE_REQUEST");

    // The same in the very first request: an init whose processor name is not UTF-8.
    let (tx, responses) = raw_stream(server.channel().await).await;
    let mut responses = responses.unwrap();
    let mut bad_init = Vec::new();
    prost::encoding::bytes::encode(1, &vec![0xc3u8, 0x28], &mut bad_init);
    tx.send(RawRequest {
        init: Some(bad_init),
        chunk: None,
    })
    .await
    .unwrap();
    let status = responses.message().await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status
            .message()
            .starts_with("the first process request could not be decoded"),
        "{status:?}"
    );
}

#[tokio::test]
async fn a_message_over_the_limit_ends_the_stream_resource_exhausted_naming_it() {
    let server = Server::start(host(), Duration::from_secs(5)).await;
    let (tx, rx) = mpsc::channel(4);
    // A client whose own limit would let it send anything.
    let mut client = ProcessorServiceClient::new(server.channel().await);
    let request = |r| ProcessRequest { request: Some(r) };
    tx.send(request(process_request::Request::Init(init(
        "test.echo",
        "node-a",
        json!({}),
    ))))
    .await
    .unwrap();
    let mut responses = client
        .process(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    assert!(matches!(
        responses.message().await.unwrap().unwrap().response,
        Some(process_response::Response::Ready(_))
    ));
    tx.send(request(process_request::Request::Chunk(chunk(
        1,
        "",
        text("small"),
    ))))
    .await
    .unwrap();
    assert_eq!(text_of(&next_result(&mut responses).await), "small");
    let limit = flowplane_grpc::MAX_MESSAGE_BYTES;
    tx.send(request(process_request::Request::Chunk(chunk(
        2,
        "",
        text(&"x".repeat(limit + 1)),
    ))))
    .await
    .unwrap();
    let status = responses.message().await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().starts_with(&format!(
            "the process request after sequence 1 is over the message limit of {limit} bytes (MAX_MESSAGE_BYTES)"
        )),
        "{status:?}"
    );
    let details = status.check_error_details().unwrap();
    assert_eq!(details.error_info().unwrap().reason, "MESSAGE_TOO_LARGE");
}

#[tokio::test]
async fn many_outputs_of_a_chunk_with_large_metadata_are_refused_before_copying() {
    let server = Server::start(host(), Duration::from_secs(5)).await;
    let mut stream = server.open("test.fanout", json!({})).await;
    // Copied into each of 100000 outputs, this metadata would be 100 GB.
    let mut request = chunk(1, "", text("100000"));
    request.metadata.insert("blob".into(), "m".repeat(1 << 20));
    stream.send(request).await.unwrap();
    let error = stream.result().await.unwrap().unwrap().error.unwrap();
    assert_eq!(
        (error.code, error.reason.as_str()),
        (Code::ResourceExhausted as i32, "RESULT_TOO_LARGE")
    );
    assert!(
        error.message.contains("encode to at least"),
        "{}",
        error.message
    );
    let fine = one(&mut stream, 2, "", text("2")).await;
    assert_eq!(fine.outputs.len(), 2);
}

#[tokio::test]
async fn a_client_that_stops_reading_bounds_the_bytes_queued_for_it() {
    let server = Server::start(host(), Duration::from_secs(5)).await;
    let stream = server.open("test.big", json!({})).await;
    let (tx, mut rx) = stream.split();
    let tx = tx.unwrap();
    const N: u64 = 40;
    let sender = tokio::spawn(async move {
        for i in 0..N {
            tx.send(chunk(i, "", text("more"))).await.unwrap();
        }
    });
    wait_until("the host to answer a few chunks", || async {
        BIG_CALLS.load(Ordering::SeqCst) >= 3
    })
    .await;
    // Checking that something does not happen needs a bounded wait: give the host time
    // to (wrongly) fill its 32-result queue with 96 MiB.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let answered = BIG_CALLS.load(Ordering::SeqCst);
    assert!(
        answered <= 12,
        "{answered} results of 3 MiB were made for a client that reads nothing"
    );
    for i in 0..N {
        let result = rx.result().await.unwrap().unwrap();
        assert_eq!(result.input_sequence, i);
        assert!(result.error.is_none(), "{:?}", result.error);
    }
    sender.await.unwrap();
}

#[tokio::test]
async fn draining_refuses_new_streams_at_once_and_lets_open_ones_finish() {
    let server = Server::start(host(), Duration::from_secs(5)).await;
    let mut open = server.open("test.echo", json!({})).await;
    assert_eq!(
        text_of(&one(&mut open, 1, "", text("before")).await),
        "before"
    );
    server.stop.cancel();
    wait_until("the host to drain", || async { server.host.is_draining() }).await;

    let started = Instant::now();
    let refused = server
        .try_open("test.echo", "node-b", json!({}))
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(2), "not at once");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("draining"), "{refused:?}");
    let details = refused.check_error_details().unwrap();
    assert_eq!(details.error_info().unwrap().reason, "DRAINING");

    // The open stream goes on within the grace period, and its end ends the drain.
    assert_eq!(
        text_of(&one(&mut open, 2, "", text("during")).await),
        "during"
    );
    drop(open);
    tokio::time::timeout(Duration::from_secs(3), server.task)
        .await
        .expect("the host stops once its last stream ends, before the grace period")
        .unwrap()
        .unwrap();
}
