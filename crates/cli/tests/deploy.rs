//! Deployment: the client's and the server's commands as separate processes in separate
//! directories (the server's holding only the server part, the evaluation key and the
//! ciphertexts), against `predict --mode fhe` on the same keys and against simulate;
//! and every file one party hands the other, damaged or mismatched, refused cleanly.

mod common;

use std::path::{Path, PathBuf};

use common::{arrays, assert_fails, fhec_in, fixture, ok, s, tensor_type, tmp};

/// Compiles fixture `name` into `dir/m.fhe` (+ parts) with `extra` flags.
fn compile(dir: &Path, name: &str, extra: &[&str]) -> PathBuf {
    let out = dir.join("m.fhe");
    common::compile_fixture(name, &out, extra);
    for part in ["m.client.fhe", "m.server.fhe"] {
        assert!(dir.join(part).exists(), "compile writes {part}");
    }
    out
}

/// Client and server as separate processes; returns the client's directory.
fn deploy(name: &str, extra: &[&str], samples: usize) -> PathBuf {
    let root = tmp(&format!("deploy-{name}"));
    let (client, server) = (root.join("client"), root.join("server"));
    std::fs::create_dir_all(&client).unwrap();
    std::fs::create_dir_all(&server).unwrap();
    let model = compile(&client, name, extra);
    let part = client.join("m.client.fhe");
    let keys = client.join("keys");
    let x = fixture(name).join("test_x.npy");
    let n = samples.to_string();
    ok(&["keygen", s(&part), "--keys", s(&keys)]);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(keys.join("client.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the secret key is private");
    }
    let ct = client.join("x.fhect");
    ok(&[
        "encrypt",
        s(&part),
        "--keys",
        s(&keys),
        "--input",
        s(&x),
        "--limit",
        &n,
        "-o",
        s(&ct),
    ]);
    // the server's directory holds the server part, the evaluation key and the ciphertexts
    for (from, to) in [
        (client.join("m.server.fhe"), "m.server.fhe"),
        (keys.join("evaluation.key"), "evaluation.key"),
        (ct, "x.fhect"),
    ] {
        std::fs::copy(from, server.join(to)).unwrap();
    }
    let (code, _, err) = fhec_in(
        Some(&server),
        &[
            "run",
            "m.server.fhe",
            "--evaluation-key",
            "evaluation.key",
            "x.fhect",
            "-o",
            "y.fhect",
        ],
    );
    assert_eq!(code, 0, "run: {err}");
    let names: Vec<String> = std::fs::read_dir(&server)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!names.iter().any(|n| n.contains("client")), "{names:?}");
    std::fs::copy(server.join("y.fhect"), client.join("y.fhect")).unwrap();
    let y = client.join("y.npz");
    ok(&[
        "decrypt",
        s(&part),
        "--keys",
        s(&keys),
        s(&client.join("y.fhect")),
        "-o",
        s(&y),
    ]);
    // the one-process shortcut on the same keys and samples
    let y_predict = client.join("predict.npz");
    ok(&[
        "predict",
        s(&model),
        "--input",
        s(&x),
        "--mode",
        "fhe",
        "--keys",
        s(&keys),
        "--limit",
        &n,
        "-o",
        s(&y_predict),
    ]);
    let y_sim = client.join("simulate.npz");
    ok(&[
        "predict",
        s(&model),
        "--input",
        s(&x),
        "--mode",
        "simulate",
        "--limit",
        &n,
        "-o",
        s(&y_sim),
    ]);
    let (deployed, predicted, simulated) = (arrays(&y), arrays(&y_predict), arrays(&y_sim));
    assert_eq!(
        deployed, predicted,
        "{name}: decrypt differs from predict --mode fhe"
    );
    assert_eq!(
        deployed, simulated,
        "{name}: exact rounding decrypts what simulate computes"
    );
    assert!(deployed.iter().all(|(_, shape, _)| shape[0] == samples));
    client
}

#[test]
fn a_linear_model_deploys_as_two_parties() {
    deploy("logreg_iris", &[], 5);
}

#[test]
fn an_mlp_deploys_as_two_parties() {
    deploy("mlp_iris", &["--rounding", "exact"], 2);
}

#[test]
fn a_tree_ensemble_deploys_as_two_parties() {
    deploy("dt_breast", &[], 2);
}

/// Two leveled models and their keys (fast: no bootstrap, no evaluation-key material).
struct Setup {
    dir: PathBuf,
}

