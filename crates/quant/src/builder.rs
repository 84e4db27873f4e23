//! Lowering of the float graph's circuit side to integer ops, calibrating as it goes.

use std::collections::{HashMap, HashSet};

use fhec_frontend_onnx::{DType, FloatGraph, Op, Tensor, ValueId};
use fhec_ir::{Circuit, IntOp, Node, NodeId, Range, Status};

use crate::client::{ClientSpec, InputQuant, OutputDequant, Pending};
use crate::tlu::Grid;
use crate::{QuantConfig, QuantError, Quantized};

/// A float value as the circuit holds it: `pending(scale[e]·q[e] + offset[e])`, where
/// `q` is the integer value of `node`.
#[derive(Clone)]
pub(crate) struct QValue {
    pub node: NodeId,
    pub scale: Vec<f64>,
    pub offset: Vec<f64>,
    pub pending: Vec<Pending>,
    /// `q` is a quantized activation or input (narrow), not a raw accumulator.
    pub narrow: bool,
    /// `q` for every calibration sample.
    pub calib: Vec<Vec<i64>>,
    /// Per element, bounds no input can exceed (interval arithmetic from clamped inputs
    /// and bounded tables).
    pub sound: Vec<(i64, i64)>,
    /// For accumulators: the per-element range the circuit is built for.
    pub design: Option<Vec<(i64, i64)>>,
}

impl QValue {
    pub(crate) fn float(&self, e: usize, q: f64) -> f64 {
        self.pending
            .iter()
            .fold(self.scale[e] * q + self.offset[e], |x, p| p.apply(e, x))
    }
    pub(crate) fn uniform_scale(&self) -> bool {
        self.scale.iter().all(|&s| s == self.scale[0])
    }
}

/// Quantizes `graph` on `inputset` (samples × model inputs, per-sample shapes).
pub fn quantize(
    graph: &FloatGraph,
    inputset: &[Vec<Tensor>],
    cfg: &QuantConfig,
) -> Result<Quantized, QuantError> {
    cfg.check()?;
    check_inputset(graph, inputset)?;
    let head = crate::head::client_head(graph);
    let circuit_side = circuit_side(graph, &head);
    let head_nodes: Vec<usize> = (0..graph.nodes.len()).filter(|&i| head[i]).collect();
    let circuit_inputs = crate::head::circuit_inputs(graph, &head, &circuit_side);
    // each circuit input's value on every calibration sample (through the head)
    let mut calibration: Vec<Vec<Tensor>> =
        vec![Vec::with_capacity(inputset.len()); circuit_inputs.len()];
    for (s, sample) in inputset.iter().enumerate() {
        let env = crate::head::run_head(graph, &head_nodes, sample)
            .map_err(|e| QuantError::Preprocessing(format!("inputset sample {s}: {e}")))?;
        for (k, &v) in circuit_inputs.iter().enumerate() {
            let t = env[v.0 as usize].clone().ok_or_else(|| {
                QuantError::Preprocessing(format!("'{}' is not computed", graph.value(v).name))
            })?;
            if let Some(e) = t.data.iter().position(|x| !x.is_finite()) {
                return Err(QuantError::NonFinite {
                    input: graph.value(v).name.clone(),
                    sample: s,
                    element: e,
                    value: t.data[e],
                });
            }
            calibration[k].push(t);
        }
    }
    let mut b = Lowering {
        graph,
        cfg,
        circuit: Circuit::default(),
        values: HashMap::new(),
        requantized: HashMap::new(),
        qat: graph
            .nodes
            .iter()
            .any(|n| matches!(n.op, Op::Quantize { .. })),
        origins: Vec::new(),
        neighbour_grids: HashMap::new(),
        dense_sources: HashMap::new(),
        client_bound: crate::dense::client_bound_dense(graph, &circuit_side),
        output_remainders: HashMap::new(),
    };
    let mut inputs = Vec::new();
    for (index, (&id, values)) in circuit_inputs.iter().zip(&calibration).enumerate() {
        inputs.push(b.input(index, id, values)?);
    }
    for (i, node) in graph.nodes.iter().enumerate() {
        if circuit_side[i] {
            b.node(node)?;
        }
    }
    // Values crossing to the client: consumed by a tail node or returned by the model.
    let mut crossing: Vec<ValueId> = Vec::new();
    let tail: Vec<usize> = (0..graph.nodes.len())
        .filter(|&i| !circuit_side[i] && !head[i])
        .collect();
    for &i in &tail {
        crossing.extend(
            graph.nodes[i]
                .inputs
                .iter()
                .filter(|v| b.values.contains_key(v)),
        );
    }
    crossing.extend(graph.outputs.iter().filter(|v| b.values.contains_key(v)));
    let mut outputs = Vec::new();
    for v in crossing {
        if outputs.iter().any(|o: &OutputDequant| o.value == v) {
            continue;
        }
        let q = &b.values[&v];
        b.circuit.outputs.push(q.node);
        outputs.push(OutputDequant {
            value: v,
            scale: q.scale.clone(),
            offset: q.offset.clone(),
            pending: q.pending.clone(),
            remainder_scale: b
                .output_remainders
                .get(&q.node)
                .cloned()
                .unwrap_or_default(),
        });
    }
    b.circuit.inputs = circuit_inputs.iter().map(|v| b.values[v].node).collect();
    Ok(Quantized {
        circuit: without_dead_nodes(b.circuit),
        client: ClientSpec {
            head: head_nodes,
            inputs,
            outputs,
            tail,
            origins: b.origins,
        },
    })
}

