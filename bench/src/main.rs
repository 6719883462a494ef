//! `flowplane-bench`: runs the benchmark scenarios and prints the table, writes the JSON.
//! Two hidden subcommands serve the harness itself: `serve-echo` (the raw echo as its own
//! process, B4's baseline) and `b7-child` (one telemetry variant of B7 in a fresh process).

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use flowplane_bench::{RunConfig, Scenario};
use flowplane_telemetry::{TelemetryArgs, TraceExport};

/// Benchmarks flowplane side by side with raw tonic (see docs/benchmarks.md).
#[derive(Debug, Parser)]
#[command(name = "flowplane-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    /// Smoke run: small counts, under a minute; it asserts nothing about speed.
    #[arg(long, env = "FLOWPLANE_BENCH_QUICK", global = true)]
    quick: bool,

    /// Where the JSON results are written.
    #[arg(
        long,
        env = "FLOWPLANE_BENCH_JSON",
        default_value = "target/bench/results.json"
    )]
    json: PathBuf,

    /// Only these scenarios, comma-separated (default: all).
    #[arg(
        long,
        env = "FLOWPLANE_BENCH_ONLY",
        value_enum,
        value_delimiter = ',',
        ignore_case = true
    )]
    only: Vec<Scenario>,

    /// Directory of the release service binaries (default: next to this binary).
    #[arg(long, env = "FLOWPLANE_BENCH_BIN_DIR", value_name = "DIR")]
    bin_dir: Option<PathBuf>,

    /// Where the logs of the processes the harness starts are written.
    #[arg(
        long,
        env = "FLOWPLANE_BENCH_LOG_DIR",
        default_value = "target/bench/logs"
    )]
    log_dir: PathBuf,

    /// Log filter of the service processes the harness starts (their logs go to --log-dir).
    #[arg(long, env = "FLOWPLANE_BENCH_CHILD_LOG_FILTER", default_value = "warn")]
    child_log_filter: String,

    #[command(flatten)]
    telemetry: TelemetryArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serves the raw echo on --listen until killed (B4's baseline process).
    #[command(hide = true)]
    ServeEcho {
        /// Listen address, 127.0.0.1:PORT.
        #[arg(long, env = "FLOWPLANE_BENCH_LISTEN")]
        listen: SocketAddr,
    },
    /// Opens idle sessions against a running pipeline service and holds them, for
    /// profiling its memory by hand (e.g. under heaptrack); see docs/benchmarks.md.
    #[command(hide = true)]
    Idle {
        /// The pipeline service, 127.0.0.1:PORT.
        #[arg(long, env = "FLOWPLANE_BENCH_PIPELINE")]
        pipeline: SocketAddr,
        /// Sessions to open.
        #[arg(long, env = "FLOWPLANE_BENCH_SESSIONS", default_value_t = 2000)]
        sessions: usize,
        /// Sessions per client connection.
        #[arg(long, env = "FLOWPLANE_BENCH_PER_CONNECTION", default_value_t = 100)]
        per_connection: usize,
        /// Seconds to hold them open.
        #[arg(long, env = "FLOWPLANE_BENCH_HOLD_SECS", default_value_t = 10)]
        hold_secs: u64,
    },
    /// Runs one B7 variant and prints its result as one JSON line.
    #[command(hide = true)]
    B7Child {
        /// Telemetry variant.
        #[arg(long, env = "FLOWPLANE_BENCH_TELEMETRY", value_enum)]
        telemetry: Variant,
        /// B3 sessions.
        #[arg(long, env = "FLOWPLANE_BENCH_SESSIONS")]
        sessions: usize,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Variant {
    /// OTLP export to an in-process fake collector plus the Prometheus recorder.
    On,
    /// The telemetry subscriber with trace export off and no metrics recorder.
    Off,
    /// No subscriber at all.
    None,
}

/// Log lines default to warnings: info lines per session would flood the terminal.
fn quiet(mut args: TelemetryArgs) -> TelemetryArgs {
    args.log_filter.get_or_insert_with(|| "warn".into());
    args
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::ServeEcho { listen }) => {
            if !listen.ip().is_loopback() {
                anyhow::bail!("--listen must be a loopback address, got {listen}");
            }
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("cannot bind --listen {listen}"))?;
            flowplane_bench::echo::serve(listener, std::future::pending()).await?;
            Ok(())
        }
        Some(Command::Idle {
            pipeline,
            sessions,
            per_connection,
            hold_secs,
        }) => {
            flowplane_bench::raise_open_files_limit();
            let target = flowplane_bench::load::Target::Pipeline {
                addr: pipeline,
                manifest: flowplane_bench::load::one_node_manifest(
                    "passthrough",
                    serde_json::json!({}),
                ),
            };
            let held = flowplane_bench::load::idle(&target, sessions, per_connection, 32).await;
            eprintln!(
                "opened {} sessions ({} failed: {:?}) in {:.1} s; holding {hold_secs} s",
                held.opened,
                held.failures,
                held.first_failure,
                held.open_time.as_secs_f64()
            );
            tokio::time::sleep(Duration::from_secs(hold_secs)).await;
            held.close().await;
            Ok(())
        }
        Some(Command::B7Child {
            telemetry,
            sessions,
        }) => b7_child(cli.quick, telemetry, sessions, cli.telemetry).await,
        None => {
            let _telemetry = flowplane_telemetry::init_with(
                "flowplane-bench",
                &quiet(cli.telemetry),
                TraceExport::Off,
            )?;
            let report = flowplane_bench::run(RunConfig {
                quick: cli.quick,
                only: cli.only,
                bin_dir: cli.bin_dir,
                log_dir: cli.log_dir,
                child_log_filter: cli.child_log_filter,
            })
            .await?;
            print!("{}", flowplane_bench::report::table(&report));
            flowplane_bench::report::write_json(&report, &cli.json)?;
            println!(
                "{} rows in {:.0} s ({} profile, load average {} -> {}); JSON: {}",
                report.rows.len(),
                report.total_seconds,
                report.profile,
                report.load_average.0,
                report.load_average.1,
                cli.json.display()
            );
            Ok(())
        }
    }
}

