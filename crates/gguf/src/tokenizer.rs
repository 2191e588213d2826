//! llama.cpp tokenizer metadata for byte-level BPE tokenizers
//! (`tokenizer.ggml.model = "gpt2"`), built from a Hugging Face `tokenizer.json`
//! (+ `tokenizer_config.json`, `config.json`, `generation_config.json` for the
//! special tokens).
//!
//! llama.cpp does not run the tokenizer.json pre-tokenizer; it picks a
//! hard-coded one by name (`tokenizer.ggml.pre`). The converter identifies it
//! by hashing the tokenization of a probe text, which needs the exact tokenizer
//! of a known published model. We identify it instead from the pre-tokenizer
//! definition itself: GPT-2's `ByteLevel` with its built-in regex → `gpt-2`;
//! a `Split` with the Llama 3 regex → `llama-bpe`; with the Qwen2 regex →
//! `qwen2` (Qwen 3.5's → `qwen35`). Anything else is refused with an error that
//! quotes the pre-tokenizer, because a wrong guess silently tokenizes
//! differently.

use std::path::Path;

use serde_json::Value as Json;

use crate::error::{GgufError, Result};
use crate::value::Metadata;

/// `tokenizer.ggml.token_type` values (llama.cpp's `llama_token_type`).
pub mod token_type {
    /// A regular BPE token.
    pub const NORMAL: i32 = 1;
    /// The unknown token.
    pub const UNKNOWN: i32 = 2;
    /// A special (control) token such as `<|endoftext|>`.
    pub const CONTROL: i32 = 3;
    /// An added token that is not special.
    pub const USER_DEFINED: i32 = 4;
    /// An id with no token (padding of the vocabulary).
    pub const UNUSED: i32 = 5;
    /// A byte-fallback token (SentencePiece).
    pub const BYTE: i32 = 6;
}

/// The GPT-2 regex that `ByteLevel { use_regex: true }` applies.
pub const GPT2_REGEX: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
/// Llama 3's split regex (tokenizer.json of Meta-Llama-3 and 3.x).
pub const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2 / Qwen2.5 / Qwen3's split regex (single digits).
pub const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen 3.5's split regex (letters with combining marks).
pub const QWEN35_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Split regexes llama.cpp implements, and the `tokenizer.ggml.pre` name of each.
pub const KNOWN_SPLIT_REGEXES: [(&str, &str); 4] = [
    (GPT2_REGEX, "gpt-2"),
    (LLAMA3_REGEX, "llama-bpe"),
    (QWEN2_REGEX, "qwen2"),
    (QWEN35_REGEX, "qwen35"),
];

fn tok_err(msg: impl Into<String>) -> GgufError {
    GgufError::Tokenizer(msg.into())
}

fn compact(v: &Json) -> String {
    let s = v.to_string();
    if s.len() > 400 {
        let mut end = 400;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…", &s[..end])
    } else {
        s
    }
}

