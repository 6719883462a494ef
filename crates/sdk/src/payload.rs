//! Payload rules shared by every processor: the size limit, well-formedness (audio bytes
//! a whole number of frames, video bytes matching width x height x format, tensor bytes
//! matching shape x dtype) and sample/element codecs. Every check returns an
//! INVALID_ARGUMENT [`ProcessError`] naming the field; nothing here may panic on input.

use bytes::Bytes;
use flowplane_proto::data::v1::{
    AudioBuffer, AudioFormat, PixelFormat, TensorBuffer, TensorDtype, VideoFrame,
    data_buffer::Payload,
};
use tonic::Code;

use crate::ProcessError;

/// Reason of a payload over [`flowplane_grpc::MAX_PAYLOAD_BYTES`] (RESOURCE_EXHAUSTED).
pub const PAYLOAD_TOO_LARGE: &str = "PAYLOAD_TOO_LARGE";
/// Reason of a payload whose fields contradict each other (INVALID_ARGUMENT).
pub const MALFORMED_PAYLOAD: &str = "MALFORMED_PAYLOAD";
/// Reason of a format, pixel layout or dtype a processor does not handle (INVALID_ARGUMENT).
pub const UNSUPPORTED_FORMAT: &str = "UNSUPPORTED_FORMAT";

/// The field holding the payload's bulk data, as a dotted path from the process request.
pub fn data_field(payload: &Payload) -> &'static str {
    match payload {
        Payload::Audio(_) => "chunk.buffer.audio.samples",
        Payload::Video(_) => "chunk.buffer.video.pixels",
        Payload::Tensor(_) => "chunk.buffer.tensor.data",
        Payload::Json(_) => "chunk.buffer.json.json",
        Payload::Text(_) => "chunk.buffer.text.text",
        Payload::Binary(_) => "chunk.buffer.binary.data",
    }
}

/// RESOURCE_EXHAUSTED when the payload's data is over `limit` bytes.
pub fn check_size(payload: &Payload, limit: usize) -> Result<(), ProcessError> {
    let len = payload.payload_len();
    if len > limit {
        return Err(ProcessError::new(
            Code::ResourceExhausted,
            PAYLOAD_TOO_LARGE,
            format!(
                "{} has {len} bytes, over the limit of {limit} bytes (MAX_PAYLOAD_BYTES)",
                data_field(payload)
            ),
        )
        .with_field(data_field(payload)));
    }
    Ok(())
}

/// Checks that the payload's fields agree with each other. O(1): lengths only.
pub fn check(payload: &Payload) -> Result<(), ProcessError> {
    match payload {
        Payload::Audio(a) => audio_layout(a).map(drop),
        Payload::Video(v) => video_layout(v).map(drop),
        Payload::Tensor(t) => tensor_layout(t).map(drop),
        Payload::Json(_) | Payload::Text(_) | Payload::Binary(_) => Ok(()),
    }
}

fn malformed(field: &str, message: String) -> ProcessError {
    ProcessError::invalid(MALFORMED_PAYLOAD, field, message)
}

/// The shape of an audio buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AudioLayout {
    /// Sample encoding.
    pub format: AudioFormat,
    /// Bytes of one sample of one channel.
    pub bytes_per_sample: usize,
    /// Interleaved channels.
    pub channels: usize,
    /// Samples per channel.
    pub frames: usize,
    /// Samples a second per channel.
    pub sample_rate: u32,
}

/// Bytes of one sample, `None` for UNSPECIFIED.
pub fn bytes_per_sample(format: AudioFormat) -> Option<usize> {
    match format {
        AudioFormat::Unspecified => None,
        AudioFormat::F32le | AudioFormat::I32le => Some(4),
        AudioFormat::I16le => Some(2),
    }
}

