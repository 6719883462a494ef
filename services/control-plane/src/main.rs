//! `flowplane-control-plane`: parses settings (flags over `FLOWPLANE_*` environment over
//! defaults), initialises telemetry, binds and runs the control plane until a signal.
//! Invalid settings exit non-zero, naming the flag, before any port is bound.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    process::ExitCode,
    time::Duration,
};

use anyhow::Context;
use clap::Parser;
use flowplane_control_plane::{
    Config, DEFAULT_MAX_COMPONENTS, parse_duration, registry::DEFAULT_WATCH_BUFFER,
};
use flowplane_grpc::config::ServeArgs;
use flowplane_telemetry::TelemetryArgs;

/// Exit code for invalid settings (EX_USAGE).
const EXIT_USAGE: u8 = 64;

const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 50051);

/// The flowplane control plane: registration, leases, heartbeats, discovery and watch.
#[derive(Debug, Parser)]
#[command(name = "flowplane-control-plane", version, about)]
struct Args {
    #[command(flatten)]
    serve: ServeArgs,

    #[command(flatten)]
    telemetry: TelemetryArgs,

    /// Lease TTL: a component silent this long is removed; heartbeats are due every third
    /// of it. Accepts 15s, 500ms, 2m, 1h or plain seconds.
    #[arg(long, env = "FLOWPLANE_LEASE_TTL", value_name = "DURATION", default_value = "15s", value_parser = parse_duration)]
    lease_ttl: Duration,

    /// Token the register RPCs must present as `authorization: Bearer <token>`; unset accepts any.
    #[arg(
        long,
        env = "FLOWPLANE_JOIN_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    join_token: Option<String>,

    /// Most live components; registrations beyond it get RESOURCE_EXHAUSTED.
    #[arg(long, env = "FLOWPLANE_MAX_COMPONENTS", value_name = "N", default_value_t = DEFAULT_MAX_COMPONENTS)]
    max_components: usize,

    /// Changes buffered per watcher before it is sent a fresh snapshot.
    #[arg(long, env = "FLOWPLANE_WATCH_BUFFER", value_name = "N", default_value_t = DEFAULT_WATCH_BUFFER)]
    watch_buffer: usize,
}

fn config(args: &Args) -> anyhow::Result<Config> {
    let config = Config {
        lease_ttl: args.lease_ttl,
        join_token: args.join_token.clone().filter(|t| !t.is_empty()),
        max_components: args.max_components,
        watch_buffer: args.watch_buffer,
        tls: args.serve.server_tls()?,
    };
    config.validate()?;
    Ok(config)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match config(&args) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("flowplane-control-plane: {error:#}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("flowplane-control-plane: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(args, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("flowplane-control-plane: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: Args, config: Config) -> anyhow::Result<()> {
    let telemetry = flowplane_telemetry::init("flowplane-control-plane", &args.telemetry)?;
    let shutdown = flowplane_grpc::shutdown::on_signals();
    flowplane_telemetry::metrics::spawn(
        args.serve.metrics_listen,
        shutdown.clone().cancelled_owned(),
    )
    .await?;
    let listen = args.serve.listen_or(DEFAULT_LISTEN);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} (--listen)"))?;
    let served = flowplane_control_plane::run(config, listener, shutdown.cancelled_owned()).await;
    if let Err(error) = &served {
        tracing::error!(%error, "control plane failed");
    }
    telemetry.shutdown().await;
    Ok(served?)
}
