//! Checks at the edge: a standing pipeline spec becomes a [`ValidSpec`] (every problem
//! reported at once, each naming its field as a path from the request, `spec.source`,
//! `spec.consumers[1].output`, `spec.manifest.nodes[0].id`), and names, runner ids and
//! TTLs become checked values. The DAG itself is checked by flowplane-manifest, offline:
//! the control plane never looks a processor up.

use std::{collections::HashMap, fmt, time::Duration};

use flowplane_manifest::{Manifest, Offline};
use flowplane_proto::controlplane::v1::{self as pb, connector_ref::Selector};
use prost::Message;

use crate::{Error, Result, error::Violation};

/// Longest pipeline name (a DNS label).
pub const MAX_NAME_LEN: usize = 63;
/// Longest runner id.
pub const MAX_RUNNER_ID_LEN: usize = 253;
/// Largest encoded spec: records stay well under etcd's default request limit (1.5 MiB).
pub const MAX_SPEC_BYTES: usize = 512 * 1024;
/// Most partitions one pipeline keeps offsets for.
pub const MAX_PARTITIONS: usize = 4096;
/// Most tries per result a spec may ask for.
pub const MAX_ATTEMPTS: u32 = 100;
/// Most source records in flight a spec may ask for.
pub const MAX_IN_FLIGHT: u32 = 65_536;
/// Shortest and longest first retry backoff a spec may ask for.
pub const RETRY_BACKOFF: (Duration, Duration) = (Duration::from_millis(1), Duration::from_secs(60));
/// Claim TTL when a request leaves it unset.
pub const DEFAULT_CLAIM_TTL: Duration = Duration::from_secs(5);
/// Shortest and longest claim TTL.
pub const CLAIM_TTL: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(60));

/// A valid pipeline name: `^[a-z0-9]([a-z0-9.-]{0,61}[a-z0-9])?$`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PipelineName(String);

impl PipelineName {
    /// Checks `raw`, naming `field` when it is not a valid name.
    pub fn parse(field: &str, raw: &str) -> Result<Self> {
        name_problem(raw).map_or_else(
            || Ok(Self(raw.to_string())),
            |m| Err(Error::invalid(field, m)),
        )
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PipelineName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn name_problem(raw: &str) -> Option<String> {
    let edge = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    let bytes = raw.as_bytes();
    if raw.is_empty() {
        return Some("must not be empty".into());
    }
    if raw.len() > MAX_NAME_LEN {
        return Some(format!(
            "is {} characters, longer than the {MAX_NAME_LEN} allowed",
            raw.len()
        ));
    }
    if let Some(bad) = raw
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-')))
    {
        return Some(format!(
            "{bad:?} is not allowed: use lowercase letters, digits, '-' and '.'"
        ));
    }
    if !edge(bytes[0]) || !edge(bytes[bytes.len() - 1]) {
        return Some("must start and end with a lowercase letter or digit".into());
    }
    None
}

/// A runner's id: non-empty printable ASCII without spaces, at most 253 bytes.
pub fn runner_id(raw: &str) -> Result<String> {
    const FIELD: &str = "runner_id";
    if raw.is_empty() {
        return Err(Error::invalid(FIELD, "must not be empty"));
    }
    if raw.len() > MAX_RUNNER_ID_LEN {
        return Err(Error::invalid(
            FIELD,
            format!("is longer than the {MAX_RUNNER_ID_LEN} bytes allowed"),
        ));
    }
    if raw.chars().any(|c| !c.is_ascii_graphic()) {
        return Err(Error::invalid(
            FIELD,
            "must be printable ascii without spaces",
        ));
    }
    Ok(raw.to_string())
}

/// A claim TTL: unset means 5s; otherwise 1s to 60s.
pub fn claim_ttl(ttl: Option<prost_types::Duration>) -> Result<Duration> {
    const FIELD: &str = "ttl";
    let Some(ttl) = ttl else {
        return Ok(DEFAULT_CLAIM_TTL);
    };
    let (min, max) = CLAIM_TTL;
    Duration::try_from(ttl)
        .ok()
        .filter(|d| (min..=max).contains(d))
        .ok_or_else(|| {
            Error::invalid(
                FIELD,
                format!("must be between {min:?} and {max:?} (unset means {DEFAULT_CLAIM_TTL:?})"),
            )
        })
}

/// Offsets a request sets: at most [`MAX_PARTITIONS`] partitions.
pub fn offsets(field: &str, offsets: HashMap<u32, u64>) -> Result<HashMap<u32, u64>> {
    if offsets.len() > MAX_PARTITIONS {
        return Err(Error::invalid(
            field,
            format!(
                "names {} partitions, more than the {MAX_PARTITIONS} allowed",
                offsets.len()
            ),
        ));
    }
    Ok(offsets)
}

/// A spec that passed every check.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidSpec {
    name: PipelineName,
    spec: pb::StandingPipelineSpec,
}

impl ValidSpec {
    /// The pipeline's name.
    pub fn name(&self) -> &PipelineName {
        &self.name
    }

