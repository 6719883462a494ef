//! The invalid-manifest table: each case must be rejected with the expected code, reason
//! and a message naming the node, edge or field; valid pipelines must plan correctly.

use std::collections::HashMap;

use flowplane_manifest::{Destination, Manifest, Offline, validate};
use flowplane_proto::{
    data::v1::DataTypeHint as T,
    processor::v1::{ParamSpec, PortSpec, ProcessorCapability},
};

fn port(name: &str, types: &[T]) -> PortSpec {
    PortSpec {
        name: name.into(),
        types: types.iter().map(|t| *t as i32).collect(),
        description: String::new(),
    }
}

fn cap(name: &str, inputs: Vec<PortSpec>, outputs: Vec<PortSpec>) -> ProcessorCapability {
    ProcessorCapability {
        name: name.into(),
        inputs,
        outputs,
        stateless: true,
        ..Default::default()
    }
}

fn catalog() -> HashMap<String, ProcessorCapability> {
    let mut gain = cap(
        "audio.gain",
        vec![port("audio", &[T::Audio])],
        vec![port("audio", &[T::Audio])],
    );
    gain.params = vec![ParamSpec {
        name: "gain_db".into(),
        r#type: "number".into(),
        required: true,
        ..Default::default()
    }];
    [
        gain,
        cap(
            "audio.level",
            vec![port("audio", &[T::Audio])],
            vec![port("level", &[T::Json])],
        ),
        cap(
            "audio.dynamic_gain",
            vec![port("audio", &[T::Audio]), port("control", &[T::Json])],
            vec![port("audio", &[T::Audio])],
        ),
        cap(
            "passthrough",
            vec![port("in", &[T::Any])],
            vec![port("out", &[T::Any])],
        ),
        text_transform(),
    ]
    .into_iter()
    .map(|c| (c.name.clone(), c))
    .collect()
}

/// As the built-in declares it: `mode` is required and one of three strings.
fn text_transform() -> ProcessorCapability {
    let mut c = cap(
        "text.transform",
        vec![port("text", &[T::Text])],
        vec![port("text", &[T::Text])],
    );
    c.params = vec![ParamSpec {
        name: "mode".into(),
        r#type: "string".into(),
        required: true,
        allowed_values: ["upper", "lower", "reverse"]
            .map(|v| flowplane_proto::json_to_value(&v.into()))
            .to_vec(),
        ..Default::default()
    }];
    c
}

const VALID_CHAIN: &str = r#"
name: chain
nodes:
  - { id: gain, processor: audio.gain, params: { gain_db: -6 } }
  - { id: level, processor: audio.level }
edges:
  - { from_node: gain, to_node: level }
inputs:
  - { name: audio, targets: [{ node: gain }] }
outputs:
  - { name: levels, source: { node: level } }
"#;

#[test]
fn a_valid_chain_plans_in_topological_order() {
    let m = Manifest::from_text(VALID_CHAIN).unwrap();
    let plan = validate(&m, &catalog()).unwrap();
    assert_eq!(plan.nodes[0].id, "gain");
    assert_eq!(plan.nodes[1].id, "level");
    assert_eq!(
        plan.inputs["audio"],
        vec![Destination::Node {
            node: 0,
            port: "audio".into()
        }]
    );
    assert_eq!(
        plan.nodes[0].routes["audio"],
        vec![Destination::Node {
            node: 1,
            port: "audio".into()
        }]
    );
    assert_eq!(
        plan.nodes[1].routes["level"],
        vec![Destination::Output("levels".into())]
    );
    assert_eq!(plan.default_input(), Some("audio"));
}

#[test]
fn fan_out_and_fan_in_plan() {
    let m = Manifest::from_text(
        r#"
nodes:
  - { id: split, processor: passthrough }
  - { id: level, processor: audio.level }
  - { id: mix, processor: audio.dynamic_gain }
edges:
  - { from_node: split, to_node: level }
  - { from_node: split, to_node: mix, to_input: audio }
  - { from_node: level, to_node: mix, to_input: control }
inputs:
  - { name: audio, targets: [{ node: split }] }
outputs:
  - { name: mixed, source: { node: mix } }
  - { name: levels, source: { node: level } }
"#,
    )
    .unwrap();
    let plan = validate(&m, &catalog()).unwrap();
    let ids: Vec<&str> = plan.nodes.iter().map(|n| n.id.as_str()).collect();
    assert_eq!(ids, ["split", "level", "mix"]);
    assert_eq!(plan.nodes[0].routes["out"].len(), 2);
    assert_eq!(plan.nodes[1].routes["level"].len(), 2);
}

