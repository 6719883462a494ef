//! Manifest validation and planning. Every problem is collected (never just the first),
//! each naming its node, edge or field, so a person fixes a manifest in one pass. A valid
//! manifest becomes a [`Plan`]: nodes in topological order with resolved port names and a
//! routing table, which is all the session runtime needs.

use std::collections::{BTreeMap, HashMap, VecDeque};

use flowplane_proto::{
    common::v1::ErrorDetail,
    processor::v1::{PortSpec, ProcessorCapability},
    type_set_name,
};

use crate::{Manifest, Placement, suggest::did_you_mean};

/// What validation needs to know about the live platform: the capability of the
/// processor of each name that some live instance offers.
pub trait Capabilities {
    /// The capability of `processor`, or `None` when no live instance offers it.
    fn capability(&self, processor: &str) -> Option<ProcessorCapability>;

    /// Every processor name some live instance offers, for "did you mean" suggestions.
    fn processor_names(&self) -> Vec<String> {
        Vec::new()
    }

    /// False when nothing is known about the platform ([`Offline`]): a processor without a
    /// capability is then not a problem, and only the checks that need none run.
    fn knows_processors(&self) -> bool {
        true
    }

    /// The capability a node of `placement` would run with. By default placement makes
    /// no difference; a pipeline service with an embedded host answers `local` from it.
    fn capability_for(&self, processor: &str, placement: Placement) -> Option<ProcessorCapability> {
        let _ = placement;
        self.capability(processor)
    }

    /// The processors that can run with `placement: local`, or `None` when that is not
    /// known here (a client validating on its own): then placement is not checked.
    fn local_processors(&self) -> Option<Vec<String>> {
        None
    }
}

impl Capabilities for HashMap<String, ProcessorCapability> {
    fn capability(&self, processor: &str) -> Option<ProcessorCapability> {
        self.get(processor).cloned()
    }

    fn processor_names(&self) -> Vec<String> {
        self.keys().cloned().collect()
    }
}

/// No platform at all: [`validate`] with this runs every structural check (ids, names,
/// references to nodes, cycles, inputs and outputs) and none that needs a processor's
/// declared ports or params.
#[derive(Clone, Copy, Debug, Default)]
pub struct Offline;

impl Capabilities for Offline {
    fn capability(&self, _processor: &str) -> Option<ProcessorCapability> {
        None
    }

    fn knows_processors(&self) -> bool {
        false
    }
}

/// Whether a problem is in the manifest itself or in the platform's current state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProblemKind {
    /// The manifest is wrong (INVALID_ARGUMENT).
    Invalid,
    /// The manifest is fine but the platform cannot run it now (FAILED_PRECONDITION).
    Unavailable,
}

/// One problem found in a manifest.
#[derive(Clone, Debug, PartialEq)]
pub struct Problem {
    /// Whether the manifest or the platform is at fault.
    pub kind: ProblemKind,
    /// Machine-readable cause, for example `TYPE_MISMATCH`.
    pub reason: &'static str,
    /// Lowercase explanation naming the node, edge or field.
    pub message: String,
    /// The node concerned, if any.
    pub node_id: String,
    /// The manifest field concerned, as a path like `edges[2].to_input`.
    pub field: String,
}

impl Problem {
    /// The gRPC code this problem maps to.
    pub fn code(&self) -> tonic::Code {
        match self.kind {
            ProblemKind::Invalid => tonic::Code::InvalidArgument,
            ProblemKind::Unavailable => tonic::Code::FailedPrecondition,
        }
    }

    /// As the wire error detail.
    pub fn to_detail(&self) -> ErrorDetail {
        ErrorDetail {
            reason: self.reason.to_string(),
            message: self.message.clone(),
            node_id: self.node_id.clone(),
            sequence: None,
            field: self.field.clone(),
            code: self.code() as i32,
        }
    }
}

/// Every problem of one manifest.
#[derive(Clone, Debug, PartialEq)]
pub struct Problems(pub Vec<Problem>);