/// Reads and checks an audio buffer's layout.
pub fn audio_layout(audio: &AudioBuffer) -> Result<AudioLayout, ProcessError> {
    let format = AudioFormat::try_from(audio.format).unwrap_or(AudioFormat::Unspecified);
    let Some(bytes_per_sample) = bytes_per_sample(format) else {
        return Err(malformed(
            "chunk.buffer.audio.format",
            format!("audio.format {} is not a sample format", audio.format),
        ));
    };
    if audio.channels == 0 {
        return Err(malformed(
            "chunk.buffer.audio.channels",
            "audio.channels must be at least 1".into(),
        ));
    }
    if audio.sample_rate == 0 {
        return Err(malformed(
            "chunk.buffer.audio.sample_rate",
            "audio.sample_rate must be at least 1".into(),
        ));
    }
    let channels = audio.channels as usize;
    let frame_bytes = bytes_per_sample * channels;
    let len = audio.samples.len();
    if !len.is_multiple_of(frame_bytes) {
        return Err(malformed(
            "chunk.buffer.audio.samples",
            format!(
                "audio.samples has {len} bytes, not a whole number of {channels}-channel {} frames ({frame_bytes} bytes each)",
                format
                    .as_str_name()
                    .trim_start_matches("AUDIO_FORMAT_")
                    .to_lowercase()
            ),
        ));
    }
    let frames = len / frame_bytes;
    if audio.num_samples != 0 && audio.num_samples != frames as u64 {
        return Err(malformed(
            "chunk.buffer.audio.num_samples",
            format!(
                "audio.num_samples is {} but audio.samples holds {frames} samples per channel",
                audio.num_samples
            ),
        ));
    }
    Ok(AudioLayout {
        format,
        bytes_per_sample,
        channels,
        frames,
        sample_rate: audio.sample_rate,
    })
}

/// Full scale of an integer format, so samples decode to [-1, 1); powers of two keep the
/// round trip exact.
fn full_scale(format: AudioFormat) -> f64 {
    match format {
        AudioFormat::I16le => 32768.0,
        AudioFormat::I32le => 2147483648.0,
        AudioFormat::F32le | AudioFormat::Unspecified => 1.0,
    }
}

/// Decodes interleaved samples to floats: F32LE as is, integers divided by full scale.
pub fn decode_audio(audio: &AudioBuffer) -> Result<Vec<f64>, ProcessError> {
    let layout = audio_layout(audio)?;
    let scale = full_scale(layout.format);
    let bytes = &audio.samples[..];
    let samples = match layout.format {
        AudioFormat::F32le => bytes
            .chunks_exact(4)
            .map(|b| f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]])))
            .collect(),
        AudioFormat::I16le => bytes
            .chunks_exact(2)
            .map(|b| f64::from(i16::from_le_bytes([b[0], b[1]])) / scale)
            .collect(),
        AudioFormat::I32le => bytes
            .chunks_exact(4)
            .map(|b| f64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]])) / scale)
            .collect(),
        AudioFormat::Unspecified => Vec::new(),
    };
    Ok(samples)
}

