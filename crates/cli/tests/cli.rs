//! The command-line contract: what compile writes, what inspect reports and exits with.

mod common;

use common::{compile_fixture, fhec, fixture, tmp};

#[test]
fn compile_writes_artifact_and_mlir_and_inspect_reads_them() {
    let d = tmp("compile");
    let f = fixture("mlp_iris");
    let out = d.join("iris.fhe");
    let (code, stdout, err) = fhec(&[
        "compile",
        f.join("model.onnx").to_str().unwrap(),
        "--inputset",
        f.join("train.npy").to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--rounding",
        "exact",
    ]);
    assert_eq!(code, 0, "{err}");
    for needle in [
        "ops:",
        "TLUs 16",
        "PBS per sample",
        "max TLU precision 6 bits",
        "parameters:",
        "compile time",
    ] {
        assert!(
            stdout.contains(needle),
            "summary lacks '{needle}': {stdout}"
        );
    }
    let mlir = std::fs::read_to_string(d.join("iris.mlir")).unwrap();
    assert!(
        mlir.starts_with("// fhec")
            && mlir.contains("func.func @main")
            && mlir.contains("FHELinalg.apply_mapped_lookup_table"),
        "{mlir}"
    );
    // test vectors beside the MLIR: what @main receives and what the circuit returns
    let vectors = fhec::npy::read_arrays(&d.join("iris.vectors.npz")).unwrap();
    let get = |k: &str| {
        vectors
            .iter()
            .find(|(n, _)| n.as_deref() == Some(k))
            .unwrap_or_else(|| panic!("no {k} in the test vectors"))
            .1
            .clone()
    };
    let (inp, outp) = (get("input_0"), get("output_0"));
    assert_eq!((inp.dtype, inp.shape.clone()), ("<i8", vec![3, 1, 4]));
    assert_eq!(outp.shape, vec![3, 1, 3]);
    let (a, info) = fhec::files::load_artifact(&out).unwrap();
    for s in 0..3 {
        let q: Vec<i64> = inp.data[s * 4..(s + 1) * 4]
            .iter()
            .map(|&x| x as i64)
            .collect();
        let r = fhec_ir::interp::simulate(&a.server.circuit, &info, &[q]).unwrap();
        let expected: Vec<i64> = outp.data[s * 3..(s + 1) * 3]
            .iter()
            .map(|&x| x as i64)
            .collect();
        assert_eq!(r[0], expected, "sample {s}");
    }
    let (code, json, err) = fhec(&["inspect", out.to_str().unwrap(), "--format", "json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["tlu_count"], 16);
    // 7 dropped bits per neuron, in chunks of the width the optimizer chose
    let chunk = v["rounding_chunk_bits"].as_u64().unwrap() as u32;
    assert_eq!(
        v["rounding_pbs"].as_u64().unwrap() as usize,
        16 * fhec_ir::rounding_pbs_count(7, chunk)
    );
    let pbs = v["pbs_per_sample"].as_u64().unwrap();
    assert_eq!(pbs, 16 + v["rounding_pbs"].as_u64().unwrap());
    assert!(pbs <= 112, "no more bootstraps than Concrete ML's 112");
    // one parameter set per precision: the 6-bit tables need a larger N than rounding
    let params = &v["params"];
    let parts = params["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 2, "{params}");
    let n_of = |p: &serde_json::Value| p["params"]["polynomial_size"].as_u64().unwrap();
    assert_eq!(parts[1]["precision"], 6);
    assert!(n_of(&parts[0]) < n_of(&parts[1]), "{params}");
    let sum: u64 = parts
        .iter()
        .map(|p| p["pbs_per_sample"].as_u64().unwrap())
        .sum();
    assert_eq!(sum, pbs);
    let p_pbs = params["p_error_per_pbs"].as_f64().unwrap();
    assert!(p_pbs > 0.0 && p_pbs <= 2f64.powi(-40), "{params}");
    assert!(params["p_error_circuit"].as_f64().unwrap() <= (pbs as f64 + 3.0) * 2f64.powi(-40));
    assert!(v["predicted_latency"]["ms"].as_f64().unwrap() > 0.0);
    assert_eq!(v["max_tlu_bits"], 6);
    assert!(v["max_bits"].as_u64().unwrap() <= 16);
    assert_eq!(v["violations"].as_array().unwrap().len(), 0);
    let nodes = v["nodes"].as_array().unwrap();
    assert!(nodes
        .iter()
        .any(|n| n["op"] == "lut" && n["tlu_bits"] == 6 && n["encrypted"] == true));
}

/// The default rounding is approximate: no rounding bootstrap, and inspect shows each
/// table's precision before and after rounding with the predicted off-by-one rate.
#[test]
fn default_rounding_is_approximate_and_inspect_shows_both_precisions() {
    let f = fixture("mlp_iris");
    let (model, inputset) = (f.join("model.onnx"), f.join("train.npy"));
    let args = [
        "inspect",
        model.to_str().unwrap(),
        "--inputset",
        inputset.to_str().unwrap(),
    ];
    let (code, json, err) = fhec(&[&args[..], &["--format", "json"]].concat());
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["rounding_pbs"], 0);
    assert_eq!(v["pbs_per_sample"], v["tlu_count"]);
    let nodes = v["nodes"].as_array().unwrap();
    let read: Vec<_> = nodes
        .iter()
        .filter(|n| n["tlu_bits_before_rounding"].is_u64())
        .collect();
    assert!(!read.is_empty(), "{json}");
    for n in &read {
        assert_eq!(n["rounding"], "approximate");
        assert!(
            n["tlu_bits_before_rounding"].as_u64() > n["tlu_bits"].as_u64(),
            "{n}"
        );
    }
    let rates: Vec<f64> = nodes
        .iter()
        .filter_map(|n| n["off_by_one_rate"].as_f64())
        .collect();
    assert!(
        !rates.is_empty() && rates.iter().all(|&r| r > 0.0 && r < 0.5),
        "{rates:?}"
    );
    let (code, text, err) = fhec(&args);
    assert_eq!(code, 0, "{err}");
    assert!(
        text.contains("≈6") && text.contains("one off the nearest value"),
        "{text}"
    );
}

#[test]
fn inspect_exits_1_and_names_values_over_16_bits() {
    let f = fixture("mlp_digits");
    let (model, inputset) = (f.join("model.onnx"), f.join("train.npy"));
    let args = [
        "inspect",
        model.to_str().unwrap(),
        "--inputset",
        inputset.to_str().unwrap(),
        "--n-bits",
        "8",
        "--rounding-threshold-bits",
        "16",
    ];
    let (code, text, err) = fhec(&args);
    assert_eq!(code, 1, "{text}{err}");
    assert!(
        text.contains("16-bit check:") && text.contains("over 16 bits"),
        "{text}"
    );
    let (code, json, _) = fhec(&[&args[..], &["--format", "json"]].concat());
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let violations = v["violations"].as_array().unwrap();
    assert!(!violations.is_empty());
    assert!(violations
        .iter()
        .all(|x| x["bits"].as_u64().unwrap() > 16 && x["node"].as_str().is_some()));
    // the Graphviz view marks exactly the violators, one DOT node per circuit node
    let (code, dot, _) = fhec(&[&args[..], &["--format", "dot"]].concat());
    assert_eq!(code, 1);
    assert!(
        dot.starts_with("digraph") && dot.trim_end().ends_with('}'),
        "{dot}"
    );
    let nodes = v["nodes"].as_array().unwrap();
    assert_eq!(dot.matches(" [label=").count(), nodes.len());
    assert_eq!(dot.matches("color=\"red\"").count(), violations.len());
    let edges: usize = nodes
        .iter()
        .map(|n| n["operands"].as_array().unwrap().len())
        .sum();
    assert_eq!(dot.matches(" -> ").count(), edges);
    // compile refuses the same circuit, naming the node
    let d = tmp("wide");
    let (code, _, err) = fhec(&[
        "compile",
        args[1],
        "--inputset",
        args[3],
        "--n-bits",
        "8",
        "--rounding-threshold-bits",
        "16",
        "-o",
        d.join("w.fhe").to_str().unwrap(),
    ]);
    assert_eq!(code, 2);
    assert!(
        err.contains("16-bit limit") && err.contains("node '"),
        "{err}"
    );
}

#[test]
fn predict_writes_outputs_keyed_and_typed_like_the_onnx_model() {
    let d = tmp("predict");
    let f = fixture("logreg_breast_zipmap");
    let out = d.join("lr.fhe");
    let (code, _, err) = fhec(&[
        "compile",
        f.join("model.onnx").to_str().unwrap(),
        "--inputset",
        f.join("train.npy").to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let y = d.join("y.npz");
    let (code, _, err) = fhec(&[
        "predict",
        out.to_str().unwrap(),
        "--input",
        f.join("test_x.npy").to_str().unwrap(),
        "--mode",
        "fhe",
        "--limit",
        "4",
        "-o",
        y.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let arrays = fhec::npy::read_arrays(&y).unwrap();
    let label = &arrays
        .iter()
        .find(|(n, _)| n.as_deref() == Some("output_label"))
        .unwrap()
        .1;
    let probs = &arrays
        .iter()
        .find(|(n, _)| n.as_deref() == Some("output_probability"))
        .unwrap()
        .1;
    assert_eq!((label.shape.clone(), label.dtype), (vec![4], "<i8"));
    assert_eq!((probs.shape.clone(), probs.dtype), (vec![4, 2], "<f4"));
    for row in probs.data.chunks(2) {
        assert!((row[0] + row[1] - 1.0).abs() < 1e-5);
    }
}

#[test]
fn an_npz_inputset_is_keyed_by_input_name() {
    let d = tmp("npz");
    let f = fixture("mlp_iris");
    let x = common::array(&f.join("train.npy"));
    let npz = d.join("train.npz");
    fhec::npy::write_npz(&npz, &[("input".to_string(), x.clone())]).unwrap();
    let (code, _, err) = fhec(&[
        "compile",
        f.join("model.onnx").to_str().unwrap(),
        "--inputset",
        npz.to_str().unwrap(),
        "-o",
        d.join("a.fhe").to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let wrong = d.join("wrong.npz");
    fhec::npy::write_npz(&wrong, &[("features".to_string(), x)]).unwrap();
    let (code, _, err) = fhec(&[
        "compile",
        f.join("model.onnx").to_str().unwrap(),
        "--inputset",
        wrong.to_str().unwrap(),
        "-o",
        d.join("b.fhe").to_str().unwrap(),
    ]);
    assert_eq!(code, 2);
    assert!(
        err.contains("wrong.npz") && err.contains("no array named 'input'"),
        "{err}"
    );
}

#[test]
fn keys_are_generated_once_then_loaded_and_checked_against_the_model() {
    let d = tmp("keys");
    let compile = |name: &str| {
        let f = fixture(name);
        let out = d.join(format!("{name}.fhe"));
        let (code, _, err) = fhec(&[
            "compile",
            f.join("model.onnx").to_str().unwrap(),
            "--inputset",
            f.join("train.npy").to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ]);
        assert_eq!(code, 0, "{err}");
        (out, f.join("test_x.npy"))
    };
    let (iris, iris_x) = compile("logreg_iris");
    let keys = d.join("keys");
    let run = |model: &std::path::Path, x: &std::path::Path| {
        fhec(&[
            "predict",
            model.to_str().unwrap(),
            "--input",
            x.to_str().unwrap(),
            "--mode",
            "fhe",
            "--limit",
            "3",
            "--keys",
            keys.to_str().unwrap(),
        ])
    };
    let (code, first, err) = run(&iris, &iris_x);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("generated and saved"), "{err}");
    assert!(keys.join("client.key").exists() && keys.join("evaluation.key").exists());
    let (code, second, err) = run(&iris, &iris_x);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("loaded from"), "{err}");
    assert_eq!(first, second, "same keys, same decrypted outputs");
    // keys made for another model are refused, naming the file
    let (breast, breast_x) = compile("logreg_breast_zipmap");
    let (code, _, err) = run(&breast, &breast_x);
    assert_eq!(code, 2);
    assert!(
        err.contains("client.key") && err.contains("not to this model"),
        "{err}"
    );
}

/// `--global-p-error` bounds the whole sample: the union bound over its bootstraps and
/// outputs stays under the target; it conflicts with `--p-error`.
#[test]
fn global_p_error_bounds_the_whole_sample() {
    let f = fixture("mlp_iris");
    let (model, inputset) = (f.join("model.onnx"), f.join("train.npy"));
    let base = [
        "inspect",
        model.to_str().unwrap(),
        "--inputset",
        inputset.to_str().unwrap(),
        "--format",
        "json",
    ];
    let (code, json, err) = fhec(&[&base[..], &["--global-p-error", "1e-9"]].concat());
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let params = &v["params"];
    assert_eq!(params["p_error_target"]["kind"], "global", "{params}");
    assert_eq!(params["p_error_target"]["value"], 1e-9, "{params}");
    assert_eq!(v["schema_version"], 1);
    let total = params["p_error_circuit"].as_f64().unwrap();
    assert!(total > 0.0 && total <= 1e-9, "{params}");
    let (code, _, err) = fhec(
        &[
            &base[..],
            &["--global-p-error", "1e-9", "--p-error", "1e-5"],
        ]
        .concat(),
    );
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = fhec(&[&base[..], &["--p-error", "0.7"]].concat());
    assert_eq!(code, 2);
    assert!(err.contains("p_error must be in (0, 0.5)"), "{err}");
}

/// Models with infinite constants (a Clip with only one bound) compile into artifacts
/// and parts that load back and run.
#[test]
fn artifacts_with_infinite_bounds_load_back() {
    let d = tmp("infinite");
    for name in ["op_clip_min", "op_clip_empty_min"] {
        let f = fixture(name);
        let out = d.join(format!("{name}.fhe"));
        let x = f.join("test_x.npy").to_str().unwrap().to_string();
        compile_fixture(name, &out, &[]);
        for mode in ["clear", "simulate"] {
            let (code, _, err) = fhec(&[
                "predict",
                out.to_str().unwrap(),
                "--input",
                &x,
                "--mode",
                mode,
                "--limit",
                "3",
            ]);
            assert_eq!(code, 0, "{name} {mode}: {err}");
        }
        for part in ["client", "server"] {
            let p = out.with_extension(format!("{part}.fhe"));
            let (code, _, err) = fhec(&["inspect", p.to_str().unwrap()]);
            assert_eq!(code, 0, "{name} {part}: {err}");
        }
    }
}