impl Setup {
    fn new(name: &str) -> Self {
        let dir = tmp(name);
        for (sub, fixture_name) in [("a", "logreg_iris"), ("b", "logreg_breast_zipmap")] {
            let d = dir.join(sub);
            std::fs::create_dir_all(&d).unwrap();
            compile(&d, fixture_name, &[]);
            for keys in ["keys", "keys2"] {
                ok(&[
                    "keygen",
                    s(&d.join("m.client.fhe")),
                    "--keys",
                    s(&d.join(keys)),
                ]);
            }
            ok(&[
                "encrypt",
                s(&d.join("m.client.fhe")),
                "--keys",
                s(&d.join("keys")),
                "--input",
                s(&fixture(fixture_name).join("test_x.npy")),
                "--limit",
                "3",
                "-o",
                s(&d.join("x.fhect")),
            ]);
            ok(&[
                "run",
                s(&d.join("m.server.fhe")),
                "--evaluation-key",
                s(&d.join("keys/evaluation.key")),
                s(&d.join("x.fhect")),
                "-o",
                s(&d.join("y.fhect")),
            ]);
        }
        Setup { dir }
    }
    fn p(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }
}

/// Re-frames a file after `edit` changes its payload, with a valid digest: what a
/// hostile party can make.
fn reframe(path: &Path, edit: impl Fn(&mut Vec<u8>)) -> Vec<u8> {
    let bytes = std::fs::read(path).unwrap();
    let h = fhec_runtime::frame::peek(&bytes).unwrap();
    let nl = bytes.iter().position(|&b| b == b'\n').unwrap();
    let mut payload = bytes[nl + 1..].to_vec();
    edit(&mut payload);
    fhec_runtime::frame::frame(h.kind, h.model, h.key, &payload)
}

/// The JSON description at the head of a binary payload, edited.
fn edit_meta(payload: &mut Vec<u8>, edit: impl Fn(&mut serde_json::Value)) {
    let len = u32::from_le_bytes(payload[..4].try_into().unwrap()) as usize;
    let mut meta: serde_json::Value = serde_json::from_slice(&payload[4..4 + len]).unwrap();
    edit(&mut meta);
    let new = serde_json::to_vec(&meta).unwrap();
    let body = payload[4 + len..].to_vec();
    payload.clear();
    payload.extend_from_slice(&(new.len() as u32).to_le_bytes());
    payload.extend_from_slice(&new);
    payload.extend_from_slice(&body);
}

