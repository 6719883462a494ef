//! Every built-in processor over a real `Process` stream to `run` on 127.0.0.1, with
//! exact expected values, and the error cases: wrong input type, unknown processor, bad
//! params, malformed and oversized payloads.

use std::net::SocketAddr;

use bytes::Bytes;
use flowplane_grpc::config::ClientArgs;
use flowplane_processor::{Config, run};
use flowplane_sdk::{
    client::{ProcessStream, chunk, init},
    proto::{
        data::v1::{
            AudioBuffer, AudioFormat, BinaryData, DataChunk, JsonData, PixelFormat, TensorBuffer,
            TensorDtype, TextData, VideoFrame, data_buffer::Payload,
        },
        processor::v1::{
            GetCapabilitiesRequest, ProcessResult, processor_service_client::ProcessorServiceClient,
        },
    },
};
use flowplane_test_support::local_listener;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tonic::{Code, transport::Channel};

struct Running {
    addr: SocketAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<flowplane_processor::Result<()>>,
}

impl Running {
    async fn start(config: Config) -> Self {
        let listener = local_listener().await;
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(config, listener, stop.clone().cancelled_owned()));
        Self { addr, stop, task }
    }

    async fn channel(&self) -> Channel {
        flowplane_grpc::client::connect(&self.addr.to_string(), &ClientArgs::default())
            .await
            .unwrap()
    }

    async fn open(&self, processor: &str, params: Value) -> ProcessStream {
        ProcessStream::open(self.channel().await, init(processor, "node-1", params))
            .await
            .unwrap_or_else(|status| panic!("opening {processor}: {status:?}"))
            .0
    }

    async fn refused(&self, processor: &str, params: Value) -> tonic::Status {
        ProcessStream::open(self.channel().await, init(processor, "node-1", params))
            .await
            .unwrap_err()
    }

    async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap().unwrap();
    }
}

async fn one(
    stream: &mut ProcessStream,
    sequence: u64,
    input: &str,
    payload: Payload,
) -> ProcessResult {
    stream.call(sequence, input, payload).await.unwrap()
}

/// The only output's payload and its port, checking it carries the input's sequence.
fn only(result: &ProcessResult) -> (&str, &Payload) {
    assert!(
        result.error.is_none(),
        "unexpected error {:?}",
        result.error
    );
    assert_eq!(result.outputs.len(), 1, "{result:?}");
    let output = &result.outputs[0];
    let chunk: &DataChunk = output.chunk.as_ref().unwrap();
    assert_eq!(chunk.sequence, result.input_sequence);
    (
        &output.output,
        chunk.buffer.as_ref().unwrap().payload.as_ref().unwrap(),
    )
}

fn error(result: &ProcessResult) -> (i32, &str, &str, &str) {
    let e = result.error.as_ref().expect("an error");
    assert!(result.outputs.is_empty());
    assert_eq!(e.sequence, Some(result.input_sequence));
    assert_eq!(e.node_id, "node-1");
    (
        e.code,
        e.reason.as_str(),
        e.field.as_str(),
        e.message.as_str(),
    )
}

fn json_payload(value: Value) -> Payload {
    Payload::Json(JsonData {
        json: value.to_string(),
        schema_hint: String::new(),
    })
}

fn raw_json(text: &str) -> Payload {
    Payload::Json(JsonData {
        json: text.into(),
        schema_hint: String::new(),
    })
}

fn json_of(payload: &Payload) -> Value {
    let Payload::Json(json) = payload else {
        panic!("not json: {payload:?}")
    };
    serde_json::from_str(&json.json).unwrap()
}

fn text(s: &str) -> Payload {
    Payload::Text(TextData {
        text: s.into(),
        language: "en".into(),
    })
}

fn binary(b: &[u8]) -> Payload {
    Payload::Binary(BinaryData {
        data: Bytes::copy_from_slice(b),
        mime_type: String::new(),
    })
}

