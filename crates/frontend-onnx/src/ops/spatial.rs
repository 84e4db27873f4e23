//! Convolution and pooling (1 to 3 spatial axes). Conv and AveragePool keep their
//! geometry ([`Op::Conv`]; an average pool is a depthwise convolution, its divisor in
//! the weights, or after it when windows differ); MaxPool is a [`Op::GroupMax`].

use crate::conv::{Conv, Geometry, Taps};
use crate::graph::Tensor;
use crate::graph::{BinaryKind, Op};
use crate::{ImportError, NodeCtx};

/// The most spatial axes a convolution or pooling may have here.
const MAX_SPATIAL: usize = 3;

fn per_axis(
    ctx: &NodeCtx<'_>,
    name: &str,
    n: usize,
    default: i64,
) -> Result<Vec<usize>, ImportError> {
    let v = ctx.attr_ints(name);
    let v = if v.is_empty() { vec![default; n] } else { v };
    let too_large = crate::MAX_TENSOR_ELEMENTS as i64;
    if v.len() != n
        || v.iter()
            .any(|&x| x < 0 || x > too_large || (x == 0 && name != "pads"))
    {
        return Err(ctx.err(format!(
            "attribute {name} = {v:?} does not give {n} valid values"
        )));
    }
    Ok(v.into_iter().map(|x| x as usize).collect())
}

/// The geometry of a conv / pool node from its attributes.
fn geometry(
    ctx: &NodeCtx<'_>,
    in_sp: &[usize],
    kernel: Vec<usize>,
    ceil_mode: bool,
) -> Result<Geometry, ImportError> {
    let n = in_sp.len();
    let strides = per_axis(ctx, "strides", n, 1)?;
    let dilations = per_axis(ctx, "dilations", n, 1)?;
    let auto_pad = ctx.attr_s("auto_pad").unwrap_or_else(|| "NOTSET".into());
    let (pad_begin, pad_end) = match auto_pad.as_str() {
        "NOTSET" => {
            let pads = per_axis(ctx, "pads", 2 * n, 0)?;
            (pads[..n].to_vec(), pads[n..].to_vec())
        }
        "VALID" => (vec![0; n], vec![0; n]),
        "SAME_UPPER" | "SAME_LOWER" => {
            let (mut b, mut e) = (vec![0; n], vec![0; n]);
            for a in 0..n {
                let out = in_sp[a].div_ceil(strides[a]);
                let span = (kernel[a] - 1) * dilations[a] + 1;
                let total = ((out - 1) * strides[a] + span).saturating_sub(in_sp[a]);
                let small = total / 2;
                (b[a], e[a]) = if auto_pad == "SAME_UPPER" {
                    (small, total - small)
                } else {
                    (total - small, small)
                };
            }
            (b, e)
        }
        other => return Err(ctx.err(format!("auto_pad '{other}' is not an ONNX value"))),
    };
    let mut out_sp = Vec::with_capacity(n);
    for a in 0..n {
        let span = (kernel[a] - 1) * dilations[a] + 1;
        let padded = in_sp[a] + pad_begin[a] + pad_end[a];
        if padded < span {
            return Err(ctx.err(format!(
                "kernel span {span} exceeds the padded input size {padded} on spatial axis {a}"
            )));
        }
        let mut o = if ceil_mode {
            (padded - span).div_ceil(strides[a]) + 1
        } else {
            (padded - span) / strides[a] + 1
        };
        // a last window starting in the end padding is dropped (as onnxruntime and torch do)
        if ceil_mode && (o - 1) * strides[a] >= in_sp[a] + pad_begin[a] {
            o -= 1;
        }
        out_sp.push(o);
    }
    ctx.numel(&out_sp)?;
    Ok(Geometry {
        in_sp: in_sp.to_vec(),
        kernel,
        strides,
        dilations,
        pad_begin,
        pad_end,
        out_sp,
    })
}

