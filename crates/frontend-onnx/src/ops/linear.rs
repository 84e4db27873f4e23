//! Gemm, MatMul and the ai.onnx.ml linear models, all normalised to [`Op::Dense`].

use crate::graph::{DType, Op, PostTransform};
use crate::{ImportError, NodeCtx};

pub(crate) fn gemm(ctx: &mut NodeCtx<'_>) -> Result<(), ImportError> {
    let a = ctx.required_input(0)?;
    let b = ctx.required_input(1)?;
    if ctx.constant(a).is_some() {
        return Err(ctx.err("operand A is a constant: fhec needs the model input on the left"));
    }
    let bt = ctx.constant(b).cloned().ok_or_else(|| {
        ctx.err(
            "operand B is not a constant: a product of two encrypted tensors is not supported yet",
        )
    })?;
    if ctx.attr_i("transA", 0) != 0 {
        return Err(ctx.err("transA=1 is not supported"));
    }
    let (alpha, beta) = (
        ctx.attr_f("alpha", 1.0) as f64,
        ctx.attr_f("beta", 1.0) as f64,
    );
    let trans_b = ctx.attr_i("transB", 0) != 0;
    let a_shape = ctx.info(a).shape.clone();
    if a_shape.len() != 2 || bt.shape.len() != 2 {
        return Err(ctx.err(format!(
            "Gemm needs 2-D operands, got {:?} and {:?}",
            a_shape, bt.shape
        )));
    }
    let (k, n) = if trans_b {
        (bt.shape[1], bt.shape[0])
    } else {
        (bt.shape[0], bt.shape[1])
    };
    if a_shape[1] != k {
        return Err(ctx.err(format!("A has {} columns, B has {k} rows", a_shape[1])));
    }
    let mut weight = vec![0.0; n * k];
    for j in 0..n {
        for i in 0..k {
            let w = if trans_b {
                bt.data[j * k + i]
            } else {
                bt.data[i * n + j]
            };
            weight[j * k + i] = alpha * w;
        }
    }
    let bias = match ctx.input(2)? {
        None => vec![0.0; n],
        Some(c) => {
            let ct = ctx
                .constant(c)
                .ok_or_else(|| ctx.err("operand C is not a constant"))?;
            let row: Vec<f64> = match ct.numel() {
                1 => vec![ct.data[0]; n],
                m if m == n => ct.data.clone(),
                _ => {
                    return Err(ctx.err(format!(
                        "operand C of shape {:?} does not broadcast to [1, {n}]",
                        ct.shape
                    )))
                }
            };
            row.into_iter().map(|v| beta * v).collect()
        }
    };
    let out = ctx.required_output(0)?;
    let dtype = ctx.info(a).dtype;
    ctx.add_node(
        Op::Dense {
            inputs: k,
            outputs: n,
            weight,
            bias,
        },
        vec![a],
        vec![(out, vec![a_shape[0], n], dtype)],
    );
    Ok(())
}

pub(crate) fn matmul(ctx: &mut NodeCtx<'_>) -> Result<(), ImportError> {
    let a = ctx.required_input(0)?;
    let b = ctx.required_input(1)?;
    if ctx.constant(a).is_some() {
        return Err(
            ctx.err("the left operand is a constant: fhec needs the encrypted operand on the left")
        );
    }
    let Some(mut bt) = ctx.constant(b).cloned() else {
        return matmul_varying(ctx, a, b);
    };
    // a 1-D right operand is a column whose dimension the product drops
    let vector = bt.shape.len() == 1;
    if vector {
        bt.shape.push(1);
    }
    if bt.shape.len() != 2 {
        return Err(ctx.err(format!(
            "the constant operand must be 2-D, got {:?}",
            bt.shape
        )));
    }
    let (k, n) = (bt.shape[0], bt.shape[1]);
    let mut shape = ctx.info(a).shape.clone();
    if shape.len() < 2 || shape.last() != Some(&k) {
        return Err(ctx.err(format!(
            "shapes {:?} and {:?} do not multiply",
            shape, bt.shape
        )));
    }
    let mut weight = vec![0.0; n * k];
    for j in 0..n {
        for i in 0..k {
            weight[j * k + i] = bt.data[i * n + j];
        }
    }
    if let Some(last) = shape.last_mut() {
        *last = n;
    }
    let out = ctx.required_output(0)?;
    let dtype = ctx.info(a).dtype;
    let dense = Op::Dense {
        inputs: k,
        outputs: n,
        weight,
        bias: vec![0.0; n],
    };
    if vector {
        let column = ctx.add_sub_node(
            "column",
            dense,
            vec![a],
            vec![(format!("{out}/column"), shape.clone(), dtype)],
        )[0];
        shape.pop();
        ctx.add_node(
            Op::Reshape {
                shape: shape.clone(),
            },
            vec![column],
            vec![(out, shape, dtype)],
        );
    } else {
        ctx.add_node(dense, vec![a], vec![(out, shape, dtype)]);
    }
    Ok(())
}

