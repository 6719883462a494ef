//! Tokens by role on a secured stack (control plane with its registry and standing
//! pipelines, processor host, connector host and pipeline, each given the same token file
//! and serving mutual TLS): every RPC of every service meets no
//! credential, a wrong token, a valid token of another role, the right token, the right
//! token without a client certificate and the right token with a certificate from another
//! CA, and each cell gets its own code. Then the point of it all: an outsider can neither list the hosts nor run
//! `Process` on one directly, while the pipeline still runs a session through it.

use std::{net::SocketAddr, path::Path};

use flowplane_grpc::{
    auth::{AttachBearer, Tokens},
    config::ClientArgs,
};
use flowplane_proto::{
    connect::v1::{
        DeliverRequest, ReadRequest, consumer_service_client::ConsumerServiceClient,
        source_service_client::SourceServiceClient,
    },
    controlplane::v1::{
        self as cp, control_plane_service_client::ControlPlaneServiceClient,
        standing_pipeline_service_client::StandingPipelineServiceClient,
    },
    processor::v1::{
        GetCapabilitiesRequest, ProcessRequest, processor_service_client::ProcessorServiceClient,
    },
    streaming::v1::{
        ControlCommand, ExecutePipelineRequest, StreamPipelineRequest, ValidatePipelineRequest,
        streaming_pipeline_service_client::StreamingPipelineServiceClient,
    },
};
use flowplane_test_support::{
    local_listener,
    pki::{Leaf, Pki},
    wait_for, wait_until,
};
use flowplane_tests::{
    Running, control_plane_with, data::*, pipeline_with, processor_with, session::Session,
};
use tokio_util::sync::CancellationToken;
use tonic::{Code, Status, transport::Channel};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

const TOKEN_FILE: &str = "\
# one token per line, then its roles
register-token register
read-token     read
data-token     data
process-token  process
# the pipeline reads the registry and calls the hosts with one token
pipeline-token read,process
";

const REGISTER: &str = "register-token";
const READ: &str = "read-token";
const DATA: &str = "data-token";
const PROCESS: &str = "process-token";
const PIPELINE: &str = "pipeline-token";

const UPPER: &str = r#"
nodes: [{ id: up, processor: text.transform, params: { mode: upper } }]
inputs: [{ name: text, targets: [{ node: up }] }]
outputs: [{ name: out, source: { node: up } }]
"#;

fn tokens() -> Tokens {
    Tokens::parse(TOKEN_FILE, Path::new("auth_roles.tokens")).expect("the test token file parses")
}

/// A control plane, one processor host, one connector host and a pipeline, all secured
/// with [`TOKEN_FILE`].
struct SecuredStack {
    pki: Pki,
    client: Leaf,
    control_plane: Running,
    processor: Running,
    connectors: Connectors,
    pipeline: Running,
}

/// The built-in connectors served through `run_connectors`, unregistered: the matrix
/// calls them directly, as the pipeline would.
struct Connectors {
    addr: SocketAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<flowplane_sdk::Result<()>>,
}

impl Connectors {
    async fn start(pki: &Pki) -> Self {
        let listener = local_listener().await;
        let addr = listener.local_addr().expect("addr");
        let config = flowplane_sdk::HostConfig {
            tokens: Some(tokens()),
            tls: Some(pki.server(&pki.leaf("connectors"))),
            grace_period: std::time::Duration::from_secs(2),
            ..Default::default()
        };
        let stop = CancellationToken::new();
        let task = tokio::spawn(flowplane_sdk::run_connectors(
            flowplane_connectors::built_ins(),
            config,
            listener,
            stop.clone().cancelled_owned(),
        ));
        Self { addr, stop, task }
    }

    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(std::time::Duration::from_secs(30), self.task)
            .await
            .expect("the connector host stops within 30s")
            .expect("connector host task")
            .expect("the connector host ran");
    }
}

/// The client certificate a test caller presents.
#[derive(Clone, Copy, Debug)]
enum Presented {
    RightCa,
    Nothing,
    OtherCa,
}

