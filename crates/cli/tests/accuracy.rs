//! The float reference matches onnxruntime, and simulation at the default settings stays
//! within 2 accuracy points (R² within 0.02) of the float model on held-out data.

mod common;

use common::*;

const MODELS: &[&str] = &[
    "logreg_iris",
    "logreg_breast_zipmap",
    "linreg_diabetes",
    "mlp_iris",
    "mlp_digits",
    "mlp_wine_matmul",
];
const OPS: &[&str] = &[
    "op_relu",
    "op_sigmoid",
    "op_tanh",
    "op_identity",
    "op_add_const",
    "op_sub_const",
    "op_mul_const",
    "op_div_const",
    "op_matmul_add",
    "op_flatten",
    "op_reshape",
    "op_constant",
    "op_softmax",
    "op_argmax",
];

/// `--mode clear` reproduces the onnxruntime outputs stored with each fixture.
#[test]
fn float_reference_matches_onnxruntime() {
    for name in MODELS.iter().chain(OPS) {
        let graph = fhec::pipeline::import_model(&fixture(name).join("model.onnx")).unwrap();
        let samples = fhec::data::load_samples(&fixture(name).join("test_x.npy"), &graph).unwrap();
        let outputs = fhec::run::clear(&graph, &samples).unwrap();
        let stacked = fhec::data::stack_outputs(&graph, &outputs);
        let reference = fhec::npy::read_arrays(&fixture(name).join("reference.npz")).unwrap();
        for (out_name, ours) in &stacked {
            let (_, theirs) = reference
                .iter()
                .find(|(n, _)| n.as_deref() == Some(out_name.as_str()))
                .unwrap_or_else(|| panic!("{name}: no reference for {out_name}"));
            assert_eq!(
                ours.data.len(),
                theirs.data.len(),
                "{name}/{out_name}: size"
            );
            assert_eq!(ours.shape, theirs.shape, "{name}/{out_name}: shape");
            for (i, (a, b)) in ours.data.iter().zip(&theirs.data).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-4 * (1.0 + b.abs()),
                    "{name}/{out_name}[{i}]: fhec {a} vs onnxruntime {b}"
                );
            }
        }
    }
}

#[test]
fn simulation_is_within_two_points_of_the_float_model() {
    for name in MODELS {
        let m = meta(name);
        let (a, info) = compile(name, None);
        let samples = test_samples(name, &a);
        let truth = array(&fixture(name).join("test_y.npy")).data;
        let float_out = fhec::run::clear(&a.client.graph, &samples).unwrap();
        let sim_out: Vec<_> = samples
            .iter()
            .map(|s| fhec::run::simulate(&a, &info, s).unwrap().outputs)
            .collect();
        let (f, s) = (
            predictions(&m, &a, &float_out),
            predictions(&m, &a, &sim_out),
        );
        if m.task == "classification" {
            let (fa, sa) = (accuracy(&f, &truth), accuracy(&s, &truth));
            println!(
                "{name}: float {fa:.4} simulate {sa:.4} ({} PBS/sample)",
                info.pbs_per_sample
            );
            assert!(
                (fa - m.float_metric.unwrap()).abs() < 1e-9,
                "{name}: float accuracy {fa} differs from the fixture's {:?}",
                m.float_metric
            );
            assert!(
                sa >= fa - 0.02 - 1e-9,
                "{name}: simulate accuracy {sa} more than 2 points below float {fa}"
            );
        } else {
            let (fr, sr) = (r2(&f, &truth), r2(&s, &truth));
            println!("{name}: float R² {fr:.4} simulate R² {sr:.4}");
            assert!(
                (fr - sr).abs() <= 0.02,
                "{name}: simulate R² {sr} vs float {fr}"
            );
        }
    }
}

/// Each one-op fixture: at 7 bits, simulated outputs track the float reference (measured
/// 1–15% relative RMS; a wrong lowering, such as a reversed constant, is off by order
/// 100%). The float semantics themselves are pinned against onnxruntime above.
/// Parameters are irrelevant here, hence the loose p_error.
#[test]
fn one_op_fixtures_simulate_close_to_float() {
    let cfg = fhec_quant::QuantConfig {
        rounding_bits: Some(7),
        ..fhec_quant::QuantConfig::default().with_n_bits(7)
    };
    for name in OPS {
        let (a, info) = compile_with(name, Some(cfg.clone()), 0.25);
        let samples = test_samples(name, &a);
        let float_out = fhec::run::clear(&a.client.graph, &samples).unwrap();
        let (mut err, mut scale) = (0.0f64, 0.0f64);
        for (s, f) in samples.iter().zip(&float_out) {
            let sim = fhec::run::simulate(&a, &info, s).unwrap().outputs;
            for (x, y) in sim[0].data.iter().zip(&f[0].data) {
                err += (x - y).powi(2);
                scale += y.powi(2);
            }
        }
        let rel = (err / scale).sqrt();
        println!(
            "{name}: relative RMS error {rel:.4}, {} PBS/sample",
            info.pbs_per_sample
        );
        assert!(
            rel < 0.2,
            "{name}: simulate is {rel} (relative RMS) away from float"
        );
    }
}
