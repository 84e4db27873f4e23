//! ai.onnx.ml `TreeEnsemble` (opset 5), the successor of TreeEnsembleRegressor and
//! TreeEnsembleClassifier. Interior nodes are the `nodes_*` tuples; a child is either
//! another interior node or, when its `nodes_trueleafs`/`nodes_falseleafs` flag is set,
//! an index into the `leaf_*` tuples (one `(target, weight)` each). `tree_roots` names
//! each tree's root; a root whose two children are the same leaf is a one-leaf tree.
//! It becomes the same [`Op::TreeEnsemble`] as the older ops, so the lowering is shared.

use super::linear::features_of;
use super::trees::index_below;
use crate::graph::{BranchMode, Tree, TreeEnsemble, TreeNode};
use crate::{ImportError, NodeCtx};

/// Values of a tensor attribute (floats, doubles or integers), empty when absent.
fn tensor_values(ctx: &NodeCtx<'_>, name: &str) -> Result<Vec<f64>, ImportError> {
    Ok(ctx.attr_tensor(name)?.map_or_else(Vec::new, |t| t.data))
}

fn mode_of(ctx: &NodeCtx<'_>, node: usize, m: f64) -> Result<BranchMode, ImportError> {
    Ok(match m as i64 {
        0 => BranchMode::Leq,
        1 => BranchMode::Lt,
        2 => BranchMode::Gte,
        3 => BranchMode::Gt,
        4 => BranchMode::Eq,
        5 => BranchMode::Neq,
        6 => {
            return Err(ctx.err(format!(
                "node {node}: set membership (BRANCH_MEMBER) is not supported"
            )))
        }
        other => return Err(ctx.err(format!("node {node}: unknown node mode {other}"))),
    })
}

/// The `nodes_*` and `leaf_*` tuples, checked for equal lengths.
struct Tuples {
    features: Vec<i64>,
    splits: Vec<f64>,
    modes: Vec<f64>,
    true_ids: Vec<i64>,
    false_ids: Vec<i64>,
    true_leafs: Vec<i64>,
    false_leafs: Vec<i64>,
    leaf_targets: Vec<i64>,
    leaf_weights: Vec<f64>,
}

impl Tuples {
    fn read(ctx: &NodeCtx<'_>) -> Result<Self, ImportError> {
        let t = Tuples {
            features: ctx.attr_ints("nodes_featureids"),
            splits: tensor_values(ctx, "nodes_splits")?,
            modes: tensor_values(ctx, "nodes_modes")?,
            true_ids: ctx.attr_ints("nodes_truenodeids"),
            false_ids: ctx.attr_ints("nodes_falsenodeids"),
            true_leafs: ctx.attr_ints("nodes_trueleafs"),
            false_leafs: ctx.attr_ints("nodes_falseleafs"),
            leaf_targets: ctx.attr_ints("leaf_targetids"),
            leaf_weights: tensor_values(ctx, "leaf_weights")?,
        };
        let n = t.features.len();
        for (what, len) in [
            ("nodes_splits", t.splits.len()),
            ("nodes_modes", t.modes.len()),
            ("nodes_truenodeids", t.true_ids.len()),
            ("nodes_falsenodeids", t.false_ids.len()),
            ("nodes_trueleafs", t.true_leafs.len()),
            ("nodes_falseleafs", t.false_leafs.len()),
        ] {
            if len != n {
                return Err(ctx.err(format!("{what} has {len} entries, nodes_featureids {n}")));
            }
        }
        if t.leaf_targets.len() != t.leaf_weights.len() || t.leaf_weights.is_empty() {
            return Err(ctx.err(format!(
                "leaf_targetids has {} entries, leaf_weights {} (they must match, and not be empty)",
                t.leaf_targets.len(),
                t.leaf_weights.len()
            )));
        }
        Ok(t)
    }

