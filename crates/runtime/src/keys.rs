//! Key files: the client's secret key and the evaluation key the server receives.
//!
//! Both are binary payloads in the shared frame (docs/FORMATS.md). Their lengths follow
//! from the model's key parameters, so a reader knows the exact size before parsing and
//! refuses any other.

use fhec_backend_tfhe::{ClientKey, KeyParams, RawPartitionKey, ServerKey};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::frame::{self, KeyId, Kind, ModelId};
use crate::Error;

/// The client's secret keys for one model. Never leaves the client.
#[derive(Clone)]
pub struct SecretKey {
    pub model_id: ModelId,
    pub key_id: KeyId,
    pub(crate) key: ClientKey,
}

/// The keys a server evaluates one model with, for one client's key set.
#[derive(Clone)]
pub struct EvaluationKey {
    pub model_id: ModelId,
    pub key_id: KeyId,
    pub(crate) key: ServerKey,
}

#[derive(Serialize, Deserialize)]
struct SecretKeyMeta {
    /// Dimensions of the master key and of each partition's small key.
    dimensions: Vec<usize>,
}

#[derive(Serialize, Deserialize)]
struct PartitionKeyMeta {
    /// Hex of the 128-bit seed of the key-switching key's masks.
    keyswitch_seed: String,
    keyswitch_values: usize,
    bootstrap_seed: String,
    bootstrap_values: usize,
    /// Bits each bootstrap-key body is stored with (its rounded width).
    bootstrap_bits: u32,
}

#[derive(Serialize, Deserialize)]
struct EvaluationKeyMeta {
    partitions: Vec<PartitionKeyMeta>,
}

fn mismatch(what: &str, id: ModelId, expected: ModelId) -> Error {
    Error::Mismatch(format!(
        "{what} belongs to model {id}, not to this model ({expected})"
    ))
}

pub(crate) fn seed_hex(seed: u128) -> String {
    format!("{seed:032x}")
}

pub(crate) fn parse_seed(s: &str) -> Result<u128, Error> {
    if s.len() != 32 {
        return Err(Error::Format(format!("corrupted seed '{s}'")));
    }
    u128::from_str_radix(s, 16).map_err(|_| Error::Format(format!("corrupted seed '{s}'")))
}

impl SecretKey {
    pub(crate) fn new(model_id: ModelId, key_id: KeyId, key: ClientKey) -> Self {
        SecretKey {
            model_id,
            key_id,
            key,
        }
    }

    /// One bit per key coefficient, each key padded to a byte. The bytes are wiped
    /// from memory when dropped.
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let raw = self.key.to_raw();
        let meta = SecretKeyMeta {
            dimensions: raw.iter().map(Vec::len).collect(),
        };
        let body: usize = raw.iter().map(|k| frame::packed_len(k.len(), 1)).sum();
        let mut payload = Zeroizing::new(frame::binary_payload(&meta, body));
        for k in raw.iter() {
            frame::pack_bits(k, 1, &mut payload);
        }
        Zeroizing::new(frame::frame(
            Kind::SecretKey,
            self.model_id,
            Some(self.key_id),
            &payload,
        ))
    }

    /// Reads a secret key and checks it was generated for the model with `model_id` and
    /// key parameters `params`.
    pub fn from_bytes(bytes: &[u8], model_id: ModelId, params: &KeyParams) -> Result<Self, Error> {
        let (h, payload) = frame::unframe(bytes, Kind::SecretKey)?;
        if h.model != model_id {
            return Err(mismatch("this secret key", h.model, model_id));
        }
        let key_id = h
            .key
            .ok_or_else(|| Error::Format("a secret key without a key id".into()))?;
        let (meta, body): (SecretKeyMeta, _) = frame::split_binary(payload)?;
        let expected: Vec<usize> = std::iter::once(params.master_dimension())
            .chain(params.partitions.iter().map(|p| p.params.lwe_dimension))
            .collect();
        if meta.dimensions != expected {
            return Err(Error::Mismatch(format!(
                "secret keys of dimensions {:?}, this model's parameters need {expected:?}",
                meta.dimensions
            )));
        }
        let sizes: Vec<usize> = expected.iter().map(|&d| frame::packed_len(d, 1)).collect();
        if body.len() != sizes.iter().sum::<usize>() {
            return Err(Error::Format("corrupted secret key: wrong length".into()));
        }
        let mut at = 0;
        let raw = expected
            .iter()
            .zip(&sizes)
            .map(|(&d, &s)| {
                let k = frame::unpack_bits(&body[at..at + s], 1, d);
                at += s;
                k
            })
            .collect();
        let key = ClientKey::from_raw(params, raw)?;
        Ok(SecretKey {
            model_id,
            key_id,
            key,
        })
    }
}

