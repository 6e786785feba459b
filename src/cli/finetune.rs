//! Fine-tuning data for a run: JSONL records encoded with the model's tokenizer and chat
//! template, split, packed into windows and written with their loss masks.

use crate::data::{
    pack, parse_record, read_jsonl, tokenizer_config, ChatTemplate, Encoded, Encoder, MaskedDataset, Record, Tokenizer,
};
use crate::{Error, Result};
use rayon::prelude::*;
use std::path::{Path, PathBuf};

/// Every `VAL_EVERY`th record (the 10th, 20th, ...) validates.
pub const VAL_EVERY: usize = 10;
/// The files beside a model's tokenizer.json that say how to talk to it; a run keeps copies.
const MODEL_TEXT_FILES: [&str; 3] = ["tokenizer_config.json", "chat_template.jinja", "generation_config.json"];

/// How a model's text is framed: its chat template, end-of-text token and the tokens that end a reply.
#[derive(Debug)]
pub struct ModelText {
    pub template: Option<ChatTemplate>,
    /// The tokenizer_config.json's eos_token (else the tokenizer's end-of-text).
    pub eos: u32,
    /// `eos` and every eos_token_id of generation_config.json.
    pub stops: Vec<u32>,
    /// The folder the files came from.
    pub dir: Option<PathBuf>,
}

/// Where the files of the model at `given` may be: the folder itself and, for a checkpoint
/// (RUN/checkpoints/step_N, with its trainer.json), its run.
fn model_dirs(given: &Path) -> Vec<PathBuf> {
    let mut dirs = vec![given.to_path_buf()];
    if let Some(run) = given.parent().and_then(|p| p.parent()).filter(|_| given.join("trainer.json").exists()) {
        dirs.push(run.to_path_buf());
    }
    dirs
}

impl ModelText {
    /// The template and stop tokens of the model at `given` (a folder, checkpoint or run), read
    /// from the first of its folders that has any of `MODEL_TEXT_FILES`.
    pub fn find(given: &Path, tok: &Tokenizer) -> Result<ModelText> {
        let dir = model_dirs(given).into_iter().find(|d| MODEL_TEXT_FILES.iter().any(|f| d.join(f).exists()));
        let Some(dir) = dir else {
            return Ok(ModelText { template: None, eos: tok.eos_id(), stops: vec![tok.eos_id()], dir });
        };
        let template = ChatTemplate::find(&dir)?;
        let config = tokenizer_config(&dir)?.unwrap_or_default();
        let named = config.get("eos_token").and_then(|e| e.as_str().or_else(|| e.get("content")?.as_str()));
        let eos = named.and_then(|e| tok.inner().token_to_id(e)).unwrap_or(tok.eos_id());
        let mut stops = vec![eos];
        let gen = dir.join("generation_config.json");
        if let Ok(bytes) = std::fs::read(&gen) {
            let v: serde_json::Value = serde_json::from_slice(&bytes)
                .map_err(|e| Error::Invalid(format!("{}: not valid JSON: {e}", gen.display())))?;
            match v.get("eos_token_id") {
                Some(serde_json::Value::Array(ids)) => {
                    stops.extend(ids.iter().filter_map(|i| i.as_u64()).map(|i| i as u32))
                }
                Some(i) => stops.extend(i.as_u64().map(|i| i as u32)),
                None => {}
            }
        }
        stops.sort_unstable();
        stops.dedup();
        Ok(ModelText { template, eos, stops, dir: Some(dir) })
    }

    /// Copies the model's `MODEL_TEXT_FILES` into run directory `out`, so its checkpoints chat too.
    pub fn copy_into(&self, out: &Path) -> Result<()> {
        let Some(dir) = &self.dir else { return Ok(()) };
        for f in MODEL_TEXT_FILES.iter().map(|f| dir.join(f)).filter(|f| f.exists()) {
            let to = out.join(f.file_name().expect("a file name"));
            if to != f {
                crate::fs::write_atomic(&to, &std::fs::read(&f)?)?;
            }
        }
        Ok(())
    }
}

/// How fine-tuning records become windows.
#[derive(Clone, Copy, Debug, Default)]
pub struct FinetuneOptions {
    /// Count every token, not only completions and assistant turns.
    pub train_on_prompt: bool,
    /// One record a window (padded) instead of as many whole records as fit.
    pub no_pack: bool,
}

/// A run's fine-tuning data.
pub struct PreparedJsonl {
    pub tokenizer: Tokenizer,
    pub train: MaskedDataset,
    pub val: MaskedDataset,
}

/// Whether JSONL file `path` holds fine-tuning records (its first is prompt/completion or
/// messages, or does not parse: `prepare_jsonl` then names the line), not `{"text"}` to pretrain on.
pub fn is_finetune_jsonl(path: &Path) -> bool {
    use std::io::BufRead;
    let Ok(file) = std::fs::File::open(path) else { return true };
    let first = std::io::BufReader::new(file).lines().map_while(|l| l.ok()).find(|l| !l.trim().is_empty());
    first.is_none_or(|l| !matches!(parse_record(&l, "first record"), Ok(Record::Text(_))))
}

