//! What a processor author writes: the [`Processor`] trait, and the [`Capability`] and
//! [`Param`] builders that describe it. Nothing here touches the network; the host in
//! `host.rs` drives these types, and processor code never sees a gRPC status.

use std::{borrow::Cow, collections::HashMap, marker::PhantomData};

use flowplane_proto::{
    data::v1::{DataTypeHint, data_buffer::Payload},
    processor::v1::{ParamSpec, PortSpec, ProcessorCapability},
};

use crate::{ParamError, Params, ProcessError};

/// A processor: one instance per `Process` stream, so state kept in `self` is per stream.
///
/// Implement [`Processor::capability`] (what it is), [`Processor::create`] (build it from
/// validated params) and [`Processor::process`] (handle one chunk), then register it with
/// [`crate::HostBuilder::processor`]. The host checks every chunk's type against the input
/// port before `process` sees it, tags outputs with the input's sequence, turns a
/// [`ProcessError`] into a per-chunk error and a panic into the end of this stream only.
///
/// `create` and `process` run on tokio's blocking pool (the instance moves there for the
/// call and back), so they may compute or block as long as they need without stalling
/// other streams; they run outside any async task, so they must not `.await`. Check the
/// size of what an input would make you allocate before allocating it: the host bounds
/// what it sends, not what your code builds.
pub trait Processor: Send + 'static {
    /// Describes the processor: name, ports, params. Called once, at registration.
    fn capability() -> Capability
    where
        Self: Sized;

    /// Builds the instance for one stream. `params` already hold the declared defaults
    /// and have the declared JSON types; check ranges and enumerations here.
    fn create(params: &Params) -> Result<Self, ParamError>
    where
        Self: Sized;

    /// Handles one chunk that arrived on `input.port`. Return zero or more outputs.
    fn process(&mut self, input: Input<'_>) -> Result<Vec<Output>, ProcessError>;
}

/// One chunk as a processor sees it.
#[derive(Debug)]
pub struct Input<'a> {
    /// The declared input port the chunk arrived on.
    pub port: &'a str,
    /// The chunk's sequence number, for messages; outputs get it without your help.
    pub sequence: u64,
    /// The payload, already checked against the port's types and well-formed
    /// (see [`crate::payload::check`]).
    pub payload: Payload,
}

/// One output: a payload leaving by a declared output port.
///
/// The output chunk inherits the input chunk's sequence, timestamp and metadata and the
/// input buffer's metadata; `metadata` here is added on top of the latter.
#[derive(Clone, Debug, PartialEq)]
pub struct Output {
    /// Output port name; empty means the processor's only output.
    pub port: Cow<'static, str>,
    /// The payload.
    pub payload: Payload,
    /// Extra buffer metadata.
    pub metadata: HashMap<String, String>,
}

impl Output {
    /// `payload` leaving by output `port`.
    pub fn new(port: impl Into<Cow<'static, str>>, payload: Payload) -> Self {
        Self {
            port: port.into(),
            payload,
            metadata: HashMap::new(),
        }
    }

    /// Adds a buffer metadata entry.
    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }
}

/// What a host needs to serve a processor it knows only by name: its capability and a
/// constructor. [`Processor`] types get one for free through `HostBuilder::processor`;
/// implement this directly only when the capability is decided at run time.
pub trait ProcessorFactory: Send + Sync + 'static {
    /// The processor's description.
    fn capability(&self) -> Capability;
    /// A new instance for one stream.
    fn create(&self, params: &Params) -> Result<Box<dyn Processor>, ParamError>;
}

/// The factory of a [`Processor`] type.
pub(crate) struct TypedFactory<P>(PhantomData<fn() -> P>);

impl<P> TypedFactory<P> {
    pub(crate) fn new() -> Self {
        Self(PhantomData)
    }
}

impl<P: Processor> ProcessorFactory for TypedFactory<P> {
    fn capability(&self) -> Capability {
        P::capability()
    }

    fn create(&self, params: &Params) -> Result<Box<dyn Processor>, ParamError> {
        Ok(Box::new(P::create(params)?))
    }
}

/// A processor's description, as `GetCapabilities` and the control plane show it.
#[derive(Clone, Debug, PartialEq)]
pub struct Capability {
    proto: ProcessorCapability,
    inline: bool,
}