impl SecuredStack {
    async fn start() -> Self {
        let pki = Pki::new();
        let (cp_leaf, host_leaf, pipeline_leaf) = (
            pki.leaf("control-plane"),
            pki.leaf("processor"),
            pki.leaf("pipeline"),
        );
        let control_plane = control_plane_with(flowplane_control_plane::Config {
            tokens: Some(tokens()),
            tls: Some(pki.server(&cp_leaf)),
            ..Default::default()
        })
        .await;
        let processor = processor_with(flowplane_processor::Config {
            control_plane: Some(https(&control_plane)),
            client: pki.client(Some(&host_leaf)),
            id: Some("secured-host".into()),
            join_token: Some(REGISTER.into()),
            tokens: Some(tokens()),
            tls: Some(pki.server(&host_leaf)),
            grace_period: std::time::Duration::from_secs(2),
            ..Default::default()
        })
        .await;
        let connectors = Connectors::start(&pki).await;
        let mut config = flowplane_pipeline::Config::new(https(&control_plane));
        config.tokens = Some(tokens());
        config.tls = Some(pki.server(&pipeline_leaf));
        config.client = ClientArgs {
            token: Some(PIPELINE.into()),
            ..pki.client(Some(&pipeline_leaf))
        };
        let pipeline = pipeline_with(config).await;

        let stack = Self {
            client: pki.leaf("client"),
            pki,
            control_plane,
            processor,
            connectors,
            pipeline,
        };
        // The host registers with its register token (its heartbeats carry the same one)
        // and is HEALTHY, so the pipeline can place nodes on it.
        let reader = stack.control_plane_client(Some(READ)).await;
        wait_until("the secured host to be healthy", || {
            let mut reader = reader.clone();
            async move {
                reader
                    .get_component(cp::GetComponentRequest {
                        component_id: "secured-host".into(),
                    })
                    .await
                    .is_ok_and(|r| {
                        r.into_inner().component.is_some_and(|c| {
                            c.status == flowplane_proto::common::v1::HealthStatus::Healthy as i32
                        })
                    })
            }
        })
        .await;
        stack
    }

    async fn stop(self) {
        self.pipeline.stop().await;
        self.connectors.stop().await;
        self.processor.stop().await;
        self.control_plane.stop().await;
    }
}

fn https(server: &Running) -> String {
    https_at(server.addr)
}

fn https_at(addr: SocketAddr) -> String {
    format!("https://{addr}")
}

fn bearer(token: Option<&str>) -> AttachBearer {
    AttachBearer::new(token).expect("test tokens are valid metadata")
}

type Intercepted = tonic::service::interceptor::InterceptedService<Channel, AttachBearer>;

impl SecuredStack {
    /// A channel to `server` presenting `presented`; a refused handshake is UNAVAILABLE.
    async fn channel(&self, addr: SocketAddr, presented: Presented) -> Result<Channel, Status> {
        let args = match presented {
            Presented::RightCa => self.pki.client(Some(&self.client)),
            Presented::Nothing => self.pki.client(None),
            Presented::OtherCa => self.pki.client(Some(&self.pki.stranger)),
        };
        flowplane_grpc::client::connect(&https_at(addr), &args)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))
    }

    async fn connected(&self, server: &Running) -> Channel {
        self.channel(server.addr, Presented::RightCa)
            .await
            .expect("server reachable over mtls")
    }

    async fn control_plane_client(
        &self,
        token: Option<&str>,
    ) -> ControlPlaneServiceClient<Intercepted> {
        let channel = self.connected(&self.control_plane).await;
        ControlPlaneServiceClient::with_interceptor(channel, bearer(token))
    }

    async fn pipeline_client(
        &self,
        token: Option<&str>,
    ) -> StreamingPipelineServiceClient<Intercepted> {
        let channel = self.connected(&self.pipeline).await;
        StreamingPipelineServiceClient::with_interceptor(channel, bearer(token))
    }

    async fn processor_client(&self, token: Option<&str>) -> ProcessorServiceClient<Intercepted> {
        let channel = self.connected(&self.processor).await;
        ProcessorServiceClient::with_interceptor(channel, bearer(token))
    }
}

