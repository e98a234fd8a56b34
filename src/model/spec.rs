//! Names, shapes and element types of a model's inputs and outputs.

use std::fmt;

use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;

/// Element types the runtime exchanges with callers, named as NumPy names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ElementType {
    Bool,
    U8,
    U16,
    U32,
    U64,
    I8,
    I16,
    I32,
    I64,
    F16,
    F32,
    F64,
}

impl ElementType {
    /// Every supported type, for tables and error messages.
    pub const ALL: [ElementType; 12] = [
        ElementType::Bool,
        ElementType::U8,
        ElementType::U16,
        ElementType::U32,
        ElementType::U64,
        ElementType::I8,
        ElementType::I16,
        ElementType::I32,
        ElementType::I64,
        ElementType::F16,
        ElementType::F32,
        ElementType::F64,
    ];

    /// The NumPy name of the type (`"float32"`, `"int64"`, `"bool"`, …).
    pub fn name(self) -> &'static str {
        match self {
            ElementType::Bool => "bool",
            ElementType::U8 => "uint8",
            ElementType::U16 => "uint16",
            ElementType::U32 => "uint32",
            ElementType::U64 => "uint64",
            ElementType::I8 => "int8",
            ElementType::I16 => "int16",
            ElementType::I32 => "int32",
            ElementType::I64 => "int64",
            ElementType::F16 => "float16",
            ElementType::F32 => "float32",
            ElementType::F64 => "float64",
        }
    }

    /// The tract datum type with the same layout.
    pub fn datum_type(self) -> DatumType {
        match self {
            ElementType::Bool => DatumType::Bool,
            ElementType::U8 => DatumType::U8,
            ElementType::U16 => DatumType::U16,
            ElementType::U32 => DatumType::U32,
            ElementType::U64 => DatumType::U64,
            ElementType::I8 => DatumType::I8,
            ElementType::I16 => DatumType::I16,
            ElementType::I32 => DatumType::I32,
            ElementType::I64 => DatumType::I64,
            ElementType::F16 => DatumType::F16,
            ElementType::F32 => DatumType::F32,
            ElementType::F64 => DatumType::F64,
        }
    }

    /// The element type for a tract datum type, if callers can exchange it.
    ///
    /// tract's symbolic dimensions (`TDim`, the output of `Shape` and `Size`) are exchanged as
    /// int64, as in ONNX.
    pub fn from_datum_type(dt: DatumType) -> Option<Self> {
        if dt == DatumType::TDim {
            return Some(ElementType::I64);
        }
        Self::ALL.into_iter().find(|t| t.datum_type() == dt.unquantized())
    }
}

impl fmt::Display for ElementType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One model input or output: its ONNX name, shape (`None` for a dynamic axis) and element type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<Option<usize>>,
    /// For each axis, the name of its symbol when the axis is one plain symbol (`batch`).
    /// Inputs sharing a symbol must agree on its value.
    pub symbols: Vec<Option<String>>,
    /// `None` for a type callers cannot exchange (strings, complex numbers, …).
    pub element_type: Option<ElementType>,
    /// The tract datum type, kept for messages about unusual types.
    pub datum_type: DatumType,
}

impl TensorSpec {
    pub(crate) fn from_fact(name: String, fact: &TypedFact) -> Self {
        let shape = fact
            .shape
            .iter()
            .map(|d| d.to_i64().ok().and_then(|n| usize::try_from(n).ok()))
            .collect();
        let symbols = fact
            .shape
            .iter()
            .map(|d| match d {
                TDim::Sym(symbol) => Some(symbol.to_string()),
                _ => None,
            })
            .collect();
        TensorSpec {
            name,
            shape,
            symbols,
            element_type: ElementType::from_datum_type(fact.datum_type),
            datum_type: fact.datum_type,
        }
    }

