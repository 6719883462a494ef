//! The processor SDK: implement one trait, get a production `ProcessorService` host.
//!
//! A processor implements [`Processor`]: [`Processor::capability`] says what it is,
//! [`Processor::create`] builds one instance per `Process` stream from validated params,
//! and [`Processor::process`] answers one chunk. [`ProcessorHost`] serves any number of
//! processors; [`serve`] runs a host with health, reflection, registration with the
//! control plane and graceful shutdown. `examples/custom_processor.rs` is a complete one.
//!
//! # The `Process` stream, as a client sees it
//!
//! The first request must be an `init`; the host answers `ready`, or ends the stream
//! with a status. After that every chunk gets exactly one `ProcessResult`, in input
//! order, carrying the chunk's sequence: its outputs (each output chunk has the input's
//! sequence, timestamp and metadata) or an `ErrorDetail` whose `code` is a gRPC code and
//! whose message starts `sequence N:`. A failed chunk never ends the stream.
//!
//! | what | how it ends | code | reason |
//! | --- | --- | --- | --- |
//! | first request not `init`, or a second `init` | stream status | FAILED_PRECONDITION | |
//! | unknown processor name (message names it and what the host serves) | stream status | NOT_FOUND | |
//! | bad param: unknown, missing, wrong JSON type, out of range (message names it) | stream status | INVALID_ARGUMENT | |
//! | the processor panics (message names the processor and sequence) | stream status | INTERNAL | |
//! | shutdown grace period over | stream status | UNAVAILABLE | |
//! | chunk for an input the processor lacks (message names the inputs) | chunk error | INVALID_ARGUMENT | `UNKNOWN_INPUT` |
//! | empty `chunk.input` to a processor with several inputs | chunk error | INVALID_ARGUMENT | `AMBIGUOUS_INPUT` |
//! | payload type the input does not accept (message names input and types) | chunk error | INVALID_ARGUMENT | `TYPE_MISMATCH` |
//! | chunk without payload | chunk error | INVALID_ARGUMENT | `MISSING_PAYLOAD` |
//! | payload over `MAX_PAYLOAD_BYTES` (message names the field and limit) | chunk error | RESOURCE_EXHAUSTED | `PAYLOAD_TOO_LARGE` |
//! | malformed payload: audio not whole frames, video bytes not width x height x format, tensor bytes not shape x dtype, unset format (field names it) | chunk error | INVALID_ARGUMENT | `MALFORMED_PAYLOAD` |
//! | outputs over the message limit, or an undeclared output | chunk error | RESOURCE_EXHAUSTED / INTERNAL | `RESULT_TOO_LARGE` / `UNDECLARED_OUTPUT` |
//! | the processor's own error (bad JSON, division by zero, ...) | chunk error | as the processor says | as the processor says |
//!
//! Each stream runs in one task with a bounded queue of [`STREAM_BUFFER`] results: a
//! client that stops reading stops the host reading its requests (backpressure).
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

pub mod client;
mod error;
mod host;
mod params;
pub mod payload;
mod processor;
mod registration;
mod serve;
pub mod stats;

pub use error::{Error, ParamError, ProcessError, Result};
pub use host::{
    AMBIGUOUS_INPUT, HostBuilder, MISSING_PAYLOAD, ProcessorHost, STREAM_BUFFER, TYPE_MISMATCH,
    UNDECLARED_OUTPUT, UNKNOWN_INPUT,
};
pub use params::Params;
pub(crate) use processor::TypedFactory;
pub use processor::{Capability, Input, Output, Param, Processor, ProcessorFactory};
pub use registration::{Registration, RegistrationConfig, RegistrationState};
pub use serve::{ServeOptions, serve};

/// The generated API types, so processor crates need no direct dependency on them.
pub use flowplane_proto as proto;
