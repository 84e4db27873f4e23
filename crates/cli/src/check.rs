//! `fhec check`: a CI gate. Compiles a model, simulates a test set, scores it against
//! the float model and checks each figure against its budget (docs/CHECK.md).
//!
//! Exit codes: 0 every budget holds, 1 a budget is exceeded, 2 the input or the tool
//! failed (the report, when asked for, says which).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Result};
use fhec_compiler::report::{Report, Versions};
use fhec_compiler::score::{self, Scores};
use serde::Serialize;

use crate::files;

/// Version of the report's JSON layout; bumped when a field changes meaning or goes.
pub const REPORT_SCHEMA_VERSION: u32 = 1;

/// The limits a model must stay within; unset ones are reported, not checked.
#[derive(Clone, Debug, Default)]
pub struct Budgets {
    pub max_accuracy_drop: Option<f64>,
    pub max_pbs: Option<f64>,
    pub max_latency_ms: Option<f64>,
    pub max_evaluation_key_mb: Option<f64>,
    pub max_bits: Option<f64>,
}

pub struct CheckArgs<'a> {
    pub model: &'a Path,
    pub inputset: &'a Path,
    pub test: &'a Path,
    pub labels: Option<&'a Path>,
    /// The graph output to score (default: the first).
    pub output: Option<&'a str>,
    pub budgets: Budgets,
    pub report: Option<&'a Path>,
    pub seed: u64,
    pub force: bool,
}

/// Every figure `check` measures.
#[derive(Serialize)]
struct Figures {
    #[serde(flatten)]
    scores: Scores,
    /// Points lost from the float model's score to the compiled model's.
    accuracy_drop: f64,
    pbs_per_sample: usize,
    predicted_latency_ms: Option<f64>,
    /// Millions of bytes (0 for a model without bootstrap).
    evaluation_key_mb: f64,
    max_bits: u32,
    /// fhec's float outputs on the test set against an independent implementation.
    float_reference: FloatReference,
}

/// How fhec's float interpreter compares with tract-onnx on the test set.
#[derive(Serialize)]
struct FloatReference {
    engine: &'static str,
    /// `agrees`, `differs`, `unsupported` (tract cannot run the model) or `not_built`
    /// (fhec built without the `tract` feature).
    status: &'static str,
    detail: Option<String>,
    elements: Option<usize>,
    max_abs_diff: Option<f64>,
    /// Largest `|fhec − tract| / (1 + |tract|)`; `agrees` when at most `tolerance`.
    max_scaled_diff: Option<f64>,
    tolerance: Option<f64>,
}

#[cfg(feature = "tract")]
fn float_reference(
    model: &Path,
    graph: &fhec_frontend_onnx::FloatGraph,
    samples: &[Vec<fhec_frontend_onnx::Tensor>],
    ours: &[Vec<fhec_frontend_onnx::Tensor>],
) -> Result<FloatReference> {
    let onnx = files::read_limited(model, files::memory_budget(), "an ONNX model")?;
    let none = |status, detail| FloatReference {
        engine: fhec_reference::ENGINE,
        status,
        detail: Some(detail),
        elements: None,
        max_abs_diff: None,
        max_scaled_diff: None,
        tolerance: None,
    };
    let reference = match fhec_reference::run(&onnx, Some(files::model_dir(model)), graph, samples)
    {
        Ok(r) => r,
        Err(e) => return Ok(none("unsupported", e.to_string())),
    };
    let a = match fhec_reference::compare(ours, &reference) {
        Ok(a) => a,
        Err(e) => return Ok(none("differs", e.to_string())),
    };
    Ok(FloatReference {
        engine: fhec_reference::ENGINE,
        status: if a.agrees() { "agrees" } else { "differs" },
        detail: None,
        elements: Some(a.elements),
        max_abs_diff: Some(a.max_abs_diff),
        max_scaled_diff: Some(a.max_scaled_diff),
        tolerance: Some(fhec_reference::TOLERANCE),
    })
}

