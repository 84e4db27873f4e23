//! The noise model checked against real ciphertexts: the variance of bootstrap outputs
//! measured on tfhe-rs ciphertexts must match the model's prediction.

use fhec_backend_tfhe::{generate_keys, CryptoParams, Evaluator, KeyParams, PartitionKeyParams};
use fhec_ir::{verify, Circuit, IntOp, Node, Range, Status};

/// input (u3, `n` elements) → identity table of precision 3; output encoding W = 3.
fn identity_circuit(n: usize) -> Circuit {
    let mut c = Circuit::default();
    let x = c.add(
        Node {
            name: "x".into(),
            op: IntOp::Input { index: 0, bits: 3 },
            shape: vec![1, n],
            status: Status::Encrypted,
            range: Range::new(0, 7),
        },
        &[],
    );
    let table: Vec<i64> = (0..8).collect();
    let t = c.add(
        Node {
            name: "id".into(),
            op: IntOp::Lut {
                precision: 3,
                tables: vec![table],
                table_of: vec![0; n],
            },
            shape: vec![1, n],
            status: Status::Encrypted,
            range: Range::new(0, 7),
        },
        &[x],
    );
    c.inputs = vec![x];
    c.outputs = vec![t];
    c
}

/// Measured over `samples` bootstraps: variance of (phase − expected) on the torus.
fn measured_pbs_variance(params: &CryptoParams, samples: usize) -> f64 {
    let c = identity_circuit(samples);
    let info = verify(&c).unwrap();
    let keys = KeyParams {
        input_dimension: params.big_dimension(),
        partitions: vec![PartitionKeyParams {
            precision: 3,
            params: *params,
            ks_input_dimension: params.big_dimension(),
        }],
    };
    let (client, server) = generate_keys(&keys);
    let ev = Evaluator::new(&c, &info, &server).unwrap();
    let values: Vec<i64> = (0..samples as i64).map(|i| i % 8).collect();
    let out = ev
        .run(vec![client.encrypt(&values, info.encoding_bits)], &|_| {})
        .unwrap();
    let delta = 1u64 << (63 - info.encoding_bits);
    let errs: Vec<f64> = out[0]
        .iter()
        .zip(&values)
        .map(|(ct, &v)| {
            (client
                .phase(ct)
                .unwrap()
                .wrapping_sub((v as u64 * delta) as i64)) as f64
                / 2f64.powi(64)
        })
        .collect();
    assert_eq!(
        client.decrypt(&out[0], info.encoding_bits).unwrap(),
        values,
        "identity bootstrap decoded wrong values"
    );
    errs.iter().map(|e| e * e).sum::<f64>() / errs.len() as f64
}

fn check(params: CryptoParams, samples: usize) {
    let predicted = params.pbs_variance();
    let measured = measured_pbs_variance(&params, samples);
    let ratio = measured / predicted;
    println!(
        "{params:?}: PBS output σ measured 2^{:.2}, predicted 2^{:.2} (variance ratio {ratio:.2})",
        measured.sqrt().log2(),
        predicted.sqrt().log2()
    );
    // the model is a bound for parameter choice: it may be pessimistic, never much optimistic
    assert!(
        ratio < 2.0,
        "measured PBS noise is {ratio:.1}× the predicted variance"
    );
    assert!(
        ratio > 1.0 / 64.0,
        "the model is far too pessimistic ({ratio})"
    );
}

#[test]
fn pbs_output_noise_matches_the_model_small_base() {
    check(
        CryptoParams {
            lwe_dimension: 900,
            glwe_dimension: 1,
            polynomial_size: 2048,
            pbs_base_log: 8,
            pbs_level: 3,
            ks_base_log: 3,
            ks_level: 5,
            bsk_body_bits: 64,
        },
        96,
    );
}

/// Bootstrap-key bodies rounded to 40 bits (how evaluation keys travel): the rounding
/// dominates the output noise, and the model counts it.
#[test]
fn pbs_output_noise_matches_the_model_with_rounded_key_bodies() {
    let params = CryptoParams {
        lwe_dimension: 900,
        glwe_dimension: 1,
        polynomial_size: 2048,
        pbs_base_log: 15,
        pbs_level: 3,
        ks_base_log: 3,
        ks_level: 5,
        bsk_body_bits: 40,
    };
    let full = CryptoParams {
        bsk_body_bits: 64,
        ..params
    };
    assert!(
        params.pbs_variance() > 16.0 * full.pbs_variance(),
        "the rounding should dominate this set's noise"
    );
    check(params, 96);
}

