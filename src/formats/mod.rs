//! File formats written and read by dynapress (bytes, not numerics).

pub mod gguf;
pub mod safetensors;
