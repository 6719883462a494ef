//! `generator`: a source of synthetic records, deterministic in (partition, offset), so
//! a replay from any offset yields the same records. JSON records are `json.calculator`
//! requests that carry their partition and offset; every `poison_every`-th one divides
//! by zero, which the calculator rejects (`DIVISION_BY_ZERO`). It never busy-waits: a
//! `rate` is kept with a timer, and records are made only when the reader has credit.

use std::collections::HashMap;

use bytes::Bytes;
use flowplane_sdk::{
    ConnectorError, ConnectorSpec, Param, ParamError, Record, Source, SourceOpen, SourceReader,
    async_trait,
    proto::data::v1::{BinaryData, DataTypeHint, JsonData, TextData, data_buffer::Payload},
};
use serde_json::json;
use tokio::time::{Duration, Instant};

/// Most partitions a generator stream may have.
pub const MAX_PARTITIONS: u64 = 1024;
/// Largest `size` of a binary record.
pub const MAX_SIZE: u64 = 1 << 20;

const OPS: [&str; 4] = ["add", "sub", "mul", "div"];

/// The payload a generator makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `json.calculator` requests.
    Json,
    /// `partition P offset O`.
    Text,
    /// `size` pseudo-random bytes.
    Binary,
}

/// The record at (`partition`, `offset`): the same every time.
pub fn record(kind: Kind, size: usize, poison_every: u64, partition: u32, offset: u64) -> Payload {
    match kind {
        Kind::Json => {
            let poisoned = poison_every > 0 && (offset + 1).is_multiple_of(poison_every);
            let value = if poisoned {
                json!({"op": "div", "operands": [offset, 0], "partition": partition, "offset": offset, "poison": true})
            } else {
                let op = OPS[(offset % 4) as usize];
                let a = offset % 1000 + 1;
                let b = (u64::from(partition) + offset) % 9 + 1;
                json!({"op": op, "operands": [a, b], "partition": partition, "offset": offset})
            };
            Payload::Json(JsonData {
                json: value.to_string(),
                schema_hint: String::new(),
            })
        }
        Kind::Text => Payload::Text(TextData {
            text: format!("partition {partition} offset {offset}"),
            language: String::new(),
        }),
        Kind::Binary => {
            // xorshift64*, seeded by the position.
            let mut state = (u64::from(partition) << 40) ^ offset ^ 0x9E37_79B9_7F4A_7C15;
            let mut data = Vec::with_capacity(size);
            while data.len() < size {
                state ^= state >> 12;
                state ^= state << 25;
                state ^= state >> 27;
                let word = state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
                let take = (size - data.len()).min(8);
                data.extend_from_slice(&word[..take]);
            }
            Payload::Binary(BinaryData {
                data: Bytes::from(data),
                mime_type: "application/octet-stream".into(),
            })
        }
    }
}

/// The `generator` source.
#[derive(Clone, Copy, Debug, Default)]
pub struct Generator;

#[async_trait]
impl Source for Generator {
    fn spec(&self) -> ConnectorSpec {
        ConnectorSpec::new(
            "generator",
            "synthetic records, deterministic per partition and offset: json.calculator requests, text or bytes",
        )
        .data_types([DataTypeHint::Json, DataTypeHint::Text, DataTypeHint::Binary])
        .param(Param::number("count", "records per partition; 0 is unbounded").default(json!(0)))
        .param(Param::number("partitions", "partitions, 1 to 1024").default(json!(1)))
        .param(
            Param::number("rate", "records per second per partition; 0 is as fast as credit allows")
                .default(json!(0)),
        )
        .param(
            Param::string("payload", "json (calculator requests), text or binary")
                .one_of([json!("json"), json!("text"), json!("binary")])
                .default(json!("json")),
        )
        .param(Param::number("size", "bytes of a binary record").default(json!(64)))
        .param(
            Param::number(
                "poison_every",
                "every Nth record (offsets N-1, 2N-1, ...) divides by zero; 0 never; json only",
            )
            .default(json!(0)),
        )
    }

