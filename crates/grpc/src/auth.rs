//! Bearer-token auth by role, carried in the `authorization` metadata key. A server that
//! is given [`Tokens`] (a token file) checks every call in [`AuthLayer`] against its
//! service's table of method path -> [`Access`]; clients attach their token with
//! [`AttachBearer`]. Tokens are kept only as SHA-256 digests, compared in constant time,
//! and never logged or printed: no message, `Debug` output or error here contains one.

use std::{
    fmt,
    future::{Ready, ready},
    path::Path,
    sync::Arc,
    task::{Context, Poll},
};

use futures::future::Either;
use sha2::{Digest, Sha256};
use tonic::{
    Request, Status,
    metadata::MetadataMap,
    service::Interceptor,
    transport::{
        CertificateDer,
        server::{TcpConnectInfo, TlsConnectInfo},
    },
};
use tower::{Layer, Service};

use crate::{Error, Result};

const AUTHORIZATION: &str = "authorization";

/// Health and reflection answer everyone: probes and grpcurl carry no token.
const OPEN_PREFIXES: &[&str] = &["/grpc.health.v1.Health/", "/grpc.reflection."];

const MISSING: &str = "missing authorization metadata: send `authorization: Bearer <token>`";
const NOT_BEARER: &str =
    "authorization metadata is not a bearer token: send `authorization: Bearer <token>`";
const NOT_VALID: &str = "authorization token is not valid";
const NOT_LISTED: &str = "no authorization token, and no dns name of the client certificate is in \
     the client roles file: send `authorization: Bearer <token>` or use a listed certificate";

/// What a token may be used for. A server's table names the role each RPC needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Components joining: register, heartbeat and deregister RPCs of the control plane.
    Register,
    /// Reading the registry: GetComponent, ListComponents, WatchComponents.
    Read,
    /// The pipeline's data RPCs: StreamPipeline, ExecutePipeline, ValidatePipeline.
    Data,
    /// Calling processor hosts: Process and GetCapabilities.
    Process,
}

impl Role {
    /// Every role, in the order the docs list them.
    pub const ALL: [Role; 4] = [Role::Register, Role::Read, Role::Data, Role::Process];

    /// The role's name in token files and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Register => "register",
            Role::Read => "read",
            Role::Data => "data",
            Role::Process => "process",
        }
    }

    /// The role named `name` (exact, lowercase), if there is one.
    pub fn parse(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|role| role.as_str() == name)
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of roles.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct Roles(u8);

impl Roles {
    /// Whether `role` is in the set.
    pub fn contains(self, role: Role) -> bool {
        self.0 & role.bit() != 0
    }

    /// The set with `role` added.
    pub fn with(self, role: Role) -> Self {
        Roles(self.0 | role.bit())
    }
}

impl fmt::Debug for Roles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set()
            .entries(Role::ALL.into_iter().filter(|r| self.contains(*r)))
            .finish()
    }
}

impl From<Role> for Roles {
    fn from(role: Role) -> Self {
        Roles::default().with(role)
    }
}

/// The tokens a server accepts and the roles each carries.
///
/// The token file has one token per line followed by its comma-separated roles,
/// `TOKEN ROLE[,ROLE...]`, separated by spaces or tabs; blank lines and lines whose
/// first non-blank character is `#` are ignored. Tokens are printable ASCII without
/// spaces; each token appears once. Roles: `register`, `read`, `data`, `process`.
///
/// Beside tokens, a server with mutual TLS may give roles to client certificate
/// identities (`--tls-client-roles`, lines of `DNS-NAME ROLE[,ROLE...]`): a call that
/// presents a verified client certificate gets the roles of the DNS names in its
/// subjectAltName, added to those of the token it sends, if any.
#[derive(Clone, Default)]
pub struct Tokens {
    entries: Vec<([u8; 32], Roles)>,
    identities: Vec<(String, Roles)>,
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokens")
            .field("count", &self.entries.len())
            .field("identities", &self.identities)
            .finish_non_exhaustive()
    }
}

