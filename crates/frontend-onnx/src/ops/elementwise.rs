//! Element-wise operators: binary ops (with a constant they are univariate, with two
//! varying operands they become [`Op::Sparse`] sums or [`Op::Pairwise`]), activations,
//! Clip, Where and BatchNormalization.

use super::movement::{broadcast_index, emit_rows, fold_rows, unravel, Row};
use crate::graph::{broadcast_shapes, broadcast_to, Activation, BinaryKind, Op, Tensor};
use crate::{ImportError, NodeCtx, ValueId};

fn binary_kind(op: &str) -> Option<BinaryKind> {
    use BinaryKind::*;
    Some(match op {
        "Add" => Add,
        "Sub" => Sub,
        "Mul" => Mul,
        "Div" => Div,
        "Pow" => Pow,
        "Max" => Max,
        "Min" => Min,
        "Greater" => Greater,
        "GreaterOrEqual" => GreaterOrEqual,
        "Less" => Less,
        "LessOrEqual" => LessOrEqual,
        "Equal" => Equal,
        "And" => And,
        "Or" => Or,
        "PRelu" => PRelu,
        _ => return None,
    })
}

/// `x ∘ c` (or `c ∘ x`) with a constant `c` broadcast to x's shape.
fn with_constant(
    ctx: &mut NodeCtx<'_>,
    kind: BinaryKind,
    x: ValueId,
    c: &Tensor,
    c_name: &str,
    constant_first: bool,
) -> Result<(), ImportError> {
    let shape = ctx.info(x).shape.clone();
    let constant = broadcast_to(c, &shape).ok_or_else(|| {
        ctx.err(format!("constant '{c_name}' of shape {:?} does not broadcast to the operand's per-sample shape {shape:?}", c.shape))
    })?;
    let dtype = if kind.is_predicate() {
        crate::DType::Bool
    } else {
        ctx.info(x).dtype
    };
    let out = ctx.required_output(0)?;
    ctx.add_node(
        Op::BinaryConst {
            kind,
            constant,
            constant_first,
        },
        vec![x],
        vec![(out, shape, dtype)],
    );
    Ok(())
}

/// Binary element-wise ops, and the two-input forms of the variadic Max / Min.
pub(crate) fn binary(ctx: &mut NodeCtx<'_>) -> Result<(), ImportError> {
    let op = ctx.node.op_type.clone();
    let kind =
        binary_kind(&op).ok_or_else(|| ctx.err(format!("{op} is not a binary element-wise op")))?;
    if ctx.node.input.len() != 2 {
        if (op == "Max" || op == "Min") && ctx.node.input.len() == 1 {
            let x = ctx.required_input(0)?;
            let shape = ctx.info(x).shape.clone();
            return super::shape::reshape_to(ctx, shape);
        }
        return Err(ctx.err(format!(
            "{} inputs; fhec supports two",
            ctx.node.input.len()
        )));
    }
    let (a, b) = (ctx.required_input(0)?, ctx.required_input(1)?);
    match (ctx.constant(a).cloned(), ctx.constant(b).cloned()) {
        (Some(ta), Some(tb)) => {
            let shape = broadcast_shapes(&ta.shape, &tb.shape)
                .ok_or_else(|| ctx.err("operand shapes do not broadcast"))?;
            ctx.numel(&shape)?;
            let (Some(ta), Some(tb)) = (broadcast_to(&ta, &shape), broadcast_to(&tb, &shape))
            else {
                return Err(ctx.err("operand shapes do not broadcast"));
            };
            let data = ta
                .data
                .iter()
                .zip(&tb.data)
                .map(|(&x, &y)| kind.apply(x, y))
                .collect();
            ctx.set_constant(0, Tensor::new(shape, data, ta.dtype))
        }
        (None, Some(c)) => {
            let name = ctx.value_name(b).to_string();
            with_constant(ctx, kind, a, &c, &name, false)
        }
        (Some(c), None) => {
            if kind == BinaryKind::Pow {
                return Err(ctx.err("the exponent is encrypted: Pow needs a constant exponent"));
            }
            let name = ctx.value_name(a).to_string();
            with_constant(ctx, kind, b, &c, &name, true)
        }
        (None, None) => two_varying(ctx, kind, a, b),
    }
}

