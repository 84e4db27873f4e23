//! The noise model (docs/NOISE.md): variances on the torus [0, 1) of each TFHE step, and
//! the budget every bootstrap input and decrypted output of a circuit must meet.

use fhec_ir::{Circuit, CircuitInfo, IntOp};
use serde::{Deserialize, Serialize};

use crate::params::CryptoParams;

/// Minimum standard deviation (torus) that keeps an LWE/GLWE key of `dimension` at
/// 128-bit security: the lattice-estimator curve Concrete publishes,
/// `log2 σ = −0.0257·dimension + 2.676`, floored at 2^-62 (the torus is 64-bit).
pub fn security_std_dev(dimension: usize) -> f64 {
    (-0.0257 * dimension as f64 + 2.676).max(-62.0).exp2()
}

/// Smallest dimension the security curve is valid for.
pub const MIN_SECURE_DIMENSION: usize = 450;

/// Number of standard deviations `z` such that a centred Gaussian exceeds `z·σ` in
/// absolute value with probability `p_error`.
pub fn z_for_p_error(p_error: f64) -> f64 {
    let (mut lo, mut hi) = (0.0f64, 40.0f64);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if libm::erfc(mid / std::f64::consts::SQRT_2) > p_error {
            lo = mid
        } else {
            hi = mid
        }
    }
    hi
}

/// The probability that a Gaussian of std-dev `sigma` leaves `(-margin, margin)`.
pub fn p_error_of(margin: f64, sigma: f64) -> f64 {
    libm::erfc(margin / (sigma * std::f64::consts::SQRT_2))
}

/// Output variance of a programmable bootstrap: key noise and f64 FFT error through the
/// decomposed external products, plus the gadget decomposition's approximation error.
/// `body_bits` < 64 means the bootstrap key's GLWE bodies were rounded to that many
/// bits (docs/DEPLOYMENT.md): the rounding error, uniform over one step, adds to the key
/// noise of every row.
pub fn pbs_variance(
    n: usize,
    k: usize,
    big_n: usize,
    base_log: usize,
    level: usize,
    body_bits: u32,
) -> f64 {
    let (n, k, big_n) = (n as f64, k as f64, big_n as f64);
    let kn = k * big_n;
    let glwe_var = security_std_dev(kn as usize).powi(2) + body_rounding_variance(body_bits);
    let b = (base_log as f64).exp2();
    let l = level as f64;
    let key_part = n * l * (k + 1.0) * big_n * (b * b + 2.0) / 12.0 * glwe_var;
    // Rounding error of the f64 FFT in the external products. It grows as N²·B²:
    // fitted on tfhe-rs 1.8 measurements (tests/noise.rs: N = 2048 and 8192, B = 2^15,
    // three levels gave 2^-110.1 and 2^-111), rounded up to 2^-109 to stay a bound.
    let fft_part = n * (k + 1.0) * l * k * big_n * big_n * b * b * 2f64.powi(-109);
    let eps = (-(base_log as f64) * l).exp2();
    let decomp_part = n * eps * eps * (1.0 / 12.0 + kn / 24.0 + kn / 16.0);
    key_part + fft_part + decomp_part
}

/// Variance of rounding a torus value to `bits` bits (0 at 64): uniform over a step.
pub fn body_rounding_variance(bits: u32) -> f64 {
    if bits >= 64 {
        0.0
    } else {
        (-2.0 * bits as f64).exp2() / 12.0
    }
}

/// Variance a key switch from a key of `input_dim` to one of `n` adds: noise of the
/// key-switching key times the digits, plus its decomposition error.
pub fn keyswitch_variance(input_dim: usize, n: usize, base_log: usize, level: usize) -> f64 {
    let lwe_var = security_std_dev(n).powi(2);
    let d = input_dim as f64;
    let bks = (base_log as f64).exp2();
    let lks = level as f64;
    let eps_ks = (-(base_log as f64) * lks).exp2();
    d * lks * (bks * bks + 2.0) / 12.0 * lwe_var + d * eps_ks * eps_ks * (1.0 / 24.0 + 1.0 / 16.0)
}

