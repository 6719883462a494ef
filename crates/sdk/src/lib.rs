//! The processor SDK: implement one trait, get a production `ProcessorService` host.
//!
//! A processor implements [`Processor`]: [`Processor::capability`] says what it is,
//! [`Processor::create`] builds one instance per `Process` stream from validated params,
//! and [`Processor::process`] answers one chunk. [`ProcessorHost`] serves any number of
//! processors; [`main`] turns a host into a binary with every standard flag, logs,
//! traces, /metrics and graceful shutdown, exactly like the built-in `flowplane-processor`
//! (which is built on it); [`run`] and [`serve`] do the same inside a program or a test,
//! and [`testing::LocalHost`] serves one on loopback for tests.
//! `examples/custom_processor.rs` is a complete one; `crates/sdk/README.md` is the guide.
//!
//! # Features
//!
//! All on by default; a custom processor may trim them to build faster (the README
//! measures each): `cli` ([`main`], [`Main`], [`HostArgs`]: the flags, with clap),
//! `otlp` (OTLP trace export configured by `OTEL_*`; without it spans still get trace
//! ids for logs and propagation, and a configured endpoint is warned about), `prometheus`
//! (`--metrics-listen` and the /metrics endpoint; without it that flag is refused).
//! `--no-default-features` keeps the host, [`run`], [`serve`] and the client.
//!
//! # Re-exports
//!
//! One dependency is enough: the generated types ([`proto`]), the gRPC stack ([`grpc`],
//! with [`shutdown`] for signals), [`telemetry`], and the crates that appear in this
//! API ([`bytes`], [`serde_json`], [`tokio`], [`tonic`]).
//!
//! # The `Process` stream, as a client sees it
//!
//! The first request must be an `init`; the host answers `ready`, or ends the stream
//! with a status. After that every chunk gets exactly one `ProcessResult`, in input
//! order, carrying the chunk's sequence: its outputs (each output chunk has the input's
//! sequence, timestamp and metadata) or an `ErrorDetail` whose `code` is a gRPC code and
//! whose message starts `sequence N:`. A failed chunk never ends the stream. Every status
//! the host ends a stream with carries the standard `google.rpc.Status` details
//! (`ErrorInfo` with the reason below, `BadRequest` naming the field when there is one,
//! and the `flowplane.common.v1.ErrorDetail`), readable with `tonic_types::StatusExt`.
//!
//! | what | how it ends | code | reason |
//! | --- | --- | --- | --- |
//! | first request not `init`, or a second `init` | stream status | FAILED_PRECONDITION | `MISSING_INIT` / `DUPLICATE_INIT` |
//! | unknown processor name (message names it and what the host serves) | stream status | NOT_FOUND | `UNKNOWN_PROCESSOR` |
//! | bad param: unknown, missing, wrong JSON type, out of range (message names it) | stream status | INVALID_ARGUMENT | `INVALID_PARAM` |
//! | a request over `MAX_MESSAGE_BYTES` (message names the limit and the last sequence) | stream status | RESOURCE_EXHAUSTED | `MESSAGE_TOO_LARGE` |
//! | a request that does not decode: invalid UTF-8 in a string, bad wire data (message names the field and the last sequence) | stream status | INVALID_ARGUMENT | `UNDECODABLE_REQUEST` |
//! | the processor panics (message names the processor and sequence) | stream status | INTERNAL | `PROCESSOR_PANICKED` |
//! | the host has tokens (`ServeOptions::tokens`) and the call carries none, or an unknown one | refused at once | UNAUTHENTICATED | `UNAUTHENTICATED` |
//! | the host has tokens and the call's token lacks role `process` | refused at once | PERMISSION_DENIED | `ROLE_REQUIRED` |
//! | the host is draining: a new stream | refused at once | UNAVAILABLE | `DRAINING` |
//! | shutdown grace period over: an open stream | stream status | UNAVAILABLE | `SHUTTING_DOWN` |
//! | chunk whose sequence is lower than an earlier chunk's (equal is allowed: a pipeline sends a fan-in node several chunks of one sequence) | chunk error | INVALID_ARGUMENT | `SEQUENCE_OUT_OF_ORDER` |
//! | chunk for an input the processor lacks (message names the inputs) | chunk error | INVALID_ARGUMENT | `UNKNOWN_INPUT` |
//! | empty `chunk.input` to a processor with several inputs | chunk error | INVALID_ARGUMENT | `AMBIGUOUS_INPUT` |
//! | payload type the input does not accept (message names input and types) | chunk error | INVALID_ARGUMENT | `TYPE_MISMATCH` |
//! | chunk without payload | chunk error | INVALID_ARGUMENT | `MISSING_PAYLOAD` |
//! | payload over `MAX_PAYLOAD_BYTES` (message names the field and limit) | chunk error | RESOURCE_EXHAUSTED | `PAYLOAD_TOO_LARGE` |
//! | malformed payload: audio not whole frames, video bytes not width x height x format, tensor bytes not shape x dtype, unset format (field names it) | chunk error | INVALID_ARGUMENT | `MALFORMED_PAYLOAD` |
//! | an output over `MAX_PAYLOAD_BYTES`, outputs together over the message limit, or an undeclared output | chunk error | RESOURCE_EXHAUSTED / INTERNAL | `RESULT_TOO_LARGE` / `UNDECLARED_OUTPUT` |
//! | the processor's own error (bad JSON, division by zero, ...) | chunk error | as the processor says | as the processor says |
//!
//! A client that resets its stream gets no status, since nobody is left to read one;
//! the host logs it.
//!
//! # Where processor code runs
//!
//! [`Processor::create`] and [`Processor::process`] run on tokio's blocking pool, never
//! on an async worker, so a CPU-heavy or blocking processor cannot stall other streams,
//! timers or the heartbeat. At most [`HostBuilder::max_concurrent_calls`] calls run at
//! once over the host (default [`DEFAULT_MAX_CONCURRENT_CALLS`]); one call at a time per
//! stream keeps results in order. Chunks that have already arrived on a stream go to the
//! pool together (up to 64 chunks or 1 MiB), and a call returns after 1 ms of processing,
//! so small chunks do not pay a thread hand-off each and slow ones are answered one by one.
//!
//! Each stream runs in one task with a queue of at most [`STREAM_BUFFER`] results and
//! [`STREAM_BUFFER_BYTES`] encoded bytes: a client that stops reading stops the host
//! reading its requests (backpressure), whatever its processor produces. A result that
//! cannot fit one message is refused before the outputs are copied together.
//!
//! ```
//! use flowplane_sdk::{
//!     Capability, Input, Output, ParamError, Params, ProcessError, Processor, ProcessorHost,
//!     proto::data::v1::{DataTypeHint, TextData, data_buffer::Payload},
//! };
//!
//! /// Counts the characters of each text chunk.
//! struct CharCount;
//!
//! impl Processor for CharCount {
//!     fn capability() -> Capability {
//!         Capability::new("text.char_count", "counts characters")
//!             .input("text", [DataTypeHint::Text], "text to count")
//!             .output("count", [DataTypeHint::Text], "the count, in decimal")
//!             .stateless()
//!     }
//!
//!     fn create(_params: &Params) -> Result<Self, ParamError> {
//!         Ok(CharCount)
//!     }
//!
//!     fn process(&mut self, input: Input<'_>) -> Result<Vec<Output>, ProcessError> {
//!         let Payload::Text(text) = input.payload else {
//!             unreachable!("the host only passes the declared types")
//!         };
//!         let count = text.text.chars().count().to_string();
//!         Ok(vec![Output::new("count", Payload::Text(TextData { text: count, language: String::new() }))])
//!     }
//! }
//!
//! let host = ProcessorHost::builder("example").processor::<CharCount>().build().unwrap();
//! assert_eq!(host.capabilities()[0].name, "text.char_count");
//! ```
//!
//! # Sources and consumers
//!
//! A standing pipeline reads a [`Source`] and delivers its results to [`Consumer`]s. A
//! source implements [`Source::spec`] (name, types, params) and [`Source::open`], which
//! returns a [`SourceReader`] positioned at the stream's start offsets; a consumer
//! implements [`Consumer::open`], which returns a [`ConsumerSink`] whose
//! [`ConsumerSink::consume`] answers each [`Delivery`] with an [`Ack`]. A
//! [`ConnectorHost`] serves any number of them behind `SourceService` and
//! `ConsumerService`, each registered as its own component (kind SOURCE or CONSUMER,
//! label [`CAPABILITY_LABEL`] = its name); [`serve_connectors`], [`run_connectors`] and
//! [`Main::connectors`] are [`serve`], [`run`] and [`Main::new`] for it, with the same
//! server stack, flags, auth ([`CONNECT_ACCESS`]: role `process`) and drain.
//! `crates/connectors` holds the built-ins, written exactly this way.
//!
//! | what | how it ends | code | reason |
//! | --- | --- | --- | --- |
//! | first request not `open`, or a second `open` | stream status | FAILED_PRECONDITION | `MISSING_OPEN` / `DUPLICATE_OPEN` |
//! | `source_id` / `consumer_id` served by no connector here (message names it and what the host serves) | stream status | NOT_FOUND | `UNKNOWN_CONNECTOR` (field `open.source_id` / `open.consumer_id`) |
//! | bad param (field `open.params.<name>`) | stream status | INVALID_ARGUMENT | `INVALID_PARAM` |
//! | a connector that cannot open (a missing file) | stream status | as the connector says | as the connector says |
//! | `credit.records` 0, or outstanding credit over [`MAX_OUTSTANDING_CREDIT`] | stream status | INVALID_ARGUMENT | `ZERO_CREDIT` / `CREDIT_OVERFLOW` |
//! | `ack` of a partition the source lacks, or beyond the records sent | stream status | INVALID_ARGUMENT | `UNKNOWN_PARTITION` / `ACK_AHEAD` |
//! | a delivery without lineage | stream status | INVALID_ARGUMENT | `MISSING_LINEAGE` |
//! | a source yielding an undeclared partition, a wrong offset or type, an oversized payload | stream status | INTERNAL | `SOURCE_MISBEHAVED` |
//! | connector code panics | stream status | INTERNAL | `CONNECTOR_PANICKED` |
//! | a delivery of a type the consumer does not accept | ack REJECT | | |
//! | draining / grace period over | refused / stream status | UNAVAILABLE | `DRAINING` / `SHUTTING_DOWN` |
//!
//! ```
//! use std::collections::HashMap;
//!
//! use flowplane_sdk::{
//!     Ack, ConnectorError, ConnectorHost, ConnectorSpec, Consumer, ConsumerOpen, ConsumerSink,
//!     Delivery, Param, Record, Source, SourceOpen, SourceReader, async_trait,
//!     proto::data::v1::{DataTypeHint, TextData, data_buffer::Payload},
//!     serde_json::json,
//! };
//!
//! /// Counts up from the start offset, in one partition.
//! struct Counter;
//!
//! #[async_trait]
//! impl Source for Counter {
//!     fn spec(&self) -> ConnectorSpec {
//!         ConnectorSpec::new("counter", "counts up")
//!             .data_types([DataTypeHint::Text])
//!             .param(Param::number("count", "how far").default(json!(10)))
//!     }
//!
//!     async fn open(&self, open: SourceOpen<'_>) -> Result<Box<dyn SourceReader>, ConnectorError> {
//!         let count = open.params.u64("count")?; // a ParamError becomes INVALID_ARGUMENT
//!         Ok(Box::new(CounterReader { next: open.start(0), count }))
//!     }
//! }
//!
//! struct CounterReader {
//!     next: u64,
//!     count: u64,
//! }
//!
//! #[async_trait]
//! impl SourceReader for CounterReader {
//!     fn partitions(&self) -> Vec<u32> {
//!         vec![0]
//!     }
//!     fn data_type(&self) -> DataTypeHint {
//!         DataTypeHint::Text
//!     }
//!     async fn next(&mut self) -> Result<Option<Record>, ConnectorError> {
//!         if self.next >= self.count {
//!             return Ok(None); // exhausted
//!         }
//!         let text = TextData { text: self.next.to_string(), language: String::new() };
//!         self.next += 1;
//!         Ok(Some(Record::new(0, self.next - 1, Payload::Text(text))))
//!     }
//!     async fn pending(&mut self) -> HashMap<u32, u64> {
//!         HashMap::from([(0, self.count.saturating_sub(self.next))])
//!     }
//! }
//!
//! /// Accepts everything, keeps nothing.
//! struct Discard;
//!
//! #[async_trait]
//! impl Consumer for Discard {
//!     fn spec(&self) -> ConnectorSpec {
//!         ConnectorSpec::new("discard", "drops every delivery").data_types([DataTypeHint::Any])
//!     }
//!     async fn open(&self, _: ConsumerOpen<'_>) -> Result<Box<dyn ConsumerSink>, ConnectorError> {
//!         Ok(Box::new(Discard))
//!     }
//! }
//!
//! #[async_trait]
//! impl ConsumerSink for Discard {
//!     async fn consume(&mut self, _delivery: Delivery) -> Ack {
//!         Ack::Success
//!     }
//! }
//!
//! let host = ConnectorHost::builder("my-connectors")
//!     .source(Counter)
//!     .consumer(Discard)
//!     .build()
//!     .unwrap();
//! assert_eq!(host.sources()[0].name(), "counter");
//! // A binary: flowplane_sdk::Main::connectors(builder).run()
//! ```

