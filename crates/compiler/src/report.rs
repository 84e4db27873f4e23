//! What `fhec inspect` and `fhec compile` report about a compiled model: the circuit,
//! its parameters, its sizes on the wire and what its client part reveals.

use fhec_backend_tfhe::{predicted_latency_ms, CryptoParams, ParamChoice};
use fhec_ir::{Circuit, CircuitInfo, IntOp, Status, Violation};
use serde::Serialize;

pub use fhec_runtime::DeploymentSizes;

#[derive(Serialize)]
pub struct NodeRow {
    pub id: usize,
    pub name: String,
    pub op: String,
    /// Ids of the nodes it reads, in operand order.
    pub operands: Vec<usize>,
    pub shape: Vec<usize>,
    pub encrypted: bool,
    pub range: [i64; 2],
    pub bits: u32,
    /// Input precision of a table lookup.
    pub tlu_bits: Option<u32>,
    /// A table lookup reading a rounding: the operand's width before rounding.
    pub tlu_bits_before_rounding: Option<u32>,
    /// `exact` or `approximate`, for a rounding and the table lookups reading it.
    pub rounding: Option<&'static str>,
    /// An approximate rounding: predicted fraction of its results one off the nearest
    /// value at the chosen parameters (operand spread evenly over a rounding step).
    pub off_by_one_rate: Option<f64>,
    pub pbs: usize,
}

/// Version of `inspect --format json`'s layout (docs/REPORTS.md); bumped when a field
/// changes meaning or goes.
pub const INSPECT_SCHEMA_VERSION: u32 = 1;

/// Versions of what produced a report.
#[derive(Clone, Debug, Serialize)]
pub struct Versions {
    pub fhec: &'static str,
    pub tfhe_rs: &'static str,
    /// Version of fhec's file formats (docs/FORMATS.md).
    pub format_version: u32,
}

impl Versions {
    pub fn current() -> Self {
        Versions {
            fhec: env!("CARGO_PKG_VERSION"),
            tfhe_rs: fhec_backend_tfhe::TFHE_RS_VERSION,
            format_version: fhec_runtime::frame::FORMAT_VERSION,
        }
    }
}

#[derive(Serialize)]
pub struct Report {
    pub schema_version: u32,
    pub versions: Versions,
    pub source: String,
    pub nodes: Vec<NodeRow>,
    pub op_counts: std::collections::BTreeMap<String, usize>,
    pub tlu_count: usize,
    pub rounding_pbs: usize,
    pub pbs_per_sample: usize,
    pub max_tlu_bits: u32,
    pub max_bits: u32,
    pub encoding_bits: u32,
    pub violations: Vec<Violation>,
    /// Widest chunk exact rounding clears per step (chosen with the parameters).
    pub rounding_chunk_bits: u32,
    #[serde(serialize_with = "params_json")]
    pub params: Option<ParamChoice>,
    /// Predicted per-sample latency on this machine's thread count (cost model).
    pub predicted_latency: Option<PredictedLatency>,
    /// Each quantization grid and whether it came from the model (QAT) or calibration.
    pub quantization: Vec<fhec_quant::QuantOrigin>,
    /// With tree ensembles: the bootstraps of the obvious lowering, for comparison.
    pub naive_tree_pbs: Option<usize>,
    /// Table lookups whose input ciphertext another lookup also reads, and the
    /// bootstraps they would take if each shared input were bootstrapped once with all
    /// its tables (many-LUT bootstrapping, which fhec does not do; docs/PARAMETERS.md).
    pub shared_table_inputs: SharedTableInputs,
    /// Sizes on the wire, once parameters are chosen.
    pub deployment: Option<DeploymentSizes>,
    /// What the client part reveals (a compiled model only).
    pub client: Option<ClientSummary>,
}

