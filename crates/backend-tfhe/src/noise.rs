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

/// Variances of the primitive steps for one parameter set.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepVariances {
    /// A fresh encryption under the big (GLWE-derived) key.
    pub fresh: f64,
    /// The output of a programmable bootstrap.
    pub pbs: f64,
    /// Key switching big → small key.
    pub keyswitch: f64,
    /// The modulus switch to 2N at the start of a bootstrap.
    pub modulus_switch: f64,
}

impl StepVariances {
    pub fn of(p: &CryptoParams) -> Self {
        let (n, k, big_n) = (
            p.lwe_dimension as f64,
            p.glwe_dimension as f64,
            p.polynomial_size as f64,
        );
        let kn = k * big_n;
        let glwe_var = security_std_dev(p.glwe_dimension * p.polynomial_size).powi(2);
        let lwe_var = security_std_dev(p.lwe_dimension).powi(2);
        // PBS: key noise + FFT error through the decomposed external products, plus the
        // approximation error of the gadget decomposition.
        let b = (p.pbs_base_log as f64).exp2();
        let l = p.pbs_level as f64;
        let key_part = n * l * (k + 1.0) * big_n * (b * b + 2.0) / 12.0 * glwe_var;
        // Rounding error of the f64 FFT in the external products. It grows as N²·B²:
        // fitted on tfhe-rs 1.8 measurements (tests/noise.rs: N = 2048 and 8192, B = 2^15,
        // three levels gave 2^-110.1 and 2^-111), rounded up to 2^-109 to stay a bound.
        let fft_part = n * (k + 1.0) * l * k * big_n * big_n * b * b * 2f64.powi(-109);
        let eps = (-(p.pbs_base_log as f64) * l).exp2();
        let decomp_part = n * eps * eps * (1.0 / 12.0 + kn / 24.0 + kn / 16.0);
        // Key switch: noise of the key-switching key times the digits, plus its decomposition error.
        let bks = (p.ks_base_log as f64).exp2();
        let lks = p.ks_level as f64;
        let eps_ks = (-(p.ks_base_log as f64) * lks).exp2();
        let ks = kn * lks * (bks * bks + 2.0) / 12.0 * lwe_var
            + kn * eps_ks * eps_ks * (1.0 / 24.0 + 1.0 / 16.0);
        // Modulus switch: each of the n+1 coefficients rounded to a multiple of 1/(2N).
        let ms = (1.0 + n / 2.0) / (48.0 * big_n * big_n);
        StepVariances {
            fresh: glwe_var,
            pbs: key_part + fft_part + decomp_part,
            keyswitch: ks,
            modulus_switch: ms,
        }
    }
}

/// The noise a ciphertext carries, as `fresh·var_fresh + pbs·var_pbs`: which parameter
/// set it is evaluated for is left open, so the budget is computed once per circuit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NoiseTerms {
    pub fresh: f64,
    pub pbs: f64,
}

impl NoiseTerms {
    fn scaled(self, w2: f64) -> Self {
        NoiseTerms {
            fresh: self.fresh * w2,
            pbs: self.pbs * w2,
        }
    }
    fn add(self, o: Self) -> Self {
        NoiseTerms {
            fresh: self.fresh + o.fresh,
            pbs: self.pbs + o.pbs,
        }
    }
    fn max(self, o: Self) -> Self {
        NoiseTerms {
            fresh: self.fresh.max(o.fresh),
            pbs: self.pbs.max(o.pbs),
        }
    }
    pub fn variance(&self, v: &StepVariances) -> f64 {
        self.fresh * v.fresh + self.pbs * v.pbs
    }
}

/// One kind of bootstrap input: the ciphertext (noise `terms`) is multiplied by
/// `2^scale_log2` and must decode with precision `precision` (margin 2^-(precision+2)).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct PbsSite {
    pub terms: NoiseTerms,
    pub scale_log2: u32,
    pub precision: u32,
    /// How many bootstraps per sample have this (or a smaller) noise.
    pub count: usize,
}

/// What a parameter set must satisfy for one circuit.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NoiseBudget {
    pub encoding_bits: u32,
    pub sites: Vec<PbsSite>,
    /// Worst noise of a value the client decrypts without bootstrap.
    pub output: Option<NoiseTerms>,
}

