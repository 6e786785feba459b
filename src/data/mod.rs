//! Data layer: memory-mapped token datasets, the byte-level BPE tokenizer, and checked downloads.

mod dataset;
mod download;
mod tokenizer;

pub use dataset::TokenDataset;
pub use download::{
    download, sha256_file, tinyshakespeare, TINYSHAKESPEARE_BYTES, TINYSHAKESPEARE_SHA256, TINYSHAKESPEARE_URL,
};
pub use tokenizer::{LazyTokenizer, Tokenizer, EOS_TOKEN};
