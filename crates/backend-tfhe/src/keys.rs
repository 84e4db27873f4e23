//! Key generation, encryption and decryption (the client's side), and the evaluation
//! keys the server receives.
//!
//! Key sharing: the client holds one binary *master* LWE key. Fresh inputs are encrypted
//! under its prefix of `input_dimension`; partition p's GLWE key (k = 1) is its prefix
//! of N_p coefficients, so a bootstrap output of partition p is an LWE ciphertext under
//! the master key's first N_p coefficients. Ciphertexts under different prefixes add up
//! as they are (the shorter mask is zero beyond its length): no conversion key switch.
//! Each partition has its own small LWE key, key-switching key (from the master prefix
//! its inputs span) and bootstrap key.

use serde::{Deserialize, Serialize};
use tfhe::core_crypto::prelude::*;

use crate::params::KeyParams;

pub type Ciphertext = LweCiphertextOwned<u64>;

/// The client's secret keys. Never leaves the client.
#[derive(Clone, Serialize, Deserialize)]
pub struct ClientKey {
    pub params: KeyParams,
    master: LweSecretKeyOwned<u64>,
    /// One small key per partition (where its bootstraps start).
    small: Vec<LweSecretKeyOwned<u64>>,
}

/// One partition's evaluation keys, stored seeded (compressed).
#[derive(Clone, Serialize, Deserialize)]
pub(crate) struct PartitionKey {
    pub(crate) keyswitch: SeededLweKeyswitchKeyOwned<u64>,
    pub(crate) bootstrap: SeededLweBootstrapKeyOwned<u64>,
}

/// Evaluation keys: what the server needs to run a circuit, nothing that decrypts.
/// Empty for circuits without bootstrap.
#[derive(Clone, Serialize, Deserialize)]
pub struct ServerKey {
    pub params: KeyParams,
    pub(crate) partitions: Vec<PartitionKey>,
}

impl ServerKey {
    /// Serialized size of the evaluation keys in bytes (seeded form).
    pub fn size_bytes(&self) -> usize {
        self.partitions
            .iter()
            .map(|k| (k.keyswitch.as_ref().len() + k.bootstrap.as_ref().len()) * 8)
            .sum()
    }
}

fn noise(std_dev: f64) -> Gaussian<f64> {
    Gaussian::from_dispersion_parameter(StandardDev(std_dev), 0.0)
}

/// Partition p's GLWE secret key: the master key's first k·N coefficients.
fn partition_glwe_key(
    master: &LweSecretKeyOwned<u64>,
    k: usize,
    big_n: usize,
) -> GlweSecretKeyOwned<u64> {
    GlweSecretKey::from_container(master.as_ref()[..k * big_n].to_vec(), PolynomialSize(big_n))
}

/// Generates fresh keys; evaluation keys for every partition.
pub fn generate_keys(params: &KeyParams) -> (ClientKey, ServerKey) {
    let mut seeder = new_seeder();
    let seeder = seeder.as_mut();
    let mut secret_gen = SecretRandomGenerator::<DefaultRandomGenerator>::new(seeder.seed());
    let master =
        LweSecretKey::generate_new_binary(LweDimension(params.master_dimension()), &mut secret_gen);
    let modulus = CiphertextModulus::new_native();
    let mut small = Vec::new();
    let mut partitions = Vec::new();
    for part in &params.partitions {
        let (p, ks_dim) = (part.params, part.ks_input_dimension);
        let s = LweSecretKey::generate_new_binary(LweDimension(p.lwe_dimension), &mut secret_gen);
        let glwe = partition_glwe_key(&master, p.glwe_dimension, p.polynomial_size);
        let ks_input = LweSecretKey::from_container(&master.as_ref()[..ks_dim]);
        let keyswitch = allocate_and_generate_new_seeded_lwe_keyswitch_key(
            &ks_input,
            &s,
            DecompositionBaseLog(p.ks_base_log),
            DecompositionLevelCount(p.ks_level),
            noise(p.lwe_std_dev()),
            modulus,
            seeder,
        );
        let bootstrap = par_allocate_and_generate_new_seeded_lwe_bootstrap_key(
            &s,
            &glwe,
            DecompositionBaseLog(p.pbs_base_log),
            DecompositionLevelCount(p.pbs_level),
            noise(p.glwe_std_dev()),
            modulus,
            seeder,
        );
        small.push(s);
        partitions.push(PartitionKey {
            keyswitch,
            bootstrap,
        });
    }
    (
        ClientKey {
            params: params.clone(),
            master,
            small,
        },
        ServerKey {
            params: params.clone(),
            partitions,
        },
    )
}

/// `Δ = 2^(63−W)`: integers live modulo 2^(W+1), one padding bit below the torus's top.
pub(crate) fn delta_shift(encoding_bits: u32) -> u32 {
    63 - encoding_bits
}

impl ClientKey {
    /// The master-key prefix a ciphertext of this size is under.
    fn key_for(&self, ct: &Ciphertext) -> LweSecretKey<&[u64]> {
        LweSecretKey::from_container(&self.master.as_ref()[..ct.lwe_size().to_lwe_dimension().0])
    }

    /// Partition p's small key (noise measurements read phases under it).
    pub fn small_key(&self, partition: usize) -> &LweSecretKeyOwned<u64> {
        &self.small[partition]
    }

    /// Encrypts integers (taken modulo 2^(W+1)) under the input key prefix, with the
    /// smallest noise the security curve allows for its dimension.
    pub fn encrypt(&self, values: &[i64], encoding_bits: u32) -> Vec<Ciphertext> {
        let mut seeder = new_seeder();
        let seeder = seeder.as_mut();
        let mut gen =
            EncryptionRandomGenerator::<DefaultRandomGenerator>::new(seeder.seed(), seeder);
        let dim = self.params.input_dimension;
        let key = LweSecretKey::from_container(&self.master.as_ref()[..dim]);
        let shift = delta_shift(encoding_bits);
        let dist = noise(crate::noise::security_std_dev(dim));
        values
            .iter()
            .map(|&v| {
                let mut ct =
                    LweCiphertext::new(0u64, LweSize(dim + 1), CiphertextModulus::new_native());
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
        decrypt_lwe_ciphertext(&self.key_for(ct), ct).0 as i64
    }

    /// Decrypts and decodes to signed integers in `[−2^W, 2^W)`.
    pub fn decrypt(&self, cts: &[Ciphertext], encoding_bits: u32) -> Vec<i64> {
        let shift = delta_shift(encoding_bits);
        let modulus_bits = encoding_bits + 1;
        cts.iter()
            .map(|ct| {
                let p = decrypt_lwe_ciphertext(&self.key_for(ct), ct).0;
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
