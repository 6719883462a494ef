//! The one-call entry point of a processor host binary: [`main`] (or [`Main`] to set the
//! description and default address) parses every standard flag and `FLOWPLANE_*`
//! variable, exits with EX_USAGE naming the flag before any port is bound, then does what
//! every flowplane server does (`flowplane_grpc::binary::serve_main`: telemetry first,
//! /metrics, signals, bind, serve, drain, flush). The built-in `flowplane-processor` is
//! this with the built-in processors, so a custom host can never fall behind it.

use std::{
    ffi::OsString,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    process::ExitCode,
    time::Duration,
};

use clap::{Args as _, FromArgMatches as _};
use flowplane_grpc::config::{ClientArgs, ServeArgs, parse_duration};
use flowplane_telemetry::TelemetryArgs;

use crate::{ConnectorHost, ConnectorHostBuilder, HostBuilder, HostConfig, ProcessorHost};

/// Where [`Main`] listens unless `--listen` says otherwise: a port the OS picks on
/// 127.0.0.1, logged in the `processor host serving` line and registered with the
/// control plane, so any number of custom hosts start side by side without a clash.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);

/// The flags of a processor host: the server's (`ServeArgs`), the client's towards the
/// control plane (`ClientArgs`), telemetry's, and the host's own below.
#[derive(Clone, clap::Args)]
pub struct HostArgs {
    #[command(flatten)]
    pub serve: ServeArgs,

    #[command(flatten)]
    pub client: ClientArgs,

    #[command(flatten)]
    pub telemetry: TelemetryArgs,

    /// Control plane to register with, HOST:PORT or URI; a comma-separated list names
    /// replicas, tried in order when the one in use fails. Unset serves without registering.
    #[arg(long, env = "FLOWPLANE_CONTROL_PLANE", value_name = "URL")]
    pub control_plane: Option<String>,

    /// Component id to register as; unset lets the control plane assign one.
    #[arg(long, env = "FLOWPLANE_ID", value_name = "ID")]
    pub id: Option<String>,

    /// Join token for the control plane's register RPCs; unset falls back to the client
    /// token (--client-token-file or --token).
    #[arg(
        long,
        env = "FLOWPLANE_JOIN_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub join_token: Option<String>,

    /// Comma-separated processors to serve; unset serves every one this host has.
    #[arg(
        long,
        env = "FLOWPLANE_PROCESSORS",
        value_name = "NAMES",
        value_delimiter = ','
    )]
    pub processors: Vec<String>,

    /// How long open streams may go on after SIGTERM: 10s, 500ms, 2m or plain seconds.
    #[arg(long, env = "FLOWPLANE_GRACE_PERIOD", value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub grace_period: Duration,

    /// Open streams above which the host reports itself DEGRADED.
    #[arg(
        long,
        env = "FLOWPLANE_MAX_STREAMS",
        value_name = "N",
        default_value_t = 1024
    )]
    pub max_streams: usize,

    /// Processor calls run at once over all streams, off the async workers; more wait
    /// and their streams stop reading (backpressure).
    #[arg(
        long,
        env = "FLOWPLANE_MAX_CONCURRENT_CALLS",
        value_name = "N",
        default_value_t = crate::DEFAULT_MAX_CONCURRENT_CALLS
    )]
    pub max_concurrent_calls: usize,

    /// Label registered with the host, KEY=VALUE; repeat or separate with commas.
    #[arg(long = "label", env = "FLOWPLANE_LABELS", value_name = "KEY=VALUE", value_delimiter = ',', value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
}

fn parse_label(raw: &str) -> Result<(String, String), String> {
    match raw.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!("{raw:?} is not KEY=VALUE")),
    }
}

impl HostArgs {
    /// The checked settings: every file read (TLS, tokens) and every value checked, or
    /// the message naming the flag at fault.
    pub fn config(&self) -> Result<HostConfig, String> {
        #[cfg(not(feature = "prometheus"))]
        if let Some(addr) = self.serve.metrics_listen {
            return Err(flowplane_telemetry::Error::MetricsNotBuilt { addr }.to_string());
        }
        let mut client = self.client.clone();
        client.load().map_err(|e| e.to_string())?;
        let config = HostConfig {
            processors: self
                .processors
                .iter()
                .map(|p| p.trim().to_string())
                .filter(|p| !p.is_empty())
                .collect(),
            control_plane: self.control_plane.clone().filter(|c| !c.is_empty()),
            id: self.id.clone(),
            join_token: self
                .join_token
                .clone()
                .or_else(|| client.token.clone())
                .filter(|t| !t.is_empty()),
            client,
            labels: self.labels.iter().cloned().collect(),
            advertise: self.serve.advertise.clone(),
            tls: self.serve.server_tls().map_err(|e| e.to_string())?,
            grace_period: self.grace_period,
            max_streams: self.max_streams,
            max_concurrent_calls: self.max_concurrent_calls,
            tokens: self
                .serve
                .tokens()
                .map_err(|e| format!("--token-file: {e}"))?,
            reflection: self.serve.reflection,
        };
        config.validate().map_err(|e| e.to_string())?;
        Ok(config)
    }
}