/// The circuit without nodes no output depends on (a layer replaced by its spread
/// copy, a value only the client's tail used…), inputs kept; order preserved.
fn without_dead_nodes(c: Circuit) -> Circuit {
    let mut live = vec![false; c.len()];
    for &o in c.outputs.iter().chain(&c.inputs) {
        live[o.index()] = true;
    }
    for id in c.ids().collect::<Vec<_>>().into_iter().rev() {
        if live[id.index()] {
            for o in c.operands(id) {
                live[o.index()] = true;
            }
        }
    }
    let mut out = Circuit {
        rounding_chunk_bits: c.rounding_chunk_bits,
        merged_precisions: c.merged_precisions.clone(),
        ..Circuit::default()
    };
    let mut new_id: Vec<Option<NodeId>> = vec![None; c.len()];
    for id in c.ids() {
        if live[id.index()] {
            // a live node's operands are live and come first, so they have new ids
            let ops: Vec<NodeId> = c
                .operands(id)
                .iter()
                .filter_map(|o| new_id[o.index()])
                .collect();
            new_id[id.index()] = Some(out.add(c.node(id).clone(), &ops));
        }
    }
    let map = |v: &Vec<NodeId>| v.iter().filter_map(|o| new_id[o.index()]).collect();
    out.inputs = map(&c.inputs);
    out.outputs = map(&c.outputs);
    out
}

fn check_inputset(graph: &FloatGraph, inputset: &[Vec<Tensor>]) -> Result<(), QuantError> {
    if inputset.is_empty() {
        return Err(QuantError::EmptyInputset);
    }
    for (s, sample) in inputset.iter().enumerate() {
        if sample.len() != graph.inputs.len() {
            return Err(QuantError::InputCount {
                sample: s,
                given: sample.len(),
                expected: graph.inputs.len(),
            });
        }
        for (t, &id) in sample.iter().zip(&graph.inputs) {
            let info = graph.value(id);
            if t.shape != info.shape {
                return Err(QuantError::InputShape {
                    input: info.name.clone(),
                    given: t.shape.clone(),
                    expected: info.shape.clone(),
                });
            }
            // a missing value (NaN) an Imputer fills is fine; the circuit inputs are
            // checked again after the client's head
            let allowed = |v: f64| v.is_finite() || (v.is_nan() && graph.imputes(id));
            if let Some((e, &v)) = t.data.iter().enumerate().find(|(_, v)| !allowed(**v)) {
                return Err(QuantError::NonFinite {
                    input: info.name.clone(),
                    sample: s,
                    element: e,
                    value: v,
                });
            }
        }
    }
    Ok(())
}

