//! `file`: a source reading one file as one partition: JSON lines, text lines, WAV audio
//! in chunks of frames, or bytes in chunks. A record's offset is its index (lines skip
//! blanks and count only the others), so starting at offset k skips k records. With
//! `follow` it keeps reading a growing file, waiting on a timer that backs off to
//! [`MAX_POLL`] between looks, never spinning; a record is sent only once it is whole.

use std::{collections::HashMap, io::SeekFrom, path::PathBuf};

use bytes::Bytes;
use flowplane_sdk::{
    ConnectorError, ConnectorSpec, Param, ParamError, Params, Record, Source, SourceOpen,
    SourceReader, async_trait,
    proto::data::v1::{
        AudioBuffer, BinaryData, DataTypeHint, JsonData, TextData, data_buffer::Payload,
    },
};
use serde_json::json;
use tokio::{
    fs::File,
    io::{AsyncReadExt, AsyncSeekExt},
    time::Duration,
};

use crate::wav::{self, WavLayout};

/// Shortest wait of a followed file at its end.
pub const MIN_POLL: Duration = Duration::from_millis(10);
/// Longest wait of a followed file at its end: how late an appended record may be seen.
pub const MAX_POLL: Duration = Duration::from_millis(200);
/// Longest line read; a longer one ends the stream naming its offset.
pub const MAX_LINE_BYTES: usize = flowplane_sdk::MAX_PAYLOAD_BYTES;
/// Bytes of the file scanned per [`SourceReader::pending`] call to count lines ahead.
const PENDING_SCAN_BYTES: u64 = 16 << 20;
const READ_BLOCK: usize = 64 << 10;

/// How the file is cut into records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// One JSON value per non-blank line.
    Jsonl,
    /// One text record per non-blank line.
    Text,
    /// WAV audio, `chunk_frames` frames per record.
    Wav,
    /// `chunk_bytes` bytes per record.
    Binary,
}

/// The `file` source.
#[derive(Clone, Copy, Debug, Default)]
pub struct FileSource;

#[async_trait]
impl Source for FileSource {
    fn spec(&self) -> ConnectorSpec {
        ConnectorSpec::new(
            "file",
            "one file as one partition: json lines, text lines, wav audio or bytes; follow keeps reading as it grows",
        )
        .data_types([
            DataTypeHint::Json,
            DataTypeHint::Text,
            DataTypeHint::Audio,
            DataTypeHint::Binary,
        ])
        .param(Param::string("path", "the file to read").required())
        .param(
            Param::string("format", "jsonl, text, wav or binary")
                .one_of([json!("jsonl"), json!("text"), json!("wav"), json!("binary")])
                .default(json!("jsonl")),
        )
        .param(Param::number("chunk_bytes", "bytes per binary record").default(json!(65536)))
        .param(Param::number("chunk_frames", "frames per wav record").default(json!(960)))
        .param(Param::bool("follow", "keep reading as the file grows").default(json!(false)))
    }

    async fn open(&self, open: SourceOpen<'_>) -> Result<Box<dyn SourceReader>, ConnectorError> {
        Ok(Box::new(open_file(open.params, open.start(0)).await?))
    }
}

/// Opens the file `params` name, positioned at offset `start`.
pub(crate) async fn open_file(params: &Params, start: u64) -> Result<FileReader, ConnectorError> {
    let path = PathBuf::from(params.str("path")?);
    let format = match params.str("format")? {
        "text" => Format::Text,
        "wav" => Format::Wav,
        "binary" => Format::Binary,
        _ => Format::Jsonl,
    };
    let limit = flowplane_sdk::MAX_PAYLOAD_BYTES as u64;
    let chunk_bytes = params.u64("chunk_bytes")?;
    if !(1..=limit).contains(&chunk_bytes) {
        return Err(ParamError::new(
            "chunk_bytes",
            format!("must be between 1 and {limit}, got {chunk_bytes}"),
        )
        .into());
    }
    let chunk_frames = params.u64("chunk_frames")?;
    if !(1..=1 << 20).contains(&chunk_frames) {
        return Err(ParamError::new(
            "chunk_frames",
            format!("must be between 1 and {}, got {chunk_frames}", 1 << 20),
        )
        .into());
    }
    let follow = params.bool("follow")?;
    let file = File::open(&path).await.map_err(|e| {
        ConnectorError::unavailable(
            "FILE_UNAVAILABLE",
            format!("cannot open {}: {e}", path.display()),
        )
        .with_field("open.params.path")
    })?;
    let mut reader = FileReader {
        path,
        format,
        follow,
        file,
        buf: Vec::new(),
        pos: 0,
        next: 0,
        chunk_bytes: chunk_bytes as usize,
        chunk_frames: chunk_frames as usize,
        wav: None,
        lines_done: 0,
        scanned: 0,
        scanned_lines: 0,
        polls: 0,
    };
    reader.skip(start).await?;
    Ok(reader)
}