    async fn open(&self, open: SourceOpen<'_>) -> Result<Box<dyn SourceReader>, ConnectorError> {
        let params = open.params;
        let count = params.u64("count")?;
        let partitions = params.u64("partitions")?;
        if !(1..=MAX_PARTITIONS).contains(&partitions) {
            return Err(ParamError::new(
                "partitions",
                format!("must be between 1 and {MAX_PARTITIONS}, got {partitions}"),
            )
            .into());
        }
        let rate = params.f64("rate")?;
        if !rate.is_finite() || rate < 0.0 {
            return Err(
                ParamError::new("rate", format!("must be a number >= 0, got {rate}")).into(),
            );
        }
        let kind = match params.str("payload")? {
            "text" => Kind::Text,
            "binary" => Kind::Binary,
            _ => Kind::Json,
        };
        let size = params.u64("size")?;
        if size > MAX_SIZE {
            return Err(ParamError::new(
                "size",
                format!("must be at most {MAX_SIZE} bytes, got {size}"),
            )
            .into());
        }
        let poison_every = params.u64("poison_every")?;
        if poison_every > 0 && kind != Kind::Json {
            return Err(ParamError::new(
                "poison_every",
                "applies to json payloads only; set payload to json or poison_every to 0",
            )
            .into());
        }
        let started = Instant::now();
        let partitions = (0..partitions as u32)
            .map(|p| Lane {
                partition: p,
                next: open.start(p),
                made: 0,
            })
            .collect();
        Ok(Box::new(GeneratorReader {
            kind,
            size: size as usize,
            poison_every,
            count,
            interval: (rate > 0.0).then(|| Duration::from_secs_f64(1.0 / rate)),
            started,
            lanes: partitions,
            turn: 0,
        }))
    }
}

/// One partition's position.
struct Lane {
    partition: u32,
    next: u64,
    /// Records made since the stream opened, for the rate.
    made: u64,
}

struct GeneratorReader {
    kind: Kind,
    size: usize,
    poison_every: u64,
    count: u64,
    interval: Option<Duration>,
    started: Instant,
    lanes: Vec<Lane>,
    /// Round-robin position, so partitions take turns.
    turn: usize,
}

impl GeneratorReader {
    fn done(&self, lane: &Lane) -> bool {
        self.count > 0 && lane.next >= self.count
    }

    fn due(&self, lane: &Lane) -> Instant {
        match self.interval {
            Some(interval) => self.started + interval.mul_f64(lane.made as f64),
            None => self.started,
        }
    }
}

#[async_trait]
impl SourceReader for GeneratorReader {
    fn partitions(&self) -> Vec<u32> {
        self.lanes.iter().map(|l| l.partition).collect()
    }

    fn data_type(&self) -> DataTypeHint {
        match self.kind {
            Kind::Json => DataTypeHint::Json,
            Kind::Text => DataTypeHint::Text,
            Kind::Binary => DataTypeHint::Binary,
        }
    }

    async fn next(&mut self) -> Result<Option<Record>, ConnectorError> {
        // The live partition due first, taking turns among those due together.
        let n = self.lanes.len();
        let mut best: Option<(Instant, usize)> = None;
        for step in 0..n {
            let i = (self.turn + step) % n;
            let lane = &self.lanes[i];
            if self.done(lane) {
                continue;
            }
            let due = self.due(lane);
            if best.is_none_or(|(at, _)| due < at) {
                best = Some((due, i));
            }
        }
        let Some((due, i)) = best else {
            return Ok(None);
        };
        tokio::time::sleep_until(due).await;
        self.turn = (i + 1) % n;
        let lane = &mut self.lanes[i];
        let (partition, offset) = (lane.partition, lane.next);
        lane.next += 1;
        lane.made += 1;
        let payload = record(self.kind, self.size, self.poison_every, partition, offset);
        Ok(Some(Record::new(partition, offset, payload)))
    }

