//! What an orchestrator such as Kubernetes (deploy/k8s) relies on, through the real
//! services: a plaintext health-only port beside a TLS main port with the main server's
//! statuses (readiness follows the drain, liveness does not), and a maximum connection age
//! that makes a long-lived client reconnect, while a server without one keeps its client.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use flowplane_grpc::{
    config::ClientArgs,
    server::{GrpcServer, LIVENESS_SERVICE, ServingOptions, scope_serving_options},
};
use flowplane_sdk::client::{ProcessStream, chunk, init};
use flowplane_test_support::{local_listener, pki::Pki, wait_for, wait_until};
use flowplane_tests::{
    data::text,
    process::{free_port, start},
};
use futures::FutureExt;
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use tonic::{service::Routes, transport::Channel};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

/// The status of `service` asked in plaintext at `addr`; `None` when nothing answers there
/// (no listener, or one that speaks only TLS).
async fn status(addr: SocketAddr, service: &str) -> Option<ServingStatus> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .ok()?
        .connect()
        .await
        .ok()?;
    let mut client = HealthClient::new(channel);
    let response = client
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .ok()?;
    Some(response.into_inner().status())
}

/// A service's `run` started the way `serve_main` starts it: inside the serving options'
/// scope. Stopped (gracefully) by cancelling the token.
struct Started {
    stop: CancellationToken,
    task: JoinHandle<Result<(), String>>,
}

fn spawn_scoped<F, E>(
    options: ServingOptions,
    run: impl FnOnce(tokio_util::sync::WaitForCancellationFutureOwned) -> F,
) -> Started
where
    F: Future<Output = Result<(), E>> + Send + 'static,
    E: std::fmt::Display,
{
    let stop = CancellationToken::new();
    let served = run(stop.clone().cancelled_owned());
    let task = tokio::spawn(scope_serving_options(options, async move {
        served.await.map_err(|e| e.to_string())
    }));
    Started { stop, task }
}