pub(crate) fn post_transform(ctx: &NodeCtx<'_>) -> Result<PostTransform, ImportError> {
    Ok(
        match ctx.attr_s("post_transform").as_deref().unwrap_or("NONE") {
            "NONE" => PostTransform::None,
            "SOFTMAX" => PostTransform::Softmax,
            "LOGISTIC" => PostTransform::Logistic,
            "SOFTMAX_ZERO" => PostTransform::SoftmaxZero,
            "PROBIT" => PostTransform::Probit,
            other => return Err(ctx.err(format!("unknown post_transform '{other}'"))),
        },
    )
}

/// Reads `coefficients`/`intercepts` as a Dense of `features → rows`.
fn dense_from_coefficients(
    ctx: &NodeCtx<'_>,
    features: usize,
) -> Result<(usize, Vec<f64>, Vec<f64>), ImportError> {
    let coef: Vec<f64> = ctx
        .attr_floats("coefficients")
        .iter()
        .map(|&v| v as f64)
        .collect();
    if coef.is_empty() || !coef.len().is_multiple_of(features) {
        return Err(ctx.err(format!(
            "{} coefficients do not split into rows of {features} features",
            coef.len()
        )));
    }
    let rows = coef.len() / features;
    let mut bias: Vec<f64> = ctx
        .attr_floats("intercepts")
        .iter()
        .map(|&v| v as f64)
        .collect();
    if bias.is_empty() {
        bias = vec![0.0; rows];
    }
    if bias.len() != rows {
        return Err(ctx.err(format!(
            "{} intercepts for {rows} coefficient rows",
            bias.len()
        )));
    }
    Ok((rows, coef, bias))
}

pub(crate) fn features_of(ctx: &NodeCtx<'_>, x: crate::ValueId) -> Result<usize, ImportError> {
    match ctx.info(x).shape.as_slice() {
        [1, f] => Ok(*f),
        s => Err(ctx.err(format!("input must be [batch, features], got {s:?}"))),
    }
}

pub(crate) fn linear_classifier(ctx: &mut NodeCtx<'_>) -> Result<(), ImportError> {
    let x = ctx.required_input(0)?;
    let features = features_of(ctx, x)?;
    if ctx.attr_strings_len("classlabels_strings") > 0 {
        return Err(ctx.err("string class labels are not supported: export with integer labels"));
    }
    let labels = ctx.attr_ints("classlabels_ints");
    let (rows, weight, bias) = dense_from_coefficients(ctx, features)?;
    let binary_single_score = rows == 1 && labels.len() == 2;
    if !binary_single_score && rows != labels.len() {
        return Err(ctx.err(format!(
            "{rows} score rows for {} class labels",
            labels.len()
        )));
    }
    let pt = post_transform(ctx)?;
    if pt == PostTransform::Probit {
        return Err(ctx.err("post_transform PROBIT is not supported"));
    }
    let (label_name, score_name) = match (ctx.output_name(0), ctx.output_name(1)) {
        (Some(l), Some(s)) => (l.to_string(), s.to_string()),
        _ => return Err(ctx.err("LinearClassifier needs both outputs (label, scores)")),
    };
    let raw = format!("{}/scores", ctx.node_name());
    let dense = Op::Dense {
        inputs: features,
        outputs: rows,
        weight,
        bias,
    };
    let scores = ctx.add_node(dense, vec![x], vec![(raw, vec![1, rows], DType::F32)]);
    let head = Op::ClassifierHead {
        labels: labels.clone(),
        post_transform: pt,
        binary_single_score,
    };
    ctx.add_sub_node(
        "head",
        head,
        scores,
        vec![
            (label_name, vec![1], DType::I64),
            (score_name, vec![1, labels.len()], DType::F32),
        ],
    );
    Ok(())
}

