//! Python bindings: the native module `fhec._native` behind the `fhec` package
//! (python/fhec). It speaks bytes and shapes; the package turns them into NumPy arrays
//! and ONNX protos, so this crate needs no NumPy at build time.
//!
//! Everything long (compile, key generation, encryption, evaluation) runs with the GIL
//! released, and reports progress on stderr as the command line does. Errors are
//! `fhec.FhecError` with fhec's message.

// No panic on user input (docs/ARCHITECTURE.md), as in every library crate.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use fhec::files;
use fhec_compiler::settings::Settings;
use fhec_frontend_onnx::Tensor;
use fhec_runtime::{
    frame, Array, Artifact, Client, EncryptedInputs, EncryptedOutputs, EvaluationKey, KeyId,
    PreparedKey, SecretKey, Server,
};
use pyo3::create_exception;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

create_exception!(_native, FhecError, pyo3::exceptions::PyException);

fn error(e: impl std::fmt::Display) -> PyErr {
    FhecError::new_err(e.to_string())
}

/// anyhow errors keep their whole chain, as the command line prints them.
fn chain(e: anyhow::Error) -> PyErr {
    FhecError::new_err(format!("{e:#}"))
}

/// An array from Python: (name or None, shape, little-endian f64 bytes).
type ArrayIn<'py> = (Option<String>, Vec<usize>, Bound<'py, PyBytes>);
/// An array to Python: (name, shape, little-endian f64 bytes, NumPy dtype to cast to).
type ArrayOut<'py> = (String, Vec<usize>, Bound<'py, PyBytes>, String);

fn arrays_in(arrays: Vec<ArrayIn>) -> PyResult<Vec<(Option<String>, Array)>> {
    arrays
        .into_iter()
        .map(|(name, shape, bytes)| {
            let bytes = bytes.as_bytes();
            let numel = shape
                .iter()
                .try_fold(1usize, |n, &d| n.checked_mul(d))
                .filter(|&n| n.checked_mul(8) == Some(bytes.len()))
                .ok_or_else(|| {
                    error(format!(
                        "an array of shape {shape:?} with {} bytes of float64",
                        bytes.len()
                    ))
                })?;
            let mut data = Vec::with_capacity(numel);
            for chunk in bytes.chunks_exact(8) {
                let mut b = [0u8; 8];
                b.copy_from_slice(chunk);
                data.push(f64::from_le_bytes(b));
            }
            Ok((
                name,
                Array {
                    shape,
                    data,
                    dtype: "<f8",
                },
            ))
        })
        .collect()
}

fn arrays_out<'py>(
    py: Python<'py>,
    graph: &fhec_frontend_onnx::FloatGraph,
    per_sample: &[Vec<Tensor>],
) -> Vec<ArrayOut<'py>> {
    fhec_runtime::stack_outputs(graph, per_sample)
        .into_iter()
        .map(|(name, a)| {
            let bytes: Vec<u8> = a.data.iter().flat_map(|v| v.to_le_bytes()).collect();
            (name, a.shape, PyBytes::new(py, &bytes), a.dtype.to_string())
        })
        .collect()
}

/// One line per finished sample on stderr, as `fhec predict --mode fhe` prints.
fn sample_progress(pbs: usize, total: usize) -> impl Fn(usize, usize) + Sync {
    let started = Mutex::new((std::time::Instant::now(), None::<usize>));
    move |i, done| {
        if pbs == 0 || done != pbs {
            return;
        }
        let mut s = started.lock().unwrap_or_else(|e| e.into_inner());
        if s.1 != Some(i) {
            eprintln!(
                "fhec: sample {}/{total} done in {:.2} s ({pbs} PBS)",
                i + 1,
                s.0.elapsed().as_secs_f64()
            );
            *s = (std::time::Instant::now(), Some(i));
        }
    }
}

/// Key generation with a bar (on a terminal) and its time on stderr.
fn keygen_with_progress(client: &Client) -> (SecretKey, EvaluationKey) {
    eprintln!("fhec: generating keys…");
    let t = std::time::Instant::now();
    let keys = fhec::progress::keygen(client);
    eprintln!("fhec: keys generated in {:.1} s", t.elapsed().as_secs_f64());
    keys
}

/// A compiled model: the developer artifact, with keys made on first FHE use.
#[pyclass(module = "fhec._native")]
struct Model {
    artifact: Artifact,
    info: fhec_ir::CircuitInfo,
    /// What compile printed: the settings it adapted, if any.
    adaptation: Option<String>,
    fhe: Mutex<Option<InProcess>>,
}

