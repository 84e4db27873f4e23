//! Bootstrap-key generation with the mask × secret products taken in the Fourier domain.
//!
//! tfhe-rs encrypts each row of a bootstrap key with an exact 64-bit product of its mask
//! and the GLWE secret (Karatsuba), and those products are two thirds of key generation
//! (at N = 8192 about 3.5 ms each, one per row, (k+1)·ℓ rows per key bit). The secret is
//! binary, so the product can be taken exactly with the 64-bit float FFT tfhe-rs uses for
//! bootstraps: the mask is split into four signed 16-bit limbs; a limb times the secret
//! has coefficients below N·2^15 in magnitude (2^31 at N = 2^16), far inside an f64's
//! 53 bits, so the inverse transform rounds each to its exact integer, and the four
//! products recombine modulo 2^64.
//!
//! The masks are tfhe-rs's own, regenerated from the key's compression seed by tfhe-rs's
//! decompression: the server, which regenerates them the same way, reads exactly the
//! key tfhe-rs would have made with these bodies. The noise is drawn from tfhe-rs's
//! CSPRNG under fresh seeds from the OS, one per key bit.

use rayon::prelude::*;
use tfhe::core_crypto::commons::generators::MaskRandomGenerator;
use tfhe::core_crypto::commons::math::decomposition::DecompositionLevel;
use tfhe::core_crypto::commons::math::random::{RandomGenerator, Seed, Uniform};
use tfhe::core_crypto::fft_impl::fft64::math::fft::{Fft, FftView};
use tfhe::core_crypto::fft_impl::fft64::math::polynomial::FourierPolynomial;
use tfhe::core_crypto::fft_impl::fft64::{c64, ABox};
use tfhe::core_crypto::prelude::*;
use zeroize::Zeroize;

/// Limbs a 64-bit mask coefficient is split into, and their width.
const LIMBS: usize = 4;
const LIMB_BITS: u32 = 16;

/// Fills the bodies of `output` (whose compression seed fixes the masks): row `r < k` of
/// level `j` of key bit `i` encrypts `−s_i·S_r·q/B^j`, the last row `s_i·q/B^j`, as
/// tfhe-rs's `par_generate_seeded_lwe_bootstrap_key` does.
pub(crate) fn generate_seeded_bootstrap_key(
    input_key: &LweSecretKeyOwned<u64>,
    glwe_key: &GlweSecretKeyOwned<u64>,
    output: &mut SeededLweBootstrapKeyOwned<u64>,
    noise: Gaussian<f64>,
    seeder: &mut dyn Seeder,
    progress: &crate::Progress,
) {
    let big_n = output.polynomial_size();
    let fft = Fft::new(big_n);
    let fft = fft.as_view();
    let mut scratch = vec![
        0u8;
        fft.forward_scratch()
            .and(fft.backward_scratch())
            .unaligned_bytes_required()
    ];
    let mut secret: Vec<FourierPolynomial<_>> = glwe_key
        .as_polynomial_list()
        .iter()
        .map(|poly| {
            let mut f = FourierPolynomial::new(big_n);
            fft.forward_as_torus(
                f.as_mut_view(),
                poly,
                dyn_stack::PodStack::new(&mut scratch),
            );
            f
        })
        .collect();
    let seed = output.compression_seed();
    let per_key_bit = output
        .decompression_fork_config(Uniform)
        .mask_byte_count_per_child();
    let noise_seeds: Vec<Seed> = (0..input_key.lwe_dimension().0)
        .map(|_| seeder.seed())
        .collect();
    let (glwe_size, level_count, base_log, modulus) = (
        output.glwe_size(),
        output.decomposition_level_count(),
        output.decomposition_base_log(),
        output.ciphertext_modulus(),
    );
    output
        .par_iter_mut()
        .zip(input_key.as_ref().par_iter())
        .zip(noise_seeds.into_par_iter())
        .enumerate()
        .for_each_init(
            || {
                let full =
                    GgswCiphertext::new(0u64, glwe_size, big_n, base_log, level_count, modulus);
                (full, Workspace::new(fft, big_n.0))
            },
            |(full, ws), (i, ((mut seeded_ggsw, &key_bit), noise_seed))| {
                // the masks of key bit i: tfhe-rs's stream for this key, skipped to bit i
                let mut masks = MaskRandomGenerator::<DefaultRandomGenerator>::new(seed.clone());
                if i > 0 {
                    masks.skip(EncryptionMaskByteCount(i * per_key_bit.0));
                }
                decompress_seeded_ggsw_ciphertext_with_pre_seeded_generator(
                    full,
                    &seeded_ggsw.as_view(),
                    &mut masks,
                );
                let mut noise_gen = RandomGenerator::<DefaultRandomGenerator>::new(noise_seed);
                let last_row = glwe_size.0 - 1;
                for (matrix, (mut seeded_matrix, full_matrix)) in
                    seeded_ggsw.iter_mut().zip(full.iter()).enumerate()
                {
                    let factor = ggsw_encryption_multiplicative_factor(
                        modulus,
                        DecompositionLevel(level_count.0 - matrix),
                        base_log,
                        Cleartext(key_bit),
                    );
                    for (row, (mut seeded_row, full_row)) in seeded_matrix
                        .as_mut_seeded_glwe_list()
                        .iter_mut()
                        .zip(full_matrix.as_glwe_list().iter())
                        .enumerate()
                    {
                        let mut body = seeded_row.get_mut_body();
                        let body = body.as_mut();
                        if row < last_row {
                            let s = glwe_key.as_polynomial_list();
                            for (b, &s) in body.iter_mut().zip(s.get(row).as_ref()) {
                                *b = s.wrapping_mul(factor);
                            }
                        } else {
                            body.fill(0);
                            body[0] = factor.wrapping_neg();
                        }
                        noise_gen
                            .unsigned_integer_slice_wrapping_add_random_from_distribution_assign(
                                body, noise,
                            );
                        for (mask, secret) in
                            full_row.get_mask().as_polynomial_list().iter().zip(&secret)
                        {
                            ws.add_product(fft, body, mask.as_ref(), secret);
                        }
                    }
                }
                progress.add(1);
            },
        );
    // the secret in the Fourier domain, and what the FFT left in scratch
    secret.iter_mut().for_each(wipe);
    scratch.zeroize();
}