/// Encodes floats as `format`. Integers are rounded half away from zero and clipped to
/// their range; F32LE is written as is (floats may exceed full scale without wrapping).
pub fn encode_audio(format: AudioFormat, samples: &[f64]) -> Bytes {
    let scale = full_scale(format);
    let mut out = Vec::with_capacity(samples.len() * bytes_per_sample(format).unwrap_or(0));
    match format {
        AudioFormat::F32le => {
            for s in samples {
                out.extend_from_slice(&(*s as f32).to_le_bytes());
            }
        }
        AudioFormat::I16le => {
            for s in samples {
                let v = (s * scale).round().clamp(i16::MIN.into(), i16::MAX.into()) as i16;
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        AudioFormat::I32le => {
            for s in samples {
                let v = (s * scale).round().clamp(i32::MIN.into(), i32::MAX.into()) as i32;
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        AudioFormat::Unspecified => {}
    }
    Bytes::from(out)
}

/// The shape of a video frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VideoLayout {
    /// Pixel layout.
    pub format: PixelFormat,
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
}

/// Bytes a `width` x `height` frame of `format` takes, `None` for UNSPECIFIED or overflow.
pub fn frame_bytes(format: PixelFormat, width: usize, height: usize) -> Option<usize> {
    let pixels = width.checked_mul(height)?;
    let chroma = width.div_ceil(2).checked_mul(height.div_ceil(2))?;
    match format {
        PixelFormat::Unspecified => None,
        PixelFormat::Rgb24 => pixels.checked_mul(3),
        PixelFormat::Rgba32 => pixels.checked_mul(4),
        PixelFormat::Gray8 => Some(pixels),
        PixelFormat::I420 | PixelFormat::Nv12 => pixels.checked_add(chroma.checked_mul(2)?),
    }
}

/// Reads and checks a video frame's layout.
pub fn video_layout(video: &VideoFrame) -> Result<VideoLayout, ProcessError> {
    let format = PixelFormat::try_from(video.format).unwrap_or(PixelFormat::Unspecified);
    if format == PixelFormat::Unspecified {
        return Err(malformed(
            "chunk.buffer.video.format",
            format!("video.format {} is not a pixel format", video.format),
        ));
    }
    let (width, height) = (video.width as usize, video.height as usize);
    let name = format
        .as_str_name()
        .trim_start_matches("PIXEL_FORMAT_")
        .to_lowercase();
    let expected = frame_bytes(format, width, height).ok_or_else(|| {
        malformed(
            "chunk.buffer.video.width",
            format!("video frame {width}x{height} is too large"),
        )
    })?;
    if video.pixels.len() != expected {
        return Err(malformed(
            "chunk.buffer.video.pixels",
            format!(
                "video.pixels has {} bytes but a {width}x{height} {name} frame needs {expected}",
                video.pixels.len()
            ),
        ));
    }
    Ok(VideoLayout {
        format,
        width,
        height,
    })
}

/// Bytes of one element, `None` for UNSPECIFIED.
pub fn dtype_size(dtype: TensorDtype) -> Option<usize> {
    match dtype {
        TensorDtype::Unspecified => None,
        TensorDtype::I8 | TensorDtype::U8 => Some(1),
        TensorDtype::F16 => Some(2),
        TensorDtype::F32 | TensorDtype::I32 => Some(4),
        TensorDtype::F64 | TensorDtype::I64 => Some(8),
    }
}

/// The shape of a tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TensorLayout {
    /// Element type.
    pub dtype: TensorDtype,
    /// Number of elements (the product of the shape; 1 for a scalar).
    pub elements: usize,
}

/// Reads and checks a tensor's layout: the product of `shape` times the dtype size must
/// be the length of `data`.
pub fn tensor_layout(tensor: &TensorBuffer) -> Result<TensorLayout, ProcessError> {
    let dtype = TensorDtype::try_from(tensor.dtype).unwrap_or(TensorDtype::Unspecified);
    let Some(size) = dtype_size(dtype) else {
        return Err(malformed(
            "chunk.buffer.tensor.dtype",
            format!("tensor.dtype {} is not an element type", tensor.dtype),
        ));
    };
    let name = dtype
        .as_str_name()
        .trim_start_matches("TENSOR_DTYPE_")
        .to_lowercase();
    let elements = tensor
        .shape
        .iter()
        .try_fold(1usize, |acc, d| acc.checked_mul(usize::try_from(*d).ok()?));
    let needed = elements.and_then(|e| e.checked_mul(size));
    match (elements, needed) {
        (Some(elements), Some(needed)) if needed == tensor.data.len() => {
            Ok(TensorLayout { dtype, elements })
        }
        _ => Err(malformed(
            "chunk.buffer.tensor.shape",
            format!(
                "tensor.shape {:?} of {name} needs {} bytes but tensor.data has {}",
                tensor.shape,
                needed.map_or_else(|| "more than usize".to_string(), |n| n.to_string()),
                tensor.data.len()
            ),
        )),
    }
}

/// Decodes an F32 or F64 tensor's elements; other dtypes are UNSUPPORTED_FORMAT.
pub fn decode_float_tensor(tensor: &TensorBuffer) -> Result<Vec<f64>, ProcessError> {
    let layout = tensor_layout(tensor)?;
    let data = &tensor.data[..];
    match layout.dtype {
        TensorDtype::F32 => Ok(data
            .chunks_exact(4)
            .map(|b| f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]])))
            .collect()),
        TensorDtype::F64 => Ok(data
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
            .collect()),
        other => Err(ProcessError::invalid(
            UNSUPPORTED_FORMAT,
            "chunk.buffer.tensor.dtype",
            format!(
                "tensor.dtype {} is not supported; use f32 or f64",
                other
                    .as_str_name()
                    .trim_start_matches("TENSOR_DTYPE_")
                    .to_lowercase()
            ),
        )),
    }
}

