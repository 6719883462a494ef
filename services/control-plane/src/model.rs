//! Domain types of the registry and the one place wire requests are validated into them.
//! Handlers convert a request here exactly once; the registry never sees a raw proto
//! request and never re-validates. Nothing here knows about time, storage or transport.

use std::{collections::BTreeMap, fmt, time::SystemTime};

use flowplane_proto::{
    common::v1::{ComponentKind, HealthStatus, Metrics},
    controlplane::v1 as pb,
    data::v1::DataTypeHint,
    processor::v1::ProcessorCapability,
};
use prost::Message;

use crate::{Error, Result};

/// Longest component id, in bytes. Ids use the characters `[A-Za-z0-9._-]` and start
/// with a letter or digit.
pub const ID_MAX_LEN: usize = 128;
/// Longest endpoint, in bytes.
pub const ENDPOINT_MAX_LEN: usize = 512;
/// Most metadata entries a component may register with.
pub const METADATA_MAX_ENTRIES: usize = 64;
/// Longest metadata key, in bytes; keys use `[A-Za-z0-9._/-]`.
pub const METADATA_KEY_MAX_LEN: usize = 128;
/// Longest metadata value, in bytes.
pub const METADATA_VALUE_MAX_LEN: usize = 1024;
/// Most processors one host may declare.
pub const CAPABILITIES_MAX: usize = 256;
/// Longest processor name, in bytes.
pub const CAPABILITY_NAME_MAX_LEN: usize = 128;
/// Largest encoded size of all of a host's capabilities together, in bytes. Keeps a
/// page of 1000 components and typical watch snapshots within one gRPC message.
pub const CAPABILITIES_MAX_BYTES: usize = 64 * 1024;
/// Most data types a source or consumer may declare.
pub const DATA_TYPES_MAX: usize = 16;
/// Longest version string, in bytes.
pub const VERSION_MAX_LEN: usize = 64;
/// Most metric readings one heartbeat may carry.
pub const METRICS_MAX_ENTRIES: usize = 64;
/// Longest metric name, in bytes.
pub const METRIC_NAME_MAX_LEN: usize = 128;
/// Longest lease token accepted, in bytes (issued tokens are 32 hex characters).
pub const LEASE_TOKEN_MAX_LEN: usize = 128;

/// A validated component id: 1 to [`ID_MAX_LEN`] characters from `[A-Za-z0-9._-]`,
/// starting with a letter or digit. Unique across every kind.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ComponentId(String);

