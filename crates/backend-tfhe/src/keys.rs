//! Key generation, encryption and decryption (the client's side), the evaluation keys
//! the server receives, and the plain-data forms all of them travel in.
//!
//! Key sharing: the client holds one binary *master* LWE key. Fresh inputs are encrypted
//! under its prefix of `input_dimension`; partition p's GLWE key (k = 1) is its prefix
//! of N_p coefficients, so a bootstrap output of partition p is an LWE ciphertext under
//! the master key's first N_p coefficients. Ciphertexts under different prefixes add up
//! as they are (the shorter mask is zero beyond its length): no conversion key switch.
//! Each partition has its own small LWE key, key-switching key (from the master prefix
//! its inputs span) and bootstrap key.
//!
//! Everything random that is public travels as a seed: the masks of fresh inputs and of
//! every evaluation-key row are drawn from a CSPRNG seeded by a 128-bit value the
//! client draws from the OS, so only bodies and seeds cross the wire and the server
//! regenerates the masks.

use tfhe::core_crypto::commons::math::random::{CompressionSeed, Seed};
use tfhe::core_crypto::prelude::*;
use zeroize::{Zeroize, Zeroizing};

use crate::params::KeyParams;
use crate::BackendError;

pub type Ciphertext = LweCiphertextOwned<u64>;

/// The client's secret keys. Never leaves the client; wiped from memory when dropped.
#[derive(Clone)]
pub struct ClientKey {
    pub params: KeyParams,
    master: LweSecretKeyOwned<u64>,
    /// One small key per partition (where its bootstraps start).
    small: Vec<LweSecretKeyOwned<u64>>,
}

impl Drop for ClientKey {
    fn drop(&mut self) {
        self.master.as_mut().zeroize();
        for s in &mut self.small {
            s.as_mut().zeroize();
        }
    }
}

/// One partition's evaluation keys, stored seeded (compressed).
#[derive(Clone)]
pub(crate) struct PartitionKey {
    pub(crate) keyswitch: SeededLweKeyswitchKeyOwned<u64>,
    pub(crate) keyswitch_seed: u128,
    pub(crate) bootstrap: SeededLweBootstrapKeyOwned<u64>,
    pub(crate) bootstrap_seed: u128,
}

/// Evaluation keys: what the server needs to run a circuit, nothing that decrypts.
/// Empty for circuits without bootstrap.
#[derive(Clone)]
pub struct ServerKey {
    pub params: KeyParams,
    pub(crate) partitions: Vec<PartitionKey>,
}

/// One partition's evaluation keys as plain data: the seed of every mask and the
/// bodies, in tfhe-rs's container order (key switch: per input-key coefficient, per
/// level; bootstrap: per small-key coefficient, per GGSW row, per level, N coefficients).
#[derive(Clone, Debug, PartialEq)]
pub struct RawPartitionKey {
    pub keyswitch_seed: u128,
    pub keyswitch: Vec<u64>,
    pub bootstrap_seed: u128,
    pub bootstrap: Vec<u64>,
}

/// The fresh encryptions of one sample's input integers, seeded: the masks are the
/// CSPRNG stream of `seed`, one `u64` body per integer.
#[derive(Clone, Debug, PartialEq)]
pub struct SeededInputs {
    pub seed: u128,
    pub bodies: Vec<u64>,
}

impl ServerKey {
    /// Serialized size of the evaluation keys in bytes (seeded form, bootstrap-key
    /// bodies at their rounded width).
    pub fn size_bytes(&self) -> usize {
        self.params.partitions.iter().map(raw_key_bytes).sum()
    }

    /// The keys as plain data, borrowed: per partition, the key-switching key's seed
    /// and bodies, then the bootstrap key's.
    pub fn raw_parts(&self) -> Vec<(u128, &[u64], u128, &[u64])> {
        self.partitions
            .iter()
            .map(|k| {
                (
                    k.keyswitch_seed,
                    k.keyswitch.as_ref(),
                    k.bootstrap_seed,
                    k.bootstrap.as_ref(),
                )
            })
            .collect()
    }

