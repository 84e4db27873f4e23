//! Ciphertext files: encrypted inputs (client → server) and encrypted outputs
//! (server → client), many samples each.
//!
//! Inputs are seeded: per sample one 128-bit seed from which the server regenerates
//! every mask, then one 64-bit body per input integer. Outputs are full LWE
//! ciphertexts with every coefficient rounded to the model's output modulus
//! (`output_bits`), bit-packed. Sizes follow from the description at the payload's
//! head; a reader checks them against the bytes it holds before allocating.

use fhec_backend_tfhe::SeededInputs;
use serde::{Deserialize, Serialize};

use crate::frame::{self, KeyId, Kind, ModelId};
use crate::Error;

/// Most samples one ciphertext file may hold.
pub const MAX_SAMPLES: usize = 1 << 20;

/// Encrypted model inputs of a batch of samples.
#[derive(Clone, Debug, PartialEq)]
pub struct EncryptedInputs {
    pub model_id: ModelId,
    pub key_id: KeyId,
    pub encoding_bits: u32,
    /// Dimension of the key prefix the inputs are encrypted under.
    pub input_dimension: usize,
    /// Integers per circuit input, in circuit order.
    pub elements: Vec<usize>,
    /// Per sample: all circuit inputs' integers, concatenated in circuit order.
    pub samples: Vec<SeededInputs>,
}

/// Encrypted circuit outputs of a batch of samples.
#[derive(Clone, Debug, PartialEq)]
pub struct EncryptedOutputs {
    pub model_id: ModelId,
    pub key_id: KeyId,
    pub encoding_bits: u32,
    /// Bits kept of each coefficient.
    pub bits: u32,
    pub outputs: Vec<OutputLayout>,
    /// Per sample, per circuit output: its ciphertexts' coefficients (mask then body,
    /// `dimension + 1` each, every value below 2^bits), concatenated.
    pub samples: Vec<Vec<Vec<u64>>>,
}

/// The ciphertexts of one circuit output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputLayout {
    pub elements: usize,
    /// LWE dimension (the master-key prefix they are under).
    pub dimension: usize,
}

#[derive(Serialize, Deserialize)]
struct InputsMeta {
    samples: usize,
    encoding_bits: u32,
    input_dimension: usize,
    elements: Vec<usize>,
}

#[derive(Serialize, Deserialize)]
struct OutputsMeta {
    samples: usize,
    encoding_bits: u32,
    bits: u32,
    outputs: Vec<OutputLayout>,
}

fn corrupted(what: &str, m: impl std::fmt::Display) -> Error {
    Error::Format(format!("corrupted {what}: {m}"))
}

/// `samples × per_sample` when it equals `len` exactly.
fn exact_size(
    what: &str,
    samples: usize,
    per_sample: Option<usize>,
    len: usize,
) -> Result<(), Error> {
    if samples == 0 || samples > MAX_SAMPLES {
        return Err(corrupted(
            what,
            format!("{samples} samples (1 to {MAX_SAMPLES})"),
        ));
    }
    match per_sample.and_then(|p| p.checked_mul(samples)) {
        Some(n) if n == len => Ok(()),
        _ => Err(corrupted(
            what,
            format!("{len} bytes do not hold the {samples} samples the description announces"),
        )),
    }
}

impl EncryptedInputs {
    pub fn values_per_sample(&self) -> usize {
        self.elements.iter().sum()
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let meta = InputsMeta {
            samples: self.samples.len(),
            encoding_bits: self.encoding_bits,
            input_dimension: self.input_dimension,
            elements: self.elements.clone(),
        };
        let per = 16 + 8 * self.values_per_sample();
        let mut payload = frame::binary_payload(&meta, per * self.samples.len());
        for s in &self.samples {
            payload.extend_from_slice(&s.seed.to_le_bytes());
            frame::pack_bits(&s.bodies, 64, &mut payload);
        }
        frame::frame(Kind::Inputs, self.model_id, Some(self.key_id), &payload)
    }

