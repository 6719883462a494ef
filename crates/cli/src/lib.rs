//! The `flowplane` command-line client: the tool a person uses to see the platform.
//! Each subcommand lives in its own module (`components`, `health`, `processors`,
//! `pipeline` for validate and run, `pipelines` for standing pipelines); this file only
//! holds the shared flags, the clients and the error.
//! Nothing here holds state between runs or talks to anything but the given servers.

pub mod components;
pub mod health;
pub mod inputs;
pub mod outputs;
pub mod pipeline;
pub mod pipelines;
pub mod processors;
pub mod render;

use std::io::Write;

use clap::{Parser, Subcommand, ValueEnum};
use flowplane_grpc::{auth::AttachBearer, config::ClientArgs, replicas::Replicas};
use flowplane_proto::controlplane::v1::{
    control_plane_service_client::ControlPlaneServiceClient,
    standing_pipeline_service_client::StandingPipelineServiceClient,
};
use tonic::{service::interceptor::InterceptedService, transport::Channel};

/// Where the control plane listens unless told otherwise.
pub const DEFAULT_CONTROL_PLANE: &str = "http://127.0.0.1:50051";

/// See and operate a flowplane platform.
#[derive(Debug, Parser)]
#[command(name = "flowplane", version, about, propagate_version = true)]
pub struct Cli {
    /// Control plane address: a URL (http:// or https://) or HOST:PORT, or a
    /// comma-separated list of replicas; a command that finds one unavailable asks the next.
    #[arg(long, global = true, env = "FLOWPLANE_CONTROL_PLANE", value_name = "URL[,URL...]", default_value = DEFAULT_CONTROL_PLANE)]
    pub control_plane: String,

    #[command(flatten)]
    pub client: ClientArgs,

    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List, inspect and watch registered processors, sources and consumers.
    #[command(subcommand)]
    Components(components::Command),
    /// Check a server's grpc.health.v1 status; exits 0 only when SERVING.
    Health(health::Args),
    /// List the processors the live hosts serve: ports, params, hosts.
    Processors(processors::Args),
    /// Check a pipeline manifest against the live processors' ports and params
    /// (--offline: the file's structure only, without any server).
    Validate(pipeline::ValidateArgs),
    /// Stream input files through a pipeline and print each result as it arrives
    /// (exit 3 when any chunk failed).
    Run(pipeline::RunArgs),
    /// Apply, list, inspect, pause, resume and delete standing pipelines, and see or
    /// reset their offsets.
    #[command(subcommand)]
    Pipelines(pipelines::Command),
}

/// How results are printed: the same four choices on every subcommand.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned columns for people.
    #[default]
    Table,
    /// The table without shortened columns (the same as table where nothing is shortened).
    Wide,
    /// JSON for scripts (one object per line for streams: `watch`, `run`).
    Json,
    /// YAML for people and scripts (one `---` document per object for streams).
    Yaml,
}

/// Writes one structured value as `output` asks: pretty JSON, or a YAML document.
/// Streams pass `line` to get compact one-line JSON and a `---` before each YAML document.
pub fn write_value(
    out: &mut (dyn Write + Send),
    output: Output,
    value: &serde_json::Value,
    line: bool,
) -> Result<()> {
    match (output, line) {
        (Output::Yaml, _) => {
            let text = serde_yaml::to_string(value).map_err(|e| Error::Usage(e.to_string()))?;
            if line {
                writeln!(out, "---")?;
            }
            write!(out, "{text}")?;
        }
        (_, true) => writeln!(out, "{value}")?,
        (_, false) => writeln!(out, "{}", serde_json::to_string_pretty(value)?)?,
    }
    Ok(())
}

