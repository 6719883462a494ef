//! Processor parameters: the `google.protobuf.Struct` of a stream's init, checked once
//! against the declared [`ParamSpec`]s (unknown names, missing required ones, JSON types,
//! declared allowed values) with defaults filled in. Ranges belong to the processor.

use flowplane_proto::{json_type_name, processor::v1::ParamSpec};
use prost_types::Struct;
use serde_json::{Map, Value};

use crate::ParamError;

/// Validated parameters of one stream.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Params {
    values: Map<String, Value>,
}

impl Params {
    /// Parameters from a JSON object, unchecked: for tests and for calling `create` directly.
    pub fn from_json(values: Map<String, Value>) -> Self {
        Self { values }
    }

    /// Checks `raw` against `specs`: every name must be declared, required ones present,
    /// each value of its declared JSON type; absent ones take their default. A JSON `null`
    /// counts as absent.
    pub fn validate(specs: &[ParamSpec], raw: Option<&Struct>) -> Result<Self, ParamError> {
        let mut values = Map::new();
        if let Some(raw) = raw {
            for (name, value) in &raw.fields {
                let Some(spec) = specs.iter().find(|s| &s.name == name) else {
                    let known: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
                    let known = if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    };
                    return Err(ParamError::new(
                        name,
                        format!("unknown param; known params: {known}"),
                    ));
                };
                let value = flowplane_proto::value_to_json(value);
                if value.is_null() {
                    continue;
                }
                if !flowplane_proto::param_type_matches(&spec.r#type, &value) {
                    return Err(ParamError::new(
                        name,
                        format!("must be a {}, got {}", spec.r#type, json_type_name(&value)),
                    ));
                }
                if !flowplane_proto::param_value_allowed(&spec.allowed_values, &value) {
                    let allowed: Vec<String> = spec
                        .allowed_values
                        .iter()
                        .map(|a| flowplane_proto::value_to_json(a).to_string())
                        .collect();
                    return Err(ParamError::new(
                        name,
                        format!("must be one of {}, got {value}", allowed.join(", ")),
                    ));
                }
                values.insert(name.clone(), value);
            }
        }
        for spec in specs {
            if values.contains_key(&spec.name) {
                continue;
            }
            if let Some(default) = spec
                .default_value
                .as_ref()
                .map(flowplane_proto::value_to_json)
                && !default.is_null()
            {
                values.insert(spec.name.clone(), default);
                continue;
            }
            if spec.required {
                return Err(ParamError::new(
                    &spec.name,
                    format!("is required ({})", spec.description),
                ));
            }
        }
        Ok(Self { values })
    }

    /// The raw value, if given or defaulted.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.values.get(name)
    }

    /// A number param; fails naming it when absent or not a number.
    pub fn f64(&self, name: &str) -> Result<f64, ParamError> {
        self.require(name)?
            .as_f64()
            .ok_or_else(|| ParamError::new(name, "must be a number"))
    }

    /// A number param that must be a whole number >= 0.
    pub fn u64(&self, name: &str) -> Result<u64, ParamError> {
        let value = self.require(name)?;
        if let Some(n) = value.as_u64() {
            return Ok(n);
        }
        // google.protobuf.Value carries every number as a double.
        match value.as_f64() {
            Some(f) if f >= 0.0 && f.fract() == 0.0 && f < u64::MAX as f64 => Ok(f as u64),
            _ => Err(ParamError::new(
                name,
                format!("must be a whole number >= 0, got {value}"),
            )),
        }
    }

    /// A string param.
    pub fn str(&self, name: &str) -> Result<&str, ParamError> {
        self.require(name)?
            .as_str()
            .ok_or_else(|| ParamError::new(name, "must be a string"))
    }

    /// A bool param.
    pub fn bool(&self, name: &str) -> Result<bool, ParamError> {
        self.require(name)?
            .as_bool()
            .ok_or_else(|| ParamError::new(name, "must be a bool"))
    }

    fn require(&self, name: &str) -> Result<&Value, ParamError> {
        self.values
            .get(name)
            .ok_or_else(|| ParamError::new(name, "is required"))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::Param;

    fn specs() -> Vec<ParamSpec> {
        vec![
            Param::number("gain_db", "gain in decibels")
                .required()
                .to_proto(),
            Param::string("mode", "upper or lower")
                .default(json!("upper"))
                .to_proto(),
        ]
    }

    fn raw(value: Value) -> Struct {
        flowplane_proto::json_to_struct(value.as_object().unwrap())
    }

    #[test]
    fn fills_defaults_and_keeps_given_values() {
        let params = Params::validate(&specs(), Some(&raw(json!({"gain_db": 6})))).unwrap();
        assert_eq!(params.f64("gain_db").unwrap(), 6.0);
        assert_eq!(params.u64("gain_db").unwrap(), 6);
        assert_eq!(params.str("mode").unwrap(), "upper");
    }

    #[test]
    fn a_value_outside_the_declared_ones_is_refused_naming_them() {
        let specs = vec![
            Param::string("mode", "upper or lower")
                .one_of([json!("upper"), json!("lower")])
                .to_proto(),
        ];
        let refused = Params::validate(&specs, Some(&raw(json!({"mode": "shout"})))).unwrap_err();
        assert_eq!(refused.param(), "mode");
        assert!(
            refused.message().contains("\"upper\", \"lower\""),
            "{refused}"
        );
        assert!(refused.message().contains("shout"), "{refused}");
        let kept = Params::validate(&specs, Some(&raw(json!({"mode": "lower"})))).unwrap();
        assert_eq!(kept.str("mode").unwrap(), "lower");
    }

    #[test]
    fn rejects_missing_unknown_and_mistyped_params_naming_them() {
        let missing = Params::validate(&specs(), None).unwrap_err();
        assert_eq!(missing.param(), "gain_db");
        assert!(missing.message().contains("required"));

        let unknown =
            Params::validate(&specs(), Some(&raw(json!({"gain_db": 1, "gian": 2})))).unwrap_err();
        assert_eq!(unknown.param(), "gian");
        assert!(unknown.message().contains("gain_db, mode"), "{unknown}");

        let mistyped =
            Params::validate(&specs(), Some(&raw(json!({"gain_db": "loud"})))).unwrap_err();
        assert_eq!(
            mistyped.to_string(),
            "invalid param \"gain_db\": must be a number, got a string"
        );
    }

    #[test]
    fn u64_rejects_fractions_and_negatives() {
        let params = Params::from_json(
            json!({"a": 1.5, "b": -2, "c": 48000.0})
                .as_object()
                .unwrap()
                .clone(),
        );
        assert!(params.u64("a").is_err());
        assert!(params.u64("b").is_err());
        assert_eq!(params.u64("c").unwrap(), 48000);
    }
}
