//! Element-wise operators: Add/Sub/Mul/Div with a constant, activations.

use crate::graph::{broadcast_shapes, broadcast_to, Activation, BinaryKind, Op, Tensor};
use crate::{ImportError, NodeCtx};

pub(crate) fn binary(ctx: &mut NodeCtx<'_>) -> Result<(), ImportError> {
    let kind = match ctx.node.op_type.as_str() {
        "Add" => BinaryKind::Add,
        "Sub" => BinaryKind::Sub,
        "Mul" => BinaryKind::Mul,
        _ => BinaryKind::Div,
    };
    let (a, b) = (ctx.required_input(0)?, ctx.required_input(1)?);
    let out = ctx
        .output_name(0)
        .ok_or_else(|| ctx.err("missing output"))?
        .to_string();
    match (ctx.constant(a).cloned(), ctx.constant(b).cloned()) {
        (Some(ta), Some(tb)) => {
            let shape = broadcast_shapes(&ta.shape, &tb.shape).ok_or_else(|| ctx.err("operand shapes do not broadcast"))?;
            let (ta, tb) = (broadcast_to(&ta, &shape).unwrap(), broadcast_to(&tb, &shape).unwrap());
            let data = ta.data.iter().zip(&tb.data).map(|(&x, &y)| kind.apply(x, y)).collect();
            ctx.set_constant(0, Tensor::new(shape, data, ta.dtype))
        }
        (None, None) => Err(ctx.err("both operands are encrypted: element-wise ops between two encrypted tensors are not supported yet")),
        (ca, cb) => {
            let (x, c, constant_first) = match (ca, cb) {
                (Some(c), None) => (b, c, true),
                (None, Some(c)) => (a, c, false),
                _ => unreachable!(),
            };
            let shape = ctx.info(x).shape.clone();
            let constant = broadcast_to(&c, &shape).ok_or_else(|| {
                ctx.err(format!("constant '{}' of shape {:?} does not broadcast to the operand's per-sample shape {:?}", ctx.value_name(if constant_first { a } else { b }), c.shape, shape))
            })?;
            let dtype = ctx.info(x).dtype;
            ctx.add_node(Op::BinaryConst { kind, constant, constant_first }, vec![x], vec![(out, shape, dtype)]);
            Ok(())
        }
    }
}

pub(crate) fn activation(ctx: &mut NodeCtx<'_>) -> Result<(), ImportError> {
    let act = match ctx.node.op_type.as_str() {
        "Relu" => Activation::Relu,
        "Sigmoid" => Activation::Sigmoid,
        _ => Activation::Tanh,
    };
    let x = ctx.required_input(0)?;
    if ctx.constant(x).is_some() {
        return Err(ctx.err("activation of a constant is not supported"));
    }
    let out = ctx
        .output_name(0)
        .ok_or_else(|| ctx.err("missing output"))?
        .to_string();
    let (shape, dtype) = (ctx.info(x).shape.clone(), ctx.info(x).dtype);
    ctx.add_node(Op::Activation(act), vec![x], vec![(out, shape, dtype)]);
    Ok(())
}
