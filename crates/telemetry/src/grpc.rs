//! W3C trace context across every gRPC hop: a server layer that continues the caller's
//! trace (`traceparent` / `tracestate`) in a SERVER span, and a client wrapper that
//! opens a CLIENT span and sends its context. Spans follow the RPC semantic conventions
//! (`rpc.system`, `rpc.service`, `rpc.method`, `rpc.grpc.status_code`) and last until the
//! status is known, so a stream's span covers the whole stream. Health, reflection and
//! heartbeat calls are not traced one by one. The layers observe only; they never change
//! or fail a call. They record the path, status and trace context, never other request
//! metadata, so a bearer token in `authorization` cannot reach a span or a log line
//! (`tests/tests/auth_logs.rs` checks it at TRACE).
//!
//! A handler's own spans are children of the SERVER span while the handler runs; work a
//! handler spawns or streams back keeps the trace when instrumented with the span that
//! was current in the handler (`.instrument(tracing::Span::current())`).

use std::task::{Context, Poll};

use opentelemetry::trace::TraceContextExt as _;
use tower::{Layer, Service};
use tracing::Span;
use tracing_opentelemetry_instrumentation_sdk::{self as otel, http as otel_http};

use crate::rpc::{Observer, RpcBody, RpcEnd, RpcFuture};

/// A tonic channel whose calls are traced; generated clients take it like a `Channel`
/// (`FooClient::new(grpc::traced(channel))`).
pub type TracedChannel = TraceClient<tonic::transport::Channel>;

const HEARTBEATS: &[&str] = &["ProcessorHeartbeat", "SourceHeartbeat", "ConsumerHeartbeat"];
const CONTROL_PLANE: &str = "/flowplane.controlplane.v1.ControlPlaneService/";

/// Whether calls to this gRPC path get spans: not health checks, not reflection, and
/// heartbeats only with `--trace-heartbeats`.
pub fn is_traced(path: &str) -> bool {
    if path.starts_with("/grpc.health.v1.Health/") || path.starts_with("/grpc.reflection.") {
        return false;
    }
    let heartbeat = path
        .strip_prefix(CONTROL_PLANE)
        .is_some_and(|method| HEARTBEATS.contains(&method));
    !heartbeat || crate::trace_heartbeats()
}

/// The server layer: continues the caller's trace in a SERVER span per traced call.
pub fn server_layer() -> TraceServerLayer {
    TraceServerLayer
}

/// The client layer: a CLIENT span per traced call, its context sent as `traceparent`.
pub fn client_layer() -> TraceClientLayer {
    TraceClientLayer
}

/// Wraps a channel (or any client service) so that its calls are traced.
pub fn traced<S>(inner: S) -> TraceClient<S> {
    TraceClient { inner }
}

/// See [`server_layer`].
#[derive(Clone, Copy, Debug, Default)]
pub struct TraceServerLayer;

impl<S> Layer<S> for TraceServerLayer {
    type Service = TraceServer<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TraceServer { inner }
    }
}

/// A server service that traces the calls it passes on.
#[derive(Clone, Debug)]
pub struct TraceServer<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for TraceServer<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Error: std::fmt::Display,
{
    type Response = http::Response<RpcBody<ResBody, RpcSpan>>;
    type Error = S::Error;
    type Future = RpcFuture<S::Future, RpcSpan>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        if !is_traced(request.uri().path()) {
            return RpcFuture::new(self.inner.call(request), None);
        }
        let span = otel_http::grpc_server::make_span_from_request(&request);
        let remote = otel_http::extract_context(request.headers());
        // Without a subscriber that records the span, the caller's context still becomes
        // current, so the handler's own spans and calls stay in the caller's trace.
        let fallback = otel::set_parent_or_fallback(&span, remote)
            .filter(|context| context.span().span_context().is_valid());
        let observer = RpcSpan {
            span,
            fallback,
            server: true,
        };
        let future = observer.in_scope(|| self.inner.call(request));
        RpcFuture::new(future, Some(observer))
    }
}

/// See [`client_layer`].
#[derive(Clone, Copy, Debug, Default)]
pub struct TraceClientLayer;

impl<S> Layer<S> for TraceClientLayer {
    type Service = TraceClient<S>;

    fn layer(&self, inner: S) -> Self::Service {
        traced(inner)
    }
}

/// A client service (usually a `Channel`) whose calls are traced.
#[derive(Clone, Debug)]
pub struct TraceClient<S> {
    inner: S,
}

impl<S> TraceClient<S> {
    /// The wrapped service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for TraceClient<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Error: std::fmt::Display,
{
    type Response = http::Response<RpcBody<ResBody, RpcSpan>>;
    type Error = S::Error;
    type Future = RpcFuture<S::Future, RpcSpan>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        if !is_traced(request.uri().path()) {
            return RpcFuture::new(self.inner.call(request), None);
        }
        let span = otel_http::grpc_client::make_span_from_request(&request);
        otel_http::inject_context(
            &otel::find_context_from_tracing(&span),
            request.headers_mut(),
        );
        let observer = RpcSpan {
            span,
            fallback: None,
            server: false,
        };
        let future = observer.in_scope(|| self.inner.call(request));
        RpcFuture::new(future, Some(observer))
    }
}

/// The span of one RPC, ended when its status is known.
#[derive(Debug)]
pub struct RpcSpan {
    span: Span,
    fallback: Option<opentelemetry::Context>,
    server: bool,
}

impl Observer for RpcSpan {
    fn in_scope<R>(&self, f: impl FnOnce() -> R) -> R {
        let _remote = self.fallback.clone().map(opentelemetry::Context::attach);
        self.span.in_scope(f)
    }

    fn finish(self, end: RpcEnd) {
        let code = end.code as i32;
        self.span.record("rpc.grpc.status_code", code);
        // Per the conventions a server span is an error only for server-side codes.
        if otel_http::grpc::status_is_error(code as u16, self.server) {
            self.span.record("otel.status_code", "ERROR");
            if let Some(message) = &end.message {
                self.span.record("exception.message", message.as_str());
            }
        }
        // The OpenTelemetry layer ends a span at its last exit: this one is the RPC's end.
        let _entered = self.span.enter();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_reflection_and_heartbeats_are_not_traced() {
        assert!(!is_traced("/grpc.health.v1.Health/Check"));
        assert!(!is_traced("/grpc.health.v1.Health/Watch"));
        assert!(!is_traced(
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
        ));
        assert!(!is_traced(
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
        ));
        for heartbeat in HEARTBEATS {
            assert!(!is_traced(&format!("{CONTROL_PLANE}{heartbeat}")));
        }
        assert!(is_traced(
            "/flowplane.controlplane.v1.ControlPlaneService/RegisterProcessor"
        ));
        assert!(is_traced(
            "/flowplane.processor.v1.ProcessorService/Process"
        ));
    }
}
