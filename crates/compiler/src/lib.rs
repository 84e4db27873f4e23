//! The compile recipe: ONNX bytes and an inputset in, a compiled [`Artifact`] out.
//!
//! ```text
//! import → samples → quantize → verify → 16-bit check → choose parameters (and the
//! rounding chunk width; with trees, the cheaper leaf lowering) → split into parts
//! ```
//!
//! Everything is in memory; files are the caller's. The one entry point is
//! [`compile`]; [`lower`] and [`lower_and_choose`] are its first steps, for `inspect`.

// No panic on user input (docs/ARCHITECTURE.md): unwrap, expect and panic! are refused
// outside tests; the few invariants left carry a justified `allow`.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod adapt;
pub mod dot;
pub mod report;
pub mod score;
pub mod settings;

use std::time::{Duration, Instant};

use fhec_backend_tfhe::{choose_params, NoiseBudget, PErrorTarget, ParamChoice, ParamError};
pub use fhec_frontend_onnx::Limits;
use fhec_frontend_onnx::{bytes_text, FloatGraph, ImportError, Tensor};
use fhec_ir::{Circuit, CircuitInfo, IntOp};
pub use fhec_quant::NEIGHBOUR_COMPARISON_BITS;
use fhec_quant::{ClientSpec, QuantConfig, QuantError, Quantized};
use fhec_runtime::{Array, Artifact, ClientPart, ModelId, ServerPart};

