//! `flowplane-processor`: parses settings (flags over `FLOWPLANE_*` environment over
//! defaults), initialises telemetry, binds and serves the built-in processors until a
//! signal. Invalid settings exit non-zero, naming the flag, before any port is bound.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    process::ExitCode,
    time::Duration,
};

use anyhow::Context;
use clap::Parser;
use flowplane_grpc::config::{ClientArgs, ServeArgs, parse_duration};
use flowplane_processor::Config;

const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 50061);

/// Hosts flowplane's built-in processors behind ProcessorService.
#[derive(Debug, Parser)]
#[command(name = "flowplane-processor", version, about)]
struct Args {
    #[command(flatten)]
    serve: ServeArgs,

    #[command(flatten)]
    client: ClientArgs,

    #[command(flatten)]
    telemetry: flowplane_telemetry::TelemetryArgs,

    /// Control plane to register with, HOST:PORT or URI; a comma-separated list names
    /// replicas, tried in order when the one in use fails. Unset serves without registering.
    #[arg(long, env = "FLOWPLANE_CONTROL_PLANE", value_name = "URL")]
    control_plane: Option<String>,

    /// Component id to register as; unset lets the control plane assign one.
    #[arg(long, env = "FLOWPLANE_ID", value_name = "ID")]
    id: Option<String>,

    /// Join token for the control plane's register RPCs; unset falls back to the client
    /// token (--client-token-file or --token).
    #[arg(
        long,
        env = "FLOWPLANE_JOIN_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    join_token: Option<String>,

    /// Comma-separated processors to serve; unset serves every built-in.
    #[arg(
        long,
        env = "FLOWPLANE_PROCESSORS",
        value_name = "NAMES",
        value_delimiter = ','
    )]
    processors: Vec<String>,

    /// How long open streams may go on after SIGTERM: 10s, 500ms, 2m or plain seconds.
    #[arg(long, env = "FLOWPLANE_GRACE_PERIOD", value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    grace_period: Duration,

    /// Open streams above which the host reports itself DEGRADED.
    #[arg(
        long,
        env = "FLOWPLANE_MAX_STREAMS",
        value_name = "N",
        default_value_t = 1024
    )]
    max_streams: usize,

    /// Processor calls run at once over all streams, off the async workers; more wait
    /// and their streams stop reading (backpressure).
    #[arg(
        long,
        env = "FLOWPLANE_MAX_CONCURRENT_CALLS",
        value_name = "N",
        default_value_t = 64
    )]
    max_concurrent_calls: usize,

    /// Label registered with the host, KEY=VALUE; repeat or separate with commas.
    #[arg(long = "label", env = "FLOWPLANE_LABELS", value_name = "KEY=VALUE", value_delimiter = ',', value_parser = parse_label)]
    labels: Vec<(String, String)>,
}

fn parse_label(raw: &str) -> Result<(String, String), String> {
    match raw.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!("{raw:?} is not KEY=VALUE")),
    }
}

fn config(args: &Args) -> anyhow::Result<Config> {
    let mut client = args.client.clone();
    client.load()?;
    let config = Config {
        name: "flowplane-processor".into(),
        processors: args
            .processors
            .iter()
            .map(|p| p.trim().to_string())
            .filter(|p| !p.is_empty())
            .collect(),
        control_plane: args.control_plane.clone().filter(|c| !c.is_empty()),
        id: args.id.clone(),
        join_token: args
            .join_token
            .clone()
            .or_else(|| client.token.clone())
            .filter(|t| !t.is_empty()),
        client,
        labels: args.labels.iter().cloned().collect(),
        advertise: args.serve.advertise.clone(),
        tls: args.serve.server_tls()?,
        grace_period: args.grace_period,
        max_streams: args.max_streams,
        max_concurrent_calls: args.max_concurrent_calls,
        tokens: args.serve.tokens().context("--token-file")?,
        reflection: args.serve.reflection,
    };
    config.validate()?;
    Ok(config)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = config(&args).map_err(|e| format!("{e:#}"));
    flowplane_grpc::binary::serve_main(
        "flowplane-processor",
        &args.telemetry,
        &args.serve,
        DEFAULT_LISTEN,
        config,
        flowplane_processor::run,
    )
}