/// Variance of the modulus switch to 2N: each of the n + 1 coefficients is rounded to a
/// multiple of 1/(2N), the binary key weighting n/2 of them on average.
pub fn modulus_switch_variance(n: usize, big_n: usize) -> f64 {
    (1.0 + n as f64 / 2.0) / (48.0 * (big_n as f64).powi(2))
}

/// Variances of the primitive steps for one parameter set.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepVariances {
    /// A fresh encryption under the big (GLWE-derived) key.
    pub fresh: f64,
    /// The output of a programmable bootstrap.
    pub pbs: f64,
    /// Key switching from a key of the given input dimension to the small key.
    pub keyswitch: f64,
    /// The modulus switch to 2N at the start of a bootstrap.
    pub modulus_switch: f64,
}

impl StepVariances {
    /// Step variances of `p` for key switches from a key of dimension `ks_input_dim`.
    pub fn of(p: &CryptoParams, ks_input_dim: usize) -> Self {
        StepVariances {
            fresh: security_std_dev(p.big_dimension()).powi(2),
            pbs: p.pbs_variance(),
            keyswitch: keyswitch_variance(ks_input_dim, p.lwe_dimension, p.ks_base_log, p.ks_level),
            modulus_switch: modulus_switch_variance(p.lwe_dimension, p.polynomial_size),
        }
    }
}

/// Which keys a ciphertext's mask spans: bit 0 the fresh-input key prefix, bit `1 + p`
/// the output key of partition `p`. Every big key is a prefix of one master key, so a
/// ciphertext's dimension is the largest of these (docs/PARAMETERS.md, key sharing).
pub type KeySources = u32;

pub const FRESH_SOURCE: KeySources = 1;

pub fn partition_source(p: usize) -> KeySources {
    1 << (1 + p)
}

/// The noise a ciphertext carries, as `fresh·var_fresh + Σ_p pbs[p]·var_pbs[p]`: which
/// parameter sets it is evaluated for is left open, so the budget is computed once per
/// circuit. `sources` records which key prefixes the mask spans.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NoiseTerms {
    pub fresh: f64,
    /// Per partition: how many PBS-output variances of that partition are carried.
    pub pbs: Vec<f64>,
    pub sources: KeySources,
}

impl NoiseTerms {
    fn fresh_input(partitions: usize) -> Self {
        NoiseTerms {
            fresh: 1.0,
            pbs: vec![0.0; partitions],
            sources: FRESH_SOURCE,
        }
    }
    fn pbs_output(partitions: usize, p: usize, count: f64) -> Self {
        let mut pbs = vec![0.0; partitions];
        pbs[p] = count;
        NoiseTerms {
            fresh: 0.0,
            pbs,
            sources: partition_source(p),
        }
    }
    fn zero(partitions: usize) -> Self {
        NoiseTerms {
            fresh: 0.0,
            pbs: vec![0.0; partitions],
            sources: 0,
        }
    }
    fn add_scaled(&mut self, o: &Self, w2: f64) {
        self.fresh += o.fresh * w2;
        for (a, b) in self.pbs.iter_mut().zip(&o.pbs) {
            *a += b * w2;
        }
        self.sources |= o.sources;
    }
    fn max_with(&mut self, o: &Self) {
        self.fresh = self.fresh.max(o.fresh);
        for (a, b) in self.pbs.iter_mut().zip(&o.pbs) {
            *a = a.max(*b);
        }
        self.sources |= o.sources;
    }
    /// The variance for per-partition PBS-output variances `pbs_var` and fresh `fresh_var`.
    pub fn variance(&self, fresh_var: f64, pbs_var: &[f64]) -> f64 {
        self.fresh * fresh_var
            + self
                .pbs
                .iter()
                .zip(pbs_var)
                .map(|(t, v)| t * v)
                .sum::<f64>()
    }
}