/// One meaningful line of a roles file: its number, its key and the roles after it.
struct RoleLine<'a> {
    number: usize,
    key: &'a str,
    roles: Roles,
}

/// Parses lines of `KEY ROLE[,ROLE...]` (blank and `#` lines skipped). Errors name the
/// file, the line and what is wrong, never the key: it may be a secret.
fn role_lines<'a>(text: &'a str, path: &Path, what: &'static str) -> Result<Vec<RoleLine<'a>>> {
    let bad = |line: usize, reason: String| Error::TokenFile {
        what,
        path: path.to_path_buf(),
        line,
        reason,
    };
    let mut lines = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let number = index + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [key, roles] = fields[..] else {
            let found = match fields.len() {
                1 => format!("a {} without roles", what_key(what).to_lowercase()),
                n => format!("{n} fields"),
            };
            return Err(bad(
                number,
                format!(
                    "expected `{} ROLE[,ROLE...]`, found {found}",
                    what_key(what)
                ),
            ));
        };
        if !key.is_ascii() {
            return Err(bad(
                number,
                format!(
                    "the {} is not printable ascii",
                    what_key(what).to_lowercase()
                ),
            ));
        }
        let mut set = Roles::default();
        for name in roles.split(',') {
            let role = Role::parse(name).ok_or_else(|| {
                bad(
                    number,
                    format!(
                        "unknown role {name:?}: roles are {}",
                        Role::ALL.map(Role::as_str).join(", ")
                    ),
                )
            })?;
            set = set.with(role);
        }
        lines.push(RoleLine {
            number,
            key,
            roles: set,
        });
    }
    if lines.is_empty() {
        return Err(Error::NoTokens {
            what,
            key: what_key(what),
            path: path.to_path_buf(),
        });
    }
    Ok(lines)
}

fn what_key(what: &str) -> &'static str {
    if what == TOKEN_FILE {
        "TOKEN"
    } else {
        "DNS-NAME"
    }
}

const TOKEN_FILE: &str = "token file";
const IDENTITY_FILE: &str = "client roles file";

fn digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

/// Whether `token` can travel as a bearer token: non-empty printable ASCII, no spaces.
pub fn is_valid_token(token: &str) -> bool {
    !token.is_empty() && token.bytes().all(|b| b.is_ascii_graphic())
}

