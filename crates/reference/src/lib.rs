//! An independent float reference: the ONNX model run by tract-onnx, to compare with
//! fhec's own importer and float interpreter (`frontend_onnx::interp`). An import bug
//! would otherwise show up identically in `--mode clear` and in simulation; tract reads
//! the protobuf and implements the operators on its own.
//!
//! tract does not run everything fhec imports (ai.onnx.ml tree ensembles and
//! regressors, ZipMap, Scaler, QONNX's `Quant`): [`run`] then says so, and the caller
//! reports that the model has no independent reference.

// No panic on user input (docs/ARCHITECTURE.md), as in every library crate.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

use fhec_frontend_onnx::{DType, FloatGraph, Tensor};
use tract_onnx::prelude::*;

/// The engine, for reports.
pub const ENGINE: &str = "tract-onnx 0.23";

#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    /// tract cannot load, optimise or run the model (an operator it lacks, usually).
    #[error("tract cannot run this model: {0}")]
    Unsupported(String),
    #[error("{0}")]
    Mismatch(String),
}

fn unsupported(e: TractError) -> ReferenceError {
    // the whole chain: the outer context says what tract did, the inner cause why
    let chain: Vec<String> = e.chain().map(|c| c.to_string()).collect();
    ReferenceError::Unsupported(chain.join(": ").replace('\n', " "))
}

/// Runs every sample (one tensor per model input, batch dimension 1) through tract;
/// returns one tensor per model output per sample, in the graph's output order.
/// `model_dir` is the directory of the model file, where tract reads its external data.
pub fn run(
    onnx: &[u8],
    model_dir: Option<&std::path::Path>,
    graph: &FloatGraph,
    samples: &[Vec<Tensor>],
) -> Result<Vec<Vec<Tensor>>, ReferenceError> {
    let onnx_framework = tract_onnx::onnx();
    let proto = onnx_framework
        .proto_model_for_read(&mut &onnx[..])
        .map_err(unsupported)?;
    let parsed = onnx_framework
        .parse(&proto, model_dir.and_then(|d| d.to_str()))
        .map_err(unsupported)?;
    if !parsed.unresolved_inputs.is_empty() {
        return Err(ReferenceError::Unsupported(format!(
            "inputs {:?} are not resolved",
            parsed.unresolved_inputs
        )));
    }
    let mut model = parsed.model;
    for (i, &v) in graph.inputs.iter().enumerate() {
        let info = graph.value(v);
        let fact = InferenceFact::dt_shape(datum_type(info.dtype), info.shape.clone());
        model.set_input_fact(i, fact).map_err(unsupported)?;
    }
    let plan = model
        .into_optimized()
        .and_then(|m| m.into_runnable())
        .map_err(unsupported)?;
    samples
        .iter()
        .map(|sample| {
            let inputs: TVec<TValue> = sample
                .iter()
                .map(|t| to_tract(t).map(TValue::from))
                .collect::<Result<_, _>>()?;
            let outputs = plan.run(inputs).map_err(unsupported)?;
            if outputs.len() != graph.outputs.len() {
                return Err(ReferenceError::Mismatch(format!(
                    "tract gives {} outputs, the model declares {}",
                    outputs.len(),
                    graph.outputs.len()
                )));
            }
            outputs.iter().map(|o| from_tract(o)).collect()
        })
        .collect()
}

fn datum_type(d: DType) -> DatumType {
    match d {
        DType::F32 => f32::datum_type(),
        DType::F64 => f64::datum_type(),
        DType::I64 => i64::datum_type(),
        DType::Bool => bool::datum_type(),
    }
}

fn to_tract(t: &Tensor) -> Result<tract_onnx::prelude::Tensor, ReferenceError> {
    let shape = t.shape.clone();
    let built = match t.dtype {
        DType::F32 => {
            tract_ndarray::ArrayD::from_shape_vec(shape, t.data.iter().map(|&v| v as f32).collect())
                .map(IntoTensor::into_tensor)
        }
        DType::F64 => tract_ndarray::ArrayD::from_shape_vec(shape, t.data.clone())
            .map(IntoTensor::into_tensor),
        DType::I64 => {
            tract_ndarray::ArrayD::from_shape_vec(shape, t.data.iter().map(|&v| v as i64).collect())
                .map(IntoTensor::into_tensor)
        }
        DType::Bool => {
            tract_ndarray::ArrayD::from_shape_vec(shape, t.data.iter().map(|&v| v != 0.0).collect())
                .map(IntoTensor::into_tensor)
        }
    };
    built.map_err(|e| ReferenceError::Mismatch(format!("an input tensor: {e}")))
}

fn from_tract(t: &tract_onnx::prelude::Tensor) -> Result<Tensor, ReferenceError> {
    let dtype = match t.datum_type() {
        DatumType::F64 => DType::F64,
        DatumType::Bool => DType::Bool,
        d if d.is_float() => DType::F32,
        _ => DType::I64,
    };
    let values = t.cast_to::<f64>().map_err(unsupported)?;
    let data: Vec<f64> = values
        .to_plain_array_view::<f64>()
        .map_err(unsupported)?
        .iter()
        .copied()
        .collect();
    Ok(Tensor::new(t.shape().to_vec(), data, dtype))
}

/// How fhec's float outputs compare with the reference's.
#[derive(Clone, Debug, PartialEq)]
pub struct Agreement {
    /// Output elements compared.
    pub elements: usize,
    /// Largest `|fhec − reference|`.
    pub max_abs_diff: f64,
    /// Largest `|fhec − reference| / (1 + |reference|)`: what [`TOLERANCE`] bounds.
    pub max_scaled_diff: f64,
}

/// Agreement expected between two float implementations of one model: f32 kernels
/// reassociate sums, fhec's interpreter computes in f64.
pub const TOLERANCE: f64 = 1e-3;

impl Agreement {
    pub fn agrees(&self) -> bool {
        self.max_scaled_diff <= TOLERANCE
    }
}

/// Compares fhec's outputs with the reference's, sample by sample and output by output.
pub fn compare(
    ours: &[Vec<Tensor>],
    reference: &[Vec<Tensor>],
) -> Result<Agreement, ReferenceError> {
    let mut a = Agreement {
        elements: 0,
        max_abs_diff: 0.0,
        max_scaled_diff: 0.0,
    };
    if ours.len() != reference.len() {
        return Err(ReferenceError::Mismatch("sample counts differ".into()));
    }
    for (i, (o, r)) in ours.iter().zip(reference).enumerate() {
        if o.len() != r.len() {
            return Err(ReferenceError::Mismatch(format!(
                "sample {i}: output counts differ"
            )));
        }
        for (k, (x, y)) in o.iter().zip(r).enumerate() {
            if x.data.len() != y.data.len() {
                return Err(ReferenceError::Mismatch(format!(
                    "sample {i} output {k}: {} elements, the reference gives {}",
                    x.data.len(),
                    y.data.len()
                )));
            }
            for (&p, &q) in x.data.iter().zip(&y.data) {
                let d = (p - q).abs();
                let d = if d.is_nan() { f64::INFINITY } else { d };
                a.max_abs_diff = a.max_abs_diff.max(d);
                a.max_scaled_diff = a.max_scaled_diff.max(d / (1.0 + q.abs()));
                a.elements += 1;
            }
        }
    }
    Ok(a)
}
