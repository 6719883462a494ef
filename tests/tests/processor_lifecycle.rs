//! The processor host's lifecycle with the real control plane, both started in-process
//! through their `run` functions: registration with capabilities, expiry after an abrupt
//! stop, deregistration on a graceful one, registering again after a control-plane
//! restart, and open streams that keep flowing while the control plane is down.

use std::time::{Duration, Instant};

use flowplane_proto::{
    common::v1::{ComponentKind, HealthStatus},
    controlplane::v1::{
        Component, ComponentRemoved, GetComponentRequest, ListComponentsRequest, RemovalReason,
        WatchComponentsRequest, control_plane_service_client::ControlPlaneServiceClient,
        watch_components_response::Event,
    },
    data::v1::{BinaryData, JsonData, data_buffer::Payload},
};
use flowplane_sdk::client::{ProcessStream, chunk, init};
use flowplane_test_support::{DEFAULT_WAIT, local_listener, wait_for};
use flowplane_tests::{control_plane, control_plane_on, processor};
use tokio::{net::TcpListener, task::JoinHandle};
use tonic::{Code, Streaming, transport::Channel};

/// The control plane asks for heartbeats every third of the lease TTL.
fn heartbeat_interval(ttl: Duration) -> Duration {
    ttl / 3
}

async fn client(url: &str) -> ControlPlaneServiceClient<Channel> {
    ControlPlaneServiceClient::connect(url.to_string())
        .await
        .expect("control plane reachable")
}

async fn get(url: &str, id: &str) -> Result<Component, tonic::Status> {
    client(url)
        .await
        .get_component(GetComponentRequest {
            component_id: id.into(),
        })
        .await
        .map(|r| r.into_inner().component.expect("a component"))
}

/// Waits until the control plane lists `id` as a processor with `status`.
async fn listed(url: &str, id: &str, status: HealthStatus) -> Component {
    wait_for(&format!("{id} listed {}", status.as_str_name()), || async {
        let mut client = client(url).await;
        let listing = client
            .list_components(ListComponentsRequest {
                kind: ComponentKind::Processor as i32,
                ..Default::default()
            })
            .await
            .ok()?
            .into_inner();
        listing
            .components
            .into_iter()
            .find(|c| c.id == id && c.status == status as i32)
    })
    .await
}

async fn watch(url: &str) -> Streaming<flowplane_proto::controlplane::v1::WatchComponentsResponse> {
    client(url)
        .await
        .watch_components(WatchComponentsRequest::default())
        .await
        .expect("watch opens")
        .into_inner()
}

/// Reads watch events until `id` is removed, returning the statuses it was updated to
/// on the way and the removal.
async fn removal(
    watch: &mut Streaming<flowplane_proto::controlplane::v1::WatchComponentsResponse>,
    id: &str,
) -> (Vec<i32>, ComponentRemoved) {
    let mut updates = Vec::new();
    let deadline = tokio::time::Instant::now() + DEFAULT_WAIT;
    loop {
        let event = tokio::time::timeout_at(deadline, watch.message())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {id} to be removed"))
            .expect("watch stream")
            .expect("watch open");
        match event.event {
            Some(Event::Updated(c)) if c.id == id => updates.push(c.status),
            Some(Event::Removed(r)) if r.component.as_ref().is_some_and(|c| c.id == id) => {
                return (updates, r);
            }
            _ => {}
        }
    }
}

/// A processor host run in a task of its own, so it can be killed: aborting the task
/// drops it mid-flight, without deregistering, as SIGKILL would.
async fn killable_processor(control_plane: &str, id: &str) -> JoinHandle<()> {
    let listener = local_listener().await;
    let config = flowplane_processor::Config {
        control_plane: Some(control_plane.to_string()),
        id: Some(id.to_string()),
        ..Default::default()
    };
    tokio::spawn(async move {
        flowplane_processor::run(config, listener, std::future::pending())
            .await
            .expect("processor runs");
    })
}

async fn open(endpoint: &str, processor: &str) -> ProcessStream {
    let channel = flowplane_grpc::client::connect(endpoint, &Default::default())
        .await
        .expect("processor reachable");
    ProcessStream::open(
        channel,
        init(processor, "lifecycle", serde_json::Value::Null),
    )
    .await
    .expect("stream opens")
    .0
}