/// The code a call ends with; for a streaming call, the code of its first message (so an
/// auth refusal and a handler's error on the stream both count).
async fn first<T>(call: Result<tonic::Response<tonic::Streaming<T>>, Status>) -> Status {
    match call {
        Err(status) => status,
        Ok(response) => match response.into_inner().message().await {
            Ok(_) => Status::ok(""),
            Err(status) => status,
        },
    }
}

fn unary<T>(call: Result<tonic::Response<T>, Status>) -> Status {
    call.err().unwrap_or_else(|| Status::ok(""))
}

#[derive(Clone, Copy, Debug)]
enum Server {
    ControlPlane,
    Pipeline,
    Processor,
    Connectors,
}

#[derive(Clone, Copy, Debug)]
enum Rpc {
    RegisterProcessor,
    ProcessorHeartbeat,
    RegisterSource,
    SourceHeartbeat,
    RegisterConsumer,
    ConsumerHeartbeat,
    Deregister,
    GetComponent,
    ListComponents,
    WatchComponents,
    ApplyPipeline,
    GetPipeline,
    ListPipelines,
    PausePipeline,
    ResumePipeline,
    DeletePipeline,
    ResetPipelineOffsets,
    ClaimPipeline,
    CommitPipeline,
    ReleasePipeline,
    StreamPipeline,
    ExecutePipeline,
    ValidatePipeline,
    Process,
    GetCapabilities,
    Read,
    Deliver,
    Health(Server),
}