/// Everything that makes a command fail.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server could not be reached or the address is invalid.
    #[error("cannot reach {address}: {source}")]
    Connect {
        address: String,
        source: flowplane_grpc::Error,
    },
    /// No control-plane replica in the list answered.
    #[error("cannot reach {address}: {message}")]
    Unreachable { address: String, message: String },
    /// An RPC failed.
    #[error("{rpc} failed: {} (code {:?}{})", .status.message(), .status.code(), detail_field(.status))]
    Rpc {
        rpc: &'static str,
        status: tonic::Status,
    },
    /// A health check did not find the server SERVING.
    #[error("{service} at {address} is {status}")]
    NotServing {
        address: String,
        service: String,
        status: String,
    },
    /// A health check got no answer in time.
    #[error("no health answer from {address} within {timeout:?} (--timeout)")]
    Timeout {
        address: String,
        timeout: std::time::Duration,
    },
    /// The bearer token is not valid metadata.
    #[error("--token: {0}")]
    Token(String),
    /// The client token file or a TLS file cannot be read, or the flags do not go together.
    #[error(transparent)]
    ClientSettings(flowplane_grpc::Error),
    /// Writing the output failed.
    #[error("cannot write output: {0}")]
    Io(#[from] std::io::Error),
    /// Encoding JSON output failed.
    #[error("cannot encode json: {0}")]
    Json(#[from] serde_json::Error),
    /// A manifest file cannot be read or parsed.
    #[error(transparent)]
    Manifest(#[from] flowplane_manifest::Error),
    /// An input file cannot be turned into chunks.
    #[error("input {path}: {message}")]
    Input { path: String, message: String },
    /// A result cannot be written to its output's file under --output-dir.
    #[error("output {output:?}: {message}")]
    Output { output: String, message: String },
    /// The session completed but some chunks failed (each already printed).
    #[error("{errors} of {chunks} {} failed", if *.chunks == 1 { "chunk" } else { "chunks" })]
    ChunksFailed { errors: u64, chunks: u64 },
    /// The pipeline service found problems in a manifest (already printed).
    #[error("{path} is not a valid pipeline ({problems} {})", if *.problems == 1 { "problem" } else { "problems" })]
    InvalidPipeline { path: String, problems: usize },
    /// What was asked for does not exist (a processor no host serves).
    #[error("{0}")]
    NotFound(String),
    /// A command line the flags cannot express (exit 2).
    #[error("{0}")]
    Usage(String),
    /// A server broke the protocol.
    #[error("{0}")]
    Protocol(String),
}

impl Error {
    /// The process exit code for this failure: [`pipeline::EXIT_CHUNKS_FAILED`] when a
    /// run completed with failed chunks, 2 for usage errors (as clap's own), else 1.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::ChunksFailed { .. } => pipeline::EXIT_CHUNKS_FAILED,
            Error::Usage(_) => 2,
            _ => 1,
        }
    }
}

