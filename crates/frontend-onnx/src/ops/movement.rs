//! Data movement (Transpose, Concat, Slice, Gather, Pad, Expand, Squeeze, Unsqueeze) and
//! reductions (ReduceSum/Mean/Max/Min), as sparse maps over flat elements. Inputs that
//! are constants fold into the map's bias; with only constants the result is a constant.

use crate::graph::{broadcast_shapes, Op, SparseMap, SparseTerm, Tensor};
use crate::{ImportError, NodeCtx, ValueId};

/// Row-major strides of `shape`.
pub(crate) fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for a in (0..shape.len().saturating_sub(1)).rev() {
        s[a] = s[a + 1] * shape[a + 1];
    }
    s
}

/// The multi-index of flat position `flat` in `shape`.
pub(crate) fn unravel(mut flat: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for a in (0..shape.len()).rev() {
        idx[a] = flat % shape[a].max(1);
        flat /= shape[a].max(1);
    }
    idx
}

/// The flat index in `src` (numpy-broadcast to `out`) read by output multi-index `o`.
pub(crate) fn broadcast_index(o: &[usize], src: &[usize]) -> usize {
    let off = o.len() - src.len();
    let st = strides(src);
    (0..src.len())
        .map(|a| if src[a] == 1 { 0 } else { o[a + off] * st[a] })
        .sum()
}

/// One output element: a weighted sum of `(input position, flat index, weight)` plus a
/// constant.
pub(crate) type Row = (Vec<(usize, usize, f64)>, f64);

/// Emits `rows` over the node's inputs `inputs` (positions refer to this list) as output
/// 0 with `shape`: constant inputs fold into the bias, varying ones become the slots of an
/// [`Op::Sparse`]; all-constant input gives a constant.
/// `rows` over `inputs` as a sparse map: constant inputs fold into the bias, varying
/// ones become its slots in order of first use. Returns the map and the slots' values.
pub(crate) fn fold_rows(
    ctx: &NodeCtx<'_>,
    inputs: &[ValueId],
    rows: Vec<Row>,
) -> (SparseMap, Vec<ValueId>) {
    let mut varying: Vec<ValueId> = Vec::new();
    let mut map = SparseMap::default();
    for (terms, mut bias) in rows {
        let mut out = Vec::with_capacity(terms.len());
        for (pos, index, weight) in terms {
            let v = inputs[pos];
            match ctx.constant(v) {
                Some(t) => bias += weight * t.data[index],
                None => {
                    let slot = varying.iter().position(|&u| u == v).unwrap_or_else(|| {
                        varying.push(v);
                        varying.len() - 1
                    });
                    out.push(SparseTerm {
                        slot: slot as u32,
                        index: index as u32,
                        weight,
                    });
                }
            }
        }
        map.push_row(out, bias);
    }
    (map, varying)
}

pub(crate) fn emit_rows(
    ctx: &mut NodeCtx<'_>,
    inputs: &[ValueId],
    rows: Vec<Row>,
    shape: Vec<usize>,
) -> Result<(), ImportError> {
    let (map, varying) = fold_rows(ctx, inputs, rows);
    if varying.is_empty() {
        let dtype = ctx.info(inputs[0]).dtype;
        return ctx.set_constant(0, Tensor::new(shape, map.bias, dtype));
    }
    let dtype = ctx.info(varying[0]).dtype;
    let name = ctx.required_output(0)?;
    ctx.add_node(Op::Sparse(map), varying, vec![(name, shape, dtype)]);
    Ok(())
}

fn copy_row(pos: usize, index: usize) -> Row {
    (vec![(pos, index, 1.0)], 0.0)
}

/// Integer values of a constant input (or of an ints attribute when the input is absent).
pub(crate) fn const_ints(
    ctx: &NodeCtx<'_>,
    input: usize,
    attr: &str,
) -> Result<Option<Vec<i64>>, ImportError> {
    match ctx.input(input)? {
        Some(v) => {
            let t = ctx.constant(v).ok_or_else(|| {
                ctx.err(format!(
                    "input {input} ('{}') must be a constant (static shapes only)",
                    ctx.value_name(v)
                ))
            })?;
            Ok(Some(t.data.iter().map(|&x| x as i64).collect()))
        }
        None => {
            let a = ctx.attr_ints(attr);
            Ok(if ctx.node.attribute.iter().any(|x| x.name == attr) {
                Some(a)
            } else {
                None
            })
        }
    }
}

