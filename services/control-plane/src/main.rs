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
use flowplane_control_plane::{Config, DEFAULT_MAX_COMPONENTS, registry::DEFAULT_WATCH_BUFFER};
use flowplane_grpc::config::{ServeArgs, parse_duration};
use flowplane_telemetry::TelemetryArgs;

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

    /// Token the register RPCs must present as `authorization: Bearer <token>`; unset accepts
    /// any. With --token-file it is one more token with role register.
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
        tokens: args.serve.tokens().context("--token-file")?,
        max_components: args.max_components,
        watch_buffer: args.watch_buffer,
        tls: args.serve.server_tls()?,
        reflection: args.serve.reflection,
    };
    config.validate()?;
    Ok(config)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = config(&args).map_err(|e| format!("{e:#}"));
    flowplane_grpc::binary::serve_main(
        "flowplane-control-plane",
        &args.telemetry,
        &args.serve,
        DEFAULT_LISTEN,
        config,
        flowplane_control_plane::run,
    )
}
