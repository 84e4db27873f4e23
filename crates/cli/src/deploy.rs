//! The two parties' commands: `keygen`, `encrypt` and `decrypt` for the client, `run`
//! for the server (docs/DEPLOYMENT.md). Each reads its files, calls `fhec-runtime`, and
//! writes its result whole or not at all.

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Result};
use fhec::files::{self, about, guard_fhec_file, guard_overwrite, read_limited};
use fhec::progress::Bar;
use fhec::{keydir, npy};
use fhec_frontend_onnx::{FloatGraph, Tensor};
use fhec_runtime::{
    ciphertexts::MAX_SAMPLES, frame, Client, EncryptedInputs, EncryptedOutputs, EvaluationKey,
    PreparedKey, SecretKey, Server,
};

/// Generates keys with a note on stderr (it takes seconds to minutes).
fn generate(client: &Client) -> (SecretKey, EvaluationKey) {
    let bytes = EvaluationKey::body_bytes(&client.part().keys);
    eprintln!(
        "keygen: generating keys ({} bootstrap partition(s), evaluation key {:.1} MB)…",
        client.part().keys.partitions.len(),
        bytes as f64 / 1e6
    );
    let t = Instant::now();
    let keys = fhec::progress::keygen(client);
    eprintln!("keygen: done in {:.1} s", t.elapsed().as_secs_f64());
    keys
}

pub fn keygen(client_path: &Path, dir: &Path) -> Result<ExitCode> {
    let client = files::load_client(client_path)?;
    for p in [
        keydir::secret_key_path(dir),
        keydir::evaluation_key_path(dir),
    ] {
        if p.exists() {
            bail!(
                "{}: keys already exist; fhec never replaces keys (use another directory)",
                p.display()
            );
        }
    }
    let (secret, evaluation) = generate(&client);
    keydir::save(dir, &secret, &evaluation)?;
    let evaluation_path = keydir::evaluation_key_path(dir);
    let size = std::fs::metadata(&evaluation_path).map_or(0, |m| m.len());
    println!(
        "keys {} for model {}: {} (secret, keep it here), {} ({:.1} MB, send it to the server)",
        secret.key_id,
        client.part().model_id,
        keydir::secret_key_path(dir).display(),
        evaluation_path.display(),
        size as f64 / 1e6
    );
    Ok(ExitCode::SUCCESS)
}

pub fn encrypt(
    client_path: &Path,
    dir: &Path,
    input: &Path,
    output: &Path,
    limit: Option<usize>,
    force: bool,
) -> Result<ExitCode> {
    guard_fhec_file(output, force)?;
    let client = files::load_client(client_path)?;
    let secret = keydir::load_secret(dir, &client)?;
    let mut samples = files::load_samples(input, client.graph())?;
    if let Some(n) = limit {
        if n == 0 {
            bail!("--limit must be at least 1");
        }
        samples.truncate(n);
    }
    if samples.len() > MAX_SAMPLES {
        bail!(
            "{}: {} samples, at most {MAX_SAMPLES} per file",
            input.display(),
            samples.len()
        );
    }
    let encrypted = client.encrypt(&secret, &samples).map_err(about(input))?;
    let bytes = encrypted.to_bytes();
    files::write_atomic(output, &bytes, false)?;
    println!(
        "encrypted {} samples -> {} ({} bytes, {:.0} B/sample)",
        samples.len(),
        output.display(),
        bytes.len(),
        bytes.len() as f64 / samples.len() as f64
    );
    Ok(ExitCode::SUCCESS)
}

/// Limit on an encrypted-inputs file for `server`'s model.
fn inputs_limit(server: &Server) -> u64 {
    let c = &server.part().circuit;
    let values: usize = c.inputs.iter().map(|&id| c.node(id).numel()).sum();
    ((16 + 8 * values) * MAX_SAMPLES + (1 << 20) + frame::HEADER_BYTES) as u64
}

pub fn run(
    server_path: &Path,
    key_path: &Path,
    inputs_path: &Path,
    output: &Path,
    force: bool,
) -> Result<ExitCode> {
    guard_fhec_file(output, force)?;
    let server = files::load_server(server_path)?;
    let evaluation = keydir::load_evaluation(key_path, &server)?;
    let bytes = read_limited(
        inputs_path,
        inputs_limit(&server),
        "encrypted inputs of this model",
    )?;
    let inputs = EncryptedInputs::from_bytes(&bytes).map_err(about(inputs_path))?;
    server
        .check_inputs(evaluation.key_id, &inputs)
        .map_err(about(inputs_path))?;
    let prepared = prepare(&server, &evaluation)?;
    let t = Instant::now();
    let outputs = run_with_progress(&server, &prepared, &inputs)?;
    let bytes = outputs.to_bytes();
    files::write_atomic(output, &bytes, false)?;
    println!(
        "evaluated {} samples in {:.2} s -> {} ({} bytes, {:.0} B/sample)",
        inputs.samples.len(),
        t.elapsed().as_secs_f64(),
        output.display(),
        bytes.len(),
        bytes.len() as f64 / inputs.samples.len() as f64
    );
    Ok(ExitCode::SUCCESS)
}

