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

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Activation {
    Relu,
    Sigmoid,
    Tanh,
}

impl Activation {
    pub fn apply(self, x: f64) -> f64 {
        match self {
            Activation::Relu => x.max(0.0),
            Activation::Sigmoid => 1.0 / (1.0 + (-x).exp()),
            Activation::Tanh => x.tanh(),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Activation::Relu => "Relu",
            Activation::Sigmoid => "Sigmoid",
            Activation::Tanh => "Tanh",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BinaryKind {
    Add,
    Sub,
    Mul,
    Div,
}

impl BinaryKind {
    pub fn apply(self, a: f64, b: f64) -> f64 {
        match self {
            BinaryKind::Add => a + b,
            BinaryKind::Sub => a - b,
            BinaryKind::Mul => a * b,
            BinaryKind::Div => a / b,
        }
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
    /// Same data, new shape (Reshape, Flatten, Identity).
    Reshape {
        shape: Vec<usize>,
    },
    Softmax {
        axis: usize,
    },
    ArgMax {
        axis: usize,
        keepdims: bool,
        select_last_index: bool,
    },
    /// The tail of ai.onnx.ml LinearClassifier: scores → (label, transformed scores).
    ClassifierHead {
        labels: Vec<i64>,
        post_transform: PostTransform,
        binary_single_score: bool,
    },
    /// ai.onnx.ml ZipMap; the map sequence is represented by its [1, classes] tensor.
    ZipMap,
    Cast {
        to: DType,
    },
    Normalizer {
        norm: Norm,
    },
}

impl Op {
    /// Short ONNX-like name for listings.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Op::Dense { .. } => "Dense",
            Op::BinaryConst { kind, .. } => match kind {
                BinaryKind::Add => "Add",
                BinaryKind::Sub => "Sub",
                BinaryKind::Mul => "Mul",
                BinaryKind::Div => "Div",
            },
            Op::Activation(a) => a.name(),
            Op::Reshape { .. } => "Reshape",
            Op::Softmax { .. } => "Softmax",
            Op::ArgMax { .. } => "ArgMax",
            Op::ClassifierHead { .. } => "ClassifierHead",
            Op::ZipMap => "ZipMap",
            Op::Cast { .. } => "Cast",
            Op::Normalizer { .. } => "Normalizer",
        }
    }

    /// True for element-wise operators with one varying input (they fuse into a TLU).
    pub fn is_univariate(&self) -> bool {
        matches!(self, Op::BinaryConst { .. } | Op::Activation(_))
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
