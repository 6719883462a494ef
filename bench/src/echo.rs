//! The raw tonic baseline: a hand-written gRPC service (no codegen, no proto file) that
//! echoes `DataChunk`s on a bidi stream and `ProcessorHeartbeatRequest`s on a unary call,
//! served with the same transport settings and codec as flowplane's servers but none of
//! its layers. It must stay the cheapest honest echo: no task, channel or copy beyond
//! what tonic does.

use std::{
    convert::Infallible,
    future::Future,
    task::{Context, Poll},
    time::Duration,
};

use flowplane_proto::codec::FlowCodec;
use flowplane_proto::{controlplane::v1::ProcessorHeartbeatRequest, data::v1::DataChunk};
use tokio::net::TcpListener;
use tonic::{
    Request, Response, Status, Streaming,
    body::Body as TonicBody,
    codegen::{Body, BoxFuture, Service, StdError, http},
    server::{Grpc, NamedService, StreamingService, UnaryService},
    transport::{Channel, Server, server::TcpIncoming},
};

use crate::{Error, Result};

/// The gRPC service name the echo routes live under (no proto declares it).
pub const SERVICE: &str = "flowplane.bench.v1.Echo";
/// Path of the bidi echo of `DataChunk`.
pub const BIDI_PATH: &str = "/flowplane.bench.v1.Echo/Bidi";
/// Path of the unary echo of `ProcessorHeartbeatRequest`.
pub const UNARY_PATH: &str = "/flowplane.bench.v1.Echo/Unary";

/// The echo service as a tower service tonic's router can serve.
#[derive(Clone, Copy, Debug, Default)]
pub struct EchoServer;

impl NamedService for EchoServer {
    const NAME: &'static str = SERVICE;
}

struct Bidi;

impl StreamingService<DataChunk> for Bidi {
    type Response = DataChunk;
    type ResponseStream = Streaming<DataChunk>;
    type Future = std::future::Ready<Result<Response<Self::ResponseStream>, Status>>;

    fn call(&mut self, request: Request<Streaming<DataChunk>>) -> Self::Future {
        // The inbound stream is the response: every chunk goes back as it was decoded.
        std::future::ready(Ok(Response::new(request.into_inner())))
    }
}

struct Unary;

impl UnaryService<ProcessorHeartbeatRequest> for Unary {
    type Response = ProcessorHeartbeatRequest;
    type Future = std::future::Ready<Result<Response<Self::Response>, Status>>;

    fn call(&mut self, request: Request<ProcessorHeartbeatRequest>) -> Self::Future {
        std::future::ready(Ok(Response::new(request.into_inner())))
    }
}

impl<B> Service<http::Request<B>> for EchoServer
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<TonicBody>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        match request.uri().path() {
            BIDI_PATH => Box::pin(async move {
                let mut grpc = Grpc::new(FlowCodec::<DataChunk, DataChunk>::default())
                    .apply_max_message_size_config(
                        Some(flowplane_grpc::MAX_MESSAGE_BYTES),
                        Some(flowplane_grpc::MAX_MESSAGE_BYTES),
                    );
                Ok(grpc.streaming(Bidi, request).await)
            }),
            UNARY_PATH => Box::pin(async move {
                let mut grpc = Grpc::new(FlowCodec::<
                    ProcessorHeartbeatRequest,
                    ProcessorHeartbeatRequest,
                >::default())
                .apply_max_message_size_config(
                    Some(flowplane_grpc::MAX_MESSAGE_BYTES),
                    Some(flowplane_grpc::MAX_MESSAGE_BYTES),
                );
                Ok(grpc.unary(Unary, request).await)
            }),
            _ => Box::pin(
                async move { Ok(Status::unimplemented("no such echo method").into_http()) },
            ),
        }
    }
}

/// Serves the echo on `listener` until `shutdown` resolves, with the transport settings
/// `flowplane_grpc::server::GrpcServer` asks for (nodelay, keepalive, fixed h2 windows) and
/// nothing else. Nodelay is set on each accepted socket: tonic ignores
/// `Server::tcp_nodelay` for a caller-supplied incoming stream.
pub async fn serve(listener: TcpListener, shutdown: impl Future<Output = ()>) -> Result<()> {
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        // flowplane's fixed windows and stream limits (see flowplane_grpc::server): with
        // the adaptive window the echo itself is cut off by h2's small-frame budget
        // (GOAWAY too_many_data_frames) at 500 streams on one connection in B8.
        .http2_adaptive_window(Some(false))
        .initial_connection_window_size(flowplane_grpc::server::CONNECTION_WINDOW)
        .initial_stream_window_size(flowplane_grpc::server::STREAM_WINDOW)
        .max_frame_size(flowplane_grpc::server::MAX_FRAME_SIZE)
        .max_concurrent_streams(flowplane_grpc::server::MAX_CONCURRENT_STREAMS)
        .http2_max_pending_accept_reset_streams(Some(
            flowplane_grpc::server::MAX_PENDING_ACCEPT_RESET_STREAMS,
        ))
        .add_service(EchoServer)
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .map_err(|e| Error::Setup(format!("echo server: {e}")))
}

/// A client of the echo over `channel`, with flowplane's message limits.
#[derive(Clone, Debug)]
pub struct EchoClient {
    grpc: tonic::client::Grpc<Channel>,
}

impl EchoClient {
    /// Wraps a connected channel.
    pub fn new(channel: Channel) -> Self {
        Self {
            grpc: tonic::client::Grpc::new(channel)
                .max_decoding_message_size(flowplane_grpc::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(flowplane_grpc::MAX_MESSAGE_BYTES),
        }
    }

    /// Opens the bidi echo with `requests` as the request stream.
    pub async fn bidi(
        &mut self,
        requests: impl tonic::IntoStreamingRequest<Message = DataChunk>,
    ) -> Result<Streaming<DataChunk>, Status> {
        self.grpc
            .ready()
            .await
            .map_err(|e| Status::unavailable(format!("echo channel not ready: {e}")))?;
        let path = http::uri::PathAndQuery::from_static(BIDI_PATH);
        let codec = FlowCodec::<DataChunk, DataChunk>::default();
        Ok(self
            .grpc
            .streaming(requests.into_streaming_request(), path, codec)
            .await?
            .into_inner())
    }

    /// One unary echo.
    pub async fn unary(
        &mut self,
        request: ProcessorHeartbeatRequest,
    ) -> Result<ProcessorHeartbeatRequest, Status> {
        self.grpc
            .ready()
            .await
            .map_err(|e| Status::unavailable(format!("echo channel not ready: {e}")))?;
        let path = http::uri::PathAndQuery::from_static(UNARY_PATH);
        let codec = FlowCodec::<ProcessorHeartbeatRequest, ProcessorHeartbeatRequest>::default();
        Ok(self
            .grpc
            .unary(Request::new(request), path, codec)
            .await?
            .into_inner())
    }
}
