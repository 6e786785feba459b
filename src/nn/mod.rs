//! Neural network layer: Linear, RMSNorm, attention, SwiGLU FFN, TransformerBlock, GPTModel, LoRA.

mod attention;
mod block;
mod config;
mod ffn;
mod hf_config;
mod kv_cache;
mod linear;
mod lora;
mod model;

pub use attention::Attention;
pub use block::TransformerBlock;
pub use config::{Architecture, ModelConfig};
pub use ffn::FeedForward;
pub use kv_cache::KvCache;
pub use linear::{Linear, RmsNorm};
pub use lora::{peft_name, Lora, LoraConfig, TARGETS as LORA_TARGETS};
pub use model::{GPTModel, Loader, IGNORE_INDEX};
