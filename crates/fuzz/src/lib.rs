//! Fuzz targets: every reader of bytes a user, a client or the network hands fhec.
//! Each target takes arbitrary bytes and must return, never panic and never abort on
//! memory; what it returns is not checked (an error is the expected answer to garbage).
//!
//! The same functions run under libFuzzer (`fuzz/`, cargo-fuzz on nightly, for long
//! runs with coverage) and under `cargo test` (`tests/mutations.rs`: the seed corpus
//! and a bounded number of deterministic mutations of it, so CI catches regressions on
//! stable). docs/FUZZING.md has the commands and the results table.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use fhec_runtime::{
    Client, ClientPart, EncryptedInputs, EncryptedOutputs, EvaluationKey, SecretKey, Server,
    ServerPart,
};

/// The targets, by name (the names of `fuzz/fuzz_targets/*.rs` and the corpus folders).
pub const TARGETS: [&str; 5] = ["onnx", "artifact", "keys", "npy", "circuit"];

/// Runs target `name` on `data`.
pub fn run(name: &str, data: &[u8]) {
    match name {
        "onnx" => onnx(data),
        "artifact" => artifact(data),
        "keys" => keys(data),
        "npy" => npy(data),
        "circuit" => circuit(data),
        _ => {}
    }
}

/// ONNX import: protobuf decoding, every op's attribute and shape checks, constant
/// folding.
pub fn onnx(data: &[u8]) {
    let _ = fhec_frontend_onnx::import(data);
}

/// The same bytes with the header's payload length and SHA-256 digest recomputed, as an
/// attacker who edits a file and fixes its digest would: without it, nearly every
/// mutation stops at the digest check and the parsers behind it are never reached.
fn with_valid_digest(data: &[u8]) -> Option<Vec<u8>> {
    use sha2::Digest;
    let nl = data.iter().position(|&b| b == b'\n')?;
    let header = std::str::from_utf8(&data[..nl]).ok()?;
    let fields: Vec<&str> = header.split(' ').collect();
    let [kind, version, model, key, _, _] = fields.as_slice() else {
        return None;
    };
    let payload = &data[nl + 1..];
    let digest: String = sha2::Sha256::digest(payload)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut out = format!(
        "{kind} {version} {model} {key} {} {digest}\n",
        payload.len()
    )
    .into_bytes();
    out.extend_from_slice(payload);
    Some(out)
}

/// `f` on the bytes as given, then with a valid digest.
fn as_given_and_redigested(data: &[u8], f: impl Fn(&[u8])) {
    f(data);
    if let Some(fixed) = with_valid_digest(data) {
        f(&fixed);
    }
}

/// The developer artifact and the two deployment parts (framing, checksum, JSON, then
/// the structural checks and verification of the circuit they carry).
pub fn artifact(data: &[u8]) {
    as_given_and_redigested(data, |d| {
        let _ = fhec_runtime::Artifact::from_bytes(d);
        let _ = ServerPart::from_bytes(d);
        let _ = ClientPart::from_bytes(d);
    });
}

/// Secret keys, evaluation keys and ciphertext files, read against a real model's key
/// parameters, and a server's and a client's checks of what they read.
pub fn keys(data: &[u8]) {
    as_given_and_redigested(data, keys_once);
}

fn keys_once(data: &[u8]) {
    let m = model();
    let id = m.client.part().model_id;
    let params = &m.client.part().keys;
    if let Ok(secret) = SecretKey::from_bytes(data, id, params) {
        let _ = m.client.encrypt(&secret, &m.sample);
    }
    let _ = EvaluationKey::from_bytes(data, id, params);
    let _ = m.server.evaluation_key(data);
    if let Ok(inputs) = EncryptedInputs::from_bytes(data) {
        if let Ok(key) = m.server.prepare(&m.evaluation) {
            let _ = m.server.run(&key, &inputs, &|_, _| {});
        }
    }
    if let Ok(outputs) = EncryptedOutputs::from_bytes(data) {
        let _ = m.client.decrypt(&m.secret, &outputs);
    }
}

/// `.npy` and `.npz` reading (inputsets, inputs).
pub fn npy(data: &[u8]) {
    let _ = fhec::npy::parse_arrays(
        data.to_vec(),
        "fuzz input",
        fhec_frontend_onnx::DEFAULT_MEMORY_BUDGET,
    );
}

/// The IR verifier on arbitrary circuits, then what reads a verified circuit: the
/// clear interpreter and the MLIR printer.
pub fn circuit(data: &[u8]) {
    let mut u = arbitrary::Unstructured::new(data);
    let Ok(c) = arbitrary_circuit(&mut u) else {
        return;
    };
    let Ok(info) = fhec_ir::verify(&c) else {
        return;
    };
    let inputs: Vec<Vec<i64>> = c
        .inputs
        .iter()
        .map(|&id| vec![0; c.node(id).numel()])
        .collect();
    let _ = fhec_ir::interp::simulate(&c, &info, &inputs);
    if c.len() < 64 {
        let _ = fhec_mlir_emit::to_mlir(&c, &info, "fuzz");
    }
}

