//! Data layer: memory-mapped token datasets, the byte-level BPE tokenizer, checked downloads, and
//! fine-tuning data (JSONL records, chat templates, packed windows with loss masks).

mod chat;
mod dataset;
mod download;
mod jsonl;
mod packed;
mod tokenizer;

pub use chat::{tokenizer_config, ChatTemplate, Message};
pub use dataset::TokenDataset;
pub use download::{
    download, sha256_file, tinyshakespeare, TINYSHAKESPEARE_BYTES, TINYSHAKESPEARE_SHA256, TINYSHAKESPEARE_URL,
};
pub use jsonl::{parse_record, read_jsonl, Encoded, Encoder, Line, Record};
pub use packed::{mask_path, pack, MaskedDataset, Packed};
pub use tokenizer::{LazyTokenizer, Tokenizer, EOS_TOKEN};
