//! TFHE parameter sets and their choice for a circuit (docs/PARAMETERS.md).
//!
//! Bootstraps are grouped into partitions by the precision they decode; each partition
//! gets its own parameter set (LWE dimension, polynomial size, PBS and key-switch
//! decompositions). Every big key is a prefix of one master key, so ciphertexts of
//! different partitions add up without conversion key switches. Every candidate's noise
//! comes from the security curve (so every key is at 128-bit security by construction);
//! the cheapest combination meeting the circuit's [`NoiseBudget`] wins.

use serde::{Deserialize, Serialize};

use crate::grid::{for_each_grid_point, grid_floor, grid_value, PartitionTable, GRID};
use crate::noise::{
    keyswitch_variance, modulus_switch_variance, p_error_of, pbs_variance, security_std_dev,
    site_margin, site_variance, z_for_p_error, KeySources, NoiseBudget, MIN_SECURE_DIMENSION,
};

/// One TFHE parameter set. Noise std-devs are derived from the dimensions (the minimum
/// the 128-bit security curve allows), so they are not free parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CryptoParams {
    /// n: dimension of the small LWE key bootstraps start from.
    pub lwe_dimension: usize,
    /// k: GLWE dimension.
    pub glwe_dimension: usize,
    /// N: polynomial size (a power of two).
    pub polynomial_size: usize,
    pub pbs_base_log: usize,
    pub pbs_level: usize,
    pub ks_base_log: usize,
    pub ks_level: usize,
    /// Bits kept of each body coefficient of the bootstrap key (64: all): the rounding
    /// shrinks the evaluation key and adds noise the model counts (docs/DEPLOYMENT.md).
    #[serde(default = "all_bits")]
    pub bsk_body_bits: u32,
}

fn all_bits() -> u32 {
    64
}

impl CryptoParams {
    /// `n`, `k`, `N`, the bootstrap and key-switch decompositions `(base log, levels)`,
    /// every bootstrap-key body bit kept.
    pub fn new(
        lwe_dimension: usize,
        glwe_dimension: usize,
        polynomial_size: usize,
        (pbs_base_log, pbs_level): (usize, usize),
        (ks_base_log, ks_level): (usize, usize),
    ) -> Self {
        CryptoParams {
            lwe_dimension,
            glwe_dimension,
            polynomial_size,
            pbs_base_log,
            pbs_level,
            ks_base_log,
            ks_level,
            bsk_body_bits: 64,
        }
    }

    /// Variance of a bootstrap's output ([`pbs_variance`]).
    pub fn pbs_variance(&self) -> f64 {
        pbs_variance(
            self.lwe_dimension,
            self.glwe_dimension,
            self.polynomial_size,
            self.pbs_base_log,
            self.pbs_level,
            self.bsk_body_bits,
        )
    }

    /// Dimension of the big key (`k·N`): where bootstrap outputs live.
    pub fn big_dimension(&self) -> usize {
        self.glwe_dimension * self.polynomial_size
    }
    pub fn lwe_std_dev(&self) -> f64 {
        security_std_dev(self.lwe_dimension)
    }
    pub fn glwe_std_dev(&self) -> f64 {
        security_std_dev(self.big_dimension())
    }
    /// Predicted milliseconds of one bootstrap (modulus switch, blind rotation, sample
    /// extract) on one core of the reference machine. Fitted to tfhe-rs 1.8 timings and
    /// recalibrated with `fhec bench-params` (docs/BENCHMARKS.md).
    pub fn pbs_cost_ms(&self) -> f64 {
        pbs_cost_ms(
            self.lwe_dimension,
            self.glwe_dimension,
            self.polynomial_size,
            self.pbs_level,
        )
    }
    /// Predicted milliseconds of one key switch from a key of `input_dim`.
    pub fn ks_cost_ms(&self, input_dim: usize) -> f64 {
        ks_cost_ms(input_dim, self.ks_level, self.lwe_dimension)
    }
    /// Bytes of the bootstrap key in the Fourier domain (what the server holds in memory).
    pub fn fourier_bsk_bytes(&self) -> usize {
        let k1 = self.glwe_dimension + 1;
        self.lwe_dimension * k1 * k1 * self.pbs_level * (self.polynomial_size / 2) * 16
    }
    /// Bytes of a key-switching key from a key of `input_dim`.
    pub fn ksk_bytes(&self, input_dim: usize) -> usize {
        input_dim * self.ks_level * (self.lwe_dimension + 1) * 8
    }
}

