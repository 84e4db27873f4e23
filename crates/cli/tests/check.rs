//! `fhec check`, the CI gate: exit codes, the JSON report and GitHub annotations.

mod common;

use std::path::Path;
use std::process::Command;

use common::{fixture, s, tmp};

/// Runs `fhec check` on a fixture with `extra` arguments, GitHub Actions' environment
/// set or not: (exit code, stdout, stderr).
fn check(name: &str, extra: &[&str], github: bool) -> (i32, String, String) {
    let f = fixture(name);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fhec"));
    cmd.args([
        "check",
        s(&f.join("model.onnx")),
        "--inputset",
        s(&f.join("train.npy")),
        "--test",
        s(&f.join("test_x.npy")),
    ])
    .args(extra)
    .env_remove("GITHUB_ACTIONS");
    if github {
        cmd.env("GITHUB_ACTIONS", "true");
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn report(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn a_model_within_its_budgets_passes_with_a_versioned_report() {
    let d = tmp("check-pass");
    let r = d.join("report.json");
    let labels = fixture("mlp_iris").join("test_y.npy");
    let (code, out, err) = check(
        "mlp_iris",
        &[
            "--labels",
            s(&labels),
            "--max-accuracy-drop",
            "5",
            "--max-bits",
            "16",
            "--max-pbs",
            "1000",
            "--report",
            s(&r),
        ],
        false,
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("verdict: pass"), "{out}");
    let v = report(&r);
    assert_eq!(v["schema_version"], 1);
    assert_eq!(v["verdict"], "pass");
    assert_eq!(v["versions"]["tfhe_rs"], fhec_backend_tfhe::TFHE_RS_VERSION);
    let f = &v["figures"];
    assert_eq!(f["metric"], "accuracy");
    assert_eq!(f["task"], "classification");
    assert_eq!(f["samples"], 50);
    // the float MLP scores what the fixture generator measured with onnxruntime
    let float = f["float"].as_f64().unwrap();
    assert!((float - 98.0).abs() < 1e-9, "{float}");
    assert!(f["accuracy_drop"].as_f64().unwrap() <= 5.0);
    assert!(f["pbs_per_sample"].as_u64().unwrap() > 0);
    assert!(f["evaluation_key_mb"].as_f64().unwrap() > 0.0);
    let budgets = v["budgets"].as_array().unwrap();
    assert_eq!(budgets.len(), 3);
    assert!(budgets.iter().all(|b| b["passed"] == true));
}

#[test]
fn an_exceeded_budget_exits_1_and_annotates_under_github_actions() {
    let d = tmp("check-fail");
    let r = d.join("report.json");
    let (code, out, err) = check("mlp_iris", &["--max-pbs", "1", "--report", s(&r)], true);
    assert_eq!(code, 1, "{out}\n{err}");
    assert!(out.contains("::error title=fhec check::max_pbs"), "{out}");
    let v = report(&r);
    assert_eq!(v["verdict"], "fail");
    assert_eq!(v["budgets"][0]["name"], "max_pbs");
    assert_eq!(v["budgets"][0]["passed"], false);
    // without labels the compiled model is scored against the float model
    assert_eq!(v["figures"]["metric"], "agreement");
    assert_eq!(v["figures"]["float"], 100.0);
    // outside GitHub Actions: no workflow command
    let (code, out, _) = check("mlp_iris", &["--max-pbs", "1"], false);
    assert_eq!(code, 1);
    assert!(!out.contains("::error"), "{out}");
}

#[test]
fn a_regressor_scores_r2_and_errors_exit_2_with_an_error_report() {
    let d = tmp("check-error");
    let r = d.join("report.json");
    let labels = fixture("linreg_diabetes").join("test_y.npy");
    let (code, out, err) = check(
        "linreg_diabetes",
        &[
            "--labels",
            s(&labels),
            "--max-accuracy-drop",
            "2",
            "--report",
            s(&r),
        ],
        false,
    );
    assert_eq!(code, 0, "{out}\n{err}");
    let v = report(&r);
    assert_eq!(v["figures"]["metric"], "r2");
    assert_eq!(v["figures"]["task"], "regression");
    // labels of the wrong length: an input error, exit 2, the report says so
    let wrong = fixture("mlp_iris").join("test_y.npy");
    let (code, _, err) = check(
        "linreg_diabetes",
        &["--labels", s(&wrong), "--report", s(&r)],
        true,
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("labels for"), "{err}");
    let v = report(&r);
    assert_eq!(v["verdict"], "error");
    assert!(v["error"].as_str().unwrap().contains("labels for"));
    // a report file the user wrote is not replaced
    let mine = d.join("mine.json");
    std::fs::write(&mine, "mine").unwrap();
    let (code, _, err) = check("linreg_diabetes", &["--report", s(&mine)], false);
    assert_eq!(code, 2);
    assert!(err.contains("refusing to overwrite"), "{err}");
    assert_eq!(std::fs::read_to_string(&mine).unwrap(), "mine");
}