#[test]
fn the_server_refuses_what_is_not_for_its_model_and_key() {
    let t = Setup::new("deploy-refuse-server");
    let run = |server: &str, key: &str, inputs: &Path, needles: &[&str]| {
        let out = t.p("out.fhect");
        assert_fails(
            &[
                "run",
                s(&t.p(server)),
                "--evaluation-key",
                s(&t.p(key)),
                s(inputs),
                "-o",
                s(&out),
            ],
            needles,
        );
        assert!(!out.exists(), "nothing written on failure");
    };
    // ciphertexts of another model
    run(
        "a/m.server.fhe",
        "a/keys/evaluation.key",
        &t.p("b/x.fhect"),
        &["x.fhect", "encrypted for model"],
    );
    // ciphertexts under another key of the same model
    run(
        "a/m.server.fhe",
        "a/keys2/evaluation.key",
        &t.p("a/x.fhect"),
        &["x.fhect", "encrypted under key"],
    );
    // an evaluation key of another model
    run(
        "a/m.server.fhe",
        "b/keys/evaluation.key",
        &t.p("a/x.fhect"),
        &["evaluation.key", "belongs to model"],
    );
    // a secret key given by mistake is refused, never read as a key
    run(
        "a/m.server.fhe",
        "a/keys/client.key",
        &t.p("a/x.fhect"),
        &["client.key", "secret key", "must stay with the client"],
    );
    // truncated and tampered ciphertexts
    let bytes = std::fs::read(t.p("a/x.fhect")).unwrap();
    let cut = t.p("cut.fhect");
    std::fs::write(&cut, &bytes[..bytes.len() - 7]).unwrap();
    run(
        "a/m.server.fhe",
        "a/keys/evaluation.key",
        &cut,
        &["cut.fhect", "truncated"],
    );
    let mut flipped = bytes.clone();
    let n = flipped.len();
    flipped[n - 3] ^= 0x40;
    let bad = t.p("flipped.fhect");
    std::fs::write(&bad, &flipped).unwrap();
    run(
        "a/m.server.fhe",
        "a/keys/evaluation.key",
        &bad,
        &["flipped.fhect", "SHA-256"],
    );
    // a well-framed file whose sample shape does not fit the model
    let wrong = t.p("shape.fhect");
    std::fs::write(
        &wrong,
        reframe(&t.p("a/x.fhect"), |p| {
            edit_meta(p, |m| m["elements"] = serde_json::json!([3]))
        }),
    )
    .unwrap();
    run(
        "a/m.server.fhe",
        "a/keys/evaluation.key",
        &wrong,
        &["shape.fhect", "corrupted"],
    );
    let fake = t.p("fake.fhect");
    std::fs::write(
        &fake,
        reframe(&t.p("a/x.fhect"), |p| {
            edit_meta(p, |m| {
                m["elements"] = serde_json::json!([2, 2]);
            })
        }),
    )
    .unwrap();
    run(
        "a/m.server.fhe",
        "a/keys/evaluation.key",
        &fake,
        &["fake.fhect", "this model takes [4]"],
    );
    // an evaluation key for other parameters (same model id, one partition too many)
    let key = t.p("params.key");
    std::fs::write(
        &key,
        reframe(&t.p("a/keys/evaluation.key"), |p| {
            edit_meta(p, |m| {
                m["partitions"] = serde_json::json!([{
                    "keyswitch_seed": "0".repeat(32), "keyswitch_values": 0,
                    "bootstrap_seed": "0".repeat(32), "bootstrap_values": 0,
                    "bootstrap_bits": 64}]);
            })
        }),
    )
    .unwrap();
    run(
        "a/m.server.fhe",
        "params.key",
        &t.p("a/x.fhect"),
        &["params.key", "1 partitions, this model has 0"],
    );
    // a file of another kind where ciphertexts belong
    run(
        "a/m.server.fhe",
        "a/keys/evaluation.key",
        &t.p("a/m.client.fhe"),
        &["m.client.fhe", "client part", "not encrypted inputs"],
    );
}

#[test]
fn the_client_refuses_what_is_not_for_its_model_and_key() {
    let t = Setup::new("deploy-refuse-client");
    let decrypt = |keys: &str, outputs: &Path, needles: &[&str]| {
        assert_fails(
            &[
                "decrypt",
                s(&t.p("a/m.client.fhe")),
                "--keys",
                s(&t.p(keys)),
                s(outputs),
            ],
            needles,
        );
    };
    decrypt(
        "a/keys2",
        &t.p("a/y.fhect"),
        &["y.fhect", "computed for key"],
    );
    decrypt("a/keys", &t.p("b/y.fhect"), &["y.fhect", "belong to model"]);
    decrypt(
        "b/keys",
        &t.p("a/y.fhect"),
        &["client.key", "not to this model"],
    );
    let bytes = std::fs::read(t.p("a/y.fhect")).unwrap();
    let cut = t.p("cut.fhect");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    decrypt("a/keys", &cut, &["cut.fhect", "truncated"]);
    // samples that do not fit the model's input
    let x = t.p("x.npy");
    std::fs::write(
        &x,
        fhec::npy::npy_bytes(&fhec::npy::Array {
            shape: vec![2, 5],
            data: vec![0.5; 10],
            dtype: "<f8",
        }),
    )
    .unwrap();
    assert_fails(
        &[
            "encrypt",
            s(&t.p("a/m.client.fhe")),
            "--keys",
            s(&t.p("a/keys")),
            "--input",
            s(&x),
            "-o",
            s(&t.p("z.fhect")),
        ],
        &["x.npy", "does not match input"],
    );
    assert!(!t.p("z.fhect").exists());
    // keys are never replaced, and a user's file is not overwritten
    assert_fails(
        &[
            "keygen",
            s(&t.p("a/m.client.fhe")),
            "--keys",
            s(&t.p("a/keys")),
        ],
        &["client.key", "already exist"],
    );
    let mine = t.p("mine.fhect");
    std::fs::write(&mine, "mine").unwrap();
    assert_fails(
        &[
            "encrypt",
            s(&t.p("a/m.client.fhe")),
            "--keys",
            s(&t.p("a/keys")),
            "--input",
            s(&fixture("logreg_iris").join("test_x.npy")),
            "-o",
            s(&mine),
        ],
        &["mine.fhect", "refusing to overwrite"],
    );
    assert_eq!(std::fs::read_to_string(&mine).unwrap(), "mine");
    // a damaged secret key
    let keys = t.p("damaged");
    std::fs::create_dir_all(&keys).unwrap();
    let key = std::fs::read(t.p("a/keys/client.key")).unwrap();
    std::fs::write(keys.join("client.key"), &key[..key.len() - 1]).unwrap();
    decrypt("damaged", &t.p("a/y.fhect"), &["client.key", "truncated"]);
}

