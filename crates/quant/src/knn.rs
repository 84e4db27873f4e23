//! k-nearest neighbours in the circuit ([`Op::Neighbours`](fhec_frontend_onnx::Op)).
//!
//! The input and the training points share one grid ([`crate::knn_grid`]): a scale
//! common to every feature (distances compare features with each other), a zero point
//! and a clamp per feature, the points `F` times finer. The squared distance to point
//! `i`, in units of `1 / F` grid steps, is then an integer, `F Σ_j x_j² − 2 Σ_j r_ij x_j +
//! c_i`: one table per feature for `x_j²`, the rest an affine map. A fine grid makes
//! distances wider than the comparisons take; they are then clipped and scaled onto
//! what a key can hold (one lookup, or two through a fold when one lookup cannot read
//! them: [`DistanceClip`]), since only the nearest points matter. Each
//! distance is packed with its point's label code into a key `C·dist + code`, so that a selection
//! network of compare-exchange steps moves labels along with distances: one exact
//! lookup per step, `min = a − relu(a − b)`, `max = b + relu(a − b)`. The network sorts
//! blocks of k keys, then merges blocks pairwise keeping the k smallest; a last lookup
//! reads the k codes (`key mod C`). Ties in distance go to the lower code. The client
//! decrypts only the k codes (the vote runs on the client), not distances.
//!
//! Every value here is built for its sound range (not the calibrated one): a key read
//! wrongly would move a label, so nothing may wrap.

use fhec_frontend_onnx::Neighbours;
use fhec_ir::{IntOp, Term};

use crate::builder::{Lowering, QValue};
use crate::knn_grid::{DistanceClip, KnnGrid};
use crate::sparse::{Built, IntRows};
use crate::QuantError;

/// An affine map's integers at face value (scale 1, offset 0).
fn integers(b: Built) -> QValue {
    let n = b.sound.len();
    QValue {
        node: b.node,
        scale: vec![1.0; n],
        offset: vec![0.0; n],
        pending: vec![],
        narrow: false,
        calib: b.calib,
        sound: b.sound,
        design: Some(b.design),
    }
}

/// A selection network over `n` keys keeping the `k` smallest: levels of disjoint
/// compare-exchange pairs `(low, high)` (after a step, `low` holds the smaller key), and
/// the positions holding the k smallest at the end, smallest first.
pub(crate) fn selection_network(n: usize, k: usize) -> (Vec<Vec<(usize, usize)>>, Vec<usize>) {
    let mut levels: Vec<Vec<(usize, usize)>> = Vec::new();
    let mut blocks: Vec<Vec<usize>> = (0..n)
        .collect::<Vec<_>>()
        .chunks(k.max(1))
        .map(<[usize]>::to_vec)
        .collect();
    sort_blocks(&mut levels, &blocks);
    while blocks.len() > 1 {
        let mut merged = Vec::new();
        let mut step = Vec::new();
        let mut pending = blocks.into_iter();
        while let Some(a) = pending.next() {
            match pending.next() {
                Some(b) => {
                    // the full block keeps the k smallest: a[k−1−i] vs b[i]
                    let (a, b) = if a.len() >= b.len() { (a, b) } else { (b, a) };
                    for (i, &low) in a.iter().rev().take(b.len()).enumerate() {
                        step.push((low, b[i]));
                    }
                    merged.push(a);
                }
                None => merged.push(a),
            }
        }
        levels.push(step);
        // what a merge leaves is bitonic; a block passed through is already sorted
        sort_blocks(&mut levels, &merged);
        blocks = merged;
    }
    (levels, blocks.into_iter().next().unwrap_or_default())
}

