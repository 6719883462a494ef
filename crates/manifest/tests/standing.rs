//! The standing pipeline examples under `examples/standing/` parse, check and convert to
//! the spec the control plane stores.

use flowplane_manifest::{Error, StandingManifest};
use flowplane_proto::controlplane::v1::connector_ref::Selector;

fn example(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/standing")
        .join(name)
}

#[test]
fn the_generator_calculator_example_is_a_valid_standing_pipeline() {
    let spec = StandingManifest::spec_from_file(example("generator-calculator.yaml")).unwrap();
    assert_eq!(spec.name, "generator-calculator");
    let source = spec.source.unwrap();
    assert_eq!(
        source.selector,
        Some(Selector::Capability("generator".into()))
    );
    let params = flowplane_proto::struct_to_json(&source.params.unwrap());
    assert_eq!(params["count"], 1000.0);
    assert_eq!(params["partitions"], 2.0);
    assert_eq!(params["payload"], "json");
    let dag = spec.manifest.unwrap();
    assert_eq!(dag.nodes.len(), 1);
    assert_eq!(dag.nodes[0].processor, "json.calculator");
    assert_eq!(spec.consumers.len(), 1);
    assert_eq!(spec.consumers[0].output, "result");
    let file = spec.consumers[0].consumer.clone().unwrap();
    assert_eq!(file.selector, Some(Selector::Capability("file".into())));
    assert_eq!(
        flowplane_proto::struct_to_json(&file.params.unwrap())["path"],
        "/tmp/flowplane-demo/{output}.jsonl"
    );
    assert_eq!(
        spec.dead_letter.unwrap().selector,
        Some(Selector::Capability("log".into()))
    );
}

#[test]
fn a_session_example_is_refused_as_not_a_standing_pipeline() {
    let session = example("../pipelines/calculator.yaml");
    match StandingManifest::spec_from_file(&session) {
        Err(Error::NotStanding { path, found }) => {
            assert!(path.ends_with("calculator.yaml"), "{path}");
            assert_eq!(found, "a session pipeline (it has no kind)");
        }
        other => panic!("expected NotStanding, got {other:?}"),
    }
    // And the other way round: the session parser names what the standing file is.
    let err =
        flowplane_manifest::Manifest::from_file(example("generator-calculator.yaml")).unwrap_err();
    assert!(matches!(err, Error::NotSession { .. }), "{err:?}");
    let err = err.to_string();
    assert!(
        err.contains(
            "generator-calculator.yaml is a StandingPipeline manifest, not a session pipeline"
        ) && err.contains("pipelines apply"),
        "{err}"
    );
}

#[test]
fn structural_problems_are_reported_together_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.yaml");
    let text = std::fs::read_to_string(example("generator-calculator.yaml"))
        .unwrap()
        .replace("  result:\n", "  results:\n")
        .replace(
            "capability: generator",
            "id: gen-1\n  capability: generator",
        );
    std::fs::write(&path, text).unwrap();
    let err = StandingManifest::spec_from_file(&path).unwrap_err();
    let Error::Invalid { problems, .. } = &err else {
        panic!("expected Invalid, got {err:?}")
    };
    let fields: Vec<&str> = problems.0.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(
        fields,
        ["source.capability", "consumers.result", "consumers.results"]
    );
    let message = err.to_string();
    assert!(
        message.contains(
            "broken.yaml is not a valid standing pipeline (3 problems): source.capability: "
        ),
        "{message}"
    );
}
