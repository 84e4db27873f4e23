//! ai.onnx.ml TreeEnsembleClassifier and TreeEnsembleRegressor (opsets 1–3): the
//! `nodes_*` tuples become one [`Tree`] per tree id, the `class_*`/`target_*` tuples
//! the leaves' weights. A classifier ends in the same client-side
//! [`Op::ClassifierHead`] as LinearClassifier.
//!
//! Missing values (`nodes_missing_value_tracks_true`) only route NaN features, which
//! fhec refuses in inputsets and prediction inputs, so they never apply.

use std::collections::BTreeMap;

use super::linear::{features_of, post_transform};
use crate::graph::{BranchMode, DType, Op, PostTransform, Tree, TreeEnsemble, TreeNode};
use crate::{ImportError, NodeCtx};

/// `v` as an index into `len` entries, if it is one.
pub(super) fn index_below(v: i64, len: usize) -> Option<usize> {
    usize::try_from(v).ok().filter(|&i| i < len)
}

/// Floats of `name`, or of `name_as_tensor` (doubles).
fn floats(ctx: &NodeCtx<'_>, name: &str) -> Result<Vec<f64>, ImportError> {
    let f = ctx.attr_floats(name);
    if !f.is_empty() {
        return Ok(f.iter().map(|&v| v as f64).collect());
    }
    Ok(ctx
        .attr_tensor(&format!("{name}_as_tensor"))?
        .map_or_else(Vec::new, |t| t.data))
}

fn mode_of(ctx: &NodeCtx<'_>, s: &str) -> Result<Option<BranchMode>, ImportError> {
    Ok(Some(match s {
        "BRANCH_LEQ" => BranchMode::Leq,
        "BRANCH_LT" => BranchMode::Lt,
        "BRANCH_GTE" => BranchMode::Gte,
        "BRANCH_GT" => BranchMode::Gt,
        "BRANCH_EQ" => BranchMode::Eq,
        "BRANCH_NEQ" => BranchMode::Neq,
        "LEAF" => return Ok(None),
        other => return Err(ctx.err(format!("unknown node mode '{other}'"))),
    }))
}

/// The trees of the `nodes_*` attributes and the leaf weights of the `prefix_*` ones
/// (`class` or `target`), over `outputs` outputs.
fn read_trees(
    ctx: &NodeCtx<'_>,
    features: usize,
    prefix: &str,
    outputs: usize,
) -> Result<Vec<Tree>, ImportError> {
    let tree_ids = ctx.attr_ints("nodes_treeids");
    let node_ids = ctx.attr_ints("nodes_nodeids");
    let feature_ids = ctx.attr_ints("nodes_featureids");
    let values = floats(ctx, "nodes_values")?;
    let modes = ctx.attr_strings("nodes_modes");
    let true_ids = ctx.attr_ints("nodes_truenodeids");
    let false_ids = ctx.attr_ints("nodes_falsenodeids");
    let n = tree_ids.len();
    for (what, len) in [
        ("nodes_nodeids", node_ids.len()),
        ("nodes_featureids", feature_ids.len()),
        ("nodes_values", values.len()),
        ("nodes_modes", modes.len()),
        ("nodes_truenodeids", true_ids.len()),
        ("nodes_falsenodeids", false_ids.len()),
    ] {
        if len != n {
            return Err(ctx.err(format!("{what} has {len} entries, nodes_treeids {n}")));
        }
    }
    if n == 0 {
        return Err(ctx.err("the ensemble has no nodes"));
    }
    // tree id → node id → index in the tuples
    let mut index: BTreeMap<i64, BTreeMap<i64, usize>> = BTreeMap::new();
    for i in 0..n {
        if index
            .entry(tree_ids[i])
            .or_default()
            .insert(node_ids[i], i)
            .is_some()
        {
            return Err(ctx.err(format!(
                "node {} appears twice in tree {}",
                node_ids[i], tree_ids[i]
            )));
        }
    }
    let w_tree = ctx.attr_ints(&format!("{prefix}_treeids"));
    let w_node = ctx.attr_ints(&format!("{prefix}_nodeids"));
    let w_id = ctx.attr_ints(&format!("{prefix}_ids"));
    let w_val = floats(ctx, &format!("{prefix}_weights"))?;
    if w_node.len() != w_tree.len() || w_id.len() != w_tree.len() || w_val.len() != w_tree.len() {
        return Err(ctx.err(format!("the {prefix}_* attributes differ in length")));
    }
    let mut leaf_weights: BTreeMap<(i64, i64), Vec<(usize, f64)>> = BTreeMap::new();
    for k in 0..w_tree.len() {
        let o = index_below(w_id[k], outputs)
            .ok_or_else(|| ctx.err(format!("{prefix}_ids entry {} out of range", w_id[k])))?;
        leaf_weights
            .entry((w_tree[k], w_node[k]))
            .or_default()
            .push((o, w_val[k]));
    }
    let mut trees = Vec::with_capacity(index.len());
    for (&tree, ids) in &index {
        // node ids → dense positions in this tree
        let pos: BTreeMap<i64, usize> = ids.keys().enumerate().map(|(p, &id)| (id, p)).collect();
        let child = |id: i64| {
            pos.get(&id).copied().ok_or_else(|| {
                ctx.err(format!(
                    "tree {tree} refers to node {id}, which it does not have"
                ))
            })
        };
        let mut nodes = Vec::with_capacity(ids.len());
        for (&id, &i) in ids {
            let node = match mode_of(ctx, &modes[i])? {
                None => TreeNode::Leaf {
                    weights: leaf_weights.remove(&(tree, id)).unwrap_or_default(),
                },
                Some(mode) => {
                    let feature = index_below(feature_ids[i], features).ok_or_else(|| {
                        ctx.err(format!(
                            "tree {tree} node {id} reads feature {} of {features}",
                            feature_ids[i]
                        ))
                    })?;
                    TreeNode::Branch {
                        feature,
                        mode,
                        threshold: values[i],
                        if_true: child(true_ids[i])?,
                        if_false: child(false_ids[i])?,
                    }
                }
            };
            nodes.push(node);
        }
        // the root is the smallest node id; every branch must lead to leaves (no cycles)
        check_acyclic(ctx, tree, &nodes)?;
        trees.push(Tree { nodes });
    }
    if let Some(((t, nid), _)) = leaf_weights.into_iter().next() {
        return Err(ctx.err(format!(
            "{prefix} weights name tree {t} node {nid}, which is not a leaf"
        )));
    }
    Ok(trees)
}

