//! `json.calculator`: `{"op": "add"|"sub"|"mul"|"div", "operands": [numbers]}` becomes
//! `{"result": x}`. `sub` and `div` fold from the left (`[a, b, c]` is `a - b - c`).
//! Integer operands give an integer result for add, sub and mul (falling back to floats
//! on i64 overflow); `div` and any float operand give a float. Bad JSON, a bad request
//! and division by zero are per-chunk errors naming what was wrong.

use flowplane_proto::json_type_name;
use flowplane_sdk::{
    Capability, Input, Output, ParamError, Params, ProcessError, Processor,
    proto::data::v1::{DataTypeHint, data_buffer::Payload},
};
use serde_json::{Value, json};

use super::{INVALID_REQUEST, json_payload, parse_json};

/// Reason of a division whose divisor is zero.
pub const DIVISION_BY_ZERO: &str = "DIVISION_BY_ZERO";
/// Reason of a result too large for a JSON number.
pub const NUMERIC_OVERFLOW: &str = "NUMERIC_OVERFLOW";

const FIELD: &str = "chunk.buffer.json.json";

/// Evaluates one arithmetic request per JSON chunk.
pub struct JsonCalculator;

impl Processor for JsonCalculator {
    fn capability() -> Capability {
        Capability::new(
            "json.calculator",
            r#"{"op": "add"|"sub"|"mul"|"div", "operands": [numbers]} -> {"result": x}"#,
        )
        .version(super::VERSION)
        .inline()
        .input("json", [DataTypeHint::Json], "an arithmetic request")
        .output("json", [DataTypeHint::Json], r#"{"result": x}"#)
        .stateless()
    }

    fn create(_params: &Params) -> Result<Self, ParamError> {
        Ok(Self)
    }

    fn process(&mut self, input: Input<'_>) -> Result<Vec<Output>, ProcessError> {
        let Payload::Json(json) = input.payload else {
            return Err(ProcessError::internal("TYPE_MISMATCH", "expected json"));
        };
        let request = parse_json(&json)?;
        let result = calculate(&request)?;
        Ok(vec![Output::new(
            "json",
            json_payload(&json!({ "result": result })),
        )])
    }
}

#[derive(Clone, Copy)]
enum Op {
    Add,
    Sub,
    Mul,
    Div,
}

fn bad(message: String) -> ProcessError {
    ProcessError::invalid(INVALID_REQUEST, FIELD, message)
}

/// Evaluates a request document.
pub fn calculate(request: &Value) -> Result<Value, ProcessError> {
    let Some(object) = request.as_object() else {
        return Err(bad(format!(
            "the request must be a JSON object with \"op\" and \"operands\", got {}",
            json_type_name(request)
        )));
    };
    let op = match object.get("op") {
        Some(Value::String(op)) => match op.as_str() {
            "add" => Op::Add,
            "sub" => Op::Sub,
            "mul" => Op::Mul,
            "div" => Op::Div,
            other => {
                return Err(bad(format!(
                    "\"op\" must be one of add, sub, mul, div; got {other:?}"
                )));
            }
        },
        Some(other) => {
            return Err(bad(format!(
                "\"op\" must be a string, got {}",
                json_type_name(other)
            )));
        }
        None => return Err(bad("\"op\" is missing; use add, sub, mul or div".into())),
    };
    let operands = match object.get("operands") {
        Some(Value::Array(list)) if !list.is_empty() => list,
        Some(Value::Array(_)) => return Err(bad("\"operands\" is empty".into())),
        Some(other) => {
            return Err(bad(format!(
                "\"operands\" must be a list of numbers, got {}",
                json_type_name(other)
            )));
        }
        None => return Err(bad("\"operands\" is missing".into())),
    };
    for (i, operand) in operands.iter().enumerate() {
        if !operand.is_number() {
            return Err(bad(format!(
                "\"operands[{i}]\" must be a number, got {}",
                json_type_name(operand)
            )));
        }
    }
    if let Op::Div = op
        && let Some(i) = operands
            .iter()
            .skip(1)
            .position(|o| o.as_f64() == Some(0.0))
    {
        return Err(ProcessError::invalid(
            DIVISION_BY_ZERO,
            FIELD,
            format!("division by zero: \"operands[{}]\" is 0", i + 1),
        ));
    }
    if !matches!(op, Op::Div)
        && let Some(ints) = operands
            .iter()
            .map(Value::as_i64)
            .collect::<Option<Vec<_>>>()
        && let Some(result) = integer(op, &ints)
    {
        return Ok(Value::from(result));
    }
    let floats: Vec<f64> = operands.iter().filter_map(Value::as_f64).collect();
    let result = floats[1..].iter().fold(floats[0], |acc, x| match op {
        Op::Add => acc + x,
        Op::Sub => acc - x,
        Op::Mul => acc * x,
        Op::Div => acc / x,
    });
    serde_json::Number::from_f64(result)
        .map(Value::Number)
        .ok_or_else(|| {
            ProcessError::invalid(
                NUMERIC_OVERFLOW,
                FIELD,
                format!("the result is {result}, which JSON cannot hold"),
            )
        })
}

/// Checked integer arithmetic; `None` on overflow.
fn integer(op: Op, operands: &[i64]) -> Option<i64> {
    operands[1..]
        .iter()
        .try_fold(operands[0], |acc, x| match op {
            Op::Add => acc.checked_add(*x),
            Op::Sub => acc.checked_sub(*x),
            Op::Mul => acc.checked_mul(*x),
            Op::Div => None,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn calc(request: Value) -> Result<Value, ProcessError> {
        calculate(&request)
    }

    #[test]
    fn integer_and_float_arithmetic() {
        assert_eq!(
            calc(json!({"op": "add", "operands": [1, 2, 3]})).unwrap(),
            json!(6)
        );
        assert_eq!(
            calc(json!({"op": "sub", "operands": [10, 2, 3]})).unwrap(),
            json!(5)
        );
        assert_eq!(
            calc(json!({"op": "mul", "operands": [2, -3, 4]})).unwrap(),
            json!(-24)
        );
        assert_eq!(
            calc(json!({"op": "div", "operands": [7, 2]})).unwrap(),
            json!(3.5)
        );
        assert_eq!(
            calc(json!({"op": "div", "operands": [6, 3]})).unwrap(),
            json!(2.0)
        );
        assert_eq!(
            calc(json!({"op": "add", "operands": [0.5, 0.25]})).unwrap(),
            json!(0.75)
        );
        assert_eq!(
            calc(json!({"op": "add", "operands": [5]})).unwrap(),
            json!(5)
        );
        // i64 overflow falls back to floats.
        assert_eq!(
            calc(json!({"op": "mul", "operands": [i64::MAX, 2]})).unwrap(),
            json!(i64::MAX as f64 * 2.0)
        );
    }

    #[test]
    fn errors_name_what_is_wrong() {
        let cases = [
            (
                json!({"op": "div", "operands": [1, 2, 0]}),
                DIVISION_BY_ZERO,
                "division by zero: \"operands[2]\" is 0",
            ),
            (
                json!({"op": "pow", "operands": [1]}),
                INVALID_REQUEST,
                "\"op\" must be one of add, sub, mul, div; got \"pow\"",
            ),
            (
                json!({"operands": [1]}),
                INVALID_REQUEST,
                "\"op\" is missing; use add, sub, mul or div",
            ),
            (
                json!({"op": "add", "operands": [1, "2"]}),
                INVALID_REQUEST,
                "\"operands[1]\" must be a number, got a string",
            ),
            (
                json!({"op": "add", "operands": []}),
                INVALID_REQUEST,
                "\"operands\" is empty",
            ),
            (
                json!({"op": "add"}),
                INVALID_REQUEST,
                "\"operands\" is missing",
            ),
            (
                json!([1, 2]),
                INVALID_REQUEST,
                "the request must be a JSON object with \"op\" and \"operands\", got a list",
            ),
            (
                json!({"op": "mul", "operands": [1e300, 1e300]}),
                NUMERIC_OVERFLOW,
                "the result is inf, which JSON cannot hold",
            ),
        ];
        for (request, reason, message) in cases {
            let error = calc(request).unwrap_err();
            assert_eq!((error.reason(), error.message()), (reason, message));
            assert_eq!(error.field(), FIELD);
            assert_eq!(error.code(), tonic::Code::InvalidArgument);
        }
    }
}
