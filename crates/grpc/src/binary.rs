//! What every flowplane server binary does around its service's `run`, in one place:
//! invalid settings exit with EX_USAGE before any port is bound, naming the flag; then
//! telemetry first, signal handling, the /metrics endpoint, bind, run, flush on the way
//! out. A binary's `main` parses its flags, builds its config and calls [`serve_main`].
//! The orchestrator settings (`--health-listen`, `--max-connection-age`) reach the
//! service's server through [`crate::server::scope_serving_options`], so every binary has
//! them without its service knowing.

use std::{fmt::Display, future::Future, net::SocketAddr, process::ExitCode};

use tokio::net::TcpListener;
use tokio_util::sync::WaitForCancellationFutureOwned;

use crate::{config::ServeArgs, server::ServingOptions};

/// Exit code for invalid settings (EX_USAGE).
pub const EXIT_USAGE: u8 = 64;

/// Runs a server binary named `name`. `config` is the checked configuration, or the
/// message naming the bad flag; `run` is the service's `run(config, listener, shutdown)`.
pub fn serve_main<C, F, Fut, E>(
    name: &str,
    telemetry: &flowplane_telemetry::TelemetryArgs,
    serve: &ServeArgs,
    default_listen: SocketAddr,
    config: Result<C, String>,
    run: F,
) -> ExitCode
where
    F: FnOnce(C, TcpListener, WaitForCancellationFutureOwned) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: Display,
{
    let config = match config {
        Ok(config) => config,
        Err(message) => {
            eprintln!("{name}: {message}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("{name}: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        let telemetry = flowplane_telemetry::init(name, telemetry).map_err(|e| e.to_string())?;
        let shutdown = crate::shutdown::on_signals();
        let served = async {
            let metrics = flowplane_telemetry::metrics::spawn(
                serve.metrics_listen,
                shutdown.clone().cancelled_owned(),
            )
            .await
            .map_err(|e| e.to_string())?;
            if metrics.is_some() {
                // Every binary is built from one workspace, so this crate's version is theirs.
                flowplane_telemetry::metrics::build_info(name, env!("CARGO_PKG_VERSION"))
                    .map_err(|e| e.to_string())?;
            }
            let listen = serve.listen_or(default_listen);
            let listener = TcpListener::bind(listen)
                .await
                .map_err(|e| format!("cannot listen on {listen} (--listen): {e}"))?;
            let health_listener = match serve.health_listen {
                Some(addr) => Some(
                    TcpListener::bind(addr)
                        .await
                        .map_err(|e| format!("cannot listen on {addr} (--health-listen): {e}"))?,
                ),
                None => None,
            };
            tracing::info!(
                listen = %listener.local_addr().map_err(|e| e.to_string())?,
                health_listen = ?serve.health_listen,
                max_connection_age = ?serve.max_connection_age,
                "{name} starting"
            );
            let options = ServingOptions {
                health_listener,
                max_connection_age: serve.max_connection_age,
                max_connection_age_grace: serve.max_connection_age_grace,
            };
            crate::server::scope_serving_options(
                options,
                run(config, listener, shutdown.cancelled_owned()),
            )
            .await
            .map_err(|e| e.to_string())
        }
        .await;
        if let Err(error) = &served {
            tracing::error!(%error, "{name} failed");
        }
        telemetry.shutdown().await;
        served
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{name}: {error}");
            ExitCode::FAILURE
        }
    }
}
