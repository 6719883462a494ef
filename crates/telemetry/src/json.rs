//! JSON log lines that join with traces: every line carries the `trace_id` and `span_id`
//! of the OpenTelemetry context it was logged in, and the fields of its enclosing spans
//! (such as a session id) at the top level. It formats; it never filters or drops.

use std::fmt::{self, Write as _};

use opentelemetry::trace::TraceContextExt;
use serde_json::{Map, Value};
use tracing::{
    Event, Subscriber,
    field::{Field, Visit},
};
use tracing_subscriber::{
    fmt::{
        FmtContext, FormatEvent, FormatFields, FormattedFields,
        format::Writer,
        time::{FormatTime, SystemTime},
    },
    registry::LookupSpan,
};

/// Keys written first and in this order; fields of the same name never replace them.
const LEADING_KEYS: &[&str] = &[
    "timestamp",
    "level",
    "target",
    "message",
    "trace_id",
    "span_id",
    "span",
];

/// Event formatter for `LogFormat::Json`. Pair it with `JsonFields`, so that span
/// fields are stored as JSON objects this formatter can merge.
pub(crate) struct JsonFormat;

impl<S, N> FormatEvent<S, N> for JsonFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut fields = Map::new();
        let mut span_name = None;
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                span_name = Some(span.name());
                let extensions = span.extensions();
                let Some(stored) = extensions.get::<FormattedFields<N>>() else {
                    continue;
                };
                if let Ok(Value::Object(span_fields)) =
                    serde_json::from_str::<Value>(&stored.fields)
                {
                    fields.extend(span_fields);
                }
            }
        }
        event.record(&mut JsonVisitor(&mut fields));

        let mut timestamp = String::new();
        SystemTime.format_time(&mut Writer::new(&mut timestamp))?;
        let metadata = event.metadata();
        let mut leading = Map::new();
        leading.insert("timestamp".into(), timestamp.into());
        leading.insert("level".into(), metadata.level().as_str().into());
        leading.insert("target".into(), metadata.target().into());
        if let Some(message) = fields.remove("message") {
            leading.insert("message".into(), message);
        }
        // The layer activates a span's OpenTelemetry context on enter, and the gRPC server
        // layer attaches a remote one when it traces nothing itself: either way it is current.
        let context = opentelemetry::Context::current();
        let span = context.span();
        let span_context = span.span_context();
        if span_context.is_valid() {
            leading.insert(
                "trace_id".into(),
                span_context.trace_id().to_string().into(),
            );
            leading.insert("span_id".into(), span_context.span_id().to_string().into());
        }
        if let Some(name) = span_name {
            leading.insert("span".into(), name.into());
        }

        let mut line = String::with_capacity(256);
        line.push('{');
        let mut first = true;
        let mut put = |line: &mut String, key: &str, value: &Value| {
            if !first {
                line.push(',');
            }
            first = false;
            let _ = write!(line, "{}:{}", Value::from(key), value);
        };
        for key in LEADING_KEYS {
            if let Some(value) = leading.get(*key) {
                put(&mut line, key, value);
            }
        }
        for (key, value) in &fields {
            if !LEADING_KEYS.contains(&key.as_str()) && !key.starts_with("log.") {
                put(&mut line, key, value);
            }
        }
        line.push('}');
        writeln!(writer, "{line}")
    }
}

struct JsonVisitor<'a>(&'a mut Map<String, Value>);

impl Visit for JsonVisitor<'_> {
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0.insert(field.name().into(), value.to_string().into());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), format!("{value:?}").into());
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io,
        sync::{Arc, Mutex},
    };

    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing_subscriber::{EnvFilter, fmt::MakeWriter};

    use crate::{LogFormat, subscriber, trace_filter};

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Captured {
        type Writer = Captured;

        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    impl Captured {
        fn lines(&self) -> Vec<serde_json::Value> {
            String::from_utf8(self.0.lock().unwrap().clone())
                .unwrap()
                .lines()
                .map(|line| serde_json::from_str(line).expect(line))
                .collect()
        }
    }

    #[test]
    fn a_line_in_a_session_carries_trace_id_and_session_fields() {
        let captured = Captured::default();
        let provider = SdkTracerProvider::builder().build();
        let subscriber = subscriber(
            LogFormat::Json,
            EnvFilter::new("info"),
            trace_filter("info").unwrap(),
            &provider,
            captured.clone(),
            false,
        );
        let trace_id = tracing::subscriber::with_default(subscriber, || {
            use tracing_opentelemetry::OpenTelemetrySpanExt;
            let session = tracing::info_span!("session", session_id = "s-42", nodes = 2u64);
            let _entered = session.enter();
            let node = tracing::info_span!("node", node_id = "gain");
            let _node = node.enter();
            tracing::info!(chunks = 3u64, payload_type = "audio", "node finished");
            use opentelemetry::trace::TraceContextExt as _;
            session
                .context()
                .span()
                .span_context()
                .trace_id()
                .to_string()
        });

        let lines = captured.lines();
        assert_eq!(lines.len(), 1, "{lines:?}");
        let line = &lines[0];
        assert_eq!(line["message"], "node finished");
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["trace_id"], trace_id.as_str());
        assert_eq!(line["trace_id"].as_str().unwrap().len(), 32);
        assert_eq!(line["session_id"], "s-42");
        assert_eq!(line["nodes"], 2);
        assert_eq!(line["node_id"], "gain");
        assert_eq!(line["span"], "node");
        assert_eq!(line["chunks"], 3);
        assert_eq!(line["payload_type"], "audio");
    }

    #[test]
    fn a_line_outside_any_span_has_no_trace_id() {
        let captured = Captured::default();
        let provider = SdkTracerProvider::builder().build();
        let subscriber = subscriber(
            LogFormat::Json,
            EnvFilter::new("info"),
            trace_filter("info").unwrap(),
            &provider,
            captured.clone(),
            false,
        );
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(component_id = "p-1", "lease expired");
        });
        let lines = captured.lines();
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0]["message"], "lease expired");
        assert_eq!(lines[0]["component_id"], "p-1");
        assert!(lines[0].get("trace_id").is_none(), "{}", lines[0]);
    }
}
