//! `flowplane-control-plane`: parses settings (flags over `FLOWPLANE_*` environment over
//! defaults), initialises telemetry, binds and runs the control plane until a signal.
//! Invalid settings exit non-zero, naming the flag, before any port is bound.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use anyhow::Context;
use clap::Parser;
use flowplane_control_plane::{
    Backend, Config, DEFAULT_MAX_COMPONENTS,
    registry::{
        DEFAULT_WATCH_BUFFER,
        etcd::{DEFAULT_PREFIX, EtcdCredentials, EtcdTls},
    },
};
use flowplane_grpc::config::{ServeArgs, parse_duration};
use flowplane_telemetry::TelemetryArgs;

const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 50051);

/// `--data-dir` when none is given: relative to the working directory, so that a restart
/// in the same place finds the pipelines again.
const DEFAULT_DATA_DIR: &str = "flowplane-data";

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

    /// Where the registry lives: memory (this process only) or etcd://HOST:PORT[,HOST:PORT...]
    /// (every replica with the same etcd and prefix serves one registry).
    #[arg(
        long,
        env = "FLOWPLANE_REGISTRY",
        value_name = "BACKEND",
        default_value = "memory"
    )]
    registry: String,

    /// Key prefix in etcd; replicas with the same prefix share a registry.
    #[arg(long, env = "FLOWPLANE_ETCD_PREFIX", value_name = "PREFIX", default_value = DEFAULT_PREFIX)]
    etcd_prefix: String,

    /// PEM CA that etcd's certificates are checked against; dials etcd over TLS.
    #[arg(long, env = "FLOWPLANE_ETCD_CA", value_name = "FILE")]
    etcd_ca: Option<PathBuf>,

    /// PEM client certificate presented to etcd (with --etcd-key and --etcd-ca).
    #[arg(long, env = "FLOWPLANE_ETCD_CERT", value_name = "FILE")]
    etcd_cert: Option<PathBuf>,

    /// PEM key of --etcd-cert.
    #[arg(long, env = "FLOWPLANE_ETCD_KEY", value_name = "FILE")]
    etcd_key: Option<PathBuf>,

    /// etcd user, when etcd has authentication on (with --etcd-password-file).
    #[arg(long, env = "FLOWPLANE_ETCD_USER", value_name = "NAME")]
    etcd_user: Option<String>,

    /// File holding the etcd user's password (surrounding whitespace trimmed).
    #[arg(long, env = "FLOWPLANE_ETCD_PASSWORD_FILE", value_name = "FILE")]
    etcd_password_file: Option<PathBuf>,

    /// Directory where the memory registry keeps standing pipelines and their offsets
    /// (standing.redb), so they survive a restart; one control plane per directory.
    /// Default: flowplane-data in the working directory. Not for an etcd --registry, which
    /// keeps them in etcd.
    #[arg(long, env = "FLOWPLANE_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

fn read_file(flag: &str, path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("{flag}: cannot read {}", path.display()))
}

/// The registry backend the flags describe; etcd-only flags without an etcd registry
/// are refused rather than silently ignored.
fn backend(args: &Args) -> anyhow::Result<Backend> {
    let mut backend = Backend::parse(&args.registry)?;
    let etcd_only = [
        ("--etcd-ca", args.etcd_ca.is_some()),
        ("--etcd-cert", args.etcd_cert.is_some()),
        ("--etcd-key", args.etcd_key.is_some()),
        ("--etcd-user", args.etcd_user.is_some()),
        ("--etcd-password-file", args.etcd_password_file.is_some()),
    ];
    let Backend::Etcd(etcd) = &mut backend else {
        if let Some((flag, _)) = etcd_only.iter().find(|(_, given)| *given) {
            anyhow::bail!("{flag} needs an etcd --registry (etcd://HOST:PORT)");
        }
        return Ok(backend);
    };
    etcd.prefix = args.etcd_prefix.clone();
    etcd.tls = match (&args.etcd_ca, &args.etcd_cert, &args.etcd_key) {
        (None, None, None) => None,
        (None, _, _) => anyhow::bail!("--etcd-cert and --etcd-key need --etcd-ca"),
        (Some(ca), None, None) => Some(EtcdTls {
            ca_pem: read_file("--etcd-ca", ca)?,
            identity: None,
        }),
        (Some(ca), Some(cert), Some(key)) => Some(EtcdTls {
            ca_pem: read_file("--etcd-ca", ca)?,
            identity: Some((
                read_file("--etcd-cert", cert)?,
                read_file("--etcd-key", key)?,
            )),
        }),
        _ => anyhow::bail!("--etcd-cert and --etcd-key go together: give both or neither"),
    };
    etcd.credentials = match (&args.etcd_user, &args.etcd_password_file) {
        (None, None) => None,
        (Some(user), Some(file)) => {
            let password = String::from_utf8(read_file("--etcd-password-file", file)?)
                .context("--etcd-password-file: not UTF-8")?
                .trim()
                .to_string();
            if password.is_empty() {
                anyhow::bail!("--etcd-password-file: {} is empty", file.display());
            }
            Some(EtcdCredentials {
                user: user.clone(),
                password,
            })
        }
        _ => {
            anyhow::bail!("--etcd-user and --etcd-password-file go together: give both or neither")
        }
    };
    Ok(backend)
}

/// The data dir: the given one or the default with the memory registry; none with etcd,
/// where a given one is refused rather than silently ignored.
fn data_dir(args: &Args, backend: &Backend) -> anyhow::Result<Option<PathBuf>> {
    match (backend, &args.data_dir) {
        (Backend::Memory, dir) => Ok(Some(
            dir.clone()
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
        )),
        (Backend::Etcd(_), None) => Ok(None),
        (Backend::Etcd(_), Some(_)) => anyhow::bail!(
            "--data-dir is for the memory --registry: with etcd, standing pipelines live in etcd"
        ),
    }
}

fn config(args: &Args) -> anyhow::Result<Config> {
    let registry = backend(args)?;
    let config = Config {
        data_dir: data_dir(args, &registry)?,
        registry,
        lease_ttl: args.lease_ttl,
        join_token: args.join_token.clone().filter(|t| !t.is_empty()),
        tokens: args.serve.tokens().context("--token-file")?,
        max_components: args.max_components,
        watch_buffer: args.watch_buffer,
        tls: args.serve.server_tls()?,
        reflection: args.serve.reflection,
    };
    config.validate()?;
    // Opened and closed here, before any port is bound: a directory that cannot be made or
    // written, or that another control plane has open, stops the binary naming --data-dir.
    if let Some(dir) = &config.data_dir {
        flowplane_control_plane::standing::check_data_dir(dir)?;
    }
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
