//! `log`: a consumer that logs every delivery at info (its lineage, size and attempt, and
//! the error of a dead letter) and acknowledges it SUCCESS. For trying pipelines out and
//! as a dead-letter consumer of last resort; it keeps nothing.

use flowplane_sdk::{
    Ack, ConnectorError, ConnectorSpec, Consumer, ConsumerOpen, ConsumerSink, Delivery,
    async_trait, proto::data::v1::DataTypeHint,
};

/// The `log` consumer.
#[derive(Clone, Copy, Debug, Default)]
pub struct LogConsumer;

#[async_trait]
impl Consumer for LogConsumer {
    fn spec(&self) -> ConnectorSpec {
        ConnectorSpec::new(
            "log",
            "logs each delivery (lineage, size, dead-letter error) at info",
        )
        .data_types([DataTypeHint::Any])
    }

    async fn open(&self, _open: ConsumerOpen<'_>) -> Result<Box<dyn ConsumerSink>, ConnectorError> {
        Ok(Box::new(LogSink))
    }
}

struct LogSink;

#[async_trait]
impl ConsumerSink for LogSink {
    async fn consume(&mut self, delivery: Delivery) -> Ack {
        let l = &delivery.lineage;
        let payload = delivery.buffer.payload.as_ref();
        let bytes = payload.map_or(0, |p| p.payload_len());
        let kind = payload.map_or("none", |p| p.type_hint().short_name());
        match &delivery.error {
            Some(error) => tracing::info!(
                pipeline = %l.pipeline, source_id = %l.source_id, partition = l.partition,
                offset = l.offset, output = %l.output, output_index = l.output_index,
                bytes, kind, attempt = delivery.attempt,
                reason = %error.reason, error = %error.message, node_id = %error.node_id,
                "dead letter"
            ),
            None => tracing::info!(
                pipeline = %l.pipeline, source_id = %l.source_id, partition = l.partition,
                offset = l.offset, output = %l.output, output_index = l.output_index,
                bytes, kind, attempt = delivery.attempt,
                "delivery"
            ),
        }
        Ack::Success
    }
}
