//! Tree ensembles in the spirit of Hummingbird's GEMM strategy (docs/TREES.md):
//!
//! 1. **Comparisons.** Every branch `x[f] ⋚ t` is a table over the feature's quantized
//!    values. Branches whose tables coincide (the same feature, thresholds that fall
//!    between the same two grid points) share one lookup, across all trees; a branch
//!    that no grid value can flip is a constant and costs nothing.
//! 2. **Paths.** A clear matrix product counts, per leaf, the branch outcomes along its
//!    path that agree with it: `S_l = Σ_on-path (D or 1 − D)`. The leaf is reached iff
//!    `S_l` equals its depth.
//! 3. **Leaves.** One table per leaf turns `S_l` into the indicator `[S_l = depth_l]`.
//! 4. **Scores.** A clear matrix product sums the reached leaves' quantized values; each
//!    tree contributes exactly one leaf, which bounds the accumulator.
//!
//! With `comparison_bits`, a step-shaped comparison reads its feature shifted so the
//! threshold lies on a rounding boundary, through an approximate rounding (fewer bits
//! per bootstrap, exact without noise) or, with `comparison_exact`, an exact one (the
//! same result as the whole feature, through chains of small bootstraps). When each leaf has one independent score,
//! steps 3–4 become `Lowering::leaf_values`: tables yield leaf values, and two
//! sibling leaves share one table.

use std::collections::HashMap;

use fhec_frontend_onnx::{TreeEnsemble, TreeNode};
use fhec_ir::{bits_for_range, IntOp, Node, NodeId, Range, Status, Term};

use crate::builder::{Lowering, QValue};
use crate::QuantError;

/// A leaf with the branch outcomes on its path: `(comparison, must be true)`.
struct LeafPath {
    tree: usize,
    weights: Vec<(usize, f64)>,
    path: Vec<(Outcome, bool)>,
}

/// A branch's comparison after quantization.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Outcome {
    /// Index of a shared comparison lookup.
    Lookup(usize),
    /// No grid value changes it.
    Constant(bool),
}

