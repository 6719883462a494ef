//! `tensor.normalize`: zero mean, unit variance over all elements of an F32 or F64
//! tensor, keeping shape and dtype. Statistics are computed in f64 with the population
//! variance (divide by N). A constant tensor (variance 0) becomes all zeros.

use flowplane_sdk::{
    Capability, Input, Output, ParamError, Params, ProcessError, Processor,
    payload::{decode_float_tensor, encode_float_tensor},
    proto::data::v1::{DataTypeHint, TensorBuffer, TensorDtype, data_buffer::Payload},
};

/// Normalizes each tensor chunk.
pub struct Normalize;

impl Processor for Normalize {
    fn capability() -> Capability {
        Capability::new(
            "tensor.normalize",
            "zero mean, unit (population) variance over all elements; f32 and f64",
        )
        .version(super::VERSION)
        .input("tensor", [DataTypeHint::Tensor], "an f32 or f64 tensor")
        .output(
            "tensor",
            [DataTypeHint::Tensor],
            "the normalized tensor, same shape and dtype",
        )
        .stateless()
    }

    fn create(_params: &Params) -> Result<Self, ParamError> {
        Ok(Self)
    }

    fn process(&mut self, input: Input<'_>) -> Result<Vec<Output>, ProcessError> {
        let Payload::Tensor(tensor) = input.payload else {
            return Err(ProcessError::internal("TYPE_MISMATCH", "expected a tensor"));
        };
        let values = decode_float_tensor(&tensor)?;
        let normalized = normalize(&values);
        let dtype = TensorDtype::try_from(tensor.dtype).unwrap_or(TensorDtype::F64);
        Ok(vec![Output::new(
            "tensor",
            Payload::Tensor(TensorBuffer {
                data: encode_float_tensor(dtype, &normalized),
                shape: tensor.shape,
                dtype: tensor.dtype,
            }),
        )])
    }
}

/// `(x - mean) / std`, or zeros when the standard deviation is 0.
pub fn normalize(values: &[f64]) -> Vec<f64> {
    if values.is_empty() {
        return Vec::new();
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let variance = values.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
    let std = variance.sqrt();
    if std == 0.0 {
        return vec![0.0; values.len()];
    }
    values.iter().map(|x| (x - mean) / std).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values_normalize_exactly() {
        // mean 5, population variance 4, std 2.
        assert_eq!(
            normalize(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]),
            [-1.5, -0.5, -0.5, -0.5, 0.0, 0.0, 1.0, 2.0]
        );
        assert_eq!(normalize(&[3.0, 3.0]), [0.0, 0.0]);
        assert!(normalize(&[]).is_empty());
    }
}
