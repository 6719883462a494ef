//! Table-driven bad input over real gRPC: each request gets its expected code, a message
//! that names the offending field, and an ErrorDetail whose `field` says the same.

mod common;

use common::{Client, Server, capability, processor, processor_heartbeat};
use flowplane_control_plane::error_detail;
use flowplane_proto::{
    common::v1::{HealthStatus, PageRequest},
    controlplane::v1 as pb,
    data::v1::DataTypeHint,
};
use tonic::{Code, Status};

enum Call {
    RegisterProcessor(pb::RegisterProcessorRequest),
    RegisterSource(pb::RegisterSourceRequest),
    RegisterConsumer(pb::RegisterConsumerRequest),
    ProcessorHeartbeat(pb::ProcessorHeartbeatRequest),
    SourceHeartbeat(pb::SourceHeartbeatRequest),
    Deregister(pb::DeregisterRequest),
    Get(pb::GetComponentRequest),
    List(pb::ListComponentsRequest),
    Watch(pb::WatchComponentsRequest),
}

async fn call(client: &mut Client, call: Call) -> Result<(), Status> {
    match call {
        Call::RegisterProcessor(r) => client.register_processor(r).await.map(drop),
        Call::RegisterSource(r) => client.register_source(r).await.map(drop),
        Call::RegisterConsumer(r) => client.register_consumer(r).await.map(drop),
        Call::ProcessorHeartbeat(r) => client.processor_heartbeat(r).await.map(drop),
        Call::SourceHeartbeat(r) => client.source_heartbeat(r).await.map(drop),
        Call::Deregister(r) => client.deregister(r).await.map(drop),
        Call::Get(r) => client.get_component(r).await.map(drop),
        Call::List(r) => client.list_components(r).await.map(drop),
        Call::Watch(r) => client.watch_components(r).await.map(drop),
    }
}

fn with<T>(mut value: T, change: impl FnOnce(&mut T)) -> T {
    change(&mut value);
    value
}

