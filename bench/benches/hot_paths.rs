//! Criterion micro-benchmarks of the per-chunk hot paths: DataChunk encode and decode
//! (100 B JSON, 64 KiB binary), payload type checks, manifest validation and planning
//! (what every session start runs), and the audio decode/encode `audio.gain` does per
//! chunk. `cargo bench -p flowplane-bench`; nothing here is asserted.

use std::{collections::HashMap, hint::black_box};

use bytes::{Bytes, BytesMut};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use flowplane_bench::load::{ChunkKind, one_node_manifest};
use flowplane_manifest::{Manifest, validate};
use flowplane_proto::{
    any_accepts,
    data::v1::{AudioBuffer, DataChunk, DataTypeHint, data_buffer::Payload},
    processor::v1::ProcessorCapability,
    streaming::v1::StreamPipelineRequest,
};
use flowplane_sdk::payload::{decode_audio, encode_audio};
use prost::Message;

fn chunks() -> Vec<(&'static str, DataChunk)> {
    vec![
        ("json_100B", ChunkKind::json(100).data_chunk(42)),
        ("binary_64KiB", ChunkKind::binary(64 * 1024).data_chunk(42)),
        ("audio_20ms", ChunkKind::audio(false).data_chunk(42)),
    ]
}

fn encode_decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("datachunk");
    for (name, chunk) in chunks() {
        let len = chunk.encoded_len();
        group.throughput(Throughput::Bytes(len as u64));
        let mut buf = BytesMut::with_capacity(len);
        group.bench_with_input(BenchmarkId::new("encode", name), &chunk, |b, chunk| {
            b.iter(|| {
                buf.clear();
                black_box(chunk)
                    .encode(&mut buf)
                    .expect("capacity reserved");
                black_box(buf.len())
            })
        });
        let wire: Bytes = chunk.encode_to_vec().into();
        group.bench_with_input(BenchmarkId::new("decode", name), &wire, |b, wire| {
            b.iter(|| DataChunk::decode(black_box(wire.clone())).expect("valid"))
        });
        // What the pipeline decodes from a client: the chunk inside a request.
        let request = ChunkKind::json(100);
        let request: Bytes = match name {
            "json_100B" => request.request(42).encode_to_vec().into(),
            _ => StreamPipelineRequest {
                request: Some(
                    flowplane_proto::streaming::v1::stream_pipeline_request::Request::Chunk(
                        chunk.clone(),
                    ),
                ),
            }
            .encode_to_vec()
            .into(),
        };
        group.bench_with_input(
            BenchmarkId::new("decode_request", name),
            &request,
            |b, wire| {
                b.iter(|| StreamPipelineRequest::decode(black_box(wire.clone())).expect("valid"))
            },
        );
    }
    group.finish();
}

fn type_checks(c: &mut Criterion) {
    let mut group = c.benchmark_group("types");
    let chunk = ChunkKind::audio(false).data_chunk(1);
    let buffer = chunk.buffer.as_ref().expect("buffer");
    group.bench_function("type_hint", |b| b.iter(|| black_box(buffer).type_hint()));
    group.bench_function("payload_len", |b| {
        b.iter(|| black_box(buffer).payload_len())
    });
    let declared = [DataTypeHint::Json as i32, DataTypeHint::Audio as i32];
    group.bench_function("any_accepts_two_types", |b| {
        b.iter(|| any_accepts(black_box(&declared), black_box(DataTypeHint::Audio)))
    });
    let any = [DataTypeHint::Any as i32];
    group.bench_function("any_accepts_any", |b| {
        b.iter(|| any_accepts(black_box(&any), black_box(DataTypeHint::Binary)))
    });
    group.finish();
}

fn capabilities() -> HashMap<String, ProcessorCapability> {
    flowplane_processor::host(&Default::default())
        .expect("built-in host")
        .capabilities()
        .into_iter()
        .map(|c| (c.name.clone(), c))
        .collect()
}

fn routing(c: &mut Criterion) {
    let caps = capabilities();
    let mut group = c.benchmark_group("routing");
    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/pipelines");
    let mut manifests = vec![(
        "passthrough".to_string(),
        Manifest::from_proto(&one_node_manifest("passthrough", serde_json::json!({}))),
    )];
    for name in ["audio-chain", "fan-out-fan-in", "mixed"] {
        let path = format!("{examples}/{name}.yaml");
        if let Ok(manifest) = Manifest::from_file(&path) {
            manifests.push((name.to_string(), manifest));
        }
    }
    for (name, manifest) in &manifests {
        group.bench_with_input(BenchmarkId::new("validate", name), manifest, |b, m| {
            b.iter(|| validate(black_box(m), &caps).expect("valid example"))
        });
        // Session start converts the wire manifest first, then validates.
        let proto = manifest.to_proto();
        group.bench_with_input(
            BenchmarkId::new("from_proto_and_validate", name),
            &proto,
            |b, p| {
                b.iter(|| {
                    validate(&Manifest::from_proto(black_box(p)), &caps).expect("valid example")
                })
            },
        );
    }
    group.finish();
}

fn audio(c: &mut Criterion) {
    let chunk = ChunkKind::audio(false).data_chunk(1);
    let Some(Payload::Audio(buffer)) = chunk.buffer.and_then(|b| b.payload) else {
        panic!("audio chunk")
    };
    let mut group = c.benchmark_group("audio_gain_20ms");
    group.throughput(Throughput::Bytes(buffer.samples.len() as u64));
    group.bench_function("decode_f32", |b| {
        b.iter(|| decode_audio(black_box(&buffer)).expect("valid"))
    });
    let samples = decode_audio(&buffer).expect("valid");
    group.bench_function("encode_f32", |b| {
        b.iter(|| {
            encode_audio(
                flowplane_proto::data::v1::AudioFormat::F32le,
                black_box(&samples),
            )
        })
    });
    group.bench_function("gain_round_trip", |b| {
        b.iter(|| {
            let decoded: Vec<f64> = decode_audio(black_box(&buffer))
                .expect("valid")
                .into_iter()
                .map(|s| s * 0.5)
                .collect();
            AudioBuffer {
                samples: encode_audio(flowplane_proto::data::v1::AudioFormat::F32le, &decoded),
                ..buffer.clone()
            }
        })
    });
    group.finish();
}

criterion_group!(benches, encode_decode, type_checks, routing, audio);
criterion_main!(benches);
