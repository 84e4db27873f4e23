//! How close a compiled model's predictions stay to the float model's: the figures
//! `fhec check` gates on (docs/CHECK.md).
//!
//! One model output is scored. A classifier's prediction is its label (an integer
//! output of one element per sample) or the arg-max of its scores (several elements);
//! anything else, one float per sample, is a regression. With labels, a classifier
//! scores accuracy and a regressor R², both in points (×100); without, the compiled
//! model is scored against the float model's own predictions (agreement, or R² against
//! the float outputs), which the float model scores 100 on by definition.

use fhec_frontend_onnx::{Activation, DType, FloatGraph, Op, Tensor};
use serde::Serialize;

/// What a model predicts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    Classification,
    Regression,
}

/// The figure a score is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Percent of samples whose predicted class is the label.
    Accuracy,
    /// Percent of samples whose predicted class is the float model's.
    Agreement,
    /// R² against the labels, ×100.
    R2,
    /// R² against the float model's outputs, ×100.
    R2VsFloat,
}

/// The float model's and the compiled model's score on one test set.
#[derive(Clone, Debug, Serialize)]
pub struct Scores {
    pub task: Task,
    pub metric: Metric,
    /// The graph output scored.
    pub output: String,
    pub samples: usize,
    pub float: f64,
    pub compiled: f64,
}

