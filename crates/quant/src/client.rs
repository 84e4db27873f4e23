//! The client's side of a quantized model: input quantization before encryption,
//! dequantization and the float tail after decryption.

use fhec_frontend_onnx::{
    interp, Activation, BinaryKind, FloatGraph, ImportError, Tensor, ValueId,
};
use serde::{Deserialize, Serialize};

/// How the client turns model input `value` into circuit input integers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InputQuant {
    pub value: ValueId,
    pub name: String,
    pub shape: Vec<usize>,
    pub scale: f64,
    pub zero_point: i64,
    pub bits: u32,
    /// The model's own QuantizeLinear grid (rounds ties to even in f32, as ONNX does).
    #[serde(default)]
    pub from_model: bool,
    /// Per element `(scale, zero_point)`, replacing the tensor's when not empty: a tree
    /// ensemble's features each get their own calibrated grid.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub per_element: Vec<(f64, i64)>,
    /// Per element, the largest integer (the client clamps to it), replacing `2^bits − 1`
    /// when not empty: a k-nearest-neighbours input's features each span only their own
    /// levels of a common scale.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub per_element_max: Vec<i64>,
}

impl InputQuant {
    /// Quantizes element `e` of the input.
    pub fn quantize(&self, e: usize, x: f64) -> i64 {
        let (scale, zero) = self
            .per_element
            .get(e)
            .copied()
            .unwrap_or((self.scale, self.zero_point));
        crate::tlu::Grid {
            scale,
            zero,
            max: self.top(e),
            from_model: self.from_model,
        }
        .quantize(x)
    }

    /// The largest integer element `e` takes.
    pub fn top(&self, e: usize) -> i64 {
        let full = (1i64 << self.bits) - 1;
        self.per_element_max.get(e).map_or(full, |&m| m.min(full))
    }
}

/// A univariate float op not yet applied to a value (it runs inside a table, or on
/// the client after dequantization). Constants are expanded per element.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Pending {
    Activation(Activation),
    Binary {
        kind: BinaryKind,
        constant: Vec<f64>,
        constant_first: bool,
    },
    /// What `ops` compute beyond the straight line `slope[e]·x + intercept[e]`: the
    /// part of an activation a table lookup keeps when its linear part bypasses it
    /// (docs/QUANTIZATION.md, "Linear parts past the lookup").
    Residual {
        ops: Vec<Pending>,
        slope: Vec<f64>,
        intercept: Vec<f64>,
    },
}

impl Pending {
    /// The same op on the elements `src[j]` of its operand (for data movement).
    pub fn gather(&self, src: &[usize]) -> Pending {
        match self {
            Pending::Activation(a) => Pending::Activation(*a),
            Pending::Binary {
                kind,
                constant,
                constant_first,
            } => Pending::Binary {
                kind: *kind,
                constant: src.iter().map(|&i| constant[i]).collect(),
                constant_first: *constant_first,
            },
            Pending::Residual {
                ops,
                slope,
                intercept,
            } => Pending::Residual {
                ops: ops.iter().map(|p| p.gather(src)).collect(),
                slope: src.iter().map(|&i| slope[i]).collect(),
                intercept: src.iter().map(|&i| intercept[i]).collect(),
            },
        }
    }

    pub fn apply(&self, element: usize, x: f64) -> f64 {
        match self {
            Pending::Activation(a) => a.apply(x),
            Pending::Binary {
                kind,
                constant,
                constant_first,
            } => {
                let c = constant[element];
                if *constant_first {
                    kind.apply(c, x)
                } else {
                    kind.apply(x, c)
                }
            }
            Pending::Residual {
                ops,
                slope,
                intercept,
            } => {
                let full = ops.iter().fold(x, |v, p| p.apply(element, v));
                full - slope[element] * x - intercept[element]
            }
        }
    }
}

/// The float value of circuit output `i`: `pending(scale[e]·q[e] + offset[e])`; with
/// output weights in two parts, the circuit output holds the remainders after the
/// values (`2n` elements) and element `e` is
/// `pending(scale[e]·q[e] + remainder_scale[e]·q[n + e] + offset[e])`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OutputDequant {
    pub value: ValueId,
    pub scale: Vec<f64>,
    pub offset: Vec<f64>,
    pub pending: Vec<Pending>,
    /// Empty, or one step per element for the remainder half of the circuit output.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remainder_scale: Vec<f64>,
}

impl OutputDequant {
    /// Elements of the circuit output this dequantizes.
    pub fn circuit_elements(&self) -> usize {
        self.scale.len() + self.remainder_scale.len()
    }

