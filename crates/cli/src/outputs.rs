//! `flowplane run --output-dir DIR`: writes every pipeline output as one real file named
//! after it, in the order results arrive (which is input order per output). The file type
//! follows the first result's payload; a later result that cannot go into the same file
//! (another type, audio or video format, tensor shape) fails the run naming output and
//! sequence rather than writing a file that lies about its contents.

use std::{
    collections::BTreeMap,
    fs::File,
    io::{BufWriter, Write},
    path::{Path, PathBuf},
};

use flowplane_proto::data::v1::{
    AudioFormat, DataBuffer, PixelFormat, TensorBuffer, TensorDtype, VideoFrame,
    data_buffer::Payload,
};

use crate::{Error, Result};

/// One file being written for one output.
enum Sink {
    /// `NAME.wav`, streamed; hound patches the sizes in the header on finalize.
    Wav {
        writer: hound::WavWriter<BufWriter<File>>,
        format: AudioFormat,
        spec: hound::WavSpec,
    },
    /// `NAME.ppm`/`NAME.pgm` (back-to-back binary images, as `run` reads them) or
    /// `NAME.raw` (the pixels of every frame back to back) for formats without a netpbm form.
    Video {
        file: BufWriter<File>,
        format: PixelFormat,
    },
    /// `NAME.npy`: held until the end because the header states the final shape.
    Tensor {
        dtype: TensorDtype,
        shape: Vec<u64>,
        count: u64,
        data: Vec<u8>,
    },
    /// `NAME.bin`: the bytes of every result back to back.
    Binary(BufWriter<File>),
    /// `NAME.jsonl`: one JSON value per line (text results as JSON strings, so a text
    /// containing a newline stays one line).
    Lines(BufWriter<File>),
}

impl Sink {
    fn kind(&self) -> &'static str {
        match self {
            Sink::Wav { .. } => "audio",
            Sink::Video { .. } => "video",
            Sink::Tensor { .. } => "tensor",
            Sink::Binary(_) => "binary",
            Sink::Lines(_) => "json or text",
        }
    }
}

fn payload_kind(payload: &Payload) -> &'static str {
    match payload {
        Payload::Audio(_) => "audio",
        Payload::Video(_) => "video",
        Payload::Tensor(_) => "tensor",
        Payload::Binary(_) => "binary",
        Payload::Json(_) | Payload::Text(_) => "json or text",
    }
}

/// The files of one run, one per output, created when its first result arrives.
pub struct OutputDir {
    dir: PathBuf,
    sinks: BTreeMap<String, (PathBuf, Sink)>,
}

/// What went wrong writing one output's file.
fn output_error(output: &str, sequence: u64, message: impl std::fmt::Display) -> Error {
    Error::Output {
        output: output.to_string(),
        message: format!("sequence {sequence}: {message}"),
    }
}

