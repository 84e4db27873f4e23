//! Shared helpers for the fixture-driven tests.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;

use fhec::npy::{read_arrays, Array};
use fhec_frontend_onnx::Tensor;
use fhec_ir::CircuitInfo;
use fhec_quant::QuantConfig;
use fhec_runtime::Artifact;

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

pub fn fixture(name: &str) -> PathBuf {
    fixtures().join(name)
}

pub struct Meta {
    pub task: String,
    pub label_output: String,
    pub argmax: bool,
    pub float_metric: Option<f64>,
}

pub fn meta(name: &str) -> Meta {
    let text = std::fs::read_to_string(fixture(name).join("meta.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    Meta {
        task: v["task"].as_str().unwrap().into(),
        label_output: v["label_output"].as_str().unwrap().into(),
        argmax: v["argmax"].as_bool().unwrap_or(false),
        float_metric: v["float_metric"].as_f64(),
    }
}

/// Compiles a fixture in memory with `cfg` (default settings when `None`).
pub fn compile(name: &str, cfg: Option<QuantConfig>) -> (Artifact, CircuitInfo) {
    compile_with(name, cfg, 2f64.powi(-40))
}

pub fn compile_with(name: &str, cfg: Option<QuantConfig>, p_error: f64) -> (Artifact, CircuitInfo) {
    let dir = fixture(name);
    // a test's own settings are kept as given; the defaults may adapt
    let target = fhec_backend_tfhe::PErrorTarget::PerPbs(p_error);
    let options = match cfg {
        None => fhec_compiler::Options::new(QuantConfig::default(), target),
        Some(cfg) => fhec_compiler::Options {
            free: fhec_compiler::adapt::Knobs::default(),
            ..fhec_compiler::Options::new(cfg, target)
        },
    };
    let (c, _) = fhec::files::compile(&dir.join("model.onnx"), &dir.join("train.npy"), &options)
        .unwrap_or_else(|e| panic!("{name}: {e:#}"));
    (c.artifact, c.info)
}

pub fn test_samples(name: &str, a: &Artifact) -> Vec<Vec<Tensor>> {
    fhec::files::load_samples(&fixture(name).join("test_x.npy"), &a.graph).unwrap()
}

pub fn array(path: &std::path::Path) -> Array {
    read_arrays(path).unwrap().remove(0).1
}

/// The prediction the metric is computed from: class ids or regression values.
pub fn predictions(meta: &Meta, a: &Artifact, outputs: &[Vec<Tensor>]) -> Vec<f64> {
    let k = a
        .graph
        .outputs
        .iter()
        .position(|&o| a.graph.value(o).name == meta.label_output)
        .expect("label output exists");
    outputs
        .iter()
        .map(|o| {
            let t = &o[k];
            if meta.argmax {
                t.data
                    .iter()
                    .enumerate()
                    .fold(
                        (0, f64::MIN),
                        |(bi, bv), (i, &v)| if v > bv { (i, v) } else { (bi, bv) },
                    )
                    .0 as f64
            } else {
                t.data[0]
            }
        })
        .collect()
}

pub fn accuracy(pred: &[f64], truth: &[f64]) -> f64 {
    pred.iter().zip(truth).filter(|(p, t)| p == t).count() as f64 / truth.len() as f64
}

pub fn r2(pred: &[f64], truth: &[f64]) -> f64 {
    let mean = truth.iter().sum::<f64>() / truth.len() as f64;
    let ss_res: f64 = pred.iter().zip(truth).map(|(p, t)| (p - t).powi(2)).sum();
    let ss_tot: f64 = truth.iter().map(|t| (t - mean).powi(2)).sum();
    1.0 - ss_res / ss_tot
}

/// Runs the `fhec` binary: (exit code, stdout, stderr).
pub fn fhec(args: &[&str]) -> (i32, String, String) {
    fhec_in(None, args)
}

/// Asserts a clean failure: exit 2, one `error:` line containing every `needle`, no panic.
pub fn assert_fails(args: &[&str], needles: &[&str]) {
    assert_fails_in(None, args, needles)
}

/// [`assert_fails`] with the command run in `dir`.
pub fn assert_fails_in(dir: Option<&std::path::Path>, args: &[&str], needles: &[&str]) {
    let (code, _, err) = fhec_in(dir, args);
    assert_eq!(code, 2, "expected exit 2 for {args:?}, stderr: {err}");
    assert!(!err.contains("panicked"), "panic for {args:?}: {err}");
    assert_eq!(err.lines().count(), 1, "one line expected: {err}");
    assert!(err.starts_with("error: "), "{err}");
    for n in needles {
        assert!(err.contains(n), "stderr lacks '{n}': {err}");
    }
}

/// Runs the `fhec` binary in `dir` (the test's directory when `None`).
pub fn fhec_in(dir: Option<&std::path::Path>, args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fhec"));
    cmd.args(args);
    if let Some(d) = dir {
        cmd.current_dir(d);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A fresh temporary directory for one test.
pub fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("fhec-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The two parties of a compiled model, in memory.
pub fn parties(a: &Artifact) -> (fhec_runtime::Client, fhec_runtime::Server) {
    (
        fhec_runtime::Client::new(a.client().clone()).unwrap(),
        fhec_runtime::Server::new(a.server.clone()).unwrap(),
    )
}

/// One sample through encrypt → run → decrypt, the deployed path.
pub fn fhe_once(
    client: &fhec_runtime::Client,
    server: &fhec_runtime::Server,
    key: &fhec_runtime::PreparedKey,
    secret: &fhec_runtime::SecretKey,
    sample: &[Tensor],
) -> fhec_runtime::SampleResult {
    let inputs = client
        .encrypt(secret, std::slice::from_ref(&sample.to_vec()))
        .unwrap();
    let outputs = server.run(key, &inputs, &|_, _| {}).unwrap();
    client.decrypt(secret, &outputs).unwrap().remove(0)
}

/// A path as `&str`, for command lines.
pub fn s(p: &std::path::Path) -> &str {
    p.to_str().unwrap()
}

/// Runs `fhec` and asserts success; returns (stdout, stderr).
pub fn ok(args: &[&str]) -> (String, String) {
    let (code, out, err) = fhec(args);
    assert_eq!(code, 0, "{args:?}: {err}");
    (out, err)
}

/// The arrays of an `.npz`, sorted by name: (name, shape, values).
pub fn arrays(path: &std::path::Path) -> Vec<(String, Vec<usize>, Vec<f64>)> {
    let mut v: Vec<_> = read_arrays(path)
        .unwrap()
        .into_iter()
        .map(|(n, a)| (n.unwrap(), a.shape, a.data))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// A float tensor type with `dims` (`Err(name)` for a symbolic dimension).
pub fn tensor_type(dims: &[Result<i64, &str>]) -> fhec_frontend_onnx::pb::TypeProto {
    use fhec_frontend_onnx::pb;
    let dim = dims
        .iter()
        .map(|d| match d {
            Ok(v) => pb::Dimension {
                dim_value: Some(*v),
                dim_param: None,
            },
            Err(p) => pb::Dimension {
                dim_value: None,
                dim_param: Some(p.to_string()),
            },
        })
        .collect();
    pb::TypeProto {
        tensor_type: Some(pb::TypeProtoTensor {
            elem_type: 1,
            shape: Some(pb::TensorShapeProto { dim }),
        }),
    }
}

/// An ONNX model (IR 8, default opset 17) around `graph`.
pub fn model_bytes(graph: fhec_frontend_onnx::pb::GraphProto) -> Vec<u8> {
    use fhec_frontend_onnx::pb;
    use prost::Message;
    pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: "".into(),
            version: 17,
        }],
        producer_name: "test".into(),
        producer_version: String::new(),
        graph: Some(graph),
    }
    .encode_to_vec()
}

/// Compiles fixture `name` to `out` with `extra` flags (asserting success).
pub fn compile_fixture(name: &str, out: &std::path::Path, extra: &[&str]) {
    let f = fixture(name);
    let (model, inputset) = (f.join("model.onnx"), f.join("train.npy"));
    let mut args = vec![
        "compile",
        s(&model),
        "--inputset",
        s(&inputset),
        "-o",
        s(out),
    ];
    args.extend_from_slice(extra);
    ok(&args);
}
