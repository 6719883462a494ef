//! The audio processors: `audio.gain`, `audio.resample`, `audio.level` and
//! `audio.dynamic_gain`. Samples are decoded to f64 in [-1, 1) (integers divided by
//! their full scale, a power of two, so the round trip is exact); integer output is
//! rounded half away from zero and clipped, float output is never clipped. No chunk may
//! make a processor allocate beyond what it will send: `audio.resample` checks its ratio
//! and its output size before it allocates, and refuses the chunk otherwise.

use flowplane_sdk::{
    Capability, Input, Output, Param, ParamError, Params, ProcessError, Processor,
    payload::{AudioLayout, audio_layout, decode_audio, encode_audio},
    proto::data::v1::{AudioBuffer, AudioFormat, DataTypeHint, data_buffer::Payload},
};
use serde_json::{Value, json};

use super::{INVALID_REQUEST, OUTPUT_TOO_LARGE, json_payload, parse_json};

/// Largest gain magnitude accepted, in dB: beyond it a value is surely a mistake.
pub const MAX_GAIN_DB: f64 = 120.0;
/// Highest target sample rate accepted by `audio.resample`.
pub const MAX_SAMPLE_RATE: u64 = 768_000;
/// Largest upsampling factor `audio.resample` accepts: 8 kHz telephony to the highest
/// target rate. Beyond it an input `sample_rate` is surely wrong (1 Hz to 768 kHz would
/// turn every input frame into 768000).
pub const MAX_UPSAMPLE_RATIO: u64 = 96;
/// Reason of an audio chunk whose sample rate is too low for the target rate.
pub const RATIO_TOO_LARGE: &str = "RATIO_TOO_LARGE";

fn expect_audio(payload: Payload) -> Result<AudioBuffer, ProcessError> {
    match payload {
        Payload::Audio(audio) => Ok(audio),
        _ => Err(ProcessError::internal("TYPE_MISMATCH", "expected audio")),
    }
}

/// Linear factor of a gain in dB.
pub fn db_to_factor(gain_db: f64) -> f64 {
    10f64.powf(gain_db / 20.0)
}

fn gain_db_in_range(gain_db: f64) -> Result<f64, String> {
    if gain_db.is_finite() && gain_db.abs() <= MAX_GAIN_DB {
        Ok(gain_db)
    } else {
        Err(format!(
            "must be between -{MAX_GAIN_DB} and {MAX_GAIN_DB} dB, got {gain_db}"
        ))
    }
}

/// `audio` with every sample multiplied by `factor`, same format and layout.
fn apply_gain(audio: AudioBuffer, factor: f64) -> Result<AudioBuffer, ProcessError> {
    let layout = audio_layout(&audio)?;
    let samples: Vec<f64> = decode_audio(&audio)?
        .into_iter()
        .map(|s| s * factor)
        .collect();
    Ok(AudioBuffer {
        samples: encode_audio(layout.format, &samples),
        ..audio
    })
}

/// `audio.gain`: a fixed gain in dB.
pub struct Gain {
    factor: f64,
}

impl Processor for Gain {
    fn capability() -> Capability {
        Capability::new(
            "audio.gain",
            "multiplies samples by a gain in dB; integers clip",
        )
        .version(super::VERSION)
        .input(
            "audio",
            [DataTypeHint::Audio],
            "F32LE, I16LE or I32LE audio",
        )
        .output(
            "audio",
            [DataTypeHint::Audio],
            "the audio, same format and layout",
        )
        .param(Param::number("gain_db", "gain in dB, -120 to 120 (6.02 doubles)").required())
        .stateless()
    }

    fn create(params: &Params) -> Result<Self, ParamError> {
        let gain_db =
            gain_db_in_range(params.f64("gain_db")?).map_err(|m| ParamError::new("gain_db", m))?;
        Ok(Self {
            factor: db_to_factor(gain_db),
        })
    }

    fn process(&mut self, input: Input<'_>) -> Result<Vec<Output>, ProcessError> {
        let audio = apply_gain(expect_audio(input.payload)?, self.factor)?;
        Ok(vec![Output::new("audio", Payload::Audio(audio))])
    }
}

/// `audio.level`: RMS and peak of each chunk in dBFS.
pub struct Level;