impl Problems {
    /// INVALID_ARGUMENT when the manifest itself is wrong anywhere, else FAILED_PRECONDITION.
    pub fn code(&self) -> tonic::Code {
        if self.0.iter().any(|p| p.kind == ProblemKind::Invalid) {
            tonic::Code::InvalidArgument
        } else {
            tonic::Code::FailedPrecondition
        }
    }
}

impl std::fmt::Display for Problems {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid pipeline ({} problems): ", self.0.len())?;
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            f.write_str(&p.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for Problems {}

/// Where a chunk goes next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    /// Input `port` of the node at index `node` in [`Plan::nodes`].
    Node { node: usize, port: String },
    /// The pipeline output of this name.
    Output(String),
}

/// One node of a valid pipeline.
#[derive(Clone, Debug)]
pub struct PlanNode {
    /// Node id.
    pub id: String,
    /// Processor name.
    pub processor: String,
    /// Processor parameters.
    pub params: serde_json::Map<String, serde_json::Value>,
    /// Where the processor runs.
    pub placement: Placement,
    /// What the processor declared.
    pub capability: ProcessorCapability,
    /// Where each output of this node goes, by output name.
    pub routes: HashMap<String, Vec<Destination>>,
}

impl PlanNode {
    /// The declared types of input `port`.
    pub fn input_types(&self, port: &str) -> &[i32] {
        self.capability
            .inputs
            .iter()
            .find(|p| p.name == port)
            .map_or(&[], |p| p.types.as_slice())
    }
}

/// A valid pipeline, ready to run.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Pipeline name.
    pub name: String,
    /// Nodes in topological order; [`Destination::Node`] indexes into this.
    pub nodes: Vec<PlanNode>,
    /// Where each pipeline input goes, by input name.
    pub inputs: BTreeMap<String, Vec<Destination>>,
    /// Pipeline output names, in manifest order.
    pub outputs: Vec<String>,
}

impl Plan {
    /// The position of pipeline output `name` in the manifest (`usize::MAX` if unknown).
    pub fn output_index(&self, name: &str) -> usize {
        self.outputs
            .iter()
            .position(|o| o == name)
            .unwrap_or(usize::MAX)
    }

    /// The name a chunk with an empty `input` means: the pipeline's only input.
    pub fn default_input(&self) -> Option<&str> {
        let mut names = self.inputs.keys();
        match (names.next(), names.next()) {
            (Some(only), None) => Some(only),
            _ => None,
        }
    }
}

/// Checks `manifest` against the processors `caps` offers; returns the plan or every problem.
pub fn validate(manifest: &Manifest, caps: &dyn Capabilities) -> Result<Plan, Problems> {
    let mut v = Validator {
        problems: Vec::new(),
    };
    let plan = v.run(manifest, caps);
    if v.problems.is_empty() {
        Ok(plan)
    } else {
        Err(Problems(v.problems))
    }
}

struct Validator {
    problems: Vec<Problem>,
}

const MAX_ID_LEN: usize = 128;

impl Validator {
    fn invalid(&mut self, reason: &'static str, node: &str, field: String, message: String) {
        self.problems.push(Problem {
            kind: ProblemKind::Invalid,
            reason,
            message,
            node_id: node.to_string(),
            field,
        });
    }

