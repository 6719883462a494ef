//! Tokens never reach the logs: with every target at TRACE and span events on, a secured
//! control plane and processor host are called with valid, wrong and missing tokens, and
//! no captured line shows one. Its own test binary, so that no other test's threads
//! share (or race) the thread-local subscriber.

use std::{
    io::Write,
    path::Path,
    sync::{Arc, Mutex},
};

use flowplane_grpc::auth::{AttachBearer, Tokens};
use flowplane_proto::{
    controlplane::v1::{self as cp, control_plane_service_client::ControlPlaneServiceClient},
    processor::v1::{GetCapabilitiesRequest, processor_service_client::ProcessorServiceClient},
};
use flowplane_tests::{control_plane_with, processor_with};

const REGISTER: &str = "register-secret-token";
const READ: &str = "read-secret-token";
const PROCESS: &str = "process-secret-token";
const WRONG: &str = "wrong-secret-token";

/// Collects everything the subscriber writes, for the test to search.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

// One thread, so the subscriber set for this thread sees the services' tasks too.
#[tokio::test(flavor = "current_thread")]
async fn no_log_line_or_span_shows_a_token() {
    use tracing_subscriber::fmt::format::FmtSpan;
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter("trace")
        .with_span_events(FmtSpan::FULL)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let tokens = || {
        let text = format!("{REGISTER} register\n{READ} read\n{PROCESS} process\n");
        Some(Tokens::parse(&text, Path::new("auth_logs.tokens")).unwrap())
    };
    let control_plane = control_plane_with(flowplane_control_plane::Config {
        tokens: tokens(),
        ..Default::default()
    })
    .await;
    let processor = processor_with(flowplane_processor::Config {
        control_plane: Some(control_plane.url()),
        id: Some("logged-host".into()),
        join_token: Some(REGISTER.into()),
        tokens: tokens(),
        grace_period: std::time::Duration::from_secs(1),
        ..Default::default()
    })
    .await;
    let channel = |url: String| async move {
        flowplane_grpc::client::connect(&url, &Default::default())
            .await
            .unwrap()
    };
    let mut answered = Vec::new();
    for token in [Some(READ), Some(WRONG), Some(PROCESS), None] {
        let auth = AttachBearer::new(token).unwrap();
        let mut c = ControlPlaneServiceClient::with_interceptor(
            channel(control_plane.url()).await,
            auth.clone(),
        );
        let listed = c
            .list_components(cp::ListComponentsRequest::default())
            .await;
        let mut p = ProcessorServiceClient::with_interceptor(channel(processor.url()).await, auth);
        let capabilities = p.get_capabilities(GetCapabilitiesRequest::default()).await;
        answered.push((token, listed.is_ok(), capabilities.is_ok()));
    }
    assert_eq!(
        answered,
        [
            (Some(READ), true, false),
            (Some(WRONG), false, false),
            (Some(PROCESS), false, true),
            (None, false, false),
        ]
    );
    processor.stop().await;
    control_plane.stop().await;

    let text = String::from_utf8_lossy(&captured.0.lock().unwrap()).into_owned();
    assert!(
        text.contains("call refused"),
        "the refusals are logged at debug, so the capture works"
    );
    for token in [REGISTER, READ, PROCESS, WRONG] {
        let shown: Vec<&str> = text.lines().filter(|l| l.contains(token)).take(3).collect();
        assert!(shown.is_empty(), "{token} shows in the logs: {shown:#?}");
    }
}
