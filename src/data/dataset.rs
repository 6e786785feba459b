//! Token datasets on disk: a small header plus little-endian token ids, memory-mapped for zero-copy reads.
//!
//! File layout (all little-endian):
//! ```text
//! 0   magic      b"ITOKENS\0"
//! 8   version    u32 (1)
//! 12  width      u32 (bytes per token: 2 when every id < 65536, else 4)
//! 16  count      u64 (number of tokens)
//! 24  tokens     count * width bytes
//! ```

use crate::fs::write_atomic;
use crate::rng::Rng;
use crate::{bail, Error, Result};
use memmap2::Mmap;
use std::fs;
use std::path::{Path, PathBuf};

/// First bytes of every token file.
pub const MAGIC: &[u8; 8] = b"ITOKENS\0";
/// The format version this build writes and reads.
pub const VERSION: u32 = 1;
const HEADER_BYTES: usize = 24;

/// A memory-mapped token file cut into windows of `seq_len` inputs (+1 token for the shifted targets).
pub struct TokenDataset {
    path: PathBuf,
    mmap: Mmap,
    width: usize,
    len: usize,
    seq_len: usize,
}

impl TokenDataset {
    /// Writes `tokens` to `path` atomically (temporary file, fsync, rename): a crash leaves the old file or the new one.
    pub fn create(path: impl AsRef<Path>, tokens: &[u32]) -> Result<()> {
        let path = path.as_ref();
        let width = if tokens.iter().all(|&t| t < 1 << 16) { 2 } else { 4 };
        let mut bytes = Vec::with_capacity(HEADER_BYTES + tokens.len() * width);
        bytes.extend_from_slice(MAGIC);
        bytes.extend_from_slice(&VERSION.to_le_bytes());
        bytes.extend_from_slice(&(width as u32).to_le_bytes());
        bytes.extend_from_slice(&(tokens.len() as u64).to_le_bytes());
        for &t in tokens {
            match width {
                2 => bytes.extend_from_slice(&(t as u16).to_le_bytes()),
                _ => bytes.extend_from_slice(&t.to_le_bytes()),
            }
        }
        write_atomic(path, &bytes)
            .map_err(|e| Error::Invalid(format!("cannot write token file {}: {e}", path.display())))
    }

    /// Maps the token file at `path` and checks its header; windows are `seq_len` tokens long.
    pub fn open(path: impl AsRef<Path>, seq_len: usize) -> Result<TokenDataset> {
        let path = path.as_ref();
        let name = path.display();
        let file = fs::File::open(path).map_err(|e| Error::Invalid(format!("cannot open token file {name}: {e}")))?;
        // SAFETY: the map is read-only and files are only ever replaced by rename (create), never
        // rewritten in place, so the mapped bytes do not change under us.
        let mmap =
            unsafe { Mmap::map(&file) }.map_err(|e| Error::Invalid(format!("cannot map token file {name}: {e}")))?;
        if mmap.len() < HEADER_BYTES {
            bail!(
                Invalid,
                "token file {name} is truncated: {} bytes, shorter than the {HEADER_BYTES}-byte header",
                mmap.len()
            );
        }
        if &mmap[..8] != MAGIC {
            bail!(
                Invalid,
                "{name} is not an IronTensor token file (bad magic b\"{}\", expected b\"{}\")",
                mmap[..8].escape_ascii(),
                MAGIC.escape_ascii()
            );
        }
        let u32_at = |i: usize| u32::from_le_bytes(mmap[i..i + 4].try_into().unwrap());
        let version = u32_at(8);
        if version != VERSION {
            bail!(Invalid, "token file {name} has format version {version}; this build reads version {VERSION}");
        }
        let width = u32_at(12) as usize;
        if width != 2 && width != 4 {
            bail!(Invalid, "token file {name} is corrupt: token width {width} bytes (must be 2 or 4)");
        }
        let count = u64::from_le_bytes(mmap[16..24].try_into().unwrap());
        let data_bytes = (mmap.len() - HEADER_BYTES) as u64;
        if count.checked_mul(width as u64) != Some(data_bytes) {
            let (what, need) = match count.checked_mul(width as u64) {
                Some(need) if need > data_bytes => ("truncated", need.to_string()),
                Some(need) => ("corrupt (trailing bytes)", need.to_string()),
                None => ("corrupt", "an impossible number of".to_string()),
            };
            bail!(
                Invalid,
                "token file {name} is {what}: header says {count} tokens of {width} bytes ({need} bytes), file holds {data_bytes}"
            );
        }
        let len = count as usize;
        if seq_len == 0 {
            bail!(Invalid, "token file {name}: seq_len must be at least 1");
        }
        if len < seq_len + 1 {
            bail!(
                Invalid,
                "token file {name} holds {len} tokens, too few for seq_len {seq_len} (one window needs {})",
                seq_len + 1
            );
        }
        Ok(TokenDataset { path: path.to_path_buf(), mmap, width, len, seq_len })
    }

