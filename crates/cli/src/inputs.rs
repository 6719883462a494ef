//! Turns input files (or standard input) into typed chunks for `flowplane run`, by
//! `--input-type` or else by extension: WAV audio, PPM images or raw RGB24 frames, JSON
//! lines, text lines, .npy tensors (read with `npyz`), anything else as binary. Readers
//! load whole files (the CLI is a client tool, not a bulk loader) and fail naming the file
//! and what is wrong with it.

use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use bytes::Bytes;
use flowplane_proto::data::v1::{
    AudioBuffer, AudioFormat, BinaryData, DataBuffer, JsonData, PixelFormat, TensorBuffer,
    TensorDtype, TextData, VideoFrame, data_buffer::Payload,
};

/// How files are cut into chunks.
#[derive(Clone, Debug)]
pub struct ChunkOptions {
    /// Audio chunk length in milliseconds.
    pub audio_chunk_ms: u32,
    /// Binary chunk size in bytes.
    pub binary_chunk_bytes: usize,
    /// Frame size of raw `.rgb` video, `WIDTHxHEIGHT`.
    pub frame_size: Option<(u32, u32)>,
}

impl Default for ChunkOptions {
    fn default() -> Self {
        Self {
            audio_chunk_ms: 20,
            binary_chunk_bytes: 64 * 1024,
            frame_size: None,
        }
    }
}

/// How an input's bytes are cut into chunks. Chosen by `--input-type NAME=TYPE`, else by
/// the file's extension (see [`InputType::from_extension`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum InputType {
    /// RIFF/WAVE audio, cut into `--audio-chunk-ms` chunks.
    Wav,
    /// Binary PPM (P6) images, one frame each.
    Ppm,
    /// Raw RGB24 frames of `--frame-size`.
    Rgb,
    /// One JSON value per line.
    Jsonl,
    /// One JSON document, one chunk.
    Json,
    /// One text chunk per non-empty line.
    Text,
    /// One NumPy .npy tensor.
    Npy,
    /// Bytes in 64 KiB chunks.
    Binary,
}

impl InputType {
    /// The extension rule: .wav, .ppm, .rgb, .jsonl/.ndjson, .json, .txt, .npy (any case);
    /// anything else, no extension and stdin included, is binary.
    pub fn from_extension(path: &Path) -> Self {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("")
            .to_ascii_lowercase();
        match ext.as_str() {
            "wav" => Self::Wav,
            "ppm" => Self::Ppm,
            "rgb" => Self::Rgb,
            "jsonl" | "ndjson" => Self::Jsonl,
            "json" => Self::Json,
            "txt" => Self::Text,
            "npy" => Self::Npy,
            _ => Self::Binary,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Wav => "wav",
            Self::Ppm => "ppm",
            Self::Rgb => "rgb",
            Self::Jsonl => "jsonl",
            Self::Json => "json",
            Self::Text => "text",
            Self::Npy => "npy",
            Self::Binary => "binary",
        }
    }
}

/// The file name that means standard input.
pub const STDIN: &str = "-";

/// Reads `file` (or standard input for `-`) into the payloads of its chunks, in order,
/// cut as `kind` says, or as its extension says when `kind` is `None`.
pub fn read_chunks(
    file: &str,
    kind: Option<InputType>,
    options: &ChunkOptions,
) -> crate::Result<Vec<DataBuffer>> {
    let shown = if file == STDIN { "<stdin>" } else { file };
    let input_error = |message: String| crate::Error::Input {
        path: shown.to_string(),
        message,
    };
    let data = if file == STDIN {
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin().lock(), &mut data)
            .map_err(|e| input_error(e.to_string()))?;
        data
    } else {
        std::fs::read(file).map_err(|e| input_error(e.to_string()))?
    };
    let kind = kind.unwrap_or_else(|| InputType::from_extension(Path::new(file)));
    read_bytes(data, kind, options)
        .map_err(|e| input_error(format!("not a valid {} input: {e:#}", kind.name())))
}

