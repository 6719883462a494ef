//! The streaming pipeline service: validates a pipeline, places each node on a live
//! processor instance found through the control plane, and routes every chunk through
//! the nodes and back to the client, in order, with nothing lost.

mod budget;
mod directory;
mod error;
pub mod instruments;
mod node;
mod queue;
pub mod sequencer;
mod service;
mod session;
pub mod standing;

use std::{
    future::Future,
    sync::{Arc, OnceLock},
    time::Duration,
};

use flowplane_grpc::{
    auth::{Access, AccessTable, Policy, Role, Tokens},
    config::ClientArgs,
    lifecycle::Lifecycle,
    server::{GrpcServer, set_not_serving, set_serving},
};
use flowplane_proto::streaming::v1::streaming_pipeline_service_server::StreamingPipelineServiceServer;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{service::Routes, transport::ServerTlsConfig};

pub use directory::{Directory, Instance};
pub use error::{Error, Result};
pub use service::{PipelineService, ServiceLimits, SessionStream};
pub use session::SessionLimits;
pub use standing::RunnerSettings;

/// The gRPC service name health reports on.
pub const SERVICE_NAME: &str = "flowplane.streaming.v1.StreamingPipelineService";

/// The role each RPC needs when the pipeline is secured: every data RPC needs `data`.
pub const ACCESS: &AccessTable = &[
    (
        "/flowplane.streaming.v1.StreamingPipelineService/StreamPipeline",
        Access::Needs(Role::Data),
    ),
    (
        "/flowplane.streaming.v1.StreamingPipelineService/ExecutePipeline",
        Access::Needs(Role::Data),
    ),
    (
        "/flowplane.streaming.v1.StreamingPipelineService/ValidatePipeline",
        Access::Needs(Role::Data),
    ),
];

/// The auth policy for these settings: a token file and `--auth-token` (one more `data`
/// token) both secure the data RPCs by [`ACCESS`]; neither leaves the pipeline open.
pub fn auth_policy(tokens: Option<&Tokens>, auth_token: Option<&str>) -> Option<Policy> {
    let auth_token = auth_token.filter(|t| !t.is_empty());
    let tokens = match (tokens, auth_token) {
        (Some(tokens), auth_token) => {
            let mut tokens = tokens.clone();
            if let Some(auth_token) = auth_token {
                tokens.add(auth_token, Role::Data);
            }
            tokens
        }
        (None, Some(auth_token)) => Tokens::single(auth_token, Role::Data),
        (None, None) => return None,
    };
    Some(Policy::new(tokens, ACCESS))
}

/// Everything `run` needs.
#[derive(Clone, Debug)]
pub struct Config {
    /// Control plane address, `host:port` or URI, or a comma-separated list of replicas.
    pub control_plane: String,
    /// Token and TLS trust used towards the control plane and processors.
    pub client: ClientArgs,
    /// Bearer token clients must present; `None` accepts every client.
    pub auth_token: Option<String>,
    /// Tokens by role (`--token-file`); when set, the data RPCs need a `data` token.
    pub tokens: Option<Tokens>,
    /// TLS identity; `None` serves plaintext.
    pub tls: Option<ServerTlsConfig>,
    /// Serve reflection (`--reflection`), listing this service, health and reflection.
    pub reflection: bool,
    /// Session and service limits.
    pub limits: ServiceLimits,
    /// How long open sessions may run on after shutdown starts.
    pub grace_period: Duration,
    /// Built-in processors this service hosts in-process for nodes placed `local` or
    /// `auto` (`--local-processors`; `all` is every one, empty is none).
    pub local_processors: Vec<String>,
    /// How this replica runs standing pipelines (claimed from the control plane).
    pub standing: RunnerSettings,
    /// Filled with the running service, so tests and embedders can read its state.
    pub probe: ServiceProbe,
}

/// A read-only view of a running service: open sessions and memory budget in use.
/// Cheap to clone; empty until `run` starts.
#[derive(Clone, Debug, Default)]
pub struct ServiceProbe {
    service: Arc<OnceLock<PipelineService>>,
}

impl ServiceProbe {
    /// Sessions open now (0 before the service runs).
    pub fn active_sessions(&self) -> usize {
        self.service
            .get()
            .map_or(0, PipelineService::active_sessions)
    }

    /// Bytes held in the memory budget now.
    pub fn budget_used(&self) -> usize {
        self.service.get().map_or(0, PipelineService::budget_used)
    }