/// ai.onnx.ml SVMClassifier with a linear kernel (skl2onnx's `SVC(kernel="linear")`).
/// Each one-vs-one decision `s_ij = Σ_m c_m ⟨sv_m, x⟩ + ρ_ij` (support vectors of
/// classes `i` and `j`, coefficient rows as onnxruntime reads them) is the linear map
/// `⟨Σ_m c_m sv_m, x⟩ + ρ_ij`: the circuit computes the decisions, no bootstrap, and the
/// client votes. Two classes: onnxruntime labels `classlabels[0]` when `s > 0` (a vote
/// for the pair's first class), with scores `[−s, s]`, the classifier head of one score
/// with the labels swapped; more: [`Op::OneVsOneVotes`], the decisions as scores.
/// Other kernels need every support vector's kernel in the circuit, `prob_a`/`prob_b`
/// Platt scaling of the decisions: each refused by name.
pub(crate) fn svm_classifier(ctx: &mut NodeCtx<'_>) -> Result<(), ImportError> {
    let x = ctx.required_input(0)?;
    let features = features_of(ctx, x)?;
    linear_kernel(ctx)?;
    if ctx.attr_strings_len("classlabels_strings") > 0 {
        return Err(ctx.err("string class labels are not supported: export with integer labels"));
    }
    let labels = ctx.attr_ints("classlabels_ints");
    let per_class: Vec<usize> = ctx
        .attr_ints("vectors_per_class")
        .iter()
        .map(|&n| n.max(0) as usize)
        .collect();
    let k = labels.len();
    let pairs = k * k.saturating_sub(1) / 2;
    let rho = ctx.attr_floats("rho");
    if k < 2 || per_class.len() != k || rho.len() != pairs {
        return Err(ctx.err(format!(
            "{k} class labels, {} support vector counts and {} rho values: a one-vs-one SVC of {k} classes has {pairs}",
            per_class.len(),
            rho.len()
        )));
    }
    if !ctx.attr_floats("prob_a").is_empty() {
        return Err(ctx.err("SVC(probability=True) is not supported (Platt scaling of the one-vs-one decisions): export without probability"));
    }
    if post_transform(ctx)? != PostTransform::None {
        return Err(ctx.err("SVMClassifier post_transform other than NONE is not supported"));
    }
    let count: usize = per_class.iter().sum();
    let (coef, vectors) = support_vectors(ctx, count, k - 1, features)?;
    let start: Vec<usize> = per_class
        .iter()
        .scan(0, |at, &n| {
            *at += n;
            Some(*at - n)
        })
        .collect();
    let mut weight = vec![0.0f64; pairs * features];
    let mut bias = Vec::with_capacity(pairs);
    let rows = (0..k).flat_map(|i| (i + 1..k).map(move |j| (i, j)));
    for ((i, j), row) in rows.zip(weight.chunks_mut(features)) {
        let range = |c: usize| start[c]..start[c] + per_class[c];
        add_folded(row, &coef[(j - 1) * count..j * count], &vectors, range(i));
        add_folded(row, &coef[i * count..(i + 1) * count], &vectors, range(j));
        bias.push(f64::from(rho[bias.len()]));
    }
    let (label_name, score_name) = match (ctx.output_name(0), ctx.output_name(1)) {
        (Some(l), Some(s)) => (l.to_string(), s.to_string()),
        _ => return Err(ctx.err("SVMClassifier needs both outputs (label, scores)")),
    };
    let raw = format!("{}/decisions", ctx.node_name());
    let dense = Op::Dense {
        inputs: features,
        outputs: pairs,
        weight,
        bias,
    };
    let decisions = ctx.add_node(dense, vec![x], vec![(raw, vec![1, pairs], DType::F32)]);
    let (head, scores) = match k {
        2 => (
            Op::ClassifierHead {
                labels: vec![labels[1], labels[0]],
                post_transform: PostTransform::None,
                binary_single_score: true,
            },
            2,
        ),
        _ => (Op::OneVsOneVotes { labels }, pairs),
    };
    ctx.add_sub_node(
        "head",
        head,
        decisions,
        vec![
            (label_name, vec![1], DType::I64),
            (score_name, vec![1, scores], DType::F32),
        ],
    );
    Ok(())
}