pub fn decrypt(
    client_path: &Path,
    dir: &Path,
    outputs_path: &Path,
    output: Option<&Path>,
    force: bool,
) -> Result<ExitCode> {
    if let Some(o) = output {
        guard_overwrite(o, npy::is_fhec_npz(o), force)?;
    }
    let client = files::load_client(client_path)?;
    let secret = keydir::load_secret(dir, &client)?;
    let part = client.part();
    let per_sample: usize = part
        .output_sizes()
        .iter()
        .map(|n| n * (part.keys.master_dimension() + 1) * part.output_bits as usize / 8 + n)
        .sum();
    let limit = (per_sample * MAX_SAMPLES + (1 << 20) + frame::HEADER_BYTES) as u64;
    let bytes = read_limited(outputs_path, limit, "encrypted outputs of this model")?;
    let encrypted = EncryptedOutputs::from_bytes(&bytes).map_err(about(outputs_path))?;
    let results = client
        .decrypt(&secret, &encrypted)
        .map_err(about(outputs_path))?;
    let outputs: Vec<Vec<Tensor>> = results.into_iter().map(|r| r.outputs).collect();
    eprintln!("decrypted {} samples", outputs.len());
    emit_outputs(client.graph(), &outputs, output)?;
    Ok(ExitCode::SUCCESS)
}

/// `predict --mode fhe`'s keys: loaded from `dir`, generated and saved there when it is
/// absent or empty, or generated in memory without `--keys`.
pub fn keys_for_predict(
    client: &Client,
    server: &Server,
    dir: Option<&Path>,
) -> Result<(SecretKey, EvaluationKey)> {
    let Some(dir) = dir else {
        return Ok(generate(client));
    };
    if keydir::is_empty(dir) {
        let (s, e) = generate(client);
        keydir::save(dir, &s, &e)?;
        eprintln!("keys: generated and saved to {}", dir.display());
        return Ok((s, e));
    }
    let secret = keydir::load_secret(dir, client)?;
    let evaluation = keydir::load_evaluation(&keydir::evaluation_key_path(dir), server)?;
    if evaluation.key_id != secret.key_id {
        bail!(
            "{}: client.key and evaluation.key are not from the same key generation",
            dir.display()
        );
    }
    eprintln!("keys: loaded from {}", dir.display());
    Ok((secret, evaluation))
}

/// Prepares an evaluation key, with its time on stderr.
pub fn prepare(server: &Server, key: &EvaluationKey) -> Result<PreparedKey> {
    let t = Instant::now();
    let bar = Bar::new(
        "preparing the evaluation key",
        fhec_backend_tfhe::bootstrap_key_bits(&server.part().params.keys),
        "key bits",
    );
    let prepared = server.prepare_with_progress(key, &bar.report())?;
    drop(bar);
    if server.info().pbs_per_sample > 0 {
        eprintln!(
            "server: evaluation key prepared in {:.1} s",
            t.elapsed().as_secs_f64()
        );
    }
    Ok(prepared)
}

/// Evaluates with progress on stderr: a bar over every bootstrap with its ETA on a
/// terminal, and one line per finished sample.
pub fn run_with_progress(
    server: &Server,
    key: &PreparedKey,
    inputs: &EncryptedInputs,
) -> Result<EncryptedOutputs> {
    let total = inputs.samples.len();
    let pbs = server.info().pbs_per_sample;
    let bar = Bar::new("fhe", total * pbs, "PBS");
    let bar_report = bar.report_samples(total);
    // when the current sample started, and the last sample reported done
    let state = std::sync::Mutex::new((Instant::now(), None::<usize>));
    let progress = |i: usize, done: usize| {
        if pbs == 0 {
            return;
        }
        bar_report(i, done);
        let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
        if done == pbs && s.1 != Some(i) {
            bar.println(&format!(
                "fhe: sample {}/{total} done in {:.2} s ({pbs} PBS)",
                i + 1,
                s.0.elapsed().as_secs_f64()
            ));
            *s = (Instant::now(), Some(i));
        }
    };
    Ok(server.run(key, inputs, &progress)?)
}

/// Prints one line per model output and writes them to `path` as `.npz`.
pub fn emit_outputs(
    graph: &FloatGraph,
    outputs: &[Vec<Tensor>],
    path: Option<&Path>,
) -> Result<()> {
    let stacked = fhec_runtime::stack_outputs(graph, outputs);
    for (name, arr) in &stacked {
        let preview: Vec<String> = arr.data.iter().take(8).map(|v| format!("{v:.4}")).collect();
        println!(
            "{name} {:?} {}: {}{}",
            arr.shape,
            arr.dtype,
            preview.join(" "),
            if arr.data.len() > 8 { " …" } else { "" }
        );
    }
    if let Some(o) = path {
        npy::write_npz(o, &stacked)?;
        eprintln!("wrote {}", o.display());
    }
    Ok(())
}
