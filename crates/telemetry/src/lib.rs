//! Telemetry for every flowplane binary: one call in `main` sets up the env-filtered
//! plain or JSON logs, OTLP trace export configured by the standard `OTEL_*` variables and
//! the W3C propagator; [`grpc`] carries trace context across every hop and [`metrics`]
//! serves Prometheus text. Nothing here may block a caller or fail a request because a
//! collector or a scraper is missing: telemetry only observes.
//!
//! ```no_run
//! # async fn main_body(
//! #     args: flowplane_telemetry::TelemetryArgs,
//! # ) -> Result<(), Box<dyn std::error::Error>> {
//! let telemetry = flowplane_telemetry::init("flowplane-pipeline", &args)?;
//! // ... bind, run the service ...
//! telemetry.shutdown().await; // flushes the spans still queued
//! # Ok(()) }
//! ```

pub mod grpc;
#[cfg(feature = "prometheus")]
pub mod metrics;
/// Built without the `prometheus` feature: the same calls, no recorder and no endpoint.
#[cfg(not(feature = "prometheus"))]
#[path = "metrics_off.rs"]
pub mod metrics;
pub mod rpc;

mod json;
mod otlp;

use std::{
    io::IsTerminal,
    sync::{
        Once,
        atomic::{AtomicBool, Ordering},
    },
};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::{
    EnvFilter, Layer, Registry,
    fmt::{MakeWriter, format::JsonFields},
    layer::SubscriberExt,
    util::SubscriberInitExt,
};

pub use otlp::TraceExport;

/// Filter directive that keeps the RPC spans of [`grpc`]: they are TRACE spans with this
/// target, and a filter without it silently drops every client and server span.
pub const RPC_SPANS_DIRECTIVE: &str = "otel::tracing=trace";

/// Spans of the HTTP/2 and tower plumbing are never exported: the exporter's own calls
/// would otherwise be traced and exported in turn.
const QUIET_SPAN_TARGETS: &[&str] = &["h2=off", "hyper=off", "hyper_util=off", "tower=off"];

/// Errors of the telemetry crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid {setting} {filter:?}: {reason}")]
    InvalidFilter {
        setting: &'static str,
        filter: String,
        reason: String,
    },
    #[error("telemetry is already initialised in this process")]
    AlreadyInitialised,
    #[error("otlp trace exporter (OTEL_EXPORTER_OTLP_*): {0}")]
    Exporter(String),
    #[error("otlp trace export needs a tokio runtime: call init inside the async main")]
    NoRuntime,
    #[error("trace flush: {0}")]
    Flush(String),
    #[error("cannot bind the metrics listener {addr} (--metrics-listen): {source}")]
    BindMetrics {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("metrics recorder: {0}")]
    MetricsRecorder(String),
    #[error("metrics endpoint: {0}")]
    ServeMetrics(std::io::Error),
    #[error(
        "--metrics-listen {addr}: this binary was built without the `prometheus` feature, so it serves no /metrics"
    )]
    MetricsNotBuilt { addr: std::net::SocketAddr },
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum LogFormat {
    /// Human-readable lines for a terminal.
    #[default]
    Plain,
    /// One JSON object a line, with `trace_id` and the enclosing spans' fields, for containers.
    Json,
}

/// Logging and tracing settings every flowplane binary flattens into its parser.
/// Trace export itself is configured by the standard `OTEL_*` variables.
#[derive(Clone, Debug)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
pub struct TelemetryArgs {
    /// Log line format: plain for a terminal, json for containers.
    #[cfg_attr(
        feature = "cli",
        arg(
            long,
            env = "FLOWPLANE_LOG_FORMAT",
            value_enum,
            default_value_t = LogFormat::Plain
        )
    )]
    pub log_format: LogFormat,

    /// Which log lines to write, in RUST_LOG syntax (e.g. `info,flowplane_pipeline=debug`).
    /// Unset: RUST_LOG, else `info`.
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "FLOWPLANE_LOG", value_name = "FILTER")
    )]
    pub log_filter: Option<String>,

    /// Which spans to export as traces, in RUST_LOG syntax; RPC spans are always kept.
    #[cfg_attr(
        feature = "cli",
        arg(
            long,
            env = "FLOWPLANE_TRACE_FILTER",
            value_name = "FILTER",
            default_value = "info"
        )
    )]
    pub trace_filter: String,

    /// Trace every control-plane heartbeat RPC on its own (off: they would flood the traces).
    #[cfg_attr(
        feature = "cli",
        arg(
            long,
            env = "FLOWPLANE_TRACE_HEARTBEATS",
            value_parser = clap::builder::BoolishValueParser::new()
        )
    )]
    pub trace_heartbeats: bool,
}

