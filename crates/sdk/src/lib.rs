//! The processor SDK: implement one trait, get a production `ProcessorService` host.
//!
//! A processor implements [`Processor`]: [`Processor::capability`] says what it is,
//! [`Processor::create`] builds one instance per `Process` stream from validated params,
//! and [`Processor::process`] answers one chunk. [`ProcessorHost`] serves any number of
//! processors; [`serve`] runs a host with health, reflection, registration with the
//! control plane and graceful shutdown. `examples/custom_processor.rs` is a complete one.
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
