//! Shape operators (Identity, Flatten, Reshape, Shape), Constant and Cast.

use crate::graph::{DType, Op, Tensor};
use crate::tensor::dtype_of;
use crate::{ImportError, NodeCtx};

pub(crate) fn reshape_to(ctx: &mut NodeCtx<'_>, shape: Vec<usize>) -> Result<(), ImportError> {
    let x = ctx.required_input(0)?;
    let out = ctx.required_output(0)?;
    if let Some(t) = ctx.constant(x).cloned() {
        return ctx.set_constant(0, Tensor::new(shape, t.data, t.dtype));
    }
    if shape.first() != Some(&1) {
        return Err(ctx.err(format!(
            "result shape {shape:?} does not keep the batch dimension first"
        )));
    }
    let dtype = ctx.info(x).dtype;
    ctx.add_node(
        Op::Reshape {
            shape: shape.clone(),
        },
        vec![x],
        vec![(out, shape, dtype)],
    );
    Ok(())
}

pub(crate) fn identity(ctx: &mut NodeCtx<'_>) -> Result<(), ImportError> {
    let x = ctx.required_input(0)?;
    let shape = ctx.info(x).shape.clone();
    reshape_to(ctx, shape)
}

pub(crate) fn flatten(ctx: &mut NodeCtx<'_>) -> Result<(), ImportError> {
    let x = ctx.required_input(0)?;
    let shape = ctx.info(x).shape.clone();
    let raw = ctx.attr_i("axis", 1);
    let axis = if raw < 0 {
        raw + shape.len() as i64
    } else {
        raw
    };
    if axis < 0 || axis > shape.len() as i64 {
        return Err(ctx.err(format!("axis {raw} out of range for rank {}", shape.len())));
    }
    let axis = axis as usize;
    if axis == 0 {
        return Err(ctx.err("Flatten with axis=0 merges the batch dimension"));
    }
    let outer: usize = shape[..axis].iter().product();
    let inner: usize = shape[axis..].iter().product();
    reshape_to(ctx, vec![outer, inner])
}

pub(crate) fn reshape(ctx: &mut NodeCtx<'_>) -> Result<(), ImportError> {
    let x = ctx.required_input(0)?;
    let s = ctx.required_input(1)?;
    let spec = ctx
        .constant(s)
        .cloned()
        .ok_or_else(|| ctx.err("the target shape is not a constant (dynamic reshape)"))?;
    let in_shape = ctx.info(x).shape.clone();
    let numel = ctx.numel(&in_shape)?;
    let allow_zero = ctx.attr_i("allowzero", 0) != 0;
    let mut shape = Vec::new();
    let mut infer = None;
    for (i, &d) in spec.data.iter().enumerate() {
        match d as i64 {
            -1 if infer.is_none() => {
                infer = Some(i);
                shape.push(1);
            }
            0 if !allow_zero => shape.push(
                *in_shape
                    .get(i)
                    .ok_or_else(|| ctx.err("0 in shape beyond the input rank"))?,
            ),
            d if d >= 0 => shape.push(d as usize),
            d => return Err(ctx.err(format!("invalid dimension {d} in target shape"))),
        }
    }
    // a target shape from the file may name dimensions whose product overflows
    let known = ctx.numel(&shape)?;
    if let Some(i) = infer {
        if known == 0 || !numel.is_multiple_of(known) {
            return Err(ctx.err(format!("cannot reshape {in_shape:?} to {:?}", spec.data)));
        }
        shape[i] = numel / known;
    }
    if shape.iter().product::<usize>() != numel {
        return Err(ctx.err(format!(
            "cannot reshape {in_shape:?} ({numel} elements) to {shape:?}"
        )));
    }
    reshape_to(ctx, shape)
}

pub(crate) fn constant(ctx: &mut NodeCtx<'_>) -> Result<(), ImportError> {
    let t = if let Some(t) = ctx.attr_tensor("value")? {
        let elem = ctx
            .node
            .attribute
            .iter()
            .find(|a| a.name == "value")
            .and_then(|a| a.t.as_ref())
            .map(|t| t.data_type);
        return ctx.set_typed_constant(0, t, elem);
    } else if let Some(a) = ctx.node.attribute.iter().find(|a| a.name == "value_float") {
        Tensor::new(vec![], vec![a.f as f64], DType::F32)
    } else if let Some(a) = ctx.node.attribute.iter().find(|a| a.name == "value_floats") {
        Tensor::new(
            vec![a.floats.len()],
            a.floats.iter().map(|&v| v as f64).collect(),
            DType::F32,
        )
    } else if let Some(a) = ctx.node.attribute.iter().find(|a| a.name == "value_int") {
        Tensor::new(vec![], vec![a.i as f64], DType::I64)
    } else if let Some(a) = ctx.node.attribute.iter().find(|a| a.name == "value_ints") {
        Tensor::new(
            vec![a.ints.len()],
            a.ints.iter().map(|&v| v as f64).collect(),
            DType::I64,
        )
    } else {
        return Err(ctx.err("Constant without a supported value attribute"));
    };
    ctx.set_constant(0, t)
}

pub(crate) fn cast(ctx: &mut NodeCtx<'_>) -> Result<(), ImportError> {
    let x = ctx.required_input(0)?;
    let to =
        dtype_of(ctx.attr_i("to", 1) as i32).ok_or_else(|| ctx.err("unsupported target type"))?;
    let out = ctx.required_output(0)?;
    if let Some(t) = ctx.constant(x).cloned() {
        let data = t
            .data
            .iter()
            .map(|&v| crate::interp::cast_value(v, to))
            .collect();
        return ctx.set_constant(0, Tensor::new(t.shape, data, to));
    }
    let shape = ctx.info(x).shape.clone();
    ctx.add_node(Op::Cast { to }, vec![x], vec![(out, shape, to)]);
    Ok(())
}

/// Shape: the input's static shape from `start` to `end`, as a constant. fhec evaluates
/// one sample at a time, so the batch dimension is 1, as the Reshape or Expand the shape
/// feeds (`x.view(x.size(0), -1)` in torch) expects it to be for one sample.
pub(crate) fn shape(ctx: &mut NodeCtx<'_>) -> Result<(), ImportError> {
    let x = ctx.required_input(0)?;
    let dims = ctx.info(x).shape.clone();
    let rank = dims.len() as i64;
    let clamp = |a: i64| (if a < 0 { a + rank } else { a }).clamp(0, rank) as usize;
    let (start, end) = (
        clamp(ctx.attr_i("start", 0)),
        clamp(ctx.attr_i("end", rank)),
    );
    let picked: Vec<f64> = dims
        .get(start..end.max(start))
        .unwrap_or(&[])
        .iter()
        .map(|&d| d as f64)
        .collect();
    ctx.set_constant(0, Tensor::new(vec![picked.len()], picked, DType::I64))
}
