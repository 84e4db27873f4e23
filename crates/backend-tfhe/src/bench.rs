//! Timing one key switch + bootstrap on real keys, for the cost model's calibration
//! (`fhec bench-params`) and `fhec bench`'s per-partition figures.

use fhec_ir::{Circuit, IntOp, Node, Range, Status};

use crate::{generate_keys, BackendError, CryptoParams, Evaluator, KeyParams, PartitionKeyParams};

/// Single-core time of one key switch (from a key of `ks_dim`) + bootstrap for `params`,
/// measured on `count` bootstraps of an identity table (real keys). Returns the keygen
/// time in seconds and the milliseconds per bootstrap.
pub fn time_bootstrap(
    params: &CryptoParams,
    ks_dim: usize,
    count: usize,
) -> Result<(f64, f64), BackendError> {
    let count = count.max(1);
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
    let info = fhec_ir::verify(&c).map_err(|e| BackendError::Input(e.to_string()))?;
    let start = std::time::Instant::now();
    let keys = KeyParams {
        input_dimension: ks_dim,
        partitions: vec![PartitionKeyParams {
            precision: 2,
            params: *params,
            ks_input_dimension: ks_dim,
        }],
    };
    keys.check().map_err(BackendError::Keys)?;
    let (client, server) = generate_keys(&keys);
    let keygen = start.elapsed().as_secs_f64();
    let ev = Evaluator::new(&c, &info, &server)?;
    let values: Vec<i64> = (0..count as i64).map(|i| i % 4).collect();
    let input = client.encrypt(&values, info.encoding_bits);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .map_err(|e| BackendError::Input(e.to_string()))?;
    let start = std::time::Instant::now();
    let out = pool.install(|| ev.run(vec![input], &|_| {}))?;
    let ms = start.elapsed().as_secs_f64() * 1e3 / count as f64;
    if client.decrypt(&out[0], info.encoding_bits)? != values {
        return Err(BackendError::Input(
            "identity bootstraps decoded wrong values".into(),
        ));
    }
    Ok((keygen, ms))
}