fn i16_audio(samples: &[i16], rate: u32, channels: u32) -> Payload {
    Payload::Audio(AudioBuffer {
        samples: samples
            .iter()
            .flat_map(|s| s.to_le_bytes())
            .collect::<Vec<_>>()
            .into(),
        sample_rate: rate,
        channels,
        format: AudioFormat::I16le as i32,
        num_samples: 0,
    })
}

fn f32_audio(samples: &[f32], rate: u32, channels: u32) -> Payload {
    Payload::Audio(AudioBuffer {
        samples: samples
            .iter()
            .flat_map(|s| s.to_le_bytes())
            .collect::<Vec<_>>()
            .into(),
        sample_rate: rate,
        channels,
        format: AudioFormat::F32le as i32,
        num_samples: 0,
    })
}

fn audio_of(payload: &Payload) -> &AudioBuffer {
    let Payload::Audio(audio) = payload else {
        panic!("not audio: {payload:?}")
    };
    audio
}

fn i16_samples(payload: &Payload) -> Vec<i16> {
    let audio = audio_of(payload);
    assert_eq!(audio.format, AudioFormat::I16le as i32);
    audio
        .samples
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect()
}

fn f32_samples(payload: &Payload) -> Vec<f32> {
    let audio = audio_of(payload);
    assert_eq!(audio.format, AudioFormat::F32le as i32);
    audio
        .samples
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

const INVALID_ARGUMENT: i32 = Code::InvalidArgument as i32;

#[tokio::test]
async fn serves_health_and_every_capability() {
    let running = Running::start(Config::default()).await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(running.channel().await);
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "flowplane.processor.v1.ProcessorService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        status.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    let caps = ProcessorServiceClient::new(running.channel().await)
        .get_capabilities(GetCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    let names: Vec<&str> = caps.processors.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "passthrough",
            "json.calculator",
            "text.transform",
            "audio.gain",
            "audio.resample",
            "audio.level",
            "audio.dynamic_gain",
            "video.grayscale",
            "tensor.normalize",
            "binary.digest"
        ]
    );
    let stateful: Vec<&str> = caps
        .processors
        .iter()
        .filter(|p| !p.stateless)
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(stateful, ["audio.resample", "audio.dynamic_gain"]);
    running.stop().await;
}

#[tokio::test]
async fn passthrough_returns_every_payload_unchanged() {
    let running = Running::start(Config::default()).await;
    let mut stream = running.open("passthrough", Value::Null).await;
    let payloads = [
        i16_audio(&[1, -2, 3, -4], 8000, 2),
        Payload::Video(VideoFrame {
            pixels: Bytes::from(vec![9u8; 12]),
            width: 2,
            height: 2,
            format: PixelFormat::Rgb24 as i32,
            frame_number: 42,
        }),
        Payload::Tensor(TensorBuffer {
            data: Bytes::from(vec![0u8; 8]),
            shape: vec![2],
            dtype: TensorDtype::F32 as i32,
        }),
        json_payload(json!({"a": 1})),
        text("héllo"),
        binary(&[0, 1, 2, 255]),
    ];
    for (sequence, payload) in payloads.into_iter().enumerate() {
        let mut input = chunk(sequence as u64, "", payload.clone());
        input
            .metadata
            .insert("trace".into(), format!("t{sequence}"));
        stream.send(input).await.unwrap();
        let result = stream.result().await.unwrap().unwrap();
        let (port, out) = only(&result);
        assert_eq!((port, out), ("data", &payload));
        assert_eq!(
            result.outputs[0].chunk.as_ref().unwrap().metadata["trace"],
            format!("t{sequence}")
        );
    }
    // Even passthrough refuses a malformed payload, naming the field and sequence.
    let short = Payload::Video(VideoFrame {
        pixels: Bytes::from(vec![9u8; 11]),
        width: 2,
        height: 2,
        format: PixelFormat::Rgb24 as i32,
        frame_number: 0,
    });
    let result = one(&mut stream, 9, "", short).await;
    assert_eq!(
        error(&result),
        (
            INVALID_ARGUMENT,
            "MALFORMED_PAYLOAD",
            "chunk.buffer.video.pixels",
            "sequence 9: video.pixels has 11 bytes but a 2x2 rgb24 frame needs 12"
        )
    );
}