/// Overwrites a Fourier polynomial that held secret data.
fn wipe(f: &mut FourierPolynomial<ABox<[c64]>>) {
    for c in f.data.iter_mut() {
        c.re.zeroize();
        c.im.zeroize();
    }
}

/// The server's bootstrap key in the Fourier domain, straight from its seeded form: key
/// bit by key bit in parallel, each bit's masks regenerated from the seed (as
/// tfhe-rs's decompression does) and transformed at once, so the standard-domain key
/// (as large as the Fourier one) is never held whole.
pub(crate) fn fourier_bootstrap_key(
    seeded: &SeededLweBootstrapKeyOwned<u64>,
    progress: &crate::Progress,
) -> FourierLweBootstrapKeyOwned {
    let mut fourier = FourierLweBootstrapKey::new(
        seeded.input_lwe_dimension(),
        seeded.glwe_size(),
        seeded.polynomial_size(),
        seeded.decomposition_base_log(),
        seeded.decomposition_level_count(),
    );
    let fft = Fft::new(seeded.polynomial_size());
    let fft = fft.as_view();
    let seed = seeded.compression_seed();
    let per_key_bit = seeded
        .decompression_fork_config(Uniform)
        .mask_byte_count_per_child();
    let ggsws: Vec<_> = fourier.as_mut_view().into_ggsw_iter().collect();
    ggsws
        .into_par_iter()
        .zip(seeded.par_iter())
        .enumerate()
        .for_each_init(
            || {
                let full = GgswCiphertext::new(
                    0u64,
                    seeded.glwe_size(),
                    seeded.polynomial_size(),
                    seeded.decomposition_base_log(),
                    seeded.decomposition_level_count(),
                    seeded.ciphertext_modulus(),
                );
                let scratch = vec![0u8; fft.forward_scratch().unaligned_bytes_required()];
                (full, scratch)
            },
            |(full, scratch), (i, (fourier_ggsw, seeded_ggsw))| {
                let mut masks = MaskRandomGenerator::<DefaultRandomGenerator>::new(seed.clone());
                if i > 0 {
                    masks.skip(EncryptionMaskByteCount(i * per_key_bit.0));
                }
                decompress_seeded_ggsw_ciphertext_with_pre_seeded_generator(
                    full,
                    &seeded_ggsw,
                    &mut masks,
                );
                fourier_ggsw.fill_with_forward_fourier(
                    full.as_view(),
                    fft,
                    dyn_stack::PodStack::new(scratch),
                );
                progress.add(1);
            },
        );
    fourier
}

