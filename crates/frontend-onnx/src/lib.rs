//! ONNX front end: protobuf bytes → [`FloatGraph`].
//!
//! Only this crate knows protobuf. [`import`] decodes the model, resolves initializers and
//! `Constant` nodes, fixes the batch dimension to 1 so every shape is static, and builds
//! each node through the op registry in [`ops`], which normalises ONNX's several forms
//! of one computation (Gemm, MatMul, LinearClassifier, …) onto one [`Op`]. Every
//! unsupported node is reported at once, naming op type, domain and node.
//! [`interp`] evaluates the float graph: it is what `predict --mode clear` runs, the
//! client's post-processing tail, and the reference the tests hold against onnxruntime.

// No panic on user input (docs/ARCHITECTURE.md): unwrap, expect and panic! are refused
// outside tests; the few invariants left carry a justified `allow`.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod conv;
mod error;
mod external;
pub mod graph;
pub mod interp;
mod ops;
pub mod pb;
mod tensor;

use std::collections::HashMap;

pub use error::{bytes_text, ImportError, UnsupportedOp};
pub use graph::*;
use prost::Message;

/// Memory fhec lets one model's tensors take unless told otherwise: 8 GiB.
pub const DEFAULT_MEMORY_BUDGET: u64 = 8 << 30;

/// How much memory a model may need before fhec refuses it, counted as 8 bytes per
/// tensor element (fhec computes in f64 and i64): its constants and one sample's
/// values when importing, every calibration sample's values when compiling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub memory_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: DEFAULT_MEMORY_BUDGET,
        }
    }
}

/// Decodes and imports an ONNX model within the default [`Limits`].
pub fn import(bytes: &[u8]) -> Result<FloatGraph, ImportError> {
    import_with(bytes, &Limits::default())
}

/// Decodes and imports an ONNX model, refusing one whose tensors would take more than
/// `limits` allows (the error names where the budget ran out and how much was needed).
/// A model that keeps tensors in external data files is refused: see [`import_from`].
pub fn import_with(bytes: &[u8], limits: &Limits) -> Result<FloatGraph, ImportError> {
    import_from(bytes, limits, None)
}

/// [`import_with`] for a model read from a file in `model_dir`: tensors it keeps in
/// external data files (ONNX's `location`, relative to the model file) are read from
/// there.
pub fn import_from(
    bytes: &[u8],
    limits: &Limits,
    model_dir: Option<&std::path::Path>,
) -> Result<FloatGraph, ImportError> {
    let mut model = pb::ModelProto::decode(bytes).map_err(|e| {
        ImportError::NotOnnx(format!(
            "protobuf decoding failed ({e}); the file is truncated or not ONNX"
        ))
    })?;
    if let Some(dir) = model_dir {
        external::load(&mut model, dir, limits.memory_bytes)?;
    }
    let model = model;
    let graph = match &model.graph {
        Some(g) if model.ir_version > 0 && !g.node.is_empty() => g,
        _ => {
            return Err(ImportError::NotOnnx(
                "no graph with nodes and no IR version".into(),
            ))
        }
    };
    let opset = opsets(&model)?;
    if graph.output.is_empty() {
        return Err(ImportError::NotOnnx(
            "the graph has no outputs: there is nothing to compute".into(),
        ));
    }
    let unsupported: Vec<UnsupportedOp> = graph
        .node
        .iter()
        .enumerate()
        .filter(|(_, n)| ops::builder(&n.domain, &n.op_type).is_none())
        .map(|(i, n)| UnsupportedOp {
            op_type: n.op_type.clone(),
            domain: domain_name(&n.domain).into(),
            node: node_name(n, i),
        })
        .collect();
    if !unsupported.is_empty() {
        return Err(ImportError::Unsupported(unsupported));
    }

    let mut b = Builder {
        opset,
        budget: limits.memory_bytes,
        ..Default::default()
    };
    for init in &graph.initializer {
        let t = tensor::decode_tensor(init)?;
        let id = b.add_constant(&init.name, t);
        b.elem_types.insert(id, init.data_type);
        b.within_budget(&init.name)?;
    }
    for input in &graph.input {
        if b.by_name.contains_key(&input.name) {
            continue; // an initializer listed as input (IR < 4)
        }
        let (shape, dtype) = input_fact(input)?;
        let id = b.add_value(&input.name, shape, dtype, None);
        b.inputs.push(id);
        b.within_budget(&input.name)?;
    }
    if b.inputs.is_empty() {
        return Err(ImportError::NotOnnx(
            "the graph has no non-constant input".into(),
        ));
    }
    for (i, node) in graph.node.iter().enumerate() {
        let Some(build) = ops::builder(&node.domain, &node.op_type) else {
            continue; // unsupported ops were refused above
        };
        let name = node_name(node, i);
        let mut ctx = NodeCtx {
            b: &mut b,
            node,
            name: name.clone(),
        };
        build(&mut ctx)?;
        b.within_budget(&name)?;
    }
    ops::fuse_neighbours(&mut b);
    let mut outputs = Vec::new();
    for out in &graph.output {
        let id = *b
            .by_name
            .get(&out.name)
            .ok_or_else(|| ImportError::MissingOutput(out.name.clone()))?;
        outputs.push(id);
    }
    ops::fuse_dense_chains(&mut b.nodes, &outputs);
    prune_dead_nodes(&mut b.nodes, &outputs);
    Ok(FloatGraph {
        values: b.values,
        nodes: b.nodes,
        inputs: b.inputs,
        outputs,
    })
}