/// (case, manifest yaml, expected code, reason, text the message must contain)
const CASES: &[(&str, &str, tonic::Code, &str, &str)] = &[
    (
        "no nodes",
        "inputs: []\noutputs: []",
        tonic::Code::InvalidArgument,
        "EMPTY_PIPELINE",
        "no nodes",
    ),
    (
        "duplicate node id",
        r#"
nodes: [{ id: a, processor: passthrough }, { id: a, processor: passthrough }]
inputs: [{ name: in, targets: [{ node: a }] }]
outputs: [{ name: out, source: { node: a } }]"#,
        tonic::Code::InvalidArgument,
        "DUPLICATE_NODE",
        "\"a\"",
    ),
    (
        "empty node id",
        r#"
nodes: [{ id: "", processor: passthrough }]
inputs: [{ name: in, targets: [{ node: "" }] }]
outputs: [{ name: out, source: { node: "" } }]"#,
        tonic::Code::InvalidArgument,
        "INVALID_NODE_ID",
        "nodes[0].id",
    ),
    (
        "unknown processor",
        r#"
nodes: [{ id: a, processor: no.such }]
inputs: [{ name: in, targets: [{ node: a }] }]
outputs: [{ name: out, source: { node: a } }]"#,
        tonic::Code::FailedPrecondition,
        "PROCESSOR_UNAVAILABLE",
        "node \"a\": no live instance offers processor \"no.such\"",
    ),
    (
        "edge to unknown node",
        r#"
nodes: [{ id: a, processor: passthrough }]
edges: [{ from_node: a, to_node: ghost }]
inputs: [{ name: in, targets: [{ node: a }] }]
outputs: [{ name: out, source: { node: a } }]"#,
        tonic::Code::InvalidArgument,
        "UNKNOWN_NODE",
        "unknown node \"ghost\"",
    ),
    (
        "unknown output port",
        r#"
nodes: [{ id: a, processor: passthrough }, { id: b, processor: passthrough }]
edges: [{ from_node: a, from_output: nope, to_node: b }]
inputs: [{ name: in, targets: [{ node: a }] }]
outputs: [{ name: out, source: { node: b } }]"#,
        tonic::Code::InvalidArgument,
        "UNKNOWN_PORT",
        "edges[0].from_output",
    ),
    (
        "cycle",
        r#"
nodes: [{ id: a, processor: passthrough }, { id: b, processor: passthrough }]
edges: [{ from_node: a, to_node: b }, { from_node: b, to_node: a }]
inputs: []
outputs: [{ name: out, source: { node: b } }]"#,
        tonic::Code::InvalidArgument,
        "CYCLE",
        "a, b",
    ),
    (
        "input fed twice",
        r#"
nodes: [{ id: a, processor: passthrough }, { id: b, processor: passthrough }]
edges: [{ from_node: a, to_node: b }]
inputs: [{ name: in, targets: [{ node: a }, { node: b }] }]
outputs: [{ name: out, source: { node: b } }]"#,
        tonic::Code::InvalidArgument,
        "INPUT_FED_TWICE",
        "b.in",
    ),
    (
        "input never fed",
        r#"
nodes: [{ id: a, processor: passthrough }, { id: mix, processor: audio.dynamic_gain }]
edges: [{ from_node: a, to_node: mix, to_input: audio }]
inputs: [{ name: in, targets: [{ node: a }] }]
outputs: [{ name: out, source: { node: mix } }]"#,
        tonic::Code::InvalidArgument,
        "INPUT_NOT_FED",
        "mix.control",
    ),
    (
        "type mismatch on an edge",
        r#"
nodes: [{ id: level, processor: audio.level }, { id: up, processor: text.transform }]
edges: [{ from_node: level, to_node: up }]
inputs: [{ name: in, targets: [{ node: level }] }]
outputs: [{ name: out, source: { node: up } }]"#,
        tonic::Code::InvalidArgument,
        "TYPE_MISMATCH",
        "produces {json} but input up.text accepts {text}",
    ),
    (
        "second type mismatch: audio into text",
        r#"
nodes: [{ id: g, processor: audio.gain, params: { gain_db: 1 } }, { id: up, processor: text.transform }]
edges: [{ from_node: g, to_node: up }]
inputs: [{ name: in, targets: [{ node: g }] }]
outputs: [{ name: out, source: { node: up } }]"#,
        tonic::Code::InvalidArgument,
        "TYPE_MISMATCH",
        "edge g.<default> -> up.<default> (edges[0])",
    ),
    (
        "ambiguous input port",
        r#"
nodes: [{ id: a, processor: passthrough }, { id: mix, processor: audio.dynamic_gain }]
edges: [{ from_node: a, to_node: mix }]
inputs: [{ name: in, targets: [{ node: a }] }]
outputs: [{ name: out, source: { node: mix } }]"#,
        tonic::Code::InvalidArgument,
        "AMBIGUOUS_PORT",
        "edges[0].to_input must name one",
    ),
    (
        "missing required param",
        r#"
nodes: [{ id: g, processor: audio.gain }]
inputs: [{ name: in, targets: [{ node: g }] }]
outputs: [{ name: out, source: { node: g } }]"#,
        tonic::Code::InvalidArgument,
        "MISSING_PARAM",
        "needs param \"gain_db\"",
    ),
    (
        "param of the wrong type",
        r#"
nodes: [{ id: g, processor: audio.gain, params: { gain_db: loud } }]
inputs: [{ name: in, targets: [{ node: g }] }]
outputs: [{ name: out, source: { node: g } }]"#,
        tonic::Code::InvalidArgument,
        "PARAM_TYPE",
        "param \"gain_db\" must be a number",
    ),
    (
        "unknown param",
        r#"
nodes: [{ id: g, processor: audio.gain, params: { gain_db: 1, volume: 2 } }]
inputs: [{ name: in, targets: [{ node: g }] }]
outputs: [{ name: out, source: { node: g } }]"#,
        tonic::Code::InvalidArgument,
        "UNKNOWN_PARAM",
        "no param \"volume\"",
    ),
    (
        "no outputs",
        r#"
nodes: [{ id: a, processor: passthrough }]
inputs: [{ name: in, targets: [{ node: a }] }]"#,
        tonic::Code::InvalidArgument,
        "NO_OUTPUTS",
        "no outputs",
    ),
    (
        "duplicate pipeline input",
        r#"
nodes: [{ id: a, processor: passthrough }]
inputs: [{ name: in, targets: [{ node: a }] }, { name: in, targets: [] }]
outputs: [{ name: out, source: { node: a } }]"#,
        tonic::Code::InvalidArgument,
        "DUPLICATE_INPUT",
        "\"in\"",
    ),
    (
        "output from unknown node",
        r#"
nodes: [{ id: a, processor: passthrough }]
inputs: [{ name: in, targets: [{ node: a }] }]
outputs: [{ name: out, source: { node: zz } }]"#,
        tonic::Code::InvalidArgument,
        "UNKNOWN_NODE",
        "pipeline output \"out\" (outputs[0]) refers to unknown node \"zz\"",
    ),
];