/// A processor host binary: the host, its `--help` description and its default address.
/// `Main::new(host).run()` is [`main`]; the built-in `flowplane-processor` is
/// `Main::new(built_ins).default_listen(127.0.0.1:50061).run()`.
///
/// [`Main::connectors`] is the same binary for a connector host: the same flags, with
/// `--connectors` (`FLOWPLANE_CONNECTORS`) selecting connectors in place of
/// `--processors`; the built-in `flowplane-connect` is
/// `Main::connectors(built_ins).default_listen(127.0.0.1:50081).run()`.
pub struct Main {
    host: Hosted,
    about: Option<String>,
    default_listen: SocketAddr,
}

/// What a [`Main`] serves.
enum Hosted {
    Processors(HostBuilder),
    Connectors(ConnectorHostBuilder),
}

/// A host built from the flags, ready to serve.
enum Built {
    Processors(ProcessorHost),
    Connectors(ConnectorHost),
}

impl Hosted {
    fn name(&self) -> &str {
        match self {
            Hosted::Processors(b) => b.name(),
            Hosted::Connectors(b) => b.name(),
        }
    }

    fn version(&self) -> &str {
        match self {
            Hosted::Processors(b) => b.host_version(),
            Hosted::Connectors(b) => b.host_version(),
        }
    }

    fn build(self, config: &HostConfig) -> crate::Result<Built> {
        Ok(match self {
            Hosted::Processors(b) => Built::Processors(config.host(b)?),
            Hosted::Connectors(b) => Built::Connectors(config.connector_host(b)?),
        })
    }
}

impl Main {
    /// A binary serving `host`, named after it (`HostBuilder::new`'s name is the binary's
    /// name in `--help`, logs and traces), listening on [`DEFAULT_LISTEN`] by default.
    pub fn new(host: HostBuilder) -> Self {
        Self {
            host: Hosted::Processors(host),
            about: None,
            default_listen: DEFAULT_LISTEN,
        }
    }

    /// A binary serving the sources and consumers of `host`, named after it.
    pub fn connectors(host: ConnectorHostBuilder) -> Self {
        Self {
            host: Hosted::Connectors(host),
            about: None,
            default_listen: DEFAULT_LISTEN,
        }
    }

    /// The description `--help` opens with; by default it names the processors served.
    pub fn about(mut self, about: impl Into<String>) -> Self {
        self.about = Some(about.into());
        self
    }

    /// The address used when neither `--listen` nor `FLOWPLANE_LISTEN` is set.
    pub fn default_listen(mut self, addr: SocketAddr) -> Self {
        self.default_listen = addr;
        self
    }

    /// The command-line parser: the name, version and description, and every flag.
    pub fn command(&self) -> clap::Command {
        let about = self.about.clone().unwrap_or_else(|| match &self.host {
            Hosted::Processors(b) => format!(
                "Serves the flowplane processors {} behind ProcessorService.",
                b.processor_names().join(", ")
            ),
            Hosted::Connectors(b) => format!(
                "Serves the flowplane connectors {} behind SourceService and ConsumerService.",
                b.connector_names().join(", ")
            ),
        });
        // The flags first: their doc comment would otherwise replace the description.
        let mut command = HostArgs::augment_args(clap::Command::new(self.host.name().to_string()));
        if let Hosted::Connectors(_) = self.host {
            // The same field, so the same config: the connectors to serve.
            command = command
                .mut_arg("processors", |arg| {
                    arg.long("connectors")
                        .env("FLOWPLANE_CONNECTORS")
                        .help("Comma-separated connectors to serve (NAME, source/NAME or consumer/NAME); unset serves every one this host has")
                })
                .mut_arg("max_concurrent_calls", |arg| arg.hide(true));
        }
        command
            .version(self.host.version().to_string())
            .about(about)
            .long_about(None)
            .after_help(format!(
                "Unless --listen is given the host listens on {}{}.",
                self.default_listen,
                if self.default_listen.port() == 0 {
                    " (a free port, logged and registered)"
                } else {
                    ""
                }
            ))
    }

    /// Parses the process's arguments and runs the host until a signal; returns the exit
    /// code: 0 after a clean drain, 64 (EX_USAGE) for an invalid setting, 2 for a flag
    /// clap cannot parse, 1 when serving fails.
    pub fn run(self) -> ExitCode {
        self.run_from(std::env::args_os())
    }

