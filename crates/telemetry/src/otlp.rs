//! The OTLP trace pipeline: a batch exporter over gRPC configured by the standard
//! `OTEL_*` variables, behind a wrapper that reports an unreachable collector once per
//! outage instead of once per batch. It must never block a caller: export runs on the
//! SDK's own thread and spans are dropped, not queued without bound, while it fails.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use opentelemetry::KeyValue;
#[cfg(feature = "otlp")]
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::{Resource, trace::SdkTracerProvider};
#[cfg(feature = "otlp")]
use opentelemetry_sdk::{
    error::OTelSdkResult,
    trace::{SpanData, SpanExporter},
};

use crate::{Error, Result};

const ENDPOINT_VARS: &[&str] = &[
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
];

/// Flush budget at shutdown while the collector answers, and while it does not.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(3);
const SHUTDOWN_TIMEOUT_UNREACHABLE: Duration = Duration::from_millis(500);

/// Where spans go.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum TraceExport {
    /// OTLP/gRPC when `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT`
    /// is set (and neither `OTEL_SDK_DISABLED=true` nor `OTEL_TRACES_EXPORTER=none`);
    /// otherwise spans get trace ids for logs and propagation but are not exported.
    #[default]
    FromEnv,
    /// OTLP/gRPC to this endpoint (`http://host:port`); the other `OTEL_*` variables still apply.
    Otlp(String),
    /// Never export.
    Off,
}

/// Whether the last export reached the collector.
#[derive(Debug, Default)]
#[cfg_attr(not(feature = "otlp"), allow(dead_code))]
pub(crate) struct ExportHealth {
    failing: AtomicBool,
}

pub(crate) struct Pipeline {
    pub provider: SdkTracerProvider,
    pub health: Option<Arc<ExportHealth>>,
    pub endpoint: Option<String>,
}

impl Pipeline {
    pub fn build(service_name: &str, export: TraceExport) -> Result<Self> {
        let (endpoint, explicit) = match export {
            TraceExport::FromEnv if export_disabled_by_env() => (None, false),
            TraceExport::FromEnv => (ENDPOINT_VARS.iter().find_map(|v| non_empty_env(v)), false),
            TraceExport::Otlp(endpoint) => (Some(endpoint), true),
            TraceExport::Off => (None, false),
        };
        // Sampler (OTEL_TRACES_SAMPLER / _ARG), limits and batch settings (OTEL_BSP_*) are
        // read from the environment by the SDK builders.
        let builder = SdkTracerProvider::builder().with_resource(resource(service_name));
        let Some(endpoint) = endpoint else {
            return Ok(Self {
                provider: builder.build(),
                health: None,
                endpoint: None,
            });
        };
        Self::export(builder, endpoint, explicit)
    }

    /// Built without the exporter: an endpoint from the environment is ignored, with a
    /// warning once logs are up; one given in code is a mistake worth failing for.
    #[cfg(not(feature = "otlp"))]
    fn export(
        builder: opentelemetry_sdk::trace::TracerProviderBuilder,
        endpoint: String,
        explicit: bool,
    ) -> Result<Self> {
        if explicit {
            return Err(Error::Exporter(format!(
                "cannot export traces to {endpoint}: built without the `otlp` feature"
            )));
        }
        Ok(Self {
            provider: builder.build(),
            health: None,
            endpoint: None,
        })
    }

    #[cfg(feature = "otlp")]
    fn export(
        builder: opentelemetry_sdk::trace::TracerProviderBuilder,
        endpoint: String,
        explicit: bool,
    ) -> Result<Self> {
        // The tonic channel spawns its worker on the current runtime.
        tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
        let mut exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic();
        if explicit {
            // A programmatic endpoint wins over the environment in opentelemetry-otlp.
            exporter = exporter.with_endpoint(endpoint.clone());
        }
        let exporter = exporter
            .build()
            .map_err(|e| Error::Exporter(e.to_string()))?;
        let health = Arc::new(ExportHealth::default());
        let exporter = QuietExporter {
            inner: exporter,
            health: health.clone(),
            endpoint: endpoint.clone(),
        };
        Ok(Self {
            provider: builder.with_batch_exporter(exporter).build(),
            health: Some(health),
            endpoint: Some(endpoint),
        })
    }
}

/// The service name comes from `OTEL_SERVICE_NAME`, else `service.name` in
/// `OTEL_RESOURCE_ATTRIBUTES`, else the binary's own name.
fn resource(service_name: &str) -> Resource {
    let detected = Resource::builder().build();
    let named = detected
        .get(&opentelemetry::Key::from_static_str("service.name"))
        .is_some_and(|name| !name.as_str().starts_with("unknown_service"));
    if named {
        detected
    } else {
        Resource::builder()
            .with_service_name(service_name.to_string())
            .with_attribute(KeyValue::new("service.namespace", "flowplane"))
            .build()
    }
}

fn non_empty_env(var: &str) -> Option<String> {
    std::env::var(var).ok().filter(|v| !v.trim().is_empty())
}

fn export_disabled_by_env() -> bool {
    non_empty_env("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
        || non_empty_env("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"))
}

