//! Prepared evaluation keys as bytes: what a server stores next to a registered key so
//! that the key is decompressed and converted to the Fourier domain once per key, not
//! once per process (docs/DEPLOYMENT.md). Per partition, in order: the key-switching
//! key (little-endian `u64`s in tfhe-rs's container order; its shape comes from the key
//! parameters), then the Fourier bootstrap key in tfhe-rs's own serialized form
//! (bincode). That form matters: tfhe-rs picks its FFT plan by timing it, and the plan
//! decides the order of Fourier coefficients in memory, so raw coefficients written by
//! one process are garbage to another whose plan differs; the serialized form is in a
//! canonical order and is put back in this process's order on reading. A CRC-32 of the
//! bytes, computed while they stream, lets the caller catch a damaged file.

use std::io::{Read, Write};

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

/// bincode as tfhe-rs's keys are written, bounded so a damaged length prefix cannot ask
/// for more than the key's size.
fn bincode_options(limit: u64) -> impl bincode::Options {
    use bincode::Options;
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .allow_trailing_bytes()
        .with_limit(limit)
}

/// At most how many bytes the serialized form of a Fourier bootstrap key of
/// `polynomials` polynomials and `values` coefficients takes: two `f64` per coefficient,
/// and lengths around each polynomial and the whole.
fn bootstrap_limit(polynomials: u64, values: u64) -> u64 {
    values * 16 + polynomials * 64 + (1 << 10)
}

fn bootstrap_shape(part: &PartitionKeyParams) -> (u64, u64) {
    let p = part.params;
    let glwe = (p.glwe_dimension + 1) as u64;
    let polynomials = (p.lwe_dimension * p.pbs_level) as u64 * glwe * glwe;
    (polynomials, polynomials * (p.polynomial_size / 2) as u64)
}

/// Bytes of the key-switching keys in the prepared keys of `params` for a circuit,
/// and at most how many the whole takes (the bootstrap keys' serialized form adds a
/// little framing). None without bootstraps.
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
            let (polynomials, values) = bootstrap_shape(part);
            (ks as u64) * 8 + bootstrap_limit(polynomials, values)
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
            let b = &part.bootstrap;
            let glwe = b.glwe_size().0 as u64;
            let polynomials =
                (b.input_lwe_dimension().0 * b.decomposition_level_count().0) as u64 * glwe * glwe;
            let limit = bootstrap_limit(polynomials, b.as_view().data().len() as u64);
            bincode::Options::serialize_into(bincode_options(limit), &mut out, &part.bootstrap)
                .map_err(std::io::Error::other)?;
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
                let (polynomials, values) = bootstrap_shape(part);
                let limit = bootstrap_limit(polynomials, values);
                let bootstrap: FourierLweBootstrapKeyOwned =
                    bincode::Options::deserialize_from(bincode_options(limit), &mut input)
                        .map_err(|e| bad(&e))?;
                let p = part.params;
                let shape = (
                    bootstrap.input_lwe_dimension().0,
                    bootstrap.glwe_size().0,
                    bootstrap.polynomial_size().0,
                    bootstrap.decomposition_base_log().0,
                    bootstrap.decomposition_level_count().0,
                );
                let expected = (
                    p.lwe_dimension,
                    p.glwe_dimension + 1,
                    p.polynomial_size,
                    p.pbs_base_log,
                    p.pbs_level,
                );
                if shape != expected || bootstrap.as_view().data().len() as u64 != values {
                    return Err(bad(&format!(
                        "a bootstrap key of shape {shape:?}, the parameters need {expected:?}"
                    )));
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