/// Calls `rpc` once on the stack with `token`, with a request that is as empty as the
/// RPC allows: past auth, the handler's own answer to it is the last column's code.
async fn call(stack: &SecuredStack, rpc: Rpc, token: Option<&str>, presented: Presented) -> Status {
    use Rpc::*;
    // A channel whose handshake is refused answers every call with its status.
    macro_rules! client {
        ($make:path, $addr:expr) => {
            match stack.channel($addr, presented).await {
                Ok(channel) => $make(channel, bearer(token)),
                Err(status) => return status,
            }
        };
    }
    match rpc {
        RegisterProcessor | ProcessorHeartbeat | RegisterSource | SourceHeartbeat
        | RegisterConsumer | ConsumerHeartbeat | Deregister | GetComponent | ListComponents
        | WatchComponents => {
            let mut c = client!(
                ControlPlaneServiceClient::with_interceptor,
                stack.control_plane.addr
            );
            match rpc {
                RegisterProcessor => unary(
                    c.register_processor(cp::RegisterProcessorRequest::default())
                        .await,
                ),
                ProcessorHeartbeat => unary(
                    c.processor_heartbeat(cp::ProcessorHeartbeatRequest::default())
                        .await,
                ),
                RegisterSource => unary(
                    c.register_source(cp::RegisterSourceRequest::default())
                        .await,
                ),
                SourceHeartbeat => unary(
                    c.source_heartbeat(cp::SourceHeartbeatRequest::default())
                        .await,
                ),
                RegisterConsumer => unary(
                    c.register_consumer(cp::RegisterConsumerRequest::default())
                        .await,
                ),
                ConsumerHeartbeat => unary(
                    c.consumer_heartbeat(cp::ConsumerHeartbeatRequest::default())
                        .await,
                ),
                Deregister => unary(c.deregister(cp::DeregisterRequest::default()).await),
                GetComponent => unary(c.get_component(cp::GetComponentRequest::default()).await),
                ListComponents => unary(
                    c.list_components(cp::ListComponentsRequest::default())
                        .await,
                ),
                _ => {
                    first(
                        c.watch_components(cp::WatchComponentsRequest::default())
                            .await,
                    )
                    .await
                }
            }
        }
        ApplyPipeline | GetPipeline | ListPipelines | PausePipeline | ResumePipeline
        | DeletePipeline | ResetPipelineOffsets | ClaimPipeline | CommitPipeline
        | ReleasePipeline => {
            let mut c = client!(
                StandingPipelineServiceClient::with_interceptor,
                stack.control_plane.addr
            );
            match rpc {
                ApplyPipeline => unary(c.apply_pipeline(cp::ApplyPipelineRequest::default()).await),
                GetPipeline => unary(c.get_pipeline(cp::GetPipelineRequest::default()).await),
                ListPipelines => unary(c.list_pipelines(cp::ListPipelinesRequest::default()).await),
                PausePipeline => unary(c.pause_pipeline(cp::PausePipelineRequest::default()).await),
                ResumePipeline => unary(
                    c.resume_pipeline(cp::ResumePipelineRequest::default())
                        .await,
                ),
                DeletePipeline => unary(
                    c.delete_pipeline(cp::DeletePipelineRequest::default())
                        .await,
                ),
                ResetPipelineOffsets => unary(
                    c.reset_pipeline_offsets(cp::ResetPipelineOffsetsRequest::default())
                        .await,
                ),
                ClaimPipeline => unary(c.claim_pipeline(cp::ClaimPipelineRequest::default()).await),
                CommitPipeline => unary(
                    c.commit_pipeline(cp::CommitPipelineRequest::default())
                        .await,
                ),
                _ => unary(
                    c.release_pipeline(cp::ReleasePipelineRequest::default())
                        .await,
                ),
            }
        }
        StreamPipeline | ExecutePipeline | ValidatePipeline => {
            let mut c = client!(
                StreamingPipelineServiceClient::with_interceptor,
                stack.pipeline.addr
            );
            match rpc {
                StreamPipeline => {
                    let none = tokio_stream::empty::<StreamPipelineRequest>();
                    first(c.stream_pipeline(none).await).await
                }
                ExecutePipeline => {
                    unary(c.execute_pipeline(ExecutePipelineRequest::default()).await)
                }
                _ => unary(
                    c.validate_pipeline(ValidatePipelineRequest::default())
                        .await,
                ),
            }
        }
        Process | GetCapabilities => {
            let mut c = client!(
                ProcessorServiceClient::with_interceptor,
                stack.processor.addr
            );
            match rpc {
                Process => first(c.process(tokio_stream::empty::<ProcessRequest>()).await).await,
                _ => unary(c.get_capabilities(GetCapabilitiesRequest::default()).await),
            }
        }
        // One message without its `open`: past auth, the host's own refusal of it.
        Read => {
            let mut c = client!(SourceServiceClient::with_interceptor, stack.connectors.addr);
            first(c.read(tokio_stream::iter([ReadRequest::default()])).await).await
        }
        Deliver => {
            let mut c = client!(
                ConsumerServiceClient::with_interceptor,
                stack.connectors.addr
            );
            first(
                c.deliver(tokio_stream::iter([DeliverRequest::default()]))
                    .await,
            )
            .await
        }
        Health(server) => {
            let addr = match server {
                Server::ControlPlane => stack.control_plane.addr,
                Server::Pipeline => stack.pipeline.addr,
                Server::Processor => stack.processor.addr,
                Server::Connectors => stack.connectors.addr,
            };
            let mut c = client!(HealthClient::with_interceptor, addr);
            unary(c.check(HealthCheckRequest::default()).await)
        }
    }
}

/// One row: the RPC, the role it needs (`None`: open), a valid token without that role,
/// and the handler's code for the near-empty request once auth lets it through.
struct Row {
    rpc: Rpc,
    needs: Option<&'static str>,
    other_role: &'static str,
    handler: Code,
}

const fn row(rpc: Rpc, needs: &'static str, other_role: &'static str, handler: Code) -> Row {
    Row {
        rpc,
        needs: Some(needs),
        other_role,
        handler,
    }
}

const fn open(rpc: Rpc) -> Row {
    Row {
        rpc,
        needs: None,
        other_role: DATA,
        handler: Code::Ok,
    }
}