pub(crate) struct FileReader {
    path: PathBuf,
    format: Format,
    follow: bool,
    file: File,
    /// Bytes read from the file and not yet made into records.
    buf: Vec<u8>,
    /// File position of `buf[0]`.
    pos: u64,
    /// The offset of the next record.
    next: u64,
    chunk_bytes: usize,
    chunk_frames: usize,
    wav: Option<WavLayout>,
    /// Newline-terminated lines consumed, blank ones included, for `pending`.
    lines_done: u64,
    /// How far `pending` has counted newlines, and how many it found.
    scanned: u64,
    scanned_lines: u64,
    /// Looks at the end of a followed file.
    pub(crate) polls: u64,
}

impl FileReader {
    fn io(&self, e: std::io::Error) -> ConnectorError {
        ConnectorError::unavailable(
            "FILE_UNAVAILABLE",
            format!("reading {}: {e}", self.path.display()),
        )
    }

    /// Reads more of the file into `buf`; `false` at its end.
    async fn fill(&mut self) -> Result<bool, ConnectorError> {
        let mut block = vec![0u8; READ_BLOCK];
        let n = self.file.read(&mut block).await.map_err(|e| self.io(e))?;
        self.buf.extend_from_slice(&block[..n]);
        Ok(n > 0)
    }

