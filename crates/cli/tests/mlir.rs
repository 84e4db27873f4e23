//! The emitted MLIR is real MLIR and says what the circuit does:
//! * every fixture's module passes `mlir-opt-22 --allow-unregistered-dialect` (required
//!   when `FHEC_REQUIRE_MLIR_OPT` is set, as `.ci/run` does; skipped with a note where the
//!   tool is not installed);
//! * its ops, table lookups and bit-widths agree with the verified circuit (chains of
//!   reshapes fold into one `tensor.collapse_shape` / `tensor.reshape`, identities vanish);
//! * for a few small fixtures the exact text is checked in (`tests/golden/`), so a
//!   change to lowering shows up as a diff. `FHEC_BLESS=1` rewrites them.

mod common;

use std::collections::BTreeMap;
use std::process::Command;

use common::*;
use fhec_ir::{IntOp, NodeId};

fn fixture_names() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(fixtures())
        .unwrap()
        .filter_map(|e| {
            let p = e.unwrap().path();
            p.join("model.onnx")
                .exists()
                .then(|| p.file_name().unwrap().to_string_lossy().into_owned())
        })
        .collect();
    names.sort();
    names
}

fn mlir_of(name: &str) -> (String, fhec_ir::Circuit, fhec_ir::CircuitInfo) {
    let (a, info) = compile(name, None);
    let text = fhec_mlir_emit::to_mlir(&a.server.circuit, &info, "model.onnx");
    (text, a.server.circuit, info)
}

#[test]
fn every_fixture_passes_mlir_opt() {
    let tool = "mlir-opt-22";
    if Command::new(tool).arg("--version").output().is_err() {
        assert!(
            std::env::var_os("FHEC_REQUIRE_MLIR_OPT").is_none(),
            "{tool} is required (FHEC_REQUIRE_MLIR_OPT is set) but not installed"
        );
        eprintln!("note: {tool} not installed; MLIR validity not checked here");
        return;
    }
    let dir = tmp("mlir-opt");
    for name in fixture_names() {
        let (text, ..) = mlir_of(&name);
        let path = dir.join(format!("{name}.mlir"));
        std::fs::write(&path, &text).unwrap();
        let out = Command::new(tool)
            .arg("--allow-unregistered-dialect")
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name}: {tool} rejects the module: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // what mlir-opt prints back parses again (a round trip through MLIR's printer)
        let back = dir.join(format!("{name}.roundtrip.mlir"));
        std::fs::write(&back, &out.stdout).unwrap();
        let again = Command::new(tool)
            .arg("--allow-unregistered-dialect")
            .arg(&back)
            .output()
            .unwrap();
        assert!(again.status.success(), "{name}: round trip fails");
    }
}

/// Dimensions of the first `tensor<…x!FHE.…>` type after `->` on an op line.
fn result_elements(line: &str) -> usize {
    let ty = line.rsplit("-> tensor<").next().unwrap();
    ty.split('x')
        .take_while(|d| d.parse::<usize>().is_ok())
        .map(|d| d.parse::<usize>().unwrap())
        .product()
}

/// Gathers of a map emitted element by element: per operand, the most terms a row
/// reads from it.
fn gather_positions(c: &fhec_ir::Circuit, id: NodeId) -> usize {
    let m = c.node(id).numel();
    match &c.node(id).op {
        IntOp::Affine {
            row_start, terms, ..
        } => (0..c.operands(id).len())
            .map(|slot| {
                (0..m)
                    .map(|j| {
                        fhec_ir::affine_row(row_start, terms, j)
                            .iter()
                            .filter(|t| t.operand as usize == slot)
                            .count()
                    })
                    .max()
                    .unwrap_or(0)
            })
            .sum(),
        IntOp::Conv(conv) => (0..m)
            .map(|j| {
                let mut n = 0;
                conv.for_each_tap(j, |_, _| n += 1);
                n
            })
            .max()
            .unwrap_or(0),
        _ => 0,
    }
}

