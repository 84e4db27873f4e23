//! Bad input gives one clear line naming the file, node or value at fault and a
//! non-zero exit, never a panic; nothing the user wrote is overwritten.

mod common;

use std::path::{Path, PathBuf};

use common::{assert_fails, fhec, fixture, model_bytes, ok, s, tensor_type, tmp};
use fhec_frontend_onnx::pb;
use prost::Message;

fn iris() -> (PathBuf, PathBuf) {
    (
        fixture("mlp_iris").join("model.onnx"),
        fixture("mlp_iris").join("train.npy"),
    )
}

/// x[N, dims] → op_type (domain) → y
fn one_node_model(op_type: &str, domain: &str, dims: &[Result<i64, &str>]) -> Vec<u8> {
    let node = pb::NodeProto {
        input: vec!["x".into()],
        output: vec!["y".into()],
        name: "the_node".into(),
        op_type: op_type.into(),
        domain: domain.into(),
        attribute: vec![],
    };
    let graph = pb::GraphProto {
        node: vec![node],
        name: "g".into(),
        initializer: vec![],
        input: vec![pb::ValueInfoProto {
            name: "x".into(),
            r#type: Some(tensor_type(dims)),
        }],
        output: vec![pb::ValueInfoProto {
            name: "y".into(),
            r#type: None,
        }],
        value_info: vec![],
    };
    model_bytes(graph)
}

#[test]
fn a_file_that_is_not_onnx() {
    let d = tmp("notonnx");
    let p = d.join("model.onnx");
    std::fs::write(&p, "this is a text file, not a protobuf\n").unwrap();
    assert_fails(
        &[
            "compile",
            s(&p),
            "--inputset",
            s(&iris().1),
            "-o",
            s(&d.join("m.fhe")),
        ],
        &["model.onnx", "not an ONNX model"],
    );
}

#[test]
fn a_truncated_onnx_file() {
    let d = tmp("truncated");
    let bytes = std::fs::read(iris().0).unwrap();
    let p = d.join("cut.onnx");
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    assert_fails(
        &[
            "compile",
            s(&p),
            "--inputset",
            s(&iris().1),
            "-o",
            s(&d.join("m.fhe")),
        ],
        &["cut.onnx", "truncated"],
    );
}

#[test]
fn an_unsupported_operator_is_named_with_domain_and_node() {
    let d = tmp("unsupported");
    let p = d.join("m.onnx");
    std::fs::write(&p, one_node_model("Einsum", "", &[Err("N"), Ok(4)])).unwrap();
    assert_fails(
        &[
            "compile",
            s(&p),
            "--inputset",
            s(&iris().1),
            "-o",
            s(&d.join("m.fhe")),
        ],
        &["Einsum", "ai.onnx", "the_node"],
    );
}

/// x[N, 4] → QONNX Quant with one scale per feature → y: a per-channel grid on an
/// encrypted tensor, which fhec refuses by name.
fn per_channel_quant_model() -> Vec<u8> {
    let f32_tensor = |name: &str, dims: Vec<i64>, data: Vec<f32>| pb::TensorProto {
        dims,
        data_type: 1,
        float_data: data,
        name: name.into(),
        ..Default::default()
    };
    let node = pb::NodeProto {
        input: vec!["x".into(), "scale".into(), "zero".into(), "bits".into()],
        output: vec!["y".into()],
        name: "the_quant".into(),
        op_type: "Quant".into(),
        domain: "qonnx.custom_op.general".into(),
        attribute: vec![pb::AttributeProto {
            name: "signed".into(),
            r#type: 2,
            i: 0,
            ..Default::default()
        }],
    };
    let graph = pb::GraphProto {
        node: vec![node],
        name: "g".into(),
        initializer: vec![
            f32_tensor("scale", vec![1, 4], vec![0.1, 0.2, 0.1, 0.3]),
            f32_tensor("zero", vec![], vec![0.0]),
            f32_tensor("bits", vec![], vec![8.0]),
        ],
        input: vec![pb::ValueInfoProto {
            name: "x".into(),
            r#type: Some(tensor_type(&[Err("N"), Ok(4)])),
        }],
        output: vec![pb::ValueInfoProto {
            name: "y".into(),
            r#type: None,
        }],
        value_info: vec![],
    };
    pb::ModelProto {
        ir_version: 8,
        opset_import: vec![
            pb::OperatorSetIdProto {
                domain: "".into(),
                version: 17,
            },
            pb::OperatorSetIdProto {
                domain: "qonnx.custom_op.general".into(),
                version: 1,
            },
        ],
        producer_name: "test".into(),
        producer_version: String::new(),
        graph: Some(graph),
    }
    .encode_to_vec()
}

