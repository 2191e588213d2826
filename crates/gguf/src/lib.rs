//! GGUF for dynapress: a validating reader, a streaming writer, the metadata
//! llama.cpp needs to run a Llama-family model, and llama.cpp's imatrix files.
//!
//! # The format
//!
//! GGUF (v3; v2 is read too) is a little-endian container: the magic `GGUF`, a
//! version, tensor and key/value counts, typed metadata (`general.*`,
//! `{arch}.*`, `tokenizer.ggml.*`), one info record per tensor (name, ggml
//! dimensions with the row length first, [`GgmlType`] id, offset), then the
//! tensor data, each tensor at an offset that is a multiple of
//! `general.alignment` (32 by default) from the start of the data section. See
//! [`reader`] for the byte layout.
//!
//! # Main types
//!
//! - [`GgufFile`]: opens (mmap) and validates a file — every size and offset is
//!   checked against the file length with checked arithmetic before anything is
//!   allocated, so malformed input yields a [`ParseError`] naming the item and
//!   offset, never a panic or a huge allocation. [`parse_header`] is the same
//!   parser over a byte slice (the fuzzing entry point).
//! - [`GgufWriter`]: streams a file — metadata and all [`TensorSpec`]s first,
//!   then each tensor's bytes in order, then [`GgufWriter::finish`] renames the
//!   temporary file into place (dropping the writer leaves nothing behind).
//! - [`model`]: [`LlamaHparams`] → `{arch}.*` keys for `llama`, `qwen2`,
//!   `qwen3`; Hugging Face → llama.cpp tensor names; the Q/K row permutation of
//!   the `llama` architecture; Llama 3 `rope_freqs`.
//! - [`tokenizer`]: [`TokenizerMetadata`] from `tokenizer.json` for byte-level
//!   BPE tokenizers, with `tokenizer.ggml.pre` chosen from the pre-tokenizer.
//! - [`imatrix`]: [`Imatrix`] in llama.cpp's GGUF and legacy `.dat` formats.
//! - [`mod@import`]: the way back — a GGUF model file (ours or llama.cpp's, any
//!   tensor types) as a Hugging Face `config.json`, `tokenizer.json` and f32
//!   tensors ([`HfImport`]).
//!
//! # Example
//!
//! ```
//! use dynapress_gguf::{GgmlType, GgufFile, GgufWriter, Metadata, TensorSpec};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("tiny.gguf");
//! let mut md = Metadata::new();
//! md.set("general.architecture", "llama");
//! md.set("llama.block_count", 1u32);
//!
//! // A [2, 3] row-major f32 matrix: ggml dims [3, 2].
//! let spec = TensorSpec::from_shape("w", GgmlType::F32, &[2, 3]);
//! let data: Vec<u8> = [1f32, 2., 3., 4., 5., 6.].iter().flat_map(|x| x.to_le_bytes()).collect();
//! let mut w = GgufWriter::create(&path, &md, vec![spec]).unwrap();
//! w.write_tensor("w", &data).unwrap();
//! w.finish().unwrap();
//!
//! let f = GgufFile::open(&path).unwrap();
//! assert_eq!(f.metadata().get_u64("llama.block_count").unwrap(), 1);
//! assert_eq!(f.tensor("w").unwrap().dims, vec![3, 2]);
//! assert_eq!(f.tensor_bytes("w").unwrap(), &data[..]);
//! ```
#![deny(missing_docs)]

mod error;
mod fsutil;
pub mod imatrix;
pub mod import;
pub mod model;
pub mod reader;
pub mod tokenizer;
mod value;
pub mod writer;

pub use dynapress_ggml::GgmlType;
pub use error::{GgufError, ImportError, ParseError, Result};
pub use imatrix::{Imatrix, ImatrixEntry, ImatrixFormat};
pub use import::{HfImport, ImportedTensor, LazyImport, LazyTensor, import, import_lazy};
pub use model::{Arch, LlamaHparams, RopeScaling};
pub use reader::{GgufFile, Header, TensorInfo, parse_header};
pub use tokenizer::TokenizerMetadata;
pub use value::{Array, Metadata, Value, ValueType};
pub use writer::{GgufWriter, TensorSpec, planned_size, write_gguf};

/// The metadata of a complete llama.cpp model file: `general.*`, the
/// architecture keys and the tokenizer. `file_type` is
/// [`model::file_type_for`] of the dominant weight type.
pub fn model_metadata(
    name: &str,
    hparams: &LlamaHparams,
    tokenizer: &TokenizerMetadata,
    file_type: u32,
) -> Metadata {
    let mut md = Metadata::new();
    hparams.write_metadata(&mut md);
    model::write_general(&mut md, name, file_type);
    tokenizer.write_metadata(&mut md);
    md
}
