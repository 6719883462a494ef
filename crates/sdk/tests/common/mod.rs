//! Setup shared by the SDK's integration tests: a host served on 127.0.0.1, Process
//! streams opened to it, payload builders and the echo processor. It holds no assertion a
//! test relies on beyond "one result per chunk, for that chunk": what a test checks stays
//! in the test.

// Each test file uses its own subset of these helpers.
#![allow(dead_code)]

use std::{net::SocketAddr, time::Duration};

use bytes::Bytes;
use flowplane_grpc::config::ClientArgs;
use flowplane_sdk::{
    Capability, Input, Output, ParamError, Params, ProcessError, Processor, ProcessorHost,
    ServeOptions,
    client::{ProcessStream, init},
    proto::{
        data::v1::{BinaryData, DataTypeHint, TextData, data_buffer::Payload},
        processor::v1::{ProcessReady, ProcessResult},
    },
    serve,
};
use flowplane_test_support::local_listener;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// A host being served by `serve` until `stop` is cancelled.
pub struct Server {
    pub addr: SocketAddr,
    pub host: ProcessorHost,
    pub stop: CancellationToken,
    pub task: tokio::task::JoinHandle<flowplane_sdk::Result<()>>,
}

impl Server {
    /// Serves `host` on a fresh 127.0.0.1 port with the default options but `grace_period`.
    pub async fn start(host: ProcessorHost, grace_period: Duration) -> Self {
        let options = ServeOptions {
            grace_period,
            ..Default::default()
        };
        Self::serve(host, local_listener().await, options)
    }

    /// Serves `host` on `listener`, for tests whose options depend on the bound address.
    pub fn serve(host: ProcessorHost, listener: TcpListener, options: ServeOptions) -> Self {
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let task = tokio::spawn(serve(
            host.clone(),
            options,
            listener,
            stop.clone().cancelled_owned(),
        ));
        Self {
            addr,
            host,
            stop,
            task,
        }
    }

    /// Stops the host and waits for `serve` to return, which must be without error.
    pub async fn shutdown(self) {
        self.stop.cancel();
        self.task.await.unwrap().unwrap();
    }

    pub async fn channel(&self) -> Channel {
        flowplane_grpc::client::connect(&self.addr.to_string(), &ClientArgs::default())
            .await
            .unwrap()
    }

    /// Opens a stream to `processor` for node `node`, returning the host's answer as is.
    pub async fn try_open(
        &self,
        processor: &str,
        node: &str,
        params: serde_json::Value,
    ) -> Result<(ProcessStream, ProcessReady), tonic::Status> {
        ProcessStream::open(self.channel().await, init(processor, node, params)).await
    }

    /// Opens a stream to `processor` for node "node-a"; panics if the host refuses it.
    pub async fn open(&self, processor: &str, params: serde_json::Value) -> ProcessStream {
        self.try_open(processor, "node-a", params).await.unwrap().0
    }

    /// The status with which the host refuses a stream to `processor` for node "node-a".
    pub async fn open_err(&self, processor: &str, params: serde_json::Value) -> tonic::Status {
        self.try_open(processor, "node-a", params)
            .await
            .unwrap_err()
    }
}

/// Sends one chunk and returns its result, which must be for that chunk's sequence.
pub async fn one(
    stream: &mut ProcessStream,
    sequence: u64,
    input: &str,
    payload: Payload,
) -> ProcessResult {
    stream.call(sequence, input, payload).await.unwrap()
}

pub fn text(s: &str) -> Payload {
    Payload::Text(TextData {
        text: s.into(),
        language: String::new(),
    })
}

pub fn binary(b: &[u8]) -> Payload {
    Payload::Binary(BinaryData {
        data: Bytes::copy_from_slice(b),
        mime_type: String::new(),
    })
}

/// The payload of a result's first output.
pub fn first_payload(result: &ProcessResult) -> Option<&Payload> {
    result.outputs[0]
        .chunk
        .as_ref()
        .unwrap()
        .buffer
        .as_ref()
        .unwrap()
        .payload
        .as_ref()
}

/// The text of a result's first output; panics if it is not text.
pub fn output_text(result: &ProcessResult) -> &str {
    match first_payload(result) {
        Some(Payload::Text(t)) => &t.text,
        other => panic!("not text: {other:?}"),
    }
}

/// Echoes text.
pub struct Echo;

impl Processor for Echo {
    fn capability() -> Capability {
        Capability::new("test.echo", "echoes text")
            .input("text", [DataTypeHint::Text], "text")
            .output("text", [DataTypeHint::Text], "the same text")
            .stateless()
    }
    fn create(_: &Params) -> Result<Self, ParamError> {
        Ok(Self)
    }
    fn process(&mut self, input: Input<'_>) -> Result<Vec<Output>, ProcessError> {
        Ok(vec![Output::new("text", input.payload)])
    }
}