    /// Sessions that have queued `closed` and wait for the client's stream to take it.
    pub fn sessions_awaiting_delivery(&self) -> usize {
        self.service
            .get()
            .map_or(0, PipelineService::sessions_awaiting_delivery)
    }

    /// Sessions ended with `code` so far (what `flowplane_pipeline_sessions_total` counts).
    pub fn sessions_ended(&self, code: tonic::Code) -> usize {
        self.service.get().map_or(0, |s| s.sessions_ended(code))
    }
}

impl Config {
    /// Defaults for a control plane at `control_plane`.
    pub fn new(control_plane: impl Into<String>) -> Self {
        Self {
            control_plane: control_plane.into(),
            client: ClientArgs::default(),
            auth_token: None,
            tokens: None,
            tls: None,
            reflection: true,
            limits: ServiceLimits::default(),
            grace_period: Duration::from_secs(10),
            local_processors: Vec::new(),
            standing: RunnerSettings::default(),
            probe: ServiceProbe::default(),
        }
    }
}

/// Serves the pipeline service on `listener` until `shutdown` resolves; then reports
/// NOT_SERVING, refuses new sessions at once (UNAVAILABLE), lets open sessions finish
/// within the grace period and ends the rest.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let replicas = flowplane_grpc::replicas::Replicas::new(
        &config.control_plane,
        "--control-plane",
        &config.client,
    )?;
    instruments::describe();
    let stop = CancellationToken::new();
    let local = if config.local_processors.is_empty() {
        None
    } else {
        let host =
            flowplane_processors::local_host(&config.local_processors, "--local-processors")?;
        // Its streams count in this service's /metrics, as a remote host's do in its own.
        flowplane_sdk::stats::describe();
        tracing::info!(processors = ?host.capabilities().iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), "hosting processors in-process for local placement");
        Some(host)
    };
    let directory = Directory::with_local(config.client.clone(), local.clone());
    directory.watch(replicas.clone(), stop.child_token());
    let lifecycle = Lifecycle::new();
    let service = PipelineService::new(directory.clone(), config.limits.clone(), lifecycle.clone());
    let runner_stop = CancellationToken::new();
    let runner = if config.standing.enabled {
        standing::describe();
        tracing::info!(runner_id = %config.standing.runner_id, "running standing pipelines");
        Some(
            standing::spawn(
                service.clone(),
                directory,
                replicas,
                config.standing.clone(),
                runner_stop.clone(),
            )
            .map_err(|status| Error::InvalidInput(status.message().to_string()))?,
        )
    } else {
        None
    };
    let _ = config.probe.service.set(service.clone());
    let server = GrpcServer::new()?
        .with_tls(config.tls.clone())
        .with_reflection(config.reflection, &[SERVICE_NAME])
        .with_auth(auth_policy(
            config.tokens.as_ref(),
            config.auth_token.as_deref(),
        ));
    let health = server.health();
    set_serving(&health, SERVICE_NAME).await;
    let grpc = StreamingPipelineServiceServer::new(service.clone())
        .max_decoding_message_size(flowplane_grpc::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(flowplane_grpc::MAX_MESSAGE_BYTES);
    let routes = Routes::new(grpc);
    let grace = config.grace_period;
    let drain = async move {
        shutdown.await;
        set_not_serving(&health, SERVICE_NAME).await;
        // Standing runs first: each commits what it finished and gives its claim back,
        // so another replica takes over at once instead of after the claim's ttl.
        runner_stop.cancel();
        if let Some(runner) = runner
            && tokio::time::timeout(grace, runner).await.is_err()
        {
            tracing::warn!("standing runs did not stop within the grace period");
        }
        tracing::info!(
            sessions = service.active_sessions(),
            grace_period = ?grace,
            "draining sessions"
        );
        let left = lifecycle.drain(grace).await;
        if left > 0 {
            tracing::warn!(sessions = left, "grace period over, ending open sessions");
        }
        // Every session has ended, and with it every local stream but one still
        // answering its last chunks: those end now.
        if let Some(local) = &local {
            local.abort_streams();
        }
        stop.cancel();
    };
    server.with_routes(routes).serve(listener, drain).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rpc_is_in_the_access_table() {
        assert_eq!(
            flowplane_grpc::auth::unlisted_methods(SERVICE_NAME, ACCESS),
            Vec::<String>::new()
        );
    }
}
