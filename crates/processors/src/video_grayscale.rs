//! `video.grayscale`: RGB24 and RGBA32 frames become GRAY8 with the ITU-R BT.601 luma
//! weights, Y = 0.299 R + 0.587 G + 0.114 B, in integer arithmetic rounding half up:
//! Y = (299 R + 587 G + 114 B + 500) / 1000. Alpha is ignored. GRAY8 frames pass through;
//! I420 and NV12 frames give their Y plane, which already is the luma.

use flowplane_sdk::{
    Capability, Input, Output, ParamError, Params, ProcessError, Processor,
    payload::video_layout,
    proto::data::v1::{DataTypeHint, PixelFormat, VideoFrame, data_buffer::Payload},
};

/// Converts each frame to GRAY8.
pub struct Grayscale;

impl Processor for Grayscale {
    fn capability() -> Capability {
        Capability::new(
            "video.grayscale",
            "RGB24/RGBA32 (also GRAY8, I420, NV12) to GRAY8 with BT.601 luma weights",
        )
        .version(super::VERSION)
        .input("video", [DataTypeHint::Video], "a raw frame")
        .output("video", [DataTypeHint::Video], "the GRAY8 frame")
        .stateless()
    }

    fn create(_params: &Params) -> Result<Self, ParamError> {
        Ok(Self)
    }

    fn process(&mut self, input: Input<'_>) -> Result<Vec<Output>, ProcessError> {
        let Payload::Video(frame) = input.payload else {
            return Err(ProcessError::internal("TYPE_MISMATCH", "expected video"));
        };
        let layout = video_layout(&frame)?;
        let luma_plane = layout.width * layout.height;
        let pixels = match layout.format {
            PixelFormat::Rgb24 => bytes::Bytes::from(luma(&frame.pixels, 3)),
            PixelFormat::Rgba32 => bytes::Bytes::from(luma(&frame.pixels, 4)),
            PixelFormat::Gray8 => frame.pixels.clone(),
            PixelFormat::I420 | PixelFormat::Nv12 => frame.pixels.slice(..luma_plane),
            PixelFormat::Unspecified => unreachable!("video_layout rejects UNSPECIFIED"),
        };
        Ok(vec![Output::new(
            "video",
            Payload::Video(VideoFrame {
                pixels,
                width: frame.width,
                height: frame.height,
                format: PixelFormat::Gray8 as i32,
                frame_number: frame.frame_number,
            }),
        )])
    }
}

/// BT.601 luma of packed pixels of `stride` bytes whose first three are R, G, B.
pub fn luma(pixels: &[u8], stride: usize) -> Vec<u8> {
    pixels
        .chunks_exact(stride)
        .map(|p| {
            let y = 299 * u32::from(p[0]) + 587 * u32::from(p[1]) + 114 * u32::from(p[2]);
            ((y + 500) / 1000) as u8
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bt601_weights_with_rounding() {
        let rgb = [
            255, 0, 0, // red: 76.245 -> 76
            0, 255, 0, // green: 149.685 -> 150
            0, 0, 255, // blue: 29.07 -> 29
            255, 255, 255, // white -> 255
            0, 0, 0, // black -> 0
            10, 20, 30, // 2.99 + 11.74 + 3.42 = 18.15 -> 18
        ];
        assert_eq!(luma(&rgb, 3), [76, 150, 29, 255, 0, 18]);
        assert_eq!(luma(&[255, 0, 0, 7, 0, 255, 0, 9], 4), [76, 150]);
    }
}