fn with_health_port(health_listener: TcpListener) -> ServingOptions {
    ServingOptions {
        health_listener: Some(health_listener),
        ..ServingOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_answers_plaintext_health_on_its_health_port_while_serving_tls() {
    let pki = Pki::new();
    let mut started = Vec::new();
    let mut ports = Vec::new();
    for service in ["control-plane", "processor", "pipeline"] {
        let tls = Some(pki.server(&pki.leaf(service)));
        let (main, health) = (local_listener().await, local_listener().await);
        ports.push((
            service,
            main.local_addr().unwrap(),
            health.local_addr().unwrap(),
        ));
        let options = with_health_port(health);
        started.push(match service {
            "control-plane" => {
                let config = flowplane_control_plane::Config {
                    tls,
                    ..Default::default()
                };
                spawn_scoped(options, |stop| {
                    flowplane_control_plane::run(config, main, stop)
                })
            }
            "processor" => {
                let config = flowplane_processor::Config {
                    tls,
                    ..Default::default()
                };
                spawn_scoped(options, |stop| flowplane_processor::run(config, main, stop))
            }
            _ => {
                // A control plane nobody listens on: the pipeline serves and keeps retrying.
                let mut config =
                    flowplane_pipeline::Config::new(format!("http://127.0.0.1:{}", free_port()));
                config.tls = tls;
                spawn_scoped(options, |stop| flowplane_pipeline::run(config, main, stop))
            }
        });
    }
    for (service, main, health) in ports {
        wait_until(
            &format!("the {service} health port to report SERVING"),
            || async move { status(health, "").await == Some(ServingStatus::Serving) },
        )
        .await;
        assert_eq!(
            status(health, LIVENESS_SERVICE).await,
            Some(ServingStatus::Serving),
            "{service}"
        );
        assert_eq!(
            status(main, "").await,
            None,
            "the {service} main port speaks TLS only"
        );
        let client = pki.client(Some(&pki.leaf("prober")));
        let channel = flowplane_grpc::client::connect(&format!("https://{main}"), &client)
            .await
            .unwrap();
        let over_tls = HealthClient::new(channel)
            .check(HealthCheckRequest::default())
            .await
            .unwrap()
            .into_inner()
            .status();
        assert_eq!(over_tls, ServingStatus::Serving, "{service} over mTLS");
    }
    for service in started {
        service.stop.cancel();
        tokio::time::timeout(Duration::from_secs(30), service.task)
            .await
            .expect("stops within 30s")
            .unwrap()
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_drain_liveness_does_not_and_the_port_closes_with_the_server() {
    let (main, health) = (local_listener().await, local_listener().await);
    let (main_addr, health_addr) = (main.local_addr().unwrap(), health.local_addr().unwrap());
    let config = flowplane_processor::Config {
        grace_period: Duration::from_secs(20),
        ..Default::default()
    };
    let host = spawn_scoped(with_health_port(health), |stop| {
        flowplane_processor::run(config, main, stop)
    });
    wait_until("the health port to report SERVING", || async move {
        status(health_addr, "").await == Some(ServingStatus::Serving)
    })
    .await;
    let channel = flowplane_grpc::client::connect(&main_addr.to_string(), &ClientArgs::default())
        .await
        .unwrap();
    let (mut stream, _) = ProcessStream::open(
        channel,
        init(
            "text.transform",
            "drained",
            serde_json::json!({ "mode": "upper" }),
        ),
    )
    .await
    .unwrap();

    host.stop.cancel();
    wait_until("readiness to go NOT_SERVING on the drain", || async move {
        status(health_addr, "").await == Some(ServingStatus::NotServing)
    })
    .await;
    assert_eq!(
        status(health_addr, LIVENESS_SERVICE).await,
        Some(ServingStatus::Serving),
        "liveness must not fail a draining server"
    );
    // The open stream is still served while the health port says NOT_SERVING.
    stream.send(chunk(1, "text", text("hi"))).await.unwrap();
    let result = stream
        .result()
        .await
        .unwrap()
        .expect("a result while draining");
    assert_eq!((result.input_sequence, result.error), (1, None));
    stream.close_send();
    assert!(stream.result().await.unwrap().is_none());

    tokio::time::timeout(Duration::from_secs(30), host.task)
        .await
        .expect("the host stops once its last stream ended")
        .unwrap()
        .unwrap();
    assert_eq!(
        status(health_addr, "").await,
        None,
        "the health port closes with the main server"
    );
}

/// Forwards every connection to `target`, counting them: how many connections a client
/// opened, seen from outside both.
async fn counting_proxy(target: SocketAddr) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = local_listener().await;
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    (addr, accepted)
}

/// A server of health only with these options, behind a counting proxy; and a channel to it.
async fn health_server(options: ServingOptions) -> (Channel, Arc<AtomicUsize>, CancellationToken) {
    let listener = local_listener().await;
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let server = GrpcServer::new()
        .unwrap()
        .with_serving_options(options)
        .with_routes(Routes::default());
    tokio::spawn(server.serve(listener, stop.clone().cancelled_owned()));
    let (proxy, accepted) = counting_proxy(addr).await;
    let channel = flowplane_grpc::client::connect(&proxy.to_string(), &ClientArgs::default())
        .await
        .unwrap();
    (channel, accepted, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_max_connection_age_moves_a_long_lived_client_to_a_new_connection() {
    let age = Duration::from_millis(300);
    let (aged, aged_connections, stop_aged) = health_server(ServingOptions {
        max_connection_age: Some(age),
        max_connection_age_grace: Some(age),
        ..ServingOptions::default()
    })
    .await;
    let (ageless, ageless_connections, stop_ageless) =
        health_server(ServingOptions::default()).await;
    // A watch is a call that never ends by itself: the grace must cut it.
    let mut aged_watch = HealthClient::new(aged.clone())
        .watch(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut ageless_watch = HealthClient::new(ageless.clone())
        .watch(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    for watch in [&mut aged_watch, &mut ageless_watch] {
        assert!(watch.message().await.unwrap().is_some(), "the first status");
    }

    // Both clients call all along. The ageless one never fails. A call of the aged one
    // may race its connection's end (the GOAWAY, or the grace cutting the connection) and
    // fail with a transient status, which flowplane's clients retry with a backoff: so
    // retried, it must succeed on a fresh connection, and fewer calls fail than
    // connections were opened.
    let failed = Arc::new(AtomicUsize::new(0));
    wait_until(
        "the aged server's client to be on its third connection",
        || {
            let (aged, ageless) = (aged.clone(), ageless.clone());
            let (connections, failed) = (aged_connections.clone(), failed.clone());
            async move {
                let check = |channel: Channel| async move {
                    HealthClient::new(channel)
                        .check(HealthCheckRequest::default())
                        .await
                        .map(|answer| answer.into_inner().status())
                };
                let answer = check(ageless).await.expect("the ageless server's call");
                assert_eq!(answer, ServingStatus::Serving);
                let answer = match check(aged.clone()).await {
                    Ok(answer) => answer,
                    Err(status) => {
                        assert_eq!(
                            flowplane_grpc::retry::classify(&status),
                            flowplane_grpc::retry::Retry::Transient,
                            "{status:?}"
                        );
                        failed.fetch_add(1, Ordering::SeqCst);
                        // As flowplane's clients do: back off and retry, a bounded number of times.
                        let mut backoff = flowplane_grpc::retry::Backoff::new(
                            Duration::from_millis(10),
                            Duration::from_millis(200),
                        );
                        let mut retried = check(aged.clone()).await;
                        for _ in 0..10 {
                            if retried.is_ok() {
                                break;
                            }
                            tokio::time::sleep(backoff.next_delay()).await;
                            retried = check(aged.clone()).await;
                        }
                        retried.expect("a retry on a fresh connection within 10 attempts")
                    }
                };
                assert_eq!(answer, ServingStatus::Serving);
                connections.load(Ordering::SeqCst) >= 3
            }
        },
    )
    .await;
    assert!(
        failed.load(Ordering::SeqCst) < aged_connections.load(Ordering::SeqCst),
        "{} calls failed over {} connections",
        failed.load(Ordering::SeqCst),
        aged_connections.load(Ordering::SeqCst)
    );
    let cut = wait_for("the watch to be cut after the age and its grace", || {
        let next = aged_watch.message().now_or_never();
        async move {
            match next {
                None | Some(Ok(Some(_))) => None,
                Some(ended) => Some(ended),
            }
        }
    })
    .await;
    assert!(
        !matches!(cut, Ok(Some(_))),
        "the watch ended, with an error or at its end: {cut:?}"
    );
    assert_eq!(
        ageless_connections.load(Ordering::SeqCst),
        1,
        "without an age the client keeps its one connection"
    );
    assert!(
        ageless_watch.message().now_or_never().is_none(),
        "without an age the watch stays open"
    );
    stop_aged.cancel();
    stop_ageless.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_processor_binary_serves_its_health_port_and_in_flight_gauge_from_the_start() {
    let pki = Pki::new();
    let leaf = pki.leaf("processor");
    let [grpc, health, metrics] = std::array::from_fn(|_| free_port());
    let path = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let _processor = start(
        "flowplane-processor",
        &[
            "--listen".into(),
            format!("127.0.0.1:{grpc}"),
            "--health-listen".into(),
            format!("127.0.0.1:{health}"),
            "--metrics-listen".into(),
            format!("127.0.0.1:{metrics}"),
            "--tls-cert".into(),
            path(&leaf.cert),
            "--tls-key".into(),
            path(&leaf.key),
            "--max-connection-age".into(),
            "5m".into(),
        ],
    );
    let health: SocketAddr = format!("127.0.0.1:{health}").parse().unwrap();
    wait_until(
        "the processor's health port to report SERVING",
        || async move { status(health, "").await == Some(ServingStatus::Serving) },
    )
    .await;
    let main: SocketAddr = format!("127.0.0.1:{grpc}").parse().unwrap();
    assert_eq!(
        status(main, "").await,
        None,
        "the main port speaks TLS only"
    );
    let exposition = wait_for("the processor's /metrics", || {
        flowplane_tests::process::scrape(metrics)
    })
    .await;
    assert!(
        exposition.contains("# HELP flowplane_processor_in_flight_chunks "),
        "{exposition}"
    );
    let samples = flowplane_tests::process::samples(&exposition);
    assert_eq!(
        flowplane_tests::process::value(&samples, "flowplane_processor_in_flight_chunks", &[]),
        Some(0.0),
        "present at 0 before the first chunk"
    );
}

/// Checks health over TLS at `addr`, verifying the server's certificate for `name` (what a
/// client that dialled `name` in the cluster verifies), trusting `ca`.
async fn tls_check_as(addr: SocketAddr, ca: &std::path::Path, name: &str) -> Result<(), String> {
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(
            std::fs::read(ca).unwrap(),
        ))
        .domain_name(name);
    let channel = tonic::transport::Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))?;
    HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .map(drop)
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn make_certs_covers_the_names_the_kubernetes_manifests_dial() {
    let dir = tempfile::tempdir().unwrap();
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/scripts/certs.sh");
    let made = std::process::Command::new("bash")
        .arg(&script)
        .env("CERTS_DIR", dir.path())
        .output()
        .expect("run deploy/scripts/certs.sh");
    assert!(made.status.success(), "{made:?}");
    let ca = dir.path().join("ca.pem");
    // service certificate -> names deploy/k8s dials it by (namespace flowplane).
    let cases = [
        (
            "control-plane",
            &[
                "flowplane-control-plane",
                "flowplane-control-plane.flowplane.svc",
            ][..],
        ),
        (
            "processor",
            &[
                "flowplane-processor-0.flowplane-processor.flowplane.svc",
                "flowplane-processor-9.flowplane-processor.flowplane.svc",
            ][..],
        ),
        (
            "pipeline",
            &["flowplane-pipeline", "flowplane-pipeline.flowplane.svc"][..],
        ),
    ];
    for (service, names) in cases {
        let serve = flowplane_grpc::config::ServeArgs {
            tls_cert: Some(dir.path().join(format!("{service}.pem"))),
            tls_key: Some(dir.path().join(format!("{service}.key"))),
            ..Default::default()
        };
        let listener = local_listener().await;
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let server = GrpcServer::new()
            .unwrap()
            .with_tls(serve.server_tls().unwrap())
            .with_routes(Routes::default());
        let served = tokio::spawn(server.serve(listener, stop.clone().cancelled_owned()));
        for name in names {
            tls_check_as(addr, &ca, name)
                .await
                .unwrap_or_else(|e| panic!("{service} certificate for {name}: {e}"));
        }
        // The wildcard covers one label only, and no other namespace.
        for wrong in [
            "flowplane-processor-0.flowplane-processor.other.svc",
            "a.b.flowplane-processor.flowplane.svc",
        ] {
            assert!(
                tls_check_as(addr, &ca, wrong).await.is_err(),
                "{service} certificate must not pass for {wrong}"
            );
        }
        stop.cancel();
        served.await.unwrap().unwrap();
    }
}
