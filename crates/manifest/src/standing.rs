//! Standing pipeline manifests (`kind: StandingPipeline`): a stored pipeline that runs on
//! its own, read from a registered source and delivered to registered consumers. The DAG
//! sections are the session manifest's own ([`Node`], [`Edge`], ...) and are checked by
//! the same [`validate`](crate::validate) (offline here: no processor is looked up).
//! This module only parses and checks; it never talks to a server.
//!
//! ```yaml
//! kind: StandingPipeline          # required: tells it from a session manifest
//! name: orders-enriched           # lowercase letters, digits, '-' and '.', at most 63
//! source:                         # exactly one of id and capability
//!   capability: generator         # or: id: <component id>
//!   params: {count: 100000, partitions: 2}
//! source_input: events            # optional; default: the pipeline's only input
//! nodes: [...]                    # nodes, edges, inputs, outputs: as in a session manifest
//! edges: [...]
//! inputs: [...]
//! outputs: [...]
//! consumers:                      # one per pipeline output, keyed by output name
//!   result: {capability: file, params: {path: /tmp/out-{output}.jsonl}}
//! dead_letter: {capability: log}  # optional; unset logs and counts dead letters
//! delivery:                       # optional; 0 or unset means the server's default
//!   max_attempts: 5
//!   retry_backoff: 200ms          # 15s, 500ms, 2m, 1h or plain seconds, as every flag
//!   max_in_flight: 256
//! ```
//!
//! Unknown keys are refused with their line, as in a session manifest. Structural problems
//! ([`StandingManifest::check`]) come all at once, each naming its field (`source`,
//! `consumers.result`, `nodes[0].id`, ...).

use std::{collections::BTreeMap, path::Path, time::Duration};

use flowplane_proto::controlplane::v1 as pb;
use serde::{Deserialize, Serialize};

use crate::{
    Edge, Error, Manifest, Node, Offline, PipelineInput, PipelineOutput, Problem, ProblemKind,
    Problems, Result,
    model::{PIPELINE_KIND, declared_kind, unknown_kind},
    suggest::did_you_mean,
};

/// The `kind` of a standing pipeline manifest.
pub const STANDING_KIND: &str = "StandingPipeline";

/// Longest standing pipeline name.
pub const MAX_NAME_LEN: usize = 63;

/// The one `kind` a [`StandingManifest`] has; it is required in the file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum StandingKind {
    /// `kind: StandingPipeline`.
    #[default]
    StandingPipeline,
}

/// A standing pipeline manifest: the source, the DAG, a consumer per output, and how
/// results are delivered. [`StandingManifest::to_spec`] checks it and makes the proto.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StandingManifest {
    /// Always `StandingPipeline`.
    pub kind: StandingKind,
    /// Unique pipeline name.
    #[serde(default)]
    pub name: String,
    /// The source the pipeline reads.
    #[serde(default)]
    pub source: Connector,
    /// The pipeline input the source's records go to; empty means the only input.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source_input: String,
    /// The processing nodes.
    #[serde(default)]
    pub nodes: Vec<Node>,
    /// Connections from node outputs to node inputs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub edges: Vec<Edge>,
    /// Named pipeline inputs and the node inputs they feed.
    #[serde(default)]
    pub inputs: Vec<PipelineInput>,
    /// Named pipeline outputs and the node outputs they come from.
    #[serde(default)]
    pub outputs: Vec<PipelineOutput>,
    /// The consumer of each pipeline output, by output name.
    #[serde(default)]
    pub consumers: BTreeMap<String, Connector>,
    /// Where results go after their last try; unset logs and counts them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter: Option<Connector>,
    /// Retries and in-flight bounds; unset means the server's defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<Delivery>,
}

/// A registered source or consumer (`ConnectorRef`): exactly one of `id` and `capability`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Connector {
    /// A component id.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    /// Any healthy component registered with this capability, for example `generator`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub capability: String,
    /// Parameters sent to the component when the stream opens.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub params: serde_json::Map<String, serde_json::Value>,
}

