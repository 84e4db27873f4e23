//! The input grid of a k-nearest-neighbours model, chosen on the inputset.
//!
//! Every comparison of the selection network is an exact lookup over the whole range of
//! a key difference, so the keys' range, not the calibrated one, bounds the grid: at most
//! [`MAX_COMPARISON_BITS`]. Within that bound three things are free and are chosen here:
//!
//! * the scale, common to every feature (a distance adds features up);
//! * each feature's clamp: a feature spans only its own calibrated levels, not the
//!   widest feature's, so narrow features cost the keys nothing they never use;
//! * how finely the training points sit between the input's grid steps (`point_factor`):
//!   the distance to a point is kept in units of `1 / point_factor`, which breaks most of
//!   the ties a coarse input grid makes between points on the same step.
//!
//! A fine grid makes distances wider than the comparisons can take. Only the nearest
//! points matter, so such a grid clips every distance and scales it onto the key
//! budget ([`DistanceClip`]): one or two lookups per training point buy a grid as fine
//! as the inputset asks for.
//!
//! The candidate that agrees most often with the float model's vote on the inputset
//! wins. A row that is a training point counts twice: as given, and with that point
//! left out of both votes, as a new sample at its place would be voted on (scored as
//! given alone, every grid agrees on a training point, its own nearest neighbour;
//! `scripts/knn_grid_study.py` measures both ways over many splits). Among equals, the
//! one with the narrower comparisons (a clipped grid is also tried one bit narrower),
//! fewer lookups, then the finer grid.

use std::cmp::Reverse;

use fhec_frontend_onnx::Neighbours;
use fhec_ir::{bits_for_range, Range};

use crate::tlu::{rounded_top, Grid};

/// The widest comparison a neighbours circuit is built with. Each comparison is an exact
/// lookup, and an exact lookup one bit wider needs a polynomial twice as large at the
/// default error probability: predicted on this project's cost model, 7 bits take
/// 0.45 s per bootstrap (N = 16384, 1.5 GiB of bootstrap key in memory), 8 bits 1.0 s
/// (N = 32768, 3.1 GiB), 9 bits 2.3 s (N = 65536, 5.7 GiB, and 5 GiB of key-switching
/// key). A selection network takes hundreds of them per sample, so 8 bits is where a
/// model stays runnable on one machine.
pub const MAX_COMPARISON_BITS: u32 = 8;

/// Inputset rows the choice is scored on (evenly spaced when there are more).
const SCORED_ROWS: usize = 256;

/// Finenesses tried for the training points.
const POINT_FACTORS: [i64; 4] = [1, 2, 4, 8];

/// Distances clipped and scaled onto the key budget before they become keys:
/// `round(cap · min(d, exact) / exact)`, so that keys stay within the comparisons however
/// fine the grid. `exact` is the widest distance one lookup reads exactly: beyond it
/// every distance is as far as any, below it distances are bucketed evenly (a fine input
/// grid with coarse distances agrees with the float vote more often than a coarse grid
/// with exact ones; `scripts/knn_grid_study.py`). A distance that fits one lookup is
/// clipped by it. A wider one is first folded into a narrow range that keeps every
/// distance below `exact` as it is and every other one at least `exact`:
/// `t = d − 2^drop · max(h − fold, 0)`, `h` the distance rounded approximately by `drop`
/// bits (one lookup); a second lookup reads `t` and gives the key. An approximate
/// rounding may come out one step off either way; `fold` is chosen so that the key is
/// the same whichever way it goes (the circuit is exact, FHE decrypts what simulation
/// computes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DistanceClip {
    /// The largest clipped distance a key holds.
    pub cap: i64,
    /// The least distance clipped to `cap` (at least `cap`): the widest one lookup reads.
    pub exact: i64,
    /// Bits the first lookup drops; 0: one exact lookup reads the distance and clips it.
    pub drop: u32,
    pub fold: i64,
}