/// ONNX Sum of varying inputs (broadcast): one sparse map adding them; a single input
/// passes through.
pub(crate) fn sum(ctx: &mut NodeCtx<'_>) -> Result<(), ImportError> {
    let inputs: Vec<ValueId> = (0..ctx.node.input.len())
        .map(|i| ctx.required_input(i))
        .collect::<Result<_, _>>()?;
    if let [x] = inputs[..] {
        let shape = ctx.info(x).shape.clone();
        return super::shape::reshape_to(ctx, shape);
    }
    if inputs.iter().any(|&v| ctx.constant(v).is_some()) {
        return Err(ctx.err("Sum with a constant input: fhec sums varying inputs (write an Add)"));
    }
    let shapes: Vec<Vec<usize>> = inputs.iter().map(|&v| ctx.info(v).shape.clone()).collect();
    let shape = shapes
        .iter()
        .skip(1)
        .try_fold(shapes[0].clone(), |s, t| broadcast_shapes(&s, t))
        .ok_or_else(|| ctx.err(format!("operand shapes {shapes:?} do not broadcast")))?;
    if shape.first() != Some(&1) {
        return Err(ctx.err("the broadcast result does not keep the batch axis first"));
    }
    let numel = ctx.numel(&shape)?;
    let rows: Vec<Row> = (0..numel)
        .map(|f| {
            let at = unravel(f, &shape);
            let terms = shapes
                .iter()
                .enumerate()
                .map(|(slot, s)| (slot, broadcast_index(&at, s), 1.0))
                .collect();
            (terms, 0.0)
        })
        .collect();
    emit_rows(ctx, &inputs, rows, shape)
}

fn two_varying(
    ctx: &mut NodeCtx<'_>,
    kind: BinaryKind,
    a: ValueId,
    b: ValueId,
) -> Result<(), ImportError> {
    let (sa, sb) = (ctx.info(a).shape.clone(), ctx.info(b).shape.clone());
    let shape = broadcast_shapes(&sa, &sb)
        .ok_or_else(|| ctx.err(format!("operand shapes {sa:?} and {sb:?} do not broadcast")))?;
    if shape.first() != Some(&1) {
        return Err(ctx.err("the broadcast result does not keep the batch axis first"));
    }
    let numel = ctx.numel(&shape)?;
    let index = |f: usize, s: &[usize]| broadcast_index(&unravel(f, &shape), s);
    match kind {
        BinaryKind::Add | BinaryKind::Sub => {
            let sign = if kind == BinaryKind::Add { 1.0 } else { -1.0 };
            let rows: Vec<Row> = (0..numel)
                .map(|f| (vec![(0, index(f, &sa), 1.0), (1, index(f, &sb), sign)], 0.0))
                .collect();
            emit_rows(ctx, &[a, b], rows, shape)
        }
        BinaryKind::Pow => Err(ctx.err("the exponent is encrypted: Pow needs a constant exponent")),
        BinaryKind::PRelu => Err(ctx.err("PRelu with an encrypted slope is not supported")),
        _ => {
            let left = (0..numel).map(|f| index(f, &sa) as u32).collect();
            let right = (0..numel).map(|f| index(f, &sb) as u32).collect();
            let dtype = if kind.is_predicate() {
                crate::DType::Bool
            } else {
                ctx.info(a).dtype
            };
            let out = ctx.required_output(0)?;
            ctx.add_node(
                Op::Pairwise { kind, left, right },
                vec![a, b],
                vec![(out, shape, dtype)],
            );
            Ok(())
        }
    }
}