/// One kind of bootstrap input: the ciphertext (noise `terms`) is multiplied by
/// `2^scale_log2`, key-switched and bootstrapped in `partition`, and must decode with
/// precision `precision` (margin 2^-(precision+2)).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PbsSite {
    pub terms: NoiseTerms,
    pub scale_log2: u32,
    pub precision: u32,
    pub partition: usize,
    /// How many bootstraps per sample have this (or a smaller) noise.
    pub count: usize,
}

/// Bootstraps that share one parameter set. Keyed by the widest precision they decode:
/// table lookups of precision p, and the chunks of exact rounding (whose tables have
/// precision chunk − 1).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PartitionInfo {
    pub precision: u32,
    pub pbs_count: usize,
}

/// At most this many parameter sets per circuit; precisions beyond it share the set of
/// the next wider precision (the joint search is exponential in the partition count).
pub const MAX_PARTITIONS: usize = 3;

/// Which partition bootstraps of each precision run in: precisions sorted, the
/// narrowest merged upward until at most [`MAX_PARTITIONS`] remain.
pub fn partition_precisions(mut precisions: Vec<u32>) -> Vec<u32> {
    precisions.sort_unstable();
    precisions.dedup();
    while precisions.len() > MAX_PARTITIONS {
        precisions.remove(0);
    }
    precisions
}

/// The partition of a bootstrap decoding `precision` bits: the narrowest partition at
/// least that precise.
pub fn partition_of(partitions: &[u32], precision: u32) -> usize {
    partitions
        .iter()
        .position(|&p| p >= precision)
        .unwrap_or(partitions.len().saturating_sub(1))
}

/// The precision (of its widest chunk's table) an exact rounding bootstraps at.
pub fn rounding_precision(drop: u32, chunk_bits: u32) -> u32 {
    fhec_ir::rounding_chunks(drop, chunk_bits)
        .iter()
        .map(|&(_, c)| c - 1)
        .max()
        .unwrap_or(0)
}

/// The precisions of every bootstrap of a circuit, Lut and Round nodes alike.
pub fn circuit_precisions(c: &Circuit, info: &CircuitInfo) -> Vec<u32> {
    let all = c
        .ids()
        .filter_map(|id| match c.node(id).op {
            IntOp::Lut { precision, .. } => Some(precision),
            IntOp::Round {
                drop_bits,
                approximate: false,
            } if drop_bits > 0 => Some(rounding_precision(drop_bits, info.rounding_chunk_bits)),
            _ => None,
        })
        .collect();
    let mut precisions = partition_precisions(all);
    // a merged precision runs in the next wider partition (the widest one stays)
    let widest = precisions.last().copied();
    precisions.retain(|p| Some(*p) == widest || !c.merged_precisions.contains(p));
    precisions
}

/// What a parameter set must satisfy for one circuit.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NoiseBudget {
    pub encoding_bits: u32,
    pub partitions: Vec<PartitionInfo>,
    pub sites: Vec<PbsSite>,
    /// Worst noise of a value the client decrypts without bootstrap.
    pub output: Option<NoiseTerms>,
    /// Decrypted output elements per sample.
    pub output_count: usize,
    /// Per circuit output, the keys its ciphertexts' masks span (its widest element's):
    /// with a key set, the dimension its ciphertexts have ([`crate::sources_dimension`]).
    pub output_sources: Vec<KeySources>,
    /// Table lookups reading an approximate rounding: where the bootstrap noise decides
    /// the rounded value near a boundary (see [`rounding_sigmas`]).
    pub approximate_reads: Vec<ApproximateRead>,
    /// Outputs may decrypt off by fewer than `2^(k−1)` units ([`output_slack_bits`]);
    /// 0: exactly.
    #[serde(default)]
    pub output_slack_bits: u32,
}

/// A table lookup that reads the top bits of an approximate rounding's operand: the
/// noise at its blind rotation, in units of the operand, is that rounding's error.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ApproximateRead {
    /// Index of the `Round { approximate: true }` node.
    pub round: usize,
    pub site: PbsSite,
    /// log2 of one operand unit on the torus at the blind rotation: −(p + 1 + drop).
    pub unit_log2: i32,
}

