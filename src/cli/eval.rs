//! `irontensor eval`: a model's loss and perplexity on a text file.

use super::{at_least_one, bad_flag, load_model};
use crate::{no_grad, Device, Error, Result, Tensor};
use std::path::Path;

/// The flags of `irontensor eval`.
#[derive(Clone, Debug)]
pub struct EvalOptions {
    pub checkpoint: std::path::PathBuf,
    pub data: std::path::PathBuf,
    pub device: String,
    /// Tokens per window (None: the model's max_seq_len, at most 1024).
    pub seq: Option<usize>,
    pub batch: usize,
}

/// Mean next-token loss of the model over `o.data`, encoded with its own tokenizer and cut into
/// windows of `seq` + 1 tokens (each window predicts its last `seq`), the tail shorter than a
/// window left out. Prints nats per token, perplexity, nats per character and per byte.
pub fn eval(o: &EvalOptions) -> Result<()> {
    at_least_one("batch", o.batch)?;
    if o.data.extension().is_some_and(|e| e == "jsonl") {
        return Err(bad_flag("data", o.data.display(), "eval reads a UTF-8 text file (.jsonl is not supported yet)"));
    }
    let device = Device::parse(&o.device)?;
    let (model, tok) = load_model(&o.checkpoint, device)?;
    let max = model.config.max_seq_len;
    let seq = match o.seq {
        Some(s) if s == 0 || s > max => {
            return Err(bad_flag("seq", s, &format!("must be between 1 and the model's max_seq_len {max}")))
        }
        Some(s) => s,
        None => max.min(1024),
    };
    let text = read_text(&o.data)?;
    let ids = tok.encode(&text);
    let windows = ids.len().saturating_sub(1) / seq;
    if windows == 0 {
        let why = format!("holds {} tokens: at least seq + 1 = {} are needed", ids.len(), seq + 1);
        return Err(bad_flag("data", o.data.display(), &why));
    }
    let mut sum = 0.0f64;
    no_grad(|| -> Result<()> {
        for first in (0..windows).step_by(o.batch) {
            let b = o.batch.min(windows - first);
            let (mut x, mut y) = (Vec::with_capacity(b * seq), Vec::with_capacity(b * seq));
            for w in first..first + b {
                x.extend_from_slice(&ids[w * seq..(w + 1) * seq]);
                y.extend_from_slice(&ids[w * seq + 1..(w + 1) * seq + 1]);
            }
            let (x, y) = (Tensor::from_u32_on(&x, &[b, seq], device)?, Tensor::from_u32_on(&y, &[b, seq], device)?);
            sum += model.loss(&x, &y, b, seq, None)?.item()? as f64 * (b * seq) as f64;
        }
        Ok(())
    })?;
    let tokens = windows * seq;
    let loss = sum / tokens as f64;
    // The characters and bytes of the text those tokens cover.
    let covered = tok.decode(&ids[1..tokens + 1]);
    let (chars, bytes) = (covered.chars().count(), covered.len());
    println!(
        "{}: {tokens} tokens in windows of {seq}: loss {loss:.4} nats/token, perplexity {:.3}, {:.4} nats/character, {:.4} bits/byte",
        o.data.display(),
        loss.exp(),
        sum / chars as f64,
        sum / bytes as f64 / std::f64::consts::LN_2
    );
    Ok(())
}

fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path)
        .map_err(|e| Error::Invalid(format!("--data {}: {e} (a UTF-8 text file is needed)", path.display())))
}
