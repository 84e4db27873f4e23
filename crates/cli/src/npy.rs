//! `.npy` / `.npz` reading and writing (NumPy format 1.0–3.0, little-endian, C order).

use std::io::{Read, Write};
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};

pub use fhec_runtime::Array;

const MAGIC: &[u8] = b"\x93NUMPY";

/// Parses one `.npy` array whose values (8 bytes each once read) fit `budget` bytes.
pub fn parse_npy(bytes: &[u8], budget: u64) -> Result<Array> {
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        bail!("not a .npy file (bad magic)");
    }
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (
            u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize,
            12,
        ),
        v => bail!("unsupported .npy version {v}"),
    };
    let header = bytes
        .get(start..start + header_len)
        .ok_or_else(|| anyhow!("truncated .npy header"))?;
    let header = std::str::from_utf8(header).context("header is not text")?;
    let descr = dict_value(header, "descr").ok_or_else(|| anyhow!("header has no descr"))?;
    let quote = descr
        .chars()
        .next()
        .filter(|c| *c == '\'' || *c == '"')
        .ok_or_else(|| anyhow!("malformed descr"))?;
    let descr = descr[1..].split(quote).next().unwrap_or_default();
    if dict_value(header, "fortran_order").is_some_and(|v| v.starts_with("True")) {
        bail!("Fortran-ordered arrays are not supported; save with np.ascontiguousarray");
    }
    let shape_text = dict_value(header, "shape").ok_or_else(|| anyhow!("header has no shape"))?;
    let inner = shape_text.trim_start_matches('(');
    let inner = &inner[..inner.find(')').ok_or_else(|| anyhow!("malformed shape"))?];
    let shape: Vec<usize> = inner
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>())
        .collect::<Result<_, _>>()
        .context("malformed shape")?;
    let numel = shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .filter(|&n| (n as u64).saturating_mul(8) <= budget)
        .ok_or_else(|| {
            anyhow!(
                "an array of shape {shape:?} takes more than the memory budget of {} (--memory-budget)",
                fhec_frontend_onnx::bytes_text(budget)
            )
        })?;
    let payload = &bytes[start + header_len..];
    let (width, dtype): (usize, &'static str) = match descr {
        "<f4" => (4, "<f4"),
        "<f8" => (8, "<f8"),
        "<i8" => (8, "<i8"),
        "<i4" => (4, "<i4"),
        "<i2" => (2, "<i2"),
        "|i1" => (1, "|i1"),
        "|u1" => (1, "|u1"),
        "<u2" => (2, "<u2"),
        "<u4" => (4, "<u4"),
        "<u8" => (8, "<u8"),
        "|b1" => (1, "|b1"),
        other => bail!("unsupported dtype '{other}' (expected little-endian float, int or bool)"),
    };
    if payload.len() < numel * width {
        bail!(
            "truncated data: shape {:?} needs {} bytes, file has {}",
            shape,
            numel * width,
            payload.len()
        );
    }
    let c = payload[..numel * width].chunks_exact(width);
    let data: Vec<f64> = match dtype {
        "<f4" => c
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64)
            .collect(),
        "<f8" => c
            .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
            .collect(),
        "<i8" => c
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as f64)
            .collect(),
        "<i4" => c
            .map(|b| i32::from_le_bytes(b.try_into().unwrap()) as f64)
            .collect(),
        "<i2" => c
            .map(|b| i16::from_le_bytes(b.try_into().unwrap()) as f64)
            .collect(),
        "|i1" => c.map(|b| b[0] as i8 as f64).collect(),
        "<u2" => c
            .map(|b| u16::from_le_bytes(b.try_into().unwrap()) as f64)
            .collect(),
        "<u4" => c
            .map(|b| u32::from_le_bytes(b.try_into().unwrap()) as f64)
            .collect(),
        "<u8" => c
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()) as f64)
            .collect(),
        _ => c.map(|b| b[0] as f64).collect(),
    };
    Ok(Array { shape, data, dtype })
}

fn dict_value<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let at = header
        .find(&format!("'{key}'"))
        .or_else(|| header.find(&format!("\"{key}\"")))?;
    let rest = &header[at + key.len() + 2..];
    Some(rest[rest.find(':')? + 1..].trim_start())
}

