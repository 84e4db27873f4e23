//! Linear parts past the lookup (docs/QUANTIZATION.md, "Linear parts past the lookup").
//!
//! A dense layer `y = W₂·f(z) + b₂` reading the activations of an earlier one,
//! `z = W₁·x + b₁`, splits each activation on the inputset into its straight line and
//! the rest: `f(z_j) = α_j·z_j + β_j + r_j(z_j)`, `α_j, β_j` by least squares. Then
//!
//! ```text
//! y = W₂·r(z) + (W₂·diag(α)·W₁)·x + W₂·(α∘b₁ + β) + b₂
//! ```
//!
//! The table lookup computes only `r`, and the linear part reaches the layer from the
//! earlier layer's operand `x` through clear weights, with no rounding on the way. A
//! lookup reads its accumulator rounded to a few bits; when the network is nearly
//! linear on its data (raw features whose neurons stay on one side of the ReLU), that
//! rounding is what it loses, and `r` is flat there. One `Linear` over both operands
//! (an `Affine` copy puts them side by side) keeps it one leveled layer.

use std::collections::HashMap;

use fhec_ir::{NodeId, Term};

use crate::builder::{with_last_axis, Lowering, QValue};
use crate::client::Pending;
use crate::sparse::IntRows;
use crate::QuantError;

/// What a dense layer computed, for a later layer to reach past its activations.
#[derive(Clone)]
pub(crate) struct DenseSource {
    /// The operand the layer read (narrow, one row).
    pub operand: QValue,
    /// `[outputs × inputs]`, row-major, in float.
    pub weight: Vec<f64>,
    pub bias: Vec<f64>,
    pub inputs: usize,
    /// The result's dequantization as built: `z = scale·acc + offset`.
    pub scale: Vec<f64>,
    pub offset: Vec<f64>,
}

pub(crate) type DenseSources = HashMap<NodeId, DenseSource>;

impl Lowering<'_> {
    /// The dense layer `name` (`k` inputs, `n` outputs) on `x` with its activations'
    /// linear parts past the lookup, or `None` where `x` is not activations of a dense
    /// layer's single row (nothing pending, or an earlier op in between).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn dense_past_lookup(
        &mut self,
        name: &str,
        x: &QValue,
        (k, n): (usize, usize),
        weight: &[f64],
        bias: &[f64],
        shape: Vec<usize>,
    ) -> Result<Option<QValue>, QuantError> {
        if x.pending.is_empty() || x.narrow {
            return Ok(None);
        }
        let Some(source) = self.dense_sources.get(&x.node).cloned() else {
            return Ok(None);
        };
        if source.scale.len() != k || x.scale.len() != k {
            return Ok(None);
        }
        let k1 = source.inputs;
        // z (the source's value, after any affine op folded since) = a·z₁ + c
        let a: Vec<f64> = (0..k).map(|j| x.scale[j] / source.scale[j]).collect();
        let c: Vec<f64> = (0..k)
            .map(|j| x.offset[j] - a[j] * source.offset[j])
            .collect();
        let (slope, intercept) = straight_lines(x);
        let residual = QValue {
            pending: vec![Pending::Residual {
                ops: x.pending.clone(),
                slope: slope.clone(),
                intercept: intercept.clone(),
            }],
            ..x.clone()
        };
        let r = self.requantize_per_feature(name, residual, k)?;
        // both operands side by side: the residuals, then the earlier layer's operand
        let x1 = &source.operand;
        let mut rows: Vec<(Vec<Term>, i64)> = Vec::with_capacity(k + k1);
        for (slot, count) in [(0u32, k), (1u32, k1)] {
            for index in 0..count {
                let term = Term {
                    operand: slot,
                    index: index as u32,
                    weight: 1,
                };
                rows.push((vec![term], 0));
            }
        }
        // the activations' shape (leading unit axes kept), `k + k1` on the last axis
        let both_shape = with_last_axis(self.circuit.node(x.node).shape.clone(), k + k1);
        let built = self.affine(
            &format!("{name}/operands"),
            &[&r, x1],
            IntRows { rows, sound: None },
            both_shape,
        );
        let scale = r.scale.iter().chain(&x1.scale).copied().collect();
        let offset = r.offset.iter().chain(&x1.offset).copied().collect();
        let both = built.into_value(scale, offset, true);
        // [W₂ | W₂·diag(α∘a)·W₁] and b₂ + W₂·(α∘(a∘b₁ + c) + β)
        let wide = k + k1;
        let mut combined = vec![0f64; n * wide];
        let mut combined_bias = bias.to_vec();
        for o in 0..n {
            for j in 0..k {
                let w2 = weight[o * k + j];
                combined[o * wide + j] = w2;
                if w2 == 0.0 {
                    continue;
                }
                let through = w2 * slope[j] * a[j];
                for i in 0..k1 {
                    combined[o * wide + k + i] += through * source.weight[j * k1 + i];
                }
                combined_bias[o] += w2 * (slope[j] * (a[j] * source.bias[j] + c[j]) + intercept[j]);
            }
        }
        self.dense(name, both, wide, n, &combined, &combined_bias, shape)
            .map(Some)
    }
}