    /// One tree from `root`, its nodes in depth-first order (root first).
    fn tree(
        &self,
        ctx: &NodeCtx<'_>,
        root: i64,
        features: usize,
        outputs: usize,
    ) -> Result<Tree, ImportError> {
        let interior = |i: i64| {
            index_below(i, self.features.len())
                .ok_or_else(|| ctx.err(format!("interior node {i} does not exist")))
        };
        let leaf = |i: i64| -> Result<TreeNode, ImportError> {
            let l = index_below(i, self.leaf_weights.len())
                .ok_or_else(|| ctx.err(format!("leaf {i} does not exist")))?;
            let target = index_below(self.leaf_targets[l], outputs).ok_or_else(|| {
                ctx.err(format!(
                    "leaf {l} targets {} of {outputs} targets",
                    self.leaf_targets[l]
                ))
            })?;
            Ok(TreeNode::Leaf {
                weights: vec![(target, self.leaf_weights[l])],
            })
        };
        let r = interior(root)?;
        // a one-leaf tree: both children of the root name the same leaf
        if self.true_leafs[r] != 0
            && self.false_leafs[r] != 0
            && self.true_ids[r] == self.false_ids[r]
        {
            return Ok(Tree {
                nodes: vec![leaf(self.true_ids[r])?],
            });
        }
        let mut nodes: Vec<TreeNode> = Vec::new();
        let mut visited = vec![false; self.features.len()];
        // (interior node, slot its index goes to in the parent: (parent, true side))
        let mut stack: Vec<(usize, Option<(usize, bool)>)> = vec![(r, None)];
        while let Some((i, parent)) = stack.pop() {
            if std::mem::replace(&mut visited[i], true) {
                return Err(ctx.err(format!(
                    "tree rooted at {root} is not a tree (node {i} reached twice)"
                )));
            }
            let at = nodes.len();
            let feature = index_below(self.features[i], features).ok_or_else(|| {
                ctx.err(format!(
                    "node {i} reads feature {} of {features}",
                    self.features[i]
                ))
            })?;
            nodes.push(TreeNode::Branch {
                feature,
                mode: mode_of(ctx, i, self.modes[i])?,
                threshold: self.splits[i],
                if_true: 0,
                if_false: 0,
            });
            link(&mut nodes, parent, at);
            for (side, id, is_leaf) in [
                (false, self.false_ids[i], self.false_leafs[i]),
                (true, self.true_ids[i], self.true_leafs[i]),
            ] {
                if is_leaf != 0 {
                    let l = nodes.len();
                    nodes.push(leaf(id)?);
                    link(&mut nodes, Some((at, side)), l);
                } else {
                    stack.push((interior(id)?, Some((at, side))));
                }
            }
        }
        Ok(Tree { nodes })
    }
}

/// Points the parent's child slot at node `child`.
fn link(nodes: &mut [TreeNode], parent: Option<(usize, bool)>, child: usize) {
    if let Some((p, side)) = parent {
        if let TreeNode::Branch {
            if_true, if_false, ..
        } = &mut nodes[p]
        {
            *(if side { if_true } else { if_false }) = child;
        }
    }
}

pub(crate) fn tree_ensemble(ctx: &mut NodeCtx<'_>) -> Result<(), ImportError> {
    let x = ctx.required_input(0)?;
    let features = features_of(ctx, x)?;
    let outputs = usize::try_from(ctx.attr_i("n_targets", 0))
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(|| ctx.err("n_targets must be positive"))?;
    // post_transform: 0 NONE, 1 SOFTMAX, 2 LOGISTIC, 3 SOFTMAX_ZERO, 4 PROBIT
    let pt = ctx.attr_i("post_transform", 0);
    if pt != 0 {
        return Err(ctx.err(format!(
            "post_transform {pt} is not supported (only 0, NONE: apply Softmax or Sigmoid after the node)"
        )));
    }
    if ctx.attr_tensor("membership_values")?.is_some() {
        return Err(ctx.err("set membership (membership_values) is not supported"));
    }
    let tuples = Tuples::read(ctx)?;
    let roots = ctx.attr_ints("tree_roots");
    if roots.is_empty() {
        return Err(ctx.err("tree_roots is empty"));
    }
    let mut trees = roots
        .iter()
        .map(|&r| tuples.tree(ctx, r, features, outputs))
        .collect::<Result<Vec<_>, _>>()?;
    // aggregate_function: 0 AVERAGE, 1 SUM (default), 2 MIN, 3 MAX
    match ctx.attr_i("aggregate_function", 1) {
        1 => {}
        0 => super::trees::average(&mut trees),
        other => {
            return Err(ctx.err(format!(
                "aggregate_function {other} is not supported (0 AVERAGE, 1 SUM)"
            )))
        }
    }
    // nodes_missing_value_tracks_true only routes NaN features, which fhec refuses
    super::trees::add_scores(
        ctx,
        x,
        TreeEnsemble {
            features,
            outputs,
            trees,
            base_values: vec![0.0; outputs],
        },
    )
}
