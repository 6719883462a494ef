//! The control plane: processors, sources and consumers register under leases and
//! heartbeat; the pipeline service and people discover, list and watch them here.
//! This crate owns the registry semantics; it never imports another service.
//!
//! Liveness, on the server's clock: a component shows what it last reported; two
//! heartbeat intervals without a heartbeat (its heartbeat is late by more than one
//! interval) shows UNHEALTHY; a whole lease TTL of silence removes it (REMOVED, EXPIRED).
//!
//! Beside the registry, on the same server, it stores standing pipelines ([`standing`]):
//! in redb with the memory registry, in etcd with the etcd one.

pub mod clock;
mod error;
pub mod instruments;
pub mod model;
pub mod paging;
pub mod registry;
mod service;
pub mod standing;
mod watch;

use std::{future::Future, path::PathBuf, time::Duration};

use flowplane_grpc::{
    auth::{Access, AccessTable, Policy, Role, Tokens},
    server::{GrpcServer, set_not_serving, set_serving},
};
use tokio::net::TcpListener;
use tonic::{service::Routes, transport::ServerTlsConfig};

pub use error::{Error, Result, Violation, error_detail};
pub use registry::{EtcdRegistry, EtcdSettings, LeaseSettings, MemoryRegistry, Registry};
pub use service::ControlPlane;
pub use standing::{Pipelines, SERVICE_NAME as STANDING_SERVICE_NAME};
pub use watch::WatchStream;

/// Fully qualified name of the service, as health checks and reflection know it.
pub const SERVICE_NAME: &str = "flowplane.controlplane.v1.ControlPlaneService";

/// Every service this server serves, as health checks and reflection know them.
pub const SERVICE_NAMES: [&str; 2] = [SERVICE_NAME, STANDING_SERVICE_NAME];

/// The role each RPC needs when the control plane has a token file. Components hold
/// `register` for their whole lease (heartbeat and deregister included); `read` is for
/// whoever discovers them: the pipeline, the CLI, dashboards. Standing pipelines: reading
/// them needs `read`; changing them, and running one (claim, commit, release), `register`.
pub const ACCESS: &AccessTable = &[
    (
        "/flowplane.controlplane.v1.ControlPlaneService/RegisterProcessor",
        Access::Needs(Role::Register),
    ),
    (
        "/flowplane.controlplane.v1.ControlPlaneService/ProcessorHeartbeat",
        Access::Needs(Role::Register),
    ),
    (
        "/flowplane.controlplane.v1.ControlPlaneService/RegisterSource",
        Access::Needs(Role::Register),
    ),
    (
        "/flowplane.controlplane.v1.ControlPlaneService/SourceHeartbeat",
        Access::Needs(Role::Register),
    ),
    (
        "/flowplane.controlplane.v1.ControlPlaneService/RegisterConsumer",
        Access::Needs(Role::Register),
    ),
    (
        "/flowplane.controlplane.v1.ControlPlaneService/ConsumerHeartbeat",
        Access::Needs(Role::Register),
    ),
    (
        "/flowplane.controlplane.v1.ControlPlaneService/Deregister",
        Access::Needs(Role::Register),
    ),
    (
        "/flowplane.controlplane.v1.ControlPlaneService/GetComponent",
        Access::Needs(Role::Read),
    ),
    (
        "/flowplane.controlplane.v1.ControlPlaneService/ListComponents",
        Access::Needs(Role::Read),
    ),
    (
        "/flowplane.controlplane.v1.ControlPlaneService/WatchComponents",
        Access::Needs(Role::Read),
    ),
    (
        "/flowplane.controlplane.v1.StandingPipelineService/GetPipeline",
        Access::Needs(Role::Read),
    ),
    (
        "/flowplane.controlplane.v1.StandingPipelineService/ListPipelines",
        Access::Needs(Role::Read),
    ),
    (
        "/flowplane.controlplane.v1.StandingPipelineService/ApplyPipeline",
        Access::Needs(Role::Register),
    ),
    (
        "/flowplane.controlplane.v1.StandingPipelineService/PausePipeline",
        Access::Needs(Role::Register),
    ),
    (
        "/flowplane.controlplane.v1.StandingPipelineService/ResumePipeline",
        Access::Needs(Role::Register),
    ),
    (
        "/flowplane.controlplane.v1.StandingPipelineService/DeletePipeline",
        Access::Needs(Role::Register),
    ),
    (
        "/flowplane.controlplane.v1.StandingPipelineService/ResetPipelineOffsets",
        Access::Needs(Role::Register),
    ),
    (
        "/flowplane.controlplane.v1.StandingPipelineService/ClaimPipeline",
        Access::Needs(Role::Register),
    ),
    (
        "/flowplane.controlplane.v1.StandingPipelineService/CommitPipeline",
        Access::Needs(Role::Register),
    ),
    (
        "/flowplane.controlplane.v1.StandingPipelineService/ReleasePipeline",
        Access::Needs(Role::Register),
    ),
];

