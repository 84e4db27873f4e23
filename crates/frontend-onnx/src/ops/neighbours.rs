//! k-nearest neighbours as skl2onnx exports scikit-learn's KNeighbors* models: a `Scan`
//! computes the squared distance from the input to every training point, `TopK` picks
//! the k smallest, and an `ArrayFeatureExtractor` reads the picked points' labels. The
//! first two are imported as ops of their own ([`Op::SquaredDistances`], [`Op::TopK`]);
//! [`fuse`] then replaces the chain by one [`Op::Neighbours`], which is what the
//! quantizer lowers (an encrypted selection network, docs/QUANTIZATION.md).

use std::collections::HashMap;

use crate::graph::{Activation, DType, Neighbours, Node, Op, Tensor, ValueId};
use crate::{pb, Builder, ImportError, NodeCtx};

/// What a value of Scan's body holds.
#[derive(Clone, Copy, PartialEq, Eq)]
enum BodyValue {
    /// The carried state: the model input.
    State,
    /// The scanned element: one training point.
    Point,
    /// `state − point` (either order).
    Difference,
    /// `Σ (state − point)²` over the features.
    SquaredDistance,
}

const SCAN_SHAPE: &str = "Scan is supported as skl2onnx writes it for nearest neighbours: \
     one state (the input), one constant scanned tensor (the training points), and a body \
     computing ReduceSumSquare(Sub(state, point), axes = [1], keepdims = 0)";

/// `Scan` computing squared Euclidean distances to constant points.
pub(crate) fn scan(ctx: &mut NodeCtx<'_>) -> Result<(), ImportError> {
    if ctx.node.input.len() != 2 || ctx.node.output.len() != 2 {
        return Err(ctx.err(SCAN_SHAPE));
    }
    if ctx.attr_i("num_scan_inputs", 0) != 1 {
        return Err(ctx.err(SCAN_SHAPE));
    }
    for attr in [
        "scan_input_axes",
        "scan_input_directions",
        "scan_output_axes",
        "scan_output_directions",
    ] {
        if ctx.attr_ints(attr).iter().any(|&a| a != 0) {
            return Err(ctx.err(format!(
                "{attr} other than 0 is not supported; {SCAN_SHAPE}"
            )));
        }
    }
    let (x, points) = (ctx.required_input(0)?, ctx.required_input(1)?);
    let points = ctx
        .constant(points)
        .cloned()
        .ok_or_else(|| ctx.err(format!("the scanned tensor is computed; {SCAN_SHAPE}")))?;
    let x_shape = ctx.info(x).shape.clone();
    if ctx.constant(x).is_some()
        || x_shape.len() != 2
        || points.shape.len() != 2
        || points.shape[1] != x_shape[1]
    {
        return Err(ctx.err(format!(
            "state {x_shape:?} and scanned tensor {:?} are not [batch, features] and \
             [points, features]; {SCAN_SHAPE}",
            points.shape
        )));
    }
    let body = ctx
        .attr("body")
        .and_then(|a| a.g.as_deref())
        .ok_or_else(|| ctx.err("Scan has no body graph"))?;
    let outputs = body_outputs(body).map_err(|why| ctx.err(format!("{why}; {SCAN_SHAPE}")))?;
    if outputs != [BodyValue::State, BodyValue::SquaredDistance] {
        return Err(ctx.err(SCAN_SHAPE));
    }
    let n = points.shape[0];
    let dtype = ctx.info(x).dtype;
    let (state, distances) = (ctx.required_output(0)?, ctx.required_output(1)?);
    ctx.add_sub_node(
        "state",
        Op::Reshape {
            shape: x_shape.clone(),
        },
        vec![x],
        vec![(state, x_shape.clone(), dtype)],
    );
    ctx.add_node(
        Op::SquaredDistances { points },
        vec![x],
        vec![(distances, vec![n, x_shape[0]], dtype)],
    );
    Ok(())
}

