//! The op registry: one builder per (domain, op_type), one file per op family.

mod elementwise;
mod linear;
mod mlops;
mod shape;

use crate::{ImportError, NodeCtx};

pub(crate) type BuildFn = fn(&mut NodeCtx<'_>) -> Result<(), ImportError>;

/// The builder for an ONNX op, or `None` when fhec does not support it.
pub(crate) fn builder(domain: &str, op_type: &str) -> Option<BuildFn> {
    let f: BuildFn = match (domain, op_type) {
        ("" | "ai.onnx", op) => match op {
            "Gemm" => linear::gemm,
            "MatMul" => linear::matmul,
            "Add" | "Sub" | "Mul" | "Div" => elementwise::binary,
            "Relu" | "Sigmoid" | "Tanh" => elementwise::activation,
            "Identity" => shape::identity,
            "Flatten" => shape::flatten,
            "Reshape" => shape::reshape,
            "Constant" => shape::constant,
            "Cast" => shape::cast,
            "Softmax" => mlops::softmax,
            "ArgMax" => mlops::argmax,
            _ => return None,
        },
        ("ai.onnx.ml", op) => match op {
            "LinearClassifier" => linear::linear_classifier,
            "LinearRegressor" => linear::linear_regressor,
            "ZipMap" => mlops::zipmap,
            "Normalizer" => mlops::normalizer,
            _ => return None,
        },
        _ => return None,
    };
    Some(f)
}

/// Resolves a possibly negative axis against a rank.
pub(crate) fn axis(ctx: &NodeCtx<'_>, axis: i64, rank: usize) -> Result<usize, ImportError> {
    let a = if axis < 0 { axis + rank as i64 } else { axis };
    if a < 0 || a >= rank as i64 {
        return Err(ctx.err(format!("axis {axis} out of range for rank {rank}")));
    }
    Ok(a as usize)
}