/// Cuts bytes already read into the payloads of their chunks.
pub fn read_bytes(
    data: Vec<u8>,
    kind: InputType,
    options: &ChunkOptions,
) -> Result<Vec<DataBuffer>> {
    let payloads = match kind {
        InputType::Wav => wav(&data, options.audio_chunk_ms),
        InputType::Ppm => ppm(&data),
        InputType::Rgb => raw_rgb(&data, options.frame_size),
        InputType::Jsonl => json_lines(&data),
        InputType::Json => json_document(data),
        InputType::Text => text_lines(&data),
        InputType::Npy => npy(&data),
        InputType::Binary => Ok(binary(data, options.binary_chunk_bytes)),
    }?;
    Ok(payloads
        .into_iter()
        .map(|payload| DataBuffer {
            payload: Some(payload),
            metadata: Default::default(),
        })
        .collect())
}

/// RIFF/WAVE (plain or extensible) read with hound: 8/16-bit integer samples become
/// I16LE, 24/32-bit integer I32LE (scaled to full range), 32-bit float F32LE.
fn wav(d: &[u8], chunk_ms: u32) -> Result<Vec<Payload>> {
    let mut reader = hound::WavReader::new(std::io::Cursor::new(d)).context("not a wav file")?;
    let spec = reader.spec();
    let channels = u32::from(spec.channels);
    ensure!(
        channels > 0 && spec.sample_rate > 0,
        "wav declares {channels} channels at {} Hz",
        spec.sample_rate
    );
    let (format, bytes): (AudioFormat, Vec<u8>) = match (spec.sample_format, spec.bits_per_sample) {
        (hound::SampleFormat::Float, 32) => (
            AudioFormat::F32le,
            collect(reader.samples::<f32>(), |s| s.to_le_bytes())?,
        ),
        (hound::SampleFormat::Int, bits @ (8 | 16)) => (
            AudioFormat::I16le,
            collect(reader.samples::<i16>(), |s| {
                (s << (16 - bits)).to_le_bytes()
            })?,
        ),
        (hound::SampleFormat::Int, bits @ (24 | 32)) => (
            AudioFormat::I32le,
            collect(reader.samples::<i32>(), |s| {
                (s << (32 - bits)).to_le_bytes()
            })?,
        ),
        (format, bits) => bail!(
            "unsupported wav encoding ({bits}-bit {format:?}): use 8/16/24/32-bit pcm or 32-bit float"
        ),
    };
    let width = if format == AudioFormat::I16le { 2 } else { 4 };
    let frame = width * channels as usize;
    let frames_per_chunk = ((spec.sample_rate as u64 * chunk_ms as u64) / 1000).max(1) as usize;
    Ok(bytes
        .chunks(frames_per_chunk * frame)
        .map(|c| {
            Payload::Audio(AudioBuffer {
                samples: Bytes::copy_from_slice(c),
                sample_rate: spec.sample_rate,
                channels,
                format: format as i32,
                num_samples: (c.len() / frame) as u64,
            })
        })
        .collect())
}

/// Every sample as little-endian bytes, or the first decoding failure.
fn collect<S, const N: usize>(
    samples: impl Iterator<Item = hound::Result<S>>,
    bytes: impl Fn(S) -> [u8; N],
) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    for sample in samples {
        out.extend(bytes(sample.context("truncated or malformed samples")?));
    }
    Ok(out)
}

/// One or more binary PPM (P6, maxval 255) images, back to back.
fn ppm(d: &[u8]) -> Result<Vec<Payload>> {
    let mut frames = Vec::new();
    let mut at = 0;
    while at < d.len() {
        if d[at].is_ascii_whitespace() {
            at += 1;
            continue;
        }
        let mut fields = Vec::new();
        while fields.len() < 4 {
            while at < d.len() && d[at].is_ascii_whitespace() {
                at += 1;
            }
            if at < d.len() && d[at] == b'#' {
                while at < d.len() && d[at] != b'\n' {
                    at += 1;
                }
                continue;
            }
            let start = at;
            while at < d.len() && !d[at].is_ascii_whitespace() {
                at += 1;
            }
            ensure!(start < at, "image {} has a truncated header", frames.len());
            fields.push(String::from_utf8_lossy(&d[start..at]).to_string());
        }
        at += 1; // the single whitespace byte after maxval
        ensure!(
            fields[0] == "P6",
            "image {} is {:?}, only binary P6 is read",
            frames.len(),
            fields[0]
        );
        let width: u32 = fields[1].parse().context("bad ppm width")?;
        let height: u32 = fields[2].parse().context("bad ppm height")?;
        ensure!(
            fields[3] == "255",
            "image {} has maxval {}, only 255 is read",
            frames.len(),
            fields[3]
        );
        let len = width as usize * height as usize * 3;
        ensure!(at + len <= d.len(), "image {} is truncated", frames.len());
        frames.push(Payload::Video(VideoFrame {
            pixels: Bytes::copy_from_slice(&d[at..at + len]),
            width,
            height,
            format: PixelFormat::Rgb24 as i32,
            frame_number: frames.len() as u64,
        }));
        at += len;
    }
    ensure!(!frames.is_empty(), "no image in file");
    Ok(frames)
}

