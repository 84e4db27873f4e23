//! Circuit → MLIR text in the FHE / FHELinalg dialects Concrete uses, for people who
//! read circuits. Ops of unregistered dialects are printed in MLIR's generic form.
//!
//! Types follow Concrete's conventions and fhec's execution: every ciphertext runs at
//! the circuit's encoding width W, so leveled ops take and return `!FHE.eint<W>` with
//! clear operands `i(W+1)`; a rounding narrows to the width of its own range (its operand
//! first multiplied up so that the rounding drops only its own low bits), and a lookup on
//! an unrounded operand narrower than W narrows it the same way; a table lookup has one
//! entry per value of its input type, so Concrete looks up as many bits as fhec does.
//!
//! Lowering (docs/MLIR.md): `Linear` → `FHELinalg.matmul_eint_int` + `FHELinalg.add_eint_int`;
//! `Round` → `FHELinalg.round`; `Lut` → `FHELinalg.apply_lookup_table` (one table) or
//! `FHELinalg.apply_mapped_lookup_table` (per-element tables); `Conv` →
//! `FHELinalg.conv2d` (two spatial axes, or one lifted to two; 3-D as an affine map); `Affine` → one
//! `FHELinalg.matmul_eint_int` per operand, summed; `Reshape` → `tensor.collapse_shape`
//! when it merges dimensions, else nothing (values keep their operand's layout).

// No panic on user input (docs/ARCHITECTURE.md): unwrap, expect and panic! are refused
// outside tests; the few invariants left carry a justified `allow`.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

use std::fmt::Write;

#[cfg(feature = "mlir-verify")]
mod verify;
#[cfg(feature = "mlir-verify")]
pub use verify::{verify_with_mlir, MlirError};

use fhec_ir::{Circuit, CircuitInfo, IntOp, NodeId};

/// Prints the circuit as an MLIR module with one function `@main`.
pub fn to_mlir(c: &Circuit, info: &CircuitInfo, title: &str) -> String {
    let (shapes, sparse) = layout(c);
    let mut e = Emitter {
        c,
        info,
        body: String::new(),
        next: 0,
        shapes,
        sparse,
        indices: Default::default(),
    };
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

/// Each node's shape in the module and whether its flat map is emitted element by
/// element. A value keeps its own shape, except that an affine map emitted as matmuls
/// stays flat (`[1, m]`; Concrete has no noise rule for `tensor.reshape`, so it is
/// never unflattened) and element-wise ops keep their operand's layout.
fn layout(c: &Circuit) -> (Vec<Vec<usize>>, Vec<bool>) {
    let mut shapes: Vec<Vec<usize>> = Vec::with_capacity(c.len());
    let mut by_element = Vec::with_capacity(c.len());
    for id in c.ids() {
        let n = c.node(id);
        let mut element_wise = false;
        let shape = match &n.op {
            // an affine map emitted element by element builds its result in its own
            // shape; one emitted as matmuls leaves it flat
            IntOp::Affine { .. } => {
                element_wise = sparse(c, id);
                if element_wise {
                    n.shape.clone()
                } else {
                    vec![1, n.numel()]
                }
            }
            IntOp::Conv(conv) => {
                let x = c.operands(id)[0];
                if structured(conv, &shapes[x.index()], &c.node(x).shape) {
                    n.shape.clone()
                } else {
                    element_wise = sparse(c, id);
                    if element_wise {
                        n.shape.clone()
                    } else {
                        vec![1, n.numel()]
                    }
                }
            }
            IntOp::Round { .. } | IntOp::Lut { .. } => shapes[c.operands(id)[0].index()].clone(),
            // a reshape is emitted only when it merges dimensions; otherwise the value
            // keeps its operand's layout (same elements, same order)
            IntOp::Reshape => {
                let from = &shapes[c.operands(id)[0].index()];
                if *from == n.shape || collapse_groups(from, &n.shape).is_some() {
                    n.shape.clone()
                } else {
                    from.clone()
                }
            }
            _ => n.shape.clone(),
        };
        shapes.push(shape);
        by_element.push(element_wise);
    }
    (shapes, by_element)
}

/// The nodes whose flat map the module computes element by element (see [`sparse`]).
pub fn element_wise_maps(c: &Circuit) -> Vec<NodeId> {
    let (_, by_element) = layout(c);
    c.ids().filter(|id| by_element[id.index()]).collect()
}

struct Emitter<'a> {
    c: &'a Circuit,
    info: &'a CircuitInfo,
    body: String,
    next: usize,
    /// The shape each node's value has in the module ([`layout`]).
    shapes: Vec<Vec<usize>>,
    /// Whether each node's flat map is emitted element by element (see [`sparse`]).
    sparse: Vec<bool>,
    /// Index constants already defined (`%c<i>`), for `tensor.extract`.
    indices: std::collections::HashMap<usize, String>,
}

