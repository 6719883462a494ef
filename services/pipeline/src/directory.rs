//! The live view of processor instances, kept from the control plane's WatchComponents
//! stream (never a poll per session). Sessions pick instances here; when the control
//! plane is unreachable the last view stays in use, so new sessions still start. Beside
//! the remote instances it holds the pipeline service's embedded host, when it has one:
//! the one local instance, for nodes placed `local` (or `auto`). With
//! several control-plane replicas the watch follows the one in use; when it fails the
//! watch opens on the next (`flowplane_grpc::replicas`), whose first message is a full
//! snapshot that replaces the view. This module never blocks a session on the control
//! plane.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use flowplane_grpc::{
    auth::AttachBearer,
    client::{TracedChannel, lazy_traced_channel},
    config::ClientArgs,
    replicas::Replicas,
    retry::{self, Backoff, Retry},
};
use flowplane_manifest::{Capabilities, Placement};
use flowplane_proto::{
    common::v1::{ComponentKind, HealthStatus},
    controlplane::v1::{
        Component, WatchComponentsRequest, control_plane_service_client::ControlPlaneServiceClient,
        watch_components_response::Event,
    },
    processor::v1::ProcessorCapability,
};
use tokio_util::sync::CancellationToken;
use tonic::codegen::InterceptedService;

/// One processor host a node can run on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    /// Component id of the host.
    pub id: String,
    /// Where it serves ProcessorService.
    pub endpoint: String,
    /// This registration of the host (id and registration time): a host that restarts
    /// under the same id is a new registration, so a session that gave up on the old
    /// one may use it again.
    pub registration: String,
    /// The embedded host, reached in memory instead of over gRPC.
    pub local: bool,
}

/// The instance id a local node reports.
pub const LOCAL_INSTANCE: &str = "local";
/// The endpoint a local node reports.
pub const LOCAL_ENDPOINT: &str = "in-process";
/// The embedded host's registration key: no component id has parentheses.
const LOCAL_REGISTRATION: &str = "(in-process)";

/// Counts node streams per instance while a guard lives, for least-loaded picking.
pub struct LoadGuard {
    directory: Arc<Directory>,
    id: String,
}

impl Drop for LoadGuard {
    fn drop(&mut self) {
        let mut load = self.directory.load.lock().expect("load lock");
        if let Some(n) = load.get_mut(&self.id) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                load.remove(&self.id);
            }
        }
    }
}

/// The processor instances the control plane currently offers.
pub struct Directory {
    components: RwLock<HashMap<String, Component>>,
    load: Mutex<HashMap<String, usize>>,
    channels: Mutex<HashMap<String, TracedChannel>>,
    round_robin: AtomicUsize,
    client: ClientArgs,
    local: Option<flowplane_sdk::ProcessorHost>,
    /// What the embedded host serves, read once: every session start asks.
    local_capabilities: Vec<ProcessorCapability>,
}

impl Directory {
    /// An empty directory; fill it with [`Directory::watch`] or [`Directory::replace`].
    pub fn new(client: ClientArgs) -> Arc<Self> {
        Self::with_local(client, None)
    }

    /// An empty directory whose `local` host runs the nodes placed on it.
    pub fn with_local(
        client: ClientArgs,
        local: Option<flowplane_sdk::ProcessorHost>,
    ) -> Arc<Self> {
        Arc::new(Self {
            components: RwLock::new(HashMap::new()),
            load: Mutex::new(HashMap::new()),
            channels: Mutex::new(HashMap::new()),
            round_robin: AtomicUsize::new(0),
            client,
            local_capabilities: local
                .as_ref()
                .map(flowplane_sdk::ProcessorHost::capabilities)
                .unwrap_or_default(),
            local,
        })
    }

    /// The embedded host, if the service has one.
    pub fn local_host(&self) -> Option<&flowplane_sdk::ProcessorHost> {
        self.local.as_ref()
    }

    fn hosts_locally(&self, processor: &str) -> bool {
        self.local_capabilities.iter().any(|c| c.name == processor)
    }