#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    /// The ONNX model cannot be imported.
    #[error(transparent)]
    Import(#[from] ImportError),
    /// The inputset does not fit the model.
    #[error(transparent)]
    Inputset(fhec_runtime::Error),
    /// The model cannot be quantized into a circuit.
    #[error(transparent)]
    Quant(#[from] QuantError),
    #[error(transparent)]
    Params(#[from] ParamError),
    #[error("over the {max}-bit limit: {0}", max = fhec_ir::MAX_BITS)]
    TooWide(String),
    /// The settings as given fail; others compile.
    #[error("{failure}. These settings compile: {flags} ({fidelity}); pass them, or leave the settings at their defaults (without --strict) to let fhec adapt them")]
    Suggestion {
        failure: Box<CompileError>,
        flags: String,
        fidelity: String,
    },
    /// The settings as given fail; what the free ones can be changed to agrees with the
    /// float model clearly less than settings that change a pinned one.
    #[error("{failure}. Keeping the settings you set, the best that compiles ({kept_flags}) gives only {kept_fidelity}; these settings compile and agree better: {flags} ({fidelity}); pass them, or set fewer settings to let fhec adapt them")]
    Pinned {
        failure: Box<CompileError>,
        kept_flags: String,
        kept_fidelity: String,
        flags: String,
        fidelity: String,
    },
    /// Calibration would take more memory than the budget allows.
    #[error("calibrating on {samples} samples takes about {} ({values} values per sample), more than the memory budget of {}: use a smaller inputset or a larger budget", bytes_text(*.bytes), bytes_text(*.budget))]
    OverBudget {
        samples: usize,
        values: u64,
        bytes: u64,
        budget: u64,
    },
    #[error("internal error, please report: {0}")]
    Internal(String),
}

/// A model lowered to a verified circuit (parameters not chosen yet).
pub struct Lowered {
    pub quantized: Quantized,
    pub info: CircuitInfo,
}

/// The compiled model and what compiling it found.
pub struct Compiled {
    pub artifact: Artifact,
    pub info: CircuitInfo,
    pub elapsed: Duration,
    /// The settings the compiler changed, when it had to (or could at no cost).
    pub adaptation: Option<adapt::Adaptation>,
    /// For a model with k-nearest neighbours, how often the circuit's simulation agrees
    /// with the float model on the inputset: the exact comparisons of its selection
    /// network bound the input grid and clip the distances, which can cost accuracy.
    pub neighbours_fidelity: Option<adapt::Fidelity>,
}

/// How a model is compiled: its settings, the error target, which settings the compiler
/// may adapt, and whether it may at all.
#[derive(Clone, Debug)]
pub struct Options {
    pub quant: QuantConfig,
    pub target: PErrorTarget,
    /// Settings the user left at their defaults.
    pub free: adapt::Knobs,
    /// Keep the settings as given; a failure names settings that would compile.
    pub strict: bool,
    /// Memory the model, its inputset and calibration may take.
    pub limits: Limits,
    /// The directory of the model file, where its external data files are read from.
    pub model_dir: Option<std::path::PathBuf>,
}

impl Options {
    /// The defaults, all adaptable.
    pub fn new(quant: QuantConfig, target: PErrorTarget) -> Self {
        Options {
            quant,
            target,
            free: adapt::Knobs::all(),
            strict: false,
            limits: Limits::default(),
            model_dir: None,
        }
    }
}

/// Imports an ONNX model; `model_dir` is the directory of its file, where tensors kept
/// in external data files are read from.
pub fn import(
    onnx: &[u8],
    limits: &Limits,
    model_dir: Option<&std::path::Path>,
) -> Result<FloatGraph, CompileError> {
    Ok(fhec_frontend_onnx::import_from(onnx, limits, model_dir)?)
}

/// Refuses an inputset whose calibration would take more than the budget: the quantizer
/// keeps every sample's integer value of every node, and the compiler its float value
/// (16 bytes per sample and value), besides the model's constants.
pub fn check_calibration_memory(
    graph: &FloatGraph,
    samples: usize,
    limits: &Limits,
) -> Result<(), CompileError> {
    let numel = |v: &fhec_frontend_onnx::ValueInfo| -> u64 {
        v.shape
            .iter()
            .try_fold(1u64, |n, &d| n.checked_mul(d as u64))
            .unwrap_or(u64::MAX)
    };
    let (mut constants, mut values) = (0u64, 0u64);
    for v in &graph.values {
        let n = numel(v);
        if v.constant.is_some() {
            constants = constants.saturating_add(n);
        } else {
            values = values.saturating_add(n);
        }
    }
    let bytes = constants
        .saturating_mul(8)
        .saturating_add(values.saturating_mul(16).saturating_mul(samples as u64));
    if bytes > limits.memory_bytes {
        return Err(CompileError::OverBudget {
            samples,
            values,
            bytes,
            budget: limits.memory_bytes,
        });
    }
    Ok(())
}

/// The inputset as per-sample tensors of `graph`'s inputs.
pub fn inputset(
    graph: &FloatGraph,
    arrays: &[(Option<String>, Array)],
) -> Result<Vec<Vec<Tensor>>, CompileError> {
    fhec_runtime::samples_from_arrays(graph, arrays).map_err(CompileError::Inputset)
}

fn internal(e: impl std::fmt::Display) -> CompileError {
    CompileError::Internal(e.to_string())
}

/// Quantizes and verifies.
pub fn lower(
    graph: &FloatGraph,
    samples: &[Vec<Tensor>],
    cfg: &QuantConfig,
) -> Result<Lowered, CompileError> {
    let quantized = fhec_quant::quantize(graph, samples, cfg)?;
    let info = fhec_ir::verify(&quantized.circuit).map_err(internal)?;
    Ok(Lowered { quantized, info })
}

/// Refuses circuits with values over the 16-bit limit, naming each: the node, its op,
/// its width and the range that needs it.
pub fn check_violations(info: &CircuitInfo) -> Result<(), CompileError> {
    if info.violations.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = info
        .violations
        .iter()
        .map(|v| {
            let what = if v.op == "round" {
                "its accumulator plus half a rounding step"
            } else {
                "its calibrated range"
            };
            format!(
                "node '{}' ({}) needs {} bits for [{}, {}] ({what})",
                v.node, v.op, v.bits, v.range.lo, v.range.hi
            )
        })
        .collect();
    Err(CompileError::TooWide(list.join("; ")))
}

/// Chooses the crypto parameters and, with them, the width of exact-rounding chunks: a
/// chunk of c bits costs two bootstraps of precision c − 1, so wider chunks mean fewer
/// but dearer bootstraps. Every width from 1 to the widest table precision + 1 is tried
/// and the cheapest by predicted cost is kept (it is stored in the circuit).
pub fn choose(
    l: &mut Lowered,
    target: PErrorTarget,
) -> Result<(ParamChoice, NoiseBudget), CompileError> {
    let c = &mut l.quantized.circuit;
    let rounds = c.ids().any(|id| {
        matches!(c.node(id).op, IntOp::Round { drop_bits, approximate: false } if drop_bits > 0)
    });
    let widths: Vec<Option<u32>> = if rounds {
        (1..=l.info.max_tlu_bits + 1).map(Some).collect()
    } else {
        vec![None]
    };
    // the widths' searches are independent: one per core
    let tried: Vec<_> = {
        use rayon::prelude::*;
        let c = &*c;
        widths
            .into_par_iter()
            .map(|width| {
                let mut c = c.clone();
                c.rounding_chunk_bits = width;
                let info = fhec_ir::verify(&c).map_err(internal)?;
                let budget = NoiseBudget::of(&c, &info);
                Ok((width, info, choose_params(&budget, target), budget))
            })
            .collect::<Result<Vec<_>, CompileError>>()?
    };
    let mut best: Option<(ParamChoice, NoiseBudget, Option<u32>, CircuitInfo)> = None;
    let mut first_error = None;
    for (width, info, choice, budget) in tried {
        match choice {
            Ok(choice) => {
                if best.as_ref().is_none_or(|(b, ..)| {
                    choice.predicted_ms_per_sample < b.predicted_ms_per_sample
                }) {
                    best = Some((choice, budget, width, info));
                }
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    match best {
        Some((choice, budget, width, info)) => {
            c.rounding_chunk_bits = width;
            l.info = info;
            Ok(merge_partitions(c, &mut l.info, target, choice, budget))
        }
        None => Err(first_error
            .map(CompileError::from)
            .unwrap_or_else(|| internal("no rounding width was tried"))),
    }
}

/// How much predicted latency merging partitions may cost (docs/PARAMETERS.md).
const MERGE_SLACK: f64 = 0.05;

/// Merges partitions into the next wider one, narrowest first, while that keeps the
/// predicted latency within [`MERGE_SLACK`] of `choice`'s and shrinks the evaluation
/// key: one key fewer to generate, send and hold, for slightly dearer bootstraps.
fn merge_partitions(
    c: &mut Circuit,
    info: &mut CircuitInfo,
    target: PErrorTarget,
    mut choice: ParamChoice,
    mut budget: NoiseBudget,
) -> (ParamChoice, NoiseBudget) {
    let limit = choice.predicted_ms_per_sample * (1.0 + MERGE_SLACK);
    let key_bytes = |p: &ParamChoice| {
        let (bsk, ksk) = p.eval_key_bytes();
        bsk + ksk
    };
    let narrower: Vec<u32> = budget
        .partitions
        .iter()
        .map(|p| p.precision)
        .rev()
        .skip(1)
        .rev()
        .collect();
    for precision in narrower {
        let mut merged = c.clone();
        merged.merged_precisions.push(precision);
        let Ok(merged_info) = fhec_ir::verify(&merged) else {
            continue;
        };
        let merged_budget = NoiseBudget::of(&merged, &merged_info);
        let Ok(merged_choice) = choose_params(&merged_budget, target) else {
            continue;
        };
        if merged_choice.predicted_ms_per_sample <= limit
            && key_bytes(&merged_choice) < key_bytes(&choice)
        {
            *c = merged;
            *info = merged_info;
            choice = merged_choice;
            budget = merged_budget;
        }
    }
    (choice, budget)
}

/// Lowers the model and chooses its parameters (`None` when a value exceeds 16 bits).
/// With tree ensembles it also tries lowerings that compute the same result at another
/// cost and keeps the one predicted cheapest (docs/TREES.md): without sibling-leaf pairs
/// (pairs save lookups but add noise to the path sums, which can cost the comparisons a
/// decomposition level), and, when `comparison_bits` is unset, threshold-aligned
/// comparisons rounded exactly to 2, 3 or 4 bits (small bootstraps instead of one that
/// reads the whole feature). Returns the configuration kept.
pub fn lower_and_choose(
    graph: &FloatGraph,
    samples: &[Vec<Tensor>],
    cfg: &QuantConfig,
    target: PErrorTarget,
) -> Result<(Lowered, Option<ParamChoice>, QuantConfig), CompileError> {
    let mut l = lower(graph, samples, cfg)?;
    if !l.info.violations.is_empty() {
        return Ok((l, None, cfg.clone()));
    }
    let (params, _) = choose(&mut l, target)?;
    let trees = graph
        .nodes
        .iter()
        .any(|n| matches!(n.op, fhec_frontend_onnx::Op::TreeEnsemble(_)));
    if !trees {
        return Ok((l, Some(params), cfg.clone()));
    }
    let mut alternatives = Vec::new();
    let comparisons: Vec<(Option<u32>, bool)> = match cfg.comparison_bits {
        Some(_) => vec![(cfg.comparison_bits, cfg.comparison_exact)],
        None => std::iter::once((None, false))
            .chain((2..=4).map(|c| (Some(c), true)))
            .collect(),
    };
    let siblings: &[bool] = if cfg.sibling_leaves {
        &[true, false]
    } else {
        &[false]
    };
    for &(comparison_bits, comparison_exact) in &comparisons {
        for &sibling_leaves in siblings {
            let alt = QuantConfig {
                comparison_bits,
                comparison_exact,
                sibling_leaves,
                ..cfg.clone()
            };
            if alt != *cfg {
                alternatives.push(alt);
            }
        }
    }
    let mut best = (l, params, cfg.clone());
    for alt_cfg in alternatives {
        let mut alt = lower(graph, samples, &alt_cfg)?;
        if !alt.info.violations.is_empty() {
            continue;
        }
        if let Ok((p, _)) = choose(&mut alt, target) {
            if p.predicted_ms_per_sample < best.1.predicted_ms_per_sample {
                best = (alt, p, alt_cfg);
            }
        }
    }
    Ok((best.0, Some(best.1), best.2))
}

/// Compiles an ONNX model (`source` names it in messages and files) on an inputset.
pub fn compile(
    onnx: &[u8],
    source: &str,
    inputset_arrays: &[(Option<String>, Array)],
    options: &Options,
) -> Result<Compiled, CompileError> {
    let start = Instant::now();
    let graph = import(onnx, &options.limits, options.model_dir.as_deref())?;
    let samples = inputset(&graph, inputset_arrays)?;
    compile_graph(graph, &samples, source, options, start)
}

/// [`compile`] from an imported graph and its inputset samples.
pub fn compile_graph(
    graph: FloatGraph,
    samples: &[Vec<Tensor>],
    source: &str,
    options: &Options,
    start: Instant,
) -> Result<Compiled, CompileError> {
    check_calibration_memory(&graph, samples.len(), &options.limits)?;
    let ((l, params, cfg), adaptation) = adapt::compile_adaptive(
        &graph,
        samples,
        &options.quant,
        options.target,
        options.free,
        options.strict,
    )?;
    let neighbours_fidelity = if graph
        .nodes
        .iter()
        .any(|n| matches!(n.op, fhec_frontend_onnx::Op::Neighbours(_)))
    {
        Some(adapt::fidelity(&graph, &l, samples)?)
    } else {
        None
    };
    let artifact = split(graph, l.quantized, params, &l.info, source, cfg)?;
    Ok(Compiled {
        artifact,
        info: l.info,
        elapsed: start.elapsed(),
        adaptation,
        neighbours_fidelity,
    })
}

/// Splits a quantized model into its server part and its client part (the float tail
/// cut out of the whole graph), and gives both the model's identity.
pub fn split(
    graph: FloatGraph,
    quantized: Quantized,
    params: ParamChoice,
    info: &CircuitInfo,
    source: &str,
    quant: QuantConfig,
) -> Result<Artifact, CompileError> {
    let Quantized { circuit, client } = quantized;
    let (tail_graph, mut spec) = client_tail(&graph, client)?;
    // the client learns where its input grids came from, nothing about the layers
    let quantization = std::mem::take(&mut spec.origins);
    spec.origins = quantization
        .iter()
        .filter(|o| o.kind == fhec_quant::OriginKind::Input)
        .cloned()
        .collect();
    let mut client = ClientPart {
        model_id: ModelId::default(),
        source: source.into(),
        keys: params.keys.clone(),
        encoding_bits: info.encoding_bits,
        output_bits: params.output_bits,
        spec,
        graph: tail_graph,
    };
    // the id digests everything both parts hold (the client's id still zero)
    let id = ModelId::digest_of_value(&(&circuit, &params, &client));
    client.model_id = id;
    let server = ServerPart {
        model_id: id,
        source: source.into(),
        circuit,
        params,
        client,
    };
    let artifact = Artifact {
        fhec_version: env!("CARGO_PKG_VERSION").into(),
        source: source.into(),
        quant,
        quantization,
        graph,
        server,
    };
    artifact.check().map_err(internal)?;
    Ok(artifact)
}

/// The client's graph (model inputs and outputs, tail nodes only) and the client spec
/// renumbered onto it.
fn client_tail(
    graph: &FloatGraph,
    mut spec: ClientSpec,
) -> Result<(FloatGraph, ClientSpec), CompileError> {
    // the head runs before encryption, the tail after decryption: both on the client
    let keep: Vec<usize> = spec.head.iter().chain(&spec.tail).copied().collect();
    let (client_graph, map) = graph.subgraph(&keep);
    let remap = |v: fhec_frontend_onnx::ValueId| {
        map[v.0 as usize].ok_or_else(|| {
            internal(format!(
                "value '{}' crosses to the client but is not in its graph",
                graph.value(v).name
            ))
        })
    };
    for q in &mut spec.inputs {
        q.value = remap(q.value)?;
    }
    for d in &mut spec.outputs {
        d.value = remap(d.value)?;
    }
    let h = spec.head.len();
    spec.head = (0..h).collect();
    spec.tail = (h..client_graph.nodes.len()).collect();
    Ok((client_graph, spec))
}

/// Test vectors for the emitted MLIR: the circuit inputs of the first `count` inputset
/// samples (the integers `@main` receives) and the integers the circuit returns for
/// them, keyed `input_<i>` / `output_<j>`, each stacked as `[samples, ...shape]` int64.
pub fn test_vectors(
    a: &Artifact,
    info: &CircuitInfo,
    samples: &[Vec<Tensor>],
    count: usize,
) -> Result<Vec<(String, Array)>, CompileError> {
    let c = &a.server.circuit;
    let take = samples.len().min(count);
    let mut inputs: Vec<Vec<f64>> = vec![Vec::new(); c.inputs.len()];
    let mut outputs: Vec<Vec<f64>> = vec![Vec::new(); c.outputs.len()];
    for s in &samples[..take] {
        let q = a.client().spec.quantize_inputs(&a.client().graph, s)?;
        let out = fhec_ir::interp::simulate(c, info, &q).map_err(internal)?;
        for (acc, v) in inputs
            .iter_mut()
            .zip(&q)
            .chain(outputs.iter_mut().zip(&out))
        {
            acc.extend(v.iter().map(|&x| x as f64));
        }
    }
    let array = |prefix: &str, i: usize, id: fhec_ir::NodeId, data: Vec<f64>| {
        let mut shape = vec![take];
        shape.extend(&c.node(id).shape);
        (
            format!("{prefix}_{i}"),
            Array {
                shape,
                data,
                dtype: "<i8",
            },
        )
    };
    Ok(inputs
        .into_iter()
        .enumerate()
        .map(|(i, d)| array("input", i, c.inputs[i], d))
        .chain(
            outputs
                .into_iter()
                .enumerate()
                .map(|(j, d)| array("output", j, c.outputs[j], d)),
        )
        .collect())
}