async fn b7_child(
    quick: bool,
    variant: Variant,
    sessions: usize,
    args: TelemetryArgs,
) -> anyhow::Result<()> {
    let args = quiet(args);
    let spans = Arc::new(AtomicU64::new(0));
    let (guard, label) = match variant {
        Variant::On => {
            let mut collector = fake_opentelemetry_collector::FakeCollectorServer::start()
                .await
                .map_err(|e| anyhow::anyhow!("fake collector: {e}"))?;
            let guard = flowplane_telemetry::init_with(
                "flowplane-bench",
                &args,
                TraceExport::Otlp(collector.endpoint()),
            )?;
            flowplane_telemetry::metrics::install()?;
            // The fake collector blocks its exports once 64 spans wait unread: keep draining.
            let counted = spans.clone();
            tokio::spawn(async move {
                loop {
                    let got = collector
                        .exported_spans(1, Duration::from_millis(100))
                        .await;
                    counted.fetch_add(got.len() as u64, Ordering::Relaxed);
                }
            });
            (Some(guard), "on")
        }
        Variant::Off => (
            Some(flowplane_telemetry::init_with(
                "flowplane-bench",
                &args,
                TraceExport::Off,
            )?),
            "off",
        ),
        Variant::None => (None, "none"),
    };
    let mut result = flowplane_bench::b7_child(quick, label, sessions).await?;
    if let Some(guard) = guard {
        guard.flush().await.ok();
        tokio::time::sleep(Duration::from_millis(300)).await;
        guard.shutdown().await;
    }
    result.spans_exported = spans.load(Ordering::Relaxed);
    println!("{}", serde_json::to_string(&result)?);
    Ok(())
}
