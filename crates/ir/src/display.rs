//! The circuit's text form, one line per node, for listings and golden tests.

use std::fmt;

use crate::{Circuit, IntOp, Status};

impl fmt::Display for Circuit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for id in self.ids() {
            let n = self.node(id);
            let args: Vec<String> = self
                .operands(id)
                .iter()
                .map(|o| format!("%{}", o.index()))
                .collect();
            let detail = match &n.op {
                IntOp::Input { index, bits } => format!("#{index} u{bits}"),
                IntOp::Linear {
                    inputs,
                    outputs,
                    weight,
                    ..
                } => {
                    format!(
                        "{inputs}->{outputs} max|w|={}",
                        weight.iter().map(|w| w.abs()).max().unwrap_or(0)
                    )
                }
                IntOp::Affine { terms, .. } => format!(
                    "terms={} max|w|={}",
                    terms.len(),
                    terms.iter().map(|t| t.weight.abs()).max().unwrap_or(0)
                ),
                IntOp::Conv(c) => format!(
                    "{}->{} kernel={:?} strides={:?} groups={} max|w|={}",
                    c.in_channels,
                    c.out_channels,
                    c.kernel,
                    c.strides,
                    c.groups,
                    c.weight.iter().map(|w| w.abs()).max().unwrap_or(0)
                ),
                IntOp::Round {
                    drop_bits,
                    approximate,
                } => format!(
                    "drop={drop_bits}{}",
                    if *approximate { " approx" } else { "" }
                ),
                IntOp::Lut {
                    precision, tables, ..
                } => format!("p={precision} tables={}", tables.len()),
                IntOp::Reshape => String::new(),
            };
            let status = if n.status == Status::Encrypted {
                "enc"
            } else {
                "clear"
            };
            writeln!(
                f,
                "%{} = {} {} {} : {status} {:?} [{}, {}]  // {}",
                id.index(),
                n.op.name(),
                args.join(", "),
                detail,
                n.shape,
                n.range.lo,
                n.range.hi,
                n.name
            )?;
        }
        let outs: Vec<String> = self
            .outputs
            .iter()
            .map(|o| format!("%{}", o.index()))
            .collect();
        writeln!(f, "return {}", outs.join(", "))
    }
}
