//! Tokens by role on a secured stack (control plane, processor host and pipeline, each
//! given the same token file): every RPC of every service meets no credential, a wrong
//! token, a valid token of another role and the right token, and each cell gets its own
//! code. Then the point of it all: an outsider can neither list the hosts nor run
//! `Process` on one directly, while the pipeline still runs a session through it.

use std::path::Path;

use flowplane_grpc::{
    auth::{AttachBearer, Tokens},
    config::ClientArgs,
};
use flowplane_proto::{
    controlplane::v1::{self as cp, control_plane_service_client::ControlPlaneServiceClient},
    processor::v1::{
        GetCapabilitiesRequest, ProcessRequest, processor_service_client::ProcessorServiceClient,
    },
    streaming::v1::{
        ControlCommand, ExecutePipelineRequest, StreamPipelineRequest, ValidatePipelineRequest,
        streaming_pipeline_service_client::StreamingPipelineServiceClient,
    },
};
use flowplane_test_support::{wait_for, wait_until};
use flowplane_tests::{
    Running, control_plane_with, data::*, pipeline_with, processor_with, session::Session,
};
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

/// A control plane, one processor host and a pipeline, all secured with [`TOKEN_FILE`].
struct SecuredStack {
    control_plane: Running,
    processor: Running,
    pipeline: Running,
}

impl SecuredStack {
    async fn start() -> Self {
        let control_plane = control_plane_with(flowplane_control_plane::Config {
            tokens: Some(tokens()),
            ..Default::default()
        })
        .await;
        let processor = processor_with(flowplane_processor::Config {
            control_plane: Some(control_plane.url()),
            id: Some("secured-host".into()),
            join_token: Some(REGISTER.into()),
            tokens: Some(tokens()),
            grace_period: std::time::Duration::from_secs(2),
            ..Default::default()
        })
        .await;
        let mut config = flowplane_pipeline::Config::new(control_plane.url());
        config.tokens = Some(tokens());
        config.client = ClientArgs {
            token: Some(PIPELINE.into()),
            ..ClientArgs::default()
        };
        let pipeline = pipeline_with(config).await;

        let stack = Self {
            control_plane,
            processor,
            pipeline,
        };
        // The host registers with its register token (its heartbeats carry the same one)
        // and is HEALTHY, so the pipeline can place nodes on it.
        let reader = control_plane_client(&stack.control_plane, Some(READ)).await;
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
        self.processor.stop().await;
        self.control_plane.stop().await;
    }
}

async fn channel(server: &Running) -> Channel {
    flowplane_grpc::client::connect(&server.url(), &ClientArgs::default())
        .await
        .expect("server reachable")
}

fn bearer(token: Option<&str>) -> AttachBearer {
    AttachBearer::new(token).expect("test tokens are valid metadata")
}

type Intercepted = tonic::service::interceptor::InterceptedService<Channel, AttachBearer>;

async fn control_plane_client(
    server: &Running,
    token: Option<&str>,
) -> ControlPlaneServiceClient<Intercepted> {
    ControlPlaneServiceClient::with_interceptor(channel(server).await, bearer(token))
}

async fn pipeline_client(
    server: &Running,
    token: Option<&str>,
) -> StreamingPipelineServiceClient<Intercepted> {
    StreamingPipelineServiceClient::with_interceptor(channel(server).await, bearer(token))
}

async fn processor_client(
    server: &Running,
    token: Option<&str>,
) -> ProcessorServiceClient<Intercepted> {
    ProcessorServiceClient::with_interceptor(channel(server).await, bearer(token))
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
    StreamPipeline,
    ExecutePipeline,
    ValidatePipeline,
    Process,
    GetCapabilities,
    Health(Server),
}

/// Calls `rpc` once on the stack with `token`, with a request that is as empty as the
/// RPC allows: past auth, the handler's own answer to it is the last column's code.
async fn call(stack: &SecuredStack, rpc: Rpc, token: Option<&str>) -> Status {
    use Rpc::*;
    match rpc {
        RegisterProcessor | ProcessorHeartbeat | RegisterSource | SourceHeartbeat
        | RegisterConsumer | ConsumerHeartbeat | Deregister | GetComponent | ListComponents
        | WatchComponents => {
            let mut c = control_plane_client(&stack.control_plane, token).await;
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
        StreamPipeline | ExecutePipeline | ValidatePipeline => {
            let mut c = pipeline_client(&stack.pipeline, token).await;
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
            let mut c = processor_client(&stack.processor, token).await;
            match rpc {
                Process => first(c.process(tokio_stream::empty::<ProcessRequest>()).await).await,
                _ => unary(c.get_capabilities(GetCapabilitiesRequest::default()).await),
            }
        }
        Health(server) => {
            let running = match server {
                Server::ControlPlane => &stack.control_plane,
                Server::Pipeline => &stack.pipeline,
                Server::Processor => &stack.processor,
            };
            let mut c = HealthClient::with_interceptor(channel(running).await, bearer(token));
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
        row(StreamPipeline, "data", PIPELINE, Code::FailedPrecondition),
        row(ExecutePipeline, "data", READ, Code::InvalidArgument),
        row(ValidatePipeline, "data", REGISTER, Code::Ok),
        row(Process, "process", READ, Code::Ok),
        row(GetCapabilities, "process", DATA, Code::Ok),
        open(Health(Server::ControlPlane)),
        open(Health(Server::Pipeline)),
        open(Health(Server::Processor)),
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
        for (token, code, reason) in expected {
            cells += 1;
            let status = call(&stack, row.rpc, token).await;
            let detail = flowplane_grpc::status::error_detail(&status);
            let mut problems = Vec::new();
            if status.code() != code {
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
                    "{:?} with {token:?}: {}",
                    row.rpc,
                    problems.join("; ")
                ));
            }
        }
    }
    assert_eq!(cells, table.len() * 4);
    assert!(wrong.is_empty(), "cells that differ:\n{}", wrong.join("\n"));
    stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outsider_cannot_run_process_while_the_secured_pipeline_runs_a_session() {
    let stack = SecuredStack::start().await;

    // Without a token nobody learns the hosts, and knowing the address is not enough.
    let mut anonymous = control_plane_client(&stack.control_plane, None).await;
    let refused = anonymous
        .list_components(cp::ListComponentsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    let mut outsider = processor_client(&stack.processor, None).await;
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
    let mut reader = processor_client(&stack.processor, Some(READ)).await;
    let status = first(reader.process(tokio_stream::iter([opening.clone()])).await).await;
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert_eq!(
        status.message(),
        "this call needs a token with role process"
    );
    // The process token opens the stream: the host answers the init with ready.
    let mut caller = processor_client(&stack.processor, Some(PROCESS)).await;
    let status = first(caller.process(tokio_stream::iter([opening])).await).await;
    assert_eq!(status.code(), Code::Ok, "{status:?}");

    // The pipeline, presenting read+process, discovers the host and runs a session.
    let m = manifest(UPPER);
    let client = pipeline_client(&stack.pipeline, Some(DATA)).await;
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
    let refused = Session::open(
        &mut pipeline_client(&stack.pipeline, None).await,
        init(m.clone()),
    )
    .await
    .err()
    .unwrap();
    assert_eq!(refused.code(), Code::Unauthenticated);
    let refused = Session::open(
        &mut pipeline_client(&stack.pipeline, Some(PIPELINE)).await,
        init(m),
    )
    .await
    .err()
    .unwrap();
    assert_eq!(refused.code(), Code::PermissionDenied);
    stack.stop().await;
}