impl Default for TelemetryArgs {
    fn default() -> Self {
        Self {
            log_format: LogFormat::Plain,
            log_filter: None,
            trace_filter: "info".to_string(),
            trace_heartbeats: false,
        }
    }
}

static TRACE_HEARTBEATS: AtomicBool = AtomicBool::new(false);

pub(crate) fn trace_heartbeats() -> bool {
    TRACE_HEARTBEATS.load(Ordering::Relaxed)
}

/// Sets up logs and traces for the whole process; call first in `main`, inside the tokio
/// runtime, and hold the guard until the end. Traces are exported when
/// `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set.
pub fn init(service_name: &str, args: &TelemetryArgs) -> Result<TelemetryGuard> {
    init_with(service_name, args, TraceExport::FromEnv)
}

/// [`init`] with the trace export chosen by the caller instead of the environment.
pub fn init_with(
    service_name: &str,
    args: &TelemetryArgs,
    export: TraceExport,
) -> Result<TelemetryGuard> {
    let log_filter = log_filter(args.log_filter.as_deref())?;
    let trace_filter = trace_filter(&args.trace_filter)?;
    let pipeline = otlp::Pipeline::build(service_name, export)?;
    let ansi = std::io::stderr().is_terminal();
    subscriber(
        args.log_format,
        log_filter,
        trace_filter,
        &pipeline.provider,
        std::io::stderr,
        ansi,
    )
    .try_init()
    .map_err(|_| Error::AlreadyInitialised)?;
    install_globals(&pipeline.provider, args);
    tracing::info!(
        service = service_name,
        otlp_endpoint = pipeline.endpoint.as_deref().unwrap_or("none"),
        "telemetry initialised"
    );
    otlp::warn_about_unsupported_protocol();
    otlp::warn_about_missing_exporter();
    Ok(TelemetryGuard {
        provider: Some(pipeline.provider),
        export: pipeline.health,
    })
}

/// Idempotent set-up for tests: plain logs to the test writer (RUST_LOG / FLOWPLANE_LOG,
/// else `warn`), trace ids and W3C propagation on, nothing exported. Does nothing when
/// telemetry is already set up in this process.
pub fn init_for_tests() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let filter = std::env::var("FLOWPLANE_LOG")
            .or_else(|_| std::env::var("RUST_LOG"))
            .ok()
            .and_then(|f| EnvFilter::try_new(f).ok())
            .unwrap_or_else(|| EnvFilter::new("warn"));
        let Ok(trace_filter) = trace_filter("info") else {
            return;
        };
        let Ok(pipeline) = otlp::Pipeline::build("flowplane-test", TraceExport::Off) else {
            return;
        };
        let installed = subscriber(
            LogFormat::Plain,
            filter,
            trace_filter,
            &pipeline.provider,
            tracing_subscriber::fmt::TestWriter::new(),
            false,
        )
        .try_init();
        if installed.is_ok() {
            install_globals(&pipeline.provider, &TelemetryArgs::default());
        }
    });
}

fn install_globals(provider: &SdkTracerProvider, args: &TelemetryArgs) {
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    opentelemetry::global::set_tracer_provider(provider.clone());
    TRACE_HEARTBEATS.store(args.trace_heartbeats, Ordering::Relaxed);
}

/// The SDK logs its own set-up at INFO; quiet unless the filter asks for it by name.
const QUIET_LOG_TARGETS: &[&str] = &[
    "opentelemetry=warn",
    "opentelemetry_sdk=warn",
    "opentelemetry_otlp=warn",
];

fn log_filter(flag: Option<&str>) -> Result<EnvFilter> {
    let (setting, filter) = match flag {
        Some(filter) => (
            "log filter (--log-filter / FLOWPLANE_LOG)",
            filter.to_string(),
        ),
        None => match std::env::var("RUST_LOG") {
            Ok(filter) if !filter.trim().is_empty() => ("log filter (RUST_LOG)", filter),
            _ => ("log filter", "info".to_string()),
        },
    };
    let invalid = |reason: String| Error::InvalidFilter {
        setting,
        filter: filter.clone(),
        reason,
    };
    let mut parsed = EnvFilter::try_new(&filter).map_err(|e| invalid(e.to_string()))?;
    if !filter.contains("opentelemetry") {
        for directive in QUIET_LOG_TARGETS {
            parsed = parsed.add_directive(directive.parse().map_err(|e| invalid(format!("{e}")))?);
        }
    }
    Ok(parsed)
}

fn trace_filter(filter: &str) -> Result<EnvFilter> {
    let invalid = |reason: String| Error::InvalidFilter {
        setting: "trace filter (--trace-filter / FLOWPLANE_TRACE_FILTER)",
        filter: filter.to_string(),
        reason,
    };
    let mut parsed = EnvFilter::try_new(filter).map_err(|e| invalid(e.to_string()))?;
    for directive in QUIET_SPAN_TARGETS.iter().chain([&RPC_SPANS_DIRECTIVE]) {
        parsed = parsed.add_directive(directive.parse().map_err(|e| invalid(format!("{e}")))?);
    }
    Ok(parsed)
}

