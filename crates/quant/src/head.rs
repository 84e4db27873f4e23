//! The client's head: the model's preprocessing (Scaler, Imputer, Binarizer, Normalizer,
//! and any element-wise op on the raw inputs) runs on the client in the clear, before
//! quantization and encryption. The client holds the plaintext anyway, so nothing is
//! revealed by computing it there; the circuit saves a table lookup per input element
//! and an Imputer's missing values never need encrypting. The circuit's inputs are then
//! the head's outputs, each calibrated and quantized like a model input.

use fhec_frontend_onnx::{interp, FloatGraph, ImportError, Op, Tensor, ValueId};

/// Ops that may run in the head when every operand is a model input, a constant or a
/// head output.
fn preprocessing(op: &Op) -> bool {
    matches!(
        op,
        Op::Activation(_) | Op::BinaryConst { .. } | Op::Impute { .. } | Op::Normalizer { .. }
    )
}

/// Reshapes and casts join the head only next to preprocessing: before it (skl2onnx
/// casts the input before a scaler's Mul and Add) or behind it.
fn data_movement(op: &Op) -> bool {
    matches!(op, Op::Reshape { .. } | Op::Cast { .. })
}

/// Which nodes form the head, given which nodes the circuit needs (`circuit_side` is
/// computed with the head excluded, see [`crate::builder`]).
pub(crate) fn client_head(graph: &FloatGraph) -> Vec<bool> {
    let mut head = vec![false; graph.nodes.len()];
    let mut available: Vec<bool> = graph.values.iter().map(|v| v.constant.is_some()).collect();
    // values computed by a preprocessing op, through any reshapes and casts after it
    let mut preprocessed = vec![false; graph.values.len()];
    for &i in &graph.inputs {
        available[i.0 as usize] = true;
    }
    for (n, node) in graph.nodes.iter().enumerate() {
        let ready = node.inputs.iter().all(|v| available[v.0 as usize]);
        if ready && (preprocessing(&node.op) || data_movement(&node.op)) {
            head[n] = true;
            let after =
                preprocessing(&node.op) || node.inputs.iter().any(|v| preprocessed[v.0 as usize]);
            for o in &node.outputs {
                available[o.0 as usize] = true;
                preprocessed[o.0 as usize] = after;
            }
        }
    }
    // a reshape or cast that follows no preprocessing and feeds no head node stays in
    // the circuit (latest first, so a chain of them unwinds in one pass)
    for n in (0..graph.nodes.len()).rev() {
        let node = &graph.nodes[n];
        if !head[n]
            || !data_movement(&node.op)
            || node.inputs.iter().any(|v| preprocessed[v.0 as usize])
        {
            continue;
        }
        let feeds_head = graph
            .nodes
            .iter()
            .zip(&head)
            .any(|(m, &h)| h && m.inputs.iter().any(|v| node.outputs.contains(v)));
        if !feeds_head {
            head[n] = false;
        }
    }
    // a head value the model returns, or that the post-processing reads, stays where it
    // was (the client's tail only sees decrypted values)
    loop {
        let mut wanted_elsewhere: Vec<bool> = vec![false; graph.values.len()];
        for v in &graph.outputs {
            wanted_elsewhere[v.0 as usize] = true;
        }
        let side = crate::builder::circuit_side(graph, &head);
        for (n, node) in graph.nodes.iter().enumerate() {
            if !head[n] && !side[n] {
                for v in &node.inputs {
                    wanted_elsewhere[v.0 as usize] = true;
                }
            }
        }
        let mut changed = false;
        for (n, node) in graph.nodes.iter().enumerate() {
            if head[n] && node.outputs.iter().any(|o| wanted_elsewhere[o.0 as usize]) {
                head[n] = false;
                changed = true;
            }
        }
        // a node whose head input was withdrawn leaves the head too
        for (n, node) in graph.nodes.iter().enumerate() {
            if head[n]
                && node.inputs.iter().any(|v| {
                    graph
                        .nodes
                        .iter()
                        .enumerate()
                        .any(|(m, p)| !head[m] && p.outputs.contains(v))
                })
            {
                head[n] = false;
                changed = true;
            }
        }
        if !changed {
            return head;
        }
    }
}

/// The values the circuit starts from: model inputs and head outputs read by circuit
/// nodes (model inputs first, in model order, then head outputs in node order), and any
/// model input nothing reads (so that every input keeps a circuit input).
pub(crate) fn circuit_inputs(graph: &FloatGraph, head: &[bool], side: &[bool]) -> Vec<ValueId> {
    // whether a node marked in `mask` reads `v`
    let read_by = |mask: &[bool], v: ValueId| {
        graph
            .nodes
            .iter()
            .zip(mask)
            .any(|(n, &m)| m && n.inputs.contains(&v))
    };
    let read_by_circuit = |v: ValueId| read_by(side, v);
    let read_by_head = |v: ValueId| read_by(head, v);
    let mut out: Vec<ValueId> = graph
        .inputs
        .iter()
        .copied()
        .filter(|&v| read_by_circuit(v) || !read_by_head(v))
        .collect();
    for (n, node) in graph.nodes.iter().enumerate() {
        if head[n] {
            out.extend(node.outputs.iter().copied().filter(|&v| read_by_circuit(v)));
        }
    }
    out
}

/// Every value of one sample after the head: model inputs, constants, head outputs
/// (`None` for the rest).
pub fn run_head(
    graph: &FloatGraph,
    head: &[usize],
    sample: &[Tensor],
) -> Result<Vec<Option<Tensor>>, ImportError> {
    let mut env: Vec<Option<Tensor>> = graph.values.iter().map(|v| v.constant.clone()).collect();
    for (&id, t) in graph.inputs.iter().zip(sample) {
        env[id.0 as usize] = Some(t.clone());
    }
    interp::evaluate_nodes(graph, head.iter().copied(), &mut env)?;
    Ok(env)
}
