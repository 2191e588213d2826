//! The checkpoint's `tokenizer.json`, through the `tokenizers` crate (the same
//! Rust code Hugging Face transformers runs).

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// A Hugging Face tokenizer plus the special ids dynapress needs.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
    eos: Option<u32>,
}

impl Tokenizer {
    /// Loads `tokenizer.json`. `eos` is the end-of-sequence id from the model's
    /// configuration; if absent, a conventional EOS token of the vocabulary is used.
    pub fn from_file(path: &Path, eos: Option<u32>) -> Result<Self> {
        if !path.exists() {
            return Err(Error::Tokenizer {
                path: path.to_path_buf(),
                msg: "file not found; dynapress needs the checkpoint's tokenizer.json (fast tokenizer format) next to config.json".into(),
            });
        }
        // Large vocabularies take tens of MiB; a link to a device must not be read forever.
        let json = crate::fsutil::read_text_limited(path, 1 << 30)?;
        let inner =
            tokenizers::Tokenizer::from_bytes(json.as_bytes()).map_err(|e| Error::Tokenizer {
                path: path.to_path_buf(),
                msg: e.to_string(),
            })?;
        let eos = eos.or_else(|| {
            [
                "<|endoftext|>",
                "</s>",
                "<|end_of_text|>",
                "<|im_end|>",
                "<eos>",
            ]
            .iter()
            .find_map(|t| inner.token_to_id(t))
        });
        Ok(Tokenizer {
            inner,
            path: path.to_path_buf(),
            eos,
        })
    }

    /// A tokenizer from `tokenizer.json` contents; `origin` names it in errors.
    pub fn from_json(json: &str, origin: &Path, eos: Option<u32>) -> Result<Self> {
        let inner =
            tokenizers::Tokenizer::from_bytes(json.as_bytes()).map_err(|e| Error::Tokenizer {
                path: origin.to_path_buf(),
                msg: e.to_string(),
            })?;
        let eos = eos.or_else(|| {
            [
                "<|endoftext|>",
                "</s>",
                "<|end_of_text|>",
                "<|im_end|>",
                "<eos>",
            ]
            .iter()
            .find_map(|t| inner.token_to_id(t))
        });
        Ok(Tokenizer {
            inner,
            path: origin.to_path_buf(),
            eos,
        })
    }

    /// Token ids of `text`, without special tokens (no BOS/EOS added).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode_fast(text, false)
            .map_err(|e| Error::Tokenizer {
                path: self.path.clone(),
                msg: format!("encoding failed: {e}"),
            })?;
        Ok(enc.get_ids().to_vec())
    }

    /// The BOS id if the tokenizer adds one when asked for special tokens
    /// (its post-processor; what llama.cpp calls `add_bos`).
    pub fn added_bos(&self) -> Option<u32> {
        let with = self.inner.encode_fast("a", true).ok()?;
        let without = self.inner.encode_fast("a", false).ok()?;
        let (w, wo) = (with.get_ids(), without.get_ids());
        (w.len() > wo.len() && w[1..].starts_with(wo)).then(|| w[0])
    }

    /// Text of `ids` (special tokens skipped).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, true).map_err(|e| Error::Tokenizer {
            path: self.path.clone(),
            msg: format!("decoding failed: {e}"),
        })
    }

    /// The end-of-sequence id, if the model has one.
    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Path of the loaded `tokenizer.json`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The wrapped `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}