#[test]
fn mlir_agrees_with_the_circuit_on_every_fixture() {
    for name in fixture_names() {
        let (text, c, info) = mlir_of(&name);
        let mut ops: BTreeMap<&str, usize> = BTreeMap::new();
        let mut tlus = 0;
        for line in text
            .lines()
            .filter(|l| l.contains(" = \"") || l.contains(" = tensor."))
        {
            let op = match line.split('"').nth(1) {
                Some(op) => op,
                None => line.split_whitespace().nth(2).unwrap(),
            };
            *ops.entry(op).or_default() += 1;
            if op.contains("lookup_table") {
                tlus += result_elements(line);
            }
        }
        let count =
            |pred: &dyn Fn(&IntOp) -> bool| c.ids().filter(|&id| pred(&c.node(id).op)).count();
        let linear = count(&|o| matches!(o, IntOp::Linear { .. }));
        let round = count(&|o| matches!(o, IntOp::Round { .. }));
        let lut = count(&|o| matches!(o, IntOp::Lut { .. }));
        let reshape = count(&|o| matches!(o, IntOp::Reshape));
        let affine = count(&|o| matches!(o, IntOp::Affine { .. }));
        // an affine map (or a convolution emitted as one) is emitted either as one
        // matmul per operand (flattened to [1, k]), summed, plus bias; or element by
        // element: per operand and term position one gather of `tensor.extract`s, each
        // gather maybe scaled, summed, plus bias
        let sparse: Vec<NodeId> = fhec_mlir_emit::element_wise_maps(&c);
        let sparse_affine = sparse
            .iter()
            .filter(|&&id| matches!(c.node(id).op, IntOp::Affine { .. }))
            .count();
        let affine_operands: usize = c
            .ids()
            .filter(|&id| matches!(c.node(id).op, IntOp::Affine { .. }))
            .map(|id| c.operands(id).len())
            .sum();
        let dense_affine_operands: usize = c
            .ids()
            .filter(|&id| matches!(c.node(id).op, IntOp::Affine { .. }) && !sparse.contains(&id))
            .map(|id| c.operands(id).len())
            .sum();
        let positions: Vec<usize> = sparse.iter().map(|&id| gather_positions(&c, id)).collect();
        let gathers: usize = positions.iter().sum();
        let extracts: usize = sparse
            .iter()
            .zip(&positions)
            .map(|(&id, p)| p * c.node(id).numel())
            .sum();
        let get = |k: &str| ops.get(k).copied().unwrap_or(0);
        // a convolution: FHELinalg.conv2d (one or two spatial axes, on an operand in its
        // own shape), after a zero tensor it is placed into when padded or lifted from
        // one spatial axis to two, before an addition when its bias differs at the
        // borders, and collapsed back when lifted; else emitted as an affine map
        let convs = count(&|o| matches!(o, IntOp::Conv(_)));
        let one_axis = count(&|o| matches!(o, IntOp::Conv(conv) if conv.in_sp.len() == 1));
        let conv2d = get("FHELinalg.conv2d");
        assert!(conv2d <= convs, "{name}: {ops:?}");
        let flat_convs = convs - conv2d;
        let dense_flat_convs = flat_convs - (sparse.len() - sparse_affine);
        let padded = get("FHE.zero_tensor");
        assert_eq!(padded, get("tensor.insert_slice"), "{name}");
        assert!(padded <= conv2d, "{name}: {ops:?}");
        let conv_bias_adds = get("FHELinalg.add_eint_int") - (linear + affine + flat_convs);
        assert!(conv_bias_adds <= conv2d, "{name}: {ops:?}");
        assert_eq!(
            get("FHELinalg.matmul_eint_int"),
            linear + dense_affine_operands + dense_flat_convs,
            "{name}: {ops:?}"
        );
        assert_eq!(
            get("FHELinalg.add_eint"),
            dense_affine_operands - (affine - sparse_affine) + gathers - sparse.len(),
            "{name}"
        );
        // a gather that is a strided slice of its operand (a crop, a pooling window's
        // position) is one `tensor.extract_slice` instead of one extract per element
        let sliced: usize = text
            .lines()
            .filter(|l| l.contains(" = tensor.extract_slice "))
            .map(|l| result_elements(&l.replace(" to tensor<", " -> tensor<")))
            .sum();
        // ... or several, one per block of rows, concatenated on the first axis (a
        // tournament level: one block per step of a pooling window)
        let concat_inputs: usize = text
            .lines()
            .filter(|l| l.contains("\"FHELinalg.concat\"("))
            .map(|l| {
                l.split(['(', ')'])
                    .nth(1)
                    .map_or(0, |a| a.matches('%').count())
            })
            .sum();
        assert_eq!(
            get("tensor.from_elements") + get("tensor.extract_slice") + get("FHELinalg.concat")
                - concat_inputs,
            gathers,
            "{name}: {ops:?}"
        );
        assert_eq!(get("tensor.extract"), extracts - sliced, "{name}");
        // a lookup on an unrounded operand of p < W bits first narrows it: shifted to
        // the top bits by a multiplication, then rounded exactly to p bits
        let narrowed: Vec<u32> = c
            .ids()
            .filter_map(|id| match c.node(id).op {
                IntOp::Lut { precision, .. }
                    if precision < info.encoding_bits
                        && !matches!(c.node(c.operands(id)[0]).op, IntOp::Round { .. }) =>
                {
                    Some(precision)
                }
                _ => None,
            })
            .collect();
        // a rounding keeps the width of its own range: its operand is first moved up by a
        // multiplication when that is under W − drop
        let kept = |id: NodeId| match c.node(id).op {
            IntOp::Round { drop_bits, .. } => Some(
                fhec_ir::bits_for_range(fhec_ir::Range::new(0, c.node(id).range.hi.max(1)))
                    .min(info.encoding_bits - drop_bits),
            ),
            _ => None,
        };
        let moved_up = c
            .ids()
            .filter(|&id| match c.node(id).op {
                IntOp::Round { drop_bits, .. } => kept(id) < Some(info.encoding_bits - drop_bits),
                _ => false,
            })
            .count();
        let scaled = get("FHELinalg.mul_eint_int") - narrowed.len() - moved_up;
        assert!(scaled <= gathers, "{name}: {ops:?}");
        assert_eq!(get("FHELinalg.round"), round + narrowed.len(), "{name}");
        assert_eq!(
            get("FHELinalg.apply_lookup_table") + get("FHELinalg.apply_mapped_lookup_table"),
            lut,
            "{name}"
        );
        // reshapes: chains fold into one op, identities vanish; an affine map may
        // flatten each operand and unflatten its result
        let shape_ops = get("tensor.reshape") + get("tensor.collapse_shape");
        assert!(
            shape_ops <= reshape + affine_operands + affine + flat_convs + one_axis,
            "{name}: {ops:?}"
        );
        assert_eq!(
            ops.values().sum::<usize>(),
            2 * linear + 2 * dense_affine_operands + 2 * dense_flat_convs + extracts - sliced
                + concat_inputs
                + 2 * gathers
                + scaled
                + conv2d
                + 2 * padded
                + conv_bias_adds
                + round
                + 2 * narrowed.len()
                + moved_up
                + lut
                + shape_ops,
            "{name}: {ops:?}"
        );
        // the CNN fixtures keep their convolutions and pooling structured, so the text
        // grows with the weights and the tables (2^W entries each, W the encoding
        // width), not with input × output sizes
        if name.starts_with("cnn_") || name == "op_conv1d" {
            assert_eq!(flat_convs, 0, "{name}: {ops:?}");
            // max pooling's tournament levels are strided slices of whole tensors
            assert_eq!(get("tensor.extract"), 0, "{name}: {ops:?}");
            // the constants a lookup reads as its tables
            let tables: std::collections::HashSet<&str> = text
                .lines()
                .filter(|l| l.contains("lookup_table\"("))
                .filter_map(|l| l.split(['(', ')']).nth(1)?.split(", ").nth(1))
                .collect();
            let table_lines: usize = text
                .lines()
                .filter(|l| {
                    l.split(" = arith.constant").next().is_some_and(|v| {
                        l.contains(" = arith.constant") && tables.contains(v.trim())
                    })
                })
                .map(str::len)
                .sum();
            assert!(
                text.len() - table_lines < 200_000,
                "{name}: {} bytes of MLIR, {table_lines} in tables",
                text.len()
            );
        }
        assert_eq!(tlus, info.tlu_count, "{name}: table lookups");
        // widths: every ciphertext at W, a rounding's result at the width of its range
        // (at most W − drop), a narrowed lookup operand at its precision
        let w = info.encoding_bits;
        let allowed: Vec<u32> = std::iter::once(w)
            .chain(c.ids().filter_map(kept))
            .chain(narrowed.iter().copied())
            .collect();
        for part in text.split("!FHE.").skip(1) {
            let bits: u32 = part.split(['<', '>']).nth(1).unwrap().parse().unwrap();
            assert!(allowed.contains(&bits), "{name}: eint<{bits}> but W = {w}");
        }
        let header = format!(
            "// encoding width {w} bits, {} table lookups, {} rounding bootstraps per sample",
            info.tlu_count, info.rounding_pbs
        );
        assert!(text.contains(&header), "{name}: header");
        let sig = text
            .lines()
            .find(|l| l.contains("func.func @main"))
            .unwrap();
        assert_eq!(
            sig.matches(&format!("!FHE.eint<{w}>")).count(),
            c.inputs.len() + c.outputs.len(),
            "{name}: {sig}"
        );
    }
}

