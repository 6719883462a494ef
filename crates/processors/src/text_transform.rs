//! `text.transform`: upper-cases, lower-cases or reverses text. Case mapping is Unicode's
//! full mapping (`ß` upper-cases to `SS`); reversal is by extended grapheme cluster, so
//! combining marks and emoji sequences stay whole. Case mapping can grow text (up to three
//! times its bytes), so an output over `MAX_PAYLOAD_BYTES` is refused before it is built.

use flowplane_sdk::{
    Capability, Input, Output, Param, ParamError, Params, ProcessError, Processor,
    proto::data::v1::{DataTypeHint, TextData, data_buffer::Payload},
};
use unicode_segmentation::UnicodeSegmentation;

use super::OUTPUT_TOO_LARGE;

/// Most UTF-8 bytes full case mapping makes of one input byte (U+0390, two bytes,
/// upper-cases to three two-byte characters).
const MAX_GROWTH: usize = 3;

/// What to do to the text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Unicode upper case.
    Upper,
    /// Unicode lower case.
    Lower,
    /// Grapheme clusters in reverse order.
    Reverse,
}

/// Transforms each text chunk as `mode` says.
pub struct TextTransform {
    mode: Mode,
}

impl Processor for TextTransform {
    fn capability() -> Capability {
        Capability::new(
            "text.transform",
            "upper-cases, lower-cases or reverses text",
        )
        .version(super::VERSION)
        .inline()
        .input("text", [DataTypeHint::Text], "text to transform")
        .output(
            "text",
            [DataTypeHint::Text],
            "the transformed text, same language tag",
        )
        .param(
            Param::string("mode", "upper, lower, or reverse (by grapheme cluster)")
                .required()
                .one_of(["upper", "lower", "reverse"].map(serde_json::Value::from)),
        )
        .stateless()
    }

    fn create(params: &Params) -> Result<Self, ParamError> {
        let mode = match params.str("mode")? {
            "upper" => Mode::Upper,
            "lower" => Mode::Lower,
            "reverse" => Mode::Reverse,
            other => {
                return Err(ParamError::new(
                    "mode",
                    format!("must be one of upper, lower, reverse; got {other:?}"),
                ));
            }
        };
        Ok(Self { mode })
    }

    fn process(&mut self, input: Input<'_>) -> Result<Vec<Output>, ProcessError> {
        let Payload::Text(text) = input.payload else {
            return Err(ProcessError::internal("TYPE_MISMATCH", "expected text"));
        };
        check_output(self.mode, &text.text, flowplane_grpc::MAX_PAYLOAD_BYTES)?;
        Ok(vec![Output::new(
            "text",
            Payload::Text(TextData {
                text: transform(self.mode, &text.text),
                language: text.language,
            }),
        )])
    }
}

/// Bytes `mode` makes of `text`, counted without building it.
pub fn transformed_len(mode: Mode, text: &str) -> usize {
    match mode {
        Mode::Upper => text
            .chars()
            .flat_map(char::to_uppercase)
            .map(char::len_utf8)
            .sum(),
        Mode::Lower => text
            .chars()
            .flat_map(char::to_lowercase)
            .map(char::len_utf8)
            .sum(),
        Mode::Reverse => text.len(),
    }
}

/// RESOURCE_EXHAUSTED when the transformed text would be over `limit` bytes; counts
/// exactly only when the text could grow past it.
fn check_output(mode: Mode, text: &str, limit: usize) -> Result<(), ProcessError> {
    if text.len().saturating_mul(MAX_GROWTH) <= limit {
        return Ok(());
    }
    let len = transformed_len(mode, text);
    if len > limit {
        return Err(ProcessError::new(
            tonic::Code::ResourceExhausted,
            OUTPUT_TOO_LARGE,
            format!(
                "text.text of {} bytes transforms to {len} bytes, over the limit of {limit} bytes per chunk (MAX_PAYLOAD_BYTES)",
                text.len()
            ),
        )
        .with_field("chunk.buffer.text.text"));
    }
    Ok(())
}

/// Applies `mode` to `text`.
pub fn transform(mode: Mode, text: &str) -> String {
    match mode {
        Mode::Upper => text.to_uppercase(),
        Mode::Lower => text.to_lowercase(),
        Mode::Reverse => text.graphemes(true).rev().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cases_use_the_full_unicode_mapping() {
        assert_eq!(transform(Mode::Upper, "straße"), "STRASSE");
        assert_eq!(transform(Mode::Lower, "ÀÉÎ Ω"), "àéî ω");
    }

    #[test]
    fn reversal_keeps_grapheme_clusters_whole() {
        // "e" + combining acute, and a family emoji joined by ZWJs.
        let text = "ae\u{301}👨\u{200d}👩\u{200d}👧z";
        assert_eq!(
            transform(Mode::Reverse, text),
            "z👨\u{200d}👩\u{200d}👧e\u{301}a"
        );
        assert_eq!(transform(Mode::Reverse, ""), "");
    }

    #[test]
    fn growth_past_the_limit_is_refused_before_building_the_text() {
        // U+0390 upper-cases to three characters of two bytes each.
        let text = "\u{390}".repeat(10);
        assert_eq!(transformed_len(Mode::Upper, &text), 60);
        assert_eq!(transform(Mode::Upper, &text).len(), 60);
        assert!(check_output(Mode::Upper, &text, 60).is_ok());
        let error = check_output(Mode::Upper, &text, 59).unwrap_err();
        assert_eq!(error.code(), tonic::Code::ResourceExhausted);
        assert_eq!(error.field(), "chunk.buffer.text.text");
        assert_eq!(
            error.message(),
            "text.text of 20 bytes transforms to 60 bytes, over the limit of 59 bytes per chunk (MAX_PAYLOAD_BYTES)"
        );
        assert!(check_output(Mode::Reverse, &text, 20).is_ok());
        assert_eq!(transformed_len(Mode::Lower, "\u{130}"), 3);
    }

    #[test]
    fn unknown_modes_are_refused_naming_the_param() {
        let params = Params::from_json(
            serde_json::json!({"mode": "sideways"})
                .as_object()
                .unwrap()
                .clone(),
        );
        let error = TextTransform::create(&params).err().unwrap();
        assert_eq!(error.param(), "mode");
        assert_eq!(
            error.message(),
            "must be one of upper, lower, reverse; got \"sideways\""
        );
    }
}