/// One worker's buffers for the products.
struct Workspace {
    limbs: [Vec<u64>; LIMBS],
    product: Vec<u64>,
    fourier: FourierPolynomial<ABox<[c64]>>,
    scratch: Vec<u8>,
}

impl Drop for Workspace {
    /// The products are mask × secret: with the public body they would give the key.
    fn drop(&mut self) {
        self.product.zeroize();
        wipe(&mut self.fourier);
        self.scratch.zeroize();
    }
}

impl Workspace {
    fn new(fft: FftView<'_>, big_n: usize) -> Self {
        Workspace {
            limbs: std::array::from_fn(|_| vec![0; big_n]),
            product: vec![0; big_n],
            fourier: FourierPolynomial::new(PolynomialSize(big_n)),
            scratch: vec![
                0u8;
                fft.forward_scratch()
                    .and(fft.backward_scratch())
                    .unaligned_bytes_required()
            ],
        }
    }

    /// `body += mask · secret` in Z_2^64[X]/(X^N + 1), exactly (`secret` binary, in the
    /// Fourier domain as a torus polynomial scaled by 2^-64).
    fn add_product(
        &mut self,
        fft: FftView<'_>,
        body: &mut [u64],
        mask: &[u64],
        secret: &FourierPolynomial<ABox<[c64]>>,
    ) {
        split_limbs(mask, &mut self.limbs);
        for (l, limb) in self.limbs.iter().enumerate() {
            fft.forward_as_integer(
                self.fourier.as_mut_view(),
                PolynomialView::from_container(limb.as_slice()),
                dyn_stack::PodStack::new(&mut self.scratch),
            );
            for (a, b) in self.fourier.data.iter_mut().zip(secret.data.iter()) {
                *a *= *b;
            }
            fft.backward_as_torus(
                PolynomialMutView::from_container(self.product.as_mut_slice()),
                self.fourier.as_view(),
                dyn_stack::PodStack::new(&mut self.scratch),
            );
            let shift = LIMB_BITS * l as u32;
            for (b, &p) in body.iter_mut().zip(&self.product) {
                *b = b.wrapping_add(p << shift);
            }
        }
    }
}