impl NoiseBudget {
    /// Walks the circuit, propagating noise terms element by element.
    pub fn of(c: &Circuit, info: &CircuitInfo) -> Self {
        let w = info.encoding_bits;
        let precisions = circuit_precisions(c, info);
        let np = precisions.len();
        let mut terms_of: Vec<Vec<NoiseTerms>> = Vec::with_capacity(c.len());
        let none = Vec::new();
        let mut sites: Vec<PbsSite> = Vec::new();
        let mut approximate_reads = Vec::new();
        let mut add_site = |site: PbsSite| match sites.iter_mut().find(|s| {
            s.scale_log2 == site.scale_log2
                && s.precision == site.precision
                && s.partition == site.partition
        }) {
            Some(s) => {
                s.terms.max_with(&site.terms);
                s.count += site.count;
            }
            None => sites.push(site),
        };
        for id in c.ids() {
            let node = c.node(id);
            let ops = c.operands(id);
            // a verified circuit's nodes read earlier nodes; anything else reads nothing
            let x: &Vec<NoiseTerms> = ops
                .first()
                .and_then(|o| terms_of.get(o.index()))
                .unwrap_or(&none);
            let t: Vec<NoiseTerms> = match &node.op {
                IntOp::Input { .. } => vec![NoiseTerms::fresh_input(np); node.numel()],
                IntOp::Linear {
                    inputs,
                    outputs,
                    weight,
                    ..
                } => {
                    let rows = x.len() / inputs;
                    let mut out = Vec::with_capacity(rows * outputs);
                    for r in 0..rows {
                        // the engine sizes an output like its widest input, zero weight or not
                        let row_sources = x[r * inputs..(r + 1) * inputs]
                            .iter()
                            .fold(0, |s, t| s | t.sources);
                        for j in 0..*outputs {
                            let mut acc = NoiseTerms::zero(np);
                            for i in 0..*inputs {
                                let wi = weight[j * inputs + i] as f64;
                                acc.add_scaled(&x[r * inputs + i], wi * wi);
                            }
                            acc.sources = row_sources;
                            out.push(acc);
                        }
                    }
                    out
                }
                IntOp::Affine {
                    row_start, terms, ..
                } => {
                    let xs: Vec<&Vec<NoiseTerms>> =
                        ops.iter().map(|o| &terms_of[o.index()]).collect();
                    (0..node.numel())
                        .map(|j| {
                            let mut acc = NoiseTerms::zero(np);
                            for t in fhec_ir::affine_row(row_start, terms, j) {
                                let w = t.weight as f64;
                                let src = &xs[t.operand as usize][t.index as usize];
                                acc.add_scaled(src, w * w);
                                // the engine sizes an output like its widest input
                                acc.sources |= src.sources;
                            }
                            acc
                        })
                        .collect()
                }
                IntOp::Conv(conv) => {
                    // the engine sizes every output like the operand's widest ciphertext
                    let sources = x.iter().fold(0, |s, t| s | t.sources);
                    (0..node.numel())
                        .map(|e| {
                            let mut acc = NoiseTerms::zero(np);
                            conv.for_each_tap(e, |i, k| {
                                let w = conv.weight[k] as f64;
                                acc.add_scaled(&x[i], w * w);
                            });
                            acc.sources = sources;
                            acc
                        })
                        .collect()
                }
                IntOp::Round {
                    approximate: true, ..
                } => x.clone(),
                IntOp::Round { drop_bits, .. } => {
                    let base = worst_of(x, np);
                    let part = partition_of(
                        &precisions,
                        rounding_precision(*drop_bits, info.rounding_chunk_bits),
                    );
                    // each step's bootstrap input: y scaled so the chunk fills the torus,
                    // margin that of a (c−1)-bit table; every bootstrap output adds to y
                    let mut done = 0.0;
                    for (bit, c) in fhec_ir::rounding_chunks(*drop_bits, info.rounding_chunk_bits) {
                        let steps = if c > 1 { 2 } else { 1 };
                        for _ in 0..steps {
                            let mut t = base.clone();
                            if done > 0.0 {
                                t.add_scaled(&NoiseTerms::pbs_output(np, part, done), 1.0);
                            }
                            add_site(PbsSite {
                                terms: t,
                                scale_log2: w + 1 - bit - c,
                                precision: c - 1,
                                partition: part,
                                count: node.numel(),
                            });
                            done += 1.0;
                        }
                    }
                    let out = NoiseTerms::pbs_output(np, part, done);
                    x.iter()
                        .map(|t| {
                            let mut t = t.clone();
                            t.add_scaled(&out, 1.0);
                            t
                        })
                        .collect()
                }
                IntOp::Lut { precision, .. } => {
                    let shift = info.nodes[ops[0].index()].shift;
                    let part = partition_of(&precisions, *precision);
                    let site = PbsSite {
                        terms: worst_of(x, np),
                        scale_log2: w - precision - shift,
                        precision: *precision,
                        partition: part,
                        count: node.numel(),
                    };
                    if let IntOp::Round {
                        approximate: true,
                        drop_bits,
                    } = c.node(ops[0]).op
                    {
                        approximate_reads.push(ApproximateRead {
                            round: ops[0].index(),
                            site: site.clone(),
                            unit_log2: -((precision + 1 + drop_bits) as i32),
                        });
                    }
                    add_site(site);
                    vec![NoiseTerms::pbs_output(np, part, 1.0); node.numel()]
                }
                IntOp::Reshape => x.clone(),
            };
            terms_of.push(t);
        }
        let output = c
            .outputs
            .iter()
            .map(|o| worst_of(&terms_of[o.index()], np))
            .reduce(|mut a, b| {
                a.max_with(&b);
                a
            });
        let output_count = c.outputs.iter().map(|o| c.node(*o).numel()).sum();
        let output_sources = c
            .outputs
            .iter()
            .map(|o| terms_of[o.index()].iter().fold(0, |s, t| s | t.sources))
            .collect();
        let partitions = precisions
            .iter()
            .enumerate()
            .map(|(p, &precision)| PartitionInfo {
                precision,
                pbs_count: sites
                    .iter()
                    .filter(|s| s.partition == p)
                    .map(|s| s.count)
                    .sum(),
            })
            .collect();
        NoiseBudget {
            encoding_bits: w,
            partitions,
            sites,
            output,
            output_count,
            output_sources,
            approximate_reads,
            output_slack_bits: output_slack_bits(c, info),
        }
    }

