//! `binary.digest`: the SHA-256 of each binary payload, as lowercase hex text.

use flowplane_sdk::{
    Capability, Input, Output, ParamError, Params, ProcessError, Processor,
    proto::data::v1::{DataTypeHint, TextData, data_buffer::Payload},
};
use sha2::{Digest as _, Sha256};

/// Answers each binary chunk with the SHA-256 of its bytes.
pub struct Digest;

impl Processor for Digest {
    fn capability() -> Capability {
        Capability::new(
            "binary.digest",
            "SHA-256 of the bytes, as lowercase hex text",
        )
        .version(super::VERSION)
        .input("data", [DataTypeHint::Binary], "bytes to digest")
        .output("digest", [DataTypeHint::Text], "64 lowercase hex digits")
        .stateless()
    }

    fn create(_params: &Params) -> Result<Self, ParamError> {
        Ok(Self)
    }

    fn process(&mut self, input: Input<'_>) -> Result<Vec<Output>, ProcessError> {
        let Payload::Binary(binary) = input.payload else {
            return Err(ProcessError::internal("TYPE_MISMATCH", "expected binary"));
        };
        let digest = hex::encode(Sha256::digest(&binary.data));
        Ok(vec![Output::new(
            "digest",
            Payload::Text(TextData {
                text: digest,
                language: String::new(),
            }),
        )])
    }
}