impl Processor for Level {
    fn capability() -> Capability {
        Capability::new(
            "audio.level",
            r#"RMS and peak of each chunk over all channels in dBFS: {"rms_dbfs", "peak_dbfs", "frames", "channels"}; null for silence"#,
        )
        .version(super::VERSION)
        .input("audio", [DataTypeHint::Audio], "F32LE, I16LE or I32LE audio")
        .output("level", [DataTypeHint::Json], r#"{"rms_dbfs": x, "peak_dbfs": y, "frames": n, "channels": c}"#)
        .stateless()
    }

    fn create(_params: &Params) -> Result<Self, ParamError> {
        Ok(Self)
    }

    fn process(&mut self, input: Input<'_>) -> Result<Vec<Output>, ProcessError> {
        let audio = expect_audio(input.payload)?;
        let layout = audio_layout(&audio)?;
        let (rms, peak) = levels(&decode_audio(&audio)?);
        let value = json!({
            "rms_dbfs": dbfs(rms),
            "peak_dbfs": dbfs(peak),
            "frames": layout.frames,
            "channels": layout.channels,
        });
        Ok(vec![Output::new("level", json_payload(&value))])
    }
}

/// RMS and peak magnitude of samples in full-scale units; zeros for no samples.
pub fn levels(samples: &[f64]) -> (f64, f64) {
    if samples.is_empty() {
        return (0.0, 0.0);
    }
    let sum_squares: f64 = samples.iter().map(|s| s * s).sum();
    let peak = samples.iter().fold(0.0f64, |p, s| p.max(s.abs()));
    ((sum_squares / samples.len() as f64).sqrt(), peak)
}

/// A level in dBFS; JSON null for silence, whose level is minus infinity.
pub fn dbfs(level: f64) -> Value {
    if level > 0.0 {
        json!(20.0 * level.log10())
    } else {
        Value::Null
    }
}

/// `audio.dynamic_gain`: a gain that follows the latest `{"gain_db": x}` on `control`.
pub struct DynamicGain {
    factor: f64,
}

impl Processor for DynamicGain {
    fn capability() -> Capability {
        Capability::new(
            "audio.dynamic_gain",
            r#"gain on `audio` follows the latest {"gain_db": x} on `control`, from the next audio chunk on"#,
        )
        .version(super::VERSION)
        .input("audio", [DataTypeHint::Audio], "F32LE, I16LE or I32LE audio")
        .input("control", [DataTypeHint::Json], r#"{"gain_db": x}; answered with no output"#)
        .output("audio", [DataTypeHint::Audio], "the audio at the current gain")
        .param(
            Param::number("gain_db", "gain in dB until the first control chunk")
                .default(json!(0.0)),
        )
    }

    fn create(params: &Params) -> Result<Self, ParamError> {
        let gain_db =
            gain_db_in_range(params.f64("gain_db")?).map_err(|m| ParamError::new("gain_db", m))?;
        Ok(Self {
            factor: db_to_factor(gain_db),
        })
    }

    fn process(&mut self, input: Input<'_>) -> Result<Vec<Output>, ProcessError> {
        if input.port == "control" {
            let Payload::Json(json) = input.payload else {
                return Err(ProcessError::internal("TYPE_MISMATCH", "expected json"));
            };
            let control = parse_json(&json)?;
            let gain_db = control
                .get("gain_db")
                .and_then(Value::as_f64)
                .ok_or_else(|| {
                    ProcessError::invalid(
                        INVALID_REQUEST,
                        "chunk.buffer.json.json",
                        format!("control must be {{\"gain_db\": <number>}}, got {control}"),
                    )
                })?;
            let gain_db = gain_db_in_range(gain_db).map_err(|m| {
                ProcessError::invalid(
                    INVALID_REQUEST,
                    "chunk.buffer.json.json",
                    format!("control \"gain_db\" {m}"),
                )
            })?;
            self.factor = db_to_factor(gain_db);
            return Ok(Vec::new());
        }
        let audio = apply_gain(expect_audio(input.payload)?, self.factor)?;
        Ok(vec![Output::new("audio", Payload::Audio(audio))])
    }
}

/// `audio.resample`: linear interpolation to `target_rate`, continuous across chunks.
///
/// Output sample k sits at input position k * rate / target (exact rational
/// arithmetic, so no drift over long streams). The last input frame of a chunk is kept
/// so the first outputs of the next chunk interpolate across the join: a stream cut
/// into any chunks resamples to exactly the same samples as the whole stream at once.
/// An output is emitted once both its neighbours have arrived, so output lags input by
/// under one input frame and the final fraction of a frame at the end of a stream is
/// never emitted. There is no anti-aliasing filter: downsampling aliases content above
/// the new Nyquist frequency. A change of rate, channels or format starts afresh.
pub struct Resample {
    target: u32,
    state: Option<ResampleState>,
}

struct ResampleState {
    rate: u32,
    channels: usize,
    format: AudioFormat,
    /// The last frame of the previous chunk.
    last: Vec<f64>,
    /// Input frames seen before the current chunk.
    consumed: u64,
    /// Output frames emitted so far.
    produced: u64,
}

impl Processor for Resample {
    fn capability() -> Capability {
        Capability::new(
            "audio.resample",
            "linear-interpolation resampling, continuous across chunk boundaries",
        )
        .version(super::VERSION)
        .input(
            "audio",
            [DataTypeHint::Audio],
            "F32LE, I16LE or I32LE audio",
        )
        .output(
            "audio",
            [DataTypeHint::Audio],
            "the audio at target_rate, same format and channels",
        )
        .param(Param::number("target_rate", "output sample rate in Hz, 1 to 768000").required())
    }

