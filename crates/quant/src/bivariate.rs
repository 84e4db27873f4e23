//! Operations on two encrypted values, built from table lookups on linear combinations:
//!
//! * `a·b = ⌊(a+b)²/4⌋ − ⌊(a−b)²/4⌋` on the zero-point-centred integers (exact: both
//!   squares have the same parity), two lookups per product;
//! * `max(a, b) = b + relu(a − b)` and `min(a, b) = a − relu(a − b)` on operands sharing
//!   one scale and zero point, one lookup — MaxPool and ReduceMax are tournaments of it;
//! * comparisons: one lookup on `a − b`; And / Or: one lookup on the sum of two bits.

use fhec_frontend_onnx::BinaryKind;
use fhec_ir::Term;

use crate::builder::{min_max, Lowering, QValue};
use crate::sparse::IntRows;
use crate::tlu::LutOutput;
use crate::QuantError;

/// An affine row `bias + Σ weight·x_operand[index]` from `(operand, index, weight)`.
fn row(terms: &[(u32, u32, i64)], bias: i64) -> (Vec<Term>, i64) {
    let terms = terms
        .iter()
        .map(|&(operand, index, weight)| Term {
            operand,
            index,
            weight,
        })
        .collect();
    (terms, bias)
}

/// True when `x` is narrow, has nothing pending, and every element is quantized with
/// scale `s`, offset `o` and an integer zero point.
fn quantized_with(x: &QValue, s: f64, o: f64) -> bool {
    let z = -o / s;
    x.pending.is_empty()
        && x.narrow
        && x.scale.iter().all(|&v| v == s)
        && x.offset.iter().all(|&v| v == o)
        && (z - z.round()).abs() < 1e-9
}

/// A tournament level's steps in order, each group's step indices, and the steps per
/// group when every group has as many (`Some`): then the order is step-major, group
/// `g`'s `p`-th step at `p · groups + g`, so that the `p`-th steps of all groups lie
/// together, in the order of the groups; else group by group.
fn level_layout(per_group: Vec<Vec<Step>>) -> (Vec<Step>, Vec<Vec<usize>>, Option<usize>) {
    let groups = per_group.len();
    let width = per_group.first().map_or(0, Vec::len);
    if per_group.iter().all(|g| g.len() == width) {
        let mut steps = Vec::with_capacity(groups * width);
        for p in 0..width {
            steps.extend(per_group.iter().map(|g| g[p]));
        }
        let next = (0..groups)
            .map(|g| (0..width).map(|p| p * groups + g).collect())
            .collect();
        return (steps, next, Some(width));
    }
    let mut steps = Vec::new();
    let mut next = Vec::with_capacity(groups);
    for g in per_group {
        next.push((steps.len()..steps.len() + g.len()).collect());
        steps.extend(g);
    }
    (steps, next, None)
}

/// One output element of a tournament level.
#[derive(Clone, Copy)]
enum Step {
    Pair(usize, usize),
    Pass(usize),
}