impl Lowering<'_> {
    pub(crate) fn tree_ensemble(
        &mut self,
        name: &str,
        x: QValue,
        e: &TreeEnsemble,
        shape: Vec<usize>,
    ) -> Result<QValue, QuantError> {
        debug_assert_eq!(shape.iter().product::<usize>(), e.outputs);
        let x = if x.narrow && x.pending.is_empty() {
            x
        } else {
            self.requantize(name, x)?
        };
        let levels = 1i64 << bits_for_range(self.circuit.node(x.node).range).max(1);
        // 1. comparisons, shared by (feature, table)
        let mut shared: HashMap<(usize, Vec<i64>), usize> = HashMap::new();
        let mut lookups: Vec<(usize, Vec<i64>)> = Vec::new();
        let mut leaves: Vec<LeafPath> = Vec::new();
        for (ti, tree) in e.trees.iter().enumerate() {
            let mut stack = vec![(0usize, Vec::new())];
            while let Some((i, path)) = stack.pop() {
                match &tree.nodes[i] {
                    TreeNode::Leaf { weights } => leaves.push(LeafPath {
                        tree: ti,
                        weights: weights.clone(),
                        path,
                    }),
                    TreeNode::Branch {
                        feature,
                        mode,
                        threshold,
                        if_true,
                        if_false,
                    } => {
                        let table: Vec<i64> = (0..levels)
                            .map(|q| {
                                let v = x.float(*feature, q as f64) as f32 as f64;
                                mode.holds(v, *threshold as f32 as f64) as i64
                            })
                            .collect();
                        let outcome = if table.iter().all(|&b| b == table[0]) {
                            Outcome::Constant(table[0] == 1)
                        } else {
                            let next = lookups.len();
                            let k = *shared.entry((*feature, table.clone())).or_insert(next);
                            if k == next {
                                lookups.push((*feature, table));
                            }
                            Outcome::Lookup(k)
                        };
                        let mut t = path.clone();
                        t.push((outcome, true));
                        let mut f = path;
                        f.push((outcome, false));
                        stack.push((*if_false, f));
                        stack.push((*if_true, t));
                    }
                }
            }
        }
        // without comparisons the path sums are constants: any operand will do
        let mut decisions: Vec<(NodeId, Vec<Vec<i64>>)> = Vec::new();
        let mut at = vec![(0u32, 0u32); lookups.len()];
        if lookups.is_empty() {
            decisions.push((x.node, x.calib.clone()));
        }
        let aligned = self.aligned_drop(levels);
        // (comparison, grid index of its table's step) for aligned reads; the rest whole
        let mut steps: Vec<(usize, usize)> = Vec::new();
        let mut others: Vec<usize> = Vec::new();
        for (k, (_, table)) in lookups.iter().enumerate() {
            match aligned.and(step_of(table)) {
                Some(s) => steps.push((k, s)),
                None => others.push(k),
            }
        }
        if let (Some(drop), false) = (aligned, steps.is_empty()) {
            // v = q + b with b = K·2^drop − 2^(drop−1) − s ≥ 0: the rounding of v is
            // K + ⌊(q − s)/2^drop⌋, at least K exactly when q ≥ s (the table's step)
            let half = 1i64 << (drop - 1);
            let shift: Vec<(i64, i64)> = steps
                .iter()
                .map(|&(_, s)| {
                    let s = s as i64;
                    let kk = (s + half + (1 << drop) - 1) >> drop;
                    (kk, (kk << drop) - half - s)
                })
                .collect();
            let rows = steps
                .iter()
                .zip(&shift)
                .map(|(&(k, _), &(_, b))| (vec![feature_term(lookups[k].0)], b))
                .collect();
            let (lo, hi) = shift
                .iter()
                .fold((i64::MAX, i64::MIN), |(lo, hi), &(_, b)| {
                    (lo.min(b), hi.max(b))
                });
            let (shifted, calib) = self.exact_affine(
                format!("{name}/aligned"),
                (x.node, &x.calib),
                rows,
                Range::new(lo, levels - 1 + hi),
            );
            let approximate = !self.cfg.comparison_exact;
            let input = self.rounded(name, name, shifted, &calib, drop, approximate)?;
            let out = self.lut(format!("{name}/compare_rounded"), &input, |c, v| {
                let (k, s) = steps[c];
                let table = &lookups[k].1;
                if v >> drop >= shift[c].0 {
                    table[s]
                } else {
                    table[0]
                }
            });
            for (c, &(k, _)) in steps.iter().enumerate() {
                at[k] = (decisions.len() as u32, c as u32);
            }
            decisions.push((out.node, out.calib));
        }
        if !others.is_empty() {
            // gather the compared features, one element per comparison
            let rows = others
                .iter()
                .map(|&k| (vec![feature_term(lookups[k].0)], 0))
                .collect();
            let range = self.circuit.node(x.node).range;
            let (gathered, calib) =
                self.exact_affine(format!("{name}/features"), (x.node, &x.calib), rows, range);
            let input = self.lut_input(name, name, gathered, &calib)?;
            // an operand wider than the rounding threshold is read through its top bits:
            // index `a` stands for the feature value a·2^drop (clamped to the grid)
            let out = self.lut(format!("{name}/compare"), &input, |c, a| {
                let t = &lookups[others[c]].1;
                t[(a as usize).min(t.len() - 1)]
            });
            for (c, &k) in others.iter().enumerate() {
                at[k] = (decisions.len() as u32, c as u32);
            }
            decisions.push((out.node, out.calib));
        }
        if let Some(basis) = single_basis(e, &leaves).filter(|_| self.cfg.sibling_leaves) {
            return self.leaf_values(name, e, &leaves, &decisions, &at, basis);
        }
        // 2. path sums: S_l = Σ (D or 1 − D) + constants that hold
        let depth: Vec<i64> = leaves.iter().map(|l| l.path.len() as i64).collect();
        let rows = leaves.iter().map(|l| path_row(&l.path, &at, 1)).collect();
        let deepest = depth.iter().copied().max().unwrap_or(0);
        let (sums, path_calib) = self.exact_affine_of(
            format!("{name}/paths"),
            &by_ref(&decisions),
            rows,
            Range::new(0, deepest.max(1)),
        );
        // 3. leaf indicators
        let input = self.lut_input(name, name, sums, &path_calib)?;
        let hit = self.lut(format!("{name}/leaves"), &input, |l, s| {
            (s == depth[l]) as i64
        });
        // 4. scores: Σ_l [l reached]·wq[l, o], one symmetric scale per output
        let step: Vec<f64> = (0..e.outputs)
            .map(|o| {
                let m = leaves
                    .iter()
                    .flat_map(|l| l.weights.iter().filter(|w| w.0 == o))
                    .fold(0.0f64, |m, w| m.max(w.1.abs()));
                crate::builder::symmetric_step(m, self.cfg.weight_bits)
            })
            .collect();
        // wq[l][o]: leaf l's quantized value for output o
        let wq: Vec<Vec<i64>> = leaves
            .iter()
            .map(|l| {
                step.iter()
                    .enumerate()
                    .map(|(o, s)| (leaf_value(l, o) / s).round() as i64)
                    .collect()
            })
            .collect();
        // exactly one leaf per tree: each tree adds between its smallest and largest leaf
        let mut lo = vec![0i64; e.outputs];
        let mut hi = vec![0i64; e.outputs];
        for t in 0..e.trees.len() {
            for o in 0..e.outputs {
                let vals = (0..leaves.len())
                    .filter(|&l| leaves[l].tree == t)
                    .map(|l| wq[l][o]);
                let (a, b) = vals.fold((i64::MAX, i64::MIN), |(a, b), v| (a.min(v), b.max(v)));
                lo[o] += a;
                hi[o] += b;
            }
        }
        let rows: Vec<(Vec<Term>, i64)> = (0..e.outputs)
            .map(|o| {
                let terms = (0..leaves.len())
                    .filter(|&l| wq[l][o] != 0)
                    .map(|l| Term {
                        operand: 0,
                        index: l as u32,
                        weight: wq[l][o],
                    })
                    .collect();
                (terms, -lo[o])
            })
            .collect();
        let top = (0..e.outputs).map(|o| hi[o] - lo[o]).max().unwrap_or(0);
        check_width(name, e, top)?;
        let (node, calib) = self.exact_affine(
            name.to_string(),
            (hit.node, &hit.calib),
            rows,
            Range::new(0, top),
        );
        let sound: Vec<(i64, i64)> = (0..e.outputs).map(|o| (0, hi[o] - lo[o])).collect();
        Ok(QValue {
            node,
            scale: step.clone(),
            offset: (0..e.outputs)
                .map(|o| e.base_values[o] + step[o] * lo[o] as f64)
                .collect(),
            pending: vec![],
            narrow: false,
            calib,
            design: Some(sound.clone()),
            sound,
        })
    }

    /// An Affine node over one operand (node, its calibration samples) whose range is
    /// given: it holds for every input, not just the inputset (path sums and
    /// one-leaf-per-tree sums are bounded by construction). Returns the node and its
    /// calibration samples.
    fn exact_affine(
        &mut self,
        name: String,
        (operand, operand_calib): (NodeId, &[Vec<i64>]),
        rows: Vec<(Vec<Term>, i64)>,
        range: Range,
    ) -> (NodeId, Vec<Vec<i64>>) {
        self.exact_affine_of(name, &[(operand, operand_calib)], rows, range)
    }

    /// [`exact_affine`](Self::exact_affine) over several operands.
    fn exact_affine_of(
        &mut self,
        name: String,
        operands: &[(NodeId, &[Vec<i64>])],
        rows: Vec<(Vec<Term>, i64)>,
        range: Range,
    ) -> (NodeId, Vec<Vec<i64>>) {
        let mut row_start = vec![0u32];
        let mut terms = Vec::new();
        let mut bias = Vec::with_capacity(rows.len());
        for (t, b) in rows {
            terms.extend(t);
            row_start.push(terms.len() as u32);
            bias.push(b);
        }
        let n = bias.len();
        let samples = operands.first().map_or(0, |o| o.1.len());
        let calib = (0..samples)
            .map(|i| {
                let args: Vec<&Vec<i64>> = operands.iter().map(|o| &o.1[i]).collect();
                fhec_ir::interp::affine(&args, &row_start, &terms, &bias)
            })
            .collect();
        let node = self.circuit.add(
            Node {
                name,
                op: IntOp::Affine {
                    row_start,
                    terms,
                    bias,
                },
                shape: vec![1, n],
                status: Status::Encrypted,
                range,
            },
            &operands.iter().map(|o| o.0).collect::<Vec<_>>(),
        );
        (node, calib)
    }
}