/// `v = Σ_l limb_l · 2^(16 l) mod 2^64` with every limb in `[−2^15, 2^15)` (stored as
/// two's complement `u64`, which the FFT reads as signed).
fn split_limbs(values: &[u64], limbs: &mut [Vec<u64>; LIMBS]) {
    let half = 1i64 << (LIMB_BITS - 1);
    for (j, &v) in values.iter().enumerate() {
        let mut carry = 0i64;
        for (l, limb) in limbs.iter_mut().enumerate() {
            let digit = ((v >> (LIMB_BITS * l as u32)) & 0xFFFF) as i64 + carry;
            let (value, next) = if digit >= half {
                (digit - (1 << LIMB_BITS), 1)
            } else {
                (digit, 0)
            };
            limb[j] = value as u64;
            carry = next;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same key as tfhe-rs makes for the same compression seed: identical masks, and
    /// bodies that differ only by the two keys' independent noise (the FFT's products are
    /// exact up to the largest polynomial fhec chooses).
    #[test]
    fn the_key_is_tfhe_rs_key_up_to_noise() {
        for (n, big_n, levels) in [(6, 1024, 3), (2, 65536, 1)] {
            same_key_as_tfhe_rs(n, big_n, levels);
        }
    }

    /// The streamed preparation gives the Fourier key tfhe-rs's decompression and
    /// conversion give.
    #[test]
    fn the_fourier_key_is_tfhe_rs_conversion() {
        let mut seeder = new_seeder();
        let seeder = seeder.as_mut();
        let mut secret_gen = SecretRandomGenerator::<DefaultRandomGenerator>::new(seeder.seed());
        let (n, big_n, levels) = (5, 2048, 2);
        let lwe = LweSecretKey::generate_new_binary(LweDimension(n), &mut secret_gen);
        let glwe = GlweSecretKey::generate_new_binary(
            GlweDimension(1),
            PolynomialSize(big_n),
            &mut secret_gen,
        );
        let mut seeded = SeededLweBootstrapKey::new(
            0u64,
            GlweSize(2),
            PolynomialSize(big_n),
            DecompositionBaseLog(12),
            DecompositionLevelCount(levels),
            LweDimension(n),
            tfhe::core_crypto::commons::math::random::CompressionSeed::from(Seed(77)),
            CiphertextModulus::new_native(),
        );
        let noise = Gaussian::from_dispersion_parameter(StandardDev(2f64.powi(-50)), 0.0);
        generate_seeded_bootstrap_key(
            &lwe,
            &glwe,
            &mut seeded,
            noise,
            seeder,
            &crate::Progress::none(),
        );
        let ours = fourier_bootstrap_key(&seeded, &crate::Progress::none());
        let standard = seeded.clone().decompress_into_lwe_bootstrap_key();
        let mut theirs = FourierLweBootstrapKey::new(
            standard.input_lwe_dimension(),
            standard.glwe_size(),
            standard.polynomial_size(),
            standard.decomposition_base_log(),
            standard.decomposition_level_count(),
        );
        par_convert_standard_lwe_bootstrap_key_to_fourier(&standard, &mut theirs);
        assert!(ours.as_view().data() == theirs.as_view().data());
    }

    fn same_key_as_tfhe_rs(n: usize, big_n: usize, levels: usize) {
        let mut seeder = new_seeder();
        let seeder = seeder.as_mut();
        let mut secret_gen = SecretRandomGenerator::<DefaultRandomGenerator>::new(seeder.seed());
        let lwe = LweSecretKey::generate_new_binary(LweDimension(n), &mut secret_gen);
        let glwe = GlweSecretKey::generate_new_binary(
            GlweDimension(1),
            PolynomialSize(big_n),
            &mut secret_gen,
        );
        let std = 2f64.powi(-40);
        let noise = Gaussian::from_dispersion_parameter(StandardDev(std), 0.0);
        let seed = tfhe::core_crypto::commons::math::random::CompressionSeed::from(Seed(
            0x5eed_1234_5678_9abc_def0_1122_3344_5566,
        ));
        let new_key = || {
            SeededLweBootstrapKey::new(
                0u64,
                GlweSize(2),
                PolynomialSize(big_n),
                DecompositionBaseLog(10),
                DecompositionLevelCount(levels),
                LweDimension(n),
                seed.clone(),
                CiphertextModulus::new_native(),
            )
        };
        let mut ours = new_key();
        generate_seeded_bootstrap_key(
            &lwe,
            &glwe,
            &mut ours,
            noise,
            seeder,
            &crate::Progress::none(),
        );
        let mut theirs = new_key();
        par_generate_seeded_lwe_bootstrap_key(&lwe, &glwe, &mut theirs, noise, seeder);
        let ours = ours.decompress_into_lwe_bootstrap_key();
        let theirs = theirs.decompress_into_lwe_bootstrap_key();
        let bound = (12.0 * std * 2f64.powi(64)) as i64;
        let row = 2 * big_n;
        for (r, (a, b)) in ours
            .as_ref()
            .chunks(row)
            .zip(theirs.as_ref().chunks(row))
            .enumerate()
        {
            assert_eq!(a[..big_n], b[..big_n], "row {r}: masks differ");
            for (j, (x, y)) in a[big_n..].iter().zip(&b[big_n..]).enumerate() {
                let d = x.wrapping_sub(*y) as i64;
                assert!(
                    d.abs() < bound,
                    "row {r} coefficient {j}: bodies differ by {d}"
                );
            }
        }
    }

    #[test]
    fn limbs_recombine_to_the_value() {
        let values = [
            0u64,
            1,
            u64::MAX,
            1 << 63,
            0x7FFF,
            0x8000,
            0xFFFF_8000_7FFF_8000,
            12345678901234567,
        ];
        let mut limbs: [Vec<u64>; LIMBS] = std::array::from_fn(|_| vec![0; values.len()]);
        split_limbs(&values, &mut limbs);
        for (j, &v) in values.iter().enumerate() {
            let mut sum = 0u64;
            for (l, limb) in limbs.iter().enumerate() {
                let x = limb[j] as i64;
                assert!((-(1 << 15)..(1 << 15)).contains(&x), "{v:#x} limb {l}: {x}");
                sum = sum.wrapping_add((x as u64) << (16 * l));
            }
            assert_eq!(sum, v);
        }
    }
}
