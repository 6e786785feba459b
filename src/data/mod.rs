//! Data layer: memory-mapped token datasets and their shards, corpora streamed from files,
//! directories or globs, the byte-level BPE tokenizer, checked downloads, and
//! fine-tuning data (JSONL records, chat templates, packed windows with loss masks).

mod chat;
mod dataset;
mod download;
mod fast_encode;
mod jsonl;
mod packed;
mod sample;
mod shards;
mod sources;
mod stream;
mod tokenizer;

pub use chat::{tokenizer_config, ChatTemplate, Message};
pub use dataset::TokenDataset;
pub use download::{
    download, sha256_file, tinyshakespeare, TINYSHAKESPEARE_BYTES, TINYSHAKESPEARE_SHA256, TINYSHAKESPEARE_URL,
};
pub use jsonl::{parse_record, read_jsonl, Encoded, Encoder, Line, Record};
pub use packed::{mask_path, pack, MaskedDataset, Packed};
pub use sample::Sample;
pub use shards::{clear_unfinished, ShardEntry, ShardWriter, TokenIndex, INDEX_FILE, SHARD_TOKENS};
pub use sources::{find_sources, Source, SourceKind};
pub use stream::{encode_stream, Sink, StreamOptions, StreamStats};
pub use tokenizer::{LazyTokenizer, Tokenizer, EOS_TOKEN};
