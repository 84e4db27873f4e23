//! The verifier: structural checks plus the facts back ends need (bit-widths, encoding
//! width, bootstrap counts). Back ends take a [`CircuitInfo`], so an unverified circuit
//! cannot be lowered or run.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{Circuit, IntOp, NodeId, Range, Status, MAX_BITS};

/// How exact rounding clears `drop` low bits: chunks `(first_bit, bits)` from the LSB up,
/// each at most `max_chunk` bits. A chunk of c bits costs two bootstraps (its top bit by
/// a sign bootstrap, then the other c − 1 bits by a table of precision c − 1), a 1-bit
/// chunk one. `max_chunk` is the widest table precision of the circuit + 1, so rounding
/// never needs more precision than the circuit's own lookups.
pub fn rounding_chunks(drop: u32, max_chunk: u32) -> Vec<(u32, u32)> {
    let mut chunks = Vec::new();
    let mut bit = 0;
    while bit < drop {
        let c = (drop - bit).min(max_chunk.max(1));
        chunks.push((bit, c));
        bit += c;
    }
    chunks
}

/// Bootstraps one element's exact rounding costs: two per chunk of [`rounding_chunks`],
/// one for a 1-bit chunk (counted without listing the chunks).
pub fn rounding_pbs_count(drop: u32, max_chunk: u32) -> usize {
    let chunk = max_chunk.max(1);
    let (full, last) = (drop / chunk, drop % chunk);
    let per = |c: u32| if c > 1 { 2 } else { 1 };
    full as usize * per(chunk) + if last > 0 { per(last) } else { 0 }
}

/// Width of the smallest integer type holding `range` (sign bit included if `lo < 0`).
pub fn bits_for_range(r: Range) -> u32 {
    let unsigned = |v: i64| (64 - (v as u64).leading_zeros()).max(1);
    if r.lo >= 0 {
        unsigned(r.hi)
    } else {
        1 + unsigned((-(r.lo + 1)).max(r.hi.max(0)))
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Width of the calibrated range.
    pub bits: u32,
    /// The ciphertext holds `value·2^shift` (a `Round` leaves its result unshifted).
    pub shift: u32,
    /// Programmable bootstraps this node costs per sample.
    pub pbs: usize,
}

/// An encrypted value wider than [`MAX_BITS`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Violation {
    pub node: String,
    pub op: String,
    pub bits: u32,
    /// The range of the value that is too wide: for a rounding, its accumulator plus half
    /// a rounding step (what the ciphertext holds before the low bits are dropped).
    pub range: Range,
}

/// What the verifier established about a circuit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CircuitInfo {
    /// `W`: every ciphertext encodes integers modulo `2^(W+1)` (one padding bit).
    pub encoding_bits: u32,
    /// Indexed like the circuit's nodes.
    pub nodes: Vec<NodeInfo>,
    /// Table lookups per sample (one bootstrap each).
    pub tlu_count: usize,
    /// Bootstraps per sample spent on exact rounding.
    pub rounding_pbs: usize,
    /// Every bootstrap per sample: `tlu_count + rounding_pbs`.
    pub pbs_per_sample: usize,
    /// Widest table-lookup input.
    pub max_tlu_bits: u32,
    /// Widest encrypted value.
    pub max_bits: u32,
    /// Widest chunk of bits one exact-rounding step clears (`Circuit::rounding_chunk_bits`,
    /// by default `max_tlu_bits + 1`).
    pub rounding_chunk_bits: u32,
    pub violations: Vec<Violation>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct VerifyError {
    pub node: String,
    pub reason: String,
}

/// Every structural error found (the verifier does not stop at the first).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub struct VerifyErrors(pub Vec<VerifyError>);

impl fmt::Display for VerifyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|e| format!("node '{}': {}", e.node, e.reason))
            .collect();
        write!(f, "invalid circuit: {}", parts.join("; "))
    }
}

