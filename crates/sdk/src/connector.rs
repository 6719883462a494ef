//! What a connector author writes: a [`Source`] that opens a [`SourceReader`] per `Read`
//! stream, or a [`Consumer`] that opens a [`ConsumerSink`] per `Deliver` stream, both
//! described by a [`ConnectorSpec`]. Nothing here touches the network; the host in
//! `connect_host.rs` drives these types, and connector code never sees a gRPC status.

use std::collections::HashMap;

use flowplane_proto::{
    common::v1::ErrorDetail,
    connect::v1::Lineage,
    data::v1::{DataBuffer, DataTypeHint, data_buffer::Payload},
    processor::v1::ParamSpec,
};

use crate::{ConnectorError, Param, Params};

/// The label every hosted connector registers with: its name, by which a standing
/// pipeline's `ConnectorRef.capability` finds it.
pub const CAPABILITY_LABEL: &str = "flowplane.io/capability";

/// A connector's description: its name (the capability a pipeline asks for), what it
/// does, the payload types it produces (a source) or accepts (a consumer), its params.
#[derive(Clone, Debug, PartialEq)]
pub struct ConnectorSpec {
    name: String,
    description: String,
    data_types: Vec<DataTypeHint>,
    params: Vec<ParamSpec>,
}

impl ConnectorSpec {
    /// A connector named `name` (for example `"generator"`), with no types or params yet.
    pub fn new(name: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            description: description.into(),
            data_types: Vec::new(),
            params: Vec::new(),
        }
    }

    /// Declares payload types: produced by a source, accepted by a consumer
    /// (`DataTypeHint::Any` accepts every type).
    pub fn data_types(mut self, types: impl IntoIterator<Item = DataTypeHint>) -> Self {
        self.data_types.extend(types);
        self
    }

    /// Declares a parameter; streams are opened only with params that match them.
    pub fn param(mut self, param: Param) -> Self {
        self.params.push(param.to_proto());
        self
    }

    /// The connector name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What the connector does.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// The declared payload types.
    pub fn types(&self) -> &[DataTypeHint] {
        &self.data_types
    }

    /// The declared params, in the wire form.
    pub fn params(&self) -> &[ParamSpec] {
        &self.params
    }

    /// Whether a payload of type `hint` is among the declared types.
    pub fn accepts(&self, hint: DataTypeHint) -> bool {
        self.data_types
            .iter()
            .any(|t| *t == DataTypeHint::Any || *t == hint)
    }
}

/// What a `Read` stream's `open` asks of a source.
#[derive(Clone, Debug)]
pub struct SourceOpen<'a> {
    /// The standing pipeline reading, for logs.
    pub pipeline: &'a str,
    /// Params, checked against the declared ones, defaults filled in.
    pub params: &'a Params,
    /// The first offset to send per partition; a partition not named starts at 0.
    pub start_offsets: &'a HashMap<u32, u64>,
}

impl SourceOpen<'_> {
    /// The first offset of `partition`.
    pub fn start(&self, partition: u32) -> u64 {
        self.start_offsets.get(&partition).copied().unwrap_or(0)
    }
}

/// A source: opens one [`SourceReader`] per `Read` stream. Shared by every stream of a
/// host, so state kept in `self` is shared; per-stream state lives in the reader.
#[tonic::async_trait]
pub trait Source: Send + Sync + 'static {
    /// Describes the source. Called at registration and when the host is built.
    fn spec(&self) -> ConnectorSpec;

    /// Opens a reader positioned at `open.start_offsets`. A bad param is a
    /// [`ConnectorError`] made from a [`crate::ParamError`] naming it.
    async fn open(&self, open: SourceOpen<'_>) -> Result<Box<dyn SourceReader>, ConnectorError>;
}

