//! TFHE parameter sets and their choice for a circuit (docs/PARAMETERS.md).
//!
//! The search enumerates LWE dimension, polynomial size, GLWE dimension and the PBS and
//! key-switch decompositions; every candidate's noise comes from the security curve
//! (so every key is at 128-bit security by construction) and is checked against the
//! circuit's [`NoiseBudget`]; the cheapest candidate by the cost model wins.

use serde::{Deserialize, Serialize};

use crate::noise::{
    output_margin, security_std_dev, site_margin, site_sigma, z_for_p_error, NoiseBudget,
    StepVariances, MIN_SECURE_DIMENSION,
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
}

impl CryptoParams {
    /// Dimension of the big key (`k·N`), the one inputs are encrypted under.
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
    /// recalibrated with `fhec bench-params` (measured/predicted 0.87–1.03 on six sets).
    pub fn pbs_cost_ms(&self) -> f64 {
        let (n, k, big_n) = (
            self.lwe_dimension as f64,
            self.glwe_dimension as f64,
            self.polynomial_size as f64,
        );
        3.7e-7 * n * big_n * big_n.log2() * (k + 1.0) * (self.pbs_level as f64 + 1.0)
    }
    /// Predicted milliseconds of one key switch.
    pub fn ks_cost_ms(&self) -> f64 {
        1.14e-6 * self.big_dimension() as f64 * self.ks_level as f64 * self.lwe_dimension as f64
    }
    /// Bytes of the bootstrap key in the Fourier domain (what the server holds in memory).
    pub fn fourier_bsk_bytes(&self) -> usize {
        let k1 = self.glwe_dimension + 1;
        self.lwe_dimension * k1 * k1 * self.pbs_level * (self.polynomial_size / 2) * 16
    }
    /// Bytes of the key-switching key.
    pub fn ksk_bytes(&self) -> usize {
        self.big_dimension() * self.ks_level * (self.lwe_dimension + 1) * 8
    }
}

/// The parameter choice for a circuit, with what it guarantees.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ParamChoice {
    pub params: CryptoParams,
    /// Whether the circuit bootstraps at all (linear models do not: no evaluation key).
    pub needs_bootstrap: bool,
    /// Largest predicted failure probability of one bootstrap.
    pub p_error_per_pbs: f64,
    /// Predicted failure probability of decoding one decrypted output element.
    pub p_error_output: f64,
    /// Predicted bootstrap + key-switch time per sample on one core, milliseconds.
    pub predicted_ms_per_sample: f64,
    /// The bound requested.
    pub p_error_target: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum ParamError {
    #[error("no parameter set reaches p_error ≤ 2^{:.1} for this circuit at 128-bit security ({precision}-bit table lookups, {bits}-bit encoding); lower --rounding-threshold-bits or --n-bits", p_error.log2())]
    Infeasible {
        p_error: f64,
        bits: u32,
        precision: u32,
    },
    #[error("p_error must be in (0, 0.5), got {0}")]
    BadPError(f64),
}

/// Picks the cheapest parameters meeting `p_error` for every bootstrap and output.
pub fn choose_params(budget: &NoiseBudget, p_error: f64) -> Result<ParamChoice, ParamError> {
    if !(p_error > 0.0 && p_error < 0.5) {
        return Err(ParamError::BadPError(p_error));
    }
    let z = z_for_p_error(p_error);
    let out_ok = |v: &StepVariances| {
        budget
            .output
            .is_none_or(|t| z * t.variance(v).sqrt() <= output_margin(budget.encoding_bits))
    };
    let count = budget.pbs_count() as f64;
    let mut best: Option<(f64, CryptoParams)> = None;
    if budget.sites.is_empty() {
        // Leveled only: the smallest big key whose fresh noise survives the linear part.
        for log_n in 9..=16 {
            let params = CryptoParams {
                lwe_dimension: 0,
                glwe_dimension: 1,
                polynomial_size: 1 << log_n,
                pbs_base_log: 0,
                pbs_level: 0,
                ks_base_log: 0,
                ks_level: 0,
            };
            let v = StepVariances {
                fresh: params.glwe_std_dev().powi(2),
                pbs: 0.0,
                keyswitch: 0.0,
                modulus_switch: 0.0,
            };
            if params.big_dimension() >= MIN_SECURE_DIMENSION && out_ok(&v) {
                best = Some((0.0, params));
                break;
            }
        }
    } else {
        for log_n in 9..=16usize {
            for k in 1..=2usize {
                if log_n + k > 17 || k * (1 << log_n) < 1024 {
                    continue;
                }
                for lwe in (MIN_SECURE_DIMENSION..=1200).step_by(8) {
                    for pbs_level in 1..=4 {
                        for pbs_base_log in (1..=30).rev() {
                            if pbs_base_log * pbs_level > 56 {
                                continue;
                            }
                            for ks_level in 1..=14 {
                                for ks_base_log in 1..=8 {
                                    if ks_base_log * ks_level > 40 {
                                        continue;
                                    }
                                    let params = CryptoParams {
                                        lwe_dimension: lwe,
                                        glwe_dimension: k,
                                        polynomial_size: 1 << log_n,
                                        pbs_base_log,
                                        pbs_level,
                                        ks_base_log,
                                        ks_level,
                                    };
                                    let cost = params.pbs_cost_ms() + params.ks_cost_ms();
                                    if best.is_some_and(|(c, _)| cost >= c) {
                                        continue;
                                    }
                                    let v = StepVariances::of(&params);
                                    let sites_ok = budget
                                        .sites
                                        .iter()
                                        .all(|s| z * site_sigma(s, &v) <= site_margin(s.precision));
                                    if sites_ok && out_ok(&v) {
                                        best = Some((cost, params));
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    let (cost, params) = best.ok_or(ParamError::Infeasible {
        p_error,
        bits: budget.encoding_bits,
        precision: budget.sites.iter().map(|s| s.precision).max().unwrap_or(0),
    })?;
    let (p_pbs, p_out) = budget.error_probabilities(&params);
    Ok(ParamChoice {
        params,
        needs_bootstrap: !budget.sites.is_empty(),
        p_error_per_pbs: if budget.sites.is_empty() { 0.0 } else { p_pbs },
        p_error_output: p_out,
        predicted_ms_per_sample: cost * count,
        p_error_target: p_error,
    })
}
