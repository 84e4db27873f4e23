//! TFHE back end on tfhe-rs `core_crypto`: parameter choice from a noise model, keys,
//! encryption, and evaluation of a verified circuit on LWE ciphertexts.
//!
//! Only this crate knows tfhe. Encoding (see `fhec_ir`): an integer m of a circuit with
//! encoding width W is the LWE plaintext `m·2^(63−W)` under the big key (the GLWE key
//! read as an LWE key, dimension k·N). Leveled ops are LWE arithmetic on those; a table
//! lookup multiplies its operand up to the table's precision, key-switches to the small
//! key and bootstraps with the table as accumulator.

mod engine;
mod keys;
pub mod noise;
mod params;

pub use engine::Evaluator;
pub use keys::{generate_keys, Ciphertext, ClientKey, ServerKey};
pub use noise::NoiseBudget;
pub use params::{choose_params, CryptoParams, ParamChoice, ParamError};

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("keys: {0}")]
    Keys(String),
    #[error("encrypted input: {0}")]
    Input(String),
}