#[test]
fn a_per_channel_quant_on_an_encrypted_tensor() {
    let d = tmp("perchannel");
    let p = d.join("m.onnx");
    std::fs::write(&p, per_channel_quant_model()).unwrap();
    assert_fails(
        &[
            "compile",
            s(&p),
            "--inputset",
            s(&iris().1),
            "-o",
            s(&d.join("m.fhe")),
        ],
        &["the_quant", "Quant", "one scale per tensor"],
    );
}

#[test]
fn a_dynamic_non_batch_dimension() {
    let d = tmp("dynamic");
    let p = d.join("m.onnx");
    std::fs::write(&p, one_node_model("Relu", "", &[Err("N"), Err("features")])).unwrap();
    assert_fails(
        &[
            "compile",
            s(&p),
            "--inputset",
            s(&iris().1),
            "-o",
            s(&d.join("m.fhe")),
        ],
        &["'x'", "dimension 1", "features"],
    );
}

#[test]
fn an_inputset_of_the_wrong_shape() {
    let d = tmp("shape");
    let digits = fixture("mlp_digits").join("train.npy");
    assert_fails(
        &[
            "compile",
            s(&iris().0),
            "--inputset",
            s(&digits),
            "-o",
            s(&d.join("m.fhe")),
        ],
        &["train.npy", "does not match input 'input'"],
    );
}

#[test]
fn nan_or_inf_in_an_inputset() {
    let d = tmp("nan");
    let mut a = common::array(&iris().1);
    a.data[9] = f64::NAN;
    let p = d.join("nan.npy");
    std::fs::write(&p, fhec::npy::npy_bytes(&a)).unwrap();
    assert_fails(
        &[
            "compile",
            s(&iris().0),
            "--inputset",
            s(&p),
            "-o",
            s(&d.join("m.fhe")),
        ],
        &["nan.npy", "sample 2 element 1", "NaN"],
    );
    a.data[9] = f64::INFINITY;
    std::fs::write(&p, fhec::npy::npy_bytes(&a)).unwrap();
    assert_fails(
        &[
            "compile",
            s(&iris().0),
            "--inputset",
            s(&p),
            "-o",
            s(&d.join("m.fhe")),
        ],
        &["nan.npy", "inf"],
    );
}

#[test]
fn what_exceeds_the_memory_budget_is_refused_with_its_size() {
    let d = tmp("budget");
    let (model, train) = iris();
    let out = d.join("m.fhe");
    let compile_within = |budget: &'static str| {
        [
            "--memory-budget",
            budget,
            "compile",
            s(&model),
            "--inputset",
            s(&train),
            "-o",
            s(&out),
        ]
    };
    // 100 calibration samples of every value of the MLP do not fit 32 KiB
    assert_fails(
        &compile_within("32KiB"),
        &["calibrating on 100 samples", "memory budget of 32.0 KiB"],
    );
    // the model's own tensors
    assert_fails(
        &compile_within("1KiB"),
        &["model.onnx", "memory budget of 1.0 KiB"],
    );
    // an .npy whose header claims 2^40 rows is refused before anything is allocated
    let header = "{'descr': '<f8', 'fortran_order': False, 'shape': (1099511627776, 4), }";
    let mut npy = b"\x93NUMPY\x01\x00".to_vec();
    let padded = format!("{header:<117}\n");
    npy.extend_from_slice(&(padded.len() as u16).to_le_bytes());
    npy.extend_from_slice(padded.as_bytes());
    npy.extend_from_slice(&[0; 64]);
    let huge = d.join("huge.npy");
    std::fs::write(&huge, &npy).unwrap();
    assert_fails(
        &[
            "compile",
            s(&model),
            "--inputset",
            s(&huge),
            "-o",
            s(&d.join("m.fhe")),
        ],
        &["huge.npy", "[1099511627776, 4]", "memory budget of 8.0 GiB"],
    );
    // and the same model compiles within the default budget
    let (code, _, err) = fhec(&[
        "compile",
        s(&model),
        "--inputset",
        s(&train),
        "-o",
        s(&d.join("m.fhe")),
    ]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = fhec(&["--memory-budget", "12XB", "inspect", s(&d.join("m.fhe"))]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("unknown unit 'xb'"), "{err}");
}

