//! `flowplane validate` and `flowplane run`: check a pipeline manifest, and stream input
//! files through it, printing each result as it arrives. Inputs interleave round robin
//! in the order of the --input flags, so a run over the same files is reproducible.

use std::path::PathBuf;

use std::io::Write;

use flowplane_grpc::{auth::AttachBearer, config::ClientArgs};
use flowplane_manifest::Manifest;
use flowplane_proto::{
    common::v1::ErrorDetail,
    data::v1::{
        AudioFormat, DataBuffer, DataChunk, PixelFormat, TensorDtype, data_buffer::Payload,
    },
    streaming::v1::{
        ControlCommand, StreamControl, StreamInit, StreamPipelineRequest, ValidatePipelineRequest,
        stream_pipeline_request::Request, stream_pipeline_response::Response,
        streaming_pipeline_service_client::StreamingPipelineServiceClient,
    },
};
use sha2::{Digest, Sha256};
use tonic::{codegen::InterceptedService, transport::Channel};

use crate::{
    Error, Result,
    inputs::{ChunkOptions, InputType, STDIN, read_chunks},
    outputs::OutputDir,
};

/// Default pipeline service address.
pub const DEFAULT_PIPELINE: &str = "http://127.0.0.1:50071";

/// How results are printed (the same names as every other subcommand's `-o`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ResultFormat {
    /// One readable line per result (`table` and `wide` name it too).
    #[default]
    #[value(alias = "table", alias = "wide")]
    Text,
    /// One JSON object per line, for scripts.
    Json,
    /// One YAML document per result, each after `---`.
    Yaml,
}

/// `flowplane validate`.
#[derive(Debug, clap::Args)]
pub struct ValidateArgs {
    /// Pipeline manifest, YAML or JSON.
    pub manifest: PathBuf,
    /// Pipeline service address, HOST:PORT or URI.
    #[arg(long, env = "FLOWPLANE_PIPELINE", default_value = DEFAULT_PIPELINE)]
    pub pipeline: String,
    /// Check without any server: every structural check (node ids, references to nodes,
    /// cycles, inputs and outputs), none that needs a processor's ports or params.
    #[arg(long)]
    pub offline: bool,
    /// With --offline: also check ports, edge types and params against a saved catalog,
    /// the JSON or YAML `flowplane processors -o json` prints.
    #[arg(long, value_name = "FILE", requires = "offline")]
    pub catalog: Option<PathBuf>,
    /// Output format: `json`/`yaml` print one object with `valid` and every problem.
    #[arg(short, long, value_enum, default_value_t)]
    pub output: crate::Output,
}

/// Exit code of `flowplane run` when the session completed but at least one chunk failed.
pub const EXIT_CHUNKS_FAILED: u8 = 3;

/// `flowplane run`.
#[derive(Debug, Default, clap::Args)]
#[command(after_help = "\
Input types: by --input-type NAME=TYPE, else by the file's extension: .wav wav, .ppm ppm,
.rgb rgb (needs --frame-size), .jsonl/.ndjson jsonl, .json json, .txt text, .npy npy;
anything else, and stdin (FILE -), is binary.

