//! The manifest model: field names are the proto's, so a YAML file, its JSON twin and the
//! proto message describe a pipeline the same way. Defaults stand for empty fields.

use std::path::Path;

use flowplane_proto::streaming::v1 as pb;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// A pipeline: processor nodes, the edges between them, named inputs and outputs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Pipeline name, for logs and telemetry.
    #[serde(default)]
    pub name: String,
    /// The processing nodes.
    #[serde(default)]
    pub nodes: Vec<Node>,
    /// Connections from node outputs to node inputs.
    #[serde(default)]
    pub edges: Vec<Edge>,
    /// Named pipeline inputs and the node inputs they feed.
    #[serde(default)]
    pub inputs: Vec<PipelineInput>,
    /// Named pipeline outputs and the node outputs they come from.
    #[serde(default)]
    pub outputs: Vec<PipelineOutput>,
}

/// One processing node.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    /// Unique node id.
    pub id: String,
    /// Processor name, for example `audio.gain`.
    pub processor: String,
    /// Processor parameters.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub params: serde_json::Map<String, serde_json::Value>,
    /// Where the processor runs: `remote` (the default), `local` or `auto`.
    #[serde(default, skip_serializing_if = "Placement::is_default")]
    pub placement: Placement,
}

/// Where a node's processor runs (`flowplane.streaming.v1.Placement`). Ordering, type
/// checks, limits, deadlines and failover are the same whichever a node gets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Placement {
    /// On a processor host found through the control plane, over gRPC.
    #[default]
    #[serde(alias = "PLACEMENT_REMOTE")]
    Remote,
    /// On the processor host embedded in the pipeline service, in memory.
    #[serde(alias = "PLACEMENT_LOCAL")]
    Local,
    /// Local when the pipeline service hosts the processor, remote otherwise.
    #[serde(alias = "PLACEMENT_AUTO")]
    Auto,
    /// A value this version does not know (from a newer client): validation refuses it.
    #[serde(skip)]
    Unknown(i32),
}

impl Placement {
    fn is_default(&self) -> bool {
        *self == Self::Remote
    }

    /// From the proto enum's number; unset is remote.
    pub fn from_proto(value: i32) -> Self {
        match pb::Placement::try_from(value) {
            Ok(pb::Placement::Unspecified | pb::Placement::Remote) => Self::Remote,
            Ok(pb::Placement::Local) => Self::Local,
            Ok(pb::Placement::Auto) => Self::Auto,
            Err(_) => Self::Unknown(value),
        }
    }

    /// The proto enum's number.
    pub fn to_proto(self) -> i32 {
        match self {
            Self::Remote => pb::Placement::Unspecified as i32,
            Self::Local => pb::Placement::Local as i32,
            Self::Auto => pb::Placement::Auto as i32,
            Self::Unknown(value) => value,
        }
    }

    /// As the manifest writes it.
    pub fn label(self) -> &'static str {
        match self {
            Self::Remote => "remote",
            Self::Local => "local",
            Self::Auto => "auto",
            Self::Unknown(_) => "unknown",
        }
    }
}

/// One connection from a node output to a node input.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Edge {
    /// Upstream node id.
    pub from_node: String,
    /// Upstream output name; empty means its only output.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub from_output: String,
    /// Downstream node id.
    pub to_node: String,
    /// Downstream input name; empty means its only input.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub to_input: String,
}

/// One port of one node.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortRef {
    /// Node id.
    pub node: String,
    /// Port name; empty means the node's only port of that direction.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub port: String,
}

/// A named pipeline input.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineInput {
    /// The name chunks give in `DataChunk.input`.
    pub name: String,
    /// Node inputs this input feeds.
    #[serde(default)]
    pub targets: Vec<PortRef>,
}

/// A named pipeline output.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineOutput {
    /// The name results carry in `ChunkResult.output`.
    pub name: String,
    /// The node output it comes from.
    pub source: PortRef,
}