/// The parameters as `inspect --format json` shows them: the artifact's form, with the
/// error-probability target as `{"kind": "per_pbs" | "global", "value": p}`.
fn params_json<S: serde::Serializer>(p: &Option<ParamChoice>, s: S) -> Result<S::Ok, S::Error> {
    use serde::ser::Error;
    let Some(p) = p else {
        return s.serialize_none();
    };
    let mut v = serde_json::to_value(p).map_err(S::Error::custom)?;
    let (kind, value) = match p.p_error_target {
        fhec_backend_tfhe::PErrorTarget::PerPbs(x) => ("per_pbs", x),
        fhec_backend_tfhe::PErrorTarget::Global(x) => ("global", x),
    };
    v["p_error_target"] = serde_json::json!({ "kind": kind, "value": value });
    v.serialize(s)
}

/// See [`Report::shared_table_inputs`].
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct SharedTableInputs {
    /// Per-sample table lookups (elements) whose input another lookup also reads.
    pub lookups: usize,
    /// The distinct input ciphertexts they read.
    pub inputs: usize,
}

impl SharedTableInputs {
    fn of(c: &fhec_ir::Circuit) -> Self {
        let mut shared = SharedTableInputs::default();
        for id in c.ids() {
            let tables = c
                .users(id)
                .into_iter()
                .filter(|&u| matches!(c.node(u).op, fhec_ir::IntOp::Lut { .. }))
                .count();
            if tables >= 2 {
                shared.lookups += tables * c.node(id).numel();
                shared.inputs += c.node(id).numel();
            }
        }
        shared
    }
}

#[derive(Serialize)]
pub struct PredictedLatency {
    pub threads: usize,
    pub ms: f64,
}

impl Report {
    pub fn new(
        source: &str,
        c: &Circuit,
        info: &CircuitInfo,
        params: Option<ParamChoice>,
        quantization: Vec<fhec_quant::QuantOrigin>,
    ) -> Self {
        let mut op_counts = std::collections::BTreeMap::new();
        let sigmas = match &params {
            Some(p) if p.needs_bootstrap() => fhec_backend_tfhe::rounding_sigmas(
                &fhec_backend_tfhe::NoiseBudget::of(c, info),
                &p.keys,
                c.len(),
            ),
            _ => Vec::new(),
        };
        let rounding_of = |id: fhec_ir::NodeId| match c.node(id).op {
            IntOp::Round { approximate, .. } => {
                Some(if approximate { "approximate" } else { "exact" })
            }
            _ => None,
        };
        let nodes = c
            .ids()
            .map(|id| {
                let n = c.node(id);
                *op_counts.entry(n.op.name().to_string()).or_insert(0) += 1;
                // a Lut's operand, and that operand's own operand when it is a rounding
                let read = match n.op {
                    IntOp::Lut { .. } => c.operands(id).first().copied(),
                    _ => None,
                };
                let rounded = read.filter(|&r| rounding_of(r).is_some());
                NodeRow {
                    id: id.index(),
                    name: n.name.clone(),
                    op: n.op.name().into(),
                    operands: c.operands(id).iter().map(|o| o.index()).collect(),
                    shape: n.shape.clone(),
                    encrypted: n.status == Status::Encrypted,
                    range: [n.range.lo, n.range.hi],
                    bits: info.nodes[id.index()].bits,
                    tlu_bits: match n.op {
                        IntOp::Lut { precision, .. } => Some(precision),
                        _ => None,
                    },
                    tlu_bits_before_rounding: rounded
                        .map(|r| info.nodes[c.operands(r)[0].index()].bits),
                    rounding: rounding_of(id).or_else(|| rounded.and_then(rounding_of)),
                    off_by_one_rate: match n.op {
                        IntOp::Round {
                            approximate: true,
                            drop_bits,
                        } => sigmas.get(id.index()).map(|&sigma| {
                            // E|e| / 2^drop: a boundary is crossed when |e| exceeds the
                            // distance to it, uniform over a step
                            (sigma * (2.0 / std::f64::consts::PI).sqrt()
                                / (1u64 << drop_bits) as f64)
                                .min(1.0)
                        }),
                        _ => None,
                    },
                    pbs: info.nodes[id.index()].pbs,
                }
            })
            .collect();
        Report {
            schema_version: INSPECT_SCHEMA_VERSION,
            versions: Versions::current(),
            source: source.into(),
            nodes,
            op_counts,
            tlu_count: info.tlu_count,
            rounding_pbs: info.rounding_pbs,
            pbs_per_sample: info.pbs_per_sample,
            max_tlu_bits: info.max_tlu_bits,
            max_bits: info.max_bits,
            encoding_bits: info.encoding_bits,
            violations: info.violations.clone(),
            rounding_chunk_bits: info.rounding_chunk_bits,
            predicted_latency: params.as_ref().map(|p| {
                let threads = rayon::current_num_threads();
                PredictedLatency {
                    threads,
                    ms: predicted_latency_ms(c, info, p, threads),
                }
            }),
            deployment: params.as_ref().map(|p| DeploymentSizes::of(c, info, p)),
            params,
            quantization,
            naive_tree_pbs: None,
            shared_table_inputs: SharedTableInputs::of(c),
            client: None,
        }
    }