impl Scores {
    /// Points lost from the float model to the compiled one (negative: gained).
    pub fn drop(&self) -> f64 {
        self.float - self.compiled
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ScoreError {
    #[error("no output named '{0}' (the model's outputs: {1})")]
    NoOutput(String, String),
    #[error("{labels} labels for {samples} test samples")]
    LabelCount { labels: usize, samples: usize },
    #[error("sample {0}: the scored output is empty")]
    Empty(usize),
    #[error("no test sample")]
    NoSample,
}

/// The index among `graph`'s outputs of the one named `name`, or of the first.
pub fn scored_output(graph: &FloatGraph, name: Option<&str>) -> Result<usize, ScoreError> {
    let Some(name) = name else {
        return Ok(0);
    };
    graph
        .outputs
        .iter()
        .position(|&o| graph.value(o).name == name)
        .ok_or_else(|| {
            let names: Vec<&str> = graph
                .outputs
                .iter()
                .map(|&o| graph.value(o).name.as_str())
                .collect();
            ScoreError::NoOutput(name.to_string(), names.join(", "))
        })
}

/// Whether output `k` of `graph` is one probability from a Sigmoid (through any
/// reshapes): a binary classifier's, as torch models trained with a BCE loss end.
pub fn binary_probability(graph: &FloatGraph, k: usize) -> bool {
    let Some(&out) = graph.outputs.get(k) else {
        return false;
    };
    if graph.value(out).shape.iter().product::<usize>() != 1 {
        return false;
    }
    let mut v = out;
    while let Some(node) = graph.nodes.iter().find(|n| n.outputs.contains(&v)) {
        match &node.op {
            Op::Activation(Activation::Sigmoid) => return true,
            Op::Reshape { .. } => v = node.inputs[0],
            _ => return false,
        }
    }
    false
}

/// A classifier's output: integer labels, several scores per sample, or one Sigmoid
/// probability (`binary`).
fn task_of(t: &Tensor, binary: bool) -> Task {
    if t.dtype == DType::I64 || t.dtype == DType::Bool || t.data.len() > 1 || binary {
        Task::Classification
    } else {
        Task::Regression
    }
}

/// One prediction per sample: the label, the arg-max of the scores (first on a tie), a
/// probability's class (over 0.5: 1) or the regression value.
fn predictions(outputs: &[Vec<Tensor>], k: usize, task: Task) -> Result<Vec<f64>, ScoreError> {
    outputs
        .iter()
        .enumerate()
        .map(|(i, o)| {
            let t = o.get(k).ok_or(ScoreError::Empty(i))?;
            let first = *t.data.first().ok_or(ScoreError::Empty(i))?;
            Ok(if task == Task::Classification && t.data.len() > 1 {
                let mut best = (0, first);
                for (j, &v) in t.data.iter().enumerate() {
                    if v > best.1 {
                        best = (j, v);
                    }
                }
                best.0 as f64
            } else if task == Task::Classification && matches!(t.dtype, DType::F32 | DType::F64) {
                f64::from(first > 0.5)
            } else {
                first
            })
        })
        .collect()
}

fn percent_equal(a: &[f64], b: &[f64]) -> f64 {
    100.0 * a.iter().zip(b).filter(|(x, y)| x == y).count() as f64 / a.len().max(1) as f64
}

/// R² of `pred` against `truth`, ×100 (100 when `truth` is constant and matched).
fn r2_points(pred: &[f64], truth: &[f64]) -> f64 {
    let mean = truth.iter().sum::<f64>() / truth.len().max(1) as f64;
    let ss_res: f64 = pred.iter().zip(truth).map(|(p, t)| (p - t).powi(2)).sum();
    let ss_tot: f64 = truth.iter().map(|t| (t - mean).powi(2)).sum();
    if ss_tot == 0.0 {
        return if ss_res == 0.0 {
            100.0
        } else {
            f64::NEG_INFINITY
        };
    }
    100.0 * (1.0 - ss_res / ss_tot)
}

/// Scores output `k` of the float model's and the compiled model's outputs on the same
/// samples, against `labels` when given.
pub fn score(
    graph: &FloatGraph,
    k: usize,
    float: &[Vec<Tensor>],
    compiled: &[Vec<Tensor>],
    labels: Option<&[f64]>,
) -> Result<Scores, ScoreError> {
    let first = float
        .first()
        .and_then(|o| o.get(k))
        .ok_or(ScoreError::NoSample)?;
    let task = task_of(first, binary_probability(graph, k));
    let float_pred = predictions(float, k, task)?;
    let compiled_pred = predictions(compiled, k, task)?;
    if let Some(l) = labels {
        if l.len() != float_pred.len() {
            return Err(ScoreError::LabelCount {
                labels: l.len(),
                samples: float_pred.len(),
            });
        }
    }
    let (metric, float_score, compiled_score) = match (task, labels) {
        (Task::Classification, Some(l)) => (
            Metric::Accuracy,
            percent_equal(&float_pred, l),
            percent_equal(&compiled_pred, l),
        ),
        (Task::Classification, None) => (
            Metric::Agreement,
            100.0,
            percent_equal(&compiled_pred, &float_pred),
        ),
        (Task::Regression, Some(l)) => (
            Metric::R2,
            r2_points(&float_pred, l),
            r2_points(&compiled_pred, l),
        ),
        (Task::Regression, None) => (
            Metric::R2VsFloat,
            100.0,
            r2_points(&compiled_pred, &float_pred),
        ),
    };
    let output = graph
        .outputs
        .get(k)
        .map(|&o| graph.value(o).name.clone())
        .unwrap_or_default();
    Ok(Scores {
        task,
        metric,
        output,
        samples: float_pred.len(),
        float: float_score,
        compiled: compiled_score,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(data: Vec<f64>, dtype: DType) -> Vec<Tensor> {
        vec![Tensor::new(vec![1, data.len()], data, dtype)]
    }

    #[test]
    fn classes_come_from_labels_or_the_arg_max_of_scores() {
        let scores = [
            t(vec![0.1, 0.7, 0.2], DType::F32),
            t(vec![0.9, 0.05, 0.05], DType::F32),
        ];
        assert_eq!(
            predictions(&scores, 0, Task::Classification).unwrap(),
            vec![1.0, 0.0]
        );
        assert_eq!(task_of(&scores[0][0], false), Task::Classification);
        assert_eq!(
            task_of(&t(vec![3.0], DType::I64)[0], false),
            Task::Classification
        );
        assert_eq!(
            task_of(&t(vec![3.5], DType::F32)[0], false),
            Task::Regression
        );
        // a Sigmoid's probability: class 1 over 0.5
        let p = [t(vec![0.7], DType::F32), t(vec![0.2], DType::F32)];
        assert_eq!(task_of(&p[0][0], true), Task::Classification);
        assert_eq!(
            predictions(&p, 0, Task::Classification).unwrap(),
            vec![1.0, 0.0]
        );
    }

    #[test]
    fn points_are_percent_and_r2_times_100() {
        assert_eq!(
            percent_equal(&[1.0, 2.0, 3.0, 4.0], &[1.0, 2.0, 0.0, 4.0]),
            75.0
        );
        assert_eq!(r2_points(&[1.0, 2.0, 3.0], &[1.0, 2.0, 3.0]), 100.0);
        // predicting the mean scores 0
        assert!(r2_points(&[2.0, 2.0, 2.0], &[1.0, 2.0, 3.0]).abs() < 1e-12);
    }
}
