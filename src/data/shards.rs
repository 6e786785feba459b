//! Token shards written as a corpus streams in, and the index (tokens.json) that says they are complete.

use super::dataset::{header, HEADER_BYTES};
use crate::fs::{sync_dir, write_atomic};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The index of a run directory's token shards: written last, so shards without it are unfinished.
pub const INDEX_FILE: &str = "tokens.json";
/// Tokens per shard unless asked otherwise (200 MB at 2 bytes a token).
pub const SHARD_TOKENS: u64 = 100_000_000;
const INDEX_VERSION: u32 = 1;
/// Name of a shard still being written: never opened as data, removed by `clear_unfinished`.
const PARTIAL: &str = "partial";

/// One finished shard: its file name in the run directory and its token count.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShardEntry {
    pub file: String,
    pub tokens: u64,
}

/// What `tokens.json` records about the token files and the corpus they came from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TokenIndex {
    pub version: u32,
    /// `--data` as given, and how many files and bytes it held.
    pub data: String,
    pub files: u64,
    pub bytes: u64,
    pub documents: u64,
    /// How the validation split was chosen, in words.
    pub validation: String,
    pub train: Vec<ShardEntry>,
    pub val: Vec<ShardEntry>,
    /// Characters of the validation text (for nats per character).
    pub val_chars: u64,
    pub vocab_size: usize,
}

impl TokenIndex {
    pub fn new(data: String) -> TokenIndex {
        TokenIndex {
            version: INDEX_VERSION,
            data,
            files: 0,
            bytes: 0,
            documents: 0,
            validation: String::new(),
            train: Vec::new(),
            val: Vec::new(),
            val_chars: 0,
            vocab_size: 0,
        }
    }

    /// The index in `dir`, None when there is none (tokens not made, or unfinished).
    pub fn read(dir: &Path) -> Result<Option<TokenIndex>> {
        let path = dir.join(INDEX_FILE);
        let Ok(bytes) = std::fs::read(&path) else { return Ok(None) };
        let index: TokenIndex = serde_json::from_slice(&bytes).map_err(|e| {
            Error::Invalid(format!("{}: not a token index ({e}); delete it to tokenize again", path.display()))
        })?;
        if index.version != INDEX_VERSION {
            return Err(Error::Invalid(format!(
                "{}: version {} (this build reads {INDEX_VERSION}); delete it to tokenize again",
                path.display(),
                index.version
            )));
        }
        Ok(Some(index))
    }

    /// Writes the index into `dir` atomically: from then on the shards count as complete.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let json = serde_json::to_vec_pretty(self).expect("the index serialises");
        write_atomic(&dir.join(INDEX_FILE), &json)
    }

    /// Paths of a split's shards in `dir`.
    pub fn paths(dir: &Path, shards: &[ShardEntry]) -> Vec<PathBuf> {
        shards.iter().map(|s| dir.join(&s.file)).collect()
    }

    pub fn tokens(shards: &[ShardEntry]) -> u64 {
        shards.iter().map(|s| s.tokens).sum()
    }
}