impl ComponentId {
    /// Validates `raw`, naming `field` when it is not a valid id.
    pub fn parse(field: &str, raw: &str) -> Result<Self> {
        if raw.is_empty() {
            return Err(Error::invalid(field, "must not be empty"));
        }
        if raw.len() > ID_MAX_LEN {
            return Err(Error::invalid(
                field,
                format!(
                    "is {} bytes, longer than the {ID_MAX_LEN} allowed",
                    raw.len()
                ),
            ));
        }
        if let Some(bad) = raw
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(Error::invalid(
                field,
                format!("{bad:?} is not allowed: use only [A-Za-z0-9._-]"),
            ));
        }
        if !raw.starts_with(|c: char| c.is_ascii_alphanumeric()) {
            return Err(Error::invalid(field, "must start with a letter or digit"));
        }
        Ok(Self(raw.to_string()))
    }

    /// Wraps an id the server generated itself (always valid by construction).
    pub(crate) fn assigned(kind: ComponentKind) -> Self {
        let suffix: u64 = rand::random();
        Self(format!("{}-{suffix:016x}", kind_label(kind)))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ComponentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The secret a lease holder presents. Its `Debug` never shows the value, so it cannot
/// leak into logs.
#[derive(Clone, PartialEq, Eq)]
pub struct LeaseToken(String);

impl LeaseToken {
    /// A fresh random 128-bit token, as 32 hex characters.
    pub fn generate() -> Self {
        let bytes: [u8; 16] = rand::random();
        Self(hex::encode(bytes))
    }

    /// Validates a presented token; `None` when `raw` is empty.
    pub fn parse_optional(raw: &str) -> Result<Option<Self>> {
        if raw.is_empty() {
            return Ok(None);
        }
        if raw.len() > LEASE_TOKEN_MAX_LEN {
            return Err(Error::invalid(
                "lease_token",
                format!("is longer than the {LEASE_TOKEN_MAX_LEN} bytes allowed"),
            ));
        }
        Ok(Some(Self(raw.to_string())))
    }

    /// Validates a token that must be present.
    pub fn parse_required(raw: &str) -> Result<Self> {
        Self::parse_optional(raw)?.ok_or_else(|| {
            Error::invalid(
                "lease_token",
                "must not be empty: send the token from registration",
            )
        })
    }

    /// Compares in constant time, so the comparison leaks no prefix length.
    pub fn matches(&self, other: &LeaseToken) -> bool {
        let (a, b) = (self.0.as_bytes(), other.0.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }

    /// The token text, for the registration response only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for LeaseToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LeaseToken(..)")
    }
}

/// A validated registration of any kind.
#[derive(Clone, Debug)]
pub struct Registration {
    /// What registers.
    pub kind: ComponentKind,
    /// The wanted id; `None` lets the registry assign one.
    pub id: Option<ComponentId>,
    /// Where it can be reached.
    pub endpoint: String,
    /// Its labels.
    pub metadata: BTreeMap<String, String>,
    /// Processors it serves (processor hosts only).
    pub capabilities: Vec<ProcessorCapability>,
    /// Payload types (sources and consumers only).
    pub data_types: Vec<DataTypeHint>,
    /// Its software version.
    pub version: String,
    /// The token of a live lease, for an idempotent refresh.
    pub lease_token: Option<LeaseToken>,
}

/// A validated heartbeat of any kind.
#[derive(Clone, Debug)]
pub struct Heartbeat {
    /// The kind the heartbeat RPC was for.
    pub kind: ComponentKind,
    /// The registered id.
    pub id: ComponentId,
    /// The component's own view of its health (never UNSPECIFIED).
    pub status: HealthStatus,
    /// Its current readings.
    pub metrics: BTreeMap<String, f64>,
    /// The lease token from registration.
    pub lease_token: LeaseToken,
}

/// One component as the registry shows it at a moment: the effective status is
/// already derived from the server's clock.
#[derive(Clone, Debug, PartialEq)]
pub struct Component {
    /// Unique id.
    pub id: String,
    /// Its role.
    pub kind: ComponentKind,
    /// Where it can be reached.
    pub endpoint: String,
    /// Labels it registered with.
    pub metadata: BTreeMap<String, String>,
    /// Processors it serves.
    pub capabilities: Vec<ProcessorCapability>,
    /// Payload types it produces or accepts.
    pub data_types: Vec<DataTypeHint>,
    /// Software version.
    pub version: String,
    /// Effective status: reported, or UNHEALTHY when heartbeats are late.
    pub status: HealthStatus,
    /// What it last reported.
    pub reported_status: HealthStatus,
    /// Readings from its last heartbeat.
    pub metrics: BTreeMap<String, f64>,
    /// When it registered (server clock).
    pub registered_at: SystemTime,
    /// When the server last heard from it.
    pub last_heartbeat: SystemTime,
    /// When its lease runs out unless renewed.
    pub lease_expires_at: SystemTime,
}

impl Component {
    /// True when the host serves a processor named `name`.
    pub fn serves(&self, name: &str) -> bool {
        self.capabilities.iter().any(|c| c.name == name)
    }
}

impl From<Component> for pb::Component {
    fn from(c: Component) -> Self {
        pb::Component {
            id: c.id,
            kind: c.kind as i32,
            endpoint: c.endpoint,
            metadata: c.metadata.into_iter().collect(),
            capabilities: c.capabilities,
            status: c.status as i32,
            last_heartbeat: Some(c.last_heartbeat.into()),
            registered_at: Some(c.registered_at.into()),
            metrics: Some(Metrics {
                values: c.metrics.into_iter().collect(),
            }),
            reported_status: c.reported_status as i32,
            lease_expires_at: Some(c.lease_expires_at.into()),
            data_types: c.data_types.into_iter().map(|t| t as i32).collect(),
            version: c.version,
        }
    }
}

/// True for the statuses that are offered for discovery: HEALTHY and DEGRADED.
/// STARTING, UNHEALTHY and STOPPING components are listed but not discovered.
pub fn is_discoverable(status: HealthStatus) -> bool {
    matches!(status, HealthStatus::Healthy | HealthStatus::Degraded)
}

/// Filter of `ListComponents`.
#[derive(Clone, Debug, Default)]
pub struct ListFilter {
    /// Only this kind.
    pub kind: Option<ComponentKind>,
    /// Only this effective status.
    pub status: Option<HealthStatus>,
    /// Only hosts serving this processor. Without an explicit `status`, this is a
    /// discovery query: only HEALTHY and DEGRADED hosts match.
    pub capability: Option<String>,
    /// Only components whose metadata holds every pair.
    pub labels: BTreeMap<String, String>,
}

impl ListFilter {
    /// Whether `c` belongs in the listing.
    pub fn matches(&self, c: &Component) -> bool {
        if self.kind.is_some_and(|k| k != c.kind) {
            return false;
        }
        if let Some(name) = &self.capability
            && !c.serves(name)
        {
            return false;
        }
        if !self
            .labels
            .iter()
            .all(|(k, v)| c.metadata.get(k).is_some_and(|have| have == v))
        {
            return false;
        }
        match self.status {
            Some(wanted) => c.status == wanted,
            None if self.capability.is_some() => is_discoverable(c.status),
            None => true,
        }
    }
}

/// Filter of `WatchComponents`: kind and capability only. A watch shows every status,
/// so a watcher sees a host go UNHEALTHY or STOPPING as an UPDATED event.
#[derive(Clone, Debug, Default)]
pub struct WatchFilter {
    /// Only this kind.
    pub kind: Option<ComponentKind>,
    /// Only hosts serving this processor.
    pub capability: Option<String>,
}

impl WatchFilter {
    /// Whether `c` belongs in the watch.
    pub fn matches(&self, c: &Component) -> bool {
        self.kind.is_none_or(|k| k == c.kind)
            && self.capability.as_deref().is_none_or(|name| c.serves(name))
    }
}

/// The bounded label of a kind, for metrics, logs, assigned ids and the CLI.
pub fn kind_label(kind: ComponentKind) -> &'static str {
    kind.label()
}

