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

pub fn simulate(a: &Artifact, info: &CircuitInfo, sample: &[Tensor]) -> Result<SampleResult> {
    let q = a.client.spec.quantize_inputs(sample);
    let out = fhec_ir::interp::simulate(&a.server.circuit, info, &q)?;
    finish(a, out)
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
