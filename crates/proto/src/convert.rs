//! Small wire helpers every crate needs the same way: what type a payload is, how big it
//! is, whether a declared port accepts it, and `google.protobuf.Struct` <-> JSON. No
//! validation policy lives here; callers decide what is an error.

use prost_types::{ListValue, Struct, Value, value::Kind};

use crate::{
    common::v1::{ComponentKind, HealthStatus},
    data::v1::{DataBuffer, DataTypeHint, data_buffer::Payload},
};

impl Payload {
    /// The type hint naming this payload's variant.
    pub fn type_hint(&self) -> DataTypeHint {
        match self {
            Payload::Audio(_) => DataTypeHint::Audio,
            Payload::Video(_) => DataTypeHint::Video,
            Payload::Tensor(_) => DataTypeHint::Tensor,
            Payload::Json(_) => DataTypeHint::Json,
            Payload::Text(_) => DataTypeHint::Text,
            Payload::Binary(_) => DataTypeHint::Binary,
        }
    }

    /// Bytes the payload carries (samples, pixels, elements, text), without framing.
    pub fn payload_len(&self) -> usize {
        match self {
            Payload::Audio(a) => a.samples.len(),
            Payload::Video(v) => v.pixels.len(),
            Payload::Tensor(t) => t.data.len(),
            Payload::Json(j) => j.json.len(),
            Payload::Text(t) => t.text.len(),
            Payload::Binary(b) => b.data.len(),
        }
    }
}

impl From<Payload> for DataBuffer {
    /// A buffer carrying `payload` and no metadata.
    fn from(payload: Payload) -> Self {
        DataBuffer {
            payload: Some(payload),
            metadata: Default::default(),
        }
    }
}

impl DataBuffer {
    /// The payload's type, or UNSPECIFIED when no payload is set.
    pub fn type_hint(&self) -> DataTypeHint {
        self.payload
            .as_ref()
            .map_or(DataTypeHint::Unspecified, Payload::type_hint)
    }

    /// Bytes the payload carries; 0 when none is set.
    pub fn payload_len(&self) -> usize {
        self.payload.as_ref().map_or(0, Payload::payload_len)
    }
}

impl DataTypeHint {
    /// True when a port declaring `self` takes a payload of type `actual`.
    pub fn accepts(self, actual: DataTypeHint) -> bool {
        actual != DataTypeHint::Unspecified
            && (self == DataTypeHint::Any || actual == DataTypeHint::Any || self == actual)
    }

    /// Lowercase name for messages: "audio", "json", "any".
    pub fn short_name(self) -> &'static str {
        match self {
            DataTypeHint::Unspecified => "unspecified",
            DataTypeHint::Audio => "audio",
            DataTypeHint::Video => "video",
            DataTypeHint::Tensor => "tensor",
            DataTypeHint::Json => "json",
            DataTypeHint::Text => "text",
            DataTypeHint::Binary => "binary",
            DataTypeHint::Any => "any",
        }
    }
}

impl ComponentKind {
    /// The bounded lowercase name of a kind, for metrics, logs, assigned ids and the CLI:
    /// "processor", "source", "consumer", "unspecified".
    pub fn label(self) -> &'static str {
        match self {
            ComponentKind::Unspecified => "unspecified",
            ComponentKind::Processor => "processor",
            ComponentKind::Source => "source",
            ComponentKind::Consumer => "consumer",
        }
    }
}

impl HealthStatus {
    /// The bounded lowercase name of a status, for metrics, logs and the CLI: "healthy", ...
    pub fn label(self) -> &'static str {
        match self {
            HealthStatus::Unspecified => "unspecified",
            HealthStatus::Starting => "starting",
            HealthStatus::Healthy => "healthy",
            HealthStatus::Degraded => "degraded",
            HealthStatus::Unhealthy => "unhealthy",
            HealthStatus::Stopping => "stopping",
        }
    }
}

/// True when any declared type in `declared` accepts `actual`.
pub fn any_accepts(declared: &[i32], actual: DataTypeHint) -> bool {
    declared
        .iter()
        .filter_map(|t| DataTypeHint::try_from(*t).ok())
        .any(|t| t.accepts(actual))
}

/// "{audio, json}" for messages.
pub fn type_set_name(declared: &[i32]) -> String {
    let names: Vec<&str> = declared
        .iter()
        .map(|t| DataTypeHint::try_from(*t).map_or("unknown", DataTypeHint::short_name))
        .collect();
    format!("{{{}}}", names.join(", "))
}

