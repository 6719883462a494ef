//! `file`: a consumer appending deliveries to a file, one per output when the path holds
//! `{output}`: JSON lines carrying the lineage and the payload (`jsonl`), the payload
//! bytes (`raw`), or audio frames (`wav`). It dedupes on the lineage tuple: the keys
//! written are rebuilt on open from the file itself (jsonl) or from a sidecar
//! `<path>.lineage` (raw, wav) that records each key with the data length it committed,
//! so a tail written by a run that died before recording it is cut off and written again.
//! A delivery is written and flushed before it is acknowledged SUCCESS; it never writes
//! one key twice, and never acknowledges SUCCESS what it could not write (RETRY).

use std::{
    collections::{HashMap, HashSet},
    fs::{File, OpenOptions},
    io::{BufRead, BufReader, Read, Seek, SeekFrom, Write},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, Weak},
};

use flowplane_sdk::{
    Ack, ConnectorError, ConnectorSpec, Consumer, ConsumerOpen, ConsumerSink, Delivery, Param,
    async_trait,
    proto::{
        connect::v1::Lineage,
        data::v1::{AudioFormat, DataTypeHint, data_buffer::Payload},
    },
};
use serde_json::{Value, json};

use crate::wav;

/// Counter of deliveries acknowledged without writing: their lineage was written before.
pub const DUPLICATES_TOTAL: &str = "flowplane_connector_duplicates_total";

/// How deliveries are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// One JSON object per line: lineage, attempt, payload (and error for dead letters).
    Jsonl,
    /// The payload bytes, appended.
    Raw,
    /// Audio frames in one WAV file; the first delivery sets rate, channels and format.
    Wav,
}

/// The idempotency key of a delivery: its whole lineage.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key(String, String, u32, u64, String, u32);

impl From<&Lineage> for Key {
    fn from(l: &Lineage) -> Self {
        Key(
            l.pipeline.clone(),
            l.source_id.clone(),
            l.partition,
            l.offset,
            l.output.clone(),
            l.output_index,
        )
    }
}

fn lineage_json(l: &Lineage) -> Value {
    json!({
        "pipeline": l.pipeline,
        "source_id": l.source_id,
        "partition": l.partition,
        "offset": l.offset,
        "output": l.output,
        "output_index": l.output_index,
    })
}

fn lineage_from_json(v: &Value) -> Option<Lineage> {
    Some(Lineage {
        pipeline: v.get("pipeline")?.as_str()?.into(),
        source_id: v.get("source_id")?.as_str()?.into(),
        partition: u32::try_from(v.get("partition")?.as_u64()?).ok()?,
        offset: v.get("offset")?.as_u64()?,
        output: v.get("output")?.as_str()?.into(),
        output_index: u32::try_from(v.get("output_index")?.as_u64()?).ok()?,
    })
}

/// A payload as JSON: a JSON payload as itself, text as a string, bytes in hex.
pub fn payload_json(payload: Option<&Payload>) -> Value {
    match payload {
        None => Value::Null,
        Some(Payload::Json(j)) => {
            serde_json::from_str(&j.json).unwrap_or_else(|_| Value::String(j.json.clone()))
        }
        Some(Payload::Text(t)) => Value::String(t.text.clone()),
        Some(Payload::Binary(b)) => json!({"mime_type": b.mime_type, "hex": hex::encode(&b.data)}),
        Some(Payload::Audio(a)) => json!({
            "sample_rate": a.sample_rate, "channels": a.channels, "format": a.format,
            "num_samples": a.num_samples, "hex": hex::encode(&a.samples),
        }),
        Some(Payload::Video(v)) => json!({
            "width": v.width, "height": v.height, "format": v.format,
            "frame_number": v.frame_number, "hex": hex::encode(&v.pixels),
        }),
        Some(Payload::Tensor(t)) => json!({
            "shape": t.shape, "dtype": t.dtype, "hex": hex::encode(&t.data),
        }),
    }
}

fn payload_bytes(payload: Option<&Payload>) -> Vec<u8> {
    match payload {
        None => Vec::new(),
        Some(Payload::Json(j)) => j.json.as_bytes().to_vec(),
        Some(Payload::Text(t)) => t.text.as_bytes().to_vec(),
        Some(Payload::Binary(b)) => b.data.to_vec(),
        Some(Payload::Audio(a)) => a.samples.to_vec(),
        Some(Payload::Video(v)) => v.pixels.to_vec(),
        Some(Payload::Tensor(t)) => t.data.to_vec(),
    }
}

