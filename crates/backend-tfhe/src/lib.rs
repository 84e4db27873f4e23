//! TFHE back end on tfhe-rs `core_crypto`: parameter choice from a noise model, keys,
//! encryption, and evaluation of a verified circuit on LWE ciphertexts.
//!
//! Only this crate knows tfhe. Encoding (see `fhec_ir`): an integer m of a circuit with
//! encoding width W is the LWE plaintext `m·2^(63−W)` under a prefix of the client's
//! master key. Leveled ops are LWE arithmetic on those; a bootstrap (table lookup or
//! rounding step) multiplies its operand up to the table's precision, key-switches to
//! its partition's small key and bootstraps with the table as accumulator. Bootstraps of
//! different precisions run in different partitions, each with its own parameters.

// No panic on user input (docs/ARCHITECTURE.md): unwrap, expect and panic! are refused
// outside tests; the few invariants left carry a justified `allow`.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod bench;
mod bsk;
mod engine;
mod grid;
mod keys;
mod latency;
pub mod noise;
mod params;

pub use engine::Evaluator;
pub use keys::{
    compress_output, decompress_output, expand_inputs, generate_keys, random_u128, raw_key_bytes,
    raw_key_lengths, Ciphertext, ClientKey, RawPartitionKey, SeededInputs, ServerKey,
};
pub use latency::predicted_latency_ms;
pub use noise::{rounding_sigmas, NoiseBudget};
pub use params::{
    choose_params, output_rounding_variance, output_sigma, predicted_variances, sources_dimension,
    CryptoParams, KeyParams, PErrorTarget, ParamChoice, ParamError, PartitionKeyParams,
    PartitionParams, MAX_EVALUATION_KEY_BYTES,
};

/// The tfhe-rs release fhec's keys and ciphertexts are made with (pinned in the
/// workspace's Cargo.toml; a test checks the lock file agrees).
pub const TFHE_RS_VERSION: &str = "1.8.2";

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("keys: {0}")]
    Keys(String),
    #[error("encrypted input: {0}")]
    Input(String),
    /// A circuit the verifier would refuse (back ends take verified circuits).
    #[error("circuit: node '{0}' has no operand it can read")]
    Circuit(String),
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_tfhe_rs_version_is_the_locked_one() {
        let lock =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../Cargo.lock"))
                .expect("the workspace lock file");
        let locked = lock
            .split("[[package]]")
            .find(|p| p.contains("\nname = \"tfhe\"\n"))
            .and_then(|p| p.lines().find_map(|l| l.strip_prefix("version = ")))
            .expect("tfhe in Cargo.lock");
        assert_eq!(locked.trim_matches('"'), super::TFHE_RS_VERSION);
    }
}
