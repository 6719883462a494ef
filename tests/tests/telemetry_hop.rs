//! Telemetry across hops, through the shared server stack (`GrpcServer`) and traced
//! client channels: one trace from a client span through two servers (checked in an
//! in-process OTLP collector), and the RPC series a scrape of `/metrics` shows.

use std::{net::SocketAddr, pin::Pin};

use fake_opentelemetry_collector::FakeCollectorServer;
use flowplane_grpc::{
    MAX_MESSAGE_BYTES,
    client::{self, TracedChannel},
    config::ClientArgs,
    server::{GrpcServer, set_serving},
};
use flowplane_proto::processor::v1::{
    GetCapabilitiesRequest, GetCapabilitiesResponse, ProcessInit, ProcessReady, ProcessRequest,
    ProcessResponse, process_request, process_response,
    processor_service_client::ProcessorServiceClient,
    processor_service_server::{ProcessorService, ProcessorServiceServer},
};
use flowplane_telemetry::{TelemetryArgs, TraceExport};
use flowplane_test_support::{local_listener, wait_until};
use flowplane_tests::trace::{Received, attribute, child};
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request, Response, Status, Streaming, service::Routes};
use tracing::Instrument;

const PROCESSOR_SERVICE: &str = "flowplane.processor.v1.ProcessorService";

/// A processor host stand-in: `GetCapabilities` forwards to the next hop, if any, inside a
/// span of its own; `Process` answers ready and then ends the stream with a status.
struct Hop {
    name: &'static str,
    next: Option<ProcessorServiceClient<TracedChannel>>,
}

type ProcessStream = Pin<Box<dyn Stream<Item = Result<ProcessResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ProcessorService for Hop {
    type ProcessStream = ProcessStream;

    async fn process(
        &self,
        request: Request<Streaming<ProcessRequest>>,
    ) -> Result<Response<ProcessStream>, Status> {
        let mut requests = request.into_inner();
        let Some(process_request::Request::Init(init)) =
            requests.message().await?.and_then(|first| first.request)
        else {
            return Err(Status::invalid_argument("first message must be an init"));
        };
        let ready = ProcessResponse {
            response: Some(process_response::Response::Ready(ProcessReady {
                processor: init.processor,
                node_id: init.node_id,
                host_id: self.name.to_string(),
            })),
        };
        // The status arrives in the trailers, after a message: what a stream's span and
        // metrics must wait for.
        let replies = tokio_stream::iter([
            Ok(ready),
            Err(Status::failed_precondition("test hop ends every stream")),
        ]);
        Ok(Response::new(Box::pin(replies)))
    }

    async fn get_capabilities(
        &self,
        _request: Request<GetCapabilitiesRequest>,
    ) -> Result<Response<GetCapabilitiesResponse>, Status> {
        let span = tracing::info_span!("forward", flowplane.node_id = self.name);
        async {
            let mut path = self.name.to_string();
            if let Some(next) = &self.next {
                let reply = next
                    .clone()
                    .get_capabilities(GetCapabilitiesRequest {})
                    .await?;
                path = format!("{path}>{}", reply.into_inner().host_id);
            }
            Ok(Response::new(GetCapabilitiesResponse {
                host_id: path,
                ..Default::default()
            }))
        }
        .instrument(span)
        .await
    }
}

struct Running {
    addr: SocketAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap();
    }
}

fn processor_client(addr: SocketAddr) -> ProcessorServiceClient<TracedChannel> {
    let channel = client::lazy_traced_channel(&addr.to_string(), &ClientArgs::default()).unwrap();
    ProcessorServiceClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

async fn start_hop(name: &'static str, next: Option<SocketAddr>) -> Running {
    let hop = Hop {
        name,
        next: next.map(processor_client),
    };
    let server = GrpcServer::new().unwrap().with_routes(Routes::new(
        ProcessorServiceServer::new(hop)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES),
    ));
    set_serving(&server.health(), PROCESSOR_SERVICE).await;
    let listener = local_listener().await;
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let shutdown = stop.clone().cancelled_owned();
    let task = tokio::spawn(async move { server.serve(listener, shutdown).await.unwrap() });
    Running { addr, stop, task }
}