impl DistanceClip {
    /// The clip for distances in `[0, widest]` and `classes` classes, with lookups of
    /// `bits` bits, or `None` when no key budget is left (too many classes) or the
    /// distances are too wide to fold in one lookup.
    fn new(widest: i64, classes: i64, bits: u32) -> Option<Self> {
        // keys `C·clipped(d) + code` whose differences fit the comparisons
        let largest_key = (1i64 << (bits - 1)) - 1;
        let cap = (largest_key + 1 - classes) / classes;
        let table_size = 1i64 << bits;
        if cap < 1 {
            return None;
        }
        if widest < table_size {
            return Some(DistanceClip {
                cap,
                exact: widest.max(cap),
                drop: 0,
                fold: 0,
            });
        }
        // the least drop that reads `widest` keeps the most distances exact
        (1..bits).find_map(|drop| {
            let step = 1i64 << drop;
            let exact = step * (table_size / step - 4);
            let clip = DistanceClip {
                cap,
                exact,
                drop,
                fold: exact / step + 2,
            };
            (exact >= cap && rounded_top(widest, drop, true) < table_size).then_some(clip)
        })
    }

    /// Distance `d` (or its fold) as a key holds it.
    pub(crate) fn clipped(&self, d: i64) -> i64 {
        (2 * self.cap * d.clamp(0, self.exact) + self.exact).div_euclid(2 * self.exact)
    }

    /// The largest folded distance `t`. With `h` one step off `⌊d / 2^drop⌋` downwards
    /// or two upwards (round to nearest, then the approximation), `t < 2^drop·(fold + 2)`;
    /// `t = d` whenever `d < exact` (then `h ≤ fold`), and `t ≥ 2^drop·(fold − 2) =
    /// exact` when `h > fold`.
    pub(crate) fn folded_top(&self) -> i64 {
        (1i64 << self.drop) * (self.fold + 2) - 1
    }

    /// Lookups per training point.
    pub(crate) fn lookups(&self) -> usize {
        if self.drop == 0 {
            1
        } else {
            2
        }
    }
}

/// A neighbours model's input grid and the integer form of its distances.
#[derive(Clone, Debug)]
pub(crate) struct KnnGrid {
    pub scale: f64,
    /// Per feature, the zero point and the largest grid index (the client clamps to it).
    pub zeros: Vec<i64>,
    pub tops: Vec<i64>,
    pub point_factor: i64,
    /// Per training point, `r_ij = round(F · p̂_ij)` (`p̂` the point in grid units, `F`
    /// the point factor): the distance is `f_i(x) = Σ_j (F x_j² − 2 r_ij x_j) + c_i`.
    pub linear: Vec<Vec<i64>>,
    pub constant: Vec<i64>,
    /// Per training point, the least and largest `f_i` over every clamped input.
    pub range: Vec<(i64, i64)>,
    /// The least distance over every point and input: keys are shifted by it so that
    /// none is negative.
    pub shift: i64,
    /// Set when the distances are too wide for the comparisons.
    pub clip: Option<DistanceClip>,
}

impl KnnGrid {
    /// The grid of `scale` over per-feature `bounds`, its distances clipped to
    /// comparisons of [`MAX_COMPARISON_BITS`] when they are wider, or `None` when a
    /// feature would need more than 16 bits.
    fn new(nb: &Neighbours, bounds: &[(f64, f64)], scale: f64, point_factor: i64) -> Option<Self> {
        let mut zeros = Vec::with_capacity(bounds.len());
        let mut tops = Vec::with_capacity(bounds.len());
        for &(lo, hi) in bounds {
            let zero = (-lo / scale).round();
            let top = ((hi / scale).round() + zero).max(0.0);
            if !zero.is_finite() || zero.abs() > f64::from(1u32 << 17) || top > 65535.0 {
                return None;
            }
            zeros.push(zero as i64);
            tops.push(top as i64);
        }
        let f = point_factor as f64;
        let (mut linear, mut constant, mut range) = (vec![], vec![], vec![]);
        for i in 0..nb.point_count() {
            let at: Vec<f64> = nb
                .point(i)
                .iter()
                .enumerate()
                .map(|(j, &p)| (p / scale + zeros[j] as f64).clamp(0.0, tops[j] as f64))
                .collect();
            let r: Vec<i64> = at.iter().map(|&p| (f * p).round() as i64).collect();
            let c = (f * at.iter().map(|p| p * p).sum::<f64>()).round() as i64;
            let (mut lo, mut hi) = (c, c);
            for (j, &rj) in r.iter().enumerate() {
                // F x² − 2 r x is convex in x: largest at an end, least next to r / F
                let g = |x: i64| point_factor * x * x - 2 * rj * x;
                let top = tops[j];
                hi += g(0).max(g(top));
                let mid = rj.div_euclid(point_factor).clamp(0, top);
                lo += g(mid).min(g((mid + 1).min(top)));
            }
            linear.push(r);
            constant.push(c);
            range.push((lo, hi));
        }
        let shift = range.iter().map(|r| r.0).min().unwrap_or(0);
        let mut grid = KnnGrid {
            scale,
            zeros,
            tops,
            point_factor,
            linear,
            constant,
            range,
            shift,
            clip: None,
        };
        grid.clip = grid.clip_for(nb, MAX_COMPARISON_BITS);
        Some(grid)
    }

