//! Container formats dynapress writes and reads (bytes, not numerics). The GGUF
//! container is in the `dynapress-gguf` crate; the exporters that fill them are
//! in `crate::export`.

pub mod safetensors;
