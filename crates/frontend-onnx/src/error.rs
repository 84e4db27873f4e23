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
}

fn list(ops: &[UnsupportedOp]) -> String {
    let mut text = ops
        .iter()
        .map(|o| o.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    if ops.iter().any(|o| o.op_type == "TopK") {
        // what skl2onnx writes for KNeighborsClassifier/Regressor
        text.push_str(
            "; TopK selects among encrypted values (k-nearest neighbours: the k smallest \
             of the distances to every training sample), which needs an encrypted sorting \
             network fhec does not have",
        );
    }
    text
}