impl Manifest {
    /// Reads a manifest from a `.yaml`, `.yml` or `.json` file (YAML is a superset of JSON,
    /// so any extension parses; the error names the file).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.display().to_string(),
            source,
        })?;
        if declared_kind(&text).is_ok_and(|k| k.as_deref() == Some(crate::standing::STANDING_KIND))
        {
            return Err(Error::NotSession {
                path: path.display().to_string(),
            });
        }
        Self::from_text(&text).map_err(|message| Error::Parse {
            path: path.display().to_string(),
            message,
        })
    }

    /// Parses YAML or JSON text. A `kind` is optional and must be `Pipeline`; a
    /// `kind: StandingPipeline` file is refused saying what it is (see [`crate::standing`]).
    pub fn from_text(text: &str) -> Result<Self, String> {
        match declared_kind(text)?.as_deref() {
            None | Some(PIPELINE_KIND) => {}
            Some(crate::standing::STANDING_KIND) => {
                return Err(format!(
                    "kind: this is a {} manifest, not a session pipeline: apply it with `flowplane pipelines apply`",
                    crate::standing::STANDING_KIND
                ));
            }
            Some(other) => return Err(unknown_kind(other)),
        }
        let file: SessionFile = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
        Ok(Self {
            name: file.name,
            nodes: file.nodes,
            edges: file.edges,
            inputs: file.inputs,
            outputs: file.outputs,
        })
    }

    /// The proto form.
    pub fn to_proto(&self) -> pb::PipelineManifest {
        pb::PipelineManifest {
            name: self.name.clone(),
            nodes: self
                .nodes
                .iter()
                .map(|n| pb::NodeSpec {
                    id: n.id.clone(),
                    processor: n.processor.clone(),
                    params: (!n.params.is_empty())
                        .then(|| flowplane_proto::json_to_struct(&n.params)),
                    placement: n.placement.to_proto(),
                })
                .collect(),
            edges: self
                .edges
                .iter()
                .map(|e| pb::Edge {
                    from_node: e.from_node.clone(),
                    from_output: e.from_output.clone(),
                    to_node: e.to_node.clone(),
                    to_input: e.to_input.clone(),
                })
                .collect(),
            inputs: self
                .inputs
                .iter()
                .map(|i| pb::PipelineInput {
                    name: i.name.clone(),
                    targets: i.targets.iter().map(PortRef::to_proto).collect(),
                })
                .collect(),
            outputs: self
                .outputs
                .iter()
                .map(|o| pb::PipelineOutput {
                    name: o.name.clone(),
                    source: Some(o.source.to_proto()),
                })
                .collect(),
        }
    }

    /// From the proto form; absent messages become empty values, which validation reports.
    pub fn from_proto(m: &pb::PipelineManifest) -> Self {
        Self {
            name: m.name.clone(),
            nodes: m
                .nodes
                .iter()
                .map(|n| Node {
                    id: n.id.clone(),
                    processor: n.processor.clone(),
                    params: n
                        .params
                        .as_ref()
                        .map(flowplane_proto::struct_to_json)
                        .unwrap_or_default(),
                    placement: Placement::from_proto(n.placement),
                })
                .collect(),
            edges: m
                .edges
                .iter()
                .map(|e| Edge {
                    from_node: e.from_node.clone(),
                    from_output: e.from_output.clone(),
                    to_node: e.to_node.clone(),
                    to_input: e.to_input.clone(),
                })
                .collect(),
            inputs: m
                .inputs
                .iter()
                .map(|i| PipelineInput {
                    name: i.name.clone(),
                    targets: i.targets.iter().map(PortRef::from_proto).collect(),
                })
                .collect(),
            outputs: m
                .outputs
                .iter()
                .map(|o| PipelineOutput {
                    name: o.name.clone(),
                    source: o
                        .source
                        .as_ref()
                        .map(PortRef::from_proto)
                        .unwrap_or_default(),
                })
                .collect(),
        }
    }
}

/// The `kind` of a session manifest; it may be left out.
pub const PIPELINE_KIND: &str = "Pipeline";