impl Lowering<'_> {
    /// The bits a threshold-aligned comparison drops from a feature of `levels` grid
    /// values so its table reads `comparison_bits` bits; `None` (compare the whole
    /// feature) with exact rounding or when dropping saves nothing.
    fn aligned_drop(&self, levels: i64) -> Option<u32> {
        let c = self
            .cfg
            .comparison_bits
            .filter(|_| self.cfg.rounding_approximate || self.cfg.comparison_exact)?;
        let approximate = !self.cfg.comparison_exact;
        // v < levels + 2^drop; the smallest drop whose rounded range fits c bits
        let bits = |top: i64| bits_for_range(Range::new(0, top));
        (1..16)
            .map(|d| {
                (
                    d,
                    crate::tlu::rounded_top(levels - 1 + (1 << d) - 1, d, approximate),
                )
            })
            .find(|&(_, top)| bits(top) <= c)
            .filter(|&(_, top)| bits(top) < bits(levels - 1))
            .map(|(d, _)| d)
    }
}

/// Refuses a score sum of `[0, top]` wider than the accumulator limit.
fn check_width(name: &str, e: &TreeEnsemble, top: i64) -> Result<(), QuantError> {
    let bits = bits_for_range(Range::new(0, top));
    if bits > fhec_ir::MAX_BITS {
        return Err(QuantError::EnsembleTooWide {
            node: name.to_string(),
            trees: e.trees.len(),
            bits,
        });
    }
    Ok(())
}

