//! Building blocks the trace and metrics layers share: a response future and a response
//! body that tell an [`Observer`] exactly once how an RPC ended, with the gRPC code from
//! the headers (trailers-only replies), the trailers (streams), or `CANCELLED` when the
//! call is dropped first. They pass every frame through untouched and never fail a call.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
};

use http::{HeaderMap, StatusCode};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tonic::Code;

/// How an RPC ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RpcEnd {
    /// The gRPC status code.
    pub code: Code,
    /// The status message, for codes other than OK.
    pub message: Option<String>,
}

impl RpcEnd {
    /// An end with this code and no message.
    pub fn code(code: Code) -> Self {
        Self {
            code,
            message: None,
        }
    }

    /// The status `headers` (or trailers) carry, if they carry one.
    pub fn from_headers(headers: &HeaderMap) -> Option<Self> {
        let code = Code::from_bytes(headers.get("grpc-status")?.as_bytes());
        let message = if code == Code::Ok {
            None
        } else {
            tonic::Status::from_header_map(headers)
                .map(|s| s.message().to_string())
                .filter(|m| !m.is_empty())
        };
        Some(Self { code, message })
    }

    /// The code for a reply that is not gRPC at all, after the gRPC HTTP mapping.
    pub fn from_http_status(status: StatusCode) -> Self {
        let code = match status {
            StatusCode::BAD_REQUEST => Code::Internal,
            StatusCode::UNAUTHORIZED => Code::Unauthenticated,
            StatusCode::FORBIDDEN => Code::PermissionDenied,
            StatusCode::NOT_FOUND => Code::Unimplemented,
            StatusCode::TOO_MANY_REQUESTS
            | StatusCode::BAD_GATEWAY
            | StatusCode::SERVICE_UNAVAILABLE
            | StatusCode::GATEWAY_TIMEOUT => Code::Unavailable,
            _ => Code::Unknown,
        };
        Self::code(code)
    }
}

/// The canonical upper-case name of a gRPC code, as in the gRPC status code table.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// `(service, method)` of a gRPC path `/package.Service/Method`, if it is one.
pub fn service_method(path: &str) -> Option<(&str, &str)> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    let ident = |s: &str, extra: char| {
        !s.is_empty()
            && s.len() <= 128
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == extra)
    };
    (ident(service, '.') && ident(method, '_')).then_some((service, method))
}

/// Told how an RPC went; the layers in [`crate::grpc`] and [`crate::metrics`] implement it.
pub trait Observer: Send + 'static {
    /// Runs `f` (the inner service's `call` and `poll`) in this observer's context.
    fn in_scope<R>(&self, f: impl FnOnce() -> R) -> R {
        f()
    }

    /// The RPC ended; called exactly once.
    fn finish(self, end: RpcEnd);
}

pin_project! {
    /// The response future of an observed service.
    pub struct RpcFuture<F, O: Observer> {
        #[pin]
        inner: F,
        observer: Option<O>,
    }

    impl<F, O: Observer> PinnedDrop for RpcFuture<F, O> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(observer) = this.project().observer.take() {
                observer.finish(RpcEnd::code(Code::Cancelled));
            }
        }
    }
}

impl<F, O: Observer> RpcFuture<F, O> {
    /// Observes `inner`; `None` passes it through untouched.
    pub fn new(inner: F, observer: Option<O>) -> Self {
        Self { inner, observer }
    }
}

impl<F, B, E, O> Future for RpcFuture<F, O>
where
    F: Future<Output = Result<http::Response<B>, E>>,
    E: std::fmt::Display,
    O: Observer,
{
    type Output = Result<http::Response<RpcBody<B, O>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut inner = this.inner;
        let result = match this.observer.as_ref() {
            Some(observer) => ready!(observer.in_scope(|| inner.as_mut().poll(cx))),
            None => ready!(inner.poll(cx)),
        };
        let observer = this.observer.take();
        Poll::Ready(match result {
            Ok(response) => Ok(observe_response(response, observer)),
            Err(error) => {
                if let Some(observer) = observer {
                    observer.finish(RpcEnd {
                        code: Code::Unknown,
                        message: Some(error.to_string()),
                    });
                }
                Err(error)
            }
        })
    }
}

fn observe_response<B, O: Observer>(
    response: http::Response<B>,
    observer: Option<O>,
) -> http::Response<RpcBody<B, O>> {
    let observer = observer.and_then(|observer| {
        let ended = RpcEnd::from_headers(response.headers()).or_else(|| {
            (response.status() != StatusCode::OK)
                .then(|| RpcEnd::from_http_status(response.status()))
        });
        match ended {
            Some(end) => {
                observer.finish(end);
                None
            }
            None => Some(observer),
        }
    });
    response.map(|inner| RpcBody { inner, observer })
}

pin_project! {
    /// A response body that reports the end of its RPC: the trailers' status when they
    /// pass, `CANCELLED` when dropped before them.
    pub struct RpcBody<B, O: Observer> {
        #[pin]
        inner: B,
        observer: Option<O>,
    }

    impl<B, O: Observer> PinnedDrop for RpcBody<B, O> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(observer) = this.project().observer.take() {
                observer.finish(RpcEnd::code(Code::Cancelled));
            }
        }
    }
}

/// An empty body observing nothing, which generated clients need to build interceptors.
impl<B: Default, O: Observer> Default for RpcBody<B, O> {
    fn default() -> Self {
        Self {
            inner: B::default(),
            observer: None,
        }
    }
}