#[tokio::test]
async fn json_calculator_answers_and_fails_per_chunk() {
    let running = Running::start(Config::default()).await;
    let mut calc = running.open("json.calculator", Value::Null).await;
    let cases = [
        (
            json!({"op": "add", "operands": [1, 2, 3]}),
            json!({"result": 6}),
        ),
        (
            json!({"op": "sub", "operands": [10, 4]}),
            json!({"result": 6}),
        ),
        (
            json!({"op": "mul", "operands": [1.5, 4]}),
            json!({"result": 6.0}),
        ),
        (
            json!({"op": "div", "operands": [7, 2]}),
            json!({"result": 3.5}),
        ),
    ];
    for (sequence, (request, expected)) in cases.into_iter().enumerate() {
        let result = one(&mut calc, sequence as u64, "", json_payload(request)).await;
        let (port, out) = only(&result);
        assert_eq!((port, json_of(out)), ("json", expected));
    }
    let bad_json = one(&mut calc, 10, "", raw_json("{\"op\": \"add\", ")).await;
    let (code, reason, field, message) = error(&bad_json);
    assert_eq!(
        (code, reason, field),
        (INVALID_ARGUMENT, "INVALID_JSON", "chunk.buffer.json.json")
    );
    assert!(
        message.starts_with("sequence 10: json.json is not valid JSON: EOF while parsing"),
        "{message}"
    );

    let by_zero = one(
        &mut calc,
        11,
        "",
        json_payload(json!({"op": "div", "operands": [1, 0]})),
    )
    .await;
    assert_eq!(
        error(&by_zero),
        (
            INVALID_ARGUMENT,
            "DIVISION_BY_ZERO",
            "chunk.buffer.json.json",
            "sequence 11: division by zero: \"operands[1]\" is 0"
        )
    );
    let unknown_op = one(
        &mut calc,
        12,
        "",
        json_payload(json!({"op": "pow", "operands": [2, 3]})),
    )
    .await;
    assert_eq!(error(&unknown_op).1, "INVALID_REQUEST");
    // A wrong input type is refused before the processor sees it.
    let wrong = one(&mut calc, 13, "", text("1 + 1")).await;
    assert_eq!(
        error(&wrong),
        (
            INVALID_ARGUMENT,
            "TYPE_MISMATCH",
            "chunk.buffer",
            "sequence 13: input \"json\" of processor \"json.calculator\" accepts json, not text"
        )
    );
    // And the stream goes on.
    let after = one(
        &mut calc,
        14,
        "",
        json_payload(json!({"op": "add", "operands": [2, 2]})),
    )
    .await;
    assert_eq!(json_of(only(&after).1), json!({"result": 4}));
}

#[tokio::test]
async fn text_transform_upper_lower_and_reverse_by_grapheme() {
    let running = Running::start(Config::default()).await;
    for (mode, input, expected) in [
        ("upper", "Straße", "STRASSE"),
        ("lower", "ÀB C", "àb c"),
        ("reverse", "ae\u{301}🇫🇷!", "!🇫🇷e\u{301}a"),
    ] {
        let mut stream = running.open("text.transform", json!({"mode": mode})).await;
        let result = one(&mut stream, 1, "", text(input)).await;
        let (port, out) = only(&result);
        assert_eq!((port, out), ("text", &text(expected)), "{mode}");
    }
    let missing = running.refused("text.transform", json!({})).await;
    assert_eq!(missing.code(), Code::InvalidArgument);
    assert!(
        missing
            .message()
            .starts_with("processor \"text.transform\": invalid param \"mode\": is required"),
        "{missing:?}"
    );
    let wrong = running
        .refused("text.transform", json!({"mode": "sideways"}))
        .await;
    assert_eq!(wrong.code(), Code::InvalidArgument);
    assert_eq!(
        wrong.message(),
        "processor \"text.transform\": invalid param \"mode\": must be one of \"upper\", \"lower\", \"reverse\", got \"sideways\""
    );
}

