//! Every example pipeline under examples/pipelines runs on inputs made by
//! examples/make-samples.py and gives exactly the results in examples/expected/, through
//! the same code the `flowplane run` command uses.

use std::{path::PathBuf, process::Command};

use flowplane_cli::pipeline::{ResultFormat, RunArgs, run};
use flowplane_tests::{Platform, data::manifest};

const EXAMPLES: &[(&str, &[(&str, &str)])] = &[
    ("audio-chain", &[("audio", "tone.wav")]),
    (
        "mixed",
        &[("audio", "tone.wav"), ("control", "control.jsonl")],
    ),
    ("video-grayscale", &[("video", "frames.ppm")]),
    ("calculator", &[("requests", "calc.jsonl")]),
    ("tensor", &[("tensor", "tensor.npy")]),
    (
        "fan-out-fan-in",
        &[("audio", "tone.wav"), ("control", "control.jsonl")],
    ),
    (
        "text-and-digest",
        &[("text", "lines.txt"), ("data", "blob.bin")],
    ),
];

fn examples_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_example_pipeline_gives_exactly_the_expected_results() {
    let samples = tempfile::tempdir().unwrap();
    let made = Command::new("python3")
        .arg(examples_dir().join("make-samples.py"))
        .arg(samples.path())
        .status()
        .expect("python3 runs examples/make-samples.py");
    assert!(made.success());
    let platform = Platform::start(2).await;
    for (name, inputs) in EXAMPLES {
        let path = examples_dir()
            .join("pipelines")
            .join(format!("{name}.yaml"));
        let text = std::fs::read_to_string(&path).unwrap();
        platform.wait_until_runnable(&manifest(&text)).await;
        let args = RunArgs {
            manifest: path,
            inputs: inputs
                .iter()
                .map(|(input, file)| format!("{input}={}", samples.path().join(file).display()))
                .collect(),
            pipeline: platform.pipeline.url(),
            output: ResultFormat::Json,
            audio_chunk_ms: 20,
            ..RunArgs::default()
        };
        let mut out = Vec::new();
        run(&args, &Default::default(), &mut out, &mut std::io::sink())
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let expected = std::fs::read_to_string(
            examples_dir()
                .join("expected")
                .join(format!("{name}.jsonl")),
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            expected,
            "{name}: results differ"
        );
    }
}

/// The Python stubs `make proto-gen` generates talk to the real service: the contract
/// works from another language (field names, oneofs, error details).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_client_on_the_generated_stubs_streams_a_pipeline() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let python = root.join(".venv/bin/python");
    assert!(
        python.exists() && root.join("gen/python/flowplane").exists(),
        "the Python tools and stubs are missing: run `make tools proto-gen` (make test does)"
    );
    let platform = Platform::start(1).await;
    let text = std::fs::read_to_string(examples_dir().join("pipelines/calculator.yaml")).unwrap();
    platform.wait_until_runnable(&manifest(&text)).await;
    let address = platform.pipeline.addr.to_string();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(root.join("examples/python_client.py"))
            .arg(address)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "python client failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