    /// Reads the file; its sizes are checked against its own description only (the
    /// server checks them against the model).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, Error> {
        let (h, payload) = frame::unframe(bytes, Kind::Inputs)?;
        let key_id = h
            .key
            .ok_or_else(|| corrupted("inputs", "no key id in the header"))?;
        let (meta, body): (InputsMeta, _) = frame::split_binary(payload)?;
        let values = meta
            .elements
            .iter()
            .try_fold(0usize, |a, &e| a.checked_add(e));
        let per = values
            .and_then(|v| v.checked_mul(8))
            .and_then(|b| b.checked_add(16));
        exact_size("inputs", meta.samples, per, body.len())?;
        let (Some(per), Some(values)) = (per, values) else {
            return Err(corrupted("inputs", "sizes overflow"));
        };
        let samples = body
            .chunks_exact(per)
            .map(|c| SeededInputs {
                seed: u128::from_le_bytes(frame::array(c)),
                bodies: frame::unpack_bits(&c[16..], 64, values),
            })
            .collect();
        Ok(EncryptedInputs {
            model_id: h.model,
            key_id,
            encoding_bits: meta.encoding_bits,
            input_dimension: meta.input_dimension,
            elements: meta.elements,
            samples,
        })
    }
}

impl EncryptedOutputs {
    fn ciphertext_bytes(&self, o: &OutputLayout) -> usize {
        frame::packed_len(o.dimension + 1, self.bits)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let meta = OutputsMeta {
            samples: self.samples.len(),
            encoding_bits: self.encoding_bits,
            bits: self.bits,
            outputs: self.outputs.clone(),
        };
        let per: usize = self
            .outputs
            .iter()
            .map(|o| o.elements * self.ciphertext_bytes(o))
            .sum();
        let mut payload = frame::binary_payload(&meta, per * self.samples.len());
        for s in &self.samples {
            for (values, o) in s.iter().zip(&self.outputs) {
                for ct in values.chunks_exact(o.dimension + 1) {
                    frame::pack_bits(ct, self.bits, &mut payload);
                }
            }
        }
        frame::frame(Kind::Outputs, self.model_id, Some(self.key_id), &payload)
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, Error> {
        let (h, payload) = frame::unframe(bytes, Kind::Outputs)?;
        let key_id = h
            .key
            .ok_or_else(|| corrupted("outputs", "no key id in the header"))?;
        let (meta, body): (OutputsMeta, _) = frame::split_binary(payload)?;
        if !(1..=64).contains(&meta.bits) {
            return Err(corrupted(
                "outputs",
                format!("{}-bit coefficients", meta.bits),
            ));
        }
        let ct_bytes = |o: &OutputLayout| {
            o.dimension
                .checked_add(1)
                .and_then(|n| n.checked_mul(meta.bits as usize))
                .map(|b| b.div_ceil(8))
        };
        let per = meta.outputs.iter().try_fold(0usize, |a, o| {
            ct_bytes(o)
                .and_then(|b| b.checked_mul(o.elements))
                .and_then(|b| a.checked_add(b))
        });
        exact_size("outputs", meta.samples, per, body.len())?;
        let Some(per) = per else {
            return Err(corrupted("outputs", "sizes overflow"));
        };
        let samples = body
            .chunks_exact(per)
            .map(|mut c| {
                meta.outputs
                    .iter()
                    .map(|o| {
                        // every output's size was computed into `per` above
                        let b = ct_bytes(o).unwrap_or(0);
                        let mut values = Vec::with_capacity(o.elements * (o.dimension + 1));
                        for _ in 0..o.elements {
                            values.extend(frame::unpack_bits(&c[..b], meta.bits, o.dimension + 1));
                            c = &c[b..];
                        }
                        values
                    })
                    .collect()
            })
            .collect();
        Ok(EncryptedOutputs {
            model_id: h.model,
            key_id,
            encoding_bits: meta.encoding_bits,
            bits: meta.bits,
            outputs: meta.outputs,
            samples,
        })
    }
}