fn norm_axis(ctx: &NodeCtx<'_>, a: i64, rank: usize) -> Result<usize, ImportError> {
    super::axis(ctx, a, rank)
}

fn keep_batch(ctx: &NodeCtx<'_>, axes: &[usize], what: &str) -> Result<(), ImportError> {
    if axes.contains(&0) {
        return Err(ctx.err(format!(
            "{what} the batch axis (0); fhec runs one sample at a time"
        )));
    }
    Ok(())
}

pub(crate) fn transpose(ctx: &mut NodeCtx<'_>) -> Result<(), ImportError> {
    let x = ctx.required_input(0)?;
    let shape = ctx.info(x).shape.clone();
    let rank = shape.len();
    let perm: Vec<usize> = match ctx.attr_ints("perm") {
        p if p.is_empty() => (0..rank).rev().collect(),
        p => p
            .iter()
            .map(|&a| norm_axis(ctx, a, rank))
            .collect::<Result<_, _>>()?,
    };
    let mut seen = vec![false; rank];
    if perm.len() != rank || perm.iter().any(|&a| std::mem::replace(&mut seen[a], true)) {
        return Err(ctx.err(format!("perm {perm:?} is not a permutation of {rank} axes")));
    }
    if ctx.constant(x).is_none() && perm[0] != 0 && shape[0] == 1 && shape[perm[0]] != 1 {
        return Err(ctx.err("the permutation moves the batch axis"));
    }
    let out: Vec<usize> = perm.iter().map(|&a| shape[a]).collect();
    let st = strides(&shape);
    let rows = (0..ctx.numel(&out)?)
        .map(|f| {
            let o = unravel(f, &out);
            copy_row(0, (0..rank).map(|k| o[k] * st[perm[k]]).sum())
        })
        .collect();
    emit_rows(ctx, &[x], rows, out)
}

pub(crate) fn concat(ctx: &mut NodeCtx<'_>) -> Result<(), ImportError> {
    let inputs: Vec<ValueId> = (0..ctx.node.input.len())
        .map(|i| ctx.required_input(i))
        .collect::<Result<_, _>>()?;
    let shapes: Vec<Vec<usize>> = inputs.iter().map(|&v| ctx.info(v).shape.clone()).collect();
    let rank = shapes[0].len();
    let axis = norm_axis(ctx, ctx.attr_i("axis", 0), rank)?;
    if shapes
        .iter()
        .any(|s| s.len() != rank || (0..rank).any(|a| a != axis && s[a] != shapes[0][a]))
    {
        return Err(ctx.err(format!(
            "input shapes {shapes:?} do not concatenate on axis {axis}"
        )));
    }
    if axis == 0 && inputs.iter().any(|&v| ctx.constant(v).is_none()) {
        return Err(ctx.err("concatenation along the batch axis"));
    }
    let mut out = shapes[0].clone();
    out[axis] = shapes.iter().map(|s| s[axis]).sum();
    let rows = (0..ctx.numel(&out)?)
        .map(|f| {
            let mut o = unravel(f, &out);
            let mut pos = 0;
            while o[axis] >= shapes[pos][axis] {
                o[axis] -= shapes[pos][axis];
                pos += 1;
            }
            let st = strides(&shapes[pos]);
            copy_row(pos, o.iter().zip(&st).map(|(a, b)| a * b).sum())
        })
        .collect();
    emit_rows(ctx, &inputs, rows, out)
}