/// Both parties in one process, for `predict(fhe="execute")`.
struct InProcess {
    client: Client,
    server: Server,
    secret: SecretKey,
    prepared: PreparedKey,
}

#[pymethods]
impl Model {
    /// Runs samples: `mode` is `disable` (the float model), `simulate` or `execute`
    /// (real FHE, keys generated once per model object).
    #[pyo3(signature = (inputs, mode, seed = 0))]
    fn predict<'py>(
        &self,
        py: Python<'py>,
        inputs: Vec<ArrayIn<'py>>,
        mode: &str,
        seed: u64,
    ) -> PyResult<Vec<ArrayOut<'py>>> {
        let arrays = arrays_in(inputs)?;
        let a = &self.artifact;
        let samples = fhec_runtime::samples_from_arrays(&a.graph, &arrays).map_err(error)?;
        let outputs = py.detach(|| -> PyResult<Vec<Vec<Tensor>>> {
            match mode {
                "disable" => fhec_runtime::samples::clear(&a.graph, &samples).map_err(error),
                "simulate" => {
                    let sim = fhec_runtime::simulate::Simulator::new(a, &self.info, seed);
                    samples
                        .iter()
                        .enumerate()
                        .map(|(i, s)| sim.run(i, s).map(|r| r.outputs).map_err(error))
                        .collect()
                }
                "execute" => self.execute(&samples),
                other => Err(error(format!(
                    "fhe='{other}': use 'disable', 'simulate' or 'execute'"
                ))),
            }
        })?;
        Ok(arrays_out(py, &a.graph, &outputs))
    }

    /// The `inspect --format json` report (docs/REPORTS.md), as JSON text.
    fn inspect_json(&self) -> PyResult<String> {
        let a = &self.artifact;
        let report = fhec_compiler::report::Report::new(
            &a.source,
            &a.server.circuit,
            &self.info,
            Some(a.server.params.clone()),
            a.quantization.clone(),
        )
        .with_trees_of(&a.graph)
        .with_client(a.client());
        serde_json::to_string(&report).map_err(error)
    }

    /// The settings compile adapted (None when the defaults fit).
    #[getter]
    fn adaptation(&self) -> Option<String> {
        self.adaptation.clone()
    }

    /// Writes DIR/model.fhe (the developer artifact), DIR/model.client.fhe and
    /// DIR/model.server.fhe; replaces only files fhec wrote.
    fn save(&self, py: Python<'_>, dir: PathBuf) -> PyResult<()> {
        py.detach(|| save_parts(&self.artifact, &dir))
            .map_err(chain)
    }
}

impl Model {
    fn execute(&self, samples: &[Vec<Tensor>]) -> PyResult<Vec<Vec<Tensor>>> {
        let mut fhe = self.fhe.lock().unwrap_or_else(|e| e.into_inner());
        if fhe.is_none() {
            let a = &self.artifact;
            let client = Client::new(a.client().clone()).map_err(error)?;
            let server = Server::new(a.server.clone()).map_err(error)?;
            let (secret, evaluation) = keygen_with_progress(&client);
            let prepared = server.prepare(&evaluation).map_err(error)?;
            *fhe = Some(InProcess {
                client,
                server,
                secret,
                prepared,
            });
        }
        let Some(p) = fhe.as_ref() else {
            return Err(error("no keys"));
        };
        let inputs = p.client.encrypt(&p.secret, samples).map_err(error)?;
        let progress = sample_progress(p.server.info().pbs_per_sample, samples.len());
        let outputs = p
            .server
            .run(&p.prepared, &inputs, &progress)
            .map_err(error)?;
        Ok(p.client
            .decrypt(&p.secret, &outputs)
            .map_err(error)?
            .into_iter()
            .map(|r| r.outputs)
            .collect())
    }
}

fn part_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}

fn save_parts(a: &Artifact, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)
        .map_err(|e| anyhow::anyhow!("{}: cannot create: {e}", dir.display()))?;
    let artifact = part_path(dir, "model.fhe");
    let (client, server) = files::part_paths(&artifact);
    for p in [&artifact, &client, &server] {
        files::guard_fhec_file(p, false)?;
    }
    files::write_atomic(&artifact, &a.to_bytes(), false)?;
    files::write_atomic(&client, &a.client().to_bytes(), false)?;
    files::write_atomic(&server, &a.server.to_bytes(), false)
}

