//! Mutual TLS on every link, with certificates made per test (test-support `pki`,
//! rcgen): each server, run with `--tls-client-ca`, meets a client without a certificate,
//! one with a certificate from another CA and one from the right CA, and each cell has
//! its expected outcome. Then a whole stack (control plane, processor host, pipeline)
//! with mTLS and role tokens on every link runs a session end to end, and the
//! certificates `make certs` writes serve mTLS as they are.

use std::{path::Path, time::Duration};

use flowplane_grpc::{
    auth::{AttachBearer, Tokens},
    config::ClientArgs,
};
use flowplane_proto::{
    common::v1::HealthStatus,
    controlplane::v1::{self as cp, control_plane_service_client::ControlPlaneServiceClient},
    processor::v1::{ProcessRequest, processor_service_client::ProcessorServiceClient},
    streaming::v1::{
        ControlCommand, streaming_pipeline_service_client::StreamingPipelineServiceClient,
    },
};
use flowplane_test_support::{
    pki::{Leaf, Pki},
    wait_for, wait_until,
};
use flowplane_tests::{
    Running, control_plane_with, data::*, pipeline_with, processor_with, session::Session,
};
use tonic::transport::{Channel, ServerTlsConfig};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

const TOKEN_FILE: &str = "\
register-token register
read-token     read
data-token     data
pipeline-token read,process
";

const UPPER: &str = r#"
nodes: [{ id: up, processor: text.transform, params: { mode: upper } }]
inputs: [{ name: text, targets: [{ node: up }] }]
outputs: [{ name: out, source: { node: up } }]
"#;

/// The services' certificates, all from the one CA, and a client's.
struct Certs {
    pki: Pki,
    control_plane: Leaf,
    processor: Leaf,
    pipeline: Leaf,
    client: Leaf,
}

impl Certs {
    fn new() -> Self {
        let pki = Pki::new();
        Self {
            control_plane: pki.leaf("control-plane"),
            processor: pki.leaf("processor"),
            pipeline: pki.leaf("pipeline"),
            client: pki.leaf("client"),
            pki,
        }
    }

    fn server(&self, leaf: &Leaf) -> ServerTlsConfig {
        self.pki.server(leaf)
    }

    fn client(&self, leaf: Option<&Leaf>, token: Option<&str>) -> ClientArgs {
        ClientArgs {
            token: token.map(str::to_string),
            ..self.pki.client(leaf)
        }
    }
}

fn tokens() -> Tokens {
    Tokens::parse(TOKEN_FILE, Path::new("mtls.tokens")).unwrap()
}

fn https(server: &Running) -> String {
    format!("https://{}", server.addr)
}

/// Control plane, processor host and pipeline: mTLS on every server and every client
/// link, role tokens on every call.
struct MtlsStack {
    certs: Certs,
    control_plane: Running,
    processor: Running,
    pipeline: Running,
}

impl MtlsStack {
    async fn start() -> Self {
        Self::start_with(tokens(), "pipeline-token").await
    }

    /// The stack with `host_tokens` on the processor host and `pipeline_token` as what the
    /// pipeline presents on its client links.
    async fn start_with(host_tokens: Tokens, pipeline_token: &str) -> Self {
        let certs = Certs::new();
        let control_plane = control_plane_with(flowplane_control_plane::Config {
            tls: Some(certs.server(&certs.control_plane)),
            tokens: Some(tokens()),
            ..Default::default()
        })
        .await;
        let processor = processor_with(flowplane_processor::Config {
            control_plane: Some(https(&control_plane)),
            client: certs.client(Some(&certs.processor), None),
            id: Some("mtls-host".into()),
            join_token: Some("register-token".into()),
            tls: Some(certs.server(&certs.processor)),
            tokens: Some(host_tokens),
            grace_period: Duration::from_secs(2),
            ..Default::default()
        })
        .await;
        let mut config = flowplane_pipeline::Config::new(https(&control_plane));
        config.client = certs.client(Some(&certs.pipeline), Some(pipeline_token));
        config.tls = Some(certs.server(&certs.pipeline));
        config.tokens = Some(tokens());
        let pipeline = pipeline_with(config).await;
        Self {
            certs,
            control_plane,
            processor,
            pipeline,
        }
    }