/// The one subscriber stack: a log layer and an OpenTelemetry layer, each with its own
/// filter, so that quiet logs never thin out the traces and the other way round.
fn subscriber<W>(
    format: LogFormat,
    log_filter: EnvFilter,
    trace_filter: EnvFilter,
    provider: &SdkTracerProvider,
    writer: W,
    ansi: bool,
) -> impl tracing::Subscriber + Send + Sync + 'static
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let logs: Box<dyn Layer<Registry> + Send + Sync> = match format {
        LogFormat::Plain => tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .with_ansi(ansi)
            .with_filter(log_filter)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .fmt_fields(JsonFields::new())
            .event_format(json::JsonFormat)
            .with_writer(writer)
            .with_filter(log_filter)
            .boxed(),
    };
    let traces = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("flowplane"))
        .with_threads(false)
        .with_filter(trace_filter);
    Registry::default().with(logs).with(traces)
}

/// Keeps trace export running; dropping it (or [`TelemetryGuard::shutdown`]) flushes the
/// spans still queued, waiting a bounded time, shorter when the collector is unreachable.
#[must_use = "dropping the guard stops trace export"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
    export: Option<std::sync::Arc<otlp::ExportHealth>>,
}

impl std::fmt::Debug for TelemetryGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TelemetryGuard")
            .field("exporting", &self.export.is_some())
            .finish()
    }
}

impl TelemetryGuard {
    /// Exports every span ended so far, without stopping export.
    pub async fn flush(&self) -> Result<()> {
        let Some(provider) = self.provider.clone() else {
            return Ok(());
        };
        tokio::task::spawn_blocking(move || provider.force_flush())
            .await
            .map_err(|e| Error::Flush(e.to_string()))?
            .map_err(|e| Error::Flush(e.to_string()))
    }

    /// Flushes and stops trace export. Prefer this to a plain drop at the end of an async
    /// `main`: the flush then runs off the runtime's threads, which the exporter needs.
    pub async fn shutdown(mut self) {
        if let Some(provider) = self.provider.take() {
            let timeout = otlp::shutdown_timeout(self.export.as_deref());
            let _ =
                tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(timeout)).await;
        }
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            let timeout = otlp::shutdown_timeout(self.export.as_deref());
            let shutdown = move || provider.shutdown_with_timeout(timeout);
            // On a multi-thread runtime the exporter keeps being driven by the other workers
            // while this one waits; elsewhere the wait is bounded by the timeout.
            let _ = match tokio::runtime::Handle::try_current() {
                Ok(handle)
                    if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread =>
                {
                    tokio::task::block_in_place(shutdown)
                }
                _ => shutdown(),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "cli")]
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        telemetry: TelemetryArgs,
    }

    #[cfg(feature = "cli")]
    #[test]
    fn defaults_are_plain_info_and_no_heartbeats() {
        use clap::Parser;
        let cli = Cli::try_parse_from(["x"]).unwrap();
        assert_eq!(cli.telemetry.log_format, LogFormat::Plain);
        assert_eq!(cli.telemetry.trace_filter, "info");
        assert!(!cli.telemetry.trace_heartbeats);
    }

    #[cfg(feature = "cli")]
    #[test]
    fn flags_parse() {
        use clap::Parser;
        let cli = Cli::try_parse_from([
            "x",
            "--log-format",
            "json",
            "--log-filter",
            "debug,h2=warn",
            "--trace-heartbeats",
        ])
        .unwrap();
        assert_eq!(cli.telemetry.log_format, LogFormat::Json);
        assert_eq!(cli.telemetry.log_filter.as_deref(), Some("debug,h2=warn"));
        assert!(cli.telemetry.trace_heartbeats);
    }

    #[cfg(feature = "cli")]
    #[test]
    fn a_bad_log_format_names_the_flag() {
        use clap::Parser;
        let err = Cli::try_parse_from(["x", "--log-format", "xml"])
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("--log-format"), "{err}");
    }

    #[test]
    fn a_bad_filter_names_the_setting() {
        let err = log_filter(Some("info,=[")).unwrap_err().to_string();
        assert!(err.contains("--log-filter"), "{err}");
        let err = trace_filter("debug,x=notalevel").unwrap_err().to_string();
        assert!(err.contains("--trace-filter"), "{err}");
    }

    #[test]
    fn the_trace_filter_always_keeps_rpc_spans() {
        let filter = trace_filter("warn").unwrap().to_string();
        assert!(filter.contains(RPC_SPANS_DIRECTIVE), "{filter}");
    }
}