/// The `tokenizer.ggml.pre` name for a tokenizer.json's pre-tokenizer (and
/// normalizer), or an error quoting what could not be mapped.
pub fn pre_tokenizer_name(tokenizer: &Json) -> Result<&'static str> {
    match tokenizer.get("normalizer") {
        None | Some(Json::Null) => {}
        // The converter ignores NFC too (Qwen2 declares it); llama.cpp does not normalize.
        Some(n) if n.get("type").and_then(Json::as_str) == Some("NFC") => {}
        Some(n) => {
            return Err(tok_err(format!(
                "normalizer {} has no llama.cpp equivalent for BPE tokenizers",
                compact(n)
            )));
        }
    }
    let pre = tokenizer
        .get("pre_tokenizer")
        .filter(|p| !p.is_null())
        .ok_or_else(|| {
            tok_err("tokenizer.json has no pre_tokenizer; llama.cpp's BPE needs a known one")
        })?;
    let unknown = || {
        tok_err(format!(
            "pre-tokenizer {} does not match any llama.cpp pre-tokenizer dynapress knows (GPT-2 ByteLevel, Llama 3, Qwen2, Qwen3.5 split regexes)",
            compact(pre)
        ))
    };
    let ty = |v: &Json| {
        v.get("type")
            .and_then(Json::as_str)
            .unwrap_or("")
            .to_owned()
    };
    let flag = |v: &Json, k: &str| v.get(k).and_then(Json::as_bool);

    let check_byte_level = |bl: &Json, want_regex: bool| -> Result<()> {
        if flag(bl, "add_prefix_space") == Some(true) {
            return Err(tok_err(format!(
                "ByteLevel pre-tokenizer with add_prefix_space = true is not supported by llama.cpp's BPE: {}",
                compact(pre)
            )));
        }
        if flag(bl, "use_regex").unwrap_or(true) != want_regex {
            return Err(unknown());
        }
        Ok(())
    };

    match ty(pre).as_str() {
        "ByteLevel" => {
            check_byte_level(pre, true)?;
            Ok("gpt-2")
        }
        "Sequence" => {
            let parts = pre
                .get("pretokenizers")
                .and_then(Json::as_array)
                .ok_or_else(unknown)?;
            let [split, bl] = parts.as_slice() else {
                return Err(unknown());
            };
            if ty(split) != "Split" || ty(bl) != "ByteLevel" {
                return Err(unknown());
            }
            check_byte_level(bl, false)?;
            if split.get("behavior").and_then(Json::as_str) != Some("Isolated")
                || flag(split, "invert") == Some(true)
            {
                return Err(unknown());
            }
            let regex = split
                .get("pattern")
                .and_then(|p| p.get("Regex"))
                .and_then(Json::as_str)
                .ok_or_else(unknown)?;
            KNOWN_SPLIT_REGEXES
                .iter()
                .find(|(r, _)| *r == regex)
                .map(|(_, name)| *name)
                .ok_or_else(unknown)
        }
        _ => Err(unknown()),
    }
}

/// llama.cpp's tokenizer metadata for a byte-level BPE tokenizer.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenizerMetadata {
    /// `tokenizer.ggml.pre` (`gpt-2`, `llama-bpe`, `qwen2`, `qwen35`).
    pub pre: String,
    /// Token strings by id, in the byte-level alphabet (`Ġthe`) for BPE tokens
    /// and verbatim for added tokens; ids without a token are `[PAD{id}]`.
    pub tokens: Vec<String>,
    /// [`token_type`] per id.
    pub token_types: Vec<i32>,
    /// BPE merges as `"left right"`, highest priority first.
    pub merges: Vec<String>,
    /// Beginning-of-sequence token.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence token.
    pub eos_token_id: Option<u32>,
    /// Unknown token.
    pub unknown_token_id: Option<u32>,
    /// Separator token.
    pub separator_token_id: Option<u32>,
    /// Padding token.
    pub padding_token_id: Option<u32>,
    /// Mask token.
    pub mask_token_id: Option<u32>,
    /// Whether a BOS token is prepended when tokenizing.
    pub add_bos_token: Option<bool>,
    /// Whether an EOS token is appended when tokenizing.
    pub add_eos_token: Option<bool>,
}

const SPECIAL_TYPES: [&str; 7] = ["bos", "eos", "unk", "sep", "pad", "cls", "mask"];

