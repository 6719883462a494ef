//! Clients of a replicated control plane (`--control-plane A,B`): when replica A is
//! killed, a processor host heartbeats on through B under the same lease (one shared
//! registry) or registers again on B (separate registries); the pipeline's directory
//! moves its watch to B and follows changes there while an open session keeps
//! streaming; a replica that accepts connections and never answers is passed over at the
//! heartbeat deadline. Replicas run on their own runtimes, so a kill drops every
//! connection.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use flowplane_control_plane::{
    MemoryRegistry, Registry,
    model::WatchFilter,
    registry::{Change, DEFAULT_WATCH_BUFFER},
};
use flowplane_proto::{
    common::v1::HealthStatus,
    controlplane::v1::{
        GetComponentRequest, control_plane_service_client::ControlPlaneServiceClient,
    },
    streaming::v1::{
        ControlCommand, streaming_pipeline_service_client::StreamingPipelineServiceClient,
    },
};
use flowplane_sdk::{Registration, RegistrationConfig, RegistrationState};
use flowplane_test_support::wait_until;
use flowplane_tests::{
    data::*,
    pipeline, processor_with,
    replicas::{Observed, Replica},
    session::{Outcome, Session, assert_complete_in_order},
    wait_until_runnable,
};
use tokio_util::sync::CancellationToken;
use tonic::Code;

/// Heartbeats every 500 ms; a host silent for 1 s turns UNHEALTHY, for 1.5 s is gone.
const TTL: Duration = Duration::from_millis(1500);

const PASS: &str = r#"
nodes: [{ id: copy, processor: passthrough }]
inputs: [{ name: in, targets: [{ node: copy }] }]
outputs: [{ name: out, source: { node: copy } }]
"#;

const UPPER: &str = r#"
nodes: [{ id: upper, processor: text.transform, params: { mode: upper } }]
inputs: [{ name: in, targets: [{ node: upper }] }]
outputs: [{ name: out, source: { node: upper } }]
"#;

fn shared_registry() -> Arc<dyn Registry> {
    Arc::new(MemoryRegistry::new(TTL, 1000, DEFAULT_WATCH_BUFFER))
}

/// The lifecycle of a host registering as `id` through `control_plane` (a list).
fn register(control_plane: String, id: &str) -> Registration {
    let host = flowplane_processor::host(&Default::default()).unwrap();
    let mut config = RegistrationConfig::new(control_plane);
    config.processor_id = Some(id.to_string());
    Registration::new(config, "127.0.0.1:9".into(), host).unwrap()
}

/// The component `id` as replica `url` lists it, or the status it answered.
async fn component(
    url: &str,
    id: &str,
) -> Result<flowplane_proto::controlplane::v1::Component, tonic::Status> {
    let mut client = ControlPlaneServiceClient::connect(url.to_string())
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    client
        .get_component(GetComponentRequest {
            component_id: id.to_string(),
        })
        .await
        .map(|r| r.into_inner().component.unwrap_or_default())
}