    pub fn pbs_count(&self) -> usize {
        self.sites.iter().map(|s| s.count).sum()
    }
}

/// The error model FHE has for circuit `c` under `params` (docs/NOISE.md): approximate
/// roundings off by one near a boundary ([`rounding_sigmas`]) and decrypted outputs
/// with their modelled error ([`crate::output_sigma`]). Inactive for circuits that
/// round exactly or never bootstrap.
pub fn error_model(
    c: &Circuit,
    info: &CircuitInfo,
    params: &crate::ParamChoice,
) -> fhec_ir::interp::RoundingNoise {
    let approximate = c.ids().any(|id| {
        matches!(
            c.node(id).op,
            IntOp::Round {
                approximate: true,
                ..
            }
        )
    });
    if !(approximate && params.needs_bootstrap()) {
        return fhec_ir::interp::RoundingNoise {
            sigma: Vec::new(),
            output_sigma: 0.0,
        };
    }
    let budget = NoiseBudget::of(c, info);
    let output_sigma = if budget.output_slack_bits > 0 {
        crate::output_sigma(&budget, params)
    } else {
        0.0
    };
    fhec_ir::interp::RoundingNoise {
        sigma: rounding_sigmas(&budget, &params.keys, c.len()),
        output_sigma,
    }
}

