//! ONNX external data: tensors a model keeps in files beside it, named by a `location`
//! relative to the model file's directory, with an optional byte `offset` and `length`
//! (what `torch.onnx.export` writes by default since the dynamo exporter, and
//! `onnx.save(..., save_as_external_data=True)`). Each is read into the tensor's
//! `raw_data` before import, so the rest of the front end sees an ordinary model.

use std::io::{Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};

use crate::pb::{GraphProto, ModelProto, TensorProto};
use crate::ImportError;

/// `TensorProto.data_location` of a tensor stored in an external file.
const EXTERNAL: i32 = 1;

/// Reads every external tensor of `model` from files under `dir`, taking at most
/// `budget` bytes in all.
pub(crate) fn load(model: &mut ModelProto, dir: &Path, budget: u64) -> Result<(), ImportError> {
    let mut read = 0u64;
    let mut result = Ok(());
    if let Some(g) = &mut model.graph {
        visit_mut(g, &mut |t| {
            if result.is_ok() && is_external(t) {
                result = load_tensor(t, dir, budget, &mut read);
            }
        });
    }
    result
}

fn is_external(t: &TensorProto) -> bool {
    t.data_location == EXTERNAL || !t.external_data.is_empty()
}

fn load_tensor(
    t: &mut TensorProto,
    dir: &Path,
    budget: u64,
    read: &mut u64,
) -> Result<(), ImportError> {
    let err = |reason: String| ImportError::Tensor {
        name: t.name.clone(),
        reason,
    };
    let entry = |key: &str| {
        t.external_data
            .iter()
            .find(|e| e.key == key)
            .map(|e| e.value.as_str())
    };
    let number = |key: &str| -> Result<Option<u64>, ImportError> {
        entry(key)
            .map(|v| {
                v.parse::<u64>()
                    .map_err(|_| err(format!("external data {key} '{v}' is not a byte count")))
            })
            .transpose()
    };
    let location = entry("location")
        .ok_or_else(|| err("is stored externally but names no location".into()))?;
    let path = confined(dir, location).ok_or_else(|| {
        err(format!(
            "external data location '{location}' is not a relative path inside the model's directory"
        ))
    })?;
    let (offset, length) = (number("offset")?.unwrap_or(0), number("length")?);
    let mut file = std::fs::File::open(&path)
        .map_err(|e| err(format!("external data file {}: {e}", path.display())))?;
    let size = file
        .metadata()
        .map_err(|e| err(format!("external data file {}: {e}", path.display())))?
        .len();
    let end = match length {
        Some(n) => offset.checked_add(n),
        None => Some(size),
    };
    let Some(end) = end.filter(|&end| offset <= end && end <= size) else {
        return Err(err(format!(
            "external data file {} holds {size} bytes, fewer than offset {offset} and length {} need",
            path.display(),
            length.map_or_else(|| "?".into(), |n| n.to_string())
        )));
    };
    let n = end - offset;
    *read = read.saturating_add(n);
    if *read > budget {
        return Err(ImportError::OverBudget {
            at: t.name.clone(),
            bytes: *read,
            budget,
        });
    }
    let mut data = Vec::new();
    file.seek(SeekFrom::Start(offset))
        .and_then(|_| (&mut file).take(n).read_to_end(&mut data))
        .map_err(|e| {
            err(format!(
                "reading external data file {}: {e}",
                path.display()
            ))
        })?;
    if data.len() as u64 != n {
        return Err(err(format!(
            "external data file {} ended after {} of {n} bytes",
            path.display(),
            data.len()
        )));
    }
    t.raw_data = data;
    t.external_data.clear();
    t.data_location = 0;
    Ok(())
}

/// `dir/location` when `location` is a relative path that stays inside `dir` (ONNX
/// forbids others: a model file must not make its reader open arbitrary files).
fn confined(dir: &Path, location: &str) -> Option<PathBuf> {
    let rel = Path::new(location);
    let plain = rel
        .components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    (plain && !location.is_empty()).then(|| dir.join(rel))
}

fn visit_mut(g: &mut GraphProto, f: &mut impl FnMut(&mut TensorProto)) {
    g.initializer.iter_mut().for_each(&mut *f);
    for n in &mut g.node {
        for a in &mut n.attribute {
            if let Some(t) = &mut a.t {
                f(t);
            }
            if let Some(sub) = &mut a.g {
                visit_mut(sub, f);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_stay_inside_the_model_directory() {
        let dir = Path::new("/models");
        assert_eq!(
            confined(dir, "w.data"),
            Some(PathBuf::from("/models/w.data"))
        );
        assert_eq!(
            confined(dir, "sub/w.data"),
            Some(PathBuf::from("/models/sub/w.data"))
        );
        assert_eq!(confined(dir, "../w.data"), None);
        assert_eq!(confined(dir, "/etc/passwd"), None);
        assert_eq!(confined(dir, ""), None);
    }
}