/// Encodes every record of `path` (an error names the file and line of a bad one); `at` of each.
pub fn encode_file(path: &Path, enc: &Encoder) -> Result<Vec<Encoded>> {
    let lines = read_jsonl(path)?;
    lines.par_iter().map(|l| enc.encode(&l.record, &format!("{}:{}", path.display(), l.number))).collect()
}

/// Reads JSONL `data`, encodes it with `tok` (the --init model's, else one trained on the
/// records and kept in `out`) and the template in `out` (copied there from `init`), and writes
/// `out`/train.bin and val.bin with their masks: windows of `seq` + 1 tokens.
pub fn prepare_jsonl(
    data: &Path,
    out: &Path,
    seq: usize,
    vocab: usize,
    given: Option<(&Tokenizer, &Path)>,
    o: FinetuneOptions,
) -> Result<PreparedJsonl> {
    std::fs::create_dir_all(out)?;
    let lines = read_jsonl(data)?; // every line checked before anything is written
    let tok_path = out.join("tokenizer.json");
    let tok = match given {
        Some((tok, init)) => {
            if tok_path.exists() && Tokenizer::load(&tok_path)?.inner().get_vocab(true) != tok.inner().get_vocab(true) {
                return Err(Error::Invalid(format!(
                    "{} is not the --init model's tokenizer: this run directory was made for another model; use a new --out",
                    tok_path.display()
                )));
            }
            tok.save(&tok_path)?;
            ModelText::find(init, tok)?.copy_into(out)?;
            tok.clone()
        }
        None if tok_path.exists() => Tokenizer::load(&tok_path)?,
        None => {
            let text: String = lines.iter().flat_map(|l| record_text(&l.record)).collect::<Vec<_>>().join("\n");
            let tok = Tokenizer::train(&text, vocab)?;
            tok.save(&tok_path)?;
            note!("trained a {}-token BPE tokenizer on the records -> {}", tok.vocab_size(), tok_path.display());
            tok
        }
    };
    let text = ModelText::find(out, &tok)?;
    let enc = Encoder {
        tokenizer: &tok,
        template: text.template.as_ref(),
        eos: text.eos,
        train_on_prompt: o.train_on_prompt,
    };
    let encoded: Vec<Encoded> = lines
        .par_iter()
        .map(|l| enc.encode(&l.record, &format!("{}:{}", data.display(), l.number)))
        .collect::<Result<_>>()?;
    let n = encoded.len();
    if n < 2 {
        return Err(Error::Invalid(format!(
            "--data {}: {n} record; at least 2 are needed (every {VAL_EVERY}th, or the last of fewer, validates)",
            data.display()
        )));
    }
    // Record i (from 1) validates when i is a multiple of VAL_EVERY; with fewer, the last does.
    let is_val = |i: usize| if n < VAL_EVERY { i + 1 == n } else { (i + 1).is_multiple_of(VAL_EVERY) };
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for (i, e) in encoded.into_iter().enumerate() {
        if is_val(i) {
            val.push(e)
        } else {
            train.push(e)
        }
    }
    let window = seq + 1;
    let (ptrain, pval) = (pack(&train, window, !o.no_pack, text.eos), pack(&val, window, !o.no_pack, text.eos));
    let cut = ptrain.cut + pval.cut;
    if cut > 0 {
        eprintln!("warning: {cut} of {n} records are longer than --seq + 1 = {window} tokens and were cut to fit");
    }
    let (train_bin, val_bin) = (out.join("train.bin"), out.join("val.bin"));
    MaskedDataset::create(&train_bin, &ptrain)?;
    MaskedDataset::create(&val_bin, &pval)?;
    let train_ds = MaskedDataset::open(&train_bin, seq, tok.vocab_size())?;
    let val_ds = MaskedDataset::open(&val_bin, seq, tok.vocab_size())?;
    let which = if n < VAL_EVERY { format!("the last record ({n})") } else { format!("every {VAL_EVERY}th record") };
    let counts = match o.train_on_prompt {
        true => "every token counted (--train-on-prompt)",
        false => "completion and assistant tokens counted (--train-on-prompt counts all)",
    };
    note!(
        "data: {}: {} train / {} validation records (validation: {which}), {} + {} windows of {seq} tokens ({}), {} training targets, {counts}",
        data.display(),
        train.len(),
        val.len(),
        train_ds.num_windows(),
        val_ds.num_windows(),
        if o.no_pack { "one record each" } else { "records packed whole" },
        train_ds.counted(),
    );
    if train_ds.counted() == 0 || val_ds.counted() == 0 {
        return Err(Error::Invalid(format!(
            "--data {}: no tokens to learn in the {} split (every completion or assistant turn was cut off by --seq {seq}?)",
            data.display(),
            if train_ds.counted() == 0 { "training" } else { "validation" }
        )));
    }
    Ok(PreparedJsonl { tokenizer: tok, train: train_ds, val: val_ds })
}

/// The strings of a record, to train a tokenizer on.
fn record_text(r: &Record) -> Vec<&str> {
    match r {
        Record::Text(t) => vec![t],
        Record::Completion { prompt, completion } => vec![prompt, completion],
        Record::Chat(m) => m.iter().map(|m| m.content.as_str()).collect(),
    }
}