/// The first grid index where a table that changes exactly once changes.
fn step_of(table: &[i64]) -> Option<usize> {
    let s = table.iter().position(|&b| b != table[0])?;
    table[s..].iter().all(|&b| b == table[s]).then_some(s)
}

/// Operands with their calibration samples, borrowed.
fn by_ref(operands: &[(NodeId, Vec<Vec<i64>>)]) -> Vec<(NodeId, &[Vec<i64>])> {
    operands.iter().map(|(n, c)| (*n, c.as_slice())).collect()
}

/// Element `f` of the feature vector, weight 1.
fn feature_term(f: usize) -> Term {
    Term {
        operand: 0,
        index: f as u32,
        weight: 1,
    }
}

/// The output every leaf's scores follow from: `derived` is the other output and the sum
/// of the per-tree constants `c_t = w_0 + w_1` (two-class probabilities, XGBoost's
/// `[−s, s]`).
struct Basis {
    output: usize,
    derived: Option<(usize, f64)>,
}

/// A one-output ensemble, or a two-output one whose leaves all score `w_0 + w_1 = c_t`
/// within each tree, has one independent score per leaf.
fn single_basis(e: &TreeEnsemble, leaves: &[LeafPath]) -> Option<Basis> {
    match e.outputs {
        1 => Some(Basis {
            output: 0,
            derived: None,
        }),
        2 => {
            let scale = leaves
                .iter()
                .map(|l| leaf_value(l, 0).abs().max(leaf_value(l, 1).abs()))
                .fold(f64::MIN_POSITIVE, f64::max);
            let mut c: Vec<Option<f64>> = vec![None; e.trees.len()];
            for l in leaves {
                let s = leaf_value(l, 0) + leaf_value(l, 1);
                match c[l.tree] {
                    None => c[l.tree] = Some(s),
                    Some(t) if (t - s).abs() <= 1e-9 * scale => {}
                    Some(_) => return None,
                }
            }
            Some(Basis {
                output: 1,
                derived: Some((0, c.iter().flatten().sum())),
            })
        }
        _ => None,
    }
}

