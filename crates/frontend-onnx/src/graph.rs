//! The float graph: ONNX semantics, static per-sample shapes, constants resolved.

use serde::{Deserialize, Serialize};

/// Element type of a value as the ONNX model declares it. Computation is done in f64;
/// the type only decides how outputs are written back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DType {
    F32,
    F64,
    I64,
    Bool,
}

/// A dense row-major tensor. Invariant: `data.len() == shape.iter().product()`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f64>,
    pub dtype: DType,
}

impl Tensor {
    pub fn new(shape: Vec<usize>, data: Vec<f64>, dtype: DType) -> Self {
        debug_assert_eq!(shape.iter().product::<usize>(), data.len());
        Tensor { shape, data, dtype }
    }
    pub fn numel(&self) -> usize {
        self.data.len()
    }
}

/// Index of a value in [`FloatGraph::values`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ValueId(pub u32);

/// A named tensor value of the graph. `shape` is per sample: the batch dimension of a
/// model input is fixed to 1, so every shape here is static.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ValueInfo {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: DType,
    /// Set for initializers and `Constant` outputs: the value never depends on an input.
    pub constant: Option<Tensor>,
}

/// Univariate element-wise functions (ONNX semantics; parameters from the attributes).
/// Inside the circuit each fuses into the next table lookup.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum Activation {
    Relu,
    Sigmoid,
    Tanh,
    LeakyRelu {
        alpha: f64,
    },
    Elu {
        alpha: f64,
    },
    Selu {
        alpha: f64,
        gamma: f64,
    },
    Celu {
        alpha: f64,
    },
    Softplus,
    Softsign,
    HardSigmoid {
        alpha: f64,
        beta: f64,
    },
    HardSwish,
    /// `tanh`: the tanh approximation (`approximate="tanh"`).
    Gelu {
        tanh: bool,
    },
    Erf,
    Exp,
    Log,
    Sqrt,
    Reciprocal,
    Abs,
    Sign,
    Floor,
    Ceil,
    /// Round half to even, as ONNX Round.
    Round,
    /// Logical not of a boolean (0/1) value.
    Not,
    Clip {
        min: f64,
        max: f64,
    },
}

impl Activation {
    pub fn apply(self, x: f64) -> f64 {
        use Activation::*;
        match self {
            Relu => x.max(0.0),
            Sigmoid => 1.0 / (1.0 + (-x).exp()),
            Tanh => x.tanh(),
            LeakyRelu { alpha } => {
                if x < 0.0 {
                    alpha * x
                } else {
                    x
                }
            }
            Elu { alpha } => {
                if x < 0.0 {
                    alpha * (x.exp() - 1.0)
                } else {
                    x
                }
            }
            Selu { alpha, gamma } => gamma * if x <= 0.0 { alpha * (x.exp() - 1.0) } else { x },
            Celu { alpha } => x.max(0.0) + (alpha * ((x / alpha).exp() - 1.0)).min(0.0),
            Softplus => {
                if x > 30.0 {
                    x
                } else {
                    x.exp().ln_1p()
                }
            }
            Softsign => x / (1.0 + x.abs()),
            HardSigmoid { alpha, beta } => (alpha * x + beta).clamp(0.0, 1.0),
            HardSwish => x * (x / 6.0 + 0.5).clamp(0.0, 1.0),
            Gelu { tanh: false } => 0.5 * x * (1.0 + erf(x / std::f64::consts::SQRT_2)),
            Gelu { tanh: true } => {
                let c = (2.0 / std::f64::consts::PI).sqrt();
                0.5 * x * (1.0 + (c * (x + 0.044715 * x * x * x)).tanh())
            }
            Erf => erf(x),
            Exp => x.exp(),
            Log => x.ln(),
            Sqrt => x.sqrt(),
            Reciprocal => 1.0 / x,
            Abs => x.abs(),
            Sign => {
                if x > 0.0 {
                    1.0
                } else if x < 0.0 {
                    -1.0
                } else {
                    0.0
                }
            }
            Floor => x.floor(),
            Ceil => x.ceil(),
            Round => x.round_ties_even(),
            Not => (x == 0.0) as u8 as f64,
            Clip { min, max } => x.max(min).min(max),
        }
    }
    pub fn name(self) -> &'static str {
        use Activation::*;
        match self {
            Relu => "Relu",
            Sigmoid => "Sigmoid",
            Tanh => "Tanh",
            LeakyRelu { .. } => "LeakyRelu",
            Elu { .. } => "Elu",
            Selu { .. } => "Selu",
            Celu { .. } => "Celu",
            Softplus => "Softplus",
            Softsign => "Softsign",
            HardSigmoid { .. } => "HardSigmoid",
            HardSwish => "HardSwish",
            Gelu { .. } => "Gelu",
            Erf => "Erf",
            Exp => "Exp",
            Log => "Log",
            Sqrt => "Sqrt",
            Reciprocal => "Reciprocal",
            Abs => "Abs",
            Sign => "Sign",
            Floor => "Floor",
            Ceil => "Ceil",
            Round => "Round",
            Not => "Not",
            Clip { .. } => "Clip",
        }
    }
}