async fn echo(stream: &mut ProcessStream, sequence: u64) {
    let payload = Payload::Binary(BinaryData {
        data: bytes::Bytes::from(sequence.to_le_bytes().to_vec()),
        mime_type: String::new(),
    });
    stream
        .send(chunk(sequence, "", payload.clone()))
        .await
        .expect("send");
    let result = stream.result().await.expect("result").expect("open");
    assert_eq!(result.input_sequence, sequence);
    let out = result.outputs[0].chunk.as_ref().unwrap();
    assert_eq!(out.buffer.as_ref().unwrap().payload, Some(payload));
}

#[tokio::test]
async fn a_processor_registers_and_is_listed_with_its_capabilities() {
    let cp = control_plane(Duration::from_secs(3)).await;
    let host = processor(&cp.url(), "proc-listed").await;
    let component = listed(&cp.url(), "proc-listed", HealthStatus::Healthy).await;
    assert_eq!(component.kind, ComponentKind::Processor as i32);
    assert_eq!(component.endpoint, host.addr.to_string());
    assert_eq!(component.version, env!("CARGO_PKG_VERSION"));
    let names: Vec<&str> = component
        .capabilities
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(names, flowplane_processor::processors::names());
    let dynamic = component
        .capabilities
        .iter()
        .find(|c| c.name == "audio.dynamic_gain")
        .unwrap();
    let inputs: Vec<&str> = dynamic.inputs.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(inputs, ["audio", "control"]);
    assert!(!dynamic.stateless);
    let resample = component
        .capabilities
        .iter()
        .find(|c| c.name == "audio.resample")
        .unwrap();
    assert!(
        resample
            .params
            .iter()
            .any(|p| p.name == "target_rate" && p.required)
    );

    // Discovery by capability finds it; by an unknown one does not.
    let mut client = client(&cp.url()).await;
    let by_capability = |capability: &str| ListComponentsRequest {
        capability: capability.into(),
        ..Default::default()
    };
    let found = client
        .list_components(by_capability("binary.digest"))
        .await
        .unwrap()
        .into_inner()
        .components;
    assert_eq!(found.len(), 1);
    let none = client
        .list_components(by_capability("no.such"))
        .await
        .unwrap()
        .into_inner()
        .components;
    assert!(none.is_empty());

    // Heartbeats carry the host's metrics.
    wait_for("a heartbeat with metrics", || async {
        get(&cp.url(), "proc-listed")
            .await
            .ok()?
            .metrics?
            .values
            .get("chunks_in_total")
            .copied()
    })
    .await;
    host.stop().await;
}

#[tokio::test]
async fn an_abruptly_stopped_processor_expires_after_the_ttl() {
    let ttl = Duration::from_secs(2);
    let cp = control_plane(ttl).await;
    let mut events = watch(&cp.url()).await;
    let task = killable_processor(&cp.url(), "proc-killed").await;
    listed(&cp.url(), "proc-killed", HealthStatus::Healthy).await;

    task.abort();
    let killed_at = Instant::now();
    assert!(task.await.unwrap_err().is_cancelled());
    // Nobody deregistered it: it stays until its lease runs out.
    assert!(get(&cp.url(), "proc-killed").await.is_ok());
    let (_, removed) = removal(&mut events, "proc-killed").await;
    assert_eq!(removed.reason, RemovalReason::Expired as i32);
    // The last heartbeat was at most one interval before the kill.
    assert!(
        killed_at.elapsed() >= ttl - heartbeat_interval(ttl),
        "expired {:?} after the kill, before its lease could run out",
        killed_at.elapsed()
    );
    assert_eq!(
        get(&cp.url(), "proc-killed").await.unwrap_err().code(),
        Code::NotFound
    );
}

#[tokio::test]
async fn a_gracefully_stopped_processor_deregisters_at_once() {
    // A lease far longer than the test, so only deregistration can remove it.
    let cp = control_plane(Duration::from_secs(120)).await;
    let mut events = watch(&cp.url()).await;
    let host = processor(&cp.url(), "proc-stopped").await;
    listed(&cp.url(), "proc-stopped", HealthStatus::Healthy).await;

    host.stop().await;
    let status = get(&cp.url(), "proc-stopped").await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    let (updates, removed) = removal(&mut events, "proc-stopped").await;
    assert_eq!(removed.reason, RemovalReason::Deregistered as i32);
    // It said it was stopping before it left.
    assert_eq!(updates.last(), Some(&(HealthStatus::Stopping as i32)));
}

