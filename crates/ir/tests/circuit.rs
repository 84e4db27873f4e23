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
fn stored_ranges_are_checked_against_what_operands_can_give() {
    let acc = |c: &Circuit| c.ids().nth(1).unwrap();
    // a weight of 2^62: the accumulator could leave 64-bit arithmetic, whatever its
    // stored range says
    let (mut c, _) = small();
    let id = acc(&c);
    if let IntOp::Linear { weight, .. } = &mut c.node_mut(id).op {
        weight[0] = 1 << 62;
    }
    let errs = verify(&c).unwrap_err();
    assert!(
        errs.0
            .iter()
            .any(|e| e.node == "acc" && e.reason.contains("2^62")),
        "{errs}"
    );
    // a bias (zero point) moved by 2^40: the stored range [1, 36] can no longer hold
    // any accumulator value
    let (mut c, _) = small();
    let id = acc(&c);
    if let IntOp::Linear { bias, .. } = &mut c.node_mut(id).op {
        bias[0] = 1 << 40;
    }
    let errs = verify(&c).unwrap_err();
    assert!(
        errs.0
            .iter()
            .any(|e| e.node == "acc" && e.reason.contains("holds no value")),
        "{errs}"
    );
    // a table lookup claiming outputs its table never gives
    let (mut c, t) = small();
    c.node_mut(t).range = Range::new(100, 200);
    let errs = verify(&c).unwrap_err();
    assert!(errs.0.iter().any(|e| e.node == "lut"), "{errs}");
    // the untouched circuit passes
    assert!(verify(&small().0).is_ok());
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

/// A 2-channel 3×3 input, two groups, 2×2 kernel, stride 2, one pad at the start: each
/// output reads its own channel; taps in the padding add nothing.
fn grouped_conv() -> fhec_ir::Conv {
    fhec_ir::Conv {
        in_channels: 2,
        out_channels: 2,
        groups: 2,
        in_sp: vec![3, 3],
        out_sp: vec![2, 2],
        kernel: vec![2, 2],
        strides: vec![2, 2],
        dilations: vec![1, 1],
        pad_begin: vec![1, 1],
        pad_end: vec![0, 0],
        weight: vec![1, 2, 3, 4, -1, -1, -1, 1],
        bias: vec![0, 10, 20, 30, 0, 0, 0, 100],
    }
}

#[test]
fn convolution_reads_its_window_and_skips_padding() {
    let conv = grouped_conv();
    conv.check().unwrap();
    // channel 0: 1..=9, channel 1: 10..=18 (row-major 3×3)
    let x: Vec<i64> = (1..=18).collect();
    let y = conv.eval(&x);
    // output (0,0) of channel 0: only tap (1,1) of the kernel (weight 4) is inside: x[0]
    assert_eq!(y[0], 4);
    // output (0,1): taps (1,0)→x[1] weight 3 and (1,1)→x[2] weight 4, bias 10
    assert_eq!(y[1], 10 + 3 * 2 + 4 * 3);
    // output (1,1) of channel 1: kernel over rows 1..2, cols 1..2 of channel 1, bias 100
    assert_eq!(y[7], 100 - 14 - 15 - 17 + 18);

    let mut c = Circuit::default();
    let xi = c.add(
        node(
            "x",
            IntOp::Input { index: 0, bits: 5 },
            vec![1, 2, 3, 3],
            0,
            31,
        ),
        &[],
    );
    let out = c.add(
        node(
            "conv",
            IntOp::Conv(Box::new(conv)),
            vec![1, 2, 2, 2],
            -200,
            200,
        ),
        &[xi],
    );
    c.inputs = vec![xi];
    c.outputs = vec![out];
    let info = verify(&c).unwrap();
    let sim = simulate(&c, &info, std::slice::from_ref(&x)).unwrap();
    assert_eq!(sim[0], y);
}

#[test]
fn inconsistent_convolutions_are_refused() {
    let mut wrong_out = grouped_conv();
    wrong_out.out_sp = vec![3, 2];
    assert!(wrong_out.check().unwrap_err().contains("spatial axis 0"));
    let mut wrong_groups = grouped_conv();
    wrong_groups.groups = 3;
    assert!(wrong_groups.check().unwrap_err().contains("groups"));
    let mut short_bias = grouped_conv();
    short_bias.bias.pop();
    assert!(short_bias.check().is_err());
    // the verifier names the node whose geometry is wrong, and a shape that disagrees
    let mut c = Circuit::default();
    let xi = c.add(
        node(
            "x",
            IntOp::Input { index: 0, bits: 5 },
            vec![1, 2, 3, 4],
            0,
            31,
        ),
        &[],
    );
    let bad = c.add(
        node(
            "conv",
            IntOp::Conv(Box::new(grouped_conv())),
            vec![1, 2, 2, 2],
            0,
            9,
        ),
        &[xi],
    );
    c.inputs = vec![xi];
    c.outputs = vec![bad];
    let errs = verify(&c).unwrap_err();
    assert!(
        errs.0
            .iter()
            .any(|e| e.node == "conv" && e.reason.contains("shape")),
        "{errs}"
    );
}