impl<B, O> Body for RpcBody<B, O>
where
    B: Body,
    B::Error: std::fmt::Display,
    O: Observer,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        if this.observer.is_some() {
            let end = match &frame {
                Some(Ok(frame)) => frame.trailers_ref().map(|trailers| {
                    RpcEnd::from_headers(trailers).unwrap_or(RpcEnd::code(Code::Unknown))
                }),
                Some(Err(error)) => Some(RpcEnd {
                    code: Code::Unknown,
                    message: Some(error.to_string()),
                }),
                // A gRPC reply always ends with a status; one without it is broken.
                None => Some(RpcEnd {
                    code: Code::Unknown,
                    message: Some("stream ended without a grpc-status".into()),
                }),
            };
            if let Some(end) = end
                && let Some(observer) = this.observer.take()
            {
                observer.finish(end);
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use http_body::Frame;

    use super::*;

    #[derive(Clone, Default)]
    struct Ends(Arc<Mutex<Vec<RpcEnd>>>);

    impl Observer for Ends {
        fn finish(self, end: RpcEnd) {
            self.0.lock().unwrap().push(end);
        }
    }

    impl Ends {
        fn taken(&self) -> Vec<RpcEnd> {
            std::mem::take(&mut self.0.lock().unwrap())
        }
    }

    /// A body of pre-made frames.
    struct Frames(std::collections::VecDeque<Frame<bytes::Bytes>>);

    impl Body for Frames {
        type Data = bytes::Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
            Poll::Ready(self.0.pop_front().map(Ok))
        }
    }

    fn trailers(code: i32, message: &str) -> HeaderMap {
        let mut map = HeaderMap::new();
        map.insert("grpc-status", code.to_string().parse().unwrap());
        if !message.is_empty() {
            map.insert("grpc-message", message.parse().unwrap());
        }
        map
    }

    async fn drain<B: Body + Unpin>(body: &mut B) {
        use std::future::poll_fn;
        while let Some(frame) = poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await {
            assert!(frame.is_ok());
        }
    }

    fn respond(
        headers: HeaderMap,
        frames: Vec<Frame<bytes::Bytes>>,
    ) -> std::future::Ready<Result<http::Response<Frames>, std::convert::Infallible>> {
        let mut response = http::Response::new(Frames(frames.into()));
        *response.headers_mut() = headers;
        std::future::ready(Ok(response))
    }

    #[tokio::test]
    async fn a_stream_ends_with_the_code_of_its_trailers() {
        let ends = Ends::default();
        let frames = vec![
            Frame::data(bytes::Bytes::from_static(b"x")),
            Frame::trailers(trailers(5, "no%20such%20node")),
        ];
        let response = RpcFuture::new(respond(HeaderMap::new(), frames), Some(ends.clone()))
            .await
            .unwrap();
        assert!(ends.taken().is_empty(), "nothing ends before the trailers");
        let mut body = Box::pin(response.into_body());
        drain(&mut body).await;
        assert_eq!(
            ends.taken(),
            vec![RpcEnd {
                code: Code::NotFound,
                message: Some("no such node".into())
            }]
        );
        drop(body);
        assert!(ends.taken().is_empty(), "reported exactly once");
    }

    #[tokio::test]
    async fn a_trailers_only_reply_ends_at_the_headers() {
        let ends = Ends::default();
        let response = RpcFuture::new(respond(trailers(12, ""), vec![]), Some(ends.clone()))
            .await
            .unwrap();
        assert_eq!(ends.taken(), vec![RpcEnd::code(Code::Unimplemented)]);
        drop(response);
        assert!(ends.taken().is_empty());
    }

    #[tokio::test]
    async fn dropping_the_body_early_is_a_cancellation() {
        let ends = Ends::default();
        let frames = vec![Frame::data(bytes::Bytes::from_static(b"x"))];
        let response = RpcFuture::new(respond(HeaderMap::new(), frames), Some(ends.clone()))
            .await
            .unwrap();
        drop(response);
        assert_eq!(ends.taken(), vec![RpcEnd::code(Code::Cancelled)]);
    }

    #[tokio::test]
    async fn dropping_the_future_early_is_a_cancellation() {
        let ends = Ends::default();
        let pending =
            std::future::pending::<Result<http::Response<Frames>, std::convert::Infallible>>();
        let future = RpcFuture::new(pending, Some(ends.clone()));
        drop(future);
        assert_eq!(ends.taken(), vec![RpcEnd::code(Code::Cancelled)]);
    }

    #[test]
    fn paths_split_into_service_and_method() {
        assert_eq!(
            service_method("/flowplane.processor.v1.ProcessorService/Process"),
            Some(("flowplane.processor.v1.ProcessorService", "Process"))
        );
        assert_eq!(service_method("/no-method"), None);
        assert_eq!(service_method("/a.B/c/d"), None);
        assert_eq!(service_method("/a.B/"), None);
        assert_eq!(service_method("/../etc/passwd"), None);
    }

    #[test]
    fn non_grpc_replies_map_like_grpc_does() {
        assert_eq!(
            RpcEnd::from_http_status(StatusCode::NOT_FOUND).code,
            Code::Unimplemented
        );
        assert_eq!(
            RpcEnd::from_http_status(StatusCode::SERVICE_UNAVAILABLE).code,
            Code::Unavailable
        );
        assert_eq!(code_name(Code::DeadlineExceeded), "DEADLINE_EXCEEDED");
    }
}