    /// The clip that fits keys into comparisons of `budget` bits; `None` when the
    /// distances fit unclipped, or cannot be clipped to fit.
    fn clip_for(&self, nb: &Neighbours, budget: u32) -> Option<DistanceClip> {
        let classes = nb.classes.max(1) as i64;
        let widest = self
            .range
            .iter()
            .map(|r| r.1 - self.shift)
            .max()
            .unwrap_or(0);
        let unclipped = bits_for_range(Range::new(0, 2 * (classes * widest + classes - 1)));
        (unclipped > budget)
            .then(|| DistanceClip::new(widest, classes, budget))
            .flatten()
    }

    /// How many `scored` inputset rows this grid's vote agrees with `float_votes` on.
    fn agreement(&self, nb: &Neighbours, scored: &[Scored], float_votes: &[u32]) -> usize {
        scored
            .iter()
            .zip(float_votes)
            .filter(|(r, &v)| {
                let x: Vec<i64> = r
                    .row
                    .iter()
                    .enumerate()
                    .map(|(j, &v)| self.quantize(j, v))
                    .collect();
                vote(&self.nearest_codes(nb, &x, r.left_out), nb.classes) == v
            })
            .count()
    }

    /// Feature `j` of an input on the grid, as the client quantizes it.
    pub(crate) fn quantize(&self, j: usize, v: f64) -> i64 {
        Grid {
            scale: self.scale,
            zero: self.zeros[j],
            max: self.tops[j],
            from_model: false,
        }
        .quantize(v)
    }

    /// Bits of the encrypted input: the widest feature's clamp.
    pub(crate) fn input_bits(&self) -> u32 {
        bits_for_range(Range::new(0, self.tops.iter().copied().max().unwrap_or(0)))
    }

    /// Point `i`'s key for distance `f`: `C·(f − shift) + code` (the distance clipped
    /// when the grid clips), so that a key carries its label and ties in distance go to
    /// the lower code.
    pub(crate) fn key(&self, nb: &Neighbours, i: usize, f: i64) -> i64 {
        let classes = nb.classes.max(1) as i64;
        let d = f - self.shift;
        let d = self.clip.map_or(d, |c| c.clipped(d));
        classes * d + i64::from(nb.codes[i])
    }

    /// Per training point, the least and largest key over every clamped input.
    pub(crate) fn key_ranges(&self, nb: &Neighbours) -> Vec<(i64, i64)> {
        (0..nb.point_count())
            .map(|i| {
                (
                    self.key(nb, i, self.range[i].0),
                    self.key(nb, i, self.range[i].1),
                )
            })
            .collect()
    }

    /// Lookups per training point before the selection network.
    pub(crate) fn lookups_per_point(&self) -> usize {
        self.clip.map_or(0, |c| c.lookups())
    }

    /// Bits of the comparison lookups: a difference of two keys, shifted non-negative.
    pub(crate) fn comparison_bits(&self, nb: &Neighbours) -> u32 {
        let largest = (0..nb.point_count())
            .map(|i| self.key(nb, i, self.range[i].1))
            .max()
            .unwrap_or(0);
        bits_for_range(Range::new(0, 2 * largest))
    }

