//! Control-plane replicas for failover tests. Each replica serves on its own runtime and
//! thread, so killing one drops its listener and every open connection at once, the way
//! a process that dies does (a graceful stop would end watches cleanly instead). Replicas
//! may share one registry, as replicas over one store do; [`Observed`] wraps a registry
//! to record what reached it through one replica.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use flowplane_control_plane::{
    ControlPlane, Registry,
    model::{ComponentId, Heartbeat, LeaseToken, ListFilter, Registration, WatchFilter},
    registry::{Lease, LeaseSettings, Page, Subscription},
};
use tokio::time::Instant as TokioInstant;

/// A control plane on its own runtime; killed on drop.
pub struct Replica {
    /// Where it listens.
    pub addr: SocketAddr,
    kill: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Replica {
    /// A replica with its own in-memory registry.
    pub fn alone(lease_ttl: Duration) -> Self {
        let config = flowplane_control_plane::Config {
            lease_ttl,
            ..Default::default()
        };
        Self::spawn(move |listener| async move {
            flowplane_control_plane::run(config, listener, std::future::pending())
                .await
                .expect("control plane runs");
        })
    }

    /// A replica serving `registry`, which other replicas may serve too.
    pub fn over(registry: Arc<dyn Registry>) -> Self {
        Self::spawn(move |listener| async move {
            let control_plane = ControlPlane::with_registry(registry, None);
            flowplane_control_plane::serve(control_plane, None, listener, std::future::pending())
                .await
                .expect("control plane runs");
        })
    }

    fn spawn<F, Fut>(serve: F) -> Self
    where
        F: FnOnce(tokio::net::TcpListener) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let (kill, killed) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                let serving = tokio::spawn(serve(listener));
                let _ = killed.await;
                serving.abort();
            });
            // No graceful stop: dropping the runtime drops every connection task it holds.
            runtime.shutdown_background();
        });
        Self {
            addr,
            kill: Some(kill),
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Kills the replica: listener and connections close at once; returns when they have.
    pub fn kill(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(kill) = self.kill.take() {
            let _ = kill.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What reached a registry through one replica: registrations, and the lease token and
/// arrival time of every heartbeat.
#[derive(Default)]
pub struct Seen {
    /// Register calls (first registrations and registering again).
    pub registrations: usize,
    /// Heartbeats: the token presented and when it arrived.
    pub heartbeats: Vec<(LeaseToken, Instant)>,
}

/// A registry that records [`Seen`] and passes every call on to the shared one.
pub struct Observed {
    inner: Arc<dyn Registry>,
    seen: Mutex<Seen>,
}

impl Observed {
    /// Observes `inner`.
    pub fn new(inner: Arc<dyn Registry>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            seen: Mutex::new(Seen::default()),
        })
    }

    /// Reads what was seen so far.
    pub fn seen<T>(&self, read: impl FnOnce(&Seen) -> T) -> T {
        read(&self.seen.lock().expect("seen lock"))
    }
}

#[async_trait::async_trait]
impl Registry for Observed {
    async fn register(&self, registration: Registration) -> flowplane_control_plane::Result<Lease> {
        self.seen.lock().expect("seen lock").registrations += 1;
        self.inner.register(registration).await
    }

    async fn heartbeat(&self, heartbeat: Heartbeat) -> flowplane_control_plane::Result<Lease> {
        self.seen
            .lock()
            .expect("seen lock")
            .heartbeats
            .push((heartbeat.lease_token.clone(), Instant::now()));
        self.inner.heartbeat(heartbeat).await
    }

    async fn deregister(
        &self,
        id: &ComponentId,
        token: &LeaseToken,
    ) -> flowplane_control_plane::Result<()> {
        self.inner.deregister(id, token).await
    }

    async fn get(
        &self,
        id: &ComponentId,
    ) -> flowplane_control_plane::Result<flowplane_control_plane::model::Component> {
        self.inner.get(id).await
    }

    async fn list(
        &self,
        filter: &ListFilter,
        after: Option<&ComponentId>,
        limit: usize,
    ) -> flowplane_control_plane::Result<Page> {
        self.inner.list(filter, after, limit).await
    }

    async fn subscribe(
        &self,
        filter: &WatchFilter,
    ) -> flowplane_control_plane::Result<Subscription> {
        self.inner.subscribe(filter).await
    }

    async fn sweep(&self) -> flowplane_control_plane::Result<Option<TokioInstant>> {
        self.inner.sweep().await
    }

    fn settings(&self) -> LeaseSettings {
        self.inner.settings()
    }
}