/// What each output of Scan's body computes, or why the body is not understood.
fn body_outputs(body: &pb::GraphProto) -> Result<Vec<BodyValue>, String> {
    if body.input.len() != 2 || body.output.len() != 2 {
        return Err(format!(
            "the body has {} inputs and {} outputs, not 2 and 2",
            body.input.len(),
            body.output.len()
        ));
    }
    let mut kinds: HashMap<&str, BodyValue> = HashMap::new();
    kinds.insert(&body.input[0].name, BodyValue::State);
    kinds.insert(&body.input[1].name, BodyValue::Point);
    let mut constants: HashMap<&str, Vec<i64>> = HashMap::new();
    for init in &body.initializer {
        let t = crate::tensor::decode_tensor(init).map_err(|e| e.to_string())?;
        constants.insert(&init.name, t.data.iter().map(|&v| v as i64).collect());
    }
    for node in &body.node {
        let kind_of = |i: usize| {
            node.input
                .get(i)
                .and_then(|n| kinds.get(n.as_str()).copied())
        };
        let out = node.output.first().map(String::as_str).unwrap_or("");
        let kind = match node.op_type.as_str() {
            "Constant" => {
                if let Some(t) = node.attribute.iter().find_map(|a| a.t.as_ref()) {
                    let t = crate::tensor::decode_tensor(t).map_err(|e| e.to_string())?;
                    constants.insert(out, t.data.iter().map(|&v| v as i64).collect());
                }
                continue;
            }
            "Identity" => kind_of(0),
            "Sub" => match (kind_of(0), kind_of(1)) {
                (Some(BodyValue::State), Some(BodyValue::Point))
                | (Some(BodyValue::Point), Some(BodyValue::State)) => Some(BodyValue::Difference),
                _ => None,
            },
            "ReduceSumSquare" => {
                let axes = match node.input.get(1).filter(|n| !n.is_empty()) {
                    Some(n) => constants.get(n.as_str()).cloned(),
                    None => node
                        .attribute
                        .iter()
                        .find(|a| a.name == "axes")
                        .map(|a| a.ints.clone()),
                };
                let keepdims = node
                    .attribute
                    .iter()
                    .find(|a| a.name == "keepdims")
                    .map_or(1, |a| a.i);
                let over_features = matches!(axes.as_deref(), Some([1]) | Some([-1]));
                (kind_of(0) == Some(BodyValue::Difference) && over_features && keepdims == 0)
                    .then_some(BodyValue::SquaredDistance)
            }
            _ => None,
        };
        let kind =
            kind.ok_or_else(|| format!("the body's {} node is not understood", node.op_type))?;
        kinds.insert(out, kind);
    }
    body.output
        .iter()
        .map(|o| {
            kinds
                .get(o.name.as_str())
                .copied()
                .ok_or_else(|| format!("the body output '{}' is not computed", o.name))
        })
        .collect()
}

/// ONNX `TopK` (opset 1: `k` attribute; 10+: `K` input) over the last axis.
pub(crate) fn top_k(ctx: &mut NodeCtx<'_>) -> Result<(), ImportError> {
    let x = ctx.required_input(0)?;
    let shape = ctx.info(x).shape.clone();
    let last = *shape
        .last()
        .ok_or_else(|| ctx.err("the input is a scalar"))?;
    let axis = super::axis(ctx, ctx.attr_i("axis", -1), shape.len())?;
    if axis + 1 != shape.len() {
        return Err(ctx.err("TopK over an axis other than the last is not supported"));
    }
    let k = match super::movement::const_ints(ctx, 1, "k")? {
        Some(v) if v.len() == 1 => v[0],
        _ => return Err(ctx.err("K must be one constant integer")),
    };
    if k < 1 || k as usize > last {
        return Err(ctx.err(format!("K = {k} is outside 1..={last}")));
    }
    let op = Op::TopK {
        k: k as usize,
        largest: ctx.attr_i("largest", 1) != 0,
    };
    let mut out_shape = shape;
    if let Some(l) = out_shape.last_mut() {
        *l = k as usize;
    }
    let dtype = ctx.info(x).dtype;
    if let Some(t) = ctx.constant(x).cloned() {
        let outs = crate::interp::eval_op(&op, &[&t]);
        for (i, mut o) in outs.into_iter().enumerate() {
            o.shape = out_shape.clone();
            ctx.set_constant(i, o)?;
        }
        return Ok(());
    }
    let (values, indices) = (ctx.required_output(0)?, ctx.required_output(1)?);
    ctx.add_node(
        op,
        vec![x],
        vec![
            (values, out_shape.clone(), dtype),
            (indices, out_shape, DType::I64),
        ],
    );
    Ok(())
}

