//! Bearer-token auth carried in the `authorization` metadata key. Servers check it with
//! [`BearerAuth`] (or [`check_bearer`] where only some RPCs need it); clients attach it
//! with [`AttachBearer`]. Tokens are compared in constant time and never logged.

use std::sync::Arc;

use tonic::{Request, Status, metadata::MetadataMap, service::Interceptor};

const AUTHORIZATION: &str = "authorization";

/// Checks that `metadata` carries `authorization: Bearer <expected>`.
pub fn check_bearer(metadata: &MetadataMap, expected: &str) -> Result<(), Status> {
    let Some(value) = metadata.get(AUTHORIZATION) else {
        return Err(Status::unauthenticated(
            "missing authorization metadata: send `authorization: Bearer <token>`",
        ));
    };
    let presented = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| Status::unauthenticated("authorization metadata is not a bearer token"))?;
    if constant_time_eq(presented.as_bytes(), expected.as_bytes()) {
        Ok(())
    } else {
        Err(Status::unauthenticated("authorization token is not valid"))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Server interceptor: every call must carry the token, when one is configured.
#[derive(Clone, Debug, Default)]
pub struct BearerAuth {
    token: Option<Arc<str>>,
}

impl BearerAuth {
    /// `None` accepts every call; `Some` requires that token.
    pub fn new(token: Option<String>) -> Self {
        Self {
            token: token.filter(|t| !t.is_empty()).map(Into::into),
        }
    }
}

impl Interceptor for BearerAuth {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(token) = &self.token {
            check_bearer(request.metadata(), token)?;
        }
        Ok(request)
    }
}

/// Client interceptor: attaches the token to every call, when one is configured.
#[derive(Clone, Debug, Default)]
pub struct AttachBearer {
    header: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
}

impl AttachBearer {
    /// `None` attaches nothing. A token that is not valid ASCII metadata is rejected.
    pub fn new(token: Option<&str>) -> Result<Self, Status> {
        let header = token
            .filter(|t| !t.is_empty())
            .map(|t| {
                format!("Bearer {t}")
                    .parse()
                    .map_err(|_| Status::invalid_argument("token is not valid ascii metadata"))
            })
            .transpose()?;
        Ok(Self { header })
    }
}

impl Interceptor for AttachBearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(header) = &self.header {
            request.metadata_mut().insert(AUTHORIZATION, header.clone());
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_token(token: Option<&str>) -> Request<()> {
        AttachBearer::new(token)
            .unwrap()
            .call(Request::new(()))
            .unwrap()
    }

    #[test]
    fn accepts_the_configured_token_only() {
        let mut auth = BearerAuth::new(Some("s3cret".into()));
        assert!(auth.call(with_token(Some("s3cret"))).is_ok());
        let wrong = auth.call(with_token(Some("s3cre7"))).unwrap_err();
        assert_eq!(wrong.code(), tonic::Code::Unauthenticated);
        let missing = auth.call(with_token(None)).unwrap_err();
        assert_eq!(missing.code(), tonic::Code::Unauthenticated);
        assert!(missing.message().contains("authorization"));
    }

    #[test]
    fn no_configured_token_accepts_everything() {
        let mut auth = BearerAuth::new(None);
        assert!(auth.call(with_token(None)).is_ok());
        assert!(
            BearerAuth::new(Some(String::new()))
                .call(with_token(None))
                .is_ok()
        );
    }
}
