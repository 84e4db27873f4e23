//! Predicted wall-clock latency of one sample from the cost model, following the
//! engine's schedule: nodes run one after another; the bootstrapped elements of a node
//! run in parallel on `threads` cores, each element's rounding chunks in sequence.

use fhec_ir::{Circuit, CircuitInfo, IntOp};

use crate::noise::{circuit_precisions, partition_of, rounding_precision};
use crate::params::ParamChoice;

/// Predicted milliseconds per sample on `threads` cores (key switches and bootstraps
/// only: leveled work is not modelled).
pub fn predicted_latency_ms(
    c: &Circuit,
    info: &CircuitInfo,
    choice: &ParamChoice,
    threads: usize,
) -> f64 {
    if !choice.needs_bootstrap() {
        return 0.0;
    }
    let precisions = circuit_precisions(c, info);
    let cost = |precision: u32| choice.partitions[partition_of(&precisions, precision)].cost_ms;
    c.ids()
        .map(|id| {
            let node = c.node(id);
            let per_element = match node.op {
                IntOp::Lut { precision, .. } => cost(precision),
                IntOp::Round {
                    drop_bits,
                    approximate: false,
                } if drop_bits > 0 => {
                    let precision = rounding_precision(drop_bits, info.rounding_chunk_bits);
                    cost(precision)
                        * fhec_ir::rounding_pbs_count(drop_bits, info.rounding_chunk_bits) as f64
                }
                _ => return 0.0,
            };
            node.numel().div_ceil(threads.max(1)) as f64 * per_element
        })
        .sum()
}
