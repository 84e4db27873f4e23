//! Lowering of the float graph's circuit side to integer ops, calibrating as it goes.

use std::collections::HashMap;

use fhec_frontend_onnx::{FloatGraph, Op, Tensor, ValueId};
use fhec_ir::{bits_for_range, Circuit, IntOp, Node, NodeId, Range, Status};

use crate::client::{ClientSpec, InputQuant, OutputDequant, Pending};
use crate::{QuantConfig, QuantError, Quantized};

/// A float value as the circuit holds it: `pending(scale[e]·q[e] + offset[e])`, where
/// `q` is the integer value of `node`.
#[derive(Clone)]
struct QValue {
    node: NodeId,
    scale: Vec<f64>,
    offset: Vec<f64>,
    pending: Vec<Pending>,
    /// `q` is a quantized activation or input (narrow), not a raw accumulator.
    narrow: bool,
    /// `q` for every calibration sample.
    calib: Vec<Vec<i64>>,
    /// Per element, bounds no input can exceed (interval arithmetic from clamped inputs
    /// and bounded tables).
    sound: Vec<(i64, i64)>,
    /// For accumulators: the per-element range the circuit is built for.
    design: Option<Vec<(i64, i64)>>,
}

impl QValue {
    fn float(&self, e: usize, q: f64) -> f64 {
        self.pending
            .iter()
            .fold(self.scale[e] * q + self.offset[e], |x, p| p.apply(e, x))
    }
    fn uniform_scale(&self) -> bool {
        self.scale.iter().all(|&s| s == self.scale[0])
    }
}

/// Quantizes `graph` on `inputset` (samples × model inputs, per-sample shapes).
pub fn quantize(
    graph: &FloatGraph,
    inputset: &[Vec<Tensor>],
    cfg: &QuantConfig,
) -> Result<Quantized, QuantError> {
    cfg.check()?;
    check_inputset(graph, inputset)?;
    let circuit_side = circuit_side(graph);
    let mut b = Lowering {
        graph,
        cfg,
        circuit: Circuit::default(),
        values: HashMap::new(),
    };
    let mut inputs = Vec::new();
    for (index, &id) in graph.inputs.iter().enumerate() {
        inputs.push(b.input(index, id, inputset));
    }
    for (i, node) in graph.nodes.iter().enumerate() {
        if circuit_side[i] {
            b.node(node)?;
        }
    }
    // Values crossing to the client: consumed by a tail node or returned by the model.
    let mut crossing: Vec<ValueId> = Vec::new();
    let tail: Vec<usize> = (0..graph.nodes.len())
        .filter(|&i| !circuit_side[i])
        .collect();
    for &i in &tail {
        crossing.extend(
            graph.nodes[i]
                .inputs
                .iter()
                .filter(|v| b.values.contains_key(v)),
        );
    }
    crossing.extend(graph.outputs.iter().filter(|v| b.values.contains_key(v)));
    let mut outputs = Vec::new();
    for v in crossing {
        if outputs.iter().any(|o: &OutputDequant| o.value == v) {
            continue;
        }
        let q = &b.values[&v];
        b.circuit.outputs.push(q.node);
        outputs.push(OutputDequant {
            value: v,
            scale: q.scale.clone(),
            offset: q.offset.clone(),
            pending: q.pending.clone(),
        });
    }
    b.circuit.inputs = (0..inputs.len())
        .map(|i| b.values[&graph.inputs[i]].node)
        .collect();
    Ok(Quantized {
        circuit: b.circuit,
        client: ClientSpec {
            inputs,
            outputs,
            tail,
        },
    })
}

