//! One error enum for the crate; parse failures carry the byte offset where the
//! file stopped making sense.

use std::path::{Path, PathBuf};

/// Result alias for this crate.
pub type Result<T, E = GgufError> = std::result::Result<T, E>;

/// Why a byte buffer is not a valid GGUF (or legacy imatrix) file. Every
/// variant names the item being read and the byte offset, so a user can look
/// at the file with a hex dump.
// Variant fields are described by each variant's message.
#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// The buffer ends before an item that the header promised.
    #[error(
        "truncated: {what} needs {needed} bytes at offset {offset}, but the file has {file_len}"
    )]
    Truncated {
        what: String,
        offset: u64,
        needed: u64,
        file_len: u64,
    },
    /// The first four bytes are not `GGUF`.
    #[error("not a GGUF file: magic is {found:02x?}, expected \"GGUF\"")]
    BadMagic { found: [u8; 4] },
    /// A version this reader does not understand.
    #[error("unsupported GGUF version {version}: {hint}")]
    UnsupportedVersion { version: u32, hint: &'static str },
    /// A metadata value type id outside 0..=12.
    #[error("metadata key {key:?}: unknown value type id {type_id} at offset {offset}")]
    UnknownValueType {
        key: String,
        type_id: u32,
        offset: u64,
    },
    /// A tensor type id that ggml (or dynapress) does not know.
    #[error(
        "tensor {tensor:?}: unknown ggml type id {type_id} (dynapress reads F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and Q2_K..Q6_K)"
    )]
    UnknownTensorType { tensor: String, type_id: u32 },
    /// A string (key, value or tensor name) that is not UTF-8.
    #[error("{what} at offset {offset} is not valid UTF-8")]
    InvalidUtf8 { what: String, offset: u64 },
    /// An array whose declared length cannot fit in the rest of the file.
    #[error(
        "metadata key {key:?}: array of {len} elements at offset {offset} cannot fit in the {remaining} bytes left in the file"
    )]
    ArrayTooLong {
        key: String,
        len: u64,
        offset: u64,
        remaining: u64,
    },
    /// Arrays nested deeper than the reader allows.
    #[error("metadata key {key:?}: arrays nested deeper than {max} levels")]
    NestingTooDeep { key: String, max: usize },
    /// A metadata key that appears twice.
    #[error("duplicate metadata key {key:?}")]
    DuplicateKey { key: String },
    /// A tensor name that appears twice.
    #[error("duplicate tensor name {name:?}")]
    DuplicateTensor { name: String },
    /// A tensor's data lies (partly) outside the file.
    #[error(
        "tensor {tensor:?}: data at offset {offset} (+{size} bytes) runs past the end of the data section ({data_len} bytes)"
    )]
    TensorOutOfBounds {
        tensor: String,
        offset: u64,
        size: u64,
        data_len: u64,
    },
    /// A tensor info that is inconsistent in itself.
    #[error("tensor {tensor:?}: {reason}")]
    BadTensor { tensor: String, reason: String },
    /// Anything else, with the offset where it was found.
    #[error("{msg} (offset {offset})")]
    Malformed { offset: u64, msg: String },
}

