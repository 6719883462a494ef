//! Prometheus metrics: one recorder per process (metrics-exporter-prometheus) behind the
//! `metrics` crate macros that any crate calls, a `/metrics` endpoint serving its text,
//! and a server layer counting RPCs and their latency by method and code. Labels stay
//! bounded: services, methods, codes, kinds; never session ids or sequence numbers.
//! Recording never blocks and never fails a call; without a recorder it is a no-op.

use std::{
    future::Future,
    net::SocketAddr,
    sync::{Mutex, OnceLock},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tower::{Layer, Service};

use crate::{
    Error, Result,
    rpc::{Observer, RpcBody, RpcEnd, RpcFuture, code_name, service_method},
};

/// Calls served, by `service`, `method` and `code` (upper-case gRPC code name); a
/// streaming call counts when its stream ends.
pub const SERVER_REQUESTS_TOTAL: &str = "flowplane_grpc_server_requests_total";
/// Time from a call's arrival to its status (the end of the stream), by `service`, `method`.
pub const SERVER_REQUEST_DURATION_SECONDS: &str = "flowplane_grpc_server_request_duration_seconds";
/// Calls in progress (open streams included), by `service`, `method`.
pub const SERVER_REQUESTS_IN_FLIGHT: &str = "flowplane_grpc_server_requests_in_flight";

/// Always 1, with the `service` binary's name and its `version` as labels, so a query can
/// join any series with the version that produced it.
pub const BUILD_INFO: &str = "flowplane_build_info";

/// Buckets of every histogram whose name ends in `_seconds` (and of any other without
/// its own): 500 µs to 5 min, so chunk latencies and whole sessions both fit.
pub const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 300.0,
];
/// Buckets of every histogram whose name ends in `_bytes`: 64 B to the 4 MiB payload limit.
pub const BYTES_BUCKETS: &[f64] = &[
    64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0,
];

/// How often histogram samples are folded in when nobody scrapes, to bound memory.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide Prometheus recorder, once; later calls return the same
/// handle. Fails only when another crate installed a different recorder first.
pub fn install() -> Result<PrometheusHandle> {
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    static INSTALLING: Mutex<()> = Mutex::new(());
    let _one_at_a_time = INSTALLING.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    let recorder = PrometheusBuilder::new()
        .set_buckets(SECONDS_BUCKETS)
        .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_bytes".into()), BYTES_BUCKETS))
        .map_err(|e| Error::MetricsRecorder(e.to_string()))?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|e| Error::MetricsRecorder(e.to_string()))?;
    describe();
    let upkeep = handle.clone();
    // A plain thread, so the upkeep needs no runtime and outlives none.
    let _ = std::thread::Builder::new()
        .name("flowplane-metrics-upkeep".into())
        .spawn(move || {
            loop {
                std::thread::sleep(UPKEEP_EVERY);
                upkeep.run_upkeep();
            }
        });
    Ok(HANDLE.get_or_init(|| handle).clone())
}

fn describe() {
    metrics::describe_counter!(
        SERVER_REQUESTS_TOTAL,
        metrics::Unit::Count,
        "gRPC calls served, by service, method and status code; streams count when they end"
    );
    metrics::describe_histogram!(
        SERVER_REQUEST_DURATION_SECONDS,
        metrics::Unit::Seconds,
        "time from a gRPC call's arrival to its status, by service and method"
    );
    metrics::describe_gauge!(
        SERVER_REQUESTS_IN_FLIGHT,
        metrics::Unit::Count,
        "gRPC calls in progress, open streams included, by service and method"
    );
    metrics::describe_gauge!(
        BUILD_INFO,
        "always 1; the labels name the service binary and its version"
    );
}

/// Sets [`BUILD_INFO`] for `service` at `version` (installs the recorder if needed).
pub fn build_info(service: &str, version: &str) -> Result<()> {
    install()?;
    metrics::gauge!(BUILD_INFO, "service" => service.to_string(), "version" => version.to_string())
        .set(1.0);
    Ok(())
}

/// The Prometheus text of every metric recorded so far (installs the recorder if needed).
pub fn render() -> Result<String> {
    Ok(install()?.render())
}

/// Binds the metrics listener when an address is configured (`--metrics-listen`).
pub async fn bind(addr: Option<SocketAddr>) -> Result<Option<TcpListener>> {
    let Some(addr) = addr else {
        return Ok(None);
    };
    TcpListener::bind(addr)
        .await
        .map(Some)
        .map_err(|source| Error::BindMetrics { addr, source })
}