impl NoiseBudget {
    /// Walks the circuit, propagating noise terms element by element.
    pub fn of(c: &Circuit, info: &CircuitInfo) -> Self {
        let w = info.encoding_bits;
        let mut terms: Vec<Vec<NoiseTerms>> = Vec::with_capacity(c.len());
        let mut sites: Vec<PbsSite> = Vec::new();
        let mut add_site = |site: PbsSite| match sites
            .iter_mut()
            .find(|s| s.scale_log2 == site.scale_log2 && s.precision == site.precision)
        {
            Some(s) => {
                s.terms = s.terms.max(site.terms);
                s.count += site.count;
            }
            None => sites.push(site),
        };
        for id in c.ids() {
            let node = c.node(id);
            let ops = c.operands(id);
            let x = ops.first().map(|o| &terms[o.index()]);
            let t: Vec<NoiseTerms> = match &node.op {
                IntOp::Input { .. } => vec![
                    NoiseTerms {
                        fresh: 1.0,
                        pbs: 0.0
                    };
                    node.numel()
                ],
                IntOp::Linear {
                    inputs,
                    outputs,
                    weight,
                    ..
                } => {
                    let x = x.unwrap();
                    let rows = x.len() / inputs;
                    let mut out = Vec::with_capacity(rows * outputs);
                    for r in 0..rows {
                        for j in 0..*outputs {
                            let acc = (0..*inputs).fold(NoiseTerms::default(), |acc, i| {
                                let wi = weight[j * inputs + i] as f64;
                                acc.add(x[r * inputs + i].scaled(wi * wi))
                            });
                            out.push(acc);
                        }
                    }
                    out
                }
                IntOp::Round { drop_bits } => {
                    let x = x.unwrap();
                    let base = worst_of(x);
                    // each step's bootstrap input: y scaled so the chunk fills the torus,
                    // margin that of a (c−1)-bit table; every bootstrap output adds to y
                    let mut done = 0.0;
                    for (bit, c) in fhec_ir::rounding_chunks(*drop_bits, info.rounding_chunk_bits) {
                        let steps = if c > 1 { 2 } else { 1 };
                        for _ in 0..steps {
                            let t = base.add(NoiseTerms {
                                fresh: 0.0,
                                pbs: done,
                            });
                            add_site(PbsSite {
                                terms: t,
                                scale_log2: w + 1 - bit - c,
                                precision: c - 1,
                                count: node.numel(),
                            });
                            done += 1.0;
                        }
                    }
                    x.iter()
                        .map(|t| {
                            t.add(NoiseTerms {
                                fresh: 0.0,
                                pbs: done,
                            })
                        })
                        .collect()
                }
                IntOp::Lut { precision, .. } => {
                    let shift = info.nodes[ops[0].index()].shift;
                    add_site(PbsSite {
                        terms: worst_of(x.unwrap()),
                        scale_log2: w - precision - shift,
                        precision: *precision,
                        count: node.numel(),
                    });
                    vec![
                        NoiseTerms {
                            fresh: 0.0,
                            pbs: 1.0
                        };
                        node.numel()
                    ]
                }
                IntOp::Reshape => x.unwrap().clone(),
            };
            terms.push(t);
        }
        let output = c
            .outputs
            .iter()
            .map(|o| worst_of(&terms[o.index()]))
            .reduce(NoiseTerms::max);
        NoiseBudget {
            encoding_bits: w,
            sites,
            output,
        }
    }

    pub fn pbs_count(&self) -> usize {
        self.sites.iter().map(|s| s.count).sum()
    }

    /// The largest per-bootstrap error probability and the output one, for `params`.
    pub fn error_probabilities(&self, params: &CryptoParams) -> (f64, f64) {
        let v = StepVariances::of(params);
        let site = self
            .sites
            .iter()
            .map(|s| p_error_of(site_margin(s.precision), site_sigma(s, &v)))
            .fold(0.0, f64::max);
        let out = self.output.map_or(0.0, |t| {
            p_error_of(output_margin(self.encoding_bits), t.variance(&v).sqrt())
        });
        (site, out)
    }
}

fn worst_of(t: &[NoiseTerms]) -> NoiseTerms {
    t.iter().fold(NoiseTerms::default(), |m, &v| m.max(v))
}

/// Half the distance between two encoded values of `precision` bits (+1 padding bit).
pub fn site_margin(precision: u32) -> f64 {
    (-(precision as f64) - 2.0).exp2()
}

/// Decoding margin of a decrypted output at encoding width `w`.
pub fn output_margin(w: u32) -> f64 {
    (-(w as f64) - 2.0).exp2()
}

/// Std-dev at the input of the bootstrap's blind rotation for a site.
pub fn site_sigma(s: &PbsSite, v: &StepVariances) -> f64 {
    let scale = (2.0 * s.scale_log2 as f64).exp2();
    (s.terms.variance(v) * scale + v.keyswitch + v.modulus_switch).sqrt()
}