/// A session manifest file: [`Manifest`] and the optional `kind` (serde's
/// `deny_unknown_fields` rules out flattening, so the fields are listed again).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SessionFile {
    #[serde(default, rename = "kind")]
    _kind: Option<String>,
    #[serde(default)]
    name: String,
    #[serde(default)]
    nodes: Vec<Node>,
    #[serde(default)]
    edges: Vec<Edge>,
    #[serde(default)]
    inputs: Vec<PipelineInput>,
    #[serde(default)]
    outputs: Vec<PipelineOutput>,
}

/// The `kind` a manifest text declares (`None` when it has none), read before the full
/// parse so the error for the wrong kind of file says so instead of listing unknown fields.
pub(crate) fn declared_kind(text: &str) -> Result<Option<String>, String> {
    let value: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
    match value.get("kind") {
        None | Some(serde_yaml::Value::Null) => Ok(None),
        Some(serde_yaml::Value::String(kind)) => Ok(Some(kind.clone())),
        Some(other) => Err(format!(
            "kind: must be {PIPELINE_KIND} or {}, got {}",
            crate::standing::STANDING_KIND,
            serde_yaml::to_string(other).unwrap_or_default().trim_end()
        )),
    }
}

pub(crate) fn unknown_kind(kind: &str) -> String {
    format!(
        "kind: unknown kind {kind:?}; a manifest is kind {PIPELINE_KIND} (the default) or {}{}",
        crate::standing::STANDING_KIND,
        crate::suggest::did_you_mean(kind, [PIPELINE_KIND, crate::standing::STANDING_KIND])
    )
}

impl PortRef {
    fn to_proto(&self) -> pb::PortRef {
        pb::PortRef {
            node: self.node.clone(),
            port: self.port.clone(),
        }
    }

    fn from_proto(p: &pb::PortRef) -> Self {
        Self {
            node: p.node.clone(),
            port: p.port.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = r#"
name: chain
nodes:
  - id: gain
    processor: audio.gain
    params: { gain_db: -6 }
  - id: level
    processor: audio.level
edges:
  - { from_node: gain, to_node: level }
inputs:
  - name: audio
    targets: [{ node: gain }]
outputs:
  - { name: levels, source: { node: level } }
"#;

    #[test]
    fn yaml_json_and_proto_describe_the_same_pipeline() {
        let from_yaml = Manifest::from_text(YAML).unwrap();
        assert_eq!(from_yaml.nodes[0].params["gain_db"], -6);
        let json = serde_json::to_string(&from_yaml).unwrap();
        let from_json = Manifest::from_text(&json).unwrap();
        assert_eq!(from_yaml, from_json);
        let round = Manifest::from_proto(&from_yaml.to_proto());
        // Struct numbers are doubles on the wire.
        assert_eq!(round.nodes[0].params["gain_db"], -6.0);
        assert_eq!(round.edges, from_yaml.edges);
        assert_eq!(round.outputs, from_yaml.outputs);
    }

    #[test]
    fn unknown_fields_are_rejected_naming_them() {
        let err = Manifest::from_text("name: x\nnodez: []\n").unwrap_err();
        assert!(err.contains("nodez"), "{err}");
    }

    #[test]
    fn a_session_manifest_may_say_kind_pipeline_and_nothing_else() {
        let with_kind = Manifest::from_text(&format!("kind: Pipeline\n{YAML}")).unwrap();
        assert_eq!(with_kind, Manifest::from_text(YAML).unwrap());
        let standing = Manifest::from_text(&format!("kind: StandingPipeline\n{YAML}")).unwrap_err();
        assert!(
            standing.contains("StandingPipeline") && standing.contains("pipelines apply"),
            "{standing}"
        );
        let typo = Manifest::from_text(&format!("kind: Pipelin\n{YAML}")).unwrap_err();
        assert!(
            typo.contains("\"Pipelin\"") && typo.contains("did you mean \"Pipeline\""),
            "{typo}"
        );
        let number = Manifest::from_text(&format!("kind: 3\n{YAML}")).unwrap_err();
        assert!(number.starts_with("kind: must be"), "{number}");
    }
}
