//! 128-bit security of what the parameter search can emit (docs/PARAMETERS.md, "Security
//! model"): its noise never falls below the security curve for the key's dimension, and
//! the curve is at least as noisy as independently published 128-bit parameter sets.

use fhec_backend_tfhe::noise::{security_std_dev, MIN_SECURE_DIMENSION};
use fhec_backend_tfhe::{CryptoParams, KeyParams, PartitionKeyParams};

/// 128-bit parameter sets published with tfhe-rs 0.x (the classic shortint
/// `PARAM_MESSAGE_2_CARRY_2`, Gaussian noise, binary keys, q = 2^64): the LWE key
/// (n = 742) and the GLWE key (k·N = 2048) with their standard deviations as fractions
/// of the torus. They were derived with the lattice estimator independently of the curve.
const PUBLISHED: &[(usize, f64)] = &[
    (742, 7.069_849_454_709_433e-6),
    (2048, 2.940_360_153_543_253_3e-16),
];

#[test]
fn the_curve_is_at_least_as_noisy_as_published_128_bit_sets() {
    for &(d, sigma) in PUBLISHED {
        assert!(
            security_std_dev(d) >= sigma,
            "dimension {d}: the curve gives σ = 2^{:.2}, a published 128-bit set uses 2^{:.2}",
            security_std_dev(d).log2(),
            sigma.log2()
        );
    }
}

/// The search's whole space (`PartitionTable::build`: n from 450 to 1200 by 8, k ∈ {1, 2},
/// N a power of two with 512 ≤ k·N ≤ 2^16): every key's noise is the curve's for its
/// dimension, the curve never gets less noisy as the dimension shrinks, and the key
/// parameters pass the check every loaded artifact goes through.
#[test]
fn every_parameter_set_the_search_can_emit_is_on_the_curve() {
    let mut checked = 0;
    for n in (MIN_SECURE_DIMENSION..=1200).step_by(8) {
        for k in 1..=2usize {
            for log_n in 8..=16u32 {
                let big_n = 1usize << log_n;
                if k * big_n < 512 || k * big_n > 1 << 16 {
                    continue;
                }
                let p = CryptoParams::new(n, k, big_n, (10, 2), (3, 5));
                assert_eq!(p.lwe_std_dev(), security_std_dev(n));
                assert_eq!(p.glwe_std_dev(), security_std_dev(k * big_n));
                assert!(security_std_dev(n) >= security_std_dev(n + 8));
                let keys = KeyParams {
                    input_dimension: k * big_n,
                    partitions: vec![PartitionKeyParams {
                        precision: 4,
                        params: p,
                        ks_input_dimension: k * big_n,
                    }],
                };
                keys.check()
                    .unwrap_or_else(|e| panic!("n={n} k={k} N={big_n}: {e}"));
                checked += 1;
            }
        }
    }
    assert!(checked > 1000, "{checked} parameter sets");
    // below the curve's validity no dimension is accepted
    let mut small = KeyParams {
        input_dimension: MIN_SECURE_DIMENSION - 16,
        partitions: Vec::new(),
    };
    assert!(small.check().is_err());
    small.input_dimension = MIN_SECURE_DIMENSION.next_multiple_of(16);
    assert!(small.check().is_ok());
}