pub(crate) fn activation(ctx: &mut NodeCtx<'_>) -> Result<(), ImportError> {
    let alpha = |d: f32| ctx.attr_f("alpha", d) as f64;
    let act = match ctx.node.op_type.as_str() {
        "Relu" => Activation::Relu,
        "Sigmoid" => Activation::Sigmoid,
        "Tanh" => Activation::Tanh,
        "LeakyRelu" => Activation::LeakyRelu { alpha: alpha(0.01) },
        "Elu" => Activation::Elu { alpha: alpha(1.0) },
        "Selu" => Activation::Selu {
            alpha: alpha(1.673_263_2),
            gamma: ctx.attr_f("gamma", 1.050_701) as f64,
        },
        "Celu" => Activation::Celu { alpha: alpha(1.0) },
        "Softplus" => Activation::Softplus,
        "Softsign" => Activation::Softsign,
        "HardSigmoid" => Activation::HardSigmoid {
            alpha: alpha(0.2),
            beta: ctx.attr_f("beta", 0.5) as f64,
        },
        "HardSwish" => Activation::HardSwish,
        "Gelu" => match ctx.attr_s("approximate").as_deref().unwrap_or("none") {
            "none" => Activation::Gelu { tanh: false },
            "tanh" => Activation::Gelu { tanh: true },
            other => return Err(ctx.err(format!("unknown approximate='{other}'"))),
        },
        "Erf" => Activation::Erf,
        "Exp" => Activation::Exp,
        "Log" => Activation::Log,
        "Sqrt" => Activation::Sqrt,
        "Reciprocal" => Activation::Reciprocal,
        "Abs" => Activation::Abs,
        "Sign" => Activation::Sign,
        "Floor" => Activation::Floor,
        "Ceil" => Activation::Ceil,
        "Round" => Activation::Round,
        "Not" => Activation::Not,
        "Neg" => {
            let x = ctx.required_input(0)?;
            return with_constant(
                ctx,
                BinaryKind::Mul,
                x,
                &Tensor::new(vec![], vec![-1.0], crate::DType::F32),
                "-1",
                false,
            );
        }
        "Clip" => {
            let bound = |i: usize, attr: &str, d: f64| -> Result<f64, ImportError> {
                match ctx.input(i)? {
                    Some(v) => {
                        let t = ctx.constant(v).ok_or_else(|| {
                            ctx.err(format!("the {attr} bound is not a constant"))
                        })?;
                        match t.data.as_slice() {
                            [] => Ok(d), // an empty bound is no bound
                            [b] => Ok(*b),
                            _ => Err(ctx.err(format!("the {attr} bound is not a scalar"))),
                        }
                    }
                    None => Ok(ctx
                        .node
                        .attribute
                        .iter()
                        .find(|a| a.name == attr)
                        .map_or(d, |a| a.f as f64)),
                }
            };
            let (min, max) = (
                bound(1, "min", f64::NEG_INFINITY)?,
                bound(2, "max", f64::INFINITY)?,
            );
            let x = ctx.required_input(0)?;
            if ctx.constant(x).is_none() && super::narrow_quantize(ctx, x, min, max)? {
                return Ok(());
            }
            Activation::Clip { min, max }
        }
        other => unreachable!("{other} is not registered as an activation"),
    };
    let x = ctx.required_input(0)?;
    if let Some(t) = ctx.constant(x).cloned() {
        let data = t.data.iter().map(|&v| act.apply(v)).collect();
        return ctx.set_constant(0, Tensor::new(t.shape, data, t.dtype));
    }
    let out = ctx.required_output(0)?;
    let shape = ctx.info(x).shape.clone();
    let dtype = if act == Activation::Not {
        crate::DType::Bool
    } else {
        ctx.info(x).dtype
    };
    ctx.add_node(Op::Activation(act), vec![x], vec![(out, shape, dtype)]);
    Ok(())
}

/// `Where(c, a, b) = b + c·(a − b)`: linear in the branches when the condition is a
/// constant, univariate in `c` when both branches are constants, else a product.
pub(crate) fn where_(ctx: &mut NodeCtx<'_>) -> Result<(), ImportError> {
    let (c, a, b) = (
        ctx.required_input(0)?,
        ctx.required_input(1)?,
        ctx.required_input(2)?,
    );
    let shapes: Vec<Vec<usize>> = [c, a, b]
        .iter()
        .map(|&v| ctx.info(v).shape.clone())
        .collect();
    let shape = broadcast_shapes(&shapes[0], &shapes[1])
        .and_then(|s| broadcast_shapes(&s, &shapes[2]))
        .ok_or_else(|| ctx.err(format!("shapes {shapes:?} do not broadcast")))?;
    let numel = ctx.numel(&shape)?;
    let index = |f: usize, s: &[usize]| broadcast_index(&unravel(f, &shape), s);
    if let Some(ct) = ctx.constant(c).cloned() {
        let rows: Vec<Row> = (0..numel)
            .map(|f| {
                if ct.data[index(f, &ct.shape)] != 0.0 {
                    (vec![(1, index(f, &shapes[1]), 1.0)], 0.0)
                } else {
                    (vec![(2, index(f, &shapes[2]), 1.0)], 0.0)
                }
            })
            .collect();
        return emit_rows(ctx, &[c, a, b], rows, shape);
    }
    if shape != shapes[0] {
        return Err(ctx.err("an encrypted condition must have the result's shape"));
    }
    match (ctx.constant(a).cloned(), ctx.constant(b).cloned()) {
        (Some(ta), Some(tb)) => {
            // b + c·(a − b): Mul then Add, both with constants
            let ta =
                broadcast_to(&ta, &shape).ok_or_else(|| ctx.err("branch a does not broadcast"))?;
            let tb =
                broadcast_to(&tb, &shape).ok_or_else(|| ctx.err("branch b does not broadcast"))?;
            let diff = Tensor::new(
                shape.clone(),
                ta.data.iter().zip(&tb.data).map(|(x, y)| x - y).collect(),
                ta.dtype,
            );
            let dtype = ta.dtype;
            let mid = ctx.add_sub_node(
                "select",
                Op::BinaryConst {
                    kind: BinaryKind::Mul,
                    constant: diff,
                    constant_first: false,
                },
                vec![c],
                vec![(format!("{}/select", ctx.node_name()), shape.clone(), dtype)],
            );
            let out = ctx.required_output(0)?;
            ctx.add_node(
                Op::BinaryConst {
                    kind: BinaryKind::Add,
                    constant: tb,
                    constant_first: false,
                },
                mid,
                vec![(out, shape, dtype)],
            );
            Ok(())
        }
        _ => {
            // d = a − b (a sparse map folding constants), p = c·d, y = b + p
            let dtype = ctx.info(a).dtype;
            let rows: Vec<Row> = (0..numel)
                .map(|f| {
                    (
                        vec![
                            (1, index(f, &shapes[1]), 1.0),
                            (2, index(f, &shapes[2]), -1.0),
                        ],
                        0.0,
                    )
                })
                .collect();
            let d_name = format!("{}/diff", ctx.node_name());
            let d = sub_rows(ctx, "diff", &[c, a, b], rows, shape.clone(), &d_name)?;
            let left = (0..numel as u32).collect();
            let right = (0..numel as u32).collect();
            let p_name = format!("{}/product", ctx.node_name());
            let p = ctx.add_sub_node(
                "product",
                Op::Pairwise {
                    kind: BinaryKind::Mul,
                    left,
                    right,
                },
                vec![c, d],
                vec![(p_name, shape.clone(), dtype)],
            )[0];
            let rows: Vec<Row> = (0..numel)
                .map(|f| (vec![(0, f, 1.0), (1, index(f, &shapes[2]), 1.0)], 0.0))
                .collect();
            emit_rows(ctx, &[p, b], rows, shape)
        }
    }
}

