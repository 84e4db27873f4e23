//! Model inputs and outputs as arrays: splitting `[samples, ...]` arrays into
//! per-sample tensors, stacking per-sample outputs back, and the float model itself.

use fhec_frontend_onnx::{interp, DType, FloatGraph, Tensor};

use crate::Error;

/// An n-dimensional array as NumPy holds it. Values are f64 (every integer type fhec
/// reads fits exactly); `dtype` is the NumPy descr it came from or is written as.
#[derive(Clone, Debug, PartialEq)]
pub struct Array {
    pub shape: Vec<usize>,
    pub data: Vec<f64>,
    pub dtype: &'static str,
}

/// Splits `[samples, ...]` arrays into one tensor per model input per sample. `arrays`
/// is either one unnamed array (a model with one input) or arrays named after the model
/// inputs (others are ignored).
pub fn samples_from_arrays(
    graph: &FloatGraph,
    arrays: &[(Option<String>, Array)],
) -> Result<Vec<Vec<Tensor>>, Error> {
    let bad = |m: String| Err(Error::Samples(m));
    let names: Vec<&str> = graph
        .inputs
        .iter()
        .map(|&i| graph.value(i).name.as_str())
        .collect();
    let mut per_input = Vec::new();
    for name in &names {
        let found = if arrays.len() == 1 && arrays[0].0.is_none() {
            if names.len() != 1 {
                return bad(format!(
                    "the model has {} inputs ({}); pass a .npz keyed by input name",
                    names.len(),
                    names.join(", ")
                ));
            }
            &arrays[0].1
        } else {
            match arrays.iter().find(|(n, _)| n.as_deref() == Some(*name)) {
                Some((_, a)) => a,
                None => return bad(format!("no array named '{name}' (the model's input)")),
            }
        };
        per_input.push(found);
    }
    let mut samples: Option<usize> = None;
    for (a, &id) in per_input.iter().zip(&graph.inputs) {
        let info = graph.value(id);
        let expected = info.shape.get(1..).unwrap_or_default();
        if a.shape.len() != info.shape.len() || a.shape.get(1..) != Some(expected) {
            let want: Vec<String> = std::iter::once("samples".to_string())
                .chain(expected.iter().map(|d| d.to_string()))
                .collect();
            return bad(format!(
                "array of shape {:?} does not match input '{}' (expected [{}])",
                a.shape,
                info.name,
                want.join(", ")
            ));
        }
        if a.data.len() != a.shape.iter().product::<usize>() {
            return bad(format!(
                "array for '{}' holds {} values, its shape {:?} needs {}",
                info.name,
                a.data.len(),
                a.shape,
                a.shape.iter().product::<usize>()
            ));
        }
        if let Some(at) = a.data.iter().position(|&v| !accepted(graph, id, v)) {
            let per = expected.iter().product::<usize>().max(1);
            return bad(format!(
                "input '{}' sample {} element {} is {}: NaN and infinite values are not accepted{}",
                info.name,
                at / per,
                at % per,
                a.data[at],
                if a.data[at].is_nan() {
                    " (the model imputes no missing value here)"
                } else {
                    ""
                }
            ));
        }
        match samples {
            Some(s) if s != a.shape[0] => return bad("inputs have different sample counts".into()),
            _ => samples = Some(a.shape[0]),
        }
    }
    let s = samples.unwrap_or(0);
    if s == 0 {
        return bad("no samples".into());
    }
    Ok((0..s)
        .map(|i| {
            per_input
                .iter()
                .zip(&graph.inputs)
                .map(|(a, &id)| {
                    let info = graph.value(id);
                    let per: usize = info.shape.iter().product();
                    Tensor::new(
                        info.shape.clone(),
                        a.data[i * per..(i + 1) * per].to_vec(),
                        info.dtype,
                    )
                })
                .collect()
        })
        .collect())
}

/// A finite value, or a missing one (NaN) where the model imputes it.
fn accepted(graph: &FloatGraph, input: fhec_frontend_onnx::ValueId, v: f64) -> bool {
    v.is_finite() || (v.is_nan() && graph.imputes(input))
}

/// Checks that every sample holds one tensor of the right size per model input.
pub(crate) fn check_samples(graph: &FloatGraph, samples: &[Vec<Tensor>]) -> Result<(), Error> {
    samples
        .iter()
        .enumerate()
        .try_for_each(|(i, s)| check_sample(graph, i, s))
}

/// [`check_samples`] for sample `i` alone.
pub(crate) fn check_sample(graph: &FloatGraph, i: usize, sample: &[Tensor]) -> Result<(), Error> {
    if sample.len() != graph.inputs.len() {
        return Err(Error::Samples(format!(
            "sample {i} has {} tensors, the model has {} inputs",
            sample.len(),
            graph.inputs.len()
        )));
    }
    for (t, &id) in sample.iter().zip(&graph.inputs) {
        let info = graph.value(id);
        if t.data.len() != info.shape.iter().product::<usize>() {
            return Err(Error::Samples(format!(
                "sample {i}: input '{}' has {} values, expected shape {:?}",
                info.name,
                t.data.len(),
                info.shape
            )));
        }
        if t.data.iter().any(|&v| !accepted(graph, id, v)) {
            return Err(Error::Samples(format!(
                "sample {i}: input '{}' holds NaN or infinite values",
                info.name
            )));
        }
    }
    Ok(())
}

/// Stacks per-sample outputs (leading batch dimension 1) into `[samples, ...]` arrays,
/// keyed by ONNX output name and typed as the model declares them. An output that does
/// not depend on the inputs (an initializer listed as output) comes once, in its own
/// shape, as onnxruntime returns it.
pub fn stack_outputs(graph: &FloatGraph, per_sample: &[Vec<Tensor>]) -> Vec<(String, Array)> {
    graph
        .outputs
        .iter()
        .enumerate()
        .map(|(k, &id)| {
            let info = graph.value(id);
            let (shape, data) = match &info.constant {
                Some(c) => (c.shape.clone(), c.data.clone()),
                None => {
                    let mut shape = info.shape.clone();
                    if shape.is_empty() {
                        shape.push(1);
                    }
                    shape[0] *= per_sample.len();
                    let data: Vec<f64> = per_sample
                        .iter()
                        .flat_map(|o| o[k].data.iter().copied())
                        .collect();
                    (shape, data)
                }
            };
            let dtype = match info.dtype {
                DType::F32 => "<f4",
                DType::F64 => "<f8",
                DType::I64 => "<i8",
                DType::Bool => "|b1",
            };
            (info.name.clone(), Array { shape, data, dtype })
        })
        .collect()
}

/// The float model, per sample; returns the model outputs.
pub fn clear(graph: &FloatGraph, samples: &[Vec<Tensor>]) -> Result<Vec<Vec<Tensor>>, Error> {
    check_samples(graph, samples)?;
    samples
        .iter()
        .map(|s| {
            let env = interp::evaluate(graph, s)?;
            graph
                .outputs
                .iter()
                .map(|o| {
                    env[o.0 as usize].clone().ok_or_else(|| {
                        Error::Invalid(format!(
                            "output '{}' is not computed from the inputs",
                            graph.value(*o).name
                        ))
                    })
                })
                .collect()
        })
        .collect()
}
