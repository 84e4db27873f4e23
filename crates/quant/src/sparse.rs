//! Lowering of [`Op::Sparse`](fhec_frontend_onnx::Op) (convolutions, pooling sums,
//! reductions, sums of two tensors, data movement) to an integer [`IntOp::Affine`].
//!
//! Each term's effective weight is `w · scale(source)`. A row whose effective weights
//! all have one magnitude is *exact*: integer weights ±1 and the row's scale is that
//! magnitude (average pooling, sums of equally scaled tensors, every copy). Other rows
//! are quantized like a Dense layer: one symmetric scale for the op, `weight_bits` bits.

use fhec_frontend_onnx::SparseMap;
use fhec_ir::{bits_for_range, IntOp, Node, NodeId, Range, Status, Term};

use crate::builder::{Lowering, QValue};
use crate::QuantError;

/// An integer affine map to build: rows of `(terms, bias)` over `slots`.
pub(crate) struct IntRows {
    pub rows: Vec<(Vec<Term>, i64)>,
    /// Per row, bounds tighter than interval arithmetic gives (e.g. a max of two values
    /// lies within their hull).
    pub sound: Option<Vec<(i64, i64)>>,
}

/// The range an Affine node is built for, and how its elements are shifted above 0.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Design {
    /// Calibrated, widened by the margin; each element shifted on its own.
    Calibrated,
    /// Sound: values that must never wrap whatever the input.
    Sound,
    /// Calibrated, with one shift for all elements where that makes the node no wider.
    SharedShift,
}

/// An Affine node with its calibration facts.
pub(crate) struct Built {
    pub node: NodeId,
    pub calib: Vec<Vec<i64>>,
    pub sound: Vec<(i64, i64)>,
    pub design: Vec<(i64, i64)>,
    /// Per element, the constant added so the designed range starts at 0 or above.
    pub shift: Vec<i64>,
}

impl Built {
    /// The node as a value `scale·q + offset`, `offset` given before the shift (each
    /// element's shift is taken out of it here).
    pub(crate) fn into_value(self, scale: Vec<f64>, mut offset: Vec<f64>, narrow: bool) -> QValue {
        for (o, (s, sh)) in offset.iter_mut().zip(scale.iter().zip(&self.shift)) {
            *o -= s * *sh as f64;
        }
        QValue {
            node: self.node,
            scale,
            offset,
            pending: vec![],
            narrow,
            calib: self.calib,
            sound: self.sound,
            design: Some(self.design),
        }
    }
}

