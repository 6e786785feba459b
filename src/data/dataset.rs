//! Token datasets on disk: a small header plus little-endian token ids, memory-mapped for zero-copy
//! reads; a corpus's shards read as one sequence.
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
pub(crate) const HEADER_BYTES: usize = 24;

/// One mapped token file.
struct Shard {
    path: PathBuf,
    mmap: Mmap,
    width: usize,
    /// Position of its first token in the whole sequence.
    start: usize,
    len: usize,
}

impl Shard {
    /// Token `i` of this file.
    fn token(&self, i: usize) -> u32 {
        let at = HEADER_BYTES + i * self.width;
        match self.width {
            2 => u16::from_le_bytes([self.mmap[at], self.mmap[at + 1]]) as u32,
            _ => u32::from_le_bytes(self.mmap[at..at + 4].try_into().unwrap()),
        }
    }

    /// Tokens `start..end` of this file, appended to `out`.
    fn extend(&self, start: usize, end: usize, out: &mut Vec<u32>) {
        let bytes = &self.mmap[HEADER_BYTES + start * self.width..HEADER_BYTES + end * self.width];
        match self.width {
            2 => out.extend(bytes.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]]) as u32)),
            _ => out.extend(bytes.chunks_exact(4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))),
        }
    }
}

/// Token files (one, or the shards of a corpus) read as one sequence, memory-mapped, and cut
/// into windows of `seq_len` inputs (+1 token for the shifted targets).
pub struct TokenDataset {
    shards: Vec<Shard>,
    len: usize,
    seq_len: usize,
}

impl TokenDataset {
    /// Writes `tokens` to `path` atomically (temporary file, fsync, rename): a crash leaves the old file or the new one.
    pub fn create(path: impl AsRef<Path>, tokens: &[u32]) -> Result<()> {
        let path = path.as_ref();
        let width = if tokens.iter().all(|&t| t < 1 << 16) { 2 } else { 4 };
        let mut bytes = Vec::with_capacity(HEADER_BYTES + tokens.len() * width);
        bytes.extend_from_slice(&header(width, tokens.len() as u64));
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
        Self::open_shards(&[path.as_ref()], seq_len)
    }

    /// Maps token files `paths` (shards written in order) as one sequence of tokens.
    pub fn open_shards<P: AsRef<Path>>(paths: &[P], seq_len: usize) -> Result<TokenDataset> {
        let mut shards = Vec::with_capacity(paths.len());
        let mut len = 0;
        for p in paths {
            let shard = map_shard(p.as_ref(), len)?;
            len += shard.len;
            shards.push(shard);
        }
        let name = match paths {
            [one] => one.as_ref().display().to_string(),
            _ => format!("{} shards of tokens", paths.len()),
        };
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
        Ok(TokenDataset { shards, len, seq_len })
    }

    /// `open`, then one pass over the tokens: every id must be below `vocab_size` (the
    /// model's embedding rows). The error names the file, the position and the id.
    pub fn open_checked(path: impl AsRef<Path>, seq_len: usize, vocab_size: usize) -> Result<TokenDataset> {
        Self::open_shards(&[path], seq_len)?.checked(vocab_size)
    }

    /// Checks that every id is below `vocab_size`; the error names the file, its position in it and the id.
    pub fn checked(self, vocab_size: usize) -> Result<TokenDataset> {
        use std::io::{Read, Seek, SeekFrom};
        for s in &self.shards {
            // Read, not through the map: the pages of a pass over gigabytes would count as the
            // process's memory until the kernel reclaims them.
            let read_err =
                |e: std::io::Error| Error::Invalid(format!("cannot read token file {}: {e}", s.path.display()));
            let mut file = fs::File::open(&s.path).map_err(read_err)?;
            file.seek(SeekFrom::Start(HEADER_BYTES as u64)).map_err(read_err)?;
            let mut block = vec![0u8; (1 << 20) * s.width];
            let mut done = 0;
            while done < s.len {
                let n = (s.len - done).min(1 << 20);
                file.read_exact(&mut block[..n * s.width]).map_err(read_err)?;
                let bytes = &block[..n * s.width];
                let bad = match s.width {
                    2 => bytes
                        .chunks_exact(2)
                        .map(|b| u16::from_le_bytes([b[0], b[1]]) as u32)
                        .position(|t| t as usize >= vocab_size),
                    _ => bytes
                        .chunks_exact(4)
                        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                        .position(|t| t as usize >= vocab_size),
                };
                if let Some(i) = bad.map(|i| done + i) {
                    bail!(
                        Invalid,
                        "token file {}: token at position {i} is id {}, outside the vocabulary of {vocab_size} (re-create the token files with this tokenizer)",
                        s.path.display(),
                        s.token(i)
                    );
                }
                done += n;
            }
        }
        Ok(self)
    }

    /// The (first) token file.
    pub fn path(&self) -> &Path {
        &self.shards[0].path
    }

    /// How many token files hold the sequence.
    pub fn num_shards(&self) -> usize {
        self.shards.len()
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

    /// Bytes per token on disk: 2 or 4 (the widest of the shards).
    pub fn token_width(&self) -> usize {
        self.shards.iter().map(|s| s.width).max().unwrap_or(2)
    }

    /// Non-overlapping windows, as `get_batch` walks them.
    pub fn num_windows(&self) -> usize {
        (self.len - 1) / self.seq_len
    }

    /// The shard that holds token `i`.
    fn shard_of(&self, i: usize) -> &Shard {
        &self.shards[self.shards.partition_point(|s| s.start + s.len <= i)]
    }

    /// Token `i`, read from the map.
    pub fn token(&self, i: usize) -> u32 {
        assert!(i < self.len, "token {i} out of 0..{}", self.len);
        let s = self.shard_of(i);
        s.token(i - s.start)
    }

    /// Tokens `start..end` as a vector (across shards where they meet).
    pub fn tokens(&self, start: usize, end: usize) -> Vec<u32> {
        assert!(start <= end && end <= self.len, "tokens {start}..{end} out of 0..{}", self.len);
        let mut out = Vec::with_capacity(end - start);
        let mut i = start;
        while i < end {
            let s = self.shard_of(i);
            let stop = end.min(s.start + s.len);
            s.extend(i - s.start, stop - s.start, &mut out);
            i = stop;
        }
        out
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
            .field("path", &self.path())
            .field("shards", &self.shards.len())
            .field("len", &self.len)
            .field("seq_len", &self.seq_len)
            .finish()
    }
}

/// The 24-byte header of a file of `count` tokens of `width` bytes.
pub(crate) fn header(width: usize, count: u64) -> [u8; HEADER_BYTES] {
    let mut h = [0u8; HEADER_BYTES];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&(width as u32).to_le_bytes());
    h[16..24].copy_from_slice(&count.to_le_bytes());
    h
}

/// Maps one token file whose first token is token `start` of the sequence, checking its header.
fn map_shard(path: &Path, start: usize) -> Result<Shard> {
    let name = path.display();
    let file = fs::File::open(path).map_err(|e| Error::Invalid(format!("cannot open token file {name}: {e}")))?;
    // SAFETY: the map is read-only and files are only ever replaced by rename (create), never
    // rewritten in place, so the mapped bytes do not change under us.
    let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::Invalid(format!("cannot map token file {name}: {e}")))?;
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
    Ok(Shard { path: path.to_path_buf(), mmap, width, start, len: count as usize })
}