#[cfg(not(feature = "tract"))]
fn float_reference(
    _: &Path,
    _: &fhec_frontend_onnx::FloatGraph,
    _: &[Vec<fhec_frontend_onnx::Tensor>],
    _: &[Vec<fhec_frontend_onnx::Tensor>],
) -> Result<FloatReference> {
    Ok(FloatReference {
        engine: "tract-onnx",
        status: "not_built",
        detail: Some("fhec was built without the `tract` feature".into()),
        elements: None,
        max_abs_diff: None,
        max_scaled_diff: None,
        tolerance: None,
    })
}

#[derive(Serialize)]
struct BudgetVerdict {
    name: &'static str,
    limit: f64,
    value: f64,
    passed: bool,
}

#[derive(Serialize)]
struct CheckReport {
    schema_version: u32,
    versions: Versions,
    model: PathBuf,
    inputset: PathBuf,
    test: PathBuf,
    labels: Option<PathBuf>,
    /// `pass`, `fail` (a budget exceeded) or `error` (nothing was measured).
    verdict: &'static str,
    error: Option<String>,
    figures: Option<Figures>,
    budgets: Vec<BudgetVerdict>,
}

/// True when `path` holds a report `check` wrote (so it may replace it).
fn is_check_report(path: &Path) -> bool {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .is_some_and(|v| v.get("schema_version").is_some() && v.get("budgets").is_some())
}

