//! Key generation, encryption and decryption (the client's side), and the evaluation
//! keys the server receives.

use serde::{Deserialize, Serialize};
use tfhe::core_crypto::prelude::*;

use crate::params::CryptoParams;

pub type Ciphertext = LweCiphertextOwned<u64>;

/// The client's secret keys. Never leaves the client.
#[derive(Clone, Serialize, Deserialize)]
pub struct ClientKey {
    pub params: CryptoParams,
    /// The key bootstraps start from; `None` for leveled-only circuits.
    small: Option<LweSecretKeyOwned<u64>>,
    glwe: GlweSecretKeyOwned<u64>,
}

/// Evaluation keys: what the server needs to run a circuit, nothing that decrypts.
/// Stored seeded (compressed); `None` for circuits without bootstrap.
#[derive(Clone, Serialize, Deserialize)]
pub struct ServerKey {
    pub params: CryptoParams,
    pub(crate) keyswitch: Option<SeededLweKeyswitchKeyOwned<u64>>,
    pub(crate) bootstrap: Option<SeededLweBootstrapKeyOwned<u64>>,
}

impl ServerKey {
    /// Serialized size of the evaluation key in bytes (seeded form).
    pub fn size_bytes(&self) -> usize {
        self.keyswitch.as_ref().map_or(0, |k| k.as_ref().len() * 8)
            + self.bootstrap.as_ref().map_or(0, |b| b.as_ref().len() * 8)
    }
}

fn noise(std_dev: f64) -> Gaussian<f64> {
    Gaussian::from_dispersion_parameter(StandardDev(std_dev), 0.0)
}

/// Generates fresh keys for `params`; evaluation keys only when the circuit bootstraps.
pub fn generate_keys(params: &CryptoParams, needs_bootstrap: bool) -> (ClientKey, ServerKey) {
    let mut seeder = new_seeder();
    let seeder = seeder.as_mut();
    let mut secret_gen = SecretRandomGenerator::<DefaultRandomGenerator>::new(seeder.seed());
    let glwe = GlweSecretKey::generate_new_binary(
        GlweDimension(params.glwe_dimension),
        PolynomialSize(params.polynomial_size),
        &mut secret_gen,
    );
    let small = needs_bootstrap.then(|| {
        LweSecretKey::generate_new_binary(LweDimension(params.lwe_dimension), &mut secret_gen)
    });
    let (keyswitch, bootstrap) = if let Some(small) = &small {
        let big = glwe.clone().into_lwe_secret_key();
        let modulus = CiphertextModulus::new_native();
        let ksk = allocate_and_generate_new_seeded_lwe_keyswitch_key(
            &big,
            small,
            DecompositionBaseLog(params.ks_base_log),
            DecompositionLevelCount(params.ks_level),
            noise(params.lwe_std_dev()),
            modulus,
            seeder,
        );
        let bsk = par_allocate_and_generate_new_seeded_lwe_bootstrap_key(
            small,
            &glwe,
            DecompositionBaseLog(params.pbs_base_log),
            DecompositionLevelCount(params.pbs_level),
            noise(params.glwe_std_dev()),
            modulus,
            seeder,
        );
        (Some(ksk), Some(bsk))
    } else {
        (None, None)
    };
    (
        ClientKey {
            params: *params,
            small,
            glwe,
        },
        ServerKey {
            params: *params,
            keyswitch,
            bootstrap,
        },
    )
}

/// `Δ = 2^(63−W)`: integers live modulo 2^(W+1), one padding bit below the torus's top.
pub(crate) fn delta_shift(encoding_bits: u32) -> u32 {
    63 - encoding_bits
}

impl ClientKey {
    fn big_key(&self) -> LweSecretKey<&[u64]> {
        LweSecretKey::from_container(self.glwe.as_ref())
    }

    /// Encrypts integers (taken modulo 2^(W+1)) under the big key.
    pub fn encrypt(&self, values: &[i64], encoding_bits: u32) -> Vec<Ciphertext> {
        let mut seeder = new_seeder();
        let seeder = seeder.as_mut();
        let mut gen =
            EncryptionRandomGenerator::<DefaultRandomGenerator>::new(seeder.seed(), seeder);
        let key = self.big_key();
        let shift = delta_shift(encoding_bits);
        let dist = noise(self.params.glwe_std_dev());
        values
            .iter()
            .map(|&v| {
                let mut ct = LweCiphertext::new(
                    0u64,
                    key.lwe_dimension().to_lwe_size(),
                    CiphertextModulus::new_native(),
                );
                encrypt_lwe_ciphertext(
                    &key,
                    &mut ct,
                    Plaintext((v as u64) << shift),
                    dist,
                    &mut gen,
                );
                ct
            })
            .collect()
    }

    /// The raw phase (message plus noise) of a ciphertext, as a signed torus fraction of 2^64.
    pub fn phase(&self, ct: &Ciphertext) -> i64 {
        decrypt_lwe_ciphertext(&self.big_key(), ct).0 as i64
    }

    /// Decrypts and decodes to signed integers in `[−2^W, 2^W)`.
    pub fn decrypt(&self, cts: &[Ciphertext], encoding_bits: u32) -> Vec<i64> {
        let shift = delta_shift(encoding_bits);
        let modulus_bits = encoding_bits + 1;
        cts.iter()
            .map(|ct| {
                let p = decrypt_lwe_ciphertext(&self.big_key(), ct).0;
                let m =
                    (p.wrapping_add(1u64 << (shift - 1)) >> shift) & ((1u64 << modulus_bits) - 1);
                if m >= 1u64 << encoding_bits {
                    m as i64 - (1i64 << modulus_bits)
                } else {
                    m as i64
                }
            })
            .collect()
    }
}