/// A server part whose bootstrap keys were weakened (every copy of the parameters
/// edited alike, digest recomputed) is refused on load: its error probabilities are
/// recomputed from the parameters, not read from the file.
#[test]
fn weakened_parameters_are_refused_on_load() {
    let d = tmp("deploy-weak");
    compile(&d, "mlp_iris", &[]);
    let part = d.join("m.server.fhe");
    ok(&["inspect", s(&part)]);
    let weak = d.join("weak.fhe");
    std::fs::write(
        &weak,
        reframe(&part, |payload| {
            let mut v: serde_json::Value = ciborium::from_reader(&payload[..]).unwrap();
            for keys in ["params", "client"] {
                let keys = if keys == "params" {
                    &mut v["params"]["keys"]
                } else {
                    &mut v["client"]["keys"]
                };
                for p in keys["partitions"].as_array_mut().unwrap() {
                    p["params"]["pbs_level"] = 1.into();
                }
            }
            payload.clear();
            ciborium::into_writer(&v, &mut *payload).unwrap();
        }),
    )
    .unwrap();
    assert_fails(
        &["inspect", s(&weak)],
        &["weak.fhe", "error probability", "above the target"],
    );
}

/// A client part edited to weaken encryption (digest recomputed, as a hostile server
/// would) is refused before any key is made or any input encrypted.
#[test]
fn a_tampered_client_part_cannot_weaken_encryption() {
    let d = tmp("deploy-hostile");
    compile(&d, "logreg_iris", &[]);
    let part = d.join("m.client.fhe");
    let tamper = |edit: &dyn Fn(&mut serde_json::Value), name: &str| -> PathBuf {
        let p = d.join(name);
        std::fs::write(
            &p,
            reframe(&part, |payload| {
                let mut v: serde_json::Value = ciborium::from_reader(&payload[..]).unwrap();
                edit(&mut v);
                payload.clear();
                ciborium::into_writer(&v, &mut *payload).unwrap();
            }),
        )
        .unwrap();
        p
    };
    let trivial = tamper(&|v| v["keys"]["input_dimension"] = 1.into(), "trivial.fhe");
    let keys = d.join("keys");
    assert_fails(
        &["keygen", s(&trivial), "--keys", s(&keys)],
        &["trivial.fhe", "unsafe", "input key dimension 1"],
    );
    assert!(!keys.exists(), "no key is made");
    let wide = tamper(&|v| v["encoding_bits"] = 70.into(), "wide.fhe");
    assert_fails(
        &["keygen", s(&wide), "--keys", s(&keys)],
        &["wide.fhe", "70-bit encoding"],
    );
    let huge = tamper(
        &|v| v["keys"]["input_dimension"] = (1u64 << 40).into(),
        "huge.fhe",
    );
    assert_fails(
        &["keygen", s(&huge), "--keys", s(&keys)],
        &["huge.fhe", "unsafe"],
    );
    // an honest part still works, and its secret key does not encrypt for the weak one
    ok(&["keygen", s(&part), "--keys", s(&keys)]);
    assert_fails(
        &[
            "encrypt",
            s(&trivial),
            "--keys",
            s(&keys),
            "--input",
            s(&fixture("logreg_iris").join("test_x.npy")),
            "-o",
            s(&d.join("x.fhect")),
        ],
        &["trivial.fhe", "unsafe"],
    );
    // a part whose header was edited to claim another model
    let bytes = std::fs::read(&part).unwrap();
    let nl = bytes.iter().position(|&b| b == b'\n').unwrap();
    let header = String::from_utf8(bytes[..nl].to_vec()).unwrap();
    let mut fields: Vec<&str> = header.split(' ').collect();
    let other_id = "ab".repeat(16);
    fields[2] = &other_id;
    let other = d.join("other.fhe");
    std::fs::write(&other, [fields.join(" ").as_bytes(), &bytes[nl..]].concat()).unwrap();
    assert_fails(
        &["inspect", s(&other)],
        &["other.fhe", "header names model"],
    );
}

