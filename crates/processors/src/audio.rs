//! The audio processors: `audio.gain`, `audio.resample`, `audio.level` and
//! `audio.dynamic_gain`. Samples are decoded to f64 in [-1, 1) (integers divided by
//! their full scale, a power of two, so the round trip is exact); integer output is
//! rounded half away from zero and clipped, float output is never clipped. No chunk may
//! make a processor allocate beyond what it will send: `audio.resample` checks its ratio,
//! its channel count and its output size before it allocates, and refuses the chunk
//! otherwise.

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
/// Largest downsampling factor `audio.resample` accepts, the same 96: the anti-aliasing
/// filter grows with the factor (16,384 taps and a 1 MiB table per stream at 96), so a
/// larger one would let a chunk's `sample_rate` claim memory the output never needs.
pub const MAX_DOWNSAMPLE_RATIO: u64 = 96;
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
        .inline()
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
        .inline()
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

/// Default length of a gain ramp in `audio.dynamic_gain`, in milliseconds.
pub const DEFAULT_RAMP_MS: f64 = 10.0;
/// Longest gain ramp accepted, in milliseconds.
pub const MAX_RAMP_MS: f64 = 1000.0;

/// `audio.dynamic_gain`: a gain that follows the latest `{"gain_db": x}` on `control`.
///
/// A new gain is not stepped to (a step in gain is a click): the linear factor moves to
/// it in equal steps, one per frame, over `ramp_ms` of audio from the next audio chunk on,
/// across chunk boundaries. A control that arrives mid-ramp starts a new ramp from the
/// factor reached.
pub struct DynamicGain {
    /// Factor applied to the last frame.
    factor: f64,
    /// Factor the gain is heading for.
    target: f64,
    ramp_secs: f64,
    /// A ramp to `target` still to start at the next audio chunk (its length in frames
    /// depends on that chunk's sample rate).
    pending: bool,
    /// Frames left in the current ramp and the change per frame.
    remaining: u64,
    step: f64,
}

