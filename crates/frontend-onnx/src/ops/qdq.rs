//! QDQ quantization: QuantizeLinear and DequantizeLinear, as onnxruntime's static
//! quantization and torch's QAT export write them.
//!
//! On constants (quantized weights and biases) both fold. On a varying tensor they
//! become `Op::Quantize` / `Op::Dequantize`, whose scale and zero point the quantizer
//! keeps instead of calibrating (docs/QUANTIZATION.md, QAT models).

use crate::graph::{DType, Op, Tensor};
use crate::pb::data_type as dt;
use crate::{ImportError, NodeCtx};

/// ONNX QuantizeLinear of one value, in f32 as onnxruntime computes it (ties to even).
pub(crate) fn quantize_value(x: f64, scale: f64, zero_point: i64, qmin: i64, qmax: i64) -> f64 {
    let q = (x as f32 / scale as f32).round_ties_even() as f64 + zero_point as f64;
    q.clamp(qmin as f64, qmax as f64)
}

fn dequantize_value(q: f64, scale: f64, zero_point: f64) -> f64 {
    ((q - zero_point) as f32 * scale as f32) as f64
}

/// The integer range of a quantized element type.
fn range_of(elem_type: i32) -> Option<(i64, i64)> {
    match elem_type {
        dt::UINT8 => Some((0, 255)),
        dt::INT8 => Some((-128, 127)),
        dt::UINT16 => Some((0, 65535)),
        dt::INT16 => Some((-32768, 32767)),
        _ => None,
    }
}

/// Scale and zero point: constants, scalar or one per slice along `axis`.
struct Params {
    scale: Tensor,
    zero_point: Option<Tensor>,
    axis: usize,
}

impl Params {
    fn read(ctx: &NodeCtx<'_>, rank: usize) -> Result<Self, ImportError> {
        let s = ctx.required_input(1)?;
        let scale = ctx
            .constant(s)
            .cloned()
            .ok_or_else(|| ctx.err("the scale is not a constant"))?;
        let zero_point = match ctx.input(2)? {
            Some(z) => Some(
                ctx.constant(z)
                    .cloned()
                    .ok_or_else(|| ctx.err("the zero point is not a constant"))?,
            ),
            None => None,
        };
        if ctx.attr_i("block_size", 0) != 0 {
            return Err(ctx.err("blocked quantization (block_size) is not supported"));
        }
        let axis = if rank == 0 {
            0
        } else {
            super::axis(ctx, ctx.attr_i("axis", 1), rank)?
        };
        if scale.data.iter().any(|&s| !(s > 0.0 && s.is_finite())) {
            return Err(ctx.err("a scale is not a positive finite number"));
        }
        if let Some(z) = &zero_point {
            if z.numel() != scale.numel() {
                return Err(ctx.err(format!(
                    "{} zero points for {} scales",
                    z.numel(),
                    scale.numel()
                )));
            }
        }
        Ok(Params {
            scale,
            zero_point,
            axis,
        })
    }

    /// Scale and zero point of element `e` of a tensor of `shape`.
    fn at(&self, shape: &[usize], e: usize) -> (f64, f64) {
        let k = if self.scale.numel() == 1 {
            0
        } else {
            let inner: usize = shape[self.axis + 1..].iter().product();
            (e / inner) % shape[self.axis]
        };
        let z = self.zero_point.as_ref().map_or(0.0, |z| z.data[k]);
        (self.scale.data[k], z)
    }

    fn check_axis(&self, ctx: &NodeCtx<'_>, shape: &[usize]) -> Result<(), ImportError> {
        let n = self.scale.numel();
        if n != 1 && (shape.is_empty() || shape[self.axis] != n) {
            return Err(ctx.err(format!(
                "{n} scales do not match axis {} of shape {shape:?}",
                self.axis
            )));
        }
        Ok(())
    }

    /// The one scale and zero point of a per-tensor quantization.
    fn scalar(&self, ctx: &NodeCtx<'_>) -> Result<(f64, i64), ImportError> {
        if self.scale.numel() != 1 {
            return Err(ctx.err(
                "per-axis quantization of an encrypted tensor is not supported (one scale per tensor)",
            ));
        }
        let z = self.zero_point.as_ref().map_or(0.0, |z| z.data[0]);
        Ok((self.scale.data[0], z as i64))
    }
}

pub(crate) fn quantize_linear(ctx: &mut NodeCtx<'_>) -> Result<(), ImportError> {
    let x = ctx.required_input(0)?;
    let shape = ctx.info(x).shape.clone();
    let p = Params::read(ctx, shape.len())?;
    p.check_axis(ctx, &shape)?;
    // the integer type: the zero point's, else `output_dtype` (opset 21), else uint8
    let elem = match ctx.input(2)? {
        Some(z) => ctx.elem_type(z),
        None => None,
    }
    .or_else(|| Some(ctx.attr_i("output_dtype", 0) as i32).filter(|&t| t != 0))
    .unwrap_or(dt::UINT8);
    let (qmin, qmax) = range_of(elem).ok_or_else(|| {
        ctx.err(format!(
            "quantized element type {elem} is not supported (uint8, int8, uint16, int16)"
        ))
    })?;
    if let Some(t) = ctx.constant(x).cloned() {
        let data = (0..t.numel())
            .map(|e| {
                let (s, z) = p.at(&t.shape, e);
                quantize_value(t.data[e], s, z as i64, qmin, qmax)
            })
            .collect();
        return ctx.set_typed_constant(0, Tensor::new(t.shape, data, DType::I64), Some(elem));
    }
    let (scale, zero_point) = p.scalar(ctx)?;
    let out = ctx
        .output_name(0)
        .ok_or_else(|| ctx.err("missing output"))?
        .to_string();
    ctx.add_node(
        Op::Quantize {
            scale,
            zero_point,
            qmin,
            qmax,
        },
        vec![x],
        vec![(out, shape, DType::I64)],
    );
    Ok(())
}

pub(crate) fn dequantize_linear(ctx: &mut NodeCtx<'_>) -> Result<(), ImportError> {
    let x = ctx.required_input(0)?;
    let shape = ctx.info(x).shape.clone();
    let p = Params::read(ctx, shape.len())?;
    p.check_axis(ctx, &shape)?;
    if let Some(t) = ctx.constant(x).cloned() {
        let data = (0..t.numel())
            .map(|e| {
                let (s, z) = p.at(&t.shape, e);
                dequantize_value(t.data[e], s, z)
            })
            .collect();
        return ctx.set_constant(0, Tensor::new(t.shape, data, DType::F32));
    }
    let (scale, zero_point) = p.scalar(ctx)?;
    let out = ctx
        .output_name(0)
        .ok_or_else(|| ctx.err("missing output"))?
        .to_string();
    ctx.add_node(
        Op::Dequantize { scale, zero_point },
        vec![x],
        vec![(out, shape, DType::F32)],
    );
    Ok(())
}