    /// `open`, then one pass over the tokens: every id must be below `vocab_size` (the
    /// model's embedding rows). The error names the file, the position and the id.
    pub fn open_checked(path: impl AsRef<Path>, seq_len: usize, vocab_size: usize) -> Result<TokenDataset> {
        let ds = TokenDataset::open(path, seq_len)?;
        let body = &ds.mmap[HEADER_BYTES..];
        let bad = match ds.width {
            2 => body
                .chunks_exact(2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]) as u32)
                .position(|t| t as usize >= vocab_size),
            _ => body
                .chunks_exact(4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .position(|t| t as usize >= vocab_size),
        };
        if let Some(i) = bad {
            bail!(
                Invalid,
                "token file {}: token at position {i} is id {}, outside the vocabulary of {vocab_size} (re-create the token files with this tokenizer)",
                ds.path.display(),
                ds.token(i)
            );
        }
        Ok(ds)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of tokens in the file.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Never true for an opened dataset (open needs seq_len + 1 tokens); here for clippy's len/is_empty pair.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn seq_len(&self) -> usize {
        self.seq_len
    }

    /// Bytes per token on disk: 2 or 4.
    pub fn token_width(&self) -> usize {
        self.width
    }

    /// Non-overlapping windows, as `get_batch` walks them.
    pub fn num_windows(&self) -> usize {
        (self.len - 1) / self.seq_len
    }

    /// Token `i`, read from the map.
    pub fn token(&self, i: usize) -> u32 {
        let at = HEADER_BYTES + i * self.width;
        match self.width {
            2 => u16::from_le_bytes([self.mmap[at], self.mmap[at + 1]]) as u32,
            _ => u32::from_le_bytes(self.mmap[at..at + 4].try_into().unwrap()),
        }
    }

    /// Tokens `start..end` as a vector.
    pub fn tokens(&self, start: usize, end: usize) -> Vec<u32> {
        assert!(start <= end && end <= self.len, "tokens {start}..{end} out of 0..{}", self.len);
        let bytes = &self.mmap[HEADER_BYTES + start * self.width..HEADER_BYTES + end * self.width];
        match self.width {
            2 => bytes.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]]) as u32).collect(),
            _ => bytes.chunks_exact(4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
        }
    }

    /// Window `batch_idx` (taken modulo `num_windows`, so a step counter walks epochs):
    /// inputs = tokens[s..s+T], targets = tokens[s+1..s+T+1] with s = idx * T.
    pub fn get_batch(&self, batch_idx: usize) -> (Vec<u32>, Vec<u32>) {
        self.window(batch_idx % self.num_windows() * self.seq_len)
    }

    /// The window starting at token `start`: (inputs [T], targets [T]).
    fn window(&self, start: usize) -> (Vec<u32>, Vec<u32>) {
        let all = self.tokens(start, start + self.seq_len + 1);
        (all[..self.seq_len].to_vec(), all[1..].to_vec())
    }

    /// `batch` windows at uniformly random starts drawn from `rng`: (inputs, targets), each [batch * T].
    pub fn sample_batch(&self, batch: usize, rng: &mut Rng) -> (Vec<u32>, Vec<u32>) {
        let starts = self.len - self.seq_len; // valid starts: 0..=len-T-1
        let mut inputs = Vec::with_capacity(batch * self.seq_len);
        let mut targets = Vec::with_capacity(batch * self.seq_len);
        for _ in 0..batch {
            let (x, y) = self.window(rng.below(starts as u64) as usize);
            inputs.extend_from_slice(&x);
            targets.extend_from_slice(&y);
        }
        (inputs, targets)
    }

    /// The random batch of training step `step`: a function of (seed, step) only, so a run resumed at
    /// step k draws exactly the batches the uninterrupted run would have.
    pub fn batch_at(&self, step: u64, batch: usize, seed: u64) -> (Vec<u32>, Vec<u32>) {
        // Hash (seed, step) into a fresh stream; adjacent steps must not share shifted streams.
        let key = Rng::new(seed).next_u64() ^ step;
        let mut rng = Rng::new(Rng::new(key).next_u64());
        self.sample_batch(batch, &mut rng)
    }
}

impl std::fmt::Debug for TokenDataset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenDataset")
            .field("path", &self.path)
            .field("len", &self.len)
            .field("width", &self.width)
            .field("seq_len", &self.seq_len)
            .finish()
    }
}
