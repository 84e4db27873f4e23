//! The server: evaluates the circuit on a client's encrypted inputs with that client's
//! evaluation key. It never sees a secret key, a plaintext or the float model.

use fhec_backend_tfhe::{compress_output, expand_inputs, Evaluator};
use fhec_ir::CircuitInfo;

use crate::ciphertexts::{EncryptedInputs, EncryptedOutputs, OutputLayout};
use crate::frame::{KeyId, ModelId};
use crate::keys::EvaluationKey;
use crate::parts::ServerPart;
use crate::Error;

/// A validated server part.
#[derive(Clone, Debug)]
pub struct Server {
    part: ServerPart,
    info: CircuitInfo,
}

/// An evaluation key made ready for one server: keys decompressed, bootstrap keys in
/// the Fourier domain, every table encoded. Made once per key, used for many requests.
pub struct PreparedKey {
    model_id: ModelId,
    key_id: KeyId,
    evaluator: Evaluator,
}

impl PreparedKey {
    pub fn key_id(&self) -> KeyId {
        self.key_id
    }

    /// Writes the prepared keys (decompressed key switching, Fourier bootstrap), so that
    /// [`Server::restore`] rebuilds this key without converting it again; returns the
    /// CRC-32 of the bytes written, for the caller to store with them.
    pub fn write_keys(&self, out: &mut dyn std::io::Write) -> std::io::Result<u32> {
        self.evaluator.write_prepared_keys(out)
    }
}