#[cfg(feature = "cli")]
mod cli;
pub mod client;
mod config;
mod connect_host;
mod connector;
mod error;
mod host;
mod params;
pub mod payload;
mod processor;
mod registration;
mod serve;
pub mod stats;
pub mod testing;

#[cfg(feature = "cli")]
pub use cli::{DEFAULT_LISTEN, HostArgs, Main, main};
pub use config::{HostConfig, run, run_connectors};

pub use connect_host::{
    CONNECTOR_STREAM_BUFFER, ConnectorHost, ConnectorHostBuilder, ConnectorKind,
    MAX_OUTSTANDING_CREDIT,
};
pub use connector::{
    Ack, CAPABILITY_LABEL, ConnectorSpec, Consumer, ConsumerOpen, ConsumerSink, Delivery, Record,
    Source, SourceOpen, SourceReader,
};
pub use error::{ConnectorError, Error, ParamError, ProcessError, Result};
pub use host::{
    AMBIGUOUS_INPUT, DEFAULT_MAX_CONCURRENT_CALLS, HostBuilder, INLINE_BUDGET, MISSING_PAYLOAD,
    ProcessorHost, RESULT_TOO_LARGE, ResponseStream, SEQUENCE_OUT_OF_ORDER, STREAM_BUFFER,
    STREAM_BUFFER_BYTES, TYPE_MISMATCH, UNDECLARED_OUTPUT, UNKNOWN_INPUT,
};
pub use params::Params;
pub(crate) use processor::TypedFactory;
pub use processor::{Capability, Input, Output, Param, Processor, ProcessorFactory};
pub use registration::{Registration, RegistrationConfig, RegistrationState};
pub use serve::{CONNECT_ACCESS, HOST_ACCESS, ServeOptions, serve, serve_connectors};