#[tokio::test]
async fn audio_gain_scales_floats_and_clips_integers() {
    let running = Running::start(Config::default()).await;
    let mut up = running.open("audio.gain", json!({"gain_db": 20})).await;
    // +20 dB is a factor of exactly 10.
    let result = one(
        &mut up,
        1,
        "",
        i16_audio(&[1000, -1000, 4000, -5000, 0, 3276], 48000, 2),
    )
    .await;
    let (port, out) = only(&result);
    assert_eq!(port, "audio");
    assert_eq!(i16_samples(out), [10000, -10000, 32767, -32768, 0, 32760]);
    assert_eq!(
        (audio_of(out).sample_rate, audio_of(out).channels),
        (48000, 2)
    );

    let result = one(&mut up, 2, "", f32_audio(&[0.05, -0.25, 0.5], 16000, 1)).await;
    // Floats are not clipped: 0.5 * 10 = 5.0.
    assert_eq!(f32_samples(only(&result).1), [0.5, -2.5, 5.0]);

    let mut down = running.open("audio.gain", json!({"gain_db": -20})).await;
    let result = one(
        &mut down,
        1,
        "",
        i16_audio(&[1000, -1000, 5, 32767], 8000, 1),
    )
    .await;
    assert_eq!(i16_samples(only(&result).1), [100, -100, 1, 3277]);

    // Audio bytes that are not a whole number of samples.
    let torn = Payload::Audio(AudioBuffer {
        samples: Bytes::from(vec![0u8; 7]),
        sample_rate: 48000,
        channels: 2,
        format: AudioFormat::I16le as i32,
        num_samples: 0,
    });
    let result = one(&mut down, 2, "", torn).await;
    assert_eq!(
        error(&result),
        (
            INVALID_ARGUMENT,
            "MALFORMED_PAYLOAD",
            "chunk.buffer.audio.samples",
            "sequence 2: audio.samples has 7 bytes, not a whole number of 2-channel i16le frames (4 bytes each)"
        )
    );
    let bad = running
        .refused("audio.gain", json!({"gain_db": "loud"}))
        .await;
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(
        bad.message()
            .contains("invalid param \"gain_db\": must be a number, got a string"),
        "{bad:?}"
    );
    let huge = running.refused("audio.gain", json!({"gain_db": 500})).await;
    assert!(
        huge.message()
            .contains("invalid param \"gain_db\": must be between -120 and 120 dB"),
        "{huge:?}"
    );
}

