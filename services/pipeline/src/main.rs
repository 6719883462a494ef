//! `flowplane-pipeline`: parses flags, starts telemetry, binds, and runs the service.

use std::{net::SocketAddr, process::ExitCode, time::Duration};

use anyhow::Context;
use clap::Parser;
use flowplane_grpc::config::{ClientArgs, ServeArgs};
use flowplane_pipeline::{Config, RunnerSettings, ServiceLimits, SessionLimits};

/// The flowplane streaming pipeline service.
#[derive(Debug, Parser)]
#[command(name = "flowplane-pipeline", version, about)]
struct Cli {
    #[command(flatten)]
    serve: ServeArgs,

    #[command(flatten)]
    client: ClientArgs,

    #[command(flatten)]
    telemetry: flowplane_telemetry::TelemetryArgs,

    /// Control plane where processors are discovered, HOST:PORT or URI; a comma-separated
    /// list names replicas: the watch moves to the next when the one in use fails.
    #[arg(
        long,
        env = "FLOWPLANE_CONTROL_PLANE",
        default_value = "http://127.0.0.1:50051"
    )]
    control_plane: String,

    /// Bearer token clients must present on every data RPC; unset accepts all clients.
    /// With --token-file it is one more token with role data.
    #[arg(long, env = "FLOWPLANE_AUTH_TOKEN", hide_env_values = true)]
    auth_token: Option<String>,

    /// Sessions open at once before new ones get RESOURCE_EXHAUSTED.
    #[arg(long, env = "FLOWPLANE_MAX_SESSIONS", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    max_sessions: u32,

    /// Input chunks in flight per session (the backpressure window).
    #[arg(long, env = "FLOWPLANE_SESSION_WINDOW", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    session_window: u32,

    /// Payload bytes in flight per session, in MiB.
    #[arg(long, env = "FLOWPLANE_SESSION_WINDOW_MIB", default_value_t = 32, value_parser = clap::value_parser!(u32).range(4..))]
    session_window_mib: u32,

    /// Seconds a session may stay silent before it ends with DEADLINE_EXCEEDED.
    #[arg(long, env = "FLOWPLANE_IDLE_TIMEOUT_SECS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    idle_timeout_secs: u64,

    /// Seconds a node may take to send ready, or to answer its oldest outstanding chunk,
    /// before it fails over (or the session ends DEADLINE_EXCEEDED naming it).
    #[arg(long, env = "FLOWPLANE_NODE_TIMEOUT", default_value = "5s", value_parser = flowplane_grpc::config::parse_duration)]
    node_timeout: Duration,

    /// MiB of chunks and results held across all sessions; past it readers wait.
    #[arg(long, env = "FLOWPLANE_MEMORY_BUDGET_MIB", default_value_t = 512, value_parser = clap::value_parser!(u32).range(16..))]
    memory_budget_mib: u32,

    /// Seconds a new stream may take to send its init.
    #[arg(long, env = "FLOWPLANE_INIT_TIMEOUT_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    init_timeout_secs: u64,

    /// Trace one chunk in every N as its own span (0: none; the rest are aggregated).
    #[arg(long, env = "FLOWPLANE_CHUNK_SPAN_EVERY", default_value_t = 1000)]
    chunk_span_every: u64,

    /// Built-in processors this service hosts in-process, for nodes placed `local` (or
    /// `auto`): comma-separated names, or `all`. Unset hosts none, and every node runs on
    /// a remote processor host.
    #[arg(long, env = "FLOWPLANE_LOCAL_PROCESSORS", value_delimiter = ',')]
    local_processors: Vec<String>,

    /// Run standing pipelines: claim stored pipelines nobody runs and run them
    /// (`--standing false` leaves them to other replicas).
    #[arg(long, env = "FLOWPLANE_STANDING", default_value_t = true, action = clap::ArgAction::Set)]
    standing: bool,

    /// This replica's id in standing pipeline claims; unset picks a unique one.
    #[arg(long, env = "FLOWPLANE_RUNNER_ID")]
    runner_id: Option<String>,

    /// How long a standing pipeline's claim lasts without renewal: after a runner dies,
    /// another takes its pipelines over within about this long.
    #[arg(long, env = "FLOWPLANE_CLAIM_TTL", default_value = "5s", value_parser = flowplane_grpc::config::parse_duration)]
    claim_ttl: Duration,

    /// How long a consumer may take to acknowledge a delivery before the run starts
    /// over from the committed offsets.
    #[arg(long, env = "FLOWPLANE_ACK_TIMEOUT", default_value = "60s", value_parser = flowplane_grpc::config::parse_duration)]
    ack_timeout: Duration,

    /// Seconds open sessions may run on after SIGTERM.
    #[arg(long, env = "FLOWPLANE_GRACE_PERIOD_SECS", default_value_t = 10)]
    grace_period_secs: u64,
}