    fn run(&mut self, m: &Manifest, caps: &dyn Capabilities) -> Plan {
        if m.nodes.is_empty() {
            self.invalid(
                "EMPTY_PIPELINE",
                "",
                "nodes".into(),
                "pipeline has no nodes".into(),
            );
        }
        // Nodes: ids, processors, params.
        let mut index: HashMap<&str, usize> = HashMap::new();
        let mut capabilities: Vec<Option<ProcessorCapability>> = Vec::new();
        for (i, node) in m.nodes.iter().enumerate() {
            let field = format!("nodes[{i}]");
            if node.id.is_empty() || node.id.len() > MAX_ID_LEN {
                self.invalid(
                    "INVALID_NODE_ID",
                    &node.id,
                    format!("{field}.id"),
                    format!("{field}.id must be 1 to {MAX_ID_LEN} characters"),
                );
            } else if index.insert(&node.id, i).is_some() {
                self.invalid(
                    "DUPLICATE_NODE",
                    &node.id,
                    format!("{field}.id"),
                    format!("node id {:?} is used more than once", node.id),
                );
            }
            if let Placement::Unknown(value) = node.placement {
                self.invalid(
                    "INVALID_PLACEMENT",
                    &node.id,
                    format!("{field}.placement"),
                    format!(
                        "node {:?}: placement {value} is not remote (1), local (2) or auto (3)",
                        node.id
                    ),
                );
            }
            let local = (node.placement == Placement::Local)
                .then(|| caps.local_processors())
                .flatten();
            let cap = if node.processor.is_empty() {
                self.invalid(
                    "MISSING_PROCESSOR",
                    &node.id,
                    format!("{field}.processor"),
                    format!("node {:?} names no processor", node.id),
                );
                None
            } else if let Some(local) = local.filter(|l| !l.contains(&node.processor)) {
                let hosted = if local.is_empty() {
                    "no processor in-process".to_string()
                } else {
                    format!("only {} in-process", local.join(", "))
                };
                self.problems.push(Problem {
                    kind: ProblemKind::Unavailable,
                    reason: "LOCAL_PLACEMENT_UNAVAILABLE",
                    message: format!(
                        "node {:?}: placement local, but this pipeline service hosts {hosted} (its --local-processors), not {:?}; use placement auto or remote",
                        node.id, node.processor
                    ),
                    node_id: node.id.clone(),
                    field: format!("{field}.placement"),
                });
                None
            } else {
                let cap = caps.capability_for(&node.processor, node.placement);
                if cap.is_none() && caps.knows_processors() {
                    let names = caps.processor_names();
                    self.problems.push(Problem {
                        kind: ProblemKind::Unavailable,
                        reason: "PROCESSOR_UNAVAILABLE",
                        message: format!(
                            "node {:?}: no live instance offers processor {:?}{}",
                            node.id,
                            node.processor,
                            did_you_mean(&node.processor, names.iter().map(String::as_str))
                        ),
                        node_id: node.id.clone(),
                        field: format!("{field}.processor"),
                    });
                }
                cap
            };
            if let Some(cap) = &cap {
                self.check_params(i, node, cap);
            }
            capabilities.push(cap);
        }

        // Ports each node input is fed from, to find inputs fed twice or never.
        let mut fed: HashMap<(usize, String), Vec<String>> = HashMap::new();
        let mut routes: Vec<HashMap<String, Vec<Destination>>> =
            vec![HashMap::new(); m.nodes.len()];
        let mut downstream: Vec<Vec<usize>> = vec![Vec::new(); m.nodes.len()];

        for (i, edge) in m.edges.iter().enumerate() {
            let field = format!("edges[{i}]");
            let name = format!(
                "edge {}.{} -> {}.{} ({field})",
                edge.from_node,
                or_default(&edge.from_output),
                edge.to_node,
                or_default(&edge.to_input)
            );
            let from = self.node_ref(
                &index,
                &edge.from_node,
                &format!("{field}.from_node"),
                &name,
            );
            let to = self.node_ref(&index, &edge.to_node, &format!("{field}.to_node"), &name);
            let (Some(from), Some(to)) = (from, to) else {
                continue;
            };
            // Before the ports: a cycle is found even when no capability is known.
            downstream[from].push(to);
            let (Some(from_cap), Some(to_cap)) = (&capabilities[from], &capabilities[to]) else {
                continue;
            };
            let out = self.port(
                &from_cap.outputs,
                &edge.from_output,
                &edge.from_node,
                "output",
                &format!("{field}.from_output"),
            );
            let inp = self.port(
                &to_cap.inputs,
                &edge.to_input,
                &edge.to_node,
                "input",
                &format!("{field}.to_input"),
            );
            let (Some(out), Some(inp)) = (out, inp) else {
                continue;
            };
            if !types_intersect(&out.types, &inp.types) {
                self.invalid(
                    "TYPE_MISMATCH",
                    &edge.to_node,
                    field.clone(),
                    format!(
                        "{name}: output {}.{} produces {} but input {}.{} accepts {}",
                        edge.from_node,
                        out.name,
                        type_set_name(&out.types),
                        edge.to_node,
                        inp.name,
                        type_set_name(&inp.types)
                    ),
                );
            }
            fed.entry((to, inp.name.clone()))
                .or_default()
                .push(name.clone());
            routes[from]
                .entry(out.name.clone())
                .or_default()
                .push(Destination::Node {
                    node: to,
                    port: inp.name.clone(),
                });
        }

        // Pipeline inputs.
        let mut inputs: BTreeMap<String, Vec<Destination>> = BTreeMap::new();
        if m.inputs.is_empty() {
            self.invalid(
                "NO_INPUTS",
                "",
                "inputs".into(),
                "pipeline declares no inputs".into(),
            );
        }
        for (i, input) in m.inputs.iter().enumerate() {
            let field = format!("inputs[{i}]");
            if input.name.is_empty() {
                self.invalid(
                    "MISSING_NAME",
                    "",
                    format!("{field}.name"),
                    format!("{field} has no name"),
                );
            } else if inputs.contains_key(&input.name) {
                self.invalid(
                    "DUPLICATE_INPUT",
                    "",
                    format!("{field}.name"),
                    format!("pipeline input {:?} is declared more than once", input.name),
                );
            }
            if input.targets.is_empty() {
                self.invalid(
                    "INPUT_WITHOUT_TARGETS",
                    "",
                    format!("{field}.targets"),
                    format!("pipeline input {:?} feeds no node", input.name),
                );
            }
            let mut dests = Vec::new();
            for (j, target) in input.targets.iter().enumerate() {
                let tfield = format!("{field}.targets[{j}]");
                let what = format!("pipeline input {:?} ({tfield})", input.name);
                let Some(node) =
                    self.node_ref(&index, &target.node, &format!("{tfield}.node"), &what)
                else {
                    continue;
                };
                let Some(cap) = &capabilities[node] else {
                    continue;
                };
                let Some(port) = self.port(
                    &cap.inputs,
                    &target.port,
                    &target.node,
                    "input",
                    &format!("{tfield}.port"),
                ) else {
                    continue;
                };
                fed.entry((node, port.name.clone())).or_default().push(what);
                dests.push(Destination::Node {
                    node,
                    port: port.name.clone(),
                });
            }
            inputs.entry(input.name.clone()).or_insert(dests);
        }

        // Pipeline outputs.
        if m.outputs.is_empty() {
            self.invalid(
                "NO_OUTPUTS",
                "",
                "outputs".into(),
                "pipeline declares no outputs".into(),
            );
        }
        let mut output_names = std::collections::HashSet::new();
        for (i, output) in m.outputs.iter().enumerate() {
            let field = format!("outputs[{i}]");
            if output.name.is_empty() {
                self.invalid(
                    "MISSING_NAME",
                    "",
                    format!("{field}.name"),
                    format!("{field} has no name"),
                );
            } else if !output_names.insert(output.name.as_str()) {
                self.invalid(
                    "DUPLICATE_OUTPUT",
                    "",
                    format!("{field}.name"),
                    format!(
                        "pipeline output {:?} is declared more than once",
                        output.name
                    ),
                );
            }
            let what = format!("pipeline output {:?} ({field})", output.name);
            let Some(node) = self.node_ref(
                &index,
                &output.source.node,
                &format!("{field}.source.node"),
                &what,
            ) else {
                continue;
            };
            let Some(cap) = &capabilities[node] else {
                continue;
            };
            let Some(port) = self.port(
                &cap.outputs,
                &output.source.port,
                &output.source.node,
                "output",
                &format!("{field}.source.port"),
            ) else {
                continue;
            };
            routes[node]
                .entry(port.name.clone())
                .or_default()
                .push(Destination::Output(output.name.clone()));
        }

        // Every node input fed exactly once.
        for (i, node) in m.nodes.iter().enumerate() {
            let Some(cap) = &capabilities[i] else {
                continue;
            };
            for port in &cap.inputs {
                match fed.get(&(i, port.name.clone())).map(Vec::as_slice) {
                    None | Some([]) => self.invalid(
                        "INPUT_NOT_FED",
                        &node.id,
                        format!("nodes[{i}]"),
                        format!(
                            "input {}.{} is fed by no edge or pipeline input",
                            node.id, port.name
                        ),
                    ),
                    Some([_]) => {}
                    Some(sources) => self.invalid(
                        "INPUT_FED_TWICE",
                        &node.id,
                        format!("nodes[{i}]"),
                        format!(
                            "input {}.{} is fed more than once: by {}",
                            node.id,
                            port.name,
                            sources.join(" and ")
                        ),
                    ),
                }
            }
        }

        let order = self.topological_order(m, &downstream);
        build_plan(m, order, capabilities, routes, inputs)
    }