/// Encodes elements as F32 or F64 little endian (other dtypes give empty bytes).
pub fn encode_float_tensor(dtype: TensorDtype, values: &[f64]) -> Bytes {
    let mut out = Vec::with_capacity(values.len() * dtype_size(dtype).unwrap_or(0));
    match dtype {
        TensorDtype::F32 => values
            .iter()
            .for_each(|v| out.extend_from_slice(&(*v as f32).to_le_bytes())),
        TensorDtype::F64 => values
            .iter()
            .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        _ => {}
    }
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn audio(format: AudioFormat, channels: u32, bytes: usize) -> AudioBuffer {
        AudioBuffer {
            samples: Bytes::from(vec![0u8; bytes]),
            sample_rate: 48000,
            channels,
            format: format as i32,
            num_samples: 0,
        }
    }

    #[test]
    fn audio_must_be_whole_frames() {
        let ok = audio_layout(&audio(AudioFormat::I16le, 2, 8)).unwrap();
        assert_eq!(ok.frames, 2);
        let err = audio_layout(&audio(AudioFormat::I16le, 2, 7)).unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert_eq!(err.field(), "chunk.buffer.audio.samples");
        assert_eq!(
            err.message(),
            "audio.samples has 7 bytes, not a whole number of 2-channel i16le frames (4 bytes each)"
        );
        let err = audio_layout(&audio(AudioFormat::Unspecified, 1, 4)).unwrap_err();
        assert_eq!(err.field(), "chunk.buffer.audio.format");
        let err = audio_layout(&audio(AudioFormat::F32le, 0, 4)).unwrap_err();
        assert_eq!(err.field(), "chunk.buffer.audio.channels");
        let mut wrong_count = audio(AudioFormat::F32le, 1, 8);
        wrong_count.num_samples = 3;
        assert_eq!(
            audio_layout(&wrong_count).unwrap_err().field(),
            "chunk.buffer.audio.num_samples"
        );
    }

    #[test]
    fn integer_samples_round_trip_and_clip() {
        let bytes: Vec<u8> = [0i16, 1000, -32768, 32767]
            .iter()
            .flat_map(|s| s.to_le_bytes())
            .collect();
        let buffer = AudioBuffer {
            samples: Bytes::from(bytes.clone()),
            sample_rate: 8000,
            channels: 1,
            format: AudioFormat::I16le as i32,
            num_samples: 4,
        };
        let decoded = decode_audio(&buffer).unwrap();
        assert_eq!(
            decoded,
            vec![0.0, 1000.0 / 32768.0, -1.0, 32767.0 / 32768.0]
        );
        assert_eq!(
            encode_audio(AudioFormat::I16le, &decoded),
            Bytes::from(bytes)
        );
        let clipped = encode_audio(AudioFormat::I16le, &[2.0, -2.0]);
        assert_eq!(&clipped[..], &[0xff, 0x7f, 0x00, 0x80]);
    }

    #[test]
    fn video_pixels_must_match_the_frame() {
        let frame = |format: PixelFormat, len: usize| VideoFrame {
            pixels: Bytes::from(vec![0u8; len]),
            width: 4,
            height: 2,
            format: format as i32,
            frame_number: 0,
        };
        assert!(video_layout(&frame(PixelFormat::Rgb24, 24)).is_ok());
        assert!(video_layout(&frame(PixelFormat::Rgba32, 32)).is_ok());
        assert!(video_layout(&frame(PixelFormat::I420, 12)).is_ok());
        let err = video_layout(&frame(PixelFormat::Rgb24, 23)).unwrap_err();
        assert_eq!(err.field(), "chunk.buffer.video.pixels");
        assert_eq!(
            err.message(),
            "video.pixels has 23 bytes but a 4x2 rgb24 frame needs 24"
        );
    }

    #[test]
    fn tensor_shape_must_match_data() {
        let tensor = |shape: Vec<u64>, len: usize| TensorBuffer {
            data: Bytes::from(vec![0u8; len]),
            shape,
            dtype: TensorDtype::F32 as i32,
        };
        assert_eq!(tensor_layout(&tensor(vec![2, 3], 24)).unwrap().elements, 6);
        assert_eq!(tensor_layout(&tensor(vec![], 4)).unwrap().elements, 1);
        let err = tensor_layout(&tensor(vec![2, 3], 20)).unwrap_err();
        assert_eq!(err.field(), "chunk.buffer.tensor.shape");
        assert_eq!(
            err.message(),
            "tensor.shape [2, 3] of f32 needs 24 bytes but tensor.data has 20"
        );
        let huge = tensor_layout(&tensor(vec![u64::MAX, u64::MAX], 4)).unwrap_err();
        assert!(huge.message().contains("more than usize"), "{huge}");
    }

    #[test]
    fn oversized_payloads_name_the_limit() {
        let payload = Payload::Binary(flowplane_proto::data::v1::BinaryData {
            data: Bytes::from(vec![0u8; 11]),
            mime_type: String::new(),
        });
        assert!(check_size(&payload, 11).is_ok());
        let err = check_size(&payload, 10).unwrap_err();
        assert_eq!(err.code(), Code::ResourceExhausted);
        assert_eq!(err.reason(), PAYLOAD_TOO_LARGE);
        assert_eq!(
            err.message(),
            "chunk.buffer.binary.data has 11 bytes, over the limit of 10 bytes (MAX_PAYLOAD_BYTES)"
        );
    }
}