Exit status: 0 when every chunk gave its results; 3 when the session completed but at
least one chunk failed (each failure is printed as it arrives); 2 for a usage error such as
an input the manifest does not declare (nothing is sent); 1 for any other failure.")]
pub struct RunArgs {
    /// Pipeline manifest, YAML or JSON.
    pub manifest: PathBuf,
    /// An input file for a pipeline input, NAME=FILE (FILE `-` is stdin); repeat for several inputs.
    #[arg(long = "input", value_name = "NAME=FILE", required = true)]
    pub inputs: Vec<String>,
    /// How to cut one input into chunks, NAME=TYPE, overriding its file extension
    /// (wav, ppm, rgb, jsonl, json, text, npy, binary).
    #[arg(long = "input-type", value_name = "NAME=TYPE")]
    pub input_types: Vec<String>,
    /// Also write every pipeline output to a file in DIR named after it: NAME.wav for
    /// audio, NAME.ppm/.pgm (NAME.raw for other pixel formats) for video, NAME.npy for
    /// tensors, NAME.bin for binary, NAME.jsonl for json and text.
    #[arg(long, value_name = "DIR")]
    pub output_dir: Option<PathBuf>,
    /// Pipeline service address, HOST:PORT or URI.
    #[arg(long, env = "FLOWPLANE_PIPELINE", default_value = DEFAULT_PIPELINE)]
    pub pipeline: String,
    /// Result format. json: one envelope per line on stdout, {"event": "result"|"error"|
    /// "summary", ...}, each result's payload fields under "payload", the summary last
    /// (chunks, results, errors, failovers, files); yaml: the same as `---` documents.
    /// The session's ready/closed lines go to stderr.
    #[arg(short, long, value_enum, default_value_t = ResultFormat::Text)]
    pub output: ResultFormat,
    /// Audio chunk length in milliseconds.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub audio_chunk_ms: u32,
    /// Frame size of raw .rgb video input, WIDTHxHEIGHT.
    #[arg(long, value_parser = parse_frame_size)]
    pub frame_size: Option<(u32, u32)>,
}

fn parse_frame_size(raw: &str) -> Result<(u32, u32), String> {
    let (w, h) = raw
        .split_once('x')
        .ok_or_else(|| format!("{raw:?} is not WIDTHxHEIGHT"))?;
    let parse = |v: &str| {
        v.parse::<u32>()
            .map_err(|_| format!("{raw:?} is not WIDTHxHEIGHT"))
    };
    Ok((parse(w)?, parse(h)?))
}

type PipelineClient = StreamingPipelineServiceClient<InterceptedService<Channel, AttachBearer>>;