#[tokio::test]
async fn audio_resample_is_continuous_across_chunks() {
    let running = Running::start(Config::default()).await;
    // A sine resampled in uneven chunks equals the whole sine resampled at once.
    let sine: Vec<f32> = (0..4800)
        .map(|i| (i as f32 * 2.0 * std::f32::consts::PI * 440.0 / 48000.0).sin() * 0.5)
        .collect();
    let mut whole = running
        .open("audio.resample", json!({"target_rate": 44100}))
        .await;
    let resampled = one(&mut whole, 1, "", f32_audio(&sine, 48000, 1)).await;
    let out = only(&resampled).1;
    assert_eq!(audio_of(out).sample_rate, 44100);
    let expected = f32_samples(out);
    // 4800 frames at 44.1 kHz, less the filter's delay (256 input frames).
    assert!(
        (4170..=4176).contains(&expected.len()),
        "{}",
        expected.len()
    );
    let mut chunked = running
        .open("audio.resample", json!({"target_rate": 44100}))
        .await;
    let mut got = Vec::new();
    let mut start = 0;
    for (sequence, size) in [1usize, 7, 480, 13, 1000, 2, 3297].into_iter().enumerate() {
        let piece = &sine[start..start + size];
        start += size;
        let result = one(
            &mut chunked,
            sequence as u64,
            "",
            f32_audio(piece, 48000, 1),
        )
        .await;
        if let Some(output) = result.outputs.first() {
            got.extend(f32_samples(
                output
                    .chunk
                    .as_ref()
                    .unwrap()
                    .buffer
                    .as_ref()
                    .unwrap()
                    .payload
                    .as_ref()
                    .unwrap(),
            ));
        } else {
            assert!(result.error.is_none(), "{result:?}");
        }
    }
    assert_eq!(start, sine.len());
    // The same samples, to f32 rounding: the joins leave no trace.
    assert_eq!(got.len(), expected.len());
    for (i, (a, b)) in got.iter().zip(&expected).enumerate() {
        assert!((a - b).abs() <= 1e-6, "frame {i}: {a} chunked, {b} whole");
    }

    let bad = running
        .refused("audio.resample", json!({"target_rate": 44100.5}))
        .await;
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(
        bad.message().contains("invalid param \"target_rate\""),
        "{bad:?}"
    );
    let zero = running
        .refused("audio.resample", json!({"target_rate": 0}))
        .await;
    assert!(
        zero.message()
            .contains("must be between 1 and 768000 Hz, got 0"),
        "{zero:?}"
    );
}

#[tokio::test]
async fn audio_level_reports_rms_and_peak_in_dbfs() {
    let running = Running::start(Config::default()).await;
    let mut stream = running.open("audio.level", Value::Null).await;
    let full = one(
        &mut stream,
        1,
        "",
        f32_audio(&[1.0, -1.0, 1.0, -1.0], 48000, 2),
    )
    .await;
    let (port, out) = only(&full);
    assert_eq!(port, "level");
    assert_eq!(
        json_of(out),
        json!({"rms_dbfs": 0.0, "peak_dbfs": 0.0, "frames": 2, "channels": 2})
    );
    // Half scale as I16: 16384 / 32768 = 0.5 exactly.
    let half = one(
        &mut stream,
        2,
        "",
        i16_audio(&[16384, -16384, 0, 0], 8000, 1),
    )
    .await;
    let level = json_of(only(&half).1);
    assert_eq!(level["peak_dbfs"], json!(-6.020599913279624));
    // RMS of [0.5, -0.5, 0, 0] is sqrt(0.125).
    assert_eq!(level["rms_dbfs"], json!(20.0 * 0.125f64.sqrt().log10()));
    let silence = one(&mut stream, 3, "", i16_audio(&[0, 0], 8000, 1)).await;
    assert_eq!(
        json_of(only(&silence).1),
        json!({"rms_dbfs": null, "peak_dbfs": null, "frames": 2, "channels": 1})
    );
}

