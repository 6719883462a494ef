//! The lifecycle against a scripted control plane on 127.0.0.1: retry until it answers,
//! heartbeats with metrics and honest status, registering again on NOT_FOUND and on a
//! lease mismatch, refusals logged once and retried only at the longest backoff, STOPPING
//! then deregistration on shutdown, and open streams untouched by a control plane outage.
//! The real control plane is exercised in tests/tests/processor_lifecycle.rs.

mod common;

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use common::{Echo, Server, first_payload, one, text};
use flowplane_grpc::{auth::check_bearer, server::GrpcServer};
use flowplane_sdk::{
    ProcessorHost, RegistrationConfig, ServeOptions,
    client::ProcessStream,
    proto::{
        common::v1::HealthStatus,
        controlplane::v1::{
            self as cp, control_plane_service_server::ControlPlaneService,
            control_plane_service_server::ControlPlaneServiceServer,
        },
    },
};
use flowplane_test_support::{local_listener, wait_for, wait_until};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, service::Routes};

const TOKEN: &str = "join-secret";
const HEARTBEAT: Duration = Duration::from_millis(50);

/// What the fake control plane saw, and the ids it currently knows.
#[derive(Default)]
struct Seen {
    registrations: Vec<cp::RegisterProcessorRequest>,
    heartbeats: Vec<cp::ProcessorHeartbeatRequest>,
    deregistrations: Vec<cp::DeregisterRequest>,
    live: Vec<String>,
    /// When each register call arrived, refused or not.
    attempts: Vec<Instant>,
    /// Register calls are answered with these, first to last, before any is accepted.
    refusals: Vec<Status>,
    /// While set, heartbeats are refused as a lease mismatch; a registration clears it.
    revoked: bool,
}

#[derive(Clone, Default)]
struct FakeControlPlane {
    seen: Arc<Mutex<Seen>>,
}

impl FakeControlPlane {
    fn registrations(&self) -> Vec<cp::RegisterProcessorRequest> {
        self.seen.lock().unwrap().registrations.clone()
    }
    fn heartbeats(&self) -> Vec<cp::ProcessorHeartbeatRequest> {
        self.seen.lock().unwrap().heartbeats.clone()
    }
    fn deregistrations(&self) -> Vec<cp::DeregisterRequest> {
        self.seen.lock().unwrap().deregistrations.clone()
    }
    fn forget_everyone(&self) {
        self.seen.lock().unwrap().live.clear();
    }
    fn attempts(&self) -> Vec<Instant> {
        self.seen.lock().unwrap().attempts.clone()
    }
    fn refuse(&self, refusals: Vec<Status>) {
        self.seen.lock().unwrap().refusals = refusals;
    }
    fn revoke_leases(&self) {
        self.seen.lock().unwrap().revoked = true;
    }
}

fn unimplemented<T>() -> Result<Response<T>, Status> {
    Err(Status::unimplemented("not in the fake"))
}

#[tonic::async_trait]
impl ControlPlaneService for FakeControlPlane {
    type WatchComponentsStream = tokio_stream::Empty<Result<cp::WatchComponentsResponse, Status>>;

    async fn register_processor(
        &self,
        request: Request<cp::RegisterProcessorRequest>,
    ) -> Result<Response<cp::RegisterProcessorResponse>, Status> {
        check_bearer(request.metadata(), TOKEN)?;
        let request = request.into_inner();
        let mut seen = self.seen.lock().unwrap();
        seen.attempts.push(Instant::now());
        if !seen.refusals.is_empty() {
            return Err(seen.refusals.remove(0));
        }
        seen.revoked = false;
        let id = if request.processor_id.is_empty() {
            format!("assigned-{}", seen.registrations.len() + 1)
        } else {
            request.processor_id.clone()
        };
        seen.registrations.push(request);
        seen.live.push(id.clone());
        Ok(Response::new(cp::RegisterProcessorResponse {
            processor_id: id.clone(),
            lease_token: format!("lease-of-{id}"),
            lease_ttl: Some(prost_types::Duration {
                seconds: 1,
                nanos: 0,
            }),
            heartbeat_interval: Some(prost_types::Duration::try_from(HEARTBEAT).unwrap()),
            lease_expires_at: None,
        }))
    }

