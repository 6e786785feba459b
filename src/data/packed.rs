//! Records packed into fixed windows, with a mask of the tokens the loss counts: the token
//! files of fine-tuning data (`NAME.bin` ids, `NAME.mask.bin` 0/1 per id, windows stored aligned).

use super::jsonl::Encoded;
use super::TokenDataset;
use crate::nn::IGNORE_INDEX;
use crate::rng::Rng;
use crate::{bail, Result};
use std::path::{Path, PathBuf};

/// Windows of `window` tokens, back to back: ids and whether each is a counted target.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Packed {
    pub ids: Vec<u32>,
    pub counted: Vec<bool>,
    /// Records longer than a window, cut to one.
    pub cut: usize,
}

impl Packed {
    pub fn windows(&self, window: usize) -> usize {
        self.ids.len() / window
    }
}

/// Puts whole records into windows of `window` tokens (= seq + 1: inputs and shifted targets):
/// greedily several a window when `pack`, else one each; the rest of a window is `pad`, not
/// counted. A record longer than a window is cut to one. A record's first token is never counted
/// (it would be predicted from the record before).
pub fn pack(records: &[Encoded], window: usize, pack: bool, pad: u32) -> Packed {
    let mut out = Packed::default();
    let mut fill = 0; // tokens in the open window
    let close = |out: &mut Packed, fill: &mut usize| {
        if *fill > 0 {
            out.ids.resize(out.ids.len() + window - *fill, pad);
            out.counted.resize(out.ids.len(), false);
            *fill = 0;
        }
    };
    for r in records {
        let n = r.ids.len().min(window);
        if n == 0 {
            continue;
        }
        if n < r.ids.len() {
            out.cut += 1;
        }
        if !pack || fill + n > window {
            close(&mut out, &mut fill);
        }
        out.ids.extend_from_slice(&r.ids[..n]);
        out.counted.push(false);
        out.counted.extend_from_slice(&r.counted[1..n]);
        fill += n;
    }
    close(&mut out, &mut fill);
    out
}

/// The mask file beside token file `path`: `train.bin` -> `train.mask.bin`.
pub fn mask_path(path: &Path) -> PathBuf {
    path.with_extension("mask.bin")
}

/// A packed split on disk: windows of seq + 1 tokens and their mask, memory-mapped.
#[derive(Debug)]
pub struct MaskedDataset {
    ids: TokenDataset,
    mask: TokenDataset,
    seq_len: usize,
}

impl MaskedDataset {
    /// Writes `packed` to `path` and its mask file (each atomically).
    pub fn create(path: &Path, packed: &Packed) -> Result<()> {
        TokenDataset::create(path, &packed.ids)?;
        let mask: Vec<u32> = packed.counted.iter().map(|&c| c as u32).collect();
        TokenDataset::create(mask_path(path), &mask)
    }

    /// Opens `path` and its mask as windows of `seq_len` + 1; every id must be below `vocab_size`.
    pub fn open(path: &Path, seq_len: usize, vocab_size: usize) -> Result<MaskedDataset> {
        let ids = TokenDataset::open_checked(path, seq_len, vocab_size)?;
        let mask = TokenDataset::open_checked(mask_path(path), seq_len, 2)?;
        if ids.len() != mask.len() || !ids.len().is_multiple_of(seq_len + 1) {
            bail!(
                Invalid,
                "{}: {} tokens and {} mask entries do not make whole windows of --seq + 1 = {} (made for another --seq? prepare it again)",
                path.display(),
                ids.len(),
                mask.len(),
                seq_len + 1
            );
        }
        Ok(MaskedDataset { ids, mask, seq_len })
    }

    pub fn path(&self) -> &Path {
        self.ids.path()
    }

    pub fn num_windows(&self) -> usize {
        self.ids.len() / (self.seq_len + 1)
    }

    /// Counted targets in the whole split.
    pub fn counted(&self) -> usize {
        let n = self.ids.len();
        self.mask.tokens(0, n).iter().enumerate().filter(|&(i, &m)| m != 0 && i % (self.seq_len + 1) != 0).count()
    }

    /// Window `i`: inputs [T] and targets [T], the targets not counted set to `IGNORE_INDEX`.
    pub fn window(&self, i: usize) -> (Vec<u32>, Vec<u32>) {
        let w = self.seq_len + 1;
        let ids = self.ids.tokens(i * w, (i + 1) * w);
        let mask = self.mask.tokens(i * w, (i + 1) * w);
        let targets = ids[1..].iter().zip(&mask[1..]).map(|(&t, &m)| if m != 0 { t } else { IGNORE_INDEX }).collect();
        (ids[..self.seq_len].to_vec(), targets)
    }

    /// Windows `idx` side by side: (inputs, targets), each [idx.len() * T].
    pub fn windows(&self, idx: impl IntoIterator<Item = usize>) -> (Vec<u32>, Vec<u32>) {
        let (mut x, mut y) = (Vec::new(), Vec::new());
        for i in idx {
            let (a, b) = self.window(i);
            x.extend(a);
            y.extend(b);
        }
        (x, y)
    }

    /// The batch of training step `step`: `batch` windows drawn at random, a function of
    /// (seed, step) only, so a resumed run draws what the uninterrupted one would have.
    pub fn batch_at(&self, step: u64, batch: usize, seed: u64) -> (Vec<u32>, Vec<u32>) {
        let key = Rng::new(seed).next_u64() ^ step;
        let mut rng = Rng::new(Rng::new(key).next_u64());
        let n = self.num_windows() as u64;
        let idx: Vec<usize> = (0..batch).map(|_| rng.below(n) as usize).collect();
        self.windows(idx)
    }

    /// Every window in order, in batches of `batch` (the last filled up from the first windows),
    /// at most `max` batches.
    pub fn in_order(&self, batch: usize, max: usize) -> Vec<(Vec<u32>, Vec<u32>)> {
        let n = self.num_windows();
        (0..n.div_ceil(batch).min(max)).map(|b| self.windows((b * batch..(b + 1) * batch).map(|i| i % n))).collect()
    }
}