/// Retries and in-flight bounds (`DeliveryPolicy`); zero and unset mean the defaults.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Delivery {
    /// Tries per result before it is dead-lettered (0: the default, 5).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub max_attempts: u32,
    /// Wait before the first retry, doubling for each next one (unset: 200ms).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "duration_text"
    )]
    pub retry_backoff: Option<Duration>,
    /// Source records in flight (0: the default, 256).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub max_in_flight: u32,
}

fn is_zero(value: &u32) -> bool {
    *value == 0
}

/// Why a text is not a standing pipeline manifest.
enum TextError {
    /// Not YAML or JSON, or not this model.
    Syntax(String),
    /// Some other kind of manifest: what it is, for the message.
    Kind(String),
}

impl StandingManifest {
    /// Reads a standing pipeline manifest from a YAML or JSON file. A session manifest
    /// (no `kind`, or `kind: Pipeline`) is [`Error::NotStanding`].
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            TextError::Syntax(message) => Error::Parse {
                path: path.display().to_string(),
                message,
            },
            TextError::Kind(found) => Error::NotStanding {
                path: path.display().to_string(),
                found,
            },
        })
    }

    /// Reads and checks a file: the spec to apply, or every problem ([`Error::Invalid`]).
    pub fn spec_from_file(path: impl AsRef<Path>) -> Result<pb::StandingPipelineSpec> {
        let path = path.as_ref();
        Self::from_file(path)?
            .to_spec()
            .map_err(|problems| Error::Invalid {
                path: path.display().to_string(),
                problems,
            })
    }

    /// Parses YAML or JSON text; the error says what is wrong and, from the YAML parser,
    /// where.
    pub fn from_text(text: &str) -> Result<Self, String> {
        Self::parse(text).map_err(|e| match e {
            TextError::Syntax(message) => message,
            TextError::Kind(found) => not_standing(&found),
        })
    }

    fn parse(text: &str) -> Result<Self, TextError> {
        match declared_kind(text).map_err(TextError::Syntax)?.as_deref() {
            Some(STANDING_KIND) => {}
            None => {
                return Err(TextError::Kind(
                    "a session pipeline (it has no kind)".into(),
                ));
            }
            Some(PIPELINE_KIND) => {
                return Err(TextError::Kind(format!(
                    "a session pipeline (kind {PIPELINE_KIND})"
                )));
            }
            Some(other) => return Err(TextError::Syntax(unknown_kind(other))),
        }
        serde_yaml::from_str(text).map_err(|e| TextError::Syntax(e.to_string()))
    }

    /// The DAG sections as a session manifest, named after the pipeline: what
    /// [`validate`](crate::validate) checks against live processors.
    pub fn pipeline(&self) -> Manifest {
        Manifest {
            name: self.name.clone(),
            nodes: self.nodes.clone(),
            edges: self.edges.clone(),
            inputs: self.inputs.clone(),
            outputs: self.outputs.clone(),
        }
    }

    /// Every structural problem: the name, the connectors, the source input, a consumer
    /// for each output and no other, and the DAG's own checks (offline).
    pub fn check(&self) -> Result<(), Problems> {
        let mut problems = Vec::new();
        let mut invalid = |reason: &'static str, field: String, message: String| {
            problems.push(Problem {
                kind: ProblemKind::Invalid,
                reason,
                message: format!("{field}: {message}"),
                node_id: String::new(),
                field,
            });
        };
        if self.name.is_empty() {
            invalid(
                "MISSING_NAME",
                "name".into(),
                "a standing pipeline needs a name".into(),
            );
        } else if !valid_name(&self.name) {
            invalid(
                "INVALID_NAME",
                "name".into(),
                format!(
                    "{:?} must be lowercase letters, digits, '-' and '.', starting and ending with a letter or digit, at most {MAX_NAME_LEN} characters",
                    self.name
                ),
            );
        }
        connector_problems(&self.source, "source", &mut invalid);
        if let Some(dead_letter) = &self.dead_letter {
            connector_problems(dead_letter, "dead_letter", &mut invalid);
        }
        let inputs: Vec<&str> = self.inputs.iter().map(|i| i.name.as_str()).collect();
        if self.source_input.is_empty() {
            if inputs.len() > 1 {
                invalid(
                    "AMBIGUOUS_INPUT",
                    "source_input".into(),
                    format!(
                        "the pipeline has {} inputs ({}): name the one the source feeds",
                        inputs.len(),
                        inputs.join(", ")
                    ),
                );
            }
        } else if !inputs.contains(&self.source_input.as_str()) {
            invalid(
                "UNKNOWN_INPUT",
                "source_input".into(),
                format!(
                    "the pipeline has no input {:?} (it has: {}){}",
                    self.source_input,
                    inputs.join(", "),
                    did_you_mean(&self.source_input, inputs.iter().copied())
                ),
            );
        }
        let outputs: Vec<&str> = self
            .outputs
            .iter()
            .map(|o| o.name.as_str())
            .filter(|o| !o.is_empty())
            .collect();
        for output in &outputs {
            if !self.consumers.contains_key(*output) {
                invalid(
                    "OUTPUT_WITHOUT_CONSUMER",
                    format!("consumers.{output}"),
                    format!("pipeline output {output:?} has no consumer"),
                );
            }
        }
        for (key, consumer) in &self.consumers {
            let field = format!("consumers.{key}");
            if outputs.contains(&key.as_str()) {
                connector_problems(consumer, &field, &mut invalid);
            } else {
                invalid(
                    "UNKNOWN_OUTPUT",
                    field,
                    format!(
                        "the pipeline has no output {key:?} (it has: {}){}",
                        outputs.join(", "),
                        did_you_mean(key, outputs.iter().copied())
                    ),
                );
            }
        }
        if let Some(backoff) = self.delivery.as_ref().and_then(|d| d.retry_backoff)
            && prost_types::Duration::try_from(backoff).is_err()
        {
            invalid(
                "INVALID_DURATION",
                "delivery.retry_backoff".into(),
                format!("{backoff:?} is too long"),
            );
        }
        if let Err(dag) = crate::validate(&self.pipeline(), &Offline) {
            problems.extend(dag.0);
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Problems(problems))
        }
    }

    /// The proto spec, after [`check`](Self::check) found nothing wrong. Consumers are
    /// listed in the order of the outputs.
    pub fn to_spec(&self) -> Result<pb::StandingPipelineSpec, Problems> {
        self.check()?;
        let mut manifest = self.pipeline().to_proto();
        manifest.name.clone_from(&self.name);
        Ok(pb::StandingPipelineSpec {
            name: self.name.clone(),
            source: Some(self.source.to_proto()),
            source_input: self.source_input.clone(),
            manifest: Some(manifest),
            consumers: self
                .outputs
                .iter()
                .filter_map(|o| {
                    self.consumers
                        .get(&o.name)
                        .map(|consumer| pb::ConsumerBinding {
                            output: o.name.clone(),
                            consumer: Some(consumer.to_proto()),
                        })
                })
                .collect(),
            dead_letter: self.dead_letter.as_ref().map(Connector::to_proto),
            delivery: self.delivery.as_ref().map(|d| pb::DeliveryPolicy {
                max_attempts: d.max_attempts,
                retry_backoff: d
                    .retry_backoff
                    .and_then(|b| prost_types::Duration::try_from(b).ok()),
                max_in_flight: d.max_in_flight,
            }),
        })
    }

    /// The manifest a stored spec was applied from, for showing it (and applying it
    /// again). Absent messages become empty values, which [`check`](Self::check) reports.
    pub fn from_spec(spec: &pb::StandingPipelineSpec) -> Self {
        let pipeline = spec
            .manifest
            .as_ref()
            .map(Manifest::from_proto)
            .unwrap_or_default();
        Self {
            kind: StandingKind::StandingPipeline,
            name: spec.name.clone(),
            source: spec
                .source
                .as_ref()
                .map(Connector::from_proto)
                .unwrap_or_default(),
            source_input: spec.source_input.clone(),
            nodes: pipeline.nodes,
            edges: pipeline.edges,
            inputs: pipeline.inputs,
            outputs: pipeline.outputs,
            consumers: spec
                .consumers
                .iter()
                .map(|b| {
                    (
                        b.output.clone(),
                        b.consumer
                            .as_ref()
                            .map(Connector::from_proto)
                            .unwrap_or_default(),
                    )
                })
                .collect(),
            dead_letter: spec.dead_letter.as_ref().map(Connector::from_proto),
            delivery: spec.delivery.as_ref().map(|d| Delivery {
                max_attempts: d.max_attempts,
                retry_backoff: d.retry_backoff.and_then(|b| Duration::try_from(b).ok()),
                max_in_flight: d.max_in_flight,
            }),
        }
    }
}

