//! The tokenizer [`import_tokenizer`] rebuilds from GGUF metadata against
//! llama.cpp's own: `llama-tokenize` on a vocabulary-only GGUF must give the
//! same ids on a multilingual, code and whitespace-heavy sample, for every
//! `tokenizer.ggml.pre` in [`LLAMA_CPP_PRE_TOKENIZERS`] and for a SentencePiece
//! (`llama`) vocabulary with scores and byte tokens.
//!
//! The BPE vocabulary is the demo model's, plus one merge for every pair of
//! neighbouring tokens the GPT-2 pre-tokenizer leaves in the sample: a
//! pre-tokenizer that keeps such a pair in one piece then gives a different
//! token than one that splits it, so the ids show where each one splits.
//!
//! Tests that need llama.cpp are skipped without it (and fail with
//! `DYNAPRESS_REQUIRE_INTEROP=1`); see `scripts/build-llama-cpp.sh`.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::Command;
use std::str::FromStr;

use dynapress_gguf::import::import_tokenizer;
use dynapress_gguf::tokenizer::{LLAMA_CPP_PRE_TOKENIZERS, LlamaCppPreTokenizer, token_type};
use dynapress_gguf::{GgufWriter, ImportError, Metadata, TokenizerMetadata};
use tokenizers::Tokenizer;

/// Short texts: English with contractions and numbers, many scripts, mixed
/// case, code in three languages, and runs of every kind of whitespace.
const SAMPLES: &[&str] = &[
    "Hello, world! It's 2024; DON'T we'LL they've I'd 3.14159 1234567 0x1F 10,000,000.",
    "Ankara'dan İstanbul'a, it'sy rock'n'roll",
    "日本語のテキストと中文字符，全角：ＡＢＣ！１２３　スペース。 Ελληνικά κείμενα, русский текст, العربية, हिन्दी भाषा, 한국어 텍스트",
    "Ünïcödé naïve café — “quotes” «guillemets» ‘single’ … ½ ² Ⅻ ① 🚀🔥 👩‍👩‍👧 🇫🇷 ✓ € £ ¥",
    "camelCaseWord HTTPServer getURLForID iPhone ÉCOLE école ABCdef XMLHttpRequest snake_case_name",
    "fn main() {\n    let x: Vec<u32> = (0..10).map(|i| i * 2).collect();\n\tprintln!(\"{x:?}\");\n}\n",
    "def __init__(self, *args, **kwargs):\n    super().__init__()\n    return {'a': [1, 2], \"b\": None}  # comment\n\n\n",
    "#include <stdio.h>\nint main(void){for(int i=0;i<100;++i)printf(\"%d\\n\",i*i);return 0;}\r\n",
    "a  b   c    d\t\t\te \u{a0}f\u{3000}g\n\n\n \n \n  \n\t\n   leading and trailing   \r\nline\r\n\r\n\rend    ",
    "    ",
    "\n",
    "x",
    "text<|endoftext|>more <|endoftext|>\n<|endoftext|>",
];

/// The samples and the first 3 KB of each held-out corpus.
fn samples() -> Vec<String> {
    let mut v: Vec<String> = SAMPLES.iter().map(|s| (*s).to_owned()).collect();
    for f in ["docs.test.txt", "code.test.txt"] {
        let s = std::fs::read_to_string(common::repo_root().join("assets/data").join(f)).unwrap();
        v.push(s[..floor(&s, 3000)].to_owned());
    }
    v
}

fn floor(s: &str, mut n: usize) -> usize {
    n = n.min(s.len());
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    n
}

/// GPT-2's byte-level alphabet: the character that stands for each byte.
fn byte_chars() -> Vec<char> {
    let direct: Vec<u32> = (0x21..=0x7E)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut chars = vec!['\0'; 256];
    let mut extra = 0;
    for b in 0..256u32 {
        let c = if direct.contains(&b) {
            b
        } else {
            extra += 1;
            255 + extra
        };
        chars[b as usize] = char::from_u32(c).unwrap();
    }
    chars
}

/// The demo tokenizer's GGUF metadata plus the boundary merges (see the module
/// docs), as a vocabulary-only `llama` file would carry it.
fn bpe_metadata() -> Metadata {
    let tok = TokenizerMetadata::from_hf_dir(&common::fixture_dir(), None).unwrap();
    let hf = Tokenizer::from_file(common::fixture_dir().join("tokenizer.json")).unwrap();
    let mut tokens = tok.tokens.clone();
    let mut types = tok.token_types.clone();
    let mut merges = tok.merges.clone();
    let mut known: HashSet<String> = tokens.iter().cloned().collect();
    for text in samples() {
        let enc = hf.encode(text.as_str(), false).unwrap();
        for w in enc.get_tokens().windows(2) {
            if w.iter().any(|t| t.starts_with("<|")) {
                continue;
            }
            let joined = format!("{}{}", w[0], w[1]);
            if known.insert(joined.clone()) {
                merges.push(format!("{} {}", w[0], w[1]));
                tokens.push(joined);
                types.push(token_type::NORMAL);
            }
        }
    }
    let mut md = Metadata::new();
    md.set("general.architecture", "llama");
    let tok = TokenizerMetadata {
        tokens,
        token_types: types,
        merges,
        ..tok
    };
    tok.write_metadata(&mut md);
    md
}