/// Opens a `Process` stream, reads the ready reply, and returns the status it ends with.
async fn process_once(client: &mut ProcessorServiceClient<TracedChannel>) -> Status {
    let init = ProcessRequest {
        request: Some(process_request::Request::Init(ProcessInit {
            processor: "test.echo".into(),
            node_id: "n1".into(),
            ..Default::default()
        })),
    };
    // The request side stays open until the reply stream is done, as a pipeline's does.
    let (sender, open) = tokio::sync::mpsc::channel(1);
    sender.send(init).await.unwrap();
    let requests = tokio_stream::wrappers::ReceiverStream::new(open);
    let mut replies = client.process(requests).await.unwrap().into_inner();
    let first = replies.message().await.unwrap().unwrap();
    assert!(matches!(
        first.response,
        Some(process_response::Response::Ready(_))
    ));
    let status = replies.message().await.unwrap_err();
    drop(sender);
    status
}

fn health_client(
    addr: SocketAddr,
) -> tonic_health::pb::health_client::HealthClient<tonic::transport::Channel> {
    let channel = client::lazy_channel(&addr.to_string(), &ClientArgs::default()).unwrap();
    tonic_health::pb::health_client::HealthClient::new(channel)
}

// ---------------------------------------------------------------------------------------
// Traces

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_covers_the_client_and_every_hop() {
    let collector = FakeCollectorServer::start().await.unwrap();
    let telemetry = flowplane_telemetry::init_with(
        "flowplane-telemetry-hop",
        &TelemetryArgs {
            log_filter: Some("warn".into()),
            ..TelemetryArgs::default()
        },
        TraceExport::Otlp(collector.endpoint()),
    )
    .unwrap();
    let received = Received::new(collector);

    let b = start_hop("b", None).await;
    let a = start_hop("a", Some(b.addr)).await;
    let mut client = processor_client(a.addr);

    // Unary, two hops: client -> a -> (forward) -> b -> (forward).
    let reply = client
        .get_capabilities(GetCapabilitiesRequest {})
        .instrument(tracing::info_span!("test.client"))
        .await
        .unwrap();
    assert_eq!(reply.into_inner().host_id, "a>b");

    // Health checks are not traced, even from inside a traced operation.
    let mut health = tonic_health::pb::health_client::HealthClient::new(client::traced(
        client::lazy_channel(&a.addr.to_string(), &ClientArgs::default()).unwrap(),
    ));
    health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .instrument(tracing::info_span!("test.health"))
        .await
        .unwrap();

    let method = format!("{PROCESSOR_SERVICE}/GetCapabilities");
    let trace = received
        .trace(&telemetry, "test.client", |trace| trace.len() >= 7)
        .await;
    assert_eq!(trace.len(), 7, "{trace:#?}");
    let root = trace.iter().find(|s| s.name == "test.client").unwrap();
    assert_eq!(root.parent_span_id, "", "the client span is the root");
    let client_a = child(&trace, root, "SPAN_KIND_CLIENT", &method);
    let server_a = child(&trace, client_a, "SPAN_KIND_SERVER", &method);
    let forward_a = child(&trace, server_a, "SPAN_KIND_INTERNAL", "forward");
    let client_b = child(&trace, forward_a, "SPAN_KIND_CLIENT", &method);
    let server_b = child(&trace, client_b, "SPAN_KIND_SERVER", &method);
    let forward_b = child(&trace, server_b, "SPAN_KIND_INTERNAL", "forward");
    assert!(attribute(forward_a, "flowplane.node_id").contains("\"a\""));
    assert!(attribute(forward_b, "flowplane.node_id").contains("\"b\""));
    for span in [client_a, server_a, client_b, server_b] {
        assert!(
            attribute(span, "rpc.system").contains("\"grpc\""),
            "{span:#?}"
        );
        assert!(attribute(span, "rpc.service").contains(PROCESSOR_SERVICE));
        assert!(attribute(span, "rpc.method").contains("\"GetCapabilities\""));
        assert!(attribute(span, "rpc.grpc.status_code").contains("IntValue(0)"));
    }
    // Each hop's server span lies within its client span.
    for (client_span, server_span) in [(client_a, server_a), (client_b, server_b)] {
        assert!(client_span.start_time_unix_nano <= server_span.start_time_unix_nano);
        assert!(server_span.end_time_unix_nano <= client_span.end_time_unix_nano);
    }

    // A stream: its spans last until the status in the trailers, and carry that code.
    let status = process_once(&mut client)
        .instrument(tracing::info_span!("test.stream"))
        .await;
    assert_eq!(status.code(), Code::FailedPrecondition);
    let method = format!("{PROCESSOR_SERVICE}/Process");
    let trace = received
        .trace(&telemetry, "test.stream", |trace| trace.len() >= 3)
        .await;
    assert_eq!(trace.len(), 3, "{trace:#?}");
    let root = trace.iter().find(|s| s.name == "test.stream").unwrap();
    let client_span = child(&trace, root, "SPAN_KIND_CLIENT", &method);
    let server_span = child(&trace, client_span, "SPAN_KIND_SERVER", &method);
    for span in [client_span, server_span] {
        assert!(
            attribute(span, "rpc.grpc.status_code").contains("IntValue(9)"),
            "{span:#?}"
        );
    }
    // FAILED_PRECONDITION is the caller's error, not the server's.
    assert_eq!(
        client_span.status.as_ref().map(|s| s.code.as_str()),
        Some("STATUS_CODE_ERROR")
    );
    assert_ne!(
        server_span.status.as_ref().map(|s| s.code.as_str()),
        Some("STATUS_CODE_ERROR")
    );

    let all = received.all();
    assert!(
        !all.iter()
            .any(|s| s.name.starts_with("grpc.health.v1.Health")),
        "health checks must not be traced: {all:#?}"
    );
    let health_root = all.iter().find(|s| s.name == "test.health");
    if let Some(health_root) = health_root {
        assert!(
            !all.iter().any(|s| s.parent_span_id == health_root.span_id),
            "{all:#?}"
        );
    }

    a.stop().await;
    b.stop().await;
    telemetry.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// Metrics

/// The value of the sample `name{labels..}` in Prometheus text, if present.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .find(|line| {
            labels
                .iter()
                .all(|(key, value)| line.contains(&format!("{key}=\"{value}\"")))
        })
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
}