fn leaf_value(l: &LeafPath, o: usize) -> f64 {
    l.weights.iter().filter(|w| w.0 == o).map(|w| w.1).sum()
}

/// Σ over a path's branches of (D or 1 − D), times `scale`: terms and bias.
fn path_row(path: &[(Outcome, bool)], at: &[(u32, u32)], scale: i64) -> (Vec<Term>, i64) {
    let mut terms = Vec::new();
    let mut bias = 0;
    for &(o, want) in path {
        match o {
            Outcome::Constant(v) => bias += scale * (v == want) as i64,
            Outcome::Lookup(k) => {
                terms.push(Term {
                    operand: at[k].0,
                    index: at[k].1,
                    weight: if want { scale } else { -scale },
                });
                bias += scale * (!want) as i64;
            }
        }
    }
    (terms, bias)
}

/// A leaf's parent: its tree and the branch outcomes on the path to it.
type ParentKey<'a> = (usize, &'a [(Outcome, bool)]);

/// One table lookup of the leaf stage: a pair of sibling leaves under a compared
/// parent, or a single leaf.
enum LeafLookup {
    /// Reads `2·P + D`: `P` the parent's path sum (reached iff `P = depth`), `D` its
    /// decision; yields the true or the false leaf's value.
    Pair {
        on_true: usize,
        on_false: usize,
        depth: i64,
    },
    /// Reads the path sum `S`; yields the leaf's value iff `S = depth`.
    Single { leaf: usize, depth: i64 },
}