    /// Records what the client part reveals ([`ClientSummary`]).
    pub fn with_client(mut self, part: &fhec_runtime::ClientPart) -> Self {
        self.client = Some(ClientSummary::of(part));
        self
    }

    /// Records the model's naive tree-lowering count ([`naive_tree_pbs`]).
    pub fn with_trees_of(mut self, graph: &fhec_frontend_onnx::FloatGraph) -> Self {
        self.naive_tree_pbs = naive_tree_pbs(graph);
        self
    }

    pub fn text(&self) -> String {
        let mut s = format!("model: {}\n", self.source);
        s += &format!(
            "{:>3}  {:<36} {:<8} {:<12} {:<5} {:<22} {:>4} {:>7} {:>6}\n",
            "#", "node", "op", "shape", "enc", "range", "bits", "tlu", "pbs"
        );
        for n in &self.nodes {
            let flag = if n.bits > fhec_ir::MAX_BITS { " !" } else { "" };
            s += &format!(
                "{:>3}  {:<36} {:<8} {:<12} {:<5} {:<22} {:>4} {:>7} {:>6}{flag}\n",
                n.id,
                truncate(&n.name, 36),
                n.op,
                format!("{:?}", n.shape),
                if n.encrypted { "enc" } else { "clear" },
                format!("[{}, {}]", n.range[0], n.range[1]),
                n.bits,
                tlu_column(n),
                n.pbs
            );
        }
        let ops: Vec<String> = self
            .op_counts
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        s += &format!("ops: {}\n", ops.join(", "));
        s += &format!(
            "per sample: {} TLUs + {} rounding bootstraps = {} PBS; max TLU precision {} bits; widest value {} bits (encoding {} bits)\n",
            self.tlu_count, self.rounding_pbs, self.pbs_per_sample, self.max_tlu_bits, self.max_bits, self.encoding_bits
        );
        if let Some(naive) = self.naive_tree_pbs {
            s += &format!(
                "tree ensembles: {} PBS, naive lowering {naive} (one per internal node and leaf)\n",
                self.pbs_per_sample
            );
        }
        let shared = &self.shared_table_inputs;
        if shared.lookups == 0 && self.tlu_count > 0 {
            s += "shared table inputs: none (each table lookup reads its own ciphertext; many-LUT bootstrapping would save nothing)\n";
        } else if shared.lookups > 0 {
            s += &format!(
                "shared table inputs: {} table lookups read a ciphertext another lookup reads too ({} distinct inputs; many-LUT bootstrapping would save {})\n",
                shared.lookups,
                shared.inputs,
                shared.lookups - shared.inputs
            );
        }
        let rounded: Vec<&NodeRow> = self
            .nodes
            .iter()
            .filter(|n| n.tlu_bits_before_rounding.is_some())
            .collect();
        if !rounded.is_empty() {
            let approx = rounded
                .iter()
                .filter(|n| n.rounding == Some("approximate"))
                .count();
            s += &format!(
                "rounding: {} of {} table lookups read a rounded accumulator (tlu column: bits before → after; ≈ approximate), {approx} of them approximately\n",
                rounded.len(),
                self.nodes.iter().filter(|n| n.tlu_bits.is_some()).count()
            );
            let rates: Vec<f64> = self
                .nodes
                .iter()
                .filter_map(|n| n.off_by_one_rate)
                .collect();
            if let Some(worst) = rates.iter().copied().reduce(f64::max) {
                s += &format!(
                    "  approximate rounding at these parameters: up to {:.1}% of results one off the nearest value (simulate draws them; docs/NOISE.md)\n",
                    100.0 * worst
                );
            }
        }
        s += &quantization_text(&self.quantization);
        if let Some(p) = &self.params {
            s += &params_line(p, self.predicted_latency.as_ref());
        }
        if let Some(d) = &self.deployment {
            s += &d.text();
        }
        if let Some(c) = &self.client {
            s += &c.text();
        }
        if self.violations.is_empty() {
            s += &format!(
                "16-bit check: ok (no value over {} bits)\n",
                fhec_ir::MAX_BITS
            );
        } else {
            s += &format!(
                "16-bit check: {} value(s) over {} bits:\n",
                self.violations.len(),
                fhec_ir::MAX_BITS
            );
            for v in &self.violations {
                s += &format!(
                    "  node '{}' ({}): {} bits, range [{}, {}]\n",
                    v.node, v.op, v.bits, v.range.lo, v.range.hi
                );
            }
        }
        s
    }
}