impl Lowering<'_> {
    /// Builds `Affine(rows)` over `slots` (values with their calibration and sound
    /// bounds); an element whose designed range would go below 0 is shifted up.
    pub(crate) fn affine(
        &mut self,
        name: &str,
        slots: &[&QValue],
        rows: IntRows,
        shape: Vec<usize>,
    ) -> Built {
        self.affine_with(name, slots, rows, shape, Design::Calibrated)
    }

    /// [`affine`](Self::affine) built for the sound range of every element, not the
    /// calibrated one: for values that must never wrap whatever the input.
    pub(crate) fn affine_sound(
        &mut self,
        name: &str,
        slots: &[&QValue],
        rows: IntRows,
        shape: Vec<usize>,
    ) -> Built {
        self.affine_with(name, slots, rows, shape, Design::Sound)
    }

    /// [`affine`](Self::affine) with one shift for every element where that makes the
    /// node no wider: the lookups reading it then share one table (a tournament's
    /// differences, whose per-element shifts would give each element its own table and
    /// the MLIR one dense table per element).
    pub(crate) fn affine_shared_shift(
        &mut self,
        name: &str,
        slots: &[&QValue],
        rows: IntRows,
        shape: Vec<usize>,
    ) -> Built {
        self.affine_with(name, slots, rows, shape, Design::SharedShift)
    }

    fn affine_with(
        &mut self,
        name: &str,
        slots: &[&QValue],
        rows: IntRows,
        shape: Vec<usize>,
        design_for: Design,
    ) -> Built {
        let samples = slots[0].calib.len();
        let n = rows.rows.len();
        let mut calib = vec![Vec::with_capacity(n); samples];
        let mut sound = Vec::with_capacity(n);
        let mut design = Vec::with_capacity(n);
        let mut shift = Vec::with_capacity(n);
        for (j, (terms, bias)) in rows.rows.iter().enumerate() {
            let (mut slo, mut shi) = (*bias, *bias);
            for t in terms {
                let (a, b) = slots[t.operand as usize].sound[t.index as usize];
                slo += (t.weight * a).min(t.weight * b);
                shi += (t.weight * a).max(t.weight * b);
            }
            if let Some(tight) = &rows.sound {
                (slo, shi) = (slo.max(tight[j].0), shi.min(tight[j].1));
            }
            let (mut lo, mut hi) = (i64::MAX, i64::MIN);
            for (s, out) in calib.iter_mut().enumerate() {
                let v = terms.iter().fold(*bias, |acc, t| {
                    acc + t.weight * slots[t.operand as usize].calib[s][t.index as usize]
                });
                (lo, hi) = (lo.min(v), hi.max(v));
                out.push(v);
            }
            let m = ((hi - lo) as f64 * self.cfg.range_margin).ceil() as i64;
            let (dlo, dhi) = if design_for == Design::Sound {
                (slo, shi)
            } else {
                ((lo - m).max(slo), (hi + m).min(shi))
            };
            let sh = (-dlo).max(0);
            sound.push((slo + sh, shi + sh));
            design.push((dlo + sh, dhi + sh));
            shift.push(sh);
        }
        if design_for == Design::SharedShift {
            let most = shift.iter().copied().max().unwrap_or(0);
            let top = |d: &[(i64, i64)], extra: &dyn Fn(usize) -> i64| {
                let hi = (0..d.len()).map(|e| d[e].1 + extra(e)).max().unwrap_or(0);
                bits_for_range(Range::new(0, hi.max(0)))
            };
            if top(&design, &|e| most - shift[e]) <= top(&design, &|_| 0) {
                for e in 0..shift.len() {
                    let delta = most - shift[e];
                    sound[e] = (sound[e].0 + delta, sound[e].1 + delta);
                    design[e] = (design[e].0 + delta, design[e].1 + delta);
                    shift[e] = most;
                }
            }
        }
        for q in &mut calib {
            for (v, sh) in q.iter_mut().zip(&shift) {
                *v += sh;
            }
        }
        let mut row_start = vec![0u32];
        let mut terms = Vec::new();
        let mut bias = Vec::with_capacity(n);
        for ((t, b), sh) in rows.rows.into_iter().zip(&shift) {
            terms.extend(t);
            row_start.push(terms.len() as u32);
            bias.push(b + sh);
        }
        let range = Range::new(0, design.iter().map(|d| d.1).max().unwrap_or(0).max(0));
        let nodes: Vec<NodeId> = slots.iter().map(|v| v.node).collect();
        let node = self.circuit.add(
            Node {
                name: name.to_string(),
                op: IntOp::Affine {
                    row_start,
                    terms,
                    bias,
                },
                shape,
                status: Status::Encrypted,
                range,
            },
            &nodes,
        );
        Built {
            node,
            calib,
            sound,
            design,
            shift,
        }
    }

    pub(crate) fn sparse(
        &mut self,
        name: &str,
        mut xs: Vec<QValue>,
        map: &SparseMap,
        shape: Vec<usize>,
    ) -> Result<QValue, QuantError> {
        let constant_rows = (0..map.rows()).any(|j| map.row(j).is_empty());
        if xs.len() == 1 && map.is_movement() && !constant_rows && !xs[0].pending.is_empty() {
            return Ok(self.gather(name, &xs[0], map, shape));
        }
        for x in xs.iter_mut() {
            if !x.pending.is_empty() {
                *x = self.requantize(name, x.clone())?;
            }
        }
        // quantized rows need narrow operands, and so do sums that would pass 16 bits
        // (pooling a convolution's accumulators): requantize the wide ones they read
        let exact = row_exactness(&xs, map);
        let widest_row = (0..map.rows())
            .map(|j| map.row(j).len())
            .max()
            .unwrap_or(0)
            .max(1);
        let growth = usize::BITS - (widest_row - 1).leading_zeros();
        let overflows = |x: &QValue| {
            bits_for_range(self.circuit.node(x.node).range) + growth > fhec_ir::MAX_BITS
        };
        let mut wide_read = vec![false; xs.len()];
        for (j, &ex) in exact.iter().enumerate() {
            for t in map.row(j) {
                let x = &xs[t.slot as usize];
                wide_read[t.slot as usize] |= !x.narrow && (!ex || overflows(x));
            }
        }
        for (s, x) in xs.iter_mut().enumerate() {
            if wide_read[s] {
                *x = self.requantize(name, x.clone())?;
            }
        }
        let exact = row_exactness(&xs, map);
        let constant = |x: &QValue, i: usize| x.sound[i] == (0, 0);
        // one symmetric scale per quantized row (per output element, so finer than per
        // channel): a row's integer weights use all `weight_bits` levels
        let row_step = |j: usize| {
            let m = map
                .row(j)
                .iter()
                .map(|t| (t.weight * xs[t.slot as usize].scale[t.index as usize]).abs())
                .fold(0.0f64, f64::max);
            crate::builder::symmetric_step(m, self.cfg.weight_bits)
        };
        let mut rows = Vec::with_capacity(map.rows());
        let mut scale = Vec::with_capacity(map.rows());
        let mut offset = Vec::with_capacity(map.rows());
        for (j, &ex) in exact.iter().enumerate() {
            let live: Vec<_> = map
                .row(j)
                .iter()
                .filter(|t| !constant(&xs[t.slot as usize], t.index as usize))
                .collect();
            let row_scale = match live.first() {
                None => f64::NAN, // filled below: a constant element
                Some(t) if ex => (t.weight * xs[t.slot as usize].scale[t.index as usize]).abs(),
                Some(_) => row_step(j),
            };
            let terms = live
                .iter()
                .map(|t| {
                    let e = t.weight * xs[t.slot as usize].scale[t.index as usize];
                    Term {
                        operand: t.slot,
                        index: t.index,
                        weight: (e / row_scale).round() as i64,
                    }
                })
                .collect();
            let off = map.row(j).iter().fold(map.bias[j], |a, t| {
                a + t.weight * xs[t.slot as usize].offset[t.index as usize]
            });
            rows.push((terms, 0));
            scale.push(row_scale);
            offset.push(off);
        }
        let fill = scale.iter().copied().find(|s| s.is_finite()).unwrap_or(1.0);
        for s in &mut scale {
            if !s.is_finite() {
                *s = fill;
            }
        }
        let refs: Vec<&QValue> = xs.iter().collect();
        let built = self.affine(name, &refs, IntRows { rows, sound: None }, shape);
        let bits = bits_for_range(self.circuit.node(built.node).range);
        let narrow = exact.iter().all(|&e| e)
            && xs.iter().all(|x| x.narrow)
            && bits <= self.cfg.activation_bits + 2;
        Ok(built.into_value(scale, offset, narrow))
    }

    /// A pure rearrangement of one value: its elements (with their scales, offsets and
    /// pending ops) copied to new places.
    fn gather(&mut self, name: &str, x: &QValue, map: &SparseMap, shape: Vec<usize>) -> QValue {
        let src: Vec<usize> = (0..map.rows())
            .map(|j| map.row(j)[0].index as usize)
            .collect();
        let row_start = (0..=src.len() as u32).collect();
        let terms = src
            .iter()
            .map(|&i| Term {
                operand: 0,
                index: i as u32,
                weight: 1,
            })
            .collect();
        let range = self.circuit.node(x.node).range;
        let node = self.circuit.add(
            Node {
                name: name.to_string(),
                op: IntOp::Affine {
                    row_start,
                    terms,
                    bias: vec![0; src.len()],
                },
                shape,
                status: Status::Encrypted,
                range,
            },
            &[x.node],
        );
        let pick = |v: &[f64]| src.iter().map(|&i| v[i]).collect::<Vec<f64>>();
        QValue {
            node,
            scale: pick(&x.scale),
            offset: pick(&x.offset),
            pending: x.pending.iter().map(|p| p.gather(&src)).collect(),
            narrow: x.narrow,
            calib: x
                .calib
                .iter()
                .map(|q| src.iter().map(|&i| q[i]).collect())
                .collect(),
            sound: src.iter().map(|&i| x.sound[i]).collect(),
            design: x
                .design
                .as_ref()
                .map(|d| src.iter().map(|&i| d[i]).collect()),
        }
    }
}

/// Per row: do its live terms' effective weights share one magnitude? (For every row, or
/// for none.)
fn row_exactness(xs: &[QValue], map: &SparseMap) -> Vec<bool> {
    let exact: Vec<bool> = (0..map.rows())
        .map(|j| {
            let mags: Vec<f64> = map
                .row(j)
                .iter()
                .filter(|t| xs[t.slot as usize].sound[t.index as usize] != (0, 0))
                .map(|t| (t.weight * xs[t.slot as usize].scale[t.index as usize]).abs())
                .collect();
            mags.first()
                .is_none_or(|&m| m > 0.0 && mags.iter().all(|&v| (v - m).abs() <= 1e-9 * m))
        })
        .collect();
    // all or nothing: mixing per-row exact scales with one quantized scale (a padded
    // convolution's corner rows have a single tap) measured far off (88% relative RMS
    // error on op_conv2d_group_dilated against 7% without mixing)
    if exact.iter().all(|&e| e) {
        exact
    } else {
        vec![false; exact.len()]
    }
}