impl Lowering<'_> {
    /// Steps 3–4 for an ensemble with one independent score per leaf: the leaf lookups
    /// yield the leaf's quantized value (less its tree's smallest) instead of an
    /// indicator, so two sibling leaves share one lookup, and the scores are plain sums
    /// (docs/TREES.md).
    fn leaf_values(
        &mut self,
        name: &str,
        e: &TreeEnsemble,
        leaves: &[LeafPath],
        decisions: &[(NodeId, Vec<Vec<i64>>)],
        at: &[(u32, u32)],
        basis: Basis,
    ) -> Result<QValue, QuantError> {
        let b = basis.output;
        let m = leaves
            .iter()
            .fold(0.0f64, |m, l| m.max(leaf_value(l, b).abs()));
        let step = crate::builder::symmetric_step(m, self.cfg.weight_bits);
        let wq: Vec<i64> = leaves
            .iter()
            .map(|l| (leaf_value(l, b) / step).round() as i64)
            .collect();
        // each tree reaches one leaf: its lookups yield wq − (the tree's smallest) ≥ 0
        let mut low = vec![i64::MAX; e.trees.len()];
        let mut high = vec![i64::MIN; e.trees.len()];
        for (l, &w) in leaves.iter().zip(&wq) {
            low[l.tree] = low[l.tree].min(w);
            high[l.tree] = high[l.tree].max(w);
        }
        let value = |l: usize| wq[l] - low[leaves[l].tree];
        // sibling leaves: the same tree and path up to a parent whose comparison is a lookup
        let mut siblings: HashMap<ParentKey, [Option<usize>; 2]> = HashMap::new();
        for (i, l) in leaves.iter().enumerate() {
            if let Some((&(Outcome::Lookup(_), taken), prefix)) = l.path.split_last() {
                siblings.entry((l.tree, prefix)).or_default()[taken as usize] = Some(i);
            }
        }
        let mut lookups = Vec::new();
        let mut rows = Vec::new();
        let mut done = vec![false; leaves.len()];
        for (i, l) in leaves.iter().enumerate() {
            if done[i] {
                continue;
            }
            let pair = l.path.split_last().and_then(|(parent, prefix)| {
                let s = siblings.get(&(l.tree, prefix))?;
                Some((parent, prefix, s[1]?, s[0]?))
            });
            match pair {
                Some((parent, prefix, on_true, on_false)) => {
                    let (mut terms, bias) = path_row(prefix, at, 2);
                    let Outcome::Lookup(k) = parent.0 else {
                        unreachable!("pairs hang under compared parents")
                    };
                    terms.push(Term {
                        operand: at[k].0,
                        index: at[k].1,
                        weight: 1,
                    });
                    rows.push((terms, bias));
                    lookups.push(LeafLookup::Pair {
                        on_true,
                        on_false,
                        depth: prefix.len() as i64,
                    });
                    done[on_true] = true;
                    done[on_false] = true;
                }
                None => {
                    rows.push(path_row(&l.path, at, 1));
                    lookups.push(LeafLookup::Single {
                        leaf: i,
                        depth: l.path.len() as i64,
                    });
                    done[i] = true;
                }
            }
        }
        let widest = lookups
            .iter()
            .map(|k| match *k {
                LeafLookup::Pair { depth, .. } => 2 * depth + 1,
                LeafLookup::Single { depth, .. } => depth,
            })
            .max()
            .unwrap_or(0);
        let (sums, calib) = self.exact_affine_of(
            format!("{name}/paths"),
            &by_ref(decisions),
            rows,
            Range::new(0, widest.max(1)),
        );
        // path sums are small: read whole, never rounded
        let input = self.rounded(name, name, sums, &calib, 0, false)?;
        let hit = self.lut(format!("{name}/leaves"), &input, |i, y| match lookups[i] {
            LeafLookup::Pair {
                on_true,
                on_false,
                depth,
            } if y >> 1 == depth => value(if y & 1 == 1 { on_true } else { on_false }),
            LeafLookup::Single { leaf, depth } if y == depth => value(leaf),
            _ => 0,
        });
        let top: i64 = low.iter().zip(&high).map(|(l, h)| h - l).sum();
        check_width(name, e, top)?;
        let lo: i64 = low.iter().sum();
        let all = |weight: i64| -> Vec<Term> {
            (0..lookups.len())
                .map(|i| Term {
                    operand: 0,
                    index: i as u32,
                    weight,
                })
                .collect()
        };
        let mut rows = vec![(Vec::new(), 0); e.outputs];
        let mut offset = vec![0.0; e.outputs];
        rows[b] = (all(1), 0);
        offset[b] = e.base_values[b] + step * lo as f64;
        if let Some((o, c)) = basis.derived {
            // output o = Σ c_t − output b, carried as top − q_b
            rows[o] = (all(-1), top);
            offset[o] = e.base_values[o] + c - step * (top + lo) as f64;
        }
        let (node, calib) = self.exact_affine(
            name.to_string(),
            (hit.node, &hit.calib),
            rows,
            Range::new(0, top),
        );
        let sound = vec![(0, top); e.outputs];
        Ok(QValue {
            node,
            scale: vec![step; e.outputs],
            offset,
            pending: vec![],
            narrow: false,
            calib,
            design: Some(sound.clone()),
            sound,
        })
    }
}
