//! Dense layers (`Gemm`, `MatMul`): weights per output row, input grids folded into
//! them, bias correction, and output weights in two parts (docs/QUANTIZATION.md).

use std::collections::HashSet;

use fhec_frontend_onnx::{FloatGraph, Op};
use fhec_ir::{IntOp, Node, Range, Status};

use crate::builder::{symmetric_step, with_last_axis, Lowering, QValue};
use crate::QuantError;

impl Lowering<'_> {
    /// A dense layer whose input takes a table lookup first, with one grid per feature
    /// (folded into the weights). Every feature then spans all its levels, which can
    /// widen the accumulator: where it reaches the last bit below the limit (a rounding
    /// may need it) and one grid for the tensor would keep it narrower, one grid it is.
    /// The version not kept is left unread (removed at the end), its grids unreported.
    pub(crate) fn dense_on_feature_grids(
        &mut self,
        name: &str,
        x: QValue,
        (k, n): (usize, usize),
        weight: &[f64],
        bias: &[f64],
        shape: Vec<usize>,
    ) -> Result<QValue, QuantError> {
        let width = |l: &Self, v: &QValue| fhec_ir::bits_for_range(l.circuit.node(v.node).range);
        let before = self.origins.len();
        let grids = self.requantize_per_feature(name, x.clone(), k)?;
        let per_feature = self.dense(name, grids, k, n, weight, bias, shape.clone())?;
        if width(self, &per_feature) < fhec_ir::MAX_BITS {
            return Ok(per_feature);
        }
        let reported = self.origins.split_off(before);
        let one_grid = self.dense(name, x, k, n, weight, bias, shape)?;
        if width(self, &one_grid) < width(self, &per_feature) {
            return Ok(one_grid);
        }
        self.origins.truncate(before);
        self.origins.extend(reported);
        Ok(per_feature)
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn dense(
        &mut self,
        name: &str,
        x: QValue,
        k: usize,
        n: usize,
        weight: &[f64],
        bias: &[f64],
        shape: Vec<usize>,
    ) -> Result<QValue, QuantError> {
        // an input quantized per feature folds each feature's step into its weight
        // column: `w·(s_i·q + o_i) = (w·s_i/s_0)·s_0·q + w·o_i`
        let per_feature = !self.qat
            && x.narrow
            && x.pending.is_empty()
            && (0..x.scale.len()).all(|e| x.scale[e] == x.scale[e % k]);
        let x = if x.narrow && x.pending.is_empty() && (x.uniform_scale() || per_feature) {
            x
        } else {
            self.requantize(name, x)?
        };
        let folded: Vec<f64>;
        let quantized_weight = if x.uniform_scale() {
            weight
        } else {
            folded = weight
                .iter()
                .enumerate()
                .map(|(i, w)| w * x.scale[i % k] / x.scale[0])
                .collect();
            &folded
        };
        // a QAT model's weights are integers on its own grid (one step per output row)
        let model_steps = if self.qat {
            weight
                .chunks(k)
                .map(weight_step)
                .collect::<Option<Vec<f64>>>()
        } else {
            None
        };
        let (s_w, wq) = match &model_steps {
            Some(steps) => (steps.clone(), on_steps(quantized_weight, steps, k)),
            // one symmetric scale per output row (per channel): each row's integers use
            // all `weight_bits` levels
            None => quantize_rows(quantized_weight, k, self.cfg.weight_bits),
        };
        let rows = x.calib[0].len() / k;
        // output weights in two parts: what rounding lost, rounded at its own finer step
        let split = self.cfg.split_output_weights
            && !self.qat
            && rows == 1
            && self.client_bound.contains(name);
        let (s_rem, wq_rem) = if split {
            let lost: Vec<f64> = quantized_weight
                .iter()
                .zip(&wq)
                .enumerate()
                .map(|(i, (w, &q))| w - s_w[i / k] * q as f64)
                .collect();
            quantize_rows(&lost, k, self.cfg.weight_bits)
        } else {
            (Vec::new(), Vec::new())
        };
        // the integer rows the circuit computes: the weights, then any remainders
        let n_int = if split { 2 * n } else { n };
        let w_int: Vec<i64> = wq.iter().chain(&wq_rem).copied().collect();
        let wbits = 1 + fhec_ir::bits_for_range(Range::new(
            0,
            wq.iter().map(|w| w.abs()).max().unwrap_or(0),
        ));
        self.origins.push(crate::QuantOrigin {
            tensor: name.to_string(),
            kind: crate::OriginKind::Weights,
            from_model: model_steps.is_some(),
            bits: wbits,
            scale: s_w[0],
        });
        // integer accumulators on the inputset, before the shift
        let acc: Vec<Vec<i64>> = x
            .calib
            .iter()
            .map(|q| fhec_ir::interp::linear(q, &w_int, &vec![0; n_int], k, n_int))
            .collect();
        let sound = sound_linear(&x.sound, &w_int, k, n_int);
        // the range the circuit is built for: calibrated, widened by the margin, within sound
        let mut design = calibrated_design(&acc, &sound, self.cfg.range_margin);
        let shift: Vec<i64> = (0..n_int)
            .map(|j| {
                -(0..rows)
                    .map(|r| design[r * n_int + j].0)
                    .min()
                    .unwrap_or(0)
            })
            .collect();
        for (e, d) in design.iter_mut().enumerate() {
            *d = (d.0 + shift[e % n_int], d.1 + shift[e % n_int]);
        }
        let calib: Vec<Vec<i64>> = acc
            .into_iter()
            .map(|a| {
                a.iter()
                    .enumerate()
                    .map(|(e, v)| v + shift[e % n_int])
                    .collect()
            })
            .collect();
        let sound: Vec<(i64, i64)> = sound
            .iter()
            .enumerate()
            .map(|(e, s)| (s.0 + shift[e % n_int], s.1 + shift[e % n_int]))
            .collect();
        // bias correction: the rounded weights' error on the inputset's mean operand,
        // `Σ (w − kept w)·mean(q)`, goes into the offset. Raw features never come near
        // 0, so that mean error dominates what rounding loses (docs/QUANTIZATION.md)
        let mean_q = mean_operand(&x.calib);
        let mut offset = Vec::with_capacity(rows * n);
        let mut scale = Vec::with_capacity(rows * n);
        for r in 0..rows {
            for j in 0..n {
                let s = x.scale[0] * s_w[j];
                let wo: f64 = (0..k)
                    .map(|i| weight[j * k + i] * x.offset[r * k + i])
                    .sum();
                let kept = |i: usize| match split {
                    true => s_w[j] * wq[j * k + i] as f64 + s_rem[j] * wq_rem[j * k + i] as f64,
                    false => s_w[j] * wq[j * k + i] as f64,
                };
                let rounding: f64 = (0..k)
                    .map(|i| (quantized_weight[j * k + i] - kept(i)) * mean_q[r * k + i])
                    .sum();
                let remainder_shift = match split {
                    true => x.scale[0] * s_rem[j] * shift[n + j] as f64,
                    false => 0.0,
                };
                offset.push(
                    wo + x.scale[0] * rounding + bias[j] - s * shift[j] as f64 - remainder_shift,
                );
                scale.push(s);
            }
        }
        let op = IntOp::Linear {
            inputs: k,
            outputs: n_int,
            weight: w_int,
            bias: shift,
        };
        let shape = match split {
            true => with_last_axis(shape, n_int),
            false => shape,
        };
        let range = Range::new(0, design.iter().map(|d| d.1).max().unwrap_or(0));
        let node = self.circuit.add(
            Node {
                name: name.to_string(),
                op,
                shape,
                status: Status::Encrypted,
                range,
            },
            &[x.node],
        );
        if split {
            let steps = s_rem.iter().map(|s| x.scale[0] * s).collect();
            self.output_remainders.insert(node, steps);
        } else if self.cfg.linear_bypass && rows == 1 {
            let source = crate::bypass::DenseSource {
                operand: x.clone(),
                weight: weight.to_vec(),
                bias: bias.to_vec(),
                inputs: k,
                scale: scale.clone(),
                offset: offset.clone(),
            };
            self.dense_sources.insert(node, source);
        }
        Ok(QValue {
            node,
            scale,
            offset,
            pending: vec![],
            narrow: false,
            calib,
            sound,
            design: Some(design),
        })
    }
}