impl Connector {
    /// `capability NAME` or `id ID`, for one-line summaries (`-` when it names neither).
    pub fn selector(&self) -> String {
        match (self.id.is_empty(), self.capability.is_empty()) {
            (false, _) => format!("id {}", self.id),
            (true, false) => format!("capability {}", self.capability),
            (true, true) => "-".into(),
        }
    }

    /// The proto form; `id` wins when both are set (never so after a check).
    pub fn to_proto(&self) -> pb::ConnectorRef {
        use pb::connector_ref::Selector;
        pb::ConnectorRef {
            selector: if !self.id.is_empty() {
                Some(Selector::Id(self.id.clone()))
            } else if !self.capability.is_empty() {
                Some(Selector::Capability(self.capability.clone()))
            } else {
                None
            },
            params: (!self.params.is_empty())
                .then(|| flowplane_proto::json_to_struct(&self.params)),
        }
    }

    /// From the proto form.
    pub fn from_proto(c: &pb::ConnectorRef) -> Self {
        use pb::connector_ref::Selector;
        let (id, capability) = match &c.selector {
            Some(Selector::Id(id)) => (id.clone(), String::new()),
            Some(Selector::Capability(capability)) => (String::new(), capability.clone()),
            None => (String::new(), String::new()),
        };
        Self {
            id,
            capability,
            params: c
                .params
                .as_ref()
                .map(flowplane_proto::struct_to_json)
                .unwrap_or_default(),
        }
    }
}