// Fitted with `fhec bench-params` on this machine (tfhe-rs 1.8.2, AVX-512, one core):
// sets from N = 1024 to 8192, k = 1 and 2, ℓ = 1 to 4 (docs/BENCHMARKS.md). A blind
// rotation costs n external products, each ℓ·(k+1) decomposed polynomials times a
// (k+1)-column key row (hence (k+1)²), plus fixed work per product (the 0.45).
pub(crate) fn pbs_cost_ms(n: usize, k: usize, big_n: usize, level: usize) -> f64 {
    let (n, k, big_n) = (n as f64, k as f64, big_n as f64);
    1.75e-7 * n * big_n * big_n.log2() * (k + 1.0).powi(2) * (level as f64 + 0.45)
}

pub(crate) fn ks_cost_ms(input_dim: usize, level: usize, n: usize) -> f64 {
    6.4e-7 * input_dim as f64 * level as f64 * n as f64
}

/// The error-probability target: per bootstrap, or for the whole circuit (split evenly
/// over its bootstraps and decrypted outputs).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum PErrorTarget {
    PerPbs(f64),
    Global(f64),
}

impl PErrorTarget {
    fn value(self) -> f64 {
        match self {
            PErrorTarget::PerPbs(p) | PErrorTarget::Global(p) => p,
        }
    }
}

/// The parameters of one partition: the bootstraps decoding up to `precision` bits.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PartitionParams {
    pub precision: u32,
    pub params: CryptoParams,
    /// Dimension of the master-key prefix its key switches start from (its KSK's rows).
    pub ks_input_dimension: usize,
    pub pbs_per_sample: usize,
    /// Predicted milliseconds of one key switch + bootstrap on one core.
    pub cost_ms: f64,
    /// Largest predicted failure probability of one of its bootstraps.
    pub p_error: f64,
}

/// One partition's keys: its parameters and where its key switches start.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct PartitionKeyParams {
    /// Widest precision its bootstraps decode.
    pub precision: u32,
    pub params: CryptoParams,
    /// Dimension of the master-key prefix its key-switching key starts from.
    pub ks_input_dimension: usize,
}

/// What keys are generated from: two key sets are interchangeable iff these are equal.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KeyParams {
    /// Fresh inputs are encrypted under the master key's prefix of this dimension.
    pub input_dimension: usize,
    pub partitions: Vec<PartitionKeyParams>,
}

/// Bounds on key parameters read from a file ([`KeyParams::check`]).
pub const MAX_KEY_DIMENSION: usize = 1 << 17;
pub const MAX_LWE_DIMENSION: usize = 4096;
pub const MAX_KEY_PARTITIONS: usize = 8;
/// Largest seeded evaluation key a client agrees to generate, in bytes.
pub const MAX_EVALUATION_KEY_BYTES: usize = 16 << 30;