fn check_inputset(graph: &FloatGraph, inputset: &[Vec<Tensor>]) -> Result<(), QuantError> {
    if inputset.is_empty() {
        return Err(QuantError::EmptyInputset);
    }
    for (s, sample) in inputset.iter().enumerate() {
        if sample.len() != graph.inputs.len() {
            return Err(QuantError::InputCount {
                sample: s,
                given: sample.len(),
                expected: graph.inputs.len(),
            });
        }
        for (t, &id) in sample.iter().zip(&graph.inputs) {
            let info = graph.value(id);
            if t.shape != info.shape {
                return Err(QuantError::InputShape {
                    input: info.name.clone(),
                    given: t.shape.clone(),
                    expected: info.shape.clone(),
                });
            }
            if let Some((e, &v)) = t.data.iter().enumerate().find(|(_, v)| !v.is_finite()) {
                return Err(QuantError::NonFinite {
                    input: info.name.clone(),
                    sample: s,
                    element: e,
                    value: v,
                });
            }
        }
    }
    Ok(())
}

/// Marks the nodes that run in the circuit: every `Dense` and everything upstream of one.
/// The rest (the tail) runs on the client after decryption.
fn circuit_side(graph: &FloatGraph) -> Vec<bool> {
    let mut side = vec![false; graph.nodes.len()];
    let mut needed: std::collections::HashSet<ValueId> = Default::default();
    for (i, node) in graph.nodes.iter().enumerate().rev() {
        if matches!(node.op, Op::Dense { .. }) || node.outputs.iter().any(|o| needed.contains(o)) {
            side[i] = true;
            needed.extend(node.inputs.iter().copied());
        }
    }
    side
}

struct Lowering<'a> {
    graph: &'a FloatGraph,
    cfg: &'a QuantConfig,
    circuit: Circuit,
    values: HashMap<ValueId, QValue>,
}

/// Asymmetric quantization of `[lo, hi]` (widened to hold 0) on `bits` unsigned bits.
fn asymmetric(lo: f64, hi: f64, bits: u32) -> (f64, i64) {
    let (lo, hi) = (lo.min(0.0), hi.max(0.0));
    let levels = ((1i64 << bits) - 1) as f64;
    let scale = if hi > lo { (hi - lo) / levels } else { 1.0 };
    let zero = (-lo / scale).round().clamp(0.0, levels) as i64;
    (scale, zero)
}

fn min_max(values: impl Iterator<Item = f64>) -> (f64, f64) {
    values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    })
}