/// Compiles an ONNX model (its bytes) on an inputset; `source` names it in reports.
#[pyfunction]
#[pyo3(signature = (onnx, source, model_dir, inputset, n_bits = None, rounding_threshold_bits = None,
    rounding = None, p_error = None, global_p_error = None, memory_budget = None))]
#[allow(clippy::too_many_arguments)]
fn compile(
    py: Python<'_>,
    onnx: &[u8],
    source: String,
    model_dir: Option<std::path::PathBuf>,
    inputset: Vec<ArrayIn<'_>>,
    n_bits: Option<u32>,
    rounding_threshold_bits: Option<u32>,
    rounding: Option<&str>,
    p_error: Option<f64>,
    global_p_error: Option<f64>,
    memory_budget: Option<u64>,
) -> PyResult<Model> {
    let exact_rounding = match rounding {
        None | Some("approximate") => false,
        Some("exact") => true,
        Some(other) => {
            return Err(error(format!(
                "rounding='{other}': use 'approximate' or 'exact'"
            )))
        }
    };
    if p_error.is_some() && global_p_error.is_some() {
        return Err(error("give p_error or global_p_error, not both"));
    }
    let arrays = arrays_in(inputset)?;
    let settings = Settings {
        n_bits,
        rounding_threshold_bits,
        exact_rounding,
        p_error,
        global_p_error,
        ..Settings::default()
    };
    let limits = fhec_compiler::Limits {
        memory_bytes: memory_budget.unwrap_or(fhec_frontend_onnx::DEFAULT_MEMORY_BUDGET),
    };
    let options = fhec_compiler::Options {
        model_dir,
        ..settings.options(false, limits)
    };
    let compiled = py
        .detach(|| fhec_compiler::compile(onnx, &source, &arrays, &options))
        .map_err(error)?;
    let adaptation = compiled.adaptation.as_ref().map(|a| a.text());
    if let Some(a) = &adaptation {
        eprintln!("fhec: adapted: {a}");
    }
    Ok(Model {
        artifact: compiled.artifact,
        info: compiled.info,
        adaptation,
        fhe: Mutex::new(None),
    })
}

/// Loads a compiled model (the developer artifact, `model.fhe`).
#[pyfunction]
fn load(path: PathBuf) -> PyResult<Model> {
    let (artifact, info) = files::load_artifact(&path).map_err(chain)?;
    Ok(Model {
        artifact,
        info,
        adaptation: None,
        fhe: Mutex::new(None),
    })
}

/// The client of a deployed model: `DIR/model.client.fhe`, keys in `key_dir` (made on
/// first use when it holds none; the secret key never leaves it).
#[pyclass(module = "fhec._native")]
struct NativeClient {
    client: Client,
    key_dir: Option<PathBuf>,
    keys: Option<(SecretKey, Vec<u8>)>,
}

#[pymethods]
impl NativeClient {
    #[new]
    #[pyo3(signature = (client_part, key_dir = None))]
    fn new(client_part: PathBuf, key_dir: Option<PathBuf>) -> PyResult<Self> {
        Ok(NativeClient {
            client: files::load_client(&client_part).map_err(chain)?,
            key_dir,
            keys: None,
        })
    }

    /// Loads the keys in `key_dir`, or generates them (and saves them there).
    fn generate_keys(&mut self, py: Python<'_>) -> PyResult<()> {
        if self.keys.is_some() {
            return Ok(());
        }
        let (client, dir) = (&self.client, self.key_dir.as_deref());
        let keys = py
            .detach(|| -> anyhow::Result<(SecretKey, Vec<u8>)> {
                if let Some(dir) = dir.filter(|d| !fhec::keydir::is_empty(d)) {
                    let secret = fhec::keydir::load_secret(dir, client)?;
                    let path = fhec::keydir::evaluation_key_path(dir);
                    let evaluation =
                        files::read_limited(&path, files::MAX_PART_BYTES, "an evaluation key")?;
                    return Ok((secret, evaluation));
                }
                let (secret, evaluation) = keygen_with_progress(client);
                if let Some(dir) = dir {
                    fhec::keydir::save(dir, &secret, &evaluation)?;
                }
                Ok((secret, evaluation.to_bytes()))
            })
            .map_err(chain)?;
        self.keys = Some(keys);
        Ok(())
    }

