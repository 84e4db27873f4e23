//! Running a compiled model: the files it travels in, and the two parties.
//!
//! * [`parts`]: the server part, the client part and the developer artifact;
//! * [`Client`]: key generation, encryption, decryption and post-processing;
//! * [`Server`]: evaluation on ciphertexts with an evaluation key only;
//! * [`keys`], [`ciphertexts`]: the secret key, the evaluation key, encrypted inputs
//!   and outputs, each in the versioned frame of [`frame`] (docs/FORMATS.md);
//! * [`simulate`]: the circuit on clear integers; [`samples`]: arrays in and out.
//!
//! Everything works on bytes and values in memory: reading and writing files is the
//! caller's. Every reader validates what it parses, because each party may receive
//! files from the other (docs/DEPLOYMENT.md).

// No panic on user input (docs/ARCHITECTURE.md): unwrap, expect and panic! are refused
// outside tests; the few invariants left carry a justified `allow`.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod ciphertexts;
mod client;
pub mod frame;
pub mod keys;
pub mod parts;
pub mod samples;
mod server;
pub mod simulate;
mod sizes;

pub use ciphertexts::{EncryptedInputs, EncryptedOutputs, OutputLayout};
pub use client::{Client, SampleResult};
pub use frame::{KeyId, Kind, ModelId};
pub use keys::{EvaluationKey, SecretKey};
pub use parts::{Artifact, ClientPart, ServerPart};
pub use samples::{samples_from_arrays, stack_outputs, Array};
pub use server::{PreparedKey, Server};
pub use sizes::DeploymentSizes;

/// Everything that can go wrong running a model. Messages name what is at fault; the
/// caller adds the file.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Not a readable file of the expected kind: wrong kind, version, truncated,
    /// corrupted.
    #[error("{0}")]
    Format(String),
    /// A well-formed file that belongs to another model or key, or does not fit it.
    #[error("{0}")]
    Mismatch(String),
    /// Parameters that would weaken encryption or exceed sane bounds.
    #[error("{0}")]
    Unsafe(String),
    /// A part whose pieces do not fit together.
    #[error("{0}")]
    Invalid(String),
    /// Input samples that do not fit the model.
    #[error("{0}")]
    Samples(String),
    #[error(transparent)]
    Backend(#[from] fhec_backend_tfhe::BackendError),
    #[error(transparent)]
    Eval(#[from] fhec_frontend_onnx::ImportError),
    #[error(transparent)]
    Simulate(#[from] fhec_ir::interp::SimError),
}