impl Tokens {
    /// Reads and checks the token file at `path`.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::ReadFile {
            what: "token file (--token-file)",
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses token file `text`; `path` names the file in errors. An error names the
    /// line and what is wrong with it, never the token on it.
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let mut tokens = Tokens::default();
        let mut first_seen: Vec<([u8; 32], usize)> = Vec::new();
        for line in role_lines(text, path, TOKEN_FILE)? {
            let hash = digest(line.key.as_bytes());
            if let Some((_, earlier)) = first_seen.iter().find(|(h, _)| *h == hash) {
                return Err(Error::TokenFile {
                    what: TOKEN_FILE,
                    path: path.to_path_buf(),
                    line: line.number,
                    reason: format!("the same token as line {earlier}: list its roles on one line"),
                });
            }
            first_seen.push((hash, line.number));
            tokens.entries.push((hash, line.roles));
        }
        Ok(tokens)
    }

    /// Reads the client roles file at `path` (`DNS-NAME ROLE[,ROLE...]`) and adds its
    /// certificate identities. A name listed twice gets the roles of both lines.
    pub fn load_identities(&mut self, path: &Path) -> Result<()> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::ReadFile {
            what: "client roles file (--tls-client-roles)",
            path: path.to_path_buf(),
            source,
        })?;
        self.parse_identities(&text, path)
    }

    /// Adds the identities of client roles file `text`; `path` names it in errors.
    pub fn parse_identities(&mut self, text: &str, path: &Path) -> Result<()> {
        for line in role_lines(text, path, IDENTITY_FILE)? {
            let name = line.key.to_ascii_lowercase();
            match self.identities.iter_mut().find(|(n, _)| *n == name) {
                Some((_, roles)) => roles.0 |= line.roles.0,
                None => self.identities.push((name, line.roles)),
            }
        }
        Ok(())
    }

    /// The roles a client certificate with these DNS names carries, if any is listed.
    /// DNS names compare without regard to ASCII case.
    fn roles_of_names<'a>(&self, names: impl Iterator<Item = &'a str>) -> Option<Roles> {
        let mut found = None::<Roles>;
        for name in names {
            for (listed, roles) in &self.identities {
                if listed.eq_ignore_ascii_case(name) {
                    found = Some(Roles(found.map_or(0, |r| r.0) | roles.0));
                }
            }
        }
        found
    }

    /// Adds `token` with `role` (a `--join-token` or `--auth-token` given beside a token
    /// file); a token already listed gains the role.
    pub fn add(&mut self, token: &str, role: Role) {
        let hash = digest(token.as_bytes());
        match self.entries.iter_mut().find(|(h, _)| *h == hash) {
            Some((_, roles)) => *roles = roles.with(role),
            None => self.entries.push((hash, role.into())),
        }
    }

    /// Tokens holding just `token` with `role`.
    pub fn single(token: &str, role: Role) -> Self {
        let mut tokens = Tokens::default();
        tokens.add(token, role);
        tokens
    }

    /// The roles `presented` carries, or `None` for an unknown token. Every entry is
    /// compared, in constant time, so timing tells nothing about which one matched.
    pub fn roles_of(&self, presented: &str) -> Option<Roles> {
        let hash = digest(presented.as_bytes());
        let mut found = 0u8;
        let mut roles = 0u8;
        for (expected, carried) in &self.entries {
            let equal = constant_time_eq(&hash, expected);
            // All ones when equal, else zero: no branch on the secret comparison.
            let mask = 0u8.wrapping_sub(u8::from(equal));
            found |= mask;
            roles |= carried.0 & mask;
        }
        (found != 0).then_some(Roles(roles))
    }
}

/// The token of an `authorization` value: scheme `Bearer` in any case (RFC 7235),
/// then one or more spaces, then the token.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, rest) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = rest.trim_start_matches(' ');
    (!token.is_empty()).then_some(token)
}

fn presented_token(headers: &http::HeaderMap) -> Result<&str> {
    let value = headers
        .get(AUTHORIZATION)
        .ok_or(Error::Unauthenticated(MISSING))?;
    value
        .to_str()
        .ok()
        .and_then(bearer_token)
        .ok_or(Error::Unauthenticated(NOT_BEARER))
}

/// What one RPC accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Anyone, token or not.
    Open,
    /// A valid token carrying this role.
    Needs(Role),
}

