//! dynapress: non-uniform compression of large language models.
//!
//! The pipeline, one module per stage (data flows down this list):
//!
//! - [`model`]: Hugging Face checkpoints of the Llama family (Llama, Mistral,
//!   Qwen2, Qwen3): loading, the forward pass, generation;
//! - [`eval`]: perplexity, KL divergence to a base model, multiple choice.
//!
//! ```no_run
//! use dynapress::model::Model;
//! let model = Model::load(std::path::Path::new("assets/demo-model"))?;
//! let ids = model.tokenizer.encode("fn main() {")?;
//! let logits = model.forward(&ids, 1, ids.len())?; // [1, t, vocab]
//! # Ok::<(), dynapress::Error>(())
//! ```

pub mod calib;
pub mod database;
pub mod error;
pub mod estimate;
pub mod eval;
pub mod export;
pub mod export_served;
pub mod formats;
pub mod fsutil;
pub mod model;
pub mod pipeline;
pub mod progress;
pub mod report;
pub mod search;

pub use error::{Error, Result};