/// Only OTLP over gRPC is built in; say so once instead of failing every export.
pub(crate) fn warn_about_unsupported_protocol() {
    for var in [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ] {
        if let Some(protocol) = non_empty_env(var).filter(|p| p != "grpc") {
            tracing::warn!(
                variable = var,
                protocol = %protocol,
                "only otlp over grpc is supported; exporting with grpc"
            );
            return;
        }
    }
}

/// Built without the `otlp` feature, an endpoint in the environment exports nothing;
/// say so once instead of leaving the traces to vanish quietly.
pub(crate) fn warn_about_missing_exporter() {
    #[cfg(not(feature = "otlp"))]
    if !export_disabled_by_env()
        && let Some(variable) = ENDPOINT_VARS.iter().find(|v| non_empty_env(v).is_some())
    {
        tracing::warn!(
            variable,
            "built without the otlp feature: traces are not exported"
        );
    }
}

pub(crate) fn shutdown_timeout(health: Option<&ExportHealth>) -> Duration {
    match health {
        Some(health) if health.failing.load(Ordering::Relaxed) => SHUTDOWN_TIMEOUT_UNREACHABLE,
        _ => SHUTDOWN_TIMEOUT,
    }
}

/// Logs the first failed export of an outage as one warning and its end as one info
/// line; the SDK would log an error for every batch.
#[cfg(feature = "otlp")]
#[derive(Debug)]
struct QuietExporter<E> {
    inner: E,
    health: Arc<ExportHealth>,
    endpoint: String,
}

#[cfg(feature = "otlp")]
impl<E: SpanExporter> SpanExporter for QuietExporter<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len();
        match self.inner.export(batch).await {
            Ok(()) => {
                if self.health.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!(endpoint = %self.endpoint, "trace export to the otlp collector recovered");
                }
            }
            Err(error) => {
                if !self.health.failing.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        endpoint = %self.endpoint,
                        %error,
                        dropped_spans = spans,
                        "cannot export traces to the otlp collector; dropping spans until it answers"
                    );
                }
            }
        }
        Ok(())
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "otlp")]
    mod quiet {
        use std::sync::atomic::AtomicUsize;

        use tracing_subscriber::{Layer, Registry, layer::SubscriberExt};

        use super::*;

        /// An exporter whose collector is up or down at the test's command.
        #[derive(Debug, Default)]
        struct Flaky {
            down: Arc<AtomicBool>,
        }

        impl SpanExporter for Flaky {
            async fn export(&self, _batch: Vec<SpanData>) -> OTelSdkResult {
                if self.down.load(Ordering::Relaxed) {
                    Err(opentelemetry_sdk::error::OTelSdkError::InternalFailure(
                        "connection refused".into(),
                    ))
                } else {
                    Ok(())
                }
            }
        }

        #[derive(Clone, Default)]
        struct Warnings(Arc<AtomicUsize>);

        impl<S: tracing::Subscriber> Layer<S> for Warnings {
            fn on_event(
                &self,
                event: &tracing::Event<'_>,
                _ctx: tracing_subscriber::layer::Context<'_, S>,
            ) {
                if *event.metadata().level() == tracing::Level::WARN {
                    self.0.fetch_add(1, Ordering::Relaxed);
                }
            }
        }

        #[test]
        fn an_unreachable_collector_warns_once_per_outage() {
            let down = Arc::new(AtomicBool::new(true));
            let health = Arc::new(ExportHealth::default());
            let exporter = QuietExporter {
                inner: Flaky { down: down.clone() },
                health: health.clone(),
                endpoint: "http://127.0.0.1:9".into(),
            };
            let warnings = Warnings::default();
            let subscriber = Registry::default().with(warnings.clone());
            let runtime = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            tracing::subscriber::with_default(subscriber, || {
                runtime.block_on(async {
                    for _ in 0..3 {
                        assert!(exporter.export(Vec::new()).await.is_ok());
                    }
                    assert_eq!(warnings.0.load(Ordering::Relaxed), 1);
                    assert_eq!(
                        shutdown_timeout(Some(&health)),
                        SHUTDOWN_TIMEOUT_UNREACHABLE
                    );

                    down.store(false, Ordering::Relaxed);
                    assert!(exporter.export(Vec::new()).await.is_ok());
                    assert_eq!(shutdown_timeout(Some(&health)), SHUTDOWN_TIMEOUT);

                    down.store(true, Ordering::Relaxed);
                    for _ in 0..3 {
                        assert!(exporter.export(Vec::new()).await.is_ok());
                    }
                    assert_eq!(warnings.0.load(Ordering::Relaxed), 2);
                });
            });
            assert_eq!(shutdown_timeout(None), SHUTDOWN_TIMEOUT);
        }
    }

    #[test]
    fn the_given_name_is_used_when_the_environment_names_nothing() {
        // The test environment sets neither OTEL_SERVICE_NAME nor OTEL_RESOURCE_ATTRIBUTES.
        if std::env::var_os("OTEL_SERVICE_NAME").is_some()
            || std::env::var_os("OTEL_RESOURCE_ATTRIBUTES").is_some()
        {
            return;
        }
        let resource = resource("flowplane-pipeline");
        let name = resource
            .get(&opentelemetry::Key::from_static_str("service.name"))
            .unwrap();
        assert_eq!(name.as_str(), "flowplane-pipeline");
    }
}
