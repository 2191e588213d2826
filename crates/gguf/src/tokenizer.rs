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
//! `qwen2` (Qwen 3.5's → `qwen35`); single digits then GPT-2's `ByteLevel` →
//! `starcoder` (`smollm` when the tokenizer config does not clean up spaces);
//! and any sequence of splits with the exact regexes llama.cpp runs for a
//! name in [`LLAMA_CPP_PRE_TOKENIZERS`] (what the GGUF import writes) → that
//! name. Anything else is refused with an error that quotes the
//! pre-tokenizer, because a wrong guess silently tokenizes differently.

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

/// One of llama.cpp's byte-level BPE pre-tokenizers (`llm_tokenizer_bpe` in
/// `src/llama-vocab.cpp`, llama.cpp as vendored by llama-cpp-python 0.3.36):
/// the `tokenizer.ggml.pre` names that select it, the regexes it splits the
/// text with — each applied to every piece the previous one left, matches and
/// the text between them both kept as pieces, which is what a `Sequence` of
/// `Split { behavior: Isolated }` pre-tokenizers does — and the options the
/// vocabulary loader sets with it.
///
/// The regexes are the ones llama.cpp runs. Where it runs a hand-written
/// splitter instead (GPT-2, Llama 3, Qwen2, Qwen 3.5), the regex here is the
/// one that splitter implements. Where it runs `std::regex` on text whose
/// non-ASCII characters are collapsed to one placeholder per Unicode category
/// (any regex with `\p{…}`), the same regex on the real text with Unicode
/// categories splits the same way, because the regexes only test categories
/// and ASCII characters; e.g. Tekken's and GPT-4o's "uppercase letter" is a
/// letter that is not `a-z`, not `\p{Lu}` as in their tokenizer.json. Where it
/// runs `std::wregex` on the text (regexes with non-ASCII characters and no
/// `\p{…}`), it first replaces every non-ASCII whitespace character by U+000B,
/// so a character class never matches one: those classes are written here
/// with `&&[^\s]`. Its `$` (end of the piece) is written `\z`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LlamaCppPreTokenizer {
    /// `tokenizer.ggml.pre` values, the first one canonical.
    pub names: &'static [&'static str],
    /// Split regexes, applied in order.
    pub regexes: &'static [&'static str],
    /// A whole piece that is a token is not split by merges (llama.cpp's
    /// `ignore_merges`).
    pub ignore_merges: bool,
    /// llama.cpp adds BOS by default (when `tokenizer.ggml.add_bos_token` is absent).
    pub add_bos: bool,
}

/// The contractions in the form llama.cpp writes them (ASCII case variants
/// spelled out instead of `(?i:…)`, which also folds e.g. `ſ` to `s`).
macro_rules! contractions {
    () => {
        r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
    };
}

