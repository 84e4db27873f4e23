//! Quantization written into the model, as QAT exports write it:
//! - QDQ: QuantizeLinear and DequantizeLinear (onnxruntime static quantization, torch);
//! - QCDQ: QuantizeLinear → Clip → DequantizeLinear, Brevitas' export of grids narrower
//!   than the integer type (an integer Clip right after a QuantizeLinear narrows it);
//! - QONNX `Quant` / `IntQuant` (Brevitas' own export): a fake quantization, read as a
//!   QuantizeLinear followed by a DequantizeLinear.
//!
//! On constants (quantized weights and biases) they fold. On a varying tensor they
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
        dt::UINT4 => Some((0, 15)),
        dt::INT4 => Some((-8, 7)),
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
            "quantized element type {elem} is not supported (uint4, int4, uint8, int8, uint16, int16)"
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
    let out = ctx.required_output(0)?;
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
    let out = ctx.required_output(0)?;
    ctx.add_node(
        Op::Dequantize { scale, zero_point },
        vec![x],
        vec![(out, shape, DType::F32)],
    );
    Ok(())
}

/// QCDQ: `Clip(QuantizeLinear(x))` with integer bounds is a QuantizeLinear onto the
/// narrower range. Returns `false` (nothing done) when `x` is not such a tensor.
pub(crate) fn narrow_quantize(
    ctx: &mut NodeCtx<'_>,
    x: crate::ValueId,
    min: f64,
    max: f64,
) -> Result<bool, ImportError> {
    let Some(producer) = ctx.producer(x) else {
        return Ok(false);
    };
    let Op::Quantize {
        scale,
        zero_point,
        qmin,
        qmax,
    } = producer.op
    else {
        return Ok(false);
    };
    let integral = |b: f64| b.is_infinite() || b.fract() == 0.0;
    if !integral(min) || !integral(max) {
        return Ok(false);
    }
    // `as` saturates: an absent (infinite) bound keeps the type's limit
    let (lo, hi) = (qmin.max(min as i64), qmax.min(max as i64));
    if lo >= hi {
        return Err(ctx.err(format!(
            "clipping the quantized range [{qmin}, {qmax}] to [{min}, {max}] leaves at most one value"
        )));
    }
    let source = producer.inputs[0];
    let shape = ctx.info(x).shape.clone();
    let out = ctx.required_output(0)?;
    ctx.add_node(
        Op::Quantize {
            scale,
            zero_point,
            qmin: lo,
            qmax: hi,
        },
        vec![source],
        vec![(out, shape, DType::I64)],
    );
    Ok(true)
}

/// How a QONNX `Quant` rounds `x / scale + zero_point`.
#[derive(Clone, Copy, PartialEq)]
enum RoundingMode {
    HalfEven,
    Ceil,
    Floor,
    Up,
    Down,
    HalfUp,
    HalfDown,
}

impl RoundingMode {
    fn parse(s: &str) -> Option<Self> {
        Some(match s.to_ascii_uppercase().as_str() {
            "ROUND" | "HALF_EVEN" => RoundingMode::HalfEven,
            "CEIL" => RoundingMode::Ceil,
            "FLOOR" => RoundingMode::Floor,
            "UP" => RoundingMode::Up,
            "DOWN" | "ROUND_TO_ZERO" => RoundingMode::Down,
            "HALF_UP" => RoundingMode::HalfUp,
            "HALF_DOWN" => RoundingMode::HalfDown,
            _ => return None,
        })
    }
    fn apply(self, v: f32) -> f32 {
        match self {
            RoundingMode::HalfEven => v.round_ties_even(),
            RoundingMode::Ceil => v.ceil(),
            RoundingMode::Floor => v.floor(),
            RoundingMode::Up => v.signum() * v.abs().ceil(),
            RoundingMode::Down => v.trunc(),
            RoundingMode::HalfUp => v.round(),
            RoundingMode::HalfDown => v.signum() * (v.abs() - 0.5).ceil(),
        }
    }
}

