//! Simulation: the circuit in clear integers, as FHE would compute it.

use fhec_frontend_onnx::Tensor;
use fhec_ir::interp::RoundingNoise;
use fhec_ir::CircuitInfo;

use crate::client::SampleResult;
use crate::parts::Artifact;
use crate::samples::check_sample;
use crate::Error;

fn finish(a: &Artifact, circuit_outputs: Vec<Vec<i64>>) -> Result<SampleResult, Error> {
    let outputs = a
        .client()
        .spec
        .finish(&a.client().graph, &circuit_outputs)?;
    Ok(SampleResult {
        outputs,
        circuit_outputs,
    })
}

/// The circuit's expected result: exact integer execution, approximate roundings to
/// nearest (what FHE decrypts when no rounding lands on the other side of a boundary).
pub fn simulate(
    a: &Artifact,
    info: &CircuitInfo,
    sample: &[Tensor],
) -> Result<SampleResult, Error> {
    check_sample(&a.client().graph, 0, sample)?;
    let q = a.client().spec.quantize_inputs(&a.client().graph, sample)?;
    let out = fhec_ir::interp::simulate(&a.server.circuit, info, &q)?;
    finish(a, out)
}

/// Simulation as FHE behaves: exact integer execution, and each approximate rounding
/// off by one near a boundary with the probability the artifact's parameters give it
/// (docs/NOISE.md). Sample `i` draws from the seed `seed` mixed with `i`, so a result
/// does not depend on which other samples run.
pub struct Simulator<'a> {
    artifact: &'a Artifact,
    info: &'a CircuitInfo,
    noise: Option<RoundingNoise>,
    seed: u64,
}

impl<'a> Simulator<'a> {
    pub fn new(artifact: &'a Artifact, info: &'a CircuitInfo, seed: u64) -> Self {
        let noise = rounding_noise(artifact, info);
        Simulator {
            artifact,
            info,
            noise: noise.is_active().then_some(noise),
            seed,
        }
    }

    /// True when approximate roundings make the result random.
    pub fn is_statistical(&self) -> bool {
        self.noise.is_some()
    }

    pub fn run(&self, index: usize, sample: &[Tensor]) -> Result<SampleResult, Error> {
        self.run_seeded(self.seed, index, sample)
    }

    /// [`run`](Self::run) with another seed (the error model is built once).
    pub fn run_seeded(
        &self,
        seed: u64,
        index: usize,
        sample: &[Tensor],
    ) -> Result<SampleResult, Error> {
        let a = self.artifact;
        check_sample(&a.client().graph, index, sample)?;
        let q = a.client().spec.quantize_inputs(&a.client().graph, sample)?;
        let out = match &self.noise {
            Some(noise) => fhec_ir::interp::simulate_noisy(
                &a.server.circuit,
                self.info,
                &q,
                noise,
                sample_seed(seed, index),
            )?,
            None => fhec_ir::interp::simulate(&a.server.circuit, self.info, &q)?,
        };
        finish(a, out)
    }
}

/// How many elements two circuit outputs of the same shapes differ in.
pub fn differing(a: &[Vec<i64>], b: &[Vec<i64>]) -> usize {
    a.iter()
        .zip(b)
        .map(|(x, y)| x.iter().zip(y).filter(|(u, v)| u != v).count())
        .sum()
}

fn sample_seed(seed: u64, index: usize) -> u64 {
    seed ^ (index as u64 + 1).wrapping_mul(0xd1b5_4a32_d192_ed03)
}

/// The error model of the artifact's approximate roundings and outputs under its
/// parameters.
pub fn rounding_noise(a: &Artifact, info: &CircuitInfo) -> RoundingNoise {
    fhec_backend_tfhe::noise::error_model(&a.server.circuit, info, &a.server.params)
}
