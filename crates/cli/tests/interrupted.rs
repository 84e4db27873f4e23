//! Commands killed at any moment: every output appears whole or not at all under its
//! final name (written to a temporary name, synced, renamed), and a file the user had
//! there before survives until a whole one replaces it.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

/// How long a complete run of `fhec args` takes.
fn duration_of(args: &[&str]) -> Duration {
    let start = std::time::Instant::now();
    ok(args);
    start.elapsed()
}

/// Kill times spread over a run of `total`, most of them near its end, where the files
/// are written.
fn kill_times(total: Duration) -> Vec<u64> {
    let ms = total.as_millis() as f64;
    [0.5, 0.9, 0.97, 1.0]
        .iter()
        .map(|f| (f * ms) as u64)
        .collect()
}

/// Starts `fhec args`, kills it after `ms` milliseconds (if it still runs), waits.
fn killed_after(args: &[&str], ms: u64) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_fhec"))
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(ms));
    let _ = child.kill();
    let _ = child.wait();
}

/// The deployment files a compile writes, each whole when present.
fn compile_outputs_whole(out: &Path) {
    let (client, server) = fhec::files::part_paths(out);
    if out.exists() {
        fhec::files::load_artifact(out).unwrap_or_else(|e| panic!("{}: {e:#}", out.display()));
    }
    if client.exists() {
        fhec::files::load_client(&client).unwrap();
    }
    if server.exists() {
        fhec::files::load_server(&server).unwrap();
    }
    let mlir = out.with_extension("mlir");
    if mlir.exists() {
        let text = std::fs::read_to_string(&mlir).unwrap();
        assert!(
            text.trim_end().ends_with('}'),
            "a truncated {}",
            mlir.display()
        );
    }
}

#[test]
fn a_killed_compile_leaves_whole_files_or_none() {
    let d = tmp("interrupted-compile");
    let f = fixture("cnn_digits16");
    let out = d.join("m.fhe");
    let (model, inputset) = (f.join("model.onnx"), f.join("train.npy"));
    let args = [
        "compile",
        s(&model),
        "--inputset",
        s(&inputset),
        "-o",
        s(&out),
        "--force",
    ];
    let total = duration_of(&args);
    std::fs::remove_file(&out).unwrap();
    // with no artifact there yet, then over a complete one
    for ms in kill_times(total) {
        killed_after(&args, ms);
        compile_outputs_whole(&out);
    }
    ok(&args);
    for ms in kill_times(total) {
        killed_after(&args, ms);
        compile_outputs_whole(&out);
        assert!(out.exists(), "the complete artifact was lost");
    }
}

#[test]
fn a_killed_keygen_leaves_whole_keys_or_none() {
    let d = tmp("interrupted-keygen");
    // a bootstrapped model with a quick keygen: the kills land around the writes
    let out = d.join("m.fhe");
    compile_fixture("dt_breast", &out, &[]);
    let (client_path, server_path) = fhec::files::part_paths(&out);
    let client = fhec::files::load_client(&client_path).unwrap();
    let server = fhec::files::load_server(&server_path).unwrap();
    let full = d.join("keys-full");
    let total = duration_of(&["keygen", s(&client_path), "--keys", s(&full)]);
    for (i, ms) in kill_times(total).into_iter().enumerate() {
        let keys = d.join(format!("keys{i}"));
        killed_after(&["keygen", s(&client_path), "--keys", s(&keys)], ms);
        let secret = fhec::keydir::secret_key_path(&keys);
        if secret.exists() {
            fhec::keydir::load_secret(&keys, &client).unwrap();
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = std::fs::metadata(&secret).unwrap().permissions().mode();
                assert_eq!(mode & 0o077, 0, "the secret key is readable by others");
            }
        }
        let evaluation = fhec::keydir::evaluation_key_path(&keys);
        if evaluation.exists() {
            fhec::keydir::load_evaluation(&evaluation, &server).unwrap();
        }
    }
}