/// Which grids the model fixed (QAT) and which were calibrated on the inputset.
fn quantization_text(origins: &[fhec_quant::QuantOrigin]) -> String {
    let list = |from_model: bool| -> Vec<String> {
        origins
            .iter()
            .filter(|o| o.from_model == from_model)
            .map(|o| {
                let kind = match o.kind {
                    fhec_quant::OriginKind::Input => "input",
                    fhec_quant::OriginKind::Activation => "activation",
                    fhec_quant::OriginKind::Weights => "weights",
                };
                format!("{kind} '{}' {} bits", o.tensor, o.bits)
            })
            .collect()
    };
    let (model, calibrated) = (list(true), list(false));
    let mut s = String::new();
    if !model.is_empty() {
        s += &format!("quantization from the model: {}\n", model.join(", "));
    }
    if !calibrated.is_empty() {
        s += &format!(
            "quantization calibrated on the inputset: {}\n",
            calibrated.join(", ")
        );
    }
    s
}

/// A table's input precision, with the accumulator width it was rounded from.
fn tlu_column(n: &NodeRow) -> String {
    match (n.tlu_bits, n.tlu_bits_before_rounding) {
        (Some(b), Some(before)) => {
            let arrow = if n.rounding == Some("approximate") {
                "≈"
            } else {
                "→"
            };
            format!("{before}{arrow}{b}")
        }
        (Some(b), None) => b.to_string(),
        _ => "-".into(),
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.into()
    } else {
        format!(
            "…{}",
            s.chars()
                .rev()
                .take(n - 1)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<String>()
        )
    }
}

/// The bootstraps the obvious lowering of the model's tree ensembles would take: one per
/// internal node and one per leaf (docs/TREES.md); `None` without a tree ensemble.
pub fn naive_tree_pbs(graph: &fhec_frontend_onnx::FloatGraph) -> Option<usize> {
    let ensembles: Vec<&fhec_frontend_onnx::TreeEnsemble> = graph
        .nodes
        .iter()
        .filter_map(|n| match &n.op {
            fhec_frontend_onnx::Op::TreeEnsemble(e) => Some(e),
            _ => None,
        })
        .collect();
    (!ensembles.is_empty()).then(|| {
        ensembles
            .iter()
            .flat_map(|e| e.trees.iter())
            .map(|t| t.nodes.len())
            .sum()
    })
}