impl KeyParams {
    /// Checks parameters that came from a file, before any key is generated or used:
    /// every key dimension within the security curve's range (its noise is derived from
    /// the dimension, so each key is at 128-bit security), polynomial sizes powers of
    /// two, decompositions within the 64-bit torus, key switches starting from a prefix
    /// the other keys define, and the evaluation key within a size a client can hold.
    /// Returns what is wrong.
    pub fn check(&self) -> Result<(), String> {
        let dim_ok = |d: usize| (MIN_SECURE_DIMENSION..=MAX_KEY_DIMENSION).contains(&d);
        if !dim_ok(self.input_dimension) {
            return Err(format!(
                "input key dimension {} is outside [{MIN_SECURE_DIMENSION}, {MAX_KEY_DIMENSION}]: below {MIN_SECURE_DIMENSION} no noise keeps it 128-bit secure",
                self.input_dimension
            ));
        }
        if self.partitions.len() > MAX_KEY_PARTITIONS {
            return Err(format!(
                "{} partitions (at most {MAX_KEY_PARTITIONS})",
                self.partitions.len()
            ));
        }
        let big_dims: Vec<usize> = self
            .partitions
            .iter()
            .map(|p| {
                p.params
                    .glwe_dimension
                    .saturating_mul(p.params.polynomial_size)
            })
            .collect();
        let mut bytes = 0usize;
        for (i, part) in self.partitions.iter().enumerate() {
            let p = &part.params;
            let bad = |what: String| Err(format!("partition {i}: {what}"));
            if part.precision > 16 {
                return bad(format!("precision {} bits", part.precision));
            }
            if !(MIN_SECURE_DIMENSION..=MAX_LWE_DIMENSION).contains(&p.lwe_dimension) {
                return bad(format!(
                    "LWE dimension {} is outside [{MIN_SECURE_DIMENSION}, {MAX_LWE_DIMENSION}]",
                    p.lwe_dimension
                ));
            }
            if !p.polynomial_size.is_power_of_two()
                || !(256..=MAX_KEY_DIMENSION).contains(&p.polynomial_size)
                || !(1..=8).contains(&p.glwe_dimension)
                || !dim_ok(big_dims[i])
            {
                return bad(format!(
                    "GLWE dimension {} × polynomial size {}: need a power of two from 256, k ≤ 8 and k·N in [{MIN_SECURE_DIMENSION}, {MAX_KEY_DIMENSION}]",
                    p.glwe_dimension, p.polynomial_size
                ));
            }
            if !(MIN_BODY_BITS..=64).contains(&p.bsk_body_bits) {
                return bad(format!(
                    "bootstrap key bodies of {} bits (at least {MIN_BODY_BITS})",
                    p.bsk_body_bits
                ));
            }
            for (name, base, level) in [
                ("bootstrap", p.pbs_base_log, p.pbs_level),
                ("key-switch", p.ks_base_log, p.ks_level),
            ] {
                if base == 0 || level == 0 || base.saturating_mul(level) > 64 {
                    return bad(format!(
                        "{name} decomposition 2^{base} × {level} does not fit the 64-bit torus"
                    ));
                }
            }
            let d = part.ks_input_dimension;
            if d != self.input_dimension && !big_dims.contains(&d) {
                return bad(format!(
                    "key switch from a {d}-dimensional key, which no other key defines"
                ));
            }
            let (ks, bsk) = crate::keys::raw_key_lengths(part);
            bytes = bytes.saturating_add(ks.saturating_add(bsk).saturating_mul(8));
        }
        if bytes > MAX_EVALUATION_KEY_BYTES {
            return Err(format!(
                "an evaluation key of {:.1} GiB (at most {} GiB)",
                bytes as f64 / (1u64 << 30) as f64,
                MAX_EVALUATION_KEY_BYTES >> 30
            ));
        }
        Ok(())
    }

    /// Dimension of the master LWE key every big key is a prefix of.
    pub fn master_dimension(&self) -> usize {
        self.partitions
            .iter()
            .map(|p| p.params.big_dimension())
            .fold(self.input_dimension, usize::max)
    }
}

/// The parameter choice for a circuit, with what it guarantees.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ParamChoice {
    pub keys: KeyParams,
    /// Empty for circuits without bootstrap (linear models: no evaluation key).
    pub partitions: Vec<PartitionParams>,
    /// Largest predicted failure probability of one bootstrap.
    pub p_error_per_pbs: f64,
    /// Predicted failure probability of decoding one decrypted output element.
    pub p_error_output: f64,
    /// Union bound on a sample's failure: Σ over bootstraps and outputs.
    pub p_error_circuit: f64,
    /// Predicted key-switch + bootstrap time per sample on one core, milliseconds.
    pub predicted_ms_per_sample: f64,
    /// The bound requested.
    pub p_error_target: PErrorTarget,
    /// Bits kept of each coefficient of an output ciphertext on the wire: the server
    /// rounds outputs to this modulus, the fewest bits whose rounding noise keeps
    /// `p_error_output` within the target (docs/DEPLOYMENT.md).
    pub output_bits: u32,
    /// Outputs decrypt to within `2^(k−1)` units of the circuit's value, not exactly,
    /// with probability `1 − p_error_output` ([`NoiseBudget::output_slack_bits`]).
    #[serde(default)]
    pub output_slack_bits: u32,
}

