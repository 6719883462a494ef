//! The built-in processors, one module each, on the SDK: `flowplane-processor` serves
//! them over gRPC, and the pipeline service hosts them in-process for co-located
//! (`placement: local`) nodes. Every one validates its params in `create`
//! and reports bad input as a per-chunk error naming the field; none may panic on input,
//! and none may allocate from a size the input claims before checking it: an output
//! over `flowplane_grpc::MAX_PAYLOAD_BYTES` is refused (RESOURCE_EXHAUSTED,
//! [`OUTPUT_TOO_LARGE`]) before it is built.

pub mod audio;
pub mod binary_digest;
pub mod json_calculator;
pub mod passthrough;
pub mod tensor_normalize;
pub mod text_transform;
pub mod video_grayscale;

use flowplane_sdk::{
    HostBuilder, ProcessError, Processor, ProcessorHost,
    proto::data::v1::{JsonData, data_buffer::Payload},
};

/// Version every built-in reports: the binary's.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Reason of a chunk whose JSON does not parse.
pub const INVALID_JSON: &str = "INVALID_JSON";
/// Reason of a JSON document that parses but does not say what the processor needs.
pub const INVALID_REQUEST: &str = "INVALID_REQUEST";
/// Reason of a chunk whose output would exceed `MAX_PAYLOAD_BYTES` (RESOURCE_EXHAUSTED).
pub const OUTPUT_TOO_LARGE: &str = "OUTPUT_TOO_LARGE";

type Register = fn(HostBuilder) -> HostBuilder;

fn register<P: Processor>(builder: HostBuilder) -> HostBuilder {
    builder.processor::<P>()
}

/// Every built-in processor by name, in the order hosts list them.
pub const BUILT_INS: &[(&str, Register)] = &[
    ("passthrough", register::<passthrough::Passthrough>),
    (
        "json.calculator",
        register::<json_calculator::JsonCalculator>,
    ),
    ("text.transform", register::<text_transform::TextTransform>),
    ("audio.gain", register::<audio::Gain>),
    ("audio.resample", register::<audio::Resample>),
    ("audio.level", register::<audio::Level>),
    ("audio.dynamic_gain", register::<audio::DynamicGain>),
    ("video.grayscale", register::<video_grayscale::Grayscale>),
    ("tensor.normalize", register::<tensor_normalize::Normalize>),
    ("binary.digest", register::<binary_digest::Digest>),
];

/// Every built-in processor on a host named `flowplane-processor`, in the order hosts
/// list them.
pub fn built_ins() -> HostBuilder {
    BUILT_INS.iter().fold(
        HostBuilder::new("flowplane-processor").version(VERSION),
        |builder, (_, register)| register(builder),
    )
}

/// A host of the built-ins named in `names` (`all` among them: every one), for a
/// pipeline service's co-located nodes; an unknown name is an error naming `flag`.
pub fn local_host(names: &[String], flag: &'static str) -> flowplane_sdk::Result<ProcessorHost> {
    let builder = built_ins().host_id("local");
    let builder = if names.iter().any(|n| n == "all") {
        builder
    } else {
        builder.only(names).map_err(|error| match error {
            flowplane_sdk::Error::InvalidConfig { message, .. } => {
                flowplane_sdk::Error::InvalidConfig {
                    setting: flag,
                    message,
                }
            }
            other => other,
        })?
    };
    builder.build()
}

/// The names of every built-in processor.
pub fn names() -> Vec<&'static str> {
    BUILT_INS.iter().map(|(name, _)| *name).collect()
}

/// Parses a JSON document, naming the field and the parser's complaint on failure.
pub(crate) fn parse_json(json: &JsonData) -> Result<serde_json::Value, ProcessError> {
    serde_json::from_str(&json.json).map_err(|e| {
        ProcessError::invalid(
            INVALID_JSON,
            "chunk.buffer.json.json",
            format!("json.json is not valid JSON: {e}"),
        )
    })
}

/// A JSON payload.
pub(crate) fn json_payload(value: &serde_json::Value) -> Payload {
    Payload::Json(JsonData {
        json: value.to_string(),
        schema_hint: String::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_is_its_processors_capability_name() {
        for (name, register) in BUILT_INS {
            let host = register(HostBuilder::new("t")).build().unwrap();
            assert_eq!(host.capabilities()[0].name, *name);
            assert_eq!(host.capabilities()[0].version, VERSION);
        }
        let all = BUILT_INS
            .iter()
            .fold(HostBuilder::new("t"), |b, (_, register)| register(b))
            .build()
            .unwrap();
        assert_eq!(all.capabilities().len(), 10);
    }
}