    /// The spec of an input of a graph typed per signature, from tract's decoded fact.
    pub(crate) fn from_inference_fact(name: String, fact: &InferenceFact) -> Self {
        let dims: Vec<Option<TDim>> = fact.shape.dims().map(|d| d.concretize()).collect();
        let shape = dims
            .iter()
            .map(|d| d.as_ref().and_then(|d| d.to_i64().ok()).and_then(|n| usize::try_from(n).ok()))
            .collect();
        let symbols = dims
            .iter()
            .map(|d| match d {
                Some(TDim::Sym(symbol)) => Some(symbol.to_string()),
                _ => None,
            })
            .collect();
        let datum_type = fact.datum_type.concretize().unwrap_or(DatumType::F32);
        TensorSpec {
            name,
            shape,
            symbols,
            element_type: ElementType::from_datum_type(datum_type),
            datum_type,
        }
    }

    /// The spec of an output as the ONNX file declares it (`None` for axes it leaves open).
    pub(crate) fn from_value_info(info: &tract_onnx::pb::ValueInfoProto) -> Self {
        use tract_onnx::pb::tensor_shape_proto::dimension::Value;
        use tract_onnx::pb::type_proto::Value as TypeValue;
        let tensor = info.r#type.as_ref().and_then(|t| match &t.value {
            Some(TypeValue::TensorType(tensor)) => Some(tensor),
            _ => None,
        });
        let dims = tensor.and_then(|t| t.shape.as_ref()).map(|s| s.dim.clone()).unwrap_or_default();
        let shape = dims
            .iter()
            .map(|d| match d.value {
                Some(Value::DimValue(v)) if v > 0 => usize::try_from(v).ok(),
                _ => None,
            })
            .collect();
        let symbols = dims
            .iter()
            .map(|d| match &d.value {
                Some(Value::DimParam(p)) if !p.is_empty() => Some(p.clone()),
                _ => None,
            })
            .collect();
        let datum_type = tensor
            .and_then(|t| tract_onnx::pb::tensor_proto::DataType::try_from(t.elem_type).ok())
            .and_then(|t| DatumType::try_from(t).ok())
            .unwrap_or(DatumType::F32);
        TensorSpec {
            name: info.name.clone(),
            shape,
            symbols,
            element_type: ElementType::from_datum_type(datum_type),
            datum_type,
        }
    }

    /// The type name as NumPy spells it, or tract's name for types outside [`ElementType`].
    pub fn type_name(&self) -> String {
        match self.element_type {
            Some(t) => t.name().to_string(),
            None => format!("{:?}", self.datum_type),
        }
    }

    /// The shape as text, `?` for dynamic axes: `[?, 3, 224, 224]`.
    pub fn shape_text(&self) -> String {
        let dims: Vec<String> = self
            .shape
            .iter()
            .map(|d| d.map_or_else(|| "?".to_string(), |n| n.to_string()))
            .collect();
        format!("[{}]", dims.join(", "))
    }
}

impl fmt::Display for TensorSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} {}", self.name, self.type_name(), self.shape_text())
    }
}

/// Runs `$body` with `$T` bound to the Rust type of an [`ElementType`], so one generic code path
/// serves every supported dtype (NumPy conversion, `.npy` files, random inputs).
#[macro_export]
macro_rules! with_element_type {
    ($element:expr, $T:ident => $body:expr) => {
        $crate::with_element_type!($element, $T => $body, float16 => {
            type $T = tract_onnx::prelude::f16;
            $body
        })
    };
    // Variant for code paths that cannot handle float16 (e.g. `.npy` files): `$f16` runs instead.
    ($element:expr, $T:ident => $body:expr, float16 => $f16:expr) => {{
        use $crate::model::ElementType as __E;
        match $element {
            __E::Bool => { type $T = bool; $body }
            __E::U8 => { type $T = u8; $body }
            __E::U16 => { type $T = u16; $body }
            __E::U32 => { type $T = u32; $body }
            __E::U64 => { type $T = u64; $body }
            __E::I8 => { type $T = i8; $body }
            __E::I16 => { type $T = i16; $body }
            __E::I32 => { type $T = i32; $body }
            __E::I64 => { type $T = i64; $body }
            __E::F16 => $f16,
            __E::F32 => { type $T = f32; $body }
            __E::F64 => { type $T = f64; $body }
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for t in ElementType::ALL {
            assert_eq!(ElementType::from_datum_type(t.datum_type()), Some(t));
        }
        assert_eq!(ElementType::from_datum_type(DatumType::String), None);
        assert_eq!(ElementType::from_datum_type(DatumType::TDim), Some(ElementType::I64));
    }
}