    /// Reads more, waiting at the end of a followed file; `false` at the end of one not
    /// followed.
    async fn more(&mut self) -> Result<bool, ConnectorError> {
        let mut pause = MIN_POLL;
        loop {
            if self.fill().await? {
                return Ok(true);
            }
            if !self.follow {
                return Ok(false);
            }
            self.polls += 1;
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MAX_POLL);
        }
    }

    fn take(&mut self, n: usize) -> Vec<u8> {
        self.pos += n as u64;
        self.buf.drain(..n).collect()
    }

    /// The next record's bytes, whole; `None` at the end of a file not followed.
    async fn next_raw(&mut self) -> Result<Option<Vec<u8>>, ConnectorError> {
        match self.format {
            Format::Jsonl | Format::Text => loop {
                if let Some(end) = self.buf.iter().position(|b| *b == b'\n') {
                    let mut line = self.take(end + 1);
                    self.lines_done += 1;
                    line.pop();
                    if line.last() == Some(&b'\r') {
                        line.pop();
                    }
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    return Ok(Some(line));
                }
                if self.buf.len() > MAX_LINE_BYTES {
                    return Err(ConnectorError::internal(
                        "LINE_TOO_LONG",
                        format!(
                            "{}: the line of offset {} is longer than {MAX_LINE_BYTES} bytes",
                            self.path.display(),
                            self.next
                        ),
                    ));
                }
                if !self.more().await? {
                    // A last line without a newline, in a file nobody is writing.
                    if self.buf.iter().all(u8::is_ascii_whitespace) {
                        return Ok(None);
                    }
                    let n = self.buf.len();
                    return Ok(Some(self.take(n)));
                }
            },
            Format::Binary | Format::Wav => {
                let chunk = match self.format {
                    Format::Wav => self.chunk_frames * self.layout().await?.frame_bytes(),
                    _ => self.chunk_bytes,
                };
                let chunk = match self.wav.and_then(|w| w.data_len) {
                    // A declared length ends the samples (a chunk may follow them).
                    Some(len) if !self.follow => {
                        let end = self.wav.map_or(0, |w| w.data_start) + len;
                        chunk.min(end.saturating_sub(self.pos) as usize)
                    }
                    _ => chunk,
                };
                if chunk == 0 {
                    return Ok(None);
                }
                while self.buf.len() < chunk {
                    if !self.more().await? {
                        let frame = self.wav.map_or(1, |w| w.frame_bytes());
                        let whole = self.buf.len() / frame * frame;
                        if whole == 0 {
                            return Ok(None);
                        }
                        return Ok(Some(self.take(whole)));
                    }
                }
                Ok(Some(self.take(chunk)))
            }
        }
    }

    /// The WAV header, read (waiting for it when followed) once.
    async fn layout(&mut self) -> Result<WavLayout, ConnectorError> {
        if let Some(layout) = self.wav {
            return Ok(layout);
        }
        loop {
            match wav::parse(&self.buf) {
                Ok(Some(layout)) => {
                    let start = layout.data_start as usize;
                    self.take(start);
                    self.wav = Some(layout);
                    return Ok(layout);
                }
                Ok(None) => {
                    if !self.more().await? {
                        return Err(self.not_wav("the header is truncated".into()));
                    }
                }
                Err(message) => return Err(self.not_wav(message)),
            }
        }
    }

    fn not_wav(&self, message: String) -> ConnectorError {
        ConnectorError::new(
            tonic::Code::FailedPrecondition,
            "MALFORMED_FILE",
            format!(
                "{} is not a usable wav file: {message}",
                self.path.display()
            ),
        )
        .with_field("open.params.path")
    }

    /// Skips `records` records: a start offset. Fixed-size records are skipped by seeking.
    async fn skip(&mut self, records: u64) -> Result<(), ConnectorError> {
        if records == 0 {
            return Ok(());
        }
        let bytes = match self.format {
            Format::Binary => Some(records.saturating_mul(self.chunk_bytes as u64)),
            Format::Wav => {
                let frame = self.layout().await?.frame_bytes() as u64;
                Some(records.saturating_mul(self.chunk_frames as u64 * frame))
            }
            Format::Jsonl | Format::Text => None,
        };
        match bytes {
            Some(bytes) => {
                let target = self.pos + bytes;
                self.buf.clear();
                self.file
                    .seek(SeekFrom::Start(target))
                    .await
                    .map_err(|e| self.io(e))?;
                self.pos = target;
                self.next = records;
            }
            None => {
                while self.next < records {
                    if self.next_raw().await?.is_none() {
                        break;
                    }
                    self.next += 1;
                }
            }
        }
        Ok(())
    }

    fn payload(&self, raw: Vec<u8>) -> Payload {
        match self.format {
            Format::Jsonl => Payload::Json(JsonData {
                json: String::from_utf8_lossy(&raw).into_owned(),
                schema_hint: String::new(),
            }),
            Format::Text => Payload::Text(TextData {
                text: String::from_utf8_lossy(&raw).into_owned(),
                language: String::new(),
            }),
            Format::Binary => Payload::Binary(BinaryData {
                data: Bytes::from(raw),
                mime_type: "application/octet-stream".into(),
            }),
            Format::Wav => {
                let layout = self.wav.expect("read before any record");
                let frames = raw.len() / layout.frame_bytes();
                Payload::Audio(AudioBuffer {
                    samples: Bytes::from(layout.convert(&raw)),
                    sample_rate: layout.sample_rate,
                    channels: layout.channels,
                    format: layout.format() as i32,
                    num_samples: frames as u64,
                })
            }
        }
    }
}

#[async_trait]
impl SourceReader for FileReader {
    fn partitions(&self) -> Vec<u32> {
        vec![0]
    }

    fn data_type(&self) -> DataTypeHint {
        match self.format {
            Format::Jsonl => DataTypeHint::Json,
            Format::Text => DataTypeHint::Text,
            Format::Wav => DataTypeHint::Audio,
            Format::Binary => DataTypeHint::Binary,
        }
    }

    async fn next(&mut self) -> Result<Option<Record>, ConnectorError> {
        let Some(raw) = self.next_raw().await? else {
            return Ok(None);
        };
        let offset = self.next;
        self.next += 1;
        Ok(Some(Record::new(0, offset, self.payload(raw))))
    }

