//! Real TFHE execution against simulation (real keys, real ciphertexts): bit for bit
//! with exact rounding, and at the predicted rate of off-by-one roundings with the
//! default approximate rounding.

mod common;

use common::*;

/// Exact rounding: FHE decrypts exactly what simulate computes.
fn fhe_equals_simulate(name: &str, samples: usize) -> usize {
    let cfg = fhec_quant::QuantConfig {
        rounding_approximate: false,
        ..Default::default()
    };
    fhe_equals_simulate_with(name, samples, cfg).0
}

/// [`fhe_equals_simulate`] at `cfg`; also the elements of the first circuit output.
fn fhe_equals_simulate_with(
    name: &str,
    samples: usize,
    cfg: fhec_quant::QuantConfig,
) -> (usize, usize) {
    let (a, info) = compile(name, Some(cfg));
    let mut first_output = 0;
    let (client, server) = parties(&a);
    let (secret, evaluation) = client.keygen();
    let key = server.prepare(&evaluation).unwrap();
    let data = test_samples(name, &a);
    for (i, s) in data.iter().take(samples).enumerate() {
        let fhe = fhe_once(&client, &server, &key, &secret, s);
        let sim = fhec_runtime::simulate::simulate(&a, &info, s).unwrap();
        first_output = fhe.circuit_outputs[0].len();
        assert_eq!(
            fhe.circuit_outputs, sim.circuit_outputs,
            "{name} sample {i}: FHE decrypted different integers than simulate"
        );
        for (x, y) in fhe.outputs.iter().zip(&sim.outputs) {
            assert_eq!(x.data, y.data, "{name} sample {i}: model outputs differ");
        }
    }
    (info.pbs_per_sample, first_output)
}

#[test]
fn logreg_iris_fhe_equals_simulate_without_bootstrap() {
    assert_eq!(
        fhe_equals_simulate("logreg_iris", 3),
        0,
        "a linear model needs no bootstrap"
    );
}

#[test]
fn logreg_breast_zipmap_fhe_equals_simulate() {
    assert_eq!(fhe_equals_simulate("logreg_breast_zipmap", 3), 0);
}

#[test]
fn linreg_diabetes_fhe_equals_simulate() {
    assert_eq!(fhe_equals_simulate("linreg_diabetes", 3), 0);
}

#[test]
fn mlp_iris_fhe_equals_simulate() {
    assert!(fhe_equals_simulate("mlp_iris", 3) > 0);
}

#[test]
fn mlp_wine_matmul_fhe_equals_simulate() {
    assert!(fhe_equals_simulate("mlp_wine_matmul", 3) > 0);
}

/// Activations' linear parts past their lookups (residual tables, an affine copy beside
/// the input) and output weights in two parts (the circuit output holds the remainders
/// after the 3 class scores; the client adds them) decrypt to what simulate computes.
#[test]
fn linear_bypass_and_two_part_outputs_fhe_equal_simulate() {
    let cfg = fhec_quant::QuantConfig {
        rounding_approximate: false,
        linear_bypass: true,
        split_output_weights: true,
        ..Default::default()
    };
    let (pbs, outputs) = fhe_equals_simulate_with("mlp_iris", 2, cfg);
    assert!(pbs > 0);
    assert_eq!(outputs, 6, "3 class scores and their remainders");
}

#[test]
fn mlp_digits_fhe_equals_simulate() {
    assert!(fhe_equals_simulate("mlp_digits", 3) > 0);
}

/// A QAT model (its own grids and integer weights) on real ciphertexts.
#[test]
fn qat_mlp_iris_fhe_equals_simulate() {
    assert!(fhe_equals_simulate("qat_mlp_iris", 1) > 0);
}

/// Tree ensembles (issue 6): comparisons, path sums and leaf tables on real ciphertexts.
#[test]
fn decision_tree_fhe_equals_simulate() {
    assert!(fhe_equals_simulate("dt_breast", 3) > 0);
}

#[test]
fn xgboost_fhe_equals_simulate() {
    assert!(fhe_equals_simulate("xgb_breast", 3) > 0);
}

#[test]
fn random_forest_fhe_equals_simulate() {
    assert!(fhe_equals_simulate("rf_breast", 3) > 0);
}

#[test]
fn gradient_boosting_fhe_equals_simulate() {
    assert!(fhe_equals_simulate("gbr_diabetes", 3) > 0);
}

#[test]
fn one_op_sigmoid_fhe_equals_simulate() {
    assert!(fhe_equals_simulate("op_sigmoid", 3) > 0);
}

