//! Builders for typed chunks and manifests, and readers for results, so tests state
//! inputs and expected outputs as values rather than protobuf plumbing.

use bytes::Bytes;
use flowplane_proto::{
    data::v1::{
        AudioBuffer, AudioFormat, BinaryData, DataBuffer, DataChunk, JsonData, PixelFormat,
        TensorBuffer, TensorDtype, TextData, VideoFrame, data_buffer::Payload,
    },
    streaming::v1::{
        ControlCommand, PipelineManifest, StreamControl, StreamInit, StreamPipelineRequest,
        stream_pipeline_request::Request,
    },
};

/// A buffer around a payload.
pub fn buffer(payload: Payload) -> DataBuffer {
    payload.into()
}

/// A chunk for pipeline input `input`.
pub fn chunk(sequence: u64, input: &str, payload: Payload) -> DataChunk {
    DataChunk {
        sequence,
        input: input.to_string(),
        buffer: Some(buffer(payload)),
        timestamp_us: 0,
        metadata: Default::default(),
    }
}

/// Text payload.
pub fn text(t: &str) -> Payload {
    Payload::Text(TextData {
        text: t.into(),
        language: String::new(),
    })
}

/// JSON payload.
pub fn json(v: serde_json::Value) -> Payload {
    Payload::Json(JsonData {
        json: v.to_string(),
        schema_hint: String::new(),
    })
}

/// Binary payload.
pub fn binary(data: &[u8]) -> Payload {
    Payload::Binary(BinaryData {
        data: Bytes::copy_from_slice(data),
        mime_type: String::new(),
    })
}

/// Mono F32LE audio.
pub fn audio_f32(rate: u32, samples: &[f32]) -> Payload {
    Payload::Audio(AudioBuffer {
        samples: samples.iter().flat_map(|s| s.to_le_bytes()).collect(),
        sample_rate: rate,
        channels: 1,
        format: AudioFormat::F32le as i32,
        num_samples: samples.len() as u64,
    })
}

/// Mono I16LE audio.
pub fn audio_i16(rate: u32, samples: &[i16]) -> Payload {
    Payload::Audio(AudioBuffer {
        samples: samples.iter().flat_map(|s| s.to_le_bytes()).collect(),
        sample_rate: rate,
        channels: 1,
        format: AudioFormat::I16le as i32,
        num_samples: samples.len() as u64,
    })
}

/// An RGB24 frame.
pub fn rgb(width: u32, height: u32, pixels: &[u8]) -> Payload {
    Payload::Video(VideoFrame {
        pixels: Bytes::copy_from_slice(pixels),
        width,
        height,
        format: PixelFormat::Rgb24 as i32,
        frame_number: 0,
    })
}

/// An F32 tensor.
pub fn tensor_f32(shape: &[u64], values: &[f32]) -> Payload {
    Payload::Tensor(TensorBuffer {
        data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        shape: shape.to_vec(),
        dtype: TensorDtype::F32 as i32,
    })
}

/// The samples of F32LE audio.
pub fn f32_samples(payload: &Payload) -> Vec<f32> {
    match payload {
        Payload::Audio(a) if a.format == AudioFormat::F32le as i32 => a
            .samples
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Payload::Tensor(t) if t.dtype == TensorDtype::F32 as i32 => t
            .data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        other => panic!("expected f32 audio or tensor, got {other:?}"),
    }
}

/// The samples of I16LE audio.
pub fn i16_samples(payload: &Payload) -> Vec<i16> {
    match payload {
        Payload::Audio(a) if a.format == AudioFormat::I16le as i32 => a
            .samples
            .chunks_exact(2)
            .map(|b| i16::from_le_bytes([b[0], b[1]]))
            .collect(),
        other => panic!("expected i16 audio, got {other:?}"),
    }
}

/// The text of a text payload.
pub fn text_of(payload: &Payload) -> &str {
    match payload {
        Payload::Text(t) => &t.text,
        other => panic!("expected text, got {other:?}"),
    }
}

/// The parsed JSON of a JSON payload.
pub fn json_of(payload: &Payload) -> serde_json::Value {
    match payload {
        Payload::Json(j) => serde_json::from_str(&j.json).expect("valid json"),
        other => panic!("expected json, got {other:?}"),
    }
}

/// Parses a YAML manifest into the proto form.
pub fn manifest(yaml: &str) -> PipelineManifest {
    flowplane_manifest::Manifest::from_text(yaml)
        .expect("test manifest parses")
        .to_proto()
}

/// The init request of a session.
pub fn init(manifest: PipelineManifest) -> StreamPipelineRequest {
    StreamPipelineRequest {
        request: Some(Request::Init(StreamInit {
            manifest: Some(manifest),
            metadata: Default::default(),
            audio_input: String::new(),
        })),
    }
}

/// A chunk request.
pub fn send(chunk: DataChunk) -> StreamPipelineRequest {
    StreamPipelineRequest {
        request: Some(Request::Chunk(chunk)),
    }
}

/// A control request.
pub fn control(command: ControlCommand) -> StreamPipelineRequest {
    StreamPipelineRequest {
        request: Some(Request::Control(StreamControl {
            command: command as i32,
        })),
    }
}
