//! Float reference execution of a [`FloatGraph`], one sample at a time.

use crate::graph::*;
use crate::ImportError;

/// Rounds/truncates a value the way ONNX Cast does for the target type.
pub fn cast_value(v: f64, to: DType) -> f64 {
    match to {
        DType::F32 => v as f32 as f64,
        DType::F64 => v,
        DType::I64 => v.trunc(),
        DType::Bool => (v != 0.0) as u8 as f64,
    }
}

/// Evaluates every value of the graph for one sample. Returns one entry per value
/// (`None` for values the inputs do not reach).
pub fn evaluate(graph: &FloatGraph, inputs: &[Tensor]) -> Result<Vec<Option<Tensor>>, ImportError> {
    let mut env: Vec<Option<Tensor>> = graph.values.iter().map(|v| v.constant.clone()).collect();
    if inputs.len() != graph.inputs.len() {
        return Err(ImportError::Eval(format!(
            "{} inputs given, the model has {}",
            inputs.len(),
            graph.inputs.len()
        )));
    }
    for (&id, t) in graph.inputs.iter().zip(inputs) {
        env[id.0 as usize] = Some(t.clone());
    }
    evaluate_nodes(graph, 0..graph.nodes.len(), &mut env)?;
    Ok(env)
}

/// Evaluates the nodes with the given indices (in order) on `env`.
pub fn evaluate_nodes(
    graph: &FloatGraph,
    nodes: impl IntoIterator<Item = usize>,
    env: &mut [Option<Tensor>],
) -> Result<(), ImportError> {
    for i in nodes {
        let node = &graph.nodes[i];
        let args: Vec<&Tensor> = node
            .inputs
            .iter()
            .map(|id| {
                env[id.0 as usize].as_ref().ok_or_else(|| {
                    ImportError::Eval(format!(
                        "node '{}': input '{}' not computed",
                        node.name,
                        graph.value(*id).name
                    ))
                })
            })
            .collect::<Result<_, _>>()?;
        let outs = eval_op(&node.op, &args);
        for (id, mut t) in node.outputs.iter().zip(outs) {
            let info = graph.value(*id);
            t.dtype = info.dtype;
            if matches!(
                node.op,
                Op::Sparse(_) | Op::Conv(_) | Op::Pairwise { .. } | Op::GroupMax { .. }
            ) && t.numel() == info.shape.iter().product::<usize>()
            {
                t.shape = info.shape.clone(); // these ops compute flat element lists
            }
            if t.shape != info.shape {
                return Err(ImportError::Eval(format!(
                    "node '{}' produced shape {:?}, expected {:?}",
                    node.name, t.shape, info.shape
                )));
            }
            env[id.0 as usize] = Some(t);
        }
    }
    Ok(())
}