/// Approximate rounding (the default): FHE agrees with simulate's error model. Each
/// output element of the first `samples` test samples must lie within 1.5 times the
/// widest deviation `DRAWS` seeded simulations produce (the deviations are heavy-tailed:
/// mostly none, sometimes a few off-by-one roundings times a large weight, so the bound
/// comes from many draws; a 32-draw bound failed about one run in fifty on
/// residual_digits while FHE stayed inside the simulated distribution), the number of elements off the
/// expected value must be a plausible binomial draw around the simulated mean, and a
/// classifier's FHE class must be one that some simulation also predicts. Returns the
/// elements FHE got off the expected value.
fn fhe_agrees_with_noisy_simulate(
    name: &str,
    cfg: Option<fhec_quant::QuantConfig>,
    samples: usize,
) -> usize {
    const DRAWS: u64 = 500;
    let (a, info) = compile(name, cfg);
    assert!(
        a.server.circuit.ids().any(|id| matches!(
            a.server.circuit.node(id).op,
            fhec_ir::IntOp::Round {
                approximate: true,
                ..
            }
        )),
        "{name} rounds approximately"
    );
    let (client, server) = parties(&a);
    let (secret, evaluation) = client.keygen();
    let key = server.prepare(&evaluation).unwrap();
    let data = test_samples(name, &a);
    let sim = fhec_runtime::simulate::Simulator::new(&a, &info, 0);
    let argmax = |v: &[i64]| (0..v.len()).max_by_key(|&j| v[j]).unwrap_or(0);
    let classifier = meta(name).argmax;
    let (mut elements, mut fhe_off, mut sim_off) = (0usize, 0usize, 0.0f64);
    for (i, s) in data.iter().take(samples).enumerate() {
        let fhe = fhe_once(&client, &server, &key, &secret, s);
        let expected = fhec_runtime::simulate::simulate(&a, &info, s)
            .unwrap()
            .circuit_outputs;
        let mut spread: Vec<Vec<i64>> = expected.iter().map(|o| vec![0; o.len()]).collect();
        let mut classes = std::collections::BTreeSet::from([argmax(&expected[0])]);
        for seed in 0..DRAWS {
            let noisy = sim.run_seeded(seed, i, s).unwrap();
            sim_off += fhec_runtime::simulate::differing(&noisy.circuit_outputs, &expected) as f64
                / DRAWS as f64;
            for (d, (x, y)) in spread
                .iter_mut()
                .zip(noisy.circuit_outputs.iter().zip(&expected))
            {
                for (d, (x, y)) in d.iter_mut().zip(x.iter().zip(y)) {
                    *d = (*d).max((x - y).abs());
                }
            }
            classes.insert(argmax(&noisy.circuit_outputs[0]));
        }
        for (o, (x, y)) in fhe.circuit_outputs.iter().zip(&expected).enumerate() {
            for (j, (x, y)) in x.iter().zip(y).enumerate() {
                assert!(
                    2 * (x - y).abs() <= 3 * spread[o][j] + 4,
                    "{name} sample {i} output {o}[{j}]: FHE {x}, expected {y}, simulated deviations up to {}",
                    spread[o][j]
                );
            }
        }
        if classifier {
            let c = argmax(&fhe.circuit_outputs[0]);
            assert!(
                classes.contains(&c),
                "{name} sample {i}: FHE class {c}, simulated classes {classes:?}"
            );
        }
        elements += expected.iter().map(Vec::len).sum::<usize>();
        fhe_off += fhec_runtime::simulate::differing(&fhe.circuit_outputs, &expected);
    }
    println!(
        "{name}: outputs off the expected value: FHE {fhe_off}/{elements}, simulate {sim_off:.1}"
    );
    // a binomial count: within 4 standard deviations of the simulated mean
    assert!(
        (fhe_off as f64 - sim_off).abs() <= 4.0 * sim_off.sqrt() + 2.0,
        "{name}: FHE {fhe_off} vs simulated {sim_off:.1} of {elements}"
    );
    fhe_off
}

/// Issue 5's operator kinds on real ciphertexts: a convolution (linear, then a ReLU
/// table), a univariate activation, and two bivariate ops (max: one table on the
/// difference; product: two square tables).
#[test]
fn conv2d_fhe_agrees_with_simulate_at_default_approximate_rounding() {
    fhe_agrees_with_noisy_simulate("op_conv2d", None, 2);
}

/// Issue 5's CNN fixture (Conv → ReLU → AvgPool → Conv → ReLU → Flatten → Gemm) at the
/// settings of its accuracy test, one sample (176 bootstraps).
#[test]
fn cnn_fhe_agrees_with_simulate() {
    let cfg = fhec_quant::QuantConfig {
        input_bits: 7,
        ..Default::default()
    };
    fhe_agrees_with_noisy_simulate("cnn_digits", Some(cfg), 1);
}

/// Issue 5's residual block: the Add of two encrypted branches, one sample.
#[test]
fn residual_block_fhe_agrees_with_simulate() {
    fhe_agrees_with_noisy_simulate("residual_digits", None, 1);
}

/// `--comparison-bits 4`: tree comparisons read through an approximate rounding whose
/// boundary is the threshold (docs/TREES.md), on real ciphertexts.
#[test]
fn xgboost_fhe_agrees_with_simulate_with_threshold_aligned_comparisons() {
    let cfg = fhec_quant::QuantConfig {
        comparison_bits: Some(4),
        ..Default::default()
    };
    fhe_agrees_with_noisy_simulate("xgb_breast", Some(cfg), 3);
}

#[test]
fn leakyrelu_fhe_equals_simulate() {
    assert!(fhe_equals_simulate("op_leakyrelu", 1) > 0);
}

#[test]
fn max_of_two_encrypted_fhe_equals_simulate() {
    assert!(fhe_equals_simulate("op_max_two", 1) > 0);
}

#[test]
fn product_of_two_encrypted_fhe_equals_simulate() {
    assert!(fhe_equals_simulate("op_mul_two", 1) > 0);
}

/// k-nearest neighbours: every compare-exchange of the selection network is an exact
/// lookup on packed distance-and-label keys, so FHE decrypts the very labels simulate
/// computes.
#[test]
fn k_nearest_neighbours_fhe_equals_simulate() {
    assert!(fhe_equals_simulate("knn_small", 2) > 0);
}

/// k-NN on 13 features, whose distances are too wide for one lookup: they are folded
/// through an approximate rounding before they are clipped, and the keys are the same
/// whichever way FHE's rounding errs, so FHE decrypts the codes simulate computes.
#[test]
fn folded_k_nearest_neighbours_fhe_equals_simulate() {
    let (a, _) = compile("knn_wine_small", None);
    let c = &a.server.circuit;
    assert!(
        c.ids()
            .any(|id| c.node(id).name.ends_with("neighbours/fold/round")),
        "knn_wine_small's distances are folded"
    );
    assert!(fhe_equals_simulate("knn_wine_small", 1) > 0);
}
