//! Verifier and interpreter semantics on small hand-built circuits.

use fhec_ir::interp::{evaluate, simulate};
use fhec_ir::{verify, Circuit, IntOp, Node, NodeId, Range, Status};

fn node(name: &str, op: IntOp, shape: Vec<usize>, lo: i64, hi: i64) -> Node {
    Node {
        name: name.into(),
        op,
        shape,
        status: Status::Encrypted,
        range: Range::new(lo, hi),
    }
}

/// input(u3, 2 elements) → linear(2→1) → round(drop 2) → lut(p=3)
fn small() -> (Circuit, NodeId) {
    let mut c = Circuit::default();
    let x = c.add(
        node("x", IntOp::Input { index: 0, bits: 3 }, vec![1, 2], 0, 7),
        &[],
    );
    let l = c.add(
        node(
            "acc",
            IntOp::Linear {
                inputs: 2,
                outputs: 1,
                weight: vec![3, 2],
                bias: vec![1],
            },
            vec![1, 1],
            1,
            36,
        ),
        &[x],
    );
    let r = c.add(
        node(
            "round",
            IntOp::Round {
                drop_bits: 2,
                approximate: false,
            },
            vec![1, 1],
            0,
            9,
        ),
        &[l],
    );
    let table: Vec<i64> = (0..16).map(|i| 15 - i).collect();
    let t = c.add(
        node(
            "lut",
            IntOp::Lut {
                precision: 4,
                tables: vec![table],
                table_of: vec![0],
            },
            vec![1, 1],
            6,
            15,
        ),
        &[r],
    );
    c.inputs = vec![x];
    c.outputs = vec![t, l];
    (c, t)
}

#[test]
fn verifier_reports_widths_and_bootstrap_counts() {
    let (c, _) = small();
    let info = verify(&c).unwrap();
    assert_eq!(info.nodes[1].bits, 6, "[1, 36] needs 6 bits");
    assert_eq!(info.nodes[2].shift, 2);
    assert_eq!(info.tlu_count, 1);
    assert_eq!(info.rounding_pbs, 2);
    assert_eq!(info.pbs_per_sample, 3);
    assert_eq!(info.max_tlu_bits, 4);
    assert_eq!(info.encoding_bits, 6);
    assert!(info.violations.is_empty());
}

#[test]
fn round_is_round_half_up_and_lut_reads_it() {
    let (c, _) = small();
    let info = verify(&c).unwrap();
    // acc = 3·5 + 2·7 + 1 = 30; round(30 / 4) = (30 + 2) >> 2 = 8; table[8] = 7
    let out = simulate(&c, &info, &[vec![5, 7]]).unwrap();
    assert_eq!(out, vec![vec![7], vec![30]]);
    // acc = 3·1 + 2·0 + 1 = 4 → (4 + 2) >> 2 = 1 → 14
    assert_eq!(simulate(&c, &info, &[vec![1, 0]]).unwrap()[0], vec![14]);
}

#[test]
fn out_of_range_inputs_are_refused() {
    let (c, _) = small();
    let info = verify(&c).unwrap();
    assert!(simulate(&c, &info, &[vec![8, 0]]).is_err());
    assert!(simulate(&c, &info, &[vec![1]]).is_err());
}

#[test]
fn lookup_wraps_negacyclically_past_its_precision() {
    // a lut of precision 2 whose operand (calibrated [0, 3]) reaches 5 at run time:
    // index 5 mod 8 = 5 ≥ 4 → −table[1]
    let mut c = Circuit::default();
    let x = c.add(
        node("x", IntOp::Input { index: 0, bits: 3 }, vec![1], 0, 7),
        &[],
    );
    let t = c.add(
        node(
            "lut",
            IntOp::Lut {
                precision: 2,
                tables: vec![vec![10, 20, 30, 40]],
                table_of: vec![0],
            },
            vec![1],
            10,
            40,
        ),
        &[x],
    );
    c.inputs = vec![x];
    c.outputs = vec![t];
    let info = verify(&c).unwrap_err();
    assert!(
        info.to_string().contains("does not fit 2 unsigned bits"),
        "{info}"
    );
    // the verifier refuses it; the interpreter still models the ciphertext behaviour
    let v = evaluate(&c, &[vec![5]], Some(6)).unwrap();
    assert_eq!(v[1], vec![-20]);
}

#[test]
fn values_over_16_bits_are_violations() {
    let mut c = Circuit::default();
    let x = c.add(
        node("x", IntOp::Input { index: 0, bits: 8 }, vec![1, 1], 0, 255),
        &[],
    );
    let l = c.add(
        node(
            "wide",
            IntOp::Linear {
                inputs: 1,
                outputs: 1,
                weight: vec![1000],
                bias: vec![0],
            },
            vec![1, 1],
            0,
            255_000,
        ),
        &[x],
    );
    c.inputs = vec![x];
    c.outputs = vec![l];
    let info = verify(&c).unwrap();
    assert_eq!(info.violations.len(), 1);
    assert_eq!(info.violations[0].node, "wide");
    assert_eq!(info.violations[0].bits, 18);
}

#[test]
fn structural_errors_are_all_collected() {
    let mut c = Circuit::default();
    let x = c.add(
        node("x", IntOp::Input { index: 0, bits: 3 }, vec![1, 2], 0, 7),
        &[],
    );
    let bad_linear = c.add(
        node(
            "l",
            IntOp::Linear {
                inputs: 3,
                outputs: 1,
                weight: vec![1, 1],
                bias: vec![],
            },
            vec![1, 1],
            0,
            7,
        ),
        &[x],
    );
    let _bad_lut = c.add(
        node(
            "t",
            IntOp::Lut {
                precision: 2,
                tables: vec![vec![0; 3]],
                table_of: vec![],
            },
            vec![1, 1],
            0,
            0,
        ),
        &[bad_linear],
    );
    c.inputs = vec![x];
    let errs = verify(&c).unwrap_err();
    assert!(errs.0.len() >= 3, "{errs}");
    assert!(errs.0.iter().any(|e| e.node == "l") && errs.0.iter().any(|e| e.node == "t"));
}

#[test]
fn text_form_lists_every_node() {
    let (c, _) = small();
    let text = c.to_string();
    assert_eq!(text.lines().count(), 5);
    assert!(text.contains("%2 = round %1 drop=2"), "{text}");
    assert!(text.ends_with("return %3, %1\n"));
}

#[test]
fn exact_rounding_clears_up_to_precision_plus_one_bits_per_two_bootstraps() {
    use fhec_ir::{rounding_chunks, rounding_pbs_count};
    assert_eq!(rounding_chunks(8, 7), vec![(0, 7), (7, 1)]);
    assert_eq!(rounding_pbs_count(8, 7), 3);
    assert_eq!(rounding_chunks(7, 7), vec![(0, 7)]);
    assert_eq!(rounding_pbs_count(7, 7), 2);
    assert_eq!(rounding_pbs_count(1, 7), 1);
    assert_eq!(rounding_chunks(5, 2), vec![(0, 2), (2, 2), (4, 1)]);
    assert_eq!(rounding_pbs_count(5, 2), 5);
}