#[tokio::test]
async fn audio_dynamic_gain_follows_the_control_input() {
    let running = Running::start(Config::default()).await;
    // Without a ramp, so each change shows in full in the next chunk (ramps: unit tests).
    let mut stream = running
        .open("audio.dynamic_gain", json!({"ramp_ms": 0}))
        .await;
    let samples = [1000i16, -2000];
    // 0 dB until told otherwise.
    let unity = one(&mut stream, 1, "audio", i16_audio(&samples, 8000, 1)).await;
    assert_eq!(i16_samples(only(&unity).1), samples);
    let control = one(
        &mut stream,
        2,
        "control",
        json_payload(json!({"gain_db": 20})),
    )
    .await;
    assert!(control.outputs.is_empty() && control.error.is_none());
    let louder = one(&mut stream, 3, "audio", i16_audio(&samples, 8000, 1)).await;
    assert_eq!(i16_samples(only(&louder).1), [10000, -20000]);
    // A bad control is a per-chunk error and leaves the gain as it was.
    let bad = one(&mut stream, 4, "control", json_payload(json!({"gain": 0}))).await;
    let (code, reason, field, _) = error(&bad);
    assert_eq!(
        (code, reason, field),
        (
            INVALID_ARGUMENT,
            "INVALID_REQUEST",
            "chunk.buffer.json.json"
        )
    );
    let still = one(&mut stream, 5, "audio", i16_audio(&samples, 8000, 1)).await;
    assert_eq!(i16_samples(only(&still).1), [10000, -20000]);
    // With two inputs, a chunk must say which one it is for.
    let ambiguous = one(&mut stream, 6, "", i16_audio(&samples, 8000, 1)).await;
    assert_eq!(
        error(&ambiguous),
        (
            INVALID_ARGUMENT,
            "AMBIGUOUS_INPUT",
            "chunk.input",
            "sequence 6: processor \"audio.dynamic_gain\" has several inputs (audio, control); chunk.input must name one"
        )
    );
    let wrong = one(&mut stream, 7, "control", i16_audio(&samples, 8000, 1)).await;
    assert_eq!(error(&wrong).1, "TYPE_MISMATCH");
    let unknown = one(
        &mut stream,
        8,
        "volume",
        json_payload(json!({"gain_db": 1})),
    )
    .await;
    assert_eq!(
        error(&unknown).3,
        "sequence 8: processor \"audio.dynamic_gain\" has no input \"volume\"; its inputs are: audio, control"
    );
    // Each stream has its own gain.
    let mut other = running
        .open("audio.dynamic_gain", json!({"gain_db": -20}))
        .await;
    let quieter = one(&mut other, 1, "audio", i16_audio(&samples, 8000, 1)).await;
    assert_eq!(i16_samples(only(&quieter).1), [100, -200]);
}

#[tokio::test]
async fn video_grayscale_uses_bt601_luma() {
    let running = Running::start(Config::default()).await;
    let mut stream = running.open("video.grayscale", Value::Null).await;
    let rgb = Payload::Video(VideoFrame {
        pixels: Bytes::from_static(&[255, 0, 0, 0, 255, 0, 0, 0, 255, 10, 20, 30]),
        width: 2,
        height: 2,
        format: PixelFormat::Rgb24 as i32,
        frame_number: 7,
    });
    let result = one(&mut stream, 1, "", rgb).await;
    let (port, out) = only(&result);
    assert_eq!(port, "video");
    assert_eq!(
        out,
        &Payload::Video(VideoFrame {
            pixels: Bytes::from_static(&[76, 150, 29, 18]),
            width: 2,
            height: 2,
            format: PixelFormat::Gray8 as i32,
            frame_number: 7,
        })
    );
    let rgba = Payload::Video(VideoFrame {
        pixels: Bytes::from_static(&[255, 255, 255, 0, 0, 0, 0, 255]),
        width: 2,
        height: 1,
        format: PixelFormat::Rgba32 as i32,
        frame_number: 8,
    });
    let Payload::Video(gray) = only(&one(&mut stream, 2, "", rgba).await).1.clone() else {
        panic!("not video")
    };
    assert_eq!(&gray.pixels[..], &[255, 0]);
    let mismatched = Payload::Video(VideoFrame {
        pixels: Bytes::from(vec![0u8; 10]),
        width: 2,
        height: 2,
        format: PixelFormat::Rgba32 as i32,
        frame_number: 9,
    });
    assert_eq!(
        error(&one(&mut stream, 3, "", mismatched).await),
        (
            INVALID_ARGUMENT,
            "MALFORMED_PAYLOAD",
            "chunk.buffer.video.pixels",
            "sequence 3: video.pixels has 10 bytes but a 2x2 rgba32 frame needs 16"
        )
    );
}

fn f32_tensor(values: &[f32], shape: Vec<u64>) -> Payload {
    Payload::Tensor(TensorBuffer {
        data: values
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<_>>()
            .into(),
        shape,
        dtype: TensorDtype::F32 as i32,
    })
}

