//! Decoding `TensorProto` into [`Tensor`].

use crate::graph::{DType, Tensor};
use crate::pb::{data_type as dt, TensorProto};
use crate::ImportError;

pub(crate) fn dtype_of(elem_type: i32) -> Option<DType> {
    match elem_type {
        dt::FLOAT => Some(DType::F32),
        dt::DOUBLE => Some(DType::F64),
        dt::INT64
        | dt::INT32
        | dt::INT16
        | dt::UINT16
        | dt::INT8
        | dt::UINT8
        | dt::INT4
        | dt::UINT4 => Some(DType::I64),
        dt::BOOL => Some(DType::Bool),
        _ => None,
    }
}

pub(crate) fn decode_tensor(t: &TensorProto) -> Result<Tensor, ImportError> {
    let err = |reason: String| ImportError::Tensor {
        name: t.name.clone(),
        reason,
    };
    if t.data_location == 1 || !t.external_data.is_empty() {
        return Err(err(
            "is stored in an external data file, which only a model read from its path can \
             reach: compile the model file with its data file beside it"
                .into(),
        ));
    }
    let dtype = dtype_of(t.data_type)
        .ok_or_else(|| err(format!("unsupported element type {}", t.data_type)))?;
    let mut shape = Vec::with_capacity(t.dims.len());
    for &d in &t.dims {
        shape.push(usize::try_from(d).map_err(|_| err(format!("negative dimension {d}")))?);
    }
    let numel = crate::bounded_numel(&shape).ok_or_else(|| {
        err(format!(
            "shape {shape:?} exceeds {} elements",
            crate::MAX_TENSOR_ELEMENTS
        ))
    })?;
    let raw = &t.raw_data;
    let data: Vec<f64> = if matches!(t.data_type, dt::INT4 | dt::UINT4) {
        // two elements per byte, the first in the low nibble, in raw_data or one byte
        // per int32_data entry
        let bytes: Vec<u8> = if raw.is_empty() {
            t.int32_data.iter().map(|&v| v as u8).collect()
        } else {
            raw.clone()
        };
        if bytes.len() != numel.div_ceil(2) {
            return Err(err(format!(
                "holds {} bytes of 4-bit values, shape {:?} needs {}",
                bytes.len(),
                shape,
                numel.div_ceil(2)
            )));
        }
        (0..numel)
            .map(|e| {
                let nibble = (bytes[e / 2] >> (4 * (e % 2))) & 0xf;
                if t.data_type == dt::INT4 {
                    ((nibble << 4) as i8 >> 4) as f64
                } else {
                    nibble as f64
                }
            })
            .collect()
    } else if !raw.is_empty() {
        let width = match t.data_type {
            dt::FLOAT | dt::INT32 => 4,
            dt::DOUBLE | dt::INT64 => 8,
            dt::INT16 | dt::UINT16 => 2,
            _ => 1,
        };
        if raw.len() != numel * width {
            return Err(err(format!(
                "raw data holds {} bytes, shape {:?} needs {}",
                raw.len(),
                shape,
                numel * width
            )));
        }
        let chunks = raw.chunks_exact(width);
        match t.data_type {
            dt::FLOAT => chunks.map(|c| f32::from_le_bytes(le(c)) as f64).collect(),
            dt::DOUBLE => chunks.map(|c| f64::from_le_bytes(le(c))).collect(),
            dt::INT64 => chunks.map(|c| i64::from_le_bytes(le(c)) as f64).collect(),
            dt::INT32 => chunks.map(|c| i32::from_le_bytes(le(c)) as f64).collect(),
            dt::INT16 => chunks.map(|c| i16::from_le_bytes(le(c)) as f64).collect(),
            dt::UINT16 => chunks.map(|c| u16::from_le_bytes(le(c)) as f64).collect(),
            dt::INT8 => raw.iter().map(|&b| b as i8 as f64).collect(),
            _ => raw.iter().map(|&b| b as f64).collect(),
        }
    } else {
        match t.data_type {
            dt::FLOAT => t.float_data.iter().map(|&v| v as f64).collect(),
            dt::DOUBLE => t.double_data.clone(),
            dt::INT64 => t.int64_data.iter().map(|&v| v as f64).collect(),
            _ => t.int32_data.iter().map(|&v| v as f64).collect(),
        }
    };
    if data.len() != numel {
        return Err(err(format!(
            "holds {} values, shape {:?} needs {}",
            data.len(),
            shape,
            numel
        )));
    }
    Ok(Tensor::new(shape, data, dtype))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn four_bit_tensors_unpack_low_nibble_first() {
        // [-8, 7, -1, 3, 5]: nibbles 8,7 | f,3 | 5,(pad)
        let raw = vec![0x78, 0x3f, 0x05];
        let t = TensorProto {
            dims: vec![5],
            data_type: dt::INT4,
            raw_data: raw.clone(),
            ..Default::default()
        };
        assert_eq!(decode_tensor(&t).unwrap().data, [-8., 7., -1., 3., 5.]);
        let u = TensorProto {
            dims: vec![5],
            data_type: dt::UINT4,
            int32_data: raw.iter().map(|&b| b as i32).collect(),
            ..Default::default()
        };
        assert_eq!(decode_tensor(&u).unwrap().data, [8., 7., 15., 3., 5.]);
        // 7 values need 4 bytes
        let short = TensorProto {
            dims: vec![7],
            data_type: dt::INT4,
            raw_data: raw,
            ..Default::default()
        };
        assert!(decode_tensor(&short).is_err());
    }
}

/// The `N` bytes of an exact chunk (from `chunks_exact(N)`) as an array.
fn le<const N: usize>(chunk: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&chunk[..N]);
    a
}