fn read_json(path: &Path) -> Result<Option<Json>> {
    match std::fs::read_to_string(path) {
        Ok(s) => serde_json::from_str(&s)
            .map(Some)
            .map_err(|e| tok_err(format!("{}: not valid JSON: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(GgufError::io(path, e)),
    }
}

impl TokenizerMetadata {
    /// Reads `tokenizer.json` (required), `tokenizer_config.json`,
    /// `config.json` and `generation_config.json` (optional) from a Hugging
    /// Face model directory. `vocab_size` (the embedding's rows) pads the token
    /// list with unused entries.
    pub fn from_hf_dir(dir: &Path, vocab_size: Option<usize>) -> Result<Self> {
        let tok_path = dir.join("tokenizer.json");
        let tokenizer = read_json(&tok_path)?.ok_or_else(|| {
            tok_err(format!(
                "{}: not found (only tokenizer.json tokenizers are supported)",
                tok_path.display()
            ))
        })?;
        let tc = read_json(&dir.join("tokenizer_config.json"))?;
        let cfg = read_json(&dir.join("config.json"))?;
        let gen_cfg = read_json(&dir.join("generation_config.json"))?;
        Self::from_hf_json(
            &tokenizer,
            tc.as_ref(),
            cfg.as_ref(),
            gen_cfg.as_ref(),
            vocab_size,
        )
    }

    /// Builds the metadata from parsed JSON files (see [`from_hf_dir`](Self::from_hf_dir)).
    ///
    /// Special tokens follow the converter's `SpecialVocab`: the tokenizer
    /// config's `{bos,eos,…}_token` strings resolved through `added_tokens`
    /// first, then `config.json`'s `*_token_id`, then `generation_config.json`'s
    /// (first of a list). `add_bos_token`/`add_eos_token` come from the
    /// post-processor (a ByteLevel one adds nothing; a TemplateProcessing one
    /// adds what it wraps the sequence in), else from the tokenizer config.
    pub fn from_hf_json(
        tokenizer: &Json,
        tokenizer_config: Option<&Json>,
        config: Option<&Json>,
        generation_config: Option<&Json>,
        vocab_size: Option<usize>,
    ) -> Result<Self> {
        let model = tokenizer
            .get("model")
            .ok_or_else(|| tok_err("tokenizer.json has no model"))?;
        let model_type = model.get("type").and_then(Json::as_str).unwrap_or("");
        if model_type != "BPE" {
            return Err(tok_err(format!(
                "model type {model_type:?}: only byte-level BPE tokenizers are supported"
            )));
        }
        if model.get("byte_fallback").and_then(Json::as_bool) == Some(true) {
            return Err(tok_err(
                "BPE with byte_fallback (SentencePiece-style) is not a byte-level BPE tokenizer",
            ));
        }
        let pre = pre_tokenizer_name(tokenizer)?;
        if model.get("ignore_merges").and_then(Json::as_bool) == Some(true) && pre != "llama-bpe" {
            return Err(tok_err(format!(
                "ignore_merges = true with the {pre} pre-tokenizer: llama.cpp applies merges for it"
            )));
        }

        // id -> (token, is_added, special)
        let vocab = model
            .get("vocab")
            .and_then(Json::as_object)
            .ok_or_else(|| tok_err("model.vocab is missing or not an object"))?;
        let mut max_id: Option<u64> = None;
        let mut entries: Vec<(u64, &str)> = Vec::with_capacity(vocab.len());
        for (tok, id) in vocab {
            let id = id.as_u64().ok_or_else(|| {
                tok_err(format!("vocab id of {tok:?} is not a non-negative integer"))
            })?;
            entries.push((id, tok));
            max_id = max_id.max(Some(id));
        }
        let empty = Vec::new();
        let added = tokenizer
            .get("added_tokens")
            .and_then(Json::as_array)
            .unwrap_or(&empty);
        struct Added<'a> {
            id: u64,
            content: &'a str,
            special: bool,
        }
        let mut added_list = Vec::with_capacity(added.len());
        for a in added {
            let id = a.get("id").and_then(Json::as_u64);
            let content = a.get("content").and_then(Json::as_str);
            let (Some(id), Some(content)) = (id, content) else {
                return Err(tok_err(format!("malformed added token {}", compact(a))));
            };
            let special = a.get("special").and_then(Json::as_bool).unwrap_or(false);
            added_list.push(Added {
                id,
                content,
                special,
            });
            max_id = max_id.max(Some(id));
        }
        let n_tok = max_id.map_or(0, |m| m + 1);
        let n = match vocab_size {
            Some(v) if (v as u64) < n_tok => {
                return Err(tok_err(format!(
                    "tokenizer has token id {} but the model's vocab_size is {v}",
                    n_tok - 1
                )));
            }
            Some(v) => v,
            None => usize::try_from(n_tok).map_err(|_| tok_err("token ids too large"))?,
        };
        let mut tokens: Vec<Option<String>> = vec![None; n];
        let mut types = vec![token_type::UNUSED; n];
        for (id, tok) in entries {
            let slot = &mut tokens[id as usize];
            if slot.is_some() {
                return Err(tok_err(format!(
                    "token id {id} appears twice in model.vocab"
                )));
            }
            *slot = Some(tok.to_owned());
            types[id as usize] = token_type::NORMAL;
        }
        for a in &added_list {
            let i = a.id as usize;
            if let Some(t) = &tokens[i]
                && t != a.content
            {
                return Err(tok_err(format!(
                    "added token {:?} has id {} which the vocab gives to {t:?}",
                    a.content, a.id
                )));
            }
            tokens[i] = Some(a.content.to_owned());
            types[i] = if a.special || looks_special(a.content) {
                token_type::CONTROL
            } else {
                token_type::USER_DEFINED
            };
        }
        let tokens: Vec<String> = tokens
            .into_iter()
            .enumerate()
            .map(|(i, t)| t.unwrap_or_else(|| format!("[PAD{i}]")))
            .collect();

        let merges = parse_merges(model)?;

        let mut md = TokenizerMetadata {
            pre: pre.to_owned(),
            tokens,
            token_types: types,
            merges,
            bos_token_id: None,
            eos_token_id: None,
            unknown_token_id: None,
            separator_token_id: None,
            padding_token_id: None,
            mask_token_id: None,
            add_bos_token: None,
            add_eos_token: None,
        };

        // Special token strings from tokenizer_config.json.
        let tc = tokenizer_config.and_then(Json::as_object);
        let tc_str = |typ: &str| -> Option<String> {
            let e = tc?.get(&format!("{typ}_token"))?;
            e.as_str()
                .or_else(|| e.get("content").and_then(Json::as_str))
                .map(str::to_owned)
        };
        let mut special_str: Vec<(&str, Option<String>)> =
            SPECIAL_TYPES.iter().map(|&t| (t, tc_str(t))).collect();
        let get_s = |v: &Vec<(&str, Option<String>)>, t: &str| {
            v.iter().find(|(k, _)| *k == t).and_then(|(_, s)| s.clone())
        };
        if get_s(&special_str, "bos").is_none()
            && let Some(cls) = get_s(&special_str, "cls")
        {
            special_str[0].1 = Some(cls);
        }
        if get_s(&special_str, "eos").is_none()
            && let Some(sep) = get_s(&special_str, "sep")
        {
            special_str[1].1 = Some(sep);
        }

        // add_bos/add_eos from the post-processor.
        if let Some(pp) = tokenizer.get("post_processor").filter(|p| !p.is_null()) {
            let procs: Vec<&Json> = match pp.get("type").and_then(Json::as_str) {
                Some("Sequence") => pp
                    .get("processors")
                    .and_then(Json::as_array)
                    .map(|v| v.iter().collect())
                    .unwrap_or_default(),
                _ => vec![pp],
            };
            for p in procs {
                match p.get("type").and_then(Json::as_str).unwrap_or("") {
                    "ByteLevel" => {
                        md.add_bos_token.get_or_insert(false);
                        md.add_eos_token.get_or_insert(false);
                    }
                    "TemplateProcessing" => {
                        let single = p
                            .get("single")
                            .and_then(Json::as_array)
                            .map_or(&[][..], Vec::as_slice);
                        let special_id = |e: &Json| {
                            e.get("SpecialToken")
                                .and_then(|s| s.get("id"))
                                .and_then(Json::as_str)
                                .map(str::to_owned)
                        };
                        let first = single.first().and_then(special_id);
                        let last = if single.len() > 1 {
                            single.last().and_then(special_id)
                        } else {
                            None
                        };
                        let bos = get_s(&special_str, "bos");
                        let eos = get_s(&special_str, "eos");
                        md.add_bos_token = Some(first.is_some() && (bos.is_none() || first == bos));
                        if bos.is_none() && first.is_some() {
                            special_str[0].1 = first;
                        }
                        md.add_eos_token = Some(last.is_some() && (eos.is_none() || last == eos));
                        if eos.is_none() && last.is_some() {
                            special_str[1].1 = last;
                        }
                    }
                    other => {
                        return Err(tok_err(format!(
                            "post-processor {other:?} is not supported (ByteLevel, TemplateProcessing)"
                        )));
                    }
                }
            }
        }
        if let Some(tc) = tc {
            for (slot, key) in [
                (&mut md.add_bos_token, "add_bos_token"),
                (&mut md.add_eos_token, "add_eos_token"),
            ] {
                if slot.is_none() {
                    *slot = tc.get(key).and_then(Json::as_bool);
                }
            }
        }

        let lookup = |content: &str| {
            added_list
                .iter()
                .find(|a| a.content == content)
                .map(|a| a.id)
        };
        let n_vocab = md.tokens.len() as u64;
        let mut ids: Vec<(&str, Option<u64>)> = special_str
            .iter()
            .map(|(t, s)| (*t, s.as_deref().and_then(lookup)))
            .collect();
        for cfg in [config, generation_config].into_iter().flatten() {
            for (t, id) in ids.iter_mut() {
                if id.is_none() {
                    *id = match cfg.get(format!("{t}_token_id")) {
                        Some(Json::Array(v)) => v.first().and_then(Json::as_u64),
                        Some(v) => v.as_u64(),
                        None => None,
                    };
                }
            }
        }
        for (t, id) in ids {
            let Some(id) = id else { continue };
            if id >= n_vocab {
                return Err(tok_err(format!(
                    "{t} token id {id} is outside the vocabulary of {n_vocab}"
                )));
            }
            let id = Some(id as u32);
            match t {
                "bos" => md.bos_token_id = id,
                "eos" => md.eos_token_id = id,
                "unk" => md.unknown_token_id = id,
                "sep" => md.separator_token_id = id,
                "pad" => md.padding_token_id = id,
                "mask" => md.mask_token_id = id,
                _ => {} // cls: llama.cpp's converter has no key for it
            }
        }
        Ok(md)
    }

    /// Writes the `tokenizer.ggml.*` keys.
    pub fn write_metadata(&self, md: &mut Metadata) {
        md.set("tokenizer.ggml.model", "gpt2");
        md.set("tokenizer.ggml.pre", self.pre.as_str());
        md.set("tokenizer.ggml.tokens", self.tokens.clone());
        md.set("tokenizer.ggml.token_type", self.token_types.clone());
        md.set("tokenizer.ggml.merges", self.merges.clone());
        for (key, id) in [
            ("tokenizer.ggml.bos_token_id", self.bos_token_id),
            ("tokenizer.ggml.eos_token_id", self.eos_token_id),
            ("tokenizer.ggml.unknown_token_id", self.unknown_token_id),
            ("tokenizer.ggml.seperator_token_id", self.separator_token_id),
            ("tokenizer.ggml.padding_token_id", self.padding_token_id),
            ("tokenizer.ggml.mask_token_id", self.mask_token_id),
        ] {
            if let Some(id) = id {
                md.set(key, id);
            }
        }
        if let Some(b) = self.add_bos_token {
            md.set("tokenizer.ggml.add_bos_token", b);
        }
        if let Some(b) = self.add_eos_token {
            md.set("tokenizer.ggml.add_eos_token", b);
        }
    }
}

/// The converter's `does_token_look_special` for `<|…|>`-style tokens.
fn looks_special(t: &str) -> bool {
    matches!(t, "<pad>" | "<mask>" | "<2mass>" | "[@BOS@]")
        || (t.starts_with("<|") && t.ends_with("|>"))
        || (t.starts_with("<｜") && t.ends_with("｜>"))
        || (t.starts_with("<unused") && t.ends_with('>'))
}

fn parse_merges(model: &Json) -> Result<Vec<String>> {
    let Some(merges) = model.get("merges").and_then(Json::as_array) else {
        return Err(tok_err("model.merges is missing"));
    };
    merges
        .iter()
        .map(|m| match m {
            Json::String(s) => Ok(s.clone()),
            // transformers ≥ 4.45 writes pairs; a space inside a part is encoded
            // as U+0120 like the converter does.
            Json::Array(p) if p.len() == 2 => {
                let part = |v: &Json| {
                    v.as_str()
                        .map(|s| s.replace(' ', "\u{120}"))
                        .ok_or_else(|| tok_err(format!("malformed merge {m}")))
                };
                Ok(format!("{} {}", part(&p[0])?, part(&p[1])?))
            }
            _ => Err(tok_err(format!("malformed merge {m}"))),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn split(regex: &str) -> Json {
        json!({"pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}
        ]}})
    }

    #[test]
    fn maps_known_pre_tokenizers() {
        let gpt2 = json!({"pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "use_regex": true}});
        assert_eq!(pre_tokenizer_name(&gpt2).unwrap(), "gpt-2");
        assert_eq!(
            pre_tokenizer_name(&split(LLAMA3_REGEX)).unwrap(),
            "llama-bpe"
        );
        assert_eq!(pre_tokenizer_name(&split(QWEN2_REGEX)).unwrap(), "qwen2");
        assert_eq!(pre_tokenizer_name(&split(GPT2_REGEX)).unwrap(), "gpt-2");
    }

    #[test]
    fn refuses_unknown_pre_tokenizers() {
        let e = pre_tokenizer_name(&split(r"\p{N}{1,5}|\s+"))
            .unwrap_err()
            .to_string();
        assert!(e.contains(r"\\p{N}{1,5}"), "{e}");
        let prefix = json!({"pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": true, "use_regex": true}});
        assert!(
            pre_tokenizer_name(&prefix)
                .unwrap_err()
                .to_string()
                .contains("add_prefix_space")
        );
        let ws = json!({"pre_tokenizer": {"type": "Whitespace"}});
        assert!(pre_tokenizer_name(&ws).is_err());
        let lower =
            json!({"normalizer": {"type": "Lowercase"}, "pre_tokenizer": {"type": "ByteLevel"}});
        assert!(
            pre_tokenizer_name(&lower)
                .unwrap_err()
                .to_string()
                .contains("Lowercase")
        );
    }

    #[test]
    fn special_tokens_and_types() {
        let mut tok = split(LLAMA3_REGEX);
        tok["model"] = json!({"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": [["a", "b"]], "ignore_merges": true});
        tok["added_tokens"] = json!([
            {"id": 3, "content": "<|begin_of_text|>", "special": true},
            {"id": 4, "content": "<|end_of_text|>", "special": true},
            {"id": 5, "content": "<tool>", "special": false}
        ]);
        tok["post_processor"] = json!({"type": "Sequence", "processors": [
            {"type": "ByteLevel"},
            {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}]}
        ]});
        let tc =
            json!({"bos_token": "<|begin_of_text|>", "eos_token": {"content": "<|end_of_text|>"}});
        let gen_cfg = json!({"eos_token_id": [4, 3], "pad_token_id": 4});
        let t = TokenizerMetadata::from_hf_json(&tok, Some(&tc), None, Some(&gen_cfg), Some(8))
            .unwrap();
        assert_eq!(t.pre, "llama-bpe");
        assert_eq!(t.tokens.len(), 8);
        assert_eq!(t.tokens[6], "[PAD6]");
        assert_eq!(t.merges, vec!["a b"]);
        assert_eq!(t.token_types, vec![1, 1, 1, 3, 3, 4, 5, 5],);
        assert_eq!(
            (t.bos_token_id, t.eos_token_id, t.padding_token_id),
            (Some(3), Some(4), Some(4))
        );
        assert_eq!(
            (t.add_bos_token, t.add_eos_token),
            (Some(true), Some(false))
        );
        // A vocab_size below the largest id is an error.
        assert!(TokenizerMetadata::from_hf_json(&tok, Some(&tc), None, None, Some(4)).is_err());
    }
}