/// Drops nodes no output depends on: a builder may replace a node by a narrower one (a
/// QuantizeLinear followed by an integer Clip), and the quantizer lowers every node.
fn prune_dead_nodes(nodes: &mut Vec<Node>, outputs: &[ValueId]) {
    let mut live: std::collections::HashSet<ValueId> = outputs.iter().copied().collect();
    let mut keep = vec![false; nodes.len()];
    for (i, n) in nodes.iter().enumerate().rev() {
        if n.outputs.iter().any(|o| live.contains(o)) {
            keep[i] = true;
            live.extend(n.inputs.iter().copied());
        }
    }
    let mut k = keep.into_iter();
    nodes.retain(|_| k.next().unwrap_or(true));
}

/// The ai.onnx opset versions whose semantics fhec implements (every one since ONNX 1.2).
pub const AI_ONNX_OPSETS: std::ops::RangeInclusive<i64> = 7..=25;
/// The ai.onnx.ml opset versions fhec implements.
pub const AI_ONNX_ML_OPSETS: std::ops::RangeInclusive<i64> = 1..=5;

/// The model's ai.onnx opset, after checking every declared opset fhec reads.
fn opsets(model: &pb::ModelProto) -> Result<i64, ImportError> {
    let mut ai_onnx = None;
    for o in &model.opset_import {
        let (name, range) = match o.domain.as_str() {
            "" | "ai.onnx" => ("ai.onnx", &AI_ONNX_OPSETS),
            "ai.onnx.ml" => ("ai.onnx.ml", &AI_ONNX_ML_OPSETS),
            _ => continue,
        };
        if !range.contains(&o.version) {
            return Err(ImportError::NotOnnx(format!(
                "{name} opset {} is outside the versions fhec implements ({} to {}); re-export the model with a supported opset",
                o.version,
                range.start(),
                range.end()
            )));
        }
        if name == "ai.onnx" {
            ai_onnx = Some(o.version);
        }
    }
    // a graph of ai.onnx.ml operators only (onnxmltools' tree ensembles) need not
    // import ai.onnx, whose version then decides nothing
    let uses_ai_onnx = model
        .graph
        .iter()
        .flat_map(|g| &g.node)
        .any(|n| matches!(n.domain.as_str(), "" | "ai.onnx"));
    match ai_onnx {
        Some(v) => Ok(v),
        None if !uses_ai_onnx => Ok(*AI_ONNX_OPSETS.end()),
        None => Err(ImportError::NotOnnx(
            "the graph has ai.onnx operators but the model declares no ai.onnx opset (opset_import)"
                .into(),
        )),
    }
}

fn domain_name(d: &str) -> &str {
    if d.is_empty() {
        "ai.onnx"
    } else {
        d
    }
}

fn node_name(n: &pb::NodeProto, index: usize) -> String {
    if n.name.is_empty() {
        format!("{}#{index}", n.op_type)
    } else {
        n.name.clone()
    }
}

fn input_fact(v: &pb::ValueInfoProto) -> Result<(Vec<usize>, DType), ImportError> {
    let bad = |reason: &str| ImportError::Tensor {
        name: v.name.clone(),
        reason: reason.into(),
    };
    let tt = v
        .r#type
        .as_ref()
        .and_then(|t| t.tensor_type.as_ref())
        .ok_or_else(|| bad("input is not a tensor"))?;
    let dtype =
        tensor::dtype_of(tt.elem_type).ok_or_else(|| bad("unsupported input element type"))?;
    let dims = tt
        .shape
        .as_ref()
        .ok_or_else(|| bad("input has no declared shape"))?;
    let mut shape = Vec::new();
    for (axis, d) in dims.dim.iter().enumerate() {
        match (d.dim_value, &d.dim_param) {
            (Some(v), _) if v > 0 && (axis > 0 || v == 1) => shape.push(v as usize),
            (Some(v), _) if axis == 0 && v > 1 => {
                return Err(bad(&format!(
                "fixed batch size {v}: export the model with a dynamic (or size-1) batch dimension"
            )))
            }
            _ if axis == 0 => shape.push(1),
            (_, p) => {
                return Err(ImportError::DynamicShape {
                    input: v.name.clone(),
                    axis,
                    param: p.clone().unwrap_or_else(|| "?".into()),
                })
            }
        }
    }
    if shape.is_empty() {
        return Err(bad(
            "scalar inputs are not supported: the first dimension must be the batch",
        ));
    }
    Ok((shape, dtype))
}