#[test]
fn pbs_output_noise_matches_the_model_large_base() {
    check(
        CryptoParams {
            lwe_dimension: 900,
            glwe_dimension: 1,
            polynomial_size: 2048,
            pbs_base_log: 15,
            pbs_level: 3,
            ks_base_log: 3,
            ks_level: 5,
            bsk_body_bits: 64,
        },
        96,
    );
}

#[test]
fn pbs_output_noise_matches_the_model_n8192() {
    check(
        CryptoParams {
            lwe_dimension: 898,
            glwe_dimension: 1,
            polynomial_size: 8192,
            pbs_base_log: 15,
            pbs_level: 3,
            ks_base_log: 3,
            ks_level: 6,
            bsk_body_bits: 64,
        },
        32,
    );
}

/// input (u8 in [0, 239], `n` elements) → approximate rounding of 4 bits → identity
/// table of precision 4: FHE returns `round((x + e) / 16)`.
fn approximate_rounding_circuit(n: usize) -> Circuit {
    let mut c = Circuit::default();
    let x = c.add(
        Node {
            name: "x".into(),
            op: IntOp::Input { index: 0, bits: 8 },
            shape: vec![1, n],
            status: Status::Encrypted,
            range: Range::new(0, 239),
        },
        &[],
    );
    let r = c.add(
        Node {
            name: "x/round".into(),
            op: IntOp::Round {
                drop_bits: 4,
                approximate: true,
            },
            shape: vec![1, n],
            status: Status::Encrypted,
            range: Range::new(0, 15),
        },
        &[x],
    );
    let t = c.add(
        Node {
            name: "id".into(),
            op: IntOp::Lut {
                precision: 4,
                tables: vec![(0..16).collect()],
                table_of: vec![0; n],
            },
            shape: vec![1, n],
            status: Status::Encrypted,
            range: Range::new(0, 15),
        },
        &[r],
    );
    c.inputs = vec![x];
    c.outputs = vec![t];
    c
}

/// Approximate rounding on real ciphertexts: results one off the nearest value at the
/// rate the error model (and so `simulate`) predicts, never further off.
#[test]
fn approximate_rounding_error_rate_matches_the_model() {
    const N: usize = 480;
    const DRAWS: u64 = 64;
    let c = approximate_rounding_circuit(N);
    let info = verify(&c).unwrap();
    let budget = fhec_backend_tfhe::NoiseBudget::of(&c, &info);
    let choice = fhec_backend_tfhe::choose_params(
        &budget,
        fhec_backend_tfhe::PErrorTarget::PerPbs(2f64.powi(-40)),
    )
    .unwrap();
    let noise = fhec_backend_tfhe::noise::error_model(&c, &info, &choice);
    let sigma = noise.sigma.clone();
    // every value twice, so both sides of each boundary are well sampled
    let values: Vec<i64> = (0..N as i64).map(|i| i % 240).collect();
    let expected = fhec_ir::interp::simulate(&c, &info, std::slice::from_ref(&values)).unwrap();
    let off = |out: &[i64]| out.iter().zip(&expected[0]).filter(|(a, b)| a != b).count();
    let simulated: f64 = (0..DRAWS)
        .map(|seed| {
            let out = fhec_ir::interp::simulate_noisy(
                &c,
                &info,
                std::slice::from_ref(&values),
                &noise,
                seed,
            )
            .unwrap();
            off(&out[0]) as f64
        })
        .sum::<f64>()
        / DRAWS as f64;

    let (client, server) = generate_keys(&choice.keys);
    let ev = Evaluator::new(&c, &info, &server).unwrap();
    let out = ev
        .run(vec![client.encrypt(&values, info.encoding_bits)], &|_| {})
        .unwrap();
    let fhe = client.decrypt(&out[0], info.encoding_bits).unwrap();
    let measured = off(&fhe);
    println!(
        "σ = {:.3} operand units; off by one: FHE {measured}/{N}, simulate {simulated:.1}/{N}",
        sigma[1]
    );
    for (i, (a, b)) in fhe.iter().zip(&expected[0]).enumerate() {
        assert!(
            (a - b).abs() <= 1,
            "x = {}: FHE gave {a}, nearest is {b}",
            values[i]
        );
    }
    assert!(
        simulated > 10.0,
        "the model predicts too few errors to test"
    );
    // a binomial count: within 4 standard deviations of the prediction
    let bound = 4.0 * simulated.sqrt() + 2.0;
    assert!(
        (measured as f64 - simulated).abs() <= bound,
        "FHE rounded {measured} of {N} values off by one, the model predicts {simulated:.1} (± {bound:.1})"
    );
}