#[test]
fn every_invalid_manifest_is_rejected_with_its_code_and_a_named_culprit() {
    let caps = catalog();
    for (case, yaml, code, reason, needle) in CASES {
        let m = Manifest::from_text(yaml).unwrap_or_else(|e| panic!("{case}: bad yaml: {e}"));
        let problems = validate(&m, &caps).expect_err(case);
        assert_eq!(problems.code(), *code, "{case}: {problems}");
        let hit = problems
            .0
            .iter()
            .find(|p| p.reason == *reason)
            .unwrap_or_else(|| panic!("{case}: no {reason} in {problems}"));
        assert!(
            hit.message.contains(needle),
            "{case}: {:?} does not contain {needle:?}",
            hit.message
        );
        assert!(!hit.field.is_empty(), "{case}: problem names no field");
    }
}

#[test]
fn every_problem_is_reported_at_once() {
    let m = Manifest::from_text(
        r#"
nodes: [{ id: a, processor: no.such }, { id: a, processor: passthrough }]
edges: [{ from_node: a, to_node: ghost }]
inputs: []
outputs: []"#,
    )
    .unwrap();
    let problems = validate(&m, &catalog()).unwrap_err();
    let reasons: Vec<&str> = problems.0.iter().map(|p| p.reason).collect();
    for want in [
        "PROCESSOR_UNAVAILABLE",
        "DUPLICATE_NODE",
        "UNKNOWN_NODE",
        "NO_INPUTS",
        "NO_OUTPUTS",
    ] {
        assert!(reasons.contains(&want), "{want} missing from {reasons:?}");
    }
    // A manifest error outranks an unavailable processor.
    assert_eq!(problems.code(), tonic::Code::InvalidArgument);
}

fn one_text_node(params: &str) -> Manifest {
    Manifest::from_text(&format!(
        r#"
nodes: [{{ id: t, processor: text.transform, params: {params} }}]
inputs: [{{ name: in, targets: [{{ node: t }}] }}]
outputs: [{{ name: out, source: {{ node: t }} }}]"#
    ))
    .unwrap()
}

