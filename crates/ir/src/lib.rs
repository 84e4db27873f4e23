//! The integer circuit: what runs on encrypted data.
//!
//! A [`Circuit`] is a `petgraph` DAG of integer tensor operations. Nodes are added after
//! their operands, so node index order is a topological order; edge weights are operand
//! slots. Every node holds one tensor value with:
//!
//! * a per-sample `shape` (batch dimension 1);
//! * a `status`: encrypted (one LWE ciphertext per element) or clear;
//! * an integer `range` `[lo, hi]`: the range the circuit is built for (the quantizer
//!   takes the inputset's range plus a margin, within sound bounds), which gives its
//!   bit-width (sign bit included when `lo < 0`).
//!
//! Operations ([`IntOp`]):
//!
//! * `Input`: a quantized model input, unsigned `bits`-bit integers (the client quantizes);
//! * `Linear`: `y[.., j] = Σ_i w[j, i]·x[.., i] + b[j]` over the last axis with clear
//!   integer weights — leveled, no bootstrap;
//! * `Affine`: `y[j] = b[j] + Σ w·x_s[i]` over listed terms of any operands (flat
//!   element indices) with clear integer weights — leveled; convolutions, pooling sums,
//!   sums of two encrypted tensors and data movement (transpose, slice, pad, concat…)
//!   all lower to it;
//! * `Conv`: a convolution with clear integer weights that keeps its geometry
//!   ([`Conv`]): channels, kernel, strides, dilations, pads, groups — leveled; ONNX
//!   Conv and average pooling lower to it, so its size grows with the weights, not with
//!   the input and output sizes;
//! * `Round`: rounding of a non-negative value to its most significant bits,
//!   `(x + 2^(k-1)) >> k`. Exact rounding costs two bootstraps per chunk of up to
//!   `Circuit::rounding_chunk_bits` dropped bits per element ([`rounding_chunks`]);
//!   approximate rounding costs none: the table lookup reading it decodes only the top
//!   bits through its own modulus switch, and may be off by one (docs/QUANTIZATION.md);
//! * `Lut`: a table lookup (one programmable bootstrap per element), each element with
//!   its own table (Concrete's mapped lookup table); this is where bias, activation and
//!   requantization of a layer live;
//! * `Reshape`: same elements, new shape.
//!
//! **Encoding.** All ciphertexts of a circuit share one encoding width `W`, the widest
//! encrypted value (see [`CircuitInfo::encoding_bits`]): an integer `m` is encrypted as
//! `m·2^(63-W)` on the 64-bit torus, i.e. modulo `2^(W+1)` with one padding bit.
//! [`interp`] models exactly that arithmetic, so `simulate` is bit-identical to what the
//! TFHE back end decrypts whenever no bootstrap fails.
//!
//! **The 16-bit rule.** Any encrypted value wider than [`MAX_BITS`] bits is a violation:
//! [`verify`] lists them in [`CircuitInfo::violations`] and the compiler refuses them.

// No panic on user input (docs/ARCHITECTURE.md): unwrap, expect and panic! are refused
// outside tests; the few invariants left carry a justified `allow`.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

mod bounds;
mod conv;
mod display;
pub mod interp;
mod verify;

use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::EdgeRef;
use petgraph::Direction;
use serde::{Deserialize, Serialize};

pub use conv::{Conv, MAX_RANK as MAX_CONV_RANK};
pub use verify::{
    bits_for_range, rounding_chunks, rounding_pbs_count, verify, CircuitInfo, NodeInfo,
    VerifyError, VerifyErrors, Violation,
};

/// The widest encrypted integer fhec accepts (Concrete's accumulator limit).
pub const MAX_BITS: u32 = 16;

/// Typed node id. Invariant: ids only come from [`Circuit::add`] of the same circuit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeId(pub NodeIndex<u32>);