/// QONNX `Quant` / `IntQuant` (Brevitas): `(round(clamp(x / scale + zeropt)) − zeropt) · scale`
/// with the integer range given by `bitwidth`, `signed` and `narrow`.
pub(crate) fn quant(ctx: &mut NodeCtx<'_>) -> Result<(), ImportError> {
    let x = ctx.required_input(0)?;
    let shape = ctx.info(x).shape.clone();
    let constant_input = |i: usize, what: &str| -> Result<Tensor, ImportError> {
        let v = ctx.required_input(i)?;
        ctx.constant(v)
            .cloned()
            .ok_or_else(|| ctx.err(format!("the {what} is not a constant")))
    };
    let scale = constant_input(1, "scale")?;
    let zero = constant_input(2, "zero point")?;
    let bits = constant_input(3, "bit width")?;
    if bits.numel() != 1 || bits.data[0].fract() != 0.0 || !(2.0..=16.0).contains(&bits.data[0]) {
        return Err(ctx.err(format!(
            "bit width {:?} is not one integer between 2 and 16",
            bits.data
        )));
    }
    let bits = bits.data[0] as u32;
    let (signed, narrow) = (ctx.attr_i("signed", 1) != 0, ctx.attr_i("narrow", 0) != 0);
    let (qmin, qmax) = match (signed, narrow) {
        (true, true) => (-(1i64 << (bits - 1)) + 1, (1i64 << (bits - 1)) - 1),
        (true, false) => (-(1i64 << (bits - 1)), (1i64 << (bits - 1)) - 1),
        (false, true) => (0, (1i64 << bits) - 2),
        (false, false) => (0, (1i64 << bits) - 1),
    };
    let mode_name = ctx
        .attr_s("rounding_mode")
        .unwrap_or_else(|| "ROUND".into());
    let mode = RoundingMode::parse(&mode_name)
        .ok_or_else(|| ctx.err(format!("unknown rounding_mode '{mode_name}'")))?;
    if scale.data.iter().any(|&s| !(s > 0.0 && s.is_finite())) {
        return Err(ctx.err("a scale is not a positive finite number"));
    }
    if let Some(t) = ctx.constant(x).cloned() {
        // numpy-broadcast per-channel parameters
        let full = |p: &Tensor| {
            crate::graph::broadcast_to(p, &t.shape).ok_or_else(|| {
                ctx.err(format!(
                    "a parameter of shape {:?} does not broadcast to {:?}",
                    p.shape, t.shape
                ))
            })
        };
        let (scales, zeros) = (full(&scale)?, full(&zero)?);
        let data = (0..t.numel())
            .map(|e| {
                let (s, z) = (scales.data[e] as f32, zeros.data[e] as f32);
                let q = (t.data[e] as f32 / s + z).clamp(qmin as f32, qmax as f32);
                ((mode.apply(q) - z) * s) as f64
            })
            .collect();
        return ctx.set_constant(0, Tensor::new(t.shape, data, DType::F32));
    }
    if scale.numel() != 1 || zero.numel() != 1 {
        return Err(ctx.err(
            "per-channel quantization of an encrypted tensor is not supported (one scale per tensor)",
        ));
    }
    if zero.data[0].fract() != 0.0 {
        return Err(ctx.err(format!(
            "zero point {} of an encrypted tensor is not an integer",
            zero.data[0]
        )));
    }
    if mode != RoundingMode::HalfEven {
        return Err(ctx.err(format!(
            "rounding_mode '{mode_name}' on an encrypted tensor is not supported (ROUND only)"
        )));
    }
    let out = ctx.required_output(0)?;
    let zero_point = zero.data[0] as i64;
    let q = ctx.add_sub_node(
        "int",
        Op::Quantize {
            scale: scale.data[0],
            zero_point,
            qmin,
            qmax,
        },
        vec![x],
        vec![(format!("{out}/int"), shape.clone(), DType::I64)],
    );
    ctx.add_node(
        Op::Dequantize {
            scale: scale.data[0],
            zero_point,
        },
        q,
        vec![(out, shape, DType::F32)],
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_modes_follow_the_qonnx_table() {
        // rows of QONNX's IntQuant rounding table: value, then ROUND, CEIL, FLOOR, UP,
        // DOWN, HALF_UP, HALF_DOWN
        let table: [(f32, [f32; 7]); 6] = [
            (5.5, [6., 6., 5., 6., 5., 6., 5.]),
            (2.5, [2., 3., 2., 3., 2., 3., 2.]),
            (1.6, [2., 2., 1., 2., 1., 2., 2.]),
            (1.1, [1., 2., 1., 2., 1., 1., 1.]),
            (-1.6, [-2., -1., -2., -2., -1., -2., -2.]),
            (-2.5, [-2., -2., -3., -3., -2., -3., -2.]),
        ];
        let modes = [
            "ROUND",
            "CEIL",
            "FLOOR",
            "UP",
            "DOWN",
            "HALF_UP",
            "half_down",
        ];
        for (v, expected) in table {
            for (m, e) in modes.iter().zip(expected) {
                assert_eq!(RoundingMode::parse(m).unwrap().apply(v), e, "{m}({v})");
            }
        }
        assert!(RoundingMode::parse("STOCHASTIC").is_none());
    }

    fn broadcasts_to(p: &[usize], shape: &[usize]) -> bool {
        let n = p.iter().product();
        crate::graph::broadcast_to(&Tensor::new(p.to_vec(), vec![0.0; n], DType::F32), shape)
            .is_some()
    }

    /// The element of a parameter of shape `p` that element `e` of `shape` reads.
    fn broadcast_index(shape: &[usize], p: &[usize], e: usize) -> usize {
        let n: usize = p.iter().product();
        let indices = Tensor::new(p.to_vec(), (0..n).map(|i| i as f64).collect(), DType::F32);
        crate::graph::broadcast_to(&indices, shape).unwrap().data[e] as usize
    }

    #[test]
    fn parameters_broadcast_like_numpy() {
        // per-channel scale [1, C, 1, 1] over [N, C, H, W]
        let shape = [1, 3, 2, 2];
        assert!(broadcasts_to(&[1, 3, 1, 1], &shape));
        assert!(broadcasts_to(&[], &shape));
        assert!(!broadcasts_to(&[3, 1], &shape));
        let channels: Vec<usize> = (0..12)
            .map(|e| broadcast_index(&shape, &[1, 3, 1, 1], e))
            .collect();
        assert_eq!(channels, [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]);
        // per-row [C_out, 1] over a weight [C_out, C_in]
        let rows: Vec<usize> = (0..6)
            .map(|e| broadcast_index(&[2, 3], &[2, 1], e))
            .collect();
        assert_eq!(rows, [0, 0, 0, 1, 1, 1]);
        assert_eq!(broadcast_index(&[2, 3], &[], 5), 0);
    }
}