/// With only `--join-token` (no token file) the control plane behaves as it always
/// has: the three register RPCs need the join token, heartbeats are guarded by the lease
/// token alone, and the registry can be read by anyone. Standing pipelines likewise: anyone
/// may read them, and every change (runners' claims and commits too) needs the join token.
const JOIN_TOKEN_ONLY: &AccessTable = &[
    (
        "/flowplane.controlplane.v1.ControlPlaneService/RegisterProcessor",
        Access::Needs(Role::Register),
    ),
    (
        "/flowplane.controlplane.v1.ControlPlaneService/RegisterSource",
        Access::Needs(Role::Register),
    ),
    (
        "/flowplane.controlplane.v1.ControlPlaneService/RegisterConsumer",
        Access::Needs(Role::Register),
    ),
    (
        "/flowplane.controlplane.v1.ControlPlaneService/ProcessorHeartbeat",
        Access::Open,
    ),
    (
        "/flowplane.controlplane.v1.ControlPlaneService/SourceHeartbeat",
        Access::Open,
    ),
    (
        "/flowplane.controlplane.v1.ControlPlaneService/ConsumerHeartbeat",
        Access::Open,
    ),
    (
        "/flowplane.controlplane.v1.ControlPlaneService/Deregister",
        Access::Open,
    ),
    (
        "/flowplane.controlplane.v1.ControlPlaneService/GetComponent",
        Access::Open,
    ),
    (
        "/flowplane.controlplane.v1.ControlPlaneService/ListComponents",
        Access::Open,
    ),
    (
        "/flowplane.controlplane.v1.ControlPlaneService/WatchComponents",
        Access::Open,
    ),
    (
        "/flowplane.controlplane.v1.StandingPipelineService/GetPipeline",
        Access::Open,
    ),
    (
        "/flowplane.controlplane.v1.StandingPipelineService/ListPipelines",
        Access::Open,
    ),
    (
        "/flowplane.controlplane.v1.StandingPipelineService/ApplyPipeline",
        Access::Needs(Role::Register),
    ),
    (
        "/flowplane.controlplane.v1.StandingPipelineService/PausePipeline",
        Access::Needs(Role::Register),
    ),
    (
        "/flowplane.controlplane.v1.StandingPipelineService/ResumePipeline",
        Access::Needs(Role::Register),
    ),
    (
        "/flowplane.controlplane.v1.StandingPipelineService/DeletePipeline",
        Access::Needs(Role::Register),
    ),
    (
        "/flowplane.controlplane.v1.StandingPipelineService/ResetPipelineOffsets",
        Access::Needs(Role::Register),
    ),
    (
        "/flowplane.controlplane.v1.StandingPipelineService/ClaimPipeline",
        Access::Needs(Role::Register),
    ),
    (
        "/flowplane.controlplane.v1.StandingPipelineService/CommitPipeline",
        Access::Needs(Role::Register),
    ),
    (
        "/flowplane.controlplane.v1.StandingPipelineService/ReleasePipeline",
        Access::Needs(Role::Register),
    ),
];

/// The auth policy for these settings: a token file secures every RPC by [`ACCESS`]
/// (a join token beside it is one more `register` token); a join token alone guards the
/// register RPCs only; neither leaves the control plane open.
pub fn auth_policy(tokens: Option<&Tokens>, join_token: Option<&str>) -> Option<Policy> {
    let join_token = join_token.filter(|t| !t.is_empty());
    match (tokens, join_token) {
        (Some(tokens), join_token) => {
            let mut tokens = tokens.clone();
            if let Some(join_token) = join_token {
                tokens.add(join_token, Role::Register);
            }
            Some(Policy::new(tokens, ACCESS))
        }
        (None, Some(join_token)) => Some(Policy::new(
            Tokens::single(join_token, Role::Register),
            JOIN_TOKEN_ONLY,
        )),
        (None, None) => None,
    }
}