fn check_acyclic(ctx: &NodeCtx<'_>, tree: i64, nodes: &[TreeNode]) -> Result<(), ImportError> {
    let mut seen = vec![false; nodes.len()];
    let mut stack = vec![0usize];
    while let Some(i) = stack.pop() {
        if std::mem::replace(&mut seen[i], true) {
            return Err(ctx.err(format!("tree {tree} is not a tree (node reached twice)")));
        }
        if let TreeNode::Branch {
            if_true, if_false, ..
        } = nodes[i]
        {
            stack.extend([if_true, if_false]);
        }
    }
    Ok(())
}

/// Divides every leaf weight by the tree count (aggregate_function AVERAGE).
pub(super) fn average(trees: &mut [Tree]) {
    let k = trees.len() as f64;
    for t in trees {
        for n in &mut t.nodes {
            if let TreeNode::Leaf { weights } = n {
                for w in weights {
                    w.1 /= k;
                }
            }
        }
    }
}

pub(crate) fn regressor(ctx: &mut NodeCtx<'_>) -> Result<(), ImportError> {
    let x = ctx.required_input(0)?;
    let features = features_of(ctx, x)?;
    let outputs = ctx.attr_i("n_targets", 1).max(1) as usize;
    let mut trees = read_trees(ctx, features, "target", outputs)?;
    match ctx.attr_s("aggregate_function").as_deref().unwrap_or("SUM") {
        "SUM" => {}
        "AVERAGE" => average(&mut trees),
        other => {
            return Err(ctx.err(format!(
                "aggregate_function {other} is not supported (SUM, AVERAGE)"
            )))
        }
    }
    if ctx.attr_s("post_transform").as_deref().unwrap_or("NONE") != "NONE" {
        return Err(ctx.err("a regressor's post_transform other than NONE is not supported"));
    }
    // nodes_missing_value_tracks_true only routes NaN features, which fhec refuses in
    // inputsets and prediction inputs
    let base = floats(ctx, "base_values")?;
    let base_values = match base.len() {
        0 => vec![0.0; outputs],
        1 => vec![base[0]; outputs],
        n if n == outputs => base,
        n => return Err(ctx.err(format!("{n} base_values for {outputs} targets"))),
    };
    add_scores(
        ctx,
        x,
        TreeEnsemble {
            features,
            outputs,
            trees,
            base_values,
        },
    )
}

