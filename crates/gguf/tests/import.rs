//! GGUF → Hugging Face import: the demo model written as F32/BF16 GGUF comes
//! back bit for bit with its config and a tokenizer that tokenizes like the
//! original; a llama.cpp Q4_K_M file comes back as exactly ggml's
//! dequantization; small models of every supported architecture round-trip;
//! bad files give errors that name the problem.

mod common;

use std::path::Path;
use std::process::Command;
use std::str::FromStr;

use dynapress_gguf::import::{self, HfImport, import_tokenizer};
use dynapress_gguf::model::{self, Arch, RopeScaling, gguf_tensor_name};
use dynapress_gguf::tokenizer::{LLAMA3_REGEX, QWEN2_REGEX};
use dynapress_gguf::{
    GgmlType, GgufFile, ImportError, LlamaHparams, Metadata, TensorSpec, TokenizerMetadata, Value,
    model_metadata, write_gguf,
};
use rand::{RngExt, SeedableRng};
use serde_json::{Value as Json, json};
use tokenizers::Tokenizer;

fn read_json(path: &Path) -> Json {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The demo model's tensors, bf16 widened to f32: (name, shape, values).
fn original_tensors() -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(common::fixture_dir().join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<_> = st
        .tensors()
        .into_iter()
        .map(|(name, v)| {
            assert_eq!(v.dtype(), safetensors::Dtype::BF16);
            (
                name,
                v.shape().to_vec(),
                common::bf16_bytes_to_f32(v.data()),
            )
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The config fields the import must reproduce, against the original
/// config.json (transformers 5 keys) — and the hyper-parameters the exporter
/// reads from either must be identical.
fn check_config(imp: &HfImport) {
    let orig = read_json(&common::fixture_dir().join("config.json"));
    let c = &imp.config;
    for key in [
        "model_type",
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "rms_norm_eps",
        "max_position_embeddings",
        "vocab_size",
        "tie_word_embeddings",
        "bos_token_id",
        "eos_token_id",
        "attention_bias",
        "mlp_bias",
    ] {
        assert_eq!(c[key], orig[key], "{key}");
    }
    assert_eq!(c["rope_theta"], orig["rope_parameters"]["rope_theta"]);
    assert_eq!(c["rope_scaling"], Json::Null);
    assert_eq!(c["architectures"], orig["architectures"]);
    assert_eq!(
        LlamaHparams::from_hf_config(c).unwrap(),
        LlamaHparams::from_hf_config(&orig).unwrap()
    );
    assert_eq!(imp.hparams, LlamaHparams::from_hf_config(&orig).unwrap());
}

/// Every tensor equals the original bit for bit, and the sets are equal.
fn check_tensors_exact(imp: &HfImport) {
    let orig = original_tensors();
    let mut names: Vec<&str> = imp.tensors.iter().map(|t| t.name.as_str()).collect();
    names.sort_unstable();
    let orig_names: Vec<&str> = orig.iter().map(|t| t.0.as_str()).collect();
    assert_eq!(names, orig_names);
    for (name, shape, values) in &orig {
        let t = imp.tensor(name).unwrap();
        assert_eq!(&t.shape, shape, "{name}");
        assert!(
            t.data
                .iter()
                .zip(values)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{name} differs"
        );
    }
}

#[test]
fn f32_and_bf16_gguf_import_bit_exact() {
    let dir = tempfile::tempdir().unwrap();
    for ty in [GgmlType::F32, GgmlType::BF16] {
        let path = dir.path().join(format!("demo-{}.gguf", ty.name()));
        common::write_fixture_gguf(&path, ty);
        let file = GgufFile::open(&path).unwrap();
        let imp = import::import(&file).unwrap();
        check_config(&imp);
        check_tensors_exact(&imp);
        assert_eq!(imp.types["model.layers.0.self_attn.q_proj.weight"], ty);
        assert_eq!(imp.types["model.norm.weight"], GgmlType::F32);
        assert_eq!(imp.types.len(), imp.tensors.len());
        assert_eq!(import::import_config(&file).unwrap(), imp.config);
    }
}

#[test]
fn llama_quantize_q4_k_m_imports_as_ggml_dequantization() {
    let Some(bin) = common::llama_cpp_bin() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let f32_path = dir.path().join("demo-f32.gguf");
    let q_path = dir.path().join("demo-q4_k_m.gguf");
    common::write_fixture_gguf(&f32_path, GgmlType::F32);
    let out = Command::new(bin.join("llama-quantize"))
        .arg(&f32_path)
        .arg(&q_path)
        .args(["Q4_K_M", "2"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "llama-quantize failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let file = GgufFile::open(&q_path).unwrap();
    let imp = import::import(&file).unwrap();
    check_config(&imp);
    let hp = &imp.hparams;
    // The file really is mixed k-quants.
    let types: std::collections::BTreeSet<GgmlType> = imp.types.values().copied().collect();
    assert!(
        types.contains(&GgmlType::Q4K) && types.contains(&GgmlType::Q6K),
        "{types:?}"
    );

    // Exact: ggml's dequantization of the stored bytes, rows moved back with
    // the byte-level permutation inverse.
    for info in file.tensors() {
        let hf = model::hf_tensor_name(&info.name).unwrap();
        let t = imp.tensor(&hf).unwrap();
        let n = info.n_elements() as usize;
        let mut want = dynapress_ggml::dequantize(info.ggml_type, file.data(info), n).unwrap();
        if let Some(h) = hp.qk_permute_heads(&info.name) {
            let bytes =
                model::unpermute_qk_rows(&common::f32_bytes(&want), info.shape()[0] as usize, h)
                    .unwrap();
            want = bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect();
        }
        assert!(
            t.data
                .iter()
                .zip(&want)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{hf} ({}) is not the dequantized GGUF tensor",
            info.ggml_type.name()
        );
        assert_eq!(imp.types[&hf], info.ggml_type);
    }

    // And close to the original weights: a wrong row order would give errors
    // of the order of the weights themselves (relative RMS ≈ 1.4).
    for (name, shape, orig) in original_tensors() {
        let t = imp.tensor(&name).unwrap();
        assert_eq!(t.shape, shape);
        let (mut num, mut den) = (0f64, 0f64);
        for (a, b) in t.data.iter().zip(&orig) {
            num += (f64::from(*a) - f64::from(*b)).powi(2);
            den += f64::from(*b).powi(2);
        }
        let rel = (num / den).sqrt();
        eprintln!(
            "{name} ({}): relative RMS error {rel:.4}",
            imp.types[&name].name()
        );
        assert!(
            rel < 0.25,
            "{name} ({}): relative RMS error {rel}",
            imp.types[&name].name()
        );
    }
}

fn texts() -> Vec<String> {
    let reference = read_json(&common::repo_root().join("tests/reference/llama-8m/reference.json"));
    let mut texts: Vec<String> = reference["tokenization"]["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["text"].as_str().unwrap().to_owned())
        .collect();
    texts.extend(
        [
            "a  b   c    d\t\t\te \u{a0}f",
            "    ",
            "\n\n\n",
            " \n \n  \n\t\n",
            "trailing   ",
            "line one\r\nline two\r\n\r\n\rend",
            "🚀🔥 👩‍👩‍👧 family 🇫🇷 flags",
            "text<|endoftext|>more",
            "<|endoftext|><|endoftext|> <|endoftext|> x<|pad|>y",
            "<|endoftext",
            "DON'T I'M we'LL they've",
            "1234567890 3.14159 0x1F 10,000,000",
            "e\u{301} cafe\u{301} ñ n\u{303}",
            "日本語のテキスト, Ελληνικά, русский, عربى",
            "\u{0}\u{1}\u{7f} control",
        ]
        .map(String::from),
    );
    for f in ["docs.test.txt", "code.test.txt"] {
        texts.push(
            std::fs::read_to_string(common::repo_root().join("assets/data").join(f)).unwrap(),
        );
    }
    texts
}

/// Same ids with and without special tokens, same decoded text, and decoding
/// gives back the (normalized) input.
fn assert_same_tokenization(orig: &Tokenizer, ours: &Tokenizer, label: &str) {
    assert_eq!(
        ours.get_vocab_size(true),
        orig.get_vocab_size(true),
        "{label}"
    );
    for id in 0..orig.get_vocab_size(true) as u32 {
        assert_eq!(
            ours.id_to_token(id),
            orig.id_to_token(id),
            "{label}: id {id}"
        );
    }
    for text in texts() {
        let short = &text[..text.char_indices().nth(60).map_or(text.len(), |(i, _)| i)];
        for special in [false, true] {
            let a = orig.encode(text.as_str(), special).unwrap();
            let b = ours.encode(text.as_str(), special).unwrap();
            assert_eq!(
                b.get_ids(),
                a.get_ids(),
                "{label}: ids differ for {short:?} (special {special})"
            );
        }
        let ids = orig
            .encode(text.as_str(), false)
            .unwrap()
            .get_ids()
            .to_vec();
        let back = ours.decode(&ids, false).unwrap();
        assert_eq!(
            back,
            orig.decode(&ids, false).unwrap(),
            "{label}: {short:?}"
        );
        if let Some(norm) = orig.get_normalizer() {
            use tokenizers::{NormalizedString, Normalizer};
            let mut n = NormalizedString::from(text.as_str());
            norm.normalize(&mut n).unwrap();
            assert_eq!(back, n.get(), "{label}: {short:?}");
        } else {
            assert_eq!(back, text, "{label}: {short:?}");
        }
    }
}

#[test]
fn rebuilt_tokenizer_tokenizes_like_the_original() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("demo.gguf");
    common::write_fixture_gguf(&path, GgmlType::BF16);
    let file = GgufFile::open(&path).unwrap();
    let json = import_tokenizer(file.metadata()).unwrap();
    let ours = Tokenizer::from_str(&json).unwrap();
    let orig = Tokenizer::from_file(common::fixture_dir().join("tokenizer.json")).unwrap();
    assert_same_tokenization(&orig, &ours, "gpt-2");

    // And the reference ids from transformers, directly.
    let reference = read_json(&common::repo_root().join("tests/reference/llama-8m/reference.json"));
    for case in reference["tokenization"]["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(
            ours.encode(text, false).unwrap().get_ids(),
            want,
            "{text:?}"
        );
    }
}

/// The demo tokenizer with its pre-tokenizer swapped for Llama 3's (with
/// `ignore_merges` and a BOS template, as Llama 3 ships it) or Qwen2's (with
/// NFC), exported to GGUF metadata and rebuilt.
#[test]
fn rebuilt_llama3_and_qwen2_style_tokenizers_match() {
    let base = read_json(&common::fixture_dir().join("tokenizer.json"));
    let tc = read_json(&common::fixture_dir().join("tokenizer_config.json"));
    let split = |regex: &str| {
        json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}
        ]})
    };
    let mut llama3 = base.clone();
    llama3["pre_tokenizer"] = split(LLAMA3_REGEX);
    llama3["model"]["ignore_merges"] = json!(true);
    let bos = json!({"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}});
    llama3["post_processor"] = json!({"type": "Sequence", "processors": [
        {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
        {"type": "TemplateProcessing",
         "single": [bos, {"Sequence": {"id": "A", "type_id": 0}}],
         "pair": [bos, {"Sequence": {"id": "A", "type_id": 0}},
                  {"SpecialToken": {"id": "<|endoftext|>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
         "special_tokens": {"<|endoftext|>": {"id": "<|endoftext|>", "ids": [0], "tokens": ["<|endoftext|>"]}}}
    ]});
    let mut qwen2 = base.clone();
    qwen2["pre_tokenizer"] = split(QWEN2_REGEX);
    qwen2["normalizer"] = json!({"type": "NFC"});

    for (label, tok, pre, add_bos) in [
        ("llama-bpe", llama3, "llama-bpe", true),
        ("qwen2", qwen2, "qwen2", false),
    ] {
        let meta =
            TokenizerMetadata::from_hf_json(&tok, Some(&tc), None, None, Some(4096)).unwrap();
        assert_eq!(meta.pre, pre);
        assert_eq!(meta.add_bos_token, Some(add_bos));
        let mut md = Metadata::new();
        meta.write_metadata(&mut md);
        let ours = Tokenizer::from_str(&import_tokenizer(&md).unwrap()).unwrap();
        let orig = Tokenizer::from_str(&tok.to_string()).unwrap();
        assert_same_tokenization(&orig, &ours, label);
        // The template really adds BOS for Llama 3.
        let ids = ours.encode("hello", true).unwrap().get_ids().to_vec();
        assert_eq!(ids.first() == Some(&0), add_bos, "{label}: {ids:?}");
        // llama.cpp's default for a missing add_bos_token key: BOS for Llama 3 only.
        md.remove("tokenizer.ggml.add_bos_token");
        let dflt = Tokenizer::from_str(&import_tokenizer(&md).unwrap()).unwrap();
        let ids = dflt.encode("hello", true).unwrap().get_ids().to_vec();
        assert_eq!(
            ids.first() == Some(&0),
            pre == "llama-bpe",
            "{label}: {ids:?}"
        );
    }
}

/// A small model: hyper-parameters, random Hugging Face tensors, and the GGUF
/// items the exporter's rules make of them.
struct Tiny {
    hp: LlamaHparams,
    hf: Vec<(String, Vec<usize>, Vec<f32>)>,
    md: Metadata,
    items: Vec<(TensorSpec, Vec<u8>)>,
}

fn tiny(arch: Arch, head_dim: u32, rope: RopeScaling, tied: bool, bias: bool, seed: u64) -> Tiny {
    let tok = TokenizerMetadata::from_hf_dir(&common::fixture_dir(), Some(4096)).unwrap();
    let hp = LlamaHparams {
        arch,
        context_length: 256,
        embedding_length: 64,
        block_count: 2,
        feed_forward_length: 96,
        head_count: 4,
        head_count_kv: 2,
        head_dim,
        rope_freq_base: 10000.0,
        rope_scaling: rope,
        rms_norm_eps: 1e-6,
        vocab_size: 4096,
        tie_word_embeddings: tied,
    };
    let (e, d, ff) = (64usize, head_dim as usize, 96usize);
    let (q, kv) = (4 * d, 2 * d);
    let mut shapes: Vec<(String, Vec<usize>)> = vec![
        ("model.embed_tokens.weight".into(), vec![4096, e]),
        ("model.norm.weight".into(), vec![e]),
    ];
    if !tied {
        shapes.push(("lm_head.weight".into(), vec![4096, e]));
    }
    for l in 0..2 {
        let p = format!("model.layers.{l}");
        let mut add = |s: &str, shape: Vec<usize>| shapes.push((format!("{p}.{s}"), shape));
        add("input_layernorm.weight", vec![e]);
        add("self_attn.q_proj.weight", vec![q, e]);
        add("self_attn.k_proj.weight", vec![kv, e]);
        add("self_attn.v_proj.weight", vec![kv, e]);
        add("self_attn.o_proj.weight", vec![e, q]);
        add("post_attention_layernorm.weight", vec![e]);
        add("mlp.gate_proj.weight", vec![ff, e]);
        add("mlp.up_proj.weight", vec![ff, e]);
        add("mlp.down_proj.weight", vec![e, ff]);
        if arch == Arch::Qwen2 || bias {
            add("self_attn.q_proj.bias", vec![q]);
            add("self_attn.k_proj.bias", vec![kv]);
            add("self_attn.v_proj.bias", vec![kv]);
        }
        if bias && arch != Arch::Qwen2 {
            add("self_attn.o_proj.bias", vec![e]);
        }
        if bias && arch == Arch::Llama {
            add("mlp.gate_proj.bias", vec![ff]);
            add("mlp.up_proj.bias", vec![ff]);
            add("mlp.down_proj.bias", vec![e]);
        }
        if arch == Arch::Qwen3 {
            add("self_attn.q_norm.weight", vec![d]);
            add("self_attn.k_norm.weight", vec![d]);
        }
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut hf = Vec::new();
    let mut items = Vec::new();
    for (name, shape) in shapes {
        let n: usize = shape.iter().product();
        let vals: Vec<f32> = (0..n).map(|_| rng.random::<f32>() - 0.5).collect();
        let g = gguf_tensor_name(&name).unwrap().unwrap();
        let mut bytes = common::f32_bytes(&vals);
        if let Some(h) = hp.qk_permute_heads(&g) {
            bytes = model::permute_qk_rows(&bytes, shape[0], h).unwrap();
        }
        items.push((TensorSpec::from_shape(g, GgmlType::F32, &shape), bytes));
        hf.push((name, shape, vals));
    }
    if let Some(f) = hp.rope_freqs() {
        items.push((
            TensorSpec::from_shape(model::ROPE_FREQS_TENSOR, GgmlType::F32, &[f.len()]),
            common::f32_bytes(&f),
        ));
    }
    let md = model_metadata("tiny", &hp, &tok, model::file_type_for(GgmlType::F32));
    Tiny { hp, hf, md, items }
}

fn write(dir: &Path, name: &str, md: &Metadata, items: &[(TensorSpec, Vec<u8>)]) -> GgufFile {
    let path = dir.join(name);
    write_gguf(
        &path,
        md,
        items.iter().map(|(s, d)| (s.clone(), d.as_slice())),
    )
    .unwrap();
    GgufFile::open(&path).unwrap()
}

#[test]
fn every_architecture_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let llama3 = RopeScaling::Llama3 {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_context_length: 64,
    };
    let cases = [
        (
            "llama-linear-bias",
            Arch::Llama,
            16,
            RopeScaling::Linear { factor: 4.0 },
            false,
            true,
        ),
        ("llama3-tied", Arch::Llama, 16, llama3, true, false),
        ("qwen2", Arch::Qwen2, 16, RopeScaling::None, false, false),
        (
            "qwen3-wide-heads",
            Arch::Qwen3,
            32,
            RopeScaling::None,
            true,
            false,
        ),
        (
            "qwen3-bias",
            Arch::Qwen3,
            16,
            RopeScaling::None,
            false,
            true,
        ),
    ];
    for (i, (label, arch, head_dim, rope, tied, bias)) in cases.into_iter().enumerate() {
        let t = tiny(arch, head_dim, rope, tied, bias, i as u64);
        let file = write(dir.path(), &format!("{label}.gguf"), &t.md, &t.items);
        let imp = import::import(&file).unwrap();
        assert_eq!(imp.tensors.len(), t.hf.len(), "{label}");
        for (name, shape, vals) in &t.hf {
            let got = imp
                .tensor(name)
                .unwrap_or_else(|| panic!("{label}: no {name}"));
            assert_eq!(&got.shape, shape, "{label}: {name}");
            assert!(
                got.data
                    .iter()
                    .zip(vals)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{label}: {name} differs"
            );
        }
        // The config reads back to the same hyper-parameters (Llama 3 RoPE as
        // parameters that give the same frequencies).
        let back = LlamaHparams::from_hf_config(&imp.config).unwrap();
        if let RopeScaling::Llama3 { .. } = rope {
            let (f0, f1) = (t.hp.rope_freqs().unwrap(), back.rope_freqs().unwrap());
            assert!(
                f0.iter().zip(&f1).all(|(a, b)| ((a - b) / a).abs() < 1e-5),
                "{label}: {f0:?} vs {f1:?}"
            );
            assert_eq!(
                LlamaHparams {
                    rope_scaling: rope,
                    ..back.clone()
                },
                t.hp,
                "{label}"
            );
        } else {
            assert_eq!(back, t.hp, "{label}");
        }
        let c = &imp.config;
        assert_eq!(c["tie_word_embeddings"], json!(tied), "{label}");
        assert_eq!(c["model_type"], json!(arch.name()), "{label}");
        let want_bias = bias || arch == Arch::Qwen2;
        assert_eq!(c["attention_bias"], json!(want_bias), "{label}");
        if arch == Arch::Llama {
            assert_eq!(c["mlp_bias"], json!(bias), "{label}");
        }
        if let RopeScaling::Linear { factor } = rope {
            assert_eq!(
                c["rope_scaling"],
                json!({"rope_type": "linear", "factor": factor})
            );
        }
        assert!(imp.tensor(model::ROPE_FREQS_TENSOR).is_none());
    }
}

fn import_err(
    dir: &Path,
    name: &str,
    md: &Metadata,
    items: &[(TensorSpec, Vec<u8>)],
) -> (ImportError, String) {
    let file = write(dir, name, md, items);
    let e = import::import(&file).unwrap_err();
    let msg = e.to_string();
    eprintln!("{msg}");
    assert!(msg.contains(name), "error does not name the file: {msg}");
    (e.import_error().expect("an import error").clone(), msg)
}

#[test]
fn bad_files_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let base = tiny(Arch::Llama, 16, RopeScaling::None, false, false, 9);

    // Unsupported architecture.
    let mut md = base.md.clone();
    md.set("general.architecture", "phi3");
    let (e, msg) = import_err(d, "phi3.gguf", &md, &base.items);
    assert!(matches!(e, ImportError::UnsupportedArchitecture { ref arch } if arch == "phi3"));
    assert!(msg.contains("llama, qwen2, qwen3"), "{msg}");

    // A missing tensor.
    let items: Vec<_> = base
        .items
        .iter()
        .filter(|(s, _)| s.name != "blk.1.ffn_up.weight")
        .cloned()
        .collect();
    let (e, msg) = import_err(d, "missing.gguf", &base.md, &items);
    assert_eq!(
        e,
        ImportError::MissingTensors {
            names: vec!["blk.1.ffn_up.weight".into()]
        },
        "{msg}"
    );

    // Unknown tensors: an unmapped name, a block beyond block_count, a bias
    // qwen2's o_proj does not have.
    let mut items = base.items.clone();
    for name in [
        "blk.0.attn_foo.weight",
        "blk.2.attn_norm.weight",
        "v.patch_embd.weight",
    ] {
        items.push((
            TensorSpec::from_shape(name, GgmlType::F32, &[64]),
            common::f32_bytes(&[0.5; 64]),
        ));
    }
    let (e, msg) = import_err(d, "unknown.gguf", &base.md, &items);
    let ImportError::UnknownTensors { names } = e else {
        panic!("{msg}")
    };
    assert_eq!(
        names,
        [
            "blk.0.attn_foo.weight",
            "blk.2.attn_norm.weight",
            "v.patch_embd.weight"
        ]
    );
    assert!(msg.contains("blk.0.attn_foo.weight"), "{msg}");
    let q2 = tiny(Arch::Qwen2, 16, RopeScaling::None, false, false, 10);
    let mut items = q2.items.clone();
    items.push((
        TensorSpec::from_shape("blk.0.attn_output.bias", GgmlType::F32, &[64]),
        common::f32_bytes(&[0.0; 64]),
    ));
    let (e, _) = import_err(d, "qwen2-obias.gguf", &q2.md, &items);
    assert!(matches!(e, ImportError::UnknownTensors { .. }), "{e}");

    // Q/K/V biases without the output bias cannot be a Llama config.
    let items: Vec<_> = tiny(Arch::Llama, 16, RopeScaling::None, false, true, 11)
        .items
        .into_iter()
        .filter(|(s, _)| !s.name.contains("attn_output.bias"))
        .collect();
    let (e, msg) = import_err(d, "qkv-bias.gguf", &base.md, &items);
    assert!(matches!(e, ImportError::MissingTensors { .. }), "{msg}");
    assert!(msg.contains("attn_output.bias"), "{msg}");

    // A shape that disagrees with the metadata.
    let mut md = base.md.clone();
    md.set("llama.attention.head_count_kv", 4u32);
    let (e, msg) = import_err(d, "shape.gguf", &md, &base.items);
    assert!(
        matches!(&e, ImportError::TensorShape { tensor, expected, found }
            if tensor.starts_with("blk.0.attn_k") && expected == &vec![64, 64] && found == &vec![32, 64]),
        "{msg}"
    );

    // Tokenizers that cannot be rebuilt.
    for (key, value, label) in [
        ("tokenizer.ggml.model", "bert", "wpm"),
        ("tokenizer.ggml.pre", "kimi-k2", "pre"),
    ] {
        let mut md = base.md.clone();
        md.set(key, value);
        let (e, msg) = import_err(d, &format!("tok-{label}.gguf"), &md, &base.items);
        assert!(
            matches!(e, ImportError::UnsupportedTokenizer { .. }),
            "{msg}"
        );
        assert!(
            msg.contains("not supported yet") && msg.contains(value),
            "{msg}"
        );
    }
    let mut md = base.md.clone();
    md.remove("tokenizer.ggml.pre");
    let (e, _) = import_err(d, "tok-nopre.gguf", &md, &base.items);
    assert!(matches!(e, ImportError::UnsupportedTokenizer { .. }), "{e}");

    // Inconsistent tokenizer metadata.
    let tokens = base
        .md
        .get_str_array("tokenizer.ggml.tokens")
        .unwrap()
        .to_vec();
    let mut dup = tokens.clone();
    dup[100] = dup[101].clone();
    let mut md = base.md.clone();
    md.set("tokenizer.ggml.tokens", dup);
    let (e, msg) = import_err(d, "tok-dup.gguf", &md, &base.items);
    assert!(
        matches!(e, ImportError::Tokenizer(_)) && msg.contains("100"),
        "{msg}"
    );
    let mut merges = base
        .md
        .get_str_array("tokenizer.ggml.merges")
        .unwrap()
        .to_vec();
    merges[5] = "Ġ zzzz".into();
    let mut md = base.md.clone();
    md.set("tokenizer.ggml.merges", merges);
    let (e, msg) = import_err(d, "tok-merge.gguf", &md, &base.items);
    assert!(
        matches!(e, ImportError::Tokenizer(_)) && msg.contains("zzzz"),
        "{msg}"
    );

    // RoPE scaling with no supported Hugging Face form.
    let mut md = base.md.clone();
    md.set("llama.rope.scaling.type", "yarn");
    md.set("llama.rope.scaling.factor", 4.0f32);
    let (e, msg) = import_err(d, "yarn.gguf", &md, &base.items);
    assert!(
        matches!(e, ImportError::Metadata { .. }) && msg.contains("yarn"),
        "{msg}"
    );

    // Missing and mistyped hyper-parameters.
    let mut md = base.md.clone();
    md.remove("llama.block_count");
    let (e, _) = import_err(d, "noblocks.gguf", &md, &base.items);
    assert!(matches!(e, ImportError::Metadata { ref key, .. } if key == "llama.block_count"));
    let mut md = base.md.clone();
    md.set("llama.context_length", Value::String("long".into()));
    let (e, _) = import_err(d, "badctx.gguf", &md, &base.items);
    assert!(matches!(e, ImportError::Metadata { ref key, .. } if key == "llama.context_length"));
    let mut md = base.md.clone();
    md.set("llama.rope.dimension_count", 8u32);
    let (e, msg) = import_err(d, "partial-rope.gguf", &md, &base.items);
    assert!(
        matches!(e, ImportError::Metadata { .. }) && msg.contains("rope.dimension_count"),
        "{msg}"
    );
}

/// `ignore_merges`: Llama 3 (and llama.cpp for `llama-bpe`) takes a
/// pre-tokenized word that is itself a token whole, even when the merges
/// would not build it; GPT-2 and Qwen2 apply the merges. Vocabulary a, b, c,
/// ab, abc with the single merge "a b": "abc" is [abc] for Llama 3 and
/// [ab, c] otherwise.
#[test]
fn ignore_merges_follows_the_pre_tokenizer() {
    for (pre, want) in [
        ("llama-bpe", vec![4u32]),
        ("gpt-2", vec![3, 2]),
        ("qwen2", vec![3, 2]),
    ] {
        let mut md = Metadata::new();
        md.set("tokenizer.ggml.model", "gpt2");
        md.set("tokenizer.ggml.pre", pre);
        md.set(
            "tokenizer.ggml.tokens",
            ["a", "b", "c", "ab", "abc", "<|end|>"]
                .map(String::from)
                .to_vec(),
        );
        md.set("tokenizer.ggml.token_type", vec![1i32, 1, 1, 1, 1, 3]);
        md.set("tokenizer.ggml.merges", vec!["a b".to_string()]);
        md.set("tokenizer.ggml.add_bos_token", false);
        let tok = Tokenizer::from_str(&import_tokenizer(&md).unwrap()).unwrap();
        assert_eq!(tok.encode("abc", true).unwrap().get_ids(), want, "{pre}");
        let mut with_end = vec![5u32];
        with_end.extend(&want);
        assert_eq!(
            tok.encode("<|end|>abc", false).unwrap().get_ids(),
            with_end,
            "{pre}"
        );
        assert_eq!(tok.decode(&with_end, false).unwrap(), "<|end|>abc");
        assert_eq!(tok.decode(&with_end, true).unwrap(), "abc");
    }
}

/// Seeded semantic mutations of a small Llama 3 model file (numeric keys set
/// to extremes, keys removed or retyped, tensors dropped or reshaped, random
/// `rope_freqs`, token types, tokens and merges): the import returns Ok or an
/// import error, never panics.
#[test]
fn mutated_models_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let llama3 = RopeScaling::Llama3 {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_context_length: 64,
    };
    let base = tiny(Arch::Llama, 16, llama3, true, false, 21);
    let keys: Vec<String> = base
        .md
        .iter()
        .map(|(k, _)| k.to_owned())
        .filter(|k| k.starts_with("llama.") || k.starts_with("general.") || k.contains("_id"))
        .collect();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0x696d_706f);
    let path = dir.path().join("mutant.gguf");
    let (mut ok, mut refused) = (0, 0);
    for _ in 0..400 {
        let mut md = base.md.clone();
        let mut items = base.items.clone();
        for _ in 0..rng.random_range(1..4) {
            let key = keys[rng.random_range(0..keys.len())].clone();
            match rng.random_range(0..9) {
                0 => {
                    let v = [0u32, 1, 2, 3, 5, 8, 64, 4097, u32::MAX, rng.random()];
                    md.set(key, v[rng.random_range(0..v.len())]);
                }
                1 => {
                    md.remove(&key);
                }
                2 => {
                    let v = [0.0f32, -1.0, f32::NAN, f32::INFINITY, 1e30, 0.5];
                    md.set(key, v[rng.random_range(0..v.len())]);
                }
                3 => md.set(key, "qwen3"),
                4 => {
                    let i = rng.random_range(0..items.len());
                    items.remove(i);
                }
                5 => {
                    // Same bytes, other shape.
                    let i = rng.random_range(0..items.len());
                    let s = &items[i].0;
                    let mut shape: Vec<usize> = s.dims.iter().map(|&d| d as usize).collect();
                    if shape.len() == 2 && rng.random() {
                        shape.swap(0, 1);
                    } else {
                        shape = vec![shape.iter().product()];
                    }
                    items[i].0 = TensorSpec::new(
                        s.name.clone(),
                        s.ggml_type,
                        &shape.iter().map(|&d| d as u64).collect::<Vec<_>>(),
                    );
                }
                6 => {
                    if let Some(item) = items
                        .iter_mut()
                        .find(|(s, _)| s.name == model::ROPE_FREQS_TENSOR)
                    {
                        let vals: Vec<f32> = (0..8).map(|_| rng.random::<f32>() * 10.0).collect();
                        item.1 = common::f32_bytes(&vals);
                    }
                }
                7 => {
                    let n = 4096;
                    let types: Vec<i32> = (0..n).map(|_| rng.random_range(-1..8)).collect();
                    md.set("tokenizer.ggml.token_type", types);
                }
                _ => {
                    let mut merges = md.get_str_array("tokenizer.ggml.merges").unwrap().to_vec();
                    let i = rng.random_range(0..merges.len());
                    merges[i] = ["", " ", "a", "Ġ Ġ Ġ", "é b"][rng.random_range(0..5)].to_owned();
                    md.set("tokenizer.ggml.merges", merges);
                }
            }
        }
        if write_gguf(
            &path,
            &md,
            items.iter().map(|(s, d)| (s.clone(), d.as_slice())),
        )
        .is_err()
        {
            continue;
        }
        let file = GgufFile::open(&path).unwrap();
        match import::import(&file) {
            Ok(_) => ok += 1,
            Err(e) => {
                assert!(e.import_error().is_some(), "{e}");
                refused += 1;
            }
        }
    }
    eprintln!("mutants: {ok} imported, {refused} refused");
    assert!(refused > 100 && ok > 10, "{ok} imported, {refused} refused");
}

/// Byte-level mutations of the header (metadata and tensor infos) of a small
/// model: whatever the parser accepts, the import must not panic on.
#[test]
fn mutated_headers_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let base = tiny(Arch::Qwen3, 16, RopeScaling::None, true, false, 22);
    let file = write(dir.path(), "base.gguf", &base.md, &base.items);
    let header_len = file.data_offset() as usize;
    let bytes = std::fs::read(file.path()).unwrap();
    drop(file);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0x6864_7273);
    let (mut parsed, mut imported) = (0, 0);
    for _ in 0..3000 {
        let mut b = bytes.clone();
        for _ in 0..rng.random_range(1..4) {
            let i = rng.random_range(0..header_len - 8);
            if rng.random() {
                b[i] = rng.random();
            } else {
                let v: u64 =
                    [0, 1, 2, 255, u64::from(u32::MAX), rng.random()][rng.random_range(0..6)];
                b[i..i + 8].copy_from_slice(&v.to_le_bytes());
            }
        }
        let Ok(f) = GgufFile::from_bytes(b, "mutant.gguf") else {
            continue;
        };
        parsed += 1;
        if import::import(&f).is_ok() {
            imported += 1;
        }
    }
    eprintln!("header mutants: {parsed} parsed, {imported} imported");
    assert!(parsed > 100, "only {parsed} mutants parsed");
}

/// llama.cpp's own GGUF library writes a small Llama 3 model the way its
/// converter does (`GGUFWriter` helpers, `LlamaModel.permute` on Q/K,
/// `rope_freqs.weight` computed like `generate_extra_tensors`, Q8_0 and F16
/// tensors quantized by gguf-py). The import must give back the Hugging Face
/// tensors gguf-py's dequantization implies, the Llama 3 RoPE parameters, and
/// a Llama 3 tokenizer (BOS added, merges ignored for whole-word tokens).
const GGUF_PY_WRITER: &str = r#"
import json, math, os, sys
import numpy as np
import gguf
from gguf import GGMLQuantizationType as Q

out = sys.argv[1]
rng = np.random.default_rng(7)
n_embd, n_head, n_kv, hd, n_ff, n_layer = 64, 4, 2, 16, 96, 2
tokens = ["a", "b", "c", "ab", "abc", "\u0120", "\u0120a", "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"]
vocab = len(tokens)

w = gguf.GGUFWriter(os.path.join(out, "model.gguf"), "llama")
w.add_block_count(n_layer)
w.add_context_length(256)
w.add_embedding_length(n_embd)
w.add_feed_forward_length(n_ff)
w.add_head_count(n_head)
w.add_head_count_kv(n_kv)
w.add_rope_freq_base(10000.0)
w.add_layer_norm_rms_eps(1e-5)
w.add_file_type(7)
w.add_vocab_size(vocab)
w.add_rope_dimension_count(hd)
w.add_tokenizer_model("gpt2")
w.add_tokenizer_pre("llama-bpe")
w.add_token_list(tokens)
w.add_token_types([1] * 7 + [3] * 3)
w.add_token_merges(["a b", "\u0120 a"])
w.add_bos_token_id(7)
w.add_eos_token_id(9)
w.add_add_bos_token(True)

def permute(x, n):  # convert_hf_to_gguf.py, LlamaModel.permute
    return x.reshape(n, 2, x.shape[0] // n // 2, *x.shape[1:]).swapaxes(1, 2).reshape(x.shape)

manifest = []
def add(name, hf_name, x, heads=None, qtype=Q.F32):
    g = permute(x, heads) if heads else x
    if qtype == Q.F32:
        data, deq = g, g
    elif qtype == Q.F16:
        data = g.astype(np.float16)
        deq = data.astype(np.float32)
    else:
        data = gguf.quants.quantize(g, qtype)
        deq = gguf.quants.dequantize(data, qtype).reshape(g.shape).astype(np.float32)
    if heads:
        # Row i of the GGUF tensor holds Hugging Face row idx[i].
        idx = permute(np.arange(x.shape[0]), heads)
        back = np.empty_like(deq)
        back[idx] = deq
        deq = back
    w.add_tensor(name, data, raw_dtype=None if qtype in (Q.F32, Q.F16) else qtype)
    f = os.path.join(out, f"t{len(manifest)}.f32")
    deq.astype(np.float32).tofile(f)
    manifest.append({"name": hf_name, "shape": list(x.shape), "file": f, "type": qtype.name})

r = lambda *s: (rng.standard_normal(s) * 0.1).astype(np.float32)
add("token_embd.weight", "model.embed_tokens.weight", r(vocab, n_embd))
add("output_norm.weight", "model.norm.weight", r(n_embd) + 1)
add("output.weight", "lm_head.weight", r(vocab, n_embd), qtype=Q.Q8_0)
for b in range(n_layer):
    p = f"model.layers.{b}"
    add(f"blk.{b}.attn_norm.weight", f"{p}.input_layernorm.weight", r(n_embd) + 1)
    add(f"blk.{b}.attn_q.weight", f"{p}.self_attn.q_proj.weight", r(n_head * hd, n_embd), heads=n_head, qtype=Q.Q8_0)
    add(f"blk.{b}.attn_k.weight", f"{p}.self_attn.k_proj.weight", r(n_kv * hd, n_embd), heads=n_kv, qtype=Q.F16)
    add(f"blk.{b}.attn_v.weight", f"{p}.self_attn.v_proj.weight", r(n_kv * hd, n_embd), qtype=Q.Q8_0)
    add(f"blk.{b}.attn_output.weight", f"{p}.self_attn.o_proj.weight", r(n_embd, n_head * hd))
    add(f"blk.{b}.ffn_norm.weight", f"{p}.post_attention_layernorm.weight", r(n_embd) + 1)
    add(f"blk.{b}.ffn_gate.weight", f"{p}.mlp.gate_proj.weight", r(n_ff, n_embd), qtype=Q.F16)
    add(f"blk.{b}.ffn_up.weight", f"{p}.mlp.up_proj.weight", r(n_ff, n_embd))
    add(f"blk.{b}.ffn_down.weight", f"{p}.mlp.down_proj.weight", r(n_embd, n_ff), qtype=Q.Q8_0)

# LlamaModel.generate_extra_tensors, in float32 like its torch code.
base, factor, low, high, old = 10000.0, 8.0, 1.0, 4.0, 64
freqs = np.float32(1.0) / (np.float32(base) ** (np.arange(0, hd, 2, dtype=np.float32) / np.float32(hd)))
lw, hw = old / low, old / high
rf = []
for f in freqs:
    wl = np.float32(2 * math.pi) / f
    if wl < hw:
        rf.append(1)
    elif wl > lw:
        rf.append(factor)
    else:
        s = (np.float32(old) / wl - low) / (high - low)
        rf.append(1 / ((1 - s) / factor + s))
w.add_tensor("rope_freqs.weight", np.array(rf, dtype=np.float32))

w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()
json.dump(manifest, open(os.path.join(out, "manifest.json"), "w"))
"#;

#[test]
fn gguf_py_written_llama3_model_imports() {
    let Some(py) = common::gguf_python() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("write.py");
    std::fs::write(&script, GGUF_PY_WRITER).unwrap();
    let o = Command::new(py)
        .arg(&script)
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "gguf-py writer failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let file = GgufFile::open(dir.path().join("model.gguf")).unwrap();
    let imp = import::import(&file).unwrap();

    let manifest = read_json(&dir.path().join("manifest.json"));
    let manifest = manifest.as_array().unwrap();
    assert_eq!(imp.tensors.len(), manifest.len());
    for m in manifest {
        let name = m["name"].as_str().unwrap();
        let t = imp.tensor(name).unwrap_or_else(|| panic!("no {name}"));
        let shape: Vec<usize> = m["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(t.shape, shape, "{name}");
        let want: Vec<f32> = std::fs::read(m["file"].as_str().unwrap())
            .unwrap()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        assert!(
            t.data
                .iter()
                .zip(&want)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{name} ({}) differs from gguf-py's dequantization",
            m["type"]
        );
        assert_eq!(
            imp.types[name].name(),
            m["type"].as_str().unwrap(),
            "{name}"
        );
    }

    let c = &imp.config;
    assert_eq!(c["model_type"], "llama");
    assert_eq!(c["tie_word_embeddings"], false);
    assert_eq!(c["head_dim"], 16);
    assert_eq!(
        (c["bos_token_id"].clone(), c["eos_token_id"].clone()),
        (json!(7), json!(9))
    );
    let rs = &c["rope_scaling"];
    eprintln!("rope_scaling from gguf-py's rope_freqs: {rs}");
    assert_eq!(rs["rope_type"], "llama3");
    assert_eq!(rs["factor"], 8.0);
    // Only the thresholds L/low = 64 and L/high = 16 are identifiable.
    let l = rs["original_max_position_embeddings"].as_f64().unwrap();
    let (lo, hi) = (
        rs["low_freq_factor"].as_f64().unwrap(),
        rs["high_freq_factor"].as_f64().unwrap(),
    );
    assert!(
        (l / lo - 64.0).abs() < 1e-3 && (l / hi - 16.0).abs() < 1e-3,
        "{rs}"
    );

    let tok = Tokenizer::from_str(&imp.tokenizer_json).unwrap();
    let ids = |s: &str, special: bool| tok.encode(s, special).unwrap().get_ids().to_vec();
    assert_eq!(ids("abc", true), [7, 4]); // BOS, and "abc" whole (ignore_merges)
    assert_eq!(ids("abc a", false), [4, 6]);
    assert_eq!(ids("ab<|eot_id|>", false), [3, 9]);
    assert_eq!(
        tok.decode(&[7, 4, 6, 9], false).unwrap(),
        "<|begin_of_text|>abc a<|eot_id|>"
    );
}