    /// Kahn's algorithm; reports the nodes left on a cycle.
    fn topological_order(&mut self, m: &Manifest, downstream: &[Vec<usize>]) -> Vec<usize> {
        let mut indegree = vec![0usize; m.nodes.len()];
        for outs in downstream {
            for &to in outs {
                indegree[to] += 1;
            }
        }
        let mut ready: VecDeque<usize> = (0..m.nodes.len()).filter(|&i| indegree[i] == 0).collect();
        let mut order = Vec::with_capacity(m.nodes.len());
        while let Some(i) = ready.pop_front() {
            order.push(i);
            for &to in &downstream[i] {
                indegree[to] -= 1;
                if indegree[to] == 0 {
                    ready.push_back(to);
                }
            }
        }
        if order.len() < m.nodes.len() {
            let on_cycle: Vec<&str> = (0..m.nodes.len())
                .filter(|&i| indegree[i] > 0)
                .map(|i| m.nodes[i].id.as_str())
                .collect();
            self.invalid(
                "CYCLE",
                on_cycle.first().copied().unwrap_or(""),
                "edges".into(),
                format!("edges form a cycle through nodes {}", on_cycle.join(", ")),
            );
        }
        order
    }

    fn node_ref(
        &mut self,
        index: &HashMap<&str, usize>,
        node: &str,
        field: &str,
        what: &str,
    ) -> Option<usize> {
        let found = index.get(node).copied();
        if found.is_none() {
            self.invalid(
                "UNKNOWN_NODE",
                node,
                field.to_string(),
                format!(
                    "{what} refers to unknown node {node:?}{}",
                    did_you_mean(node, index.keys().copied())
                ),
            );
        }
        found
    }