    /// The codes of the `k` points with the smallest keys for grid input `x`, point
    /// `left_out` not among them.
    fn nearest_codes(&self, nb: &Neighbours, x: &[i64], left_out: Option<usize>) -> Vec<u32> {
        let mut keys: Vec<(i64, usize)> = (0..nb.point_count())
            .filter(|&i| Some(i) != left_out)
            .map(|i| {
                let f = self.constant[i]
                    + x.iter()
                        .zip(&self.linear[i])
                        .map(|(&x, &r)| self.point_factor * x * x - 2 * r * x)
                        .sum::<i64>();
                (self.key(nb, i, f), i)
            })
            .collect();
        let k = nb.k.min(keys.len());
        if k > 0 {
            keys.select_nth_unstable(k - 1);
        }
        keys.truncate(k);
        keys.sort_unstable();
        keys.iter().map(|&(_, i)| nb.codes[i]).collect()
    }
}

/// An inputset row the grid is scored on.
struct Scored<'a> {
    row: &'a [f64],
    /// The training point the row is (to within float rounding), left out of both
    /// votes: a training point is its own nearest neighbour, so scoring it with itself
    /// in would agree whatever the grid, and a new sample has no such neighbour.
    left_out: Option<usize>,
}

/// The first training point within `tolerance` of `row` in every feature.
fn training_point_at(nb: &Neighbours, row: &[f64], tolerance: f64) -> Option<usize> {
    (0..nb.point_count()).find(|&i| {
        nb.point(i)
            .iter()
            .zip(row)
            .all(|(p, v)| (p - v).abs() <= tolerance)
    })
}

/// The class most of `codes` name, the lowest on a tie.
fn vote(codes: &[u32], classes: usize) -> u32 {
    let mut count = vec![0usize; classes.max(1)];
    for &c in codes {
        if let Some(n) = count.get_mut(c as usize) {
            *n += 1;
        }
    }
    let best = count.iter().copied().max().unwrap_or(0);
    count.iter().position(|&n| n == best).unwrap_or(0) as u32
}