    /// The spec as stored.
    pub fn spec(&self) -> &pb::StandingPipelineSpec {
        &self.spec
    }
}

fn connector_problem(connector: Option<&pb::ConnectorRef>) -> Option<&'static str> {
    match connector.and_then(|c| c.selector.as_ref()) {
        None => Some("must be set: an id or a capability"),
        Some(Selector::Id(s)) | Some(Selector::Capability(s)) if s.is_empty() => {
            Some("must name a non-empty id or capability")
        }
        Some(_) => None,
    }
}

impl TryFrom<Option<pb::StandingPipelineSpec>> for ValidSpec {
    type Error = Error;

    fn try_from(spec: Option<pb::StandingPipelineSpec>) -> Result<Self> {
        let Some(spec) = spec else {
            return Err(Error::InvalidSpec(vec![Violation::new(
                "spec",
                "must be set",
            )]));
        };
        let mut problems = Vec::new();
        let mut problem = |field: String, message: String| {
            problems.push(Violation::new(field, message));
        };
        if let Some(m) = name_problem(&spec.name) {
            problem("spec.name".into(), m);
        }
        if let Some(m) = connector_problem(spec.source.as_ref()) {
            problem("spec.source".into(), m.into());
        }
        if spec.dead_letter.is_some()
            && let Some(m) = connector_problem(spec.dead_letter.as_ref())
        {
            problem("spec.dead_letter".into(), m.into());
        }
        if let Some(delivery) = &spec.delivery {
            if delivery.max_attempts > MAX_ATTEMPTS {
                problem(
                    "spec.delivery.max_attempts".into(),
                    format!(
                        "is {}, more than the {MAX_ATTEMPTS} allowed",
                        delivery.max_attempts
                    ),
                );
            }
            if delivery.max_in_flight > MAX_IN_FLIGHT {
                problem(
                    "spec.delivery.max_in_flight".into(),
                    format!(
                        "is {}, more than the {MAX_IN_FLIGHT} allowed",
                        delivery.max_in_flight
                    ),
                );
            }
            if let Some(backoff) = delivery.retry_backoff {
                let (min, max) = RETRY_BACKOFF;
                if !Duration::try_from(backoff).is_ok_and(|d| (min..=max).contains(&d)) {
                    problem(
                        "spec.delivery.retry_backoff".into(),
                        format!("must be between {min:?} and {max:?} (unset means 200ms)"),
                    );
                }
            }
        }
        let mut manifest_problems = Vec::new();
        match &spec.manifest {
            None => problem("spec.manifest".into(), "must be set".into()),
            Some(wire) => {
                let manifest = Manifest::from_proto(wire);
                if let Err(found) = flowplane_manifest::validate(&manifest, &Offline) {
                    manifest_problems = found.0;
                }
                check_bindings(&spec, &manifest, &mut problem);
            }
        }
        problems.extend(manifest_problems.into_iter().map(|p| Violation {
            field: if p.field.is_empty() {
                "spec.manifest".to_string()
            } else {
                format!("spec.manifest.{}", p.field)
            },
            reason: p.reason,
            message: p.message,
        }));
        if problems.is_empty() && spec.encoded_len() > MAX_SPEC_BYTES {
            problems.push(Violation::new(
                "spec",
                format!(
                    "encodes to {} bytes, more than the {MAX_SPEC_BYTES} allowed",
                    spec.encoded_len()
                ),
            ));
        }
        if !problems.is_empty() {
            return Err(Error::InvalidSpec(problems));
        }
        Ok(Self {
            name: PipelineName(spec.name.clone()),
            spec,
        })
    }
}