impl Lowering<'_> {
    pub(crate) fn pairwise(
        &mut self,
        name: &str,
        xs: Vec<QValue>,
        kind: BinaryKind,
        left: &[u32],
        right: &[u32],
        shape: Vec<usize>,
    ) -> Result<QValue, QuantError> {
        let (a, b) = (xs[0].clone(), xs[xs.len() - 1].clone());
        match kind {
            BinaryKind::Mul => self.product(name, a, b, left, right, shape),
            BinaryKind::Max | BinaryKind::Min => {
                let (a, b) = self.align(name, a, b)?;
                let (cur, l, r) = self.concat2(name, &a, &b, left, right);
                let steps = l.iter().zip(&r).map(|(&i, &j)| Step::Pair(i, j)).collect();
                let min = kind == BinaryKind::Min;
                self.max_step(name, &cur, steps, min, shape.clone(), shape)
            }
            BinaryKind::And | BinaryKind::Or => {
                let a = self.as_bits(&format!("{name}/a"), a)?;
                let b = self.as_bits(&format!("{name}/b"), b)?;
                let rows = left
                    .iter()
                    .zip(right)
                    .map(|(&l, &r)| row(&[(0, l, 1), (1, r, 1)], 0))
                    .collect();
                let sum = self.affine(
                    &format!("{name}/sum"),
                    &[&a, &b],
                    IntRows { rows, sound: None },
                    shape.clone(),
                );
                let and = kind == BinaryKind::And;
                let input = self.lut_input(&format!("{name}/logic"), name, sum.node, &sum.calib)?;
                let out = self.lut(name.to_string(), &input, |_, v| {
                    i64::from(if and { v >= 2 } else { v >= 1 })
                });
                Ok(bits(out))
            }
            k if k.is_predicate() => {
                let (a, b) = self.align(name, a, b)?;
                let rows = left
                    .iter()
                    .zip(right)
                    .map(|(&l, &r)| row(&[(0, l, 1), (1, r, -1)], 0))
                    .collect();
                let d = self.affine(
                    &format!("{name}/diff"),
                    &[&a, &b],
                    IntRows { rows, sound: None },
                    shape,
                );
                let input = self.lut_input(&format!("{name}/compare"), name, d.node, &d.calib)?;
                let shift = d.shift.clone();
                // the difference of two equally quantized values: its sign decides
                let out = self.lut(name.to_string(), &input, |e, v| {
                    kind.apply((v - shift[e]) as f64, 0.0) as i64
                });
                Ok(bits(out))
            }
            other => Err(QuantError::Unsupported {
                node: name.to_string(),
                op: other.name().into(),
                reason: "not supported between two encrypted tensors".into(),
            }),
        }
    }

    /// `y[j] = a[left[j]] · b[right[j]]`, exact on the quantized integers.
    fn product(
        &mut self,
        name: &str,
        a: QValue,
        b: QValue,
        left: &[u32],
        right: &[u32],
        shape: Vec<usize>,
    ) -> Result<QValue, QuantError> {
        let a = self.centred(&format!("{name}/a"), a)?;
        let b = self.centred(&format!("{name}/b"), b)?;
        let zero = |x: &QValue, i: usize| (-x.offset[i] / x.scale[i]).round() as i64;
        let mut halves = Vec::new();
        for sign in [1i64, -1] {
            let rows = left
                .iter()
                .zip(right)
                .map(|(&l, &r)| {
                    let bias = -zero(&a, l as usize) - sign * zero(&b, r as usize);
                    row(&[(0, l, 1), (1, r, sign)], bias)
                })
                .collect();
            let part = if sign > 0 { "sum" } else { "difference" };
            let s = self.affine(
                &format!("{name}/{part}"),
                &[&a, &b],
                IntRows { rows, sound: None },
                shape.clone(),
            );
            let input = self.lut_input(&format!("{name}/{part}"), name, s.node, &s.calib)?;
            let shift = s.shift.clone();
            let sq = self.lut(format!("{name}/{part}²/4"), &input, |e, v| {
                (v - shift[e]).pow(2).div_euclid(4)
            });
            halves.push(sq);
        }
        let (Some(minus), Some(plus)) = (halves.pop(), halves.pop()) else {
            return Err(QuantError::Unsupported {
                node: name.to_string(),
                op: "Mul".into(),
                reason: "the product's two square tables were not built".into(),
            });
        };
        let (minus, plus) = (integers(minus, false), integers(plus, false));
        let rows = (0..left.len() as u32)
            .map(|e| row(&[(0, e, 1), (1, e, -1)], 0))
            .collect();
        let p = self.affine(name, &[&plus, &minus], IntRows { rows, sound: None }, shape);
        let scale: Vec<f64> = left
            .iter()
            .zip(right)
            .map(|(&l, &r)| a.scale[l as usize] * b.scale[r as usize])
            .collect();
        let offset = scale
            .iter()
            .zip(&p.shift)
            .map(|(s, &sh)| -s * sh as f64)
            .collect();
        Ok(QValue {
            node: p.node,
            scale,
            offset,
            pending: vec![],
            narrow: false,
            calib: p.calib,
            sound: p.sound,
            design: Some(p.design),
        })
    }

    /// `x` as narrow integers with an integer zero point per element.
    fn centred(&mut self, name: &str, x: QValue) -> Result<QValue, QuantError> {
        let integral = (0..x.scale.len()).all(|i| {
            let z = -x.offset[i] / x.scale[i];
            x.scale[i] != 0.0 && (z - z.round()).abs() < 1e-6
        });
        if x.pending.is_empty() && x.narrow && integral {
            Ok(x)
        } else {
            self.requantize(name, x)
        }
    }

    /// Both operands as narrow integers sharing one scale and one zero point, so that
    /// `q_a − q_b` is their difference in quantized units.
    fn align(&mut self, name: &str, a: QValue, b: QValue) -> Result<(QValue, QValue), QuantError> {
        let (s, o) = (a.scale[0], a.offset[0]);
        if quantized_with(&a, s, o) && quantized_with(&b, s, o) {
            return Ok((a, b));
        }
        // one quantizer for both, from their joint calibrated range
        let floats = |x: &QValue| -> Vec<f64> {
            x.calib
                .iter()
                .flat_map(|q| q.iter().enumerate().map(|(e, &v)| x.float(e, v as f64)))
                .collect()
        };
        let (lo, hi) = min_max(floats(&a).into_iter().chain(floats(&b)));
        let bits = self.cfg.activation_bits;
        let to = crate::tlu::Grid::calibrated(crate::builder::asymmetric(lo, hi, bits), bits);
        let a = self.requantize_with(&format!("{name}/a"), a, Some(to))?;
        let b = self.requantize_with(&format!("{name}/b"), b, Some(to))?;
        Ok((a, b))
    }

    /// The elements `left` of `a` followed by `right` of `b` as one value (a copy), with
    /// the positions of each pair in it.
    fn concat2(
        &mut self,
        name: &str,
        a: &QValue,
        b: &QValue,
        left: &[u32],
        right: &[u32],
    ) -> (QValue, Vec<usize>, Vec<usize>) {
        let n = left.len();
        let rows: Vec<(Vec<Term>, i64)> = left
            .iter()
            .map(|&i| row(&[(0, i, 1)], 0))
            .chain(right.iter().map(|&i| row(&[(1, i, 1)], 0)))
            .collect();
        let sound = rows
            .iter()
            .map(|(t, _)| [a, b][t[0].operand as usize].sound[t[0].index as usize])
            .collect();
        let built = self.affine(
            &format!("{name}/operands"),
            &[a, b],
            IntRows {
                rows,
                sound: Some(sound),
            },
            vec![1, 2 * n],
        );
        let v = QValue {
            node: built.node,
            scale: vec![a.scale[0]; 2 * n],
            offset: vec![a.offset[0]; 2 * n],
            pending: vec![],
            narrow: true,
            calib: built.calib,
            sound: built.sound,
            design: None,
        };
        (v, (0..n).collect(), (n..2 * n).collect())
    }

    /// One tournament level on `cur` (uniform scale and zero point): each step is the
    /// max (min) of a pair, or a copy. The level has `shape`, its pairs' differences
    /// `diff_shape`.
    fn max_step(
        &mut self,
        name: &str,
        cur: &QValue,
        steps: Vec<Step>,
        min: bool,
        shape: Vec<usize>,
        diff_shape: Vec<usize>,
    ) -> Result<QValue, QuantError> {
        let pairs: Vec<(usize, usize)> = steps
            .iter()
            .filter_map(|s| {
                if let Step::Pair(a, b) = s {
                    Some((*a, *b))
                } else {
                    None
                }
            })
            .collect();
        let r = if pairs.is_empty() {
            None
        } else {
            let rows = pairs
                .iter()
                .map(|&(a, b)| row(&[(0, a as u32, 1), (0, b as u32, -1)], 0))
                .collect();
            let d = self.affine_shared_shift(
                &format!("{name}/diff"),
                &[cur],
                IntRows { rows, sound: None },
                diff_shape,
            );
            // a difference of two values on one grid needs one bit more than they do:
            // rounded to the threshold it would lose the max's last bit, so it keeps one
            // more (Concrete's max is exact at that width too)
            let bits = self.cfg.rounding_bits.map(|r| r + 1);
            let relu =
                self.lut_input_rounded_to(&format!("{name}/relu"), name, d.node, &d.calib, bits)?;
            let shift = d.shift.clone();
            let r = self.lut(format!("{name}/relu"), &relu, |e, v| (v - shift[e]).max(0));
            Some(integers(r, false))
        };
        let mut k = 0;
        let mut rows = Vec::with_capacity(steps.len());
        let mut sound = Vec::with_capacity(steps.len());
        for s in &steps {
            match *s {
                Step::Pass(i) => {
                    rows.push(row(&[(0, i as u32, 1)], 0));
                    sound.push(cur.sound[i]);
                }
                Step::Pair(a, b) => {
                    // max = b + relu(a − b); min = a − relu(a − b)
                    let (base, w) = if min { (a, -1) } else { (b, 1) };
                    rows.push(row(&[(0, base as u32, 1), (1, k as u32, w)], 0));
                    let (sa, sb) = (cur.sound[a], cur.sound[b]);
                    sound.push(if min {
                        (sa.0.min(sb.0), sa.1.min(sb.1))
                    } else {
                        (sa.0.max(sb.0), sa.1.max(sb.1))
                    });
                    k += 1;
                }
            }
        }
        let n = rows.len();
        let slots: Vec<&QValue> = match &r {
            Some(r) => vec![cur, r],
            None => vec![cur],
        };
        let m = self.affine(
            name,
            &slots,
            IntRows {
                rows,
                sound: Some(sound),
            },
            shape,
        );
        Ok(QValue {
            node: m.node,
            scale: vec![cur.scale[0]; n],
            offset: vec![cur.offset[0]; n],
            pending: vec![],
            narrow: true,
            calib: m.calib,
            sound: m.sound,
            design: None,
        })
    }

    /// MaxPool / ReduceMax / ReduceMin: pairwise tournaments within each group.
    pub(crate) fn group_max(
        &mut self,
        name: &str,
        x: QValue,
        groups: &[Vec<u32>],
        min: bool,
        shape: Vec<usize>,
    ) -> Result<QValue, QuantError> {
        let mut cur = if quantized_with(&x, x.scale[0], x.offset[0]) {
            x
        } else {
            self.requantize(name, x)?
        };
        let mut cand: Vec<Vec<usize>> = groups
            .iter()
            .map(|g| g.iter().map(|&i| i as usize).collect())
            .collect();
        let mut level = 0;
        while cand.iter().any(|c| c.len() > 1) || level == 0 {
            // per group: its candidates paired, an odd one out passed on alone
            let per_group: Vec<Vec<Step>> = cand
                .iter()
                .map(|c| {
                    c.chunks(2)
                        .map(|pair| match *pair {
                            [a, b] => Step::Pair(a, b),
                            [a] => Step::Pass(a),
                            _ => unreachable!("chunks of 2"),
                        })
                        .collect()
                })
                .collect();
            let (steps, next, blocks) = level_layout(per_group);
            let last = next.iter().all(|c| c.len() == 1);
            let pairs = steps.iter().filter(|s| matches!(s, Step::Pair(..))).count();
            // a level of `blocks` steps per group, step-major, is `blocks` tensors of
            // the output's shape stacked on one axis: each step position reads a strided
            // slice of the level before (a pooling window's taps, MLIR.md)
            let count = cand.len();
            let one_per_group = shape.iter().product::<usize>() == count && !shape.is_empty();
            let stacked = |n: usize| {
                (blocks.is_some() && one_per_group && n > 0 && n.is_multiple_of(count)).then(|| {
                    // stacked on the batch axis's neighbour when the batch is one, so
                    // that flattening the level stays a collapse of its axes
                    let mut s = shape.clone();
                    let axis = usize::from(s.len() > 1 && s[0] == 1);
                    s[axis] *= n / count;
                    s
                })
            };
            let step_shape = if last {
                shape.clone()
            } else {
                stacked(steps.len()).unwrap_or_else(|| vec![1, steps.len()])
            };
            let diff_shape = stacked(pairs).unwrap_or_else(|| vec![1, pairs]);
            cur = self.max_step(
                &format!("{name}/level{level}"),
                &cur,
                steps,
                min,
                step_shape,
                diff_shape,
            )?;
            cand = next;
            level += 1;
        }
        Ok(cur)
    }

    /// `x` as bits (0/1 integers, scale 1): kept when it already is one, else one lookup
    /// of `x ≠ 0` (with any pending ops applied).
    fn as_bits(&mut self, name: &str, x: QValue) -> Result<QValue, QuantError> {
        let is_bool = x.pending.is_empty()
            && x.scale.iter().all(|&s| s == 1.0)
            && x.offset.iter().all(|&o| o == 0.0)
            && x.sound.iter().all(|&(lo, hi)| lo >= 0 && hi <= 1);
        if is_bool {
            return Ok(x);
        }
        let input = self.lut_input(name, name, x.node, &x.calib)?;
        let out = self.lut(name.to_string(), &input, |e, v| {
            i64::from(x.float(e, v as f64) != 0.0)
        });
        Ok(bits(out))
    }
}

/// A 0/1 table's outputs.
fn bits(t: LutOutput) -> QValue {
    let mut v = integers(t, true);
    v.sound.fill((0, 1));
    v
}

/// A table's integer outputs taken at face value (scale 1, offset 0).
pub(crate) fn integers(t: LutOutput, narrow: bool) -> QValue {
    let n = t.sound.len();
    QValue {
        node: t.node,
        scale: vec![1.0; n],
        offset: vec![0.0; n],
        pending: vec![],
        narrow,
        calib: t.calib,
        sound: t.sound,
        design: None,
    }
}