/// Bits of the values `0..=hi` (at least 1).
fn range_bits(hi: i64) -> u32 {
    fhec_ir::bits_for_range(fhec_ir::Range::new(0, hi.max(1)))
}

fn dims(shape: &[usize]) -> String {
    shape.iter().map(|d| format!("{d}x")).collect()
}

/// The tensor type `ty` (of FHE integers) with another shape.
fn with_shape(ty: &str, shape: &[usize]) -> String {
    // the emitter's own tensor types, `tensor<…x!FHE.eint<W>>`
    let elem = ty
        .find('!')
        .map_or(ty, |i| &ty[i..ty.len().saturating_sub(1).max(i)]);
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

/// Whether `conv` is emitted as `FHELinalg.conv2d`: one or two spatial axes (one is
/// lifted to two, see [`Emitter::conv2d`]), on an operand the module holds in its own
/// shape (Concrete cannot unflatten an affine result). Other convolutions (3-D ones:
/// Concrete has no conv3d) are emitted like an affine map.
fn structured(conv: &fhec_ir::Conv, emitted: &[usize], shape: &[usize]) -> bool {
    matches!(conv.in_sp.len(), 1 | 2) && emitted == shape
}

/// A 1-D convolution as the 2-D one over a unit first spatial axis (what Concrete's
/// own frontend does); a 2-D one unchanged.
fn as_2d(conv: &fhec_ir::Conv) -> std::borrow::Cow<'_, fhec_ir::Conv> {
    if conv.in_sp.len() != 1 {
        return std::borrow::Cow::Borrowed(conv);
    }
    let unit = |v: &[usize], first: usize| [&[first][..], v].concat();
    std::borrow::Cow::Owned(fhec_ir::Conv {
        in_sp: unit(&conv.in_sp, 1),
        out_sp: unit(&conv.out_sp, 1),
        kernel: unit(&conv.kernel, 1),
        strides: unit(&conv.strides, 1),
        dilations: unit(&conv.dilations, 1),
        pad_begin: unit(&conv.pad_begin, 0),
        pad_end: unit(&conv.pad_end, 0),
        ..conv.clone()
    })
}

/// One output element of a flat map: its terms as (operand slot, flat index, weight).
type Row = Vec<(usize, usize, i64)>;

