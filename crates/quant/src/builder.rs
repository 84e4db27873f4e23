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
        client_bound: client_bound_dense(graph, &circuit_side),
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

/// The names of the circuit's dense layers whose result only the client reads.
fn client_bound_dense(graph: &FloatGraph, circuit_side: &[bool]) -> HashSet<String> {
    graph
        .nodes
        .iter()
        .enumerate()
        .filter(|&(i, n)| circuit_side[i] && matches!(n.op, Op::Dense { .. }))
        .filter(|(_, n)| {
            !graph
                .nodes
                .iter()
                .enumerate()
                .any(|(j, r)| circuit_side[j] && r.inputs.contains(&n.outputs[0]))
        })
        .map(|(_, n)| n.name.clone())
        .collect()
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

    /// A dense layer whose input takes a table lookup first, with one grid per feature
    /// (folded into the weights). Every feature then spans all its levels, which can
    /// widen the accumulator: where it reaches the last bit below the limit (a rounding
    /// may need it) and one grid for the tensor would keep it narrower, one grid it is.
    /// The version not kept is left unread (removed at the end), its grids unreported.
    fn dense_on_feature_grids(
        &mut self,
        name: &str,
        x: QValue,
        (k, n): (usize, usize),
        weight: &[f64],
        bias: &[f64],
        shape: Vec<usize>,
    ) -> Result<QValue, QuantError> {
        let width = |l: &Self, v: &QValue| fhec_ir::bits_for_range(l.circuit.node(v.node).range);
        let before = self.origins.len();
        let grids = self.requantize_per_feature(name, x.clone(), k)?;
        let per_feature = self.dense(name, grids, k, n, weight, bias, shape.clone())?;
        if width(self, &per_feature) < fhec_ir::MAX_BITS {
            return Ok(per_feature);
        }
        let reported = self.origins.split_off(before);
        let one_grid = self.dense(name, x, k, n, weight, bias, shape)?;
        if width(self, &one_grid) < width(self, &per_feature) {
            return Ok(one_grid);
        }
        self.origins.truncate(before);
        self.origins.extend(reported);
        Ok(per_feature)
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn dense(
        &mut self,
        name: &str,
        x: QValue,
        k: usize,
        n: usize,
        weight: &[f64],
        bias: &[f64],
        shape: Vec<usize>,
    ) -> Result<QValue, QuantError> {
        // an input quantized per feature folds each feature's step into its weight
        // column: `w·(s_i·q + o_i) = (w·s_i/s_0)·s_0·q + w·o_i`
        let per_feature = !self.qat
            && x.narrow
            && x.pending.is_empty()
            && (0..x.scale.len()).all(|e| x.scale[e] == x.scale[e % k]);
        let x = if x.narrow && x.pending.is_empty() && (x.uniform_scale() || per_feature) {
            x
        } else {
            self.requantize(name, x)?
        };
        let folded: Vec<f64>;
        let quantized_weight = if x.uniform_scale() {
            weight
        } else {
            folded = weight
                .iter()
                .enumerate()
                .map(|(i, w)| w * x.scale[i % k] / x.scale[0])
                .collect();
            &folded
        };
        // a QAT model's weights are integers on its own grid (one step per output row)
        let model_steps = if self.qat {
            weight
                .chunks(k)
                .map(weight_step)
                .collect::<Option<Vec<f64>>>()
        } else {
            None
        };
        let s_w: Vec<f64> = match &model_steps {
            Some(steps) => steps.clone(),
            // one symmetric scale per output row (per channel): each row's integers use
            // all `weight_bits` levels
            None => quantized_weight
                .chunks(k)
                .map(|row| {
                    let wmax = row.iter().fold(0f64, |m, w| m.max(w.abs()));
                    symmetric_step(wmax, self.cfg.weight_bits)
                })
                .collect(),
        };
        let wq: Vec<i64> = quantized_weight
            .iter()
            .enumerate()
            .map(|(i, w)| (w / s_w[i / k]).round() as i64)
            .collect();
        let rows = x.calib[0].len() / k;
        // output weights in two parts: what rounding lost, rounded at its own finer step
        let split = self.cfg.split_output_weights
            && !self.qat
            && rows == 1
            && self.client_bound.contains(name);
        let (s_rem, wq_rem) = if split {
            let lost: Vec<f64> = quantized_weight
                .iter()
                .zip(&wq)
                .enumerate()
                .map(|(i, (w, &q))| w - s_w[i / k] * q as f64)
                .collect();
            let steps: Vec<f64> = lost
                .chunks(k)
                .map(|row| {
                    let m = row.iter().fold(0f64, |m, w| m.max(w.abs()));
                    symmetric_step(m, self.cfg.weight_bits)
                })
                .collect();
            let q = lost
                .iter()
                .enumerate()
                .map(|(i, w)| (w / steps[i / k]).round() as i64)
                .collect();
            (steps, q)
        } else {
            (Vec::new(), Vec::new())
        };
        // the integer rows the circuit computes: the weights, then any remainders
        let m = if split { 2 * n } else { n };
        let w_int: Vec<i64> = wq.iter().chain(&wq_rem).copied().collect();
        let wbits = 1 + fhec_ir::bits_for_range(Range::new(
            0,
            wq.iter().map(|w| w.abs()).max().unwrap_or(0),
        ));
        self.origins.push(crate::QuantOrigin {
            tensor: name.to_string(),
            kind: crate::OriginKind::Weights,
            from_model: model_steps.is_some(),
            bits: wbits,
            scale: s_w[0],
        });
        // integer accumulators on the inputset, before the shift
        let acc: Vec<Vec<i64>> = x
            .calib
            .iter()
            .map(|q| fhec_ir::interp::linear(q, &w_int, &vec![0; m], k, m))
            .collect();
        let sound = sound_linear(&x.sound, &w_int, k, m);
        // the range the circuit is built for: calibrated, widened by the margin, within sound
        let mut design: Vec<(i64, i64)> = (0..rows * m)
            .map(|e| {
                let (lo, hi) = acc.iter().fold((i64::MAX, i64::MIN), |(lo, hi), a| {
                    (lo.min(a[e]), hi.max(a[e]))
                });
                let m = ((hi - lo) as f64 * self.cfg.range_margin).ceil() as i64;
                ((lo - m).max(sound[e].0), (hi + m).min(sound[e].1))
            })
            .collect();
        let shift: Vec<i64> = (0..m)
            .map(|j| -(0..rows).map(|r| design[r * m + j].0).min().unwrap_or(0))
            .collect();
        for (e, d) in design.iter_mut().enumerate() {
            *d = (d.0 + shift[e % m], d.1 + shift[e % m]);
        }
        let calib: Vec<Vec<i64>> = acc
            .into_iter()
            .map(|a| {
                a.iter()
                    .enumerate()
                    .map(|(e, v)| v + shift[e % m])
                    .collect()
            })
            .collect();
        let sound: Vec<(i64, i64)> = sound
            .iter()
            .enumerate()
            .map(|(e, s)| (s.0 + shift[e % m], s.1 + shift[e % m]))
            .collect();
        // bias correction: the rounded weights' error on the inputset's mean operand,
        // `Σ (w − s_w·wq)·mean(q)`, goes into the offset. Raw features never come near
        // 0, so that mean error dominates what rounding loses (a scikit-learn MLP on raw
        // breast-cancer features: 36.8% → 94.7% with 6-bit first-layer weights alone)
        let mean_q = mean_operand(&x.calib);
        let mut offset = Vec::with_capacity(rows * n);
        let mut scale = Vec::with_capacity(rows * n);
        for r in 0..rows {
            for j in 0..n {
                let s = x.scale[0] * s_w[j];
                let wo: f64 = (0..k)
                    .map(|i| weight[j * k + i] * x.offset[r * k + i])
                    .sum();
                let kept = |i: usize| match split {
                    true => s_w[j] * wq[j * k + i] as f64 + s_rem[j] * wq_rem[j * k + i] as f64,
                    false => s_w[j] * wq[j * k + i] as f64,
                };
                let rounding: f64 = (0..k)
                    .map(|i| (quantized_weight[j * k + i] - kept(i)) * mean_q[r * k + i])
                    .sum();
                let remainder_shift = match split {
                    true => x.scale[0] * s_rem[j] * shift[n + j] as f64,
                    false => 0.0,
                };
                offset.push(
                    wo + x.scale[0] * rounding + bias[j] - s * shift[j] as f64 - remainder_shift,
                );
                scale.push(s);
            }
        }
        let op = IntOp::Linear {
            inputs: k,
            outputs: m,
            weight: w_int,
            bias: shift,
        };
        let mut shape = shape;
        if split {
            match shape.last_mut() {
                Some(last) => *last = m,
                None => shape.push(m),
            }
        }
        let range = Range::new(0, design.iter().map(|d| d.1).max().unwrap_or(0));
        let node = self.circuit.add(
            Node {
                name: name.to_string(),
                op,
                shape,
                status: Status::Encrypted,
                range,
            },
            &[x.node],
        );
        if split {
            let steps = s_rem.iter().map(|s| x.scale[0] * s).collect();
            self.output_remainders.insert(node, steps);
        } else if self.cfg.linear_bypass && rows == 1 {
            let source = crate::bypass::DenseSource {
                operand: x.clone(),
                weight: weight.to_vec(),
                bias: bias.to_vec(),
                inputs: k,
                scale: scale.clone(),
                offset: offset.clone(),
            };
            self.dense_sources.insert(node, source);
        }
        Ok(QValue {
            node,
            scale,
            offset,
            pending: vec![],
            narrow: false,
            calib,
            sound,
            design: Some(design),
        })
    }
}

/// The step of a row of weights that are integer multiples of one step, at most 127 of
/// it (int8, as a quantized model stores them): the largest `min|w| / m`, m = 1..=16,
/// dividing every weight to 1e-4. `None` for float weights.
pub(crate) fn weight_step(row: &[f64]) -> Option<f64> {
    let smallest = row
        .iter()
        .map(|w| w.abs())
        .filter(|&w| w > 0.0)
        .fold(f64::INFINITY, f64::min);
    if !smallest.is_finite() {
        return Some(1.0); // an all-zero row: any step
    }
    (1..=16).map(|m| smallest / m as f64).find(|&step| {
        row.iter().all(|w| {
            let q = w / step;
            (q - q.round()).abs() < 1e-4 && q.abs() <= 127.5
        })
    })
}

/// Per element, the mean of an operand's integers over the inputset.
pub(crate) fn mean_operand(calib: &[Vec<i64>]) -> Vec<f64> {
    let numel = calib.first().map_or(0, Vec::len);
    let mut sum = vec![0f64; numel];
    for q in calib {
        for (s, &v) in sum.iter_mut().zip(q) {
            *s += v as f64;
        }
    }
    let samples = calib.len().max(1) as f64;
    sum.into_iter().map(|s| s / samples).collect()
}

/// Interval arithmetic through an integer matrix product (bias 0).
fn sound_linear(x: &[(i64, i64)], w: &[i64], k: usize, n: usize) -> Vec<(i64, i64)> {
    let rows = x.len() / k;
    let mut out = Vec::with_capacity(rows * n);
    for r in 0..rows {
        for j in 0..n {
            let (mut lo, mut hi) = (0i64, 0i64);
            for i in 0..k {
                let (a, b) = x[r * k + i];
                let wi = w[j * k + i];
                lo += (wi * a).min(wi * b);
                hi += (wi * a).max(wi * b);
            }
            out.push((lo, hi));
        }
    }
    out
}