/// The error function: its Maclaurin series below 2.5, the continued fraction of erfc
/// above (about 1e-13 absolute accuracy; std has no erf).
pub fn erf(x: f64) -> f64 {
    if x.is_nan() {
        return x;
    }
    let a = x.abs();
    let r = if a < 2.5 {
        // Maclaurin series: erf(a) = 2/√π Σ (−1)^n a^(2n+1) / (n! (2n+1))
        let (mut sum, mut term, mut n) = (0.0f64, a, 0.0f64);
        while term.abs() > 1e-17 * sum.abs().max(1e-300) || n < 3.0 {
            sum += term / (2.0 * n + 1.0);
            n += 1.0;
            term *= -a * a / n;
            if n > 200.0 {
                break;
            }
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    } else {
        // continued fraction for erfc, evaluated backwards (Lentz-free form)
        let mut f = 0.0f64;
        for k in (1..=60).rev() {
            f = (k as f64 / 2.0) / (a + f);
        }
        1.0 - (-a * a).exp() / std::f64::consts::PI.sqrt() / (a + f)
    };
    r.copysign(x)
}

/// Binary element-wise functions. With one constant operand they are univariate (and
/// fuse into a table lookup); with two varying operands see [`Op::Pairwise`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BinaryKind {
    Add,
    Sub,
    Mul,
    Div,
    Pow,
    Max,
    Min,
    Greater,
    GreaterOrEqual,
    Less,
    LessOrEqual,
    Equal,
    And,
    Or,
    /// PRelu: `a` where `a ≥ 0`, else `b·a`.
    PRelu,
}

impl BinaryKind {
    pub fn apply(self, a: f64, b: f64) -> f64 {
        use BinaryKind::*;
        let bool = |v: bool| v as u8 as f64;
        match self {
            Add => a + b,
            Sub => a - b,
            Mul => a * b,
            Div => a / b,
            Pow => a.powf(b),
            Max => a.max(b),
            Min => a.min(b),
            Greater => bool(a > b),
            GreaterOrEqual => bool(a >= b),
            Less => bool(a < b),
            LessOrEqual => bool(a <= b),
            Equal => bool(a == b),
            And => bool(a != 0.0 && b != 0.0),
            Or => bool(a != 0.0 || b != 0.0),
            PRelu => {
                if a < 0.0 {
                    a * b
                } else {
                    a
                }
            }
        }
    }
    pub fn name(self) -> &'static str {
        use BinaryKind::*;
        match self {
            Add => "Add",
            Sub => "Sub",
            Mul => "Mul",
            Div => "Div",
            Pow => "Pow",
            Max => "Max",
            Min => "Min",
            Greater => "Greater",
            GreaterOrEqual => "GreaterOrEqual",
            Less => "Less",
            LessOrEqual => "LessOrEqual",
            Equal => "Equal",
            And => "And",
            Or => "Or",
            PRelu => "PRelu",
        }
    }
    /// True when the result is a boolean (0/1).
    pub fn is_predicate(self) -> bool {
        use BinaryKind::*;
        matches!(
            self,
            Greater | GreaterOrEqual | Less | LessOrEqual | Equal | And | Or
        )
    }
}