/// The names of the circuit's dense layers whose result only the client reads.
pub(crate) fn client_bound_dense(graph: &FloatGraph, circuit_side: &[bool]) -> HashSet<String> {
    graph
        .nodes
        .iter()
        .enumerate()
        .filter(|&(i, n)| circuit_side[i] && matches!(n.op, Op::Dense { .. }))
        .filter(|(_, n)| {
            !graph
                .nodes
                .iter()
                .enumerate()
                .any(|(j, r)| circuit_side[j] && r.inputs.contains(&n.outputs[0]))
        })
        .map(|(_, n)| n.name.clone())
        .collect()
}

/// The step of a row of weights that are integer multiples of one step, at most 127 of
/// it (int8, as a quantized model stores them): the largest `min|w| / m`, m = 1..=16,
/// dividing every weight to 1e-4. `None` for float weights.
pub(crate) fn weight_step(row: &[f64]) -> Option<f64> {
    let smallest = row
        .iter()
        .map(|w| w.abs())
        .filter(|&w| w > 0.0)
        .fold(f64::INFINITY, f64::min);
    if !smallest.is_finite() {
        return Some(1.0); // an all-zero row: any step
    }
    (1..=16).map(|m| smallest / m as f64).find(|&step| {
        row.iter().all(|w| {
            let q = w / step;
            (q - q.round()).abs() < 1e-4 && q.abs() <= 127.5
        })
    })
}