impl ParamChoice {
    pub fn needs_bootstrap(&self) -> bool {
        !self.partitions.is_empty()
    }
    /// The partition bootstraps of `precision` run in.
    pub fn partition_of(&self, precision: u32) -> usize {
        let precisions: Vec<u32> = self.partitions.iter().map(|p| p.precision).collect();
        crate::noise::partition_of(&precisions, precision)
    }
    /// Evaluation key bytes in memory: Fourier bootstrap keys and key-switching keys.
    pub fn eval_key_bytes(&self) -> (usize, usize) {
        self.partitions.iter().fold((0, 0), |(b, k), p| {
            (
                b + p.params.fourier_bsk_bytes(),
                k + p.params.ksk_bytes(p.ks_input_dimension),
            )
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ParamError {
    #[error("no parameter set reaches p_error ≤ 2^{:.1} per bootstrap for this circuit at 128-bit security ({precision}-bit table lookups, {bits}-bit encoding); lower --rounding-threshold-bits or --n-bits, or allow a larger --p-error", p_error.log2())]
    Infeasible {
        p_error: f64,
        bits: u32,
        precision: u32,
    },
    #[error("p_error must be in (0, 0.5), got {0}")]
    BadPError(f64),
}

/// Picks the cheapest parameters meeting the error target for every bootstrap and output.
pub fn choose_params(
    budget: &NoiseBudget,
    target: PErrorTarget,
) -> Result<ParamChoice, ParamError> {
    let asked = target.value();
    if !(asked > 0.0 && asked < 0.5) {
        return Err(ParamError::BadPError(asked));
    }
    let per_pbs = match target {
        PErrorTarget::PerPbs(p) => p,
        PErrorTarget::Global(g) => g / (budget.pbs_count() + budget.output_count).max(1) as f64,
    };
    let z = z_for_p_error(per_pbs);
    let out_limit = (budget.output_margin() / z).powi(2);
    let infeasible = || ParamError::Infeasible {
        p_error: per_pbs,
        bits: budget.encoding_bits,
        precision: budget
            .partitions
            .iter()
            .map(|p| p.precision)
            .max()
            .unwrap_or(0),
    };
    if budget.sites.is_empty() {
        // Leveled only: the key (any multiple of 16 the security curve covers) whose
        // outputs are smallest on the wire, (dimension + 1) × the fewest bits its fresh
        // noise leaves the outputs; the smaller dimension on a tie.
        let dim = (MIN_SECURE_DIMENSION.next_multiple_of(16)..=1 << 16)
            .step_by(16)
            .filter_map(|d| {
                let v = budget
                    .output
                    .as_ref()
                    .map_or(0.0, |t| t.variance(security_std_dev(d).powi(2), &[]));
                let bits = fewest_output_bits(budget.encoding_bits, d, v, out_limit)?;
                Some(((d + 1) * bits as usize, d))
            })
            .min()
            .map(|(_, d)| d)
            .ok_or_else(infeasible)?;
        let mut choice = ParamChoice {
            keys: KeyParams {
                input_dimension: dim,
                partitions: Vec::new(),
            },
            partitions: Vec::new(),
            p_error_per_pbs: 0.0,
            p_error_output: 0.0,
            p_error_circuit: 0.0,
            predicted_ms_per_sample: 0.0,
            p_error_target: target,
            output_bits: 64,
            output_slack_bits: budget.output_slack_bits,
        };
        fill_error_probabilities(budget, &mut choice, z);
        return Ok(choice);
    }

    let np = budget.partitions.len();
    // (k, N) worth trying per partition: for k = 1 and 2, the three smallest N whose
    // modulus switch alone (at the smallest n) leaves room for the partition's precision
    let sizes: Vec<Vec<(usize, usize)>> = budget
        .partitions
        .iter()
        .map(|part| {
            let limit = (site_margin(part.precision) / z).powi(2);
            (1..=2)
                .flat_map(|k| {
                    (8..=16)
                        .map(|l| 1usize << l)
                        .filter(move |&n| {
                            k * n >= 512
                                && k * n <= 1 << 16
                                && modulus_switch_variance(MIN_SECURE_DIMENSION, n) < limit
                        })
                        .take(3)
                        .map(move |n| (k, n))
                })
                .collect()
        })
        .collect();
    if sizes.iter().any(Vec::is_empty) {
        return Err(infeasible());
    }
    let site_limits: Vec<f64> = budget
        .sites
        .iter()
        .map(|s| (site_margin(s.precision) / z).powi(2))
        .collect();
    let site_scales: Vec<f64> = budget
        .sites
        .iter()
        .map(|s| (2.0 * s.scale_log2 as f64).exp2())
        .collect();

    let mut tables: std::collections::HashMap<(usize, usize, usize), PartitionTable> =
        Default::default();
    let mut best: Option<(f64, KeyParams)> = None;
    let mut assignment = vec![0usize; np];
    loop {
        let kns: Vec<(usize, usize)> = (0..np).map(|p| sizes[p][assignment[p]]).collect();
        // dimension of each partition's outputs (its big key, a master-key prefix)
        let ns: Vec<usize> = kns.iter().map(|&(k, n)| k * n).collect();
        // Fresh inputs go under a master-key prefix: a partition's big key, or a shorter
        // power of two (cheaper key switches from the inputs, more fresh noise). Their
        // size on the wire does not depend on it (seeded ciphertexts).
        let widest = ns.iter().copied().max().unwrap_or(0);
        let mut inputs: Vec<usize> = ns
            .iter()
            .copied()
            .chain((9..16).map(|l| 1usize << l).filter(|&d| d < widest))
            .collect();
        inputs.sort_unstable();
        inputs.dedup();
        for &input_dim in &inputs {
            let dim_of = |sources: KeySources| {
                let mut d = if sources & 1 != 0 { input_dim } else { 0 };
                for (p, &n) in ns.iter().enumerate() {
                    if sources & crate::noise::partition_source(p) != 0 {
                        d = d.max(n);
                    }
                }
                d
            };
            let ks_dims: Vec<usize> = (0..np)
                .map(|p| {
                    budget
                        .sites
                        .iter()
                        .filter(|s| s.partition == p)
                        .map(|s| dim_of(s.terms.sources))
                        .max()
                        .unwrap_or(input_dim)
                        .max(1)
                })
                .collect();
            for p in 0..np {
                let (k, n) = kns[p];
                tables
                    .entry((k, n, ks_dims[p]))
                    .or_insert_with(|| PartitionTable::build(k, n, ks_dims[p]));
            }
            let t: Vec<&PartitionTable> = (0..np)
                .map(|p| &tables[&(kns[p].0, kns[p].1, ks_dims[p])])
                .collect();
            if t.iter().any(|t| t.lo >= GRID) {
                continue;
            }
            // bound: every partition at its cheapest cell cannot beat the best found
            let floor: f64 = (0..np)
                .map(|p| t[p].min_cost * budget.partitions[p].pbs_count as f64)
                .sum();
            if best.as_ref().is_some_and(|(c, _)| floor >= *c) {
                continue;
            }
            let fresh = security_std_dev(input_dim).powi(2);
            let mut var = vec![0.0; np];
            let mut allowed = vec![f64::INFINITY; np];
            // the cost at one grid point (a PBS-output variance bound per partition)
            let mut cost_at = |idx: &[usize]| -> Option<(f64, Vec<CryptoParams>)> {
                for p in 0..np {
                    var[p] = grid_value(idx[p]);
                }
                let out_ok = budget
                    .output
                    .as_ref()
                    .is_none_or(|o| o.variance(fresh, &var) <= out_limit);
                if !out_ok {
                    return None;
                }
                allowed.iter_mut().for_each(|a| *a = f64::INFINITY);
                for (i, s) in budget.sites.iter().enumerate() {
                    let a = site_limits[i] - site_scales[i] * s.terms.variance(fresh, &var);
                    allowed[s.partition] = allowed[s.partition].min(a);
                }
                let mut cost = 0.0;
                let mut chosen = Vec::with_capacity(np);
                for p in 0..np {
                    let cell = idx[p] * GRID + grid_floor(allowed[p])?;
                    cost += t[p].cost[cell] * budget.partitions[p].pbs_count as f64;
                    chosen.push(t[p].params[cell]?);
                }
                cost.is_finite().then_some((cost, chosen))
            };
            // With three partitions or more the full grid is too large to walk: every
            // fourth row first, then every row around the best point found.
            let stride = if np >= 3 { 4 } else { 1 };
            let ranges: Vec<(usize, usize)> = t.iter().map(|t| (t.lo, t.hi)).collect();
            let mut local: Option<(f64, Vec<usize>, Vec<CryptoParams>)> = None;
            let keep = |local: &mut Option<(f64, Vec<usize>, Vec<CryptoParams>)>,
                        idx: &[usize],
                        found: Option<(f64, Vec<CryptoParams>)>| {
                if let Some((c, chosen)) = found {
                    if local.as_ref().is_none_or(|l| c < l.0) {
                        *local = Some((c, idx.to_vec(), chosen));
                    }
                }
            };
            for_each_grid_point(&ranges, stride, |idx| keep(&mut local, idx, cost_at(idx)));
            if stride > 1 {
                if let Some(centre) = local.as_ref().map(|l| l.1.clone()) {
                    let around: Vec<(usize, usize)> = centre
                        .iter()
                        .zip(&ranges)
                        .map(|(&c, &(lo, hi))| {
                            (
                                c.saturating_sub(stride - 1).max(lo),
                                (c + stride - 1).min(hi),
                            )
                        })
                        .collect();
                    for_each_grid_point(&around, 1, |idx| keep(&mut local, idx, cost_at(idx)));
                }
            }
            if let Some((cost, _, chosen)) = local {
                if best.as_ref().is_none_or(|(c, _)| cost < *c) {
                    best = Some((
                        cost,
                        KeyParams {
                            input_dimension: input_dim,
                            partitions: chosen
                                .into_iter()
                                .zip(&ks_dims)
                                .zip(&budget.partitions)
                                .map(|((params, &d), part)| PartitionKeyParams {
                                    precision: part.precision,
                                    params,
                                    ks_input_dimension: d,
                                })
                                .collect(),
                        },
                    ));
                }
            }
        }
        // next polynomial-size assignment
        let mut p = 0;
        while p < np {
            assignment[p] += 1;
            if assignment[p] < sizes[p].len() {
                break;
            }
            assignment[p] = 0;
            p += 1;
        }
        if p == np {
            break;
        }
    }
    let (cost, mut keys) = best.ok_or_else(infeasible)?;
    round_bootstrap_keys(budget, &mut keys, z);
    let partitions = budget
        .partitions
        .iter()
        .zip(&keys.partitions)
        .map(|(part, k)| PartitionParams {
            precision: part.precision,
            params: k.params,
            ks_input_dimension: k.ks_input_dimension,
            pbs_per_sample: part.pbs_count,
            cost_ms: k.params.pbs_cost_ms() + k.params.ks_cost_ms(k.ks_input_dimension),
            p_error: 0.0,
        })
        .collect();
    let mut choice = ParamChoice {
        keys,
        partitions,
        p_error_per_pbs: 0.0,
        p_error_output: 0.0,
        p_error_circuit: 0.0,
        predicted_ms_per_sample: cost,
        p_error_target: target,
        output_bits: 64,
        output_slack_bits: budget.output_slack_bits,
    };
    fill_error_probabilities(budget, &mut choice, z);
    Ok(choice)
}

/// Fewest bits a bootstrap-key body is rounded to.
const MIN_BODY_BITS: u32 = 20;

/// Rounds each partition's bootstrap-key bodies to the fewest bits that keep every
/// bootstrap input and decrypted output within its error budget, using at most half of
/// each constraint's slack (the rest is the outputs', [`fill_error_probabilities`]).
/// The rounding costs no time; it shrinks the evaluation key by up to a third.
fn round_bootstrap_keys(budget: &NoiseBudget, keys: &mut KeyParams, z: f64) {
    let site_limits: Vec<f64> = budget
        .sites
        .iter()
        .map(|s| (site_margin(s.precision) / z).powi(2))
        .collect();
    let out_limit = (budget.output_margin() / z).powi(2);
    let variances = |keys: &KeyParams| -> (Vec<f64>, Option<f64>) {
        let (fresh, pbs, input) = predicted_variances(keys);
        let sites = budget
            .sites
            .iter()
            .map(|s| site_variance(s, fresh, &pbs, input[s.partition]))
            .collect();
        (
            sites,
            budget.output.as_ref().map(|o| o.variance(fresh, &pbs)),
        )
    };
    let (sites0, out0) = variances(keys);
    let np = keys.partitions.len();
    for p in 0..np {
        // partition p may bring each constraint to this share of its slack
        let share = (p + 1) as f64 / (2 * np) as f64;
        let allowed = |v: f64, limit: f64| v + (limit - v).max(0.0) * share;
        let fits = |keys: &KeyParams| {
            let (sites, out) = variances(keys);
            sites
                .iter()
                .zip(&sites0)
                .zip(&site_limits)
                .all(|((&v, &v0), &l)| v <= allowed(v0, l))
                && out
                    .zip(out0)
                    .is_none_or(|(v, v0)| v <= allowed(v0, out_limit))
        };
        let mut bits = 64;
        for b in (MIN_BODY_BITS..64).rev() {
            keys.partitions[p].params.bsk_body_bits = b;
            if !fits(keys) {
                break;
            }
            bits = b;
        }
        keys.partitions[p].params.bsk_body_bits = bits;
    }
}

/// Fresh-input variance, per-partition PBS-output variances and per-partition bootstrap
/// input variances (key switch + modulus switch) of a key set.
pub fn predicted_variances(keys: &KeyParams) -> (f64, Vec<f64>, Vec<f64>) {
    let fresh = security_std_dev(keys.input_dimension).powi(2);
    let pbs: Vec<f64> = keys
        .partitions
        .iter()
        .map(|k| k.params.pbs_variance())
        .collect();
    let input: Vec<f64> = keys
        .partitions
        .iter()
        .map(|k| {
            let p = &k.params;
            keyswitch_variance(
                k.ks_input_dimension,
                p.lwe_dimension,
                p.ks_base_log,
                p.ks_level,
            ) + modulus_switch_variance(p.lwe_dimension, p.polynomial_size)
        })
        .collect();
    (fresh, pbs, input)
}

/// Dimension of the master-key prefix a ciphertext whose mask spans `sources` is under.
pub fn sources_dimension(sources: KeySources, keys: &KeyParams) -> usize {
    let mut d = if sources & crate::noise::FRESH_SOURCE != 0 {
        keys.input_dimension
    } else {
        0
    };
    for (p, part) in keys.partitions.iter().enumerate() {
        if sources & crate::noise::partition_source(p) != 0 {
            d = d.max(part.params.big_dimension());
        }
    }
    d
}

/// Variance the rounding of an output ciphertext of `dimension` to `bits` bits per
/// coefficient adds to its phase: the body's rounding error, and the mask's weighted by
/// the binary key (half its coefficients are 1 on average).
pub fn output_rounding_variance(dimension: usize, bits: u32) -> f64 {
    if bits >= 64 {
        return 0.0;
    }
    (1.0 + dimension as f64 / 2.0) * (-2.0 * bits as f64).exp2() / 12.0
}

/// The fewest bits (from W + 2) an output ciphertext of `dimension` carrying noise
/// `variance` may be rounded to and stay within `limit`; `None` when even 64 do not.
fn fewest_output_bits(w: u32, dimension: usize, variance: f64, limit: f64) -> Option<u32> {
    (w + 2..=64).find(|&b| variance + output_rounding_variance(dimension, b) <= limit)
}

/// Fills the error probabilities of `choice` and picks its output modulus: the fewest
/// bits per output coefficient whose rounding keeps each decrypted output within the
/// `z`-sigma margin the search held it to.
fn fill_error_probabilities(budget: &NoiseBudget, choice: &mut ParamChoice, z: f64) {
    let (fresh, pbs, _) = predicted_variances(&choice.keys);
    if let Some(o) = &budget.output {
        let dim = sources_dimension(o.sources, &choice.keys);
        let limit = (budget.output_margin() / z).powi(2);
        choice.output_bits =
            fewest_output_bits(budget.encoding_bits, dim, o.variance(fresh, &pbs), limit)
                .unwrap_or(64);
    }
    let p = error_probabilities(budget, choice);
    for (part, &q) in choice.partitions.iter_mut().zip(&p.per_partition) {
        part.p_error = part.p_error.max(q);
    }
    choice.p_error_per_pbs = p.per_pbs;
    choice.p_error_output = p.output;
    choice.p_error_circuit = p.circuit;
}

/// What a key set gives a circuit's bootstraps and outputs.
struct Probabilities {
    /// Worst bootstrap of each partition.
    per_partition: Vec<f64>,
    per_pbs: f64,
    output: f64,
    /// Union bound over a sample's bootstraps and outputs.
    circuit: f64,
}

/// The error probabilities `choice`'s keys and output modulus give `budget`'s sites
/// and outputs. Every site's partition must exist in `choice`.
fn error_probabilities(budget: &NoiseBudget, choice: &ParamChoice) -> Probabilities {
    let (fresh, pbs, input) = predicted_variances(&choice.keys);
    let mut p = Probabilities {
        per_partition: vec![0.0; choice.partitions.len()],
        per_pbs: 0.0,
        output: 0.0,
        circuit: 0.0,
    };
    let mut total = 0.0;
    for s in &budget.sites {
        let v = site_variance(s, fresh, &pbs, input[s.partition]);
        let q = p_error_of(site_margin(s.precision), v.sqrt());
        total += q * s.count as f64;
        p.per_partition[s.partition] = p.per_partition[s.partition].max(q);
        p.per_pbs = p.per_pbs.max(q);
    }
    if budget.output.is_some() {
        let v = output_variance(budget, choice);
        p.output = p_error_of(budget.output_margin(), v.sqrt());
        total += p.output * budget.output_count as f64;
    }
    p.circuit = total.min(1.0);
    p
}

impl ParamChoice {
    /// Recomputes the error probabilities from the parameters instead of trusting the
    /// figures stored beside them: refuses parameters (read from a file) that do not
    /// meet their own target on `budget`, the circuit's noise budget.
    pub fn recheck(&self, budget: &NoiseBudget) -> Result<(), String> {
        let np = budget.partitions.len();
        if self.partitions.len() != np
            || self.keys.partitions.len() != np
            || budget.sites.iter().any(|s| s.partition >= np)
        {
            return Err(format!(
                "{} parameter partitions and {} key partitions for a circuit of {np}",
                self.partitions.len(),
                self.keys.partitions.len()
            ));
        }
        let asked = self.p_error_target.value();
        if !(asked > 0.0 && asked < 0.5) {
            return Err(format!("an error-probability target of {asked}"));
        }
        let per_pbs = match self.p_error_target {
            PErrorTarget::PerPbs(p) => p,
            PErrorTarget::Global(g) => g / (budget.pbs_count() + budget.output_count).max(1) as f64,
        };
        let p = error_probabilities(budget, self);
        // the same arithmetic as at compile time; the slack covers float reassociation
        let allowed = per_pbs * (1.0 + 1e-6);
        for (what, q) in [("a bootstrap", p.per_pbs), ("a decrypted output", p.output)] {
            if q > allowed {
                return Err(format!(
                    "these parameters give {what} an error probability of 2^{:.1}, above the target 2^{:.1}",
                    q.log2(),
                    per_pbs.log2()
                ));
            }
        }
        Ok(())
    }
}

/// Variance of the worst decrypted output (torus units): its noise plus the rounding of
/// output ciphertexts to `choice.output_bits`; 0 without outputs.
fn output_variance(budget: &NoiseBudget, choice: &ParamChoice) -> f64 {
    let Some(o) = &budget.output else {
        return 0.0;
    };
    let (fresh, pbs, _) = predicted_variances(&choice.keys);
    let dim = sources_dimension(o.sources, &choice.keys);
    o.variance(fresh, &pbs) + output_rounding_variance(dim, choice.output_bits)
}

/// Standard deviation of the worst decrypted output's error in output units (one unit
/// is `2^−(W+1)` of the torus): what simulation draws when outputs carry a modelled
/// error ([`NoiseBudget::output_slack_bits`]).
pub fn output_sigma(budget: &NoiseBudget, choice: &ParamChoice) -> f64 {
    output_variance(budget, choice).sqrt() * ((budget.encoding_bits + 1) as f64).exp2()
}
