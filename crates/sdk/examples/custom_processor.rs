//! A complete custom processor, ready to copy: `text.word_count` counts the words of each
//! text chunk and keeps a running total per stream.
//!
//! Run it on its own, or registered with a control plane:
//!
//! ```sh
//! cargo run -p flowplane-sdk --example custom_processor
//! FLOWPLANE_CONTROL_PLANE=127.0.0.1:50051 cargo run -p flowplane-sdk --example custom_processor
//! ```
//!
//! Settings come from the environment: `FLOWPLANE_LISTEN` (default 127.0.0.1:50071),
//! `FLOWPLANE_ADVERTISE`, `FLOWPLANE_CONTROL_PLANE`, `FLOWPLANE_ID`,
//! `FLOWPLANE_JOIN_TOKEN` and `FLOWPLANE_TOKEN_FILE` (tokens by role; see Security in the
//! top-level README). Ctrl-C or SIGTERM deregisters it and drains its streams.

use flowplane_sdk::{
    Capability, Input, Output, Param, ParamError, Params, ProcessError, Processor, ProcessorHost,
    RegistrationConfig, ServeOptions,
    proto::data::v1::{DataTypeHint, JsonData, data_buffer::Payload},
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
fn host() -> flowplane_sdk::Result<ProcessorHost> {
    ProcessorHost::builder("word-count-example")
        .processor::<WordCount>()
        .build()
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().init();
    let listen = env("FLOWPLANE_LISTEN").unwrap_or_else(|| "127.0.0.1:50071".into());
    let registration = env("FLOWPLANE_CONTROL_PLANE").map(|control_plane| {
        let mut registration = RegistrationConfig::new(control_plane);
        registration.processor_id = env("FLOWPLANE_ID");
        registration.join_token = env("FLOWPLANE_JOIN_TOKEN");
        registration
    });
    // A token file makes Process and GetCapabilities need a token with role process.
    let tokens = env("FLOWPLANE_TOKEN_FILE")
        .map(|path| flowplane_grpc::auth::Tokens::load(path.as_ref()))
        .transpose()?;
    let options = ServeOptions {
        advertise: env("FLOWPLANE_ADVERTISE"),
        registration,
        tokens,
        ..ServeOptions::default()
    };
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    let shutdown = flowplane_grpc::shutdown::on_signals();
    flowplane_sdk::serve(host()?, options, listener, shutdown.cancelled_owned()).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use flowplane_sdk::{
        client::{ProcessStream, chunk, init},
        proto::{data::v1::TextData, processor::v1::ProcessResult},
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

    #[tokio::test]
    async fn counts_words_over_a_real_process_stream() {
        let listener = flowplane_test_support::local_listener().await;
        let addr = listener.local_addr().unwrap();
        let stop = tokio_util::sync::CancellationToken::new();
        let server = tokio::spawn(flowplane_sdk::serve(
            host().unwrap(),
            ServeOptions::default(),
            listener,
            stop.clone().cancelled_owned(),
        ));
        let channel = flowplane_grpc::client::connect(&addr.to_string(), &Default::default())
            .await
            .unwrap();
        let params = serde_json::json!({"min_length": 2, "max_chars": 20});
        let (mut stream, _ready) =
            ProcessStream::open(channel.clone(), init("text.word_count", "wc", params))
                .await
                .unwrap();

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

        let refused = ProcessStream::open(
            channel,
            init(
                "text.word_count",
                "wc",
                serde_json::json!({"min_length": 0}),
            ),
        )
        .await
        .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
        assert!(refused.message().contains("\"min_length\""), "{refused:?}");

        drop(stream);
        stop.cancel();
        server.await.unwrap().unwrap();
    }
}
