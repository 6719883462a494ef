//! `flowplane health ADDR`: one grpc.health.v1 Check, for people and for container
//! health checks. Exits 0 only when the answer is SERVING; never retries or waits longer
//! than its timeout.

use std::{io::Write, time::Duration};

use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::{Cli, Error, Result};

/// Arguments of `flowplane health`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Server address: a URL (http:// or https://) or HOST:PORT.
    #[arg(value_name = "ADDR")]
    pub address: String,

    /// Service to check, e.g. flowplane.controlplane.v1.ControlPlaneService; empty checks the whole server.
    #[arg(long, value_name = "NAME", default_value = "")]
    pub service: String,

    /// Give up after this many seconds (fractions allowed).
    #[arg(long, value_name = "SECONDS", default_value = "5", value_parser = positive_seconds)]
    pub timeout: Duration,

    /// Output format: `json`/`yaml` print {address, service, status}, also when not SERVING.
    #[arg(short, long, value_enum, default_value_t)]
    pub output: crate::Output,
}

fn positive_seconds(raw: &str) -> std::result::Result<Duration, String> {
    let seconds: f64 = raw
        .parse()
        .map_err(|_| format!("{raw:?} is not a number of seconds"))?;
    if seconds > 0.0 && seconds.is_finite() {
        Duration::try_from_secs_f64(seconds).map_err(|e| e.to_string())
    } else {
        Err("must be more than 0 seconds".into())
    }
}

/// Runs the check and prints the status.
pub async fn run(cli: &Cli, args: &Args, out: &mut (dyn Write + Send)) -> Result<()> {
    let timeout = args.timeout;
    let check = async {
        let channel = flowplane_grpc::client::connect(&args.address, &cli.client)
            .await
            .map_err(|source| Error::Connect {
                address: args.address.clone(),
                source,
            })?;
        let mut client = HealthClient::new(channel)
            .max_decoding_message_size(flowplane_grpc::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(flowplane_grpc::MAX_MESSAGE_BYTES);
        client
            .check(HealthCheckRequest {
                service: args.service.clone(),
            })
            .await
            .map(|r| r.into_inner().status())
            .map_err(|status| Error::Rpc {
                rpc: "grpc.health.v1.Health/Check",
                status,
            })
    };
    let status = tokio::time::timeout(timeout, check)
        .await
        .map_err(|_| Error::Timeout {
            address: args.address.clone(),
            timeout,
        })??;
    let name = status.as_str_name();
    let structured = matches!(args.output, crate::Output::Json | crate::Output::Yaml);
    if structured {
        let value = serde_json::json!({"address": args.address, "service": args.service,
            "status": name});
        crate::write_value(out, args.output, &value, true)?;
    }
    if status == ServingStatus::Serving {
        if !structured {
            writeln!(out, "{name}")?;
        }
        Ok(())
    } else {
        Err(Error::NotServing {
            address: args.address.clone(),
            service: if args.service.is_empty() {
                "the server".into()
            } else {
                args.service.clone()
            },
            status: name.into(),
        })
    }
}
