//! Prepared evaluation keys as bytes: what a server stores next to a registered key so
//! that the key is decompressed and converted to the Fourier domain once per key, not
//! once per process (docs/DEPLOYMENT.md). Per partition, in order: the key-switching
//! key (little-endian `u64`s in tfhe-rs's container order), then the Fourier bootstrap
//! key's coefficients (little-endian `f64` real and imaginary parts), each polynomial's
//! in canonical order. Shapes come from the key parameters, so the bytes carry nothing
//! else. The canonical order matters: tfhe-rs picks its FFT plan by timing it, and the
//! plan decides in which order a polynomial's Fourier coefficients sit in memory, so raw
//! coefficients written by one process are garbage to another whose plan differs.
//! [`canonical_order`] reads this process's order off tfhe-rs's own serialization (which
//! writes the canonical order). A CRC-32 of the bytes, computed while they stream, lets
//! the caller catch a damaged file.

use std::io::{Read, Write};

use tfhe::core_crypto::fft_impl::fft64::c64;
use tfhe::core_crypto::fft_impl::fft64::math::fft::Fft;
use tfhe::core_crypto::prelude::*;

use fhec_ir::{Circuit, CircuitInfo};

use crate::engine::{Evaluator, PartitionEval};
use crate::{BackendError, KeyParams, PartitionKeyParams};

/// Values moved per read or write call.
const CHUNK: usize = 1 << 16;

fn empty_keyswitch(part: &PartitionKeyParams) -> LweKeyswitchKeyOwned<u64> {
    let p = part.params;
    LweKeyswitchKey::new(
        0u64,
        DecompositionBaseLog(p.ks_base_log),
        DecompositionLevelCount(p.ks_level),
        LweDimension(part.ks_input_dimension),
        LweDimension(p.lwe_dimension),
        CiphertextModulus::new_native(),
    )
}

/// Counts the CRC-32 of what passes through.
struct Crc<T> {
    inner: T,
    crc: crc32fast::Hasher,
}

impl<T: Write> Write for Crc<T> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl<T: Read> Read for Crc<T> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.crc.update(&buf[..n]);
        Ok(n)
    }
}

fn empty_bootstrap(part: &PartitionKeyParams) -> FourierLweBootstrapKeyOwned {
    let p = part.params;
    FourierLweBootstrapKey::new(
        LweDimension(p.lwe_dimension),
        GlweSize(p.glwe_dimension + 1),
        PolynomialSize(p.polynomial_size),
        DecompositionBaseLog(p.pbs_base_log),
        DecompositionLevelCount(p.pbs_level),
    )
}

fn bootstrap_values(part: &PartitionKeyParams) -> u64 {
    let p = part.params;
    let glwe = (p.glwe_dimension + 1) as u64;
    (p.lwe_dimension * p.pbs_level) as u64 * glwe * glwe * (p.polynomial_size / 2) as u64
}

/// Where this process's FFT plan keeps each Fourier coefficient of a polynomial of
/// `size`: `order[i]` is the memory index of the coefficient tfhe-rs serializes `i`-th
/// (its canonical position). Read off tfhe-rs's serialization of a one-polynomial key
/// whose coefficients are their own memory indices.
fn canonical_order(size: PolynomialSize) -> Result<Vec<usize>, BackendError> {
    let mut probe = FourierLweBootstrapKey::new(
        LweDimension(1),
        GlweSize(1),
        size,
        DecompositionBaseLog(1),
        DecompositionLevelCount(1),
    );
    let data = probe.as_mut_view().data();
    let m = data.len();
    for (j, v) in data.iter_mut().enumerate() {
        *v = c64::new(j as f64, 0.0);
    }
    let bytes = bincode::serialize(&probe)
        .map_err(|e| BackendError::Keys(format!("FFT order probe: {e}")))?;
    // the coefficients, then the key's four dimensions (one u64 each)
    let start = bytes
        .len()
        .checked_sub(m * 16 + 4 * 8)
        .ok_or_else(|| BackendError::Keys("FFT order probe: short serialization".into()))?;
    let mut seen = vec![false; m];
    let order: Vec<usize> = bytes[start..start + m * 16]
        .chunks_exact(16)
        .map(|b| f64::from_le_bytes(b[..8].try_into().unwrap_or_default()) as usize)
        .collect();
    if order
        .iter()
        .any(|&j| j >= m || std::mem::replace(&mut seen[j], true))
    {
        return Err(BackendError::Keys(
            "FFT order probe: tfhe-rs's serialization is not a permutation".into(),
        ));
    }
    Ok(order)
}