/// Llama 3's split, as llama.cpp's hand-written splitter implements it.
pub const LLAMA3_SPLIT: &str = concat!(
    contractions!(),
    r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
);
/// Qwen2's split (single digits), as llama.cpp's hand-written splitter implements it.
pub const QWEN2_SPLIT: &str = concat!(
    contractions!(),
    r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
);
/// Qwen 3.5's split, as llama.cpp's hand-written splitter implements it.
pub const QWEN35_SPLIT: &str = concat!(
    contractions!(),
    r"|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
);
/// Tekken's split (Mistral NeMo and later Mistral models).
pub const TEKKEN_SPLIT: &str = r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// GPT-4o's split (o200k; also Llama 4, MiniMax M2).
pub const GPT4O_SPLIT: &str = concat!(
    r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+",
    contractions!(),
    r"?|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*",
    contractions!(),
    r"?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
);
/// Letters DeepSeek LLM keeps together (Latin, Greek, Cyrillic, Armenian,
/// Georgian, Cherokee, Glagolitic, Coptic, … and their full-width forms).
const DEEPSEEK_LLM_LETTERS: &str = "\\s?[A-Za-z\u{b5}\u{c0}-\u{d6}\u{d8}-\u{f6}\u{f8}-\u{1ba}\u{1bc}-\u{1bf}\u{1c4}-\u{293}\u{295}-\u{2af}\u{370}-\u{373}\u{376}\u{377}\u{37b}-\u{37d}\u{37f}\u{386}\u{388}-\u{38a}\u{38c}\u{38e}-\u{3a1}\u{3a3}-\u{3f5}\u{3f7}-\u{481}\u{48a}-\u{52f}\u{531}-\u{556}\u{10a0}-\u{10c5}\u{13a0}-\u{13f5}\u{13f8}-\u{13fd}\u{1c90}-\u{1cba}\u{1cbd}-\u{1cbf}\u{1d00}-\u{1d2b}\u{1d6b}-\u{1d77}\u{1d79}-\u{1d9a}\u{1e00}-\u{1f15}\u{1f18}-\u{1f1d}\u{1f20}-\u{1f45}\u{1f48}-\u{1f4d}\u{1f50}-\u{1f57}\u{1f59}\u{1f5b}\u{1f5d}\u{1f5f}-\u{1f7d}\u{1f80}-\u{1fb4}\u{1fb6}-\u{1fbc}\u{1fbe}\u{1fc2}-\u{1fc4}\u{1fc6}-\u{1fcc}\u{1fd0}-\u{1fd3}\u{1fd6}-\u{1fdb}\u{1fe0}-\u{1fec}\u{1ff2}-\u{1ff4}\u{1ff6}-\u{1ffc}\u{2102}\u{2107}\u{210a}-\u{2113}\u{2115}\u{2119}-\u{211d}\u{2124}\u{2126}\u{2128}\u{212a}-\u{212d}\u{212f}-\u{2134}\u{2139}\u{213c}-\u{213f}\u{2145}-\u{2149}\u{214e}\u{2183}\u{2184}\u{2c00}-\u{2c7b}\u{2c7e}-\u{2ce4}\u{2ceb}-\u{2cee}\u{2cf2}\u{2cf3}\u{a640}-\u{a66d}\u{a680}-\u{a69b}\u{a722}-\u{a76f}\u{a771}-\u{a787}\u{a78b}-\u{a78e}\u{ab70}-\u{abbf}\u{fb00}-\u{fb06}\u{fb13}-\u{fb17}\u{ff21}-\u{ff3a}\u{ff41}-\u{ff5a}\u{10400}-\u{1044f}\u{104b0}-\u{104d3}\u{104d8}-\u{104fb}\u{10c80}-\u{10cb2}\u{10cc0}-\u{10cf2}\u{118a0}-\u{118df}\u{1e900}-\u{1e943}]+";
/// CJK ideographs (and everything from U+0800 up to them) and Hangul, as
/// DeepSeek's tokenizers group them (whitespace excepted, as in llama.cpp).
const DEEPSEEK_CJK: &str = "[\u{4e00}-\u{9fa5}\u{800}-\u{4e00}\u{ac00}-\u{d7ff}&&[^\\s]]+";

const fn pre(
    names: &'static [&'static str],
    regexes: &'static [&'static str],
    ignore_merges: bool,
    add_bos: bool,
) -> LlamaCppPreTokenizer {
    LlamaCppPreTokenizer {
        names,
        regexes,
        ignore_merges,
        add_bos,
    }
}