    /// [`Main::run`] with these arguments (the first is the binary's name).
    pub fn run_from<I, T>(self, args: I) -> ExitCode
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let matches = self.command().get_matches_from(args);
        let args = HostArgs::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
        let name = self.host.name().to_string();
        // The host is built before anything binds, so an unknown processor is a usage error.
        let config = args.config().and_then(|config| {
            let host = self.host.build(&config).map_err(|e| e.to_string())?;
            Ok((host, config))
        });
        flowplane_grpc::binary::serve_main(
            &name,
            &args.telemetry,
            &args.serve,
            self.default_listen,
            config,
            |(host, config), listener, shutdown| async move {
                match host {
                    Built::Processors(host) => {
                        crate::serve(host, config.serve_options(), listener, shutdown).await
                    }
                    Built::Connectors(host) => {
                        crate::serve_connectors(host, config.serve_options(), listener, shutdown)
                            .await
                    }
                }
            },
        )
    }
}

/// Runs a processor host binary serving `host` with every standard flag, and returns the
/// exit code for `fn main() -> ExitCode`. See [`Main`] to set the `--help` description
/// or the default address.
///
/// ```no_run
/// # use flowplane_sdk::HostBuilder;
/// fn main() -> std::process::ExitCode {
///     flowplane_sdk::main(HostBuilder::new("my-host").version(env!("CARGO_PKG_VERSION")))
/// }
/// ```
pub fn main(host: HostBuilder) -> ExitCode {
    Main::new(host).run()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<HostArgs, clap::Error> {
        let main = Main::new(HostBuilder::new("test-host"));
        let matches = main
            .command()
            .try_get_matches_from(std::iter::once("test-host").chain(args.iter().copied()))?;
        HostArgs::from_arg_matches(&matches)
    }

    #[test]
    fn flags_become_the_host_config() {
        let args = parse(&[
            "--control-plane",
            "http://127.0.0.1:1,http://127.0.0.1:2",
            "--id",
            "proc-a",
            "--join-token",
            "join",
            "--processors",
            "a, b,",
            "--grace-period",
            "500ms",
            "--label",
            "zone=a,tier=gold",
        ])
        .unwrap();
        let config = args.config().unwrap();
        assert_eq!(
            config.control_plane.as_deref(),
            Some("http://127.0.0.1:1,http://127.0.0.1:2")
        );
        assert_eq!(config.id.as_deref(), Some("proc-a"));
        assert_eq!(config.join_token.as_deref(), Some("join"));
        assert_eq!(config.processors, ["a", "b"]);
        assert_eq!(config.grace_period, Duration::from_millis(500));
        assert_eq!(config.labels["tier"], "gold");
        assert_eq!(
            config.max_concurrent_calls,
            crate::DEFAULT_MAX_CONCURRENT_CALLS
        );
    }

    #[test]
    fn the_client_token_stands_in_for_a_join_token() {
        let args = parse(&["--token", "client-token"]).unwrap();
        assert_eq!(
            args.config().unwrap().join_token.as_deref(),
            Some("client-token")
        );
    }

    #[test]
    fn bad_values_name_their_flag() {
        let error = parse(&["--label", "novalue"]).err().unwrap().to_string();
        assert!(error.contains("--label"), "{error}");
        let message = parse(&["--max-streams", "0"])
            .unwrap()
            .config()
            .unwrap_err();
        assert!(message.contains("--max-streams"), "{message}");
    }

    #[cfg(not(feature = "prometheus"))]
    #[test]
    fn metrics_listen_is_refused_without_the_exporter() {
        let message = parse(&["--metrics-listen", "127.0.0.1:9"])
            .unwrap()
            .config()
            .unwrap_err();
        assert!(message.contains("--metrics-listen"), "{message}");
        assert!(message.contains("`prometheus` feature"), "{message}");
    }

    #[test]
    fn a_connector_host_selects_connectors_with_its_own_flag() {
        let main = Main::connectors(ConnectorHostBuilder::new("test-connect"));
        let help = main.command().render_long_help().to_string();
        assert!(help.contains("--connectors"), "{help}");
        assert!(!help.contains("--processors"), "{help}");
        let matches = main
            .command()
            .try_get_matches_from(["test-connect", "--connectors", "generator, consumer/file"])
            .unwrap();
        let config = HostArgs::from_arg_matches(&matches)
            .unwrap()
            .config()
            .unwrap();
        assert_eq!(config.processors, ["generator", "consumer/file"]);
    }

    #[test]
    fn help_names_the_processors_and_the_default_address() {
        let help = Main::new(HostBuilder::new("test-host"))
            .command()
            .render_long_help()
            .to_string();
        assert!(help.contains("127.0.0.1:0 (a free port"), "{help}");
        let help = Main::new(HostBuilder::new("test-host"))
            .about("Custom words.")
            .default_listen("127.0.0.1:50061".parse().unwrap())
            .command()
            .render_long_help()
            .to_string();
        assert!(help.contains("Custom words."), "{help}");
        assert!(help.contains("listens on 127.0.0.1:50061."), "{help}");
    }
}
