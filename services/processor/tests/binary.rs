//! The real `flowplane-processor` binary: invalid settings exit non-zero naming the flag
//! before any port is bound, and SIGTERM stops a serving host cleanly.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use flowplane_sdk::{
    client::{ProcessStream, chunk, init},
    proto::data::v1::{BinaryData, data_buffer::Payload},
};

use flowplane_test_support::binary::{
    CLIENT_HELP, Case, SERVER_HELP, SharedSettings, assert_help_lists,
    assert_rejects_before_binding,
};

const BINARY: &str = env!("CARGO_BIN_EXE_flowplane-processor");

fn processor() -> Command {
    let mut command = flowplane_test_support::binary::command(BINARY);
    command.env("FLOWPLANE_LOG", "info");
    command
}

#[test]
fn invalid_settings_exit_non_zero_naming_the_flag() {
    let shared = SharedSettings::new();
    let mut cases = shared.server();
    cases.extend(shared.client());
    cases.extend(shared.control_plane());
    cases.extend([
        Case::flags(&["--processors", "audio.gian"], "--processors"),
        Case::env(
            &[("FLOWPLANE_PROCESSORS", "passthrough,nope")],
            "--processors",
        ),
        Case::flags(&["--grace-period", "soon"], "--grace-period"),
        Case::flags(&["--max-streams", "0"], "--max-streams"),
        Case::flags(&["--max-concurrent-calls", "0"], "--max-concurrent-calls"),
        Case::flags(&["--label", "novalue"], "--label"),
        Case::flags(&["--join-token", "has space"], "--join-token"),
        Case::flags(&["--id", ""], "--id"),
    ]);
    assert_rejects_before_binding(BINARY, &cases);
}

#[test]
fn help_lists_the_settings_and_their_environment_variables() {
    let own = [
        "--advertise",
        "--control-plane",
        "a comma-separated list names replicas",
        "FLOWPLANE_CONTROL_PLANE",
        "--id",
        "FLOWPLANE_ID",
        "--join-token",
        "FLOWPLANE_JOIN_TOKEN",
        "--processors",
        "--grace-period",
        "--max-streams",
        "--max-concurrent-calls",
        "FLOWPLANE_MAX_CONCURRENT_CALLS",
    ];
    assert_help_lists(BINARY, &[SERVER_HELP, CLIENT_HELP, &own].concat());
}

/// Kills the child if the test fails before it exits by itself.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn serves_then_stops_cleanly_on_sigterm() {
    let mut child = KillOnDrop(
        processor()
            .args([
                "--listen",
                "127.0.0.1:0",
                "--processors",
                "passthrough",
                "--grace-period",
                "5s",
            ])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // The bound port is in the "processor host serving" log line.
    let stderr = child.0.stderr.take().unwrap();
    let (lines_tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut addr = None;
    while addr.is_none() {
        let line = lines
            .recv_timeout(Duration::from_secs(20))
            .expect("the processor logs that it is serving");
        if line.contains("processor host serving") {
            addr = line
                .split_whitespace()
                .find_map(|field| field.strip_prefix("listen="))
                .map(str::to_string);
        }
    }
    let addr = addr.unwrap();
    let channel = flowplane_grpc::client::connect(&addr, &Default::default())
        .await
        .unwrap();
    let (mut stream, _) =
        ProcessStream::open(channel, init("passthrough", "bin", serde_json::Value::Null))
            .await
            .unwrap();
    let payload = Payload::Binary(BinaryData {
        data: bytes::Bytes::from_static(b"through the real binary"),
        mime_type: String::new(),
    });
    stream.send(chunk(1, "", payload.clone())).await.unwrap();
    let result = stream.result().await.unwrap().unwrap();
    assert_eq!(
        result.outputs[0]
            .chunk
            .as_ref()
            .unwrap()
            .buffer
            .as_ref()
            .unwrap()
            .payload,
        Some(payload)
    );
    // Closing the stream lets the drain finish at once.
    drop(stream);

    let killed = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = flowplane_test_support::wait_for("the processor to exit after SIGTERM", || {
        let status = child.0.try_wait().unwrap();
        async move { status }
    })
    .await;
    assert!(status.success(), "exited with {status}");
}
