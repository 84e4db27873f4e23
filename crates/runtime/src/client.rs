//! The client: key generation, quantization and encryption of inputs, decryption,
//! dequantization and the float tail of outputs. It holds the secret key; what it
//! sends (evaluation key, encrypted inputs) decrypts nothing.

use fhec_backend_tfhe::decompress_output;
use fhec_frontend_onnx::{FloatGraph, Tensor};

use crate::ciphertexts::{EncryptedInputs, EncryptedOutputs};
use crate::frame::KeyId;
use crate::keys::{EvaluationKey, SecretKey};
use crate::parts::ClientPart;
use crate::samples::check_samples;
use crate::Error;

/// A validated client part, ready to make keys and ciphertexts.
#[derive(Clone, Debug)]
pub struct Client {
    part: ClientPart,
}

/// Model outputs and the raw circuit outputs (decrypted integers) of one sample.
#[derive(Clone, Debug, PartialEq)]
pub struct SampleResult {
    pub outputs: Vec<Tensor>,
    pub circuit_outputs: Vec<Vec<i64>>,
}

impl Client {
    /// Checks the part (it may come from an untrusted server) before anything uses it.
    pub fn new(part: ClientPart) -> Result<Self, Error> {
        part.check()?;
        Ok(Client { part })
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, Error> {
        Ok(Client {
            part: ClientPart::from_bytes(bytes)?,
        })
    }

    pub fn part(&self) -> &ClientPart {
        &self.part
    }

    /// The model's inputs and outputs (names, shapes, types) and its float tail.
    pub fn graph(&self) -> &FloatGraph {
        &self.part.graph
    }

    /// Fresh keys: the secret key (stays here) and the evaluation key (for the server).
    pub fn keygen(&self) -> (SecretKey, EvaluationKey) {
        self.keygen_with_progress(&|_, _| {})
    }

    /// [`keygen`](Self::keygen), reporting `(bootstrap-key bits done, total)`.
    pub fn keygen_with_progress(
        &self,
        report: &(dyn Fn(usize, usize) + Sync),
    ) -> (SecretKey, EvaluationKey) {
        let (client, server) =
            fhec_backend_tfhe::generate_keys_with_progress(&self.part.keys, report);
        let key_id = KeyId::from_u128(fresh_id());
        let model = self.part.model_id;
        (
            SecretKey::new(model, key_id, client),
            EvaluationKey::new(model, key_id, server),
        )
    }

    /// Reads a secret key made for this model.
    pub fn secret_key(&self, bytes: &[u8]) -> Result<SecretKey, Error> {
        SecretKey::from_bytes(bytes, self.part.model_id, &self.part.keys)
    }

    /// The circuit inputs of one sample: its preprocessing run, its quantized integers.
    pub fn quantize(&self, sample: &[Tensor]) -> Result<Vec<Vec<i64>>, Error> {
        Ok(self.part.spec.quantize_inputs(&self.part.graph, sample)?)
    }

    /// Quantizes and encrypts samples (one tensor per model input each).
    pub fn encrypt(
        &self,
        key: &SecretKey,
        samples: &[Vec<Tensor>],
    ) -> Result<EncryptedInputs, Error> {
        self.check_key(key)?;
        check_samples(&self.part.graph, samples)?;
        if samples.is_empty() {
            return Err(Error::Samples("no samples".into()));
        }
        let w = self.part.encoding_bits;
        let encrypted = samples
            .iter()
            .map(|s| {
                let q: Vec<i64> = self.quantize(s)?.concat();
                Ok(key.key.encrypt_seeded(&q, w))
            })
            .collect::<Result<_, Error>>()?;
        Ok(EncryptedInputs {
            model_id: self.part.model_id,
            key_id: key.key_id,
            encoding_bits: w,
            input_dimension: self.part.keys.input_dimension,
            elements: self.part.input_sizes(),
            samples: encrypted,
        })
    }

    /// Decrypts a server's outputs made from this key's inputs, dequantizes them and runs
    /// the float tail; one result per sample.
    pub fn decrypt(
        &self,
        key: &SecretKey,
        outputs: &EncryptedOutputs,
    ) -> Result<Vec<SampleResult>, Error> {
        self.check_key(key)?;
        let p = &self.part;
        if outputs.model_id != p.model_id {
            return Err(Error::Mismatch(format!(
                "these outputs belong to model {}, not to this model ({})",
                outputs.model_id, p.model_id
            )));
        }
        if outputs.key_id != key.key_id {
            return Err(Error::Mismatch(format!(
                "these outputs were computed for key {}, not for this secret key ({})",
                outputs.key_id, key.key_id
            )));
        }
        let sizes: Vec<usize> = outputs.outputs.iter().map(|o| o.elements).collect();
        if sizes != p.output_sizes()
            || outputs.bits != p.output_bits
            || outputs.encoding_bits != p.encoding_bits
        {
            return Err(Error::Mismatch(format!(
                "outputs of {sizes:?} elements at {} bits, this model returns {:?} at {} bits",
                outputs.bits,
                p.output_sizes(),
                p.output_bits
            )));
        }
        let master = p.keys.master_dimension();
        if let Some(o) = outputs.outputs.iter().find(|o| o.dimension > master) {
            return Err(Error::Mismatch(format!(
                "output ciphertexts of dimension {}, longer than this model's {master}-dimensional key",
                o.dimension
            )));
        }
        let lengths: Vec<usize> = outputs
            .outputs
            .iter()
            .map(|o| o.elements * (o.dimension + 1))
            .collect();
        if let Some(i) = outputs.samples.iter().position(|s| {
            s.len() != lengths.len() || s.iter().map(Vec::len).ne(lengths.iter().copied())
        }) {
            return Err(Error::Mismatch(format!(
                "sample {i} of the outputs does not hold the ciphertexts its layout announces"
            )));
        }
        outputs
            .samples
            .iter()
            .map(|sample| {
                let decrypted = sample
                    .iter()
                    .zip(&outputs.outputs)
                    .map(|(values, o)| {
                        let cts: Vec<_> = values
                            .chunks_exact(o.dimension + 1)
                            .map(|c| decompress_output(c, outputs.bits))
                            .collect();
                        key.key.decrypt(&cts, p.encoding_bits)
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                self.finish(decrypted)
            })
            .collect()
    }

    /// Dequantizes circuit outputs and runs the float tail.
    pub fn finish(&self, circuit_outputs: Vec<Vec<i64>>) -> Result<SampleResult, Error> {
        let outputs = self.part.spec.finish(&self.part.graph, &circuit_outputs)?;
        Ok(SampleResult {
            outputs,
            circuit_outputs,
        })
    }

    fn check_key(&self, key: &SecretKey) -> Result<(), Error> {
        if key.model_id != self.part.model_id {
            return Err(Error::Mismatch(format!(
                "this secret key belongs to model {}, not to this model ({})",
                key.model_id, self.part.model_id
            )));
        }
        Ok(())
    }
}

/// 128 random bits for a key id.
fn fresh_id() -> u128 {
    fhec_backend_tfhe::random_u128()
}