/// The bounded label of a status, for metrics and logs.
pub fn status_label(status: HealthStatus) -> &'static str {
    status.label()
}

/// The request field that carries the id for a kind's register and heartbeat RPCs.
pub fn id_field(kind: ComponentKind) -> &'static str {
    match kind {
        ComponentKind::Processor => "processor_id",
        ComponentKind::Source => "source_id",
        ComponentKind::Consumer => "consumer_id",
        ComponentKind::Unspecified => "component_id",
    }
}

/// Parses a filter kind; UNSPECIFIED means any.
pub fn parse_kind_filter(field: &str, raw: i32) -> Result<Option<ComponentKind>> {
    match ComponentKind::try_from(raw) {
        Ok(ComponentKind::Unspecified) => Ok(None),
        Ok(kind) => Ok(Some(kind)),
        Err(_) => Err(Error::invalid(
            field,
            format!("{raw} is not a component kind"),
        )),
    }
}

/// Parses a filter status; UNSPECIFIED means any.
pub fn parse_status_filter(field: &str, raw: i32) -> Result<Option<HealthStatus>> {
    match HealthStatus::try_from(raw) {
        Ok(HealthStatus::Unspecified) => Ok(None),
        Ok(status) => Ok(Some(status)),
        Err(_) => Err(Error::invalid(
            field,
            format!("{raw} is not a health status"),
        )),
    }
}

fn parse_reported_status(raw: i32) -> Result<HealthStatus> {
    match HealthStatus::try_from(raw) {
        Ok(HealthStatus::Unspecified) => Err(Error::invalid(
            "status",
            "must be set: HEALTH_STATUS_UNSPECIFIED is not a status",
        )),
        Ok(status) => Ok(status),
        Err(_) => Err(Error::invalid(
            "status",
            format!("{raw} is not a health status"),
        )),
    }
}

/// Validates an endpoint: `host:port` or a URI with a scheme and a host.
pub fn validate_endpoint(raw: &str) -> Result<String> {
    const FIELD: &str = "endpoint";
    if raw.is_empty() {
        return Err(Error::invalid(
            FIELD,
            "must not be empty: give host:port or a URI",
        ));
    }
    if raw.len() > ENDPOINT_MAX_LEN {
        return Err(Error::invalid(
            FIELD,
            format!(
                "is {} bytes, longer than the {ENDPOINT_MAX_LEN} allowed",
                raw.len()
            ),
        ));
    }
    if raw.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(Error::invalid(FIELD, "must not contain whitespace"));
    }
    if raw.contains("://") {
        let uri: http::Uri = raw
            .parse()
            .map_err(|e| Error::invalid(FIELD, format!("{raw:?} is not a valid URI: {e}")))?;
        if uri.scheme().is_none() || uri.host().is_none_or(str::is_empty) {
            return Err(Error::invalid(
                FIELD,
                format!("{raw:?} needs a scheme and a host"),
            ));
        }
        return Ok(raw.to_string());
    }
    let bad = || {
        Error::invalid(
            FIELD,
            format!("{raw:?} is neither host:port nor a URI like http://host:port"),
        )
    };
    let (host, port) = raw.rsplit_once(':').ok_or_else(bad)?;
    let port_ok = port.parse::<u16>().is_ok_and(|p| p != 0);
    let host_ok = if let Some(inner) = host.strip_prefix('[') {
        inner
            .strip_suffix(']')
            .is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok())
    } else {
        !host.is_empty() && !host.contains(':')
    };
    if !port_ok || !host_ok || raw.parse::<http::uri::Authority>().is_err() {
        return Err(bad());
    }
    Ok(raw.to_string())
}

