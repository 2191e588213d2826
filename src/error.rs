//! The library's error type. Every variant names the file, tensor or layer it is
//! about and, where there is one, what the user can do.

use std::path::PathBuf;

/// Errors from the dynapress library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{path}: {msg}")]
    Config { path: PathBuf, msg: String },

    #[error(
        "{path}: unsupported model_type `{model_type}`; dynapress supports {supported} (Hugging Face LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM)"
    )]
    UnsupportedArchitecture {
        path: PathBuf,
        model_type: String,
        supported: &'static str,
    },

    #[error(
        "{path}: not a valid safetensors file ({msg}); the file may be truncated or corrupt: download it again"
    )]
    Safetensors { path: PathBuf, msg: String },

    #[error("tensor `{name}` is missing from the checkpoint in {dir}")]
    MissingTensor { name: String, dir: PathBuf },

    #[error("tensor `{name}` in {path} has shape {got:?}, but config.json implies {expected:?}")]
    TensorShape {
        name: String,
        path: PathBuf,
        expected: Vec<usize>,
        got: Vec<usize>,
    },

    #[error(
        "tensor `{name}` in {path} has dtype {dtype}; dynapress reads F32, F16 and BF16 weights"
    )]
    TensorDtype {
        name: String,
        path: PathBuf,
        dtype: String,
    },

    #[error(
        "tensor `{name}` in {path} contains {count} non-finite values (NaN or Inf); the checkpoint is corrupt"
    )]
    NonFinite {
        name: String,
        path: PathBuf,
        count: usize,
    },

    #[error("{path}: cannot load tokenizer: {msg}")]
    Tokenizer { path: PathBuf, msg: String },

    #[error("{path}: {msg}")]
    Data { path: PathBuf, msg: String },

    #[error(
        "unknown layer `{name}`; linear layers are named like `model.layers.0.self_attn.q_proj.weight`"
    )]
    UnknownLayer { name: String },

    /// A command-line option (or the library parameter behind it) is out of
    /// range or inconsistent with another; `flag` names it.
    #[error("{msg}")]
    Option { flag: &'static str, msg: String },

    /// The budget cannot be met by the database's levels (or the file-size
    /// budget by the fixed part of the file).
    #[error("{msg}")]
    Budget { msg: String },

    /// A problem with one linear layer (its database entry, its Hessian, its
    /// quantizer).
    #[error("{layer}: {msg}")]
    Layer { layer: String, msg: String },

    /// A checkpoint tensor could not be encoded or decoded.
    #[error("tensor `{name}`: {msg}")]
    Tensor { name: String, msg: String },

    /// Anything else that is wrong with the request.
    #[error("{0}")]
    Invalid(String),

    #[error(transparent)]
    Method(#[from] dynapress_compress::MethodError),

    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),
}

/// Result alias for the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An I/O error about `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// A configuration error about `path`.
    pub fn config(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Config {
            path: path.into(),
            msg: msg.into(),
        }
    }

    /// An option error about `flag`.
    pub fn option(flag: &'static str, msg: impl Into<String>) -> Self {
        Error::Option {
            flag,
            msg: msg.into(),
        }
    }

    /// A budget error.
    pub fn budget(msg: impl Into<String>) -> Self {
        Error::Budget { msg: msg.into() }
    }

    /// An error about one linear layer.
    pub fn layer(layer: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Layer {
            layer: layer.into(),
            msg: msg.into(),
        }
    }

    /// A problem with a data file.
    pub fn data(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Data {
            path: path.into(),
            msg: msg.into(),
        }
    }
}
