//! Block-wise 8-bit dynamic quantization (Dettmers et al. 2022, "8-bit Optimizers via Block-wise
//! Quantization"): the signed and unsigned dynamic (tree) code maps, and codes with one absmax per block.

use std::sync::OnceLock;

/// Elements per quantization block. 256, not the paper's 2048: an outlier then coarsens the
/// codes of 255 neighbours rather than 2047 (bitsandbytes' blockwise optimizers use 256 too), the
/// scales cost 4/256 byte an element, and one GPU workgroup covers a block.
pub const BLOCK: usize = 256;

/// Parameters with fewer elements (norm weights, biases) keep f32 moments, as bitsandbytes does:
/// they cost little and their 8-bit error would not pay for itself.
pub const MIN_8BIT_SIZE: usize = 4096;

/// The 256 values of a dynamic code map, ascending: a code is an index into it.
///
/// A code's bits, after the sign bit of the signed map, are a run of e zeros (the magnitude is
/// 10^-e, e = 0..6), an indicator 1, and 6 - e fraction bits that split [0.1, 1] into equal bins,
/// each value the middle of its bin. The unsigned map has no sign bit, so one more fraction bit
/// at each e. Both add 0 and 1 (1 makes the block's absmax exact): 2·127 + 2 and 254 + 2 values.
pub fn dynamic_map(signed: bool) -> [f32; 256] {
    let mut v: Vec<f64> = vec![0.0, 1.0];
    for e in 0..7 {
        let scale = 10f64.powi(-e);
        let bins = 1usize << (6 - e + i32::from(!signed));
        for j in 0..bins {
            let x = scale * (0.1 + 0.9 * (j as f64 + 0.5) / bins as f64);
            v.push(x);
            if signed {
                v.push(-x);
            }
        }
    }
    v.sort_by(f64::total_cmp);
    std::array::from_fn(|i| v[i] as f32)
}

/// The two maps, made once: the signed one (first moments) then the unsigned one (second).
pub(super) fn maps() -> &'static [[f32; 256]; 2] {
    static MAPS: OnceLock<[[f32; 256]; 2]> = OnceLock::new();
    MAPS.get_or_init(|| [dynamic_map(true), dynamic_map(false)])
}

/// The index of the map value nearest to x (the lower one on a tie), by binary search;
/// adamw8bit.wgsl's `quantize` is the same search.
pub fn quantize(map: &[f32; 256], x: f32) -> u8 {
    // The last index whose value is <= x (0 when x is below them all).
    let (mut lo, mut hi) = (0usize, 255usize);
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        if map[mid] <= x {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    if lo < 255 && map[lo + 1] - x < x - map[lo] {
        lo += 1;
    }
    lo as u8
}

/// x scaled into [-1, 1] by a block's absmax; 0 for a block of zeros.
pub(super) fn normalise(x: f32, absmax: f32) -> f32 {
    if absmax > 0.0 {
        x / absmax
    } else {
        0.0
    }
}

/// Codes of `x` and the absmax of each block of `BLOCK` elements (the last block may be short).
pub fn quantize_blockwise(x: &[f32], signed: bool) -> (Vec<u8>, Vec<f32>) {
    let map = &maps()[usize::from(!signed)];
    let mut codes = Vec::with_capacity(x.len());
    let mut absmax = Vec::with_capacity(x.len().div_ceil(BLOCK));
    for block in x.chunks(BLOCK) {
        let a = block.iter().fold(0f32, |a, v| a.max(v.abs()));
        codes.extend(block.iter().map(|&v| quantize(map, normalise(v, a))));
        absmax.push(a);
    }
    (codes, absmax)
}

/// The values that `quantize_blockwise` gave `codes` and `absmax`.
pub fn dequantize_blockwise(codes: &[u8], absmax: &[f32], signed: bool) -> Vec<f32> {
    let map = &maps()[usize::from(!signed)];
    codes.iter().enumerate().map(|(i, &c)| map[c as usize] * absmax[i / BLOCK]).collect()
}
