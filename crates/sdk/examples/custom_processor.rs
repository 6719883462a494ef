//! A complete custom processor, ready to copy: `text.word_count` counts the words of each
//! text chunk and keeps a running total per stream. `main` is one call: the binary takes
//! every flag the built-in `flowplane-processor` takes (`--help` lists them) and serves
//! with logs, traces, /metrics, registration and a graceful drain like it.
//!
//! ```sh
//! cargo run -p flowplane-sdk --example custom_processor              # a free port, logged
//! cargo run -p flowplane-sdk --example custom_processor -- \
//!     --listen 127.0.0.1:50081 --control-plane http://127.0.0.1:50051 \
//!     --id word-count-1 --metrics-listen 127.0.0.1:9181
//! ```
//!
//! Without `--listen` it listens on a port the OS picks on 127.0.0.1 (so it never takes
//! the control plane's 50051, the built-in host's 50061 or the pipeline's 50071), logs
//! it and registers it. Ctrl-C or SIGTERM deregisters it and drains its streams.

use std::process::ExitCode;

use flowplane_sdk::{
    Capability, HostBuilder, Input, Output, Param, ParamError, Params, ProcessError, Processor,
    proto::data::v1::{DataTypeHint, JsonData, data_buffer::Payload},
    serde_json,
};

/// One instance per `Process` stream: `total` is this stream's running count.
struct WordCount {
    min_length: usize,
    max_chars: usize,
    total: u64,
}

impl Processor for WordCount {
    /// What the processor is: the host shows this in `GetCapabilities` and registers it
    /// with the control plane, and checks every chunk against the input's types.
    fn capability() -> Capability {
        Capability::new(
            "text.word_count",
            "counts words, with a running total per stream",
        )
        .version("1.0.0")
        .input("text", [DataTypeHint::Text], "text to count")
        .output(
            "counts",
            [DataTypeHint::Json],
            r#"{"words": n, "total": n}"#,
        )
        .param(
            Param::number("min_length", "shortest word counted, in characters")
                .default(serde_json::json!(1)),
        )
        .param(
            Param::number("max_chars", "longest text accepted, in characters")
                .default(serde_json::json!(10_000)),
        )
        // Not `.stateless()`: the running total depends on earlier chunks.
    }

    /// Called once per stream, with params already checked against the declared types
    /// and defaults filled in. Check ranges here; an error refuses the stream with
    /// INVALID_ARGUMENT naming the param.
    fn create(params: &Params) -> Result<Self, ParamError> {
        let min_length = params.u64("min_length")?;
        if min_length == 0 {
            return Err(ParamError::new("min_length", "must be at least 1"));
        }
        Ok(Self {
            min_length: min_length as usize,
            max_chars: params.u64("max_chars")? as usize,
            total: 0,
        })
    }

    /// Called for every chunk, in order. An `Err` answers this chunk with an error and
    /// the stream goes on; a panic would end only this stream, with INTERNAL.
    fn process(&mut self, input: Input<'_>) -> Result<Vec<Output>, ProcessError> {
        // The host only passes the declared types, so this is the only case.
        let Payload::Text(text) = input.payload else {
            return Err(ProcessError::internal("TYPE_MISMATCH", "expected text"));
        };
        let chars = text.text.chars().count();
        if chars > self.max_chars {
            return Err(ProcessError::invalid(
                "TEXT_TOO_LONG",
                "chunk.buffer.text.text",
                format!(
                    "text has {chars} characters, over max_chars {}",
                    self.max_chars
                ),
            ));
        }
        let words = text
            .text
            .split_whitespace()
            .filter(|w| w.chars().count() >= self.min_length)
            .count() as u64;
        self.total += words;
        let counts = serde_json::json!({ "words": words, "total": self.total });
        Ok(vec![Output::new(
            "counts",
            Payload::Json(JsonData {
                json: counts.to_string(),
                schema_hint: String::new(),
            }),
        )])
    }
}

/// The host serving this processor; add more with further `.processor::<T>()` calls.
/// Its name is the binary's name in `--help`, logs and traces.
fn host() -> HostBuilder {
    HostBuilder::new("word-count-example")
        .version(env!("CARGO_PKG_VERSION"))
        .processor::<WordCount>()
}

fn main() -> ExitCode {
    flowplane_sdk::main(host())
}

#[cfg(test)]
mod tests {
    use flowplane_sdk::{
        client::chunk,
        proto::{data::v1::TextData, processor::v1::ProcessResult},
        testing::LocalHost,
    };

    use super::*;

    fn text(s: &str) -> Payload {
        Payload::Text(TextData {
            text: s.into(),
            language: String::new(),
        })
    }

    fn counts(result: &ProcessResult) -> serde_json::Value {
        let chunk = result.outputs[0].chunk.as_ref().unwrap();
        let Some(Payload::Json(json)) = chunk.buffer.as_ref().unwrap().payload.as_ref() else {
            panic!("not json")
        };
        serde_json::from_str(&json.json).unwrap()
    }

    // `flowplane_sdk::tokio` is tokio itself: no second dependency needed for tests.
    #[flowplane_sdk::tokio::test(crate = "flowplane_sdk::tokio")]
    async fn counts_words_over_a_real_process_stream() {
        let server = LocalHost::start(host().build().unwrap()).await.unwrap();
        let params = serde_json::json!({"min_length": 2, "max_chars": 20});
        let (mut stream, _ready) = server.open("text.word_count", "wc", params).await.unwrap();

        stream
            .send(chunk(1, "", text("a quick brown fox")))
            .await
            .unwrap();
        let first = stream.result().await.unwrap().unwrap();
        assert_eq!(counts(&first), serde_json::json!({"words": 3, "total": 3}));

        stream
            .send(chunk(2, "", text("x".repeat(21).as_str())))
            .await
            .unwrap();
        let too_long = stream.result().await.unwrap().unwrap();
        assert_eq!(too_long.error.unwrap().reason, "TEXT_TOO_LONG");

        stream.send(chunk(3, "", text("jumps over"))).await.unwrap();
        let third = stream.result().await.unwrap().unwrap();
        assert_eq!(counts(&third), serde_json::json!({"words": 2, "total": 5}));

        let refused = server
            .open(
                "text.word_count",
                "wc",
                serde_json::json!({"min_length": 0}),
            )
            .await
            .unwrap_err();
        assert_eq!(refused.code(), flowplane_sdk::tonic::Code::InvalidArgument);
        assert!(refused.message().contains("\"min_length\""), "{refused:?}");

        drop(stream);
        server.stop().await.unwrap();
    }
}