/// A DNS label with dots: what the control plane stores a pipeline under.
fn valid_name(name: &str) -> bool {
    let edge = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    name.len() <= MAX_NAME_LEN
        && name.chars().all(|c| edge(c) || c == '-' || c == '.')
        && name.starts_with(edge)
        && name.ends_with(edge)
}

fn connector_problems(
    connector: &Connector,
    field: &str,
    invalid: &mut impl FnMut(&'static str, String, String),
) {
    match (connector.id.is_empty(), connector.capability.is_empty()) {
        (true, true) => invalid(
            "MISSING_CONNECTOR",
            field.to_string(),
            "needs an id or a capability".into(),
        ),
        (false, false) => invalid(
            "AMBIGUOUS_CONNECTOR",
            format!("{field}.capability"),
            format!(
                "give id or capability, not both (id {:?}, capability {:?})",
                connector.id, connector.capability
            ),
        ),
        _ => {}
    }
}

/// The message for a file of another kind given where a standing pipeline is expected.
fn not_standing(found: &str) -> String {
    format!(
        "not a {STANDING_KIND} manifest: it is {found}; a standing pipeline says `kind: {STANDING_KIND}` (a session pipeline runs with `flowplane run`)"
    )
}

/// `retry_backoff` as text: `200ms`, `15s`, `2m`, `1h` or plain seconds, read with the
/// same parser as every duration flag; written back in the shortest exact unit.
mod duration_text {
    use std::time::Duration;

    use serde::{Deserializer, Serializer, de};

    pub fn serialize<S: Serializer>(value: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            None => s.serialize_none(),
            Some(d) => s.serialize_str(&format(*d)),
        }
    }

    pub fn format(d: Duration) -> String {
        if d.subsec_nanos() == 0 {
            format!("{}s", d.as_secs())
        } else if d.subsec_nanos().is_multiple_of(1_000_000) {
            format!("{}ms", d.as_millis())
        } else {
            format!("{}s", d.as_secs_f64())
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        d.deserialize_any(Visitor)
    }

    struct Visitor;

    impl<'de> de::Visitor<'de> for Visitor {
        type Value = Option<Duration>;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a duration like 200ms, 15s, 2m or plain seconds")
        }

        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            flowplane_grpc::config::parse_duration(v)
                .map(Some)
                .map_err(E::custom)
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(Duration::from_secs(v)))
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            u64::try_from(v)
                .map(|v| Some(Duration::from_secs(v)))
                .map_err(|_| E::custom(format!("{v} is not a duration: it is negative")))
        }

        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
            Duration::try_from_secs_f64(v)
                .map(Some)
                .map_err(|e| E::custom(format!("{v} is not a duration: {e}")))
        }
    }
}