/// ai.onnx.ml SVMRegressor with a linear kernel over its support vectors (skl2onnx's
/// `SVR(kernel="linear")`): `Σ_m c_m ⟨sv_m, x⟩ + ρ`, one linear map. A one-class SVM
/// (its sign) and other kernels are refused by name.
pub(crate) fn svm_regressor(ctx: &mut NodeCtx<'_>) -> Result<(), ImportError> {
    let x = ctx.required_input(0)?;
    let features = features_of(ctx, x)?;
    linear_kernel(ctx)?;
    if ctx.attr_i("one_class", 0) != 0 {
        return Err(ctx.err("a one-class SVM (OneClassSVM) is not supported"));
    }
    if post_transform(ctx)? != PostTransform::None {
        return Err(ctx.err("SVMRegressor post_transform other than NONE is not supported"));
    }
    let rho = ctx.attr_floats("rho");
    let count = ctx.attr_i("n_supports", 0).max(0) as usize;
    if rho.len() != 1 {
        return Err(ctx.err(format!(
            "{} rho values for one regression target",
            rho.len()
        )));
    }
    let (coef, vectors) = support_vectors(ctx, count, 1, features)?;
    let mut weight = vec![0.0f64; features];
    add_folded(&mut weight, &coef, &vectors, 0..count);
    let out = ctx.required_output(0)?;
    let dense = Op::Dense {
        inputs: features,
        outputs: 1,
        weight,
        bias: vec![f64::from(rho[0])],
    };
    ctx.add_node(dense, vec![x], vec![(out, vec![1, 1], DType::F32)]);
    Ok(())
}

/// Refuses an SVM kernel other than linear, naming it.
fn linear_kernel(ctx: &NodeCtx<'_>) -> Result<(), ImportError> {
    match ctx.attr_s("kernel_type").as_deref().unwrap_or("LINEAR") {
        "LINEAR" => Ok(()),
        kernel => Err(ctx.err(format!("kernel {kernel} is not supported: only a linear kernel is a linear map of the input (train with kernel=\"linear\", or LinearSVC / LinearSVR)"))),
    }
}

/// The `coefficients` (`rows` rows of one per support vector) and `support_vectors`
/// (`count` of `features` values) of an SVM node, their sizes checked.
fn support_vectors(
    ctx: &NodeCtx<'_>,
    count: usize,
    rows: usize,
    features: usize,
) -> Result<(Vec<f32>, Vec<f32>), ImportError> {
    let coef = ctx.attr_floats("coefficients");
    let vectors = ctx.attr_floats("support_vectors");
    if count == 0 || coef.len() != rows * count || vectors.len() != count * features {
        return Err(ctx.err(format!(
            "{} coefficients and {} support vector values for {count} support vectors of {features} features",
            coef.len(),
            vectors.len()
        )));
    }
    Ok((coef, vectors))
}

/// Adds `Σ_m coef[m] · sv_m` over the support vectors `range` (rows of `vectors`, each
/// `into.len()` long) to `into`: a linear kernel's weight vector.
fn add_folded(into: &mut [f64], coef: &[f32], vectors: &[f32], range: std::ops::Range<usize>) {
    let features = into.len();
    for m in range {
        let sv = &vectors[m * features..(m + 1) * features];
        for (w, &v) in into.iter_mut().zip(sv) {
            *w += f64::from(coef[m]) * f64::from(v);
        }
    }
}

pub(crate) fn linear_regressor(ctx: &mut NodeCtx<'_>) -> Result<(), ImportError> {
    let x = ctx.required_input(0)?;
    let features = features_of(ctx, x)?;
    let (rows, weight, bias) = dense_from_coefficients(ctx, features)?;
    let targets = ctx.attr_i("targets", 1) as usize;
    if targets != rows {
        return Err(ctx.err(format!(
            "targets={targets} but coefficients give {rows} rows"
        )));
    }
    if post_transform(ctx)? != PostTransform::None {
        return Err(ctx.err("LinearRegressor post_transform other than NONE is not supported"));
    }
    let out = ctx.required_output(0)?;
    ctx.add_node(
        Op::Dense {
            inputs: features,
            outputs: rows,
            weight,
            bias,
        },
        vec![x],
        vec![(out, vec![1, rows], DType::F32)],
    );
    Ok(())
}

