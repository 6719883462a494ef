//! The few RIFF/WAVE facts the file source and the file consumer need: where the
//! samples start, how they are encoded, and a 44-byte header to write. Parsing reads
//! only the header, so a file that is still being written (sizes not yet patched) can be
//! followed; nothing here may panic on input.

use flowplane_proto::data::v1::AudioFormat;

/// Bytes of the canonical header [`header`] writes.
pub const HEADER_BYTES: u64 = 44;

/// How a file's samples are laid out, and what the records carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WavLayout {
    /// Sample rate, Hz.
    pub sample_rate: u32,
    /// Interleaved channels.
    pub channels: u32,
    /// Bits per sample in the file: 8, 16, 24 or 32.
    pub bits: u16,
    /// True for IEEE float samples.
    pub float: bool,
    /// Where the samples start.
    pub data_start: u64,
    /// The declared length of the samples, when the header has it (0 or 0xFFFFFFFF
    /// while a writer has not patched it).
    pub data_len: Option<u64>,
}

impl WavLayout {
    /// Bytes of one frame in the file.
    pub fn frame_bytes(&self) -> usize {
        usize::from(self.bits / 8) * self.channels as usize
    }

    /// The format records carry: 8/16-bit integers become I16LE, 24/32-bit I32LE,
    /// 32-bit float F32LE.
    pub fn format(&self) -> AudioFormat {
        match (self.float, self.bits) {
            (true, _) => AudioFormat::F32le,
            (false, 8 | 16) => AudioFormat::I16le,
            (false, _) => AudioFormat::I32le,
        }
    }

    /// File samples to record samples, in the record format.
    pub fn convert(&self, raw: &[u8]) -> Vec<u8> {
        match (self.float, self.bits) {
            (false, 8) => raw
                .iter()
                .flat_map(|s| (((i16::from(*s)) - 128) << 8).to_le_bytes())
                .collect(),
            (false, 24) => raw
                .chunks_exact(3)
                .flat_map(|s| (i32::from_le_bytes([0, s[0], s[1], s[2]])).to_le_bytes())
                .collect(),
            _ => raw.to_vec(),
        }
    }
}

/// Parses the header at the start of `head`. `Ok(None)`: not enough bytes yet (a file
/// being written); `Err` names what is wrong.
pub fn parse(head: &[u8]) -> Result<Option<WavLayout>, String> {
    if head.len() < 12 {
        return Ok(None);
    }
    if &head[0..4] != b"RIFF" || &head[8..12] != b"WAVE" {
        return Err("not a RIFF/WAVE file".into());
    }
    let mut at = 12usize;
    let mut fmt: Option<(u16, u32, u32, u16)> = None;
    loop {
        let Some(chunk) = head.get(at..at + 8) else {
            return Ok(None);
        };
        let id = &chunk[0..4];
        let size = u32::from_le_bytes([chunk[4], chunk[5], chunk[6], chunk[7]]);
        let body = at + 8;
        if id == b"data" {
            let (tag, channels, sample_rate, bits) =
                fmt.ok_or("the data chunk comes before the fmt chunk")?;
            let float = match (tag, bits) {
                (1, 8 | 16 | 24 | 32) => false,
                (3, 32) => true,
                _ => {
                    return Err(format!(
                        "unsupported wav encoding (format {tag}, {bits}-bit): use 8/16/24/32-bit pcm or 32-bit float"
                    ));
                }
            };
            if channels == 0 || sample_rate == 0 {
                return Err(format!(
                    "wav declares {channels} channels at {sample_rate} Hz"
                ));
            }
            let data_len = (size != 0 && size != u32::MAX).then_some(u64::from(size));
            return Ok(Some(WavLayout {
                sample_rate,
                channels,
                bits,
                float,
                data_start: body as u64,
                data_len,
            }));
        }
        let Some(data) = head.get(body..body + size as usize) else {
            return Ok(None);
        };
        if id == b"fmt " {
            if data.len() < 16 {
                return Err("the fmt chunk is shorter than 16 bytes".into());
            }
            let mut tag = u16::from_le_bytes([data[0], data[1]]);
            // WAVE_FORMAT_EXTENSIBLE: the real tag opens the sub-format GUID.
            if tag == 0xFFFE && data.len() >= 26 {
                tag = u16::from_le_bytes([data[24], data[25]]);
            }
            let channels = u32::from(u16::from_le_bytes([data[2], data[3]]));
            let rate = u32::from_le_bytes([data[4], data[5], data[6], data[7]]);
            let bits = u16::from_le_bytes([data[14], data[15]]);
            fmt = Some((tag, channels, rate, bits));
        }
        // Chunks are padded to an even length.
        at = body + size as usize + (size as usize & 1);
    }
}

/// A canonical 44-byte header for `data_len` bytes of samples in `format`.
pub fn header(format: AudioFormat, sample_rate: u32, channels: u16, data_len: u32) -> [u8; 44] {
    let (tag, bits): (u16, u16) = match format {
        AudioFormat::F32le => (3, 32),
        AudioFormat::I32le => (1, 32),
        _ => (1, 16),
    };
    let block_align = channels * (bits / 8);
    let mut h = [0u8; 44];
    h[0..4].copy_from_slice(b"RIFF");
    h[4..8].copy_from_slice(&(36 + data_len).to_le_bytes());
    h[8..12].copy_from_slice(b"WAVE");
    h[12..16].copy_from_slice(b"fmt ");
    h[16..20].copy_from_slice(&16u32.to_le_bytes());
    h[20..22].copy_from_slice(&tag.to_le_bytes());
    h[22..24].copy_from_slice(&channels.to_le_bytes());
    h[24..28].copy_from_slice(&sample_rate.to_le_bytes());
    h[28..32].copy_from_slice(&(sample_rate * u32::from(block_align)).to_le_bytes());
    h[32..34].copy_from_slice(&block_align.to_le_bytes());
    h[34..36].copy_from_slice(&bits.to_le_bytes());
    h[36..40].copy_from_slice(b"data");
    h[40..44].copy_from_slice(&data_len.to_le_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_header_parses_back() {
        let h = header(AudioFormat::I16le, 48_000, 2, 400);
        let layout = parse(&h).unwrap().unwrap();
        assert_eq!(layout.sample_rate, 48_000);
        assert_eq!(layout.channels, 2);
        assert_eq!(layout.bits, 16);
        assert_eq!(layout.data_start, 44);
        assert_eq!(layout.data_len, Some(400));
        assert_eq!(layout.frame_bytes(), 4);
        assert_eq!(parse(&h[..30]).unwrap(), None);
        assert!(parse(b"RIFX\0\0\0\0WAVEfmt ").is_err());
    }
}