/// Per element of `x` (an accumulator with pending ops `f`), the least-squares line
/// `α·z + β` through `f(z)` over the inputset, `z` the dequantized accumulator. An
/// element constant on the inputset gets `α = 0`.
fn straight_lines(x: &QValue) -> (Vec<f64>, Vec<f64>) {
    let samples = x.calib.len().max(1) as f64;
    (0..x.scale.len())
        .map(|e| {
            let points: Vec<(f64, f64)> = x
                .calib
                .iter()
                .map(|q| {
                    let v = q[e] as f64;
                    (x.scale[e] * v + x.offset[e], x.float(e, v))
                })
                .collect();
            let mz = points.iter().map(|p| p.0).sum::<f64>() / samples;
            let mf = points.iter().map(|p| p.1).sum::<f64>() / samples;
            let (var, cov) = points.iter().fold((0f64, 0f64), |(v, c), &(z, f)| {
                (v + (z - mz) * (z - mz), c + (z - mz) * (f - mf))
            });
            let slope = if var > 0.0 { cov / var } else { 0.0 };
            (slope, mf - slope * mz)
        })
        .unzip()
}

#[cfg(test)]
mod tests {
    use super::*;
    use fhec_frontend_onnx::graph::Activation;

    fn accumulator(calib: Vec<Vec<i64>>, pending: Vec<Pending>) -> QValue {
        let n = calib[0].len();
        let mut circuit = fhec_ir::Circuit::default();
        let input = fhec_ir::Node {
            name: "z".into(),
            op: fhec_ir::IntOp::Input { index: 0, bits: 5 },
            shape: vec![n],
            status: fhec_ir::Status::Encrypted,
            range: fhec_ir::Range::new(0, 31),
        };
        QValue {
            node: circuit.add(input, &[]),
            scale: vec![0.5; n],
            offset: vec![-4.0; n],
            pending,
            narrow: false,
            sound: vec![(0, 20); n],
            design: None,
            calib,
        }
    }

    /// A ReLU that the inputset only sees on one side is its own straight line there
    /// (slope 1 above 0, slope 0 below), and a constant element gets slope 0.
    #[test]
    fn straight_lines_fit_an_activation_on_the_inputset() {
        // z = 0.5·q − 4: element 0 spans [1, 6] (always active), element 1 spans
        // [−3.5, −1] (never), element 2 is constant at 1
        let calib = (0..6).map(|i| vec![10 + 2 * i, 1 + i, 10]).collect();
        let x = accumulator(calib, vec![Pending::Activation(Activation::Relu)]);
        let (slope, intercept) = straight_lines(&x);
        assert!((slope[0] - 1.0).abs() < 1e-12 && intercept[0].abs() < 1e-12);
        assert!(slope[1].abs() < 1e-12 && intercept[1].abs() < 1e-12);
        assert_eq!(slope[2], 0.0);
        assert!((intercept[2] - 1.0).abs() < 1e-12);
    }
}