impl Lowering<'_> {
    fn input(&mut self, index: usize, id: ValueId, inputset: &[Vec<Tensor>]) -> InputQuant {
        let info = self.graph.value(id);
        let bits = self.cfg.input_bits;
        let (lo, hi) = min_max(inputset.iter().flat_map(|s| s[index].data.iter().copied()));
        let (scale, zero_point) = asymmetric(lo, hi, bits);
        let iq = InputQuant {
            value: id,
            name: info.name.clone(),
            shape: info.shape.clone(),
            scale,
            zero_point,
            bits,
        };
        let calib: Vec<Vec<i64>> = inputset
            .iter()
            .map(|s| s[index].data.iter().map(|&x| iq.quantize(x)).collect())
            .collect();
        let node = self.circuit.add(
            Node {
                name: info.name.clone(),
                op: IntOp::Input { index, bits },
                shape: info.shape.clone(),
                status: Status::Encrypted,
                range: Range::new(0, (1 << bits) - 1),
            },
            &[],
        );
        let numel = iq.shape.iter().product();
        let sound = vec![(0, (1i64 << bits) - 1); numel];
        self.values.insert(
            id,
            QValue {
                node,
                scale: vec![scale; numel],
                offset: vec![-scale * zero_point as f64; numel],
                pending: vec![],
                narrow: true,
                calib,
                sound,
                design: None,
            },
        );
        iq
    }

    fn node(&mut self, node: &fhec_frontend_onnx::Node) -> Result<(), QuantError> {
        let unsupported = |reason: &str| QuantError::Unsupported {
            node: node.name.clone(),
            op: node.onnx_op.clone(),
            reason: reason.into(),
        };
        let x = self
            .values
            .get(&node.inputs[0])
            .cloned()
            .ok_or_else(|| unsupported("its input is not computed in the circuit"))?;
        let out_id = node.outputs[0];
        let out_shape = self.graph.value(out_id).shape.clone();
        let result = match &node.op {
            Op::Dense { inputs, outputs, weight, bias } => self.dense(&node.name, x, *inputs, *outputs, weight, bias, out_shape)?,
            Op::Activation(a) => QValue { pending: [x.pending.clone(), vec![Pending::Activation(*a)]].concat(), ..x },
            Op::BinaryConst { kind, constant, constant_first } => self.binary(x, *kind, &constant.data, *constant_first),
            Op::Reshape { .. } => {
                let range = self.circuit.node(x.node).range;
                let n = self.circuit.add(Node { name: node.name.clone(), op: IntOp::Reshape, shape: out_shape, status: Status::Encrypted, range }, &[x.node]);
                QValue { node: n, ..x }
            }
            _ => return Err(unsupported("only the model's final operations may use it (they run on the client); here its result feeds a linear layer")),
        };
        self.values.insert(out_id, result);
        Ok(())
    }

    /// Folds an affine constant op into scale/offset when nothing is pending; defers it otherwise.
    fn binary(
        &mut self,
        x: QValue,
        kind: fhec_frontend_onnx::BinaryKind,
        c: &[f64],
        constant_first: bool,
    ) -> QValue {
        use fhec_frontend_onnx::BinaryKind::*;
        if x.pending.is_empty() && !(kind == Div && constant_first) {
            let (mut scale, mut offset) = (x.scale.clone(), x.offset.clone());
            for e in 0..scale.len() {
                match (kind, constant_first) {
                    (Add, _) => offset[e] += c[e],
                    (Sub, false) => offset[e] -= c[e],
                    (Sub, true) => (scale[e], offset[e]) = (-scale[e], c[e] - offset[e]),
                    (Mul, _) => (scale[e], offset[e]) = (scale[e] * c[e], offset[e] * c[e]),
                    (Div, _) => (scale[e], offset[e]) = (scale[e] / c[e], offset[e] / c[e]),
                }
            }
            return QValue { scale, offset, ..x };
        }
        let p = Pending::Binary {
            kind,
            constant: c.to_vec(),
            constant_first,
        };
        QValue {
            pending: [x.pending.clone(), vec![p]].concat(),
            ..x
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn dense(
        &mut self,
        name: &str,
        x: QValue,
        k: usize,
        n: usize,
        weight: &[f64],
        bias: &[f64],
        shape: Vec<usize>,
    ) -> Result<QValue, QuantError> {
        let x = if x.narrow && x.pending.is_empty() && x.uniform_scale() {
            x
        } else {
            self.requantize(name, x)?
        };
        let wmax = weight.iter().fold(0f64, |m, w| m.max(w.abs()));
        let levels = ((1i64 << (self.cfg.weight_bits - 1)) - 1) as f64;
        let s_w = if wmax > 0.0 { wmax / levels } else { 1.0 };
        let wq: Vec<i64> = weight.iter().map(|w| (w / s_w).round() as i64).collect();
        let rows = x.calib[0].len() / k;
        // integer accumulators on the inputset, before the shift
        let acc: Vec<Vec<i64>> = x
            .calib
            .iter()
            .map(|q| fhec_ir::interp::linear(q, &wq, &vec![0; n], k, n))
            .collect();
        let sound = sound_linear(&x.sound, &wq, k, n);
        // the range the circuit is built for: calibrated, widened by the margin, within sound
        let mut design: Vec<(i64, i64)> = (0..rows * n)
            .map(|e| {
                let (lo, hi) = acc.iter().fold((i64::MAX, i64::MIN), |(lo, hi), a| {
                    (lo.min(a[e]), hi.max(a[e]))
                });
                let m = ((hi - lo) as f64 * self.cfg.range_margin).ceil() as i64;
                ((lo - m).max(sound[e].0), (hi + m).min(sound[e].1))
            })
            .collect();
        let shift: Vec<i64> = (0..n)
            .map(|j| -(0..rows).map(|r| design[r * n + j].0).min().unwrap_or(0))
            .collect();
        for (e, d) in design.iter_mut().enumerate() {
            *d = (d.0 + shift[e % n], d.1 + shift[e % n]);
        }
        let calib: Vec<Vec<i64>> = acc
            .into_iter()
            .map(|a| {
                a.iter()
                    .enumerate()
                    .map(|(e, v)| v + shift[e % n])
                    .collect()
            })
            .collect();
        let sound: Vec<(i64, i64)> = sound
            .iter()
            .enumerate()
            .map(|(e, s)| (s.0 + shift[e % n], s.1 + shift[e % n]))
            .collect();
        let s = x.scale[0] * s_w;
        let mut offset = Vec::with_capacity(rows * n);
        for r in 0..rows {
            for j in 0..n {
                let wo: f64 = (0..k)
                    .map(|i| weight[j * k + i] * x.offset[r * k + i])
                    .sum();
                offset.push(wo + bias[j] - s * shift[j] as f64);
            }
        }
        let op = IntOp::Linear {
            inputs: k,
            outputs: n,
            weight: wq,
            bias: shift,
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
        Ok(QValue {
            node,
            scale: vec![s; rows * n],
            offset,
            pending: vec![],
            narrow: false,
            calib,
            sound,
            design: Some(design),
        })
    }

    /// One table lookup per element: dequantize, apply the pending ops, requantize to
    /// `activation_bits` — preceded by an exact rounding if the operand is too wide.
    fn requantize(&mut self, consumer: &str, x: QValue) -> Result<QValue, QuantError> {
        let x = self.spread_before_rounding(x);
        let name = format!("{consumer}/input");
        let operand = self.circuit.node(x.node).clone();
        let hi = operand.range.hi.max(0);
        let width = bits_for_range(Range::new(0, hi));
        debug_assert!(
            operand.range.lo >= 0,
            "table operands are non-negative by construction"
        );
        let (mut node, mut calib, mut drop) = (x.node, x.calib.clone(), 0u32);
        if let Some(r) = self.cfg.rounding_bits.filter(|&r| width > r) {
            drop = width - r;
            if bits_for_range(Range::new(0, hi + (1 << (drop - 1)))) > width {
                drop += 1; // rounding up the largest value would not fit R bits
            }
            let half = 1i64 << (drop - 1);
            calib = calib
                .iter()
                .map(|q| q.iter().map(|v| (v + half) >> drop).collect())
                .collect();
            let range = Range::new(0, (hi + half) >> drop);
            node = self.circuit.add(
                Node {
                    name: format!("{name}/round"),
                    op: IntOp::Round { drop_bits: drop },
                    shape: operand.shape.clone(),
                    status: Status::Encrypted,
                    range,
                },
                &[node],
            );
        }
        let precision = bits_for_range(Range::new(0, self.circuit.node(node).range.hi.max(0)));
        if precision > fhec_ir::MAX_BITS {
            return Err(QuantError::TooWide {
                node: consumer.to_string(),
                bits: precision,
            });
        }
        let numel = operand.numel();
        let (lo, hi) = min_max(calib.iter().flat_map(|q| {
            q.iter()
                .enumerate()
                .map(|(e, &v)| x.float(e, (v << drop) as f64))
        }));
        let bits = self.cfg.activation_bits;
        let (s_out, z_out) = asymmetric(lo, hi, bits);
        let qmax = ((1i64 << bits) - 1) as f64;
        let mut tables: Vec<Vec<i64>> = Vec::new();
        let mut index: HashMap<Vec<i64>, u32> = HashMap::new();
        let mut table_of = Vec::with_capacity(numel);
        for e in 0..numel {
            let t: Vec<i64> = (0..1i64 << precision)
                .map(|a| {
                    ((x.float(e, (a << drop) as f64) / s_out).round() + z_out as f64)
                        .clamp(0.0, qmax) as i64
                })
                .collect();
            let id = *index.entry(t.clone()).or_insert_with(|| {
                tables.push(t);
                (tables.len() - 1) as u32
            });
            table_of.push(id);
        }
        let out: Vec<Vec<i64>> = calib
            .iter()
            .map(|q| {
                q.iter()
                    .zip(&table_of)
                    .map(|(&v, &t)| tables[t as usize][v as usize])
                    .collect()
            })
            .collect();
        let sound: Vec<(i64, i64)> = table_of
            .iter()
            .map(|&t| {
                tables[t as usize]
                    .iter()
                    .fold((i64::MAX, i64::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)))
            })
            .collect();
        let range = Range::new(
            sound.iter().map(|s| s.0).min().unwrap_or(0),
            sound.iter().map(|s| s.1).max().unwrap_or(0),
        );
        let lut = self.circuit.add(
            Node {
                name,
                op: IntOp::Lut {
                    precision,
                    tables,
                    table_of,
                },
                shape: operand.shape.clone(),
                status: Status::Encrypted,
                range,
            },
            &[node],
        );
        Ok(QValue {
            node: lut,
            scale: vec![s_out; numel],
            offset: vec![-s_out * z_out as f64; numel],
            pending: vec![],
            narrow: true,
            calib: out,
            sound,
            design: None,
        })
    }
}

impl Lowering<'_> {
    /// Before rounding an accumulator to R bits, scales each weight row by the integer
    /// `m_j = ⌊(2^width − 1) / hi_j⌋` so every neuron spans the full width and keeps
    /// about R significant bits after rounding (instead of the widest neuron alone).
    /// Free in bootstraps; the noise budget sees the larger weights.
    fn spread_before_rounding(&mut self, mut x: QValue) -> QValue {
        let Some(r) = self.cfg.rounding_bits else {
            return x;
        };
        let node = self.circuit.node(x.node).clone();
        let numel = node.numel();
        let IntOp::Linear {
            inputs,
            outputs,
            mut weight,
            mut bias,
        } = node.op
        else {
            return x;
        };
        let width = bits_for_range(Range::new(0, node.range.hi.max(0)));
        if width <= r || !self.circuit.users(x.node).is_empty() {
            return x;
        }
        let top = (1i64 << width) - 1;
        let mut multiplier = vec![i64::MAX; outputs];
        let design = x.design.clone().unwrap_or_default();
        for (e, d) in design.iter().enumerate().take(numel) {
            multiplier[e % outputs] = multiplier[e % outputs].min(top / d.1.max(1));
        }
        for (j, m) in multiplier.iter().enumerate() {
            for w in &mut weight[j * inputs..(j + 1) * inputs] {
                *w *= m;
            }
            bias[j] *= m;
        }
        for q in &mut x.calib {
            for (e, v) in q.iter_mut().enumerate() {
                *v *= multiplier[e % outputs];
            }
        }
        for e in 0..numel {
            let m = multiplier[e % outputs];
            x.scale[e] /= m as f64;
            x.sound[e] = (x.sound[e].0 * m, x.sound[e].1 * m);
        }
        let design: Vec<(i64, i64)> = design
            .iter()
            .enumerate()
            .map(|(e, d)| (d.0 * multiplier[e % outputs], d.1 * multiplier[e % outputs]))
            .collect();
        let n = self.circuit.node_mut(x.node);
        n.op = IntOp::Linear {
            inputs,
            outputs,
            weight,
            bias,
        };
        n.range = Range::new(0, design.iter().map(|d| d.1).max().unwrap_or(0));
        x.design = Some(design);
        x
    }
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