/// One term of an [`Op::Sparse`] row.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SparseTerm {
    /// Which of the node's inputs.
    pub slot: u32,
    /// Flat element index in that input.
    pub index: u32,
    pub weight: f64,
}

/// A sparse affine map in compressed rows: output `j` is
/// `bias[j] + Σ terms[row_start[j]..row_start[j+1]]`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SparseMap {
    pub row_start: Vec<u32>,
    pub terms: Vec<SparseTerm>,
    pub bias: Vec<f64>,
}

impl SparseMap {
    /// Appends output row `terms` + `bias`.
    pub fn push_row(&mut self, terms: impl IntoIterator<Item = SparseTerm>, bias: f64) {
        if self.row_start.is_empty() {
            self.row_start.push(0);
        }
        self.terms.extend(terms);
        self.row_start.push(self.terms.len() as u32);
        self.bias.push(bias);
    }
    pub fn rows(&self) -> usize {
        self.bias.len()
    }
    pub fn row(&self, j: usize) -> &[SparseTerm] {
        &self.terms[self.row_start[j] as usize..self.row_start[j + 1] as usize]
    }
    /// True when every row copies one element unchanged or is a constant: a pure
    /// rearrangement (transpose, slice, pad, concat…).
    pub fn is_movement(&self) -> bool {
        (0..self.rows()).all(|j| match self.row(j) {
            [] => true,
            [t] => t.weight == 1.0 && self.bias[j] == 0.0,
            _ => false,
        })
    }
}

/// `post_transform` of the ai.onnx.ml linear and tree operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PostTransform {
    None,
    Softmax,
    Logistic,
    SoftmaxZero,
    Probit,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Norm {
    Max,
    L1,
    L2,
}