/// Default lease TTL.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(15);
/// Shortest lease TTL accepted.
pub const MIN_LEASE_TTL: Duration = Duration::from_millis(100);
/// Longest lease TTL accepted.
pub const MAX_LEASE_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// Default most live components.
pub const DEFAULT_MAX_COMPONENTS: usize = 100_000;

/// Where the registry lives.
#[derive(Clone, Debug, Default)]
pub enum Backend {
    /// In this process's memory: one replica, nothing else to run (the default).
    #[default]
    Memory,
    /// In etcd: any number of replicas with the same settings serve one registry.
    Etcd(EtcdSettings),
}

impl Backend {
    /// Parses `--registry`: `memory` or `etcd://HOST:PORT[,HOST:PORT...]`.
    pub fn parse(raw: &str) -> Result<Self> {
        match raw.trim() {
            "memory" => Ok(Backend::Memory),
            other => EtcdSettings::from_url(other).map(Backend::Etcd),
        }
    }
}

/// Everything the control plane needs to run.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where the registry lives (`--registry`).
    pub registry: Backend,
    /// How long a lease lives without a heartbeat; heartbeats are due every third of it.
    pub lease_ttl: Duration,
    /// When set, the register RPCs need `authorization: Bearer <join_token>`.
    pub join_token: Option<String>,
    /// Tokens by role (`--token-file`); when set, every RPC needs a token (see [`ACCESS`]).
    pub tokens: Option<Tokens>,
    /// Most live components; registrations beyond it get RESOURCE_EXHAUSTED.
    pub max_components: usize,
    /// Changes buffered per watcher before it is told to resync.
    pub watch_buffer: usize,
    /// TLS identity; `None` serves plaintext.
    pub tls: Option<ServerTlsConfig>,
    /// Serve reflection (`--reflection`), listing this service, health and reflection.
    pub reflection: bool,
    /// Where the memory registry keeps standing pipelines (`--data-dir`): the redb file
    /// `standing.redb` in it, owned by this one process. `None` keeps them in memory, gone
    /// with the process (tests, embedders); the binary defaults to `flowplane-data`. Must
    /// be `None` with an etcd registry, which keeps them in etcd.
    pub data_dir: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            registry: Backend::Memory,
            lease_ttl: DEFAULT_LEASE_TTL,
            join_token: None,
            tokens: None,
            max_components: DEFAULT_MAX_COMPONENTS,
            watch_buffer: registry::DEFAULT_WATCH_BUFFER,
            tls: None,
            reflection: true,
            data_dir: None,
        }
    }
}

impl Config {
    /// Checks the settings, naming the flag of the first bad one.
    pub fn validate(&self) -> Result<()> {
        if !(MIN_LEASE_TTL..=MAX_LEASE_TTL).contains(&self.lease_ttl) {
            return Err(Error::Config(format!(
                "--lease-ttl must be between {MIN_LEASE_TTL:?} and {MAX_LEASE_TTL:?}, got {:?}",
                self.lease_ttl
            )));
        }
        if let Some(dir) = &self.data_dir {
            if dir.as_os_str().is_empty() {
                return Err(Error::Config("--data-dir must not be empty".into()));
            }
            if matches!(self.registry, Backend::Etcd(_)) {
                return Err(Error::Config(
                    "--data-dir is for the memory --registry: with etcd, standing pipelines live in etcd".into(),
                ));
            }
        }
        if let Backend::Etcd(etcd) = &self.registry {
            etcd.validate()?;
            let ttl = self.lease_ttl;
            if ttl < registry::etcd::MIN_ETCD_LEASE_TTL || ttl.subsec_nanos() != 0 {
                return Err(Error::Config(format!(
                    "--lease-ttl must be a whole number of seconds, at least {:?}, with an etcd --registry (etcd grants leases in seconds), got {ttl:?}",
                    registry::etcd::MIN_ETCD_LEASE_TTL
                )));
            }
        }
        if self.max_components == 0 {
            return Err(Error::Config("--max-components must be at least 1".into()));
        }
        if self.watch_buffer == 0 {
            return Err(Error::Config("--watch-buffer must be at least 1".into()));
        }
        if self
            .join_token
            .as_deref()
            .is_some_and(|t| t.is_empty() || t.chars().any(|c| !c.is_ascii_graphic()))
        {
            return Err(Error::Config(
                "--join-token must be non-empty printable ascii without spaces".into(),
            ));
        }
        Ok(())
    }
}