impl NodeId {
    pub fn index(self) -> usize {
        self.0.index()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum Status {
    Encrypted,
    Clear,
}

/// An inclusive integer range.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Range {
    pub lo: i64,
    pub hi: i64,
}

impl Range {
    pub fn new(lo: i64, hi: i64) -> Self {
        Range { lo, hi }
    }
    /// The smallest range holding every value of `values` (`[0, 0]` when empty).
    pub fn of(values: impl IntoIterator<Item = i64>) -> Self {
        let mut it = values.into_iter();
        let Some(first) = it.next() else {
            return Range::new(0, 0);
        };
        it.fold(Range::new(first, first), |r, v| {
            Range::new(r.lo.min(v), r.hi.max(v))
        })
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum IntOp {
    /// Model input `index`, unsigned integers in `[0, 2^bits)`.
    Input {
        index: usize,
        bits: u32,
    },
    /// Over the last axis: `weight` is `[outputs, inputs]` row-major, `bias` has `outputs`.
    Linear {
        inputs: usize,
        outputs: usize,
        weight: Vec<i64>,
        bias: Vec<i64>,
    },
    /// `y[j] = bias[j] + Σ_{t ∈ row j} terms[t].weight · x_{terms[t].operand}[terms[t].index]`
    /// on flat element indices; row `j`'s terms are `terms[row_start[j]..row_start[j+1]]`.
    Affine {
        row_start: Vec<u32>,
        terms: Vec<Term>,
        bias: Vec<i64>,
    },
    /// A convolution (see [`Conv`]).
    Conv(Box<Conv>),
    /// `(x + 2^(drop_bits-1)) >> drop_bits` for `x ≥ 0`; consumed only by `Lut`s.
    /// `approximate`: no bootstrap of its own, the consumer reads the top bits directly
    /// and may be off by one near a rounding boundary.
    Round {
        drop_bits: u32,
        #[serde(default)]
        approximate: bool,
    },
    /// `y[e] = tables[table_of[e]][x[e]]`; every table has `2^precision` entries and the
    /// operand's range must lie in `[0, 2^precision)`.
    Lut {
        precision: u32,
        tables: Vec<Vec<i64>>,
        table_of: Vec<u32>,
    },
    Reshape,
}

impl IntOp {
    pub fn name(&self) -> &'static str {
        match self {
            IntOp::Input { .. } => "input",
            IntOp::Linear { .. } => "linear",
            IntOp::Affine { .. } => "affine",
            IntOp::Conv(_) => "conv",
            IntOp::Round { .. } => "round",
            IntOp::Lut { .. } => "lut",
            IntOp::Reshape => "reshape",
        }
    }
}

/// One term of an [`IntOp::Affine`] row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Term {
    /// Operand slot.
    pub operand: u32,
    /// Flat element index in that operand.
    pub index: u32,
    pub weight: i64,
}

/// The terms of [`IntOp::Affine`] row `j`.
pub fn affine_row<'t>(row_start: &[u32], terms: &'t [Term], j: usize) -> &'t [Term] {
    &terms[row_start[j] as usize..row_start[j + 1] as usize]
}

/// One circuit node: an operation and the value it defines.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct Node {
    /// The float-graph node it lowers (for messages and listings).
    pub name: String,
    pub op: IntOp,
    /// Per-sample shape; `shape.iter().product()` elements.
    pub shape: Vec<usize>,
    pub status: Status,
    /// The range the circuit is built for: values outside it wrap around (simulate
    /// models the wrap exactly).
    pub range: Range,
}

/// The most elements a node may have per sample (each encrypted one is a ciphertext);
/// the verifier refuses a circuit with a larger node before reading it further.
pub const MAX_NODE_ELEMENTS: usize = 1 << 24;

impl Node {
    /// Elements per sample; meaningful on verified circuits (whose nodes hold at most
    /// [`MAX_NODE_ELEMENTS`]).
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// The integer circuit. See the crate documentation for its model.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Circuit {
    pub graph: DiGraph<Node, u32>,
    /// The `Input` nodes, by model-input index.
    pub inputs: Vec<NodeId>,
    /// Values returned to the client (decrypted there).
    pub outputs: Vec<NodeId>,
    /// Widest chunk of bits one exact-rounding step clears. Chosen by the parameter
    /// optimizer (the cost of a chunk depends on the crypto parameters); `None` means
    /// the widest table precision + 1.
    #[serde(default)]
    pub rounding_chunk_bits: Option<u32>,
    /// Bootstrap precisions that run in the next wider precision's parameter set
    /// instead of their own (one key fewer, slightly dearer bootstraps). Chosen by the
    /// parameter optimizer; empty: one partition per precision.
    #[serde(default)]
    pub merged_precisions: Vec<u32>,
}

impl Circuit {
    /// Adds a node after its operands (which keeps index order topological).
    pub fn add(&mut self, node: Node, operands: &[NodeId]) -> NodeId {
        let id = NodeId(self.graph.add_node(node));
        for (slot, op) in operands.iter().enumerate() {
            self.graph.add_edge(op.0, id.0, slot as u32);
        }
        id
    }
    pub fn node(&self, id: NodeId) -> &Node {
        &self.graph[id.0]
    }
    pub fn node_mut(&mut self, id: NodeId) -> &mut Node {
        &mut self.graph[id.0]
    }
    /// Operands in slot order.
    pub fn operands(&self, id: NodeId) -> Vec<NodeId> {
        let mut ops: Vec<(u32, NodeId)> = self
            .graph
            .edges_directed(id.0, Direction::Incoming)
            .map(|e| (*e.weight(), NodeId(e.source())))
            .collect();
        ops.sort();
        ops.into_iter().map(|(_, n)| n).collect()
    }
    pub fn users(&self, id: NodeId) -> Vec<NodeId> {
        self.graph
            .neighbors_directed(id.0, Direction::Outgoing)
            .map(NodeId)
            .collect()
    }
    /// All node ids in topological (insertion) order.
    pub fn ids(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.graph.node_indices().map(NodeId)
    }
    pub fn len(&self) -> usize {
        self.graph.node_count()
    }
    pub fn is_empty(&self) -> bool {
        self.graph.node_count() == 0
    }
}