/// x[N, 4] → Gemm (3 outputs) → Mul by a constant → y: the Mul runs on the client.
fn gemm_then_scale_model(weights: &[f32], scale: &[f32]) -> Vec<u8> {
    use fhec_frontend_onnx::pb;
    let tensor = |name: &str, dims: Vec<i64>, data: &[f32]| pb::TensorProto {
        dims,
        data_type: 1,
        float_data: data.to_vec(),
        name: name.into(),
        ..Default::default()
    };
    let node = |op: &str, inputs: &[&str], output: &str| pb::NodeProto {
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        name: format!("the_{}", op.to_lowercase()),
        op_type: op.into(),
        domain: String::new(),
        attribute: if op == "Gemm" {
            vec![pb::AttributeProto {
                name: "transB".into(),
                r#type: 2,
                i: 1,
                ..Default::default()
            }]
        } else {
            vec![]
        },
    };
    let graph = pb::GraphProto {
        node: vec![
            node("Gemm", &["x", "w", "b"], "h"),
            node("Mul", &["h", "c"], "y"),
        ],
        name: "g".into(),
        initializer: vec![
            tensor("w", vec![3, 4], weights),
            tensor("b", vec![3], &[0.25, -0.5, 0.75]),
            tensor("c", vec![3], scale),
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
    common::model_bytes(graph)
}

/// The client part holds the quantizers and the post-processing, never the circuit's
/// weights or tables; a post-processing constant it does need is reported by inspect.
#[test]
fn the_client_part_holds_no_circuit_weight() {
    let d = tmp("deploy-client-content");
    let weights: Vec<f32> = (0..12).map(|i| 0.1371 + 0.0917 * i as f32).collect();
    let model = d.join("m.onnx");
    std::fs::write(&model, gemm_then_scale_model(&weights, &[1.5, 2.5, 3.5])).unwrap();
    let out = d.join("m.fhe");
    ok(&[
        "compile",
        s(&model),
        "--inputset",
        s(&fixture("mlp_iris").join("train.npy")),
        "-o",
        s(&out),
    ]);
    // each file's content as JSON text (the payload is CBOR after the header line)
    let text = |p: &Path| {
        let bytes = std::fs::read(p).unwrap();
        let nl = bytes.iter().position(|&b| b == b'\n').unwrap();
        let v: serde_json::Value = ciborium::from_reader(&bytes[nl + 1..]).unwrap();
        v.to_string()
    };
    let (artifact, client) = (text(&out), text(&d.join("m.client.fhe")));
    // the server part carries the client part; what it holds besides is the circuit
    let mut server_value: serde_json::Value = {
        let bytes = std::fs::read(d.join("m.server.fhe")).unwrap();
        let nl = bytes.iter().position(|&b| b == b'\n').unwrap();
        ciborium::from_reader(&bytes[nl + 1..]).unwrap()
    };
    server_value["client"] = serde_json::Value::Null;
    let server = server_value.to_string();
    let reprs: Vec<String> = weights
        .iter()
        .map(|&w| serde_json::to_string(&(w as f64)).unwrap())
        .collect();
    assert!(
        reprs.iter().all(|r| artifact.contains(r.as_str())),
        "the developer artifact keeps the float model"
    );
    for r in &reprs {
        assert!(
            !client.contains(r.as_str()),
            "the client part holds float weight {r}"
        );
        assert!(
            !server.contains(r.as_str()),
            "the server part holds float weight {r}"
        );
    }
    for key in ["\"circuit\"", "\"Dense\"", "\"tables\"", "\"Linear\""] {
        assert!(!client.contains(key), "the client part holds {key}");
    }
    assert!(
        server.contains("\"circuit\"") && server.contains("\"Linear\""),
        "the server part holds the circuit"
    );
    let (report, _) = ok(&["inspect", s(&out)]);
    assert!(
        report
            .contains("client tail (runs in the clear after decryption): Mul (3 model constants)"),
        "{report}"
    );
    assert!(
        report.contains("the client receives 3 of the model's learned numbers"),
        "{report}"
    );
    let (report, _) = ok(&["inspect", s(&d.join("m.client.fhe"))]);
    assert!(
        report.contains("client part of m.onnx") && report.contains("Mul"),
        "{report}"
    );
    let (report, _) = ok(&["inspect", s(&d.join("m.server.fhe"))]);
    assert!(
        report.contains("linear") && report.contains("16-bit check: ok"),
        "{report}"
    );
}