/// One record of one partition, as a source yields it.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    /// The partition; one of [`SourceReader::partitions`].
    pub partition: u32,
    /// The offset: per partition, the start offset first, then one more each time.
    pub offset: u64,
    /// The payload, of the reader's [`SourceReader::data_type`].
    pub payload: Payload,
    /// Buffer metadata.
    pub metadata: HashMap<String, String>,
}

impl Record {
    /// A record without metadata.
    pub fn new(partition: u32, offset: u64, payload: Payload) -> Self {
        Self {
            partition,
            offset,
            payload,
            metadata: HashMap::new(),
        }
    }

    pub(crate) fn into_buffer(self) -> DataBuffer {
        DataBuffer {
            payload: Some(self.payload),
            metadata: self.metadata,
        }
    }
}

/// One open `Read` stream's reader. The host calls [`SourceReader::next`] only when the
/// reader has credit for a record, never concurrently with another method, and never
/// cancels it except when the stream ends: a reader may keep partial progress in the
/// future. A reader with nothing to send now waits inside `next` (on a timer, a channel,
/// a file that grows), never spinning.
#[tonic::async_trait]
pub trait SourceReader: Send + 'static {
    /// The source's partitions; fixed for the stream.
    fn partitions(&self) -> Vec<u32>;

    /// The type of every record's payload.
    fn data_type(&self) -> DataTypeHint;

    /// The next record of any partition, waiting until there is one; `Ok(None)` once a
    /// finite source has yielded its last record. An error ends the stream with its code.
    async fn next(&mut self) -> Result<Option<Record>, ConnectorError>;

    /// Records held and not yet yielded, per partition. Called after `opened`, whenever
    /// the reader's credit runs out, and may be approximate (a lower bound).
    async fn pending(&mut self) -> HashMap<u32, u64> {
        HashMap::new()
    }

    /// Every record of `partition` below `next_offset` is done with (committed).
    /// Delivered between calls to `next`.
    fn ack(&mut self, _partition: u32, _next_offset: u64) {}
}

/// What a `Deliver` stream's `open` asks of a consumer.
#[derive(Clone, Debug)]
pub struct ConsumerOpen<'a> {
    /// The standing pipeline delivering.
    pub pipeline: &'a str,
    /// The pipeline output the stream carries; `dead-letter` for a dead-letter stream.
    pub output: &'a str,
    /// Params, checked against the declared ones, defaults filled in.
    pub params: &'a Params,
}

/// A consumer: opens one [`ConsumerSink`] per `Deliver` stream. Shared by every stream of
/// a host (several streams may write to one place: coordinate in `self`).
#[tonic::async_trait]
pub trait Consumer: Send + Sync + 'static {
    /// Describes the consumer. Called at registration and when the host is built.
    fn spec(&self) -> ConnectorSpec;

    /// Opens a sink for one delivery stream.
    async fn open(&self, open: ConsumerOpen<'_>) -> Result<Box<dyn ConsumerSink>, ConnectorError>;
}

/// One delivery as a consumer sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct Delivery {
    /// Where the result came from: the idempotency key, whole.
    pub lineage: Lineage,
    /// The payload; already checked against the declared types.
    pub buffer: DataBuffer,
    /// 1 for the first try, then one more per retry.
    pub attempt: u32,
    /// On a dead-letter stream: why the record could not be delivered.
    pub error: Option<ErrorDetail>,
}

/// What a consumer made of a delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ack {
    /// Consumed, or consumed before (a duplicate).
    Success,
    /// Not consumed now; the runner sends it again later. The message says why.
    Retry(String),
    /// Never consumable: it goes to the dead-letter consumer. The message says why.
    Reject(String),
}

/// One open `Deliver` stream's sink. The host calls `consume` for one delivery at a
/// time, in arrival order, and acknowledges each with what it returns. Return
/// [`Ack::Success`] only once the delivery is durable wherever the consumer keeps it.
#[tonic::async_trait]
pub trait ConsumerSink: Send + 'static {
    /// Consumes one delivery.
    async fn consume(&mut self, delivery: Delivery) -> Ack;
}
