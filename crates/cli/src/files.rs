//! Files: reading with a size limit, writing whole-or-nothing, never replacing what the
//! user wrote, and the compiled model's files read with their path in every message.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use fhec_ir::CircuitInfo;
use fhec_runtime::{Artifact, Client, Server};

/// Largest model file (artifact, client or server part) fhec reads.
pub const MAX_PART_BYTES: u64 = 4 << 30;

static MEMORY_BUDGET: std::sync::OnceLock<u64> = std::sync::OnceLock::new();

/// Sets the memory budget (`--memory-budget`) for this process; the first call wins.
pub fn set_memory_budget(bytes: u64) {
    let _ = MEMORY_BUDGET.set(bytes);
}

/// What a model, an input file or an inputset may take in memory.
pub fn memory_budget() -> u64 {
    MEMORY_BUDGET
        .get()
        .copied()
        .unwrap_or(fhec_frontend_onnx::DEFAULT_MEMORY_BUDGET)
}

/// The budget as the compiler takes it.
pub fn limits() -> fhec_compiler::Limits {
    fhec_compiler::Limits {
        memory_bytes: memory_budget(),
    }
}

/// Parses a size: a number of bytes with an optional binary unit (`512MiB`, `8GiB`,
/// `8G`, `1048576`).
pub fn parse_size(text: &str) -> std::result::Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        "g" | "gib" => 30,
        "t" | "tib" => 40,
        other => return Err(format!("unknown unit '{other}' (use KiB, MiB, GiB or TiB)")),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("'{text}' is not a size (e.g. 512MiB, 8GiB)"))
}

fn part_limit() -> u64 {
    MAX_PART_BYTES.min(memory_budget())
}

/// Reads a file of at most `limit` bytes; `what` names what it should be.
pub fn read_limited(path: &Path, limit: u64, what: &str) -> Result<Vec<u8>> {
    let len = std::fs::metadata(path)
        .with_context(|| format!("{}: cannot read", path.display()))?
        .len();
    if len > limit {
        let budget = if limit == memory_budget() {
            " (the memory budget, --memory-budget)"
        } else {
            ""
        };
        bail!(
            "{}: {len} bytes, more than {what} can take ({limit} bytes{budget})",
            path.display()
        );
    }
    std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))
}

/// Writes `bytes` to `path` through a temporary file in the same directory, renamed into
/// place once complete: a reader never sees a partial file. `private` creates it
/// readable and writable by its owner only, from the start.
pub fn write_atomic(path: &Path, bytes: &[u8], private: bool) -> Result<()> {
    let name = path
        .file_name()
        .with_context(|| format!("{}: not a file name", path.display()))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let write = || -> std::io::Result<()> {
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        if private {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        anyhow::anyhow!("{}: cannot write: {e}", path.display())
    })
}

/// True when `path` holds a file fhec wrote (its header starts with `FHEC-`).
pub fn is_fhec_file(path: &Path) -> bool {
    std::fs::File::open(path)
        .and_then(|mut f| {
            let mut buf = [0u8; 5];
            std::io::Read::read_exact(&mut f, &mut buf).map(|_| &buf == b"FHEC-")
        })
        .unwrap_or(false)
}

/// Refuses to replace a file fhec did not write, unless forced.
pub fn guard_overwrite(path: &Path, ours: bool, force: bool) -> Result<()> {
    if path.exists() && !ours && !force {
        bail!(
            "{}: exists and was not written by fhec; refusing to overwrite (use --force)",
            path.display()
        );
    }
    Ok(())
}

/// [`guard_overwrite`] for an fhec file.
pub fn guard_fhec_file(path: &Path, force: bool) -> Result<()> {
    guard_overwrite(path, is_fhec_file(path), force)
}

/// Runtime errors about a file, named.
pub fn about(path: &Path) -> impl Fn(fhec_runtime::Error) -> anyhow::Error + '_ {
    move |e| anyhow::anyhow!("{}: {e}", path.display())
}

pub fn load_artifact(path: &Path) -> Result<(Artifact, CircuitInfo)> {
    let bytes = read_limited(path, part_limit(), "a compiled model")?;
    Artifact::from_bytes(&bytes).map_err(about(path))
}

pub fn load_client(path: &Path) -> Result<Client> {
    let bytes = read_limited(path, part_limit(), "a client part")?;
    Client::from_bytes(&bytes).map_err(about(path))
}

pub fn load_server(path: &Path) -> Result<Server> {
    let bytes = read_limited(path, part_limit(), "a server part")?;
    Server::from_bytes(&bytes).map_err(about(path))
}

/// Reads `[samples, ...]` arrays (a `.npy` for a one-input model, or a `.npz` keyed by
/// input name) as per-sample tensors of `graph`'s inputs.
pub fn load_samples(
    path: &Path,
    graph: &fhec_frontend_onnx::FloatGraph,
) -> Result<Vec<Vec<fhec_frontend_onnx::Tensor>>> {
    let arrays = crate::npy::read_arrays(path)?;
    fhec_runtime::samples_from_arrays(graph, &arrays).map_err(about(path))
}

/// The deployment parts written beside an artifact: `out/m.fhe` gives
/// `out/m.client.fhe` and `out/m.server.fhe`.
pub fn part_paths(artifact: &Path) -> (PathBuf, PathBuf) {
    (
        artifact.with_extension("client.fhe"),
        artifact.with_extension("server.fhe"),
    )
}

/// Compiles the model at `model` on the inputset at `inputset`, naming the file at
/// fault in every error.
pub fn compile(
    model: &Path,
    inputset: &Path,
    options: &fhec_compiler::Options,
) -> Result<(
    fhec_compiler::Compiled,
    Vec<Vec<fhec_frontend_onnx::Tensor>>,
)> {
    let start = std::time::Instant::now();
    let (graph, samples) = import_with_inputset(model, inputset)?;
    let compiled =
        fhec_compiler::compile_graph(graph, &samples, &source_name(model), options, start)
            .map_err(|e| compile_error(model, e))?;
    Ok((compiled, samples))
}

/// The model's float graph and the inputset's samples.
pub fn import_with_inputset(
    model: &Path,
    inputset: &Path,
) -> Result<(
    fhec_frontend_onnx::FloatGraph,
    Vec<Vec<fhec_frontend_onnx::Tensor>>,
)> {
    let bytes = read_limited(model, memory_budget(), "an ONNX model")?;
    let graph = fhec_compiler::import(&bytes, &limits(), Some(model_dir(model)))
        .map_err(|e| compile_error(model, e))?;
    let samples = load_samples(inputset, &graph)?;
    Ok((graph, samples))
}

/// The directory of a model file: where its external data files are read from.
pub fn model_dir(model: &Path) -> &Path {
    match model.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// The model file's name, as artifacts record it.
pub fn source_name(model: &Path) -> String {
    model
        .file_name()
        .map_or_else(String::new, |f| f.to_string_lossy().into_owned())
}

/// A compile error, with the model file named where the model is at fault.
pub fn compile_error(model: &Path, e: fhec_compiler::CompileError) -> anyhow::Error {
    use fhec_compiler::CompileError::*;
    match e {
        Import(_)
        | Quant(_)
        | TooWide(_)
        | Suggestion { .. }
        | Pinned { .. }
        | OverBudget { .. } => {
            anyhow::anyhow!("{}: {e}", model.display())
        }
        e => e.into(),
    }
}