#[tokio::test]
async fn tensor_normalize_gives_zero_mean_unit_variance() {
    let running = Running::start(Config::default()).await;
    let mut stream = running.open("tensor.normalize", Value::Null).await;
    let result = one(
        &mut stream,
        1,
        "",
        f32_tensor(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0], vec![2, 4]),
    )
    .await;
    let (port, out) = only(&result);
    assert_eq!(port, "tensor");
    assert_eq!(
        out,
        &f32_tensor(&[-1.5, -0.5, -0.5, -0.5, 0.0, 0.0, 1.0, 2.0], vec![2, 4])
    );

    let f64_tensor = Payload::Tensor(TensorBuffer {
        data: [1.0f64, 3.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect::<Vec<_>>()
            .into(),
        shape: vec![2],
        dtype: TensorDtype::F64 as i32,
    });
    let Payload::Tensor(t) = only(&one(&mut stream, 2, "", f64_tensor).await).1.clone() else {
        panic!("not a tensor")
    };
    assert_eq!(t.dtype, TensorDtype::F64 as i32);
    let values: Vec<f64> = t
        .data
        .chunks_exact(8)
        .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert_eq!(values, [-1.0, 1.0]);

    let short = Payload::Tensor(TensorBuffer {
        data: Bytes::from(vec![0u8; 20]),
        shape: vec![2, 3],
        dtype: TensorDtype::F32 as i32,
    });
    assert_eq!(
        error(&one(&mut stream, 3, "", short).await),
        (
            INVALID_ARGUMENT,
            "MALFORMED_PAYLOAD",
            "chunk.buffer.tensor.shape",
            "sequence 3: tensor.shape [2, 3] of f32 needs 24 bytes but tensor.data has 20"
        )
    );
    let ints = Payload::Tensor(TensorBuffer {
        data: Bytes::from(vec![0u8; 8]),
        shape: vec![2],
        dtype: TensorDtype::I32 as i32,
    });
    assert_eq!(
        error(&one(&mut stream, 4, "", ints).await),
        (
            INVALID_ARGUMENT,
            "UNSUPPORTED_FORMAT",
            "chunk.buffer.tensor.dtype",
            "sequence 4: tensor.dtype i32 is not supported; use f32 or f64"
        )
    );
}

