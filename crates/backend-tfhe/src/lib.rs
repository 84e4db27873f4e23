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
mod prepared;

pub use engine::Evaluator;
pub use keys::{
    bootstrap_key_bits, compress_output, decompress_output, expand_inputs, generate_keys,
    generate_keys_with_progress, random_u128, raw_key_bytes, raw_key_lengths, Ciphertext,
    ClientKey, RawPartitionKey, SeededInputs, ServerKey,
};
pub use latency::predicted_latency_ms;
pub use noise::{rounding_sigmas, NoiseBudget};
pub use params::{
    choose_params, output_rounding_variance, output_sigma, predicted_variances, sources_dimension,
    CryptoParams, KeyParams, PErrorTarget, ParamChoice, ParamError, PartitionKeyParams,
    PartitionParams, MAX_EVALUATION_KEY_BYTES,
};
pub use prepared::prepared_keys_len;

/// Counts work done across threads and reports `(done, total)` to a callback: key
/// generation and key preparation report one unit per bootstrap-key bit.
pub struct Progress<'a> {
    done: std::sync::atomic::AtomicUsize,
    total: usize,
    report: &'a (dyn Fn(usize, usize) + Sync),
}

impl<'a> Progress<'a> {
    pub fn new(total: usize, report: &'a (dyn Fn(usize, usize) + Sync)) -> Self {
        Progress {
            done: std::sync::atomic::AtomicUsize::new(0),
            total,
            report,
        }
    }

    /// A counter nobody watches.
    pub fn none() -> Progress<'static> {
        Progress::new(0, &|_, _| {})
    }

    pub(crate) fn add(&self, n: usize) {
        let done = self.done.fetch_add(n, std::sync::atomic::Ordering::Relaxed) + n;
        (self.report)(done, self.total);
    }
}

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