/// The ensemble's node, writing its scores `[1, outputs]` to output 0.
pub(super) fn add_scores(
    ctx: &mut NodeCtx<'_>,
    x: crate::graph::ValueId,
    e: TreeEnsemble,
) -> Result<(), ImportError> {
    let out = ctx.required_output(0)?;
    let outputs = e.outputs;
    ctx.add_node(
        Op::TreeEnsemble(e),
        vec![x],
        vec![(out, vec![1, outputs], DType::F32)],
    );
    Ok(())
}

pub(crate) fn classifier(ctx: &mut NodeCtx<'_>) -> Result<(), ImportError> {
    let x = ctx.required_input(0)?;
    let features = features_of(ctx, x)?;
    if ctx.attr_strings_len("classlabels_strings") > 0 {
        return Err(ctx.err("string class labels are not supported: export with integer labels"));
    }
    let labels = ctx.attr_ints("classlabels_int64s");
    if labels.len() < 2 {
        return Err(ctx.err(format!("{} class labels", labels.len())));
    }
    let classes = labels.len();
    let mut trees = read_trees(ctx, features, "class", classes)?;
    let pt = post_transform(ctx)?;
    if pt == PostTransform::Probit {
        return Err(ctx.err("post_transform PROBIT is not supported"));
    }
    // nodes_missing_value_tracks_true only routes NaN features, which fhec refuses in
    // inputsets and prediction inputs
    let base = floats(ctx, "base_values")?;
    let used: std::collections::BTreeSet<usize> = trees
        .iter()
        .flat_map(|t| t.nodes.iter())
        .filter_map(|n| match n {
            TreeNode::Leaf { weights } => Some(weights.iter().map(|w| w.0)),
            _ => None,
        })
        .flatten()
        .collect();
    // onnxruntime's binary case: one score column s for two labels. The classes'
    // scores are [1 − s, s] when every weight is ≥ 0 (probabilities, NONE), else [−s, s]
    let binary_single = classes == 2 && used.len() <= 1;
    let (base_values, outputs) = if binary_single {
        let col = used.iter().next().copied().unwrap_or(0);
        let b = match base.len() {
            0 => 0.0,
            1 => base[0],
            2 => base[1],
            n => return Err(ctx.err(format!("{n} base_values for 2 classes"))),
        };
        let all_positive = pt == PostTransform::None
            && trees.iter().flat_map(|t| t.nodes.iter()).all(|n| match n {
                TreeNode::Leaf { weights } => weights.iter().all(|w| w.1 >= 0.0),
                _ => true,
            });
        for t in &mut trees {
            for n in &mut t.nodes {
                if let TreeNode::Leaf { weights } = n {
                    let s: f64 = weights.iter().filter(|w| w.0 == col).map(|w| w.1).sum();
                    *weights = vec![(0, -s), (1, s)];
                }
            }
        }
        // 1 − s or −s: the constant lives in the base value, the leaves subtract
        let first = if all_positive { 1.0 - b } else { -b };
        (vec![first, b], 2)
    } else {
        let bv = match base.len() {
            0 => vec![0.0; classes],
            n if n == classes => base,
            n => return Err(ctx.err(format!("{n} base_values for {classes} classes"))),
        };
        (bv, classes)
    };
    let (label_name, score_name) = match (ctx.output_name(0), ctx.output_name(1)) {
        (Some(l), Some(s)) => (l.to_string(), s.to_string()),
        _ => return Err(ctx.err("TreeEnsembleClassifier needs both outputs (label, scores)")),
    };
    let raw = format!("{}/scores", ctx.node_name());
    let scores = ctx.add_node(
        Op::TreeEnsemble(TreeEnsemble {
            features,
            outputs,
            trees,
            base_values,
        }),
        vec![x],
        vec![(raw, vec![1, outputs], DType::F32)],
    );
    ctx.add_sub_node(
        "head",
        Op::ClassifierHead {
            labels,
            post_transform: pt,
            binary_single_score: false,
        },
        scores,
        vec![
            (label_name, vec![1], DType::I64),
            (score_name, vec![1, classes], DType::F32),
        ],
    );
    Ok(())
}