    async fn processor_heartbeat(
        &self,
        request: Request<cp::ProcessorHeartbeatRequest>,
    ) -> Result<Response<cp::ProcessorHeartbeatResponse>, Status> {
        let request = request.into_inner();
        let mut seen = self.seen.lock().unwrap();
        let known = seen.live.contains(&request.processor_id);
        seen.heartbeats.push(request);
        if seen.revoked {
            return Err(Status::permission_denied(
                "lease_token: does not match the lease of component",
            ));
        }
        if !known {
            return Err(Status::not_found("no such processor"));
        }
        Ok(Response::new(cp::ProcessorHeartbeatResponse::default()))
    }

    async fn deregister(
        &self,
        request: Request<cp::DeregisterRequest>,
    ) -> Result<Response<cp::DeregisterResponse>, Status> {
        let request = request.into_inner();
        let mut seen = self.seen.lock().unwrap();
        seen.live.retain(|id| *id != request.component_id);
        seen.deregistrations.push(request);
        Ok(Response::new(cp::DeregisterResponse {}))
    }

    async fn register_source(
        &self,
        _: Request<cp::RegisterSourceRequest>,
    ) -> Result<Response<cp::RegisterSourceResponse>, Status> {
        unimplemented()
    }
    async fn source_heartbeat(
        &self,
        _: Request<cp::SourceHeartbeatRequest>,
    ) -> Result<Response<cp::SourceHeartbeatResponse>, Status> {
        unimplemented()
    }
    async fn register_consumer(
        &self,
        _: Request<cp::RegisterConsumerRequest>,
    ) -> Result<Response<cp::RegisterConsumerResponse>, Status> {
        unimplemented()
    }
    async fn consumer_heartbeat(
        &self,
        _: Request<cp::ConsumerHeartbeatRequest>,
    ) -> Result<Response<cp::ConsumerHeartbeatResponse>, Status> {
        unimplemented()
    }
    async fn get_component(
        &self,
        _: Request<cp::GetComponentRequest>,
    ) -> Result<Response<cp::GetComponentResponse>, Status> {
        unimplemented()
    }
    async fn list_components(
        &self,
        _: Request<cp::ListComponentsRequest>,
    ) -> Result<Response<cp::ListComponentsResponse>, Status> {
        unimplemented()
    }
    async fn watch_components(
        &self,
        _: Request<cp::WatchComponentsRequest>,
    ) -> Result<Response<Self::WatchComponentsStream>, Status> {
        unimplemented()
    }
}