    async fn pending(&mut self) -> HashMap<u32, u64> {
        let len = match tokio::fs::metadata(&self.path).await {
            Ok(meta) => meta.len(),
            Err(_) => return HashMap::from([(0, 0)]),
        };
        let unread = len.saturating_sub(self.pos + self.buf.len() as u64);
        let held = match self.format {
            Format::Binary | Format::Wav => {
                let chunk = match (self.format, self.wav) {
                    (Format::Wav, Some(w)) => (self.chunk_frames * w.frame_bytes()) as u64,
                    (Format::Wav, None) => return HashMap::from([(0, u64::from(len > 0))]),
                    _ => self.chunk_bytes as u64,
                };
                (unread + self.buf.len() as u64).div_ceil(chunk)
            }
            Format::Jsonl | Format::Text => {
                // Count newlines ahead incrementally: each byte of the file is scanned
                // once, at most PENDING_SCAN_BYTES per call, so this is approximate: blank
                // lines count, and a file not yet scanned to its end counts low.
                if self.scanned < len
                    && let Ok(mut file) = File::open(&self.path).await
                    && file.seek(SeekFrom::Start(self.scanned)).await.is_ok()
                {
                    let mut block = vec![0u8; READ_BLOCK];
                    let mut budget = PENDING_SCAN_BYTES;
                    while budget > 0 {
                        let Ok(n) = file.read(&mut block).await else {
                            break;
                        };
                        if n == 0 {
                            break;
                        }
                        self.scanned_lines +=
                            block[..n].iter().filter(|b| **b == b'\n').count() as u64;
                        self.scanned += n as u64;
                        budget = budget.saturating_sub(n as u64);
                    }
                }
                self.scanned_lines.saturating_sub(self.lines_done)
            }
        };
        HashMap::from([(0, held)])
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use flowplane_sdk::serde_json::Value;

    use super::*;

    async fn open(params: Value, start: u64) -> Result<FileReader, ConnectorError> {
        let spec = FileSource.spec();
        let raw = flowplane_sdk::proto::json_to_struct(params.as_object().unwrap());
        let params = Params::validate(spec.params(), Some(&raw)).map_err(ConnectorError::from)?;
        open_file(&params, start).await
    }

    async fn all(reader: &mut FileReader) -> Vec<Record> {
        let mut records = Vec::new();
        while let Some(r) = reader.next().await.unwrap() {
            records.push(r);
        }
        records
    }

    fn texts(records: &[Record]) -> Vec<String> {
        records
            .iter()
            .map(|r| match &r.payload {
                Payload::Json(j) => j.json.clone(),
                Payload::Text(t) => t.text.clone(),
                other => panic!("{other:?}"),
            })
            .collect()
    }

    fn offsets(records: &[Record]) -> Vec<u64> {
        records.iter().map(|r| r.offset).collect()
    }

    #[tokio::test]
    async fn jsonl_and_text_are_one_record_per_non_blank_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.jsonl");
        std::fs::write(&path, "{\"a\":1}\r\n\n{\"a\":2}\n{\"a\":3}").unwrap();
        let p = path.to_str().unwrap();
        let mut reader = open(json!({"path": p}), 0).await.unwrap();
        // Newlines ahead, the blank line's too: pending is approximate.
        assert_eq!(reader.pending().await[&0], 3);
        let records = all(&mut reader).await;
        assert_eq!(texts(&records), ["{\"a\":1}", "{\"a\":2}", "{\"a\":3}"]);
        assert_eq!(offsets(&records), [0, 1, 2]);
        assert_eq!(reader.data_type(), DataTypeHint::Json);

        let mut from_two = open(json!({"path": p, "format": "text"}), 2).await.unwrap();
        let records = all(&mut from_two).await;
        assert_eq!(texts(&records), ["{\"a\":3}"]);
        assert_eq!(offsets(&records), [2]);
        assert!(matches!(records[0].payload, Payload::Text(_)));
    }