#[tokio::test]
async fn bad_input_gets_the_right_code_and_names_the_field() {
    let server = Server::start_default().await;
    let mut client = server.client().await;
    let live = client
        .register_processor(processor("live", &["echo"]))
        .await
        .unwrap()
        .into_inner();
    let token = live.lease_token.clone();
    let p = |id: &str| processor(id, &["echo"]);
    let hb = |id: &str, token: &str| processor_heartbeat(id, token, HealthStatus::Healthy);
    let list = pb::ListComponentsRequest::default;

    use Call::*;
    let cases: Vec<(&str, Call, Code, &str)> = vec![
        (
            "oversized id",
            RegisterProcessor(p(&"x".repeat(129))),
            Code::InvalidArgument,
            "processor_id",
        ),
        (
            "id with a space",
            RegisterProcessor(p("has space")),
            Code::InvalidArgument,
            "processor_id",
        ),
        (
            "id with a leading dash",
            RegisterProcessor(p("-x")),
            Code::InvalidArgument,
            "processor_id",
        ),
        (
            "bad source id",
            RegisterSource(pb::RegisterSourceRequest {
                source_id: "a/b".into(),
                endpoint: "127.0.0.1:1".into(),
                ..Default::default()
            }),
            Code::InvalidArgument,
            "source_id",
        ),
        (
            "empty endpoint",
            RegisterProcessor(with(p("e1"), |r| r.endpoint.clear())),
            Code::InvalidArgument,
            "endpoint",
        ),
        (
            "endpoint without port",
            RegisterProcessor(with(p("e2"), |r| r.endpoint = "localhost".into())),
            Code::InvalidArgument,
            "endpoint",
        ),
        (
            "endpoint with bad port",
            RegisterProcessor(with(p("e3"), |r| r.endpoint = "host:http".into())),
            Code::InvalidArgument,
            "endpoint",
        ),
        (
            "uri without host",
            RegisterProcessor(with(p("e4"), |r| r.endpoint = "http://".into())),
            Code::InvalidArgument,
            "endpoint",
        ),
        (
            "oversized endpoint",
            RegisterProcessor(with(p("e5"), |r| {
                r.endpoint = format!("{}:1", "h".repeat(600))
            })),
            Code::InvalidArgument,
            "endpoint",
        ),
        (
            "too many metadata entries",
            RegisterProcessor(with(p("m1"), |r| {
                r.metadata = (0..65).map(|i| (format!("k{i}"), "v".into())).collect()
            })),
            Code::InvalidArgument,
            "metadata",
        ),
        (
            "oversized metadata value",
            RegisterProcessor(with(p("m2"), |r| {
                r.metadata.insert("big".into(), "v".repeat(2000));
            })),
            Code::InvalidArgument,
            "metadata[\"big\"]",
        ),
        (
            "metadata key with a space",
            RegisterProcessor(with(p("m3"), |r| {
                r.metadata.insert("a key".into(), "v".into());
            })),
            Code::InvalidArgument,
            "metadata[\"a key\"]",
        ),
        (
            "empty capability name",
            RegisterProcessor(with(p("c1"), |r| r.capabilities.push(capability("")))),
            Code::InvalidArgument,
            "capabilities[1].name",
        ),
        (
            "duplicate capability",
            RegisterProcessor(with(p("c2"), |r| r.capabilities.push(capability("echo")))),
            Code::InvalidArgument,
            "capabilities[1].name",
        ),
        (
            "too many capabilities",
            RegisterProcessor(with(p("c3"), |r| {
                r.capabilities = (0..257).map(|i| capability(&format!("p{i}"))).collect()
            })),
            Code::InvalidArgument,
            "capabilities",
        ),
        (
            "oversized capabilities",
            RegisterProcessor(with(p("c4"), |r| {
                r.capabilities[0].description = "d".repeat(70_000)
            })),
            Code::InvalidArgument,
            "capabilities",
        ),
        (
            "oversized version",
            RegisterProcessor(with(p("v1"), |r| r.version = "1".repeat(65))),
            Code::InvalidArgument,
            "version",
        ),
        (
            "oversized lease token",
            RegisterProcessor(with(p("t1"), |r| r.lease_token = "a".repeat(129))),
            Code::InvalidArgument,
            "lease_token",
        ),
        (
            "unspecified data type",
            RegisterConsumer(pb::RegisterConsumerRequest {
                consumer_id: "d1".into(),
                endpoint: "127.0.0.1:1".into(),
                data_types: vec![DataTypeHint::Unspecified as i32],
                ..Default::default()
            }),
            Code::InvalidArgument,
            "data_types[0]",
        ),
        (
            "unknown data type",
            RegisterSource(pb::RegisterSourceRequest {
                source_id: "d2".into(),
                endpoint: "127.0.0.1:1".into(),
                data_types: vec![DataTypeHint::Json as i32, 99],
                ..Default::default()
            }),
            Code::InvalidArgument,
            "data_types[1]",
        ),
        (
            "heartbeat with empty id",
            ProcessorHeartbeat(hb("", &token)),
            Code::InvalidArgument,
            "processor_id",
        ),
        (
            "heartbeat for an unknown id",
            ProcessorHeartbeat(hb("ghost", &token)),
            Code::NotFound,
            "processor_id",
        ),
        (
            "heartbeat with status unspecified",
            ProcessorHeartbeat(processor_heartbeat(
                "live",
                &token,
                HealthStatus::Unspecified,
            )),
            Code::InvalidArgument,
            "status",
        ),
        (
            "heartbeat with an unknown status",
            ProcessorHeartbeat(with(hb("live", &token), |r| r.status = 42)),
            Code::InvalidArgument,
            "status",
        ),
        (
            "heartbeat without lease token",
            ProcessorHeartbeat(hb("live", "")),
            Code::InvalidArgument,
            "lease_token",
        ),
        (
            "heartbeat with a wrong lease token",
            ProcessorHeartbeat(hb("live", &"0".repeat(32))),
            Code::PermissionDenied,
            "lease_token",
        ),
        (
            "heartbeat with too many metrics",
            ProcessorHeartbeat(with(hb("live", &token), |r| {
                r.metrics = (0..65).map(|i| (format!("m{i}"), 1.0)).collect()
            })),
            Code::InvalidArgument,
            "metrics",
        ),
        (
            "source heartbeat for a processor",
            SourceHeartbeat(pb::SourceHeartbeatRequest {
                source_id: "live".into(),
                lease_token: token.clone(),
                status: HealthStatus::Healthy as i32,
                ..Default::default()
            }),
            Code::NotFound,
            "source_id",
        ),
        (
            "deregister an unknown id",
            Deregister(pb::DeregisterRequest {
                component_id: "ghost".into(),
                lease_token: token.clone(),
            }),
            Code::NotFound,
            "component_id",
        ),
        (
            "deregister without lease token",
            Deregister(pb::DeregisterRequest {
                component_id: "live".into(),
                lease_token: String::new(),
            }),
            Code::InvalidArgument,
            "lease_token",
        ),
        (
            "get with empty id",
            Get(pb::GetComponentRequest {
                component_id: String::new(),
            }),
            Code::InvalidArgument,
            "component_id",
        ),
        (
            "get an unknown id",
            Get(pb::GetComponentRequest {
                component_id: "ghost".into(),
            }),
            Code::NotFound,
            "component_id",
        ),
        (
            "list with a forged page token",
            List(with(list(), |r| {
                r.page = Some(PageRequest {
                    page_size: 10,
                    page_token: "not-a-token".into(),
                })
            })),
            Code::InvalidArgument,
            "page.page_token",
        ),
        (
            "list with an unknown kind",
            List(with(list(), |r| r.kind = 9)),
            Code::InvalidArgument,
            "kind",
        ),
        (
            "list with an unknown status",
            List(with(list(), |r| r.status = 42)),
            Code::InvalidArgument,
            "status",
        ),
        (
            "list with an empty label key",
            List(with(list(), |r| {
                r.labels.insert(String::new(), "v".into());
            })),
            Code::InvalidArgument,
            "labels",
        ),
        (
            "watch with an unknown kind",
            Watch(pb::WatchComponentsRequest {
                kind: 7,
                ..Default::default()
            }),
            Code::InvalidArgument,
            "kind",
        ),
    ];

    let mut failures = Vec::new();
    for (name, request, code, field) in cases {
        match call(&mut client, request).await {
            Ok(()) => failures.push(format!("{name}: succeeded, expected {code:?}")),
            Err(status) => {
                let detail = error_detail(&status).map(|d| d.field).unwrap_or_default();
                if status.code() != code {
                    failures.push(format!(
                        "{name}: code {:?}, expected {code:?} ({})",
                        status.code(),
                        status.message()
                    ));
                } else if !status.message().starts_with(field)
                    && !status.message().contains(&format!("{field}:"))
                {
                    failures.push(format!(
                        "{name}: message {:?} does not name {field}",
                        status.message()
                    ));
                } else if detail != field {
                    failures.push(format!(
                        "{name}: error detail field {detail:?}, expected {field:?}"
                    ));
                } else if status.message().ends_with('.') {
                    failures.push(format!("{name}: message ends with a period"));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} bad-input cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // None of the rejected registrations left anything behind.
    let all = client
        .list_components(pb::ListComponentsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(common::ids(&all.components), ["live"]);
    server.stop().await;
}
