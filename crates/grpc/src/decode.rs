//! Requests that cannot be decoded get a precise status on every server. tonic answers
//! a unary request it cannot decode before any handler runs, as INTERNAL (bad protobuf,
//! invalid UTF-8) or OUT_OF_RANGE (over the message limit), with no details. This layer
//! rewrites exactly those trailers-only answers to INVALID_ARGUMENT and
//! RESOURCE_EXHAUSTED with the standard details; it never touches any other response.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use tonic::{Code, Status};
use tower::{Layer, Service};

/// The layer; add it to every server.
#[derive(Clone, Copy, Debug, Default)]
pub struct DecodeErrorsLayer;

impl<S> Layer<S> for DecodeErrorsLayer {
    type Service = DecodeErrors<S>;

    fn layer(&self, inner: S) -> Self::Service {
        DecodeErrors { inner }
    }
}

/// See [`DecodeErrorsLayer`].
#[derive(Clone, Debug)]
pub struct DecodeErrors<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for DecodeErrors<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let call = self.inner.call(request);
        Box::pin(async move {
            let mut response = call.await?;
            rewrite(response.headers_mut());
            Ok(response)
        })
    }
}

/// The precise status for a decode failure tonic reported, if `status` is one.
pub fn precise(status: &Status) -> Option<Status> {
    let message = status.message();
    let (code, reason, text) = match status.code() {
        Code::Internal if message.starts_with("failed to decode Protobuf message") => (
            Code::InvalidArgument,
            "UNDECODABLE_REQUEST",
            format!("request could not be decoded: {message}"),
        ),
        Code::OutOfRange if message.contains("message length too large") => (
            Code::ResourceExhausted,
            "MESSAGE_TOO_LARGE",
            format!(
                "request message over the limit of {} bytes (max_message_bytes): {message}",
                crate::MAX_MESSAGE_BYTES
            ),
        ),
        _ => return None,
    };
    Some(crate::status::with_reason(code, text, reason, ""))
}

fn rewrite(headers: &mut http::HeaderMap) {
    // Only trailers-only answers carry grpc-status in the headers; results stream on.
    let Some(status) = Status::from_header_map(headers) else {
        return;
    };
    let Some(better) = precise(&status) else {
        return;
    };
    if better.add_header(headers).is_err() {
        tracing::debug!("could not rewrite a decode error status");
    }
}

#[cfg(test)]
mod tests {
    use tonic_types::StatusExt;

    use super::*;

    #[test]
    fn undecodable_and_oversized_requests_get_precise_codes_and_details() {
        let mut headers = http::HeaderMap::new();
        Status::internal(
            "failed to decode Protobuf message: invalid string value: data is not UTF-8 encoded",
        )
        .add_header(&mut headers)
        .unwrap();
        rewrite(&mut headers);
        let status = Status::from_header_map(&headers).unwrap();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains("UTF-8"), "{status:?}");
        assert_eq!(
            status.get_details_error_info().unwrap().reason,
            "UNDECODABLE_REQUEST"
        );

        let mut headers = http::HeaderMap::new();
        Status::out_of_range(
            "Error, decoded message length too large: found 9 bytes, the limit is: 8 bytes",
        )
        .add_header(&mut headers)
        .unwrap();
        rewrite(&mut headers);
        let status = Status::from_header_map(&headers).unwrap();
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert!(status.message().contains("max_message_bytes"), "{status:?}");
    }

    #[test]
    fn other_statuses_and_ordinary_responses_are_untouched() {
        let mut headers = http::HeaderMap::new();
        Status::internal("processor crashed")
            .add_header(&mut headers)
            .unwrap();
        let before = headers.clone();
        rewrite(&mut headers);
        assert_eq!(headers, before);
        let mut plain = http::HeaderMap::new();
        rewrite(&mut plain);
        assert!(plain.is_empty());
    }
}
