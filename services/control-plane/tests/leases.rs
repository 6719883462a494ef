//! Lease, liveness and watch semantics on tokio's paused clock, through the real
//! handlers (in-process, no transport: a paused clock and real sockets do not mix).

use std::time::Duration;

use flowplane_control_plane::{Config, ControlPlane};
use flowplane_proto::{
    common::v1::{ComponentKind, HealthStatus},
    controlplane::v1::{
        self as pb, RemovalReason, control_plane_service_server::ControlPlaneService,
        watch_components_response::Event,
    },
    processor::v1::ProcessorCapability,
};
use futures::StreamExt;
use tokio::time::Instant;
use tonic::{Code, Request};

fn processor(id: &str, capability: &str) -> pb::RegisterProcessorRequest {
    pb::RegisterProcessorRequest {
        processor_id: id.into(),
        endpoint: "127.0.0.1:7000".into(),
        capabilities: vec![ProcessorCapability {
            name: capability.into(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn heartbeat(id: &str, token: &str, status: HealthStatus) -> pb::ProcessorHeartbeatRequest {
    pb::ProcessorHeartbeatRequest {
        processor_id: id.into(),
        lease_token: token.into(),
        status: status as i32,
        ..Default::default()
    }
}

fn get(id: &str) -> Request<pb::GetComponentRequest> {
    Request::new(pb::GetComponentRequest {
        component_id: id.into(),
    })
}

struct Harness {
    cp: ControlPlane,
    sweeper: tokio::task::JoinHandle<()>,
}

impl Harness {
    fn new(config: Config) -> Self {
        let cp = ControlPlane::new(&config);
        let sweeper = cp.spawn_sweeper();
        Self { cp, sweeper }
    }

    async fn register(&self, id: &str, capability: &str) -> pb::RegisterProcessorResponse {
        self.cp
            .register_processor(Request::new(processor(id, capability)))
            .await
            .expect("register")
            .into_inner()
    }

    async fn beat(&self, id: &str, token: &str, status: HealthStatus) -> Result<(), tonic::Status> {
        self.cp
            .processor_heartbeat(Request::new(heartbeat(id, token, status)))
            .await
            .map(|_| ())
    }

    async fn status(&self, id: &str) -> Result<(HealthStatus, HealthStatus), tonic::Status> {
        let c = self
            .cp
            .get_component(get(id))
            .await?
            .into_inner()
            .component
            .unwrap();
        Ok((c.status(), c.reported_status()))
    }

    async fn discover(&self, capability: &str, status: HealthStatus) -> Vec<String> {
        let response = self
            .cp
            .list_components(Request::new(pb::ListComponentsRequest {
                capability: capability.into(),
                status: status as i32,
                ..Default::default()
            }))
            .await
            .expect("list")
            .into_inner();
        response.components.into_iter().map(|c| c.id).collect()
    }

    async fn stop(self) {
        self.cp.shutdown_token().cancel();
        self.sweeper.await.unwrap();
    }
}

async fn next_event(
    stream: &mut flowplane_control_plane::WatchStream,
) -> pb::WatchComponentsResponse {
    stream
        .next()
        .await
        .expect("watch still open")
        .expect("watch message")
}

#[tokio::test(start_paused = true)]
async fn late_heartbeat_unhealthy_then_expired_then_not_found_then_back() {
    let h = Harness::new(Config::default());
    let mut watch =
        h.cp.watch_components(Request::new(pb::WatchComponentsRequest::default()))
            .await
            .unwrap()
            .into_inner();
    let first = next_event(&mut watch).await;
    assert!(
        matches!(first.event, Some(Event::Snapshot(ref s)) if s.components.is_empty() && !s.resync)
    );

    let lease = h.register("p1", "echo").await;
    assert_eq!(lease.processor_id, "p1");
    assert_eq!(lease.lease_ttl.unwrap().seconds, 15);
    assert_eq!(lease.heartbeat_interval.unwrap().seconds, 5);
    let added = next_event(&mut watch).await;
    assert!(
        matches!(added.event, Some(Event::Added(ref c)) if c.status() == HealthStatus::Starting)
    );

    h.beat("p1", &lease.lease_token, HealthStatus::Healthy)
        .await
        .unwrap();
    let updated = next_event(&mut watch).await;
    assert!(
        matches!(updated.event, Some(Event::Updated(ref c)) if c.status() == HealthStatus::Healthy)
    );
    let last_beat = Instant::now();

    // One interval late is tolerated; late by more than one interval is UNHEALTHY.
    tokio::time::sleep(Duration::from_millis(9_900)).await;
    assert_eq!(
        h.status("p1").await.unwrap(),
        (HealthStatus::Healthy, HealthStatus::Healthy)
    );
    let late = next_event(&mut watch).await;
    assert!(
        matches!(late.event, Some(Event::Updated(ref c)) if c.status() == HealthStatus::Unhealthy)
    );
    assert_eq!(
        last_beat.elapsed(),
        Duration::from_secs(10),
        "unhealthy exactly two intervals after the last heartbeat"
    );
    assert_eq!(
        h.status("p1").await.unwrap(),
        (HealthStatus::Unhealthy, HealthStatus::Healthy)
    );
    assert!(
        h.discover("echo", HealthStatus::Unspecified)
            .await
            .is_empty(),
        "late hosts are not discovered"
    );

    // Silent for a whole TTL: removed, and the watcher is told why.
    let removed = next_event(&mut watch).await;
    match removed.event {
        Some(Event::Removed(r)) => {
            assert_eq!(r.reason(), RemovalReason::Expired);
            assert_eq!(r.component.unwrap().id, "p1");
        }
        other => panic!("expected REMOVED, got {other:?}"),
    }
    assert_eq!(last_beat.elapsed(), Duration::from_secs(15));
    assert_eq!(h.status("p1").await.unwrap_err().code(), Code::NotFound);

    // A heartbeat after expiry is NOT_FOUND: the component must register again.
    let err = h
        .beat("p1", &lease.lease_token, HealthStatus::Healthy)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains("processor_id"), "{}", err.message());

    let again = h.register("p1", "echo").await;
    assert_ne!(
        again.lease_token, lease.lease_token,
        "a new lease, a new token"
    );
    assert!(
        matches!(next_event(&mut watch).await.event, Some(Event::Added(ref c)) if c.id == "p1")
    );
    h.beat("p1", &again.lease_token, HealthStatus::Healthy)
        .await
        .unwrap();
    assert_eq!(
        h.discover("echo", HealthStatus::Unspecified).await,
        vec!["p1"]
    );
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn late_component_recovers_with_its_next_heartbeat() {
    let h = Harness::new(Config::default());
    let lease = h.register("p1", "echo").await;
    h.beat("p1", &lease.lease_token, HealthStatus::Degraded)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert_eq!(h.status("p1").await.unwrap().0, HealthStatus::Unhealthy);
    h.beat("p1", &lease.lease_token, HealthStatus::Degraded)
        .await
        .unwrap();
    assert_eq!(h.status("p1").await.unwrap().0, HealthStatus::Degraded);
    assert_eq!(
        h.discover("echo", HealthStatus::Unspecified).await,
        vec!["p1"],
        "DEGRADED is still discovered"
    );
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn regular_heartbeats_keep_a_lease_alive_without_watch_noise() {
    let h = Harness::new(Config::default());
    let lease = h.register("p1", "echo").await;
    h.beat("p1", &lease.lease_token, HealthStatus::Healthy)
        .await
        .unwrap();
    let mut watch =
        h.cp.watch_components(Request::new(pb::WatchComponentsRequest::default()))
            .await
            .unwrap()
            .into_inner();
    next_event(&mut watch).await; // snapshot
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_secs(5)).await;
        h.beat("p1", &lease.lease_token, HealthStatus::Healthy)
            .await
            .unwrap();
    }
    assert_eq!(h.status("p1").await.unwrap().0, HealthStatus::Healthy);
    // The first event after 100 s of steady heartbeats is the status change, not noise.
    h.beat("p1", &lease.lease_token, HealthStatus::Stopping)
        .await
        .unwrap();
    let event = next_event(&mut watch).await;
    assert!(
        matches!(event.event, Some(Event::Updated(ref c)) if c.status() == HealthStatus::Stopping),
        "{event:?}"
    );
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn stopping_stays_listed_but_is_not_discovered() {
    let h = Harness::new(Config::default());
    let lease = h.register("p1", "echo").await;
    assert!(
        h.discover("echo", HealthStatus::Unspecified)
            .await
            .is_empty(),
        "STARTING is not discovered"
    );
    h.beat("p1", &lease.lease_token, HealthStatus::Healthy)
        .await
        .unwrap();
    assert_eq!(
        h.discover("echo", HealthStatus::Unspecified).await,
        vec!["p1"]
    );
    h.beat("p1", &lease.lease_token, HealthStatus::Stopping)
        .await
        .unwrap();
    assert!(
        h.discover("echo", HealthStatus::Unspecified)
            .await
            .is_empty()
    );
    assert_eq!(
        h.discover("echo", HealthStatus::Stopping).await,
        vec!["p1"],
        "asked for explicitly"
    );
    assert_eq!(
        h.discover("", HealthStatus::Unspecified).await,
        vec!["p1"],
        "still listed"
    );
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn lease_ttl_is_configurable_and_the_interval_is_a_third() {
    let h = Harness::new(Config {
        lease_ttl: Duration::from_secs(30),
        ..Config::default()
    });
    let lease = h.register("p1", "echo").await;
    assert_eq!(lease.lease_ttl.unwrap().seconds, 30);
    assert_eq!(lease.heartbeat_interval.unwrap().seconds, 10);
    tokio::time::sleep(Duration::from_secs(29)).await;
    assert_eq!(h.status("p1").await.unwrap().0, HealthStatus::Unhealthy);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(h.status("p1").await.unwrap_err().code(), Code::NotFound);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn a_watcher_that_falls_behind_gets_a_resync_snapshot() {
    let h = Harness::new(Config {
        watch_buffer: 4,
        ..Config::default()
    });
    let mut watch =
        h.cp.watch_components(Request::new(pb::WatchComponentsRequest {
            kind: ComponentKind::Processor as i32,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let first = next_event(&mut watch).await;
    let first_revision = first.revision;
    // Registration never waits for the watcher, however far behind it is.
    for i in 0..20 {
        h.register(&format!("p{i:02}"), "echo").await;
    }
    let resync = next_event(&mut watch).await;
    match resync.event {
        Some(Event::Snapshot(s)) => {
            assert!(s.resync);
            assert_eq!(s.components.len(), 20);
        }
        other => panic!("expected a resync snapshot, got {other:?}"),
    }
    assert!(resync.revision > first_revision);
    // After the resync, changes flow again.
    h.register("p99", "echo").await;
    let next = next_event(&mut watch).await;
    assert!(matches!(next.event, Some(Event::Added(ref c)) if c.id == "p99"));
    assert!(next.revision > resync.revision);
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn capability_watch_follows_components_in_and_out_of_the_filter() {
    let h = Harness::new(Config::default());
    let lease = h.register("p1", "echo").await;
    let mut watch =
        h.cp.watch_components(Request::new(pb::WatchComponentsRequest {
            capability: "upper".into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner();
    let snapshot = next_event(&mut watch).await;
    assert!(matches!(snapshot.event, Some(Event::Snapshot(ref s)) if s.components.is_empty()));
    h.register("other", "echo").await;
    // A refresh with the lease token that adds the capability brings it into view ...
    let mut refresh = processor("p1", "upper");
    refresh.lease_token = lease.lease_token.clone();
    h.cp.register_processor(Request::new(refresh))
        .await
        .unwrap();
    assert!(
        matches!(next_event(&mut watch).await.event, Some(Event::Added(ref c)) if c.id == "p1")
    );
    // ... and one that drops it takes it out, as REMOVED with no reason.
    let mut refresh = processor("p1", "echo");
    refresh.lease_token = lease.lease_token.clone();
    h.cp.register_processor(Request::new(refresh))
        .await
        .unwrap();
    match next_event(&mut watch).await.event {
        Some(Event::Removed(r)) => assert_eq!(r.reason(), RemovalReason::Unspecified),
        other => panic!("expected REMOVED, got {other:?}"),
    }
    h.stop().await;
}

#[tokio::test(start_paused = true)]
async fn shutdown_ends_watches_cleanly() {
    let h = Harness::new(Config::default());
    let mut watch =
        h.cp.watch_components(Request::new(pb::WatchComponentsRequest::default()))
            .await
            .unwrap()
            .into_inner();
    next_event(&mut watch).await;
    h.cp.shutdown_token().cancel();
    assert!(
        watch.next().await.is_none(),
        "the watch ends without an error"
    );
    let refused =
        h.cp.watch_components(Request::new(pb::WatchComponentsRequest::default()))
            .await
            .err()
            .expect("no new watches while shutting down");
    assert_eq!(refused.code(), Code::Unavailable);
    h.stop().await;
}