/// True when `value` has the JSON type a `ParamSpec.type` declares ("number", "string",
/// "bool", "object", "list"). An empty or unknown declared type is not checked here: the
/// processor checks it itself.
pub fn param_type_matches(declared: &str, value: &serde_json::Value) -> bool {
    match declared {
        "number" => value.is_number(),
        "string" => value.is_string(),
        "bool" => value.is_boolean(),
        "object" => value.is_object(),
        "list" => value.is_array(),
        _ => true,
    }
}

/// The JSON type of `value` with its article, for messages: "a number", "an object", "null".
pub fn json_type_name(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a bool",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "a list",
        serde_json::Value::Object(_) => "an object",
    }
}

/// True when `value` is one of a `ParamSpec`'s `allowed_values` (numbers by value, so a
/// YAML `-6` matches a declared `-6.0`), or when the spec allows any value (none listed).
pub fn param_value_allowed(allowed: &[Value], value: &serde_json::Value) -> bool {
    allowed.is_empty()
        || allowed
            .iter()
            .map(value_to_json)
            .any(|a| match (a.as_f64(), value.as_f64()) {
                (Some(x), Some(y)) => x == y,
                _ => a == *value,
            })
}

/// A `google.protobuf.Struct` as a JSON object.
pub fn struct_to_json(value: &Struct) -> serde_json::Map<String, serde_json::Value> {
    value
        .fields
        .iter()
        .map(|(k, v)| (k.clone(), value_to_json(v)))
        .collect()
}

/// A `google.protobuf.Value` as JSON. Numbers are doubles on the wire.
pub fn value_to_json(value: &Value) -> serde_json::Value {
    match &value.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::NumberValue(n)) => serde_json::Number::from_f64(*n)
            .map_or(serde_json::Value::Null, serde_json::Value::Number),
        Some(Kind::StringValue(s)) => serde_json::Value::String(s.clone()),
        Some(Kind::BoolValue(b)) => serde_json::Value::Bool(*b),
        Some(Kind::StructValue(s)) => serde_json::Value::Object(struct_to_json(s)),
        Some(Kind::ListValue(l)) => {
            serde_json::Value::Array(l.values.iter().map(value_to_json).collect())
        }
    }
}

/// A JSON object as a `google.protobuf.Struct`.
pub fn json_to_struct(map: &serde_json::Map<String, serde_json::Value>) -> Struct {
    Struct {
        fields: map
            .iter()
            .map(|(k, v)| (k.clone(), json_to_value(v)))
            .collect(),
    }
}

/// JSON as a `google.protobuf.Value`. Integers become doubles, as the wire type demands.
pub fn json_to_value(value: &serde_json::Value) -> Value {
    let kind = match value {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(*b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(f64::NAN)),
        serde_json::Value::String(s) => Kind::StringValue(s.clone()),
        serde_json::Value::Array(a) => Kind::ListValue(ListValue {
            values: a.iter().map(json_to_value).collect(),
        }),
        serde_json::Value::Object(o) => Kind::StructValue(json_to_struct(o)),
    };
    Value { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::v1::{JsonData, TextData};

    #[test]
    fn struct_round_trips_through_json() {
        let json = serde_json::json!({"gain_db": -6.5, "mode": "upper", "on": true,
            "list": [1.0, "a", null], "nested": {"k": 2.0}});
        let map = json.as_object().unwrap();
        assert_eq!(&struct_to_json(&json_to_struct(map)), map);
    }

    #[test]
    fn any_matches_every_concrete_type_but_not_unspecified() {
        assert!(DataTypeHint::Any.accepts(DataTypeHint::Audio));
        assert!(DataTypeHint::Json.accepts(DataTypeHint::Any));
        assert!(!DataTypeHint::Json.accepts(DataTypeHint::Text));
        assert!(!DataTypeHint::Any.accepts(DataTypeHint::Unspecified));
        let declared = [DataTypeHint::Audio as i32, DataTypeHint::Json as i32];
        assert!(any_accepts(&declared, DataTypeHint::Json));
        assert!(!any_accepts(&declared, DataTypeHint::Video));
        assert_eq!(type_set_name(&declared), "{audio, json}");
    }

    #[test]
    fn payload_reports_type_and_length() {
        let text = DataBuffer {
            payload: Some(Payload::Text(TextData {
                text: "héllo".into(),
                language: String::new(),
            })),
            ..Default::default()
        };
        assert_eq!(text.type_hint(), DataTypeHint::Text);
        assert_eq!(text.payload_len(), 6);
        let json = Payload::Json(JsonData::default());
        assert_eq!(json.type_hint(), DataTypeHint::Json);
        assert_eq!(DataBuffer::default().type_hint(), DataTypeHint::Unspecified);
    }
}