pub fn params_text(p: &CryptoParams) -> String {
    let bodies = if p.bsk_body_bits < 64 {
        format!(", bsk bodies {} bits", p.bsk_body_bits)
    } else {
        String::new()
    };
    format!(
        "n={} k={} N={} pbs=2^{}x{} ks=2^{}x{} (σ_lwe=2^{:.1}, σ_glwe=2^{:.1}{bodies})",
        p.lwe_dimension,
        p.glwe_dimension,
        p.polynomial_size,
        p.pbs_base_log,
        p.pbs_level,
        p.ks_base_log,
        p.ks_level,
        p.lwe_std_dev().log2(),
        p.glwe_std_dev().log2()
    )
}

fn log2(p: f64) -> f64 {
    p.max(1e-300).log2()
}

const MIB: f64 = 1048576.0;

/// The parameters, error probabilities, predicted cost and key sizes of a choice.
pub fn params_line(p: &ParamChoice, latency: Option<&PredictedLatency>) -> String {
    let target = match p.p_error_target {
        fhec_backend_tfhe::PErrorTarget::PerPbs(t) => format!("target 2^{:.1} per PBS", t.log2()),
        fhec_backend_tfhe::PErrorTarget::Global(t) => {
            format!("target 2^{:.1} per sample", t.log2())
        }
    };
    if !p.needs_bootstrap() {
        return format!(
            "parameters: leveled only: inputs under a {}-dimensional key (σ=2^{:.1}), no evaluation key\n  p_error: output decode 2^{:.1} ({target})\n",
            p.keys.input_dimension,
            fhec_backend_tfhe::noise::security_std_dev(p.keys.input_dimension).log2(),
            log2(p.p_error_output),
        );
    }
    let mut s = format!(
        "parameters: {} partition(s), keys shared by prefix of a {}-dimensional master key; inputs under its first {} coefficients\n",
        p.partitions.len(),
        p.keys.master_dimension(),
        p.keys.input_dimension
    );
    for (i, part) in p.partitions.iter().enumerate() {
        s += &format!(
            "  partition {i}: PBS of precision ≤ {} bits, {} per sample: {}; KS from {} dims; {:.1} ms/PBS predicted; p_error/PBS 2^{:.1}\n",
            part.precision,
            part.pbs_per_sample,
            params_text(&part.params),
            part.ks_input_dimension,
            part.cost_ms,
            log2(part.p_error)
        );
    }
    let (bsk, ksk) = p.eval_key_bytes();
    let within = match p.output_slack_bits {
        0 => String::new(),
        k => format!(" (to within {} units)", 1u64 << (k - 1)),
    };
    s += &format!(
        "  p_error: per PBS ≤ 2^{:.1}, output decode{within} 2^{:.1}, whole sample 2^{:.1} ({target})\n",
        log2(p.p_error_per_pbs),
        log2(p.p_error_output),
        log2(p.p_error_circuit),
    );
    s += &format!(
        "  predicted: {:.0} ms/sample on one core{}; evaluation keys in memory: bsk {:.1} MiB (Fourier), ksk {:.1} MiB\n",
        p.predicted_ms_per_sample,
        latency.map_or(String::new(), |l| format!(", {:.0} ms on {} threads", l.ms, l.threads)),
        bsk as f64 / MIB,
        ksk as f64 / MIB
    );
    s
}