    /// Picks where a node of `placement` runs: the embedded host for `local`, and for
    /// `auto` when it hosts the processor, else a remote instance ([`Directory::pick`]).
    /// A registration in `exclude` is not picked again, the local one included, so a
    /// local node that failed moves to a remote host under `auto`.
    pub fn place(
        &self,
        processor: &str,
        placement: Placement,
        exclude: &[String],
    ) -> Option<Instance> {
        let local_ok = self.hosts_locally(processor)
            && !exclude.iter().any(|r| r == LOCAL_REGISTRATION)
            && self.local.as_ref().is_some_and(|h| !h.is_draining());
        let local = || Instance {
            id: LOCAL_INSTANCE.into(),
            endpoint: LOCAL_ENDPOINT.into(),
            registration: LOCAL_REGISTRATION.into(),
            local: true,
        };
        match placement {
            Placement::Local => local_ok.then(local),
            Placement::Auto if local_ok => Some(local()),
            Placement::Auto | Placement::Remote | Placement::Unknown(_) => {
                self.pick(processor, exclude)
            }
        }
    }

    /// Keeps the view in step with the control plane at `replicas` until `stop` fires,
    /// moving to the next replica when the one in use fails and backing off (capped)
    /// after a round in which none answered. The last view is kept while disconnected.
    pub fn watch(self: &Arc<Self>, replicas: Replicas, stop: CancellationToken) {
        let directory = self.clone();
        tokio::spawn(async move {
            let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
            let mut refused_with = None;
            loop {
                let attempt = directory.watch_once(&replicas);
                let outcome = tokio::select! {
                    _ = stop.cancelled() => return,
                    outcome = attempt => outcome,
                };
                let delay = match outcome {
                    Ok(true) => {
                        backoff.reset();
                        refused_with = None;
                        backoff.next_delay()
                    }
                    Ok(false) => backoff.next_delay(),
                    Err(status) => match retry::classify(&status) {
                        // A refusal (bad token, bad request) will not fix itself soon: say
                        // so once, then ask again only at the longest interval.
                        Retry::Fatal => {
                            if refused_with.replace(status.code()) != Some(status.code()) {
                                tracing::error!(
                                    control_plane = ?replicas,
                                    code = ?status.code(),
                                    error = %status.message(),
                                    "control plane refused the watch (check --token); keeping the last view"
                                );
                            }
                            backoff.max()
                        }
                        Retry::Transient => {
                            tracing::warn!(
                                control_plane = ?replicas,
                                code = ?status.code(),
                                error = %status.message(),
                                "control plane watch failed, keeping the last view"
                            );
                            backoff.next_delay()
                        }
                    },
                };
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        });
    }

    /// One watch stream, opened on the replica in use or the next ones; returns whether
    /// it delivered anything before ending. A stream that breaks because its replica is
    /// gone moves the next watch to the next replica.
    async fn watch_once(&self, replicas: &Replicas) -> Result<bool, tonic::Status> {
        let auth = AttachBearer::new(self.client.token.as_deref())?;
        let (mut stream, pick) = replicas
            .open(|channel| {
                let mut client = ControlPlaneServiceClient::with_interceptor(
                    flowplane_grpc::client::traced(channel),
                    auth.clone(),
                )
                .max_decoding_message_size(flowplane_grpc::MAX_MESSAGE_BYTES);
                async move {
                    client
                        .watch_components(WatchComponentsRequest {
                            kind: ComponentKind::Processor as i32,
                            capability: String::new(),
                        })
                        .await
                        .map(tonic::Response::into_inner)
                }
            })
            .await?;
        tracing::debug!(control_plane = %pick.replica, "watching the control plane");
        let mut delivered = false;
        loop {
            let message = match stream.message().await {
                Ok(Some(message)) => message,
                Ok(None) => break,
                Err(status) => {
                    replicas.failed(&pick, &status).await;
                    return Err(status);
                }
            };
            delivered = true;
            match message.event {
                Some(Event::Snapshot(snapshot)) => self.replace(snapshot.components),
                Some(Event::Added(c)) | Some(Event::Updated(c)) => self.upsert(c),
                Some(Event::Removed(removed)) => {
                    if let Some(c) = removed.component {
                        self.remove(&c.id);
                    }
                }
                None => {}
            }
        }
        Ok(delivered)
    }

    /// Replaces the whole view.
    pub fn replace(&self, components: Vec<Component>) {
        let mut view = self.components.write().expect("view lock");
        *view = components.into_iter().map(|c| (c.id.clone(), c)).collect();
        tracing::debug!(instances = view.len(), "processor view replaced");
    }

    /// Adds or updates one component.
    pub fn upsert(&self, component: Component) {
        self.components
            .write()
            .expect("view lock")
            .insert(component.id.clone(), component);
    }

    /// Removes one component.
    pub fn remove(&self, id: &str) {
        self.components.write().expect("view lock").remove(id);
    }

    /// Whether `id` is still offered for discovery.
    pub fn is_available(&self, id: &str) -> bool {
        self.components
            .read()
            .expect("view lock")
            .get(id)
            .is_some_and(available)
    }

    /// Picks an instance for `processor`, skipping the registrations in `exclude`: the
    /// least-loaded of the healthy ones (degraded ones only when no healthy one is left),
    /// round robin on ties.
    pub fn pick(&self, processor: &str, exclude: &[String]) -> Option<Instance> {
        let view = self.components.read().expect("view lock");
        let load = self.load.lock().expect("load lock");
        let mut candidates: Vec<&Component> = view
            .values()
            .filter(|c| available(c) && offers(c, processor) && !exclude.contains(&registration(c)))
            .collect();
        if candidates
            .iter()
            .any(|c| c.status == HealthStatus::Healthy as i32)
        {
            candidates.retain(|c| c.status == HealthStatus::Healthy as i32);
        }
        candidates.sort_by(|a, b| a.id.cmp(&b.id));
        let least = candidates
            .iter()
            .map(|c| load.get(&c.id).copied().unwrap_or(0))
            .min()?;
        let tied: Vec<&&Component> = candidates
            .iter()
            .filter(|c| load.get(&c.id).copied().unwrap_or(0) == least)
            .collect();
        let turn = self.round_robin.fetch_add(1, Ordering::Relaxed);
        let chosen = tied[turn % tied.len()];
        Some(Instance {
            id: chosen.id.clone(),
            endpoint: chosen.endpoint.clone(),
            registration: registration(chosen),
            local: false,
        })
    }

    /// Counts a node stream against `instance` until the guard drops.
    pub fn hold(self: &Arc<Self>, instance: &Instance) -> LoadGuard {
        *self
            .load
            .lock()
            .expect("load lock")
            .entry(instance.id.clone())
            .or_default() += 1;
        LoadGuard {
            directory: self.clone(),
            id: instance.id.clone(),
        }
    }

    /// A shared channel to `endpoint` (one HTTP/2 connection per instance); over TLS
    /// when the pipeline's client settings carry TLS (see `client::peer_address`).
    pub fn channel(&self, endpoint: &str) -> flowplane_grpc::Result<TracedChannel> {
        let mut channels = self.channels.lock().expect("channel lock");
        if let Some(channel) = channels.get(endpoint) {
            return Ok(channel.clone());
        }
        let address = flowplane_grpc::client::peer_address(endpoint, &self.client);
        let channel = lazy_traced_channel(&address, &self.client)?;
        channels.insert(endpoint.to_string(), channel.clone());
        Ok(channel)
    }

    /// Forgets the channel to `endpoint` after its instance failed, so the next use reconnects.
    pub fn forget_channel(&self, endpoint: &str) {
        self.channels.lock().expect("channel lock").remove(endpoint);
    }

    /// The client token and TLS settings used towards processors.
    pub fn client_args(&self) -> &ClientArgs {
        &self.client
    }

    /// A client to a processor host with flowplane's limits and auth.
    pub fn processor_client(
        &self,
        endpoint: &str,
    ) -> Result<
        flowplane_proto::processor::v1::processor_service_client::ProcessorServiceClient<
            InterceptedService<TracedChannel, AttachBearer>,
        >,
        tonic::Status,
    > {
        let channel = self
            .channel(endpoint)
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let auth = AttachBearer::new(self.client.token.as_deref())?;
        Ok(
            flowplane_proto::processor::v1::processor_service_client::ProcessorServiceClient::with_interceptor(
                channel, auth,
            )
            .max_decoding_message_size(flowplane_grpc::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(flowplane_grpc::MAX_MESSAGE_BYTES),
        )
    }
}

impl Directory {
    fn remote_capability(&self, processor: &str) -> Option<ProcessorCapability> {
        let view = self.components.read().expect("view lock");
        let mut offering: Vec<&Component> = view
            .values()
            .filter(|c| available(c) && offers(c, processor))
            .collect();
        offering.sort_by(|a, b| a.id.cmp(&b.id));
        offering
            .first()
            .and_then(|c| c.capabilities.iter().find(|p| p.name == processor).cloned())
    }

    fn local_capability(&self, processor: &str) -> Option<ProcessorCapability> {
        self.local_capabilities
            .iter()
            .find(|c| c.name == processor)
            .cloned()
    }
}

impl Capabilities for Directory {
    /// A live remote instance's, else the embedded host's.
    fn capability(&self, processor: &str) -> Option<ProcessorCapability> {
        self.remote_capability(processor)
            .or_else(|| self.local_capability(processor))
    }

    /// What the node will run with: the embedded host's for `local` (and for `auto`
    /// when it hosts the processor), a remote instance's for `remote`.
    fn capability_for(&self, processor: &str, placement: Placement) -> Option<ProcessorCapability> {
        match placement {
            Placement::Local => self.local_capability(processor),
            Placement::Auto => self
                .local_capability(processor)
                .or_else(|| self.remote_capability(processor)),
            Placement::Remote | Placement::Unknown(_) => self.remote_capability(processor),
        }
    }

    fn local_processors(&self) -> Option<Vec<String>> {
        Some(
            self.local_capabilities
                .iter()
                .map(|c| c.name.clone())
                .collect(),
        )
    }

    fn processor_names(&self) -> Vec<String> {
        let view = self.components.read().expect("view lock");
        let mut names: std::collections::BTreeSet<String> = view
            .values()
            .filter(|c| available(c))
            .flat_map(|c| c.capabilities.iter().map(|p| p.name.clone()))
            .collect();
        names.extend(self.local_processors().unwrap_or_default());
        names.into_iter().collect()
    }
}

/// The key of one registration of a component: its id and when it registered.
fn registration(c: &Component) -> String {
    match &c.registered_at {
        Some(t) => format!("{}@{}.{:09}", c.id, t.seconds, t.nanos),
        None => c.id.clone(),
    }
}

/// HEALTHY and DEGRADED instances are offered; STARTING, UNHEALTHY and STOPPING are not.
fn available(c: &Component) -> bool {
    c.status == HealthStatus::Healthy as i32 || c.status == HealthStatus::Degraded as i32
}

fn offers(c: &Component, processor: &str) -> bool {
    c.capabilities.iter().any(|p| p.name == processor)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(id: &str, status: HealthStatus, processors: &[&str]) -> Component {
        Component {
            id: id.into(),
            endpoint: format!("{id}:1"),
            status: status as i32,
            capabilities: processors
                .iter()
                .map(|p| ProcessorCapability {
                    name: (*p).into(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn picks_least_loaded_healthy_instance_and_skips_excluded() {
        let dir = Directory::new(ClientArgs::default());
        dir.replace(vec![
            host("a", HealthStatus::Healthy, &["p"]),
            host("b", HealthStatus::Healthy, &["p"]),
            host("c", HealthStatus::Degraded, &["p"]),
            host("d", HealthStatus::Stopping, &["p"]),
            host("e", HealthStatus::Healthy, &["q"]),
        ]);
        let first = dir.pick("p", &[]).unwrap();
        let _held = dir.hold(&first);
        let second = dir.pick("p", &[]).unwrap();
        assert_ne!(first.id, second.id, "least loaded goes to the idle host");
        assert!(["a", "b"].contains(&second.id.as_str()));
        // With both healthy hosts excluded, the degraded one is used; never the stopping one.
        let fallback = dir.pick("p", &["a".into(), "b".into()]).unwrap();
        assert_eq!(
            fallback.registration, "c",
            "no registration time: the id is the key"
        );
        assert_eq!(fallback.id, "c");
        assert!(
            dir.pick("p", &["a".into(), "b".into(), "c".into()])
                .is_none()
        );
        assert!(dir.capability("q").is_some());
        assert!(dir.capability("nope").is_none());
    }

    #[test]
    fn placement_picks_the_embedded_host_or_a_remote_one() {
        let remote_only = Directory::new(ClientArgs::default());
        remote_only.replace(vec![host("a", HealthStatus::Healthy, &["passthrough"])]);
        assert!(
            remote_only
                .place("passthrough", Placement::Local, &[])
                .is_none()
        );
        assert_eq!(
            remote_only
                .place("passthrough", Placement::Auto, &[])
                .unwrap()
                .id,
            "a"
        );
        assert_eq!(remote_only.local_processors(), Some(Vec::new()));

        let local = flowplane_processors::local_host(&["passthrough".into()], "--local-processors")
            .unwrap();
        let dir = Directory::with_local(ClientArgs::default(), Some(local));
        dir.replace(vec![host(
            "a",
            HealthStatus::Healthy,
            &["passthrough", "q"],
        )]);
        let here = dir.place("passthrough", Placement::Local, &[]).unwrap();
        assert!(here.local);
        assert_eq!(
            (here.id.as_str(), here.endpoint.as_str()),
            ("local", "in-process")
        );
        assert!(
            dir.place("passthrough", Placement::Auto, &[])
                .unwrap()
                .local
        );
        assert_eq!(
            dir.place("passthrough", Placement::Remote, &[]).unwrap().id,
            "a"
        );
        // Failed over: `auto` moves to a remote host, `local` has nowhere to go.
        let failed = [here.registration.clone()];
        assert_eq!(
            dir.place("passthrough", Placement::Auto, &failed)
                .unwrap()
                .id,
            "a"
        );
        assert!(
            dir.place("passthrough", Placement::Local, &failed)
                .is_none()
        );
        // Not hosted locally: `auto` is remote, `local` nothing.
        assert_eq!(dir.place("q", Placement::Auto, &[]).unwrap().id, "a");
        assert!(dir.place("q", Placement::Local, &[]).is_none());
        assert!(dir.capability_for("q", Placement::Local).is_none());
        assert!(dir.capability_for("q", Placement::Remote).is_some());
        assert_eq!(
            dir.local_processors(),
            Some(vec!["passthrough".to_string()])
        );
    }

    #[test]
    fn a_restarted_host_is_a_new_registration_and_usable_again() {
        let dir = Directory::new(ClientArgs::default());
        let mut first = host("a", HealthStatus::Healthy, &["p"]);
        first.registered_at = Some(prost_types::Timestamp {
            seconds: 100,
            nanos: 0,
        });
        dir.replace(vec![first.clone()]);
        let failed = dir.pick("p", &[]).unwrap();
        assert!(
            dir.pick("p", std::slice::from_ref(&failed.registration))
                .is_none()
        );
        // Same id, registered again after a restart.
        let mut again = first;
        again.registered_at = Some(prost_types::Timestamp {
            seconds: 160,
            nanos: 5,
        });
        dir.upsert(again);
        let picked = dir
            .pick("p", std::slice::from_ref(&failed.registration))
            .unwrap();
        assert_eq!(picked.id, "a");
        assert_ne!(picked.registration, failed.registration);
    }

    #[test]
    fn load_guard_releases_on_drop() {
        let dir = Directory::new(ClientArgs::default());
        dir.replace(vec![host("a", HealthStatus::Healthy, &["p"])]);
        let inst = dir.pick("p", &[]).unwrap();
        {
            let _g1 = dir.hold(&inst);
            let _g2 = dir.hold(&inst);
            assert_eq!(dir.load.lock().unwrap()["a"], 2);
        }
        assert!(dir.load.lock().unwrap().get("a").is_none());
    }
}
