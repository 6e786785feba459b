//! Element types: FP32 and BF16 (storage; compute is f32), and U32 for token ids.

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Precision {
    FP32,
    /// bfloat16 storage; ops compute in f32 and round to nearest even when they store.
    BF16,
    /// Unsigned 32-bit integers (token ids).
    U32,
}

impl Precision {
    pub fn size_bytes(self) -> usize {
        match self {
            Precision::FP32 | Precision::U32 => 4,
            Precision::BF16 => 2,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Precision::FP32 => "f32",
            Precision::BF16 => "bf16",
            Precision::U32 => "u32",
        }
    }
}

/// f32 -> bf16 bits, round to nearest even; NaN stays a (quiet) NaN.
pub fn f32_to_bf16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    if x.is_nan() {
        return ((b >> 16) | 0x40) as u16;
    }
    let round = 0x7fff + ((b >> 16) & 1);
    (b.wrapping_add(round) >> 16) as u16
}

pub fn bf16_bits_to_f32(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}