/// Serves `GET /metrics` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let handle = install()?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let text = handle.render();
            async move {
                (
                    [(
                        http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    text,
                )
            }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(Error::ServeMetrics)
}

/// Binds `addr` when set and serves `/metrics` there in a background task until
/// `shutdown`; returns the bound address. The one call a `main` needs.
pub async fn spawn(
    addr: Option<SocketAddr>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Option<SocketAddr>> {
    let Some(listener) = bind(addr).await? else {
        return Ok(None);
    };
    install()?;
    let local = listener.local_addr().map_err(Error::ServeMetrics)?;
    tokio::spawn(async move {
        if let Err(error) = serve(listener, shutdown).await {
            tracing::error!(%error, "metrics endpoint stopped");
        }
    });
    tracing::info!(addr = %local, "serving prometheus metrics on /metrics");
    Ok(Some(local))
}

/// The server layer recording [`SERVER_REQUESTS_TOTAL`], [`SERVER_REQUEST_DURATION_SECONDS`]
/// and [`SERVER_REQUESTS_IN_FLIGHT`] for every call.
pub fn server_layer() -> ServerMetricsLayer {
    ServerMetricsLayer
}

/// See [`server_layer`].
#[derive(Clone, Copy, Debug, Default)]
pub struct ServerMetricsLayer;

impl<S> Layer<S> for ServerMetricsLayer {
    type Service = ServerMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ServerMetrics { inner }
    }
}

/// A server service that records metrics for the calls it passes on.
#[derive(Clone, Debug)]
pub struct ServerMetrics<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for ServerMetrics<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Error: std::fmt::Display,
{
    type Response = http::Response<RpcBody<ResBody, RpcMetrics>>;
    type Error = S::Error;
    type Future = RpcFuture<S::Future, RpcMetrics>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let observer = RpcMetrics::start(request.uri().path());
        RpcFuture::new(self.inner.call(request), Some(observer))
    }
}

/// One call's labels and start time.
#[derive(Debug)]
pub struct RpcMetrics {
    service: String,
    method: String,
    start: Instant,
}

impl RpcMetrics {
    fn start(path: &str) -> Self {
        // Paths that are not gRPC share one label pair, so scanners cannot add series.
        let (service, method) = service_method(path).unwrap_or(("unknown", "unknown"));
        let this = Self {
            service: service.to_string(),
            method: method.to_string(),
            start: Instant::now(),
        };
        metrics::gauge!(SERVER_REQUESTS_IN_FLIGHT, "service" => this.service.clone(), "method" => this.method.clone())
            .increment(1.0);
        this
    }
}

impl Observer for RpcMetrics {
    fn finish(self, end: RpcEnd) {
        let elapsed = self.start.elapsed().as_secs_f64();
        metrics::gauge!(SERVER_REQUESTS_IN_FLIGHT, "service" => self.service.clone(), "method" => self.method.clone())
            .decrement(1.0);
        metrics::histogram!(SERVER_REQUEST_DURATION_SECONDS, "service" => self.service.clone(), "method" => self.method.clone())
            .record(elapsed);
        metrics::counter!(
            SERVER_REQUESTS_TOTAL,
            "service" => self.service,
            "method" => self.method,
            "code" => code_name(end.code)
        )
        .increment(1);
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn scrape(addr: SocketAddr, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    }

    #[tokio::test]
    async fn serves_histograms_as_prometheus_histograms() {
        install().unwrap();
        install().unwrap();
        metrics::histogram!("flowplane_test_latency_seconds", "node" => "gain").record(0.003);
        metrics::histogram!("flowplane_test_chunk_bytes").record(1000.0);
        metrics::counter!("flowplane_test_chunks_total", "node" => "gain").increment(2);

        let listener = flowplane_test_support::local_listener().await;
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, async {
            let _ = stopped.await;
        }));

        let response = scrape(addr, "/metrics").await;
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        assert!(response.contains("text/plain; version=0.0.4"), "{response}");
        assert!(
            response.contains("# TYPE flowplane_test_latency_seconds histogram"),
            "{response}"
        );
        assert!(
            response
                .contains("flowplane_test_latency_seconds_bucket{node=\"gain\",le=\"0.005\"} 1"),
            "{response}"
        );
        assert!(
            response.contains("flowplane_test_chunk_bytes_bucket{le=\"1024\"} 1"),
            "{response}"
        );
        assert!(
            response.contains("flowplane_test_chunks_total{node=\"gain\"} 2"),
            "{response}"
        );
        assert!(scrape(addr, "/other").await.starts_with("HTTP/1.1 404"));

        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
    }

    #[test]
    fn build_info_is_one_and_every_own_family_is_described() {
        build_info("flowplane-test", "1.2.3").unwrap();
        // The server layer's families appear with their first call; record one of each.
        let observer = RpcMetrics::start("/flowplane.test.v1.TestService/Call");
        observer.finish(RpcEnd::code(tonic::Code::Ok));
        let text = render().unwrap();
        assert!(
            text.contains("flowplane_build_info{service=\"flowplane-test\",version=\"1.2.3\"} 1"),
            "{text}"
        );
        for family in [
            BUILD_INFO,
            SERVER_REQUESTS_TOTAL,
            SERVER_REQUEST_DURATION_SECONDS,
            SERVER_REQUESTS_IN_FLIGHT,
        ] {
            assert!(
                text.contains(&format!("# HELP {family} ")),
                "{family}: {text}"
            );
        }
    }

    #[tokio::test]
    async fn an_unset_address_binds_nothing() {
        assert!(bind(None).await.unwrap().is_none());
        let taken = flowplane_test_support::local_listener().await;
        let err = bind(Some(taken.local_addr().unwrap())).await.unwrap_err();
        assert!(err.to_string().contains("--metrics-listen"), "{err}");
    }
}