/// The `file` consumer. Streams writing to one path share its state, so several
/// outputs (or pipelines) may write to one file without writing a key twice.
#[derive(Debug, Default)]
pub struct FileConsumer {
    open: Mutex<HashMap<PathBuf, Weak<Mutex<Written>>>>,
}

/// Replaces what a path must not hold: an output name is not a path.
fn file_safe(output: &str) -> String {
    let safe: String = output
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    match safe.as_str() {
        "" | "." | ".." => "_".into(),
        _ => safe,
    }
}

#[async_trait]
impl Consumer for FileConsumer {
    fn spec(&self) -> ConnectorSpec {
        ConnectorSpec::new(
            "file",
            "appends deliveries to a file ({output} in the path is the output name), deduped on their lineage",
        )
        .data_types([DataTypeHint::Any])
        .param(
            Param::string("path", "the file; {output} is replaced by the output name").required(),
        )
        .param(
            Param::string("format", "jsonl (lineage and payload per line), raw (payload bytes) or wav")
                .one_of([json!("jsonl"), json!("raw"), json!("wav")])
                .default(json!("jsonl")),
        )
        .param(
            Param::bool("sync", "fsync every write, not only flush it to the OS").default(json!(false)),
        )
    }

    async fn open(&self, open: ConsumerOpen<'_>) -> Result<Box<dyn ConsumerSink>, ConnectorError> {
        let params = open.params;
        let path = PathBuf::from(
            params
                .str("path")?
                .replace("{output}", &file_safe(open.output)),
        );
        let format = match params.str("format")? {
            "raw" => Format::Raw,
            "wav" => Format::Wav,
            _ => Format::Jsonl,
        };
        let sync = params.bool("sync")?;
        let unavailable = |e: String| {
            ConnectorError::unavailable("FILE_UNAVAILABLE", format!("{}: {e}", path.display()))
                .with_field("open.params.path")
        };
        let existing = {
            let open = self.open.lock().unwrap();
            open.get(&path).and_then(Weak::upgrade)
        };
        let written = match existing {
            Some(written) => {
                if written.lock().unwrap().format != format {
                    return Err(ConnectorError::new(
                        tonic::Code::FailedPrecondition,
                        "FORMAT_CONFLICT",
                        format!("{} is open in another format", path.display()),
                    )
                    .with_field("open.params.format"));
                }
                written
            }
            None => {
                let at = path.clone();
                let state = tokio::task::spawn_blocking(move || Written::open(at, format, sync))
                    .await
                    .map_err(|e| unavailable(e.to_string()))?
                    .map_err(|e| unavailable(e.to_string()))?;
                let state = Arc::new(Mutex::new(state));
                let mut open = self.open.lock().unwrap();
                open.retain(|_, w| w.strong_count() > 0);
                // Another stream may have opened it meanwhile: use the first.
                match open.get(&path).and_then(Weak::upgrade) {
                    Some(first) => first,
                    None => {
                        open.insert(path.clone(), Arc::downgrade(&state));
                        state
                    }
                }
            }
        };
        tracing::info!(path = %path.display(), output = open.output, pipeline = open.pipeline, "file consumer opened");
        Ok(Box::new(FileSink { written }))
    }
}

struct FileSink {
    written: Arc<Mutex<Written>>,
}

#[async_trait]
impl ConsumerSink for FileSink {
    async fn consume(&mut self, delivery: Delivery) -> Ack {
        let written = self.written.clone();
        tokio::task::spawn_blocking(move || written.lock().unwrap().write(&delivery))
            .await
            .unwrap_or_else(|e| Ack::Retry(format!("the write did not finish: {e}")))
    }
}

/// One file being written, and every key in it.
#[derive(Debug)]
struct Written {
    path: PathBuf,
    format: Format,
    sync: bool,
    file: File,
    /// The sidecar of raw and wav files.
    sidecar: Option<File>,
    keys: HashSet<Key>,
    /// Committed length of the data file.
    len: u64,
    /// The WAV file's format, once known.
    audio: Option<(AudioFormat, u32, u32)>,
}

fn sidecar_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".lineage");
    PathBuf::from(name)
}

fn open_rw(path: &Path) -> std::io::Result<File> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
}

/// Reads complete lines; returns them and the length of the complete part.
fn complete_lines(file: &mut File) -> std::io::Result<(Vec<String>, u64)> {
    file.seek(SeekFrom::Start(0))?;
    let mut reader = BufReader::new(file);
    let mut lines = Vec::new();
    let mut complete = 0u64;
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line)?;
        if n == 0 || line.last() != Some(&b'\n') {
            break;
        }
        complete += n as u64;
        lines.push(String::from_utf8_lossy(&line[..n - 1]).into_owned());
    }
    Ok((lines, complete))
}

