//! Circuit → MLIR text in the FHE / FHELinalg dialects Concrete uses, for people who
//! read circuits. Ops of unregistered dialects are printed in MLIR's generic form.
//!
//! Types follow Concrete's conventions and fhec's execution: every ciphertext runs at
//! the circuit's encoding width W, so leveled ops take and return `!FHE.eint<W>` with
//! clear operands `i(W+1)`; a rounding narrows to `!FHE.eint<W − drop>`; a table lookup
//! has one entry per value of its input type.
//!
//! Lowering (docs/MLIR.md): `Linear` → `FHELinalg.matmul_eint_int` + `FHELinalg.add_eint_int`;
//! `Round` → `FHELinalg.round`; `Lut` → `FHELinalg.apply_lookup_table` (one table) or
//! `FHELinalg.apply_mapped_lookup_table` (per-element tables); `Affine` → one
//! `FHELinalg.matmul_eint_int` per operand, summed; `Reshape` → `tensor.collapse_shape`
//! when it merges dimensions, else nothing (values keep their operand's layout).

use std::fmt::Write;

#[cfg(feature = "mlir-verify")]
mod verify;
#[cfg(feature = "mlir-verify")]
pub use verify::{verify_with_mlir, MlirError};

use fhec_ir::{Circuit, CircuitInfo, IntOp, NodeId};

/// Prints the circuit as an MLIR module with one function `@main`.
pub fn to_mlir(c: &Circuit, info: &CircuitInfo, title: &str) -> String {
    let mut e = Emitter {
        c,
        info,
        body: String::new(),
        next: 0,
        shapes: Vec::with_capacity(c.len()),
    };
    for id in c.ids() {
        let n = c.node(id);
        let shape = match &n.op {
            IntOp::Affine { .. } => vec![1, n.numel()],
            IntOp::Round { .. } | IntOp::Lut { .. } => e.shapes[c.operands(id)[0].index()].clone(),
            // a reshape is emitted only when it merges dimensions; otherwise the value
            // keeps its operand's layout (same elements, same order)
            IntOp::Reshape => {
                let from = &e.shapes[c.operands(id)[0].index()];
                if *from == n.shape || collapse_groups(from, &n.shape).is_some() {
                    n.shape.clone()
                } else {
                    from.clone()
                }
            }
            _ => n.shape.clone(),
        };
        e.shapes.push(shape);
    }
    let args: Vec<String> = c
        .inputs
        .iter()
        .enumerate()
        .map(|(i, &id)| format!("%arg{i}: {}", e.ty(id)))
        .collect();
    let results: Vec<String> = c.outputs.iter().map(|&id| e.ty(id)).collect();
    let mut names: Vec<String> = vec![String::new(); c.len()];
    for (i, &id) in c.inputs.iter().enumerate() {
        names[id.index()] = format!("%arg{i}");
    }
    for id in c.ids() {
        if let Some(name) = e.node(id, &names) {
            names[id.index()] = name;
        }
    }
    let rets: Vec<String> = c.outputs.iter().map(|o| names[o.index()].clone()).collect();
    let mut out = String::new();
    let _ = writeln!(out, "// fhec {}: {title}", env!("CARGO_PKG_VERSION"));
    let _ = writeln!(
        out,
        "// encoding width {} bits, {} table lookups, {} rounding bootstraps per sample",
        info.encoding_bits, info.tlu_count, info.rounding_pbs
    );
    let _ = writeln!(out, "module {{");
    let _ = writeln!(
        out,
        "  func.func @main({}) -> ({}) {{",
        args.join(", "),
        results.join(", ")
    );
    out.push_str(&e.body);
    let _ = writeln!(
        out,
        "    return {} : {}",
        rets.join(", "),
        results.join(", ")
    );
    let _ = writeln!(out, "  }}");
    let _ = writeln!(out, "}}");
    out
}