#[test]
fn a_param_outside_its_allowed_values_is_refused_naming_node_param_and_values() {
    let caps = catalog();
    let problems = validate(&one_text_node("{ mode: shout }"), &caps).unwrap_err();
    assert_eq!(problems.code(), tonic::Code::InvalidArgument);
    let [p] = problems.0.as_slice() else {
        panic!("{problems}")
    };
    assert_eq!(p.reason, "PARAM_NOT_ALLOWED");
    assert_eq!(p.node_id, "t");
    assert_eq!(p.field, "nodes[0].params.mode");
    for needle in [
        "\"t\"",
        "\"mode\"",
        "\"upper\", \"lower\", \"reverse\"",
        "\"shout\"",
    ] {
        assert!(p.message.contains(needle), "{needle} not in {}", p.message);
    }
    // A near miss gets a suggestion; every allowed value passes.
    let typo = validate(&one_text_node("{ mode: uper }"), &caps).unwrap_err();
    assert!(
        typo.0[0].message.ends_with("did you mean \"upper\"?"),
        "{typo}"
    );
    for mode in ["upper", "lower", "reverse"] {
        validate(&one_text_node(&format!("{{ mode: {mode} }}")), &caps)
            .unwrap_or_else(|e| panic!("{mode}: {e}"));
    }
    // Wrong type is one problem, not two; null is an absent param (required: refused).
    let typed = validate(&one_text_node("{ mode: 3 }"), &caps).unwrap_err();
    assert_eq!(typed.0.len(), 1, "{typed}");
    assert_eq!(typed.0[0].reason, "PARAM_TYPE");
    let null = validate(&one_text_node("{ mode: null }"), &caps).unwrap_err();
    assert_eq!(null.0[0].reason, "MISSING_PARAM", "{null}");
}

#[test]
fn allowed_numbers_compare_by_value() {
    let mut caps = catalog();
    let gain = caps.get_mut("audio.gain").unwrap();
    gain.params[0].allowed_values = [0.0, -6.0]
        .map(|v| flowplane_proto::json_to_value(&v.into()))
        .to_vec();
    let m = |db: &str| Manifest::from_text(&VALID_CHAIN.replace("-6", db)).unwrap();
    validate(&m("-6"), &caps).expect("-6 (an integer in yaml) is -6.0");
    let refused = validate(&m("-3"), &caps).unwrap_err();
    assert_eq!(refused.0[0].reason, "PARAM_NOT_ALLOWED", "{refused}");
    assert!(
        refused.0[0].message.contains("one of 0.0, -6.0"),
        "{refused}"
    );
}

#[test]
fn misspelt_processor_param_node_and_port_names_get_a_suggestion() {
    let caps = catalog();
    let cases = [
        (
            VALID_CHAIN.replace("audio.level", "audio.lvel"),
            "PROCESSOR_UNAVAILABLE",
            "did you mean \"audio.level\"?",
        ),
        (
            VALID_CHAIN.replace("gain_db:", "gian_db:"),
            "UNKNOWN_PARAM",
            "did you mean \"gain_db\"?",
        ),
        (
            VALID_CHAIN.replace("to_node: level", "to_node: levle"),
            "UNKNOWN_NODE",
            "did you mean \"level\"?",
        ),
        (
            VALID_CHAIN.replace("{ node: level }", "{ node: level, port: levl }"),
            "UNKNOWN_PORT",
            "did you mean \"level\"?",
        ),
    ];
    for (yaml, reason, needle) in cases {
        let problems = validate(&Manifest::from_text(&yaml).unwrap(), &caps).unwrap_err();
        let hit = problems
            .0
            .iter()
            .find(|p| p.reason == reason)
            .unwrap_or_else(|| panic!("no {reason} in {problems}"));
        assert!(hit.message.ends_with(needle), "{}", hit.message);
    }
    // Nothing close: no suggestion.
    let far = VALID_CHAIN.replace("audio.level", "video.scale");
    let problems = validate(&Manifest::from_text(&far).unwrap(), &caps).unwrap_err();
    assert!(!problems.to_string().contains("did you mean"), "{problems}");
}