/// Float operators. Each keeps the semantics of the ONNX op(s) it came from; the op
/// registry in `ops/` normalises several ONNX forms onto one variant (Gemm, MatMul and
/// the ai.onnx.ml linear models all become [`Op::Dense`]).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Op {
    /// `y[.., j] = Σ_i x[.., i]·weight[j·inputs + i] + bias[j]` over the last axis.
    Dense {
        inputs: usize,
        outputs: usize,
        weight: Vec<f64>,
        bias: Vec<f64>,
    },
    /// `x ∘ c` (or `c ∘ x` when `constant_first`), `c` broadcast to x's shape (numpy rules).
    BinaryConst {
        kind: BinaryKind,
        constant: Tensor,
        constant_first: bool,
    },
    Activation(Activation),
    /// A sparse affine map over the node's inputs (all varying): Conv, AveragePool,
    /// GlobalAveragePool, ReduceSum/Mean, Add/Sub of two varying tensors, and the data
    /// movement ops (Transpose, Slice, Gather, Pad, Concat, Expand).
    Sparse(SparseMap),
    /// A convolution keeping its geometry (Conv; AveragePool as a depthwise one).
    Conv(Box<crate::conv::Conv>),
    /// `y[j] = kind(a[left[j]], b[right[j]])` for two varying inputs `a`, `b` (broadcast
    /// resolved to index lists): Mul, Max, Min, comparisons, And, Or.
    Pairwise {
        kind: BinaryKind,
        left: Vec<u32>,
        right: Vec<u32>,
    },
    /// `y[j] = max over x[groups[j]]` (or min): MaxPool, ReduceMax, ReduceMin.
    GroupMax {
        groups: Vec<Vec<u32>>,
        min: bool,
    },
    /// Same data, new shape (Reshape, Flatten, Identity, Squeeze, Unsqueeze).
    Reshape {
        shape: Vec<usize>,
    },
    Softmax {
        axis: usize,
    },
    LogSoftmax {
        axis: usize,
    },
    ArgMax {
        axis: usize,
        keepdims: bool,
        select_last_index: bool,
    },
    /// ai.onnx.ml TreeEnsembleClassifier/Regressor: `[1, features]` → `[1, outputs]`, the
    /// sum over trees of the reached leaf's weights plus `base_values` (an AVERAGE
    /// ensemble has its weights divided by the tree count at import).
    TreeEnsemble(TreeEnsemble),
    /// The tail of ai.onnx.ml LinearClassifier: scores → (label, transformed scores).
    ClassifierHead {
        labels: Vec<i64>,
        post_transform: PostTransform,
        binary_single_score: bool,
    },
    /// The tail of a several-class ai.onnx.ml SVMClassifier: its one-vs-one decisions
    /// (pairs `(i, j)`, `i < j`, in order) → (label, the decisions). A pair votes for
    /// `i` when its decision is positive, else for `j`; the label is the first class
    /// with the most votes.
    OneVsOneVotes {
        labels: Vec<i64>,
    },
    /// ai.onnx.ml ZipMap; the map sequence is represented by its [1, classes] tensor.
    ZipMap,
    Cast {
        to: DType,
    },
    Normalizer {
        norm: Norm,
    },
    /// QuantizeLinear on a varying tensor (one scale and zero point):
    /// `clamp(round_half_even(x / scale) + zero_point, qmin, qmax)`, an integer tensor.
    Quantize {
        scale: f64,
        zero_point: i64,
        qmin: i64,
        qmax: i64,
    },
    /// DequantizeLinear on a varying tensor: `(q − zero_point)·scale`.
    Dequantize {
        scale: f64,
        zero_point: i64,
    },
    /// ai.onnx.ml Imputer: an element equal to `replaced` (NaN matches NaN) becomes
    /// `values[e]`; others pass through.
    Impute {
        replaced: f64,
        values: Vec<f64>,
    },
    /// ai.onnx.ml ArrayFeatureExtractor with constant data: `y = data[..., indices]` along
    /// the last axis, the indices computed (class ids mapped to labels).
    TakeLast {
        data: Tensor,
    },
    /// The squared Euclidean distance from `x` (`[1, features]`) to each row of `points`
    /// (`[n, features]`), as `[n, 1]`: skl2onnx's `Scan` over the training points.
    SquaredDistances {
        points: Tensor,
    },
    /// ONNX TopK over the last axis: outputs the `k` largest (smallest) values, sorted,
    /// and their indices (ties to the lower index).
    TopK {
        k: usize,
        largest: bool,
    },
    /// k-nearest neighbours, fused at import from the distances, TopK and the label
    /// lookup scikit-learn's KNeighbors* exports are made of.
    Neighbours(Box<Neighbours>),
}

/// k-nearest neighbours: `[1, features]` → `[1, k]`, the codes of the labels of the `k`
/// training points nearest to the input in Euclidean distance, nearest first, ties to
/// the lower point index. A code indexes the distinct labels (a `TakeLast` after this
/// op maps codes back to labels).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Neighbours {
    /// Row-major `[n, features]`.
    pub points: Vec<f64>,
    pub features: usize,
    /// Per training point, its label's code in `0..classes`.
    pub codes: Vec<u32>,
    pub classes: usize,
    pub k: usize,
}

