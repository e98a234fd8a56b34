//! Checking the inputs of a call against the model's interface, and binding its dynamic axes.

use std::collections::HashMap;

use tract_onnx::prelude::*;

use super::{ElementType, TensorSpec};
use crate::error::{Error, Result};

/// Values of the model's dynamic-axis symbols, sorted by symbol name.
pub type SymbolBindings = Vec<(String, usize)>;

/// Validates every input against its spec and returns the values of the dynamic-axis symbols,
/// which inputs sharing a symbol must agree on.
pub fn bind_inputs(specs: &[TensorSpec], inputs: &[Tensor]) -> Result<SymbolBindings> {
    let mut bound: HashMap<&str, (usize, &str)> = HashMap::new();
    for (spec, tensor) in specs.iter().zip(inputs) {
        check_input(spec, tensor)?;
        for (symbol, &size) in spec.symbols.iter().zip(tensor.shape()) {
            let Some(symbol) = symbol else { continue };
            match bound.get(symbol.as_str()) {
                Some(&(other, other_input)) if other != size => {
                    return Err(Error::input(
                        &spec.name,
                        format!(
                            "axis {symbol:?} is {size} here but {other} in input {other_input:?}"
                        ),
                    ));
                }
                _ => {
                    bound.insert(symbol, (size, &spec.name));
                }
            }
        }
    }
    let mut bindings: SymbolBindings =
        bound.into_iter().map(|(name, (size, _))| (name.to_string(), size)).collect();
    bindings.sort();
    Ok(bindings)
}

/// Checks one input tensor against the model's declaration: element type, rank, fixed axes.
pub fn check_input(spec: &TensorSpec, tensor: &Tensor) -> Result<()> {
    let Some(expected) = spec.element_type else {
        return Err(Error::input(
            &spec.name,
            format!("element type {:?} cannot be passed in", spec.datum_type),
        ));
    };
    if tensor.datum_type() != expected.datum_type() {
        let got = ElementType::from_datum_type(tensor.datum_type())
            .map_or_else(|| format!("{:?}", tensor.datum_type()), |t| t.name().to_string());
        return Err(Error::input(&spec.name, format!("expected dtype {expected}, got {got}")));
    }
    let shape = tensor.shape();
    if shape.len() != spec.shape.len() {
        return Err(Error::input(
            &spec.name,
            format!(
                "expected rank {} (shape {}), got rank {} (shape {:?})",
                spec.shape.len(),
                spec.shape_text(),
                shape.len(),
                shape
            ),
        ));
    }
    for (axis, (want, &got)) in spec.shape.iter().zip(shape).enumerate() {
        if let Some(want) = want {
            if *want != got {
                return Err(Error::input(
                    &spec.name,
                    format!(
                        "axis {axis} must be {want} (shape {}), got shape {shape:?}",
                        spec.shape_text()
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Refuses NaN and ±Inf in a float input, naming the first one's position.
pub fn check_finite(spec: &TensorSpec, tensor: &Tensor) -> Result<()> {
    fn first_bad<T: Datum + Copy>(tensor: &Tensor, finite: impl Fn(T) -> bool) -> Option<usize> {
        /// Values checked at a time without stopping at the first bad one: a plain fold over a
        /// block vectorises, where `position` over the whole input took one value at a time
        /// (~2 % of a MobileNetV2 inference).
        const BLOCK: usize = 4096;
        let view = tensor.to_plain_array_view::<T>().ok()?;
        let Some(values) = view.as_slice() else {
            return view.iter().position(|&v| !finite(v));
        };
        let block =
            values.chunks(BLOCK).position(|b| !b.iter().fold(true, |ok, &v| ok & finite(v)))?;
        let at = values[block * BLOCK..].iter().position(|&v| !finite(v))?;
        Some(block * BLOCK + at)
    }
    let bad = match tensor.datum_type() {
        DatumType::F32 => first_bad::<f32>(tensor, f32::is_finite),
        DatumType::F64 => first_bad::<f64>(tensor, f64::is_finite),
        DatumType::F16 => first_bad::<f16>(tensor, |v| v.is_finite()),
        _ => None,
    };
    match bad {
        None => Ok(()),
        Some(flat) => Err(Error::input(
            &spec.name,
            format!(
                "holds NaN or Inf at flat index {flat} (pass allow_non_finite=True to let it through)"
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> TensorSpec {
        TensorSpec {
            name: "x".into(),
            shape: vec![None],
            symbols: vec![None],
            element_type: Some(ElementType::F32),
            datum_type: f32::datum_type(),
        }
    }

    /// The first NaN or Inf is found wherever it is: in the first block of values checked at
    /// once, in a later one, at the very end; flat indices count in row-major order.
    #[test]
    fn the_first_non_finite_value_is_named() {
        let len = 3 * 4096 + 17;
        for (at, bad) in [(0, f32::NAN), (4095, f32::INFINITY), (9000, f32::NEG_INFINITY)]
            .into_iter()
            .chain([(len - 1, f32::NAN)])
        {
            let mut values = vec![1.5f32; len];
            values[at] = bad;
            values[len - 1] = if at == len - 1 { bad } else { f32::NAN };
            let tensor = Tensor::from_shape(&[len], &values).unwrap();
            let err = check_finite(&spec(), &tensor).unwrap_err().to_string();
            assert!(err.contains(&format!("flat index {at} ")), "{err}");
        }
        let clean = Tensor::from_shape(&[len], &vec![0.25f32; len]).unwrap();
        assert!(check_finite(&spec(), &clean).is_ok());
        // Made from a transposed array: element [1, 2] of a 5 × 3 tensor is flat index 5.
        let mut grid = ndarray::Array2::<f32>::zeros((3, 5));
        grid[[2, 1]] = f32::NAN;
        let tensor = Tensor::from(grid.reversed_axes().into_dyn());
        let err = check_finite(&spec(), &tensor).unwrap_err().to_string();
        assert!(err.contains("flat index 5 "), "{err}");
    }
}
