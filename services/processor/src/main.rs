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
use flowplane_grpc::config::{ClientArgs, ServeArgs};
use flowplane_processor::Config;

/// Exit code for invalid settings (EX_USAGE).
const EXIT_USAGE: u8 = 64;

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

    /// Control plane to register with, HOST:PORT or URI; unset serves without registering.
    #[arg(long, env = "FLOWPLANE_CONTROL_PLANE", value_name = "URL")]
    control_plane: Option<String>,

    /// Component id to register as; unset lets the control plane assign one.
    #[arg(long, env = "FLOWPLANE_ID", value_name = "ID")]
    id: Option<String>,

    /// Join token for the control plane's register RPCs; unset falls back to --token.
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

    /// Label registered with the host, KEY=VALUE; repeat or separate with commas.
    #[arg(long = "label", env = "FLOWPLANE_LABELS", value_name = "KEY=VALUE", value_delimiter = ',', value_parser = parse_label)]
    labels: Vec<(String, String)>,
}

/// Parses `10s`, `500ms`, `2m`, `1h` or plain seconds.
fn parse_duration(raw: &str) -> Result<Duration, String> {
    let raw = raw.trim();
    let split = raw
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(raw.len());
    let (number, unit) = raw.split_at(split);
    let value: f64 = number.parse().map_err(|_| {
        format!("{raw:?} is not a duration: use e.g. 10s, 500ms, 2m or plain seconds")
    })?;
    let seconds = match unit {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        other => {
            return Err(format!(
                "unknown duration unit {other:?}: use ms, s, m or h"
            ));
        }
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{raw:?}: {e}"))
}

fn parse_label(raw: &str) -> Result<(String, String), String> {
    match raw.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!("{raw:?} is not KEY=VALUE")),
    }
}

fn config(args: &Args) -> anyhow::Result<Config> {
    let config = Config {
        name: "flowplane-processor".into(),
        processors: args
            .processors
            .iter()
            .map(|p| p.trim().to_string())
            .filter(|p| !p.is_empty())
            .collect(),
        control_plane: args.control_plane.clone().filter(|c| !c.is_empty()),
        client: args.client.clone(),
        id: args.id.clone(),
        join_token: args
            .join_token
            .clone()
            .or_else(|| args.client.token.clone())
            .filter(|t| !t.is_empty()),
        labels: args.labels.iter().cloned().collect(),
        advertise: args.serve.advertise.clone(),
        tls: args.serve.server_tls()?,
        grace_period: args.grace_period,
        max_streams: args.max_streams,
    };
    config.validate()?;
    Ok(config)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match config(&args) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("flowplane-processor: {error}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("flowplane-processor: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(args, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("flowplane-processor: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: Args, config: Config) -> anyhow::Result<()> {
    let _telemetry = flowplane_telemetry::init("flowplane-processor", &args.telemetry)?;
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
    flowplane_processor::run(config, listener, shutdown.cancelled_owned()).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_into_a_config() {
        let args = Args::try_parse_from([
            "flowplane-processor",
            "--control-plane",
            "127.0.0.1:50051",
            "--processors",
            "passthrough, audio.gain",
            "--grace-period",
            "500ms",
            "--label",
            "zone=a,gpu=none",
            "--token",
            "t0k",
        ])
        .unwrap();
        let config = config(&args).unwrap();
        assert_eq!(config.processors, ["passthrough", "audio.gain"]);
        assert_eq!(config.grace_period, Duration::from_millis(500));
        assert_eq!(config.labels["zone"], "a");
        assert_eq!(config.join_token.as_deref(), Some("t0k"));
    }

    #[test]
    fn bad_values_name_the_flag() {
        let bad = Args::try_parse_from(["flowplane-processor", "--processors", "nope"]).unwrap();
        assert!(
            config(&bad)
                .unwrap_err()
                .to_string()
                .contains("--processors")
        );
        let err =
            Args::try_parse_from(["flowplane-processor", "--grace-period", "soon"]).unwrap_err();
        assert!(err.to_string().contains("--grace-period"), "{err}");
    }
}