async fn client(address: &str, args: &ClientArgs) -> Result<PipelineClient> {
    let channel = flowplane_grpc::client::connect(address, args)
        .await
        .map_err(|source| Error::Connect {
            address: address.to_string(),
            source,
        })?;
    let auth = AttachBearer::new(args.token.as_deref())
        .map_err(|s| Error::Token(s.message().to_string()))?;
    Ok(
        StreamingPipelineServiceClient::with_interceptor(channel, auth)
            .max_decoding_message_size(flowplane_grpc::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(flowplane_grpc::MAX_MESSAGE_BYTES),
    )
}

/// Validates a manifest; prints every problem. Returns whether it is valid.
pub async fn validate(
    args: &ValidateArgs,
    client_args: &ClientArgs,
    out: &mut (dyn Write + Send),
) -> Result<()> {
    let manifest = Manifest::from_file(&args.manifest)?;
    let path = args.manifest.display().to_string();
    let json = matches!(args.output, crate::Output::Json | crate::Output::Yaml);
    let problems = if args.offline {
        let checked = match &args.catalog {
            Some(file) => flowplane_manifest::validate(&manifest, &read_catalog(file)?),
            None => flowplane_manifest::validate(&manifest, &flowplane_manifest::Offline),
        };
        match checked {
            Ok(_) => Vec::new(),
            Err(problems) => problems.0.iter().map(|p| p.to_detail()).collect(),
        }
    } else {
        let mut client = client(&args.pipeline, client_args).await?;
        client
            .validate_pipeline(ValidatePipelineRequest {
                manifest: Some(manifest.to_proto()),
            })
            .await
            .map_err(|status| Error::Rpc {
                rpc: "ValidatePipeline",
                status,
            })?
            .into_inner()
            .problems
    };
    if json {
        let value = serde_json::json!({"manifest": path, "valid": problems.is_empty(),
            "offline": args.offline, "nodes": manifest.nodes.len(), "edges": manifest.edges.len(),
            "problems": problems.iter().map(|p| serde_json::json!({
                "code": format!("{:?}", tonic::Code::from_i32(p.code)), "reason": p.reason,
                "message": p.message, "field": p.field})).collect::<Vec<_>>()});
        crate::write_value(out, args.output, &value, true)?;
    } else if problems.is_empty() {
        let counts = format!(
            "{}, {}",
            plural(manifest.nodes.len() as u64, "node", "nodes"),
            plural(manifest.edges.len() as u64, "edge", "edges")
        );
        if let Some(catalog) = args.catalog.as_ref().filter(|_| args.offline) {
            writeln!(
                out,
                "{path}: valid offline against {} ({counts})",
                catalog.display()
            )?;
        } else if args.offline {
            writeln!(
                out,
                "{path}: valid offline ({counts}; processors, ports and params not checked)"
            )?;
        } else {
            writeln!(out, "{path}: valid ({counts})")?;
        }
    } else {
        writeln!(
            out,
            "{path}: {}",
            plural(problems.len() as u64, "problem", "problems")
        )?;
        for p in &problems {
            let code = tonic::Code::from_i32(p.code);
            writeln!(out, "  {:?} {} {} ({})", code, p.reason, p.message, p.field)?;
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    Err(Error::InvalidPipeline {
        path,
        problems: problems.len(),
    })
}

/// A catalog saved from `flowplane processors -o json` (or yaml), by processor name.
fn read_catalog(
    file: &std::path::Path,
) -> Result<std::collections::HashMap<String, flowplane_proto::processor::v1::ProcessorCapability>>
{
    let fail = |message: String| Error::Usage(format!("--catalog {}: {message}", file.display()));
    let text = std::fs::read_to_string(file).map_err(|e| fail(e.to_string()))?;
    let value: serde_json::Value =
        serde_yaml::from_str(&text).map_err(|e| fail(format!("not json or yaml: {e}")))?;
    let entries = value
        .as_array()
        .ok_or_else(|| fail("not a list of processors".into()))?;
    entries
        .iter()
        .map(|entry| {
            let capability = crate::render::capability_from_json(entry).map_err(fail)?;
            Ok((capability.name.clone(), capability))
        })
        .collect()
}

/// What a run produced.
#[derive(Debug, Default)]
pub struct RunSummary {
    /// Chunks sent.
    pub chunks: u64,
    /// Results received.
    pub results: u64,
    /// Per-chunk errors received.
    pub errors: u64,
    /// Times a node moved to another processor instance (the service's count).
    pub failovers: u64,
    /// The files written under `--output-dir`, in output-name order.
    pub files: Vec<PathBuf>,
}

/// The `--input` pairs as (name, file), and each name's `--input-type`, checked against the
/// manifest before anything is read or sent.
fn plan_inputs(
    args: &RunArgs,
    manifest: &Manifest,
) -> Result<Vec<(String, String, Option<InputType>)>> {
    let declared: Vec<&str> = manifest.inputs.iter().map(|i| i.name.as_str()).collect();
    let check = |flag: &str, name: &str| {
        if declared.contains(&name) {
            Ok(())
        } else {
            Err(Error::Usage(format!(
                "{flag} {name:?}: {} has no input {name:?}; its inputs are: {}",
                args.manifest.display(),
                if declared.is_empty() {
                    "(none)".to_string()
                } else {
                    declared.join(", ")
                }
            )))
        }
    };
    let mut types = std::collections::HashMap::new();
    for spec in &args.input_types {
        let (name, kind) = spec
            .split_once('=')
            .ok_or_else(|| Error::Usage(format!("--input-type {spec:?} is not NAME=TYPE")))?;
        check("--input-type", name)?;
        let kind = <InputType as clap::ValueEnum>::from_str(kind, true).map_err(|_| {
            Error::Usage(format!(
                "--input-type {spec:?}: unknown type {kind:?}; one of wav, ppm, rgb, jsonl, json, text, npy, binary"
            ))
        })?;
        types.insert(name.to_string(), kind);
    }
    let mut planned = Vec::new();
    let mut stdin_used = false;
    for spec in &args.inputs {
        let (name, file) = spec
            .split_once('=')
            .ok_or_else(|| Error::Usage(format!("--input {spec:?} is not NAME=FILE")))?;
        check("--input", name)?;
        if file == STDIN {
            if stdin_used {
                return Err(Error::Usage(format!(
                    "--input {spec:?}: stdin (-) can feed only one input"
                )));
            }
            stdin_used = true;
        }
        planned.push((name.to_string(), file.to_string(), types.remove(name)));
    }
    if let Some(name) = types.keys().next() {
        return Err(Error::Usage(format!(
            "--input-type {name:?} names no --input"
        )));
    }
    Ok(planned)
}

/// `1 chunk`, `2 chunks`.
fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// Streams the inputs through the pipeline and prints results to `out` as they arrive;
/// the session's lifecycle (ready, closed with its counts, files written) goes to
/// `status`, so `out` holds results and per-chunk errors only.
pub async fn run(
    args: &RunArgs,
    client_args: &ClientArgs,
    out: &mut (dyn Write + Send),
    status: &mut (dyn Write + Send),
) -> Result<RunSummary> {
    let manifest = Manifest::from_file(&args.manifest)?;
    let options = ChunkOptions {
        audio_chunk_ms: args.audio_chunk_ms,
        frame_size: args.frame_size,
        ..ChunkOptions::default()
    };
    let mut per_input = Vec::new();
    for (name, file, kind) in plan_inputs(args, &manifest)? {
        per_input.push((name, read_chunks(&file, kind, &options)?.into_iter()));
    }
    let chunks = interleave(per_input);
    let mut files = args
        .output_dir
        .as_deref()
        .map(OutputDir::create)
        .transpose()?;
    let mut client = client(&args.pipeline, client_args).await?;
    let init = StreamPipelineRequest {
        request: Some(Request::Init(StreamInit {
            manifest: Some(manifest.to_proto()),
            metadata: Default::default(),
            audio_input: String::new(),
        })),
    };
    let close = StreamPipelineRequest {
        request: Some(Request::Control(StreamControl {
            command: ControlCommand::Close as i32,
        })),
    };
    let chunks_len = chunks.len() as u64;
    let requests = std::iter::once(init)
        .chain(chunks.into_iter().map(|chunk| StreamPipelineRequest {
            request: Some(Request::Chunk(chunk)),
        }))
        .chain(std::iter::once(close));
    let rpc_error = |status| Error::Rpc {
        rpc: "StreamPipeline",
        status,
    };
    let mut stream = client
        .stream_pipeline(tokio_stream::iter(requests))
        .await
        .map_err(rpc_error)?
        .into_inner();
    let mut session = String::new();
    let mut summary = RunSummary {
        chunks: chunks_len,
        ..RunSummary::default()
    };
    while let Some(message) = stream.message().await.map_err(rpc_error)? {
        match message.response {
            Some(Response::Ready(ready)) => {
                session = ready.session_id;
                match args.output {
                    ResultFormat::Text => writeln!(status, "session {session} ready")?,
                    ResultFormat::Json | ResultFormat::Yaml => writeln!(
                        status,
                        "{}",
                        serde_json::json!({"event": "ready", "session_id": session})
                    )?,
                }
            }
            Some(Response::Result(result)) => {
                summary.results += 1;
                let buffer = result.buffer.unwrap_or_default();
                if let Some(files) = files.as_mut() {
                    files.write(&result.output, result.input_sequence, &buffer)?;
                }
                writeln!(
                    out,
                    "{}",
                    render_result(args.output, result.input_sequence, &result.output, &buffer)
                )?;
            }
            Some(Response::Error(error)) => {
                summary.errors += 1;
                writeln!(out, "{}", render_error(args.output, &error))?;
            }
            Some(Response::Closed(closed)) => {
                if let Some(files) = files.take() {
                    summary.files = files.finish()?;
                }
                let m = closed.metrics.unwrap_or_default();
                summary.failovers = m.failovers;
                let files: Vec<String> = summary
                    .files
                    .iter()
                    .map(|f| f.display().to_string())
                    .collect();
                match args.output {
                    ResultFormat::Text => {
                        for file in &summary.files {
                            writeln!(status, "wrote {}", file.display())?;
                        }
                        writeln!(
                            status,
                            "session {session} closed: {}, {}, {}, {}",
                            plural(m.chunks_in, "chunk", "chunks") + " in",
                            plural(m.results_out, "result", "results"),
                            plural(m.errors, "error", "errors"),
                            plural(m.failovers, "failover", "failovers"),
                        )?;
                    }
                    ResultFormat::Json | ResultFormat::Yaml => {
                        writeln!(
                            status,
                            "{}",
                            serde_json::json!({"event": "closed", "session_id": session,
                                "chunks": m.chunks_in, "results": m.results_out, "errors": m.errors,
                                "failovers": m.failovers, "files": files})
                        )?;
                        // The data stream ends with its own summary: a script reading only
                        // stdout knows the run is complete and what it counted. No session id,
                        // so the same inputs give the same lines.
                        let closing = serde_json::json!({"event": "summary",
                            "chunks": m.chunks_in, "results": m.results_out, "errors": m.errors,
                            "failovers": m.failovers, "files": files});
                        writeln!(out, "{}", structured(args.output, &closing))?;
                    }
                }
                return Ok(summary);
            }
            Some(Response::Metrics(_)) | None => {}
        }
    }
    Err(Error::Protocol(
        "the pipeline service ended the session without closing it".into(),
    ))
}

/// Round robin across inputs, numbering chunks in the order they are sent.
fn interleave(inputs: Vec<(String, std::vec::IntoIter<DataBuffer>)>) -> Vec<DataChunk> {
    let mut inputs = inputs;
    let mut out = Vec::new();
    loop {
        let mut any = false;
        for (name, buffers) in inputs.iter_mut() {
            if let Some(buffer) = buffers.next() {
                any = true;
                out.push(DataChunk {
                    sequence: out.len() as u64,
                    input: name.clone(),
                    buffer: Some(buffer),
                    timestamp_us: 0,
                    metadata: Default::default(),
                });
            }
        }
        if !any {
            return out;
        }
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// RMS and peak level in dBFS of an audio result (decoded by the SDK's payload codecs);
/// minus infinity when it holds no samples or is malformed.
fn audio_levels(audio: &flowplane_proto::data::v1::AudioBuffer) -> (f64, f64) {
    let samples = flowplane_sdk::payload::decode_audio(audio).unwrap_or_default();
    if samples.is_empty() {
        return (f64::NEG_INFINITY, f64::NEG_INFINITY);
    }
    let rms = (samples.iter().map(|s| s * s).sum::<f64>() / samples.len() as f64).sqrt();
    let peak = samples.iter().fold(0.0f64, |m, s| m.max(s.abs()));
    (20.0 * rms.log10(), 20.0 * peak.log10())
}

/// One result, as a line of text or JSON.
pub fn render_result(
    format: ResultFormat,
    sequence: u64,
    output: &str,
    buffer: &DataBuffer,
) -> String {
    let value = match &buffer.payload {
        Some(Payload::Audio(a)) => {
            let fmt = AudioFormat::try_from(a.format).unwrap_or(AudioFormat::Unspecified);
            let (rms, peak) = audio_levels(a);
            serde_json::json!({"type": "audio", "format": fmt.as_str_name(), "sample_rate": a.sample_rate,
                "channels": a.channels, "num_samples": a.num_samples,
                "rms_dbfs": round2(rms), "peak_dbfs": round2(peak), "sha256": sha256_hex(&a.samples)})
        }
        Some(Payload::Video(v)) => {
            let fmt = PixelFormat::try_from(v.format).unwrap_or(PixelFormat::Unspecified);
            serde_json::json!({"type": "video", "format": fmt.as_str_name(), "width": v.width, "height": v.height,
                "frame_number": v.frame_number, "sha256": sha256_hex(&v.pixels)})
        }
        Some(Payload::Tensor(t)) => {
            let dtype = TensorDtype::try_from(t.dtype).unwrap_or(TensorDtype::Unspecified);
            // Float tensors show their values; other dtypes only dtype and shape.
            let values: Vec<f64> = flowplane_sdk::payload::decode_float_tensor(t)
                .unwrap_or_default()
                .into_iter()
                .map(round4)
                .collect();
            serde_json::json!({"type": "tensor", "dtype": dtype.as_str_name(), "shape": t.shape, "values": values})
        }
        Some(Payload::Json(j)) => {
            let parsed: serde_json::Value =
                serde_json::from_str(&j.json).unwrap_or(serde_json::Value::String(j.json.clone()));
            serde_json::json!({"type": "json", "value": parsed})
        }
        Some(Payload::Text(t)) => serde_json::json!({"type": "text", "value": t.text}),
        Some(Payload::Binary(b)) => {
            serde_json::json!({"type": "binary", "bytes": b.data.len(), "sha256": sha256_hex(&b.data)})
        }
        None => serde_json::json!({"type": "none"}),
    };
    match format {
        ResultFormat::Json | ResultFormat::Yaml => {
            // The envelope is the same for every type; what the payload holds is under
            // `payload`, whatever the type.
            let mut payload = value.clone();
            let kind = payload
                .as_object_mut()
                .and_then(|o| o.remove("type"))
                .unwrap_or_default();
            let line = serde_json::json!({"event": "result", "sequence": sequence,
                "output": output, "type": kind, "payload": payload});
            structured(format, &line)
        }
        ResultFormat::Text => {
            let summary = match &buffer.payload {
                Some(Payload::Json(_)) | Some(Payload::Text(_)) => value["value"].to_string(),
                _ => {
                    let mut v = value.clone();
                    if let Some(o) = v.as_object_mut() {
                        o.remove("type");
                    }
                    v.to_string()
                }
            };
            format!(
                "#{sequence} {output} {} {summary}",
                value["type"].as_str().unwrap_or("?")
            )
        }
    }
}

/// One per-chunk error, as a line of text or JSON.
pub fn render_error(format: ResultFormat, error: &ErrorDetail) -> String {
    let code = format!("{:?}", tonic::Code::from_i32(error.code));
    match format {
        ResultFormat::Json | ResultFormat::Yaml => structured(
            format,
            &serde_json::json!({"event": "error", "sequence": error.sequence, "error": {
            "code": code, "reason": error.reason, "node_id": error.node_id, "message": error.message}}),
        ),
        ResultFormat::Text => format!(
            "#{} error {code} {} node={} {}",
            error
                .sequence
                .map_or_else(|| "-".to_string(), |s| s.to_string()),
            error.reason,
            error.node_id,
            error.message
        ),
    }
}

/// A JSON line, or a YAML document after `---` (without the final newline, as a line).
fn structured(format: ResultFormat, value: &serde_json::Value) -> String {
    match format {
        ResultFormat::Yaml => match serde_yaml::to_string(value) {
            Ok(text) => format!("---\n{}", text.trim_end()),
            Err(_) => value.to_string(),
        },
        _ => value.to_string(),
    }
}

fn round2(v: f64) -> f64 {
    if v.is_finite() {
        (v * 100.0).round() / 100.0
    } else {
        -999.0
    }
}

fn round4(v: f64) -> f64 {
    (v * 10_000.0).round() / 10_000.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowplane_proto::data::v1::{JsonData, TextData};

    fn buffer(payload: Payload) -> DataBuffer {
        payload.into()
    }

    #[test]
    fn renders_each_payload_type() {
        let json = buffer(Payload::Json(JsonData {
            json: r#"{"result": 3}"#.into(),
            schema_hint: String::new(),
        }));
        assert_eq!(
            render_result(ResultFormat::Text, 4, "sum", &json),
            r#"#4 sum json {"result":3}"#
        );
        assert_eq!(
            render_result(ResultFormat::Json, 4, "sum", &json),
            r#"{"event":"result","output":"sum","payload":{"value":{"result":3}},"sequence":4,"type":"json"}"#
        );
        let text = buffer(Payload::Text(TextData {
            text: "HI".into(),
            language: String::new(),
        }));
        assert_eq!(
            render_result(ResultFormat::Text, 0, "out", &text),
            "#0 out text \"HI\""
        );
        assert_eq!(
            render_result(ResultFormat::Yaml, 0, "out", &text),
            "---\nevent: result\noutput: out\npayload:\n  value: HI\nsequence: 0\ntype: text"
        );
    }

    #[test]
    fn every_payload_type_has_the_same_envelope() {
        let payloads = [
            Payload::Json(JsonData {
                json: "[1]".into(),
                schema_hint: String::new(),
            }),
            Payload::Text(TextData {
                text: "hi".into(),
                language: String::new(),
            }),
            Payload::Audio(flowplane_proto::data::v1::AudioBuffer {
                samples: [0u8, 64, 0, 192].to_vec().into(),
                sample_rate: 8000,
                channels: 1,
                format: AudioFormat::I16le as i32,
                num_samples: 2,
            }),
            Payload::Video(flowplane_proto::data::v1::VideoFrame {
                pixels: vec![0u8; 3].into(),
                width: 1,
                height: 1,
                format: PixelFormat::Rgb24 as i32,
                frame_number: 0,
            }),
            Payload::Tensor(flowplane_proto::data::v1::TensorBuffer {
                data: 2.5f32.to_le_bytes().to_vec().into(),
                shape: vec![1],
                dtype: TensorDtype::F32 as i32,
            }),
            Payload::Binary(flowplane_proto::data::v1::BinaryData {
                data: vec![1u8, 2].into(),
                mime_type: String::new(),
            }),
        ];
        for payload in payloads {
            let line = render_result(ResultFormat::Json, 7, "o", &buffer(payload));
            let value: serde_json::Value = serde_json::from_str(&line).unwrap();
            let keys: Vec<&String> = value.as_object().unwrap().keys().collect();
            assert_eq!(
                keys,
                ["event", "output", "payload", "sequence", "type"],
                "{line}"
            );
            assert_eq!(value["event"], "result");
            assert!(value["payload"].is_object(), "{line}");
        }
        let audio = render_result(
            ResultFormat::Json,
            0,
            "a",
            &buffer(Payload::Audio(flowplane_proto::data::v1::AudioBuffer {
                samples: [0u8, 64, 0, 192].to_vec().into(),
                sample_rate: 8000,
                channels: 1,
                format: AudioFormat::I16le as i32,
                num_samples: 2,
            })),
        );
        let audio: serde_json::Value = serde_json::from_str(&audio).unwrap();
        // Two samples of half scale: -6.02 dBFS, decoded by the SDK's codec.
        assert_eq!(audio["payload"]["peak_dbfs"], -6.02);
        let error = render_error(
            ResultFormat::Json,
            &ErrorDetail {
                sequence: Some(3),
                reason: "R".into(),
                ..Default::default()
            },
        );
        let error: serde_json::Value = serde_json::from_str(&error).unwrap();
        assert_eq!(
            (&error["event"], &error["sequence"]),
            (&"error".into(), &3.into())
        );
    }

    #[test]
    fn interleaves_inputs_round_robin_with_global_sequences() {
        let b = |t: &str| {
            buffer(Payload::Text(TextData {
                text: t.into(),
                language: String::new(),
            }))
        };
        let chunks = interleave(vec![
            ("a".into(), vec![b("a0"), b("a1"), b("a2")].into_iter()),
            ("c".into(), vec![b("c0")].into_iter()),
        ]);
        let order: Vec<(u64, &str)> = chunks
            .iter()
            .map(|c| (c.sequence, c.input.as_str()))
            .collect();
        assert_eq!(order, [(0, "a"), (1, "c"), (2, "a"), (3, "a")]);
    }

    #[test]
    fn frame_size_parses_width_by_height() {
        assert_eq!(parse_frame_size("64x48"), Ok((64, 48)));
        assert!(parse_frame_size("64").is_err());
    }
}