fn compiled(dir: &Path) -> PathBuf {
    let out = dir.join("iris.fhe");
    let (code, _, err) = fhec(&[
        "compile",
        s(&iris().0),
        "--inputset",
        s(&iris().1),
        "-o",
        s(&out),
    ]);
    assert_eq!(code, 0, "{err}");
    out
}

#[test]
fn an_artifact_from_another_version() {
    let d = tmp("version");
    let p = compiled(&d);
    let text = std::fs::read(&p).unwrap();
    let patched = [b"FHEC-MODEL 99".as_slice(), &text[b"FHEC-MODEL 3".len()..]].concat();
    std::fs::write(&p, patched).unwrap();
    assert_fails(&["inspect", s(&p)], &["iris.fhe", "version 99"]);
}

#[test]
fn a_corrupted_artifact() {
    let d = tmp("corrupt");
    let p = compiled(&d);
    let mut bytes = std::fs::read(&p).unwrap();
    let n = bytes.len();
    bytes[n - 20] ^= 0x01;
    std::fs::write(&p, &bytes).unwrap();
    assert_fails(
        &[
            "predict",
            s(&p),
            "--input",
            s(&iris().1),
            "--mode",
            "simulate",
        ],
        &["iris.fhe", "corrupted"],
    );
    std::fs::write(&p, &bytes[..n - 100]).unwrap();
    assert_fails(&["inspect", s(&p)], &["iris.fhe", "corrupted"]);
}

#[test]
fn files_the_user_wrote_are_not_overwritten() {
    let d = tmp("overwrite");
    let mine = d.join("notes.fhe");
    std::fs::write(&mine, "my notes").unwrap();
    assert_fails(
        &[
            "compile",
            s(&iris().0),
            "--inputset",
            s(&iris().1),
            "-o",
            s(&mine),
        ],
        &["notes.fhe", "refusing to overwrite"],
    );
    assert_eq!(std::fs::read_to_string(&mine).unwrap(), "my notes");
    // nor a user's file where the test vectors would go
    let vectors = d.join("other.vectors.npz");
    std::fs::write(&vectors, "my vectors").unwrap();
    assert_fails(
        &[
            "compile",
            s(&iris().0),
            "--inputset",
            s(&iris().1),
            "-o",
            s(&d.join("other.fhe")),
        ],
        &["other.vectors.npz", "refusing to overwrite"],
    );
    assert_eq!(std::fs::read_to_string(&vectors).unwrap(), "my vectors");
    assert!(
        !d.join("other.fhe").exists(),
        "nothing is written when one file is refused"
    );
    // an artifact fhec wrote is replaced on recompilation
    let p = compiled(&d);
    let (code, _, err) = fhec(&[
        "compile",
        s(&iris().0),
        "--inputset",
        s(&iris().1),
        "-o",
        s(&p),
    ]);
    assert_eq!(code, 0, "{err}");
    let y = d.join("y.npz");
    std::fs::write(&y, "precious").unwrap();
    assert_fails(
        &["predict", s(&p), "--input", s(&iris().1), "-o", s(&y)],
        &["y.npz", "refusing"],
    );
    assert_eq!(std::fs::read_to_string(&y).unwrap(), "precious");
    // predictions fhec wrote itself are replaced on a rerun
    let mine = d.join("mine.npz");
    for _ in 0..2 {
        let (code, _, err) = fhec(&[
            "predict",
            s(&p),
            "--input",
            s(&iris().1),
            "--limit",
            "2",
            "-o",
            s(&mine),
        ]);
        assert_eq!(code, 0, "{err}");
    }
}

/// Fixture `name`'s first node whose op type starts with `op`, renamed `node_name` and
/// changed.
fn edited_node(
    name: &str,
    op: &str,
    node_name: &str,
    change: impl Fn(&mut pb::NodeProto),
) -> Vec<u8> {
    let bytes = std::fs::read(fixture(name).join("model.onnx")).unwrap();
    let mut m = pb::ModelProto::decode(bytes.as_slice()).unwrap();
    let graph = m.graph.as_mut().unwrap();
    let node = graph
        .node
        .iter_mut()
        .find(|n| n.op_type.starts_with(op))
        .unwrap();
    node.name = node_name.into();
    change(node);
    m.encode_to_vec()
}