    /// The evaluation key, for the server (generates keys first if needed).
    fn evaluation_key<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        self.generate_keys(py)?;
        let (_, e) = self.keys()?;
        Ok(PyBytes::new(py, e))
    }

    /// Quantizes and encrypts samples; returns the ciphertexts for the server.
    fn encrypt<'py>(
        &mut self,
        py: Python<'py>,
        inputs: Vec<ArrayIn<'py>>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        self.generate_keys(py)?;
        let arrays = arrays_in(inputs)?;
        let samples =
            fhec_runtime::samples_from_arrays(self.client.graph(), &arrays).map_err(error)?;
        let (secret, _) = self.keys()?;
        let client = &self.client;
        let bytes = py
            .detach(|| client.encrypt(secret, &samples).map(|x| x.to_bytes()))
            .map_err(error)?;
        Ok(PyBytes::new(py, &bytes))
    }

    /// Decrypts, dequantizes and post-processes a server's outputs.
    fn decrypt<'py>(&mut self, py: Python<'py>, outputs: &[u8]) -> PyResult<Vec<ArrayOut<'py>>> {
        self.generate_keys(py)?;
        let outputs = EncryptedOutputs::from_bytes(outputs).map_err(error)?;
        let (secret, _) = self.keys()?;
        let client = &self.client;
        let results = py
            .detach(|| client.decrypt(secret, &outputs))
            .map_err(error)?;
        let per_sample: Vec<Vec<Tensor>> = results.into_iter().map(|r| r.outputs).collect();
        Ok(arrays_out(py, self.client.graph(), &per_sample))
    }
}

impl NativeClient {
    fn keys(&self) -> PyResult<(&SecretKey, &[u8])> {
        self.keys
            .as_ref()
            .map(|(s, e)| (s, e.as_slice()))
            .ok_or_else(|| error("no keys: call generate_keys() first"))
    }
}

/// The server of a deployed model: `DIR/model.server.fhe` and nothing secret.
/// Evaluation keys are parsed and prepared once per key: a call with the bytes of a key
/// already prepared (same key id and SHA-256) only checks their digest.
#[pyclass(module = "fhec._native")]
struct NativeServer {
    server: Server,
    /// (key id, the key file's SHA-256 as its header states it, prepared key)
    prepared: Mutex<Vec<(KeyId, String, PreparedKey)>>,
}

#[pymethods]
impl NativeServer {
    #[new]
    fn new(server_part: PathBuf) -> PyResult<Self> {
        Ok(NativeServer {
            server: files::load_server(&server_part).map_err(chain)?,
            prepared: Mutex::new(Vec::new()),
        })
    }

    /// Evaluates encrypted inputs with an evaluation key; returns encrypted outputs.
    fn run<'py>(
        &self,
        py: Python<'py>,
        inputs: &[u8],
        evaluation_key: &[u8],
    ) -> PyResult<Bound<'py, PyBytes>> {
        let server = &self.server;
        let bytes = py.detach(|| -> PyResult<Vec<u8>> {
            let inputs = EncryptedInputs::from_bytes(inputs).map_err(error)?;
            // the digest is checked here, so a cached key is used only for the very bytes
            // it was prepared from
            let header = match frame::unframe(evaluation_key, frame::Kind::EvaluationKey) {
                Ok((header, _)) => header,
                Err(e) => {
                    // the key's own reader names what is wrong best (a secret key, say)
                    server.evaluation_key(evaluation_key).map_err(error)?;
                    return Err(error(e));
                }
            };
            let mut cache = self.prepared.lock().unwrap_or_else(|e| e.into_inner());
            let cached = cache
                .iter()
                .position(|(id, digest, _)| Some(*id) == header.key && digest == header.digest());
            let at = match cached {
                Some(at) => at,
                None => {
                    let key = server.evaluation_key(evaluation_key).map_err(error)?;
                    let prepared = server.prepare(&key).map_err(error)?;
                    cache.push((key.key_id, header.digest().to_string(), prepared));
                    cache.len() - 1
                }
            };
            let (key_id, _, prepared) = &cache[at];
            server.check_inputs(*key_id, &inputs).map_err(error)?;
            let progress = sample_progress(server.info().pbs_per_sample, inputs.samples.len());
            let outputs = server.run(prepared, &inputs, &progress).map_err(error)?;
            Ok(outputs.to_bytes())
        })?;
        Ok(PyBytes::new(py, &bytes))
    }
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("FhecError", m.py().get_type::<FhecError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("TFHE_RS_VERSION", fhec_backend_tfhe::TFHE_RS_VERSION)?;
    m.add_function(wrap_pyfunction!(compile, m)?)?;
    m.add_function(wrap_pyfunction!(load, m)?)?;
    m.add_class::<Model>()?;
    m.add_class::<NativeClient>()?;
    m.add_class::<NativeServer>()?;
    Ok(())
}