#[test]
fn golden_mlir_of_small_fixtures() {
    let golden = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    for name in ["logreg_iris", "op_relu", "op_reshape"] {
        let (text, ..) = mlir_of(name);
        let text = text.replace(env!("CARGO_PKG_VERSION"), "<version>");
        let path = golden.join(format!("{name}.mlir"));
        if std::env::var_os("FHEC_BLESS").is_some() {
            std::fs::write(&path, &text).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!("{}: {e} (run with FHEC_BLESS=1 to create)", path.display())
        });
        assert!(
            text == expected,
            "{name}: emitted MLIR differs from {} (FHEC_BLESS=1 rewrites it after review):\n{text}",
            path.display()
        );
    }
}

/// With the `mlir-verify` feature: MLIR itself (through melior) parses and verifies every
/// fixture's module, and refuses a broken one with its own message.
#[cfg(feature = "mlir-verify")]
#[test]
fn melior_verifies_every_fixture() {
    for name in fixture_names() {
        let (text, ..) = mlir_of(&name);
        let printed = fhec_mlir_emit::verify_with_mlir(&text)
            .unwrap_or_else(|e| panic!("{name}: MLIR refuses the module: {e}"));
        assert!(printed.contains("func.func @main"), "{name}: {printed}");
    }
    // a result type that contradicts the function signature
    let (text, ..) = mlir_of("logreg_iris");
    let broken = text.replacen("return %", "return %arg0, %", 1);
    let err = fhec_mlir_emit::verify_with_mlir(&broken).unwrap_err();
    assert!(err.0.contains("does not"), "{err}");
    // and `compile --verify-mlir` passes on a fixture
    let f = fixture("mlp_iris");
    let d = tmp("verify-mlir");
    let (code, _, err) = fhec(&[
        "compile",
        f.join("model.onnx").to_str().unwrap(),
        "--inputset",
        f.join("train.npy").to_str().unwrap(),
        "-o",
        d.join("m.fhe").to_str().unwrap(),
        "--verify-mlir",
    ]);
    assert_eq!(code, 0, "{err}");
}