/// A fake control plane being served until `stop` is cancelled.
struct FakeServer {
    addr: SocketAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

/// Serves `fake` on `listener` until the returned server's `stop` is cancelled.
fn start_fake(fake: &FakeControlPlane, listener: TcpListener) -> FakeServer {
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let routes = Routes::new(ControlPlaneServiceServer::new(fake.clone()));
    let server = GrpcServer::new().unwrap().with_routes(routes);
    let shutdown = stop.clone().cancelled_owned();
    let task = tokio::spawn(async move { server.serve(listener, shutdown).await.unwrap() });
    FakeServer { addr, stop, task }
}

/// Serves `fake` on a fresh 127.0.0.1 port.
async fn serve_fake(fake: &FakeControlPlane) -> FakeServer {
    start_fake(fake, local_listener().await)
}

/// Waits until `fake` has seen at least one heartbeat.
async fn a_heartbeat(fake: &FakeControlPlane) {
    wait_until("a heartbeat", || {
        let fake = fake.clone();
        async move { !fake.heartbeats().is_empty() }
    })
    .await;
}

/// Waits for the second registration `fake` accepts, and returns it.
async fn second_registration(fake: &FakeControlPlane) -> cp::RegisterProcessorRequest {
    wait_for("a second registration", || {
        let fake = fake.clone();
        async move { fake.registrations().get(1).cloned() }
    })
    .await
}

async fn start_host(control_plane: SocketAddr, max_streams: usize) -> Server {
    start_host_with(
        control_plane,
        max_streams,
        Duration::from_millis(20),
        Duration::from_millis(100),
    )
    .await
}

async fn start_host_with(
    control_plane: SocketAddr,
    max_streams: usize,
    initial_backoff: Duration,
    max_backoff: Duration,
) -> Server {
    let host = ProcessorHost::builder("test-host")
        .max_streams(max_streams)
        .processor::<Echo>()
        .build()
        .unwrap();
    let listener = local_listener().await;
    let addr = listener.local_addr().unwrap();
    let mut registration = RegistrationConfig::new(control_plane.to_string());
    registration.join_token = Some(TOKEN.into());
    registration.initial_backoff = initial_backoff;
    registration.max_backoff = max_backoff;
    registration.metadata.insert("zone".into(), "test".into());
    let options = ServeOptions {
        registration: Some(registration),
        advertise: Some(format!("processor.test:{}", addr.port())),
        grace_period: Duration::from_secs(5),
        ..Default::default()
    };
    Server::serve(host, listener, options)
}

async fn open_echo(host: &Server) -> ProcessStream {
    host.try_open("test.echo", "n", serde_json::Value::Null)
        .await
        .unwrap()
        .0
}

/// Sends "hello {sequence}" and checks that it comes back unchanged.
async fn echo(stream: &mut ProcessStream, sequence: u64) {
    let payload = text(&format!("hello {sequence}"));
    let result = one(stream, sequence, "", payload.clone()).await;
    assert_eq!(first_payload(&result), Some(&payload));
}

#[tokio::test]
async fn registers_once_the_control_plane_answers_then_heartbeats_with_metrics() {
    // Reserve a port, and start the control plane on it only after the host is trying.
    let reserved = local_listener().await;
    let cp_addr = reserved.local_addr().unwrap();
    drop(reserved);
    let host = start_host(cp_addr, 100).await;

    let mut stream = open_echo(&host).await;
    echo(&mut stream, 1).await;

    let fake = FakeControlPlane::default();
    let listener = TcpListener::bind(cp_addr).await.unwrap();
    let _cp = start_fake(&fake, listener);

    let registration = wait_for("the host to register", || {
        let fake = fake.clone();
        async move { fake.registrations().into_iter().next() }
    })
    .await;
    assert_eq!(
        registration.endpoint,
        format!("processor.test:{}", host.addr.port())
    );
    assert_eq!(registration.metadata["zone"], "test");
    assert_eq!(registration.capabilities.len(), 1);
    assert_eq!(registration.capabilities[0].name, "test.echo");
    assert_eq!(registration.version, env!("CARGO_PKG_VERSION"));
    wait_until("the assigned id to reach the host", || async {
        host.host.host_id() == "assigned-1"
    })
    .await;

    let beat = wait_for("a heartbeat with a chunk counted", || {
        let fake = fake.clone();
        async move {
            fake.heartbeats()
                .into_iter()
                .find(|h| h.metrics.get("chunks_in_total") == Some(&1.0))
        }
    })
    .await;
    assert_eq!(beat.processor_id, "assigned-1");
    assert_eq!(beat.lease_token, "lease-of-assigned-1");
    assert_eq!(beat.status, HealthStatus::Healthy as i32);
    for key in [
        "chunks_in_total",
        "chunks_out_total",
        "errors_total",
        "active_streams",
        "streams_total",
        "latency_p50_ms",
        "latency_p99_ms",
    ] {
        assert!(
            beat.metrics.contains_key(key),
            "{key} missing from {:?}",
            beat.metrics
        );
    }
    assert_eq!(beat.metrics["active_streams"], 1.0);
    assert_eq!(beat.metrics["chunks_out_total"], 1.0);
    drop(stream);
    host.shutdown().await;
}

#[tokio::test]
async fn reports_degraded_while_over_its_stream_limit() {
    let fake = FakeControlPlane::default();
    let cp = serve_fake(&fake).await;
    let host = start_host(cp.addr, 1).await;
    let healthy = |status: HealthStatus| {
        let fake = fake.clone();
        move || {
            let fake = fake.clone();
            async move {
                fake.heartbeats()
                    .last()
                    .is_some_and(|h| h.status == status as i32)
            }
        }
    };
    wait_until("a healthy heartbeat", healthy(HealthStatus::Healthy)).await;
    let first = open_echo(&host).await;
    let second = open_echo(&host).await;
    wait_until("a degraded heartbeat", healthy(HealthStatus::Degraded)).await;
    drop((first, second));
    wait_until("healthy again", healthy(HealthStatus::Healthy)).await;
}

#[tokio::test]
async fn registers_again_when_the_control_plane_forgets_it() {
    let fake = FakeControlPlane::default();
    let cp = serve_fake(&fake).await;
    let host = start_host(cp.addr, 100).await;
    wait_until("the first registration", || {
        let fake = fake.clone();
        async move { fake.registrations().len() == 1 }
    })
    .await;
    fake.forget_everyone();
    let again = second_registration(&fake).await;
    // It asks for the id it had, so it stays the same component.
    assert_eq!(again.processor_id, "assigned-1");
    assert_eq!(host.host.host_id(), "assigned-1");
}

#[tokio::test]
async fn shutdown_reports_stopping_then_deregisters() {
    let fake = FakeControlPlane::default();
    let cp = serve_fake(&fake).await;
    let host = start_host(cp.addr, 100).await;
    a_heartbeat(&fake).await;
    host.shutdown().await;
    let last = fake.heartbeats().pop().unwrap();
    assert_eq!(last.status, HealthStatus::Stopping as i32);
    let deregistered = fake.deregistrations();
    assert_eq!(deregistered.len(), 1);
    assert_eq!(deregistered[0].component_id, "assigned-1");
    assert_eq!(deregistered[0].lease_token, "lease-of-assigned-1");
}

#[tokio::test]
async fn a_control_plane_outage_never_stops_open_streams() {
    let fake = FakeControlPlane::default();
    let cp = serve_fake(&fake).await;
    let host = start_host(cp.addr, 100).await;
    let mut stream = open_echo(&host).await;
    echo(&mut stream, 1).await;
    a_heartbeat(&fake).await;
    cp.stop.cancel();
    cp.task.await.unwrap();
    for sequence in 2..50 {
        echo(&mut stream, sequence).await;
    }
    // New streams open too: only discovery depends on the control plane.
    let mut fresh = open_echo(&host).await;
    echo(&mut fresh, 1).await;
    // With its streams closed, the host stops at once although the control plane is gone.
    drop((stream, fresh));
    host.shutdown().await;
}

/// Log lines written by the tests' subscriber.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    fn count(&self, needle: &str) -> usize {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .matches(needle)
            .count()
    }
}