    #[tokio::test]
    async fn binary_is_cut_into_chunks_and_a_start_offset_seeks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.bin");
        std::fs::write(&path, (0u8..10).collect::<Vec<_>>()).unwrap();
        let p = path.to_str().unwrap();
        let mut reader = open(json!({"path": p, "format": "binary", "chunk_bytes": 4}), 0)
            .await
            .unwrap();
        assert_eq!(reader.pending().await[&0], 3);
        let lens: Vec<usize> = all(&mut reader)
            .await
            .iter()
            .map(|r| r.payload.payload_len())
            .collect();
        assert_eq!(lens, [4, 4, 2]);
        let mut reader = open(json!({"path": p, "format": "binary", "chunk_bytes": 4}), 1)
            .await
            .unwrap();
        let records = all(&mut reader).await;
        assert_eq!(offsets(&records), [1, 2]);
        let Payload::Binary(b) = &records[0].payload else {
            panic!()
        };
        assert_eq!(&b.data[..], &[4, 5, 6, 7]);
    }

    #[tokio::test]
    async fn wav_is_cut_into_frames_of_its_format() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.wav");
        let samples: Vec<u8> = (0i16..10).flat_map(|s| s.to_le_bytes()).collect();
        let mut file = wav::header(
            flowplane_sdk::proto::data::v1::AudioFormat::I16le,
            8000,
            2,
            samples.len() as u32,
        )
        .to_vec();
        file.extend_from_slice(&samples);
        std::fs::write(&path, file).unwrap();
        let p = path.to_str().unwrap();
        let mut reader = open(json!({"path": p, "format": "wav", "chunk_frames": 2}), 1)
            .await
            .unwrap();
        let records = all(&mut reader).await;
        assert_eq!(offsets(&records), [1, 2]);
        let Payload::Audio(a) = &records[0].payload else {
            panic!()
        };
        assert_eq!((a.sample_rate, a.channels, a.num_samples), (8000, 2, 2));
        assert_eq!(&a.samples[..], &samples[8..16]);
        let Payload::Audio(last) = &records[1].payload else {
            panic!()
        };
        assert_eq!(
            last.num_samples, 1,
            "the last, partial chunk keeps whole frames"
        );
        flowplane_sdk::payload::check(&records[0].payload).unwrap();
    }

    #[tokio::test]
    async fn a_followed_file_yields_appended_lines_once_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.txt");
        std::fs::write(&path, "one\n").unwrap();
        let p = path.to_str().unwrap();
        let mut reader = open(json!({"path": p, "format": "text", "follow": true}), 0)
            .await
            .unwrap();
        assert_eq!(texts(&[reader.next().await.unwrap().unwrap()]), ["one"]);
        let writer = {
            let path = path.clone();
            tokio::spawn(async move {
                let mut file = std::fs::OpenOptions::new()
                    .append(true)
                    .open(&path)
                    .unwrap();
                // Half a line first: the reader must wait for the rest.
                file.write_all(b"tw").unwrap();
                file.flush().unwrap();
                tokio::task::yield_now().await;
                file.write_all(b"o\n").unwrap();
            })
        };
        let record = tokio::time::timeout(Duration::from_secs(20), reader.next())
            .await
            .expect("the appended line within the deadline")
            .unwrap()
            .unwrap();
        writer.await.unwrap();
        assert_eq!(texts(std::slice::from_ref(&record)), ["two"]);
        assert_eq!(record.offset, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_followed_file_waits_on_a_timer_not_a_spin() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("idle.txt");
        std::fs::write(&path, "").unwrap();
        let p = path.to_str().unwrap();
        let mut reader = open(json!({"path": p, "format": "text", "follow": true}), 0)
            .await
            .unwrap();
        let waited = tokio::time::timeout(Duration::from_secs(10), reader.next()).await;
        assert!(waited.is_err(), "no record in an empty file");
        // Ten seconds at most MAX_POLL apart (after the backoff) is about 50 looks.
        let most = (Duration::from_secs(10).as_millis() / MAX_POLL.as_millis()) as u64 + 10;
        assert!(reader.polls <= most, "{} looks in 10 s", reader.polls);
        assert!(reader.polls >= 10, "{} looks in 10 s", reader.polls);
    }

    #[tokio::test]
    async fn a_missing_file_and_bad_params_name_the_param() {
        let error = open(json!({"path": "/nonexistent/flowplane/x"}), 0)
            .await
            .err()
            .unwrap();
        assert_eq!(error.field(), "open.params.path");
        assert_eq!(error.code(), tonic::Code::Unavailable);
        let error = open(json!({"path": "x", "chunk_bytes": 0}), 0)
            .await
            .err()
            .unwrap();
        assert_eq!(error.field(), "open.params.chunk_bytes");
        let error = open(json!({}), 0).await.err().unwrap();
        assert_eq!(error.field(), "open.params.path");
    }
}