#[tokio::test]
async fn binary_digest_is_sha256_hex() {
    let running = Running::start(Config::default()).await;
    let mut stream = running.open("binary.digest", Value::Null).await;
    for (sequence, (input, expected)) in [
        (
            &b"abc"[..],
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        ),
        (
            &b""[..],
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let result = one(&mut stream, sequence as u64, "", binary(input)).await;
        let (port, out) = only(&result);
        assert_eq!(port, "digest");
        let Payload::Text(digest) = out else {
            panic!("not text")
        };
        assert_eq!(digest.text, expected);
    }
    let wrong = one(&mut stream, 5, "", text("abc")).await;
    assert_eq!(
        error(&wrong).3,
        "sequence 5: input \"data\" of processor \"binary.digest\" accepts binary, not text"
    );
}

#[tokio::test]
async fn unknown_processors_and_oversized_chunks_have_documented_codes() {
    let running = Running::start(Config {
        processors: vec!["passthrough".into()],
        ..Config::default()
    })
    .await;
    let unknown = running.refused("audio.gain", json!({"gain_db": 1})).await;
    assert_eq!(unknown.code(), Code::NotFound);
    assert_eq!(
        unknown.message(),
        "unknown processor \"audio.gain\"; this host serves: passthrough"
    );

    let mut stream = running.open("passthrough", Value::Null).await;
    let limit = flowplane_grpc::MAX_PAYLOAD_BYTES;
    let result = one(&mut stream, 3, "", binary(&vec![0u8; limit + 1])).await;
    let (code, reason, field, message) = error(&result);
    assert_eq!(
        (code, reason, field),
        (
            Code::ResourceExhausted as i32,
            "PAYLOAD_TOO_LARGE",
            "chunk.buffer.binary.data"
        )
    );
    assert_eq!(
        message,
        format!(
            "sequence 3: chunk.buffer.binary.data has {} bytes, over the limit of {limit} bytes (MAX_PAYLOAD_BYTES)",
            limit + 1
        )
    );
    let fine = one(&mut stream, 4, "", binary(&vec![0u8; limit])).await;
    assert!(fine.error.is_none());
    drop(stream);
    running.stop().await;
}

/// No chunk can make a built-in allocate past the payload limit: each such chunk gets an
/// error naming the field and sequence, and the same stream goes on as if it had not come.
#[tokio::test]
async fn chunks_that_would_explode_are_refused_and_the_stream_goes_on() {
    let running = Running::start(Config::default()).await;
    let mut resample = running
        .open("audio.resample", json!({"target_rate": 768_000}))
        .await;
    // More than the filter's delay (256 input frames), so the first chunk has output.
    let ramp: Vec<i16> = (0..800).map(|i| i * 20).collect();
    let before = one(&mut resample, 1, "", i16_audio(&ramp[..400], 8000, 1)).await;
    let mut kept = i16_samples(only(&before).1);
    // 1 MiB of audio at 1 Hz to 768 kHz: 1.6 TB if it were built.
    let absurd = one(&mut resample, 2, "", i16_audio(&vec![0; 512 * 1024], 1, 1)).await;
    let (code, reason, field, message) = error(&absurd);
    assert_eq!(
        (code, reason, field),
        (
            INVALID_ARGUMENT,
            "RATIO_TOO_LARGE",
            "chunk.buffer.audio.sample_rate"
        )
    );
    assert_eq!(
        message,
        "sequence 2: audio.sample_rate 1 Hz to target_rate 768000 Hz upsamples more than 96 times; check audio.sample_rate"
    );
    // A sane ratio, but 1 MiB at once would be 100 MB out.
    let huge = one(
        &mut resample,
        3,
        "",
        i16_audio(&vec![0; 512 * 1024], 8000, 1),
    )
    .await;
    let (code, reason, field, message) = error(&huge);
    assert_eq!(
        (code, reason, field),
        (
            Code::ResourceExhausted as i32,
            "OUTPUT_TOO_LARGE",
            "chunk.buffer.audio.samples"
        )
    );
    assert!(
        message.starts_with("sequence 3: 524288 frames at 8000 Hz"),
        "{message}"
    );
    // The next chunk continues from the last accepted one: the same samples as a stream
    // that never saw the refused chunks.
    let after = one(&mut resample, 4, "", i16_audio(&ramp[400..], 8000, 1)).await;
    kept.extend(i16_samples(only(&after).1));
    let mut clean = running
        .open("audio.resample", json!({"target_rate": 768_000}))
        .await;
    let mut expected =
        i16_samples(only(&one(&mut clean, 1, "", i16_audio(&ramp[..400], 8000, 1)).await).1);
    expected.extend(i16_samples(
        only(&one(&mut clean, 2, "", i16_audio(&ramp[400..], 8000, 1)).await).1,
    ));
    assert_eq!(kept, expected);

    // Upper-casing U+0390 triples its bytes: 3 MiB in would be 9 MiB out.
    let mut upper = running
        .open("text.transform", json!({"mode": "upper"}))
        .await;
    let big = "\u{390}".repeat(3 * 1024 * 1024 / 2);
    let refused = one(&mut upper, 1, "", text(&big)).await;
    let (code, reason, field, _) = error(&refused);
    assert_eq!(
        (code, reason, field),
        (
            Code::ResourceExhausted as i32,
            "OUTPUT_TOO_LARGE",
            "chunk.buffer.text.text"
        )
    );
    let Payload::Text(ok) = only(&one(&mut upper, 2, "", text("still here")).await)
        .1
        .clone()
    else {
        panic!("not text")
    };
    assert_eq!(ok.text, "STILL HERE");
    drop((resample, upper));
    running.stop().await;
}