/// One service's table: full gRPC method path (`/package.Service/Method`) -> access.
pub type AccessTable = [(&'static str, Access)];

/// The tokens a server accepts and the access its RPCs need. A path the table does not
/// list (other than health and reflection) needs a valid token of any role, so an RPC
/// left out of a table fails closed.
#[derive(Clone, Debug)]
pub struct Policy {
    tokens: Tokens,
    table: Vec<(&'static str, Access)>,
}

impl Policy {
    /// A policy over `tokens` for the RPCs in `table`.
    pub fn new(tokens: Tokens, table: &AccessTable) -> Self {
        Self {
            tokens,
            table: table.to_vec(),
        }
    }

    /// Whether a call to `path` with these request headers may go on.
    pub fn check(&self, path: &str, headers: &http::HeaderMap) -> Result<()> {
        self.check_with_peer(path, headers, None)
    }

    /// As [`Policy::check`], for a caller that may have presented `certificate` (the
    /// leaf of a client chain the TLS handshake verified): without a token, the roles of
    /// its DNS names in the client roles file decide.
    pub fn check_with_peer(
        &self,
        path: &str,
        headers: &http::HeaderMap,
        certificate: Option<&CertificateDer<'_>>,
    ) -> Result<()> {
        if OPEN_PREFIXES.iter().any(|open| path.starts_with(open)) {
            return Ok(());
        }
        let access = self
            .table
            .iter()
            .find(|(listed, _)| *listed == path)
            .map(|(_, access)| *access);
        if access == Some(Access::Open) {
            return Ok(());
        }
        // A verified certificate's listed names and a presented token both carry roles;
        // a call has the union. A token that is sent must be valid.
        let from_certificate = certificate.and_then(|leaf| self.certificate_roles(leaf));
        let roles = match (headers.contains_key(AUTHORIZATION), from_certificate) {
            (false, Some(roles)) => roles,
            (false, None) if certificate.is_some() && !self.tokens.identities.is_empty() => {
                return Err(Error::Unauthenticated(NOT_LISTED));
            }
            (_, from_certificate) => {
                let from_token = self
                    .tokens
                    .roles_of(presented_token(headers)?)
                    .ok_or(Error::Unauthenticated(NOT_VALID))?;
                Roles(from_token.0 | from_certificate.map_or(0, |r| r.0))
            }
        };
        match access {
            Some(Access::Needs(role)) if !roles.contains(role) => Err(Error::RoleRequired(role)),
            _ => Ok(()),
        }
    }
}

impl Policy {
    /// The roles the DNS names of a verified client certificate carry, if any is listed.
    fn certificate_roles(&self, leaf: &CertificateDer<'_>) -> Option<Roles> {
        if self.tokens.identities.is_empty() {
            return None;
        }
        let cert = webpki::EndEntityCert::try_from(leaf).ok()?;
        self.tokens.roles_of_names(cert.valid_dns_names())
    }
}

/// Methods of gRPC service `service` (fully qualified) in flowplane's descriptor set that
/// `table` does not list: a service's tests assert there are none.
pub fn unlisted_methods(service: &str, table: &AccessTable) -> Vec<String> {
    use prost::Message;
    let set = prost_types::FileDescriptorSet::decode(flowplane_proto::FILE_DESCRIPTOR_SET)
        .expect("flowplane's descriptor set decodes");
    let mut missing = Vec::new();
    for file in &set.file {
        for svc in &file.service {
            let name = format!("{}.{}", file.package(), svc.name());
            if name != service {
                continue;
            }
            for method in &svc.method {
                let path = format!("/{name}/{}", method.name());
                if !table.iter().any(|(listed, _)| *listed == path) {
                    missing.push(path);
                }
            }
        }
    }
    missing
}

/// The server layer: with a [`Policy`], refuses calls it does not allow before they
/// reach a handler (UNAUTHENTICATED or PERMISSION_DENIED with standard details);
/// without one, passes every call through.
#[derive(Clone, Debug, Default)]
pub struct AuthLayer {
    policy: Option<Arc<Policy>>,
}

impl AuthLayer {
    /// `None` lets every call through.
    pub fn new(policy: Option<Policy>) -> Self {
        Self {
            policy: policy.map(Arc::new),
        }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Auth {
            inner,
            policy: self.policy.clone(),
        }
    }
}

/// See [`AuthLayer`].
#[derive(Clone, Debug)]
pub struct Auth<S> {
    inner: S,
    policy: Option<Arc<Policy>>,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Auth<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    ResBody: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<Ready<Result<S::Response, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        if let Some(policy) = &self.policy
            && let Err(error) = policy.check_with_peer(
                request.uri().path(),
                request.headers(),
                peer_leaf(request.extensions()).as_ref(),
            )
        {
            // The path and the reason only: never the authorization value.
            tracing::debug!(path = request.uri().path(), %error, "call refused");
            return Either::Left(ready(Ok(Status::from(error).into_http())));
        }
        Either::Right(self.inner.call(request))
    }
}

/// The leaf certificate the client presented in the TLS handshake (verified against
/// `--tls-client-ca` by then), if the connection is TLS and the client sent one.
fn peer_leaf(extensions: &http::Extensions) -> Option<CertificateDer<'static>> {
    extensions
        .get::<TlsConnectInfo<TcpConnectInfo>>()
        .and_then(TlsConnectInfo::peer_certs)
        .and_then(|chain| chain.first().cloned())
}

/// Checks that `metadata` carries `authorization: Bearer <expected>`, scheme in any case.
pub fn check_bearer(metadata: &MetadataMap, expected: &str) -> Result<(), Status> {
    let headers = metadata.clone().into_headers();
    let presented = presented_token(&headers).map_err(Status::from)?;
    if constant_time_eq(&digest(presented.as_bytes()), &digest(expected.as_bytes())) {
        Ok(())
    } else {
        Err(Error::Unauthenticated(NOT_VALID).into())
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Client interceptor: attaches the token to every call, when one is configured.
#[derive(Clone, Default)]
pub struct AttachBearer {
    header: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
}

impl fmt::Debug for AttachBearer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AttachBearer")
            .field("header", &self.header.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl AttachBearer {
    /// `None` attaches nothing. A token that is not valid ASCII metadata is rejected.
    pub fn new(token: Option<&str>) -> Result<Self, Status> {
        let header = token
            .filter(|t| !t.is_empty())
            .map(|t| {
                let mut value: tonic::metadata::MetadataValue<_> = format!("Bearer {t}")
                    .parse()
                    .map_err(|_| Status::invalid_argument("token is not valid ascii metadata"))?;
                // Sensitive values print as "Sensitive" and are never HPACK-indexed.
                value.set_sensitive(true);
                Ok::<_, Status>(value)
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
    use tonic::Code;

    use super::*;

    fn with_token(token: Option<&str>) -> Request<()> {
        AttachBearer::new(token)
            .unwrap()
            .call(Request::new(()))
            .unwrap()
    }

    fn headers(authorization: Option<&str>) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        if let Some(value) = authorization {
            headers.insert(AUTHORIZATION, value.parse().unwrap());
        }
        headers
    }

    fn file(text: &str) -> Result<Tokens> {
        Tokens::parse(text, Path::new("/etc/flowplane/tokens"))
    }

    #[test]
    fn check_bearer_accepts_the_expected_token_only() {
        let metadata = |token: Option<&str>| with_token(token).metadata().clone();
        assert!(check_bearer(&metadata(Some("s3cret")), "s3cret").is_ok());
        let wrong = check_bearer(&metadata(Some("s3cre7")), "s3cret").unwrap_err();
        assert_eq!(wrong.code(), Code::Unauthenticated);
        let missing = check_bearer(&metadata(None), "s3cret").unwrap_err();
        assert_eq!(missing.code(), Code::Unauthenticated);
        assert!(missing.message().contains("authorization"));
    }

    #[test]
    fn a_token_file_maps_tokens_to_roles() {
        let tokens = file(
            "# pipeline and components\n\
             \n\
             \treg-token   register\n\
             pipe-token read,process # trailing\n",
        );
        let error = tokens.unwrap_err().to_string();
        assert!(error.contains("line 4"), "{error}");
        assert!(error.contains("found 4 fields"), "{error}");
        assert!(
            !error.contains("pipe-token"),
            "an error never shows a token: {error}"
        );

        let tokens = file("# comment\n\n  reg-token register\npipe-token read,process\n").unwrap();
        let reg = tokens.roles_of("reg-token").unwrap();
        assert!(reg.contains(Role::Register) && !reg.contains(Role::Read));
        let pipe = tokens.roles_of("pipe-token").unwrap();
        assert!(pipe.contains(Role::Read) && pipe.contains(Role::Process));
        assert!(!pipe.contains(Role::Data) && !pipe.contains(Role::Register));
        assert!(tokens.roles_of("reg-toke").is_none());
        assert!(tokens.roles_of("").is_none());
        assert!(!format!("{tokens:?}").contains("reg-token"));
    }

    #[test]
    fn malformed_token_file_lines_are_rejected_naming_the_file_and_line() {
        let cases = [
            (
                "ok register\njust-a-token\n",
                "line 2",
                "found a token without roles",
            ),
            (
                "ok register\n\nt1 admin\n",
                "line 3",
                "unknown role \"admin\"",
            ),
            ("t1 Register\n", "line 1", "unknown role \"Register\""),
            ("t1 read,\n", "line 1", "unknown role \"\""),
            (
                "t1 read\n# again\nt1 data\n",
                "line 3",
                "the same token as line 1",
            ),
            ("t\u{e9} read\n", "line 1", "not printable ascii"),
        ];
        for (text, line, reason) in cases {
            let error = file(text).unwrap_err();
            let message = error.to_string();
            assert!(matches!(error, Error::TokenFile { .. }), "{message}");
            assert!(message.contains("/etc/flowplane/tokens"), "{message}");
            assert!(message.contains(line), "{text:?}: {message}");
            assert!(message.contains(reason), "{text:?}: {message}");
        }
        for empty in ["", "# nothing yet\n\n"] {
            let message = file(empty).unwrap_err().to_string();
            assert!(message.contains("lists nothing"), "{message}");
        }
    }

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for value in ["Bearer tok", "bearer tok", "BEARER tok", "bEaReR  tok"] {
            assert_eq!(
                presented_token(&headers(Some(value))).unwrap(),
                "tok",
                "{value}"
            );
        }
        for value in ["Basic tok", "Bearer", "Bearer ", "Bearertok", "tok"] {
            let error = presented_token(&headers(Some(value))).unwrap_err();
            assert!(
                matches!(error, Error::Unauthenticated(NOT_BEARER)),
                "{value}"
            );
        }
        let mut metadata = MetadataMap::new();
        metadata.insert(AUTHORIZATION, "bearer s3cret".parse().unwrap());
        assert!(check_bearer(&metadata, "s3cret").is_ok());
    }

    #[test]
    fn a_policy_tells_missing_wrong_and_under_privileged_tokens_apart() {
        const TABLE: &AccessTable = &[
            ("/svc.v1.S/Read", Access::Needs(Role::Read)),
            ("/svc.v1.S/Open", Access::Open),
        ];
        let policy = Policy::new(file("r read\np process\n").unwrap(), TABLE);
        let check = |path: &str, auth: Option<&str>| {
            policy.check(path, &headers(auth)).map_err(Status::from)
        };
        assert!(check("/svc.v1.S/Read", Some("Bearer r")).is_ok());
        assert_eq!(
            check("/svc.v1.S/Read", None).unwrap_err().code(),
            Code::Unauthenticated
        );
        let wrong = check("/svc.v1.S/Read", Some("Bearer x")).unwrap_err();
        assert_eq!(wrong.code(), Code::Unauthenticated);
        assert_eq!(
            crate::status::error_detail(&wrong).unwrap().reason,
            "UNAUTHENTICATED"
        );
        let denied = check("/svc.v1.S/Read", Some("Bearer p")).unwrap_err();
        assert_eq!(denied.code(), Code::PermissionDenied);
        assert_eq!(denied.message(), "this call needs a token with role read");
        let detail = crate::status::error_detail(&denied).unwrap();
        assert_eq!(detail.reason, "ROLE_REQUIRED");
        assert!(detail.field.is_empty());
        // Open RPCs, health and reflection need nothing; unlisted RPCs any valid token.
        assert!(check("/svc.v1.S/Open", None).is_ok());
        assert!(check("/grpc.health.v1.Health/Check", None).is_ok());
        assert!(
            check(
                "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                None
            )
            .is_ok()
        );
        assert_eq!(
            check("/svc.v1.S/New", None).unwrap_err().code(),
            Code::Unauthenticated
        );
        assert!(check("/svc.v1.S/New", Some("Bearer p")).is_ok());
    }

    /// A self-signed leaf naming `names`: the handshake, not the policy, verifies chains.
    fn leaf(names: &[&str]) -> CertificateDer<'static> {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(names)
            .unwrap()
            .self_signed(&key)
            .unwrap();
        cert.der().clone()
    }

    #[test]
    fn a_client_certificate_carries_the_roles_of_its_listed_dns_names() {
        const TABLE: &AccessTable = &[
            ("/svc.v1.S/Process", Access::Needs(Role::Process)),
            ("/svc.v1.S/Read", Access::Needs(Role::Read)),
        ];
        let mut tokens = file("r read\n").unwrap();
        tokens
            .parse_identities(
                "# the pipeline calls hosts\nPipeline.Flowplane process\n",
                Path::new("/etc/flowplane/client-roles"),
            )
            .unwrap();
        let policy = Policy::new(tokens, TABLE);
        let check = |path: &str, auth: Option<&str>, cert: Option<&CertificateDer<'_>>| {
            policy
                .check_with_peer(path, &headers(auth), cert)
                .map_err(Status::from)
        };
        let pipeline = leaf(&["pipeline.flowplane", "localhost"]);
        let stranger = leaf(&["stranger.flowplane"]);

        // Listed name (case aside), no token: its roles and only those.
        assert!(check("/svc.v1.S/Process", None, Some(&pipeline)).is_ok());
        let denied = check("/svc.v1.S/Read", None, Some(&pipeline)).unwrap_err();
        assert_eq!(denied.code(), Code::PermissionDenied);
        // With a token too: the union; an invalid token is refused whatever the certificate.
        assert!(check("/svc.v1.S/Read", Some("Bearer r"), Some(&pipeline)).is_ok());
        assert!(check("/svc.v1.S/Process", Some("Bearer r"), Some(&pipeline)).is_ok());
        assert_eq!(
            check("/svc.v1.S/Process", Some("Bearer x"), Some(&pipeline))
                .unwrap_err()
                .code(),
            Code::Unauthenticated
        );
        // An unlisted certificate is no credential; its token alone decides.
        let unlisted = check("/svc.v1.S/Process", None, Some(&stranger)).unwrap_err();
        assert_eq!(unlisted.code(), Code::Unauthenticated);
        assert!(
            unlisted.message().contains("client roles file"),
            "{unlisted:?}"
        );
        assert_eq!(
            check("/svc.v1.S/Process", Some("Bearer r"), Some(&stranger))
                .unwrap_err()
                .code(),
            Code::PermissionDenied
        );
        assert_eq!(
            check("/svc.v1.S/Process", None, None).unwrap_err().code(),
            Code::Unauthenticated
        );
    }

    #[test]
    fn malformed_client_roles_lines_are_rejected_naming_the_file_and_line() {
        let path = Path::new("/etc/flowplane/client-roles");
        for (text, reason) in [
            ("pipeline\n", "a dns-name without roles"),
            ("pipeline admin\n", "unknown role \"admin\""),
            ("", "lists nothing"),
        ] {
            let message = Tokens::default()
                .parse_identities(text, path)
                .unwrap_err()
                .to_string();
            assert!(
                message.contains("client roles file /etc/flowplane/client-roles"),
                "{message}"
            );
            assert!(message.contains(reason), "{text:?}: {message}");
        }
    }

    #[test]
    fn an_added_token_gains_roles() {
        let mut tokens = file("t read\n").unwrap();
        tokens.add("t", Role::Register);
        tokens.add("j", Role::Data);
        assert!(tokens.roles_of("t").unwrap().contains(Role::Register));
        assert!(tokens.roles_of("t").unwrap().contains(Role::Read));
        assert_eq!(tokens.roles_of("j").unwrap(), Roles::from(Role::Data));
    }

    #[test]
    fn an_attached_token_is_never_printed() {
        let attach = AttachBearer::new(Some("s3cret")).unwrap();
        assert!(!format!("{attach:?}").contains("s3cret"));
        let request = with_token(Some("s3cret"));
        assert!(!format!("{:?}", request.metadata()).contains("s3cret"));
    }
}