fn raw_rgb(d: &[u8], size: Option<(u32, u32)>) -> Result<Vec<Payload>> {
    let (width, height) = size.context("raw .rgb video needs --frame-size WIDTHxHEIGHT")?;
    let len = width as usize * height as usize * 3;
    ensure!(
        len > 0 && d.len().is_multiple_of(len),
        "file size {} is not a whole number of {width}x{height} rgb24 frames",
        d.len()
    );
    Ok(d.chunks(len)
        .enumerate()
        .map(|(i, f)| {
            Payload::Video(VideoFrame {
                pixels: Bytes::copy_from_slice(f),
                width,
                height,
                format: PixelFormat::Rgb24 as i32,
                frame_number: i as u64,
            })
        })
        .collect())
}

fn lines(d: &[u8]) -> Result<impl Iterator<Item = &str>> {
    let text = std::str::from_utf8(d).context("not utf-8")?;
    Ok(text.lines().filter(|l| !l.trim().is_empty()))
}

fn json_lines(d: &[u8]) -> Result<Vec<Payload>> {
    lines(d)?
        .enumerate()
        .map(|(i, line)| {
            serde_json::from_str::<serde_json::Value>(line)
                .with_context(|| format!("line {} is not valid json", i + 1))?;
            Ok(Payload::Json(JsonData {
                json: line.to_string(),
                schema_hint: String::new(),
            }))
        })
        .collect()
}

fn json_document(d: Vec<u8>) -> Result<Vec<Payload>> {
    let text = String::from_utf8(d).context("not utf-8")?;
    serde_json::from_str::<serde_json::Value>(&text).context("not valid json")?;
    Ok(vec![Payload::Json(JsonData {
        json: text.trim().to_string(),
        schema_hint: String::new(),
    })])
}

fn text_lines(d: &[u8]) -> Result<Vec<Payload>> {
    Ok(lines(d)?
        .map(|line| {
            Payload::Text(TextData {
                text: line.to_string(),
                language: String::new(),
            })
        })
        .collect())
}

fn binary(d: Vec<u8>, chunk: usize) -> Vec<Payload> {
    let all = Bytes::from(d);
    (0..all.len().max(1))
        .step_by(chunk.max(1))
        .map(|at| {
            Payload::Binary(BinaryData {
                data: all.slice(at..(at + chunk).min(all.len())),
                mime_type: "application/octet-stream".into(),
            })
        })
        .collect()
}