    pub fn dequantize(&self, q: &[i64]) -> Vec<f64> {
        let n = self.scale.len();
        (0..n)
            .map(|e| {
                let remainder = match self.remainder_scale.get(e) {
                    Some(s) => s * q[n + e] as f64,
                    None => 0.0,
                };
                let x = self.scale[e] * q[e] as f64 + remainder + self.offset[e];
                self.pending.iter().fold(x, |x, p| p.apply(e, x))
            })
            .collect()
    }
}

/// Everything the client needs besides keys.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClientSpec {
    /// Float-graph nodes (indices) the client runs on a sample before quantizing it:
    /// the model's preprocessing (docs/QUANTIZATION.md, the client's head).
    #[serde(default)]
    pub head: Vec<usize>,
    /// One per circuit input, in circuit order: a model input or a head output.
    pub inputs: Vec<InputQuant>,
    /// One per circuit output, in circuit order.
    pub outputs: Vec<OutputDequant>,
    /// Float-graph nodes (indices) the client runs after dequantization.
    pub tail: Vec<usize>,
    /// Where each quantization grid came from (model or calibration), for `inspect`.
    #[serde(default)]
    pub origins: Vec<crate::QuantOrigin>,
}

impl ClientSpec {
    /// Runs the head on one sample (one tensor per model input of `graph`) and quantizes
    /// the circuit inputs.
    pub fn quantize_inputs(
        &self,
        graph: &FloatGraph,
        sample: &[Tensor],
    ) -> Result<Vec<Vec<i64>>, ImportError> {
        let env = crate::head::run_head(graph, &self.head, sample)?;
        self.inputs
            .iter()
            .map(|q| {
                let t = env
                    .get(q.value.0 as usize)
                    .and_then(Option::as_ref)
                    .ok_or_else(|| ImportError::Eval(format!("'{}' is not computed", q.name)))?;
                if let Some(e) = t.data.iter().position(|v| !v.is_finite()) {
                    return Err(ImportError::Eval(format!(
                        "'{}' element {e} is {} after preprocessing: it cannot be encrypted",
                        q.name, t.data[e]
                    )));
                }
                Ok(t.data
                    .iter()
                    .enumerate()
                    .map(|(e, &x)| q.quantize(e, x))
                    .collect())
            })
            .collect()
    }

    /// Dequantizes decrypted circuit outputs and runs the float tail; returns the
    /// model's outputs in graph order.
    pub fn finish(
        &self,
        graph: &FloatGraph,
        circuit_outputs: &[Vec<i64>],
    ) -> Result<Vec<Tensor>, ImportError> {
        let mut env: Vec<Option<Tensor>> =
            graph.values.iter().map(|v| v.constant.clone()).collect();
        for (d, q) in self.outputs.iter().zip(circuit_outputs) {
            let info = graph.value(d.value);
            env[d.value.0 as usize] =
                Some(Tensor::new(info.shape.clone(), d.dequantize(q), info.dtype));
        }
        interp::evaluate_nodes(graph, self.tail.iter().copied(), &mut env)?;
        graph
            .outputs
            .iter()
            .map(|id| {
                env[id.0 as usize].clone().ok_or_else(|| {
                    ImportError::Eval(format!(
                        "output '{}' was not computed",
                        graph.value(*id).name
                    ))
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fhec_frontend_onnx::graph::Activation;

    /// An activation's residual is what it adds to its straight line: a ReLU less the
    /// identity is 0 above 0 and `−x` below; gathering keeps each element's line.
    #[test]
    fn a_residual_is_the_activation_less_its_line() {
        let relu = Pending::Residual {
            ops: vec![Pending::Activation(Activation::Relu)],
            slope: vec![1.0, 0.0],
            intercept: vec![0.0, 0.5],
        };
        assert_eq!(relu.apply(0, 3.0), 0.0);
        assert_eq!(relu.apply(0, -2.0), 2.0);
        assert_eq!(relu.apply(1, 3.0), 2.5);
        let swapped = relu.gather(&[1, 0]);
        assert_eq!(swapped.apply(0, 3.0), 2.5);
        assert_eq!(swapped.apply(1, -2.0), 2.0);
    }

    /// With output weights in two parts the circuit output holds the remainders after
    /// the values, and each element adds its remainder at its own step.
    #[test]
    fn split_outputs_add_their_remainders() {
        let plain = OutputDequant {
            value: ValueId(0),
            scale: vec![0.5, 2.0],
            offset: vec![1.0, -1.0],
            pending: vec![],
            remainder_scale: vec![],
        };
        assert_eq!(plain.circuit_elements(), 2);
        assert_eq!(plain.dequantize(&[2, 3]), vec![2.0, 5.0]);
        let split = OutputDequant {
            remainder_scale: vec![0.25, 0.125],
            ..plain
        };
        assert_eq!(split.circuit_elements(), 4);
        assert_eq!(split.dequantize(&[2, 3, 4, 8]), vec![3.0, 6.0]);
    }
}
