//! The control plane over real gRPC on 127.0.0.1, started through `run`: every kind
//! registers and heartbeats, listing filters and pages, watches see changes in order,
//! and the lease and join tokens are enforced.

mod common;

use std::collections::HashSet;

use common::{Server, ids, list_all, processor, processor_heartbeat};
use flowplane_control_plane::{Config, SERVICE_NAME, error_detail};
use flowplane_proto::{
    common::v1::{ComponentKind, HealthStatus, PageRequest},
    controlplane::v1::{self as pb, RemovalReason, watch_components_response::Event},
    data::v1::DataTypeHint,
};
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

#[tokio::test]
async fn all_three_kinds_register_heartbeat_get_and_deregister() {
    let server = Server::start_default().await;
    let mut client = server.client().await;

    let p = client
        .register_processor(processor("proc-a", &["echo"]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(p.processor_id, "proc-a");
    assert_eq!(p.lease_token.len(), 32);
    assert_eq!(p.lease_ttl.unwrap().seconds, 15);
    assert_eq!(p.heartbeat_interval.unwrap().seconds, 5);
    assert!(p.lease_expires_at.is_some());

    let s = client
        .register_source(pb::RegisterSourceRequest {
            source_id: "src-a".into(),
            endpoint: "http://127.0.0.1:8100".into(),
            data_types: vec![DataTypeHint::Audio as i32],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let c = client
        .register_consumer(pb::RegisterConsumerRequest {
            consumer_id: "sink-a".into(),
            endpoint: "localhost:8200".into(),
            data_types: vec![DataTypeHint::Json as i32],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();

    let ph = client
        .processor_heartbeat(pb::ProcessorHeartbeatRequest {
            processor_id: "proc-a".into(),
            lease_token: p.lease_token.clone(),
            status: HealthStatus::Healthy as i32,
            metrics: [("chunks_in_total".to_string(), 42.0)].into(),
            timestamp: Some(std::time::SystemTime::UNIX_EPOCH.into()),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ph.heartbeat_interval.unwrap().seconds, 5);
    client
        .source_heartbeat(pb::SourceHeartbeatRequest {
            source_id: s.source_id.clone(),
            lease_token: s.lease_token.clone(),
            status: HealthStatus::Degraded as i32,
            ..Default::default()
        })
        .await
        .unwrap();
    client
        .consumer_heartbeat(pb::ConsumerHeartbeatRequest {
            consumer_id: c.consumer_id.clone(),
            lease_token: c.lease_token.clone(),
            status: HealthStatus::Healthy as i32,
            ..Default::default()
        })
        .await
        .unwrap();

    let got = client
        .get_component(pb::GetComponentRequest {
            component_id: "proc-a".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .component
        .unwrap();
    assert_eq!(got.kind(), ComponentKind::Processor);
    assert_eq!(got.status(), HealthStatus::Healthy);
    assert_eq!(got.metrics.unwrap().values["chunks_in_total"], 42.0);
    assert_eq!(got.capabilities[0].name, "echo");
    assert_eq!(got.version, "0.1.0");
    let source = client
        .get_component(pb::GetComponentRequest {
            component_id: "src-a".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .component
        .unwrap();
    assert_eq!(source.status(), HealthStatus::Degraded);
    assert_eq!(source.data_types, vec![DataTypeHint::Audio as i32]);

    assert_eq!(
        ids(&list_all(&mut client, Default::default()).await),
        ["proc-a", "sink-a", "src-a"]
    );

    for (id, token) in [
        ("proc-a", &p.lease_token),
        ("src-a", &s.lease_token),
        ("sink-a", &c.lease_token),
    ] {
        client
            .deregister(pb::DeregisterRequest {
                component_id: id.into(),
                lease_token: token.clone(),
            })
            .await
            .unwrap();
        let gone = client
            .get_component(pb::GetComponentRequest {
                component_id: id.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(gone.code(), Code::NotFound);
    }
    assert!(list_all(&mut client, Default::default()).await.is_empty());
    server.stop().await;
}

#[tokio::test]
async fn an_empty_id_gets_a_server_assigned_one() {
    let server = Server::start_default().await;
    let mut client = server.client().await;
    let lease = client
        .register_processor(processor("", &["echo"]))
        .await
        .unwrap()
        .into_inner();
    assert!(
        lease.processor_id.starts_with("processor-"),
        "{}",
        lease.processor_id
    );
    let source = client
        .register_source(pb::RegisterSourceRequest {
            endpoint: "127.0.0.1:1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        source.source_id.starts_with("source-"),
        "{}",
        source.source_id
    );
    client
        .processor_heartbeat(processor_heartbeat(
            &lease.processor_id,
            &lease.lease_token,
            HealthStatus::Healthy,
        ))
        .await
        .unwrap();
    server.stop().await;
}

#[tokio::test]
async fn list_filters_by_kind_status_capability_and_label() {
    let server = Server::start_default().await;
    let mut client = server.client().await;
    let mut tokens = std::collections::HashMap::new();
    for (id, caps, zone) in [
        ("p-echo", vec!["echo"], "a"),
        ("p-both", vec!["echo", "upper"], "b"),
        ("p-upper", vec!["upper"], "a"),
        ("p-stop", vec!["echo"], "a"),
        ("p-new", vec!["echo"], "a"),
    ] {
        let mut request = processor(id, &caps);
        request.metadata.insert("zone".into(), zone.into());
        let lease = client
            .register_processor(request)
            .await
            .unwrap()
            .into_inner();
        tokens.insert(id, lease.lease_token);
    }
    for (id, status) in [
        ("p-echo", HealthStatus::Healthy),
        ("p-both", HealthStatus::Degraded),
        ("p-upper", HealthStatus::Healthy),
        ("p-stop", HealthStatus::Stopping),
    ] {
        client
            .processor_heartbeat(processor_heartbeat(id, &tokens[id], status))
            .await
            .unwrap();
    }
    client
        .register_source(pb::RegisterSourceRequest {
            source_id: "s-1".into(),
            endpoint: "127.0.0.1:9".into(),
            metadata: [("zone".to_string(), "a".to_string())].into(),
            ..Default::default()
        })
        .await
        .unwrap();

    let query = |kind: ComponentKind,
                 status: HealthStatus,
                 capability: &str,
                 labels: &[(&str, &str)]| pb::ListComponentsRequest {
        kind: kind as i32,
        status: status as i32,
        capability: capability.into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        page: None,
    };
    use ComponentKind as K;
    use HealthStatus as S;
    let cases: Vec<(pb::ListComponentsRequest, Vec<&str>)> = vec![
        (
            query(K::Unspecified, S::Unspecified, "", &[]),
            vec!["p-both", "p-echo", "p-new", "p-stop", "p-upper", "s-1"],
        ),
        (query(K::Source, S::Unspecified, "", &[]), vec!["s-1"]),
        (
            query(K::Processor, S::Healthy, "", &[]),
            vec!["p-echo", "p-upper"],
        ),
        (
            query(K::Unspecified, S::Starting, "", &[]),
            vec!["p-new", "s-1"],
        ),
        // Discovery: only HEALTHY and DEGRADED hosts serving the processor.
        (
            query(K::Unspecified, S::Unspecified, "echo", &[]),
            vec!["p-both", "p-echo"],
        ),
        (
            query(K::Processor, S::Unspecified, "upper", &[]),
            vec!["p-both", "p-upper"],
        ),
        (
            query(K::Unspecified, S::Stopping, "echo", &[]),
            vec!["p-stop"],
        ),
        (query(K::Unspecified, S::Unspecified, "nope", &[]), vec![]),
        (
            query(K::Unspecified, S::Unspecified, "", &[("zone", "a")]),
            vec!["p-echo", "p-new", "p-stop", "p-upper", "s-1"],
        ),
        (
            query(K::Processor, S::Unspecified, "echo", &[("zone", "a")]),
            vec!["p-echo"],
        ),
        (
            query(K::Unspecified, S::Unspecified, "", &[("zone", "c")]),
            vec![],
        ),
    ];
    for (request, expected) in cases {
        let got = list_all(&mut client, request.clone()).await;
        assert_eq!(ids(&got), expected, "{request:?}");
    }
    server.stop().await;
}

#[tokio::test]
async fn pages_through_250_components_in_id_order() {
    let server = Server::start_default().await;
    let mut client = server.client().await;
    let mut expected: Vec<String> = (0..250).map(|i| format!("comp-{i:03}")).collect();
    for id in &expected {
        client
            .register_processor(processor(id, &["echo"]))
            .await
            .unwrap();
    }
    expected.sort();

    let mut pages = Vec::new();
    let mut token = String::new();
    for _ in 0..10 {
        let response = client
            .list_components(pb::ListComponentsRequest {
                page: Some(PageRequest {
                    page_size: 100,
                    page_token: token.clone(),
                }),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        pages.push(ids(&response.components));
        token = response.page.unwrap().next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(
        pages.iter().map(Vec::len).collect::<Vec<_>>(),
        [100, 100, 50]
    );
    assert_eq!(pages.concat(), expected);

    // The default page size is 100.
    let default_page = client
        .list_components(pb::ListComponentsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(default_page.components.len(), 100);
    assert!(!default_page.page.unwrap().next_page_token.is_empty());
    server.stop().await;
}

#[tokio::test]
async fn paging_survives_concurrent_inserts_and_removals() {
    let server = Server::start_default().await;
    let mut client = server.client().await;
    let mut tokens = std::collections::HashMap::new();
    for i in 0..250 {
        let id = format!("comp-{i:03}");
        let lease = client
            .register_processor(processor(&id, &[]))
            .await
            .unwrap()
            .into_inner();
        tokens.insert(id, lease.lease_token);
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut removed = HashSet::new();
    for page in 0..10 {
        let response = client
            .list_components(pb::ListComponentsRequest {
                page: Some(PageRequest {
                    page_size: 60,
                    page_token: token.clone(),
                }),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        seen.extend(ids(&response.components));
        token = response.page.unwrap().next_page_token;
        if token.is_empty() {
            break;
        }
        // Between pages: remove the last id returned and one not yet reached, insert
        // ids on both sides of the cursor.
        let last = seen.last().unwrap().clone();
        let ahead = format!("comp-{:03}", 60 * (page + 1) + 30);
        for id in [last, ahead] {
            let Some(token) = tokens.get(&id).filter(|_| !removed.contains(&id)) else {
                continue;
            };
            client
                .deregister(pb::DeregisterRequest {
                    component_id: id.clone(),
                    lease_token: token.clone(),
                })
                .await
                .unwrap();
            removed.insert(id);
        }
        client
            .register_processor(processor(&format!("comp-000-{page}"), &[]))
            .await
            .unwrap();
        client
            .register_processor(processor(&format!("comp-999-{page}"), &[]))
            .await
            .unwrap();
    }
    let unique: HashSet<_> = seen.iter().cloned().collect();
    assert_eq!(unique.len(), seen.len(), "no component repeated");
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(seen, sorted, "stable id order");
    for i in 0..250 {
        let id = format!("comp-{i:03}");
        assert!(
            unique.contains(&id) || removed.contains(&id),
            "{id} skipped"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn watch_sees_added_updated_removed_in_order() {
    let server = Server::start_default().await;
    let mut client = server.client().await;
    client
        .register_processor(processor("before", &["echo"]))
        .await
        .unwrap();
    let mut watch = client
        .watch_components(pb::WatchComponentsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut next = async || {
        watch
            .next()
            .await
            .expect("watch open")
            .expect("watch message")
    };

    let snapshot = next().await;
    let mut revision = snapshot.revision;
    match snapshot.event {
        Some(Event::Snapshot(s)) => assert_eq!(ids(&s.components), ["before"]),
        other => panic!("expected snapshot, got {other:?}"),
    }

    let lease = client
        .register_processor(processor("p1", &["echo"]))
        .await
        .unwrap()
        .into_inner();
    let token = lease.lease_token;
    client
        .processor_heartbeat(processor_heartbeat("p1", &token, HealthStatus::Healthy))
        .await
        .unwrap();
    // A heartbeat that changes nothing produces no event.
    client
        .processor_heartbeat(processor_heartbeat("p1", &token, HealthStatus::Healthy))
        .await
        .unwrap();
    let mut moved = processor("p1", &["echo"]);
    moved.endpoint = "127.0.0.1:7001".into();
    moved.lease_token = token.clone();
    client.register_processor(moved).await.unwrap();
    client
        .deregister(pb::DeregisterRequest {
            component_id: "p1".into(),
            lease_token: token.clone(),
        })
        .await
        .unwrap();

    let mut kinds = Vec::new();
    for _ in 0..4 {
        let event = next().await;
        assert!(event.revision > revision, "revisions only grow");
        revision = event.revision;
        kinds.push(match event.event.unwrap() {
            Event::Added(c) => format!("added {} {:?}", c.id, c.status()),
            Event::Updated(c) => format!("updated {} {:?} {}", c.id, c.status(), c.endpoint),
            Event::Removed(r) => format!(
                "removed {} {:?}",
                r.component.as_ref().unwrap().id,
                r.reason()
            ),
            Event::Snapshot(_) => "snapshot".into(),
        });
    }
    assert_eq!(
        kinds,
        [
            "added p1 Starting",
            "updated p1 Healthy 127.0.0.1:7000",
            "updated p1 Healthy 127.0.0.1:7001",
            format!("removed p1 {:?}", RemovalReason::Deregistered).as_str(),
        ]
    );
    server.stop().await;
}

#[tokio::test]
async fn duplicate_id_is_rejected_and_the_lease_token_refreshes() {
    let server = Server::start_default().await;
    let mut client = server.client().await;
    let lease = client
        .register_processor(processor("dup", &["echo"]))
        .await
        .unwrap()
        .into_inner();

    let err = client
        .register_processor(processor("dup", &["echo"]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    assert!(err.message().contains("processor_id"), "{}", err.message());
    assert_eq!(error_detail(&err).unwrap().field, "processor_id");

    // Ids are unique across kinds.
    let err = client
        .register_source(pb::RegisterSourceRequest {
            source_id: "dup".into(),
            endpoint: "127.0.0.1:1".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    assert!(err.message().contains("source_id"), "{}", err.message());

    let mut wrong = processor("dup", &["echo"]);
    wrong.lease_token = "0".repeat(32);
    assert_eq!(
        client.register_processor(wrong).await.unwrap_err().code(),
        Code::AlreadyExists
    );

    let mut again = processor("dup", &["echo", "upper"]);
    again.lease_token = lease.lease_token.clone();
    let refreshed = client.register_processor(again).await.unwrap().into_inner();
    assert_eq!(
        refreshed.lease_token, lease.lease_token,
        "an idempotent refresh keeps the lease"
    );
    let got = client
        .get_component(pb::GetComponentRequest {
            component_id: "dup".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .component
        .unwrap();
    assert_eq!(got.capabilities.len(), 2);
    server.stop().await;
}

#[tokio::test]
async fn wrong_lease_token_is_permission_denied() {
    let server = Server::start_default().await;
    let mut client = server.client().await;
    client
        .register_processor(processor("p1", &[]))
        .await
        .unwrap();
    let wrong = "f".repeat(32);
    let err = client
        .processor_heartbeat(processor_heartbeat("p1", &wrong, HealthStatus::Healthy))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("lease_token"), "{}", err.message());
    let err = client
        .deregister(pb::DeregisterRequest {
            component_id: "p1".into(),
            lease_token: wrong,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    // Still registered.
    client
        .get_component(pb::GetComponentRequest {
            component_id: "p1".into(),
        })
        .await
        .unwrap();
    server.stop().await;
}

#[tokio::test]
async fn register_needs_the_join_token_when_one_is_configured() {
    let server = Server::start(Config {
        join_token: Some("letmein".into()),
        ..Config::default()
    })
    .await;
    for token in [None, Some("wrong")] {
        let mut client = server.client_with_token(token).await;
        let err = client
            .register_processor(processor("p1", &[]))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{token:?}");
        let err = client
            .register_source(pb::RegisterSourceRequest {
                source_id: "s1".into(),
                endpoint: "127.0.0.1:1".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
        let err = client
            .register_consumer(pb::RegisterConsumerRequest {
                consumer_id: "c1".into(),
                endpoint: "127.0.0.1:1".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
        // Reading the registry needs no join token.
        client
            .list_components(pb::ListComponentsRequest::default())
            .await
            .unwrap();
    }
    let mut client = server.client_with_token(Some("letmein")).await;
    let lease = client
        .register_processor(processor("p1", &[]))
        .await
        .unwrap()
        .into_inner();
    // Heartbeats are guarded by the lease token, not the join token.
    let mut anonymous = server.client().await;
    anonymous
        .processor_heartbeat(processor_heartbeat(
            "p1",
            &lease.lease_token,
            HealthStatus::Healthy,
        ))
        .await
        .unwrap();
    server.stop().await;
}

#[tokio::test]
async fn health_serves_and_shutdown_ends_watches_cleanly() {
    let server = Server::start_default().await;
    let channel = flowplane_grpc::client::connect(&server.url(), &Default::default())
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    for service in ["", SERVICE_NAME] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status();
        assert_eq!(status, ServingStatus::Serving, "{service:?}");
    }
    let mut health_watch = health
        .watch(HealthCheckRequest {
            service: SERVICE_NAME.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        health_watch.next().await.unwrap().unwrap().status(),
        ServingStatus::Serving
    );

    let mut client = server.client().await;
    let mut watch = client
        .watch_components(pb::WatchComponentsRequest::default())
        .await
        .unwrap()
        .into_inner();
    watch.next().await.unwrap().unwrap();

    server.shutdown.cancel();
    assert_eq!(
        health_watch.next().await.unwrap().unwrap().status(),
        ServingStatus::NotServing
    );
    drop(health_watch);
    let end = watch.next().await;
    assert!(end.is_none(), "the watch ends cleanly, got {end:?}");
    server.task.await.unwrap().unwrap();
}

/// Lease tokens are secrets of their holders: no listing, lookup or watch event carries
/// one, in any field (the encoded answers are searched for the token's bytes).
#[tokio::test]
async fn lease_tokens_never_appear_in_list_get_or_watch_output() {
    use prost::Message;

    let server = Server::start_default().await;
    let mut client = server.client().await;
    let mut watch = client
        .watch_components(pb::WatchComponentsRequest::default())
        .await
        .unwrap()
        .into_inner();
    let lease = client
        .register_processor(processor("secretive", &["echo"]))
        .await
        .unwrap()
        .into_inner()
        .lease_token;
    assert!(!lease.is_empty());
    let contains = |bytes: &[u8]| bytes.windows(lease.len()).any(|w| w == lease.as_bytes());
    let listed = client
        .list_components(pb::ListComponentsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ids(&listed.components), ["secretive"]);
    assert!(
        !contains(&listed.encode_to_vec()),
        "the listing carries the lease token"
    );
    let got = client
        .get_component(pb::GetComponentRequest {
            component_id: "secretive".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(
        !contains(&got.encode_to_vec()),
        "the lookup carries the lease token"
    );
    // The snapshot, then the registration.
    for _ in 0..2 {
        let event = watch.next().await.expect("watch open").expect("event");
        assert!(
            !contains(&event.encode_to_vec()),
            "a watch event carries the lease token"
        );
    }
}

#[tokio::test]
async fn a_snapshot_over_one_message_is_split_and_complete() {
    let server = Server::start_default().await;
    let mut client = server.client().await;
    // 150 hosts of 60 kB each: a 9 MB snapshot, over the 8 MiB message limit.
    let big = "d".repeat(60_000);
    for i in 0..150 {
        let mut request = processor(&format!("big-{i:03}"), &["echo"]);
        request.capabilities[0].description = big.clone();
        client.register_processor(request).await.unwrap();
    }
    let mut watch = client
        .watch_components(pb::WatchComponentsRequest::default())
        .await
        .expect("a watch opens whatever the snapshot's size")
        .into_inner();
    let first = watch.next().await.unwrap().unwrap();
    let Some(Event::Snapshot(snapshot)) = first.event else {
        panic!("expected a snapshot first, got {first:?}");
    };
    assert!(snapshot.continued, "the first part says more follows");
    assert!(!snapshot.resync);
    let mut seen: HashSet<String> = snapshot.components.into_iter().map(|c| c.id).collect();
    assert!(seen.len() < 150);
    while seen.len() < 150 {
        let next = watch.next().await.unwrap().unwrap();
        assert_eq!(
            next.revision, first.revision,
            "the rest is at the snapshot's revision"
        );
        match next.event {
            Some(Event::Added(c)) => assert!(seen.insert(c.id), "no component twice"),
            other => panic!("expected the rest of the snapshot as ADDED, got {other:?}"),
        }
    }
    // Then ordinary changes follow.
    client
        .register_processor(processor("after", &["echo"]))
        .await
        .unwrap();
    let after = watch.next().await.unwrap().unwrap();
    assert!(matches!(after.event, Some(Event::Added(ref c)) if c.id == "after"));
    assert!(after.revision > first.revision);
    server.stop().await;
}