    async fn pending(&mut self) -> HashMap<u32, u64> {
        let now = Instant::now();
        self.lanes
            .iter()
            .map(|lane| {
                let left = if self.count > 0 {
                    self.count.saturating_sub(lane.next)
                } else {
                    u64::MAX
                };
                // With a rate, what it holds is what is due and not yet sent.
                let due = match self.interval {
                    Some(interval) => {
                        let elapsed = now.saturating_duration_since(self.started);
                        let due = (elapsed.as_secs_f64() / interval.as_secs_f64()) as u64 + 1;
                        due.saturating_sub(lane.made)
                    }
                    None => u64::MAX,
                };
                let held = left.min(due);
                (lane.partition, if held == u64::MAX { 0 } else { held })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use flowplane_sdk::{Params, serde_json::Value};

    use super::*;

    async fn open(
        params: Value,
        start: &[(u32, u64)],
    ) -> Result<Box<dyn SourceReader>, ConnectorError> {
        let spec = Generator.spec();
        let raw = flowplane_sdk::proto::json_to_struct(params.as_object().unwrap());
        let params = Params::validate(spec.params(), Some(&raw)).map_err(ConnectorError::from)?;
        let starts: HashMap<u32, u64> = start.iter().copied().collect();
        Generator
            .open(SourceOpen {
                pipeline: "p",
                params: &params,
                start_offsets: &starts,
            })
            .await
    }

    async fn drain(reader: &mut Box<dyn SourceReader>) -> Vec<Record> {
        let mut records = Vec::new();
        while let Some(r) = reader.next().await.unwrap() {
            records.push(r);
        }
        records
    }

    /// What the real `json.calculator` makes of a record.
    fn calculator_result(payload: &Payload) -> Result<Value, String> {
        let Payload::Json(j) = payload else {
            panic!("not json")
        };
        let value: Value = serde_json::from_str(&j.json).unwrap();
        flowplane_processors::json_calculator::calculate(&value)
            .map(|_| value)
            .map_err(|e| e.reason().to_string())
    }

    #[tokio::test]
    async fn records_are_deterministic_and_a_replay_is_identical() {
        let params = json!({"count": 6, "partitions": 2});
        let mut first = open(params.clone(), &[]).await.unwrap();
        let all = drain(&mut first).await;
        assert_eq!(all.len(), 12);
        let mut replay = open(params, &[(0, 3), (1, 5)]).await.unwrap();
        let again = drain(&mut replay).await;
        assert_eq!(again.len(), 3 + 1);
        for record in &again {
            let original = all
                .iter()
                .find(|r| r.partition == record.partition && r.offset == record.offset)
                .unwrap();
            assert_eq!(original, record);
        }
        for record in &all {
            let value = calculator_result(&record.payload).unwrap();
            assert_eq!(value["partition"], record.partition);
            assert_eq!(value["offset"], record.offset);
        }
    }

    #[tokio::test]
    async fn every_nth_record_is_poison_for_the_calculator() {
        let mut reader = open(json!({"count": 9, "poison_every": 3}), &[])
            .await
            .unwrap();
        let verdicts: Vec<bool> = drain(&mut reader)
            .await
            .iter()
            .map(|r| calculator_result(&r.payload) == Err("DIVISION_BY_ZERO".into()))
            .collect();
        assert_eq!(
            verdicts,
            [false, false, true, false, false, true, false, false, true]
        );
    }

    #[tokio::test]
    async fn binary_and_text_payloads_are_deterministic() {
        let a = record(Kind::Binary, 100, 0, 2, 7);
        assert_eq!(a, record(Kind::Binary, 100, 0, 2, 7));
        assert_ne!(a, record(Kind::Binary, 100, 0, 2, 8));
        assert_eq!(a.payload_len(), 100);
        let Payload::Text(t) = record(Kind::Text, 0, 0, 1, 4) else {
            panic!()
        };
        assert_eq!(t.text, "partition 1 offset 4");
    }

    #[tokio::test(start_paused = true)]
    async fn a_rate_is_kept_with_a_timer() {
        let mut reader = open(json!({"rate": 10}), &[]).await.unwrap();
        let started = Instant::now();
        for _ in 0..11 {
            reader.next().await.unwrap().unwrap();
        }
        assert_eq!(started.elapsed(), Duration::from_secs(1));
        assert_eq!(reader.pending().await[&0], 0);
    }

    #[tokio::test]
    async fn bad_params_name_the_param() {
        let cases = [
            (json!({"partitions": 0}), "open.params.partitions"),
            (json!({"rate": -1}), "open.params.rate"),
            (json!({"payload": "xml"}), "open.params.payload"),
            (
                json!({"payload": "text", "poison_every": 2}),
                "open.params.poison_every",
            ),
            (json!({"count": 1.5}), "open.params.count"),
        ];
        for (params, field) in cases {
            let error = open(params.clone(), &[]).await.err().unwrap();
            assert_eq!(error.field(), field, "{params}: {error}");
            assert_eq!(error.code(), tonic::Code::InvalidArgument);
        }
    }
}
