//! Dynamic loss scaling, used while GPU matmuls round their inputs to f16.

use crate::{ops, Device};
use serde::{Deserialize, Serialize};

/// PyTorch's GradScaler rule: start at 2^16, halve when the scaled gradients overflow (that step
/// is skipped), double after 1000 steps in a row without. Saved in checkpoints.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LossScale {
    pub scale: f32,
    good_steps: u32,
}

impl Default for LossScale {
    fn default() -> Self {
        LossScale { scale: 65536.0, good_steps: 0 }
    }
}

impl LossScale {
    /// The scale for this step: 1 unless GPU matmuls take f16 inputs, whose range the small
    /// gradients of a mean loss would fall below.
    pub fn now(&self, device: Device) -> f32 {
        let f16 = device == Device::Gpu && ops::matmul_precision() == ops::MatmulPrecision::F16;
        if f16 {
            self.scale
        } else {
            1.0
        }
    }

    /// After a step at a scale other than 1: whether its update was applied.
    pub fn update(&mut self, applied: bool) {
        if !applied {
            self.scale = (self.scale / 2.0).max(1.0);
            self.good_steps = 0;
        } else {
            self.good_steps += 1;
            if self.good_steps == 1000 {
                self.scale = (self.scale * 2.0).min(16_777_216.0);
                self.good_steps = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halves_on_overflow_and_doubles_after_1000_good_steps() {
        let mut s = LossScale::default();
        s.update(false);
        assert_eq!(s.scale, 32768.0);
        for _ in 0..999 {
            s.update(true);
        }
        assert_eq!(s.scale, 32768.0);
        s.update(true);
        assert_eq!(s.scale, 65536.0);
        for _ in 0..40 {
            s.update(false);
        }
        assert_eq!(s.scale, 1.0, "never below 1");
    }
}