/// The llama.cpp pre-tokenizers dynapress imports. Names that select the same
/// regexes with the same options are grouped.
pub const LLAMA_CPP_PRE_TOKENIZERS: &[LlamaCppPreTokenizer] = &[
    pre(
        &[
            "gpt-2",
            "phi-2",
            "mpt",
            "olmo",
            "jais",
            "trillion",
            "granite-docling",
            "exaone4",
            "mellum",
            "gigachat",
            "a.x-4.0",
        ],
        &[GPT2_REGEX],
        false,
        false,
    ),
    pre(
        &[
            "starcoder",
            "refact",
            "command-r",
            "smollm",
            "codeshell",
            "exaone",
            "minerva-7b",
            "mellum2",
        ],
        &[r"\p{N}", GPT2_REGEX],
        false,
        false,
    ),
    pre(
        &[
            "llama-bpe",
            "llama3",
            "llama-v3",
            "falcon3",
            "falcon-h1",
            "pixtral",
            "midm-2.0",
            "lfm2",
        ],
        &[LLAMA3_SPLIT],
        true,
        true,
    ),
    pre(
        &["dbrx", "smaug-bpe", "chatglm-bpe"],
        &[LLAMA3_SPLIT],
        false,
        false,
    ),
    pre(&["glm4", "glm5"], &[LLAMA3_SPLIT], true, false),
    pre(
        &["jais-2"],
        &[concat!(
            contractions!(),
            r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s{512}(?!\S)|\s{256}(?!\S)|\s{128}(?!\S)|\s{64}(?!\S)|\s{32}(?!\S)|\s{16}(?!\S)|\s{8}(?!\S)|\s{4}(?!\S)|\s{1,2}(?!\S)|\s{1}"
        )],
        false,
        false,
    ),
    pre(
        &["minicpm5"],
        &[
            r"\p{N}{1,3}",
            concat!(
                contractions!(),
                r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}+| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
            ),
        ],
        true,
        false,
    ),
    pre(
        &[
            "qwen2",
            "deepseek-r1-qwen",
            "kormo",
            "f2llmv2",
            "megrez",
            "stablelm2",
            "hunyuan",
            "solar-open",
            "grok-2",
        ],
        &[QWEN2_SPLIT],
        false,
        false,
    ),
    pre(&["qwen35"], &[QWEN35_SPLIT], false, false),
    pre(
        &["ufakzeka"],
        &[r"[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"],
        false,
        false,
    ),
    pre(&["laguna"], &[r"[^\n]+|[\n]+", QWEN2_SPLIT], false, false),
    pre(
        &["exaone-moe"],
        &[concat!(
            contractions!(),
            r"|[^\r\n\p{L}\p{N}]?(?:\p{L}\p{M}*(?: \p{L}\p{M}*)*)+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]?|\s*[\r\n]|\s+(?!\S)|\s+"
        )],
        false,
        false,
    ),
    pre(
        &["deepseek-llm"],
        &[
            r"[\r\n]",
            DEEPSEEK_LLM_LETTERS,
            "\\s?[!-/:-~\u{ff01}-\u{ff0f}\u{ff1a}-\u{ff5e}\u{2018}-\u{201f}\u{3000}-\u{3002}&&[^\\s]]+",
            r"\s+\z",
            DEEPSEEK_CJK,
            r"\p{N}+",
        ],
        false,
        false,
    ),
    pre(
        &["deepseek-coder"],
        &[
            r"[\r\n]",
            r"\s?\p{L}+",
            r"\s?\p{P}+",
            DEEPSEEK_CJK,
            r"\p{N}",
        ],
        false,
        false,
    ),
    pre(
        &["deepseek-v3", "hunyuan-dense", "joyai-llm", "hy_v4"],
        &[
            r"\p{N}{1,3}",
            "[\u{4e00}-\u{9fa5}\u{3040}-\u{309f}\u{30a0}-\u{30ff}]+",
            r##"[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"##,
        ],
        false,
        false,
    ),
    pre(
        &["falcon"],
        &[r"[\p{P}\$\+<=>\^~\|`]+", GPT2_REGEX, r"[0-9][0-9][0-9]"],
        false,
        false,
    ),
    pre(
        &["seed-coder"],
        &[concat!(
            contractions!(),
            r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+|\s+(?!\S)|\s+"
        )],
        false,
        false,
    ),
    pre(
        &["bailingmoe", "bailingmoe2", "llada-moe"],
        &[
            r"'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+",
        ],
        false,
        false,
    ),
    pre(
        &["poro-chat", "bloom", "gpt3-finnish"],
        &[" ?[^(\\s|.,!?\u{2026}\u{3002}\u{ff0c}\u{3001}\u{964}\u{6d4}\u{60c})]+"],
        false,
        false,
    ),
    pre(
        &["viking"],
        &[
            " ?[^(\\s|.,!?\u{2026}\u{3002}\u{ff0c}\u{3001}\u{964}\u{6d4}\u{60c})]+",
            r"\p{N}",
        ],
        false,
        false,
    ),
    pre(&["tekken"], &[TEKKEN_SPLIT], true, true),
    pre(
        &["gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2"],
        &[GPT4O_SPLIT],
        false,
        false,
    ),
    pre(
        &["default"],
        &[
            r"[\p{P}\$\+<=>\^~\|]+",
            GPT2_REGEX,
            r"\p{N}+",
            r"[0-9][0-9][0-9]",
        ],
        false,
        false,
    ),
];