/// NumPy .npy (any version) of a plain numeric dtype in C order, one tensor; the data
/// goes on the wire little-endian whatever the file's byte order.
fn npy(d: &[u8]) -> Result<Vec<Payload>> {
    use npyz::{DType, Endianness, TypeChar};
    let file = npyz::NpyFile::new(d).context("not a .npy file")?;
    ensure!(
        file.order() == npyz::Order::C,
        "fortran-order arrays are not supported"
    );
    let DType::Plain(ty) = file.dtype() else {
        bail!("structured dtype {} is not supported", file.dtype().descr());
    };
    let dtype = match (ty.type_char(), ty.size_field()) {
        (TypeChar::Float, 4) => TensorDtype::F32,
        (TypeChar::Float, 8) => TensorDtype::F64,
        (TypeChar::Float, 2) => TensorDtype::F16,
        (TypeChar::Int, 8) => TensorDtype::I64,
        (TypeChar::Int, 4) => TensorDtype::I32,
        (TypeChar::Int, 1) => TensorDtype::I8,
        (TypeChar::Uint, 1) => TensorDtype::U8,
        _ => bail!("unsupported dtype {ty}: use f2, f4, f8, i1, i4, i8 or u1"),
    };
    let shape = file.shape().to_vec();
    let width = ty.size_field() as usize;
    let values = usize::try_from(file.len()).context("array too large")?;
    // Checked before anything is decoded: a header may claim any shape.
    let needed = values
        .checked_mul(width)
        .filter(|n| *n <= d.len())
        .with_context(|| {
            format!(
                "shape {shape:?} of {ty} needs more data than the file's {} bytes",
                d.len()
            )
        })?;
    let data: Vec<u8> = if ty.endianness() == Endianness::Big && width > 1 {
        let le = |bytes: &[u8]| bytes.iter().rev().copied().collect::<Vec<u8>>();
        match dtype {
            TensorDtype::F32 => file
                .into_vec::<f32>()?
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
            TensorDtype::F64 => file
                .into_vec::<f64>()?
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
            TensorDtype::I32 => file
                .into_vec::<i32>()?
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
            TensorDtype::I64 => file
                .into_vec::<i64>()?
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
            // Half floats have no Rust type here: swap each value's two bytes.
            _ => file
                .into_inner()
                .chunks_exact(width)
                .take(values)
                .flat_map(le)
                .collect(),
        }
    } else {
        file.into_inner().to_vec()
    };
    ensure!(
        data.len() == needed,
        "{} data bytes, but shape {shape:?} of {ty} needs {needed}",
        data.len(),
    );
    Ok(vec![Payload::Tensor(TensorBuffer {
        data: Bytes::from(data),
        shape,
        dtype: dtype as i32,
    })])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wav_file(rate: u32, samples: &[i16]) -> Vec<u8> {
        let data: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
        let mut f = Vec::new();
        f.extend_from_slice(b"RIFF");
        f.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
        f.extend_from_slice(b"WAVEfmt ");
        f.extend_from_slice(&16u32.to_le_bytes());
        f.extend_from_slice(&1u16.to_le_bytes());
        f.extend_from_slice(&1u16.to_le_bytes());
        f.extend_from_slice(&rate.to_le_bytes());
        f.extend_from_slice(&(rate * 2).to_le_bytes());
        f.extend_from_slice(&2u16.to_le_bytes());
        f.extend_from_slice(&16u16.to_le_bytes());
        f.extend_from_slice(b"data");
        f.extend_from_slice(&(data.len() as u32).to_le_bytes());
        f.extend_from_slice(&data);
        f
    }

    #[test]
    fn wav_is_cut_into_chunks_of_the_requested_length() {
        let samples: Vec<i16> = (0..2500).map(|i| i as i16).collect();
        let chunks = wav(&wav_file(1000, &samples), 1000).unwrap();
        let lens: Vec<u64> = chunks
            .iter()
            .map(|p| match p {
                Payload::Audio(a) => a.num_samples,
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(lens, [1000, 1000, 500]);
        let Payload::Audio(first) = &chunks[0] else {
            unreachable!()
        };
        assert_eq!(first.format, AudioFormat::I16le as i32);
        assert_eq!(&first.samples[2..4], &1i16.to_le_bytes());
    }

    #[test]
    fn hound_written_float_and_24_bit_wavs_are_read() {
        for (bits, format) in [
            (32, hound::SampleFormat::Float),
            (24, hound::SampleFormat::Int),
        ] {
            let spec = hound::WavSpec {
                channels: 2,
                sample_rate: 100,
                bits_per_sample: bits,
                sample_format: format,
            };
            let mut file = std::io::Cursor::new(Vec::new());
            let mut writer = hound::WavWriter::new(&mut file, spec).unwrap();
            for i in 0..6 {
                if format == hound::SampleFormat::Float {
                    writer.write_sample(i as f32 / 8.0).unwrap();
                } else {
                    writer.write_sample(i - 3).unwrap();
                }
            }
            writer.finalize().unwrap();
            // 10 ms at 100 Hz is one frame (two samples) per chunk.
            let chunks = wav(file.get_ref(), 10).unwrap();
            assert_eq!(chunks.len(), 3, "{bits}-bit");
            let Payload::Audio(last) = &chunks[2] else {
                unreachable!()
            };
            if format == hound::SampleFormat::Float {
                assert_eq!(last.format, AudioFormat::F32le as i32);
                assert_eq!(&last.samples[..4], &0.5f32.to_le_bytes());
            } else {
                assert_eq!(last.format, AudioFormat::I32le as i32);
                assert_eq!(&last.samples[..4], &(1i32 << 8).to_le_bytes());
            }
        }
    }

    #[test]
    fn ppm_reads_back_to_back_images_with_comments() {
        let mut f = b"P6\n# a comment\n2 1\n255\n".to_vec();
        f.extend_from_slice(&[1, 2, 3, 4, 5, 6]);
        f.extend_from_slice(b"P6 1 1 255\n");
        f.extend_from_slice(&[7, 8, 9]);
        let frames = ppm(&f).unwrap();
        assert_eq!(frames.len(), 2);
        let Payload::Video(v) = &frames[1] else {
            unreachable!()
        };
        assert_eq!((v.width, v.height, &v.pixels[..]), (1, 1, &[7u8, 8, 9][..]));
    }

    fn npy_file(descr: &str, fortran: bool, shape: &str, data: &[u8]) -> Vec<u8> {
        let fortran = if fortran { "True" } else { "False" };
        let mut header =
            format!("{{'descr': '{descr}', 'fortran_order': {fortran}, 'shape': {shape}, }}");
        while (10 + header.len() + 1) % 64 != 0 {
            header.push(' ');
        }
        header.push('\n');
        let mut f = b"\x93NUMPY\x01\x00".to_vec();
        f.extend_from_slice(&(header.len() as u16).to_le_bytes());
        f.extend_from_slice(header.as_bytes());
        f.extend_from_slice(data);
        f
    }

    fn tensor(payloads: &[Payload]) -> &TensorBuffer {
        let [Payload::Tensor(t)] = payloads else {
            panic!("{payloads:?}")
        };
        t
    }

    #[test]
    fn npy_gives_dtype_shape_and_little_endian_data() {
        let values: Vec<u8> = [1.5f32, -2.0, 3.25, 0.0, 5.0, 6.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let little = npy(&npy_file("<f4", false, "(2, 3)", &values)).unwrap();
        let t = tensor(&little);
        assert_eq!(t.shape, [2, 3]);
        assert_eq!(t.dtype, TensorDtype::F32 as i32);
        assert_eq!(&t.data[..], &values[..]);
        // A big-endian file gives the same tensor.
        let big: Vec<u8> = [1.5f32, -2.0, 3.25, 0.0, 5.0, 6.0]
            .iter()
            .flat_map(|v| v.to_be_bytes())
            .collect();
        assert_eq!(
            tensor(&npy(&npy_file(">f4", false, "(2, 3)", &big)).unwrap()),
            t
        );
        let bytes = npy(&npy_file("|u1", false, "(3,)", &[1, 2, 3])).unwrap();
        assert_eq!(tensor(&bytes).dtype, TensorDtype::U8 as i32);
        assert_eq!(tensor(&bytes).shape, [3]);
    }

    #[test]
    fn npy_files_it_cannot_send_are_refused_saying_why() {
        let cases = [
            (npy_file("<f4", true, "(2,)", &[0; 8]), "fortran-order"),
            (npy_file("<c8", false, "(1,)", &[0; 8]), "unsupported dtype"),
            (npy_file("<f4", false, "(3,)", &[0; 8]), "needs 12"),
            (b"\x93NUMPX".to_vec(), "not a .npy file"),
        ];
        for (file, needle) in cases {
            let error = format!("{:#}", npy(&file).unwrap_err());
            assert!(error.contains(needle), "{needle}: {error}");
        }
    }

    #[test]
    fn malformed_files_are_rejected_with_a_reason() {
        let wav = format!("{:#}", wav(b"RIFF0000WAVE", 20).unwrap_err());
        assert!(wav.contains("not a wav file"), "{wav}");
        let ppm = ppm(b"P3 1 1 255\n000").unwrap_err().to_string();
        assert!(ppm.contains("P6"), "{ppm}");
        let json = json_lines(b"{}\nnot json\n").unwrap_err().to_string();
        assert!(json.contains("line 2"), "{json}");
    }
}
