//! Table lookups: the rounding that narrows a wide operand first, the generic integer
//! table, and requantization (dequantize, apply the pending float ops, quantize again).

use std::collections::HashMap;

use fhec_ir::{bits_for_range, IntOp, Node, NodeId, Range, Status};

use crate::builder::{asymmetric, min_max, Lowering, QValue};
use crate::QuantError;

/// The integer grid a table lookup quantizes onto: `u = clamp(round(x / scale) + zero,
/// 0, max)`; a model's own grid (QAT) rounds ties to even in f32, as ONNX does.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Grid {
    pub scale: f64,
    pub zero: i64,
    pub max: i64,
    pub from_model: bool,
}

impl Grid {
    pub(crate) fn calibrated((scale, zero): (f64, i64), bits: u32) -> Self {
        Grid {
            scale,
            zero,
            max: (1i64 << bits) - 1,
            from_model: false,
        }
    }
    pub(crate) fn quantize(&self, x: f64) -> i64 {
        let r = if self.from_model {
            (x as f32 / self.scale as f32).round_ties_even() as f64
        } else {
            (x / self.scale).round()
        };
        (r + self.zero as f64).clamp(0.0, self.max as f64) as i64
    }
}

/// The grids a requantization quantizes onto.
#[derive(Clone, Copy, Debug)]
enum Grids {
    /// One, calibrated on every element.
    Calibrated,
    /// One per feature (element `e` is feature `e % k`), each calibrated on its own.
    PerFeature(usize),
    /// One given (a model's own grid, or one shared with another operand).
    Given(Grid),
}

/// A table operand after the optional rounding: `node` holds `round(x / 2^drop)`.
pub(crate) struct LutInput {
    pub node: NodeId,
    pub drop: u32,
    pub precision: u32,
    /// The rounded operand on every calibration sample.
    pub calib: Vec<Vec<i64>>,
    pub shape: Vec<usize>,
}

/// What a table lookup produced.
pub(crate) struct LutOutput {
    pub node: NodeId,
    pub calib: Vec<Vec<i64>>,
    /// Per element, the smallest and largest entry of its table.
    pub sound: Vec<(i64, i64)>,
}