/// A circuit of arbitrary nodes, each reading earlier nodes (the verifier is fed
/// structure it must refuse: wrong operand counts, shapes, ranges, ops).
fn arbitrary_circuit(u: &mut arbitrary::Unstructured) -> arbitrary::Result<fhec_ir::Circuit> {
    let mut c = fhec_ir::Circuit::default();
    let count = u.int_in_range(1..=12)?;
    for i in 0..count {
        let node: fhec_ir::Node = u.arbitrary()?;
        // bounded sizes: the verifier's job is structure, not surviving 2^60 elements
        let elements = node.shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
        if node.shape.len() > 5 || elements.is_none_or(|n| n > 4096) {
            return Err(arbitrary::Error::IncorrectFormat);
        }
        let operands: Vec<fhec_ir::NodeId> = (0..u.int_in_range(0..=3)?)
            .filter(|_| i > 0)
            .map(|_| u.choose_index(i).map(|j| c.ids().nth(j).expect("j < i")))
            .collect::<arbitrary::Result<_>>()?;
        let is_input = matches!(node.op, fhec_ir::IntOp::Input { .. });
        let id = c.add(node, &operands);
        if is_input {
            c.inputs.push(id);
        }
    }
    let outputs = u.int_in_range(1..=3)?;
    for _ in 0..outputs {
        let j = u.choose_index(count)?;
        let id = c.ids().nth(j).expect("j < count");
        c.outputs.push(id);
    }
    Ok(c)
}

/// A real model with real keys: what `keys` reads data against.
struct Model {
    artifact: Vec<u8>,
    client: Client,
    server: Server,
    secret: SecretKey,
    evaluation: EvaluationKey,
    sample: Vec<Vec<fhec_frontend_onnx::Tensor>>,
}

/// The repository's `tests/fixtures`.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

/// logreg_iris compiled at the defaults, with fresh keys (a linear model: no bootstrap,
/// so keys and a server run cost milliseconds on every fuzz input).
fn model() -> &'static Model {
    static MODEL: OnceLock<Model> = OnceLock::new();
    MODEL.get_or_init(|| {
        let dir = fixtures().join("logreg_iris");
        let options = fhec_compiler::Options::new(
            fhec_quant::QuantConfig::default(),
            fhec_backend_tfhe::PErrorTarget::PerPbs(2f64.powi(-40)),
        );
        let (compiled, samples) =
            fhec::files::compile(&dir.join("model.onnx"), &dir.join("train.npy"), &options)
                .expect("the logreg_iris fixture compiles");
        let artifact = compiled.artifact;
        let client = Client::new(artifact.client().clone()).expect("its client part is valid");
        let server = Server::new(artifact.server.clone()).expect("its server part is valid");
        let (secret, evaluation) = client.keygen();
        Model {
            artifact: artifact.to_bytes(),
            client,
            server,
            secret,
            evaluation,
            sample: samples.into_iter().take(2).collect(),
        }
    })
}

/// The seed corpus of each target: real files of each kind (ONNX models and `.npy`
/// arrays of the fixtures; an artifact, parts, keys and ciphertexts of a compiled
/// fixture; circuits from arbitrary bytes).
pub fn seeds(name: &str) -> Vec<Vec<u8>> {
    let fixture_files = |file: &str| -> Vec<Vec<u8>> {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(fixtures())
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        dirs.sort();
        dirs.iter()
            .filter_map(|d| std::fs::read(d.join(file)).ok())
            .filter(|b| b.len() <= 1 << 20)
            .collect()
    };
    match name {
        "onnx" => fixture_files("model.onnx"),
        "npy" => {
            let mut s = fixture_files("test_x.npy");
            s.extend(fixture_files("reference.npz"));
            s
        }
        "artifact" => {
            let m = model();
            let server = m.server.part().to_bytes();
            let client = m.client.part().to_bytes();
            vec![m.artifact.clone(), server, client]
        }
        "keys" => {
            let m = model();
            let inputs = m
                .client
                .encrypt(&m.secret, &m.sample)
                .expect("the fixture's samples encrypt");
            let key = m.server.prepare(&m.evaluation).expect("its key prepares");
            let outputs = m
                .server
                .run(&key, &inputs, &|_, _| {})
                .expect("the server runs them");
            vec![
                m.secret.to_bytes().to_vec(),
                m.evaluation.to_bytes(),
                inputs.to_bytes(),
                outputs.to_bytes(),
            ]
        }
        "circuit" => (0u8..16)
            .map(|k| {
                (0..256u32)
                    .map(|i| (i as u8).wrapping_mul(k | 1) ^ k)
                    .collect()
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// The circuit the `circuit` target builds from `data`, for triage (`None` when the
/// bytes build none).
pub fn describe_circuit(data: &[u8]) -> Option<String> {
    let c = arbitrary_circuit(&mut arbitrary::Unstructured::new(data)).ok()?;
    let nodes: Vec<String> = c
        .ids()
        .map(|id| format!("{id:?} {:?} <- {:?}", c.node(id), c.operands(id)))
        .collect();
    Some(format!(
        "{}\ninputs {:?} outputs {:?}",
        nodes.join("\n"),
        c.inputs,
        c.outputs
    ))
}
