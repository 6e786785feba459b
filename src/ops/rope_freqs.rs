//! RoPE's inverse frequencies: the plain base^(-2i/D), or scaled as transformers' rope types
//! `linear` and `llama3` scale them.

use crate::{bail, Result};
use serde::{Deserialize, Serialize};

/// How the frequencies are rescaled for a longer context (transformers' `rope_type`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
pub enum RopeScaling {
    /// `default`: base^(-2i/D) as it is.
    #[default]
    None,
    /// `linear`: every frequency divided by `factor` (positions interpolated).
    Linear { factor: f32 },
    /// `llama3` (Llama 3.1): wavelengths longer than original/low_freq_factor divided by
    /// `factor`, shorter than original/high_freq_factor kept, smoothly blended between.
    Llama3 { factor: f32, low_freq_factor: f32, high_freq_factor: f32, original_max_position_embeddings: usize },
}

/// RoPE's settings: the base (`rope_theta`) and its scaling.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rope {
    pub base: f32,
    pub scaling: RopeScaling,
}

impl From<f32> for Rope {
    /// Plain RoPE with this base.
    fn from(base: f32) -> Rope {
        Rope { base, scaling: RopeScaling::None }
    }
}

impl Rope {
    /// An error naming what is out of range.
    pub fn check(&self) -> Result<()> {
        if !(self.base.is_finite() && self.base > 0.0) {
            bail!(Invalid, "rope: base must be finite and > 0, got {}", self.base);
        }
        match self.scaling {
            RopeScaling::None => {}
            RopeScaling::Linear { factor } => {
                if !(factor.is_finite() && factor > 0.0) {
                    bail!(Invalid, "rope: linear scaling factor must be finite and > 0, got {factor}");
                }
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor: lo,
                high_freq_factor: hi,
                original_max_position_embeddings,
            } => {
                if !(factor.is_finite() && factor > 0.0 && lo.is_finite() && lo > 0.0 && hi.is_finite() && hi > lo)
                    || original_max_position_embeddings == 0
                {
                    bail!(
                        Invalid,
                        "rope: llama3 scaling needs factor > 0, 0 < low_freq_factor < high_freq_factor and \
                         original_max_position_embeddings > 0, got {:?}",
                        self.scaling
                    );
                }
            }
        }
        Ok(())
    }

    /// The D/2 inverse frequencies (radians per position) of a head of width `d`, in f64.
    pub fn inv_freqs(&self, d: usize) -> Vec<f64> {
        let plain = (0..d / 2).map(|i| (self.base as f64).powf(-2.0 * i as f64 / d as f64));
        match self.scaling {
            RopeScaling::None => plain.collect(),
            RopeScaling::Linear { factor } => plain.map(|f| f / factor as f64).collect(),
            RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings } => {
                let (factor, lo, hi) = (factor as f64, low_freq_factor as f64, high_freq_factor as f64);
                let old = original_max_position_embeddings as f64;
                let (low_wavelen, high_wavelen) = (old / lo, old / hi);
                plain
                    .map(|f| {
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        if wavelen < high_wavelen {
                            f
                        } else if wavelen > low_wavelen {
                            f / factor
                        } else {
                            // Between the two: blend f/factor and f by where the wavelength falls.
                            let smooth = (old / wavelen - lo) / (hi - lo);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect()
            }
        }
    }
}