impl OutputDir {
    /// Creates `dir` (and its parents) if missing; files in it are replaced.
    pub fn create(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::Output {
            output: "--output-dir".into(),
            message: format!("cannot create {}: {e}", dir.display()),
        })?;
        Ok(Self {
            dir: dir.to_path_buf(),
            sinks: BTreeMap::new(),
        })
    }

    /// The file an output with this payload is written to.
    pub fn file_name(output: &str, payload: &Payload) -> String {
        let ext = match payload {
            Payload::Audio(_) => "wav",
            Payload::Video(v) => match PixelFormat::try_from(v.format) {
                Ok(PixelFormat::Rgb24) => "ppm",
                Ok(PixelFormat::Gray8) => "pgm",
                _ => "raw",
            },
            Payload::Tensor(_) => "npy",
            Payload::Binary(_) => "bin",
            Payload::Json(_) | Payload::Text(_) => "jsonl",
        };
        format!("{output}.{ext}")
    }

    /// Appends one result to its output's file.
    pub fn write(&mut self, output: &str, sequence: u64, buffer: &DataBuffer) -> Result<()> {
        let Some(payload) = &buffer.payload else {
            return Err(output_error(output, sequence, "the result has no payload"));
        };
        if !self.sinks.contains_key(output) {
            let path = self.dir.join(Self::file_name(output, payload));
            let sink = self.open(output, sequence, payload, &path)?;
            self.sinks.insert(output.to_string(), (path, sink));
        }
        let (_, sink) = self.sinks.get_mut(output).expect("inserted above");
        let fail = |message: String| output_error(output, sequence, message);
        match (sink, payload) {
            (
                Sink::Wav {
                    writer,
                    format,
                    spec,
                },
                Payload::Audio(a),
            ) => {
                if AudioFormat::try_from(a.format).ok() != Some(*format)
                    || a.channels != u32::from(spec.channels)
                    || a.sample_rate != spec.sample_rate
                {
                    return Err(fail(format!(
                        "audio changed from {} {} Hz x{} to {} {} Hz x{} within one output",
                        format.as_str_name(),
                        spec.sample_rate,
                        spec.channels,
                        audio_format_name(a.format),
                        a.sample_rate,
                        a.channels
                    )));
                }
                write_samples(writer, *format, &a.samples).map_err(|e| fail(e.to_string()))
            }
            (Sink::Video { file, format }, Payload::Video(v)) => {
                if PixelFormat::try_from(v.format).ok() != Some(*format) {
                    return Err(fail(format!(
                        "video changed from {} to {} within one output",
                        format.as_str_name(),
                        pixel_format_name(v.format)
                    )));
                }
                write_frame(file, *format, v).map_err(fail)
            }
            (
                Sink::Tensor {
                    dtype,
                    shape,
                    count,
                    data,
                    ..
                },
                Payload::Tensor(t),
            ) => {
                if TensorDtype::try_from(t.dtype).ok() != Some(*dtype) || t.shape != *shape {
                    return Err(fail(format!(
                        "tensor changed from {} {:?} to {} {:?} within one output; \
                         a .npy file holds results of one dtype and shape",
                        dtype.as_str_name(),
                        shape,
                        tensor_dtype_name(t.dtype),
                        t.shape
                    )));
                }
                check_tensor_size(t).map_err(fail)?;
                *count += 1;
                data.extend_from_slice(&t.data);
                Ok(())
            }
            (Sink::Binary(file), Payload::Binary(b)) => {
                file.write_all(&b.data).map_err(|e| fail(e.to_string()))
            }
            (Sink::Lines(file), Payload::Json(j)) => {
                // Re-encoded so a pretty-printed document still takes exactly one line.
                let value: serde_json::Value = serde_json::from_str(&j.json)
                    .map_err(|e| fail(format!("the json result does not parse: {e}")))?;
                writeln!(file, "{value}").map_err(|e| fail(e.to_string()))
            }
            (Sink::Lines(file), Payload::Text(t)) => {
                writeln!(file, "{}", serde_json::Value::String(t.text.clone()))
                    .map_err(|e| fail(e.to_string()))
            }
            (sink, payload) => Err(fail(format!(
                "a {} result in an output whose file holds {}",
                payload_kind(payload),
                sink.kind()
            ))),
        }
    }

    fn open(&self, output: &str, sequence: u64, payload: &Payload, path: &Path) -> Result<Sink> {
        // The name comes from the manifest; refuse anything that would leave the directory.
        if output.is_empty()
            || output == "."
            || output == ".."
            || output.contains(['/', '\\', '\0'])
        {
            return Err(output_error(
                output,
                sequence,
                "the output name cannot be used as a file name",
            ));
        }
        let fail = |message: String| output_error(output, sequence, message);
        let create = || {
            File::create(path)
                .map(BufWriter::new)
                .map_err(|e| fail(format!("cannot create {}: {e}", path.display())))
        };
        Ok(match payload {
            Payload::Audio(a) => {
                let format = AudioFormat::try_from(a.format)
                    .ok()
                    .filter(|f| *f != AudioFormat::Unspecified)
                    .ok_or_else(|| fail("audio format unspecified".into()))?;
                let channels = u16::try_from(a.channels)
                    .ok()
                    .filter(|c| *c > 0)
                    .ok_or_else(|| fail(format!("{} channels cannot go into a wav", a.channels)))?;
                let (bits_per_sample, sample_format) = match format {
                    AudioFormat::I16le => (16, hound::SampleFormat::Int),
                    AudioFormat::I32le => (32, hound::SampleFormat::Int),
                    _ => (32, hound::SampleFormat::Float),
                };
                let spec = hound::WavSpec {
                    channels,
                    sample_rate: a.sample_rate,
                    bits_per_sample,
                    sample_format,
                };
                let writer = hound::WavWriter::new(create()?, spec)
                    .map_err(|e| fail(format!("cannot start {}: {e}", path.display())))?;
                Sink::Wav {
                    writer,
                    format,
                    spec,
                }
            }
            Payload::Video(v) => Sink::Video {
                file: create()?,
                format: PixelFormat::try_from(v.format).unwrap_or(PixelFormat::Unspecified),
            },
            Payload::Tensor(t) => {
                let dtype = TensorDtype::try_from(t.dtype)
                    .ok()
                    .filter(|d| npy_descr(*d).is_some())
                    .ok_or_else(|| fail(format!("tensor dtype {} unsupported", t.dtype)))?;
                Sink::Tensor {
                    dtype,
                    shape: t.shape.clone(),
                    count: 0,
                    data: Vec::new(),
                }
            }
            Payload::Binary(_) => Sink::Binary(create()?),
            Payload::Json(_) | Payload::Text(_) => Sink::Lines(create()?),
        })
    }

    /// Completes every file (WAV sizes, .npy headers, buffered bytes) and returns the
    /// paths written, in output-name order.
    pub fn finish(self) -> Result<Vec<PathBuf>> {
        let mut written = Vec::new();
        for (output, (file_path, sink)) in self.sinks {
            let fail = |message: String| Error::Output {
                output: output.clone(),
                message,
            };
            match sink {
                Sink::Wav { writer, .. } => writer.finalize().map_err(|e| fail(e.to_string()))?,
                Sink::Video { mut file, .. } | Sink::Binary(mut file) | Sink::Lines(mut file) => {
                    file.flush().map_err(|e| fail(e.to_string()))?
                }
                Sink::Tensor {
                    dtype,
                    shape,
                    count,
                    data,
                } => {
                    // One result keeps its shape; several are stacked on a new first axis.
                    let shape = if count == 1 {
                        shape
                    } else {
                        std::iter::once(count).chain(shape).collect()
                    };
                    let mut file = File::create(&file_path)
                        .map_err(|e| fail(format!("cannot create {}: {e}", file_path.display())))?;
                    file.write_all(&npy_header(dtype, &shape))
                        .and_then(|()| file.write_all(&data))
                        .map_err(|e| fail(e.to_string()))?;
                }
            }
            written.push(file_path);
        }
        Ok(written)
    }
}

