//! LayerNormalization, decomposed into ops the circuit already has (docs/USER-GUIDE.md):
//!
//! ```text
//! d = x − mean(x)               one leveled sparse map over each normalized group
//! v = mean(d²)                  d² a table lookup per element, the mean leveled
//! r = 1 / sqrt(v + ε)           one table lookup per group
//! y = (d · r)·γ + β             an encrypted product per element (two lookups), γ and β
//!                               fold into the next table
//! ```
//!
//! In FHE it costs three bootstraps per element and one per group.

use crate::graph::{Activation, BinaryKind, Op, SparseMap, SparseTerm, Tensor};
use crate::{ImportError, NodeCtx};

pub(crate) fn layer_normalization(ctx: &mut NodeCtx<'_>) -> Result<(), ImportError> {
    let x = ctx.required_input(0)?;
    if ctx.constant(x).is_some() {
        return Err(ctx.err("the normalized input is a constant"));
    }
    if ctx.output_name(1).is_some() || ctx.output_name(2).is_some() {
        return Err(ctx.err("the Mean and InvStdDev outputs are not supported"));
    }
    let shape = ctx.info(x).shape.clone();
    let axis = crate::ops::axis(ctx, ctx.attr_i("axis", -1), shape.len())?;
    if axis == 0 {
        return Err(ctx.err("normalizes over the batch dimension (axis 0)"));
    }
    let eps = ctx.attr_f("epsilon", 1e-5) as f64;
    let group: usize = shape[axis..].iter().product();
    let numel: usize = shape.iter().product();
    let groups = numel / group.max(1);
    let param = |i: usize, default: f64| -> Result<Vec<f64>, ImportError> {
        match ctx.input(i)? {
            None => Ok(vec![default; numel]),
            Some(v) => {
                let t = ctx
                    .constant(v)
                    .ok_or_else(|| ctx.err(format!("input {i} is not a constant")))?;
                let t = crate::broadcast_to(t, &shape[axis..]).ok_or_else(|| {
                    ctx.err(format!(
                        "input {i} does not broadcast to the normalized axes"
                    ))
                })?;
                Ok((0..numel).map(|e| t.data[e % group]).collect())
            }
        }
    };
    let (gamma, beta) = (param(1, 1.0)?, param(2, 0.0)?);
    let out = ctx.required_output(0)?;
    let dtype = ctx.info(x).dtype;
    let n = group as f64;
    let mut group_shape = shape[..axis].to_vec();
    group_shape.push(1);

    // d = x − mean over each group
    let mut centre = SparseMap::default();
    for e in 0..numel {
        let g = e / group;
        centre.push_row(
            (g * group..(g + 1) * group).map(|j| SparseTerm {
                slot: 0,
                index: j as u32,
                weight: if j == e { 1.0 - 1.0 / n } else { -1.0 / n },
            }),
            0.0,
        );
    }
    let d = ctx.add_sub_node(
        "centred",
        Op::Sparse(centre),
        vec![x],
        vec![(format!("{out}/centred"), shape.clone(), dtype)],
    )[0];
    let sq = ctx.add_sub_node(
        "square",
        Op::BinaryConst {
            kind: BinaryKind::Pow,
            constant: Tensor::new(shape.clone(), vec![2.0; numel], dtype),
            constant_first: false,
        },
        vec![d],
        vec![(format!("{out}/square"), shape.clone(), dtype)],
    )[0];
    let mut mean = SparseMap::default();
    for g in 0..groups {
        mean.push_row(
            (g * group..(g + 1) * group).map(|j| SparseTerm {
                slot: 0,
                index: j as u32,
                weight: 1.0 / n,
            }),
            0.0,
        );
    }
    let var = ctx.add_sub_node(
        "variance",
        Op::Sparse(mean),
        vec![sq],
        vec![(format!("{out}/variance"), group_shape.clone(), dtype)],
    )[0];
    let shifted = ctx.add_sub_node(
        "epsilon",
        Op::BinaryConst {
            kind: BinaryKind::Add,
            constant: Tensor::new(group_shape.clone(), vec![eps; groups], dtype),
            constant_first: false,
        },
        vec![var],
        vec![(format!("{out}/shifted"), group_shape.clone(), dtype)],
    )[0];
    let std = ctx.add_sub_node(
        "sqrt",
        Op::Activation(Activation::Sqrt),
        vec![shifted],
        vec![(format!("{out}/std"), group_shape.clone(), dtype)],
    )[0];
    let inv = ctx.add_sub_node(
        "reciprocal",
        Op::Activation(Activation::Reciprocal),
        vec![std],
        vec![(format!("{out}/inv_std"), group_shape, dtype)],
    )[0];
    let normed = ctx.add_sub_node(
        "normalize",
        Op::Pairwise {
            kind: BinaryKind::Mul,
            left: (0..numel as u32).collect(),
            right: (0..numel).map(|e| (e / group) as u32).collect(),
        },
        vec![d, inv],
        vec![(format!("{out}/normalized"), shape.clone(), dtype)],
    )[0];
    let scaled = ctx.add_sub_node(
        "scale",
        Op::BinaryConst {
            kind: BinaryKind::Mul,
            constant: Tensor::new(shape.clone(), gamma, dtype),
            constant_first: false,
        },
        vec![normed],
        vec![(format!("{out}/scaled"), shape.clone(), dtype)],
    )[0];
    ctx.add_node(
        Op::BinaryConst {
            kind: BinaryKind::Add,
            constant: Tensor::new(shape.clone(), beta, dtype),
            constant_first: false,
        },
        vec![scaled],
        vec![(out, shape, dtype)],
    );
    Ok(())
}