/// Widest table lookup a circuit may hold: 2^24 entries per table. Wider than 16 bits
/// is a violation of the FHE limit, reported as such; wider than this is a broken file.
pub const MAX_TABLE_BITS: u32 = 24;

pub fn verify(c: &Circuit) -> Result<CircuitInfo, VerifyErrors> {
    if let Some(bad) = c
        .inputs
        .iter()
        .chain(&c.outputs)
        .find(|id| id.index() >= c.len())
    {
        return Err(VerifyErrors(vec![VerifyError {
            node: "<circuit>".into(),
            reason: format!("node id {} does not exist", bad.index()),
        }]));
    }
    // element counts bounded first: everything below multiplies and adds them
    let oversized: Vec<VerifyError> = c
        .ids()
        .map(|id| c.node(id))
        .filter(|n| {
            n.shape
                .iter()
                .try_fold(1usize, |acc, &d| acc.checked_mul(d))
                .is_none_or(|e| e > crate::MAX_NODE_ELEMENTS)
        })
        .map(|n| VerifyError {
            node: n.name.clone(),
            reason: format!(
                "shape {:?} holds more than {} elements",
                n.shape,
                crate::MAX_NODE_ELEMENTS
            ),
        })
        .collect();
    if !oversized.is_empty() {
        return Err(VerifyErrors(oversized));
    }
    let mut errors = Vec::new();
    let mut nodes = Vec::with_capacity(c.len());
    let chunk_bits = c.rounding_chunk_bits.unwrap_or_else(|| {
        c.ids()
            .filter_map(|id| match c.node(id).op {
                IntOp::Lut { precision, .. } => Some(precision),
                _ => None,
            })
            .max()
            .unwrap_or(0)
            .saturating_add(1)
    });
    let (mut tlu_count, mut rounding_pbs, mut max_tlu_bits) = (0, 0, 0);
    for id in c.ids() {
        let n = c.node(id);
        let errors_before = errors.len();
        let mut err = |reason: String| {
            errors.push(VerifyError {
                node: n.name.clone(),
                reason,
            })
        };
        let ops = c.operands(id);
        if ops.iter().any(|o| o.index() >= id.index()) {
            err("an operand is defined after its user".into());
        }
        if n.range.lo > n.range.hi {
            err(format!("empty range [{}, {}]", n.range.lo, n.range.hi));
        }
        let expected_operands = usize::from(!matches!(n.op, IntOp::Input { .. }));
        let operands_ok = match n.op {
            IntOp::Affine { .. } => !ops.is_empty(),
            _ => ops.len() == expected_operands,
        };
        if !operands_ok {
            err(format!(
                "{} has {} operands, expects {expected_operands}",
                n.op.name(),
                ops.len()
            ));
            nodes.push(NodeInfo {
                bits: bits_for_range(n.range),
                shift: 0,
                pbs: 0,
            });
            continue;
        }
        let operand = ops.first().map(|&o| c.node(o));
        let numel = n.numel();
        let mut info = NodeInfo {
            bits: bits_for_range(n.range),
            shift: 0,
            pbs: 0,
        };
        match (&n.op, operand) {
            (IntOp::Input { bits, index }, _) => {
                if c.inputs.get(*index) != Some(&id) {
                    err(format!(
                        "input #{index} is not listed at that position among the circuit inputs"
                    ));
                }
                if *bits == 0 || *bits > 16 {
                    err(format!("input of {bits} bits"));
                }
                if n.range.lo < 0 || n.range.hi >= 1i64 << (*bits).min(62) {
                    err(format!(
                        "input range [{}, {}] exceeds {bits} unsigned bits",
                        n.range.lo, n.range.hi
                    ));
                }
            }
            (
                IntOp::Linear {
                    inputs,
                    outputs,
                    weight,
                    bias,
                },
                Some(x),
            ) => {
                if x.shape.last() != Some(inputs) || n.shape.last() != Some(outputs) {
                    err(format!(
                        "linear {inputs}→{outputs} on shape {:?} giving {:?}",
                        x.shape, n.shape
                    ));
                }
                if Some(weight.len()) != inputs.checked_mul(*outputs) || bias.len() != *outputs {
                    err("weight/bias sizes do not match inputs×outputs".into());
                }
            }
            (
                IntOp::Affine {
                    row_start,
                    terms,
                    bias,
                },
                Some(_),
            ) => {
                if row_start.len() != numel + 1 || bias.len() != numel {
                    err(format!(
                        "{numel} elements but {} row starts and {} biases",
                        row_start.len(),
                        bias.len()
                    ));
                } else if row_start.windows(2).any(|w| w[0] > w[1])
                    || row_start.last().is_some_and(|&l| l as usize != terms.len())
                {
                    err("row starts are not a partition of the terms".into());
                }
                for t in terms {
                    match ops.get(t.operand as usize) {
                        Some(&o) if (t.index as usize) < c.node(o).numel() => {
                            if nodes[o.index()].shift != 0 {
                                err("an affine map cannot read a rounded value".into());
                                break;
                            }
                        }
                        _ => {
                            err(format!(
                                "term reads element {} of operand {}, which does not exist",
                                t.index, t.operand
                            ));
                            break;
                        }
                    }
                }
            }
            (IntOp::Conv(conv), Some(x)) => {
                let mut want_in = vec![1, conv.in_channels];
                want_in.extend(&conv.in_sp);
                let mut want_out = vec![1, conv.out_channels];
                want_out.extend(&conv.out_sp);
                if let Err(reason) = conv.check() {
                    err(format!("convolution: {reason}"));
                } else if x.shape != want_in || n.shape != want_out {
                    err(format!(
                        "convolution of {want_in:?} into {want_out:?} on shape {:?} giving {:?}",
                        x.shape, n.shape
                    ));
                } else if nodes[ops[0].index()].shift != 0 {
                    err("a convolution cannot read a rounded value".into());
                }
            }
            (
                IntOp::Round {
                    drop_bits,
                    approximate,
                },
                Some(x),
            ) => {
                if x.range.lo < 0 {
                    err("round needs a non-negative operand".into());
                }
                if *drop_bits == 0 {
                    err("round drops no bit".into());
                }
                if *drop_bits > 62 {
                    err(format!(
                        "round drops {drop_bits} bits; a 64-bit torus holds at most 62"
                    ));
                }
                if c.users(id)
                    .iter()
                    .any(|&u| !matches!(c.node(u).op, IntOp::Lut { .. }))
                {
                    err("a round result may only feed table lookups".into());
                }
                info.shift = *drop_bits;
                // the ciphertext holds x + 2^(k-1) (low bits cleared), which may need one
                // bit more than x: the encoding width must hold it; so must the top
                // bits an approximate rounding reads
                info.bits = bits_for_range(Range::new(
                    0,
                    x.range
                        .hi
                        .max(0)
                        .saturating_add(1i64 << drop_bits.saturating_sub(1).min(62)),
                ));
                if !approximate && *drop_bits <= 62 {
                    info.pbs = numel * rounding_pbs_count(*drop_bits, chunk_bits);
                    rounding_pbs += info.pbs;
                }
            }
            (
                IntOp::Lut {
                    precision,
                    tables,
                    table_of,
                },
                Some(x),
            ) => {
                // widths are bounded before anything shifts by them
                if *precision == 0 || *precision > MAX_TABLE_BITS {
                    err(format!(
                        "a table lookup of {precision} bits (1 to {MAX_TABLE_BITS})"
                    ));
                } else {
                    if x.range.lo < 0 || x.range.hi >= 1i64 << precision {
                        err(format!(
                            "table input range [{}, {}] does not fit {precision} unsigned bits",
                            x.range.lo, x.range.hi
                        ));
                    }
                    if tables.iter().any(|t| t.len() != 1 << precision) {
                        err(format!("a table does not have 2^{precision} entries"));
                    }
                }
                if table_of.len() != numel || table_of.iter().any(|&t| t as usize >= tables.len()) {
                    err("table_of does not map every element to a table".into());
                }
                if x.shape.iter().product::<usize>() != numel {
                    err("a table lookup must keep the element count".into());
                }
                info.pbs = numel;
                tlu_count += numel;
                max_tlu_bits = max_tlu_bits.max(*precision);
            }
            (IntOp::Reshape, Some(x)) => {
                if x.shape.iter().product::<usize>() != numel {
                    err(format!(
                        "reshape {:?} → {:?} changes the element count",
                        x.shape, n.shape
                    ));
                }
                info.shift = nodes[ops[0].index()].shift;
            }
            _ => unreachable!("operand count checked above"),
        }
        if operand.is_some_and(|x| x.status == Status::Clear)
            && n.status == Status::Encrypted
            && !matches!(
                n.op,
                IntOp::Linear { .. } | IntOp::Affine { .. } | IntOp::Conv(_) | IntOp::Reshape
            )
        {
            err("encrypted result from a clear operand".into());
        }
        // a structurally sound node: its stored range must agree with its operands'
        if errors.len() == errors_before {
            if let Some(reason) = crate::bounds::sound_range(c, id)
                .and_then(|sound| crate::bounds::check_range(n.range, sound))
            {
                errors.push(VerifyError {
                    node: n.name.clone(),
                    reason,
                });
            }
        }
        nodes.push(info);
    }
    for (i, &id) in c.inputs.iter().enumerate() {
        if !matches!(c.node(id).op, IntOp::Input { index, .. } if index == i) {
            errors.push(VerifyError {
                node: c.node(id).name.clone(),
                reason: format!("inputs[{i}] is not input #{i}"),
            });
        }
    }
    for &id in &c.outputs {
        if nodes[id.index()].shift != 0 {
            errors.push(VerifyError {
                node: c.node(id).name.clone(),
                reason: "a rounded value cannot be an output".into(),
            });
        }
    }
    let encrypted: Vec<NodeId> = c
        .ids()
        .filter(|&id| c.node(id).status == Status::Encrypted)
        .collect();
    let max_bits = encrypted
        .iter()
        .map(|id| nodes[id.index()].bits)
        .max()
        .unwrap_or(1);
    let violations = encrypted
        .iter()
        .filter(|id| nodes[id.index()].bits > MAX_BITS)
        .map(|&id| {
            let n = c.node(id);
            let range = match n.op {
                // (an operand-less rounding was reported above; its own range stands)
                IntOp::Round { drop_bits, .. } => match c.operands(id).first() {
                    Some(&x) => Range::new(
                        0,
                        c.node(x)
                            .range
                            .hi
                            .max(0)
                            .saturating_add(1i64 << drop_bits.saturating_sub(1).min(62)),
                    ),
                    None => n.range,
                },
                _ => n.range,
            };
            Violation {
                node: n.name.clone(),
                op: n.op.name().into(),
                bits: nodes[id.index()].bits,
                range,
            }
        })
        .collect();
    if max_bits > 60 {
        errors.push(VerifyError {
            node: "<circuit>".into(),
            reason: format!("{max_bits}-bit values cannot be encoded on a 64-bit torus"),
        });
    }
    for id in c.ids() {
        if let IntOp::Lut { precision, .. } = c.node(id).op {
            let Some(&x) = c.operands(id).first() else {
                continue; // reported above
            };
            if precision.saturating_add(nodes[x.index()].shift) > max_bits {
                errors.push(VerifyError {
                    node: c.node(id).name.clone(),
                    reason: "table precision exceeds the encoding width".into(),
                });
            }
        }
    }
    if !errors.is_empty() {
        return Err(VerifyErrors(errors));
    }
    Ok(CircuitInfo {
        encoding_bits: max_bits,
        nodes,
        tlu_count,
        rounding_pbs,
        pbs_per_sample: tlu_count + rounding_pbs,
        max_tlu_bits,
        max_bits,
        rounding_chunk_bits: chunk_bits,
        violations,
    })
}