fn right_token(role: &str) -> &'static str {
    match role {
        "register" => REGISTER,
        "read" => READ,
        "data" => DATA,
        "process" => PROCESS,
        other => panic!("no test token for role {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_of_every_service_answers_each_credential_with_its_own_code() {
    use Rpc::*;
    let table = [
        row(RegisterProcessor, "register", READ, Code::InvalidArgument),
        row(
            ProcessorHeartbeat,
            "register",
            PIPELINE,
            Code::InvalidArgument,
        ),
        row(RegisterSource, "register", DATA, Code::InvalidArgument),
        row(SourceHeartbeat, "register", PROCESS, Code::InvalidArgument),
        row(RegisterConsumer, "register", READ, Code::InvalidArgument),
        row(ConsumerHeartbeat, "register", DATA, Code::InvalidArgument),
        row(Deregister, "register", PIPELINE, Code::InvalidArgument),
        row(GetComponent, "read", REGISTER, Code::InvalidArgument),
        row(ListComponents, "read", DATA, Code::Ok),
        row(WatchComponents, "read", PROCESS, Code::Ok),
        row(ApplyPipeline, "register", READ, Code::InvalidArgument),
        row(GetPipeline, "read", REGISTER, Code::InvalidArgument),
        row(ListPipelines, "read", PROCESS, Code::Ok),
        row(PausePipeline, "register", PIPELINE, Code::InvalidArgument),
        row(ResumePipeline, "register", DATA, Code::InvalidArgument),
        row(DeletePipeline, "register", READ, Code::InvalidArgument),
        row(
            ResetPipelineOffsets,
            "register",
            PROCESS,
            Code::InvalidArgument,
        ),
        row(ClaimPipeline, "register", PIPELINE, Code::InvalidArgument),
        row(CommitPipeline, "register", DATA, Code::InvalidArgument),
        row(ReleasePipeline, "register", READ, Code::InvalidArgument),
        row(StreamPipeline, "data", PIPELINE, Code::FailedPrecondition),
        row(ExecutePipeline, "data", READ, Code::InvalidArgument),
        row(ValidatePipeline, "data", REGISTER, Code::Ok),
        row(Process, "process", READ, Code::Ok),
        row(GetCapabilities, "process", DATA, Code::Ok),
        row(Read, "process", READ, Code::FailedPrecondition),
        row(Deliver, "process", REGISTER, Code::FailedPrecondition),
        open(Health(Server::ControlPlane)),
        open(Health(Server::Pipeline)),
        open(Health(Server::Processor)),
        open(Health(Server::Connectors)),
    ];
    let stack = SecuredStack::start().await;
    let mut wrong = Vec::new();
    let mut cells = 0;
    for row in &table {
        let expected = match row.needs {
            Some(role) => [
                (None, Code::Unauthenticated, Some("UNAUTHENTICATED")),
                (
                    Some("not-a-token"),
                    Code::Unauthenticated,
                    Some("UNAUTHENTICATED"),
                ),
                (
                    Some(row.other_role),
                    Code::PermissionDenied,
                    Some("ROLE_REQUIRED"),
                ),
                (Some(right_token(role)), row.handler, None),
            ],
            None => [
                (None, row.handler, None),
                (Some("not-a-token"), row.handler, None),
                (Some(row.other_role), row.handler, None),
                (Some(REGISTER), row.handler, None),
            ],
        };
        let token_cells =
            expected.map(|(token, code, reason)| (token, Presented::RightCa, code, reason));
        // The right token cannot make up for a missing or foreign client certificate: the
        // server refuses the handshake before any RPC, so the call fails in the transport
        // (UNAVAILABLE, or UNKNOWN/CANCELLED when TLS 1.3 lets the client send first) and
        // carries no detail from an auth layer or a handler.
        let right = row.needs.map(right_token).or(Some(REGISTER));
        let certificate_cells = [Presented::Nothing, Presented::OtherCa]
            .map(|presented| (right, presented, Code::Unavailable, None));
        for (token, presented, code, reason) in token_cells.into_iter().chain(certificate_cells) {
            cells += 1;
            let status = call(&stack, row.rpc, token, presented).await;
            let detail = flowplane_grpc::status::error_detail(&status);
            let mut problems = Vec::new();
            let refused_by_tls = !matches!(presented, Presented::RightCa);
            if refused_by_tls {
                if !matches!(
                    status.code(),
                    Code::Unavailable | Code::Unknown | Code::Cancelled
                ) || detail.is_some()
                {
                    problems.push(format!(
                        "expected a refused handshake, got {:?} {:?} with detail {detail:?}",
                        status.code(),
                        status.message()
                    ));
                }
            } else if status.code() != code {
                problems.push(format!("code {:?}, expected {code:?}", status.code()));
            }
            if let Some(reason) = reason
                && detail.as_ref().map(|d| d.reason.as_str()) != Some(reason)
            {
                problems.push(format!(
                    "reason {:?}, expected {reason}",
                    detail.map(|d| d.reason)
                ));
            }
            if code == Code::PermissionDenied {
                let message = format!("this call needs a token with role {}", row.needs.unwrap());
                if status.message() != message {
                    problems.push(format!(
                        "message {:?}, expected {message:?}",
                        status.message()
                    ));
                }
            }
            if let Some(token) = token
                && status.message().contains(token)
            {
                problems.push("the message shows the token".into());
            }
            if !problems.is_empty() {
                wrong.push(format!(
                    "{:?} with {token:?} and {presented:?}: {}",
                    row.rpc,
                    problems.join("; ")
                ));
            }
        }
    }
    assert_eq!(cells, table.len() * 6);
    assert!(wrong.is_empty(), "cells that differ:\n{}", wrong.join("\n"));
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outsider_cannot_run_process_while_the_secured_pipeline_runs_a_session() {
    let stack = SecuredStack::start().await;

    // Without a token nobody learns the hosts, and knowing the address is not enough.
    let mut anonymous = stack.control_plane_client(None).await;
    let refused = anonymous
        .list_components(cp::ListComponentsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    let mut outsider = stack.processor_client(None).await;
    let opening = ProcessRequest {
        request: Some(
            flowplane_proto::processor::v1::process_request::Request::Init(
                flowplane_sdk::client::init(
                    "text.transform",
                    "up",
                    serde_json::json!({"mode": "upper"}),
                ),
            ),
        ),
    };
    let status = first(
        outsider
            .process(tokio_stream::iter([opening.clone()]))
            .await,
    )
    .await;
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    // A reader may list the hosts, yet may not run them either.
    let mut reader = stack.processor_client(Some(READ)).await;
    let status = first(reader.process(tokio_stream::iter([opening.clone()])).await).await;
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_eq!(
        status.message(),
        "this call needs a token with role process"
    );
    // The process token opens the stream: the host answers the init with ready.
    let mut caller = stack.processor_client(Some(PROCESS)).await;
    let status = first(caller.process(tokio_stream::iter([opening])).await).await;
    assert_eq!(status.code(), Code::Ok, "{status:?}");

    // The pipeline, presenting read+process, discovers the host and runs a session.
    let m = manifest(UPPER);
    let client = stack.pipeline_client(Some(DATA)).await;
    let mut session = wait_for("the secured pipeline to run a session", || {
        let mut client = client.clone();
        let m = m.clone();
        async move { Session::open(&mut client, init(m)).await.ok() }
    })
    .await;
    for (i, word) in ["role", "tokens"].into_iter().enumerate() {
        session
            .send(send(chunk(i as u64, "text", text(word))))
            .await;
    }
    session.send(control(ControlCommand::Close)).await;
    session.finish_sending();
    let outcome = session.read_to_end().await;
    assert!(outcome.status.is_none(), "{:?}", outcome.status);
    assert!(outcome.errors.is_empty(), "{:?}", outcome.errors);
    assert_eq!(outcome.texts(), ["ROLE", "TOKENS"]);

    // A client of the pipeline without the data role is refused, with or without token.
    let refused = Session::open(&mut stack.pipeline_client(None).await, init(m.clone()))
        .await
        .err()
        .unwrap();
    assert_eq!(refused.code(), Code::Unauthenticated);
    let refused = Session::open(&mut stack.pipeline_client(Some(PIPELINE)).await, init(m))
        .await
        .err()
        .unwrap();
    assert_eq!(refused.code(), Code::PermissionDenied);
    stack.stop().await;
}