/// Marks the nodes that run in the circuit: every op with weights or two varying
/// operands (`Dense`, `Conv`, `Sparse` but data movement, `Pairwise`, `GroupMax`, trees) and
/// everything upstream of one,
/// up to the client's `head` (which runs before encryption). The rest (the tail) runs
/// on the client after decryption.
pub(crate) fn circuit_side(graph: &FloatGraph, head: &[bool]) -> Vec<bool> {
    let mut side = vec![false; graph.nodes.len()];
    let mut needed: std::collections::HashSet<ValueId> = Default::default();
    // the circuit ends at a nearest-neighbours selection or a classifier's scores: the
    // vote on the k labels, the label chosen from the scores and whatever a converter
    // computes from them (skl2onnx's one-vs-rest decision of an SVC) run on the client
    let mut on_client = vec![false; graph.values.len()];
    for node in &graph.nodes {
        let ends_circuit = matches!(
            node.op,
            Op::Neighbours(_) | Op::ClassifierHead { .. } | Op::OneVsOneVotes { .. }
        );
        if ends_circuit || node.inputs.iter().any(|v| on_client[v.0 as usize]) {
            for o in &node.outputs {
                on_client[o.0 as usize] = true;
            }
        }
    }
    for (i, node) in graph.nodes.iter().enumerate().rev() {
        if head[i] || node.inputs.iter().any(|v| on_client[v.0 as usize]) {
            continue;
        }
        // pure data movement (a column picked after the classifier's head…) needs
        // the circuit only when an op with weights follows
        let heavy = match &node.op {
            Op::Sparse(m) => !m.is_movement(),
            op => matches!(
                op,
                Op::Dense { .. }
                    | Op::Conv(_)
                    | Op::Pairwise { .. }
                    | Op::GroupMax { .. }
                    | Op::TreeEnsemble(_)
                    | Op::Neighbours(_)
            ),
        };
        if heavy || node.outputs.iter().any(|o| needed.contains(o)) {
            side[i] = true;
            needed.extend(node.inputs.iter().copied());
        }
    }
    side
}

pub(crate) struct Lowering<'a> {
    pub graph: &'a FloatGraph,
    pub cfg: &'a QuantConfig,
    pub circuit: Circuit,
    pub values: HashMap<ValueId, QValue>,
    /// Requantizations done, by operand node and (pending ops, scales, target).
    pub requantized: HashMap<(NodeId, u64), QValue>,
    /// The model carries its own quantization (QuantizeLinear nodes): its grids and
    /// integer weights are kept.
    pub qat: bool,
    pub origins: Vec<crate::QuantOrigin>,
    /// The grid chosen for each input a k-nearest-neighbours op reads.
    pub neighbour_grids: HashMap<ValueId, crate::knn_grid::KnnGrid>,
    /// Each dense layer of one row, by its node, when linear parts may bypass lookups.
    pub dense_sources: crate::bypass::DenseSources,
    /// Dense layers (by name) whose result no circuit node reads: it goes to the client.
    pub client_bound: HashSet<String>,
    /// Per circuit node built with output weights in two parts, the remainder's steps.
    pub output_remainders: HashMap<NodeId, Vec<f64>>,
}

/// `shape` with `len` on its last axis (a scalar shape gets one axis).
pub(crate) fn with_last_axis(mut shape: Vec<usize>, len: usize) -> Vec<usize> {
    match shape.last_mut() {
        Some(last) => *last = len,
        None => shape.push(len),
    }
    shape
}