/// `[1, C, spatial…]` of a varying input, or an error.
fn nc_shape(ctx: &NodeCtx<'_>, x: crate::ValueId) -> Result<(usize, Vec<usize>), ImportError> {
    let shape = ctx.info(x).shape.clone();
    if shape.len() < 3 || shape.len() > 2 + MAX_SPATIAL || shape[0] != 1 {
        return Err(ctx.err(format!(
            "input of shape {shape:?}: expected [N, C, spatial…] with 1 to {MAX_SPATIAL} spatial axes"
        )));
    }
    Ok((shape[1], shape[2..].to_vec()))
}

pub(crate) fn conv(ctx: &mut NodeCtx<'_>) -> Result<(), ImportError> {
    let x = ctx.required_input(0)?;
    if ctx.constant(x).is_some() {
        return Err(ctx.err("the convolved input is a constant"));
    }
    let w_id = ctx.required_input(1)?;
    let w = ctx.constant(w_id).cloned().ok_or_else(|| ctx.err("the weights are not a constant: a convolution with an encrypted kernel is not supported"))?;
    let (c, in_sp) = nc_shape(ctx, x)?;
    let group = ctx.attr_i("group", 1);
    if group < 1 || c as i64 % group != 0 {
        return Err(ctx.err(format!(
            "group {group} does not divide the {c} input channels"
        )));
    }
    let group = group as usize;
    if w.shape.len() != in_sp.len() + 2 || w.shape[1] * group != c || w.shape[0] % group != 0 {
        return Err(ctx.err(format!("weights of shape {:?} do not fit {c} input channels in {group} group(s) with {} spatial axes", w.shape, in_sp.len())));
    }
    let m = w.shape[0];
    let kernel = w.shape[2..].to_vec();
    let ks = ctx.attr_ints("kernel_shape");
    if !ks.is_empty() && ks.iter().map(|&v| v as usize).collect::<Vec<_>>() != kernel {
        return Err(ctx.err(format!(
            "kernel_shape {ks:?} disagrees with the weights' shape {:?}",
            w.shape
        )));
    }
    let bias = match ctx.input(2)? {
        None => vec![0.0; m],
        Some(b) => {
            let t = ctx
                .constant(b)
                .ok_or_else(|| ctx.err("the bias is not a constant"))?;
            if t.numel() != m {
                return Err(ctx.err(format!(
                    "bias has {} values for {m} output channels",
                    t.numel()
                )));
            }
            t.data.clone()
        }
    };
    let geometry = geometry(ctx, &in_sp, kernel, false)?;
    let mut shape = vec![1, m];
    shape.extend(&geometry.out_sp);
    ctx.numel(&shape)?;
    let op = Op::Conv(Box::new(Conv {
        geometry,
        in_channels: c,
        out_channels: m,
        groups: group,
        weight: w.data,
        bias,
    }));
    let (name, dtype) = (ctx.required_output(0)?, ctx.info(x).dtype);
    ctx.add_node(op, vec![x], vec![(name, shape, dtype)]);
    Ok(())
}