async fn healthy_on(url: &str, id: &str) -> bool {
    component(url, id)
        .await
        .is_ok_and(|c| c.status == HealthStatus::Healthy as i32)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_move_to_the_other_replica_under_the_same_lease() {
    let registry = shared_registry();
    let (through_a, through_b) = (
        Observed::new(registry.clone()),
        Observed::new(registry.clone()),
    );
    let a = Replica::over(through_a.clone());
    let b = Replica::over(through_b.clone());
    let b_url = b.url();
    // Every change from here on: the host must never turn UNHEALTHY or leave.
    let mut changes = registry
        .subscribe(&WatchFilter::default())
        .await
        .unwrap()
        .events;

    let stop = CancellationToken::new();
    let registration = register(format!("{},{}", a.url(), b.url()), "proc-ha");
    let task = tokio::spawn(registration.run(stop.clone()));
    wait_until("two heartbeats through A", || async {
        through_a.seen(|s| s.heartbeats.len() >= 2)
    })
    .await;
    assert!(
        healthy_on(&b_url, "proc-ha").await,
        "B serves the shared registry"
    );
    let registered_at = component(&b_url, "proc-ha").await.unwrap().registered_at;
    assert_eq!(
        through_b.seen(|s| s.heartbeats.len()),
        0,
        "A is in use, B idle"
    );

    a.kill();
    let killed = std::time::Instant::now();
    // Four heartbeats through B span more than the lease TTL after the kill.
    wait_until("four heartbeats through B", || async {
        through_b.seen(|s| s.heartbeats.len() >= 4)
    })
    .await;
    let first_through_b = through_b.seen(|s| s.heartbeats[0].1);
    eprintln!(
        "first heartbeat through B arrived {:?} after A was killed",
        first_through_b.duration_since(killed)
    );

    let registrations = through_a.seen(|s| s.registrations) + through_b.seen(|s| s.registrations);
    assert_eq!(registrations, 1, "moving replicas never registers again");
    let token = through_a.seen(|s| s.heartbeats[0].0.clone());
    assert!(
        through_a.seen(|s| s.heartbeats.iter().all(|(t, _)| *t == token))
            && through_b.seen(|s| s.heartbeats.iter().all(|(t, _)| *t == token)),
        "every heartbeat, through A and through B, carries the one lease token"
    );
    let now = component(&b_url, "proc-ha").await.unwrap();
    assert_eq!(now.status, HealthStatus::Healthy as i32);
    assert_eq!(now.registered_at, registered_at, "the same registration");
    while let Ok(event) = changes.try_recv() {
        match &event.change {
            Change::Removed(c, reason) => panic!("{} removed ({reason:?})", c.id),
            Change::Updated(c) => assert_ne!(
                c.status,
                flowplane_proto::common::v1::HealthStatus::Unhealthy,
                "{} turned unhealthy during the move",
                c.id
            ),
            Change::Added(_) => {}
            Change::Resync => panic!("the shared memory registry lost track of its changes"),
        }
    }

    // Shutting down deregisters through B.
    stop.cancel();
    task.await.unwrap();
    let gone = component(&b_url, "proc-ha").await.unwrap_err();
    assert_eq!(gone.code(), Code::NotFound, "{gone:?}");
}

/// A TCP listener on 127.0.0.1 that accepts connections and never answers: a replica
/// that hangs; counts the connections it took. Dropped with the test's runtime.
async fn silent_replica() -> (String, Arc<AtomicUsize>) {
    let listener = flowplane_test_support::local_listener().await;
    let url = format!("http://{}", listener.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        // Bounded: the few connections one client opens, held until the test ends.
        while held.len() < 16 {
            match listener.accept().await {
                Ok((socket, _)) => {
                    counter.fetch_add(1, Ordering::SeqCst);
                    held.push(socket);
                }
                Err(_) => break,
            }
        }
        std::future::pending::<()>().await;
    });
    (url, accepted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_replica_is_passed_over_at_the_heartbeat_deadline() {
    let registry = shared_registry();
    let (through_a, through_b) = (
        Observed::new(registry.clone()),
        Observed::new(registry.clone()),
    );
    let a = Replica::over(through_a.clone());
    let b = Replica::over(through_b.clone());
    let (silent, accepted) = silent_replica().await;
    let stop = CancellationToken::new();
    let registration = register(format!("{},{silent},{}", a.url(), b.url()), "proc-hung");
    let task = tokio::spawn(registration.run(stop.clone()));
    wait_until("a heartbeat through A", || async {
        through_a.seen(|s| !s.heartbeats.is_empty())
    })
    .await;

    a.kill();
    // Next in the list is the silent one: its heartbeat runs out at the deadline
    // (DEADLINE_EXCEEDED) and the same heartbeat goes to B.
    wait_until("two heartbeats through B", || async {
        through_b.seen(|s| s.heartbeats.len() >= 2)
    })
    .await;
    let registrations = through_a.seen(|s| s.registrations) + through_b.seen(|s| s.registrations);
    assert!(
        accepted.load(Ordering::SeqCst) >= 1,
        "the silent replica was tried"
    );
    assert_eq!(registrations, 1, "the lease outlived the detour");
    let token = through_a.seen(|s| s.heartbeats[0].0.clone());
    assert!(through_b.seen(|s| s.heartbeats.iter().all(|(t, _)| *t == token)));
    assert!(healthy_on(&b.url(), "proc-hung").await);
    stop.cancel();
    task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_separate_registries_the_host_registers_again_on_the_other_replica() {
    let a = Replica::alone(TTL);
    let b = Replica::alone(TTL);
    let (a_url, b_url) = (a.url(), b.url());
    let stop = CancellationToken::new();
    let registration = register(format!("{a_url},{b_url}"), "proc-solo");
    let mut state = registration.watch();
    let task = tokio::spawn(registration.run(stop.clone()));
    wait_until("the host healthy on A", || healthy_on(&a_url, "proc-solo")).await;
    let unknown = component(&b_url, "proc-solo").await.unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound, "B keeps its own registry");

    a.kill();
    // B does not know the lease (NOT_FOUND), so the host registers there, same id.
    wait_until("the host healthy on B", || healthy_on(&b_url, "proc-solo")).await;
    assert!(matches!(
        &*state.borrow_and_update(),
        RegistrationState::Registered { processor_id, .. } if processor_id == "proc-solo"
    ));
    stop.cancel();
    task.await.unwrap();
}

async fn pipeline_client(url: String) -> StreamingPipelineServiceClient<tonic::transport::Channel> {
    StreamingPipelineServiceClient::connect(url)
        .await
        .unwrap()
        .max_decoding_message_size(flowplane_grpc::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(flowplane_grpc::MAX_MESSAGE_BYTES)
}

async fn send_range(session: &Session, range: std::ops::Range<u64>) {
    for i in range {
        session
            .send(send(chunk(i, "in", text(&format!("c{i}")))))
            .await;
    }
}

fn host(control_plane: &str, id: &str, processor: &str) -> flowplane_processor::Config {
    flowplane_processor::Config {
        control_plane: Some(control_plane.to_string()),
        id: Some(id.to_string()),
        processors: vec![processor.to_string()],
        grace_period: Duration::from_secs(2),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_watch_moves_to_the_other_replica_and_sessions_stream_on() {
    let registry = shared_registry();
    let a = Replica::over(registry.clone());
    let b = Replica::over(registry.clone());
    let list = format!("{},{}", a.url(), b.url());
    let _copier = processor_with(host(&list, "copier", "passthrough")).await;
    let pipe = pipeline(&list).await;
    let client = pipeline_client(pipe.url()).await;
    wait_until_runnable(client.clone(), &manifest(PASS)).await;

    let mut session = Session::open(&mut client.clone(), init(manifest(PASS)))
        .await
        .unwrap();
    let mut outcome = Outcome::default();
    send_range(&session, 0..50).await;
    session.read(50, &mut outcome).await;
    assert_eq!(outcome.results.len(), 50, "{outcome:?}");

    a.kill();
    // The open session does not depend on the control plane at all.
    send_range(&session, 50..100).await;
    session.read(100, &mut outcome).await;
    assert_eq!(outcome.results.len(), 100, "{outcome:?}");

    // A host that registers after the kill reaches the pipeline's view only through B.
    let _upper = processor_with(host(&list, "upper", "text.transform")).await;
    wait_until_runnable(client.clone(), &manifest(UPPER)).await;
    let mut upper = Session::open(&mut client.clone(), init(manifest(UPPER)))
        .await
        .unwrap();
    assert_eq!(upper.ready.nodes[0].instance_id, "upper");
    upper.send(send(chunk(0, "in", text("shout")))).await;
    let mut shouted = Outcome::default();
    upper.read(1, &mut shouted).await;
    assert_eq!(shouted.texts(), ["SHOUT"], "{shouted:?}");

    // And the first session, open since before the kill, finishes complete and in order.
    send_range(&session, 100..150).await;
    session.send(control(ControlCommand::Close)).await;
    session.finish_sending();
    let rest = session.read_to_end().await;
    outcome.results.extend(rest.results);
    outcome.errors.extend(rest.errors);
    outcome.closed = rest.closed;
    outcome.status = rest.status;
    assert_complete_in_order(&outcome, 150);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_name_over_mutual_tls_after_a_closed_port_registers() {
    let pki = flowplane_test_support::pki::Pki::new();
    let server = pki.leaf("control-plane");
    let client = pki.leaf("processor");
    let cp = flowplane_tests::control_plane_with(flowplane_control_plane::Config {
        lease_ttl: TTL,
        tls: Some(pki.server(&server)),
        ..Default::default()
    })
    .await;
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    // The name is resolved at connect time; TLS verifies the name, not the address.
    let list = format!("http://{closed},https://localhost:{}", cp.addr.port());
    let host = flowplane_processor::host(&Default::default()).unwrap();
    let mut config = RegistrationConfig::new(list);
    config.processor_id = Some("proc-tls".into());
    config.client = pki.client(Some(&client));
    let registration = Registration::new(config, "127.0.0.1:9".into(), host).unwrap();
    let mut state = registration.watch();
    let stop = CancellationToken::new();
    let task = tokio::spawn(registration.run(stop.clone()));
    tokio::time::timeout(
        flowplane_test_support::DEFAULT_WAIT,
        state.wait_for(|s| matches!(s, RegistrationState::Registered { .. })),
    )
    .await
    .expect("registered through https://localhost within the wait")
    .unwrap();
    stop.cancel();
    task.await.unwrap();
}