/// x (6 bits) → a rounding of 2 bits → a 4-bit table → one output `bias + w·Σ`: an
/// output whose span is `60·w + 1` units.
fn wide_output_circuit(approximate: bool, w: i64, bias: i64) -> Circuit {
    let mut c = Circuit::default();
    let x = c.add(
        Node {
            name: "x".into(),
            op: IntOp::Input { index: 0, bits: 6 },
            shape: vec![1, 4],
            status: Status::Encrypted,
            range: Range::new(0, 63),
        },
        &[],
    );
    let r = c.add(
        Node {
            name: "x/round".into(),
            op: IntOp::Round {
                drop_bits: 2,
                approximate,
            },
            shape: vec![1, 4],
            status: Status::Encrypted,
            range: Range::new(0, 16),
        },
        &[x],
    );
    let t = c.add(
        Node {
            name: "relu".into(),
            op: IntOp::Lut {
                precision: 5,
                tables: vec![(0..32).map(|v: i64| v.min(15)).collect()],
                table_of: vec![0; 4],
            },
            shape: vec![1, 4],
            status: Status::Encrypted,
            range: Range::new(0, 15),
        },
        &[r],
    );
    let y = c.add(
        Node {
            name: "y".into(),
            op: IntOp::Linear {
                inputs: 4,
                outputs: 1,
                weight: vec![w; 4],
                bias: vec![bias],
            },
            shape: vec![1, 1],
            status: Status::Encrypted,
            range: Range::new(bias, bias + 60 * w),
        },
        &[t],
    );
    c.inputs = vec![x];
    c.outputs = vec![y];
    c
}

/// Outputs carry a modelled error only where the circuit already rounds approximately,
/// only when they keep more bits than anything that computed them, and never so much
/// that a value could wrap out of the encoding; the parameters honour the looser margin
/// and report it.
#[test]
fn outputs_carry_a_modelled_error_only_where_it_is_safe() {
    let slack = |c: &Circuit| {
        let info = verify(c).unwrap();
        fhec_backend_tfhe::noise::output_slack_bits(c, &info)
    };
    let wide = wide_output_circuit(true, 1000, 0);
    let k = slack(&wide);
    assert!(
        k > 0,
        "a 16-bit output of 4-bit tables keeps its low bits: {k}"
    );
    assert_eq!(
        slack(&wide_output_circuit(false, 1000, 0)),
        0,
        "exact circuit"
    );
    assert_eq!(
        slack(&wide_output_circuit(true, 1, 0)),
        0,
        "a narrow output"
    );
    // near the top of the encoding, the headroom bounds the error
    let edge = wide_output_circuit(true, 1000, 5500);
    let info = verify(&edge).unwrap();
    let top = edge.node(edge.outputs[0]).range.hi;
    let k_edge = slack(&edge);
    assert!(k_edge < k, "{k_edge} at the edge, {k} inside");
    assert!(
        top + (1i64 << k_edge.saturating_sub(1)) < 1i64 << info.encoding_bits,
        "an error of 2^(k−1) could wrap {top} at W = {}",
        info.encoding_bits
    );
    let budget = fhec_backend_tfhe::NoiseBudget::of(&wide, &verify(&wide).unwrap());
    assert_eq!(budget.output_slack_bits, k);
    let choice = fhec_backend_tfhe::choose_params(
        &budget,
        fhec_backend_tfhe::PErrorTarget::PerPbs(2f64.powi(-40)),
    )
    .unwrap();
    assert_eq!(choice.output_slack_bits, k);
    assert!(choice.p_error_output <= 2f64.powi(-40));
    // simulation draws the error: about the predicted deviation, in output units
    let sigma = fhec_backend_tfhe::output_sigma(&budget, &choice);
    assert!(
        sigma > 0.0 && sigma * 7.0 < (1u64 << (k - 1)) as f64 + 0.5,
        "σ = {sigma}"
    );
}