/// Asymmetric quantization of `[lo, hi]` (widened to hold 0) on `bits` unsigned bits.
pub(crate) fn asymmetric(lo: f64, hi: f64, bits: u32) -> (f64, i64) {
    let (lo, hi) = (lo.min(0.0), hi.max(0.0));
    let levels = ((1i64 << bits) - 1) as f64;
    let scale = if hi > lo { (hi - lo) / levels } else { 1.0 };
    let zero = (-lo / scale).round().clamp(0.0, levels) as i64;
    (scale, zero)
}

/// The step of a symmetric `bits`-bit signed grid for values up to `max_abs` in
/// magnitude (1 when they are all zero).
pub(crate) fn symmetric_step(max_abs: f64, bits: u32) -> f64 {
    if max_abs > 0.0 {
        max_abs / ((1i64 << (bits - 1)) - 1) as f64
    } else {
        1.0
    }
}

pub(crate) fn min_max(values: impl Iterator<Item = f64>) -> (f64, f64) {
    values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    })
}

impl Lowering<'_> {
    /// The grid of the QuantizeLinear nodes reading `id`, when every reader is one and
    /// they agree.
    fn model_grid_of(&self, id: ValueId) -> Option<Grid> {
        let mut readers = self.graph.nodes.iter().filter(|n| n.inputs.contains(&id));
        let first = readers.next()?;
        let grid = |op: &Op| match *op {
            Op::Quantize {
                scale,
                zero_point,
                qmin,
                qmax,
            } => Some(Grid {
                scale,
                zero: zero_point - qmin,
                max: qmax - qmin,
                from_model: true,
            }),
            _ => None,
        };
        let g = grid(&first.op)?;
        readers
            .all(|n| {
                grid(&n.op).is_some_and(|h| (h.scale, h.zero, h.max) == (g.scale, g.zero, g.max))
            })
            .then_some(g)
    }

    /// The neighbours op reading `id`, when it is the only reader.
    pub(crate) fn read_only_by_neighbours(
        &self,
        id: ValueId,
    ) -> Option<&fhec_frontend_onnx::Neighbours> {
        let mut readers = self.graph.nodes.iter().filter(|n| n.inputs.contains(&id));
        match (readers.next(), readers.next()) {
            (Some(n), None) => match &n.op {
                Op::Neighbours(nb) => Some(nb),
                _ => None,
            },
            _ => None,
        }
    }

    /// Whether every reader of `id` takes one grid per feature as well as one per
    /// tensor: a tree ensemble compares each feature with its own thresholds, a dense
    /// layer folds each feature's step into its weight column (outside QAT, whose
    /// weights are integers on the model's own grid).
    fn read_only_feature_wise(&self, id: ValueId) -> bool {
        self.every_reader(id, |n| match n.op {
            Op::TreeEnsemble(_) => true,
            Op::Dense { .. } => !self.qat && n.inputs[0] == id,
            // skl2onnx casts a float input to float before its first MatMul
            Op::Cast {
                to: DType::F32 | DType::F64,
            } => self.read_only_feature_wise(n.outputs[0]),
            _ => false,
        })
    }

    /// Whether every reader of `id`, through reshapes and casts (which keep its
    /// quantization), is a dense layer reading it as its input: then a table lookup
    /// producing it may quantize each feature on its own grid, which those layers fold
    /// into their weights, and no other reader needs it on one grid (a second lookup).
    fn read_only_densely(&self, id: ValueId) -> bool {
        self.every_reader(id, |n| match n.op {
            Op::Dense { .. } => n.inputs[0] == id,
            Op::Reshape { .. }
            | Op::Cast {
                to: DType::F32 | DType::F64,
            } => self.read_only_densely(n.outputs[0]),
            _ => false,
        })
    }

    /// Whether `id` has readers and every one is `accepted`.
    fn every_reader(
        &self,
        id: ValueId,
        accepted: impl Fn(&fhec_frontend_onnx::Node) -> bool,
    ) -> bool {
        let mut readers = self
            .graph
            .nodes
            .iter()
            .filter(|n| n.inputs.contains(&id))
            .peekable();
        readers.peek().is_some() && readers.all(accepted)
    }

    /// Circuit input `index`: the value `id` (a model input or a head output), whose
    /// calibration samples are `values`.
    fn input(
        &mut self,
        index: usize,
        id: ValueId,
        values: &[Tensor],
    ) -> Result<InputQuant, QuantError> {
        let info = self.graph.value(id);
        // a QAT model's input grid is its first QuantizeLinear's
        let model = self
            .model_grid_of(id)
            .filter(|g| ((g.max + 1) as u64).is_power_of_two());
        let neighbours = self.read_only_by_neighbours(id).filter(|_| model.is_none());
        let mut per_element: Vec<(f64, i64)> = vec![];
        let mut per_element_max: Vec<i64> = vec![];
        let (scale, zero_point, bits) = match (model, neighbours) {
            (Some(g), _) => (g.scale, g.zero, (g.max + 1).trailing_zeros()),
            (None, Some(nb)) => {
                let samples: Vec<&[f64]> = values.iter().map(|t| t.data.as_slice()).collect();
                let grid = crate::knn_grid::choose(nb, &samples, self.cfg.input_bits).map_err(
                    |narrowest| QuantError::Unsupported {
                        node: info.name.clone(),
                        op: "TopK".into(),
                        reason: format!(
                            "k-nearest neighbours over {} features and {} classes needs \
                             comparisons of {narrowest} bits even on the coarsest grid, over \
                             the {} bits a selection network is built with, and its distances \
                             cannot be clipped to fit (too many classes to pack into a key, \
                             or distances too wide to fold in one lookup)",
                            nb.features,
                            nb.classes,
                            crate::knn_grid::MAX_COMPARISON_BITS
                        ),
                    },
                )?;
                per_element = grid.zeros.iter().map(|&z| (grid.scale, z)).collect();
                per_element_max = grid.tops.clone();
                let bits = grid.input_bits();
                let scale = grid.scale;
                let zero = grid.zeros.first().copied().unwrap_or(0);
                self.neighbour_grids.insert(id, grid);
                (scale, zero, bits)
            }
            (None, None) => {
                let bits = self.cfg.input_bits;
                let (lo, hi) = min_max(values.iter().flat_map(|t| t.data.iter().copied()));
                let (scale, zero_point) = asymmetric(lo, hi, bits);
                (scale, zero_point, bits)
            }
        };
        self.origins.push(crate::QuantOrigin {
            tensor: info.name.clone(),
            kind: crate::OriginKind::Input,
            from_model: model.is_some(),
            bits,
            scale,
        });
        let numel: usize = info.shape.iter().product();
        // one grid per feature (last axis) keeps a small-valued feature from being
        // crushed by a large one (raw scikit-learn features span 0.1 to 1000); a feature
        // that is always 0 keeps the tensor's grid, so its step means nothing to a weight
        let features = info.shape.last().copied().unwrap_or(1).max(1);
        if model.is_none() && per_element.is_empty() && self.read_only_feature_wise(id) {
            let grids: Vec<(f64, i64)> = (0..features)
                .map(|f| {
                    let (lo, hi) = min_max(
                        values
                            .iter()
                            .flat_map(|t| t.data.iter().skip(f).step_by(features).copied()),
                    );
                    if lo == 0.0 && hi == 0.0 {
                        (scale, zero_point)
                    } else {
                        asymmetric(lo, hi, bits)
                    }
                })
                .collect();
            per_element = (0..numel).map(|e| grids[e % features]).collect();
        }
        let iq = InputQuant {
            value: id,
            name: info.name.clone(),
            shape: info.shape.clone(),
            scale,
            zero_point,
            bits,
            from_model: model.is_some(),
            per_element: per_element.clone(),
            per_element_max,
        };
        let calib: Vec<Vec<i64>> = values
            .iter()
            .map(|t| {
                t.data
                    .iter()
                    .enumerate()
                    .map(|(e, &x)| iq.quantize(e, x))
                    .collect()
            })
            .collect();
        let node = self.circuit.add(
            Node {
                name: info.name.clone(),
                op: IntOp::Input { index, bits },
                shape: info.shape.clone(),
                status: Status::Encrypted,
                range: Range::new(0, (1 << bits) - 1),
            },
            &[],
        );
        let sound = (0..numel).map(|e| (0, iq.top(e))).collect();
        let grids = if per_element.is_empty() {
            vec![(scale, zero_point); numel]
        } else {
            per_element
        };
        self.values.insert(
            id,
            QValue {
                node,
                scale: grids.iter().map(|g| g.0).collect(),
                offset: grids.iter().map(|g| -g.0 * g.1 as f64).collect(),
                pending: vec![],
                narrow: true,
                calib,
                sound,
                design: None,
            },
        );
        Ok(iq)
    }

    fn node(&mut self, node: &fhec_frontend_onnx::Node) -> Result<(), QuantError> {
        let unsupported = |reason: &str| QuantError::Unsupported {
            node: node.name.clone(),
            op: node.onnx_op.clone(),
            reason: reason.into(),
        };
        let xs: Vec<QValue> = node
            .inputs
            .iter()
            .map(|v| self.values.get(v).cloned())
            .collect::<Option<_>>()
            .ok_or_else(|| unsupported("an input is not computed in the circuit"))?;
        let x = xs[0].clone();
        let out_id = node.outputs[0];
        let out_shape = self.graph.value(out_id).shape.clone();
        let result = match &node.op {
            Op::Dense { inputs, outputs, weight, bias } => {
                let lookup_first = !x.narrow || !x.pending.is_empty();
                let feature_grids = lookup_first && !self.qat && self.read_only_densely(node.inputs[0]);
                let past_lookup = match feature_grids && self.cfg.linear_bypass {
                    true => self.dense_past_lookup(&node.name, &x, (*inputs, *outputs), weight, bias, out_shape.clone())?,
                    false => None,
                };
                match past_lookup {
                    Some(y) => y,
                    None if feature_grids => self.dense_on_feature_grids(&node.name, x, (*inputs, *outputs), weight, bias, out_shape)?,
                    None => self.dense(&node.name, x, *inputs, *outputs, weight, bias, out_shape)?,
                }
            }
            Op::Activation(a) => QValue { pending: [x.pending.clone(), vec![Pending::Activation(*a)]].concat(), ..x },
            Op::BinaryConst { kind, constant, constant_first } => self.binary(x, *kind, &constant.data, *constant_first),
            Op::Reshape { .. } => {
                let range = self.circuit.node(x.node).range;
                let n = self.circuit.add(Node { name: node.name.clone(), op: IntOp::Reshape, shape: out_shape, status: Status::Encrypted, range }, &[x.node]);
                QValue { node: n, ..x }
            }
            // to a float type: the value is unchanged (f64 inside, f32 differences are noise)
            Op::Cast { to: DType::F32 | DType::F64 } => x,
            Op::Sparse(map) => self.sparse(&node.name, xs, map, out_shape)?,
            Op::Conv(conv) => self.conv(&node.name, x, conv, out_shape)?,
            Op::Pairwise { kind, left, right } => self.pairwise(&node.name, xs, *kind, left, right, out_shape)?,
            Op::GroupMax { groups, min } => self.group_max(&node.name, x, groups, *min, out_shape)?,
            Op::TreeEnsemble(e) => self.tree_ensemble(&node.name, x, e, out_shape)?,
            Op::Neighbours(nb) => self.neighbours(&node.name, node.inputs[0], x, nb, out_shape)?,
            Op::TopK { .. } | Op::SquaredDistances { .. } => return Err(unsupported("TopK and Scan run in the circuit only as the k-nearest-neighbours selection scikit-learn's KNeighborsClassifier exports (the k smallest distances to the training points, whose labels an ArrayFeatureExtractor reads; uniform weights)")),
            Op::Quantize { scale, zero_point, qmin, qmax } => self.quantize_to_model_grid(&node.name, x, *scale, *zero_point, *qmin, *qmax)?,
            Op::Dequantize { scale, zero_point } => {
                let numel = x.scale.len();
                let x = self.binary(x, fhec_frontend_onnx::BinaryKind::Sub, &vec![*zero_point as f64; numel], false);
                self.binary(x, fhec_frontend_onnx::BinaryKind::Mul, &vec![*scale; numel], false)
            }
            _ => return Err(unsupported("only the model's final operations may use it (they run on the client); here its result feeds an operation with weights")),
        };
        self.values.insert(out_id, result);
        Ok(())
    }

    /// QuantizeLinear inside the circuit: the integers `q` on the model's grid. A model
    /// input already quantized on that grid by the client is relabelled; anything else
    /// takes one table lookup onto the grid (the pending ops included).
    fn quantize_to_model_grid(
        &mut self,
        name: &str,
        x: QValue,
        scale: f64,
        zero_point: i64,
        qmin: i64,
        qmax: i64,
    ) -> Result<QValue, QuantError> {
        let grid = Grid {
            scale,
            zero: zero_point - qmin,
            max: qmax - qmin,
            from_model: true,
        };
        let on_grid = x.pending.is_empty()
            && x.narrow
            && x.scale.iter().all(|&s| s == scale)
            && x.offset.iter().all(|&o| o == -scale * grid.zero as f64);
        let u = if on_grid {
            x
        } else {
            self.origins.push(crate::QuantOrigin {
                tensor: name.to_string(),
                kind: crate::OriginKind::Activation,
                from_model: true,
                bits: fhec_ir::bits_for_range(Range::new(0, grid.max)),
                scale,
            });
            self.requantize_with(name, x, Some(grid))?
        };
        // q = u + qmin
        let numel = u.scale.len();
        Ok(QValue {
            scale: vec![1.0; numel],
            offset: vec![qmin as f64; numel],
            ..u
        })
    }

    /// Folds an affine constant op into scale/offset when nothing is pending; defers it otherwise.
    fn binary(
        &mut self,
        x: QValue,
        kind: fhec_frontend_onnx::BinaryKind,
        c: &[f64],
        constant_first: bool,
    ) -> QValue {
        use fhec_frontend_onnx::BinaryKind::*;
        let affine = matches!(kind, Add | Sub | Mul) || (kind == Div && !constant_first);
        if x.pending.is_empty() && affine {
            let (mut scale, mut offset) = (x.scale.clone(), x.offset.clone());
            for e in 0..scale.len() {
                match (kind, constant_first) {
                    (Add, _) => offset[e] += c[e],
                    (Sub, false) => offset[e] -= c[e],
                    (Sub, true) => (scale[e], offset[e]) = (-scale[e], c[e] - offset[e]),
                    (Mul, _) => (scale[e], offset[e]) = (scale[e] * c[e], offset[e] * c[e]),
                    (Div, _) => (scale[e], offset[e]) = (scale[e] / c[e], offset[e] / c[e]),
                    _ => unreachable!("only affine ops fold"),
                }
            }
            return QValue { scale, offset, ..x };
        }
        let p = Pending::Binary {
            kind,
            constant: c.to_vec(),
            constant_first,
        };
        QValue {
            pending: [x.pending.clone(), vec![p]].concat(),
            ..x
        }
    }
}