/// Removes what an interrupted tokenization left in `dir` (its partial and finished shards,
/// which no index vouches for), so it starts again cleanly.
pub fn clear_unfinished(dir: &Path) -> Result<usize> {
    let mut removed = 0;
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(0) };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let shard = |split: &str| name.starts_with(&format!("{split}-")) && name.contains(".bin");
        if shard("train") || shard("val") {
            std::fs::remove_file(entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Writes a stream of token ids as numbered shards `{split}-00000.bin`, ... of at most
/// `per_shard` tokens, each under a temporary name until complete (fsync, rename).
pub struct ShardWriter {
    dir: PathBuf,
    split: &'static str,
    per_shard: u64,
    width: usize,
    open: Option<(BufWriter<File>, PathBuf, u64)>,
    done: Vec<ShardEntry>,
}

impl ShardWriter {
    /// Shards of `split` in `dir`; ids take 2 bytes when `vocab_size` ≤ 65536, else 4.
    pub fn new(dir: &Path, split: &'static str, per_shard: u64, vocab_size: usize) -> ShardWriter {
        let width = if vocab_size <= 1 << 16 { 2 } else { 4 };
        ShardWriter { dir: dir.to_path_buf(), split, per_shard: per_shard.max(1), width, open: None, done: Vec::new() }
    }

    fn name(&self, n: usize) -> String {
        format!("{}-{n:05}.bin", self.split)
    }

    /// Tokens written so far.
    pub fn tokens(&self) -> u64 {
        TokenIndex::tokens(&self.done) + self.open.as_ref().map_or(0, |o| o.2)
    }

    /// Appends `ids`, finishing shards as they fill.
    pub fn push(&mut self, mut ids: &[u32]) -> Result<()> {
        let (per_shard, width) = (self.per_shard, self.width);
        while !ids.is_empty() {
            if self.open.is_none() {
                let path = self.dir.join(format!("{}.{PARTIAL}", self.name(self.done.len())));
                let mut f = BufWriter::with_capacity(1 << 20, File::create(&path).map_err(write_err(&path))?);
                f.write_all(&header(width, 0)).map_err(write_err(&path))?;
                self.open = Some((f, path, 0));
            }
            let (f, path, count) = self.open.as_mut().expect("a shard is open");
            let take = ids.len().min((per_shard - *count) as usize);
            let mut bytes = Vec::with_capacity(take * width);
            for &t in &ids[..take] {
                match width {
                    2 => bytes.extend_from_slice(&(t as u16).to_le_bytes()),
                    _ => bytes.extend_from_slice(&t.to_le_bytes()),
                }
            }
            let path = path.clone();
            f.write_all(&bytes).map_err(write_err(&path))?;
            *count += take as u64;
            ids = &ids[take..];
            if *count == per_shard {
                self.finish_shard()?;
            }
        }
        Ok(())
    }

    /// Writes the open shard's count into its header, syncs it and gives it its final name.
    fn finish_shard(&mut self) -> Result<()> {
        let Some((f, path, count)) = self.open.take() else { return Ok(()) };
        let mut file = f.into_inner().map_err(|e| write_err(&path)(e.into_error()))?;
        if count == 0 {
            drop(file);
            return std::fs::remove_file(&path).map_err(|e| write_err(&path)(e));
        }
        let io = |file: &mut File| -> std::io::Result<()> {
            file.seek(SeekFrom::Start(0))?;
            file.write_all(&header(self.width, count))?;
            file.set_len(HEADER_BYTES as u64 + count * self.width as u64)?;
            file.sync_all()
        };
        io(&mut file).map_err(write_err(&path))?;
        let name = self.name(self.done.len());
        std::fs::rename(&path, self.dir.join(&name)).map_err(write_err(&path))?;
        self.done.push(ShardEntry { file: name, tokens: count });
        Ok(())
    }

    /// Moves the last `n` tokens written (at most those of the open shard) to `to`: the
    /// validation split of a corpus too small to give one of whole documents. Called last, before
    /// `finish`. Returns how many moved.
    pub fn move_tail(&mut self, n: u64, to: &mut ShardWriter) -> Result<u64> {
        let width = self.width;
        let Some((f, path, count)) = self.open.as_mut() else { return Ok(0) };
        let n = n.min(*count);
        let path = path.clone();
        f.flush().map_err(write_err(&path))?;
        let mut file = File::open(&path).map_err(write_err(&path))?;
        let from = HEADER_BYTES as u64 + (*count - n) * width as u64;
        file.seek(SeekFrom::Start(from)).map_err(write_err(&path))?;
        let mut left = n * width as u64;
        let mut bytes = vec![0u8; (1 << 20) * width];
        while left > 0 {
            let part = &mut bytes[..left.min(((1 << 20) * width) as u64) as usize];
            file.read_exact(part).map_err(write_err(&path))?;
            let ids: Vec<u32> = match width {
                2 => part.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]]) as u32).collect(),
                _ => part.chunks_exact(4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
            };
            to.push(&ids)?;
            left -= part.len() as u64;
        }
        // The header's count is written when the shard finishes; set_len there drops the tail.
        *count -= n;
        Ok(n)
    }

    /// Finishes the last shard; the list of shards, in order.
    pub fn finish(mut self) -> Result<Vec<ShardEntry>> {
        self.finish_shard()?;
        sync_dir(&self.dir)?;
        Ok(self.done)
    }
}

fn write_err(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |e| Error::Invalid(format!("cannot write token shard {}: {e}", path.display()))
}