/// gbr5_diabetes's TreeEnsemble (ai.onnx.ml 5) with one attribute changed.
fn tree_ensemble5_model(change: impl Fn(&mut pb::AttributeProto)) -> Vec<u8> {
    edited_node("gbr5_diabetes", "TreeEnsemble", "the_trees", |n| {
        n.attribute.iter_mut().for_each(&change)
    })
}

#[test]
fn tree_ensemble5_set_membership_and_min_aggregation_are_refused() {
    let d = tmp("tree5");
    let inputset = fixture("gbr5_diabetes").join("train.npy");
    let member = tree_ensemble5_model(|a| {
        if a.name == "nodes_modes" {
            let t = a.t.as_mut().unwrap();
            t.raw_data[0] = 6; // BRANCH_MEMBER
        }
    });
    let min = tree_ensemble5_model(|a| {
        if a.name == "aggregate_function" {
            a.i = 2; // MIN
        }
    });
    for (file, bytes, needles) in [
        ("member.onnx", member, ["the_trees", "set membership"]),
        ("min.onnx", min, ["the_trees", "aggregate_function 2"]),
    ] {
        let p = d.join(file);
        std::fs::write(&p, bytes).unwrap();
        assert_fails(
            &[
                "compile",
                s(&p),
                "--inputset",
                s(&inputset),
                "-o",
                s(&d.join("m.fhe")),
            ],
            &needles,
        );
    }
}

/// Fixture `name`'s SVM node (an SVMClassifier or SVMRegressor) changed.
fn svm_model(name: &str, change: impl Fn(&mut pb::NodeProto)) -> Vec<u8> {
    edited_node(name, "SVM", "the_svc", change)
}

/// An SVM whose output is not one linear map of the input (an RBF kernel, Platt
/// probabilities, a one-class SVM's sign) is refused by name, not compiled into
/// something else.
#[test]
fn svms_other_than_linear_are_refused() {
    let d = tmp("svm");
    let svc = "svc_linear_breast_pipeline";
    let rbf = svm_model(svc, |n| {
        for a in &mut n.attribute {
            if a.name == "kernel_type" {
                a.s = b"RBF".to_vec();
            }
        }
    });
    let platt = svm_model(svc, |n| {
        for name in ["prob_a", "prob_b"] {
            n.attribute.push(pb::AttributeProto {
                name: name.into(),
                floats: vec![-1.5],
                r#type: 6, // FLOATS
                ..Default::default()
            });
        }
    });
    let one_class = svm_model("svr_linear_diabetes", |n| {
        n.attribute.push(pb::AttributeProto {
            name: "one_class".into(),
            i: 1,
            r#type: 2, // INT
            ..Default::default()
        });
    });
    for (file, bytes, from, needles) in [
        ("rbf.onnx", rbf, svc, ["the_svc", "kernel RBF"]),
        ("platt.onnx", platt, svc, ["the_svc", "probability=True"]),
        (
            "one_class.onnx",
            one_class,
            "svr_linear_diabetes",
            ["the_svc", "one-class"],
        ),
    ] {
        let p = d.join(file);
        std::fs::write(&p, bytes).unwrap();
        let inputset = fixture(from).join("train.npy");
        assert_fails(
            &[
                "compile",
                s(&p),
                "--inputset",
                s(&inputset),
                "-o",
                s(&d.join("m.fhe")),
            ],
            &needles,
        );
    }
}

/// mlp_iris with its opset declaration (or its outputs) changed.
fn mlp_iris_edited(edit: impl Fn(&mut pb::ModelProto)) -> Vec<u8> {
    let bytes = std::fs::read(fixture("mlp_iris").join("model.onnx")).unwrap();
    let mut m = pb::ModelProto::decode(bytes.as_slice()).unwrap();
    edit(&mut m);
    m.encode_to_vec()
}

