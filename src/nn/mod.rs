//! Neural network layer: Linear, RMSNorm, attention, SwiGLU FFN, TransformerBlock, GPTModel.

mod attention;
mod block;
mod config;
mod ffn;
mod hf_config;
mod linear;
mod model;

pub use attention::Attention;
pub use block::TransformerBlock;
pub use config::{Architecture, ModelConfig};
pub use ffn::FeedForward;
pub use linear::{Linear, RmsNorm};
pub use model::{GPTModel, KvCache, Loader};
