//! Clear integer execution of a circuit ("simulate").
//!
//! [`simulate`] computes exactly what the TFHE back end decrypts when no bootstrap
//! fails: encrypted values live modulo `2^(W+1)` (W = encoding width, one padding bit),
//! and a table lookup of precision `p` reads its operand modulo `2^(p+1)`, the upper half
//! giving the negated table entry (the negacyclic rotation of the bootstrap). On values
//! inside their calibrated ranges this equals plain integer arithmetic; outside them it
//! reproduces the wrap-around of the real ciphertexts.

use crate::{Circuit, CircuitInfo, IntOp, NodeId};

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("{given} input tensors given, the circuit takes {expected}")]
    InputCount { given: usize, expected: usize },
    #[error("input #{index} has {given} elements, the circuit takes {expected}")]
    InputSize {
        index: usize,
        given: usize,
        expected: usize,
    },
    #[error("input #{index} element {element} = {value} is outside [0, 2^{bits})")]
    InputRange {
        index: usize,
        element: usize,
        value: i64,
        bits: u32,
    },
}

/// Runs the circuit on one sample; returns the values of `c.outputs`.
pub fn simulate(
    c: &Circuit,
    info: &CircuitInfo,
    inputs: &[Vec<i64>],
) -> Result<Vec<Vec<i64>>, SimError> {
    simulate_with_noise(c, info, inputs, None)
}

/// The statistical model of approximate rounding: the bootstrap reading an approximate
/// `Round` sees its operand plus Gaussian noise of standard deviation `sigma[node]`
/// (in units of the operand's integer LSB, from the crypto parameters), so a value
/// close to a rounding boundary lands on either side with the probability FHE has.
#[derive(Clone, Debug)]
pub struct RoundingNoise {
    /// Per node index; only approximate `Round` nodes use it.
    pub sigma: Vec<f64>,
    state: u64,
}