/// Opsets fhec does not implement and graphs without outputs are refused by name, not
/// compiled into something else.
#[test]
fn invalid_opsets_and_graphs_without_outputs_are_refused() {
    let d = tmp("opsets");
    let compile = |bytes: Vec<u8>, name: &str, needles: &[&str]| {
        let p = d.join(name);
        std::fs::write(&p, bytes).unwrap();
        assert_fails(
            &[
                "compile",
                s(&p),
                "--inputset",
                s(&iris().1),
                "-o",
                s(&d.join("m.fhe")),
            ],
            needles,
        );
    };
    for version in [0, 6, 99] {
        compile(
            mlp_iris_edited(|m| m.opset_import[0].version = version),
            &format!("opset{version}.onnx"),
            &[
                &format!("opset{version}.onnx"),
                &format!("ai.onnx opset {version}"),
                "7 to 25",
            ],
        );
    }
    compile(
        mlp_iris_edited(|m| m.opset_import.clear()),
        "no_opset.onnx",
        &["no_opset.onnx", "declares no ai.onnx opset"],
    );
    compile(
        mlp_iris_edited(|m| m.graph.as_mut().unwrap().output.clear()),
        "no_outputs.onnx",
        &["no_outputs.onnx", "no outputs"],
    );
}

/// `--strict` keeps the defaults that do not fit (mlpclassifier_digits' 17-bit
/// accumulator): the compile fails naming the node, its width and range, and settings
/// that compile; applied as given, still strict, they compile. Without `--strict` the
/// defaults adapt by themselves and say so.
#[test]
fn a_strict_failure_suggests_settings_that_compile() {
    let d = tmp("strict");
    let model = fixture("mlpclassifier_digits").join("model.onnx");
    let inputset = fixture("mlpclassifier_digits").join("train.npy");
    let out = d.join("m.fhe");
    let base = [
        "compile",
        s(&model),
        "--inputset",
        s(&inputset),
        "-o",
        s(&out),
    ];
    let (code, _, err) = fhec(&[&base[..], &["--strict"]].concat());
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("over the 16-bit limit") && err.contains("needs 17 bits for ["),
        "{err}"
    );
    let flags = err
        .split("These settings compile: ")
        .nth(1)
        .and_then(|t| t.split(" (").next())
        .unwrap_or_else(|| panic!("no suggestion in: {err}"));
    assert!(flags.starts_with("--"), "{err}");
    let mut args: Vec<&str> = base.to_vec();
    args.extend(flags.split_whitespace());
    args.push("--strict");
    let (out_text, _) = ok(&args);
    assert!(!out_text.contains("adapted:"), "{out_text}");
    let (adapted, _) = ok(&base);
    assert!(
        adapted.contains("adapted: ") && adapted.contains(flags),
        "{adapted}"
    );
}

/// Settings the user pinned that leave the free ones only a model far from the float
/// one (cnn_digits16 at 8 input and activation bits and rounding threshold 8 fits 16
/// bits only with 3-bit weights: 86% agreement) fail, naming what the pins allow and
/// settings that agree better; applied with the user's other settings, those compile.
#[test]
fn pinned_settings_that_lose_the_float_model_fail_with_better_ones() {
    let d = tmp("pinned");
    let dir = fixture("cnn_digits16");
    let out = d.join("m.fhe");
    let (model, inputset) = (dir.join("model.onnx"), dir.join("train.npy"));
    let base = [
        "compile",
        s(&model),
        "--inputset",
        s(&inputset),
        "-o",
        s(&out),
    ];
    let pins = [
        ("--input-bits", "8"),
        ("--activation-bits", "8"),
        ("--rounding-threshold-bits", "8"),
    ];
    let with = |settings: &[(&str, &str)]| -> Vec<String> {
        base.iter()
            .map(|a| a.to_string())
            .chain(
                settings
                    .iter()
                    .flat_map(|(k, v)| [k.to_string(), v.to_string()]),
            )
            .collect()
    };
    let args = with(&pins);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, _, err) = fhec(&args);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("over the 16-bit limit"), "{err}");
    assert!(err.contains("Keeping the settings you set"), "{err}");
    assert!(!out.exists(), "nothing written");
    let flags = err
        .split("these settings compile and agree better: ")
        .nth(1)
        .and_then(|t| t.split(" (").next())
        .unwrap_or_else(|| panic!("no suggestion in: {err}"));
    let suggested: Vec<&str> = flags.split_whitespace().collect();
    let suggested: Vec<(&str, &str)> = suggested.chunks(2).map(|p| (p[0], p[1])).collect();
    assert!(!suggested.is_empty(), "{err}");
    // the user's settings, each overridden where the suggestion names it
    let mut settings: Vec<(&str, &str)> = pins
        .iter()
        .copied()
        .filter(|(k, _)| !suggested.iter().any(|(s, _)| s == k))
        .collect();
    settings.extend(suggested);
    let args = with(&settings);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (text, _) = ok(&args);
    assert!(!text.contains("adapted:"), "{text}");
}