fn validate_metadata(
    raw: std::collections::HashMap<String, String>,
) -> Result<BTreeMap<String, String>> {
    if raw.len() > METADATA_MAX_ENTRIES {
        return Err(Error::invalid(
            "metadata",
            format!(
                "has {} entries, more than the {METADATA_MAX_ENTRIES} allowed",
                raw.len()
            ),
        ));
    }
    let metadata: BTreeMap<String, String> = raw.into_iter().collect();
    for (key, value) in &metadata {
        validate_label_key("metadata", key)?;
        if value.len() > METADATA_VALUE_MAX_LEN {
            return Err(Error::invalid(
                format!("metadata[{key:?}]"),
                format!(
                    "value is {} bytes, longer than the {METADATA_VALUE_MAX_LEN} allowed",
                    value.len()
                ),
            ));
        }
    }
    Ok(metadata)
}

fn validate_label_key(field: &str, key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(Error::invalid(field, "keys must not be empty"));
    }
    if key.len() > METADATA_KEY_MAX_LEN {
        return Err(Error::invalid(
            format!("{field}[{key:?}]"),
            format!("key is longer than the {METADATA_KEY_MAX_LEN} bytes allowed"),
        ));
    }
    if let Some(bad) = key
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/')))
    {
        return Err(Error::invalid(
            format!("{field}[{key:?}]"),
            format!("key character {bad:?} is not allowed: use only [A-Za-z0-9._/-]"),
        ));
    }
    Ok(())
}

/// Validates the labels of a list filter (same key rules as metadata).
pub fn validate_labels(
    raw: std::collections::HashMap<String, String>,
) -> Result<BTreeMap<String, String>> {
    for key in raw.keys() {
        validate_label_key("labels", key)?;
    }
    Ok(raw.into_iter().collect())
}

