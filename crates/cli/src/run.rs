//! The three ways to run a model on samples: clear (float), simulate (exact integer
//! circuit), fhe (tfhe-rs ciphertexts).

use anyhow::{anyhow, Result};
use fhec_backend_tfhe::{ClientKey, Evaluator, ServerKey};
use fhec_frontend_onnx::{interp, FloatGraph, Tensor};
use fhec_ir::CircuitInfo;

use crate::artifact::Artifact;

/// The float model, per sample; returns the model outputs.
pub fn clear(graph: &FloatGraph, samples: &[Vec<Tensor>]) -> Result<Vec<Vec<Tensor>>> {
    samples
        .iter()
        .map(|s| {
            let env = interp::evaluate(graph, s)?;
            Ok(graph
                .outputs
                .iter()
                .map(|o| env[o.0 as usize].clone().expect("every output is computed"))
                .collect())
        })
        .collect()
}

/// Model outputs and the raw circuit outputs (decrypted integers) of one sample.
pub struct SampleResult {
    pub outputs: Vec<Tensor>,
    pub circuit_outputs: Vec<Vec<i64>>,
}

fn finish(a: &Artifact, circuit_outputs: Vec<Vec<i64>>) -> Result<SampleResult> {
    let outputs = a
        .client
        .spec
        .finish(&a.client.graph, &circuit_outputs)
        .map_err(|e| anyhow!("{e}"))?;
    Ok(SampleResult {
        outputs,
        circuit_outputs,
    })
}

/// The circuit's expected result: exact integer execution, approximate roundings to
/// nearest (what FHE decrypts when no rounding lands on the other side of a boundary).
pub fn simulate(a: &Artifact, info: &CircuitInfo, sample: &[Tensor]) -> Result<SampleResult> {
    let q = a.client.spec.quantize_inputs(sample);
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
    noise: Option<fhec_ir::interp::RoundingNoise>,
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

    pub fn run(&self, index: usize, sample: &[Tensor]) -> Result<SampleResult> {
        self.run_seeded(self.seed, index, sample)
    }

    /// [`run`](Self::run) with another seed (the error model is built once).
    pub fn run_seeded(&self, seed: u64, index: usize, sample: &[Tensor]) -> Result<SampleResult> {
        let a = self.artifact;
        let q = a.client.spec.quantize_inputs(sample);
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

/// The error model of the artifact's approximate roundings under its parameters.
pub fn rounding_noise(a: &Artifact, info: &CircuitInfo) -> fhec_ir::interp::RoundingNoise {
    let c = &a.server.circuit;
    let any = c.ids().any(|id| {
        matches!(
            c.node(id).op,
            fhec_ir::IntOp::Round {
                approximate: true,
                ..
            }
        )
    });
    let sigma = if any && a.server.params.needs_bootstrap() {
        let budget = fhec_backend_tfhe::NoiseBudget::of(c, info);
        fhec_backend_tfhe::rounding_sigmas(&budget, &a.server.params.keys, c.len())
    } else {
        Vec::new()
    };
    fhec_ir::interp::RoundingNoise { sigma }
}

/// Encrypts on the client, evaluates with the server key only, decrypts on the client.
pub fn fhe(
    a: &Artifact,
    info: &CircuitInfo,
    client: &ClientKey,
    evaluator: &Evaluator<'_>,
    sample: &[Tensor],
    progress: &(dyn Fn(usize) + Sync),
) -> Result<SampleResult> {
    let w = info.encoding_bits;
    let encrypted = a
        .client
        .spec
        .quantize_inputs(sample)
        .iter()
        .map(|q| client.encrypt(q, w))
        .collect();
    let result = evaluator.run(encrypted, progress)?;
    let decrypted = result.iter().map(|cts| client.decrypt(cts, w)).collect();
    finish(a, decrypted)
}

/// Builds the server-side evaluator (Fourier keys, tables) once for many samples.
pub fn evaluator<'a>(
    a: &'a Artifact,
    info: &'a CircuitInfo,
    server: &ServerKey,
) -> Result<Evaluator<'a>> {
    Ok(Evaluator::new(&a.server.circuit, info, server)?)
}

pub fn keys(a: &Artifact) -> (ClientKey, ServerKey) {
    fhec_backend_tfhe::generate_keys(&a.client.params.keys)
}

/// Single-core time of one key switch (from a key of `ks_dim`) + bootstrap for `params`,
/// measured on `count` bootstraps of an identity table (real keys); also returns the
/// keygen time.
pub fn time_bootstrap(
    params: &fhec_backend_tfhe::CryptoParams,
    ks_dim: usize,
    count: usize,
) -> Result<(f64, f64)> {
    use fhec_ir::{Circuit, IntOp, Node, Range, Status};
    let mut c = Circuit::default();
    let x = c.add(
        Node {
            name: "x".into(),
            op: IntOp::Input { index: 0, bits: 2 },
            shape: vec![1, count],
            status: Status::Encrypted,
            range: Range::new(0, 3),
        },
        &[],
    );
    let t = c.add(
        Node {
            name: "id".into(),
            op: IntOp::Lut {
                precision: 2,
                tables: vec![vec![0, 1, 2, 3]],
                table_of: vec![0; count],
            },
            shape: vec![1, count],
            status: Status::Encrypted,
            range: Range::new(0, 3),
        },
        &[x],
    );
    c.inputs = vec![x];
    c.outputs = vec![t];
    let info = fhec_ir::verify(&c)?;
    let start = std::time::Instant::now();
    let keys = fhec_backend_tfhe::KeyParams {
        input_dimension: ks_dim,
        partitions: vec![fhec_backend_tfhe::PartitionKeyParams {
            precision: 2,
            params: *params,
            ks_input_dimension: ks_dim,
        }],
    };
    let (client, server) = fhec_backend_tfhe::generate_keys(&keys);
    let keygen = start.elapsed().as_secs_f64();
    let ev = Evaluator::new(&c, &info, &server)?;
    let values: Vec<i64> = (0..count as i64).map(|i| i % 4).collect();
    let input = client.encrypt(&values, info.encoding_bits);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(1).build()?;
    let start = std::time::Instant::now();
    let out = pool.install(|| ev.run(vec![input], &|_| {}))?;
    let ms = start.elapsed().as_secs_f64() * 1e3 / count as f64;
    anyhow::ensure!(
        client.decrypt(&out[0], info.encoding_bits) == values,
        "identity bootstraps decoded wrong values"
    );
    Ok((keygen, ms))
}