/// knn_iris edited by `edit`, compiled: fails naming each of `expected`, writes nothing.
fn edited_knn_is_refused(
    what: &str,
    edit: impl FnOnce(&mut fhec_frontend_onnx::pb::GraphProto),
    expected: &[&str],
) {
    use fhec_frontend_onnx::pb;
    use prost::Message;
    let dir = common::fixtures().join("knn_iris");
    let bytes = std::fs::read(dir.join("model.onnx")).unwrap();
    let mut model = pb::ModelProto::decode(bytes.as_slice()).unwrap();
    edit(model.graph.as_mut().unwrap());
    let d = tmp(what);
    let path = d.join("m.onnx");
    std::fs::write(&path, model.encode_to_vec()).unwrap();
    let out = d.join("m.fhe");
    assert_fails(
        &[
            "compile",
            s(&path),
            "--inputset",
            s(&dir.join("train.npy")),
            "-o",
            s(&out),
        ],
        expected,
    );
    assert!(!out.exists());
}

/// A `Scan` whose body is not the squared distances skl2onnx writes for nearest
/// neighbours is refused, naming the node, the body op and what is supported.
#[test]
fn a_scan_other_than_nearest_neighbour_distances_is_refused_naming_why() {
    edited_knn_is_refused(
        "scan",
        |graph| {
            let scan = graph.node.iter_mut().find(|n| n.op_type == "Scan").unwrap();
            let body = scan.attribute[0].g.as_mut().unwrap();
            for n in body
                .node
                .iter_mut()
                .filter(|n| n.op_type == "ReduceSumSquare")
            {
                n.op_type = "ReduceL1".into(); // a Manhattan distance
            }
        },
        &["Scan", "ReduceL1", "nearest neighbours", "ReduceSumSquare"],
    );
}

/// Nearest neighbours whose input something else reads too (here a graph output) are
/// refused: the input grid is the neighbours' own.
#[test]
fn nearest_neighbours_sharing_their_input_are_refused_naming_why() {
    use fhec_frontend_onnx::pb;
    edited_knn_is_refused(
        "knn-shared-input",
        |graph| {
            graph.node.push(pb::NodeProto {
                op_type: "Neg".into(),
                input: vec!["X".into()],
                output: vec!["minus_x".into()],
                ..Default::default()
            });
            graph.output.push(pb::ValueInfoProto {
                name: "minus_x".into(),
                r#type: None,
            });
        },
        &["TopK", "also read by other operations"],
    );
}

/// A model whose weights live in an external data file (torch's dynamo exporter) is read
/// from beside it; a missing file, or a location outside the model's directory, is
/// refused naming the tensor and the file.
#[test]
fn external_data_is_read_beside_the_model_and_only_there() {
    let src = fixture("cnn_maxpool_digits_dynamo");
    let d = tmp("external-data");
    let model = d.join("model.onnx");
    std::fs::copy(src.join("model.onnx"), &model).unwrap();
    let train = s(&src.join("train.npy")).to_string();
    let args = |m: &Path| {
        vec![
            "compile".to_string(),
            s(m).to_string(),
            "--inputset".into(),
            train.clone(),
            "-o".into(),
            s(&d.join("m.fhe")).to_string(),
            "--force".into(),
        ]
    };
    let run = |m: &Path, needles: &[&str]| {
        let a = args(m);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        assert_fails(&a, needles);
    };
    // the data file is missing
    run(
        &model,
        &["model.onnx", "external data file", "model.onnx.data"],
    );
    // with it beside the model, the model compiles
    std::fs::copy(src.join("model.onnx.data"), d.join("model.onnx.data")).unwrap();
    let a = args(&model);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    ok(&a);
    // a location that leaves the model's directory is never opened
    let mut m = pb::ModelProto::decode(std::fs::read(&model).unwrap().as_slice()).unwrap();
    for t in &mut m.graph.as_mut().unwrap().initializer {
        for e in &mut t.external_data {
            if e.key == "location" {
                e.value = "../model.onnx.data".into();
            }
        }
    }
    let escaping = d.join("escaping.onnx");
    std::fs::write(&escaping, m.encode_to_vec()).unwrap();
    run(
        &escaping,
        &[
            "escaping.onnx",
            "../model.onnx.data",
            "not a relative path inside",
        ],
    );
}