/// The rows of an `Affine`, or of a `Conv` emitted as a flat map.
fn flat_rows(c: &Circuit, id: NodeId) -> Vec<Row> {
    match &c.node(id).op {
        IntOp::Affine {
            row_start, terms, ..
        } => (0..row_start.len().saturating_sub(1))
            .map(|j| {
                fhec_ir::affine_row(row_start, terms, j)
                    .iter()
                    .map(|t| (t.operand as usize, t.index as usize, t.weight))
                    .collect()
            })
            .collect(),
        IntOp::Conv(conv) => (0..c.node(id).numel())
            .map(|j| {
                let mut row = Vec::new();
                conv.for_each_tap(j, |i, w| row.push((0, i, conv.weight[w])));
                row
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// Each operand's dense `[k, m]` weight matrix (row-major) of a flat map.
fn dense_weights(c: &Circuit, id: NodeId, rows: &[Row]) -> Vec<Vec<i64>> {
    let m = rows.len();
    let mut weights: Vec<Vec<i64>> = c
        .operands(id)
        .iter()
        .map(|&o| vec![0; c.node(o).numel() * m])
        .collect();
    for (j, row) in rows.iter().enumerate() {
        for &(slot, i, w) in row {
            weights[slot][i * m + j] += w;
        }
    }
    weights
}

/// Whether the flat map of node `id` (an `Affine`, or a `Conv` not emitted as
/// `FHELinalg.conv2d`) is emitted element by element — one `tensor.extract` per term,
/// gathered by `tensor.from_elements` — instead of as dense matmuls: when the dense
/// matrices would hold many times more entries than the map has terms (pooling,
/// gathers and data movement on large tensors), so the text grows with the terms, not
/// with input × output sizes.
fn sparse(c: &Circuit, id: NodeId) -> bool {
    let m = c.node(id).numel();
    let terms: usize = match &c.node(id).op {
        IntOp::Affine { terms, .. } => terms.len(),
        IntOp::Conv(conv) => (0..m)
            .map(|j| {
                let mut n = 0;
                conv.for_each_tap(j, |_, _| n += 1);
                n
            })
            .sum(),
        _ => return false,
    };
    let dense: usize = c.operands(id).iter().map(|&o| c.node(o).numel() * m).sum();
    terms > 0 && dense > 16 * terms + 4096
}

/// The offsets and strides per axis when the elements `at` (flat indices into a tensor
/// of shape `from`, one per element of shape `to`, row-major) are a strided slice of it:
/// `to`'s element `i` is `from`'s element `offsets + strides ⊙ i` (same rank). A pooling
/// window's position, a strided subsampling or a crop is one; a permutation is not.
fn strided_slice(from: &[usize], to: &[usize], at: &[usize]) -> Option<(Vec<usize>, Vec<usize>)> {
    let n: usize = to.iter().product();
    if from.len() != to.len() || at.len() != n || n == 0 {
        return None;
    }
    let unravel = |mut i: usize, shape: &[usize]| {
        let mut idx = vec![0; shape.len()];
        for d in (0..shape.len()).rev() {
            idx[d] = i % shape[d].max(1);
            i /= shape[d].max(1);
        }
        idx
    };
    let offsets = unravel(at[0], from);
    let mut strides = vec![1; to.len()];
    for d in 0..to.len() {
        if to[d] == 1 {
            continue;
        }
        let next = unravel(at[to[d + 1..].iter().product::<usize>()], from);
        let same_elsewhere = (0..to.len()).all(|e| e == d || next[e] == offsets[e]);
        if !same_elsewhere || next[d] <= offsets[d] {
            return None;
        }
        strides[d] = next[d] - offsets[d];
        if offsets[d] + (to[d] - 1) * strides[d] >= from[d] {
            return None;
        }
    }
    let mut from_strides = vec![1; from.len()];
    for d in (0..from.len().saturating_sub(1)).rev() {
        from_strides[d] = from_strides[d + 1] * from[d + 1];
    }
    let all = at.iter().enumerate().all(|(i, &a)| {
        let idx = unravel(i, to);
        let expected: usize = (0..to.len())
            .map(|d| (offsets[d] + idx[d] * strides[d]) * from_strides[d])
            .sum();
        expected == a
    });
    all.then_some((offsets, strides))
}

/// One strided slice of an operand, in its rank: `sizes` elements from `offsets` every
/// `strides` along each axis. A gather of lower rank reads it with the unit axes of
/// `sizes` it lacks dropped (a rank-reducing `tensor.extract_slice`).
#[derive(Clone, Debug, PartialEq)]
struct Slice {
    offsets: Vec<usize>,
    sizes: Vec<usize>,
    strides: Vec<usize>,
}

/// `to` with unit axes inserted to make it `rank` long, every way (only `to` itself when
/// it already is; none when it is longer).
fn lifted(to: &[usize], rank: usize) -> Vec<Vec<usize>> {
    let Some(units) = rank.checked_sub(to.len()) else {
        return Vec::new();
    };
    (0u32..1 << rank)
        .filter(|mask| mask.count_ones() as usize == units)
        .map(|mask| {
            let mut rest = to.iter();
            (0..rank)
                .map(|d| match mask >> d & 1 {
                    1 => 1,
                    _ => rest.next().copied().unwrap_or(1),
                })
                .collect()
        })
        .collect()
}

/// The elements `at` (per element of `to`, row-major) as one strided slice of a tensor
/// of shape `from`, read at `to`'s rank or with unit axes dropped: a reduction over an
/// axis without `keepdims`, one step of its tournament.
fn rank_reduced_slice(from: &[usize], to: &[usize], at: &[usize]) -> Option<Slice> {
    lifted(to, from.len()).into_iter().find_map(|sizes| {
        let (offsets, strides) = strided_slice(from, &sizes, at)?;
        Some(Slice {
            offsets,
            sizes,
            strides,
        })
    })
}

/// The axis a gather of shape `to` is stacked on: its first longer than 1, so that the
/// blocks are contiguous runs of its elements.
fn stack_axis(to: &[usize]) -> usize {
    to.iter().position(|&d| d > 1).unwrap_or(0)
}

/// The gather `picked` (per element of shape `to`, row-major: a flat index into a tensor
/// of shape `from` and its weight) as strided slices of `from` stacked on
/// [`stack_axis`]: `to[axis] / k` of it each, for the least such `k` (1: one slice). A
/// block whose weights are all 0 reads nothing that counts: it takes another block's
/// slice. A tournament level laid out step-major is such a stack (one block per step of
/// a window), as is a crop or a strided subsampling (one block).
fn stacked_slices(from: &[usize], to: &[usize], picked: &[(usize, i64)]) -> Option<Vec<Slice>> {
    let axis = stack_axis(to);
    let along = *to.get(axis)?;
    let n = picked.len();
    (1..=along).filter(|k| along % k == 0).find_map(|k| {
        let mut block = to.to_vec();
        block[axis] = along / k;
        // per block: `Some(None)` when its weights are all 0, `None` when it is no slice
        let slices: Vec<Option<Slice>> = picked
            .chunks((n / k).max(1))
            .map(|part| {
                if part.iter().all(|p| p.1 == 0) {
                    return Some(None);
                }
                let at: Vec<usize> = part.iter().map(|p| p.0).collect();
                Some(Some(rank_reduced_slice(from, &block, &at)?))
            })
            .collect::<Option<_>>()?;
        let any = slices.iter().flatten().next()?.clone();
        Some(
            slices
                .into_iter()
                .map(|s| s.unwrap_or_else(|| any.clone()))
                .collect(),
        )
    })
}

/// `v` modulo 2^(w+1), printed in `[−2^w, 2^w)`: clear operands are one bit wider than
/// the encrypted precision they meet, and values are taken modulo 2^(W+1) like every
/// ciphertext.
fn wrap_to(v: i64, w: u32) -> i64 {
    (v + (1i64 << w)).rem_euclid(1i64 << (w + 1)) - (1i64 << w)
}

/// `dense<[…]> : tensor<Nxi64>` of an attribute.
fn i64_attr(values: &[usize]) -> String {
    let v: Vec<i64> = values.iter().map(|&x| x as i64).collect();
    format!("dense<{}> : tensor<{}xi64>", dense(&v, &[v.len()]), v.len())
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
    /// Width of a node's encrypted elements: W, or after a rounding the width of its
    /// own range (the `Round` arm of [`Emitter::node`] moves its operand up for it).
    fn elem_bits(&self, id: NodeId) -> u32 {
        match self.c.node(id).op {
            IntOp::Round { drop_bits, .. } => {
                let kept = range_bits(self.c.node(id).range.hi);
                kept.min(self.info.encoding_bits - drop_bits)
            }
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

    /// A table operand `x` (node `src`, of type `x_ty`) that holds `p < W` bits at the
    /// bottom of a W-bit encoding, as `!FHE.eint<p>`: multiplied by 2^(W−p) it sits in
    /// the top bits, where a rounding to p bits is exact (the dropped bits are 0). The
    /// lookup then reads p bits, as fhec's bootstrap does, not W (and its table has
    /// 2^p entries). Returns the operand, its type and its width.
    fn narrowed(&mut self, src: NodeId, x: String, x_ty: String, p: u32) -> (String, String, u32) {
        let w = self.elem_bits(src);
        if w != self.info.encoding_bits || p >= w {
            return (x, x_ty, w);
        }
        let shifted = self.shifted_up(src, &x, &x_ty, w - p);
        let r_ty = x_ty.replace(&format!("!FHE.eint<{w}>"), &format!("!FHE.eint<{p}>"));
        let r = self.fresh();
        let _ = writeln!(
            self.body,
            "    {r} = \"FHELinalg.round\"({shifted}) : ({x_ty}) -> {r_ty}"
        );
        (r, r_ty, p)
    }

    /// `x` (node `src`, of type `x_ty`, W bits) multiplied by 2^`up`.
    fn shifted_up(&mut self, src: NodeId, x: &str, x_ty: &str, up: u32) -> String {
        let shape = self.shapes[src.index()].clone();
        let numel = shape.iter().product::<usize>();
        let clear = format!("i{}", self.info.encoding_bits + 1);
        let factor = self.constant(&vec![1i64 << up; numel], &shape, &clear);
        let shifted = self.fresh();
        let _ = writeln!(
            self.body,
            "    {shifted} = \"FHELinalg.mul_eint_int\"({x}, {factor}) : ({x_ty}, tensor<{}{clear}>) -> {x_ty}",
            dims(&shape)
        );
        shifted
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

    /// A map over flat operands: one `FHELinalg.matmul_eint_int` per operand (`weights[s]`
    /// is `[k_s, m]` row-major), summed, plus `bias`; the result `[1, m]`.
    fn flat_affine(
        &mut self,
        id: NodeId,
        ops: &[NodeId],
        names: &[String],
        weights: Vec<Vec<i64>>,
        bias: &[i64],
    ) -> String {
        let n = self.c.node(id);
        let m = n.numel();
        let w = self.info.encoding_bits;
        let clear_bits = w + 1;
        let clear = format!("i{clear_bits}");
        let wrap = |v: i64| wrap_to(v, w);
        let row_ty = self.ty(id);
        let mut sum: Option<String> = None;
        for (&o, wt) in ops.iter().zip(weights) {
            let k = self.c.node(o).numel();
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
        let sum = self.sum_or_zero(sum, &row_ty);
        let r = self.fresh();
        let _ = writeln!(self.body, "    {r} = \"FHELinalg.add_eint_int\"({sum}, {b}) : ({row_ty}, tensor<{m}xi{clear_bits}>) -> {row_ty}");
        r
    }

    /// A flat map element by element (see [`sparse`]): per operand and per term
    /// position `t`, the `t`-th term of every row is gathered into one tensor of the
    /// node's own shape (`tensor.extract` each, `tensor.from_elements`; a row with fewer
    /// terms repeats an element at weight 0), multiplied by its weights, and the gathers
    /// summed with the bias. The result keeps its shape, so a convolution reading it
    /// stays `FHELinalg.conv2d`.
    fn sparse_map(
        &mut self,
        id: NodeId,
        ops: &[NodeId],
        names: &[String],
        rows: &[Row],
        bias: &[i64],
    ) -> String {
        let shape = self.shapes[id.index()].clone();
        let w = self.info.encoding_bits;
        let clear = format!("i{}", w + 1);
        let clear_ty = format!("tensor<{}{clear}>", dims(&shape));
        let row_ty = self.ty(id);
        let mut sum: Option<String> = None;
        for (slot, &o) in ops.iter().enumerate() {
            let per_row: Vec<Vec<(usize, i64)>> = rows
                .iter()
                .map(|r| {
                    r.iter()
                        .filter(|t| t.0 == slot)
                        .map(|t| (t.1, t.2))
                        .collect()
                })
                .collect();
            let positions = per_row.iter().map(Vec::len).max().unwrap_or(0);
            if positions == 0 {
                continue;
            }
            let k = self.c.node(o).numel();
            let from = self.shapes[o.index()].clone();
            let flat_ty = self.ty_with_shape(o, &[1, k]);
            let gather_ty = self.ty_with_shape(o, &shape);
            let mut flat: Option<String> = None;
            for t in 0..positions {
                let picked: Vec<(usize, i64)> = per_row
                    .iter()
                    .map(|r| {
                        r.get(t)
                            .copied()
                            .unwrap_or((r.first().map_or(0, |f| f.0), 0))
                    })
                    .collect();
                let gathered = if let Some(slices) = stacked_slices(&from, &shape, &picked) {
                    self.stacked(&names[o.index()], o, &slices, &shape)
                } else {
                    // flattened once, at the first gather that reads elements
                    let flat = match &flat {
                        Some(f) => f.clone(),
                        None => flat
                            .insert(self.reshaped(&names[o.index()], &self.ty(o), &from, &[1, k]))
                            .clone(),
                    };
                    let at: Vec<usize> = picked.iter().map(|p| p.0).collect();
                    self.gather(&flat, &flat_ty, &at, &gather_ty)
                };
                // a multiplication also converts to the result's signedness, which an
                // addition requires of both its operands
                let term = if picked.iter().all(|p| p.1 == 1) && gather_ty == row_ty {
                    gathered
                } else {
                    let wt: Vec<i64> = picked.iter().map(|p| wrap_to(p.1, w)).collect();
                    let wc = self.constant(&wt, &shape, &clear);
                    let r = self.fresh();
                    let _ = writeln!(self.body, "    {r} = \"FHELinalg.mul_eint_int\"({gathered}, {wc}) : ({gather_ty}, {clear_ty}) -> {row_ty}");
                    r
                };
                sum = Some(match sum {
                    None => term,
                    Some(prev) => {
                        let r = self.fresh();
                        let _ = writeln!(self.body, "    {r} = \"FHELinalg.add_eint\"({prev}, {term}) : ({row_ty}, {row_ty}) -> {row_ty}");
                        r
                    }
                });
            }
        }
        let bias: Vec<i64> = bias.iter().map(|&b| wrap_to(b, w)).collect();
        let b = self.constant(&bias, &shape, &clear);
        let sum = self.sum_or_zero(sum, &row_ty);
        let r = self.fresh();
        let _ = writeln!(
            self.body,
            "    {r} = \"FHELinalg.add_eint_int\"({sum}, {b}) : ({row_ty}, {clear_ty}) -> {row_ty}"
        );
        r
    }

    /// The elements `at` of `flat` (a `[1, k]` tensor of type `flat_ty`), one
    /// `tensor.extract` each, gathered by `tensor.from_elements` into `gather_ty`.
    fn gather(&mut self, flat: &str, flat_ty: &str, at: &[usize], gather_ty: &str) -> String {
        let zero = self.index(0);
        let mut scalars = Vec::with_capacity(at.len());
        for &i in at {
            let at = self.index(i);
            let v = self.fresh();
            let _ = writeln!(
                self.body,
                "    {v} = tensor.extract {flat}[{zero}, {at}] : {flat_ty}"
            );
            scalars.push(v);
        }
        let gathered = self.fresh();
        let _ = writeln!(
            self.body,
            "    {gathered} = tensor.from_elements {} : {gather_ty}",
            scalars.join(", ")
        );
        gathered
    }

    /// Strided slices of node `o`'s value `x` (see [`stacked_slices`]), concatenated on
    /// [`stack_axis`] into `shape` when there are several.
    fn stacked(&mut self, x: &str, o: NodeId, slices: &[Slice], shape: &[usize]) -> String {
        let axis = stack_axis(shape);
        let mut block = shape.to_vec();
        block[axis] /= slices.len();
        let parts: Vec<String> = slices.iter().map(|s| self.slice(x, o, s, &block)).collect();
        if let [one] = &parts[..] {
            return one.clone();
        }
        let part_ty = self.ty_with_shape(o, &block);
        let r = self.fresh();
        let _ = writeln!(
            self.body,
            "    {r} = \"FHELinalg.concat\"({}) {{axis = {axis} : i64}} : ({}) -> {}",
            parts.join(", "),
            vec![part_ty; parts.len()].join(", "),
            self.ty_with_shape(o, shape)
        );
        r
    }

    /// `tensor.extract_slice` of node `o`'s value `x` into a tensor of `shape` (`s.sizes`,
    /// or it with unit axes dropped).
    fn slice(&mut self, x: &str, o: NodeId, s: &Slice, shape: &[usize]) -> String {
        let list = |v: &[usize]| {
            v.iter()
                .map(usize::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        };
        let (from_ty, to_ty) = (self.ty(o), self.ty_with_shape(o, shape));
        let r = self.fresh();
        let _ = writeln!(
            self.body,
            "    {r} = tensor.extract_slice {x}[{}] [{}] [{}] : {from_ty} to {to_ty}",
            list(&s.offsets),
            list(&s.sizes),
            list(&s.strides)
        );
        r
    }

    /// A sum of terms, or an encrypted zero of `ty` for a map without terms (a
    /// constant; the verifier lets it through as an affine map of no operand).
    fn sum_or_zero(&mut self, sum: Option<String>, ty: &str) -> String {
        sum.unwrap_or_else(|| {
            let zero = self.fresh();
            let _ = writeln!(self.body, "    {zero} = \"FHE.zero_tensor\"() : () -> {ty}");
            zero
        })
    }

    /// The SSA name of index constant `i`, defined at its first use.
    fn index(&mut self, i: usize) -> String {
        if let Some(name) = self.indices.get(&i) {
            return name.clone();
        }
        let name = format!("%c{i}");
        let _ = writeln!(self.body, "    {name} = arith.constant {i} : index");
        self.indices.insert(i, name.clone());
        name
    }

    /// `FHELinalg.conv2d` as Concrete writes it: ONNX's attributes, padding made
    /// explicit. A 1-D convolution runs as a 2-D one: its operand is inserted into a
    /// zero tensor with a unit axis (a rank-reducing `tensor.insert_slice`, which reads
    /// the same in Concrete's MLIR and MLIR 22, where `tensor.expand_shape` does not)
    /// and the result collapsed back.
    fn conv2d(&mut self, id: NodeId, x: NodeId, names: &[String], conv: &fhec_ir::Conv) -> String {
        let lifted = conv.in_sp.len() == 1;
        let conv = &*as_2d(conv);
        let w = self.info.encoding_bits;
        let clear_bits = w + 1;
        let clear = format!("i{clear_bits}");
        let weight: Vec<i64> = conv.weight.iter().map(|&v| wrap_to(v, w)).collect();
        let mut wshape = vec![conv.out_channels, conv.in_channels / conv.groups];
        wshape.extend(&conv.kernel);
        let wc = self.constant(&weight, &wshape, &clear);
        // one bias per channel when its elements share one, else added after
        let count = conv.out_count();
        let per_channel = conv
            .bias
            .chunks(count)
            .all(|b| b.iter().all(|&v| v == b[0]));
        let channel_bias: Vec<i64> = if per_channel {
            conv.bias
                .iter()
                .step_by(count)
                .map(|&v| wrap_to(v, w))
                .collect()
        } else {
            vec![0; conv.out_channels]
        };
        let bc = self.constant(&channel_bias, &[conv.out_channels], &clear);
        // Concrete's conv2d takes no padding: the operand is placed into a zero tensor
        // (a ceil-mode window's extra end padding included; it reads zeros too)
        let mut x_name = names[x.index()].clone();
        let mut x_ty = self.ty(x);
        let padded: Vec<usize> = (0..conv.in_sp.len())
            .map(|a| {
                let span = (conv.kernel[a] - 1) * conv.dilations[a] + 1;
                let needed = (conv.out_sp[a] - 1) * conv.strides[a] + span;
                needed.max(conv.in_sp[a] + conv.pad_begin[a])
            })
            .collect();
        if lifted || padded != conv.in_sp || conv.pad_begin.iter().any(|&p| p > 0) {
            let mut shape = vec![1, conv.in_channels];
            shape.extend(&padded);
            let mut size = vec![1, conv.in_channels];
            size.extend(&conv.in_sp);
            let mut at = vec![0, 0];
            at.extend(&conv.pad_begin);
            let list = |v: &[usize]| {
                v.iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let padded_ty = with_shape(&x_ty, &shape);
            let zero = self.fresh();
            let _ = writeln!(
                self.body,
                "    {zero} = \"FHE.zero_tensor\"() : () -> {padded_ty}"
            );
            let r = self.fresh();
            let _ = writeln!(
                self.body,
                "    {r} = tensor.insert_slice {x_name} into {zero}[{}] [{}] [{}] : {x_ty} into {padded_ty}",
                list(&at),
                list(&size),
                list(&vec![1; size.len()])
            );
            (x_name, x_ty) = (r, padded_ty);
        }
        let mut out_shape = vec![1, conv.out_channels];
        out_shape.extend(&conv.out_sp);
        let out_ty = self.ty_with_shape(id, &out_shape);
        let r = self.fresh();
        let _ = writeln!(
            self.body,
            "    {r} = \"FHELinalg.conv2d\"({x_name}, {wc}, {bc}) {{dilations = {}, group = {} : i64, padding = {}, strides = {}}} : ({x_ty}, tensor<{}{clear}>, tensor<{}x{clear}>) -> {out_ty}",
            i64_attr(&conv.dilations),
            conv.groups,
            i64_attr(&[0; 4]),
            i64_attr(&conv.strides),
            dims(&wshape),
            conv.out_channels,
        );
        let result = if per_channel {
            r
        } else {
            let bias: Vec<i64> = conv.bias.iter().map(|&v| wrap_to(v, w)).collect();
            let b = self.constant(&bias, &out_shape, &clear);
            let sum = self.fresh();
            let _ = writeln!(
                self.body,
                "    {sum} = \"FHELinalg.add_eint_int\"({r}, {b}) : ({out_ty}, tensor<{}{clear}>) -> {out_ty}",
                dims(&out_shape)
            );
            sum
        };
        if lifted {
            let shape = self.shapes[id.index()].clone();
            self.reshaped(&result, &out_ty, &out_shape, &shape)
        } else {
            result
        }
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
        let wrap = |v: i64| wrap_to(v, w);
        let result = match &n.op {
            IntOp::Input { .. } => return None,
            IntOp::Linear {
                inputs,
                outputs,
                weight,
                bias,
            } => {
                let (x, x_ty) = x?;
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
            IntOp::Affine { bias, .. } => {
                let rows = flat_rows(self.c, id);
                if self.sparse[id.index()] {
                    return Some(self.sparse_map(id, &ops, names, &rows, bias));
                }
                self.flat_affine(id, &ops, names, dense_weights(self.c, id, &rows), bias)
            }
            IntOp::Conv(conv) => {
                let x = ops[0];
                if structured(conv, &self.shapes[x.index()], &self.c.node(x).shape) {
                    self.conv2d(id, x, names, conv)
                } else {
                    let rows = flat_rows(self.c, id);
                    if self.sparse[id.index()] {
                        return Some(self.sparse_map(id, &ops, names, &rows, &conv.bias));
                    }
                    self.flat_affine(
                        id,
                        &ops,
                        names,
                        dense_weights(self.c, id, &rows),
                        &conv.bias,
                    )
                }
            }
            IntOp::Round {
                approximate,
                drop_bits,
            } => {
                let (x, x_ty) = x?;
                // the t bits kept: the operand, below 2^(t+d), is first moved up by
                // 2^(W−t−d), so the rounding to t bits drops d of its own bits and the
                // lookup after it reads t bits, not W − d
                let kept = self.elem_bits(id);
                let up = self.info.encoding_bits - kept - drop_bits;
                let x = if up > 0 {
                    self.shifted_up(ops[0], &x, &x_ty, up)
                } else {
                    x
                };
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
                let (x, x_ty) = x?;
                let (x, x_ty, q) = self.narrowed(ops[0], x, x_ty, *precision);
                // one entry per value of the input type; fhec reads the low p+1 bits and
                // negates the table in the upper half (the bootstrap's negacyclic half)
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

#[cfg(test)]
mod tests {
    use super::{lifted, rank_reduced_slice, stacked_slices, strided_slice};

    /// Row-major flat indices into `from` of the elements `offsets + strides ⊙ i`.
    fn picked_at(from: &[usize], to: &[usize], offsets: &[usize], strides: &[usize]) -> Vec<usize> {
        let n: usize = to.iter().product();
        (0..n)
            .map(|mut i| {
                let mut flat = 0;
                let mut scale = 1;
                for d in (0..to.len()).rev() {
                    let idx = i % to[d];
                    i /= to[d];
                    flat += (offsets[d] + idx * strides[d]) * scale;
                    scale *= from[d];
                }
                flat
            })
            .collect()
    }

    /// A tournament level step-major: two blocks, each one tap of every 2×2 window; a
    /// block of weight 0 (copies passed on alone) takes the other block's slice.
    #[test]
    fn stacked_blocks_are_slices_of_the_operand() {
        let from = [1, 4, 6, 6];
        let block = [1, 4, 3, 3];
        let taps = [[0, 0, 0, 0], [0, 0, 1, 0]];
        let strides = [1, 1, 2, 2];
        let mut picked: Vec<(usize, i64)> = Vec::new();
        for tap in taps {
            picked.extend(
                picked_at(&from, &block, &tap, &strides)
                    .iter()
                    .map(|&i| (i, 1)),
            );
        }
        let slices = stacked_slices(&from, &[1, 8, 3, 3], &picked).unwrap();
        assert_eq!(slices.len(), 2);
        for (s, tap) in slices.iter().zip(taps) {
            assert_eq!((&s.offsets[..], &s.strides[..]), (&tap[..], &strides[..]));
        }
        // the second block passes nothing on (weight 0, index 0): it reuses the first's
        let half = picked.len() / 2;
        for p in &mut picked[half..] {
            *p = (0, 0);
        }
        let slices = stacked_slices(&from, &[1, 8, 3, 3], &picked).unwrap();
        assert_eq!(slices[1], slices[0]);
        // a block read at weight 1 that is no slice: none
        picked[half] = (5, 1);
        assert_eq!(stacked_slices(&from, &[1, 8, 3, 3], &picked), None);
    }

    /// A pooling window's position, a crop and a strided subsampling are found with
    /// their offsets and strides; a permutation, a repeat and a rank change are not.
    #[test]
    fn strided_slices_are_found_and_nothing_else() {
        let from = [1, 4, 6, 6];
        for (to, offsets, strides) in [
            ([1, 4, 3, 3], [0, 0, 1, 0], [1, 1, 2, 2]),
            ([1, 4, 3, 5], [0, 0, 1, 0], [1, 1, 2, 1]),
            ([1, 2, 6, 6], [0, 2, 0, 0], [1, 1, 1, 1]),
            ([1, 4, 1, 6], [0, 0, 5, 0], [1, 1, 1, 1]),
        ] {
            let at = picked_at(&from, &to, &offsets, &strides);
            assert_eq!(
                strided_slice(&from, &to, &at),
                Some((offsets.to_vec(), strides.to_vec())),
                "{to:?} {offsets:?} {strides:?}"
            );
        }
        let mut swapped = picked_at(&from, &[1, 4, 3, 3], &[0, 0, 0, 0], &[1, 1, 2, 2]);
        swapped.swap(3, 4);
        assert_eq!(strided_slice(&from, &[1, 4, 3, 3], &swapped), None);
        let repeated = vec![7; 36];
        assert_eq!(strided_slice(&from, &[1, 4, 3, 3], &repeated), None);
        let flat: Vec<usize> = (0..36).collect();
        assert_eq!(strided_slice(&from, &[1, 36], &flat), None);
        assert_eq!(rank_reduced_slice(&from, &[1, 36], &flat), None);
    }

    /// A reduction without `keepdims` reads each position of the reduced axis as a slice
    /// with that axis dropped; a lower rank that is no slice is not one.
    #[test]
    fn rank_reduced_slices_drop_unit_axes() {
        let from = [1, 4, 6, 6];
        let at = picked_at(&from, &[1, 4, 6, 1], &[0, 0, 0, 3], &[1, 1, 1, 2]);
        let s = rank_reduced_slice(&from, &[1, 4, 6], &at).unwrap();
        assert_eq!(
            (&s.offsets[..], &s.sizes[..], &s.strides[..]),
            (&[0, 0, 0, 3][..], &[1, 4, 6, 1][..], &[1, 1, 1, 1][..])
        );
        let at = picked_at(&from, &[1, 4, 1, 6], &[0, 0, 2, 0], &[1, 1, 1, 1]);
        let s = rank_reduced_slice(&from, &[1, 4, 6], &at).unwrap();
        assert_eq!(
            (&s.offsets[..], &s.sizes[..]),
            (&[0, 0, 2, 0][..], &[1, 4, 1, 6][..])
        );
        let mut swapped = at.clone();
        swapped.swap(0, 1);
        assert_eq!(rank_reduced_slice(&from, &[1, 4, 6], &swapped), None);
        assert_eq!(
            lifted(&[4, 6], 3),
            vec![vec![1, 4, 6], vec![4, 1, 6], vec![4, 6, 1]]
        );
        assert!(lifted(&[1, 4, 6], 2).is_empty());
    }
}