impl Written {
    fn open(path: PathBuf, format: Format, sync: bool) -> std::io::Result<Self> {
        let mut file = open_rw(&path)?;
        let mut keys = HashSet::new();
        let mut audio = None;
        let (len, sidecar) = match format {
            Format::Jsonl => {
                let (lines, complete) = complete_lines(&mut file)?;
                for line in &lines {
                    match serde_json::from_str::<Value>(line)
                        .ok()
                        .and_then(|v| v.get("lineage").and_then(lineage_from_json))
                    {
                        Some(lineage) => {
                            keys.insert(Key::from(&lineage));
                        }
                        None => {
                            tracing::warn!(path = %path.display(), "a line without a lineage; it is kept, not deduped")
                        }
                    }
                }
                (complete, None)
            }
            Format::Raw | Format::Wav => {
                let mut sidecar = open_rw(&sidecar_path(&path))?;
                let (lines, complete) = complete_lines(&mut sidecar)?;
                sidecar.set_len(complete)?;
                let mut committed = 0u64;
                for line in &lines {
                    let Some((end, lineage)) = line.split_once('\t') else {
                        continue;
                    };
                    let (Ok(end), Some(lineage)) = (
                        end.parse::<u64>(),
                        serde_json::from_str::<Value>(lineage)
                            .ok()
                            .as_ref()
                            .and_then(lineage_from_json),
                    ) else {
                        continue;
                    };
                    keys.insert(Key::from(&lineage));
                    committed = committed.max(end);
                }
                if format == Format::Wav && committed > 0 {
                    let mut head = vec![0u8; wav::HEADER_BYTES as usize];
                    file.seek(SeekFrom::Start(0))?;
                    file.read_exact(&mut head)?;
                    if let Ok(Some(layout)) = wav::parse(&head) {
                        audio = Some((layout.format(), layout.sample_rate, layout.channels));
                    }
                }
                (committed, Some(sidecar))
            }
        };
        let found = file.metadata()?.len();
        if found > len {
            tracing::warn!(path = %path.display(), committed = len, found, "cutting a tail no acknowledgement covers");
        }
        file.set_len(len)?;
        if format == Format::Wav && len > 0 {
            patch_wav_sizes(&mut file, len)?;
        }
        tracing::info!(path = %path.display(), keys = keys.len(), "file consumer rebuilt its written keys");
        Ok(Self {
            path,
            format,
            sync,
            file,
            sidecar,
            keys,
            len,
            audio,
        })
    }

    fn write(&mut self, delivery: &Delivery) -> Ack {
        let key = Key::from(&delivery.lineage);
        if self.keys.contains(&key) {
            metrics::counter!(DUPLICATES_TOTAL, "consumer" => "file").increment(1);
            tracing::info!(path = %self.path.display(), pipeline = %key.0, source_id = %key.1, partition = key.2, offset = key.3, output = %key.4, output_index = key.5, "duplicate delivery skipped");
            return Ack::Success;
        }
        match self.append(delivery) {
            Ok(Some(reject)) => Ack::Reject(reject),
            Ok(None) => {
                self.keys.insert(key);
                Ack::Success
            }
            Err(e) => {
                // Whatever was half written is cut off on the next write or open.
                let _ = self.file.set_len(self.len);
                Ack::Retry(format!("writing {}: {e}", self.path.display()))
            }
        }
    }