/// The llama.cpp pre-tokenizer `tokenizer.ggml.pre = name` selects, if dynapress has it.
pub fn llama_cpp_pre_tokenizer(name: &str) -> Option<&'static LlamaCppPreTokenizer> {
    LLAMA_CPP_PRE_TOKENIZERS
        .iter()
        .find(|p| p.names.contains(&name))
}

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
            // Splits (or single digits), then ByteLevel: the regexes in order,
            // ByteLevel's own (GPT-2's) last when it uses one.
            let (bl, splits) = parts.split_last().ok_or_else(unknown)?;
            if ty(bl) != "ByteLevel" || splits.is_empty() {
                return Err(unknown());
            }
            let bl_regex = flag(bl, "use_regex").unwrap_or(true);
            check_byte_level(bl, bl_regex)?;
            let mut regexes: Vec<&str> = Vec::with_capacity(splits.len() + 1);
            for split in splits {
                match ty(split).as_str() {
                    "Split"
                        if split.get("behavior").and_then(Json::as_str) == Some("Isolated")
                            && flag(split, "invert") != Some(true) =>
                    {
                        regexes.push(
                            split
                                .get("pattern")
                                .and_then(|p| p.get("Regex"))
                                .and_then(Json::as_str)
                                .ok_or_else(unknown)?,
                        );
                    }
                    "Digits" if flag(split, "individual_digits") == Some(true) => {
                        regexes.push(r"\p{N}");
                    }
                    _ => return Err(unknown()),
                }
            }
            if bl_regex {
                regexes.push(GPT2_REGEX);
            }
            if let [regex] = regexes[..]
                && let Some((_, name)) = KNOWN_SPLIT_REGEXES.iter().find(|(r, _)| *r == regex)
            {
                return Ok(name);
            }
            // The regexes llama.cpp runs (what the import writes).
            LLAMA_CPP_PRE_TOKENIZERS
                .iter()
                .find(|p| p.regexes == regexes.as_slice())
                .map(|p| p.names[0])
                .ok_or_else(unknown)
        }
        _ => Err(unknown()),
    }
}

/// llama.cpp's tokenizer metadata for a byte-level BPE tokenizer.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenizerMetadata {
    /// `tokenizer.ggml.pre` (`gpt-2`, `llama-bpe`, `qwen2`, `smollm`, …).
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
        let mut pre = pre_tokenizer_name(tokenizer)?;
        // SmolLM's and StarCoder 2's tokenizer.json are alike; the converter
        // names them by hash, and llama.cpp's only difference is whether its
        // detokenizer cleans up spaces, which the tokenizer config says.
        if pre == "starcoder"
            && tokenizer_config
                .and_then(|tc| tc.get("clean_up_tokenization_spaces"))
                .and_then(Json::as_bool)
                == Some(false)
        {
            pre = "smollm";
        }
        // Names with the same regexes can differ in ignore_merges (Llama 3's
        // and DBRX's): take the one that matches the model's.
        let ignore_merges = model.get("ignore_merges").and_then(Json::as_bool) == Some(true);
        if let Some(p) = llama_cpp_pre_tokenizer(pre)
            && p.ignore_merges != ignore_merges
            && let Some(q) = LLAMA_CPP_PRE_TOKENIZERS
                .iter()
                .find(|q| q.regexes == p.regexes && q.ignore_merges == ignore_merges)
        {
            pre = q.names[0];
        }
        let llama_ignores = llama_cpp_pre_tokenizer(pre).is_some_and(|p| p.ignore_merges);
        if ignore_merges && !llama_ignores {
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
        // SmolLM's / StarCoder 2's: single digits, then GPT-2's ByteLevel.
        let digits = json!({"pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}
        ]}});
        assert_eq!(pre_tokenizer_name(&digits).unwrap(), "starcoder");
        let mut smol = digits.clone();
        smol["model"] = json!({"type": "BPE", "vocab": {"a": 0}, "merges": []});
        let clean = |b: bool| json!({"clean_up_tokenization_spaces": b});
        let name = |tc: &Json| {
            TokenizerMetadata::from_hf_json(&smol, Some(tc), None, None, None)
                .unwrap()
                .pre
        };
        assert_eq!(name(&clean(false)), "smollm");
        assert_eq!(name(&clean(true)), "starcoder");
        // Several splits with llama.cpp's regexes: the name that has them.
        let ds = &llama_cpp_pre_tokenizer("deepseek-coder").unwrap().regexes;
        let mut parts: Vec<Json> = ds
            .iter()
            .map(|r| json!({"type": "Split", "pattern": {"Regex": r}, "behavior": "Isolated", "invert": false}))
            .collect();
        parts.push(json!({"type": "ByteLevel", "add_prefix_space": false, "use_regex": false}));
        let seq = json!({"pre_tokenizer": {"type": "Sequence", "pretokenizers": parts}});
        assert_eq!(pre_tokenizer_name(&seq).unwrap(), "deepseek-coder");
        // Llama 3's regex without ignore_merges is DBRX's in llama.cpp.
        let mut dbrx = split(LLAMA3_SPLIT);
        dbrx["model"] = json!({"type": "BPE", "vocab": {"a": 0}, "merges": []});
        let t = TokenizerMetadata::from_hf_json(&dbrx, None, None, None, None).unwrap();
        assert_eq!(t.pre, "dbrx");
        dbrx["model"]["ignore_merges"] = json!(true);
        let t = TokenizerMetadata::from_hf_json(&dbrx, None, None, None, None).unwrap();
        assert_eq!(t.pre, "llama-bpe");
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
