//! The SDK's example processor as a real binary (crates/sdk/examples/custom_processor.rs,
//! whose `main` is one `flowplane_sdk::main` call): it takes the built-in host's flags
//! and refuses bad ones before binding, registers with a real control plane under the
//! given id and labels, answers a Process stream at the endpoint it registered, serves
//! /metrics, and on SIGTERM deregisters and exits 0. The binary is built by
//! `cargo build --workspace --bins --examples`, which `make test-rust` runs first.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use flowplane_proto::{
    common::v1::{ComponentKind, HealthStatus},
    controlplane::v1::{
        Component, ListComponentsRequest, control_plane_service_client::ControlPlaneServiceClient,
    },
    data::v1::{TextData, data_buffer::Payload},
};
use flowplane_sdk::client::{ProcessStream, chunk, init};
use flowplane_test_support::{
    binary::{
        CLIENT_HELP, Case, SERVER_HELP, SharedSettings, assert_help_lists,
        assert_rejects_before_binding,
    },
    wait_for,
};
use flowplane_tests::{control_plane, process};

/// The example binary, next to this test's executable (target/debug/examples).
fn example() -> String {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|d| d.parent()).unwrap();
    let bin: PathBuf = dir.join("examples").join("custom_processor");
    assert!(
        bin.exists(),
        "{} is missing: build it first (`cargo build --workspace --bins --examples`, which `make test-rust` does)",
        bin.display()
    );
    bin.to_str().expect("utf-8 path").to_string()
}

#[test]
fn help_lists_every_standard_flag_of_the_built_in_host() {
    let own = [
        "--advertise",
        "--control-plane",
        "a comma-separated list names replicas",
        "FLOWPLANE_CONTROL_PLANE",
        "--id",
        "--join-token",
        "--processors",
        "--grace-period",
        "--max-streams",
        "--max-concurrent-calls",
        "--label",
        "--log-format",
        "FLOWPLANE_LOG_FORMAT",
        "--trace-filter",
        "--health-listen",
        "--max-connection-age",
        "text.word_count",
        "127.0.0.1:0 (a free port",
    ];
    assert_help_lists(&example(), &[SERVER_HELP, CLIENT_HELP, &own].concat());
}

#[test]
fn invalid_settings_exit_with_a_usage_error_before_binding() {
    let shared = SharedSettings::new();
    let mut cases = shared.server();
    cases.extend(shared.client());
    cases.extend([
        Case::flags(&["--processors", "text.wordcount"], "--processors"),
        Case::flags(&["--max-streams", "0"], "--max-streams"),
        Case::flags(&["--control-plane", "not a uri"], "--control-plane"),
        Case::flags(&["--log-format", "xml"], "--log-format"),
    ]);
    assert_rejects_before_binding(&example(), &cases);
}

/// Kills the child if the test fails before it exits by itself.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn listed(client: &ControlPlaneServiceClient<tonic::transport::Channel>) -> Vec<Component> {
    client
        .clone()
        .list_components(ListComponentsRequest {
            kind: ComponentKind::Processor as i32,
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner().components)
        .unwrap_or_default()
}

#[tokio::test]
async fn registers_serves_metrics_and_deregisters_on_sigterm() {
    let cp = control_plane(Duration::from_secs(5)).await;
    let metrics_port = process::free_port();
    let mut child = KillOnDrop(
        flowplane_test_support::binary::command(&example())
            .args([
                "--control-plane",
                &cp.url(),
                "--id",
                "word-count-1",
                "--label",
                "team=text",
                "--metrics-listen",
                &format!("127.0.0.1:{metrics_port}"),
                "--grace-period",
                "5s",
                "--log-format",
                "json",
            ])
            .env("FLOWPLANE_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );

    // Registered under the given id, with its labels, its processor and the free port it
    // bound (no --listen: the default is a port the OS picks on 127.0.0.1).
    let client = ControlPlaneServiceClient::connect(cp.url()).await.unwrap();
    let component = wait_for("the example to register as word-count-1", || {
        let client = client.clone();
        async move {
            listed(&client)
                .await
                .into_iter()
                .find(|c| c.id == "word-count-1" && c.status == HealthStatus::Healthy as i32)
        }
    })
    .await;
    assert_eq!(component.metadata["team"], "text");
    let names: Vec<&str> = component
        .capabilities
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(names, ["text.word_count"]);
    let port: u16 = component
        .endpoint
        .strip_prefix("127.0.0.1:")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("endpoint {:?} is not 127.0.0.1:PORT", component.endpoint));
    assert!(
        ![0, 50051, 50061, 50071].contains(&port),
        "the example took port {port}"
    );

    // The registered endpoint answers a Process stream.
    let channel = flowplane_grpc::client::connect(&component.endpoint, &Default::default())
        .await
        .unwrap();
    let (mut stream, _) = ProcessStream::open(
        channel,
        init("text.word_count", "wc", serde_json::Value::Null),
    )
    .await
    .unwrap();
    let text = Payload::Text(TextData {
        text: "through the real binary".into(),
        language: String::new(),
    });
    stream.send(chunk(1, "", text)).await.unwrap();
    let result = stream.result().await.unwrap().unwrap();
    let Some(Payload::Json(json)) = result.outputs[0]
        .chunk
        .as_ref()
        .and_then(|c| c.buffer.as_ref())
        .and_then(|b| b.payload.clone())
    else {
        panic!("not json: {result:?}")
    };
    let counts: serde_json::Value = serde_json::from_str(&json.json).unwrap();
    assert_eq!(counts, serde_json::json!({"words": 4, "total": 4}));
    drop(stream);

    // /metrics counts the chunk it processed.
    wait_for("the example's /metrics to count the chunk", || async {
        let text = process::scrape(metrics_port).await?;
        let samples = process::samples(&text);
        (process::value(&samples, "flowplane_processor_chunks_total", &[]) >= Some(1.0))
            .then_some(())
    })
    .await;

    // SIGTERM: deregistered at once (not left to expire), then a clean exit.
    let killed = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = wait_for("the example to exit after SIGTERM", || {
        let status = child.0.try_wait().unwrap();
        async move { status }
    })
    .await;
    assert!(status.success(), "exited with {status}");
    let left = listed(&client).await;
    assert!(
        left.iter().all(|c| c.id != "word-count-1"),
        "still registered after a clean exit: {left:?}"
    );
    cp.stop().await;
}

/// The manifest in crates/sdk/README.md ("Using it in a pipeline") is valid against the
/// built-ins plus a processor declared like the README's `text.stretch`.
#[test]
fn the_sdk_readme_manifest_is_valid() {
    let readme = include_str!("../../crates/sdk/README.md");
    let yaml = readme
        .split("```yaml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("a yaml block in the SDK README");
    let manifest = flowplane_manifest::Manifest::from_text(yaml).unwrap();
    let stretch = flowplane_sdk::Capability::new("text.stretch", "test")
        .input(
            "text",
            [flowplane_proto::data::v1::DataTypeHint::Text],
            "text",
        )
        .output(
            "text",
            [flowplane_proto::data::v1::DataTypeHint::Text],
            "text",
        )
        .param(flowplane_sdk::Param::number("times", "test").default(serde_json::json!(3)))
        .to_proto();
    let mut caps: std::collections::HashMap<_, _> = flowplane_processor::host(&Default::default())
        .unwrap()
        .capabilities()
        .into_iter()
        .map(|c| (c.name.clone(), c))
        .collect();
    caps.insert(stretch.name.clone(), stretch);
    if let Err(problems) = flowplane_manifest::validate(&manifest, &caps) {
        panic!("the README's manifest is invalid: {problems:?}");
    }
}