    /// Runs the one-node text session through the pipeline as a client with the data
    /// role, and checks every result came back.
    async fn run_upper_session(&self, m: &flowplane_proto::streaming::v1::PipelineManifest) {
        let certs = &self.certs;
        let pipeline_channel = channel(
            &https(&self.pipeline),
            &certs.client(Some(&certs.client), None),
        )
        .await
        .unwrap();
        let client = StreamingPipelineServiceClient::with_interceptor(
            pipeline_channel,
            AttachBearer::new(Some("data-token")).unwrap(),
        )
        .max_decoding_message_size(flowplane_grpc::MAX_MESSAGE_BYTES);
        let mut session = wait_for("the mtls pipeline to run a session", || {
            let mut client = client.clone();
            let m = m.clone();
            async move { Session::open(&mut client, init(m)).await.ok() }
        })
        .await;
        for (i, word) in ["mutual", "tls"].into_iter().enumerate() {
            session
                .send(send(chunk(i as u64, "text", text(word))))
                .await;
        }
        session.send(control(ControlCommand::Close)).await;
        session.finish_sending();
        let outcome = session.read_to_end().await;
        assert!(outcome.status.is_none(), "{:?}", outcome.status);
        assert!(outcome.errors.is_empty(), "{:?}", outcome.errors);
        assert_eq!(outcome.texts(), ["MUTUAL", "TLS"]);
    }

    async fn stop(self) {
        self.pipeline.stop().await;
        self.processor.stop().await;
        self.control_plane.stop().await;
    }
}

async fn channel(url: &str, args: &ClientArgs) -> Result<Channel, String> {
    flowplane_grpc::client::connect(url, args)
        .await
        .map_err(|e| e.to_string())
}

/// A health check over a fresh connection: SERVING, or why the link failed.
async fn check(url: &str, args: &ClientArgs) -> Result<ServingStatus, String> {
    let channel = channel(url, args).await?;
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?;
    Ok(response.into_inner().status())
}

#[derive(Clone, Copy, Debug)]
enum Presented {
    Nothing,
    OtherCa,
    RightCa,
}

#[tokio::test]
async fn every_server_requires_a_client_certificate_from_its_ca() {
    let stack = MtlsStack::start().await;
    let certs = &stack.certs;
    let servers = [
        ("control plane", https(&stack.control_plane)),
        ("processor", https(&stack.processor)),
        ("pipeline", https(&stack.pipeline)),
    ];
    // (what the client presents, whether the call gets through)
    let table = [
        (Presented::Nothing, false),
        (Presented::OtherCa, false),
        (Presented::RightCa, true),
    ];
    for (server, url) in &servers {
        for (presented, succeeds) in table {
            let args = match presented {
                Presented::Nothing => certs.client(None, None),
                Presented::OtherCa => certs.client(Some(&certs.pki.stranger), None),
                Presented::RightCa => certs.client(Some(&certs.client), None),
            };
            let outcome = check(url, &args).await;
            if succeeds {
                // The pipeline answers SERVING only once it is up; the link is what counts.
                assert!(
                    outcome.is_ok(),
                    "{server} x {presented:?}: expected the call to succeed, got {outcome:?}"
                );
            } else {
                let error = outcome.expect_err(&format!(
                    "{server} x {presented:?}: expected the handshake to be refused"
                ));
                // Refused by TLS, not by auth or a handler.
                assert!(
                    !error.contains("Unauthenticated") && !error.contains("PermissionDenied"),
                    "{server} x {presented:?}: {error}"
                );
            }
        }
    }
    // Plaintext to an mTLS server fails too.
    let plain = check(
        &format!("http://{}", stack.control_plane.addr),
        &ClientArgs::default(),
    )
    .await;
    assert!(plain.is_err(), "{plain:?}");
    stack.stop().await;
}