    /// Appends one delivery and commits it; `Ok(Some)`: refused (REJECT) with this reason.
    fn append(&mut self, delivery: &Delivery) -> std::io::Result<Option<String>> {
        let payload = delivery.buffer.payload.as_ref();
        let bytes = match self.format {
            Format::Jsonl => {
                let mut line = json!({
                    "lineage": lineage_json(&delivery.lineage),
                    "attempt": delivery.attempt,
                    "payload": payload_json(payload),
                });
                if let Some(error) = &delivery.error {
                    line["error"] = json!({
                        "reason": error.reason, "message": error.message,
                        "node_id": error.node_id, "code": error.code,
                    });
                }
                let mut bytes = line.to_string().into_bytes();
                bytes.push(b'\n');
                bytes
            }
            Format::Raw => payload_bytes(payload),
            Format::Wav => {
                let Some(Payload::Audio(audio)) = payload else {
                    return Ok(Some(format!("{} takes audio only", self.path.display())));
                };
                let format =
                    AudioFormat::try_from(audio.format).unwrap_or(AudioFormat::Unspecified);
                let spec = (format, audio.sample_rate, audio.channels);
                match self.audio {
                    Some(known) if known != spec => {
                        return Ok(Some(format!(
                            "{} holds {:?} at {} Hz in {} channels, not {:?} at {} Hz in {} channels",
                            self.path.display(),
                            known.0,
                            known.1,
                            known.2,
                            spec.0,
                            spec.1,
                            spec.2
                        )));
                    }
                    Some(_) => {}
                    None => {
                        let channels = u16::try_from(audio.channels).unwrap_or(0);
                        if format == AudioFormat::Unspecified || channels == 0 {
                            return Ok(Some("audio without a format or channels".into()));
                        }
                        let header = wav::header(format, audio.sample_rate, channels, 0);
                        self.file.seek(SeekFrom::Start(0))?;
                        self.file.write_all(&header)?;
                        self.len = wav::HEADER_BYTES;
                        self.audio = Some(spec);
                    }
                }
                audio.samples.to_vec()
            }
        };
        self.file.seek(SeekFrom::Start(self.len))?;
        self.file.write_all(&bytes)?;
        let end = self.len + bytes.len() as u64;
        if self.format == Format::Wav {
            patch_wav_sizes(&mut self.file, end)?;
        }
        self.file.flush()?;
        if self.sync {
            self.file.sync_data()?;
        }
        if let Some(sidecar) = &mut self.sidecar {
            let line = format!("{end}\t{}\n", lineage_json(&delivery.lineage));
            sidecar.seek(SeekFrom::End(0))?;
            sidecar.write_all(line.as_bytes())?;
            sidecar.flush()?;
            if self.sync {
                sidecar.sync_data()?;
            }
        }
        self.len = end;
        Ok(None)
    }
}