fn audio_format_name(raw: i32) -> &'static str {
    AudioFormat::try_from(raw).map_or("UNKNOWN", |f| f.as_str_name())
}

fn pixel_format_name(raw: i32) -> &'static str {
    PixelFormat::try_from(raw).map_or("UNKNOWN", |f| f.as_str_name())
}

fn tensor_dtype_name(raw: i32) -> &'static str {
    TensorDtype::try_from(raw).map_or("UNKNOWN", |f| f.as_str_name())
}

fn write_samples(
    writer: &mut hound::WavWriter<BufWriter<File>>,
    format: AudioFormat,
    bytes: &[u8],
) -> Result<(), String> {
    let width = if format == AudioFormat::I16le { 2 } else { 4 };
    if !bytes.len().is_multiple_of(width) {
        return Err(format!(
            "{} audio bytes are not whole {}-byte samples",
            bytes.len(),
            width
        ));
    }
    let written = match format {
        AudioFormat::I16le => bytes
            .chunks_exact(2)
            .try_for_each(|b| writer.write_sample(i16::from_le_bytes([b[0], b[1]]))),
        AudioFormat::I32le => bytes
            .chunks_exact(4)
            .try_for_each(|b| writer.write_sample(i32::from_le_bytes([b[0], b[1], b[2], b[3]]))),
        _ => bytes
            .chunks_exact(4)
            .try_for_each(|b| writer.write_sample(f32::from_le_bytes([b[0], b[1], b[2], b[3]]))),
    };
    written.map_err(|e| e.to_string())
}