impl Neighbours {
    pub fn point_count(&self) -> usize {
        self.codes.len()
    }
    pub fn point(&self, i: usize) -> &[f64] {
        &self.points[i * self.features..(i + 1) * self.features]
    }
    /// The codes of the `k` nearest points to `x`, nearest first (the float semantics).
    pub fn nearest_codes(&self, x: &[f64]) -> Vec<u32> {
        self.nearest_codes_without(x, None)
    }
    /// [`Self::nearest_codes`] with point `left_out` not among the points: a training
    /// point's neighbours as a new sample at its place would have them.
    pub fn nearest_codes_without(&self, x: &[f64], left_out: Option<usize>) -> Vec<u32> {
        let dist: Vec<f64> = (0..self.point_count())
            .map(|i| {
                self.point(i)
                    .iter()
                    .zip(x)
                    .map(|(p, v)| (v - p) * (v - p))
                    .sum()
            })
            .collect();
        let mut order: Vec<usize> = (0..dist.len()).filter(|&i| Some(i) != left_out).collect();
        order.sort_by(|&a, &b| dist[a].total_cmp(&dist[b]).then(a.cmp(&b)));
        order.iter().take(self.k).map(|&i| self.codes[i]).collect()
    }
}

impl Op {
    /// Short ONNX-like name for listings.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Op::Dense { .. } => "Dense",
            Op::BinaryConst { kind, .. } => kind.name(),
            Op::Sparse(_) => "Sparse",
            Op::Conv(_) => "Conv",
            Op::Pairwise { kind, .. } => kind.name(),
            Op::GroupMax { min: false, .. } => "GroupMax",
            Op::GroupMax { min: true, .. } => "GroupMin",
            Op::LogSoftmax { .. } => "LogSoftmax",
            Op::Activation(a) => a.name(),
            Op::Reshape { .. } => "Reshape",
            Op::Softmax { .. } => "Softmax",
            Op::ArgMax { .. } => "ArgMax",
            Op::ClassifierHead { .. } => "ClassifierHead",
            Op::OneVsOneVotes { .. } => "OneVsOneVotes",
            Op::TreeEnsemble(_) => "TreeEnsemble",
            Op::ZipMap => "ZipMap",
            Op::Cast { .. } => "Cast",
            Op::Normalizer { .. } => "Normalizer",
            Op::Quantize { .. } => "QuantizeLinear",
            Op::Dequantize { .. } => "DequantizeLinear",
            Op::Impute { .. } => "Imputer",
            Op::TakeLast { .. } => "ArrayFeatureExtractor",
            Op::SquaredDistances { .. } => "SquaredDistances",
            Op::TopK { .. } => "TopK",
            Op::Neighbours(_) => "Neighbours",
        }
    }

    /// How many learned numbers the op holds (weights, biases, constant operands, tree
    /// thresholds and leaves): what a party holding it learns of the model.
    pub fn weight_count(&self) -> usize {
        match self {
            Op::Dense { weight, bias, .. } => weight.len() + bias.len(),
            Op::BinaryConst { constant, .. } => constant.data.len(),
            Op::Impute { values, .. } => values.len(),
            Op::SquaredDistances { points } => points.data.len(),
            Op::Neighbours(n) => n.points.len() + n.codes.len(),
            Op::Sparse(m) => m.terms.len() + m.bias.len(),
            Op::Conv(c) => c.weight.len() + c.bias.len(),
            Op::TreeEnsemble(e) => {
                e.trees.iter().map(|t| t.nodes.len()).sum::<usize>() + e.base_values.len()
            }
            _ => 0,
        }
    }

    /// True for element-wise operators with one varying input (they fuse into a TLU).
    pub fn is_univariate(&self) -> bool {
        matches!(self, Op::BinaryConst { .. } | Op::Activation(_))
    }
}

/// How a tree node compares its feature `x` with its threshold `t` (ONNX `nodes_modes`);
/// the node goes to its true child when the comparison holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BranchMode {
    Leq,
    Lt,
    Gte,
    Gt,
    Eq,
    Neq,
}

impl BranchMode {
    pub fn holds(self, x: f64, t: f64) -> bool {
        match self {
            BranchMode::Leq => x <= t,
            BranchMode::Lt => x < t,
            BranchMode::Gte => x >= t,
            BranchMode::Gt => x > t,
            BranchMode::Eq => x == t,
            BranchMode::Neq => x != t,
        }
    }
}

