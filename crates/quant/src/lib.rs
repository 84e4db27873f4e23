//! Quantization: float graph + inputset → integer circuit + client specification.
//!
//! Post-training, affine, uniform (see docs/QUANTIZATION.md):
//!
//! * inputs: asymmetric per tensor, `q = clamp(round(x/s) + z, 0, 2^b − 1)`, done by the
//!   client before encryption;
//! * weights: symmetric per tensor, clear integers in the circuit;
//! * a `Dense` becomes an integer [`IntOp::Linear`](fhec_ir::IntOp) on quantized inputs;
//!   its bias, zero-point corrections, the following univariate ops (activations,
//!   element-wise constants) and the requantization to `activation_bits` all fold into
//!   one table lookup per neuron, built when a later `Dense` needs a quantized input;
//! * an accumulator wider than `rounding_bits` is first rounded exactly to that many
//!   most significant bits;
//! * everything after the last `Dense` (softmax, argmax, post-transforms, ZipMap…) runs
//!   on the client, in float, after decryption and dequantization.
//!
//! Calibration runs the integer circuit being built on the inputset, so ranges are
//! those of the values the circuit really computes.

// No panic on user input (docs/ARCHITECTURE.md): unwrap, expect and panic! are refused
// outside tests; the few invariants left carry a justified `allow`.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

mod bivariate;
mod builder;
mod bypass;
mod client;
mod config;
mod conv;
mod dense;
mod head;
mod knn;
mod knn_grid;
mod sparse;
mod tlu;
mod trees;

pub use builder::quantize;
pub use client::{ClientSpec, InputQuant, OutputDequant, Pending};
pub use head::run_head;
pub use knn_grid::MAX_COMPARISON_BITS as NEIGHBOUR_COMPARISON_BITS;

pub use config::QuantConfig;

use fhec_ir::Circuit;

/// Where a quantization grid came from: the model's own QuantizeLinear scales and
/// integer weights (a QAT or statically quantized model), or calibration on the inputset.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct QuantOrigin {
    /// The model input, the node the activation feeds or comes from, or the layer.
    pub tensor: String,
    pub kind: OriginKind,
    pub from_model: bool,
    pub bits: u32,
    /// The grid's step (the first row's, for per-row weights; the first feature's, for
    /// per-feature activations).
    pub scale: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OriginKind {
    Input,
    Activation,
    Weights,
}

/// The result of quantization: the server's circuit and the client's side of it.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Quantized {
    pub circuit: Circuit,
    pub client: ClientSpec,
}

#[derive(Debug, thiserror::Error)]
pub enum QuantError {
    #[error("the inputset is empty")]
    EmptyInputset,
    #[error("inputset sample {sample}: {given} input tensors, the model takes {expected}")]
    InputCount {
        sample: usize,
        given: usize,
        expected: usize,
    },
    #[error(
        "inputset: input '{input}' has per-sample shape {given:?}, the model expects {expected:?}"
    )]
    InputShape {
        input: String,
        given: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error("inputset: input '{input}' sample {sample} element {element} is {value} (NaN or infinite values cannot be calibrated)")]
    NonFinite {
        input: String,
        sample: usize,
        element: usize,
        value: f64,
    },
    #[error("preprocessing on the client: {0}")]
    Preprocessing(String),
    #[error("node '{node}' ({op}) cannot run inside the encrypted circuit: {reason}")]
    Unsupported {
        node: String,
        op: String,
        reason: String,
    },
    #[error("the table lookup feeding node '{node}' would read a {bits}-bit accumulator (over the {max}-bit limit); set --rounding-threshold-bits or lower --n-bits", max = fhec_ir::MAX_BITS)]
    TooWide { node: String, bits: u32 },
    #[error("tree ensemble '{node}': its {trees} trees' summed scores need {bits} bits, over the {max}-bit limit; lower --n-bits (or --weight-bits, the bits of each leaf value) or train fewer trees", max = fhec_ir::MAX_BITS)]
    EnsembleTooWide {
        node: String,
        trees: usize,
        bits: u32,
    },
    #[error("invalid quantization setting: {0}")]
    Config(String),
    #[error("float reference failed: {0}")]
    Float(#[from] fhec_frontend_onnx::ImportError),
}