/// Squeeze and Unsqueeze (axes from the attribute or, from opset 13, input 1).
pub(crate) fn squeeze(ctx: &mut NodeCtx<'_>) -> Result<(), ImportError> {
    let x = ctx.required_input(0)?;
    let shape = ctx.info(x).shape.clone();
    let axes = const_ints(ctx, 1, "axes")?.unwrap_or_default();
    let out = if ctx.node.op_type == "Squeeze" {
        let axes: Vec<usize> = if axes.is_empty() {
            (0..shape.len())
                .filter(|&a| shape[a] == 1 && a > 0)
                .collect()
        } else {
            axes.iter()
                .map(|&a| norm_axis(ctx, a, shape.len()))
                .collect::<Result<_, _>>()?
        };
        if axes.iter().any(|&a| shape[a] != 1) {
            return Err(ctx.err(format!("cannot squeeze axes {axes:?} of shape {shape:?}")));
        }
        if ctx.constant(x).is_none() {
            keep_batch(ctx, &axes, "squeezes")?;
        }
        (0..shape.len())
            .filter(|a| !axes.contains(a))
            .map(|a| shape[a])
            .collect()
    } else {
        let rank = shape.len() + axes.len();
        let axes: Vec<usize> = axes
            .iter()
            .map(|&a| norm_axis(ctx, a, rank))
            .collect::<Result<_, _>>()?;
        if ctx.constant(x).is_none() {
            keep_batch(ctx, &axes, "inserts an axis before")?;
        }
        let mut it = shape.iter();
        (0..rank)
            .map(|a| {
                if axes.contains(&a) {
                    1
                } else {
                    *it.next().unwrap_or(&1)
                }
            })
            .collect()
    };
    super::shape::reshape_to(ctx, out)
}

pub(crate) fn slice(ctx: &mut NodeCtx<'_>) -> Result<(), ImportError> {
    let x = ctx.required_input(0)?;
    let shape = ctx.info(x).shape.clone();
    let rank = shape.len();
    let starts = const_ints(ctx, 1, "starts")?.ok_or_else(|| ctx.err("missing starts"))?;
    let ends = const_ints(ctx, 2, "ends")?.ok_or_else(|| ctx.err("missing ends"))?;
    let axes: Vec<usize> = match const_ints(ctx, 3, "axes")? {
        Some(a) if !a.is_empty() => a
            .iter()
            .map(|&a| norm_axis(ctx, a, rank))
            .collect::<Result<_, _>>()?,
        _ => (0..starts.len()).collect(),
    };
    let steps = const_ints(ctx, 4, "steps")?
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| vec![1; starts.len()]);
    if ends.len() != starts.len() || axes.len() != starts.len() || steps.len() != starts.len() {
        return Err(ctx.err("starts, ends, axes and steps differ in length"));
    }
    // per axis: first index and step, and the output size
    let mut first = vec![0i64; rank];
    let mut step = vec![1i64; rank];
    let mut out = shape.clone();
    for (i, &a) in axes.iter().enumerate() {
        let d = shape[a] as i64;
        let s = steps[i];
        if s == 0 {
            return Err(ctx.err("a slice step is 0"));
        }
        let fix = |v: i64| if v < 0 { v + d } else { v };
        let (b, e) = if s > 0 {
            (fix(starts[i]).clamp(0, d), fix(ends[i]).clamp(0, d))
        } else {
            (
                fix(starts[i]).clamp(0, d - 1),
                fix(ends[i]).clamp(-1, d - 1),
            )
        };
        let n = if s > 0 {
            (e - b + s - 1).max(0) / s
        } else {
            (b - e - s - 1).max(0) / -s
        };
        (first[a], step[a], out[a]) = (b, s, n as usize);
    }
    if ctx.constant(x).is_none() && out[0] != shape[0] {
        return Err(ctx.err("the slice changes the batch axis"));
    }
    let st = strides(&shape);
    let rows = (0..ctx.numel(&out)?)
        .map(|f| {
            let o = unravel(f, &out);
            copy_row(
                0,
                (0..rank)
                    .map(|a| (first[a] + o[a] as i64 * step[a]) as usize * st[a])
                    .sum(),
            )
        })
        .collect();
    emit_rows(ctx, &[x], rows, out)
}