/// A SentencePiece vocabulary in Llama 2's layout: `<unk>`, `<s>`, `</s>`,
/// the 256 byte tokens `<0x00>`…`<0xFF>`, then pieces with `▁` for spaces —
/// every demo token that is whole UTF-8 text — with scores in an order unlike
/// the ids (so the merge order comes from the scores), and one user-defined
/// token.
fn spm_metadata() -> Metadata {
    let tok = TokenizerMetadata::from_hf_dir(&common::fixture_dir(), None).unwrap();
    let chars = byte_chars();
    let byte_of: HashMap<char, u8> = chars
        .iter()
        .enumerate()
        .map(|(b, &c)| (c, b as u8))
        .collect();
    let mut tokens: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
    let mut types = vec![
        token_type::UNKNOWN,
        token_type::CONTROL,
        token_type::CONTROL,
    ];
    for b in 0..256 {
        tokens.push(format!("<0x{b:02X}>"));
        types.push(token_type::BYTE);
    }
    tokens.push("<tool>".into());
    types.push(token_type::USER_DEFINED);
    let mut seen: HashSet<String> = tokens.iter().cloned().collect();
    for (t, &ty) in tok.tokens.iter().zip(&tok.token_types) {
        if ty != token_type::NORMAL {
            continue;
        }
        let bytes: Option<Vec<u8>> = t.chars().map(|c| byte_of.get(&c).copied()).collect();
        let Some(Ok(text)) = bytes.map(String::from_utf8) else {
            continue;
        };
        let piece = text.replace(' ', "\u{2581}");
        // As in a trained SentencePiece model, every character of a piece
        // is a piece itself.
        let chars = piece.chars().map(String::from);
        for p in chars.chain([piece.clone()]) {
            if seen.insert(p.clone()) {
                tokens.push(p);
                types.push(token_type::NORMAL);
            }
        }
    }
    let n = tokens.len();
    let scores: Vec<f32> = (0..n)
        .map(|i| match types[i] {
            token_type::NORMAL => -(((i * 7919) % n) as f32) - 1.0,
            _ => 0.0,
        })
        .collect();
    let mut md = Metadata::new();
    md.set("general.architecture", "llama");
    md.set("tokenizer.ggml.model", "llama");
    md.set("tokenizer.ggml.tokens", tokens);
    md.set("tokenizer.ggml.scores", scores);
    md.set("tokenizer.ggml.token_type", types);
    md.set("tokenizer.ggml.bos_token_id", 1u32);
    md.set("tokenizer.ggml.eos_token_id", 2u32);
    md.set("tokenizer.ggml.unknown_token_id", 0u32);
    md.set("tokenizer.ggml.add_bos_token", true);
    md.set("tokenizer.ggml.add_eos_token", false);
    md
}

fn ours(md: &Metadata) -> Tokenizer {
    let json = import_tokenizer(md).unwrap_or_else(|e| panic!("import: {e}"));
    Tokenizer::from_str(&json).unwrap_or_else(|e| panic!("tokenizers: {e}"))
}

fn write_vocab(md: &Metadata, path: &Path) {
    GgufWriter::create(path, md, Vec::new())
        .unwrap()
        .finish()
        .unwrap();
}

/// `llama-tokenize` on a vocabulary-only GGUF (`--ids`, special tokens parsed).
fn llama_tokenize(bin: &Path, model: &Path, text: &str, dir: &Path, bos: bool) -> Vec<u32> {
    let file = dir.join("prompt.txt");
    std::fs::write(&file, text).unwrap();
    let mut cmd = Command::new(bin.join("llama-tokenize"));
    cmd.arg("-m")
        .arg(model)
        .arg("-f")
        .arg(&file)
        .args(["--ids", "--no-escape", "--log-disable"]);
    if !bos {
        cmd.arg("--no-bos");
    }
    let out = cmd.output().expect("spawn llama-tokenize");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}\n{stdout}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('['))
        .unwrap_or_else(|| panic!("no id list in {stdout:?}"));
    let inner = line.trim().trim_start_matches('[').trim_end_matches(']');
    if inner.trim().is_empty() {
        return Vec::new();
    }
    inner
        .split(',')
        .map(|s| s.trim().parse().unwrap())
        .collect()
}