/// MatMul of two varying tensors `[.., m, k] × [.., k, n]` (equal leading dimensions):
/// every product `a[.., i, l]·b[.., l, j]` as a [`Op::Pairwise`] Mul, summed by an
/// [`Op::Sparse`].
fn matmul_varying(
    ctx: &mut NodeCtx<'_>,
    a: crate::ValueId,
    b: crate::ValueId,
) -> Result<(), ImportError> {
    let (sa, sb) = (ctx.info(a).shape.clone(), ctx.info(b).shape.clone());
    let r = sa.len();
    if r < 2 || sb.len() != r || sa[..r - 2] != sb[..r - 2] || sa[r - 1] != sb[r - 2] {
        return Err(ctx.err(format!("encrypted operands of shapes {sa:?} and {sb:?}: fhec multiplies [.., m, k] by [.., k, n] with equal leading dimensions")));
    }
    let (m, k, n) = (sa[r - 2], sa[r - 1], sb[r - 1]);
    let batch: usize = sa[..r - 2].iter().product();
    let (mut left, mut right) = (Vec::new(), Vec::new());
    for bt in 0..batch {
        for i in 0..m {
            for j in 0..n {
                for l in 0..k {
                    left.push(((bt * m + i) * k + l) as u32);
                    right.push(((bt * k + l) * n + j) as u32);
                }
            }
        }
    }
    let dtype = ctx.info(a).dtype;
    let name = format!("{}/products", ctx.node_name());
    let count = left.len();
    let p = ctx.add_sub_node(
        "products",
        Op::Pairwise {
            kind: crate::BinaryKind::Mul,
            left,
            right,
        },
        vec![a, b],
        vec![(name, vec![1, count], dtype)],
    )[0];
    let mut map = crate::graph::SparseMap::default();
    for row in 0..batch * m * n {
        map.push_row(
            (0..k).map(|l| crate::graph::SparseTerm {
                slot: 0,
                index: (row * k + l) as u32,
                weight: 1.0,
            }),
            0.0,
        );
    }
    let mut shape = sa.clone();
    shape[r - 1] = n;
    let out = ctx.required_output(0)?;
    ctx.add_node(Op::Sparse(map), vec![p], vec![(out, shape, dtype)]);
    Ok(())
}

/// Merges a Dense whose only reader is another Dense into it: `W₂(W₁x + b₁) + b₂ =
/// (W₂W₁)x + (W₂b₁ + b₂)`, the same function with one layer of weights, so the circuit
/// needs no table lookup between them (scikit-learn's PCA before a linear model, two
/// torch Linear layers with only a Dropout between). The inner node is left unread for
/// the dead-node pass; a value the graph returns is never merged away.
pub(crate) fn fuse_dense_chains(nodes: &mut [crate::graph::Node], outputs: &[crate::ValueId]) {
    for j in 0..nodes.len() {
        let Op::Dense { .. } = nodes[j].op else {
            continue;
        };
        let Some(&v) = nodes[j].inputs.first() else {
            continue;
        };
        let readers = nodes.iter().filter(|n| n.inputs.contains(&v)).count();
        if readers != 1 || outputs.contains(&v) {
            continue;
        }
        let Some(i) = nodes[..j].iter().position(|n| n.outputs == [v]) else {
            continue;
        };
        let (
            Op::Dense {
                inputs: k1,
                outputs: n1,
                weight: w1,
                bias: b1,
            },
            Op::Dense {
                inputs: k2,
                outputs: n2,
                weight: w2,
                bias: b2,
            },
        ) = (&nodes[i].op, &nodes[j].op)
        else {
            continue;
        };
        if n1 != k2 {
            continue;
        }
        let (k1, k2, n2) = (*k1, *k2, *n2);
        let mut weight = vec![0.0; n2 * k1];
        let mut bias = b2.clone();
        for o in 0..n2 {
            for m in 0..k2 {
                let w = w2[o * k2 + m];
                if w == 0.0 {
                    continue;
                }
                bias[o] += w * b1[m];
                for (acc, &x) in weight[o * k1..(o + 1) * k1]
                    .iter_mut()
                    .zip(&w1[m * k1..(m + 1) * k1])
                {
                    *acc += w * x;
                }
            }
        }
        let input = nodes[i].inputs.clone();
        nodes[j].op = Op::Dense {
            inputs: k1,
            outputs: n2,
            weight,
            bias,
        };
        nodes[j].inputs = input;
    }
}