/// `, field F` when the status's error detail names the field at fault.
fn detail_field(status: &tonic::Status) -> String {
    flowplane_grpc::status::error_detail(status)
        .filter(|d| !d.field.is_empty())
        .map(|d| format!(", field {}", d.field))
        .unwrap_or_default()
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A control-plane client with flowplane's message limits and the bearer token attached.
pub type ControlPlaneClient = ControlPlaneServiceClient<InterceptedService<Channel, AttachBearer>>;

/// A standing-pipeline client (served beside the control plane's registry) with
/// flowplane's message limits and the bearer token attached.
pub type StandingClient = StandingPipelineServiceClient<InterceptedService<Channel, AttachBearer>>;

/// The control-plane replicas named on the command line, and a client for any of them.
/// Each command runs its calls through [`ControlPlane::call`], so a replica that is down
/// or unreachable is passed over for the next in the list.
pub struct ControlPlane {
    /// The replicas, in the order given.
    pub replicas: Replicas,
    auth: AttachBearer,
    address: String,
}

impl ControlPlane {
    /// A client with flowplane's message limits and the bearer token, over `channel`.
    pub fn client(&self, channel: Channel) -> ControlPlaneClient {
        ControlPlaneServiceClient::with_interceptor(channel, self.auth.clone())
            .max_decoding_message_size(flowplane_grpc::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(flowplane_grpc::MAX_MESSAGE_BYTES)
    }

    /// A standing-pipeline client with the same limits and token, over `channel`.
    pub fn standing(&self, channel: Channel) -> StandingClient {
        StandingPipelineServiceClient::with_interceptor(channel, self.auth.clone())
            .max_decoding_message_size(flowplane_grpc::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(flowplane_grpc::MAX_MESSAGE_BYTES)
    }

    /// Runs `attempt` on the first replica that answers (one round over the list).
    /// None answering is [`Error::Unreachable`]; any other failure is `rpc`'s.
    pub async fn call<T, F, Fut>(&self, rpc: &'static str, mut attempt: F) -> Result<T>
    where
        F: FnMut(ControlPlaneClient) -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        self.call_channel(rpc, |channel| attempt(self.client(channel)))
            .await
    }

    /// [`ControlPlane::call`] for the standing-pipeline service.
    pub async fn call_standing<T, F, Fut>(&self, rpc: &'static str, mut attempt: F) -> Result<T>
    where
        F: FnMut(StandingClient) -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        self.call_channel(rpc, |channel| attempt(self.standing(channel)))
            .await
    }

    async fn call_channel<T, F, Fut>(&self, rpc: &'static str, attempt: F) -> Result<T>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        self.replicas.call(attempt).await.map_err(|status| {
            if flowplane_grpc::retry::moves_replica(&status) {
                Error::Unreachable {
                    address: self.address.clone(),
                    message: status.message().to_string(),
                }
            } else {
                Error::Rpc { rpc, status }
            }
        })
    }
}

/// The control plane named on the command line; fails naming `--control-plane` and the
/// bad entry, or the TLS flag whose file cannot be read. Connects nothing yet.
pub fn control_plane(cli: &Cli) -> Result<ControlPlane> {
    let replicas = Replicas::new(&cli.control_plane, "--control-plane", &cli.client)
        .map_err(Error::ClientSettings)?;
    let auth = AttachBearer::new(cli.client.token.as_deref())
        .map_err(|s| Error::Token(s.message().to_string()))?;
    Ok(ControlPlane {
        replicas,
        auth,
        address: cli.control_plane.clone(),
    })
}

/// Runs the command, writing results to `out` (errors are returned, not printed).
pub async fn run(mut cli: Cli, out: &mut (dyn Write + Send)) -> Result<()> {
    cli.client.load().map_err(Error::ClientSettings)?;
    match &cli.command {
        Command::Components(command) => components::run(&cli, command, out).await,
        Command::Health(args) => health::run(&cli, args, out).await,
        Command::Processors(args) => processors::run(&cli, args, out).await,
        Command::Validate(args) => pipeline::validate(args, &cli.client, out).await,
        Command::Pipelines(command) => pipelines::run(&cli, command, out).await,
        Command::Run(args) => {
            let summary = pipeline::run(args, &cli.client, out, &mut std::io::stderr()).await?;
            if summary.errors > 0 {
                return Err(Error::ChunksFailed {
                    errors: summary.errors,
                    chunks: summary.chunks,
                });
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use flowplane_proto::common::v1::ErrorDetail;

    use super::*;

    #[test]
    fn rpc_errors_show_the_message_code_and_the_field_at_fault() {
        let status = flowplane_grpc::status::with_detail(
            tonic::Code::FailedPrecondition,
            "name: pipeline \"p\" is not paused",
            ErrorDetail {
                reason: "PIPELINE_NOT_PAUSED".into(),
                field: "name".into(),
                ..Default::default()
            },
        );
        let error = Error::Rpc {
            rpc: "ResetPipelineOffsets",
            status,
        };
        assert_eq!(
            error.to_string(),
            "ResetPipelineOffsets failed: name: pipeline \"p\" is not paused (code FailedPrecondition, field name)"
        );
        assert_eq!(error.exit_code(), 1);
        let plain = Error::Rpc {
            rpc: "GetPipeline",
            status: tonic::Status::unavailable("down"),
        };
        assert_eq!(
            plain.to_string(),
            "GetPipeline failed: down (code Unavailable)"
        );
    }
}