#[derive(Default)]
struct Builder {
    values: Vec<ValueInfo>,
    nodes: Vec<Node>,
    inputs: Vec<ValueId>,
    by_name: HashMap<String, ValueId>,
    /// ONNX element type of constants decoded from tensors (integer widths collapse to
    /// `DType::I64`; QuantizeLinear reads its range off the zero point's type).
    elem_types: HashMap<ValueId, i32>,
    /// The model's ai.onnx opset version (an op's semantics may depend on it).
    opset: i64,
    /// Bytes the values so far take (8 per element) and what they may take.
    bytes: u64,
    budget: u64,
}

impl Builder {
    fn add_value(
        &mut self,
        name: &str,
        shape: Vec<usize>,
        dtype: DType,
        constant: Option<Tensor>,
    ) -> ValueId {
        let id = ValueId(self.values.len() as u32);
        let numel = shape
            .iter()
            .try_fold(1u64, |n, &d| n.checked_mul(d as u64))
            .unwrap_or(u64::MAX);
        self.bytes = self.bytes.saturating_add(numel.saturating_mul(8));
        self.values.push(ValueInfo {
            name: name.to_string(),
            shape,
            dtype,
            constant,
        });
        self.by_name.insert(name.to_string(), id);
        id
    }
    fn add_constant(&mut self, name: &str, t: Tensor) -> ValueId {
        self.add_value(name, t.shape.clone(), t.dtype, Some(t))
    }
    /// Refuses the model once its values take more than the budget; `at` names the
    /// tensor or node where it ran out.
    fn within_budget(&self, at: &str) -> Result<(), ImportError> {
        if self.bytes > self.budget {
            return Err(ImportError::OverBudget {
                at: at.to_string(),
                bytes: self.bytes,
                budget: self.budget,
            });
        }
        Ok(())
    }
}

/// What an op builder sees: the node and the graph built so far.
pub(crate) struct NodeCtx<'a> {
    b: &'a mut Builder,
    node: &'a pb::NodeProto,
    name: String,
}

/// The most elements one tensor of a model may have (per sample, or a constant): each
/// encrypted element is one ciphertext, so far larger tensors are not models fhec can
/// run, and refusing them before allocating keeps a crafted file from exhausting memory.
pub const MAX_TENSOR_ELEMENTS: usize = 1 << 24;

/// The element count of `shape`, if it is at most [`MAX_TENSOR_ELEMENTS`].
pub(crate) fn bounded_numel(shape: &[usize]) -> Option<usize> {
    shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .filter(|&n| n <= MAX_TENSOR_ELEMENTS)
}

