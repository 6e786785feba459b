//! Sophia-G's diagonal Hessian estimate (Gauss-Newton-Bartlett): the gradient ĝ of the mean
//! loss on labels sampled from the model's own softmax, folded in as B·ĝ² every k steps.

use super::step::Labels;
use super::Trainer;
use crate::optim::step_control_scaled;
use crate::rng::Rng;
use crate::Result;

impl Trainer {
    /// Feeds the optimizer a Hessian estimate at the current weights from this step's `inputs`
    /// (their targets are not used). The labels are drawn on the host from logits read back:
    /// a first version that costs a forward making the full [B, T, V] logits, a readback and a
    /// forward and backward through the fused loss, once every k steps. A NaN/Inf estimate
    /// changes nothing (its step control skips it).
    pub(super) fn update_hessian(&mut self, inputs: &[u32], batch: usize, seq_len: usize, scale: f32) -> Result<()> {
        let (rank, ranks) = self.dist().map_or((0, 1), |d| (d.rank() as u64, d.size()));
        // Its own stream per (seed, step, rank): a resumed run draws the same labels.
        let mut rng = Rng::new(self.config.seed ^ 0x50f1_a000_0000_0000 ^ ((self.step as u64) << 20) ^ (rank << 40));
        let (grads, loss) = self.gradients(inputs, Labels::Sampled(&mut rng), batch, seq_len, scale)?;
        let control = step_control_scaled(&grads, &loss, 0.0, scale)?;
        // B: the tokens the averaged loss is a mean over, on all ranks.
        let tokens = batch * seq_len * ranks;
        let params = self.params();
        self.optimizer.update_hessian(&params, &grads, tokens, Some(&control))
    }
}

/// One label per row of `logits` ([rows, vocab]), drawn from softmax(row) in f64.
pub(super) fn sample_labels(logits: &[f32], vocab: usize, rng: &mut Rng) -> Vec<u32> {
    logits
        .chunks(vocab)
        .map(|row| {
            let max = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            let z: f64 = row.iter().map(|&l| ((l - max) as f64).exp()).sum();
            let mut u = rng.uniform() * z;
            for (i, &l) in row.iter().enumerate() {
                u -= ((l - max) as f64).exp();
                if u < 0.0 {
                    return i as u32;
                }
            }
            (vocab - 1) as u32 // rounding left u just above 0
        })
        .collect()
}