fn validate_capabilities(
    capabilities: Vec<ProcessorCapability>,
) -> Result<Vec<ProcessorCapability>> {
    if capabilities.len() > CAPABILITIES_MAX {
        return Err(Error::invalid(
            "capabilities",
            format!(
                "has {} entries, more than the {CAPABILITIES_MAX} allowed",
                capabilities.len()
            ),
        ));
    }
    let bytes: usize = capabilities.iter().map(Message::encoded_len).sum();
    if bytes > CAPABILITIES_MAX_BYTES {
        return Err(Error::invalid(
            "capabilities",
            format!("encode to {bytes} bytes, more than the {CAPABILITIES_MAX_BYTES} allowed"),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for (i, capability) in capabilities.iter().enumerate() {
        let field = || format!("capabilities[{i}].name");
        let name = capability.name.as_str();
        if name.is_empty() {
            return Err(Error::invalid(field(), "must not be empty"));
        }
        if name.len() > CAPABILITY_NAME_MAX_LEN {
            return Err(Error::invalid(
                field(),
                format!("is longer than the {CAPABILITY_NAME_MAX_LEN} bytes allowed"),
            ));
        }
        if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(Error::invalid(field(), "must not contain whitespace"));
        }
        if !seen.insert(name) {
            return Err(Error::invalid(
                field(),
                format!("{name:?} is declared twice"),
            ));
        }
    }
    Ok(capabilities)
}

fn validate_data_types(raw: Vec<i32>) -> Result<Vec<DataTypeHint>> {
    if raw.len() > DATA_TYPES_MAX {
        return Err(Error::invalid(
            "data_types",
            format!(
                "has {} entries, more than the {DATA_TYPES_MAX} allowed",
                raw.len()
            ),
        ));
    }
    raw.into_iter()
        .enumerate()
        .map(|(i, value)| match DataTypeHint::try_from(value) {
            Ok(DataTypeHint::Unspecified) => Err(Error::invalid(
                format!("data_types[{i}]"),
                "DATA_TYPE_HINT_UNSPECIFIED is not a data type",
            )),
            Ok(hint) => Ok(hint),
            Err(_) => Err(Error::invalid(
                format!("data_types[{i}]"),
                format!("{value} is not a data type"),
            )),
        })
        .collect()
}

fn validate_version(raw: String) -> Result<String> {
    if raw.len() > VERSION_MAX_LEN {
        return Err(Error::invalid(
            "version",
            format!("is longer than the {VERSION_MAX_LEN} bytes allowed"),
        ));
    }
    Ok(raw)
}

fn validate_metrics(raw: std::collections::HashMap<String, f64>) -> Result<BTreeMap<String, f64>> {
    if raw.len() > METRICS_MAX_ENTRIES {
        return Err(Error::invalid(
            "metrics",
            format!(
                "has {} entries, more than the {METRICS_MAX_ENTRIES} allowed",
                raw.len()
            ),
        ));
    }
    for name in raw.keys() {
        if name.is_empty() || name.len() > METRIC_NAME_MAX_LEN {
            return Err(Error::invalid(
                format!("metrics[{name:?}]"),
                format!("names must be 1 to {METRIC_NAME_MAX_LEN} bytes"),
            ));
        }
    }
    Ok(raw.into_iter().collect())
}

fn optional_id(kind: ComponentKind, raw: &str) -> Result<Option<ComponentId>> {
    if raw.is_empty() {
        Ok(None)
    } else {
        ComponentId::parse(id_field(kind), raw).map(Some)
    }
}

#[allow(clippy::too_many_arguments)]
fn registration(
    kind: ComponentKind,
    id: &str,
    endpoint: &str,
    metadata: std::collections::HashMap<String, String>,
    capabilities: Vec<ProcessorCapability>,
    data_types: Vec<i32>,
    version: String,
    lease_token: &str,
) -> Result<Registration> {
    Ok(Registration {
        kind,
        id: optional_id(kind, id)?,
        endpoint: validate_endpoint(endpoint)?,
        metadata: validate_metadata(metadata)?,
        capabilities: validate_capabilities(capabilities)?,
        data_types: validate_data_types(data_types)?,
        version: validate_version(version)?,
        lease_token: LeaseToken::parse_optional(lease_token)?,
    })
}

impl TryFrom<pb::RegisterProcessorRequest> for Registration {
    type Error = Error;
    fn try_from(r: pb::RegisterProcessorRequest) -> Result<Self> {
        registration(
            ComponentKind::Processor,
            &r.processor_id,
            &r.endpoint,
            r.metadata,
            r.capabilities,
            Vec::new(),
            r.version,
            &r.lease_token,
        )
    }
}

impl TryFrom<pb::RegisterSourceRequest> for Registration {
    type Error = Error;
    fn try_from(r: pb::RegisterSourceRequest) -> Result<Self> {
        registration(
            ComponentKind::Source,
            &r.source_id,
            &r.endpoint,
            r.metadata,
            Vec::new(),
            r.data_types,
            String::new(),
            &r.lease_token,
        )
    }
}

impl TryFrom<pb::RegisterConsumerRequest> for Registration {
    type Error = Error;
    fn try_from(r: pb::RegisterConsumerRequest) -> Result<Self> {
        registration(
            ComponentKind::Consumer,
            &r.consumer_id,
            &r.endpoint,
            r.metadata,
            Vec::new(),
            r.data_types,
            String::new(),
            &r.lease_token,
        )
    }
}

fn heartbeat(
    kind: ComponentKind,
    id: &str,
    status: i32,
    metrics: std::collections::HashMap<String, f64>,
    lease_token: &str,
) -> Result<Heartbeat> {
    Ok(Heartbeat {
        kind,
        id: ComponentId::parse(id_field(kind), id)?,
        status: parse_reported_status(status)?,
        metrics: validate_metrics(metrics)?,
        lease_token: LeaseToken::parse_required(lease_token)?,
    })
}

impl TryFrom<pb::ProcessorHeartbeatRequest> for Heartbeat {
    type Error = Error;
    fn try_from(r: pb::ProcessorHeartbeatRequest) -> Result<Self> {
        heartbeat(
            ComponentKind::Processor,
            &r.processor_id,
            r.status,
            r.metrics,
            &r.lease_token,
        )
    }
}

impl TryFrom<pb::SourceHeartbeatRequest> for Heartbeat {
    type Error = Error;
    fn try_from(r: pb::SourceHeartbeatRequest) -> Result<Self> {
        heartbeat(
            ComponentKind::Source,
            &r.source_id,
            r.status,
            r.metrics,
            &r.lease_token,
        )
    }
}

impl TryFrom<pb::ConsumerHeartbeatRequest> for Heartbeat {
    type Error = Error;
    fn try_from(r: pb::ConsumerHeartbeatRequest) -> Result<Self> {
        heartbeat(
            ComponentKind::Consumer,
            &r.consumer_id,
            r.status,
            r.metrics,
            &r.lease_token,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_the_documented_character_set() {
        for good in ["a", "proc-1", "A.b_c-9", &"x".repeat(ID_MAX_LEN)] {
            assert!(ComponentId::parse("id", good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "-lead",
            ".hidden",
            "has space",
            "slash/no",
            "ünï",
            &"x".repeat(ID_MAX_LEN + 1),
        ] {
            let err = ComponentId::parse("processor_id", bad).unwrap_err();
            assert!(
                err.to_string().starts_with("processor_id: "),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn assigned_ids_are_valid_and_name_the_kind() {
        let id = ComponentId::assigned(ComponentKind::Source);
        assert!(id.as_str().starts_with("source-"));
        assert!(ComponentId::parse("id", id.as_str()).is_ok());
    }

    #[test]
    fn endpoints_are_host_port_or_uris() {
        for good in [
            "127.0.0.1:50051",
            "localhost:1",
            "[::1]:8080",
            "processor.svc:7000",
            "http://10.0.0.1:80",
            "https://example.com",
        ] {
            assert!(validate_endpoint(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "no-port",
            "host:",
            "host:0",
            "host:99999",
            ":80",
            "a b:80",
            "::1:80",
            "http://",
            "[zz]:80",
        ] {
            let err = validate_endpoint(bad).unwrap_err();
            assert!(err.to_string().starts_with("endpoint: "), "{bad}: {err}");
        }
    }

    #[test]
    fn lease_tokens_are_128_bit_hex_and_compare_exactly() {
        let a = LeaseToken::generate();
        assert_eq!(a.expose().len(), 32);
        assert!(a.expose().chars().all(|c| c.is_ascii_hexdigit()));
        assert!(a.matches(&a.clone()));
        assert!(!a.matches(&LeaseToken::generate()));
        assert_eq!(format!("{a:?}"), "LeaseToken(..)");
    }

    fn component(status: HealthStatus, capability: &str) -> Component {
        Component {
            id: "p".into(),
            kind: ComponentKind::Processor,
            endpoint: "h:1".into(),
            metadata: [("zone".to_string(), "a".to_string())].into(),
            capabilities: vec![ProcessorCapability {
                name: capability.into(),
                ..Default::default()
            }],
            data_types: vec![],
            version: String::new(),
            status,
            reported_status: status,
            metrics: BTreeMap::new(),
            registered_at: SystemTime::UNIX_EPOCH,
            last_heartbeat: SystemTime::UNIX_EPOCH,
            lease_expires_at: SystemTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn capability_filter_is_a_discovery_query_unless_status_is_explicit() {
        let discovery = ListFilter {
            capability: Some("echo".into()),
            ..Default::default()
        };
        assert!(discovery.matches(&component(HealthStatus::Healthy, "echo")));
        assert!(discovery.matches(&component(HealthStatus::Degraded, "echo")));
        assert!(!discovery.matches(&component(HealthStatus::Healthy, "other")));
        for hidden in [
            HealthStatus::Starting,
            HealthStatus::Unhealthy,
            HealthStatus::Stopping,
        ] {
            assert!(!discovery.matches(&component(hidden, "echo")), "{hidden:?}");
            let explicit = ListFilter {
                status: Some(hidden),
                ..discovery.clone()
            };
            assert!(explicit.matches(&component(hidden, "echo")), "{hidden:?}");
        }
        let everything = ListFilter::default();
        assert!(everything.matches(&component(HealthStatus::Stopping, "echo")));
    }

    #[test]
    fn label_filter_needs_every_pair() {
        let c = component(HealthStatus::Healthy, "echo");
        let mut filter = ListFilter::default();
        filter.labels.insert("zone".into(), "a".into());
        assert!(filter.matches(&c));
        filter.labels.insert("gpu".into(), "yes".into());
        assert!(!filter.matches(&c));
    }
}