impl RoundingNoise {
    pub fn new(sigma: Vec<f64>, seed: u64) -> Self {
        RoundingNoise {
            sigma,
            state: seed ^ 0x9E37_79B9_7F4A_7C15,
        }
    }
    /// splitmix64: a small, portable, seeded generator (no dependency, reproducible).
    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// A standard normal sample (Box–Muller).
    fn gaussian(&mut self) -> f64 {
        let u1 = ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        let u2 = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

/// [`simulate`], with approximate roundings perturbed by `noise` when given (without it
/// they round to nearest, which is what FHE returns away from rounding boundaries).
pub fn simulate_with_noise(
    c: &Circuit,
    info: &CircuitInfo,
    inputs: &[Vec<i64>],
    noise: Option<&mut RoundingNoise>,
) -> Result<Vec<Vec<i64>>, SimError> {
    let values = evaluate_impl(c, inputs, Some(info.encoding_bits), noise)?;
    Ok(c.outputs
        .iter()
        .map(|o| values[o.index()].clone())
        .collect())
}

/// Evaluates every node. With `encoding_bits = Some(W)` values are reduced to the
/// signed representatives of `Z / 2^(W+1)` as the ciphertexts hold them; with `None` the
/// arithmetic is exact (W not applied).
pub fn evaluate(
    c: &Circuit,
    inputs: &[Vec<i64>],
    encoding_bits: Option<u32>,
) -> Result<Vec<Vec<i64>>, SimError> {
    evaluate_impl(c, inputs, encoding_bits, None)
}

fn evaluate_impl(
    c: &Circuit,
    inputs: &[Vec<i64>],
    encoding_bits: Option<u32>,
    mut noise: Option<&mut RoundingNoise>,
) -> Result<Vec<Vec<i64>>, SimError> {
    if inputs.len() != c.inputs.len() {
        return Err(SimError::InputCount {
            given: inputs.len(),
            expected: c.inputs.len(),
        });
    }
    let reduce = |v: i64| match encoding_bits {
        Some(w) => {
            let m = 1i64 << (w + 1);
            let r = v.rem_euclid(m);
            if r >= m / 2 {
                r - m
            } else {
                r
            }
        }
        None => v,
    };
    let mut values: Vec<Vec<i64>> = Vec::with_capacity(c.len());
    for id in c.ids() {
        let n = c.node(id);
        let ops = c.operands(id);
        let x = ops.first().map(|o: &NodeId| &values[o.index()]);
        let v: Vec<i64> = match &n.op {
            IntOp::Input { index, bits } => {
                let data = &inputs[*index];
                if data.len() != n.numel() {
                    return Err(SimError::InputSize {
                        index: *index,
                        given: data.len(),
                        expected: n.numel(),
                    });
                }
                if let Some((element, &value)) = data
                    .iter()
                    .enumerate()
                    .find(|(_, &v)| v < 0 || v >= 1 << bits)
                {
                    return Err(SimError::InputRange {
                        index: *index,
                        element,
                        value,
                        bits: *bits,
                    });
                }
                data.clone()
            }
            IntOp::Linear {
                inputs,
                outputs,
                weight,
                bias,
            } => linear(x.unwrap(), weight, bias, *inputs, *outputs)
                .into_iter()
                .map(reduce)
                .collect(),
            IntOp::Affine {
                row_start,
                terms,
                bias,
            } => {
                let xs: Vec<&Vec<i64>> = ops.iter().map(|o| &values[o.index()]).collect();
                affine(&xs, row_start, terms, bias)
                    .into_iter()
                    .map(reduce)
                    .collect()
            }
            IntOp::Round {
                drop_bits,
                approximate,
            } => {
                let half = 1i64 << (drop_bits - 1);
                let sigma = match (&noise, approximate) {
                    (Some(n), true) => n.sigma.get(id.index()).copied().unwrap_or(0.0),
                    _ => 0.0,
                };
                x.unwrap()
                    .iter()
                    .map(|&v| {
                        let v = if sigma > 0.0 {
                            let n = noise.as_deref_mut().expect("sigma > 0 only with noise");
                            (v as f64 + sigma * n.gaussian()).floor() as i64
                        } else {
                            v
                        };
                        match encoding_bits {
                            // the ciphertext's unsigned residue, low bits cleared one bootstrap at a time
                            Some(w) => (v + half).rem_euclid(1 << (w + 1)) >> drop_bits,
                            None => (v + half) >> drop_bits,
                        }
                    })
                    .collect()
            }
            IntOp::Lut {
                precision,
                tables,
                table_of,
            } => {
                let half = 1i64 << precision;
                x.unwrap()
                    .iter()
                    .zip(table_of)
                    .map(|(&v, &t)| {
                        let idx = v.rem_euclid(2 * half);
                        let table = &tables[t as usize];
                        reduce(if idx < half {
                            table[idx as usize]
                        } else {
                            -table[(idx - half) as usize]
                        })
                    })
                    .collect()
            }
            IntOp::Reshape => x.unwrap().clone(),
        };
        values.push(v);
    }
    Ok(values)
}

/// `IntOp::Linear` on one sample: `y[r, j] = Σ_i w[j, i]·x[r, i] + b[j]` over the last
/// axis (`inputs` wide), in wrapping 64-bit arithmetic, before any modular reduction.
pub fn linear(x: &[i64], weight: &[i64], bias: &[i64], inputs: usize, outputs: usize) -> Vec<i64> {
    let rows = x.len() / inputs;
    let mut y = Vec::with_capacity(rows * outputs);
    for xr in x.chunks_exact(inputs).take(rows) {
        for (j, w) in weight.chunks_exact(inputs).enumerate().take(outputs) {
            y.push(
                xr.iter()
                    .zip(w)
                    .fold(bias[j], |a, (&xi, &wi)| a.wrapping_add(xi.wrapping_mul(wi))),
            );
        }
    }
    y
}

/// `IntOp::Affine` on one sample, in wrapping 64-bit arithmetic, before any modular
/// reduction. `xs` are the operands in slot order.
pub fn affine(
    xs: &[&Vec<i64>],
    row_start: &[u32],
    terms: &[crate::Term],
    bias: &[i64],
) -> Vec<i64> {
    bias.iter()
        .enumerate()
        .map(|(j, &b)| {
            terms[row_start[j] as usize..row_start[j + 1] as usize]
                .iter()
                .fold(b, |a, t| {
                    a.wrapping_add(xs[t.operand as usize][t.index as usize].wrapping_mul(t.weight))
                })
        })
        .collect()
}