/// The generated API types, so processor crates need no direct dependency on them.
pub use flowplane_proto as proto;

/// The shared gRPC stack: client connections, auth tokens, TLS settings, limits.
pub use flowplane_grpc as grpc;
/// Auth tokens by role, for [`ServeOptions::tokens`].
pub use flowplane_grpc::auth::Tokens;
/// Graceful shutdown: [`shutdown::on_signals`] is cancelled by the first SIGTERM or
/// Ctrl-C (a second exits at once); [`shutdown::termination_signal`] waits for one.
pub use flowplane_grpc::shutdown;
/// The largest payload one chunk may carry, and the largest message either side accepts.
pub use flowplane_grpc::{MAX_MESSAGE_BYTES, MAX_PAYLOAD_BYTES};
/// Logs, traces and metrics set-up, for a `main` of your own or `init_for_tests`.
pub use flowplane_telemetry as telemetry;
/// Cancelled to stop [`serve`] or [`run`]; [`shutdown::on_signals`] returns one.
pub use tokio_util::sync::CancellationToken;
/// The attribute that makes a trait's `async fn`s object-safe, for implementing
/// [`Source`], [`SourceReader`], [`Consumer`] and [`ConsumerSink`].
pub use tonic::async_trait;
pub use {bytes, serde_json, tokio, tonic};

/// Every code block of `crates/sdk/README.md`, compiled (and run unless marked
/// `no_run`) by `cargo test --doc`, so the guide cannot drift from the API.
#[cfg(all(doctest, feature = "cli"))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