/// Odd-even transposition sort of every block at once (as many rounds as the longest).
fn sort_blocks(levels: &mut Vec<Vec<(usize, usize)>>, blocks: &[Vec<usize>]) {
    let rounds = blocks.iter().map(Vec::len).max().unwrap_or(0);
    for r in 0..rounds {
        let level: Vec<(usize, usize)> = blocks
            .iter()
            .flat_map(|b| {
                (r % 2..b.len().saturating_sub(1))
                    .step_by(2)
                    .map(move |i| (b[i], b[i + 1]))
            })
            .collect();
        if !level.is_empty() {
            levels.push(level);
        }
    }
}

fn term(operand: u32, index: usize, weight: i64) -> Term {
    Term {
        operand,
        index: index as u32,
        weight,
    }
}

/// `scale · (F Σ_j x_j² − 2 Σ_j r_j x_j)` over the squares (operand 0) and the input
/// (operand 1), `F` the point factor.
fn distance_terms(linear: &[i64], point_factor: i64, scale: i64) -> Vec<Term> {
    linear
        .iter()
        .enumerate()
        .flat_map(|(j, &r)| [term(0, j, scale * point_factor), term(1, j, -2 * scale * r)])
        .collect()
}

impl Lowering<'_> {
    /// `x` is the value `id` the neighbours op reads.
    pub(crate) fn neighbours(
        &mut self,
        name: &str,
        id: fhec_frontend_onnx::ValueId,
        x: QValue,
        nb: &Neighbours,
        shape: Vec<usize>,
    ) -> Result<QValue, QuantError> {
        let d = nb.features;
        let refuse = |reason: &str| QuantError::Unsupported {
            node: name.to_string(),
            op: "TopK".into(),
            reason: reason.into(),
        };
        let on_input_grid = x.pending.is_empty()
            && matches!(self.circuit.node(x.node).op, IntOp::Input { .. })
            && x.scale.len() == d
            && x.scale.iter().all(|&s| s == x.scale[0]);
        if !on_input_grid {
            return Err(refuse(
                "k-nearest neighbours must read the model's input (or what the client's \
                 preprocessing makes of it) directly",
            ));
        }
        if self.read_only_by_neighbours(id).is_none() {
            return Err(refuse(
                "the input k-nearest neighbours reads is also read by other operations; \
                 it needs a grid of its own (one scale for every feature, few bits)",
            ));
        }
        let Some(grid) = self.neighbour_grids.remove(&id) else {
            return Err(refuse(
                "k-nearest neighbours must read the model's input directly",
            ));
        };
        let classes = nb.classes.max(1) as i64;
        let square_in =
            self.rounded(&format!("{name}/square"), name, x.node, &x.calib, 0, false)?;
        let squares = crate::bivariate::integers(
            self.lut(format!("{name}/square"), &square_in, |_, v| v * v),
            false,
        );
        let n = nb.point_count();
        let keys = match grid.clip {
            None => {
                // keys straight from the distances: `C·(f_i − shift) + code_i`
                let rows = (0..n)
                    .map(|i| {
                        let terms = distance_terms(&grid.linear[i], grid.point_factor, classes);
                        (terms, grid.key(nb, i, grid.constant[i]))
                    })
                    .collect();
                integers(self.affine_sound(
                    &format!("{name}/keys"),
                    &[&squares, &x],
                    IntRows {
                        rows,
                        sound: Some(grid.key_ranges(nb)),
                    },
                    vec![1, n],
                ))
            }
            Some(clip) => self.clipped_keys(name, &grid, nb, clip, &squares, &x)?,
        };
        let (levels, nearest) = selection_network(n, nb.k);
        // position → index in the current value, for the positions still needed
        let mut index_of: Vec<Option<usize>> = (0..n).map(Some).collect();
        let mut last_use = vec![0usize; n];
        for (l, level) in levels.iter().enumerate() {
            for &(a, b) in level {
                last_use[a] = l;
                last_use[b] = l;
            }
        }
        for &p in &nearest {
            last_use[p] = usize::MAX;
        }
        let mut cur = keys;
        for (l, level) in levels.iter().enumerate() {
            let alive: Vec<usize> = (0..n)
                .filter(|&p| index_of[p].is_some() && last_use[p] > l)
                .collect();
            let next =
                self.compare_exchange(&format!("{name}/step{l}"), &cur, &index_of, level, &alive)?;
            cur = next;
            index_of = vec![None; n];
            for (i, &p) in alive.iter().enumerate() {
                index_of[p] = Some(i);
            }
        }
        // the k smallest, nearest first, then their codes
        let rows = nearest
            .iter()
            .map(|&p| (vec![term(0, index_of[p].unwrap_or(0), 1)], 0))
            .collect();
        let sound = nearest
            .iter()
            .map(|&p| cur.sound[index_of[p].unwrap_or(0)])
            .collect();
        let picked = self.affine_sound(
            &format!("{name}/nearest"),
            &[&cur],
            IntRows {
                rows,
                sound: Some(sound),
            },
            shape.clone(),
        );
        let code_in = self.rounded(
            &format!("{name}/codes"),
            name,
            picked.node,
            &picked.calib,
            0,
            false,
        )?;
        let codes = self.lut(format!("{name}/codes"), &code_in, |_, v| {
            v.rem_euclid(classes)
        });
        let mut out = crate::bivariate::integers(codes, true);
        out.sound.fill((0, classes - 1));
        Ok(out)
    }

    /// The keys `C·clipped(f_i − shift) + code_i` of distances too wide for the
    /// comparisons ([`DistanceClip`]): the distances, folded first when one lookup
    /// cannot read them, clipped by a lookup, then packed with their codes.
    fn clipped_keys(
        &mut self,
        name: &str,
        grid: &KnnGrid,
        nb: &Neighbours,
        clip: DistanceClip,
        squares: &QValue,
        x: &QValue,
    ) -> Result<QValue, QuantError> {
        let n = nb.point_count();
        let classes = nb.classes.max(1) as i64;
        let rows = (0..n)
            .map(|i| {
                let terms = distance_terms(&grid.linear[i], grid.point_factor, 1);
                (terms, grid.constant[i] - grid.shift)
            })
            .collect();
        let sound = grid
            .range
            .iter()
            .map(|&(lo, hi)| (lo - grid.shift, hi - grid.shift))
            .collect();
        let distances = integers(self.affine_sound(
            &format!("{name}/distances"),
            &[squares, x],
            IntRows {
                rows,
                sound: Some(sound),
            },
            vec![1, n],
        ));
        let near = if clip.drop == 0 {
            distances
        } else {
            // t = d − 2^drop · max(h − fold, 0), h = d rounded approximately (the table
            // is non-negative: a negative one would widen the encoding by a sign bit)
            let coarse = self.rounded(
                &format!("{name}/fold"),
                name,
                distances.node,
                &distances.calib,
                clip.drop,
                true,
            )?;
            let beyond = clip.fold << clip.drop;
            let folds = crate::bivariate::integers(
                self.lut(format!("{name}/fold"), &coarse, |_, v| (v - beyond).max(0)),
                false,
            );
            let rows = (0..n)
                .map(|i| (vec![term(0, i, 1), term(1, i, -1)], 0))
                .collect();
            integers(self.affine_sound(
                &format!("{name}/folded"),
                &[&distances, &folds],
                IntRows {
                    rows,
                    sound: Some(vec![(0, clip.folded_top()); n]),
                },
                vec![1, n],
            ))
        };
        let clip_in = self.rounded(
            &format!("{name}/clip"),
            name,
            near.node,
            &near.calib,
            0,
            false,
        )?;
        let clipped = crate::bivariate::integers(
            self.lut(format!("{name}/clip"), &clip_in, |_, v| clip.clipped(v)),
            false,
        );
        let rows = (0..n)
            .map(|i| (vec![term(0, i, classes)], i64::from(nb.codes[i])))
            .collect();
        Ok(integers(self.affine_sound(
            &format!("{name}/keys"),
            &[&clipped],
            IntRows {
                rows,
                sound: Some(grid.key_ranges(nb)),
            },
            vec![1, n],
        )))
    }

    /// One level of compare-exchange steps on keys `cur` (position `p` at
    /// `index_of[p]`); returns the keys at the positions `alive`, in that order.
    fn compare_exchange(
        &mut self,
        name: &str,
        cur: &QValue,
        index_of: &[Option<usize>],
        level: &[(usize, usize)],
        alive: &[usize],
    ) -> Result<QValue, QuantError> {
        let at = |p: usize| index_of[p].unwrap_or(0);
        // one shift for every difference, so every step reads the same table
        let shift = level
            .iter()
            .map(|&(a, b)| cur.sound[at(b)].1 - cur.sound[at(a)].0)
            .max()
            .unwrap_or(0)
            .max(0);
        let rows = level
            .iter()
            .map(|&(a, b)| (vec![term(0, at(a), 1), term(0, at(b), -1)], shift))
            .collect();
        let diff = self.affine_sound(
            &format!("{name}/diff"),
            &[cur],
            IntRows { rows, sound: None },
            vec![1, level.len()],
        );
        let relu_in = self.rounded(
            &format!("{name}/relu"),
            name,
            diff.node,
            &diff.calib,
            0,
            false,
        )?;
        let relu = crate::bivariate::integers(
            self.lut(format!("{name}/relu"), &relu_in, |_, v| (v - shift).max(0)),
            false,
        );
        let mut step_of = vec![None; index_of.len()];
        for (s, &(a, b)) in level.iter().enumerate() {
            step_of[a] = Some((s, true));
            step_of[b] = Some((s, false));
        }
        let mut rows = Vec::with_capacity(alive.len());
        let mut sound = Vec::with_capacity(alive.len());
        for &p in alive {
            match step_of[p] {
                Some((s, low)) => {
                    let (a, b) = level[s];
                    let (sa, sb) = (cur.sound[at(a)], cur.sound[at(b)]);
                    if low {
                        // min = a − relu(a − b)
                        rows.push((vec![term(0, at(a), 1), term(1, s, -1)], 0));
                        sound.push((sa.0.min(sb.0), sa.1.min(sb.1)));
                    } else {
                        // max = b + relu(a − b)
                        rows.push((vec![term(0, at(b), 1), term(1, s, 1)], 0));
                        sound.push((sa.0.max(sb.0), sa.1.max(sb.1)));
                    }
                }
                None => {
                    rows.push((vec![term(0, at(p), 1)], 0));
                    sound.push(cur.sound[at(p)]);
                }
            }
        }
        let next = self.affine_sound(
            name,
            &[cur, &relu],
            IntRows {
                rows,
                sound: Some(sound),
            },
            vec![1, alive.len()],
        );
        Ok(integers(next))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The network's result, run on plain integers, is the k smallest, sorted.
    #[test]
    fn selection_network_keeps_the_k_smallest_sorted() {
        let mut seed = 7u64;
        for n in 1..40 {
            for k in 1..=n.min(9) {
                let mut keys: Vec<i64> = (0..n)
                    .map(|_| {
                        seed = seed
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        (seed >> 58) as i64
                    })
                    .collect();
                let mut expected = keys.clone();
                expected.sort();
                expected.truncate(k);
                let (levels, nearest) = selection_network(n, k);
                for level in &levels {
                    let mut used = vec![false; n];
                    for &(a, b) in level {
                        assert!(!used[a] && !used[b], "pairs of a level are disjoint");
                        used[a] = true;
                        used[b] = true;
                        if keys[a] > keys[b] {
                            keys.swap(a, b);
                        }
                    }
                }
                let got: Vec<i64> = nearest.iter().map(|&p| keys[p]).collect();
                assert_eq!(got, expected, "n = {n}, k = {k}");
            }
        }
    }
}
