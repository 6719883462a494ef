//! Reading traces back from an in-process OTLP collector: wait for a whole trace, then
//! find spans by parent, kind and name, and read their attributes.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use fake_opentelemetry_collector::{ExportedSpan, FakeCollectorServer};
use flowplane_test_support::wait_for;

/// Spans the collector received so far, shared with the waiting closure.
#[derive(Clone)]
pub struct Received {
    collector: Arc<tokio::sync::Mutex<FakeCollectorServer>>,
    spans: Arc<Mutex<Vec<ExportedSpan>>>,
}

impl Received {
    /// Every span received so far (as of the last [`Received::trace`]).
    pub fn all(&self) -> Vec<ExportedSpan> {
        self.spans.lock().unwrap().clone()
    }

    /// Collects what `collector` receives.
    pub fn new(collector: FakeCollectorServer) -> Self {
        Self {
            collector: Arc::new(tokio::sync::Mutex::new(collector)),
            spans: Arc::default(),
        }
    }

    /// Flushes and collects until `done` holds for the spans of the trace rooted at a span
    /// named `root`; returns that trace.
    pub async fn trace(
        &self,
        telemetry: &flowplane_telemetry::TelemetryGuard,
        root: &str,
        done: impl Fn(&[ExportedSpan]) -> bool,
    ) -> Vec<ExportedSpan> {
        wait_for(
            &format!("the spans of the trace rooted at {root:?}"),
            || {
                let this = self.clone();
                let flushed = telemetry.flush();
                let done = &done;
                async move {
                    flushed.await.unwrap();
                    let fresh = this
                        .collector
                        .lock()
                        .await
                        .exported_spans(0, Duration::ZERO)
                        .await;
                    let mut spans = this.spans.lock().unwrap();
                    spans.extend(fresh);
                    let trace_id = spans.iter().find(|s| s.name == root)?.trace_id.clone();
                    let trace: Vec<_> = spans
                        .iter()
                        .filter(|s| s.trace_id == trace_id)
                        .cloned()
                        .collect();
                    done(&trace).then_some(trace)
                }
            },
        )
        .await
    }
}

pub fn attribute<'a>(span: &'a ExportedSpan, key: &str) -> &'a str {
    span.attributes
        .get(key)
        .map(String::as_str)
        .unwrap_or_else(|| panic!("span {:?} has no attribute {key}: {span:#?}", span.name))
}

/// The one span of `kind` named `name` whose parent is `parent`.
pub fn child<'a>(
    trace: &'a [ExportedSpan],
    parent: &ExportedSpan,
    kind: &str,
    name: &str,
) -> &'a ExportedSpan {
    let found: Vec<_> = trace
        .iter()
        .filter(|s| s.parent_span_id == parent.span_id && s.kind == kind && s.name == name)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected one {kind} span {name:?} under {:?}; trace: {:#?}",
        parent.name,
        trace
            .iter()
            .map(|s| (&s.name, &s.kind, &s.span_id, &s.parent_span_id))
            .collect::<Vec<_>>()
    );
    found[0]
}
