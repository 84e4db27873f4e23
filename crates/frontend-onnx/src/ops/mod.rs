//! The op registry: one builder per (domain, op_type), one file per op family.

mod elementwise;
mod linear;
mod mlops;
mod movement;
mod neighbours;
mod norm;
mod preprocess;
mod qdq;
mod shape;
mod spatial;
mod tree_ensemble5;
mod trees;

use crate::{ImportError, NodeCtx};

pub(crate) type BuildFn = fn(&mut NodeCtx<'_>) -> Result<(), ImportError>;

/// The builder for an ONNX op, or `None` when fhec does not support it.
pub(crate) fn builder(domain: &str, op_type: &str) -> Option<BuildFn> {
    let f: BuildFn = match (domain, op_type) {
        ("" | "ai.onnx", op) => match op {
            "Gemm" => linear::gemm,
            "MatMul" => linear::matmul,
            "Sum" => elementwise::sum,
            "Add" | "Sub" | "Mul" | "Div" | "Pow" | "Max" | "Min" | "Greater"
            | "GreaterOrEqual" | "Less" | "LessOrEqual" | "Equal" | "And" | "Or" | "PRelu" => {
                elementwise::binary
            }
            "Relu" | "Sigmoid" | "Tanh" | "LeakyRelu" | "Elu" | "Selu" | "Celu" | "Softplus"
            | "Softsign" | "HardSigmoid" | "HardSwish" | "Gelu" | "Erf" | "Exp" | "Log"
            | "Sqrt" | "Reciprocal" | "Abs" | "Sign" | "Floor" | "Ceil" | "Round" | "Not"
            | "Neg" | "Clip" => elementwise::activation,
            "Where" => elementwise::where_,
            "BatchNormalization" => elementwise::batch_norm,
            "Conv" => spatial::conv,
            "AveragePool" | "MaxPool" | "GlobalAveragePool" | "GlobalMaxPool" => spatial::pool,
            "Transpose" => movement::transpose,
            "Concat" => movement::concat,
            "Squeeze" | "Unsqueeze" => movement::squeeze,
            "Slice" => movement::slice,
            "Gather" => movement::gather,
            "Pad" => movement::pad,
            "Expand" => movement::expand,
            "ReduceSum" | "ReduceMean" | "ReduceMax" | "ReduceMin" => movement::reduce,
            "LogSoftmax" => mlops::softmax,
            "LayerNormalization" => norm::layer_normalization,
            "Identity" => shape::identity,
            "Shape" => shape::shape,
            "Flatten" => shape::flatten,
            "Reshape" => shape::reshape,
            "Constant" => shape::constant,
            "Cast" => shape::cast,
            "Softmax" => mlops::softmax,
            "ArgMax" => mlops::argmax,
            "Scan" => neighbours::scan,
            "TopK" => neighbours::top_k,
            "QuantizeLinear" => qdq::quantize_linear,
            "DequantizeLinear" => qdq::dequantize_linear,
            _ => return None,
        },
        ("ai.onnx.ml", op) => match op {
            "LinearClassifier" => linear::linear_classifier,
            "SVMClassifier" => linear::svm_classifier,
            "SVMRegressor" => linear::svm_regressor,
            "LinearRegressor" => linear::linear_regressor,
            "ZipMap" => mlops::zipmap,
            "Normalizer" => mlops::normalizer,
            "Scaler" => preprocess::scaler,
            "Binarizer" => preprocess::binarizer,
            "Imputer" => preprocess::imputer,
            "ArrayFeatureExtractor" => preprocess::array_feature_extractor,
            "TreeEnsembleClassifier" => trees::classifier,
            "TreeEnsembleRegressor" => trees::regressor,
            "TreeEnsemble" => tree_ensemble5::tree_ensemble,
            _ => return None,
        },
        ("qonnx.custom_op.general" | "onnx.brevitas" | "finn.custom_op.general", op) => match op {
            "Quant" | "IntQuant" => qdq::quant,
            _ => return None,
        },
        _ => return None,
    };
    Some(f)
}

pub(crate) use linear::fuse_dense_chains;
pub(crate) use neighbours::fuse as fuse_neighbours;
pub(crate) use qdq::{narrow_quantize, quantize_value};

/// Resolves a possibly negative axis against a rank.
pub(crate) fn axis(ctx: &NodeCtx<'_>, axis: i64, rank: usize) -> Result<usize, ImportError> {
    let a = if axis < 0 { axis + rank as i64 } else { axis };
    if a < 0 || a >= rank as i64 {
        return Err(ctx.err(format!("axis {axis} out of range for rank {rank}")));
    }
    Ok(a as usize)
}