    fn create(params: &Params) -> Result<Self, ParamError> {
        let target = params.u64("target_rate")?;
        if !(1..=MAX_SAMPLE_RATE).contains(&target) {
            return Err(ParamError::new(
                "target_rate",
                format!("must be between 1 and {MAX_SAMPLE_RATE} Hz, got {target}"),
            ));
        }
        Ok(Self {
            target: target as u32,
            state: None,
        })
    }

    fn process(&mut self, input: Input<'_>) -> Result<Vec<Output>, ProcessError> {
        let audio = expect_audio(input.payload)?;
        let layout = audio_layout(&audio)?;
        if layout.sample_rate == self.target {
            self.state = None;
            return Ok(vec![Output::new("audio", Payload::Audio(audio))]);
        }
        let fresh = !self.state.as_ref().is_some_and(|s| {
            s.rate == layout.sample_rate
                && s.channels == layout.channels
                && s.format == layout.format
        });
        // Checked before any state changes, so a refused chunk leaves the stream as if it
        // had not been sent.
        self.check_output(&layout, fresh)?;
        if fresh {
            self.state = Some(ResampleState {
                rate: layout.sample_rate,
                channels: layout.channels,
                format: layout.format,
                last: Vec::new(),
                consumed: 0,
                produced: 0,
            });
        }
        let Some(state) = self.state.as_mut() else {
            return Ok(Vec::new());
        };
        let samples = decode_audio(&audio)?;
        let out = state.resample(&samples, self.target);
        if out.is_empty() {
            return Ok(Vec::new());
        }
        let frames = (out.len() / state.channels) as u64;
        Ok(vec![Output::new(
            "audio",
            Payload::Audio(AudioBuffer {
                samples: encode_audio(layout.format, &out),
                sample_rate: self.target,
                channels: audio.channels,
                format: audio.format,
                num_samples: frames,
            }),
        )])
    }
}

impl Resample {
    /// Refuses a chunk whose output would exceed MAX_PAYLOAD_BYTES or whose rate is
    /// absurdly low for the target, before anything is allocated for it.
    fn check_output(&self, layout: &AudioLayout, fresh: bool) -> Result<(), ProcessError> {
        let (rate, target) = (u64::from(layout.sample_rate), u64::from(self.target));
        if target > rate.saturating_mul(MAX_UPSAMPLE_RATIO) {
            return Err(ProcessError::invalid(
                RATIO_TOO_LARGE,
                "chunk.buffer.audio.sample_rate",
                format!(
                    "audio.sample_rate {rate} Hz to target_rate {target} Hz upsamples more than {MAX_UPSAMPLE_RATIO} times; check audio.sample_rate"
                ),
            ));
        }
        let (consumed, produced) = match (&self.state, fresh) {
            (Some(state), false) => (state.consumed, state.produced),
            _ => (0, 0),
        };
        let frames = output_frames(
            consumed,
            produced,
            layout.frames as u64,
            layout.sample_rate,
            self.target,
        );
        let bytes = frames
            .saturating_mul(layout.channels as u128)
            .saturating_mul(layout.bytes_per_sample as u128);
        let limit = flowplane_grpc::MAX_PAYLOAD_BYTES;
        if bytes > limit as u128 {
            return Err(ProcessError::new(
                tonic::Code::ResourceExhausted,
                OUTPUT_TOO_LARGE,
                format!(
                    "{} frames at {rate} Hz resample to {frames} frames at {target} Hz, {bytes} bytes, over the limit of {limit} bytes per chunk (MAX_PAYLOAD_BYTES); send shorter chunks",
                    layout.frames
                ),
            )
            .with_field("chunk.buffer.audio.samples"));
        }
        Ok(())
    }
}

/// Output frames a chunk of `frames` input frames yields, `consumed` input and `produced`
/// output frames into the stream. Output k needs input frame ceil(k x rate / target), so
/// the chunk completes every k up to (consumed + frames - 1) x target / rate.
fn output_frames(consumed: u64, produced: u64, frames: u64, rate: u32, target: u32) -> u128 {
    if frames == 0 {
        return 0;
    }
    let end = u128::from(consumed + frames - 1);
    let last = end * u128::from(target) / u128::from(rate);
    (last + 1).saturating_sub(u128::from(produced))
}

impl ResampleState {
    /// Resamples one chunk of interleaved samples, returning interleaved output.
    fn resample(&mut self, samples: &[f64], target: u32) -> Vec<f64> {
        let channels = self.channels;
        let frames = (samples.len() / channels) as u64;
        if frames == 0 {
            return Vec::new();
        }
        let end = self.consumed + frames - 1; // global index of this chunk's last frame
        let expected = output_frames(self.consumed, self.produced, frames, self.rate, target);
        let (rate, target) = (u128::from(self.rate), u128::from(target));
        // `process` has bounded `expected` by MAX_PAYLOAD_BYTES before calling.
        let mut out = Vec::with_capacity(expected as usize * channels);
        let sample = |index: u64, channel: usize| -> f64 {
            if index < self.consumed {
                self.last[channel]
            } else {
                samples[(index - self.consumed) as usize * channels + channel]
            }
        };
        loop {
            let position = u128::from(self.produced) * rate;
            let index = (position / target) as u64;
            let remainder = position % target;
            let needs = index + u64::from(remainder > 0);
            if needs > end {
                break;
            }
            let fraction = remainder as f64 / target as f64;
            for channel in 0..channels {
                let a = sample(index, channel);
                let value = if remainder == 0 {
                    a
                } else {
                    a + (sample(index + 1, channel) - a) * fraction
                };
                out.push(value);
            }
            self.produced += 1;
        }
        self.last = samples[samples.len() - channels..].to_vec();
        self.consumed += frames;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(rate: u32, channels: usize) -> ResampleState {
        ResampleState {
            rate,
            channels,
            format: AudioFormat::F32le,
            last: Vec::new(),
            consumed: 0,
            produced: 0,
        }
    }

    #[test]
    fn upsampling_interpolates_across_the_join() {
        let mut s = state(2, 1);
        assert_eq!(
            s.resample(&[0.0, 100.0, 200.0, 300.0], 4),
            [0.0, 50.0, 100.0, 150.0, 200.0, 250.0, 300.0]
        );
        // 3.5 needed the next chunk's first frame.
        assert_eq!(s.resample(&[400.0], 4), [350.0, 400.0]);
    }

    #[test]
    fn downsampling_picks_exact_positions() {
        let mut s = state(3, 2);
        // Stereo at 3 Hz to 2 Hz: positions 0, 1.5, 3, 4.5 ...
        let input = [0.0, 0.0, 3.0, -3.0, 6.0, -6.0, 9.0, -9.0];
        assert_eq!(s.resample(&input, 2), [0.0, 0.0, 4.5, -4.5, 9.0, -9.0]);
    }

    #[test]
    fn any_chunking_gives_the_same_samples_as_the_whole() {
        let signal: Vec<f64> = (0..4800)
            .map(|i| (i as f64 * 2.0 * std::f64::consts::PI * 440.0 / 48000.0).sin() * 0.5)
            .collect();
        let mut whole = state(48000, 1);
        let expected = whole.resample(&signal, 44100);
        let mut chunked = state(48000, 1);
        let mut got = Vec::new();
        let mut start = 0;
        for size in [1, 7, 480, 13, 1000, 2, 3297].iter().cycle() {
            if start >= signal.len() {
                break;
            }
            let stop = (start + size).min(signal.len());
            got.extend(chunked.resample(&signal[start..stop], 44100));
            start = stop;
        }
        assert_eq!(got.len(), expected.len());
        assert_eq!(got, expected);
        // 4800 frames at 48 kHz reach position 4799; outputs 0..=4409 fit (4409 * 48000 / 44100 = 4799.0...).
        assert_eq!(expected.len(), 4410);
    }

    #[test]
    fn predicted_output_frames_are_exact() {
        for (rate, target) in [
            (2, 4),
            (3, 2),
            (48000, 44100),
            (44100, 48000),
            (1, 96),
            (7, 5),
        ] {
            let mut s = state(rate, 1);
            for frames in [1u64, 2, 5, 13, 1, 100, 3] {
                let predicted = output_frames(s.consumed, s.produced, frames, rate, target);
                let out = s.resample(&vec![0.25; frames as usize], target);
                assert_eq!(
                    predicted,
                    out.len() as u128,
                    "{rate} -> {target}, {frames} frames"
                );
            }
        }
    }

    fn resample_chunk(target: u32, audio: AudioBuffer) -> Result<Vec<Output>, ProcessError> {
        let params = Params::from_json(
            json!({ "target_rate": target })
                .as_object()
                .unwrap()
                .clone(),
        );
        let mut resample = Resample::create(&params).unwrap();
        resample.process(Input {
            port: "audio",
            sequence: 1,
            payload: Payload::Audio(audio),
        })
    }

    fn i16_mono(frames: usize, rate: u32) -> AudioBuffer {
        AudioBuffer {
            samples: vec![0u8; frames * 2].into(),
            sample_rate: rate,
            channels: 1,
            format: AudioFormat::I16le as i32,
            num_samples: 0,
        }
    }

    #[test]
    fn absurd_ratios_and_huge_outputs_are_refused_before_allocating() {
        // 1 MiB at 1 Hz to 768 kHz would be 1.6 TB.
        let error = resample_chunk(768_000, i16_mono(512 * 1024, 1)).unwrap_err();
        assert_eq!(error.code(), tonic::Code::InvalidArgument);
        assert_eq!(error.reason(), RATIO_TOO_LARGE);
        assert_eq!(error.field(), "chunk.buffer.audio.sample_rate");
        // 8 kHz to 768 kHz is allowed, but not for 1 MiB at once (100 MB out).
        let error = resample_chunk(768_000, i16_mono(512 * 1024, 8000)).unwrap_err();
        assert_eq!(error.code(), tonic::Code::ResourceExhausted);
        assert_eq!(error.reason(), OUTPUT_TOO_LARGE);
        assert!(
            error.message().contains("over the limit of 4194304 bytes"),
            "{error}"
        );
        let fits = resample_chunk(768_000, i16_mono(8000, 8000)).unwrap();
        let Payload::Audio(out) = &fits[0].payload else {
            panic!("not audio")
        };
        assert_eq!(out.num_samples, 768_000 - 95);
    }

    #[test]
    fn levels_in_dbfs() {
        let (rms, peak) = levels(&[1.0, -1.0, 1.0, -1.0]);
        assert_eq!((dbfs(rms), dbfs(peak)), (json!(0.0), json!(0.0)));
        let (rms, peak) = levels(&[0.5, -0.5]);
        assert_eq!(dbfs(rms), json!(20.0 * 0.5f64.log10()));
        assert_eq!(dbfs(peak), json!(-6.020599913279624));
        assert_eq!(dbfs(levels(&[0.0, 0.0]).0), Value::Null);
    }
}