#[test]
fn offline_validation_runs_every_structural_check_without_a_catalog() {
    validate(&Manifest::from_text(VALID_CHAIN).unwrap(), &Offline).expect("valid offline");
    // Processors nobody has heard of are no problem offline.
    let unknown = VALID_CHAIN.replace("audio.level", "my.own.processor");
    validate(&Manifest::from_text(&unknown).unwrap(), &Offline).expect("unknown processor");
    let cyclic = Manifest::from_text(
        r#"
nodes: [{ id: a, processor: x }, { id: b, processor: y }, { id: a, processor: z }]
edges: [{ from_node: a, to_node: b }, { from_node: b, to_node: a }, { from_node: b, to_node: ghost }]
inputs: [{ name: in, targets: [{ node: a }] }, { name: in, targets: [] }]
outputs: [{ name: out, source: { node: nowhere } }]"#,
    )
    .unwrap();
    let problems = validate(&cyclic, &Offline).unwrap_err();
    let reasons: Vec<&str> = problems.0.iter().map(|p| p.reason).collect();
    for want in [
        "DUPLICATE_NODE",
        "CYCLE",
        "UNKNOWN_NODE",
        "DUPLICATE_INPUT",
        "INPUT_WITHOUT_TARGETS",
    ] {
        assert!(reasons.contains(&want), "{want} missing from {reasons:?}");
    }
    assert!(problems.to_string().contains("\"nowhere\""), "{problems}");
    assert!(!reasons.contains(&"PROCESSOR_UNAVAILABLE"), "{reasons:?}");
}

/// A platform whose pipeline service hosts only `passthrough` in-process.
struct WithLocal(HashMap<String, ProcessorCapability>);

impl flowplane_manifest::Capabilities for WithLocal {
    fn capability(&self, processor: &str) -> Option<ProcessorCapability> {
        self.0.get(processor).cloned()
    }

    fn local_processors(&self) -> Option<Vec<String>> {
        Some(vec!["passthrough".into()])
    }
}

const PLACED: &str = r#"
name: placed
nodes:
  - { id: a, processor: passthrough, placement: local }
  - { id: b, processor: passthrough, placement: PLACEMENT_AUTO }
  - { id: c, processor: passthrough }
edges:
  - { from_node: a, to_node: b }
  - { from_node: b, to_node: c }
inputs: [{ name: in, targets: [{ node: a }] }]
outputs: [{ name: out, source: { node: c } }]
"#;

#[test]
fn placement_reads_as_written_and_survives_the_proto() {
    use flowplane_manifest::Placement;
    let m = Manifest::from_text(PLACED).unwrap();
    let placements: Vec<Placement> = m.nodes.iter().map(|n| n.placement).collect();
    assert_eq!(
        placements,
        [Placement::Local, Placement::Auto, Placement::Remote]
    );
    assert_eq!(Manifest::from_proto(&m.to_proto()), m);
    // The default is not written out; the others are, as the manifest spells them.
    let yaml = serde_yaml::to_string(&m).unwrap();
    assert_eq!(yaml.matches("placement").count(), 2, "{yaml}");
    assert!(
        yaml.contains("placement: local") && yaml.contains("placement: auto"),
        "{yaml}"
    );
    let plan = validate(&m, &WithLocal(catalog())).unwrap();
    assert_eq!(plan.nodes[0].placement, Placement::Local);
    let bad = Manifest::from_text(&PLACED.replace("placement: local", "placement: nearby"));
    assert!(bad.unwrap_err().contains("nearby"));
}

#[test]
fn a_local_node_the_service_cannot_host_and_an_unknown_placement_are_named() {
    let mut m = Manifest::from_text(&PLACED.replace(
        "{ id: a, processor: passthrough, placement: local }",
        "{ id: a, processor: audio.level, placement: local }",
    ))
    .unwrap();
    m.nodes[2].placement = flowplane_manifest::Placement::from_proto(7);
    let problems = validate(&m, &WithLocal(catalog())).unwrap_err();
    let found: Vec<(&str, &str, &str)> = problems
        .0
        .iter()
        .map(|p| (p.reason, p.node_id.as_str(), p.field.as_str()))
        .collect();
    assert!(
        found.contains(&("LOCAL_PLACEMENT_UNAVAILABLE", "a", "nodes[0].placement")),
        "{found:?}"
    );
    assert!(
        found.contains(&("INVALID_PLACEMENT", "c", "nodes[2].placement")),
        "{found:?}"
    );
    assert_eq!(problems.code(), tonic::Code::InvalidArgument);
    let local = problems
        .0
        .iter()
        .find(|p| p.reason == "LOCAL_PLACEMENT_UNAVAILABLE")
        .unwrap();
    assert!(
        local.message.contains("only passthrough in-process"),
        "{}",
        local.message
    );
    // Offline and a plain catalog know nothing of the service: placement is not checked.
    m.nodes[2].placement = flowplane_manifest::Placement::Remote;
    assert!(validate(&m, &Offline).is_ok());
}