fn write_frame(
    file: &mut BufWriter<File>,
    format: PixelFormat,
    v: &VideoFrame,
) -> Result<(), String> {
    let (magic, depth) = match format {
        PixelFormat::Rgb24 => ("P6", 3),
        PixelFormat::Gray8 => ("P5", 1),
        _ => return file.write_all(&v.pixels).map_err(|e| e.to_string()),
    };
    let expected = v.width as usize * v.height as usize * depth;
    if v.pixels.len() != expected {
        return Err(format!(
            "a {}x{} {} frame has {} bytes, not {expected}",
            v.width,
            v.height,
            format.as_str_name(),
            v.pixels.len()
        ));
    }
    write!(file, "{magic}\n{} {}\n255\n", v.width, v.height)
        .and_then(|()| file.write_all(&v.pixels))
        .map_err(|e| e.to_string())
}

/// Whether the tensor's bytes match its shape and dtype (the SDK's payload rule).
fn check_tensor_size(t: &TensorBuffer) -> Result<(), String> {
    flowplane_sdk::payload::tensor_layout(t)
        .map(|_| ())
        .map_err(|e| e.message().to_string())
}

/// The NumPy type string of a dtype (all little-endian).
fn npy_descr(dtype: TensorDtype) -> Option<&'static str> {
    Some(match dtype {
        TensorDtype::F32 => "<f4",
        TensorDtype::F64 => "<f8",
        TensorDtype::F16 => "<f2",
        TensorDtype::I64 => "<i8",
        TensorDtype::I32 => "<i4",
        TensorDtype::I8 => "|i1",
        TensorDtype::U8 => "|u1",
        TensorDtype::Unspecified => return None,
    })
}

