//! The noise model checked against real ciphertexts, on the parameters the optimizer
//! chooses for a fixture (mlp_iris): the output variance of every partition's
//! bootstraps, and the variance at a blind rotation's input after the circuit's
//! operations — a linear combination of bootstrap outputs, the scaling, the key switch
//! and the modulus switch. A parameter choice is only released if the measurement stays
//! under 1.5× the prediction (the model is a bound; 1.5 leaves room for the sampling
//! error of the variance estimate) and above 1/32 of it (the bound is not vacuous).

mod common;

use common::*;
use fhec_backend_tfhe::noise::{keyswitch_variance, modulus_switch_variance};
use fhec_backend_tfhe::{generate_keys, Ciphertext, ClientKey, Evaluator, KeyParams, ServerKey};
use fhec_ir::{verify, Circuit, CircuitInfo, IntOp, Node, Range, Status};
use tfhe::core_crypto::prelude::CiphertextModulus;

const TOO_NOISY: f64 = 1.5;
const TOO_PESSIMISTIC: f64 = 1.0 / 32.0;

/// `n` inputs of `precision` bits through an identity table of that precision.
fn identity_circuit(n: usize, precision: u32) -> (Circuit, CircuitInfo) {
    let hi = (1i64 << precision) - 1;
    let mut c = Circuit::default();
    let x = c.add(
        Node {
            name: "x".into(),
            op: IntOp::Input {
                index: 0,
                bits: precision,
            },
            shape: vec![1, n],
            status: Status::Encrypted,
            range: Range::new(0, hi),
        },
        &[],
    );
    let t = c.add(
        Node {
            name: "id".into(),
            op: IntOp::Lut {
                precision,
                tables: vec![(0..=hi).collect()],
                table_of: vec![0; n],
            },
            shape: vec![1, n],
            status: Status::Encrypted,
            range: Range::new(0, hi),
        },
        &[x],
    );
    c.inputs = vec![x];
    c.outputs = vec![t];
    let info = verify(&c).unwrap();
    (c, info)
}

/// Bootstraps `n` known values in the partition of `precision`; returns the outputs, the
/// messages as torus values (×2^64) and the encoding width.
fn bootstrap_outputs(
    client: &ClientKey,
    server: &ServerKey,
    precision: u32,
    n: usize,
) -> (Vec<Ciphertext>, Vec<u64>) {
    let (c, info) = identity_circuit(n, precision);
    let ev = Evaluator::new(&c, &info, server).unwrap();
    let values: Vec<i64> = (0..n as i64).map(|i| i % (1 << precision)).collect();
    let out = ev
        .run(vec![client.encrypt(&values, info.encoding_bits)], &|_| {})
        .unwrap();
    assert_eq!(client.decrypt(&out[0], info.encoding_bits).unwrap(), values);
    let delta = 1u64 << (63 - info.encoding_bits);
    let messages = values.iter().map(|&v| v as u64 * delta).collect();
    (out.into_iter().next().unwrap(), messages)
}

fn torus_error(phase: i64, message: u64) -> f64 {
    phase.wrapping_sub(message as i64) as f64 / 2f64.powi(64)
}

fn check(what: &str, measured: f64, predicted: f64) {
    let ratio = measured / predicted;
    println!(
        "{what}: σ measured 2^{:.2}, predicted 2^{:.2} (variance ratio {ratio:.2})",
        measured.sqrt().log2(),
        predicted.sqrt().log2()
    );
    assert!(
        ratio < TOO_NOISY,
        "{what}: measured noise is {ratio:.2}× the model's variance"
    );
    assert!(
        ratio > TOO_PESSIMISTIC,
        "{what}: the model is far too pessimistic ({ratio:.3})"
    );
}