/// Per circuit node, the standard deviation (in units of its operand) of the Gaussian
/// error an approximate rounding's reader adds before reading the top bits under the
/// key set `keys`; 0 for every other node. A rounding read by several tables gets the
/// largest of their deviations (docs/NOISE.md, approximate rounding).
pub fn rounding_sigmas(
    budget: &NoiseBudget,
    keys: &crate::KeyParams,
    node_count: usize,
) -> Vec<f64> {
    let (fresh, pbs, input) = crate::predicted_variances(keys);
    let mut sigma = vec![0.0f64; node_count];
    for r in &budget.approximate_reads {
        let Some(&input_var) = input.get(r.site.partition) else {
            continue;
        };
        let torus = site_variance(&r.site, fresh, &pbs, input_var).sqrt();
        let s = torus * (-(r.unit_log2 as f64)).exp2();
        if let Some(v) = sigma.get_mut(r.round) {
            *v = v.max(s);
        }
    }
    sigma
}

fn worst_of(t: &[NoiseTerms], partitions: usize) -> NoiseTerms {
    t.iter().fold(NoiseTerms::zero(partitions), |mut m, v| {
        m.max_with(v);
        m
    })
}

/// Half the distance between two encoded values of `precision` bits (+1 padding bit).
pub fn site_margin(precision: u32) -> f64 {
    (-(precision as f64) - 2.0).exp2()
}

/// Decoding margin of a decrypted output at encoding width `w`.
pub fn output_margin(w: u32) -> f64 {
    (-(w as f64) - 2.0).exp2()
}

impl NoiseBudget {
    /// Decoding margin of a decrypted output: half a unit, or `2^(k−1)` units with
    /// [`output_slack_bits`](Self::output_slack_bits) `k`.
    pub fn output_margin(&self) -> f64 {
        output_margin(self.encoding_bits) * (self.output_slack_bits as f64).exp2()
    }
}

/// Bits an output keeps exact beyond the widest table or input of the circuit.
pub const OUTPUT_EXTRA_BITS: u32 = 4;

/// How many low bits of the decrypted outputs may carry a modelled error (docs/NOISE.md,
/// "Outputs with a modelled error"). Only where the circuit already rounds
/// approximately (its result is already statistical): each output keeps its calibrated
/// span to [`OUTPUT_EXTRA_BITS`] more bits than the widest table lookup or input, and
/// the error cannot carry a value out of the encoding. Exact circuits decode exactly.
pub fn output_slack_bits(c: &Circuit, info: &CircuitInfo) -> u32 {
    let approximate = c.ids().any(|id| {
        matches!(
            c.node(id).op,
            IntOp::Round {
                approximate: true,
                ..
            }
        )
    });
    if !approximate || c.outputs.is_empty() {
        return 0;
    }
    let input_bits = c
        .ids()
        .filter_map(|id| match c.node(id).op {
            IntOp::Input { bits, .. } => Some(bits),
            _ => None,
        })
        .max()
        .unwrap_or(0);
    let kept = info.max_tlu_bits.max(input_bits) + OUTPUT_EXTRA_BITS;
    let limit = 1i128 << info.encoding_bits;
    c.outputs
        .iter()
        .map(|&o| {
            let r = c.node(o).range;
            if info.nodes.get(o.index()).is_none_or(|n| n.shift != 0) {
                return 0;
            }
            let span = (r.hi as i128 - r.lo as i128 + 1).max(1);
            let span_bits = 128 - (span - 1).leading_zeros();
            // an error below 2^(k−1) keeps every value of the range inside [−2^W, 2^W)
            let headroom = limit - (r.lo as i128).abs().max(r.hi as i128 + 1);
            let by_headroom = if headroom >= 1 {
                127 - headroom.leading_zeros()
            } else {
                0
            };
            span_bits.saturating_sub(kept).min(by_headroom)
        })
        .min()
        .unwrap_or(0)
}

/// Variance at the input of a site's blind rotation: the carried noise scaled by
/// `2^scale_log2` (the engine scales before the key switch), plus the key switch and
/// modulus switch of the site's partition (`input_var`).
pub fn site_variance(s: &PbsSite, fresh_var: f64, pbs_var: &[f64], input_var: f64) -> f64 {
    let scale = (2.0 * s.scale_log2 as f64).exp2();
    s.terms.variance(fresh_var, pbs_var) * scale + input_var
}
