//! compile = import → quantize → verify → choose parameters, as one recipe.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use fhec_backend_tfhe::{choose_params, NoiseBudget, PErrorTarget, ParamChoice};
use fhec_frontend_onnx::FloatGraph;
use fhec_ir::CircuitInfo;
use fhec_quant::{QuantConfig, Quantized};

use crate::artifact::{Artifact, ClientPart, ServerPart};

/// A model lowered to a verified circuit (parameters not chosen yet).
pub struct Lowered {
    pub graph: FloatGraph,
    pub quantized: Quantized,
    pub info: CircuitInfo,
    pub source: String,
}

pub fn import_model(model: &Path) -> Result<FloatGraph> {
    let bytes =
        std::fs::read(model).with_context(|| format!("{}: cannot read", model.display()))?;
    fhec_frontend_onnx::import(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", model.display()))
}

pub fn lower(model: &Path, inputset: &Path, cfg: &QuantConfig) -> Result<Lowered> {
    let graph = import_model(model)?;
    let samples = crate::data::load_samples(inputset, &graph)?;
    let quantized = fhec_quant::quantize(&graph, &samples, cfg)
        .map_err(|e| anyhow::anyhow!("{}: {e}", model.display()))?;
    let info = fhec_ir::verify(&quantized.circuit)
        .map_err(|e| anyhow::anyhow!("internal error, please report: {e}"))?;
    let source = model
        .file_name()
        .map_or_else(String::new, |f| f.to_string_lossy().into_owned());
    Ok(Lowered {
        graph,
        quantized,
        info,
        source,
    })
}

/// Refuses circuits with values over the 16-bit limit, naming each.
pub fn check_violations(info: &CircuitInfo) -> Result<()> {
    if info.violations.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = info
        .violations
        .iter()
        .map(|v| {
            format!(
                "node '{}' ({}) needs {} bits (range [{}, {}])",
                v.node, v.op, v.bits, v.range.lo, v.range.hi
            )
        })
        .collect();
    bail!(
        "over the {}-bit limit: {}; lower --n-bits or --rounding-threshold-bits",
        fhec_ir::MAX_BITS,
        list.join("; ")
    )
}

/// Chooses the crypto parameters and, with them, the width of exact-rounding chunks: a
/// chunk of c bits costs two bootstraps of precision c − 1, so wider chunks mean fewer
/// but dearer bootstraps. Every width from 1 to the widest table precision + 1 is tried
/// and the cheapest by predicted cost is kept (it is stored in the circuit).
pub fn choose(l: &mut Lowered, target: PErrorTarget) -> Result<(ParamChoice, NoiseBudget)> {
    let c = &mut l.quantized.circuit;
    let rounds = c
        .ids()
        .any(|id| matches!(c.node(id).op, fhec_ir::IntOp::Round { drop_bits, approximate: false } if drop_bits > 0));
    let widths: Vec<Option<u32>> = if rounds {
        (1..=l.info.max_tlu_bits + 1).map(Some).collect()
    } else {
        vec![None]
    };
    let mut best: Option<(ParamChoice, NoiseBudget, Option<u32>, CircuitInfo)> = None;
    let mut first_error = None;
    for width in widths {
        c.rounding_chunk_bits = width;
        let info = fhec_ir::verify(c)
            .map_err(|e| anyhow::anyhow!("internal error, please report: {e}"))?;
        let budget = NoiseBudget::of(c, &info);
        match choose_params(&budget, target) {
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
            Ok((choice, budget))
        }
        None => Err(first_error.expect("at least one width was tried").into()),
    }
}

/// Lowers the model and chooses its parameters (`None` when a value exceeds 16 bits).
/// With tree ensembles it also lowers without sibling-leaf pairs and keeps the lowering
/// predicted cheaper: pairs save lookups but add noise to the path sums, which can cost
/// the comparisons a decomposition level (docs/TREES.md). Returns the configuration kept.
pub fn lower_and_choose(
    model: &Path,
    inputset: &Path,
    cfg: &QuantConfig,
    target: PErrorTarget,
) -> Result<(Lowered, Option<ParamChoice>, QuantConfig)> {
    let mut l = lower(model, inputset, cfg)?;
    if !l.info.violations.is_empty() {
        return Ok((l, None, cfg.clone()));
    }
    let (params, _) = choose(&mut l, target)?;
    let trees = l
        .graph
        .nodes
        .iter()
        .any(|n| matches!(n.op, fhec_frontend_onnx::Op::TreeEnsemble(_)));
    if cfg.sibling_leaves && trees {
        let alt_cfg = QuantConfig {
            sibling_leaves: false,
            ..cfg.clone()
        };
        let mut alt = lower(model, inputset, &alt_cfg)?;
        if alt.info.violations.is_empty() {
            if let Ok((p, _)) = choose(&mut alt, target) {
                if p.predicted_ms_per_sample < params.predicted_ms_per_sample {
                    return Ok((alt, Some(p), alt_cfg));
                }
            }
        }
    }
    Ok((l, Some(params), cfg.clone()))
}

pub struct Compiled {
    pub artifact: Artifact,
    pub info: CircuitInfo,
    pub elapsed: Duration,
}

pub fn compile(
    model: &Path,
    inputset: &Path,
    cfg: &QuantConfig,
    target: PErrorTarget,
) -> Result<Compiled> {
    let start = Instant::now();
    let (l, params, cfg) = lower_and_choose(model, inputset, cfg, target)?;
    check_violations(&l.info)?;
    let params = params.expect("parameters are chosen when nothing exceeds 16 bits");
    let artifact = Artifact {
        fhec_version: env!("CARGO_PKG_VERSION").into(),
        source: l.source,
        server: ServerPart {
            circuit: l.quantized.circuit,
            params: params.clone(),
        },
        client: ClientPart {
            spec: l.quantized.client,
            graph: l.graph,
            params,
            quant: cfg.clone(),
        },
    };
    Ok(Compiled {
        artifact,
        info: l.info,
        elapsed: start.elapsed(),
    })
}

/// Test vectors for the emitted MLIR: the circuit inputs of the first `count` inputset
/// samples (the integers `@main` receives) and the integers the circuit returns for
/// them, keyed `input_<i>` / `output_<j>`, each stacked as `[samples, ...shape]` int64.
pub fn test_vectors(
    a: &Artifact,
    info: &CircuitInfo,
    samples: &[Vec<fhec_frontend_onnx::Tensor>],
    count: usize,
) -> Result<Vec<(String, crate::npy::Array)>> {
    let c = &a.server.circuit;
    let take = samples.len().min(count);
    let mut inputs: Vec<Vec<f64>> = vec![Vec::new(); c.inputs.len()];
    let mut outputs: Vec<Vec<f64>> = vec![Vec::new(); c.outputs.len()];
    for s in &samples[..take] {
        let q = a.client.spec.quantize_inputs(s);
        let out = fhec_ir::interp::simulate(c, info, &q)?;
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
            crate::npy::Array {
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
