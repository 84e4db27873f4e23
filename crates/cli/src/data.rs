//! Model inputs and outputs as NumPy files: splitting arrays into per-sample tensors
//! and stacking per-sample outputs back.

use std::path::Path;

use anyhow::{bail, Result};
use fhec_frontend_onnx::{DType, FloatGraph, Tensor};

use crate::npy::{read_arrays, Array};

/// Reads `[samples, ...]` arrays (a `.npy` for a one-input model, or a `.npz` keyed by
/// input name) and returns one tensor per model input per sample.
pub fn load_samples(path: &Path, graph: &FloatGraph) -> Result<Vec<Vec<Tensor>>> {
    let arrays = read_arrays(path)?;
    let names: Vec<&str> = graph
        .inputs
        .iter()
        .map(|&i| graph.value(i).name.as_str())
        .collect();
    let mut per_input = Vec::new();
    for name in &names {
        let found = if arrays.len() == 1 && arrays[0].0.is_none() {
            if names.len() != 1 {
                bail!(
                    "{}: the model has {} inputs ({}); pass a .npz keyed by input name",
                    path.display(),
                    names.len(),
                    names.join(", ")
                );
            }
            &arrays[0].1
        } else {
            match arrays.iter().find(|(n, _)| n.as_deref() == Some(*name)) {
                Some((_, a)) => a,
                None => bail!(
                    "{}: no array named '{name}' (the model's input)",
                    path.display()
                ),
            }
        };
        per_input.push(found);
    }
    let mut samples: Option<usize> = None;
    for (a, &id) in per_input.iter().zip(&graph.inputs) {
        let info = graph.value(id);
        let expected = &info.shape[1..];
        if a.shape.len() != info.shape.len() || &a.shape[1..] != expected {
            let want: Vec<String> = std::iter::once("samples".to_string())
                .chain(expected.iter().map(|d| d.to_string()))
                .collect();
            bail!(
                "{}: array of shape {:?} does not match input '{}' (expected [{}])",
                path.display(),
                a.shape,
                info.name,
                want.join(", ")
            );
        }
        if let Some(&bad) = a.data.iter().find(|v| !v.is_finite()) {
            let at = a.data.iter().position(|v| !v.is_finite()).unwrap();
            let per = expected.iter().product::<usize>().max(1);
            bail!("{}: input '{}' sample {} element {} is {bad}: NaN and infinite values are not accepted", path.display(), info.name, at / per, at % per);
        }
        match samples {
            Some(s) if s != a.shape[0] => {
                bail!("{}: inputs have different sample counts", path.display())
            }
            _ => samples = Some(a.shape[0]),
        }
    }
    let s = samples.unwrap_or(0);
    if s == 0 {
        bail!("{}: no samples", path.display());
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

/// Stacks per-sample outputs (leading batch dimension 1) into `[samples, ...]` arrays,
/// keyed by ONNX output name and typed as the model declares them.
pub fn stack_outputs(graph: &FloatGraph, per_sample: &[Vec<Tensor>]) -> Vec<(String, Array)> {
    graph
        .outputs
        .iter()
        .enumerate()
        .map(|(k, &id)| {
            let info = graph.value(id);
            let mut shape = info.shape.clone();
            if shape.is_empty() {
                shape.push(1);
            }
            shape[0] *= per_sample.len();
            let data: Vec<f64> = per_sample
                .iter()
                .flat_map(|o| o[k].data.iter().copied())
                .collect();
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