impl Processor for DynamicGain {
    fn capability() -> Capability {
        Capability::new(
            "audio.dynamic_gain",
            r#"gain on `audio` follows the latest {"gain_db": x} on `control`, ramped over ramp_ms from the next audio chunk on"#,
        )
        .version(super::VERSION)
        .input("audio", [DataTypeHint::Audio], "F32LE, I16LE or I32LE audio")
        .input("control", [DataTypeHint::Json], r#"{"gain_db": x}; answered with no output"#)
        .output("audio", [DataTypeHint::Audio], "the audio at the current gain")
        .param(
            Param::number("gain_db", "gain in dB until the first control chunk")
                .default(json!(0.0)),
        )
        .param(
            Param::number(
                "ramp_ms",
                "time a gain change takes, 0 to 1000 ms (0 steps at once)",
            )
            .default(json!(DEFAULT_RAMP_MS)),
        )
    }

    fn create(params: &Params) -> Result<Self, ParamError> {
        let gain_db =
            gain_db_in_range(params.f64("gain_db")?).map_err(|m| ParamError::new("gain_db", m))?;
        let ramp_ms = params.f64("ramp_ms")?;
        if !(ramp_ms.is_finite() && (0.0..=MAX_RAMP_MS).contains(&ramp_ms)) {
            return Err(ParamError::new(
                "ramp_ms",
                format!("must be between 0 and {MAX_RAMP_MS} ms, got {ramp_ms}"),
            ));
        }
        let factor = db_to_factor(gain_db);
        Ok(Self {
            factor,
            target: factor,
            ramp_secs: ramp_ms / 1000.0,
            pending: false,
            remaining: 0,
            step: 0.0,
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
            self.target = db_to_factor(gain_db);
            self.pending = true;
            return Ok(Vec::new());
        }
        let audio = expect_audio(input.payload)?;
        let layout = audio_layout(&audio)?;
        let mut samples = decode_audio(&audio)?;
        if self.pending {
            self.pending = false;
            // At least one frame, so the last frame of a ramp is exactly the target.
            let frames = (self.ramp_secs * f64::from(layout.sample_rate))
                .round()
                .max(1.0);
            self.remaining = frames as u64;
            self.step = (self.target - self.factor) / frames;
        }
        for frame in samples.chunks_exact_mut(layout.channels) {
            if self.remaining > 0 {
                self.remaining -= 1;
                self.factor = if self.remaining == 0 {
                    self.target
                } else {
                    self.factor + self.step
                };
            }
            for sample in frame {
                *sample *= self.factor;
            }
        }
        Ok(vec![Output::new(
            "audio",
            Payload::Audio(AudioBuffer {
                samples: encode_audio(layout.format, &samples),
                ..audio
            }),
        )])
    }
}

/// `audio.resample`: band-limited (windowed-sinc) resampling to `target_rate`, continuous
/// across chunks.
///
/// One rubato sinc resampler per stream keeps the filter's history, so a stream cut into
/// any chunks resamples to the same samples (to rounding) as the whole stream at once.
/// The anti-aliasing filter (512 taps, more when downsampling over 3 times; a
/// Blackman-Harris squared window) sits below the lower of the two Nyquist frequencies:
/// content above the target's Nyquist frequency is attenuated by over 70 dB rather than
/// folded back, content below 90% of it passes within 0.1 dB. The filter's delay is
/// trimmed from the start of the stream, so output k sits at input time k / target_rate
/// (to within about one output frame); output lags input by half the filter (256 input
/// frames, or about 85 output frames when downsampling over 3 times), and those last frames of
/// a stream are never emitted, as there is no end-of-stream signal. A change of rate,
/// channels or format starts afresh.
pub struct Resample {
    target: u32,
    state: Option<ResampleState>,
}

/// Length of the windowed-sinc anti-aliasing filter, in input frames, up to 3 times
/// downsampling; beyond, it grows with the ratio so that it spans the same number of
/// output frames (its transition band is as narrow relative to the target rate).
const SINC_LEN: usize = 512;
/// Filter table points per input frame for [`SINC_LEN`]; longer filters need fewer (their
/// sinc is smoother per input frame), so the table stays the same size.
const OVERSAMPLING: usize = 128;
/// The filter's cutoff relative to the lower Nyquist frequency: with 512 taps and this
/// window the response is flat (within 0.1 dB) to 0.9 and down over 70 dB at 1.0, so
/// nothing above the target's Nyquist frequency folds back audibly (measured in the tests;
/// rubato's automatic cutoff, 0.97, leaves about -20 dB at Nyquist).
const CUTOFF: f32 = 0.94;
/// Most channels `audio.resample` accepts: its filter history is per channel.
pub const MAX_RESAMPLE_CHANNELS: usize = 64;
/// Reason of an audio chunk with more channels than `audio.resample` keeps state for.
pub const TOO_MANY_CHANNELS: &str = "TOO_MANY_CHANNELS";
/// Samples (frames x channels) one resampler call may write: bounds the scratch memory of
/// a stream whatever its ratio and channel count.
const CALL_OUTPUT_SAMPLES: usize = 1 << 16;
/// Most input frames one resampler call reads.
const CALL_INPUT_FRAMES: usize = 1024;

struct ResampleState {
    rate: u32,
    channels: usize,
    format: AudioFormat,
    resampler: rubato::Async<f64>,
    /// Output frames still to drop at the start of the stream: the filter's delay.
    skip: usize,
}

impl ResampleState {
    fn new(rate: u32, target: u32, channels: usize, format: AudioFormat) -> Result<Self, String> {
        use rubato::{Async, FixedAsync, Resampler, SincInterpolationParameters, WindowFunction};
        let ratio = f64::from(target) / f64::from(rate);
        let (sinc_len, oversampling) = filter_size(ratio);
        // Each call reads at most this many frames, so its output fits CALL_OUTPUT_SAMPLES.
        let per_call = (CALL_OUTPUT_SAMPLES as f64 / (ratio.ceil() * channels as f64)) as usize;
        let parameters =
            SincInterpolationParameters::new(sinc_len, WindowFunction::BlackmanHarris2)
                .f_cutoff(CUTOFF)
                .oversampling_factor(oversampling);
        let resampler = Async::<f64>::new_sinc(
            ratio,
            1.0,
            &parameters,
            per_call.clamp(1, CALL_INPUT_FRAMES),
            channels,
            FixedAsync::Input,
        )
        .map_err(|e| e.to_string())?;
        Ok(Self {
            rate,
            channels,
            format,
            skip: resampler.output_delay(),
            resampler,
        })
    }

    /// Resamples one chunk of interleaved samples, returning interleaved output.
    fn resample(&mut self, samples: &[f64]) -> Result<Vec<f64>, String> {
        use rubato::{
            Indexing, Resampler, Resizable, audioadapter_buffers::direct::InterleavedSlice,
        };
        let channels = self.channels;
        let frames = samples.len() / channels;
        let input = InterleavedSlice::new(samples, channels, frames).map_err(|e| e.to_string())?;
        let most = self.resampler.input_frames_max();
        let mut out: Vec<f64> = Vec::new();
        let (mut read, mut written) = (0, 0);
        while read < frames {
            let take = (frames - read).min(most);
            self.resampler
                .set_chunk_size(take)
                .map_err(|e| e.to_string())?;
            out.resize(
                (written + self.resampler.output_frames_next()) * channels,
                0.0,
            );
            let out_frames = out.len() / channels;
            let mut output = InterleavedSlice::new_mut(&mut out, channels, out_frames)
                .map_err(|e| e.to_string())?;
            let indexing = Indexing::new().input_offset(read).output_offset(written);
            let (used, made) = self
                .resampler
                .process_into_buffer(&input, &mut output, Some(&indexing))
                .map_err(|e| e.to_string())?;
            read += used;
            written += made;
        }
        out.truncate(written * channels);
        let drop = self.skip.min(written);
        self.skip -= drop;
        out.drain(..drop * channels);
        Ok(out)
    }
}

impl Processor for Resample {
    fn capability() -> Capability {
        Capability::new(
            "audio.resample",
            "band-limited (windowed-sinc) resampling, continuous across chunk boundaries; output lags input by half the filter (256 input frames, about 85 output frames when downsampling over 3 times)",
        )
        .version(super::VERSION)
        .input(
            "audio",
            [DataTypeHint::Audio],
            "F32LE, I16LE or I32LE audio, up to 64 channels",
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
        // Checked before any state changes, so a refused chunk leaves the stream as if it
        // had not been sent.
        self.check_output(&layout)?;
        let fresh = !self.state.as_ref().is_some_and(|s| {
            s.rate == layout.sample_rate
                && s.channels == layout.channels
                && s.format == layout.format
        });
        if fresh {
            let state = ResampleState::new(
                layout.sample_rate,
                self.target,
                layout.channels,
                layout.format,
            )
            .map_err(|e| ProcessError::internal("RESAMPLER", e))?;
            self.state = Some(state);
        }
        let Some(state) = self.state.as_mut() else {
            return Ok(Vec::new());
        };
        let samples = decode_audio(&audio)?;
        let out = state
            .resample(&samples)
            .map_err(|e| ProcessError::internal("RESAMPLER", e))?;
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
    /// Refuses a chunk whose output could exceed MAX_PAYLOAD_BYTES, whose rate is absurdly
    /// low for the target or whose channels are too many, before anything is allocated
    /// for it.
    fn check_output(&self, layout: &AudioLayout) -> Result<(), ProcessError> {
        let (rate, target) = (u64::from(layout.sample_rate), u64::from(self.target));
        if rate > MAX_SAMPLE_RATE {
            return Err(ProcessError::invalid(
                RATIO_TOO_LARGE,
                "chunk.buffer.audio.sample_rate",
                format!(
                    "audio.sample_rate {rate} Hz is over the {MAX_SAMPLE_RATE} Hz audio.resample takes"
                ),
            ));
        }
        if rate > target.saturating_mul(MAX_DOWNSAMPLE_RATIO) {
            return Err(ProcessError::invalid(
                RATIO_TOO_LARGE,
                "chunk.buffer.audio.sample_rate",
                format!(
                    "audio.sample_rate {rate} Hz to target_rate {target} Hz downsamples more than {MAX_DOWNSAMPLE_RATIO} times; check audio.sample_rate and target_rate"
                ),
            ));
        }
        if target > rate.saturating_mul(MAX_UPSAMPLE_RATIO) {
            return Err(ProcessError::invalid(
                RATIO_TOO_LARGE,
                "chunk.buffer.audio.sample_rate",
                format!(
                    "audio.sample_rate {rate} Hz to target_rate {target} Hz upsamples more than {MAX_UPSAMPLE_RATIO} times; check audio.sample_rate"
                ),
            ));
        }
        if layout.channels > MAX_RESAMPLE_CHANNELS {
            return Err(ProcessError::invalid(
                TOO_MANY_CHANNELS,
                "chunk.buffer.audio.channels",
                format!(
                    "audio.channels is {}; audio.resample takes up to {MAX_RESAMPLE_CHANNELS}",
                    layout.channels
                ),
            ));
        }
        let frames = max_output_frames(layout.frames as u64, layout.sample_rate, self.target);
        let bytes = frames
            .saturating_mul(layout.channels as u128)
            .saturating_mul(layout.bytes_per_sample as u128);
        let limit = flowplane_grpc::MAX_PAYLOAD_BYTES;
        if bytes > limit as u128 {
            return Err(ProcessError::new(
                tonic::Code::ResourceExhausted,
                OUTPUT_TOO_LARGE,
                format!(
                    "{} frames at {rate} Hz resample to up to {frames} frames at {target} Hz, {bytes} bytes, over the limit of {limit} bytes per chunk (MAX_PAYLOAD_BYTES); send shorter chunks",
                    layout.frames
                ),
            )
            .with_field("chunk.buffer.audio.samples"));
        }
        Ok(())
    }
}

/// Filter length (a multiple of 8) and table points per input frame for `ratio`
/// (target / rate).
fn filter_size(ratio: f64) -> (usize, usize) {
    let down = 1.0 / ratio;
    if down <= 3.0 {
        return (SINC_LEN, OVERSAMPLING);
    }
    let len = ((SINC_LEN as f64 * down / 3.0).ceil() as usize).next_multiple_of(8);
    (len, (SINC_LEN * OVERSAMPLING / len).max(8))
}

/// Most output frames a chunk of `frames` input frames can yield: its share of the output
/// rounded up, plus one for where the stream's fractional position falls.
fn max_output_frames(frames: u64, rate: u32, target: u32) -> u128 {
    if frames == 0 {
        return 0;
    }
    (u128::from(frames) * u128::from(target)).div_ceil(u128::from(rate)) + 1
}

#[cfg(test)]
mod tests {
    use std::f64::consts::PI;

    use super::*;

    fn params(value: Value) -> Params {
        Params::from_json(value.as_object().unwrap().clone())
    }

    fn tone(freq: f64, rate: u32, frames: usize, amplitude: f64) -> Vec<f64> {
        (0..frames)
            .map(|i| amplitude * (2.0 * PI * freq * i as f64 / f64::from(rate)).sin())
            .collect()
    }

    /// Resamples `signal` in pieces of the given sizes, cycled, through one stream state.
    fn resample_in_pieces(
        signal: &[f64],
        channels: usize,
        rate: u32,
        target: u32,
        sizes: &[usize],
    ) -> Vec<f64> {
        let mut state = ResampleState::new(rate, target, channels, AudioFormat::F32le).unwrap();
        let frames = signal.len() / channels;
        let mut out = Vec::new();
        let mut start = 0;
        for size in sizes.iter().cycle() {
            if start >= frames {
                break;
            }
            let stop = (start + size).min(frames);
            out.extend(
                state
                    .resample(&signal[start * channels..stop * channels])
                    .unwrap(),
            );
            start = stop;
        }
        out
    }

    /// Power of `samples` at `freq` (Goertzel over a Hann window), relative to a full-scale
    /// sine's: 0 dB for amplitude 1.
    fn goertzel_db(samples: &[f64], freq: f64, rate: u32) -> f64 {
        let n = samples.len();
        let w = 2.0 * PI * freq / f64::from(rate);
        let coefficient = 2.0 * w.cos();
        let (mut s1, mut s2) = (0.0, 0.0);
        let mut window_sum = 0.0;
        for (i, x) in samples.iter().enumerate() {
            let hann = 0.5 - 0.5 * (2.0 * PI * i as f64 / (n - 1) as f64).cos();
            window_sum += hann;
            let s0 = x * hann + coefficient * s1 - s2;
            s2 = s1;
            s1 = s0;
        }
        let power = s1 * s1 + s2 * s2 - coefficient * s1 * s2;
        // A sine of amplitude a gives |X| = a x window_sum / 2.
        20.0 * (2.0 * power.sqrt() / window_sum).log10()
    }

    fn rms_db(samples: &[f64]) -> f64 {
        let mean_square = samples.iter().map(|s| s * s).sum::<f64>() / samples.len() as f64;
        10.0 * mean_square.log10()
    }

    /// The steady part of a resampled stream: a filter length off each end.
    fn steady(out: &[f64]) -> &[f64] {
        &out[2 * SINC_LEN..out.len() - 2 * SINC_LEN]
    }

    #[test]
    fn chunked_resampling_matches_resampling_the_whole() {
        for (rate, target, channels) in [
            (48000, 44100, 1),
            (44100, 48000, 2),
            (48000, 16000, 1),
            (8000, 48000, 2),
        ] {
            let frames = rate as usize / 5;
            let left = tone(440.0, rate, frames, 0.5);
            let right = tone(1234.5, rate, frames, 0.25);
            let signal: Vec<f64> = (0..frames)
                .flat_map(|i| [left[i], right[i]].into_iter().take(channels))
                .collect();
            let whole = resample_in_pieces(&signal, channels, rate, target, &[usize::MAX]);
            let chunked = resample_in_pieces(
                &signal,
                channels,
                rate,
                target,
                &[1, 7, 480, 13, 1000, 2, 3297, 960],
            );
            assert_eq!(chunked.len(), whole.len(), "{rate} -> {target}");
            let worst = whole
                .iter()
                .zip(&chunked)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            assert!(worst < 1e-9, "{rate} -> {target}: differs by {worst}");
            // The output has the target rate's length, less the filter's delay.
            let expected = (frames - SINC_LEN / 2) as f64 * f64::from(target) / f64::from(rate);
            let got = (whole.len() / channels) as f64;
            assert!(
                (got - expected).abs() <= 2.0 + 3.0 * f64::from(target) / f64::from(rate),
                "{rate} -> {target}: {got} frames, expected about {expected}"
            );
        }
    }

    #[test]
    fn output_sits_at_the_input_time_after_the_delay_is_trimmed() {
        // A slow sine resampled is the same sine sampled at the target rate.
        let (rate, target) = (48000, 44100);
        let out = resample_in_pieces(&tone(100.0, rate, 48000, 0.5), 1, rate, target, &[960]);
        let ideal = tone(100.0, target, out.len(), 0.5);
        let worst = steady(&out)
            .iter()
            .zip(steady(&ideal))
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        // Measured: within 0.8 output frames (0.0058). A frame off is about
        // 2 pi 100 / 44100 x 0.5 = 0.007; an untrimmed delay (235 frames) is off by 0.5.
        assert!(worst < 0.0105, "off by up to {worst}");
    }

    #[test]
    fn tones_above_the_target_nyquist_are_attenuated_by_60_db() {
        for (rate, target, freqs) in [
            (48000, 16000, &[8100.0, 8500.0, 12000.0, 20000.0][..]),
            (44100, 8000, &[4050.0, 4200.0, 11025.0, 20000.0][..]),
            (96000, 44100, &[22300.0, 30000.0, 47000.0][..]),
        ] {
            let nyquist = f64::from(target) / 2.0;
            for &freq in freqs {
                assert!(freq > nyquist);
                let input = tone(freq, rate, rate as usize, 0.5);
                let out = resample_in_pieces(&input, 1, rate, target, &[960, 441, 1]);
                // Folded about the target's Nyquist frequency (and its multiples).
                let mut alias = freq % f64::from(target);
                if alias > nyquist {
                    alias = f64::from(target) - alias;
                }
                let input_db = goertzel_db(&input, freq, rate);
                let alias_db = goertzel_db(steady(&out), alias, target) - input_db;
                let total_db = rms_db(steady(&out)) - rms_db(&input);
                eprintln!(
                    "{rate} -> {target} Hz, tone {freq} Hz: alias at {alias} Hz {alias_db:.1} dB, all output {total_db:.1} dB"
                );
                assert!(
                    alias_db <= -60.0,
                    "{freq} Hz aliases to {alias} Hz at {alias_db:.1} dB"
                );
                assert!(
                    total_db <= -60.0,
                    "{freq} Hz leaves {total_db:.1} dB in the output"
                );
            }
            // A tone well inside the band passes at its level.
            let input = tone(1000.0, rate, rate as usize, 0.5);
            let out = resample_in_pieces(&input, 1, rate, target, &[960]);
            let gain_db =
                goertzel_db(steady(&out), 1000.0, target) - goertzel_db(&input, 1000.0, rate);
            assert!(gain_db.abs() < 0.1, "1 kHz passes at {gain_db} dB");
        }
    }

    #[test]
    fn no_chunk_yields_more_than_the_predicted_frames() {
        for (rate, target) in [
            (2, 4),
            (3, 2),
            (48000, 44100),
            (44100, 48000),
            (1000, 96000),
            (7, 5),
        ] {
            let mut state = ResampleState::new(rate, target, 1, AudioFormat::F32le).unwrap();
            for frames in [1u64, 2, 5, 13, 1, 100, 3, 2000, 1, 1] {
                let bound = max_output_frames(frames, rate, target);
                let out = state.resample(&vec![0.25; frames as usize]).unwrap();
                assert!(
                    out.len() as u128 <= bound,
                    "{rate} -> {target}, {frames} frames: {} > {bound}",
                    out.len()
                );
            }
        }
    }

    fn resample_chunk(target: u32, audio: AudioBuffer) -> Result<Vec<Output>, ProcessError> {
        let mut resample = Resample::create(&params(json!({ "target_rate": target }))).unwrap();
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
        // Downsampling 48 kHz to 1 Hz would need an 8-million-tap filter; a chunk that
        // claims a rate over the highest one is refused as well.
        for (target, rate) in [(1, 48_000), (8_000, 4_000_000_000)] {
            let error = resample_chunk(target, i16_mono(320, rate)).unwrap_err();
            assert_eq!(
                error.code(),
                tonic::Code::InvalidArgument,
                "{rate} -> {target}"
            );
            assert_eq!(error.reason(), RATIO_TOO_LARGE);
            assert_eq!(error.field(), "chunk.buffer.audio.sample_rate");
        }
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
        // A second at 768 kHz, less the filter's delay.
        let delay = SINC_LEN as u64 / 2 * 96;
        assert!(
            (768_000 - delay - 200..=768_000 - delay).contains(&out.num_samples),
            "{}",
            out.num_samples
        );
        // Every channel keeps a filter history: their number is bounded.
        let mut wide = i16_mono(2, 8000);
        wide.channels = 1000;
        wide.samples = vec![0u8; 2 * 2 * 1000].into();
        let error = resample_chunk(16000, wide).unwrap_err();
        assert_eq!(
            (error.reason(), error.field()),
            (TOO_MANY_CHANNELS, "chunk.buffer.audio.channels")
        );
    }

    fn f32_chunk(samples: &[f64], rate: u32) -> Payload {
        Payload::Audio(AudioBuffer {
            samples: encode_audio(AudioFormat::F32le, samples),
            sample_rate: rate,
            channels: 1,
            format: AudioFormat::F32le as i32,
            num_samples: samples.len() as u64,
        })
    }

    /// Runs audio chunks of `chunk` frames of a constant 0.5 through `audio.dynamic_gain`,
    /// sending each control just before the audio chunk of its index; returns the output.
    fn dynamic_gain(ramp_ms: f64, chunks: usize, controls: &[(usize, f64)]) -> Vec<f64> {
        let mut gain =
            DynamicGain::create(&params(json!({"gain_db": 0.0, "ramp_ms": ramp_ms}))).unwrap();
        let mut out = Vec::new();
        for i in 0..chunks {
            for &(_, gain_db) in controls.iter().filter(|(at, _)| *at == i) {
                let control = Payload::Json(flowplane_sdk::proto::data::v1::JsonData {
                    json: json!({ "gain_db": gain_db }).to_string(),
                    schema_hint: String::new(),
                });
                let answer = gain
                    .process(Input {
                        port: "control",
                        sequence: 0,
                        payload: control,
                    })
                    .unwrap();
                assert!(answer.is_empty());
            }
            let outputs = gain
                .process(Input {
                    port: "audio",
                    sequence: 0,
                    payload: f32_chunk(&[0.5; 100], 48000),
                })
                .unwrap();
            let Payload::Audio(audio) = &outputs[0].payload else {
                panic!("not audio")
            };
            out.extend(decode_audio(audio).unwrap());
        }
        out
    }

    fn largest_step(samples: &[f64]) -> f64 {
        samples
            .windows(2)
            .map(|w| (w[1] - w[0]).abs())
            .fold(0.0, f64::max)
    }

    #[test]
    fn dynamic_gain_ramps_a_change_over_the_window_across_chunks() {
        // -40 dB from the third 100-frame chunk on; 10 ms at 48 kHz is 480 frames, five chunks.
        let out = dynamic_gain(10.0, 10, &[(2, -40.0)]);
        let (from, to) = (0.5, 0.5 * db_to_factor(-40.0));
        assert!(out[..200].iter().all(|s| *s == from));
        // Equal steps of (from - to) / 480, give or take f32 rounding.
        let bound = (from - to) / 480.0 + 1e-6;
        assert!(
            largest_step(&out) <= bound,
            "{} > {bound}",
            largest_step(&out)
        );
        assert!(
            out[200] < from && out[200] > from - 2.0 * bound,
            "{}",
            out[200]
        );
        assert!(out[678] > to, "still ramping at frame 478 of 480");
        let reached = to as f32 as f64;
        assert!(
            out[679..].iter().all(|s| *s == reached),
            "{:?}",
            &out[670..690]
        );
        // Without a ramp the same change is one step: what the bound above rules out.
        let stepped = dynamic_gain(0.0, 4, &[(2, -40.0)]);
        assert!(largest_step(&stepped) > 0.49);
        assert_eq!(stepped[200], reached);
    }

    #[test]
    fn a_change_mid_ramp_ramps_on_from_where_the_gain_got() {
        // Down to -40 dB, then back up to +6 dB two chunks into the ramp.
        let out = dynamic_gain(10.0, 12, &[(2, -40.0), (4, 6.0)]);
        let reached = out[399];
        assert!(reached < 0.5 && reached > 0.5 * db_to_factor(-40.0));
        let bound = (0.5 * db_to_factor(-40.0) - 0.5).abs() / 480.0 + 1e-6;
        assert!(largest_step(&out[..400]) <= bound);
        let up = (0.5 * db_to_factor(6.0) - reached) / 480.0 + 1e-6;
        assert!(
            largest_step(&out[399..]) <= up,
            "{} > {up}",
            largest_step(&out[399..])
        );
        assert_eq!(
            *out.last().unwrap(),
            (0.5 * db_to_factor(6.0)) as f32 as f64
        );
    }

    #[test]
    fn ramp_lengths_out_of_range_are_refused() {
        for ramp_ms in [-1.0, 1000.5] {
            let error = DynamicGain::create(&params(json!({"gain_db": 0.0, "ramp_ms": ramp_ms})))
                .err()
                .unwrap();
            assert!(error.to_string().contains("ramp_ms"), "{error}");
        }
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