impl Capability {
    /// A processor named `name` (for example `"json.calculator"`), version 0.1.0, not
    /// marked stateless, with no ports and no params yet.
    pub fn new(name: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            proto: ProcessorCapability {
                name: name.into(),
                description: description.into(),
                version: "0.1.0".into(),
                ..Default::default()
            },
            inline: false,
        }
    }

    /// Sets the processor version.
    pub fn version(mut self, version: impl Into<String>) -> Self {
        self.proto.version = version.into();
        self
    }

    /// Declares an input port accepting `types` (`DataTypeHint::Any` accepts every type).
    pub fn input(
        mut self,
        name: impl Into<String>,
        types: impl IntoIterator<Item = DataTypeHint>,
        description: impl Into<String>,
    ) -> Self {
        self.proto.inputs.push(port(name, types, description));
        self
    }

    /// Declares an output port producing `types`.
    pub fn output(
        mut self,
        name: impl Into<String>,
        types: impl IntoIterator<Item = DataTypeHint>,
        description: impl Into<String>,
    ) -> Self {
        self.proto.outputs.push(port(name, types, description));
        self
    }

    /// Declares that a result depends only on its own input chunk, so a stream may be
    /// replayed on another instance after a failure.
    pub fn stateless(mut self) -> Self {
        self.proto.stateless = true;
        self
    }

    /// Declares that `process` takes microseconds and never blocks (no I/O, no sleeping,
    /// no lock held for long): the host then calls it on the stream's own task instead of
    /// the blocking pool, saving two thread hand-offs per batch of chunks. A batch that
    /// takes longer than [`crate::INLINE_BUDGET`] sends the stream's later batches to the
    /// blocking pool, so a wrong declaration costs one slow batch, not a stalled host.
    /// Host-side only: it is not part of the wire capability.
    pub fn inline(mut self) -> Self {
        self.inline = true;
        self
    }

    /// Whether [`Capability::inline`] was declared.
    pub fn is_inline(&self) -> bool {
        self.inline
    }

    /// Declares a parameter.
    pub fn param(mut self, param: Param) -> Self {
        self.proto.params.push(param.0);
        self
    }

    /// The processor name.
    pub fn name(&self) -> &str {
        &self.proto.name
    }

    /// The wire form.
    pub fn to_proto(&self) -> ProcessorCapability {
        self.proto.clone()
    }

    pub(crate) fn proto(&self) -> &ProcessorCapability {
        &self.proto
    }
}

fn port(
    name: impl Into<String>,
    types: impl IntoIterator<Item = DataTypeHint>,
    description: impl Into<String>,
) -> PortSpec {
    PortSpec {
        name: name.into(),
        types: types.into_iter().map(|t| t as i32).collect(),
        description: description.into(),
    }
}

/// A declared parameter: its JSON type, whether it is required, and its default.
#[derive(Clone, Debug, PartialEq)]
pub struct Param(ParamSpec);

impl Param {
    fn typed(name: &str, kind: &str, description: &str) -> Self {
        Self(ParamSpec {
            name: name.into(),
            description: description.into(),
            r#type: kind.into(),
            required: false,
            default_value: None,
            allowed_values: Vec::new(),
        })
    }

    /// A JSON number.
    pub fn number(name: &str, description: &str) -> Self {
        Self::typed(name, "number", description)
    }

    /// A JSON string.
    pub fn string(name: &str, description: &str) -> Self {
        Self::typed(name, "string", description)
    }

    /// A JSON boolean.
    pub fn bool(name: &str, description: &str) -> Self {
        Self::typed(name, "bool", description)
    }

    /// A JSON object.
    pub fn object(name: &str, description: &str) -> Self {
        Self::typed(name, "object", description)
    }

    /// A JSON array.
    pub fn list(name: &str, description: &str) -> Self {
        Self::typed(name, "list", description)
    }

    /// The parameter must be given.
    pub fn required(mut self) -> Self {
        self.0.required = true;
        self
    }

    /// The only values the parameter may take; the pipeline refuses a manifest with any
    /// other before a session starts, naming them.
    pub fn one_of(mut self, values: impl IntoIterator<Item = serde_json::Value>) -> Self {
        self.0.allowed_values = values
            .into_iter()
            .map(|v| flowplane_proto::json_to_value(&v))
            .collect();
        self
    }

    /// The value used when the parameter is absent.
    pub fn default(mut self, value: serde_json::Value) -> Self {
        self.0.default_value = Some(flowplane_proto::json_to_value(&value));
        self
    }

    /// The wire form.
    pub fn to_proto(&self) -> ParamSpec {
        self.0.clone()
    }
}
