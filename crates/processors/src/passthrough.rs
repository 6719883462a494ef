//! `passthrough`: returns every chunk unchanged. Benchmarks push it hard, so it moves the
//! payload through without copying (`bytes::Bytes` fields are reference-counted).

use flowplane_sdk::{
    Capability, Input, Output, ParamError, Params, ProcessError, Processor,
    proto::data::v1::DataTypeHint,
};

/// Returns each payload unchanged on output `data`.
pub struct Passthrough;

impl Processor for Passthrough {
    fn capability() -> Capability {
        Capability::new("passthrough", "returns every chunk unchanged")
            .version(super::VERSION)
            .inline()
            .input("data", [DataTypeHint::Any], "any payload")
            .output("data", [DataTypeHint::Any], "the same payload, unchanged")
            .stateless()
    }

    fn create(_params: &Params) -> Result<Self, ParamError> {
        Ok(Self)
    }

    fn process(&mut self, input: Input<'_>) -> Result<Vec<Output>, ProcessError> {
        Ok(vec![Output::new("data", input.payload)])
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use flowplane_sdk::proto::data::v1::{BinaryData, data_buffer::Payload};

    use super::*;

    #[test]
    fn hands_back_the_same_bytes_without_copying() {
        let data = Bytes::from(vec![1u8; 65536]);
        let mut p = Passthrough;
        let out = p
            .process(Input {
                port: "data",
                sequence: 0,
                payload: Payload::Binary(BinaryData {
                    data: data.clone(),
                    mime_type: "application/octet-stream".into(),
                }),
            })
            .unwrap();
        let Payload::Binary(b) = &out[0].payload else {
            panic!("not binary")
        };
        assert_eq!(b.data.as_ptr(), data.as_ptr(), "the payload was copied");
        assert_eq!(b.mime_type, "application/octet-stream");
    }
}