/// Chooses the grid of a neighbours model whose inputset rows are `samples` (each a
/// flat run of rows), with at most `max_input_bits` bits per feature. `Err` carries the
/// narrowest comparison any grid needs, when even that is over [`MAX_COMPARISON_BITS`].
pub(crate) fn choose(
    nb: &Neighbours,
    samples: &[&[f64]],
    max_input_bits: u32,
) -> Result<KnnGrid, u32> {
    let d = nb.features.max(1);
    let rows: Vec<&[f64]> = samples
        .iter()
        .flat_map(|s| s.chunks_exact(d))
        .filter(|r| r.iter().all(|v| v.is_finite()))
        .collect();
    let mut bounds = vec![(f64::INFINITY, f64::NEG_INFINITY); nb.features];
    for row in rows.iter().copied().chain(nb.points.chunks_exact(d)) {
        for (b, &v) in bounds.iter_mut().zip(row) {
            if v.is_finite() {
                *b = (b.0.min(v), b.1.max(v));
            }
        }
    }
    for b in &mut bounds {
        if b.0 > b.1 {
            *b = (0.0, 0.0);
        }
    }
    let widest = bounds.iter().map(|(lo, hi)| hi - lo).fold(0.0, f64::max);
    // training points are stored as f32: a row within a few f32 steps of one is that point
    let tolerance = 1e-6
        * bounds
            .iter()
            .map(|(lo, hi)| lo.abs().max(hi.abs()))
            .fold(0.0, f64::max);
    let scored: Vec<Scored> = rows
        .iter()
        .step_by(rows.len().div_ceil(SCORED_ROWS).max(1))
        .flat_map(|&row| {
            let own = training_point_at(nb, row, tolerance);
            let as_given = Scored {
                row,
                left_out: None,
            };
            std::iter::once(as_given).chain(own.map(|i| Scored {
                row,
                left_out: Some(i),
            }))
        })
        .collect();
    let float_votes: Vec<u32> = scored
        .iter()
        .map(|r| vote(&nb.nearest_codes_without(r.row, r.left_out), nb.classes))
        .collect();
    let max_levels = ((1i64 << max_input_bits.min(16)) - 1) as f64;
    let mut narrowest = u32::MAX;
    // ranked by agreement, then narrower comparisons, fewer lookups, finer grid
    type Rank = (usize, Reverse<u32>, Reverse<usize>, f64);
    let mut best: Option<(Rank, KnnGrid)> = None;
    // the widest feature spans `levels` steps: 1, 1.5, 2, … up to the input bits
    let mut levels = 1.0;
    while levels <= max_levels {
        let scale = if widest > 0.0 { widest / levels } else { 1.0 };
        // when even the coarsest points are too wide, every finer level is too
        let mut coarsest_too_wide = false;
        for factor in POINT_FACTORS {
            let Some(grid) = KnnGrid::new(nb, &bounds, scale, factor) else {
                continue;
            };
            let bits = grid.comparison_bits(nb);
            narrowest = narrowest.min(bits);
            if bits > MAX_COMPARISON_BITS {
                // a finer point grid only widens the distances
                coarsest_too_wide = factor == POINT_FACTORS[0];
                break;
            }
            // clipped one bit narrower, the comparisons cost half as much
            let narrower = grid
                .clip
                .and_then(|_| grid.clip_for(nb, MAX_COMPARISON_BITS - 1))
                .map(|clip| KnnGrid {
                    clip: Some(clip),
                    ..grid.clone()
                });
            for grid in std::iter::once(grid).chain(narrower) {
                let rank = (
                    grid.agreement(nb, &scored, &float_votes),
                    Reverse(grid.comparison_bits(nb)),
                    Reverse(grid.lookups_per_point()),
                    -scale,
                );
                if best.as_ref().is_none_or(|(r, _)| rank > *r) {
                    best = Some((rank, grid));
                }
            }
        }
        if widest <= 0.0 || coarsest_too_wide {
            break;
        }
        levels += 0.5;
    }
    best.map(|(_, grid)| grid).ok_or(narrowest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> Neighbours {
        // two features of very different spans, three classes
        let points = vec![
            0.0, 0.0, 1.0, 0.1, 2.0, 0.0, 8.0, 0.2, 9.0, 0.1, 10.0, 0.3, 4.0, 0.9, 5.0, 1.0,
        ];
        Neighbours {
            points,
            features: 2,
            codes: vec![0, 0, 0, 1, 1, 1, 2, 2],
            classes: 3,
            k: 3,
        }
    }

    /// The distance range is sound: every clamped input's key lies in it, and the keys
    /// of every input fit the comparison width.
    #[test]
    fn distance_ranges_hold_every_input() {
        let nb = model();
        let bounds = [(0.0, 10.0), (0.0, 1.0)];
        for factor in POINT_FACTORS {
            let grid = KnnGrid::new(&nb, &bounds, 10.0 / 7.0, factor).unwrap();
            let largest = 1i64 << (grid.comparison_bits(&nb) - 1);
            for x0 in 0..=grid.tops[0] {
                for x1 in 0..=grid.tops[1] {
                    for i in 0..nb.point_count() {
                        let f = grid.constant[i] + factor * (x0 * x0 + x1 * x1)
                            - 2 * (grid.linear[i][0] * x0 + grid.linear[i][1] * x1);
                        let (lo, hi) = grid.range[i];
                        assert!(lo <= f && f <= hi, "point {i}, x = ({x0}, {x1})");
                        let key = grid.key(&nb, i, f);
                        assert!((0..largest).contains(&key));
                    }
                }
            }
        }
    }

    /// A narrow feature gets only its own levels, and the chosen grid votes as the
    /// float model on these well-separated classes.
    #[test]
    fn the_chosen_grid_clamps_each_feature_to_its_span() {
        let nb = model();
        let grid = choose(&nb, &[&nb.points], 6).unwrap();
        assert!(grid.tops[1] < grid.tops[0], "tops {:?}", grid.tops);
        assert!(grid.comparison_bits(&nb) <= MAX_COMPARISON_BITS);
        for row in nb.points.chunks(2) {
            let x: Vec<i64> = row
                .iter()
                .enumerate()
                .map(|(j, &v)| grid.quantize(j, v))
                .collect();
            assert_eq!(
                vote(&grid.nearest_codes(&nb, &x, None), 3),
                vote(&nb.nearest_codes(row), 3)
            );
        }
    }

    /// A training point scored as a new sample: found from its f32-rounded row, and left
    /// out of the grid's vote and of the float one alike.
    #[test]
    fn a_training_point_left_out_is_not_its_own_neighbour() {
        let nb = Neighbours {
            points: vec![0.1, 0.0, 1.0, 0.0, 5.0, 5.0],
            features: 2,
            codes: vec![0, 1, 2],
            classes: 3,
            k: 1,
        };
        let row = [f64::from(0.1f32), 0.0];
        assert_eq!(training_point_at(&nb, &row, 1e-6), Some(0));
        assert_eq!(training_point_at(&nb, &[0.5, 0.0], 1e-6), None);
        let grid = choose(&nb, &[&nb.points], 6).unwrap();
        let x: Vec<i64> = row
            .iter()
            .enumerate()
            .map(|(j, &v)| grid.quantize(j, v))
            .collect();
        assert_eq!(grid.nearest_codes(&nb, &x, None), vec![0]);
        assert_eq!(grid.nearest_codes(&nb, &x, Some(0)), vec![1]);
        assert_eq!(nb.nearest_codes_without(&row, Some(0)), vec![1]);
    }

    /// When no grid fits, the narrowest comparison is reported: with 70 classes no key
    /// can carry a clipped distance and its label within the comparisons.
    #[test]
    fn too_many_classes_are_refused_with_the_width() {
        let classes = 70;
        let nb = Neighbours {
            points: (0..2 * classes).map(|v| (v * v) as f64).collect(),
            features: 2,
            codes: (0..classes as u32).collect(),
            classes,
            k: 1,
        };
        let err = choose(&nb, &[&nb.points], 6).unwrap_err();
        assert!(err > MAX_COMPARISON_BITS);
    }

    /// Many features make distances too wide for the comparisons; clipping them keeps
    /// the keys within the comparisons, and the nearest point still wins.
    #[test]
    fn wide_distances_are_clipped_into_the_comparisons() {
        let features = 200;
        let nb = Neighbours {
            points: (0..2 * features)
                .map(|v| (v % features) as f64 + (v / features) as f64 * 50.0)
                .collect(),
            features,
            codes: vec![0, 1],
            classes: 2,
            k: 1,
        };
        let grid = choose(&nb, &[&nb.points], 6).unwrap();
        assert!(grid.clip.is_some(), "distances this wide are clipped");
        assert!(grid.comparison_bits(&nb) <= MAX_COMPARISON_BITS);
        for (row, code) in nb.points.chunks(features).zip(&nb.codes) {
            let x: Vec<i64> = row
                .iter()
                .enumerate()
                .map(|(j, &v)| grid.quantize(j, v))
                .collect();
            assert_eq!(grid.nearest_codes(&nb, &x, None), vec![*code]);
        }
    }

    /// The fold keeps every distance's clipped value whichever way the approximate
    /// rounding goes (one step below round-to-nearest or one above), within the table.
    #[test]
    fn folding_keeps_the_clipped_distance_under_any_rounding_error() {
        let mut folds = 0;
        for bits in [7, 8] {
            for classes in 2..=12 {
                for widest in [256, 300, 1000, 2000, 4000, 8000] {
                    let Some(clip) = DistanceClip::new(widest, classes, bits) else {
                        continue;
                    };
                    assert!(clip.drop > 0, "a distance over 2^{bits} − 1 is folded");
                    folds += 1;
                    let step = 1i64 << clip.drop;
                    for d in 0..=widest {
                        let nearest = (d + step / 2) >> clip.drop;
                        for h in [nearest - 1, nearest, nearest + 1] {
                            let t = d - step * (h - clip.fold).max(0);
                            assert!((0..=clip.folded_top()).contains(&t), "{clip:?} d {d} h {h}");
                            assert_eq!(clip.clipped(t), clip.clipped(d), "{clip:?} d {d} h {h}");
                        }
                    }
                }
            }
        }
        assert!(folds > 50, "{folds} folds tried");
    }
}
