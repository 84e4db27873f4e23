//! What a model's files weigh on the wire at its parameters (docs/DEPLOYMENT.md).

use fhec_backend_tfhe::ParamChoice;
use fhec_ir::{Circuit, CircuitInfo};
use serde::Serialize;

/// What crosses the wire per sample and once per client, at these parameters
/// (docs/DEPLOYMENT.md). Frame headers (about 150 bytes per file) not included.
#[derive(Clone, Debug, Serialize)]
pub struct DeploymentSizes {
    /// Seeded input ciphertexts: one 16-byte seed and 8 bytes per input integer.
    pub input_bytes_per_sample: usize,
    /// Output ciphertexts, every coefficient rounded to `output_bits` bits.
    pub output_bytes_per_sample: usize,
    pub output_bits: u32,
    /// LWE dimension of each circuit output's ciphertexts.
    pub output_dimensions: Vec<usize>,
    /// The seeded evaluation key (0 for a circuit without bootstrap).
    pub evaluation_key_bytes: usize,
    /// The client's secret key file, one bit per key coefficient.
    pub secret_key_bytes: usize,
}

impl DeploymentSizes {
    pub fn of(c: &Circuit, info: &CircuitInfo, p: &ParamChoice) -> Self {
        let budget = fhec_backend_tfhe::NoiseBudget::of(c, info);
        let output_dimensions: Vec<usize> = budget
            .output_sources
            .iter()
            .map(|&s| fhec_backend_tfhe::sources_dimension(s, &p.keys))
            .collect();
        let inputs: usize = c.inputs.iter().map(|&id| c.node(id).numel()).sum();
        let output_bytes_per_sample = c
            .outputs
            .iter()
            .zip(&output_dimensions)
            .map(|(&id, &d)| c.node(id).numel() * (((d + 1) * p.output_bits as usize).div_ceil(8)))
            .sum();
        let secret_bits: usize = std::iter::once(p.keys.master_dimension())
            .chain(p.keys.partitions.iter().map(|k| k.params.lwe_dimension))
            .map(|d| d.div_ceil(8))
            .sum();
        DeploymentSizes {
            input_bytes_per_sample: 16 + 8 * inputs,
            output_bytes_per_sample,
            output_bits: p.output_bits,
            output_dimensions,
            evaluation_key_bytes: crate::EvaluationKey::body_bytes(&p.keys),
            secret_key_bytes: secret_bits,
        }
    }

    pub fn text(&self) -> String {
        format!(
            "deployment: inputs {} B/sample (seeded), outputs {} B/sample ({}-bit coefficients, dimension {}), evaluation key {}, secret key {} B\n",
            self.input_bytes_per_sample,
            self.output_bytes_per_sample,
            self.output_bits,
            self.output_dimensions
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join("/"),
            if self.evaluation_key_bytes == 0 {
                "none (no bootstrap)".to_string()
            } else {
                format!("{:.1} MB (seeded)", self.evaluation_key_bytes as f64 / 1e6)
            },
            self.secret_key_bytes
        )
    }
}