/// Replaces each `ArrayFeatureExtractor(labels, TopK(smallest, SquaredDistances(x)))`
/// chain (through reshapes, transposes that keep the element order, and a Sqrt, which
/// keeps the order of distances) by `TakeLast(distinct labels, Neighbours(x))`. The old
/// nodes are left for dead-node pruning (they stay, and the quantizer refuses them,
/// when something else reads them: TopK's distances, say, for distance weights).
pub(crate) fn fuse(b: &mut Builder) {
    let mut at = 0;
    while at < b.nodes.len() {
        if let Some((x, nb, labels)) = match_chain(b, at) {
            let name = format!("{}/neighbours", b.nodes[at].name);
            let k = nb.k;
            let codes = b.add_value(&name, vec![1, k], DType::I64, None);
            let take = &mut b.nodes[at];
            take.inputs = vec![codes];
            if let Op::TakeLast { data } = &mut take.op {
                let dtype = data.dtype;
                *data = Tensor::new(vec![labels.len()], labels, dtype);
            }
            let node = Node {
                name,
                onnx_op: "TopK".into(),
                op: Op::Neighbours(Box::new(nb)),
                inputs: vec![x],
                outputs: vec![codes],
            };
            b.nodes.insert(at, node);
            at += 1;
        }
        at += 1;
    }
}

fn producer(b: &Builder, v: ValueId) -> Option<&Node> {
    b.nodes.iter().find(|n| n.outputs.contains(&v))
}

/// The model input, the neighbours op and the distinct labels (sorted: a label's code is
/// its position) when node `at` ends a nearest-neighbours chain.
fn match_chain(b: &Builder, at: usize) -> Option<(ValueId, Neighbours, Vec<f64>)> {
    let Op::TakeLast { data } = &b.nodes[at].op else {
        return None;
    };
    let mut v = *b.nodes[at].inputs.first()?;
    let top = loop {
        let p = producer(b, v)?;
        match &p.op {
            Op::Reshape { .. } => v = p.inputs[0],
            Op::TopK { largest: false, .. } if p.outputs.get(1) == Some(&v) => break p,
            _ => return None,
        }
    };
    let Op::TopK { k, .. } = top.op else {
        return None;
    };
    let mut u = top.inputs[0];
    let (x, points) = loop {
        let p = producer(b, u)?;
        match &p.op {
            Op::Reshape { .. } | Op::Activation(Activation::Sqrt) => u = p.inputs[0],
            Op::Sparse(m) if keeps_order(m) && p.inputs.len() == 1 => u = p.inputs[0],
            Op::SquaredDistances { points } => break (p.inputs[0], points),
            _ => return None,
        }
    };
    let features = *points.shape.last()?;
    let n = points.shape.first().copied()?;
    let rows = data.shape[..data.shape.len().saturating_sub(1)]
        .iter()
        .product::<usize>();
    if data.numel() != n || rows != 1 || b.values[x.0 as usize].shape != [1, features] {
        return None;
    }
    let mut labels = data.data.clone();
    labels.sort_by(f64::total_cmp);
    labels.dedup();
    let codes = data
        .data
        .iter()
        .map(|l| {
            labels
                .iter()
                .position(|m| m.total_cmp(l).is_eq())
                .unwrap_or(0) as u32
        })
        .collect();
    let nb = Neighbours {
        points: points.data.clone(),
        features,
        codes,
        classes: labels.len(),
        k,
    };
    Some((x, nb, labels))
}

/// A movement that copies element `j` to element `j` (a transpose of `[n, 1]`).
fn keeps_order(m: &crate::graph::SparseMap) -> bool {
    (0..m.rows()).all(|j| match m.row(j) {
        [t] => t.slot == 0 && t.index as usize == j && t.weight == 1.0 && m.bias[j] == 0.0,
        _ => false,
    })
}