/// Writes the RIFF and data sizes of a WAV file `len` bytes long.
fn patch_wav_sizes(file: &mut File, len: u64) -> std::io::Result<()> {
    let riff = u32::try_from(len.saturating_sub(8)).unwrap_or(u32::MAX);
    let data = u32::try_from(len.saturating_sub(wav::HEADER_BYTES)).unwrap_or(u32::MAX);
    file.seek(SeekFrom::Start(4))?;
    file.write_all(&riff.to_le_bytes())?;
    file.seek(SeekFrom::Start(40))?;
    file.write_all(&data.to_le_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use flowplane_sdk::{
        Params,
        proto::data::v1::{AudioBuffer, DataBuffer, JsonData},
    };

    use super::*;

    fn lineage(offset: u64, output: &str) -> Lineage {
        Lineage {
            pipeline: "p".into(),
            source_id: "gen".into(),
            partition: 0,
            offset,
            output: output.into(),
            output_index: 0,
        }
    }

    fn delivery(offset: u64, payload: Payload) -> Delivery {
        Delivery {
            lineage: lineage(offset, "out"),
            buffer: DataBuffer {
                payload: Some(payload),
                metadata: Default::default(),
            },
            attempt: 1,
            error: None,
        }
    }

    fn json_payload(text: &str) -> Payload {
        Payload::Json(JsonData {
            json: text.into(),
            schema_hint: String::new(),
        })
    }

    async fn sink(consumer: &FileConsumer, params: Value, output: &str) -> Box<dyn ConsumerSink> {
        let raw = flowplane_sdk::proto::json_to_struct(params.as_object().unwrap());
        let params = Params::validate(consumer.spec().params(), Some(&raw)).unwrap();
        consumer
            .open(ConsumerOpen {
                pipeline: "p",
                output,
                params: &params,
            })
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn a_redelivery_after_reopen_is_acknowledged_without_a_second_line() {
        let dir = tempfile::tempdir().unwrap();
        let pattern = dir.path().join("{output}.jsonl");
        let params = json!({"path": pattern.to_str().unwrap()});
        {
            let consumer = FileConsumer::default();
            let mut sink = sink(&consumer, params.clone(), "out").await;
            assert_eq!(
                sink.consume(delivery(0, json_payload("{\"result\":1}")))
                    .await,
                Ack::Success
            );
            assert_eq!(
                sink.consume(delivery(1, json_payload("{\"result\":2}")))
                    .await,
                Ack::Success
            );
            assert_eq!(
                sink.consume(delivery(1, json_payload("{\"result\":2}")))
                    .await,
                Ack::Success
            );
        }
        let path = dir.path().join("out.jsonl");
        // A crash in the middle of a write leaves half a line: cut on reopen.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"lineage\":")
            .unwrap();
        let consumer = FileConsumer::default();
        let mut sink = sink(&consumer, params, "out").await;
        assert_eq!(
            sink.consume(delivery(1, json_payload("{\"result\":2}")))
                .await,
            Ack::Success
        );
        assert_eq!(
            sink.consume(delivery(2, json_payload("{\"result\":3}")))
                .await,
            Ack::Success
        );
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let offsets: Vec<u64> = lines
            .iter()
            .map(|l| l["lineage"]["offset"].as_u64().unwrap())
            .collect();
        assert_eq!(offsets, [0, 1, 2]);
        assert_eq!(lines[1]["payload"], json!({"result": 2}));
        assert_eq!(lines[0]["lineage"]["output"], "out");
    }

    #[tokio::test]
    async fn raw_files_dedupe_through_the_sidecar_and_cut_an_unrecorded_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.bin");
        let params = json!({"path": path.to_str().unwrap(), "format": "raw"});
        let text = |s: &str| {
            Payload::Text(flowplane_sdk::proto::data::v1::TextData {
                text: s.into(),
                language: String::new(),
            })
        };
        {
            let consumer = FileConsumer::default();
            let mut sink = sink(&consumer, params.clone(), "out").await;
            assert_eq!(sink.consume(delivery(0, text("ab"))).await, Ack::Success);
            assert_eq!(sink.consume(delivery(1, text("cd"))).await, Ack::Success);
        }
        // Written by a run that died before recording it.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"XX")
            .unwrap();
        let consumer = FileConsumer::default();
        let mut sink = sink(&consumer, params, "out").await;
        assert_eq!(sink.consume(delivery(1, text("cd"))).await, Ack::Success);
        assert_eq!(sink.consume(delivery(2, text("ef"))).await, Ack::Success);
        assert_eq!(std::fs::read(&path).unwrap(), b"abcdef");
    }

    #[tokio::test]
    async fn wav_files_take_audio_of_one_format_and_stay_readable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.wav");
        let params = json!({"path": path.to_str().unwrap(), "format": "wav"});
        let audio = |rate: u32, samples: &[i16]| {
            Payload::Audio(AudioBuffer {
                samples: Bytes::from(
                    samples
                        .iter()
                        .flat_map(|s| s.to_le_bytes())
                        .collect::<Vec<_>>(),
                ),
                sample_rate: rate,
                channels: 1,
                format: AudioFormat::I16le as i32,
                num_samples: samples.len() as u64,
            })
        };
        {
            let consumer = FileConsumer::default();
            let mut sink = sink(&consumer, params.clone(), "out").await;
            assert_eq!(
                sink.consume(delivery(0, audio(8000, &[1, 2]))).await,
                Ack::Success
            );
            assert!(matches!(
                sink.consume(delivery(1, audio(16000, &[3]))).await,
                Ack::Reject(_)
            ));
            assert!(matches!(
                sink.consume(delivery(1, json_payload("{}"))).await,
                Ack::Reject(_)
            ));
        }
        let consumer = FileConsumer::default();
        let mut sink = sink(&consumer, params, "out").await;
        assert_eq!(
            sink.consume(delivery(0, audio(8000, &[1, 2]))).await,
            Ack::Success
        );
        assert_eq!(
            sink.consume(delivery(1, audio(8000, &[3]))).await,
            Ack::Success
        );
        let bytes = std::fs::read(&path).unwrap();
        let layout = wav::parse(&bytes).unwrap().unwrap();
        assert_eq!(layout.data_len, Some(6));
        assert_eq!(&bytes[44..], &[1, 0, 2, 0, 3, 0]);
    }

    #[tokio::test]
    async fn an_unwritable_path_is_a_retry_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let consumer = FileConsumer::default();
        let path = dir.path().join("out.jsonl");
        let mut sink = sink(&consumer, json!({"path": path.to_str().unwrap()}), "out").await;
        // The directory goes away and a directory takes the file's place.
        drop(std::fs::remove_file(&path));
        std::fs::create_dir(&path).unwrap();
        let written = {
            let open = consumer.open.lock().unwrap();
            open.values().next().unwrap().upgrade().unwrap()
        };
        // Point the open state at a handle that cannot write.
        written.lock().unwrap().file = File::open(dir.path().join("out.jsonl")).unwrap();
        match sink.consume(delivery(0, json_payload("{}"))).await {
            Ack::Retry(message) => assert!(message.contains("out.jsonl"), "{message}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn output_names_cannot_escape_the_directory() {
        assert_eq!(file_safe("../etc"), ".._etc");
        assert_eq!(file_safe(".."), "_");
        assert_eq!(file_safe("dead-letter"), "dead-letter");
    }
}