    /// Resolves a port name; empty means the only port of that direction.
    fn port<'a>(
        &mut self,
        ports: &'a [PortSpec],
        name: &str,
        node: &str,
        direction: &str,
        field: &str,
    ) -> Option<&'a PortSpec> {
        let found = if name.is_empty() {
            match ports {
                [only] => Some(only),
                _ => {
                    let names: Vec<&str> = ports.iter().map(|p| p.name.as_str()).collect();
                    self.invalid(
                        "AMBIGUOUS_PORT",
                        node,
                        field.to_string(),
                        format!(
                            "node {node:?} has {} {direction}s ({}): {field} must name one",
                            ports.len(),
                            names.join(", ")
                        ),
                    );
                    return None;
                }
            }
        } else {
            ports.iter().find(|p| p.name == name)
        };
        if found.is_none() {
            let names: Vec<&str> = ports.iter().map(|p| p.name.as_str()).collect();
            self.invalid(
                "UNKNOWN_PORT",
                node,
                field.to_string(),
                format!(
                    "{field}: node {node:?} has no {direction} {name:?} (it has: {}){}",
                    names.join(", "),
                    did_you_mean(name, names.iter().copied())
                ),
            );
        }
        found
    }

    fn check_params(&mut self, i: usize, node: &crate::Node, cap: &ProcessorCapability) {
        for (key, value) in &node.params {
            let field = format!("nodes[{i}].params.{key}");
            let Some(spec) = cap.params.iter().find(|p| &p.name == key) else {
                let known: Vec<&str> = cap.params.iter().map(|p| p.name.as_str()).collect();
                self.invalid(
                    "UNKNOWN_PARAM",
                    &node.id,
                    field,
                    format!(
                        "node {:?}: processor {:?} has no param {key:?} (it takes: {}){}",
                        node.id,
                        node.processor,
                        if known.is_empty() {
                            "none".to_string()
                        } else {
                            known.join(", ")
                        },
                        did_you_mean(key, known.iter().copied())
                    ),
                );
                continue;
            };
            // A null is an absent param, as the processor hosts read it.
            if value.is_null() {
                continue;
            }
            if !flowplane_proto::param_type_matches(&spec.r#type, value) {
                self.invalid(
                    "PARAM_TYPE",
                    &node.id,
                    field,
                    format!(
                        "node {:?}: param {key:?} must be a {}, got {value}",
                        node.id, spec.r#type
                    ),
                );
                continue;
            }
            let allowed: Vec<serde_json::Value> = spec
                .allowed_values
                .iter()
                .map(flowplane_proto::value_to_json)
                .collect();
            if !flowplane_proto::param_value_allowed(&spec.allowed_values, value) {
                let shown: Vec<String> = allowed.iter().map(|a| a.to_string()).collect();
                let strings: Vec<&str> = allowed.iter().filter_map(|a| a.as_str()).collect();
                let hint = value
                    .as_str()
                    .map(|v| did_you_mean(v, strings.iter().copied()))
                    .unwrap_or_default();
                self.invalid(
                    "PARAM_NOT_ALLOWED",
                    &node.id,
                    field,
                    format!(
                        "node {:?}: param {key:?} of processor {:?} must be one of {}, got {value}{hint}",
                        node.id,
                        node.processor,
                        shown.join(", ")
                    ),
                );
            }
        }
        for spec in cap.params.iter().filter(|p| p.required) {
            if node.params.get(&spec.name).is_none_or(|v| v.is_null()) {
                self.invalid(
                    "MISSING_PARAM",
                    &node.id,
                    format!("nodes[{i}].params.{}", spec.name),
                    format!(
                        "node {:?}: processor {:?} needs param {:?}",
                        node.id, node.processor, spec.name
                    ),
                );
            }
        }
    }
}

