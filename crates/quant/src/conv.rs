//! Lowering of [`Op::Conv`](fhec_frontend_onnx::Op) (convolutions, average pooling) to an
//! integer [`IntOp::Conv`] that keeps its geometry.
//!
//! Like a Dense layer: the operand is on one grid (scale `s`), each output channel `o`
//! has one symmetric weight step `step_o` (`weight_bits` bits; a QAT model's own step),
//! and accumulators are shifted up so their designed ranges start at 0 or above (one
//! shift per channel and window shape):
//! `y[o, p] ≈ s·step_o·(acc[o, p] − shift[o, p]) + b_o + Σ w·offset(x)`. The last term
//! differs at the borders, where padding taps add nothing, so offsets are per element. A convolution whose every channel has weights of one magnitude (a pooling
//! sum) is *exact*: integer weights ±1, nothing rounded.

use fhec_frontend_onnx::conv::Conv as FloatConv;
use fhec_ir::{bits_for_range, IntOp, Node, Range, Status};

use crate::builder::{symmetric_step, Lowering, QValue};
use crate::dense::{calibrated_design, mean_operand, weight_step};
use crate::QuantError;

impl Lowering<'_> {
    pub(crate) fn conv(
        &mut self,
        name: &str,
        x: QValue,
        conv: &FloatConv,
        shape: Vec<usize>,
    ) -> Result<QValue, QuantError> {
        let g = &conv.geometry;
        let per = conv.in_channels / conv.groups * g.kernel_count();
        let exact = conv.weight.chunks(per).all(one_magnitude);
        // a sum of accumulators may stay unrequantized if it cannot pass 16 bits
        let growth = usize::BITS - (per.max(1) - 1).leading_zeros();
        let overflows =
            bits_for_range(self.circuit.node(x.node).range) + growth > fhec_ir::MAX_BITS;
        let x = if x.pending.is_empty() && x.uniform_scale() && (x.narrow || (exact && !overflows))
        {
            x
        } else {
            self.requantize(name, x)?
        };
        // one step per output channel (each channel's integers use all `weight_bits`
        // levels); a QAT model's weights keep their own grid
        let model_steps = if self.qat && !exact {
            conv.weight
                .chunks(per)
                .map(weight_step)
                .collect::<Option<Vec<f64>>>()
        } else {
            None
        };
        let steps: Vec<f64> = match &model_steps {
            Some(steps) => steps.clone(),
            None => conv
                .weight
                .chunks(per)
                .map(|ws| {
                    let m = ws.iter().fold(0f64, |m, w| m.max(w.abs()));
                    if exact {
                        if m > 0.0 {
                            m
                        } else {
                            1.0
                        }
                    } else {
                        symmetric_step(m, self.cfg.weight_bits)
                    }
                })
                .collect(),
        };
        let weight: Vec<i64> = conv
            .weight
            .iter()
            .enumerate()
            .map(|(i, w)| (w / steps[i / per]).round() as i64)
            .collect();
        if !exact {
            self.origins.push(crate::QuantOrigin {
                tensor: name.to_string(),
                kind: crate::OriginKind::Weights,
                from_model: model_steps.is_some(),
                bits: 1 + bits_for_range(Range::new(
                    0,
                    weight.iter().map(|w| w.abs()).max().unwrap_or(0),
                )),
                scale: steps[0],
            });
        }
        let mut ic = fhec_ir::Conv {
            in_channels: conv.in_channels,
            out_channels: conv.out_channels,
            groups: conv.groups,
            in_sp: g.in_sp.clone(),
            out_sp: g.out_sp.clone(),
            kernel: g.kernel.clone(),
            strides: g.strides.clone(),
            dilations: g.dilations.clone(),
            pad_begin: g.pad_begin.clone(),
            pad_end: g.pad_end.clone(),
            weight,
            bias: vec![0; conv.out_channels * g.out_count()],
        };
        let count = g.out_count();
        let numel = conv.out_channels * count;
        // accumulators on the inputset; bounds no input can exceed; the float offset each
        // element's taps carry
        let mut calib: Vec<Vec<i64>> = x.calib.iter().map(|q| ic.eval(q)).collect();
        let mut sound = Vec::with_capacity(numel);
        let mut tap_offset = Vec::with_capacity(numel);
        // the rounded weights' error on the inputset's mean operand goes into the offset
        // (bias correction, as in `Lowering::dense`)
        let mean_q = mean_operand(&x.calib);
        for e in 0..numel {
            let (mut lo, mut hi, mut off) = (0i64, 0i64, 0f64);
            let step = steps[e / count];
            ic.for_each_tap(e, |i, k| {
                let (a, b) = x.sound[i];
                let w = ic.weight[k];
                lo += (w * a).min(w * b);
                hi += (w * a).max(w * b);
                off += conv.weight[k] * x.offset[i];
                off += (conv.weight[k] - step * w as f64) * x.scale[0] * mean_q[i];
            });
            sound.push((lo, hi));
            tap_offset.push(off);
        }
        let mut design = calibrated_design(&calib, &sound, self.cfg.range_margin);
        // accumulators are shifted up (the convolution's bias) so their designed ranges
        // start at 0 or above, by one amount per channel and window shape: positions
        // whose windows lie inside the input share their taps, hence (with one shift)
        // their table. Per element, the tables multiplied (1970 for 5408 elements on
        // cnn_mnist28's first layer); per channel, padded convolutions widened by up to
        // 40% (border windows' ranges differ). Never shifted down: values that did not
        // come near 0 on the inputset wrap the samples that do (0.48 against 0.28
        // relative RMS on op_avgpool_ceil_pad19).
        let shape_of = window_shapes(&ic);
        let classes = shape_of.iter().max().map_or(0, |&c| c + 1);
        let mut class_shift = vec![0i64; conv.out_channels * classes];
        for (e, d) in design.iter().enumerate() {
            let c = (e / count) * classes + shape_of[e % count];
            class_shift[c] = class_shift[c].max(-d.0);
        }
        ic.bias = (0..numel)
            .map(|e| class_shift[(e / count) * classes + shape_of[e % count]])
            .collect();
        let shift = |e: usize| ic.bias[e];
        for (e, (d, s)) in design.iter_mut().zip(sound.iter_mut()).enumerate() {
            *d = (d.0 + shift(e), d.1 + shift(e));
            *s = (s.0 + shift(e), s.1 + shift(e));
        }
        for q in &mut calib {
            for (e, v) in q.iter_mut().enumerate() {
                *v += shift(e);
            }
        }
        let s = x.scale[0];
        let scale: Vec<f64> = (0..numel).map(|e| s * steps[e / count]).collect();
        let offset: Vec<f64> = (0..numel)
            .map(|e| conv.bias[e / count] + tap_offset[e] - scale[e] * shift(e) as f64)
            .collect();
        let range = Range::new(0, design.iter().map(|d| d.1).max().unwrap_or(0).max(0));
        let node = self.circuit.add(
            Node {
                name: name.to_string(),
                op: IntOp::Conv(Box::new(ic)),
                shape,
                status: Status::Encrypted,
                range,
            },
            &[x.node],
        );
        let narrow = exact && x.narrow && bits_for_range(range) <= self.cfg.activation_bits + 2;
        Ok(QValue {
            node,
            scale,
            offset,
            pending: vec![],
            narrow,
            calib,
            sound,
            design: Some(design),
        })
    }
}

/// Per output position, an index of the shape of its window: which kernel taps lie
/// inside the input.
fn window_shapes(conv: &fhec_ir::Conv) -> Vec<usize> {
    let kc = conv.kernel_count();
    let mut seen: std::collections::HashMap<Vec<usize>, usize> = Default::default();
    (0..conv.out_count())
        .map(|p| {
            let mut taps = Vec::new();
            // output channel 0's first input channel: every channel sees the same taps
            conv.for_each_tap(p, |_, k| {
                if k < kc {
                    taps.push(k);
                }
            });
            let next = seen.len();
            *seen.entry(taps).or_insert(next)
        })
        .collect()
}

/// The nonzero weights share one magnitude.
fn one_magnitude(ws: &[f64]) -> bool {
    let mut nonzero = ws.iter().map(|w| w.abs()).filter(|&w| w > 0.0);
    match nonzero.next() {
        None => true,
        Some(m) => nonzero.all(|v| (v - m).abs() <= 1e-9 * m),
    }
}
