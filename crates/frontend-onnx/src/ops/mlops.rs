//! Output-side operators: Softmax, ArgMax, ZipMap, Normalizer. They run on the client.

use crate::graph::{DType, Norm, Op};
use crate::{ImportError, NodeCtx};

fn batch_axis_guard(ctx: &NodeCtx<'_>, axis: usize) -> Result<(), ImportError> {
    if axis == 0 {
        return Err(ctx.err(
            "reduces over the batch dimension (axis 0); fhec evaluates samples independently",
        ));
    }
    Ok(())
}

pub(crate) fn softmax(ctx: &mut NodeCtx<'_>) -> Result<(), ImportError> {
    let x = ctx.required_input(0)?;
    let shape = ctx.info(x).shape.clone();
    let axis = crate::ops::axis(ctx, ctx.attr_i("axis", -1), shape.len())?;
    batch_axis_guard(ctx, axis)?;
    let out = ctx.required_output(0)?;
    let dtype = ctx.info(x).dtype;
    let op = if ctx.node.op_type == "LogSoftmax" {
        Op::LogSoftmax { axis }
    } else {
        Op::Softmax { axis }
    };
    ctx.add_node(op, vec![x], vec![(out, shape, dtype)]);
    Ok(())
}

pub(crate) fn argmax(ctx: &mut NodeCtx<'_>) -> Result<(), ImportError> {
    let x = ctx.required_input(0)?;
    let mut shape = ctx.info(x).shape.clone();
    let axis = crate::ops::axis(ctx, ctx.attr_i("axis", 0), shape.len())?;
    batch_axis_guard(ctx, axis)?;
    let keepdims = ctx.attr_i("keepdims", 1) != 0;
    let select_last_index = ctx.attr_i("select_last_index", 0) != 0;
    if keepdims {
        shape[axis] = 1;
    } else {
        shape.remove(axis);
    }
    let out = ctx.required_output(0)?;
    ctx.add_node(
        Op::ArgMax {
            axis,
            keepdims,
            select_last_index,
        },
        vec![x],
        vec![(out, shape, DType::I64)],
    );
    Ok(())
}

pub(crate) fn zipmap(ctx: &mut NodeCtx<'_>) -> Result<(), ImportError> {
    let x = ctx.required_input(0)?;
    if ctx.attr_strings_len("classlabels_strings") > 0 {
        return Err(ctx.err("ZipMap with string class labels is not supported"));
    }
    let shape = ctx.info(x).shape.clone();
    let out = ctx.required_output(0)?;
    ctx.add_node(Op::ZipMap, vec![x], vec![(out, shape, DType::F32)]);
    Ok(())
}

pub(crate) fn normalizer(ctx: &mut NodeCtx<'_>) -> Result<(), ImportError> {
    let x = ctx.required_input(0)?;
    let norm = match ctx.attr_s("norm").as_deref().unwrap_or("MAX") {
        "MAX" => Norm::Max,
        "L1" => Norm::L1,
        "L2" => Norm::L2,
        other => return Err(ctx.err(format!("unknown norm '{other}'"))),
    };
    let shape = ctx.info(x).shape.clone();
    let out = ctx.required_output(0)?;
    ctx.add_node(
        Op::Normalizer { norm },
        vec![x],
        vec![(out, shape, DType::F32)],
    );
    Ok(())
}