/// Errors of the GGUF reader and writer, the model/tokenizer metadata builders
/// and the imatrix I/O.
#[allow(missing_docs)]
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid GGUF file.
    #[error("{path}: malformed GGUF: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: ParseError,
    },
    /// The file is not a valid imatrix file (either format).
    #[error("{path}: malformed imatrix file: {reason}")]
    Imatrix { path: PathBuf, reason: String },
    /// A lookup for a tensor the file does not hold.
    #[error("{path}: no tensor named {name:?}")]
    TensorNotFound { path: PathBuf, name: String },
    /// A tensor asked for as floats is stored in a quantized type.
    #[error(
        "{path}: tensor {tensor:?} is {type_name}, not F32/F16/BF16; dequantize it with dynapress-ggml"
    )]
    NotFloat {
        path: PathBuf,
        tensor: String,
        type_name: &'static str,
    },
    /// A metadata key is missing or has the wrong type.
    #[error("metadata key {key:?}: {reason}")]
    Metadata { key: String, reason: String },
    /// A tensor handed to the writer is invalid or out of order.
    #[error("{path}: tensor {tensor:?}: {reason}")]
    Write {
        path: PathBuf,
        tensor: String,
        reason: String,
    },
    /// A model configuration that cannot be written as GGUF.
    #[error("model config: {0}")]
    Config(String),
    /// A tokenizer that cannot be expressed in llama.cpp's GGUF tokenizer metadata.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A GGUF model file that cannot be imported as a Hugging Face model
    /// (see [`mod@crate::import`]).
    #[error("{path}: cannot import as a Hugging Face model: {source}")]
    Import {
        path: PathBuf,
        #[source]
        source: ImportError,
    },
}

/// Why a GGUF model file cannot be turned into a Hugging Face model
/// ([`mod@crate::import`]). [`GgufError::Import`] adds the file's path.
#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ImportError {
    /// `general.architecture` is not one dynapress imports.
    #[error(
        "architecture {arch:?} is not supported (dynapress imports {})",
        crate::import::SUPPORTED_ARCHITECTURES.join(", ")
    )]
    UnsupportedArchitecture { arch: String },
    /// A tokenizer model or pre-tokenizer that cannot be rebuilt as a
    /// `tokenizer.json` yet.
    #[error("tokenizer: {what} is not supported yet ({supported})")]
    UnsupportedTokenizer { what: String, supported: String },
    /// The tokenizer metadata is inconsistent (duplicate tokens, merges of
    /// unknown tokens, ids out of range, ...).
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A metadata key is missing, has the wrong type or an unsupported value.
    #[error("metadata key {key:?}: {reason}")]
    Metadata { key: String, reason: String },
    /// RoPE settings that have no Hugging Face equivalent dynapress supports.
    #[error("RoPE: {0}")]
    Rope(String),
    /// Tensors with no place in the Hugging Face model.
    #[error(
        "{} tensor(s) have no Hugging Face counterpart for this architecture: {}",
        names.len(),
        list(names)
    )]
    UnknownTensors { names: Vec<String> },
    /// Tensors the architecture needs but the file lacks.
    #[error("{} required tensor(s) are missing: {}", names.len(), list(names))]
    MissingTensors { names: Vec<String> },
    /// A tensor whose shape disagrees with the metadata.
    #[error("tensor {tensor:?} has shape {found:?}, but the metadata implies {expected:?}")]
    TensorShape {
        tensor: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    /// A tensor whose data cannot be decoded.
    #[error("tensor {tensor:?}: {reason}")]
    TensorData { tensor: String, reason: String },
}

/// `"a", "b", "c"` (at most 10, then a count).
fn list(names: &[String]) -> String {
    let mut s: Vec<String> = names.iter().take(10).map(|n| format!("{n:?}")).collect();
    if names.len() > 10 {
        s.push(format!("… and {} more", names.len() - 10));
    }
    s.join(", ")
}

impl GgufError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        GgufError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn import(path: &Path, source: ImportError) -> Self {
        GgufError::Import {
            path: path.to_path_buf(),
            source,
        }
    }

    /// The import error inside, if this is one.
    pub fn import_error(&self) -> Option<&ImportError> {
        match self {
            GgufError::Import { source, .. } => Some(source),
            _ => None,
        }
    }

    pub(crate) fn parse(path: &Path, source: ParseError) -> Self {
        GgufError::Parse {
            path: path.to_path_buf(),
            source,
        }
    }

    /// The parse error inside, if this is one (handy in tests and for callers
    /// that want to tell a malformed file from an I/O failure).
    pub fn parse_error(&self) -> Option<&ParseError> {
        match self {
            GgufError::Parse { source, .. } => Some(source),
            _ => None,
        }
    }
}