/// Bytes of the prepared keys of `params` for a circuit (none without bootstraps).
pub fn prepared_keys_len(params: &KeyParams, info: &CircuitInfo) -> u64 {
    if info.pbs_per_sample == 0 {
        return 0;
    }
    params
        .partitions
        .iter()
        .map(|part| {
            let p = part.params;
            let ks = part.ks_input_dimension * p.ks_level * (p.lwe_dimension + 1);
            (ks as u64) * 8 + bootstrap_values(part) * 16
        })
        .sum()
}

impl Evaluator {
    /// Writes the prepared keys; returns the CRC-32 of the bytes written.
    pub fn write_prepared_keys(&self, out: &mut dyn Write) -> std::io::Result<u32> {
        let mut out = Crc {
            inner: out,
            crc: crc32fast::Hasher::new(),
        };
        let mut buf = Vec::with_capacity(CHUNK * 8);
        for part in &self.parts {
            for chunk in part.keyswitch.as_ref().chunks(CHUNK) {
                buf.clear();
                chunk
                    .iter()
                    .for_each(|v| buf.extend_from_slice(&v.to_le_bytes()));
                out.write_all(&buf)?;
            }
            let order =
                canonical_order(part.bootstrap.polynomial_size()).map_err(std::io::Error::other)?;
            for polynomial in part.bootstrap.as_view().data().chunks(order.len()) {
                buf.clear();
                for &j in &order {
                    buf.extend_from_slice(&polynomial[j].re.to_le_bytes());
                    buf.extend_from_slice(&polynomial[j].im.to_le_bytes());
                }
                out.write_all(&buf)?;
            }
        }
        Ok(out.crc.finalize())
    }

    /// An evaluator from prepared keys written by
    /// [`write_prepared_keys`](Self::write_prepared_keys) for the same key parameters;
    /// returns it with the CRC-32 of the bytes read, which the caller compares with the
    /// one it stored. A short input, or a bootstrap key of another shape, is an error;
    /// nothing here can tell apart two keys of the same shape.
    pub fn from_prepared_keys(
        circuit: &Circuit,
        info: &CircuitInfo,
        params: &KeyParams,
        input: &mut dyn Read,
    ) -> Result<(Self, u32), BackendError> {
        Self::check_precisions(circuit, info, params)?;
        let bad = |e: &dyn std::fmt::Display| BackendError::Keys(format!("prepared keys: {e}"));
        let mut input = Crc {
            inner: input,
            crc: crc32fast::Hasher::new(),
        };
        let mut buf = vec![0u8; CHUNK * 8];
        let mut parts = Vec::new();
        if info.pbs_per_sample > 0 {
            for part in &params.partitions {
                let mut keyswitch = empty_keyswitch(part);
                for chunk in keyswitch.as_mut().chunks_mut(CHUNK) {
                    let bytes = &mut buf[..chunk.len() * 8];
                    input.read_exact(bytes).map_err(|e| bad(&e))?;
                    for (v, b) in chunk.iter_mut().zip(bytes.chunks_exact(8)) {
                        *v = u64::from_le_bytes(b.try_into().unwrap_or_default());
                    }
                }
                let mut bootstrap = empty_bootstrap(part);
                let order = canonical_order(bootstrap.polynomial_size())?;
                let mut bytes = vec![0u8; order.len() * 16];
                for polynomial in bootstrap.as_mut_view().data().chunks_mut(order.len()) {
                    input.read_exact(&mut bytes).map_err(|e| bad(&e))?;
                    for (&j, b) in order.iter().zip(bytes.chunks_exact(16)) {
                        let (re, im) = b.split_at(8);
                        polynomial[j] = c64::new(
                            f64::from_le_bytes(re.try_into().unwrap_or_default()),
                            f64::from_le_bytes(im.try_into().unwrap_or_default()),
                        );
                    }
                }
                parts.push(PartitionEval {
                    fft: Fft::new(bootstrap.polynomial_size()),
                    keyswitch,
                    bootstrap,
                });
            }
        }
        Ok((
            Self::assemble(circuit, info, params, parts),
            input.crc.finalize(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The probe reads a permutation of every polynomial size keys use.
    #[test]
    fn the_fft_order_probe_reads_a_permutation() {
        for log in 8..=14 {
            let order = canonical_order(PolynomialSize(1 << log)).unwrap();
            assert_eq!(order.len(), 1 << (log - 1));
        }
    }
}
