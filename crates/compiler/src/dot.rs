//! `inspect --format dot`: the circuit as a Graphviz graph, each node coloured by its
//! bit-width (green for narrow, red at 16 bits) and the values over 16 bits marked, so
//! a user sees where the width goes (`fhec inspect m.fhe --format dot | dot -Tsvg`).

use std::fmt::Write;

use crate::report::Report;

/// Fill colour of a `bits`-wide encrypted value: hue from green (1 bit) to red (16).
fn fill(bits: u32) -> String {
    let t = (f64::from(bits.clamp(1, fhec_ir::MAX_BITS)) - 1.0) / f64::from(fhec_ir::MAX_BITS - 1);
    format!("{:.3} 0.45 1.0", 0.33 * (1.0 - t))
}

/// Escapes a string for a double-quoted DOT identifier.
fn quoted(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

pub fn dot(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "digraph \"{}\" {{", quoted(&r.source));
    let _ = writeln!(
        out,
        "  rankdir=TB;\n  node [shape=box, style=\"rounded,filled\", fontname=\"Helvetica\", fontsize=10];\n  labelloc=t;\n  label=\"{}: {} PBS per sample, widest value {} bits{}\";",
        quoted(&r.source),
        r.pbs_per_sample,
        r.max_bits,
        if r.violations.is_empty() {
            String::new()
        } else {
            format!(", {} over {} bits (red border)", r.violations.len(), fhec_ir::MAX_BITS)
        }
    );
    for n in &r.nodes {
        let over = r.violations.iter().any(|v| v.node == n.name);
        let mut label = format!("{}\\n{} {:?}", quoted(&n.name), n.op, n.shape);
        let _ = write!(label, "\\n{} bits [{}, {}]", n.bits, n.range[0], n.range[1]);
        if n.pbs > 0 {
            let _ = write!(label, "\\n{} PBS", n.pbs);
        }
        let style = if !n.encrypted {
            "fillcolor=\"white\", style=\"rounded,dashed\"".to_string()
        } else if over {
            "fillcolor=\"0.0 0.6 1.0\", color=\"red\", penwidth=3".to_string()
        } else {
            format!("fillcolor=\"{}\"", fill(n.bits))
        };
        let _ = writeln!(out, "  n{} [label=\"{label}\", {style}];", n.id);
    }
    for n in &r.nodes {
        for o in &n.operands {
            let _ = writeln!(out, "  n{o} -> n{};", n.id);
        }
    }
    out.push_str("}\n");
    out
}