/// One node of a decision tree; children are indices into [`Tree::nodes`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum TreeNode {
    Branch {
        feature: usize,
        mode: BranchMode,
        threshold: f64,
        if_true: usize,
        if_false: usize,
    },
    /// `(output, weight)` pairs added when the leaf is reached.
    Leaf { weights: Vec<(usize, f64)> },
}

/// A decision tree, root at index 0.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Tree {
    pub nodes: Vec<TreeNode>,
}

impl Tree {
    /// The leaf `x` reaches, comparing in f32 as onnxruntime does.
    pub fn leaf_of(&self, x: &[f64]) -> usize {
        let mut i = 0;
        loop {
            match &self.nodes[i] {
                TreeNode::Branch {
                    feature,
                    mode,
                    threshold,
                    if_true,
                    if_false,
                } => {
                    let (v, t) = (x[*feature] as f32 as f64, *threshold as f32 as f64);
                    i = if mode.holds(v, t) {
                        *if_true
                    } else {
                        *if_false
                    };
                }
                TreeNode::Leaf { .. } => return i,
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TreeEnsemble {
    pub features: usize,
    pub outputs: usize,
    pub trees: Vec<Tree>,
    pub base_values: Vec<f64>,
}

impl TreeEnsemble {
    pub fn eval(&self, x: &[f64]) -> Vec<f64> {
        let mut out = self.base_values.clone();
        for t in &self.trees {
            if let TreeNode::Leaf { weights } = &t.nodes[t.leaf_of(x)] {
                for &(o, w) in weights {
                    out[o] += w;
                }
            }
        }
        out
    }
}

/// One node. `inputs` holds only non-constant operands (constants were folded into `op`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Node {
    /// The ONNX node name (or `op_type#index` when the model left it empty).
    pub name: String,
    /// The ONNX op type it came from, for messages.
    pub onnx_op: String,
    pub op: Op,
    pub inputs: Vec<ValueId>,
    pub outputs: Vec<ValueId>,
}

/// A validated float graph. Invariants: `nodes` is in topological order; every node
/// input is a graph input or an output of an earlier node; shapes are static.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FloatGraph {
    pub values: Vec<ValueInfo>,
    pub nodes: Vec<Node>,
    pub inputs: Vec<ValueId>,
    pub outputs: Vec<ValueId>,
}

impl FloatGraph {
    pub fn value(&self, id: ValueId) -> &ValueInfo {
        &self.values[id.0 as usize]
    }

    /// True when every node reading `id` is an Imputer that replaces NaN: the value may
    /// hold missing values (NaN).
    pub fn imputes(&self, id: ValueId) -> bool {
        let mut readers = self
            .nodes
            .iter()
            .filter(|n| n.inputs.contains(&id))
            .peekable();
        readers.peek().is_some()
            && readers.all(|n| matches!(n.op, Op::Impute { replaced, .. } if replaced.is_nan()))
    }
}

/// Numpy broadcasting of two shapes, or `None` when they are incompatible.
pub fn broadcast_shapes(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let rank = a.len().max(b.len());
    let mut out = vec![0; rank];
    for i in 0..rank {
        let da = if i + a.len() >= rank {
            a[i + a.len() - rank]
        } else {
            1
        };
        let db = if i + b.len() >= rank {
            b[i + b.len() - rank]
        } else {
            1
        };
        out[i] = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => return None,
        };
    }
    Some(out)
}

/// `t` broadcast to `shape` (which must be a numpy broadcast of t's shape).
pub fn broadcast_to(t: &Tensor, shape: &[usize]) -> Option<Tensor> {
    if broadcast_shapes(&t.shape, shape)? != shape {
        return None;
    }
    let rank = shape.len();
    let src: Vec<usize> = (0..rank)
        .map(|i| {
            if i + t.shape.len() >= rank {
                t.shape[i + t.shape.len() - rank]
            } else {
                1
            }
        })
        .collect();
    let numel: usize = shape.iter().product();
    let mut data = Vec::with_capacity(numel);
    for flat in 0..numel {
        let (mut rem, mut off, mut stride) = (flat, 0, 1);
        for ax in (0..rank).rev() {
            let idx = rem % shape[ax];
            rem /= shape[ax];
            if src[ax] != 1 {
                off += idx * stride;
            }
            stride *= src[ax];
        }
        data.push(t.data[off]);
    }
    Some(Tensor::new(shape.to_vec(), data, t.dtype))
}

impl FloatGraph {
    /// The graph cut down to the nodes `keep` (indices, in order): the same inputs and
    /// outputs, those nodes, and only the values they, the inputs and the outputs name
    /// (renumbered in their original order). Returns it with the map from old to new
    /// value ids. A kept node's operand that no kept node computes must be supplied by
    /// the caller before evaluation (the client's decrypted values, for the tail).
    pub fn subgraph(&self, keep: &[usize]) -> (FloatGraph, Vec<Option<ValueId>>) {
        let mut used = vec![false; self.values.len()];
        let nodes = keep.iter().map(|&i| &self.nodes[i]);
        for v in nodes
            .clone()
            .flat_map(|n| n.inputs.iter().chain(&n.outputs))
            .chain(&self.inputs)
            .chain(&self.outputs)
        {
            used[v.0 as usize] = true;
        }
        let mut map = vec![None; self.values.len()];
        let mut values = Vec::new();
        for (i, v) in self.values.iter().enumerate() {
            if used[i] {
                map[i] = Some(ValueId(values.len() as u32));
                values.push(v.clone());
            }
        }
        // every value a kept node names is marked used above, so it has a new id
        let remap = |ids: &[ValueId]| -> Vec<ValueId> {
            ids.iter().filter_map(|v| map[v.0 as usize]).collect()
        };
        let graph = FloatGraph {
            nodes: nodes
                .map(|n| Node {
                    inputs: remap(&n.inputs),
                    outputs: remap(&n.outputs),
                    ..n.clone()
                })
                .collect(),
            inputs: remap(&self.inputs),
            outputs: remap(&self.outputs),
            values,
        };
        (graph, map)
    }