pub use duration_text::format as format_duration;

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = r#"
kind: StandingPipeline
name: orders-enriched
source:
  capability: generator
  params: {count: 100000, partitions: 2}
source_input: events
nodes:
  - { id: calc, processor: json.calculator }
inputs:
  - { name: events, targets: [{ node: calc }] }
outputs:
  - { name: result, source: { node: calc } }
consumers:
  result: {capability: file, params: {path: "/tmp/out-{output}.jsonl"}}
dead_letter: {capability: log}
delivery: {max_attempts: 5, retry_backoff: 200ms, max_in_flight: 256}
"#;

    fn problems(yaml: &str) -> Vec<Problem> {
        StandingManifest::from_text(yaml)
            .unwrap()
            .check()
            .unwrap_err()
            .0
    }

    fn fields(yaml: &str) -> Vec<String> {
        problems(yaml).into_iter().map(|p| p.field).collect()
    }

    #[test]
    fn a_standing_manifest_becomes_the_spec() {
        let manifest = StandingManifest::from_text(YAML).unwrap();
        let spec = manifest.to_spec().unwrap();
        assert_eq!(spec.name, "orders-enriched");
        let source = spec.source.as_ref().unwrap();
        assert_eq!(
            source.selector,
            Some(pb::connector_ref::Selector::Capability("generator".into()))
        );
        let params = flowplane_proto::struct_to_json(source.params.as_ref().unwrap());
        assert_eq!(params["partitions"], 2.0);
        assert_eq!(spec.source_input, "events");
        let dag = spec.manifest.as_ref().unwrap();
        assert_eq!(dag.name, "orders-enriched");
        assert_eq!(dag.nodes[0].processor, "json.calculator");
        assert_eq!(spec.consumers.len(), 1);
        assert_eq!(spec.consumers[0].output, "result");
        let consumer = spec.consumers[0].consumer.as_ref().unwrap();
        assert_eq!(
            flowplane_proto::struct_to_json(consumer.params.as_ref().unwrap())["path"],
            "/tmp/out-{output}.jsonl"
        );
        assert_eq!(
            spec.dead_letter.as_ref().unwrap().selector,
            Some(pb::connector_ref::Selector::Capability("log".into()))
        );
        let delivery = spec.delivery.unwrap();
        assert_eq!(delivery.max_attempts, 5);
        assert_eq!(delivery.max_in_flight, 256);
        assert_eq!(
            delivery.retry_backoff,
            Some(prost_types::Duration {
                seconds: 0,
                nanos: 200_000_000
            })
        );
    }

    #[test]
    fn the_spec_reads_back_to_an_equivalent_manifest_in_yaml_and_json() {
        let manifest = StandingManifest::from_text(YAML).unwrap();
        let back = StandingManifest::from_spec(&manifest.to_spec().unwrap());
        // Struct numbers are doubles on the wire; everything else is as written.
        assert_eq!(back.source.params["count"], 100000.0);
        assert_eq!(back.consumers, manifest.consumers);
        assert_eq!(back.delivery, manifest.delivery);
        assert_eq!(back.nodes, manifest.nodes);
        let yaml = serde_yaml::to_string(&back).unwrap();
        assert!(yaml.starts_with("kind: StandingPipeline\n"), "{yaml}");
        assert!(yaml.contains("retry_backoff: 200ms"), "{yaml}");
        assert_eq!(StandingManifest::from_text(&yaml).unwrap(), back);
        let json = serde_json::to_string(&back).unwrap();
        assert_eq!(StandingManifest::from_text(&json).unwrap(), back);
    }

    #[test]
    fn the_only_input_is_the_default_source_input() {
        let yaml = YAML.replace("source_input: events\n", "");
        let spec = StandingManifest::from_text(&yaml)
            .unwrap()
            .to_spec()
            .unwrap();
        assert_eq!(spec.source_input, "");
        let two = yaml.replace(
            "  - { name: events, targets: [{ node: calc }] }\n",
            "  - { name: events, targets: [{ node: calc }] }\n  - { name: more, targets: [{ node: calc }] }\n",
        );
        let found = problems(&two);
        let ambiguous = found.iter().find(|p| p.field == "source_input").unwrap();
        assert_eq!(ambiguous.reason, "AMBIGUOUS_INPUT");
        assert!(ambiguous.message.contains("events, more"), "{ambiguous:?}");
        let wrong = problems(&YAML.replace("source_input: events", "source_input: event"));
        assert_eq!(wrong[0].field, "source_input");
        assert!(
            wrong[0].message.contains("did you mean \"events\""),
            "{:?}",
            wrong[0]
        );
    }

    #[test]
    fn connectors_need_exactly_one_of_id_and_capability() {
        let both = problems(&YAML.replace(
            "  capability: generator\n",
            "  capability: generator\n  id: gen-1\n",
        ));
        assert_eq!(both.len(), 1, "{both:?}");
        assert_eq!(both[0].field, "source.capability");
        assert_eq!(both[0].reason, "AMBIGUOUS_CONNECTOR");
        assert!(
            both[0].message.starts_with("source.capability: "),
            "{both:?}"
        );
        let neither = fields(&YAML.replace("result: {capability: file,", "result: {"));
        assert_eq!(neither, ["consumers.result"]);
        let dead = fields(&YAML.replace("dead_letter: {capability: log}", "dead_letter: {}"));
        assert_eq!(dead, ["dead_letter"]);
        let by_id = YAML.replace("  capability: generator\n", "  id: gen-1\n");
        let spec = StandingManifest::from_text(&by_id)
            .unwrap()
            .to_spec()
            .unwrap();
        assert_eq!(
            spec.source.unwrap().selector,
            Some(pb::connector_ref::Selector::Id("gen-1".into()))
        );
        let missing = problems(&YAML.replace(
            "source:\n  capability: generator\n  params: {count: 100000, partitions: 2}\n",
            "",
        ));
        assert_eq!(missing[0].field, "source");
        assert_eq!(missing[0].message, "source: needs an id or a capability");
    }

    #[test]
    fn every_output_has_a_consumer_and_every_consumer_an_output() {
        let found = problems(&YAML.replace("  result: {", "  results: {"));
        let by_field: BTreeMap<&str, &Problem> =
            found.iter().map(|p| (p.field.as_str(), p)).collect();
        assert_eq!(
            by_field.keys().copied().collect::<Vec<_>>(),
            ["consumers.result", "consumers.results"]
        );
        assert_eq!(
            by_field["consumers.result"].reason,
            "OUTPUT_WITHOUT_CONSUMER"
        );
        assert_eq!(
            by_field["consumers.result"].message,
            "consumers.result: pipeline output \"result\" has no consumer"
        );
        let unknown = by_field["consumers.results"];
        assert_eq!(unknown.reason, "UNKNOWN_OUTPUT");
        assert!(
            unknown.message.contains("did you mean \"result\""),
            "{unknown:?}"
        );
    }

    #[test]
    fn names_are_checked_as_the_server_stores_them() {
        assert_eq!(
            fields(&YAML.replace("name: orders-enriched", "name: Orders")),
            ["name"]
        );
        let long = format!("name: {}", "a".repeat(MAX_NAME_LEN + 1));
        assert_eq!(
            fields(&YAML.replace("name: orders-enriched", &long)),
            ["name"]
        );
        assert_eq!(
            fields(&YAML.replace("name: orders-enriched", "name: orders-")),
            ["name"]
        );
        let ok = format!("name: {}", "a.b-1".repeat(12));
        assert!(
            StandingManifest::from_text(&YAML.replace("name: orders-enriched", &ok))
                .unwrap()
                .check()
                .is_ok()
        );
        let none = problems(&YAML.replace("name: orders-enriched\n", ""));
        assert_eq!(none[0].reason, "MISSING_NAME");
    }

    #[test]
    fn the_dag_is_checked_by_the_session_validation_with_its_field_paths() {
        let found = problems(&YAML.replace(
            "  - { id: calc, processor: json.calculator }\n",
            "  - { id: calc, processor: json.calculator }\n  - { id: calc, processor: x }\n",
        ));
        assert_eq!(found[0].field, "nodes[1].id");
        assert_eq!(found[0].reason, "DUPLICATE_NODE");
        let bad_output = problems(&YAML.replace("source: { node: calc }", "source: { node: cal }"));
        assert_eq!(bad_output[0].field, "outputs[0].source.node");
    }

    #[test]
    fn delivery_durations_read_like_the_flags() {
        for (text, expected) in [
            ("200ms", Duration::from_millis(200)),
            ("1.5s", Duration::from_millis(1500)),
            ("2m", Duration::from_secs(120)),
            ("3", Duration::from_secs(3)),
            ("0.25", Duration::from_millis(250)),
        ] {
            let yaml = YAML.replace("retry_backoff: 200ms", &format!("retry_backoff: {text}"));
            let manifest = StandingManifest::from_text(&yaml).unwrap();
            assert_eq!(
                manifest.delivery.unwrap().retry_backoff,
                Some(expected),
                "{text}"
            );
        }
        let err = StandingManifest::from_text(&YAML.replace("200ms", "200 parsecs")).unwrap_err();
        assert!(
            err.contains("delivery.retry_backoff") && err.contains("line 17"),
            "{err}"
        );
        let negative = StandingManifest::from_text(&YAML.replace("200ms", "-1")).unwrap_err();
        assert!(negative.contains("negative"), "{negative}");
        assert_eq!(format_duration(Duration::from_millis(200)), "200ms");
        assert_eq!(format_duration(Duration::from_secs(90)), "90s");
        assert_eq!(format_duration(Duration::from_micros(1500)), "0.0015s");
    }

    #[test]
    fn unknown_keys_are_refused_with_field_and_line() {
        let err =
            StandingManifest::from_text(&YAML.replace("dead_letter:", "dead_leter:")).unwrap_err();
        assert!(
            err.contains("dead_leter") && err.contains("line 16"),
            "{err}"
        );
        let err = StandingManifest::from_text(
            &YAML.replace("  capability: generator", "  capabilty: generator"),
        )
        .unwrap_err();
        assert!(
            err.contains("source") && err.contains("capabilty") && err.contains("line 5"),
            "{err}"
        );
        let err = StandingManifest::from_text(&YAML.replace("max_attempts: 5", "max_attempts: -5"))
            .unwrap_err();
        assert!(err.contains("delivery.max_attempts"), "{err}");
    }

    #[test]
    fn a_session_manifest_is_not_a_standing_pipeline() {
        let session = "name: calc\nnodes: [{ id: calc, processor: json.calculator }]\n";
        let err = StandingManifest::from_text(session).unwrap_err();
        assert!(
            err.starts_with(
                "not a StandingPipeline manifest: it is a session pipeline (it has no kind)"
            ),
            "{err}"
        );
        let err = StandingManifest::from_text(&format!("kind: Pipeline\n{session}")).unwrap_err();
        assert!(err.contains("(kind Pipeline)"), "{err}");
        let err = StandingManifest::from_text("kind: StandingPipelin\nname: x\n").unwrap_err();
        assert!(err.contains("did you mean \"StandingPipeline\""), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("session.yaml");
        std::fs::write(&path, session).unwrap();
        let err = StandingManifest::from_file(&path).unwrap_err();
        assert!(matches!(err, Error::NotStanding { .. }), "{err:?}");
        let text = err.to_string();
        assert!(
            text.contains("session.yaml") && text.contains("not a StandingPipeline"),
            "{text}"
        );
    }
}