pub fn npy_bytes(a: &Array) -> Vec<u8> {
    let shape = match a.shape.len() {
        1 => format!("({},)", a.shape[0]),
        _ => format!(
            "({})",
            a.shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut header = format!(
        "{{'descr': '{}', 'fortran_order': False, 'shape': {shape}, }}",
        a.dtype
    );
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - total % 64) % 64));
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len() + a.data.len() * 8);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for &v in &a.data {
        match a.dtype {
            "<f4" => out.extend_from_slice(&(v as f32).to_le_bytes()),
            "<i8" => out.extend_from_slice(&(v as i64).to_le_bytes()),
            "|b1" | "|u1" => out.push(v as u8),
            _ => out.extend_from_slice(&v.to_le_bytes()),
        }
    }
    out
}

/// Reads a `.npy` (one unnamed array) or `.npz` (named arrays) file within the memory
/// budget.
pub fn read_arrays(path: &Path) -> Result<Vec<(Option<String>, Array)>> {
    let budget = crate::files::memory_budget();
    let bytes = crate::files::read_limited(path, budget, "an array file")?;
    parse_arrays(bytes, &path.display().to_string(), budget)
}

/// [`read_arrays`] on a file's bytes; `what` names the file in errors. The arrays
/// together may take `budget` bytes once read (8 per value).
pub fn parse_arrays(
    bytes: Vec<u8>,
    what: &str,
    budget: u64,
) -> Result<Vec<(Option<String>, Array)>> {
    if bytes.starts_with(b"PK") {
        let limit = (bytes.len() as u64 * 64 + (1 << 20)).min(budget);
        let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes))
            .with_context(|| format!("{what}: not a valid .npz archive"))?;
        let mut out = Vec::new();
        let mut remaining = budget;
        for i in 0..zip.len() {
            let f = zip
                .by_index(i)
                .with_context(|| format!("{what}: corrupt .npz entry"))?;
            let name = f.name().trim_end_matches(".npy").to_string();
            // a compressed entry may claim any size: read at most what a sane ratio allows
            let mut buf = Vec::new();
            f.take(limit + 1)
                .read_to_end(&mut buf)
                .with_context(|| format!("{what}: cannot read entry '{name}'"))?;
            if buf.len() as u64 > limit {
                bail!("{what}: entry '{name}' expands to more than {limit} bytes");
            }
            let array =
                parse_npy(&buf, remaining).with_context(|| format!("{what}: entry '{name}'"))?;
            remaining = remaining.saturating_sub(array.data.len() as u64 * 8);
            out.push((Some(name.clone()), array));
        }
        Ok(out)
    } else {
        Ok(vec![(
            None,
            parse_npy(&bytes, budget).with_context(|| what.to_string())?,
        )])
    }
}

/// The archive comment that marks an `.npz` as written by fhec (so it may replace it).
const NPZ_MARK: &str = "written by fhec";

/// True when `path` is an `.npz` that fhec wrote.
pub fn is_fhec_npz(path: &Path) -> bool {
    std::fs::File::open(path)
        .ok()
        .and_then(|f| zip::ZipArchive::new(f).ok())
        .is_some_and(|z| z.comment() == NPZ_MARK.as_bytes())
}

/// Writes named arrays as an uncompressed `.npz`, marked as fhec's; the file appears
/// whole or not at all.
pub fn write_npz(path: &Path, arrays: &[(String, Array)]) -> Result<()> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    zip.set_comment(NPZ_MARK);
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let mut names = std::collections::HashSet::new();
    for (name, a) in arrays {
        if !names.insert(name) {
            bail!("{}: two outputs are named '{name}'", path.display());
        }
        zip.start_file(format!("{name}.npy"), opts)?;
        zip.write_all(&npy_bytes(a))?;
    }
    let bytes = zip.finish()?.into_inner();
    crate::files::write_atomic(path, &bytes, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_round_trip_keeps_shape_dtype_and_values() {
        let a = Array {
            shape: vec![2, 3],
            data: vec![1.5, -2.0, 3.25, 0.0, 7.0, -8.5],
            dtype: "<f4",
        };
        let b = parse_npy(&npy_bytes(&a), u64::MAX).unwrap();
        assert_eq!(a, b);
        let i = Array {
            shape: vec![4],
            data: vec![1.0, -3.0, 9.0, 0.0],
            dtype: "<i8",
        };
        assert_eq!(parse_npy(&npy_bytes(&i), u64::MAX).unwrap(), i);
    }

    #[test]
    fn truncated_npy_is_an_error() {
        let a = Array {
            shape: vec![8],
            data: vec![1.0; 8],
            dtype: "<f8",
        };
        let bytes = npy_bytes(&a);
        let err = parse_npy(&bytes[..bytes.len() - 3], u64::MAX)
            .unwrap_err()
            .to_string();
        assert!(err.contains("truncated"), "{err}");
    }
}
