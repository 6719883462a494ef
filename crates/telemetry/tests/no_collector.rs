//! With an OTLP endpoint where no collector listens, telemetry must stay harmless: spans
//! and flushes go on without error and shutdown returns, bounded, instead of hanging.

use std::time::Duration;

use flowplane_telemetry::{TelemetryArgs, TraceExport};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_collector_neither_blocks_nor_fails() {
    let closed = flowplane_test_support::local_listener().await;
    let endpoint = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);

    let telemetry = flowplane_telemetry::init_with(
        "flowplane-no-collector",
        &TelemetryArgs {
            log_filter: Some("error".into()),
            ..TelemetryArgs::default()
        },
        TraceExport::Otlp(endpoint),
    )
    .unwrap();
    assert!(matches!(
        flowplane_telemetry::init("again", &TelemetryArgs::default()),
        Err(flowplane_telemetry::Error::AlreadyInitialised)
    ));
    // Tests calling this after a real init get a no-op.
    flowplane_telemetry::init_for_tests();

    for n in 0..200u64 {
        let span = tracing::info_span!("work", n);
        let _entered = span.enter();
        tracing::info!("working");
    }
    // A generous bound turns a hang into a failure; nothing here measures speed.
    let bound = Duration::from_secs(20);
    tokio::time::timeout(bound, telemetry.flush())
        .await
        .expect("flush returns")
        .expect("export failures are not flush failures");
    tokio::time::timeout(bound, telemetry.shutdown())
        .await
        .expect("shutdown returns");
}
