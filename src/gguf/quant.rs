//! Tensor encodings: ggml type codes, F32/F16/BF16/Q8_0 encoding and dequantization to f32.

use crate::{Error, Result};
use half::{bf16, f16};

pub const F32: u32 = 0;
pub const F16: u32 = 1;
pub const Q8_0: u32 = 8;
pub const BF16: u32 = 30;
/// Q8_0: blocks of 32 values along the innermost dimension, one f16 scale and 32 int8 each.
pub const Q8_BLOCK: usize = 32;
const Q8_BYTES: usize = 2 + Q8_BLOCK;

/// A ggml type's name, for messages.
pub fn type_name(ty: u32) -> String {
    const NAMES: [&str; 40] = [
        "F32",
        "F16",
        "Q4_0",
        "Q4_1",
        "Q4_2",
        "Q4_3",
        "Q5_0",
        "Q5_1",
        "Q8_0",
        "Q8_1",
        "Q2_K",
        "Q3_K",
        "Q4_K",
        "Q5_K",
        "Q6_K",
        "Q8_K",
        "IQ2_XXS",
        "IQ2_XS",
        "IQ3_XXS",
        "IQ1_S",
        "IQ4_NL",
        "IQ3_S",
        "IQ2_S",
        "IQ4_XS",
        "I8",
        "I16",
        "I32",
        "I64",
        "F64",
        "IQ1_M",
        "BF16",
        "Q4_0_4_4",
        "Q4_0_4_8",
        "Q4_0_8_8",
        "TQ1_0",
        "TQ2_0",
        "IQ4_NL_4_4",
        "IQ4_NL_4_8",
        "IQ4_NL_8_8",
        "MXFP4",
    ];
    NAMES.get(ty as usize).map_or_else(|| format!("unknown type {ty}"), |n| format!("{n} (type {ty})"))
}

/// Bytes of a tensor of `ty` with `dims` (innermost first); an error for types not handled.
pub fn byte_size(ty: u32, dims: &[u64]) -> Result<usize> {
    let n = dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d)).filter(|&n| n < 1 << 48);
    let Some(n) = n.map(|n| n as usize) else {
        return Err(Error::Invalid(format!("dims {dims:?} are too large")));
    };
    match ty {
        F32 => Ok(4 * n),
        F16 | BF16 => Ok(2 * n),
        Q8_0 if dims.first().is_some_and(|&d| (d as usize).is_multiple_of(Q8_BLOCK)) => Ok(n / Q8_BLOCK * Q8_BYTES),
        Q8_0 => {
            Err(Error::Invalid(format!("Q8_0 needs an innermost dimension that is a multiple of 32, got {dims:?}")))
        }
        _ => Err(Error::Invalid(format!(
            "tensor type {} is not supported: F32, F16, BF16 and Q8_0 are (convert the model to one of those)",
            type_name(ty)
        ))),
    }
}

/// `x` encoded as `ty` (F32, F16, BF16 or Q8_0; Q8_0 needs a length that is a multiple of 32).
pub fn encode(x: &[f32], ty: u32) -> Vec<u8> {
    match ty {
        F32 => x.iter().flat_map(|v| v.to_le_bytes()).collect(),
        F16 => x.iter().flat_map(|v| f16::from_f32(*v).to_le_bytes()).collect(),
        BF16 => x.iter().flat_map(|v| bf16::from_f32(*v).to_le_bytes()).collect(),
        Q8_0 => x.chunks(Q8_BLOCK).flat_map(q8_block).collect(),
        _ => unreachable!("encode: callers pass F32, F16, BF16 or Q8_0"),
    }
}

/// One Q8_0 block as ggml makes it: scale = max|x| / 127, values round(x / scale).
fn q8_block(x: &[f32]) -> Vec<u8> {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d == 0.0 { 0.0 } else { 1.0 / d };
    let mut out = f16::from_f32(d).to_le_bytes().to_vec();
    out.extend(x.iter().map(|v| (v * id).round().clamp(-127.0, 127.0) as i8 as u8));
    out
}

/// f32 values of `bytes` holding `n` values of `ty` (sizes already checked by `byte_size`).
pub fn decode(bytes: &[u8], ty: u32) -> Vec<f32> {
    let two = |b: &[u8]| [b[0], b[1]];
    match ty {
        F32 => bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
        F16 => bytes.chunks_exact(2).map(|b| f16::from_le_bytes(two(b)).to_f32()).collect(),
        BF16 => bytes.chunks_exact(2).map(|b| bf16::from_le_bytes(two(b)).to_f32()).collect(),
        Q8_0 => bytes
            .chunks_exact(Q8_BYTES)
            .flat_map(|b| {
                let d = f16::from_le_bytes(two(b)).to_f32();
                b[2..].iter().map(move |&q| q as i8 as f32 * d)
            })
            .collect(),
        _ => unreachable!("decode: byte_size refused {ty}"),
    }
}