impl NodeCtx<'_> {
    /// The element count of a tensor this node would produce, or an error naming its
    /// shape when it exceeds [`MAX_TENSOR_ELEMENTS`].
    pub(crate) fn numel(&self, shape: &[usize]) -> Result<usize, ImportError> {
        bounded_numel(shape).ok_or_else(|| {
            self.err(format!(
                "its result of shape {shape:?} would exceed {MAX_TENSOR_ELEMENTS} elements"
            ))
        })
    }

    /// The model's ai.onnx opset version.
    pub(crate) fn opset(&self) -> i64 {
        self.b.opset
    }

    pub(crate) fn err(&self, reason: impl Into<String>) -> ImportError {
        ImportError::Node {
            node: self.name.clone(),
            op_type: self.node.op_type.clone(),
            reason: reason.into(),
        }
    }

    /// The value feeding input slot `i`, if the slot is present and non-empty.
    pub(crate) fn input(&self, i: usize) -> Result<Option<ValueId>, ImportError> {
        match self.node.input.get(i) {
            None => Ok(None),
            Some(n) if n.is_empty() => Ok(None),
            Some(n) => self
                .b
                .by_name
                .get(n)
                .copied()
                .map(Some)
                .ok_or_else(|| self.err(format!("input '{n}' is not defined before this node"))),
        }
    }
    pub(crate) fn required_input(&self, i: usize) -> Result<ValueId, ImportError> {
        self.input(i)?
            .ok_or_else(|| self.err(format!("missing input {i}")))
    }
    pub(crate) fn info(&self, id: ValueId) -> &ValueInfo {
        &self.b.values[id.0 as usize]
    }
    pub(crate) fn constant(&self, id: ValueId) -> Option<&Tensor> {
        self.info(id).constant.as_ref()
    }
    /// The ONNX element type a constant was stored with, when it came from a tensor.
    pub(crate) fn elem_type(&self, id: ValueId) -> Option<i32> {
        self.b.elem_types.get(&id).copied()
    }
    /// The node that produced a varying value.
    pub(crate) fn producer(&self, id: ValueId) -> Option<&Node> {
        self.b.nodes.iter().rev().find(|n| n.outputs.contains(&id))
    }
    pub(crate) fn value_name(&self, id: ValueId) -> &str {
        &self.info(id).name
    }
    pub(crate) fn output_name(&self, i: usize) -> Option<&str> {
        self.node
            .output
            .get(i)
            .map(|s| s.as_str())
            .filter(|s| !s.is_empty())
    }
    /// The name of output slot `i`, which the op needs.
    pub(crate) fn required_output(&self, i: usize) -> Result<String, ImportError> {
        self.output_name(i)
            .map(str::to_string)
            .ok_or_else(|| self.err("missing output"))
    }
    pub(crate) fn node_name(&self) -> &str {
        &self.name
    }

    fn attr(&self, name: &str) -> Option<&pb::AttributeProto> {
        self.node.attribute.iter().find(|a| a.name == name)
    }
    pub(crate) fn attr_i(&self, name: &str, default: i64) -> i64 {
        self.attr(name).map_or(default, |a| a.i)
    }
    pub(crate) fn attr_f(&self, name: &str, default: f32) -> f32 {
        self.attr(name).map_or(default, |a| a.f)
    }
    pub(crate) fn attr_s(&self, name: &str) -> Option<String> {
        self.attr(name)
            .map(|a| String::from_utf8_lossy(&a.s).into_owned())
    }
    pub(crate) fn attr_ints(&self, name: &str) -> Vec<i64> {
        self.attr(name).map_or_else(Vec::new, |a| a.ints.clone())
    }
    pub(crate) fn attr_floats(&self, name: &str) -> Vec<f32> {
        self.attr(name).map_or_else(Vec::new, |a| a.floats.clone())
    }
    pub(crate) fn attr_strings(&self, name: &str) -> Vec<String> {
        self.attr(name).map_or_else(Vec::new, |a| {
            a.strings
                .iter()
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        })
    }
    pub(crate) fn attr_strings_len(&self, name: &str) -> usize {
        self.attr(name).map_or(0, |a| a.strings.len())
    }
    pub(crate) fn attr_tensor(&self, name: &str) -> Result<Option<Tensor>, ImportError> {
        match self.attr(name).and_then(|a| a.t.as_ref()) {
            Some(t) => tensor::decode_tensor(t).map(Some),
            None => Ok(None),
        }
    }

    /// Binds output slot `i` to a constant.
    pub(crate) fn set_constant(&mut self, i: usize, t: Tensor) -> Result<(), ImportError> {
        self.set_typed_constant(i, t, None)
    }
    /// [`set_constant`](Self::set_constant), recording its ONNX element type.
    pub(crate) fn set_typed_constant(
        &mut self,
        i: usize,
        t: Tensor,
        elem_type: Option<i32>,
    ) -> Result<(), ImportError> {
        let name = self
            .output_name(i)
            .ok_or_else(|| self.err("missing output name"))?
            .to_string();
        let id = self.b.add_constant(&name, t);
        if let Some(e) = elem_type {
            self.b.elem_types.insert(id, e);
        }
        Ok(())
    }

    /// Adds a node named after the ONNX node with the given outputs `(name, shape, dtype)`.
    pub(crate) fn add_node(
        &mut self,
        op: Op,
        inputs: Vec<ValueId>,
        outputs: Vec<(String, Vec<usize>, DType)>,
    ) -> Vec<ValueId> {
        let name = self.name.clone();
        self.push_node(name, op, inputs, outputs)
    }

    /// Adds a second node for a builder that splits one ONNX node in two.
    pub(crate) fn add_sub_node(
        &mut self,
        suffix: &str,
        op: Op,
        inputs: Vec<ValueId>,
        outputs: Vec<(String, Vec<usize>, DType)>,
    ) -> Vec<ValueId> {
        let name = format!("{}/{suffix}", self.name);
        self.push_node(name, op, inputs, outputs)
    }

    fn push_node(
        &mut self,
        name: String,
        op: Op,
        inputs: Vec<ValueId>,
        outputs: Vec<(String, Vec<usize>, DType)>,
    ) -> Vec<ValueId> {
        let ids: Vec<ValueId> = outputs
            .into_iter()
            .map(|(n, s, d)| self.b.add_value(&n, s, d, None))
            .collect();
        self.b.nodes.push(Node {
            name,
            onnx_op: self.node.op_type.clone(),
            op,
            inputs,
            outputs: ids.clone(),
        });
        ids
    }
}