/// A version 1.0 .npy header: magic, version, a little-endian u16 length, then a Python
/// dict literal padded with spaces and ended by a newline so the data starts on a
/// 64-byte boundary (the NumPy format specification).
fn npy_header(dtype: TensorDtype, shape: &[u64]) -> Vec<u8> {
    let shape = match shape {
        [one] => format!("({one},)"),
        dims => format!(
            "({})",
            dims.iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut dict = format!(
        "{{'descr': '{}', 'fortran_order': False, 'shape': {shape}, }}",
        npy_descr(dtype).expect("checked when the output was opened")
    );
    let unpadded = 10 + dict.len() + 1;
    dict.extend(std::iter::repeat_n(
        ' ',
        unpadded.next_multiple_of(64) - unpadded,
    ));
    dict.push('\n');
    let mut header = b"\x93NUMPY\x01\x00".to_vec();
    header.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    header.extend_from_slice(dict.as_bytes());
    header
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use flowplane_proto::data::v1::{AudioBuffer, BinaryData, JsonData, TextData};

    fn buffer(payload: Payload) -> DataBuffer {
        payload.into()
    }

    fn audio(samples: &[i16], rate: u32) -> DataBuffer {
        buffer(Payload::Audio(AudioBuffer {
            samples: samples.iter().flat_map(|s| s.to_le_bytes()).collect(),
            sample_rate: rate,
            channels: 1,
            format: AudioFormat::I16le as i32,
            num_samples: samples.len() as u64,
        }))
    }

    fn tensor(values: &[f32], shape: &[u64]) -> DataBuffer {
        buffer(Payload::Tensor(TensorBuffer {
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            shape: shape.to_vec(),
            dtype: TensorDtype::F32 as i32,
        }))
    }

    #[test]
    fn audio_chunks_become_one_wav_that_hound_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut out = OutputDir::create(dir.path()).unwrap();
        out.write("audio", 0, &audio(&[1, -2, 3], 8000)).unwrap();
        out.write("audio", 2, &audio(&[i16::MAX, i16::MIN], 8000))
            .unwrap();
        out.finish().unwrap();
        let mut reader = hound::WavReader::open(dir.path().join("audio.wav")).unwrap();
        assert_eq!(reader.spec().sample_rate, 8000);
        assert_eq!(reader.spec().bits_per_sample, 16);
        let samples: Vec<i16> = reader.samples().map(Result::unwrap).collect();
        assert_eq!(samples, [1, -2, 3, i16::MAX, i16::MIN]);
    }

    #[test]
    fn a_change_of_audio_rate_names_the_output_and_sequence() {
        let dir = tempfile::tempdir().unwrap();
        let mut out = OutputDir::create(dir.path()).unwrap();
        out.write("audio", 0, &audio(&[1], 8000)).unwrap();
        let error = out.write("audio", 5, &audio(&[1], 16000)).unwrap_err();
        let text = error.to_string();
        assert!(
            text.contains("output \"audio\"") && text.contains("sequence 5"),
            "{text}"
        );
    }

    #[test]
    fn tensors_are_stacked_into_an_npy_with_an_aligned_header() {
        let dir = tempfile::tempdir().unwrap();
        let mut out = OutputDir::create(dir.path()).unwrap();
        out.write("t", 0, &tensor(&[1.0, 2.0], &[2])).unwrap();
        out.write("t", 1, &tensor(&[3.0, 4.0], &[2])).unwrap();
        out.write("one", 2, &tensor(&[5.0, 6.0, 7.0, 8.0], &[2, 2]))
            .unwrap();
        out.finish().unwrap();
        let stacked = std::fs::read(dir.path().join("t.npy")).unwrap();
        let header_len = u16::from_le_bytes([stacked[8], stacked[9]]) as usize;
        assert_eq!((10 + header_len) % 64, 0);
        let header = std::str::from_utf8(&stacked[10..10 + header_len]).unwrap();
        assert!(header.contains("'shape': (2, 2)"), "{header}");
        assert!(header.contains("'descr': '<f4'") && header.ends_with('\n'));
        let values: Vec<f32> = stacked[10 + header_len..]
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        assert_eq!(values, [1.0, 2.0, 3.0, 4.0]);
        let single = std::fs::read(dir.path().join("one.npy")).unwrap();
        assert!(String::from_utf8_lossy(&single).contains("'shape': (2, 2)"));
        // A shape of one dimension keeps Python's trailing comma.
        assert!(String::from_utf8_lossy(&npy_header(TensorDtype::F32, &[3])).contains("(3,)"));
    }

    #[test]
    fn json_text_binary_and_video_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut out = OutputDir::create(dir.path()).unwrap();
        let json = |j: &str| {
            buffer(Payload::Json(JsonData {
                json: j.into(),
                schema_hint: String::new(),
            }))
        };
        out.write("j", 0, &json("{\n  \"a\": 1\n}")).unwrap();
        out.write("j", 1, &json("[2]")).unwrap();
        let text = buffer(Payload::Text(TextData {
            text: "two\nlines".into(),
            language: String::new(),
        }));
        out.write("t", 2, &text).unwrap();
        for (i, part) in [&b"ab"[..], &b"\0c"[..]].into_iter().enumerate() {
            let bin = buffer(Payload::Binary(BinaryData {
                data: Bytes::copy_from_slice(part),
                mime_type: String::new(),
            }));
            out.write("b", 3 + i as u64, &bin).unwrap();
        }
        let gray = buffer(Payload::Video(VideoFrame {
            pixels: Bytes::from_static(&[0, 128, 255, 7]),
            width: 2,
            height: 2,
            format: PixelFormat::Gray8 as i32,
            frame_number: 0,
        }));
        out.write("v", 5, &gray).unwrap();
        // A result of another type cannot join an open file.
        let mismatch = out.write("j", 6, &gray).unwrap_err().to_string();
        assert!(mismatch.contains("a video result"), "{mismatch}");
        out.finish().unwrap();
        let read = |name: &str| std::fs::read(dir.path().join(name)).unwrap();
        assert_eq!(read("j.jsonl"), b"{\"a\":1}\n[2]\n");
        assert_eq!(read("t.jsonl"), b"\"two\\nlines\"\n");
        assert_eq!(read("b.bin"), b"ab\0c");
        assert_eq!(read("v.pgm"), b"P5\n2 2\n255\n\x00\x80\xff\x07");
    }

    #[test]
    fn output_names_that_leave_the_directory_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut out = OutputDir::create(dir.path()).unwrap();
        let error = out.write("../x", 0, &audio(&[1], 8000)).unwrap_err();
        assert!(error.to_string().contains("file name"), "{error}");
    }
}