pub(crate) fn gather(ctx: &mut NodeCtx<'_>) -> Result<(), ImportError> {
    let x = ctx.required_input(0)?;
    let ind = ctx.required_input(1)?;
    let indices = ctx.constant(ind).cloned().ok_or_else(|| {
        ctx.err("the indices are not a constant: gathering at encrypted positions is not supported")
    })?;
    let shape = ctx.info(x).shape.clone();
    let axis = norm_axis(ctx, ctx.attr_i("axis", 0), shape.len())?;
    if ctx.constant(x).is_none() {
        keep_batch(ctx, &[axis], "gathers along")?;
    }
    let d = shape[axis] as i64;
    let idx: Vec<usize> = indices
        .data
        .iter()
        .map(|&v| {
            let v = v as i64;
            let v = if v < 0 { v + d } else { v };
            if (0..d).contains(&v) {
                Ok(v as usize)
            } else {
                Err(ctx.err(format!(
                    "index {v} out of range for axis {axis} of size {d}"
                )))
            }
        })
        .collect::<Result<_, _>>()?;
    let mut out: Vec<usize> = shape[..axis].to_vec();
    out.extend(&indices.shape);
    out.extend(&shape[axis + 1..]);
    let st = strides(&shape);
    let ir = indices.shape.len();
    let rows = (0..ctx.numel(&out)?)
        .map(|f| {
            let o = unravel(f, &out);
            let k = if ir == 0 {
                0
            } else {
                o[axis..axis + ir]
                    .iter()
                    .zip(strides(&indices.shape))
                    .map(|(a, b)| a * b)
                    .sum()
            };
            let mut src: usize = (0..axis).map(|a| o[a] * st[a]).sum();
            src += idx[k] * st[axis];
            src += (axis + 1..shape.len())
                .map(|a| o[a + ir - 1] * st[a])
                .sum::<usize>();
            copy_row(0, src)
        })
        .collect();
    emit_rows(ctx, &[x], rows, out)
}

pub(crate) fn pad(ctx: &mut NodeCtx<'_>) -> Result<(), ImportError> {
    let x = ctx.required_input(0)?;
    let shape = ctx.info(x).shape.clone();
    let rank = shape.len();
    let pads = const_ints(ctx, 1, "pads")?.ok_or_else(|| ctx.err("missing pads"))?;
    let value = match ctx.input(2)? {
        Some(v) => ctx
            .constant(v)
            .ok_or_else(|| ctx.err("the pad value is not a constant"))?
            .data
            .first()
            .copied()
            .unwrap_or(0.0),
        None => ctx.attr_f("value", 0.0) as f64,
    };
    let axes: Vec<usize> = match const_ints(ctx, 3, "__no_attr__")? {
        Some(a) => a
            .iter()
            .map(|&a| norm_axis(ctx, a, rank))
            .collect::<Result<_, _>>()?,
        None => (0..rank).collect(),
    };
    if pads.len() != 2 * axes.len() {
        return Err(ctx.err(format!("{} pads for {} axes", pads.len(), axes.len())));
    }
    let mode = ctx.attr_s("mode").unwrap_or_else(|| "constant".into());
    let (mut begin, mut end) = (vec![0i64; rank], vec![0i64; rank]);
    for (i, &a) in axes.iter().enumerate() {
        (begin[a], end[a]) = (pads[i], pads[i + axes.len()]);
    }
    if ctx.constant(x).is_none() && (begin[0] != 0 || end[0] != 0) {
        return Err(ctx.err("padding the batch axis"));
    }
    let out: Vec<usize> = (0..rank)
        .map(|a| (shape[a] as i64 + begin[a] + end[a]).max(0) as usize)
        .collect();
    let st = strides(&shape);
    let count = ctx.numel(&out)?;
    let mut rows = Vec::with_capacity(count);
    for f in 0..count {
        let o = unravel(f, &out);
        let mut src = 0usize;
        let mut inside = true;
        for a in 0..rank {
            let d = shape[a] as i64;
            let mut i = o[a] as i64 - begin[a];
            if !(0..d).contains(&i) {
                match mode.as_str() {
                    "constant" => inside = false,
                    "edge" => i = i.clamp(0, d - 1),
                    "wrap" => i = i.rem_euclid(d),
                    "reflect" if d > 1 => {
                        let period = 2 * (d - 1);
                        i = i.rem_euclid(period);
                        if i >= d {
                            i = period - i;
                        }
                    }
                    "reflect" => i = 0,
                    other => return Err(ctx.err(format!("pad mode '{other}' is not supported"))),
                }
            }
            src += i.clamp(0, d - 1) as usize * st[a];
        }
        rows.push(if inside {
            copy_row(0, src)
        } else {
            (vec![], value)
        });
    }
    emit_rows(ctx, &[x], rows, out)
}