#[tokio::test]
async fn a_restarted_control_plane_sees_the_processor_again_within_one_heartbeat_interval() {
    let ttl = Duration::from_secs(3);
    let listener = local_listener().await;
    let addr = listener.local_addr().unwrap();
    let cp = control_plane_on(listener, ttl).await;
    let url = cp.url();
    let host = processor(&url, "proc-back").await;
    listed(&url, "proc-back", HealthStatus::Healthy).await;

    cp.stop().await;
    // Same port, empty registry.
    let listener = TcpListener::bind(addr)
        .await
        .expect("the port is free again");
    let restarted_at = Instant::now();
    let cp = control_plane_on(listener, ttl).await;
    let component = listed(&url, "proc-back", HealthStatus::Healthy).await;
    let took = restarted_at.elapsed();
    // One interval until the next heartbeat hears NOT_FOUND, plus slack for the two
    // calls on a shared machine.
    let bound = heartbeat_interval(ttl) + Duration::from_secs(1);
    assert!(
        took <= bound,
        "registered again after {took:?}, more than {bound:?}"
    );
    assert_eq!(component.endpoint, host.addr.to_string());
    assert_eq!(
        component.capabilities.len(),
        flowplane_processor::processors::names().len()
    );
    host.stop().await;
    cp.stop().await;
}

#[tokio::test]
async fn open_streams_keep_flowing_while_the_control_plane_is_down() {
    let ttl = Duration::from_millis(900);
    let cp = control_plane(ttl).await;
    let url = cp.url();
    let host = processor(&url, "proc-steady").await;
    let component = listed(&url, "proc-steady", HealthStatus::Healthy).await;
    let mut stream = open(&component.endpoint, "passthrough").await;
    echo(&mut stream, 0).await;

    cp.stop().await;
    // Keep sending for a few heartbeat intervals, so heartbeats fail meanwhile.
    let started = Instant::now();
    let mut sequence = 1;
    while started.elapsed() < 3 * heartbeat_interval(ttl) && sequence < 100_000 {
        echo(&mut stream, sequence).await;
        sequence += 1;
    }
    // A new stream opens as well: only discovery needs the control plane.
    let mut calc = open(&component.endpoint, "json.calculator").await;
    let request = Payload::Json(JsonData {
        json: r#"{"op": "add", "operands": [2, 3]}"#.into(),
        schema_hint: String::new(),
    });
    calc.send(chunk(1, "", request)).await.unwrap();
    let result = calc.result().await.unwrap().unwrap();
    let Some(Payload::Json(sum)) = result.outputs[0]
        .chunk
        .as_ref()
        .and_then(|c| c.buffer.as_ref())
        .and_then(|b| b.payload.clone())
    else {
        panic!("no json in {result:?}")
    };
    assert_eq!(sum.json, r#"{"result":5}"#);
    drop((stream, calc));
    host.stop().await;
}

#[tokio::test]
async fn instances_side_by_side_register_as_their_own_components() {
    let cp = control_plane(Duration::from_secs(3)).await;
    let mut hosts = Vec::new();
    for _ in 0..2 {
        let listener = local_listener().await;
        let addr = listener.local_addr().unwrap();
        // No id: the control plane assigns one to each.
        let config = flowplane_processor::Config {
            control_plane: Some(cp.url()),
            processors: vec!["passthrough".into()],
            ..Default::default()
        };
        let stop = tokio_util::sync::CancellationToken::new();
        let shutdown = stop.clone().cancelled_owned();
        let task = tokio::spawn(flowplane_processor::run(config, listener, shutdown));
        hosts.push((addr, stop, task));
    }
    let components = wait_for("two processor hosts", || async {
        let components = client(&cp.url())
            .await
            .list_components(ListComponentsRequest {
                kind: ComponentKind::Processor as i32,
                status: HealthStatus::Healthy as i32,
                ..Default::default()
            })
            .await
            .ok()?
            .into_inner()
            .components;
        (components.len() == 2).then_some(components)
    })
    .await;
    assert_ne!(components[0].id, components[1].id);
    let mut endpoints: Vec<String> = components.iter().map(|c| c.endpoint.clone()).collect();
    endpoints.sort();
    let mut expected: Vec<String> = hosts.iter().map(|(addr, _, _)| addr.to_string()).collect();
    expected.sort();
    assert_eq!(endpoints, expected);
    for (_, stop, task) in hosts {
        stop.cancel();
        task.await.unwrap().unwrap();
    }
}