// The default current-thread runtime runs the host on this thread, so the thread-local
// subscriber sees its logs.
#[tokio::test]
async fn transient_failures_back_off_quickly_and_refusals_only_at_the_max_once_logged() {
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let fake = FakeControlPlane::default();
    fake.refuse(vec![
        Status::unavailable("starting"),
        Status::unavailable("starting"),
        Status::unauthenticated("join token required: wrong token"),
        Status::unauthenticated("join token required: wrong token"),
        Status::unauthenticated("join token required: wrong token"),
    ]);
    let cp = serve_fake(&fake).await;
    let max = Duration::from_millis(300);
    let host = start_host_with(cp.addr, 100, Duration::from_millis(5), max).await;
    wait_until(
        "the refusals to run out and the host to register",
        || async { host.host.host_id() == "assigned-1" },
    )
    .await;
    let attempts = fake.attempts();
    assert_eq!(attempts.len(), 6);
    let gaps: Vec<Duration> = attempts.windows(2).map(|w| w[1] - w[0]).collect();
    // After UNAVAILABLE: jittered delays from 5 ms, at most 3x the previous one.
    assert!(gaps[0] < Duration::from_millis(200), "{gaps:?}");
    assert!(gaps[1] < Duration::from_millis(200), "{gaps:?}");
    // After UNAUTHENTICATED: only every max_backoff.
    for gap in &gaps[2..] {
        assert!(*gap >= max, "{gaps:?}");
    }
    assert_eq!(
        logs.count("refused this host's registration; check the join token"),
        1,
        "one error for three identical refusals"
    );
    assert_eq!(logs.count("registration failed, retrying"), 2);
    host.shutdown().await;
}

#[tokio::test]
async fn a_lease_mismatch_on_heartbeat_registers_again_presenting_the_old_lease() {
    let fake = FakeControlPlane::default();
    let cp = serve_fake(&fake).await;
    let host = start_host(cp.addr, 100).await;
    a_heartbeat(&fake).await;
    fake.revoke_leases();
    let again = second_registration(&fake).await;
    assert_eq!(again.processor_id, "assigned-1");
    assert_eq!(again.lease_token, "lease-of-assigned-1");
    // Heartbeats go on, accepted, after the registration.
    let beats = fake.heartbeats().len();
    wait_until("heartbeats after registering again", || async {
        fake.heartbeats().len() > beats + 2
    })
    .await;
    host.shutdown().await;
    assert_eq!(fake.deregistrations()[0].component_id, "assigned-1");
}

#[tokio::test]
async fn a_taken_processor_id_is_refused_not_hammered() {
    let fake = FakeControlPlane::default();
    fake.refuse(vec![
        Status::already_exists(
            "processor_id: \"p\" is already registered"
        );
        50
    ]);
    let cp = serve_fake(&fake).await;
    let max = Duration::from_millis(200);
    let host = start_host_with(cp.addr, 100, Duration::from_millis(1), max).await;
    wait_until("three attempts", || async { fake.attempts().len() >= 3 }).await;
    let attempts = fake.attempts();
    assert!(attempts[1] - attempts[0] >= max && attempts[2] - attempts[1] >= max);
    host.shutdown().await;
    assert!(fake.deregistrations().is_empty(), "never registered");
}