/// The source input and the consumer bindings against the manifest's inputs and outputs.
fn check_bindings(
    spec: &pb::StandingPipelineSpec,
    manifest: &Manifest,
    problem: &mut impl FnMut(String, String),
) {
    let inputs: Vec<&str> = manifest.inputs.iter().map(|i| i.name.as_str()).collect();
    let outputs: Vec<&str> = manifest.outputs.iter().map(|o| o.name.as_str()).collect();
    let list = |names: &[&str]| {
        if names.is_empty() {
            "none".to_string()
        } else {
            names
                .iter()
                .map(|n| format!("{n:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    if spec.source_input.is_empty() {
        if inputs.len() != 1 {
            problem(
                "spec.source_input".into(),
                format!(
                    "must name the pipeline input the source feeds: the manifest has {} inputs ({})",
                    inputs.len(),
                    list(&inputs)
                ),
            );
        }
    } else if !inputs.contains(&spec.source_input.as_str()) {
        problem(
            "spec.source_input".into(),
            format!(
                "names {:?}, which is not a manifest input (inputs: {})",
                spec.source_input,
                list(&inputs)
            ),
        );
    }
    let mut bound: HashMap<&str, usize> = HashMap::new();
    for (i, binding) in spec.consumers.iter().enumerate() {
        let field = format!("spec.consumers[{i}]");
        if binding.output.is_empty() {
            problem(
                format!("{field}.output"),
                format!("must name a pipeline output (outputs: {})", list(&outputs)),
            );
        } else if !outputs.contains(&binding.output.as_str()) {
            problem(
                format!("{field}.output"),
                format!(
                    "names {:?}, which is not a manifest output (outputs: {})",
                    binding.output,
                    list(&outputs)
                ),
            );
        } else if let Some(first) = bound.insert(&binding.output, i) {
            problem(
                format!("{field}.output"),
                format!(
                    "output {:?} is bound already by spec.consumers[{first}]: each output has exactly one consumer",
                    binding.output
                ),
            );
        }
        if let Some(m) = connector_problem(binding.consumer.as_ref()) {
            problem(format!("{field}.consumer"), m.into());
        }
    }
    for (j, output) in outputs.iter().enumerate() {
        if !output.is_empty() && !bound.contains_key(output) {
            problem(
                "spec.consumers".into(),
                format!(
                    "pipeline output {output:?} (spec.manifest.outputs[{j}]) has no consumer binding"
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_dns_label_rule() {
        for good in ["a", "0", "orders", "orders-enriched.v2", &"a".repeat(63)] {
            assert!(PipelineName::parse("name", good).is_ok(), "{good}");
        }
        for bad in ["", "-a", "a-", ".a", "A", "a_b", "a b", &"a".repeat(64)] {
            let err = PipelineName::parse("name", bad).unwrap_err().to_string();
            assert!(err.starts_with("name: "), "{bad}: {err}");
        }
    }

    #[test]
    fn claim_ttls_default_and_are_bounded() {
        assert_eq!(claim_ttl(None).unwrap(), DEFAULT_CLAIM_TTL);
        let d = |seconds, nanos| Some(prost_types::Duration { seconds, nanos });
        assert_eq!(claim_ttl(d(60, 0)).unwrap(), Duration::from_secs(60));
        for bad in [d(0, 999_999_999), d(61, 0), d(-1, 0)] {
            assert!(claim_ttl(bad).unwrap_err().to_string().starts_with("ttl: "));
        }
    }
}
