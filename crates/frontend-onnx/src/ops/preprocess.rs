//! Preprocessing and selection operators of ai.onnx.ml: Scaler, Binarizer, Imputer and
//! ArrayFeatureExtractor. A model's preprocessing usually runs on the client before
//! encryption (the quantizer's head, docs/QUANTIZATION.md); elsewhere the element-wise
//! ones become table lookups.

use super::movement::{emit_rows, Row};
use crate::graph::{BinaryKind, DType, Op, Tensor};
use crate::{ImportError, NodeCtx, ValueId};

/// A per-feature attribute (one value, or one per element of the last axis) expanded to
/// every element of `shape`.
fn per_feature(
    ctx: &NodeCtx<'_>,
    name: &str,
    values: &[f64],
    shape: &[usize],
) -> Result<Vec<f64>, ImportError> {
    let numel: usize = shape.iter().product();
    let last = shape.last().copied().unwrap_or(1);
    match values.len() {
        1 => Ok(vec![values[0]; numel]),
        n if n == last => Ok((0..numel).map(|e| values[e % last]).collect()),
        n => Err(ctx.err(format!("{name} has {n} values for {last} features"))),
    }
}

fn varying_input(ctx: &NodeCtx<'_>) -> Result<ValueId, ImportError> {
    let x = ctx.required_input(0)?;
    if ctx.constant(x).is_some() {
        return Err(ctx.err("the input is a constant"));
    }
    Ok(x)
}

fn floats(ctx: &NodeCtx<'_>, name: &str) -> Vec<f64> {
    ctx.attr_floats(name).into_iter().map(f64::from).collect()
}

/// `y = (x − offset)·scale`: a subtraction and a multiplication by constants.
pub(crate) fn scaler(ctx: &mut NodeCtx<'_>) -> Result<(), ImportError> {
    let x = varying_input(ctx)?;
    let shape = ctx.info(x).shape.clone();
    let (offset, scale) = (floats(ctx, "offset"), floats(ctx, "scale"));
    let offset = if offset.is_empty() { vec![0.0] } else { offset };
    let scale = if scale.is_empty() { vec![1.0] } else { scale };
    let offset = per_feature(ctx, "offset", &offset, &shape)?;
    let scale = per_feature(ctx, "scale", &scale, &shape)?;
    let out = ctx.required_output(0)?;
    let centered = ctx.add_sub_node(
        "offset",
        Op::BinaryConst {
            kind: BinaryKind::Sub,
            constant: Tensor::new(shape.clone(), offset, DType::F32),
            constant_first: false,
        },
        vec![x],
        vec![(format!("{out}/centered"), shape.clone(), DType::F32)],
    )[0];
    ctx.add_node(
        Op::BinaryConst {
            kind: BinaryKind::Mul,
            constant: Tensor::new(shape.clone(), scale, DType::F32),
            constant_first: false,
        },
        vec![centered],
        vec![(out, shape, DType::F32)],
    );
    Ok(())
}

/// `y = 1 if x > threshold else 0`, in the input's float type.
pub(crate) fn binarizer(ctx: &mut NodeCtx<'_>) -> Result<(), ImportError> {
    let x = varying_input(ctx)?;
    let shape = ctx.info(x).shape.clone();
    let numel = shape.iter().product();
    let threshold = ctx.attr_f("threshold", 0.0) as f64;
    let dtype = ctx.info(x).dtype;
    let out = ctx.required_output(0)?;
    ctx.add_node(
        Op::BinaryConst {
            kind: BinaryKind::Greater,
            constant: Tensor::new(shape.clone(), vec![threshold; numel], dtype),
            constant_first: false,
        },
        vec![x],
        vec![(out, shape, dtype)],
    );
    Ok(())
}

/// Replaces `replaced_value_float` (NaN for scikit-learn's SimpleImputer) by each
/// feature's imputed value.
pub(crate) fn imputer(ctx: &mut NodeCtx<'_>) -> Result<(), ImportError> {
    let x = varying_input(ctx)?;
    if !ctx.attr_ints("imputed_value_int64s").is_empty() {
        return Err(ctx.err("integer imputation (imputed_value_int64s) is not supported"));
    }
    let shape = ctx.info(x).shape.clone();
    let values = per_feature(
        ctx,
        "imputed_value_floats",
        &floats(ctx, "imputed_value_floats"),
        &shape,
    )?;
    let replaced = ctx.attr_f("replaced_value_float", 0.0) as f64;
    let out = ctx.required_output(0)?;
    ctx.add_node(
        Op::Impute { replaced, values },
        vec![x],
        vec![(out, shape, DType::F32)],
    );
    Ok(())
}

/// `Y = X[..., indices]` along the last axis. Constant indices select features (data
/// movement); a constant X with computed indices maps class ids to labels (on the
/// client, after decryption).
pub(crate) fn array_feature_extractor(ctx: &mut NodeCtx<'_>) -> Result<(), ImportError> {
    let (x, ind) = (ctx.required_input(0)?, ctx.required_input(1)?);
    let x_shape = ctx.info(x).shape.clone();
    let last = *x_shape
        .last()
        .ok_or_else(|| ctx.err("the data is a scalar"))?;
    let index = |ctx: &NodeCtx<'_>, v: f64| -> Result<usize, ImportError> {
        let i = v as i64;
        if (0..last as i64).contains(&i) {
            Ok(i as usize)
        } else {
            Err(ctx.err(format!("index {i} out of range for {last} features")))
        }
    };
    match (ctx.constant(x).cloned(), ctx.constant(ind).cloned()) {
        (_, Some(indices)) => {
            let idx: Vec<usize> = indices
                .data
                .iter()
                .map(|&v| index(ctx, v))
                .collect::<Result<_, _>>()?;
            let rows_before: usize = x_shape[..x_shape.len() - 1].iter().product();
            let mut out_shape = x_shape[..x_shape.len() - 1].to_vec();
            if out_shape.is_empty() {
                out_shape.push(1);
            }
            out_shape.push(idx.len());
            let rows: Vec<Row> = (0..rows_before)
                .flat_map(|r| idx.iter().map(move |&i| (vec![(0, r * last + i, 1.0)], 0.0)))
                .collect();
            emit_rows(ctx, &[x], rows, out_shape)
        }
        (Some(data), None) => {
            let n = ctx.info(ind).shape.iter().product::<usize>();
            let mut shape = data.shape[..data.shape.len() - 1].to_vec();
            if shape.is_empty() {
                shape.push(1);
            }
            shape.push(n);
            let out = ctx.required_output(0)?;
            ctx.add_node(
                Op::TakeLast { data: data.clone() },
                vec![ind],
                vec![(out, shape, data.dtype)],
            );
            Ok(())
        }
        (None, None) => Err(ctx.err(
            "both the data and the indices are computed: selecting at encrypted positions is not supported",
        )),
    }
}