impl Server {
    pub fn new(part: ServerPart) -> Result<Self, Error> {
        let info = part.check()?;
        Ok(Server { part, info })
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, Error> {
        let (part, info) = ServerPart::from_bytes(bytes)?;
        Ok(Server { part, info })
    }

    pub fn part(&self) -> &ServerPart {
        &self.part
    }

    pub fn info(&self) -> &CircuitInfo {
        &self.info
    }

    /// Reads an evaluation key for this model (and refuses a secret key).
    pub fn evaluation_key(&self, bytes: &[u8]) -> Result<EvaluationKey, Error> {
        EvaluationKey::from_bytes(bytes, self.part.model_id, &self.part.params.keys)
    }

    /// Prepares an evaluation key of this model for evaluation.
    pub fn prepare(&self, key: &EvaluationKey) -> Result<PreparedKey, Error> {
        self.prepare_with_progress(key, &|_, _| {})
    }

    /// At most how many bytes [`PreparedKey::write_keys`] writes for this model.
    pub fn prepared_keys_len(&self) -> u64 {
        fhec_backend_tfhe::prepared_keys_len(&self.part.params.keys, &self.info)
    }

    /// The prepared key `key_id` from keys [`PreparedKey::write_keys`] wrote for this
    /// model: reads them (at most [`prepared_keys_len`](Self::prepared_keys_len)
    /// bytes) and refuses them unless their CRC-32 is `crc`. Which key they were made from is the caller's
    /// to vouch for (a server stores them beside the key file they came from).
    pub fn restore(
        &self,
        key_id: KeyId,
        input: &mut dyn std::io::Read,
        crc: u32,
    ) -> Result<PreparedKey, Error> {
        let (evaluator, read) = Evaluator::from_prepared_keys(
            &self.part.circuit,
            &self.info,
            &self.part.params.keys,
            input,
        )?;
        if read != crc {
            return Err(Error::Format(format!(
                "prepared keys: CRC-32 {read:08x}, expected {crc:08x}: the file is damaged"
            )));
        }
        Ok(PreparedKey {
            model_id: self.part.model_id,
            key_id,
            evaluator,
        })
    }

    /// [`prepare`](Self::prepare), reporting `(bootstrap-key bits prepared, total)`.
    pub fn prepare_with_progress(
        &self,
        key: &EvaluationKey,
        report: &(dyn Fn(usize, usize) + Sync),
    ) -> Result<PreparedKey, Error> {
        if key.model_id != self.part.model_id || key.key.params != self.part.params.keys {
            return Err(Error::Mismatch(format!(
                "this evaluation key belongs to model {}, not to this model ({})",
                key.model_id, self.part.model_id
            )));
        }
        Ok(PreparedKey {
            model_id: key.model_id,
            key_id: key.key_id,
            evaluator: Evaluator::with_progress(&self.part.circuit, &self.info, &key.key, report)?,
        })
    }

    /// Checks that `inputs` were encrypted for this model and the key `key_id`.
    pub fn check_inputs(&self, key_id: KeyId, inputs: &EncryptedInputs) -> Result<(), Error> {
        let p = &self.part;
        if inputs.model_id != p.model_id {
            return Err(Error::Mismatch(format!(
                "these inputs were encrypted for model {}, not for this model ({})",
                inputs.model_id, p.model_id
            )));
        }
        if inputs.key_id != key_id {
            return Err(Error::Mismatch(format!(
                "these inputs were encrypted under key {}, the evaluation key is {key_id}",
                inputs.key_id
            )));
        }
        let c = &p.circuit;
        let elements: Vec<usize> = c.inputs.iter().map(|&id| c.node(id).numel()).collect();
        if inputs.elements != elements
            || inputs.input_dimension != p.params.keys.input_dimension
            || inputs.encoding_bits != self.info.encoding_bits
        {
            return Err(Error::Mismatch(format!(
                "inputs of {:?} integers (dimension {}, {} bits); this model takes {elements:?} (dimension {}, {} bits)",
                inputs.elements,
                inputs.input_dimension,
                inputs.encoding_bits,
                p.params.keys.input_dimension,
                self.info.encoding_bits
            )));
        }
        let per_sample = inputs.values_per_sample();
        if let Some(i) = inputs
            .samples
            .iter()
            .position(|s| s.bodies.len() != per_sample)
        {
            return Err(Error::Mismatch(format!(
                "sample {i} holds {} ciphertexts, the model takes {per_sample}",
                inputs.samples[i].bodies.len()
            )));
        }
        Ok(())
    }

    /// Evaluates every sample. `progress(sample, bootstraps done)` is called after each
    /// node of each sample.
    pub fn run(
        &self,
        key: &PreparedKey,
        inputs: &EncryptedInputs,
        progress: &(dyn Fn(usize, usize) + Sync),
    ) -> Result<EncryptedOutputs, Error> {
        if key.model_id != self.part.model_id {
            return Err(Error::Mismatch(format!(
                "a key prepared for model {}, not for this model ({})",
                key.model_id, self.part.model_id
            )));
        }
        self.check_inputs(key.key_id, inputs)?;
        let p = &self.part;
        let bits = p.params.output_bits;
        let mut layouts: Option<Vec<OutputLayout>> = None;
        let mut samples = Vec::with_capacity(inputs.samples.len());
        for (i, s) in inputs.samples.iter().enumerate() {
            let mut flat = expand_inputs(inputs.input_dimension, s).into_iter();
            let per_input: Vec<Vec<_>> = inputs
                .elements
                .iter()
                .map(|&n| flat.by_ref().take(n).collect())
                .collect();
            let outputs = key.evaluator.run(per_input, &|done| progress(i, done))?;
            let layout: Vec<OutputLayout> = outputs
                .iter()
                .map(|cts| OutputLayout {
                    elements: cts.len(),
                    dimension: cts
                        .iter()
                        .map(|c| c.lwe_size().to_lwe_dimension().0)
                        .max()
                        .unwrap_or(0),
                })
                .collect();
            // One dimension per output: a ciphertext under a shorter key prefix is
            // widened with zero mask coefficients, which decrypts the same.
            let values = outputs
                .iter()
                .zip(&layout)
                .map(|(cts, l)| {
                    let mut v = Vec::with_capacity(cts.len() * (l.dimension + 1));
                    for ct in cts {
                        let c = compress_output(ct, bits);
                        // an LWE ciphertext always has a body
                        let Some((body, mask)) = c.split_last() else {
                            continue;
                        };
                        v.extend_from_slice(mask);
                        v.resize(v.len() + l.dimension - mask.len(), 0);
                        v.push(*body);
                    }
                    v
                })
                .collect();
            match &layouts {
                Some(l) if *l != layout => {
                    return Err(Error::Invalid(
                        "output ciphertexts changed size between samples".into(),
                    ))
                }
                _ => layouts = Some(layout),
            }
            samples.push(values);
        }
        Ok(EncryptedOutputs {
            model_id: p.model_id,
            key_id: key.key_id,
            encoding_bits: self.info.encoding_bits,
            bits,
            outputs: layouts.unwrap_or_default(),
            samples,
        })
    }
}