pub(crate) fn expand(ctx: &mut NodeCtx<'_>) -> Result<(), ImportError> {
    let x = ctx.required_input(0)?;
    let target = const_ints(ctx, 1, "__no_attr__")?.ok_or_else(|| ctx.err("missing shape"))?;
    let shape = ctx.info(x).shape.clone();
    let target: Vec<usize> = target.iter().map(|&d| d.max(0) as usize).collect();
    let out = broadcast_shapes(&shape, &target)
        .ok_or_else(|| ctx.err(format!("shape {shape:?} does not broadcast to {target:?}")))?;
    if ctx.constant(x).is_none() && out[0] != 1 {
        return Err(ctx.err("the expansion changes the batch axis"));
    }
    let rows = (0..ctx.numel(&out)?)
        .map(|f| copy_row(0, broadcast_index(&unravel(f, &out), &shape)))
        .collect();
    emit_rows(ctx, &[x], rows, out)
}

/// ReduceSum, ReduceMean, ReduceMax, ReduceMin.
pub(crate) fn reduce(ctx: &mut NodeCtx<'_>) -> Result<(), ImportError> {
    let x = ctx.required_input(0)?;
    let shape = ctx.info(x).shape.clone();
    let rank = shape.len();
    let axes = const_ints(ctx, 1, "axes")?.unwrap_or_default();
    let noop = ctx.attr_i("noop_with_empty_axes", 0) != 0;
    if axes.is_empty() && noop {
        return super::shape::reshape_to(ctx, shape);
    }
    let axes: Vec<usize> = if axes.is_empty() {
        (0..rank).collect()
    } else {
        axes.iter()
            .map(|&a| norm_axis(ctx, a, rank))
            .collect::<Result<_, _>>()?
    };
    let axes: Vec<usize> = axes
        .into_iter()
        .filter(|&a| !(a == 0 && shape[0] == 1 && ctx.constant(x).is_none()))
        .collect();
    let keepdims = ctx.attr_i("keepdims", 1) != 0;
    let kept: Vec<usize> = (0..rank)
        .map(|a| if axes.contains(&a) { 1 } else { shape[a] })
        .collect();
    let out: Vec<usize> = if keepdims {
        kept.clone()
    } else {
        (0..rank)
            .filter(|a| !axes.contains(a) || *a == 0)
            .map(|a| kept[a])
            .collect()
    };
    let st = strides(&shape);
    let reduced: Vec<usize> = axes.iter().map(|&a| shape[a]).collect();
    let count: usize = reduced.iter().product();
    let groups: Vec<Vec<usize>> = (0..ctx.numel(&kept)?)
        .map(|f| {
            let base: usize = unravel(f, &kept).iter().zip(&st).map(|(a, b)| a * b).sum();
            (0..count)
                .map(|r| {
                    base + unravel(r, &reduced)
                        .iter()
                        .zip(&axes)
                        .map(|(i, &a)| i * st[a])
                        .sum::<usize>()
                })
                .collect()
        })
        .collect();
    let op = ctx.node.op_type.clone();
    if op == "ReduceMax" || op == "ReduceMin" {
        if let Some(t) = ctx.constant(x).cloned() {
            let min = op == "ReduceMin";
            let data = groups
                .iter()
                .map(|g| {
                    g.iter().map(|&i| t.data[i]).fold(
                        if min {
                            f64::INFINITY
                        } else {
                            f64::NEG_INFINITY
                        },
                        |m, v| if min { m.min(v) } else { m.max(v) },
                    )
                })
                .collect();
            return ctx.set_constant(0, Tensor::new(out, data, t.dtype));
        }
        let groups = groups
            .into_iter()
            .map(|g| g.into_iter().map(|i| i as u32).collect())
            .collect();
        let (name, dtype) = (ctx.required_output(0)?, ctx.info(x).dtype);
        ctx.add_node(
            Op::GroupMax {
                groups,
                min: op == "ReduceMin",
            },
            vec![x],
            vec![(name, out, dtype)],
        );
        return Ok(());
    }
    let w = if op == "ReduceMean" {
        1.0 / count as f64
    } else {
        1.0
    };
    let rows = groups
        .into_iter()
        .map(|g| (g.into_iter().map(|i| (0, i, w)).collect(), 0.0))
        .collect();
    emit_rows(ctx, &[x], rows, out)
}
