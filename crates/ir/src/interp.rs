//! Clear integer execution of a circuit ("simulate").
//!
//! [`simulate`] computes exactly what the TFHE back end decrypts when no bootstrap
//! fails: encrypted values live modulo `2^(W+1)` (W = encoding width, one padding bit),
//! and a table lookup of precision `p` reads its operand modulo `2^(p+1)`, the upper half
//! giving the negated table entry (the negacyclic rotation of the bootstrap). On values
//! inside their calibrated ranges this equals plain integer arithmetic; outside them it
//! reproduces the wrap-around of the real ciphertexts.

use crate::{Circuit, CircuitInfo, IntOp};

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("node '{node}': {reason}")]
    Structure { node: String, reason: String },
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

/// Runs the circuit on one sample; returns the values of `c.outputs`. Approximate
/// roundings give their expected value (round to nearest).
pub fn simulate(
    c: &Circuit,
    info: &CircuitInfo,
    inputs: &[Vec<i64>],
) -> Result<Vec<Vec<i64>>, SimError> {
    let values = evaluate_with(c, inputs, Some(info.encoding_bits), None)?;
    Ok(c.outputs
        .iter()
        .map(|o| values[o.index()].clone())
        .collect())
}

/// The error of approximate roundings, as the back end predicts it for a key set: the
/// reading bootstrap sees `x + e`, `e ~ N(0, sigma[node]²)` in units of the operand `x`,
/// and returns `round((x + e) / 2^drop)`, so values near a rounding boundary come out
/// one off with the probability FHE has.
#[derive(Clone, Debug)]
pub struct RoundingNoise {
    /// Per node index; 0 (or missing) for nodes that are not approximate roundings.
    pub sigma: Vec<f64>,
    /// Standard deviation of the error decrypted outputs carry, in output units (0:
    /// outputs decrypt exactly); each output element gets it rounded to an integer.
    pub output_sigma: f64,
}

impl RoundingNoise {
    /// True when some approximate rounding or the outputs have a non-zero error.
    pub fn is_active(&self) -> bool {
        self.sigma.iter().any(|&s| s > 0.0) || self.output_sigma > 0.0
    }
}

/// [`simulate`] with approximate roundings drawn from `noise` (a seeded generator, so a
/// run is reproducible: the same seed and sample give the same result).
pub fn simulate_noisy(
    c: &Circuit,
    info: &CircuitInfo,
    inputs: &[Vec<i64>],
    noise: &RoundingNoise,
    seed: u64,
) -> Result<Vec<Vec<i64>>, SimError> {
    let mut draw = Draw {
        noise,
        rng: Gaussian::new(seed),
    };
    let values = evaluate_with(c, inputs, Some(info.encoding_bits), Some(&mut draw))?;
    let sigma = noise.output_sigma;
    Ok(c.outputs
        .iter()
        .map(|o| {
            let mut v = values[o.index()].clone();
            if sigma > 0.0 {
                for x in &mut v {
                    *x += (sigma * draw.rng.sample()).round() as i64;
                }
            }
            v
        })
        .collect())
}

struct Draw<'a> {
    noise: &'a RoundingNoise,
    rng: Gaussian,
}

/// Standard normal draws: SplitMix64 for uniform bits, Box–Muller for the shape.
/// Statistical quality is ample for an error model; it is not cryptographic.
struct Gaussian {
    state: u64,
    spare: Option<f64>,
}

impl Gaussian {
    fn new(seed: u64) -> Self {
        Gaussian {
            state: seed,
            spare: None,
        }
    }
    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e3779b97f4a7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
        z ^ (z >> 31)
    }
    /// Uniform in (0, 1].
    fn uniform(&mut self) -> f64 {
        ((self.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64
    }
    fn sample(&mut self) -> f64 {
        if let Some(s) = self.spare.take() {
            return s;
        }
        let (u, v) = (self.uniform(), self.uniform());
        let r = (-2.0 * u.ln()).sqrt();
        let t = 2.0 * std::f64::consts::PI * v;
        self.spare = Some(r * t.sin());
        r * t.cos()
    }
}

/// Evaluates every node. With `encoding_bits = Some(W)` values are reduced to the
/// signed representatives of `Z / 2^(W+1)` as the ciphertexts hold them; with `None` the
/// arithmetic is exact (W not applied).
pub fn evaluate(
    c: &Circuit,
    inputs: &[Vec<i64>],
    encoding_bits: Option<u32>,
) -> Result<Vec<Vec<i64>>, SimError> {
    evaluate_with(c, inputs, encoding_bits, None)
}

fn evaluate_with(
    c: &Circuit,
    inputs: &[Vec<i64>],
    encoding_bits: Option<u32>,
    mut noise: Option<&mut Draw<'_>>,
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
    let none = Vec::new();
    for id in c.ids() {
        let n = c.node(id);
        let ops = c.operands(id);
        let structure = |reason: &str| SimError::Structure {
            node: n.name.clone(),
            reason: reason.into(),
        };
        // operands come before their users; a circuit read from a file may say otherwise
        let x: &Vec<i64> = match ops.first() {
            Some(o) => values
                .get(o.index())
                .ok_or_else(|| structure("an operand comes after the node"))?,
            None if matches!(n.op, IntOp::Input { .. } | IntOp::Affine { .. }) => &none,
            None => return Err(structure("no operand")),
        };
        let v: Vec<i64> = match &n.op {
            IntOp::Input { index, bits } => {
                let data = inputs
                    .get(*index)
                    .ok_or_else(|| structure("an input index past the inputs given"))?;
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
            } => linear(x, weight, bias, *inputs, *outputs)
                .into_iter()
                .map(reduce)
                .collect(),
            IntOp::Affine {
                row_start,
                terms,
                bias,
            } => {
                let xs: Vec<&Vec<i64>> = ops
                    .iter()
                    .map(|o| values.get(o.index()))
                    .collect::<Option<_>>()
                    .ok_or_else(|| structure("an operand comes after the node"))?;
                affine(&xs, row_start, terms, bias)
                    .into_iter()
                    .map(reduce)
                    .collect()
            }
            IntOp::Conv(conv) => conv.eval(x).into_iter().map(reduce).collect(),
            // exact, or approximate without a noise model: round to nearest
            IntOp::Round {
                drop_bits,
                approximate,
            } => {
                let half = 1i64 << (drop_bits - 1);
                let sigma = match noise.as_deref() {
                    Some(d) if *approximate => d.noise.sigma.get(id.index()).copied(),
                    _ => None,
                }
                .unwrap_or(0.0);
                x.iter()
                    .map(|&v| {
                        // floor((x + e + half) / 2^d) = floor((x + ⌊e⌋ + half) / 2^d)
                        match noise.as_deref_mut() {
                            Some(d) if sigma > 0.0 => v + (sigma * d.rng.sample()).floor() as i64,
                            _ => v,
                        }
                    })
                    .map(|v| match encoding_bits {
                        // the ciphertext's unsigned residue, low bits cleared one bootstrap at a time
                        Some(w) => (v + half).rem_euclid(1 << (w + 1)) >> drop_bits,
                        None => (v + half) >> drop_bits,
                    })
                    .collect()
            }
            IntOp::Lut {
                precision,
                tables,
                table_of,
            } => {
                let half = 1i64 << precision;
                x.iter()
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
            IntOp::Reshape => x.clone(),
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