/// Evaluates one operator. Operands have the shapes the importer checked.
pub fn eval_op(op: &Op, args: &[&Tensor]) -> Vec<Tensor> {
    let x = args[0];
    let same = |data: Vec<f64>| Tensor::new(x.shape.clone(), data, x.dtype);
    match op {
        Op::Dense {
            inputs,
            outputs,
            weight,
            bias,
        } => {
            let rows = x.numel() / inputs;
            let mut y = Vec::with_capacity(rows * outputs);
            for r in 0..rows {
                let xr = &x.data[r * inputs..(r + 1) * inputs];
                for j in 0..*outputs {
                    let w = &weight[j * inputs..(j + 1) * inputs];
                    y.push(xr.iter().zip(w).map(|(a, b)| a * b).sum::<f64>() + bias[j]);
                }
            }
            let mut shape = x.shape.clone();
            if let Some(last) = shape.last_mut() {
                *last = *outputs;
            }
            vec![Tensor::new(shape, y, x.dtype)]
        }
        Op::BinaryConst {
            kind,
            constant,
            constant_first,
        } => vec![same(
            x.data
                .iter()
                .zip(&constant.data)
                .map(|(&v, &c)| {
                    if *constant_first {
                        kind.apply(c, v)
                    } else {
                        kind.apply(v, c)
                    }
                })
                .collect(),
        )],
        Op::Activation(a) => vec![same(x.data.iter().map(|&v| a.apply(v)).collect())],
        Op::Sparse(map) => {
            let data = (0..map.rows())
                .map(|j| {
                    map.row(j).iter().fold(map.bias[j], |a, t| {
                        a + t.weight * args[t.slot as usize].data[t.index as usize]
                    })
                })
                .collect();
            vec![Tensor::new(vec![map.rows()], data, x.dtype)]
        }
        Op::Conv(conv) => {
            let y = conv.eval(&x.data);
            vec![Tensor::new(vec![y.len()], y, x.dtype)]
        }
        Op::Pairwise { kind, left, right } => {
            let (a, b) = (&args[0].data, &args[args.len() - 1].data);
            let data = left
                .iter()
                .zip(right)
                .map(|(&l, &r)| kind.apply(a[l as usize], b[r as usize]))
                .collect();
            vec![Tensor::new(vec![left.len()], data, x.dtype)]
        }
        Op::GroupMax { groups, min } => {
            let data = groups
                .iter()
                .map(|g| {
                    g.iter().map(|&i| x.data[i as usize]).fold(
                        if *min {
                            f64::INFINITY
                        } else {
                            f64::NEG_INFINITY
                        },
                        |m, v| if *min { m.min(v) } else { m.max(v) },
                    )
                })
                .collect();
            vec![Tensor::new(vec![groups.len()], data, x.dtype)]
        }
        Op::LogSoftmax { axis } => vec![same(along_axis(x, *axis, |row| {
            softmax(row).into_iter().map(f64::ln).collect()
        }))],
        Op::Reshape { shape } => vec![Tensor::new(shape.clone(), x.data.clone(), x.dtype)],
        Op::Cast { to } => vec![Tensor::new(
            x.shape.clone(),
            x.data.iter().map(|&v| cast_value(v, *to)).collect(),
            *to,
        )],
        Op::ZipMap => vec![x.clone()],
        Op::Impute { replaced, values } => {
            let hit = |v: f64| v == *replaced || (replaced.is_nan() && v.is_nan());
            vec![same(
                x.data
                    .iter()
                    .zip(values)
                    .map(|(&v, &r)| if hit(v) { r } else { v })
                    .collect(),
            )]
        }
        Op::TakeLast { data } => {
            let last = data.shape.last().copied().unwrap_or(1).max(1);
            let rows = data.numel() / last;
            let mut out = Vec::with_capacity(rows * x.numel());
            for r in 0..rows {
                for &i in &x.data {
                    // indices were produced by the model; out of range reads the last
                    out.push(data.data[r * last + (i.max(0.0) as usize).min(last - 1)]);
                }
            }
            let mut shape = data.shape[..data.shape.len().saturating_sub(1)].to_vec();
            if shape.is_empty() {
                shape.push(1);
            }
            shape.push(x.numel());
            vec![Tensor::new(shape, out, data.dtype)]
        }
        Op::SquaredDistances { points } => {
            let features = points.shape.last().copied().unwrap_or(1).max(1);
            let (n, rows) = (points.numel() / features, x.numel() / features);
            let mut out = Vec::with_capacity(n * rows);
            for p in points.data.chunks(features) {
                for r in x.data.chunks(features) {
                    out.push(r.iter().zip(p).map(|(a, b)| (a - b) * (a - b)).sum());
                }
            }
            vec![Tensor::new(vec![n, rows], out, x.dtype)]
        }
        Op::TopK { k, largest } => {
            let last = x.shape.last().copied().unwrap_or(1).max(1);
            let (mut values, mut indices) = (Vec::new(), Vec::new());
            for row in x.data.chunks(last) {
                let mut order: Vec<usize> = (0..row.len()).collect();
                order.sort_by(|&a, &b| {
                    let by_value = row[a].total_cmp(&row[b]);
                    if *largest {
                        by_value.reverse()
                    } else {
                        by_value
                    }
                    .then(a.cmp(&b))
                });
                for &i in order.iter().take(*k) {
                    values.push(row[i]);
                    indices.push(i as f64);
                }
            }
            let mut shape = x.shape.clone();
            if let Some(l) = shape.last_mut() {
                *l = *k;
            }
            vec![
                Tensor::new(shape.clone(), values, x.dtype),
                Tensor::new(shape, indices, DType::I64),
            ]
        }
        Op::Neighbours(nb) => {
            let mut codes = Vec::new();
            for r in x.data.chunks(nb.features.max(1)) {
                codes.extend(nb.nearest_codes(r).into_iter().map(f64::from));
            }
            let rows = x.numel() / nb.features.max(1);
            vec![Tensor::new(vec![rows, nb.k], codes, DType::I64)]
        }
        Op::Quantize {
            scale,
            zero_point,
            qmin,
            qmax,
        } => vec![Tensor::new(
            x.shape.clone(),
            x.data
                .iter()
                .map(|&v| crate::ops::quantize_value(v, *scale, *zero_point, *qmin, *qmax))
                .collect(),
            DType::I64,
        )],
        Op::Dequantize { scale, zero_point } => vec![Tensor::new(
            x.shape.clone(),
            x.data
                .iter()
                .map(|&q| ((q - *zero_point as f64) as f32 * *scale as f32) as f64)
                .collect(),
            DType::F32,
        )],
        Op::Softmax { axis } => vec![same(along_axis(x, *axis, softmax))],
        Op::Normalizer { norm } => {
            let f = |row: &[f64]| -> Vec<f64> {
                let n = match norm {
                    Norm::Max => row.iter().fold(f64::MIN, |m, &v| m.max(v)),
                    Norm::L1 => row.iter().map(|v| v.abs()).sum(),
                    Norm::L2 => row.iter().map(|v| v * v).sum::<f64>().sqrt(),
                };
                row.iter()
                    .map(|&v| if n == 0.0 { v } else { v / n })
                    .collect()
            };
            vec![same(along_axis(x, x.shape.len() - 1, f))]
        }
        Op::ArgMax {
            axis,
            keepdims,
            select_last_index,
        } => {
            let (outer, len, inner) = split_axis(&x.shape, *axis);
            let mut data = Vec::with_capacity(outer * inner);
            for o in 0..outer {
                for i in 0..inner {
                    let mut best = 0;
                    for k in 1..len {
                        let (v, b) = (
                            x.data[(o * len + k) * inner + i],
                            x.data[(o * len + best) * inner + i],
                        );
                        if v > b || (*select_last_index && v == b) {
                            best = k;
                        }
                    }
                    data.push(best as f64);
                }
            }
            let mut shape = x.shape.clone();
            if *keepdims {
                shape[*axis] = 1;
            } else {
                shape.remove(*axis);
            }
            vec![Tensor::new(shape, data, DType::I64)]
        }
        Op::TreeEnsemble(e) => vec![Tensor::new(vec![1, e.outputs], e.eval(&x.data), DType::F32)],
        Op::OneVsOneVotes { labels } => vec![
            Tensor::new(
                vec![1],
                vec![one_vs_one_label(labels, &x.data) as f64],
                DType::I64,
            ),
            x.clone(),
        ],
        Op::ClassifierHead {
            labels,
            post_transform,
            binary_single_score,
        } => {
            let scores: Vec<f64> = if *binary_single_score {
                vec![-x.data[0], x.data[0]]
            } else {
                x.data.clone()
            };
            let best = scores
                .iter()
                .enumerate()
                .fold(0, |b, (i, &v)| if v > scores[b] { i } else { b });
            let label = labels[best] as f64;
            let probs = match post_transform {
                PostTransform::None | PostTransform::Probit => scores,
                PostTransform::Logistic => {
                    scores.iter().map(|&v| 1.0 / (1.0 + (-v).exp())).collect()
                }
                PostTransform::Softmax => softmax(&scores),
                PostTransform::SoftmaxZero => {
                    let m = scores.iter().fold(f64::MIN, |m, &v| m.max(v));
                    let e: Vec<f64> = scores
                        .iter()
                        .map(|&v| if v == 0.0 { 0.0 } else { (v - m).exp() })
                        .collect();
                    let s: f64 = e.iter().sum();
                    e.iter()
                        .map(|v| if s == 0.0 { 0.0 } else { v / s })
                        .collect()
                }
            };
            let n = probs.len();
            vec![
                Tensor::new(vec![1], vec![label], DType::I64),
                Tensor::new(vec![1, n], probs, DType::F32),
            ]
        }
    }
}

