//! `text.transform`: upper-cases, lower-cases or reverses text. Case mapping is Unicode's
//! full mapping (`ß` upper-cases to `SS`); reversal is by extended grapheme cluster, so
//! combining marks and emoji sequences stay whole.

use flowplane_sdk::{
    Capability, Input, Output, Param, ParamError, Params, ProcessError, Processor,
    proto::data::v1::{DataTypeHint, TextData, data_buffer::Payload},
};
use unicode_segmentation::UnicodeSegmentation;

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
        .input("text", [DataTypeHint::Text], "text to transform")
        .output(
            "text",
            [DataTypeHint::Text],
            "the transformed text, same language tag",
        )
        .param(Param::string("mode", "upper, lower, or reverse (by grapheme cluster)").required())
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
        Ok(vec![Output::new(
            "text",
            Payload::Text(TextData {
                text: transform(self.mode, &text.text),
                language: text.language,
            }),
        )])
    }
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