impl Lowering<'_> {
    /// Rounds integer node `x` (non-negative) to the configured number of most
    /// significant bits when it is wider, exactly or approximately.
    pub(crate) fn lut_input(
        &mut self,
        name: &str,
        consumer: &str,
        x: NodeId,
        calib: &[Vec<i64>],
    ) -> Result<LutInput, QuantError> {
        let r = self.cfg.rounding_bits;
        self.lut_input_rounded_to(name, consumer, x, calib, r)
    }

    /// [`lut_input`](Self::lut_input) rounding to `rounding_bits` instead of the
    /// configured threshold.
    pub(crate) fn lut_input_rounded_to(
        &mut self,
        name: &str,
        consumer: &str,
        x: NodeId,
        calib: &[Vec<i64>],
        rounding_bits: Option<u32>,
    ) -> Result<LutInput, QuantError> {
        let range = self.circuit.node(x).range;
        debug_assert!(
            range.lo >= 0,
            "table operands are non-negative by construction"
        );
        let hi = range.hi.max(0);
        let width = bits_for_range(Range::new(0, hi));
        let mut drop = 0u32;
        if let Some(r) = rounding_bits.filter(|&r| width > r) {
            drop = width - r;
            while !rounded_fits(hi, drop, r, self.cfg.rounding_approximate) {
                drop += 1; // rounding up the largest value would not fit R bits
            }
        }
        self.rounded(
            name,
            consumer,
            x,
            calib,
            drop,
            self.cfg.rounding_approximate,
        )
    }

    /// Integer node `x` (non-negative) rounded by `drop` bits (none when 0), exactly or
    /// approximately, as a table operand.
    pub(crate) fn rounded(
        &mut self,
        name: &str,
        consumer: &str,
        x: NodeId,
        calib: &[Vec<i64>],
        drop: u32,
        approximate: bool,
    ) -> Result<LutInput, QuantError> {
        let operand = self.circuit.node(x).clone();
        let hi = operand.range.hi.max(0);
        let (mut node, mut calib) = (x, calib.to_vec());
        if drop > 0 {
            let half = 1i64 << (drop - 1);
            calib = calib
                .iter()
                .map(|q| q.iter().map(|v| (v + half) >> drop).collect())
                .collect();
            node = self.circuit.add(
                Node {
                    name: format!("{name}/round"),
                    op: IntOp::Round {
                        drop_bits: drop,
                        approximate,
                    },
                    shape: operand.shape.clone(),
                    status: Status::Encrypted,
                    range: Range::new(0, rounded_top(hi, drop, approximate)),
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
        Ok(LutInput {
            node,
            drop,
            precision,
            calib,
            shape: operand.shape,
        })
    }

    /// One table per element: entry `a` is `f(e, a·2^drop)`, the operand value the rounded
    /// index stands for.
    pub(crate) fn lut(
        &mut self,
        name: String,
        input: &LutInput,
        f: impl Fn(usize, i64) -> i64,
    ) -> LutOutput {
        let numel: usize = input.shape.iter().product();
        let mut tables: Vec<Vec<i64>> = Vec::new();
        let mut index: HashMap<Vec<i64>, u32> = HashMap::new();
        let mut table_of = Vec::with_capacity(numel);
        for e in 0..numel {
            let t: Vec<i64> = (0..1i64 << input.precision)
                .map(|a| f(e, a << input.drop))
                .collect();
            let id = *index.entry(t.clone()).or_insert_with(|| {
                tables.push(t);
                (tables.len() - 1) as u32
            });
            table_of.push(id);
        }
        let calib = input
            .calib
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
        let node = self.circuit.add(
            Node {
                name,
                op: IntOp::Lut {
                    precision: input.precision,
                    tables,
                    table_of,
                },
                shape: input.shape.clone(),
                status: Status::Encrypted,
                range,
            },
            &[input.node],
        );
        LutOutput { node, calib, sound }
    }

    /// One table lookup per element: dequantize, apply the pending ops, requantize to
    /// `activation_bits` — preceded by a rounding if the operand is too wide.
    pub(crate) fn requantize(&mut self, consumer: &str, x: QValue) -> Result<QValue, QuantError> {
        self.requantize_with(consumer, x, None)
    }

    /// [`requantize`](Self::requantize) onto a given grid (or a calibrated one).
    pub(crate) fn requantize_with(
        &mut self,
        consumer: &str,
        x: QValue,
        to: Option<Grid>,
    ) -> Result<QValue, QuantError> {
        self.requantize_cached(consumer, x, to.map_or(Grids::Calibrated, Grids::Given))
    }

    /// [`requantize`](Self::requantize) for a consumer that folds a step per feature
    /// into its weights (a dense layer of `features` inputs): each feature calibrated on
    /// its own grid, so a neuron whose range is a tenth of the layer's keeps all
    /// `activation_bits` levels instead of about three fewer.
    pub(crate) fn requantize_per_feature(
        &mut self,
        consumer: &str,
        x: QValue,
        features: usize,
    ) -> Result<QValue, QuantError> {
        self.requantize_cached(consumer, x, Grids::PerFeature(features))
    }

    fn requantize_cached(
        &mut self,
        consumer: &str,
        x: QValue,
        grids: Grids,
    ) -> Result<QValue, QuantError> {
        // a value read by several consumers is requantized once
        let key = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            format!("{:?}{:?}{:?}{:?}", x.pending, x.scale, x.offset, grids).hash(&mut h);
            (x.node, h.finish())
        };
        if let Some(done) = self.requantized.get(&key) {
            return Ok(done.clone());
        }
        let result = self.requantize_uncached(consumer, x, grids)?;
        self.requantized.insert(key, result.clone());
        Ok(result)
    }

    fn requantize_uncached(
        &mut self,
        consumer: &str,
        x: QValue,
        grids: Grids,
    ) -> Result<QValue, QuantError> {
        let x = self.spread_before_rounding(x);
        let name = format!("{consumer}/input");
        let input = self.lut_input(&name, consumer, x.node, &x.calib)?;
        let drop = input.drop;
        let bits = self.cfg.activation_bits;
        // element e is quantized on grid[e % period]
        let (grid, period) = match grids {
            Grids::Given(g) => (vec![g], 1),
            Grids::Calibrated | Grids::PerFeature(_) => {
                let period = match grids {
                    Grids::PerFeature(k) if k > 0 => k,
                    _ => 1,
                };
                // the calibrated range of each feature (elements `e % period == f`), in
                // one pass over the inputset
                let mut ranges = vec![(f64::INFINITY, f64::NEG_INFINITY); period];
                for q in &input.calib {
                    for (e, &v) in q.iter().enumerate() {
                        let r = &mut ranges[e % period];
                        let value = x.float(e, (v << drop) as f64);
                        *r = (r.0.min(value), r.1.max(value));
                    }
                }
                let (lo, hi) = min_max(ranges.iter().flat_map(|r| [r.0, r.1]));
                let whole = Grid::calibrated(asymmetric(lo, hi, bits), bits);
                let grid: Vec<Grid> = match period {
                    1 => vec![whole],
                    _ => ranges
                        .iter()
                        .map(|&(lo, hi)| match (lo.min(0.0), hi.max(0.0)) {
                            // a feature that is 0 on the whole inputset (a neuron it never
                            // activates) has no range of its own: the tensor's grid
                            (lo, hi) if lo >= hi => whole,
                            _ => Grid::calibrated(asymmetric(lo, hi, bits), bits),
                        })
                        .collect(),
                };
                self.origins.push(crate::QuantOrigin {
                    tensor: consumer.to_string(),
                    kind: crate::OriginKind::Activation,
                    from_model: false,
                    bits,
                    scale: grid[0].scale,
                });
                (grid, period)
            }
        };
        let out = self.lut(name, &input, |e, v| {
            grid[e % period].quantize(x.float(e, v as f64))
        });
        let numel = out.sound.len();
        let grid_of = |e: usize| grid[e % period];
        Ok(QValue {
            node: out.node,
            scale: (0..numel).map(|e| grid_of(e).scale).collect(),
            offset: (0..numel)
                .map(|e| -grid_of(e).scale * grid_of(e).zero as f64)
                .collect(),
            pending: vec![],
            narrow: true,
            calib: out.calib,
            sound: out.sound,
            design: None,
        })
    }

    /// Before rounding an accumulator to R bits, scales each weight row (each
    /// convolution channel) by the integer `m_j = ⌊(2^width − 1) / hi_j⌋` so every neuron spans the full width and keeps
    /// about R significant bits after rounding (instead of the widest neuron alone).
    /// Free in bootstraps; the noise budget sees the larger weights. The scaled layer is
    /// a new node: other readers of the original keep it (unread, it is removed at the
    /// end).
    fn spread_before_rounding(&mut self, mut x: QValue) -> QValue {
        let Some(r) = self.cfg.rounding_bits else {
            return x;
        };
        let node = self.circuit.node(x.node).clone();
        let numel = node.numel();
        let width = bits_for_range(Range::new(0, node.range.hi.max(0)));
        // per output row of a Linear, per channel of a Conv (per-element multipliers on
        // convolutions measured no better: digits CNNs, R = 5 and 6)
        let Some(design) = x.design.clone() else {
            return x;
        };
        let (groups, group_of): (usize, Box<dyn Fn(usize) -> usize>) = match &node.op {
            IntOp::Linear { outputs, .. } => {
                let n = *outputs;
                (n, Box::new(move |e| e % n))
            }
            IntOp::Conv(c) => {
                let count = c.out_count();
                (c.out_channels, Box::new(move |e| e / count))
            }
            _ => return x,
        };
        if width <= r {
            return x;
        }
        let top = (1i64 << width) - 1;
        let mut multiplier = vec![i64::MAX; groups];
        for (e, d) in design.iter().enumerate().take(numel) {
            let g = group_of(e);
            multiplier[g] = multiplier[g].min(top / d.1.max(1));
        }
        if self.cfg.capped_spread {
            // a neuron's noise grows with its weights: none ends noisier than the layer's
            // noisiest neuron was
            let norms = row_norms(&node.op, groups);
            let loudest = norms.iter().copied().fold(0.0, f64::max);
            for (m, &norm) in multiplier.iter_mut().zip(&norms) {
                if norm > 0.0 {
                    *m = (*m).min(((loudest / norm).floor() as i64).max(1));
                }
            }
        }
        let operands = self.circuit.operands(x.node);
        let mut n = node.clone();
        match &mut n.op {
            IntOp::Linear {
                inputs,
                weight,
                bias,
                ..
            } => {
                for (j, m) in multiplier.iter().enumerate() {
                    for w in &mut weight[j * *inputs..(j + 1) * *inputs] {
                        *w *= m;
                    }
                    bias[j] *= m;
                }
            }
            IntOp::Conv(c) => {
                let per = c.weight.len() / c.out_channels;
                let count = c.out_count();
                for (o, m) in multiplier.iter().enumerate() {
                    for w in &mut c.weight[o * per..(o + 1) * per] {
                        *w *= m;
                    }
                    for b in &mut c.bias[o * count..(o + 1) * count] {
                        *b *= m;
                    }
                }
            }
            _ => unreachable!("matched above"),
        }
        for q in &mut x.calib {
            for (e, v) in q.iter_mut().enumerate() {
                *v *= multiplier[group_of(e)];
            }
        }
        for e in 0..numel {
            let m = multiplier[group_of(e)];
            x.scale[e] /= m as f64;
            x.sound[e] = (x.sound[e].0 * m, x.sound[e].1 * m);
        }
        let design: Vec<(i64, i64)> = design
            .iter()
            .enumerate()
            .map(|(e, d)| {
                let m = multiplier[group_of(e)];
                (d.0 * m, d.1 * m)
            })
            .collect();
        n.range = Range::new(0, design.iter().map(|d| d.1).max().unwrap_or(0));
        x.node = self.circuit.add(n, &operands);
        x.design = Some(design);
        x
    }
}

/// The 2-norm of each output row of a Linear, of each output channel of a Conv.
fn row_norms(op: &IntOp, groups: usize) -> Vec<f64> {
    let weights = match op {
        IntOp::Linear { weight, .. } => weight.as_slice(),
        IntOp::Conv(c) => c.weight.as_slice(),
        _ => &[],
    };
    let per = weights.len() / groups.max(1);
    (0..groups)
        .map(|g| {
            weights[g * per..(g + 1) * per]
                .iter()
                .map(|&w| (w as f64).powi(2))
                .sum::<f64>()
                .sqrt()
        })
        .collect()
}

/// The largest index a rounding of `[0, hi]` by `drop` bits can produce: an approximate
/// one may land one above round-to-nearest.
pub(crate) fn rounded_top(hi: i64, drop: u32, approximate: bool) -> i64 {
    if drop == 0 {
        hi
    } else if approximate {
        (hi >> drop) + 1
    } else {
        (hi + (1 << (drop - 1))) >> drop
    }
}

/// Whether `[0, hi]` rounded by `drop` bits fits `r` bits; an approximate rounding's
/// upward error must still stay below `2^r` (else it reads the negacyclic half).
fn rounded_fits(hi: i64, drop: u32, r: u32, approximate: bool) -> bool {
    bits_for_range(Range::new(0, rounded_top(hi, drop, approximate))) <= r
}