/// Panics with the first difference and the tokens around it.
fn assert_same_ids(label: &str, text: &str, theirs: &[u32], ours: &[u32], tok: &Tokenizer) {
    if theirs == ours {
        return;
    }
    let i = theirs
        .iter()
        .zip(ours)
        .position(|(a, b)| a != b)
        .unwrap_or(theirs.len().min(ours.len()));
    let show = |ids: &[u32]| -> Vec<String> {
        ids[i.saturating_sub(3)..(i + 4).min(ids.len())]
            .iter()
            .map(|&id| tok.id_to_token(id).unwrap_or_default())
            .collect()
    };
    panic!(
        "{label}: ids differ from llama-tokenize at token {i} for {:?}\n llama.cpp: {:?}\n ours:      {:?}",
        &text[..floor(text, 80)],
        show(theirs),
        show(ours)
    );
}

#[test]
fn every_bpe_pre_tokenizer_tokenizes_like_llama_cpp() {
    let Some(bin) = common::llama_cpp_bin() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut md = bpe_metadata();
    let texts = samples();
    let joined = texts.join("\n");
    let mut by_ids: HashMap<Vec<u32>, Vec<&LlamaCppPreTokenizer>> = HashMap::new();
    for pre in LLAMA_CPP_PRE_TOKENIZERS {
        for (k, &name) in pre.names.iter().enumerate() {
            md.set("tokenizer.ggml.pre", name);
            let path = dir.path().join("vocab.gguf");
            write_vocab(&md, &path);
            let tok = ours(&md);
            // Every sample for the first name; the aliases (which select the
            // same llama.cpp code) on all of them at once.
            let cases: Vec<&str> = if k == 0 {
                texts.iter().map(String::as_str).collect()
            } else {
                vec![joined.as_str()]
            };
            for text in cases {
                let theirs = llama_tokenize(&bin, &path, text, dir.path(), false);
                let ids = tok.encode(text, false).unwrap().get_ids().to_vec();
                assert_same_ids(name, text, &theirs, &ids, &tok);
            }
            if k == 0 {
                let ids = tok
                    .encode(joined.as_str(), false)
                    .unwrap()
                    .get_ids()
                    .to_vec();
                by_ids.entry(ids).or_default().push(pre);
            }
        }
    }
    // llama.cpp's BPE tokenizer ignores add_space_prefix (some converted
    // files set it); so do we.
    md.set("tokenizer.ggml.pre", "gpt-2");
    md.set("tokenizer.ggml.add_space_prefix", true);
    let path = dir.path().join("vocab.gguf");
    write_vocab(&md, &path);
    let tok = ours(&md);
    let theirs = llama_tokenize(&bin, &path, &joined, dir.path(), false);
    let ids = tok
        .encode(joined.as_str(), false)
        .unwrap()
        .get_ids()
        .to_vec();
    assert_same_ids("gpt-2 with add_space_prefix", &joined, &theirs, &ids, &tok);

    // The sample tells the pre-tokenizers apart: those with different regexes
    // split it differently (DBRX's and GLM-4's differ from Llama 3's in
    // ignore_merges only). Two pairs split every text alike: Bailing MoE's
    // regex is Qwen2's with `\s*[\r\n]` for `\s*[\r\n]+` (`\s*` takes all
    // but the last newline either way), and MiniCPM 5 cuts digit runs in
    // threes before Llama 3's regex with `\p{N}+`, where Llama 3's regex
    // cuts them in threes itself.
    let key = |p: &LlamaCppPreTokenizer| {
        let same = LLAMA_CPP_PRE_TOKENIZERS
            .iter()
            .find(|q| q.regexes == p.regexes)
            .unwrap();
        match same.names[0] {
            "bailingmoe" => "qwen2",
            "minicpm5" => "llama-bpe",
            name => name,
        }
    };
    let groups: Vec<Vec<&str>> = by_ids
        .values()
        .filter(|g| g.iter().any(|p| key(p) != key(g[0])))
        .map(|g| g.iter().map(|p| p.names[0]).collect())
        .collect();
    assert!(
        groups.is_empty(),
        "pre-tokenizers that tokenize the sample alike: {groups:?}"
    );
}

#[test]
fn sentencepiece_tokenizes_like_llama_cpp() {
    let Some(bin) = common::llama_cpp_bin() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut md = spm_metadata();
    let mut texts = samples();
    texts.extend(
        [
            "<s>starts with BOS</s> and <tool>call</tool> <unk>",
            " leading space",
            "Ω≈ç√∫ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 \u{1}\u{7f}",
        ]
        .map(String::from),
    );
    for add_space_prefix in [true, false] {
        md.set("tokenizer.ggml.add_space_prefix", add_space_prefix);
        let path = dir.path().join("spm.gguf");
        write_vocab(&md, &path);
        let tok = ours(&md);
        let label = format!("llama (SentencePiece), add_space_prefix {add_space_prefix}");
        for text in &texts {
            let theirs = llama_tokenize(&bin, &path, text, dir.path(), false);
            let ids = tok.encode(text.as_str(), false).unwrap().get_ids().to_vec();
            assert_same_ids(&label, text, &theirs, &ids, &tok);
        }
        // With BOS, as llama.cpp adds it by default for this model.
        let text = texts[0].as_str();
        let theirs = llama_tokenize(&bin, &path, text, dir.path(), true);
        let ids = tok.encode(text, true).unwrap().get_ids().to_vec();
        assert_eq!(theirs.first(), Some(&1), "{label}");
        assert_same_ids(&label, text, &theirs, &ids, &tok);
    }
}