pub fn check(a: &CheckArgs, options: &fhec_compiler::Options) -> Result<ExitCode> {
    if let Some(r) = a.report {
        files::guard_overwrite(r, is_check_report(r), a.force)?;
    }
    let mut report = CheckReport {
        schema_version: REPORT_SCHEMA_VERSION,
        versions: Versions::current(),
        model: a.model.to_path_buf(),
        inputset: a.inputset.to_path_buf(),
        test: a.test.to_path_buf(),
        labels: a.labels.map(Path::to_path_buf),
        verdict: "error",
        error: None,
        figures: None,
        budgets: Vec::new(),
    };
    let figures = match measure(a, options) {
        Ok(f) => f,
        Err(e) => {
            report.error = Some(format!("{e:#}"));
            write_report(a.report, &report)?;
            annotate("error", &format!("{e:#}"));
            return Err(e);
        }
    };
    let b = &a.budgets;
    let checks = [
        (
            "max_accuracy_drop",
            b.max_accuracy_drop,
            figures.accuracy_drop,
        ),
        ("max_pbs", b.max_pbs, figures.pbs_per_sample as f64),
        (
            "max_latency_ms",
            b.max_latency_ms,
            figures.predicted_latency_ms.unwrap_or(0.0),
        ),
        (
            "max_evaluation_key_mb",
            b.max_evaluation_key_mb,
            figures.evaluation_key_mb,
        ),
        ("max_bits", b.max_bits, f64::from(figures.max_bits)),
    ];
    report.budgets = checks
        .iter()
        .filter_map(|&(name, limit, value)| {
            limit.map(|limit| BudgetVerdict {
                name,
                limit,
                value,
                passed: value <= limit,
            })
        })
        .collect();
    let failed = report.budgets.iter().any(|v| !v.passed);
    report.verdict = if failed { "fail" } else { "pass" };
    print_summary(&figures, &report.budgets);
    let reference = &figures.float_reference;
    if reference.status == "differs" {
        annotate(
            "warning",
            &format!(
                "fhec's float interpreter differs from {} on this model (max |diff| {:?}): {}",
                reference.engine,
                reference.max_abs_diff,
                reference.detail.as_deref().unwrap_or("outputs differ")
            ),
        );
    }
    for v in &report.budgets {
        if !v.passed {
            annotate(
                "error",
                &format!("{}: {} exceeds the budget of {}", v.name, v.value, v.limit),
            );
        } else if v.value > 0.9 * v.limit && v.limit > 0.0 {
            annotate(
                "warning",
                &format!(
                    "{}: {} is within 10% of the budget of {}",
                    v.name, v.value, v.limit
                ),
            );
        }
    }
    report.figures = Some(figures);
    write_report(a.report, &report)?;
    println!("verdict: {}", report.verdict);
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn measure(a: &CheckArgs, options: &fhec_compiler::Options) -> Result<Figures> {
    let (compiled, _) = files::compile(a.model, a.inputset, options)?;
    let (art, info) = (&compiled.artifact, &compiled.info);
    let k = score::scored_output(&art.graph, a.output)
        .map_err(|e| anyhow::anyhow!("{}: {e}", a.model.display()))?;
    let samples = files::load_samples(a.test, &art.graph)?;
    let labels = a.labels.map(read_labels).transpose()?;
    let float =
        fhec_runtime::samples::clear(&art.graph, &samples).map_err(files::about(a.model))?;
    let sim = fhec_runtime::simulate::Simulator::new(art, info, a.seed);
    let simulated = samples
        .iter()
        .enumerate()
        .map(|(i, s)| sim.run(i, s).map(|r| r.outputs))
        .collect::<Result<Vec<_>, _>>()
        .map_err(files::about(a.model))?;
    let scores = score::score(&art.graph, k, &float, &simulated, labels.as_deref())
        .map_err(|e| anyhow::anyhow!("{}: {e}", a.test.display()))?;
    let float_reference = float_reference(a.model, &art.graph, &samples, &float)?;
    let r = Report::new(
        &art.source,
        &art.server.circuit,
        info,
        Some(art.server.params.clone()),
        Vec::new(),
    );
    Ok(Figures {
        accuracy_drop: scores.drop(),
        scores,
        pbs_per_sample: info.pbs_per_sample,
        predicted_latency_ms: r.predicted_latency.as_ref().map(|l| l.ms),
        evaluation_key_mb: r
            .deployment
            .as_ref()
            .map_or(0.0, |d| d.evaluation_key_bytes as f64 / 1e6),
        max_bits: info.max_bits,
        float_reference,
    })
}

/// One label per test sample, from a `.npy` of any shape holding one value per sample.
fn read_labels(path: &Path) -> Result<Vec<f64>> {
    let arrays = crate::npy::read_arrays(path)?;
    match arrays.as_slice() {
        [(_, a)] => Ok(a.data.clone()),
        _ => bail!(
            "{}: expected one array of labels, found {}",
            path.display(),
            arrays.len()
        ),
    }
}

fn print_summary(f: &Figures, budgets: &[BudgetVerdict]) {
    let s = &f.scores;
    // the names the report uses
    let name = |v: serde_json::Result<serde_json::Value>| {
        v.ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    };
    println!(
        "{} samples, output '{}' ({}, {}): float {:.2}, simulated {:.2}, drop {:.2} points",
        s.samples,
        s.output,
        name(serde_json::to_value(s.task)),
        name(serde_json::to_value(s.metric)),
        s.float,
        s.compiled,
        f.accuracy_drop
    );
    println!(
        "PBS/sample {}, predicted latency {}, evaluation key {:.1} MB, widest value {} bits",
        f.pbs_per_sample,
        f.predicted_latency_ms
            .map_or_else(|| "-".to_string(), |ms| format!("{ms:.0} ms")),
        f.evaluation_key_mb,
        f.max_bits
    );
    let r = &f.float_reference;
    println!(
        "float reference ({}): {}{}",
        r.engine,
        r.status,
        match (r.max_abs_diff, &r.detail) {
            (Some(d), _) => format!(", max |fhec - reference| {d:.2e}"),
            (None, Some(detail)) => format!(" ({detail})"),
            (None, None) => String::new(),
        }
    );
    for v in budgets {
        println!(
            "  {:<22} {:>12.3} <= {:<12} {}",
            v.name,
            v.value,
            v.limit,
            if v.passed { "pass" } else { "FAIL" }
        );
    }
}

fn write_report(path: Option<&Path>, report: &CheckReport) -> Result<()> {
    let Some(path) = path else {
        return Ok(());
    };
    let mut text = serde_json::to_vec_pretty(report)?;
    text.push(b'\n');
    files::write_atomic(path, &text, false)
}

/// A GitHub Actions workflow command (annotation), when running under GitHub Actions.
fn annotate(level: &str, message: &str) {
    if std::env::var_os("GITHUB_ACTIONS").is_some_and(|v| v == "true") {
        // workflow commands end at a newline; '%' must be escaped first
        let m = message
            .replace('%', "%25")
            .replace('\r', "%0D")
            .replace('\n', "%0A");
        println!("::{level} title=fhec check::{m}");
    }
}