/// Serves the control plane on `listener` until `shutdown` resolves, over the registry
/// `config` names. On shutdown: health goes NOT_SERVING, watches end cleanly, in-flight
/// calls finish, then this returns.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    config.validate()?;
    let control_plane = ControlPlane::build(&config).await?;
    serve_with(
        control_plane,
        config.tls,
        config.reflection,
        listener,
        shutdown,
    )
    .await
}

/// Like [`run`], for a [`ControlPlane`] built by the caller (another registry backend,
/// or a test that keeps a handle on the registry).
pub async fn serve(
    control_plane: ControlPlane,
    tls: Option<ServerTlsConfig>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    serve_with(control_plane, tls, true, listener, shutdown).await
}

async fn serve_with(
    control_plane: ControlPlane,
    tls: Option<ServerTlsConfig>,
    reflection: bool,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    instruments::describe();
    let address = listener
        .local_addr()
        .map_or_else(|_| "unknown".to_string(), |a| a.to_string());
    let stop = control_plane.shutdown_token();
    let sweeper = control_plane.spawn_sweeper();
    let gauge = spawn_pipeline_gauge(control_plane.pipelines().clone(), stop.clone());
    let standing = standing::StandingService::new(control_plane.pipelines().clone());
    let server = GrpcServer::new()?
        .with_routes(
            Routes::new(control_plane.clone().into_server()).add_service(standing.into_server()),
        )
        .with_auth(control_plane.auth().cloned())
        .with_reflection(reflection, &SERVICE_NAMES)
        .with_tls(tls);
    let health = server.health();
    // A registry that can lose its store (etcd) decides health; the memory one is
    // always current.
    let follower = match control_plane.registry().serving() {
        None => {
            for name in SERVICE_NAMES {
                set_serving(&health, name).await;
            }
            None
        }
        Some(mut serving) => {
            let health = health.clone();
            let stop = stop.clone();
            Some(tokio::spawn(async move {
                loop {
                    let now = *serving.borrow_and_update();
                    for name in SERVICE_NAMES {
                        if now {
                            set_serving(&health, name).await;
                        } else {
                            set_not_serving(&health, name).await;
                        }
                    }
                    tokio::select! {
                        () = stop.cancelled() => break,
                        changed = serving.changed() => if changed.is_err() { break },
                    }
                }
            }))
        }
    };
    let settings = control_plane.registry().settings();
    tracing::info!(
        address = %address,
        lease_ttl = ?settings.ttl,
        heartbeat_interval = ?settings.heartbeat_interval,
        "control plane serving"
    );
    let drain = {
        let stop = stop.clone();
        async move {
            shutdown.await;
            tracing::info!("control plane draining");
            for name in SERVICE_NAMES {
                set_not_serving(&health, name).await;
            }
            stop.cancel();
        }
    };
    let served = server.serve(listener, drain).await;
    stop.cancel();
    let _ = sweeper.await;
    let _ = gauge.await;
    if let Some(follower) = follower {
        let _ = follower.await;
    }
    tracing::info!("control plane stopped");
    served.map_err(Error::from)
}

/// How often the standing pipeline gauge is read again from the store, for pipelines
/// other replicas (sharing etcd) applied or deleted.
const PIPELINE_GAUGE_EVERY: Duration = Duration::from_secs(15);