/// Without llama.cpp: every pre-tokenizer's regexes compile in the `tokenizers`
/// library, the SentencePiece vocabulary falls back to bytes, and decoding
/// gives the text back.
#[test]
fn every_tokenizer_builds_and_round_trips() {
    let mut md = bpe_metadata();
    let texts = samples();
    for pre in LLAMA_CPP_PRE_TOKENIZERS {
        for &name in pre.names {
            md.set("tokenizer.ggml.pre", name);
            let tok = ours(&md);
            for text in &texts {
                let ids = tok.encode(text.as_str(), false).unwrap().get_ids().to_vec();
                let back = tok.decode(&ids, false).unwrap();
                // Qwen2's NFC leaves these samples as they are.
                assert_eq!(&back, text, "{name}");
            }
        }
    }

    let md = spm_metadata();
    let tok = ours(&md);
    let enc = tok.encode("Hello world 日本", true).unwrap();
    let toks = enc.get_tokens();
    assert_eq!(toks[0], "<s>");
    assert!(toks[1].starts_with('\u{2581}'), "{toks:?}");
    // 日 and 本 are no pieces: three byte tokens each.
    assert!(toks.iter().any(|t| t == "<0xE6>"), "{toks:?}");
    // Decoding keeps the prefix space (a continuation's first space is text).
    for text in &texts {
        let ids = tok.encode(text.as_str(), false).unwrap().get_ids().to_vec();
        assert_eq!(
            tok.decode(&ids, false).unwrap(),
            format!(" {text}"),
            "llama"
        );
    }
    let ids: Vec<u32> = ["\u{2581}is", "\u{2581}a"]
        .iter()
        .map(|t| tok.token_to_id(t).unwrap())
        .collect();
    assert_eq!(tok.decode(&ids, false).unwrap(), " is a");
}

/// Without llama.cpp: the tokenizer.json the import writes for each
/// pre-tokenizer exports back to GGUF metadata (`TokenizerMetadata`, as
/// `compress --format gguf` writes it) with the name that selects the same
/// regexes and `ignore_merges` in llama.cpp, and that imports to a tokenizer
/// giving the same ids.
#[test]
fn imported_tokenizers_export_back() {
    let mut md = bpe_metadata();
    let joined = samples().join("\n");
    for pre in LLAMA_CPP_PRE_TOKENIZERS {
        let name = pre.names[0];
        md.set("tokenizer.ggml.pre", name);
        let json: serde_json::Value =
            serde_json::from_str(&import_tokenizer(&md).unwrap()).unwrap();
        let meta = TokenizerMetadata::from_hf_json(&json, None, None, None, None)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let want = LLAMA_CPP_PRE_TOKENIZERS
            .iter()
            .find(|q| q.regexes == pre.regexes && q.ignore_merges == pre.ignore_merges)
            .unwrap()
            .names[0];
        assert_eq!(meta.pre, want, "{name}");
        let mut back = Metadata::new();
        meta.write_metadata(&mut back);
        let a = ours(&md).encode(joined.as_str(), true).unwrap();
        let b = ours(&back).encode(joined.as_str(), true).unwrap();
        assert_eq!(a.get_ids(), b.get_ids(), "{name}");
    }
}

#[test]
fn unknown_pre_tokenizers_are_named() {
    let mut md = bpe_metadata();
    md.set("tokenizer.ggml.pre", "kimi-k2");
    let e = import_tokenizer(&md).unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(e, ImportError::UnsupportedTokenizer { .. }),
        "{msg}"
    );
    assert!(
        msg.contains("\"kimi-k2\"")
            && msg.contains("not supported yet")
            && msg.contains("starcoder"),
        "{msg}"
    );
    assert!(!msg.contains('\n'), "{msg}");
    md.remove("tokenizer.ggml.pre");
    let msg = import_tokenizer(&md).unwrap_err().to_string();
    assert!(msg.contains("tokenizer.ggml.pre"), "{msg}");
    md.set("tokenizer.ggml.model", "bert");
    let msg = import_tokenizer(&md).unwrap_err().to_string();
    assert!(msg.contains("\"bert\" (WordPiece)"), "{msg}");
}