#[tokio::test]
async fn a_session_runs_end_to_end_with_mtls_and_role_tokens_on_every_link() {
    let stack = MtlsStack::start().await;
    let certs = &stack.certs;
    let bearer = |token| AttachBearer::new(Some(token)).unwrap();

    // The host registered over mTLS with its register token and is HEALTHY.
    let cp_channel = channel(
        &https(&stack.control_plane),
        &certs.client(Some(&certs.client), None),
    )
    .await
    .unwrap();
    let reader = ControlPlaneServiceClient::with_interceptor(cp_channel, bearer("read-token"));
    wait_until("the mtls host to be healthy", || {
        let mut reader = reader.clone();
        async move {
            reader
                .get_component(cp::GetComponentRequest {
                    component_id: "mtls-host".into(),
                })
                .await
                .is_ok_and(|r| {
                    r.into_inner()
                        .component
                        .is_some_and(|c| c.status == HealthStatus::Healthy as i32)
                })
        }
    })
    .await;

    // The pipeline watches the registry over mTLS, learns the host's `host:port` and
    // dials it over mTLS (it carries TLS settings), presenting read+process.
    let m = manifest(UPPER);
    stack.run_upper_session(&m).await;

    // The certificate opens the link, not the calls: without the data role, refused.
    let pipeline_channel = channel(
        &https(&stack.pipeline),
        &certs.client(Some(&certs.client), None),
    )
    .await
    .unwrap();
    let mut reader =
        StreamingPipelineServiceClient::with_interceptor(pipeline_channel, bearer("read-token"));
    let refused = Session::open(&mut reader, init(m)).await.err().unwrap();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    stack.stop().await;
}

/// `--tls-client-roles` in place of the `process` token: the host gives `process` to the
/// pipeline's certificate, the pipeline presents a token with `read` only, and a session
/// runs; another certificate from the same CA, without a token or with a read token,
/// cannot open `Process` on the host.
#[tokio::test]
async fn a_client_certificate_identity_can_stand_in_for_the_process_token() {
    let mut host_tokens = tokens();
    host_tokens
        .parse_identities("pipeline process\n", Path::new("mtls.client-roles"))
        .unwrap();
    let stack = MtlsStack::start_with(host_tokens, "read-token").await;
    stack.run_upper_session(&manifest(UPPER)).await;

    let certs = &stack.certs;
    let host = channel(
        &https(&stack.processor),
        &certs.client(Some(&certs.client), None),
    )
    .await
    .unwrap();
    let open_process = |token: Option<&'static str>| {
        let host = host.clone();
        async move {
            let mut c =
                ProcessorServiceClient::with_interceptor(host, AttachBearer::new(token).unwrap());
            c.process(tokio_stream::empty::<ProcessRequest>())
                .await
                .map(|_| ())
                .map_err(|s| s.code())
        }
    };
    assert_eq!(open_process(None).await, Err(tonic::Code::Unauthenticated));
    assert_eq!(
        open_process(Some("read-token")).await,
        Err(tonic::Code::PermissionDenied)
    );
    // The token route still works beside it.
    assert_eq!(open_process(Some("pipeline-token")).await, Ok(()));
    stack.stop().await;
}

/// `make certs` output works as is: a control plane on its certificate with its CA as
/// the client CA accepts the client certificate, and the pipeline's certificate too.
#[tokio::test]
async fn the_certificates_from_make_certs_carry_mutual_tls() {
    let dir = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/scripts/certs.sh");
    let made = std::process::Command::new("bash")
        .arg(&script)
        .env("CERTS_DIR", dir.path())
        .output()
        .expect("run deploy/scripts/certs.sh");
    assert!(made.status.success(), "{made:?}");
    let file = |name: &str| Some(dir.path().join(name));
    let serve = flowplane_grpc::config::ServeArgs {
        tls_cert: file("control-plane.pem"),
        tls_key: file("control-plane.key"),
        tls_client_ca: file("ca.pem"),
        ..Default::default()
    };
    let control_plane = control_plane_with(flowplane_control_plane::Config {
        tls: serve.server_tls().unwrap(),
        ..Default::default()
    })
    .await;
    let url = https(&control_plane);
    for (cert, key) in [
        ("client.pem", "client.key"),
        ("pipeline.pem", "pipeline.key"),
    ] {
        let args = ClientArgs {
            tls_ca: file("ca.pem"),
            tls_client_cert: file(cert),
            tls_client_key: file(key),
            ..ClientArgs::default()
        };
        let outcome = check(&url, &args).await;
        assert_eq!(outcome, Ok(ServingStatus::Serving), "{cert}");
    }
    let anonymous = ClientArgs {
        tls_ca: file("ca.pem"),
        ..ClientArgs::default()
    };
    assert!(check(&url, &anonymous).await.is_err());
    control_plane.stop().await;
}
