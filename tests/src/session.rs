//! Drives one StreamPipeline session from a test: requests go in through a channel so a
//! test can interleave sending and reading, and everything the server answers is
//! collected in order.

use flowplane_proto::{
    common::v1::ErrorDetail,
    streaming::v1::{
        ChunkResult, StreamPipelineRequest, StreamPipelineResponse, StreamReady,
        stream_pipeline_response::Response,
        streaming_pipeline_service_client::StreamingPipelineServiceClient,
    },
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::{Body, Bytes, StdError};

/// One open session.
pub struct Session {
    requests: Option<mpsc::Sender<StreamPipelineRequest>>,
    responses: tonic::Streaming<StreamPipelineResponse>,
    /// The session's `ready` message.
    pub ready: StreamReady,
}

/// Everything a session answered after `ready`.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Results, in the order received.
    pub results: Vec<ChunkResult>,
    /// Per-chunk errors, in the order received.
    pub errors: Vec<ErrorDetail>,
    /// Whether `closed` arrived.
    pub closed: bool,
    /// How the RPC ended, if with an error.
    pub status: Option<tonic::Status>,
}

impl Outcome {
    /// The text of every text result, in order.
    pub fn texts(&self) -> Vec<&str> {
        self.results
            .iter()
            .filter_map(|r| match r.buffer.as_ref()?.payload.as_ref()? {
                flowplane_proto::data::v1::data_buffer::Payload::Text(t) => Some(t.text.as_str()),
                _ => None,
            })
            .collect()
    }
}

impl Session {
    /// Opens a session with `init` and waits for `ready`; the error is the init failure.
    pub async fn open<T>(
        client: &mut StreamingPipelineServiceClient<T>,
        init: StreamPipelineRequest,
    ) -> Result<Self, tonic::Status>
    where
        T: tonic::client::GrpcService<tonic::body::Body>,
        T::Error: Into<StdError>,
        T::ResponseBody: Body<Data = Bytes> + Send + 'static,
        <T::ResponseBody as Body>::Error: Into<StdError> + Send,
    {
        let (tx, rx) = mpsc::channel(1024);
        tx.send(init).await.expect("channel open");
        let mut responses = client
            .stream_pipeline(ReceiverStream::new(rx))
            .await?
            .into_inner();
        match responses.message().await? {
            Some(StreamPipelineResponse {
                response: Some(Response::Ready(ready)),
            }) => Ok(Self {
                requests: Some(tx),
                responses,
                ready,
            }),
            other => panic!("expected ready, got {other:?}"),
        }
    }

    /// Sends one request.
    pub async fn send(&self, request: StreamPipelineRequest) {
        self.requests
            .as_ref()
            .expect("requests still open")
            .send(request)
            .await
            .expect("request stream open");
    }

    /// Sends one request; false when the RPC has already ended (the server may end a
    /// session while the client is still sending).
    pub async fn try_send(&self, request: StreamPipelineRequest) -> bool {
        match &self.requests {
            Some(requests) => requests.send(request).await.is_ok(),
            None => false,
        }
    }

    /// Half-closes the request stream.
    pub fn finish_sending(&mut self) {
        self.requests = None;
    }

    /// Reads until `n` results or errors have arrived (or the stream ends).
    pub async fn read(&mut self, n: usize, outcome: &mut Outcome) {
        while outcome.results.len() + outcome.errors.len() < n && !self.read_one(outcome).await {}
    }

    /// Reads everything until the RPC ends.
    pub async fn read_to_end(mut self) -> Outcome {
        let mut outcome = Outcome::default();
        while !self.read_one(&mut outcome).await {}
        outcome
    }

    /// Reads one message into `outcome`; true when the RPC is over.
    pub async fn read_one(&mut self, outcome: &mut Outcome) -> bool {
        match self.responses.message().await {
            Ok(Some(message)) => {
                match message.response {
                    Some(Response::Result(r)) => outcome.results.push(r),
                    Some(Response::Error(e)) => outcome.errors.push(e),
                    Some(Response::Closed(_)) => outcome.closed = true,
                    _ => {}
                }
                false
            }
            Ok(None) => true,
            Err(status) => {
                outcome.status = Some(status);
                true
            }
        }
    }
}

/// Every result once, in input order, each the echo of its own chunk.
pub fn assert_complete_in_order(outcome: &Outcome, n: u64) {
    assert_one_result_each_in_order(outcome, n);
    assert_results_are_echoes(outcome);
}

/// The session closed OK with no error and exactly one result for each of chunks
/// `0..n`, in order, whatever the results hold.
pub fn assert_one_result_each_in_order(outcome: &Outcome, n: u64) {
    assert!(
        outcome.status.is_none(),
        "session failed: {:?}",
        outcome.status
    );
    assert!(outcome.errors.is_empty(), "{:?}", outcome.errors);
    let sequences: Vec<u64> = outcome.results.iter().map(|r| r.input_sequence).collect();
    assert_eq!(
        sequences,
        (0..n).collect::<Vec<_>>(),
        "every result once, in order"
    );
    assert!(outcome.closed, "closed was sent");
}

/// No result is wrong or duplicated: sequences strictly increase and each result is the
/// echo of the chunk it claims to answer.
pub fn assert_results_are_echoes(outcome: &Outcome) {
    let sequences: Vec<u64> = outcome.results.iter().map(|r| r.input_sequence).collect();
    assert!(
        sequences.windows(2).all(|w| w[0] < w[1]),
        "results duplicated or out of order: {sequences:?}"
    );
    for r in &outcome.results {
        let got = crate::data::text_of(r.buffer.as_ref().unwrap().payload.as_ref().unwrap());
        assert_eq!(got, format!("c{}", r.input_sequence), "wrong result");
    }
}