async fn scrape(addr: SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
}

#[tokio::test]
async fn metrics_count_calls_by_method_and_code() {
    let stop = CancellationToken::new();
    let metrics = flowplane_telemetry::metrics::spawn(
        Some("127.0.0.1:0".parse().unwrap()),
        stop.clone().cancelled_owned(),
    )
    .await
    .unwrap()
    .unwrap();
    let hop = start_hop("m", None).await;

    let mut health = health_client(hop.addr);
    for _ in 0..2 {
        let missing = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: "metrics.test.NoSuchService".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(missing.code(), Code::NotFound);
    }
    let mut client = processor_client(hop.addr);
    assert_eq!(
        process_once(&mut client).await.code(),
        Code::FailedPrecondition
    );

    let check = [("service", "grpc.health.v1.Health"), ("method", "Check")];
    let not_found = [check[0], check[1], ("code", "NOT_FOUND")];
    let process = [
        ("service", PROCESSOR_SERVICE),
        ("method", "Process"),
        ("code", "FAILED_PRECONDITION"),
    ];
    wait_until("the health checks and the stream in /metrics", || async {
        let text = scrape(metrics).await;
        sample(&text, "flowplane_grpc_server_requests_total", &not_found) == Some(2.0)
            && sample(&text, "flowplane_grpc_server_requests_total", &process)
                .is_some_and(|n| n >= 1.0)
    })
    .await;

    let text = scrape(metrics).await;
    assert!(
        text.contains("# TYPE flowplane_grpc_server_request_duration_seconds histogram"),
        "{text}"
    );
    let count = sample(
        &text,
        "flowplane_grpc_server_request_duration_seconds_count",
        &check,
    )
    .unwrap();
    assert!(count >= 2.0, "{text}");
    assert!(
        sample(
            &text,
            "flowplane_grpc_server_request_duration_seconds_bucket",
            &[check[0], check[1], ("le", "+Inf")]
        )
        .is_some(),
        "{text}"
    );
    // Nothing is left in flight once every call has ended.
    wait_until("no health check in flight", || async {
        let text = scrape(metrics).await;
        sample(&text, "flowplane_grpc_server_requests_in_flight", &check) == Some(0.0)
    })
    .await;

    hop.stop().await;
    stop.cancel();
}
