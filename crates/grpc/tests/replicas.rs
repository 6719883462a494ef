//! `Replicas` against live servers on 127.0.0.1: a call sticks to the replica in use,
//! moves to the next when that one is killed or was never there, makes one round and no
//! more when none answers, and stays put when a replica answers with a refusal.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use flowplane_grpc::{config::ClientArgs, replicas::Replicas, server::GrpcServer};
use tonic::{Code, Status, transport::Channel};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

/// A server with only health, on its own runtime and thread, so that dropping it kills
/// every connection at once, the way a process that dies does.
struct Server {
    addr: SocketAddr,
    kill: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Serves `service` (and the whole server) as SERVING.
    fn start(service: &'static str) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let (kill, killed) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let server = GrpcServer::new().unwrap();
                flowplane_grpc::server::set_serving(&server.health(), service).await;
                tokio::select! {
                    served = server.serve(listener, std::future::pending()) => served.unwrap(),
                    _ = killed => {}
                }
            });
            // Dropping the runtime here drops every connection task with it.
        });
        Self {
            addr,
            kill: Some(kill),
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn kill(mut self) {
        let _ = self.kill.take().unwrap().send(());
        self.thread.take().unwrap().join().unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(kill) = self.kill.take() {
            let _ = kill.send(());
        }
    }
}

/// A port on 127.0.0.1 that nothing listens on: bound, then released.
fn closed_port() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

/// Health-checks `service` through `replicas`, counting attempts; returns the replica
/// that answered.
async fn check(
    replicas: &Replicas,
    service: &str,
    attempts: &Arc<AtomicUsize>,
) -> Result<String, Status> {
    let (_, pick) = replicas
        .open(|channel: Channel| {
            attempts.fetch_add(1, Ordering::SeqCst);
            let service = service.to_string();
            async move {
                HealthClient::new(channel)
                    .check(HealthCheckRequest { service })
                    .await
            }
        })
        .await?;
    Ok(pick.replica)
}

#[tokio::test]
async fn a_closed_port_first_is_passed_over_and_the_next_replica_kept() {
    let live = Server::start("a");
    let closed = closed_port();
    let replicas = Replicas::new(
        &format!("{closed},{}", live.url()),
        "--control-plane",
        &ClientArgs::default(),
    )
    .unwrap();
    let attempts = Arc::new(AtomicUsize::new(0));
    assert_eq!(check(&replicas, "a", &attempts).await.unwrap(), live.url());
    assert_eq!(attempts.load(Ordering::SeqCst), 2, "closed port, then live");
    // The live replica stays in use: the next call makes one attempt.
    assert_eq!(check(&replicas, "a", &attempts).await.unwrap(), live.url());
    assert_eq!(attempts.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn killing_the_replica_in_use_moves_calls_to_the_next() {
    let a = Server::start("svc");
    let b = Server::start("svc");
    let (a_url, b_url) = (a.url(), b.url());
    let replicas = Replicas::new(
        &format!("{a_url},{b_url}"),
        "--control-plane",
        &ClientArgs::default(),
    )
    .unwrap();
    let attempts = Arc::new(AtomicUsize::new(0));
    assert_eq!(check(&replicas, "svc", &attempts).await.unwrap(), a_url);
    a.kill();
    // The connection to A is gone: the same call fails there and is answered by B.
    assert_eq!(check(&replicas, "svc", &attempts).await.unwrap(), b_url);
    assert_eq!(attempts.load(Ordering::SeqCst), 3);
    assert_eq!(replicas.pick().await.replica, b_url);
}

#[tokio::test]
async fn no_replica_answering_ends_after_one_round() {
    let list = format!("{},{},{}", closed_port(), closed_port(), closed_port());
    let replicas = Replicas::new(&list, "--control-plane", &ClientArgs::default()).unwrap();
    let attempts = Arc::new(AtomicUsize::new(0));
    let status = check(&replicas, "", &attempts).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(attempts.load(Ordering::SeqCst), 3, "one round, no more");
    assert!(status.message().contains("3 tried"), "{status:?}");
    assert!(status.message().contains("--control-plane"), "{status:?}");
    // A later call starts a new round from the first entry.
    let status = check(&replicas, "", &attempts).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(attempts.load(Ordering::SeqCst), 6);
}

#[tokio::test]
async fn a_refusal_is_an_answer_and_does_not_move() {
    let a = Server::start("only-on-a");
    let b = Server::start("only-on-b");
    let replicas = Replicas::new(
        &format!("{},{}", a.url(), b.url()),
        "--control-plane",
        &ClientArgs::default(),
    )
    .unwrap();
    let attempts = Arc::new(AtomicUsize::new(0));
    // A does not know this service: NOT_FOUND is its answer, not a reason to ask B.
    let status = check(&replicas, "only-on-b", &attempts).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
    assert_eq!(attempts.load(Ordering::SeqCst), 1);
    assert_eq!(replicas.pick().await.replica, a.url());
}