fn spawn_pipeline_gauge(
    pipelines: Pipelines,
    stop: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            pipelines.refresh_gauge().await;
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(PIPELINE_GAUGE_EVERY) => {}
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_validation_names_the_flag() {
        let short = Config {
            lease_ttl: Duration::from_millis(10),
            ..Config::default()
        };
        assert!(
            short
                .validate()
                .unwrap_err()
                .to_string()
                .contains("--lease-ttl")
        );
        let full = Config {
            max_components: 0,
            ..Config::default()
        };
        assert!(
            full.validate()
                .unwrap_err()
                .to_string()
                .contains("--max-components")
        );
        let token = Config {
            join_token: Some("has space".into()),
            ..Config::default()
        };
        assert!(
            token
                .validate()
                .unwrap_err()
                .to_string()
                .contains("--join-token")
        );
        assert!(Config::default().validate().is_ok());
    }

    #[test]
    fn a_join_token_alone_guards_registration_only_and_joins_a_token_file_as_register() {
        let headers = |token: Option<&str>| {
            let mut headers = http::HeaderMap::new();
            if let Some(token) = token {
                headers.insert("authorization", format!("Bearer {token}").parse().unwrap());
            }
            headers
        };
        let register = "/flowplane.controlplane.v1.ControlPlaneService/RegisterProcessor";
        let heartbeat = "/flowplane.controlplane.v1.ControlPlaneService/ProcessorHeartbeat";
        let list = "/flowplane.controlplane.v1.ControlPlaneService/ListComponents";

        assert!(auth_policy(None, None).is_none());
        assert!(auth_policy(None, Some("")).is_none());
        let join_only = auth_policy(None, Some("j")).unwrap();
        assert!(join_only.check(register, &headers(Some("j"))).is_ok());
        assert!(join_only.check(register, &headers(None)).is_err());
        assert!(join_only.check(heartbeat, &headers(None)).is_ok());
        assert!(join_only.check(list, &headers(None)).is_ok());

        let file = Tokens::parse("r read\n", std::path::Path::new("t")).unwrap();
        let both = auth_policy(Some(&file), Some("j")).unwrap();
        assert!(both.check(register, &headers(Some("j"))).is_ok());
        assert!(both.check(heartbeat, &headers(Some("j"))).is_ok());
        assert!(both.check(heartbeat, &headers(None)).is_err());
        assert!(both.check(list, &headers(Some("r"))).is_ok());
        assert!(matches!(
            both.check(list, &headers(Some("j"))),
            Err(flowplane_grpc::Error::RoleRequired(Role::Read))
        ));
    }

    #[test]
    fn every_rpc_is_in_the_access_tables() {
        for service in SERVICE_NAMES {
            assert_eq!(
                flowplane_grpc::auth::unlisted_methods(service, ACCESS),
                Vec::<String>::new()
            );
            assert_eq!(
                flowplane_grpc::auth::unlisted_methods(service, JOIN_TOKEN_ONLY),
                Vec::<String>::new()
            );
        }
        // The check is not vacuous: the standing service has methods, and all are listed.
        let standing = ACCESS
            .iter()
            .filter(|(path, _)| {
                path.starts_with("/flowplane.controlplane.v1.StandingPipelineService/")
            })
            .count();
        assert_eq!(standing, 10);
    }

    #[test]
    fn standing_pipelines_are_read_with_read_and_changed_with_register() {
        let headers = |token: &str| {
            let mut headers = http::HeaderMap::new();
            headers.insert("authorization", format!("Bearer {token}").parse().unwrap());
            headers
        };
        let file = Tokens::parse("r read\nw register\n", std::path::Path::new("t")).unwrap();
        let policy = auth_policy(Some(&file), None).unwrap();
        let path = |m: &str| format!("/{STANDING_SERVICE_NAME}/{m}");
        for read in ["GetPipeline", "ListPipelines"] {
            assert!(policy.check(&path(read), &headers("r")).is_ok(), "{read}");
        }
        for write in [
            "ApplyPipeline",
            "PausePipeline",
            "ResumePipeline",
            "DeletePipeline",
            "ResetPipelineOffsets",
            "ClaimPipeline",
            "CommitPipeline",
            "ReleasePipeline",
        ] {
            assert!(
                matches!(
                    policy.check(&path(write), &headers("r")),
                    Err(flowplane_grpc::Error::RoleRequired(Role::Register))
                ),
                "{write}"
            );
            assert!(policy.check(&path(write), &headers("w")).is_ok(), "{write}");
        }
        let join_only = auth_policy(None, Some("j")).unwrap();
        assert!(
            join_only
                .check(&path("ListPipelines"), &http::HeaderMap::new())
                .is_ok()
        );
        assert!(
            join_only
                .check(&path("ApplyPipeline"), &http::HeaderMap::new())
                .is_err()
        );
    }

    #[test]
    fn a_data_dir_is_for_the_memory_registry_only() {
        let etcd = Config {
            registry: Backend::parse("etcd://127.0.0.1:2379").unwrap(),
            data_dir: Some("somewhere".into()),
            ..Config::default()
        };
        assert!(
            etcd.validate()
                .unwrap_err()
                .to_string()
                .contains("--data-dir")
        );
        let empty = Config {
            data_dir: Some(PathBuf::new()),
            ..Config::default()
        };
        assert!(
            empty
                .validate()
                .unwrap_err()
                .to_string()
                .contains("--data-dir")
        );
    }
}