/// Per element of an accumulator, the range the circuit is built for: its range on the
/// inputset (`acc`, per sample) widened by `margin` of its width, within `sound`.
pub(crate) fn calibrated_design(
    acc: &[Vec<i64>],
    sound: &[(i64, i64)],
    margin: f64,
) -> Vec<(i64, i64)> {
    (0..sound.len())
        .map(|e| {
            let (lo, hi) = acc.iter().fold((i64::MAX, i64::MIN), |(lo, hi), a| {
                (lo.min(a[e]), hi.max(a[e]))
            });
            let m = ((hi - lo) as f64 * margin).ceil() as i64;
            ((lo - m).max(sound[e].0), (hi + m).min(sound[e].1))
        })
        .collect()
}

/// Per row of `k` weights, the symmetric step that gives its largest weight all `bits`
/// bits, and the row's integers on it.
fn quantize_rows(weights: &[f64], k: usize, bits: u32) -> (Vec<f64>, Vec<i64>) {
    let steps: Vec<f64> = weights
        .chunks(k)
        .map(|row| symmetric_step(row.iter().fold(0f64, |m, w| m.max(w.abs())), bits))
        .collect();
    let integers = on_steps(weights, &steps, k);
    (steps, integers)
}

/// Weights (rows of `k`) as integers on their row's step.
fn on_steps(weights: &[f64], steps: &[f64], k: usize) -> Vec<i64> {
    weights
        .iter()
        .enumerate()
        .map(|(i, w)| (w / steps[i / k]).round() as i64)
        .collect()
}

/// Per element, the mean of an operand's integers over the inputset.
pub(crate) fn mean_operand(calib: &[Vec<i64>]) -> Vec<f64> {
    let numel = calib.first().map_or(0, Vec::len);
    let mut sum = vec![0f64; numel];
    for q in calib {
        for (s, &v) in sum.iter_mut().zip(q) {
            *s += v as f64;
        }
    }
    let samples = calib.len().max(1) as f64;
    sum.into_iter().map(|s| s / samples).collect()
}

/// Interval arithmetic through an integer matrix product (bias 0).
fn sound_linear(x: &[(i64, i64)], w: &[i64], k: usize, n: usize) -> Vec<(i64, i64)> {
    let rows = x.len() / k;
    let mut out = Vec::with_capacity(rows * n);
    for r in 0..rows {
        for j in 0..n {
            let (mut lo, mut hi) = (0i64, 0i64);
            for i in 0..k {
                let (a, b) = x[r * k + i];
                let wi = w[j * k + i];
                lo += (wi * a).min(wi * b);
                hi += (wi * a).max(wi * b);
            }
            out.push((lo, hi));
        }
    }
    out
}
