//! Sound ranges: every value a node can take, by interval arithmetic from its operands'
//! stored ranges, its weights, biases and tables.
//!
//! A node's stored range is its *design* range: calibrated on the inputset, widened by
//! a margin, so usually narrower than the sound one (a value outside it is an overflow
//! the calibration accepted, as in Concrete). The verifier does not trust it blindly: it
//! recomputes the sound range and refuses a circuit whose values could leave 64-bit
//! arithmetic, or whose stored range holds no value its operands can produce (a range,
//! weight, bias or zero point that was altered).

use crate::{Circuit, IntOp, NodeId, Range};

/// Largest magnitude a sound range may reach: the clear interpreter and the encoder
/// compute in `i64`, and a weight or bias that could push a value past this is not one
/// any quantized model has.
pub const MAX_SOUND_MAGNITUDE: i128 = 1 << 62;

/// The sound range of node `id`, in `i128` (saturating), or `None` when its structure
/// is too broken to read (the verifier has reported that already).
pub(crate) fn sound_range(c: &Circuit, id: NodeId) -> Option<(i128, i128)> {
    let n = c.node(id);
    let ops = c.operands(id);
    let range_of = |slot: usize| -> Option<(i128, i128)> {
        ops.get(slot).map(|&o| {
            let r = c.node(o).range;
            (i128::from(r.lo), i128::from(r.hi))
        })
    };
    // the interval of w·x for x in [lo, hi]
    let times = |w: i64, (lo, hi): (i128, i128)| -> (i128, i128) {
        let w = i128::from(w);
        let (a, b) = (w.saturating_mul(lo), w.saturating_mul(hi));
        (a.min(b), a.max(b))
    };
    let hull = |parts: &mut dyn Iterator<Item = (i128, i128)>| -> Option<(i128, i128)> {
        parts.fold(None, |acc, (lo, hi)| match acc {
            None => Some((lo, hi)),
            Some((a, b)) => Some((a.min(lo), b.max(hi))),
        })
    };
    match &n.op {
        IntOp::Input { bits, .. } => Some((0, (1i128 << (*bits).min(62)) - 1)),
        IntOp::Linear {
            inputs,
            outputs,
            weight,
            bias,
        } => {
            let x = range_of(0)?;
            if *inputs == 0 || weight.len() != inputs.checked_mul(*outputs)? {
                return None;
            }
            hull(&mut weight.chunks(*inputs).zip(bias).map(|(row, &b)| {
                row.iter()
                    .fold((i128::from(b), i128::from(b)), |(lo, hi), &w| {
                        let (a, z) = times(w, x);
                        (lo.saturating_add(a), hi.saturating_add(z))
                    })
            }))
        }
        IntOp::Affine {
            row_start,
            terms,
            bias,
        } => {
            let mut rows = Vec::with_capacity(bias.len());
            for (j, &b) in bias.iter().enumerate() {
                let (start, end) = (*row_start.get(j)? as usize, *row_start.get(j + 1)? as usize);
                let (mut lo, mut hi) = (i128::from(b), i128::from(b));
                for t in terms.get(start..end)? {
                    let (a, z) = times(t.weight, range_of(t.operand as usize)?);
                    lo = lo.saturating_add(a);
                    hi = hi.saturating_add(z);
                }
                rows.push((lo, hi));
            }
            hull(&mut rows.into_iter())
        }
        IntOp::Conv(conv) => {
            let x = range_of(0)?;
            let per_out = conv.weight.len().checked_div(conv.out_channels)?;
            let per_bias = conv.bias.len().checked_div(conv.out_channels)?;
            if per_out == 0 || per_bias == 0 {
                return None;
            }
            hull(
                &mut conv
                    .weight
                    .chunks(per_out)
                    .zip(conv.bias.chunks(per_bias))
                    .map(|(ws, bs)| {
                        // padding reads 0: each tap adds w·x or nothing
                        let (lo, hi) = ws.iter().fold((0i128, 0i128), |(lo, hi), &w| {
                            let (a, z) = times(w, x);
                            (lo.saturating_add(a.min(0)), hi.saturating_add(z.max(0)))
                        });
                        let b_lo = bs.iter().copied().min().unwrap_or(0);
                        let b_hi = bs.iter().copied().max().unwrap_or(0);
                        (
                            lo.saturating_add(i128::from(b_lo)),
                            hi.saturating_add(i128::from(b_hi)),
                        )
                    }),
            )
        }
        IntOp::Round { drop_bits, .. } => {
            let (lo, hi) = range_of(0)?;
            let d = (*drop_bits).min(126);
            // exact rounding gives (x + 2^(d−1)) >> d, an approximate one may read one more
            Some((lo >> d, (hi >> d).saturating_add(1)))
        }
        IntOp::Lut {
            precision, tables, ..
        } => {
            let (lo, hi) = range_of(0)?;
            let top = (1i128 << (*precision).min(20)) - 1;
            let (lo, hi) = (lo.max(0) as usize, hi.min(top) as usize);
            if lo > hi {
                return None;
            }
            hull(&mut tables.iter().filter_map(|t| {
                let read = t.get(lo..=hi.min(t.len().checked_sub(1)?))?;
                let lo = read.iter().copied().min()?;
                let hi = read.iter().copied().max()?;
                Some((i128::from(lo), i128::from(hi)))
            }))
        }
        IntOp::Reshape => range_of(0),
    }
}

/// Why a node's stored range cannot be trusted, if it cannot.
pub(crate) fn check_range(stored: Range, sound: (i128, i128)) -> Option<String> {
    let (lo, hi) = sound;
    if lo < -MAX_SOUND_MAGNITUDE || hi > MAX_SOUND_MAGNITUDE {
        return Some(format!(
            "its values can reach [{lo}, {hi}], beyond 2^62: a weight or bias is out of proportion"
        ));
    }
    if i128::from(stored.hi) < lo || i128::from(stored.lo) > hi {
        return Some(format!(
            "its range [{}, {}] holds no value its operands can give ([{lo}, {hi}]): a range, weight, bias or zero point was altered",
            stored.lo, stored.hi
        ));
    }
    None
}