const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 50071);

fn config(cli: &Cli) -> anyhow::Result<Config> {
    if cli.node_timeout.is_zero() {
        anyhow::bail!("--node-timeout must be more than 0");
    }
    let mut client = cli.client.clone();
    client.load()?;
    let config = Config {
        control_plane: cli.control_plane.clone(),
        client,
        auth_token: cli.auth_token.clone().filter(|t| !t.is_empty()),
        tokens: cli.serve.tokens().context("--token-file")?,
        tls: cli.serve.server_tls()?,
        reflection: cli.serve.reflection,
        limits: ServiceLimits {
            max_sessions: cli.max_sessions as usize,
            init_timeout: Duration::from_secs(cli.init_timeout_secs),
            memory_budget: cli.memory_budget_mib as usize * 1024 * 1024,
            session: SessionLimits {
                node_timeout: cli.node_timeout,
                window: cli.session_window as usize,
                window_bytes: cli.session_window_mib as usize * 1024 * 1024,
                idle_timeout: Duration::from_secs(cli.idle_timeout_secs),
                chunk_span_every: cli.chunk_span_every,
                ..SessionLimits::default()
            },
        },
        grace_period: Duration::from_secs(cli.grace_period_secs),
        local_processors: cli
            .local_processors
            .iter()
            .map(|n| n.trim().to_string())
            .filter(|n| !n.is_empty())
            .collect(),
        standing: standing_settings(cli)?,
        probe: Default::default(),
    };
    flowplane_grpc::replicas::check(&config.control_plane, "--control-plane", &config.client)?;
    if !config.local_processors.is_empty() {
        // Names checked before any port is bound.
        flowplane_processors::local_host(&config.local_processors, "--local-processors")?;
    }
    Ok(config)
}

fn standing_settings(cli: &Cli) -> anyhow::Result<RunnerSettings> {
    let mut settings = RunnerSettings {
        enabled: cli.standing,
        ..RunnerSettings::default()
    };
    if let Some(id) = cli.runner_id.as_deref().map(str::trim) {
        if id.is_empty() || id.len() > 253 || id.chars().any(|c| !c.is_ascii_graphic()) {
            anyhow::bail!(
                "--runner-id must be 1 to 253 printable ascii characters without spaces, got {id:?}"
            );
        }
        settings.runner_id = id.to_string();
    }
    if !(Duration::from_secs(1)..=Duration::from_secs(60)).contains(&cli.claim_ttl) {
        anyhow::bail!("--claim-ttl must be between 1s and 60s");
    }
    if cli.ack_timeout < Duration::from_secs(1) {
        anyhow::bail!("--ack-timeout must be at least 1s");
    }
    settings.claim_ttl = cli.claim_ttl;
    settings.commit_interval = settings.commit_interval.min(cli.claim_ttl / 4);
    settings.ack_timeout = cli.ack_timeout;
    Ok(settings)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = config(&cli).map_err(|e| format!("{e:#}"));
    flowplane_grpc::binary::serve_main(
        "flowplane-pipeline",
        &cli.telemetry,
        &cli.serve,
        DEFAULT_LISTEN,
        config,
        flowplane_pipeline::run,
    )
}