struct Emitter<'a> {
    c: &'a Circuit,
    info: &'a CircuitInfo,
    body: String,
    next: usize,
    /// The shape each node's value has in the module: its own, except that an affine
    /// map's result stays flat (`[1, m]`) and element-wise ops keep their operand's.
    /// Concrete's noise analysis has no rule for `tensor.reshape`, so fhec never
    /// unflattens an affine result.
    shapes: Vec<Vec<usize>>,
}

fn dims(shape: &[usize]) -> String {
    shape.iter().map(|d| format!("{d}x")).collect()
}

/// The tensor type `ty` (of FHE integers) with another shape.
fn with_shape(ty: &str, shape: &[usize]) -> String {
    let elem = &ty[ty.find('!').expect("tensor of FHE integers")..ty.len() - 1];
    format!("tensor<{}{elem}>", dims(shape))
}

/// A dense literal of `values` with `shape`, nested row-major.
fn dense(values: &[i64], shape: &[usize]) -> String {
    if shape.len() <= 1 {
        return format!(
            "[{}]",
            values
                .iter()
                .map(|v| v.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let chunk = values.len() / shape[0].max(1);
    let parts: Vec<String> = values
        .chunks(chunk.max(1))
        .map(|c| dense(c, &shape[1..]))
        .collect();
    format!("[{}]", parts.join(", "))
}

/// The reassociation `[[0], [1, 2], …]` when `to` merges runs of consecutive dimensions
/// of `from` (trailing size-1 dimensions join the last run), else `None`.
fn collapse_groups(from: &[usize], to: &[usize]) -> Option<String> {
    if to.is_empty() || to.len() >= from.len() {
        return None;
    }
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut i = 0;
    for &d in to {
        let first = i;
        let mut size = *from.get(i)?;
        i += 1;
        while size < d {
            size *= *from.get(i)?;
            i += 1;
        }
        if size != d {
            return None;
        }
        groups.push((first..i).collect());
    }
    if from[i..].iter().any(|&d| d != 1) {
        return None;
    }
    groups.last_mut()?.extend(i..from.len());
    let inner: Vec<String> = groups
        .iter()
        .map(|g| {
            let dims: Vec<String> = g.iter().map(|v| v.to_string()).collect();
            format!("[{}]", dims.join(", "))
        })
        .collect();
    Some(format!("[{}]", inner.join(", ")))
}

impl Emitter<'_> {
    /// Width of a node's encrypted elements: W, or W − drop after a rounding.
    fn elem_bits(&self, id: NodeId) -> u32 {
        match self.c.node(id).op {
            IntOp::Round { drop_bits, .. } => self.info.encoding_bits - drop_bits,
            IntOp::Reshape => self.elem_bits(self.c.operands(id)[0]),
            _ => self.info.encoding_bits,
        }
    }

    fn ty(&self, id: NodeId) -> String {
        let n = self.c.node(id);
        let bits = self.elem_bits(id);
        let elem = if n.range.lo < 0 {
            format!("!FHE.esint<{bits}>")
        } else {
            format!("!FHE.eint<{bits}>")
        };
        format!("tensor<{}{elem}>", dims(&self.shapes[id.index()]))
    }

    fn fresh(&mut self) -> String {
        self.next += 1;
        format!("%{}", self.next - 1)
    }

    fn constant(&mut self, values: &[i64], shape: &[usize], elem: &str) -> String {
        let name = self.fresh();
        let ty = format!("tensor<{}{elem}>", dims(shape));
        let _ = writeln!(
            self.body,
            "    {name} = arith.constant dense<{}> : {ty}",
            dense(values, shape)
        );
        name
    }

    /// `ty(id)` with another shape.
    fn ty_with_shape(&self, id: NodeId, shape: &[usize]) -> String {
        with_shape(&self.ty(id), shape)
    }

    /// `x` (of type `x_ty`, shape `from`) reshaped to `to`, emitting ops if needed:
    /// `tensor.collapse_shape` (it reads the same in every MLIR version, Concrete's too)
    /// when dimensions merge, else `tensor.reshape`.
    fn reshaped(&mut self, x: &str, x_ty: &str, from: &[usize], to: &[usize]) -> String {
        if from == to {
            return x.to_string();
        }
        let to_ty = with_shape(x_ty, to);
        let r_name;
        if let Some(groups) = collapse_groups(from, to) {
            r_name = self.fresh();
            let _ = writeln!(
                self.body,
                "    {r_name} = tensor.collapse_shape {x} {groups} : {x_ty} into {to_ty}"
            );
        } else {
            let shape: Vec<i64> = to.iter().map(|&d| d as i64).collect();
            let s = self.constant(&shape, &[shape.len()], "i64");
            r_name = self.fresh();
            let _ = writeln!(
                self.body,
                "    {r_name} = \"tensor.reshape\"({x}, {s}) : ({x_ty}, tensor<{}xi64>) -> {to_ty}",
                shape.len()
            );
        }
        r_name
    }

    /// Emits the ops of one node; returns the SSA name of its value.
    fn node(&mut self, id: NodeId, names: &[String]) -> Option<String> {
        let n = self.c.node(id);
        let ops = self.c.operands(id);
        let x = ops.first().map(|o| (names[o.index()].clone(), self.ty(*o)));
        let out_ty = self.ty(id);
        // clear operands are one bit wider than the encrypted precision they meet; values
        // are taken modulo 2^(W+1) like every ciphertext, so they are printed in range
        let w = self.info.encoding_bits;
        let clear_bits = w + 1;
        let clear = format!("i{clear_bits}");
        let wrap = |v: i64| (v + (1i64 << w)).rem_euclid(1i64 << (w + 1)) - (1i64 << w);
        let result = match &n.op {
            IntOp::Input { .. } => return None,
            IntOp::Linear {
                inputs,
                outputs,
                weight,
                bias,
            } => {
                let (x, x_ty) = x.unwrap();
                // a flat affine result read over its last axis: give it its shape back
                let src = ops[0];
                let (x, x_ty) = if self.shapes[src.index()] != self.c.node(src).shape {
                    let shape = self.c.node(src).shape.clone();
                    let from = self.shapes[src.index()].clone();
                    (
                        self.reshaped(&x, &x_ty, &from, &shape),
                        self.ty_with_shape(src, &shape),
                    )
                } else {
                    (x, x_ty)
                };
                let mut wt = vec![0; weight.len()];
                for j in 0..*outputs {
                    for i in 0..*inputs {
                        wt[i * outputs + j] = wrap(weight[j * inputs + i]);
                    }
                }
                let w = self.constant(&wt, &[*inputs, *outputs], &clear);
                let mm = self.fresh();
                let _ = writeln!(self.body, "    {mm} = \"FHELinalg.matmul_eint_int\"({x}, {w}) : ({x_ty}, tensor<{inputs}x{outputs}xi{clear_bits}>) -> {out_ty}");
                let bias: Vec<i64> = bias.iter().map(|&b| wrap(b)).collect();
                let b = self.constant(&bias, &[*outputs], &clear);
                let r = self.fresh();
                let _ = writeln!(self.body, "    {r} = \"FHELinalg.add_eint_int\"({mm}, {b}) : ({out_ty}, tensor<{outputs}xi{clear_bits}>) -> {out_ty}");
                r
            }
            IntOp::Affine {
                row_start,
                terms,
                bias,
            } => {
                let m = n.numel();
                let elem = if n.range.lo < 0 {
                    format!("!FHE.esint<{w}>")
                } else {
                    format!("!FHE.eint<{w}>")
                };
                let row_ty = format!("tensor<1x{m}x{elem}>");
                let mut sum: Option<String> = None;
                for (slot, &o) in ops.iter().enumerate() {
                    let src = self.c.node(o);
                    let k = src.numel();
                    let mut wt = vec![0i64; k * m];
                    for j in 0..m {
                        for t in fhec_ir::affine_row(row_start, terms, j) {
                            if t.operand as usize == slot {
                                wt[t.index as usize * m + j] += t.weight;
                            }
                        }
                    }
                    let wt: Vec<i64> = wt.into_iter().map(wrap).collect();
                    let flat = self.reshaped(
                        &names[o.index()],
                        &self.ty(o),
                        &self.shapes[o.index()].clone(),
                        &[1, k],
                    );
                    let flat_ty = self.ty_with_shape(o, &[1, k]);
                    let wc = self.constant(&wt, &[k, m], &clear);
                    let mm = self.fresh();
                    let _ = writeln!(self.body, "    {mm} = \"FHELinalg.matmul_eint_int\"({flat}, {wc}) : ({flat_ty}, tensor<{k}x{m}xi{clear_bits}>) -> {row_ty}");
                    sum = Some(match sum {
                        None => mm,
                        Some(prev) => {
                            let r = self.fresh();
                            let _ = writeln!(self.body, "    {r} = \"FHELinalg.add_eint\"({prev}, {mm}) : ({row_ty}, {row_ty}) -> {row_ty}");
                            r
                        }
                    });
                }
                let bias: Vec<i64> = bias.iter().map(|&b| wrap(b)).collect();
                let b = self.constant(&bias, &[m], &clear);
                let r = self.fresh();
                let _ = writeln!(self.body, "    {r} = \"FHELinalg.add_eint_int\"({}, {b}) : ({row_ty}, tensor<{m}xi{clear_bits}>) -> {row_ty}", sum.expect("an affine map has an operand"));
                r
            }
            IntOp::Round { approximate, .. } => {
                let (x, x_ty) = x.unwrap();
                if *approximate {
                    // fhec reads the top bits in the table lookup's own bootstrap
                    let _ = writeln!(
                        self.body,
                        "    // approximate rounding (no bootstrap of its own)"
                    );
                }
                let r = self.fresh();
                // the result type, drop_bits narrower, states the precision kept
                let _ = writeln!(
                    self.body,
                    "    {r} = \"FHELinalg.round\"({x}) : ({x_ty}) -> {out_ty}"
                );
                r
            }
            IntOp::Lut {
                precision,
                tables,
                table_of,
            } => {
                let (x, x_ty) = x.unwrap();
                // one entry per value of the input type; fhec reads the low p+1 bits and
                // negates the table in the upper half (the bootstrap's negacyclic half)
                let q = self.elem_bits(ops[0]);
                let size = 1usize << q;
                let full = |t: &[i64]| -> Vec<i64> {
                    (0..size)
                        .map(|v| {
                            let idx = v % (1 << (precision + 1));
                            if idx < 1 << precision {
                                wrap(t[idx])
                            } else {
                                wrap(-t[idx - (1 << precision)])
                            }
                        })
                        .collect()
                };
                if tables.len() == 1 {
                    let t = self.constant(&full(&tables[0]), &[size], "i64");
                    let r = self.fresh();
                    let _ = writeln!(self.body, "    {r} = \"FHELinalg.apply_lookup_table\"({x}, {t}) : ({x_ty}, tensor<{size}xi64>) -> {out_ty}");
                    r
                } else {
                    let flat: Vec<i64> = tables.iter().flat_map(|t| full(t)).collect();
                    let t = self.constant(&flat, &[tables.len(), size], "i64");
                    let map: Vec<i64> = table_of.iter().map(|&v| v as i64).collect();
                    let shape = self.shapes[id.index()].clone();
                    let m = self.constant(&map, &shape, "index");
                    let r = self.fresh();
                    let _ = writeln!(
                        self.body,
                        "    {r} = \"FHELinalg.apply_mapped_lookup_table\"({x}, {t}, {m}) : ({x_ty}, tensor<{}x{size}xi64>, tensor<{}index>) -> {out_ty}",
                        tables.len(),
                        dims(&shape)
                    );
                    r
                }
            }
            IntOp::Reshape => {
                let src = ops[0];
                let (x, x_ty) = (names[src.index()].clone(), self.ty(src));
                let (from, to) = (
                    self.shapes[src.index()].clone(),
                    self.shapes[id.index()].clone(),
                );
                // equal, or a collapse (the layout pass above guarantees it)
                self.reshaped(&x, &x_ty, &from, &to)
            }
        };
        Some(result)
    }
}
