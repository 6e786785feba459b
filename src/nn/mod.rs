//! Neural network layer: Linear, RMSNorm, attention, SwiGLU FFN, TransformerBlock, GPTModel.

mod attention;
mod block;
mod config;
mod ffn;
mod linear;
mod model;

pub use attention::Attention;
pub use block::TransformerBlock;
pub use config::ModelConfig;
pub use ffn::FeedForward;
pub use linear::{Linear, RmsNorm};
pub use model::{GPTModel, KvCache, Loader, IGNORE_INDEX};
