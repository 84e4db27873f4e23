//! Real TFHE execution equals simulation bit for bit, on three held-out samples per
//! fixture model (real keys, real ciphertexts).

mod common;

use common::*;

fn fhe_equals_simulate(name: &str, samples: usize) -> usize {
    let (a, info) = compile(name, None);
    let (client, server) = fhec::run::keys(&a);
    let evaluator = fhec::run::evaluator(&a, &info, &server).unwrap();
    let data = test_samples(name, &a);
    for (i, s) in data.iter().take(samples).enumerate() {
        let fhe = fhec::run::fhe(&a, &info, &client, &evaluator, s, &|_| {}).unwrap();
        let sim = fhec::run::simulate(&a, &info, s).unwrap();
        assert_eq!(
            fhe.circuit_outputs, sim.circuit_outputs,
            "{name} sample {i}: FHE decrypted different integers than simulate"
        );
        for (x, y) in fhe.outputs.iter().zip(&sim.outputs) {
            assert_eq!(x.data, y.data, "{name} sample {i}: model outputs differ");
        }
    }
    info.pbs_per_sample
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

#[test]
fn mlp_digits_fhe_equals_simulate() {
    assert!(fhe_equals_simulate("mlp_digits", 3) > 0);
}

#[test]
fn one_op_sigmoid_fhe_equals_simulate() {
    assert!(fhe_equals_simulate("op_sigmoid", 3) > 0);
}

/// Issue 5's operator kinds on real ciphertexts: a convolution (linear, then a ReLU
/// table), a univariate activation, and two bivariate ops (max: one table on the
/// difference; product: two square tables).
#[test]
fn conv2d_fhe_equals_simulate() {
    assert!(fhe_equals_simulate("op_conv2d", 1) > 0);
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