/// What a client part reveals of the model: the quantizers and every op it runs.
#[derive(Clone, Debug, Serialize)]
pub struct ClientSummary {
    pub inputs: Vec<ClientInput>,
    pub outputs: Vec<ClientOutput>,
    /// Float ops the client runs after dequantization, in order.
    pub tail: Vec<TailOp>,
    /// Learned numbers of the model the client receives (in tail ops and in
    /// element-wise ops applied on dequantization); 0 when it holds only quantizers.
    pub model_constants: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct ClientInput {
    pub name: String,
    pub shape: Vec<usize>,
    pub bits: u32,
    /// Distinct quantization grids (one per feature for tree ensembles).
    pub grids: usize,
    pub from_model: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct ClientOutput {
    /// The value the circuit output becomes on dequantization.
    pub value: String,
    pub elements: usize,
    /// Element-wise ops applied right after dequantization.
    pub pending: Vec<String>,
    pub constants: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct TailOp {
    pub node: String,
    pub op: String,
    pub constants: usize,
}

impl ClientSummary {
    pub fn of(part: &fhec_runtime::ClientPart) -> Self {
        let g = &part.graph;
        let inputs = part
            .spec
            .inputs
            .iter()
            .map(|q| ClientInput {
                name: q.name.clone(),
                shape: q.shape.clone(),
                bits: q.bits,
                grids: q.per_element.len().max(1),
                from_model: q.from_model,
            })
            .collect();
        let outputs: Vec<ClientOutput> = part
            .spec
            .outputs
            .iter()
            .map(|d| ClientOutput {
                value: g.value(d.value).name.clone(),
                elements: d.scale.len(),
                pending: d
                    .pending
                    .iter()
                    .map(|p| match p {
                        fhec_quant::Pending::Activation(a) => a.name().to_string(),
                        fhec_quant::Pending::Binary { kind, .. } => kind.name().to_string(),
                        fhec_quant::Pending::Residual { .. } => "residual".to_string(),
                    })
                    .collect(),
                constants: d
                    .pending
                    .iter()
                    .map(|p| match p {
                        fhec_quant::Pending::Binary { constant, .. } => constant.len(),
                        _ => 0,
                    })
                    .sum(),
            })
            .collect();
        let tail: Vec<TailOp> = part
            .spec
            .tail
            .iter()
            .filter_map(|&i| g.nodes.get(i))
            .map(|n| TailOp {
                node: n.name.clone(),
                op: n.op.kind_name().into(),
                constants: n.op.weight_count(),
            })
            .collect();
        let model_constants = outputs.iter().map(|o| o.constants).sum::<usize>()
            + tail.iter().map(|t| t.constants).sum::<usize>();
        ClientSummary {
            inputs,
            outputs,
            tail,
            model_constants,
        }
    }

    pub fn text(&self) -> String {
        let inputs: Vec<String> = self
            .inputs
            .iter()
            .map(|i| {
                format!(
                    "'{}' {:?} {} bits{}",
                    i.name,
                    i.shape,
                    i.bits,
                    if i.grids > 1 {
                        format!(", {} per-feature grids", i.grids)
                    } else {
                        String::new()
                    }
                )
            })
            .collect();
        let mut s = format!(
            "client part: quantizes inputs {}; dequantizes {} circuit output(s)",
            inputs.join(", "),
            self.outputs.len()
        );
        let pending: Vec<String> = self
            .outputs
            .iter()
            .filter(|o| !o.pending.is_empty())
            .map(|o| format!("{} on '{}'", o.pending.join("+"), o.value))
            .collect();
        if !pending.is_empty() {
            s += &format!(", then applies {}", pending.join(", "));
        }
        s += "\n";
        if self.tail.is_empty() {
            s += "  client tail: none\n";
        } else {
            let ops: Vec<String> = self
                .tail
                .iter()
                .map(|t| {
                    if t.constants > 0 {
                        format!("{} ({} model constants)", t.op, t.constants)
                    } else {
                        t.op.clone()
                    }
                })
                .collect();
            s += &format!(
                "  client tail (runs in the clear after decryption): {}\n",
                ops.join(", ")
            );
        }
        if self.model_constants > 0 {
            s += &format!(
                "  the client receives {} of the model's learned numbers (ops above); the circuit's weights and tables stay on the server\n",
                self.model_constants
            );
        } else {
            s += "  the client receives no weight or table of the model, only its quantizers\n";
        }
        s
    }
}
