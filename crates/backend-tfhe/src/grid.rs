//! The log2-variance grid the parameter search walks (docs/PARAMETERS.md, "What the
//! search enumerates"): per partition, a table of the cheapest parameters for each pair
//! of variance bounds, and a walk over grid points.

use crate::noise::{
    keyswitch_variance, modulus_switch_variance, pbs_variance, MIN_SECURE_DIMENSION,
};
use crate::params::{ks_cost_ms, pbs_cost_ms, CryptoParams};

/// Log2-variance grid the joint search works on: thresholds are rounded up to it, so a
/// choice found on the grid meets the exact constraints too.
const GRID_LO: f64 = -72.0;
const GRID_STEP: f64 = 0.5;
pub(crate) const GRID: usize = 132; // up to 2^-6

pub(crate) fn grid_value(i: usize) -> f64 {
    grid_values()[i]
}

/// The grid's variances, computed once: the search reads them millions of times.
fn grid_values() -> &'static [f64; GRID] {
    static VALUES: std::sync::OnceLock<[f64; GRID]> = std::sync::OnceLock::new();
    VALUES.get_or_init(|| std::array::from_fn(|i| (GRID_LO + i as f64 * GRID_STEP).exp2()))
}
/// Smallest grid index whose value is ≥ v (None above the grid).
fn grid_ceil(v: f64) -> Option<usize> {
    let i = ((v.log2() - GRID_LO) / GRID_STEP).ceil().max(0.0) as usize;
    (i < GRID).then_some(i)
}
/// Largest grid index whose value is ≤ v (None below the grid).
pub(crate) fn grid_floor(v: f64) -> Option<usize> {
    if v <= 0.0 {
        return None;
    }
    let f = ((v.log2() - GRID_LO) / GRID_STEP).floor();
    (f >= 0.0).then_some((f as usize).min(GRID - 1))
}

/// For one partition with fixed N and KS input dimension: the cheapest parameters whose
/// PBS-output variance is ≤ grid(t) and whose KS + MS variance is ≤ grid(a).
pub(crate) struct PartitionTable {
    pub(crate) cost: Vec<f64>, // GRID × GRID, row t
    pub(crate) params: Vec<Option<CryptoParams>>,
    /// The cheapest cell: no choice in this table costs less.
    pub(crate) min_cost: f64,
    /// Rows below `lo` are all infeasible; rows from `hi` on are all equal.
    pub(crate) lo: usize,
    pub(crate) hi: usize,
}

impl PartitionTable {
    pub(crate) fn build(k: usize, big_n: usize, ks_dim: usize) -> Self {
        let mut cost = vec![f64::INFINITY; GRID * GRID];
        let mut params = vec![None; GRID * GRID];
        for n in (MIN_SECURE_DIMENSION..=1200).step_by(8) {
            let ms = modulus_switch_variance(n, big_n);
            // best base per level: the base only trades noise terms, never cost
            let pbs: Vec<(usize, usize, f64)> = (1..=6)
                .filter_map(|l| {
                    (1..=30usize)
                        .filter(|b| b * l <= 56)
                        .map(|b| (b, l, pbs_variance(n, k, big_n, b, l, 64)))
                        .min_by(|x, y| x.2.total_cmp(&y.2))
                })
                .collect();
            let ks: Vec<(usize, usize, f64)> = (1..=14)
                .filter_map(|l| {
                    (1..=8usize)
                        .filter(|b| b * l <= 40)
                        .map(|b| (b, l, keyswitch_variance(ks_dim, n, b, l)))
                        .min_by(|x, y| x.2.total_cmp(&y.2))
                })
                .collect();
            for &(pb, pl, vp) in &pbs {
                let Some(t) = grid_ceil(vp) else { continue };
                for &(kb, kl, vk) in &ks {
                    let Some(a) = grid_ceil(vk + ms) else {
                        continue;
                    };
                    let c = pbs_cost_ms(n, k, big_n, pl) + ks_cost_ms(ks_dim, kl, n);
                    if c < cost[t * GRID + a] {
                        cost[t * GRID + a] = c;
                        params[t * GRID + a] =
                            Some(CryptoParams::new(n, k, big_n, (pb, pl), (kb, kl)));
                    }
                }
            }
        }
        // a looser bound on either variance can only make things cheaper
        for t in 0..GRID {
            for a in 0..GRID {
                let i = t * GRID + a;
                for j in [(t > 0).then(|| i - GRID), (a > 0).then(|| i - 1)]
                    .into_iter()
                    .flatten()
                {
                    if cost[j] < cost[i] {
                        cost[i] = cost[j];
                        params[i] = params[j];
                    }
                }
            }
        }
        let last_row = |t: usize| &cost[t * GRID..(t + 1) * GRID];
        let lo = (0..GRID)
            .find(|&t| last_row(t)[GRID - 1].is_finite())
            .unwrap_or(GRID);
        let mut hi = GRID - 1;
        while hi > lo && last_row(hi - 1) == last_row(GRID - 1) {
            hi -= 1;
        }
        let min_cost = cost.iter().copied().fold(f64::INFINITY, f64::min);
        PartitionTable {
            cost,
            params,
            min_cost,
            lo,
            hi,
        }
    }
}

/// Calls `f` on every point of the box `ranges` (inclusive per axis), every `stride`-th
/// value per axis and always its last.
pub(crate) fn for_each_grid_point(
    ranges: &[(usize, usize)],
    stride: usize,
    mut f: impl FnMut(&[usize]),
) {
    let mut idx: Vec<usize> = ranges.iter().map(|r| r.0).collect();
    loop {
        f(&idx);
        // next point (odometer over axes)
        let mut p = 0;
        while p < idx.len() {
            let (lo, hi) = ranges[p];
            if idx[p] < hi {
                idx[p] = (idx[p] + stride).min(hi);
                break;
            }
            idx[p] = lo;
            p += 1;
        }
        if p == idx.len() {
            return;
        }
    }
}
