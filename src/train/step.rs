//! One optimizer step (forward, backward, gradient accumulation, the all-reduce under MPI,
//! clipping and the NaN/Inf skip), and evaluation.

use super::hessian::sample_labels;
use super::Trainer;
use crate::nn::IGNORE_INDEX;
use crate::ops::{self, flat};
use crate::optim::step_control_scaled;
use crate::profile::{self, Phase};
use crate::rng::Rng;
use crate::{bail, no_grad, Device, Precision, Result, Tensor};

/// Where a gradient pass (`Trainer::gradients`) takes its targets from.
pub(super) enum Labels<'a> {
    /// The data's next tokens, with dropout: training.
    Data(&'a [u32]),
    /// Drawn from the model's own softmax, without dropout: Sophia's Hessian estimate.
    Sampled(&'a mut Rng),
}

impl Trainer {
    pub(super) fn tokens(&self, ids: &[u32], b: usize, t: usize) -> Result<Tensor> {
        Tensor::from_u32_on(ids, &[b, t], self.model.device())
    }

    /// One optimizer step on `inputs`/`targets` ([batch, seq] token ids, row-major):
    /// returns (mean loss, global gradient norm before clipping). A NaN/Inf loss or gradient
    /// skips the update and is counted in `skipped_steps`.
    pub fn train_step(&mut self, inputs: &[u32], targets: &[u32], batch: usize, seq_len: usize) -> Result<(f32, f32)> {
        let n = batch * seq_len;
        let accum = self.config.grad_accum_steps;
        if inputs.len() != n || targets.len() != n {
            bail!(
                Shape,
                "train_step: inputs and targets must hold batch×seq_len = {n} ids, got {} and {}",
                inputs.len(),
                targets.len()
            );
        }
        if !batch.is_multiple_of(accum) {
            bail!(Shape, "train_step: batch {batch} is not divisible by grad_accum_steps {accum}");
        }
        let scale = self.loss_scale.now(self.model.device());
        if self.optimizer.wants_hessian() {
            // Before this step's gradients exist, so the two sets are never held at once.
            self.update_hessian(inputs, batch, seq_len, scale)?;
        }
        let params = self.params();
        let (grads, loss_sum) = self.gradients(inputs, Labels::Data(targets), batch, seq_len, scale)?;
        let _optimizer = profile::phase(Phase::Optimizer);
        // Clipping and the NaN/Inf skip are decided on the device and applied inside the update.
        let control = step_control_scaled(&grads, &loss_sum, self.config.max_grad_norm, scale)?;
        let lr = self.scheduler.get_lr(self.step);
        self.optimizer.set_lr(lr);
        self.optimizer.step_controlled(&params, &grads, &control)?;
        let c = control.to_vec(); // the step's one host read
        let (applied, norm, loss_sum) = (c[1] != 0.0, c[2], c[3]);
        if scale != 1.0 {
            self.loss_scale.update(applied);
        }
        if !applied {
            self.optimizer.uncount_step();
            self.skipped_steps += 1;
            if self.dist().is_none_or(|d| d.is_root()) {
                let why = match scale != 1.0 && loss_sum.is_finite() {
                    true => format!(
                        "gradients overflowed at loss scale {scale}; the scale is now {}",
                        self.loss_scale.scale
                    ),
                    false => format!("loss {loss_sum} / gradient norm {norm} is not finite"),
                };
                eprintln!("step {}: {why}; update skipped", self.step);
            }
        }
        self.step += 1;
        profile::step();
        Ok((loss_sum, norm))
    }

    /// Gradients of the batch's mean loss times `scale` (the loss scale): micro-batches summed,
    /// averaged across MPI ranks, in one buffer on the GPU; and the loss (unscaled) on the device.
    pub(super) fn gradients(
        &self,
        inputs: &[u32],
        mut labels: Labels,
        batch: usize,
        seq_len: usize,
        scale: f32,
    ) -> Result<(Vec<Tensor>, Tensor)> {
        let accum = self.config.grad_accum_steps;
        let micro = batch / accum;
        let params = self.params();
        let mut grads: Option<Vec<Tensor>> = None;
        // The summed loss stays on the device: the step reads the host only once, at its end.
        let mut loss_sum: Option<Tensor> = None;
        // Each micro-batch's mean loss weighs by its counted targets (fine-tuning data masks
        // some), so the step's loss is the mean over all of them; all micro-batches weigh the
        // same when nothing is masked.
        let counts: Vec<usize> = (0..accum)
            .map(|m| match &labels {
                Labels::Data(t) => {
                    t[m * micro * seq_len..(m + 1) * micro * seq_len].iter().filter(|&&y| y != IGNORE_INDEX).count()
                }
                Labels::Sampled(_) => 1,
            })
            .collect();
        let total: usize = counts.iter().sum();
        for (m, &count) in counts.iter().enumerate() {
            let weight = if total == 0 { 1.0 / accum as f32 } else { count as f32 / total as f32 };
            let range = m * micro * seq_len..(m + 1) * micro * seq_len;
            let x = self.tokens(&inputs[range.clone()], micro, seq_len)?;
            let loss = {
                let _forward = profile::phase(Phase::Forward);
                let loss = match &mut labels {
                    Labels::Data(targets) => {
                        let y = self.tokens(&targets[range], micro, seq_len)?;
                        // Ranks draw different dropout masks (rank 0 the same as a single process).
                        let rank = self.dist().map_or(0, |d| d.rank() as u64);
                        let seed = self.config.seed ^ ((self.step as u64) << 20) ^ m as u64 ^ (rank << 40);
                        self.model.loss(&x, &y, micro, seq_len, Some(seed))?
                    }
                    Labels::Sampled(rng) => {
                        let logits = no_grad(|| self.model.forward(&x, micro, seq_len, 0))?.to_vec();
                        let y = sample_labels(&logits, self.model.config.vocab_size, rng);
                        self.model.loss(&x, &self.tokens(&y, micro, seq_len)?, micro, seq_len, None)?
                    }
                };
                if weight == 1.0 {
                    loss // scaling by 1 would cost a dispatch each way and change nothing
                } else {
                    ops::scale(&loss, weight)?
                }
            };
            let backward = profile::phase(Phase::Backward);
            let last = m + 1 == accum;
            // The loss the backward pass starts from (the loss itself unless loss scaling is on).
            let scaled = if scale == 1.0 { loss.clone() } else { ops::scale(&loss, scale)? };
            if let (Some(sync), true) = (&self.sync, last) {
                // The last micro-batch: buckets are averaged across ranks while backward runs.
                let mut round = sync.round(grads.take());
                scaled.backward_with_hook(&mut |leaf, g| round.ready(leaf, g))?;
                let local = loss.item()? + loss_sum.take().map_or(Ok(0.0), |s| s.item())?;
                let (averaged, sums) = round.finish(vec![local])?;
                let mean = sums[0] / sync.dist().size() as f32;
                loss_sum = Some(Tensor::full_on(loss.shape(), mean, loss.device()));
                grads = Some(averaged);
                drop(backward);
                continue;
            }
            let g = scaled.backward()?;
            let g: Vec<Tensor> = params
                .iter()
                .map(|p| g.get(p).cloned().unwrap_or_else(|| Tensor::zeros_on(p.shape(), Precision::FP32, p.device())))
                .collect();
            let sum = match grads.take() {
                None => g,
                Some(acc) => no_grad(|| acc.iter().zip(&g).map(|(a, b)| ops::add(a, b)).collect::<Result<_>>())?,
            };
            // On the GPU the step's gradients go into one buffer, after the backward pass (whose
            // peak is earlier), when one binding holds them: the norm and the update are then one
            // dispatch each. Larger ones would span several buffers anyway, and the copy would
            // hold them twice (4.9 GB more for a 1B model): they stay where the backward made them.
            let pack = last && self.model.device() == Device::Gpu && packs(&sum)?;
            grads = Some(if pack { flat::pack(&sum)? } else { sum });
            loss_sum = Some(match loss_sum.take() {
                None => loss.detach(),
                Some(sum) => no_grad(|| ops::add(&sum, &loss))?,
            });
            drop(backward);
        }
        Ok((grads.expect("at least one micro-batch"), loss_sum.expect("at least one micro-batch")))
    }

    /// Mean loss over the counted targets (not `IGNORE_INDEX`) of `batches` of ([batch·seq]
    /// inputs, targets), without dropout or gradients.
    pub fn evaluate(&self, batches: &[(Vec<u32>, Vec<u32>)], batch: usize, seq_len: usize) -> Result<f32> {
        if batches.is_empty() {
            bail!(Invalid, "evaluate: no batches");
        }
        no_grad(|| {
            let (mut sum, mut counted) = (0.0, 0usize);
            for (x, y) in batches {
                let n = y.iter().filter(|&&t| t != IGNORE_INDEX).count();
                let (x, y) = (self.tokens(x, batch, seq_len)?, self.tokens(y, batch, seq_len)?);
                sum += self.model.loss(&x, &y, batch, seq_len, None)?.item()? as f64 * n as f64;
                counted += n;
            }
            if counted == 0 {
                bail!(Invalid, "evaluate: every target of the validation batches is masked; nothing to measure");
            }
            Ok((sum / counted as f64) as f32)
        })
    }
}

/// Whether the gradients `g` fit one GPU binding, so that packing them gives one buffer.
fn packs(g: &[Tensor]) -> Result<bool> {
    let bytes: u64 = g.iter().map(|t| 4 * t.numel() as u64).sum();
    Ok(bytes <= crate::device::gpu::context()?.max_binding())
}