/// AveragePool, MaxPool, GlobalAveragePool and GlobalMaxPool.
pub(crate) fn pool(ctx: &mut NodeCtx<'_>) -> Result<(), ImportError> {
    let op = ctx.node.op_type.clone();
    let x = ctx.required_input(0)?;
    if ctx.constant(x).is_some() {
        return Err(ctx.err("the pooled input is a constant"));
    }
    if ctx.output_name(1).is_some() {
        return Err(ctx.err("the Indices output of MaxPool is not supported"));
    }
    let (c, in_sp) = nc_shape(ctx, x)?;
    let global = op.starts_with("Global");
    let g = if global {
        Geometry {
            kernel: in_sp.clone(),
            strides: vec![1; in_sp.len()],
            dilations: vec![1; in_sp.len()],
            pad_begin: vec![0; in_sp.len()],
            pad_end: vec![0; in_sp.len()],
            out_sp: vec![1; in_sp.len()],
            in_sp: in_sp.clone(),
        }
    } else {
        let kernel = ctx.attr_ints("kernel_shape");
        if kernel.len() != in_sp.len() || kernel.iter().any(|&k| k < 1) {
            return Err(ctx.err(format!(
                "kernel_shape {kernel:?} does not fit {} spatial axes",
                in_sp.len()
            )));
        }
        if op == "AveragePool" && ctx.attr_ints("dilations").iter().any(|&d| d != 1) {
            return Err(ctx.err("AveragePool with dilations is not supported"));
        }
        let kernel = kernel.into_iter().map(|k| k as usize).collect();
        geometry(ctx, &in_sp, kernel, ctx.attr_i("ceil_mode", 0) != 0)?
    };
    let in_plane: usize = in_sp.iter().product();
    let windows: Vec<(Taps, usize)> = (0..g.out_count()).map(|o| g.window(o)).collect();
    let mut shape = vec![1, c];
    shape.extend(&g.out_sp);
    ctx.numel(&shape)?;
    let (name, dtype) = (ctx.required_output(0)?, ctx.info(x).dtype);
    if op.ends_with("MaxPool") {
        let mut groups = Vec::with_capacity(c * windows.len());
        for ch in 0..c {
            for (win, _) in &windows {
                let group: Vec<u32> = win
                    .iter()
                    .filter_map(|&(_, s)| s.map(|s| (ch * in_plane + s) as u32))
                    .collect();
                if group.is_empty() {
                    return Err(ctx.err("a pooling window lies entirely in the padding"));
                }
                groups.push(group);
            }
        }
        ctx.add_node(
            Op::GroupMax { groups, min: false },
            vec![x],
            vec![(name, shape, dtype)],
        );
        return Ok(());
    }
    let include_pad = ctx.attr_i("count_include_pad", 0) != 0;
    // With count_include_pad, a ceil-mode window that runs past the padding divides by
    // the whole kernel before opset 19 (onnxruntime's AveragePool-7/11), by the
    // positions inside the padded input from 19 on (ONNX's reference, PyTorch).
    let whole_kernel = include_pad && ctx.opset() < 19;
    let mut divisors = Vec::with_capacity(windows.len());
    for (win, padded) in &windows {
        let div = match (include_pad, whole_kernel) {
            (true, true) => g.kernel_count(),
            (true, false) => *padded,
            (false, _) => win.iter().filter(|(_, s)| s.is_some()).count(),
        };
        if div == 0 {
            return Err(ctx.err("a pooling window lies entirely in the padding"));
        }
        divisors.push(div as f64);
    }
    // a depthwise convolution summing each window; one divisor goes into its weights,
    // several into a per-element scaling after it
    let uniform = divisors.iter().all(|&d| d == divisors[0]);
    let weight = if uniform { 1.0 / divisors[0] } else { 1.0 };
    let kc = g.kernel_count();
    let sum = Op::Conv(Box::new(Conv {
        geometry: g,
        in_channels: c,
        out_channels: c,
        groups: c,
        weight: vec![weight; c * kc],
        bias: vec![0.0; c],
    }));
    if uniform {
        ctx.add_node(sum, vec![x], vec![(name, shape, dtype)]);
        return Ok(());
    }
    let sums = ctx.add_sub_node(
        "window sums",
        sum,
        vec![x],
        vec![(format!("{name}/sums"), shape.clone(), dtype)],
    )[0];
    let numel = c * divisors.len();
    let inverse: Vec<f64> = (0..numel)
        .map(|e| 1.0 / divisors[e % divisors.len()])
        .collect();
    ctx.add_node(
        Op::BinaryConst {
            kind: BinaryKind::Mul,
            constant: Tensor::new(shape.clone(), inverse, dtype),
            constant_first: false,
        },
        vec![sums],
        vec![(name, shape, dtype)],
    );
    Ok(())
}
