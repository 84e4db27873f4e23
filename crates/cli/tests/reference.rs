//! fhec's own importer and float interpreter against an independent implementation,
//! tract-onnx, on every fixture tract can run (what `fhec check` reports as its float
//! reference). Fixtures tract cannot run are listed, not skipped silently: their count
//! is bounded so that a tract regression that stops it running most models fails here.
#![cfg(feature = "tract")]

mod common;

use common::fixtures;

#[test]
fn the_float_interpreter_agrees_with_tract_on_every_fixture_tract_runs() {
    let mut ran = Vec::new();
    let mut unsupported = Vec::new();
    let mut tract_wrong = Vec::new();
    let mut names: Vec<_> = std::fs::read_dir(fixtures())
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("model.onnx").exists() && p.join("test_x.npy").exists())
        .collect();
    names.sort();
    for dir in &names {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let bytes = std::fs::read(dir.join("model.onnx")).unwrap();
        let Ok(graph) = fhec_compiler::import(&bytes, &Default::default(), Some(dir)) else {
            continue; // a fixture fhec refuses on purpose (tests/fixtures/refused)
        };
        let mut samples = fhec::files::load_samples(&dir.join("test_x.npy"), &graph).unwrap();
        samples.truncate(16);
        let ours = fhec_runtime::samples::clear(&graph, &samples).unwrap();
        match fhec_reference::run(&bytes, Some(dir), &graph, &samples) {
            Ok(theirs) => {
                let a = fhec_reference::compare(&ours, &theirs)
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
                if !a.agrees() {
                    // two implementations disagree: onnxruntime's outputs, stored with
                    // the fixture, decide which one is wrong
                    let ort = onnxruntime_outputs(&graph, dir, samples.len());
                    let fhec_vs_ort = fhec_reference::compare(&ours, &ort).unwrap();
                    let tract_vs_ort = fhec_reference::compare(&theirs, &ort).unwrap();
                    assert!(
                        fhec_vs_ort.agrees() && !tract_vs_ort.agrees(),
                        "{name}: fhec and tract differ by up to {} and onnxruntime does not side with fhec (fhec vs onnxruntime {}, tract vs onnxruntime {})",
                        a.max_abs_diff,
                        fhec_vs_ort.max_abs_diff,
                        tract_vs_ort.max_abs_diff
                    );
                    tract_wrong.push(format!(
                        "{name} (by up to {}; fhec matches onnxruntime)",
                        a.max_abs_diff
                    ));
                    continue;
                }
                ran.push(name);
            }
            Err(e) => unsupported.push(format!("{name}: {e}")),
        }
    }
    println!("tract ran {} fixtures: {}", ran.len(), ran.join(", "));
    println!(
        "tract cannot run {}:\n  {}",
        unsupported.len(),
        unsupported.join("\n  ")
    );
    println!(
        "tract runs but differs from onnxruntime on {}:\n  {}",
        tract_wrong.len(),
        tract_wrong.join("\n  ")
    );
    assert!(
        ran.len() >= 2 * (unsupported.len() + tract_wrong.len()),
        "tract agreed on only {} of {} fixtures",
        ran.len(),
        ran.len() + unsupported.len() + tract_wrong.len()
    );
}

/// The first `n` samples of onnxruntime's outputs stored with a fixture, per sample, in
/// the graph's output order.
fn onnxruntime_outputs(
    graph: &fhec_frontend_onnx::FloatGraph,
    dir: &std::path::Path,
    n: usize,
) -> Vec<Vec<fhec_frontend_onnx::Tensor>> {
    let stored = fhec::npy::read_arrays(&dir.join("reference.npz")).unwrap();
    (0..n)
        .map(|i| {
            graph
                .outputs
                .iter()
                .map(|&o| {
                    let v = graph.value(o);
                    let (_, a) = stored
                        .iter()
                        .find(|(name, _)| name.as_deref() == Some(v.name.as_str()))
                        .unwrap_or_else(|| panic!("{}: no stored {}", dir.display(), v.name));
                    let per = a.data.len() / a.shape[0];
                    let mut shape = a.shape.clone();
                    shape[0] = 1;
                    fhec_frontend_onnx::Tensor::new(
                        shape,
                        a.data[i * per..(i + 1) * per].to_vec(),
                        v.dtype,
                    )
                })
                .collect()
        })
        .collect()
}
