//! Data preparation: the BPE tokenizer and the token files of a run directory, made when
//! missing and checked against the tokenizer's vocabulary when opened.

use crate::data::{tinyshakespeare, LazyTokenizer, TokenDataset, Tokenizer};
use crate::{Error, Result};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// A run directory's data: the tokenizer, both splits, and characters per token of validation.
pub struct Prepared {
    pub tokenizer: LazyTokenizer,
    pub train: TokenDataset,
    pub val: TokenDataset,
    pub chars_per_token: f64,
}

/// The text file to train on: `--data`, or TinyShakespeare (downloaded once into data/).
fn data_file(data: Option<&Path>) -> Result<PathBuf> {
    match data {
        Some(p) if p.exists() => Ok(p.to_path_buf()),
        Some(p) => Err(Error::Invalid(format!("--data {}: no such file", p.display()))),
        None => tinyshakespeare("data"),
    }
}

/// Tokenizer (`vocab` tokens) and token files in `out`, made from the text when missing: the
/// first 90% of the characters train, the rest validate. Windows are `seq_len` tokens.
pub fn prepare(data: Option<&Path>, vocab: usize, out: &Path, seq_len: usize) -> Result<Prepared> {
    prepare_with(data, vocab, out, seq_len, None)
}

/// `prepare`, with the tokenizer `given` (a pretrained model's, `--init`) instead of one trained
/// on the text: written to `out` when missing, and an error if `out` holds another.
pub fn prepare_with(
    data: Option<&Path>,
    vocab: usize,
    out: &Path,
    seq_len: usize,
    given: Option<&Tokenizer>,
) -> Result<Prepared> {
    std::fs::create_dir_all(out)?;
    let text_path = data_file(data)?;
    let text = std::fs::read_to_string(&text_path)
        .map_err(|e| Error::Invalid(format!("{}: {e} (a UTF-8 text file is needed)", text_path.display())))?;
    let split = text.char_indices().nth(text.chars().count() * 9 / 10).map_or(text.len(), |(i, _)| i);
    let (train_text, val_text) = text.split_at(split);
    let tok_path = out.join("tokenizer.json");
    let (train_bin, val_bin) = (out.join("train.bin"), out.join("val.bin"));
    let mut tok = if let Some(given) = given {
        if !tok_path.exists() {
            given.save(&tok_path)?;
            let _ = std::fs::remove_file(&train_bin);
            note!("tokenizer: the --init model's ({} tokens) -> {}", given.vocab_size(), tok_path.display());
        } else if Tokenizer::load(&tok_path)?.inner().get_vocab(true) != given.inner().get_vocab(true) {
            return Err(Error::Invalid(format!(
                "{} is not the --init model's tokenizer: this run directory was made for another model; use a new --out",
                tok_path.display()
            )));
        }
        LazyTokenizer::from(given.clone())
    } else if tok_path.exists() {
        Tokenizer::load_lazily(&tok_path)?
    } else {
        let t = Instant::now();
        let tok = Tokenizer::train(train_text, vocab)?;
        tok.save(&tok_path)?;
        note!(
            "trained a {}-token BPE tokenizer in {:.1}s -> {}",
            tok.vocab_size(),
            t.elapsed().as_secs_f64(),
            tok_path.display()
        );
        let _ = std::fs::remove_file(&train_bin);
        LazyTokenizer::from(tok)
    };
    if !train_bin.exists() || !val_bin.exists() {
        let t = tok.get()?;
        TokenDataset::create(&train_bin, &t.encode_chunked(train_text, 1 << 20))?;
        TokenDataset::create(&val_bin, &t.encode_chunked(val_text, 1 << 20))?;
    }
    // Ids the model's embedding does not have are caught here, not by a kernel mid-run.
    let train = TokenDataset::open_checked(&train_bin, seq_len, tok.vocab_size())?;
    let val = TokenDataset::open_checked(&val_bin, seq_len, tok.vocab_size())?;
    let chars_per_token = val_text.chars().count() as f64 / val.len() as f64;
    note!(
        "data: {} ({} characters), {} train / {} validation tokens, {chars_per_token:.2} characters per token",
        text_path.display(),
        text.chars().count(),
        train.len(),
        val.len()
    );
    Ok(Prepared { tokenizer: tok, train, val, chars_per_token })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("irontensor-prepare-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// Text whose characters split 90/10 at a multi-byte character boundary.
    fn text() -> String {
        (0..400).map(|i| format!("line {i}: to be, or not to be — é{}\n", i % 7)).collect()
    }

    #[test]
    fn makes_the_tokenizer_and_token_files_once() {
        let dir = scratch("once");
        let data = dir.join("in.txt");
        std::fs::write(&data, text()).unwrap();
        let out = dir.join("run");
        let mut p = prepare(Some(&data), 300, &out, 8).unwrap();
        let tok = p.tokenizer.get().unwrap();
        assert!(tok.vocab_size() <= 300);
        // The token files hold the text's 90/10 split, encoded by this tokenizer.
        let t = text();
        let cut = t.char_indices().nth(t.chars().count() * 9 / 10).unwrap().0;
        assert_eq!(p.train.tokens(0, p.train.len()), tok.encode(&t[..cut]));
        assert_eq!(p.val.tokens(0, p.val.len()), tok.encode(&t[cut..]));
        let cpt = t[cut..].chars().count() as f64 / p.val.len() as f64;
        assert_eq!(p.chars_per_token, cpt);
        // A second call reuses the files: they are not rewritten.
        let before = std::fs::metadata(out.join("train.bin")).unwrap().modified().unwrap();
        let tok_json = std::fs::read(out.join("tokenizer.json")).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        prepare(Some(&data), 999, &out, 8).unwrap();
        assert_eq!(std::fs::metadata(out.join("train.bin")).unwrap().modified().unwrap(), before);
        assert_eq!(std::fs::read(out.join("tokenizer.json")).unwrap(), tok_json);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_missing_data_file_names_the_flag() {
        let dir = scratch("missing");
        let e = prepare(Some(&dir.join("nope.txt")), 300, &dir.join("run"), 8).map(|_| ()).unwrap_err();
        assert!(e.to_string().contains("--data") && e.to_string().contains("nope.txt"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_token_file_with_ids_outside_the_vocabulary_is_refused() {
        let dir = scratch("vocab");
        let data = dir.join("in.txt");
        std::fs::write(&data, text()).unwrap();
        let out = dir.join("run");
        let vocab = prepare(Some(&data), 300, &out, 8).unwrap().tokenizer.vocab_size();
        let mut ids = vec![1u32; 50];
        ids[17] = vocab as u32;
        TokenDataset::create(out.join("train.bin"), &ids).unwrap();
        let e = prepare(Some(&data), 300, &out, 8).map(|_| ()).unwrap_err().to_string();
        assert!(e.contains("train.bin") && e.contains("position 17") && e.contains(&format!("id {vocab}")), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