/// Like [`emit_rows`] for an intermediate value named `name` of a split node (at least
/// one input varying).
fn sub_rows(
    ctx: &mut NodeCtx<'_>,
    suffix: &str,
    inputs: &[ValueId],
    rows: Vec<Row>,
    shape: Vec<usize>,
    name: &str,
) -> Result<ValueId, ImportError> {
    let (map, varying) = fold_rows(ctx, inputs, rows);
    let dtype = ctx.info(varying[0]).dtype;
    Ok(ctx.add_sub_node(
        suffix,
        Op::Sparse(map),
        varying,
        vec![(name.to_string(), shape, dtype)],
    )[0])
}

/// Inference-mode BatchNormalization: a per-channel `x·a + b`, two constant ops the
/// quantizer folds into the preceding linear op's scale and offset.
pub(crate) fn batch_norm(ctx: &mut NodeCtx<'_>) -> Result<(), ImportError> {
    if ctx.attr_i("training_mode", 0) != 0 || ctx.output_name(1).is_some() {
        return Err(ctx.err("training mode (running statistics outputs) is not supported"));
    }
    let x = ctx.required_input(0)?;
    let shape = ctx.info(x).shape.clone();
    if shape.len() < 2 {
        return Err(ctx.err(format!("input of shape {shape:?} has no channel axis")));
    }
    let ch = shape[1];
    let mut params = Vec::new();
    for i in 1..5 {
        let v = ctx.required_input(i)?;
        let t = ctx.constant(v).ok_or_else(|| {
            ctx.err(format!(
                "input {i} ('{}') is not a constant",
                ctx.value_name(v)
            ))
        })?;
        if t.numel() != ch {
            return Err(ctx.err(format!(
                "input {i} has {} values for {ch} channels",
                t.numel()
            )));
        }
        params.push(t.data.clone());
    }
    let eps = ctx.attr_f("epsilon", 1e-5) as f64;
    let a: Vec<f64> = (0..ch)
        .map(|c| params[0][c] / (params[3][c] + eps).sqrt())
        .collect();
    let b: Vec<f64> = (0..ch)
        .map(|c| params[1][c] - params[2][c] * a[c])
        .collect();
    let inner: usize = shape[2..].iter().product();
    let per_elem = |v: &[f64]| {
        Tensor::new(
            shape.clone(),
            (0..ch * inner).map(|e| v[e / inner]).collect(),
            crate::DType::F32,
        )
    };
    let dtype = ctx.info(x).dtype;
    let name = format!("{}/scale", ctx.node_name());
    let mid = ctx.add_sub_node(
        "scale",
        Op::BinaryConst {
            kind: BinaryKind::Mul,
            constant: per_elem(&a),
            constant_first: false,
        },
        vec![x],
        vec![(name, shape.clone(), dtype)],
    );
    let out = ctx.required_output(0)?;
    ctx.add_node(
        Op::BinaryConst {
            kind: BinaryKind::Add,
            constant: per_elem(&b),
            constant_first: false,
        },
        mid,
        vec![(out, shape, dtype)],
    );
    Ok(())
}