    /// Structural checks for a graph read from a file: every value id in range and
    /// every node operand a graph input, a constant, an earlier node's output or one of
    /// `supplied`. Returns a description of the first problem.
    pub fn check_structure(&self, supplied: &[ValueId]) -> Result<(), String> {
        let n = self.values.len();
        let in_range = |v: &ValueId| (v.0 as usize) < n;
        if let Some(v) = self
            .inputs
            .iter()
            .chain(&self.outputs)
            .find(|v| !in_range(v))
        {
            return Err(format!("graph input/output names value #{} of {n}", v.0));
        }
        for (i, v) in self.values.iter().enumerate() {
            if let Some(c) = &v.constant {
                if c.data.len() != c.shape.iter().product::<usize>() {
                    return Err(format!("constant '{}' (#{i}) has a wrong size", v.name));
                }
            }
        }
        let mut ready = vec![false; n];
        for v in self.inputs.iter().chain(supplied).filter(|v| in_range(v)) {
            ready[v.0 as usize] = true;
        }
        for (i, v) in self.values.iter().enumerate() {
            ready[i] |= v.constant.is_some();
        }
        for node in &self.nodes {
            for v in &node.inputs {
                if !in_range(v) || !ready[v.0 as usize] {
                    return Err(format!(
                        "node '{}' reads value #{} before it is computed",
                        node.name, v.0
                    ));
                }
            }
            for v in &node.outputs {
                if !in_range(v) {
                    return Err(format!("node '{}' writes value #{} of {n}", node.name, v.0));
                }
                ready[v.0 as usize] = true;
            }
        }
        Ok(())
    }
}
