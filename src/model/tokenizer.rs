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
        Self::from_json(&json, path, eos)
    }

    /// A tokenizer from `tokenizer.json` contents; `origin` names it in errors.
    pub fn from_json(json: &str, origin: &Path, eos: Option<u32>) -> Result<Self> {
        let inner = parse(json, origin)?;
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
        let err = |msg: String| Error::Tokenizer {
            path: self.path.clone(),
            msg: format!("encoding failed: {msg}"),
        };
        match quiet_catch(|| self.inner.encode_fast(text, false)) {
            Ok(Ok(enc)) => Ok(enc.get_ids().to_vec()),
            Ok(Err(e)) => Err(err(e.to_string())),
            Err(panic) => Err(err(panic)),
        }
    }

    /// The BOS id if the tokenizer adds one when asked for special tokens
    /// (its post-processor; what llama.cpp calls `add_bos`).
    pub fn added_bos(&self) -> Option<u32> {
        let with = quiet_catch(|| self.inner.encode_fast("a", true))
            .ok()?
            .ok()?;
        let without = quiet_catch(|| self.inner.encode_fast("a", false))
            .ok()?
            .ok()?;
        let (w, wo) = (with.get_ids(), without.get_ids());
        (w.len() > wo.len() && w[1..].starts_with(wo)).then(|| w[0])
    }

    /// Text of `ids` (special tokens skipped).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let err = |msg: String| Error::Tokenizer {
            path: self.path.clone(),
            msg: format!("decoding failed: {msg}"),
        };
        match quiet_catch(|| self.inner.decode(ids, true)) {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(err(e.to_string())),
            Err(panic) => Err(err(panic)),
        }
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

/// Parses `tokenizer.json` text. The tokenizers crate panics on some
/// malformed files (an `unwrap` in its decoder deserialisation, found by
/// fuzzing): such a panic is caught, kept off stderr, and reported as an
/// error naming the file.
fn parse(json: &str, origin: &Path) -> Result<tokenizers::Tokenizer> {
    let err = |msg: String| Error::Tokenizer {
        path: origin.to_path_buf(),
        msg,
    };
    // Some inconsistencies only panic when text is encoded (a template naming
    // a special token it does not define): probe once, with and without them.
    let probe = |t: &tokenizers::Tokenizer| {
        let _ = t.encode_fast("a b", true);
        let _ = t.encode_fast("a b", false);
        let _ = t.decode(&[0, 1], true);
    };
    match quiet_catch(|| tokenizers::Tokenizer::from_bytes(json.as_bytes())) {
        Ok(Ok(t)) => match quiet_catch(|| probe(&t)) {
            Ok(()) => Ok(t),
            Err(panic) => Err(err(format!("malformed tokenizer.json ({panic})"))),
        },
        Ok(Err(e)) => Err(err(e.to_string())),
        Err(panic) => Err(err(format!("malformed tokenizer.json ({panic})"))),
    }
}

thread_local! {
    static QUIET_PANICS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f`, turning a panic into `Err(message)` without printing it (on this
/// thread; panics elsewhere still reach the previous panic hook).
fn quiet_catch<T>(f: impl FnOnce() -> T) -> std::result::Result<T, String> {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET_PANICS.with(|q| q.get()) {
                previous(info);
            }
        }));
    });
    QUIET_PANICS.with(|q| q.set(true));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    QUIET_PANICS.with(|q| q.set(false));
    r.map_err(|p| {
        p.downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panic".into())
    })
}