impl EvaluationKey {
    pub(crate) fn new(model_id: ModelId, key_id: KeyId, key: ServerKey) -> Self {
        EvaluationKey {
            model_id,
            key_id,
            key,
        }
    }

    /// Bytes of the seeded keys (what the file holds, less its header).
    pub fn size_bytes(&self) -> usize {
        self.key.size_bytes()
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let raw = self.key.raw_parts();
        let bits: Vec<u32> = self
            .key
            .params
            .partitions
            .iter()
            .map(|p| p.params.bsk_body_bits)
            .collect();
        let meta = EvaluationKeyMeta {
            partitions: raw
                .iter()
                .zip(&bits)
                .map(|(&(ks_seed, ks, bsk_seed, bsk), &b)| PartitionKeyMeta {
                    keyswitch_seed: seed_hex(ks_seed),
                    keyswitch_values: ks.len(),
                    bootstrap_seed: seed_hex(bsk_seed),
                    bootstrap_values: bsk.len(),
                    bootstrap_bits: b,
                })
                .collect(),
        };
        let mut payload = frame::binary_payload(&meta, self.size_bytes());
        for (&(_, ks, _, bsk), &b) in raw.iter().zip(&bits) {
            frame::pack_bits(ks, 64, &mut payload);
            // the bodies' low 64 − b bits are zero (rounded at key generation)
            let top: Vec<u64> = bsk
                .iter()
                .map(|&v| v.checked_shr(64 - b).unwrap_or(v))
                .collect();
            frame::pack_bits(&top, b, &mut payload);
        }
        frame::frame(
            Kind::EvaluationKey,
            self.model_id,
            Some(self.key_id),
            &payload,
        )
    }

    /// Exact size of an evaluation-key payload body for `params` (the frame and JSON
    /// description come on top): what a reader may accept, at most.
    pub fn body_bytes(params: &KeyParams) -> usize {
        params
            .partitions
            .iter()
            .map(fhec_backend_tfhe::raw_key_bytes)
            .sum()
    }

    /// Reads an evaluation key and checks it against the model's id and key parameters.
    pub fn from_bytes(bytes: &[u8], model_id: ModelId, params: &KeyParams) -> Result<Self, Error> {
        let h = frame::peek(bytes)?;
        if h.kind == Kind::SecretKey {
            return Err(Error::Mismatch(
                "this is a secret key (FHEC-SECRET-KEY): it must stay with the client; give the server evaluation.key".into(),
            ));
        }
        let (h, payload) = frame::unframe(bytes, Kind::EvaluationKey)?;
        if h.model != model_id {
            return Err(mismatch("this evaluation key", h.model, model_id));
        }
        let key_id = h
            .key
            .ok_or_else(|| Error::Format("an evaluation key without a key id".into()))?;
        let (meta, body): (EvaluationKeyMeta, _) = frame::split_binary(payload)?;
        if meta.partitions.len() != params.partitions.len() {
            return Err(Error::Mismatch(format!(
                "an evaluation key of {} partitions, this model has {}",
                meta.partitions.len(),
                params.partitions.len()
            )));
        }
        let mut at = 0usize;
        let mut raw = Vec::new();
        for (i, (m, p)) in meta.partitions.iter().zip(&params.partitions).enumerate() {
            let (ks, bsk) = fhec_backend_tfhe::raw_key_lengths(p);
            let bits = p.params.bsk_body_bits;
            if (m.keyswitch_values, m.bootstrap_values, m.bootstrap_bits) != (ks, bsk, bits) {
                return Err(Error::Mismatch(format!(
                    "partition {i}: keys of {} and {} values ({}-bit bodies), this model's parameters need {ks} and {bsk} ({bits}-bit): the key was made for other parameters",
                    m.keyswitch_values, m.bootstrap_values, m.bootstrap_bits
                )));
            }
            let mid = at + ks * 8;
            let end = mid + frame::packed_len(bsk, bits);
            if body.len() < end {
                return Err(Error::Format("corrupted evaluation key: too short".into()));
            }
            let mut bootstrap = frame::unpack_bits(&body[mid..end], bits, bsk);
            if bits < 64 {
                bootstrap.iter_mut().for_each(|v| *v <<= 64 - bits);
            }
            raw.push(RawPartitionKey {
                keyswitch_seed: parse_seed(&m.keyswitch_seed)?,
                keyswitch: frame::unpack_bits(&body[at..mid], 64, ks),
                bootstrap_seed: parse_seed(&m.bootstrap_seed)?,
                bootstrap,
            });
            at = end;
        }
        if at != body.len() {
            return Err(Error::Format("corrupted evaluation key: too long".into()));
        }
        Ok(EvaluationKey {
            model_id,
            key_id,
            key: ServerKey::from_raw(params, raw)?,
        })
    }
}