/// The label the one-vs-one `decisions` of `labels.len()` classes vote for
/// ([`Op::OneVsOneVotes`]).
fn one_vs_one_label(labels: &[i64], decisions: &[f64]) -> i64 {
    let k = labels.len();
    let mut votes = vec![0usize; k];
    let pairs = (0..k).flat_map(|i| (i + 1..k).map(move |j| (i, j)));
    for ((i, j), &d) in pairs.zip(decisions) {
        votes[if d > 0.0 { i } else { j }] += 1;
    }
    let best = votes
        .iter()
        .enumerate()
        .fold(0, |b, (i, &v)| if v > votes[b] { i } else { b });
    labels.get(best).copied().unwrap_or(0)
}

fn softmax(row: &[f64]) -> Vec<f64> {
    let m = row.iter().fold(f64::MIN, |m, &v| m.max(v));
    let e: Vec<f64> = row.iter().map(|&v| (v - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

fn split_axis(shape: &[usize], axis: usize) -> (usize, usize, usize) {
    (
        shape[..axis].iter().product(),
        shape[axis],
        shape[axis + 1..].iter().product(),
    )
}

/// Applies `f` to every 1-D slice along `axis`.
fn along_axis(x: &Tensor, axis: usize, f: impl Fn(&[f64]) -> Vec<f64>) -> Vec<f64> {
    let (outer, len, inner) = split_axis(&x.shape, axis);
    let mut out = vec![0.0; x.numel()];
    let mut row = vec![0.0; len];
    for o in 0..outer {
        for i in 0..inner {
            for (k, r) in row.iter_mut().enumerate() {
                *r = x.data[(o * len + k) * inner + i];
            }
            for (k, v) in f(&row).into_iter().enumerate() {
                out[(o * len + k) * inner + i] = v;
            }
        }
    }
    out
}