/// JSON equality where numbers compare by value (`3` in YAML is `3.0` on the wire).
fn or_default(port: &str) -> &str {
    if port.is_empty() { "<default>" } else { port }
}

fn types_intersect(out: &[i32], inp: &[i32]) -> bool {
    out.iter().any(|o| {
        flowplane_proto::data::v1::DataTypeHint::try_from(*o)
            .is_ok_and(|o| flowplane_proto::any_accepts(inp, o))
    })
}

fn build_plan(
    m: &Manifest,
    order: Vec<usize>,
    capabilities: Vec<Option<ProcessorCapability>>,
    routes: Vec<HashMap<String, Vec<Destination>>>,
    inputs: BTreeMap<String, Vec<Destination>>,
) -> Plan {
    // Renumber nodes into topological order so plan indexes follow the data flow.
    let mut new_index = vec![0usize; m.nodes.len()];
    for (pos, &old) in order.iter().enumerate() {
        new_index[old] = pos;
    }
    let remap = |d: &Destination| match d {
        Destination::Node { node, port } => Destination::Node {
            node: new_index[*node],
            port: port.clone(),
        },
        Destination::Output(name) => Destination::Output(name.clone()),
    };
    let mut routes = routes;
    let mut capabilities = capabilities;
    let nodes = order
        .iter()
        .map(|&old| PlanNode {
            id: m.nodes[old].id.clone(),
            processor: m.nodes[old].processor.clone(),
            params: m.nodes[old].params.clone(),
            placement: m.nodes[old].placement,
            capability: capabilities[old].take().unwrap_or_default(),
            routes: std::mem::take(&mut routes[old])
                .into_iter()
                .map(|(k, v)| (k, v.iter().map(remap).collect()))
                .collect(),
        })
        .collect();
    Plan {
        name: m.name.clone(),
        nodes,
        inputs: inputs
            .into_iter()
            .map(|(k, v)| (k, v.iter().map(remap).collect()))
            .collect(),
        outputs: m.outputs.iter().map(|o| o.name.clone()).collect(),
    }
}
