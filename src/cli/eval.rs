//! `irontensor eval`: a model's loss and perplexity on a text file, or on the counted tokens of JSONL records.

use super::{at_least_one, bad_flag, encode_file, load_model, ModelText};
use crate::data::{pack, Encoder, Tokenizer};
use crate::nn::{GPTModel, IGNORE_INDEX};
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
    if o.data.extension().is_some_and(|e| e == "jsonl") {
        return eval_jsonl(o, &model, &tok, seq);
    }
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

/// `eval` of JSONL records: each encoded as `train` does (completion and assistant tokens
/// counted), packed into windows of `seq` + 1; the mean loss over the counted tokens.
fn eval_jsonl(o: &EvalOptions, model: &GPTModel, tok: &Tokenizer, seq: usize) -> Result<()> {
    let text = ModelText::find(&o.checkpoint, tok)?;
    let enc = Encoder { tokenizer: tok, template: text.template.as_ref(), eos: text.eos, train_on_prompt: false };
    let records = encode_file(&o.data, &enc)?;
    let packed = pack(&records, seq + 1, true, text.eos);
    if packed.cut > 0 {
        eprintln!(
            "warning: {} of {} records are longer than --seq + 1 = {} tokens and were cut",
            packed.cut,
            records.len(),
            seq + 1
        );
    }
    let windows = packed.windows(seq + 1);
    let (mut sum, mut counted) = (0.0f64, 0usize);
    no_grad(|| -> Result<()> {
        for first in (0..windows).step_by(o.batch) {
            let b = o.batch.min(windows - first);
            let (mut x, mut y) = (Vec::with_capacity(b * seq), Vec::with_capacity(b * seq));
            for w in first..first + b {
                let (ids, mask) = (&packed.ids[w * (seq + 1)..(w + 1) * (seq + 1)], &packed.counted[w * (seq + 1)..]);
                x.extend_from_slice(&ids[..seq]);
                y.extend(ids[1..].iter().zip(&mask[1..]).map(|(&t, &m)| if m { t } else { IGNORE_INDEX }));
            }
            let n = y.iter().filter(|&&t| t != IGNORE_INDEX).count();
            let (x, y) = (
                Tensor::from_u32_on(&x, &[b, seq], model.device())?,
                Tensor::from_u32_on(&y, &[b, seq], model.device())?,
            );
            sum += model.loss(&x, &y, b, seq, None)?.item()? as f64 * n as f64;
            counted += n;
        }
        Ok(())
    })?;
    if counted == 0 {
        return Err(bad_flag("data", o.data.display(), "has no completion or assistant tokens to measure"));
    }
    let loss = sum / counted as f64;
    println!(
        "{}: {} records in {windows} windows of {seq}: loss {loss:.4} nats/token over {counted} completion and assistant tokens, perplexity {:.3}",
        o.data.display(),
        records.len(),
        loss.exp()
    );
    Ok(())
}
