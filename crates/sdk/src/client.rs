//! A small client of one `Process` stream: open with an init, send chunks, read one
//! result per chunk. For tests, tools and simple callers; it adds no retries, no
//! reordering and no buffering beyond one bounded channel.

use flowplane_grpc::process::{self, NotReady};
use flowplane_proto::{
    data::v1::{DataBuffer, DataChunk, data_buffer::Payload},
    processor::v1::{
        ProcessInit, ProcessReady, ProcessRequest, ProcessResponse, ProcessResult, process_request,
        process_response, processor_service_client::ProcessorServiceClient,
    },
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming, transport::Channel};

/// Longest [`ProcessStream::open`] waits for the host's `ready`.
pub const READY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// One open `Process` stream.
#[derive(Debug)]
pub struct ProcessStream {
    tx: Option<ChunkSender>,
    rx: ResultReceiver,
}

/// The sending half of a stream; clones send on the same stream. The send side closes
/// when every clone is dropped.
#[derive(Clone, Debug)]
pub struct ChunkSender(mpsc::Sender<ProcessRequest>);

/// The receiving half of a stream.
#[derive(Debug)]
pub struct ResultReceiver(Streaming<ProcessResponse>);

impl ProcessStream {
    /// Opens a stream and waits for `ready`, at most [`READY_TIMEOUT`] (then
    /// DEADLINE_EXCEEDED). An init the host refuses comes back as the host's status
    /// (NOT_FOUND, INVALID_ARGUMENT, ...).
    pub async fn open(channel: Channel, init: ProcessInit) -> Result<(Self, ProcessReady), Status> {
        tokio::time::timeout(READY_TIMEOUT, Self::open_now(channel, init))
            .await
            .unwrap_or_else(|_| {
                Err(Status::deadline_exceeded(format!(
                    "the host sent no ready within {READY_TIMEOUT:?} of the init"
                )))
            })
    }

    async fn open_now(channel: Channel, init: ProcessInit) -> Result<(Self, ProcessReady), Status> {
        let (tx, rx) = mpsc::channel(crate::STREAM_BUFFER);
        tx.send(process::init_request(init))
            .await
            .map_err(|_| Status::internal("request channel closed before init"))?;
        let mut client = ProcessorServiceClient::new(channel)
            .max_decoding_message_size(flowplane_grpc::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(flowplane_grpc::MAX_MESSAGE_BYTES);
        let mut inbound = client.process(ReceiverStream::new(rx)).await?.into_inner();
        match process::await_ready(&mut inbound).await {
            Ok(ready) => Ok((
                Self {
                    tx: Some(ChunkSender(tx)),
                    rx: ResultReceiver(inbound),
                },
                ready,
            )),
            Err(NotReady::Failed(status)) => Err(status),
            Err(NotReady::Unexpected(what)) => Err(Status::internal(format!(
                "host answered init with {what} before ready"
            ))),
            Err(NotReady::Closed) => {
                Err(Status::unavailable("host closed the stream before ready"))
            }
        }
    }

    /// Sends one chunk. Waits while the host is not keeping up (backpressure).
    pub async fn send(&self, chunk: DataChunk) -> Result<(), Status> {
        self.sender()?.send(chunk).await
    }

    /// Sends a raw request, for callers testing how a host treats unusual messages.
    pub async fn send_raw(&self, request: ProcessRequest) -> Result<(), Status> {
        self.sender()?.send_raw(request).await
    }

    fn sender(&self) -> Result<&ChunkSender, Status> {
        self.tx
            .as_ref()
            .ok_or_else(|| Status::failed_precondition("the stream's send side is closed"))
    }

    /// The next result; `None` once the host ended the stream cleanly.
    pub async fn result(&mut self) -> Result<Option<ProcessResult>, Status> {
        self.rx.result().await
    }

    /// Sends one chunk and waits for its result: call and answer, for tests and simple
    /// tools. A stream that ends first is UNAVAILABLE; a result for another sequence is
    /// INTERNAL, naming both.
    pub async fn call(
        &mut self,
        sequence: u64,
        input: &str,
        payload: Payload,
    ) -> Result<ProcessResult, Status> {
        self.send(chunk(sequence, input, payload)).await?;
        let result = self.result().await?.ok_or_else(|| {
            Status::unavailable(format!(
                "the host ended the stream before answering sequence {sequence}"
            ))
        })?;
        if result.input_sequence != sequence {
            return Err(Status::internal(format!(
                "the host answered sequence {} where {sequence} was due",
                result.input_sequence
            )));
        }
        Ok(result)
    }

    /// Closes the send side: the host answers what it has, then ends the stream.
    pub fn close_send(&mut self) {
        self.tx = None;
    }

    /// Splits the stream, to send and receive from different tasks.
    pub fn split(self) -> (Option<ChunkSender>, ResultReceiver) {
        (self.tx, self.rx)
    }
}

impl ChunkSender {
    /// Sends one chunk. Waits while the host is not keeping up (backpressure).
    pub async fn send(&self, chunk: DataChunk) -> Result<(), Status> {
        self.send_raw(ProcessRequest {
            request: Some(process_request::Request::Chunk(chunk)),
        })
        .await
    }

    /// Sends a raw request.
    pub async fn send_raw(&self, request: ProcessRequest) -> Result<(), Status> {
        self.0
            .send(request)
            .await
            .map_err(|_| Status::unavailable("the stream is closed"))
    }
}

impl ResultReceiver {
    /// The next result; `None` once the host ended the stream cleanly.
    pub async fn result(&mut self) -> Result<Option<ProcessResult>, Status> {
        loop {
            match self.0.message().await? {
                None => return Ok(None),
                Some(message) => match message.response {
                    Some(process_response::Response::Result(result)) => return Ok(Some(result)),
                    Some(process_response::Response::Ready(_)) => {
                        return Err(Status::internal("host sent ready twice"));
                    }
                    None => continue,
                },
            }
        }
    }
}

/// A chunk for input `input` (empty: the only input).
pub fn chunk(sequence: u64, input: &str, payload: Payload) -> DataChunk {
    DataChunk {
        sequence,
        input: input.to_string(),
        buffer: Some(DataBuffer {
            payload: Some(payload),
            metadata: Default::default(),
        }),
        timestamp_us: 0,
        metadata: Default::default(),
    }
}

/// An init for `processor` with JSON params (`serde_json::Value::Null` for none).
pub fn init(processor: &str, node_id: &str, params: serde_json::Value) -> ProcessInit {
    ProcessInit {
        processor: processor.to_string(),
        node_id: node_id.to_string(),
        params: params.as_object().map(flowplane_proto::json_to_struct),
        session_id: String::new(),
    }
}