    /// Rebuilds evaluation keys for `params` from plain data, checking every length.
    pub fn from_raw(params: &KeyParams, raw: Vec<RawPartitionKey>) -> Result<Self, BackendError> {
        if raw.len() != params.partitions.len() {
            return Err(BackendError::Keys(format!(
                "{} partition keys for {} partitions",
                raw.len(),
                params.partitions.len()
            )));
        }
        let modulus = CiphertextModulus::new_native();
        let partitions = raw
            .into_iter()
            .zip(&params.partitions)
            .enumerate()
            .map(|(i, (r, part))| {
                let p = part.params;
                let (ks_len, bsk_len) = raw_key_lengths(part);
                if r.keyswitch.len() != ks_len || r.bootstrap.len() != bsk_len {
                    return Err(BackendError::Keys(format!(
                        "partition {i}: key-switching key of {} values and bootstrap key of {} values, its parameters need {ks_len} and {bsk_len}",
                        r.keyswitch.len(),
                        r.bootstrap.len()
                    )));
                }
                Ok(PartitionKey {
                    keyswitch: SeededLweKeyswitchKey::from_container(
                        r.keyswitch,
                        DecompositionBaseLog(p.ks_base_log),
                        DecompositionLevelCount(p.ks_level),
                        LweSize(p.lwe_dimension + 1),
                        compression_seed(r.keyswitch_seed),
                        modulus,
                    ),
                    keyswitch_seed: r.keyswitch_seed,
                    bootstrap: SeededLweBootstrapKey::from_container(
                        r.bootstrap,
                        GlweSize(p.glwe_dimension + 1),
                        PolynomialSize(p.polynomial_size),
                        DecompositionBaseLog(p.pbs_base_log),
                        DecompositionLevelCount(p.pbs_level),
                        compression_seed(r.bootstrap_seed),
                        modulus,
                    ),
                    bootstrap_seed: r.bootstrap_seed,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(ServerKey {
            params: params.clone(),
            partitions,
        })
    }
}

/// Rounds each value to its `bits` most significant bits (the low bits become zero):
/// the bootstrap key's bodies as they travel (`CryptoParams::bsk_body_bits`).
fn round_bodies(values: &mut [u64], bits: u32) {
    if bits >= 64 {
        return;
    }
    let drop = 64 - bits;
    let low = (1u64 << drop) - 1;
    for v in values {
        *v = v.wrapping_add(1u64 << (drop - 1)) & !low;
    }
}

/// Lengths (in `u64`) of one partition's seeded key-switching and bootstrap keys.
pub fn raw_key_lengths(part: &crate::PartitionKeyParams) -> (usize, usize) {
    let p = part.params;
    (
        part.ks_input_dimension * p.ks_level,
        p.lwe_dimension * (p.glwe_dimension + 1) * p.pbs_level * p.polynomial_size,
    )
}

/// Bytes of one partition's seeded keys on the wire: 64-bit key-switching bodies,
/// bootstrap bodies at `bsk_body_bits`.
pub fn raw_key_bytes(part: &crate::PartitionKeyParams) -> usize {
    let (ks, bsk) = raw_key_lengths(part);
    ks * 8 + (bsk * part.params.bsk_body_bits as usize).div_ceil(8)
}

fn compression_seed(seed: u128) -> CompressionSeed {
    CompressionSeed::from(Seed(seed))
}

/// 128 fresh random bits from the operating system's entropy source.
pub fn random_u128() -> u128 {
    fresh_seed()
}

fn fresh_seed() -> u128 {
    new_seeder().seed().0
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

/// Generates fresh keys; evaluation keys for every partition. `params` must have passed
/// [`KeyParams::check`].
pub fn generate_keys(params: &KeyParams) -> (ClientKey, ServerKey) {
    generate_keys_with_progress(params, &|_, _| {})
}

/// Bootstrap-key bits of a key set: the units key generation and preparation report.
pub fn bootstrap_key_bits(params: &KeyParams) -> usize {
    params
        .partitions
        .iter()
        .map(|p| p.params.lwe_dimension)
        .sum()
}

/// [`generate_keys`], reporting `(bootstrap-key bits done, total)` as it goes.
pub fn generate_keys_with_progress(
    params: &KeyParams,
    report: &(dyn Fn(usize, usize) + Sync),
) -> (ClientKey, ServerKey) {
    let progress = crate::Progress::new(bootstrap_key_bits(params), report);
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
        let mut glwe = partition_glwe_key(&master, p.glwe_dimension, p.polynomial_size);
        let ks_input = LweSecretKey::from_container(&master.as_ref()[..ks_dim]);
        let keyswitch_seed = fresh_seed();
        let mut keyswitch = SeededLweKeyswitchKey::new(
            0u64,
            DecompositionBaseLog(p.ks_base_log),
            DecompositionLevelCount(p.ks_level),
            LweDimension(ks_dim),
            LweDimension(p.lwe_dimension),
            compression_seed(keyswitch_seed),
            modulus,
        );
        generate_seeded_lwe_keyswitch_key(
            &ks_input,
            &s,
            &mut keyswitch,
            noise(p.lwe_std_dev()),
            seeder,
        );
        let bootstrap_seed = fresh_seed();
        let mut bootstrap = SeededLweBootstrapKey::new(
            0u64,
            GlweSize(p.glwe_dimension + 1),
            PolynomialSize(p.polynomial_size),
            DecompositionBaseLog(p.pbs_base_log),
            DecompositionLevelCount(p.pbs_level),
            LweDimension(p.lwe_dimension),
            compression_seed(bootstrap_seed),
            modulus,
        );
        crate::bsk::generate_seeded_bootstrap_key(
            &s,
            &glwe,
            &mut bootstrap,
            noise(p.glwe_std_dev()),
            seeder,
            &progress,
        );
        // the GLWE key is a copy of the master key's prefix
        glwe.as_mut().zeroize();
        round_bodies(bootstrap.as_mut(), p.bsk_body_bits);
        small.push(s);
        partitions.push(PartitionKey {
            keyswitch,
            keyswitch_seed,
            bootstrap,
            bootstrap_seed,
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

/// The server's side of [`ClientKey::encrypt_seeded`]: the full ciphertexts, masks
/// regenerated from the seed, under the master key's prefix of `input_dimension`.
pub fn expand_inputs(input_dimension: usize, inputs: &SeededInputs) -> Vec<Ciphertext> {
    if inputs.bodies.is_empty() {
        return Vec::new();
    }
    let list = SeededLweCiphertextList::from_container(
        inputs.bodies.clone(),
        LweSize(input_dimension + 1),
        compression_seed(inputs.seed),
        CiphertextModulus::new_native(),
    )
    .decompress_into_lwe_ciphertext_list();
    list.iter()
        .map(|ct| LweCiphertext::from_container(ct.as_ref().to_vec(), ct.ciphertext_modulus()))
        .collect()
}

/// Rounds every coefficient (mask, then body) of an output ciphertext to its `bits` most
/// significant bits: the modulus switch to 2^bits that shrinks outputs on the wire.
/// Returns values below 2^bits.
pub fn compress_output(ct: &Ciphertext, bits: u32) -> Vec<u64> {
    let drop = 64 - bits;
    ct.as_ref()
        .iter()
        .map(|&c| {
            if drop == 0 {
                c
            } else {
                // a value that rounds up to 2^bits wraps to 0, as it does modulo 2^bits
                c.wrapping_add(1u64 << (drop - 1)) >> drop
            }
        })
        .collect()
}

/// The ciphertext of [`compress_output`]'s values (at least a body; `bits` ≥ 1).
pub fn decompress_output(values: &[u64], bits: u32) -> Ciphertext {
    let drop = 64 - bits;
    let container: Vec<u64> = values.iter().map(|&v| v.wrapping_shl(drop)).collect();
    LweCiphertext::from_container(container, CiphertextModulus::new_native())
}

impl ClientKey {
    /// The master-key prefix a ciphertext of this size is under.
    fn key_for(&self, ct: &Ciphertext) -> Result<LweSecretKey<&[u64]>, BackendError> {
        let dim = ct.lwe_size().to_lwe_dimension().0;
        self.master
            .as_ref()
            .get(..dim)
            .map(LweSecretKey::from_container)
            .ok_or_else(|| {
                BackendError::Input(format!(
                    "a ciphertext of dimension {dim}, longer than the {}-dimensional key",
                    self.master.lwe_dimension().0
                ))
            })
    }

    /// Partition p's small key (noise measurements read phases under it).
    pub fn small_key(&self, partition: usize) -> &LweSecretKeyOwned<u64> {
        &self.small[partition]
    }

    /// The secret keys as plain data: the master key, then each partition's small key,
    /// one 0/1 value per coefficient (wiped when dropped).
    pub fn to_raw(&self) -> Zeroizing<Vec<Vec<u64>>> {
        Zeroizing::new(
            std::iter::once(&self.master)
                .chain(&self.small)
                .map(|k| k.as_ref().to_vec())
                .collect(),
        )
    }

    /// Rebuilds secret keys for `params` from [`to_raw`](Self::to_raw)'s form, checking
    /// lengths and that every coefficient is binary. What is refused is wiped.
    pub fn from_raw(params: &KeyParams, raw: Vec<Vec<u64>>) -> Result<Self, BackendError> {
        let mut raw = Zeroizing::new(raw);
        let expected: Vec<usize> = std::iter::once(params.master_dimension())
            .chain(params.partitions.iter().map(|p| p.params.lwe_dimension))
            .collect();
        let lengths: Vec<usize> = raw.iter().map(Vec::len).collect();
        if lengths != expected {
            return Err(BackendError::Keys(format!(
                "secret keys of dimensions {lengths:?}, the parameters need {expected:?}"
            )));
        }
        if raw.iter().flatten().any(|&b| b > 1) {
            return Err(BackendError::Keys("a secret key is not binary".into()));
        }
        let mut keys = std::mem::take(&mut *raw)
            .into_iter()
            .map(LweSecretKey::from_container);
        let Some(master) = keys.next() else {
            return Err(BackendError::Keys("no master secret key".into()));
        };
        Ok(ClientKey {
            params: params.clone(),
            master,
            small: keys.collect(),
        })
    }

    /// Encrypts integers (taken modulo 2^(W+1)) under the input key prefix, with the
    /// smallest noise the security curve allows for its dimension.
    pub fn encrypt(&self, values: &[i64], encoding_bits: u32) -> Vec<Ciphertext> {
        expand_inputs(
            self.params.input_dimension,
            &self.encrypt_seeded(values, encoding_bits),
        )
    }

    /// [`encrypt`](Self::encrypt) in seeded form: masks from a fresh public seed, one
    /// body per integer. [`expand_inputs`] gives the ciphertexts back.
    pub fn encrypt_seeded(&self, values: &[i64], encoding_bits: u32) -> SeededInputs {
        let dim = self.params.input_dimension;
        let seed = fresh_seed();
        if values.is_empty() {
            return SeededInputs {
                seed,
                bodies: Vec::new(),
            };
        }
        let mut noise_seeder = new_seeder();
        let key = LweSecretKey::from_container(&self.master.as_ref()[..dim]);
        let shift = delta_shift(encoding_bits);
        let plaintexts: Vec<u64> = values.iter().map(|&v| (v as u64) << shift).collect();
        let mut list = SeededLweCiphertextList::new(
            0u64,
            LweSize(dim + 1),
            LweCiphertextCount(values.len()),
            compression_seed(seed),
            CiphertextModulus::new_native(),
        );
        encrypt_seeded_lwe_ciphertext_list(
            &key,
            &mut list,
            &PlaintextList::from_container(plaintexts),
            noise(crate::noise::security_std_dev(dim)),
            noise_seeder.as_mut(),
        );
        SeededInputs {
            seed,
            bodies: list.into_container(),
        }
    }

    /// The raw phase (message plus noise) of a ciphertext, as a signed torus fraction of 2^64.
    pub fn phase(&self, ct: &Ciphertext) -> Result<i64, BackendError> {
        Ok(decrypt_lwe_ciphertext(&self.key_for(ct)?, ct).0 as i64)
    }

    /// Decrypts and decodes to signed integers in `[−2^W, 2^W)`.
    pub fn decrypt(
        &self,
        cts: &[Ciphertext],
        encoding_bits: u32,
    ) -> Result<Vec<i64>, BackendError> {
        let shift = delta_shift(encoding_bits);
        let modulus_bits = encoding_bits + 1;
        cts.iter()
            .map(|ct| {
                let p = decrypt_lwe_ciphertext(&self.key_for(ct)?, ct).0;
                let m =
                    (p.wrapping_add(1u64 << (shift - 1)) >> shift) & ((1u64 << modulus_bits) - 1);
                Ok(if m >= 1u64 << encoding_bits {
                    m as i64 - (1i64 << modulus_bits)
                } else {
                    m as i64
                })
            })
            .collect()
    }
}
