use std::fmt;

/// An ONNX node fhec has no builder for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnsupportedOp {
    pub op_type: String,
    pub domain: String,
    pub node: String,
}

impl fmt::Display for UnsupportedOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (domain {}, node '{}')",
            self.op_type, self.domain, self.node
        )
    }
}

/// Why an ONNX model could not be imported. Every variant names what is at fault.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("not an ONNX model: {0}")]
    NotOnnx(String),
    #[error("unsupported operator(s): {}", list(.0))]
    Unsupported(Vec<UnsupportedOp>),
    #[error("input '{input}' dimension {axis} is dynamic ('{param}'): only the batch dimension (axis 0) may be symbolic")]
    DynamicShape {
        input: String,
        axis: usize,
        param: String,
    },
    #[error("node '{node}' ({op_type}): {reason}")]
    Node {
        node: String,
        op_type: String,
        reason: String,
    },
    #[error("tensor '{name}': {reason}")]
    Tensor { name: String, reason: String },
    #[error("graph output '{0}' is not produced by any node")]
    MissingOutput(String),
    #[error("float evaluation failed: {0}")]
    Eval(String),
    #[error("at '{at}', the model's tensors take {} (its constants and one sample's values), more than the memory budget of {}", bytes_text(*.bytes), bytes_text(*.budget))]
    OverBudget { at: String, bytes: u64, budget: u64 },
}

fn list(ops: &[UnsupportedOp]) -> String {
    ops.iter()
        .map(|o| o.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A byte count for people: `3.2 GiB (3435973837 bytes)`.
pub fn bytes_text(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = "bytes";
    for u in UNITS {
        if value < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = u;
    }
    if unit == "bytes" {
        format!("{bytes} bytes")
    } else {
        format!("{value:.1} {unit} ({bytes} bytes)")
    }
}