#[test]
fn noise_model_holds_on_the_parameters_chosen_for_mlp_iris() {
    // exact rounding: its chunk bootstraps get their own partition, so key switches
    // cross partitions (approximate rounding would leave mlp_iris with one)
    let cfg = fhec_quant::QuantConfig {
        rounding_approximate: false,
        ..Default::default()
    };
    let (a, _) = compile("mlp_iris", Some(cfg));
    let keys: &KeyParams = &a.server.params.keys;
    assert!(
        keys.partitions.len() >= 2,
        "mlp_iris is expected to use several partitions"
    );
    let (client, server) = generate_keys(keys);

    // 1. every partition's bootstrap output
    let mut outputs = Vec::new();
    for (i, part) in keys.partitions.iter().enumerate() {
        let p = &part.params;
        let n = if p.polynomial_size >= 8192 { 24 } else { 64 };
        let (cts, msgs) = bootstrap_outputs(&client, &server, part.precision, n);
        let var = cts
            .iter()
            .zip(&msgs)
            .map(|(ct, &m)| torus_error(client.phase(ct).unwrap(), m).powi(2))
            .sum::<f64>()
            / n as f64;
        let predicted = p.pbs_variance();
        check(
            &format!("partition {i} PBS output (N={})", p.polynomial_size),
            var,
            predicted,
        );
        outputs.push((cts, msgs, predicted));
    }

    // 2. a blind rotation's input: Σ w·(bootstrap outputs) scaled by 2^s, key-switched
    //    into each partition and modulus-switched to 2N, read under its small key
    let (probe_circuit, probe_info) = identity_circuit(1, keys.partitions[0].precision);
    let ev = Evaluator::new(&probe_circuit, &probe_info, &server).unwrap();
    let weights: Vec<i64> = (0..16).map(|j| ((j * 37 + 11) % 63) - 31).collect();
    let w2: f64 = weights.iter().map(|&w| (w * w) as f64).sum();
    for (q, target) in keys.partitions.iter().enumerate() {
        // a source partition whose outputs this partition's key switch can read
        let Some((src, (cts, msgs, v_pbs))) = outputs
            .iter()
            .enumerate()
            .find(|(_, (cts, ..))| cts[0].lwe_size().0 - 1 <= target.ks_input_dimension)
        else {
            continue;
        };
        let p = &target.params;
        let dim = cts[0].lwe_size().0 - 1;
        let v_in = keyswitch_variance(dim, p.lwe_dimension, p.ks_base_log, p.ks_level)
            + modulus_switch_variance(p.lwe_dimension, p.polynomial_size);
        // a scale making the carried noise about as large as the key/modulus switch noise
        let s = (((v_in / (w2 * v_pbs)).log2() / 2.0).round().max(0.0)) as u32;
        let predicted = w2 * v_pbs * 4f64.powi(s as i32) + v_in;
        let two_n = 2 * p.polynomial_size as u64;
        let small = client.small_key(q).as_ref();
        let combos = 256;
        let mut sum = 0.0;
        for r in 0..combos {
            let mut acc = vec![0u64; dim + 1];
            let mut message = 0u64;
            for (j, &w) in weights.iter().enumerate() {
                let k = (r * 7 + j) % cts.len();
                for (a, &c) in acc.iter_mut().zip(cts[k].as_ref()) {
                    *a = a.wrapping_add(c.wrapping_mul(w as u64));
                }
                message = message.wrapping_add(msgs[k].wrapping_mul(w as u64));
            }
            let acc = Ciphertext::from_container(acc, CiphertextModulus::new_native());
            let ms = ev.bootstrap_input(q, &acc, s);
            let (body, mask) = ms.split_last().unwrap();
            let dot = mask
                .iter()
                .zip(small)
                .fold(0u64, |d, (&a, &k)| d.wrapping_add(a.wrapping_mul(k)));
            let phase = body.wrapping_sub(dot) % two_n;
            // expected position on the 2N grid, as a real number
            let expected = message.wrapping_shl(s) as f64 / 2f64.powi(64) * two_n as f64;
            let mut e = (phase as f64 - expected) / two_n as f64;
            e -= e.round();
            sum += e * e;
        }
        check(
            &format!(
                "partition {src} outputs, Σw² = 2^{:.1}, ×2^{s}, key switch + modulus switch into partition {q} (N={})",
                w2.log2(),
                p.polynomial_size
            ),
            sum / combos as f64,
            predicted,
        );
    }
}
