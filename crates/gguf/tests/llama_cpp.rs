//! llama.cpp as the referee: it loads our GGUF of the demo model, computes a
//! sane perplexity, and tokenizes exactly like Hugging Face tokenizers on our
//! tokenizer metadata. Skipped (with a note) when the tools are not built; see
//! `scripts/build-llama-cpp.sh`.

mod common;

use std::path::Path;
use std::process::Command;

use dynapress_gguf::{GgmlType, GgufFile};

fn run(cmd: &mut Command) -> (String, String) {
    let out = cmd.output().expect("spawn llama.cpp tool");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{stderr}\n{stdout}",
        out.status
    );
    (stdout, stderr)
}

/// Runs `llama-perplexity` on docs.test.txt and returns the running
/// perplexity after chunk `want` and the whole output.
///
/// llama.cpp's logger is asynchronous and deliberately never flushed at exit
/// (llama.cpp issue #22142), so the last lines of the output — the last
/// chunks' `[i]ppl,` estimates and the "Final estimate" line — are sometimes
/// lost when the output is a pipe. So the run computes 8 chunks more than
/// wanted and reads the running estimate after chunk `want` (the same number
/// a `--chunks want` run reports as final), and is repeated (up to 5 times)
/// until that estimate is there.
fn perplexity_run(bin: &Path, model: &Path, args: &[&str], want: usize) -> (f64, String) {
    let text = common::repo_root().join("assets/data/docs.test.txt");
    let mut last = String::new();
    for _ in 0..5 {
        let (stdout, stderr) = run(Command::new(bin.join("llama-perplexity"))
            .arg("-m")
            .arg(model)
            .arg("-f")
            .arg(&text)
            .args(args)
            .arg("--chunks")
            .arg((want + 8).to_string()));
        let all = format!("{stdout}\n{stderr}");
        let chunk = all
            .split(&format!("[{want}]"))
            .nth(1)
            .and_then(|s| s.split(',').next())
            .map(str::to_owned);
        if let Some(v) = chunk {
            let ppl = v
                .split_whitespace()
                .next()
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("cannot parse perplexity {v:?}"));
            return (ppl, all);
        }
        last = all;
    }
    panic!("no perplexity estimate for chunk {want} in 5 runs; last output:\n{last}");
}

/// `llama-perplexity -c 256` on docs.test.txt; returns the PPL over 64 chunks.
fn perplexity(bin: &Path, model: &Path) -> f64 {
    let (ppl, _) = perplexity_run(bin, model, &["-c", "256", "-t", "2"], 64);
    eprintln!("{}: PPL = {ppl}", model.display());
    ppl
}

#[test]
fn llama_perplexity_runs_on_f32_and_bf16_gguf() {
    let Some(bin) = common::llama_cpp_bin() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let f32_path = dir.path().join("demo-f32.gguf");
    let bf16_path = dir.path().join("demo-bf16.gguf");
    common::write_fixture_gguf(&f32_path, GgmlType::F32);
    common::write_fixture_gguf(&bf16_path, GgmlType::BF16);
    assert_eq!(
        GgufFile::open(&bf16_path)
            .unwrap()
            .tensor("blk.0.attn_q.weight")
            .unwrap()
            .ggml_type,
        GgmlType::BF16
    );

    let p32 = perplexity(&bin, &f32_path);
    let p16 = perplexity(&bin, &bf16_path);
    // The HF reference is 35.2 scoring every position of 256-token windows;
    // llama-perplexity scores only the second half of each window (positions
    // 128..255, which see more context), so its number is lower. A wrong Q/K
    // permutation or tokenizer gives hundreds to thousands.
    for p in [p32, p16] {
        assert!(p > 10.0 && p < 35.2, "perplexity {p} is not sane");
    }
    // The BF16 file holds the same bf16 weights as the F32 one (exactly
    // widened), so only the compute path differs.
    assert!((p32 - p16).abs() / p32 < 0.01, "F32 {p32} vs BF16 {p16}");
}

fn llama_tokenize(bin: &Path, model: &Path, text: &str, dir: &Path) -> Vec<u32> {
    let file = dir.join("prompt.txt");
    std::fs::write(&file, text).unwrap();
    let (stdout, _) = run(Command::new(bin.join("llama-tokenize"))
        .arg("-m")
        .arg(model)
        .arg("-f")
        .arg(&file)
        .args(["--ids", "--no-bos", "--no-escape", "--log-disable"]));
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

#[test]
fn llama_cpp_tokenizes_like_hf_tokenizers() {
    let Some(bin) = common::llama_cpp_bin() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("demo-f32.gguf");
    common::write_fixture_gguf(&model, GgmlType::F32);
    let hf =
        tokenizers::Tokenizer::from_file(common::fixture_dir().join("tokenizer.json")).unwrap();

    let mut texts: Vec<String> = vec![
        "fn main() { println!(\"Hello, world!\"); }".into(),
        "The borrow checker ensures references are valid.".into(),
        "def __init__(self, *args, **kwargs):\n    super().__init__()".into(),
        "  unicode: naïve café — “quotes” 🚀".into(),
        "a  b\n\n\tc   \n".into(),
        "\n(foo)\r\n[bar]\t{baz}".into(),
        "don't I'll WE'RE they've".into(),
        "3.14159 12345678 0x1F".into(),
        "日本語のテキスト, Ελληνικά, русский".into(),
        "   leading and trailing   ".into(),
        "text<|endoftext|>more".into(),
    ];
    // Whole prefixes of both test corpora.
    for f in ["docs.test.txt", "code.test.txt"] {
        let s = std::fs::read_to_string(common::repo_root().join("assets/data").join(f)).unwrap();
        let end = floor(&s, 30_000);
        texts.push(s[..end].to_owned());
    }
    for text in &texts {
        let ours = hf.encode(text.as_str(), false).unwrap().get_ids().to_vec();
        let theirs = llama_tokenize(&bin, &model, text, dir.path());
        assert_eq!(
            theirs,
            ours,
            "tokenization differs for {:?}",
            &text[..floor(text, 80)]
        );
    }
}

fn floor(s: &str, mut n: usize) -> usize {
    n = n.min(s.len());
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    n
}

/// A small random model of each architecture/variant we write: llama.cpp must
/// load it (every tensor name and shape, the metadata it needs) and run it.
/// The weights are random, so only finiteness of the perplexity is checked;
/// the printed hyper-parameters are checked against what we wrote.
#[test]
fn llama_cpp_loads_every_architecture_we_write() {
    use dynapress_gguf::model::{self, Arch, RopeScaling};
    use dynapress_gguf::{GgufWriter, LlamaHparams, TensorSpec, TokenizerMetadata, model_metadata};
    use rand::{RngExt, SeedableRng};

    let Some(bin) = common::llama_cpp_bin() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let tok = TokenizerMetadata::from_hf_dir(&common::fixture_dir(), Some(4096)).unwrap();
    let cases = [
        (
            "llama-linear",
            Arch::Llama,
            16,
            RopeScaling::Linear { factor: 4.0 },
            false,
        ),
        (
            "llama3-tied",
            Arch::Llama,
            16,
            RopeScaling::Llama3 {
                factor: 8.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_context_length: 64,
            },
            true,
        ),
        ("qwen2", Arch::Qwen2, 16, RopeScaling::None, false),
        ("qwen3-wide-heads", Arch::Qwen3, 32, RopeScaling::None, true),
    ];
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    for (label, arch, head_dim, rope_scaling, tied) in cases {
        let hp = LlamaHparams {
            arch,
            context_length: 256,
            embedding_length: 64,
            block_count: 2,
            feed_forward_length: 128,
            head_count: 4,
            head_count_kv: 2,
            head_dim,
            rope_freq_base: 10000.0,
            rope_scaling,
            rms_norm_eps: 1e-6,
            vocab_size: 4096,
            tie_word_embeddings: tied,
        };
        let (e, q, kv, ff) = (
            64usize,
            4 * head_dim as usize,
            2 * head_dim as usize,
            128usize,
        );
        let mut hf: Vec<(String, Vec<usize>)> = vec![
            ("model.embed_tokens.weight".into(), vec![4096, e]),
            ("model.norm.weight".into(), vec![e]),
        ];
        if !tied {
            hf.push(("lm_head.weight".into(), vec![4096, e]));
        }
        for l in 0..2 {
            let p = format!("model.layers.{l}");
            hf.extend([
                (format!("{p}.input_layernorm.weight"), vec![e]),
                (format!("{p}.self_attn.q_proj.weight"), vec![q, e]),
                (format!("{p}.self_attn.k_proj.weight"), vec![kv, e]),
                (format!("{p}.self_attn.v_proj.weight"), vec![kv, e]),
                (format!("{p}.self_attn.o_proj.weight"), vec![e, q]),
                (format!("{p}.post_attention_layernorm.weight"), vec![e]),
                (format!("{p}.mlp.gate_proj.weight"), vec![ff, e]),
                (format!("{p}.mlp.up_proj.weight"), vec![ff, e]),
                (format!("{p}.mlp.down_proj.weight"), vec![e, ff]),
            ]);
            if arch == Arch::Qwen2 {
                hf.extend([
                    (format!("{p}.self_attn.q_proj.bias"), vec![q]),
                    (format!("{p}.self_attn.k_proj.bias"), vec![kv]),
                    (format!("{p}.self_attn.v_proj.bias"), vec![kv]),
                ]);
            }
            if arch == Arch::Qwen3 {
                hf.extend([
                    (
                        format!("{p}.self_attn.q_norm.weight"),
                        vec![head_dim as usize],
                    ),
                    (
                        format!("{p}.self_attn.k_norm.weight"),
                        vec![head_dim as usize],
                    ),
                ]);
            }
        }
        let mut items: Vec<(TensorSpec, Vec<u8>)> = Vec::new();
        for (name, shape) in hf {
            let g = model::gguf_tensor_name(&name).unwrap().unwrap();
            let n: usize = shape.iter().product();
            let vals: Vec<f32> = if shape.len() == 1 && !name.ends_with(".bias") {
                vec![1.0; n]
            } else {
                (0..n).map(|_| (rng.random::<f32>() - 0.5) * 0.1).collect()
            };
            let mut bytes = common::f32_bytes(&vals);
            if let Some(h) = hp.qk_permute_heads(&g) {
                bytes = model::permute_qk_rows(&bytes, shape[0], h).unwrap();
            }
            items.push((TensorSpec::from_shape(g, GgmlType::F32, &shape), bytes));
        }
        if let Some(f) = hp.rope_freqs() {
            items.push((
                TensorSpec::from_shape(model::ROPE_FREQS_TENSOR, GgmlType::F32, &[f.len()]),
                common::f32_bytes(&f),
            ));
        }
        let path = dir.path().join(format!("{label}.gguf"));
        let md = model_metadata(label, &hp, &tok, model::file_type_for(GgmlType::F32));
        let mut w =
            GgufWriter::create(&path, &md, items.iter().map(|(s, _)| s.clone()).collect()).unwrap();
        for (s, d) in &items {
            w.write_tensor(&s.name, d).unwrap();
        }
        w.finish().unwrap();

        let (ppl, all) = perplexity_run(&bin, &path, &["-c", "128", "-t", "2", "-v"], 2);
        assert!(ppl.is_finite() && ppl > 1.0, "{label}: perplexity {ppl}");
        let info = |key: &str| -> String {
            all.lines()
                .find_map(|l| {
                    l.split_once(&format!("print_info: {key}"))
                        .map(|(_, v)| v.trim_start_matches([' ', '=']).trim().to_owned())
                })
                .unwrap_or_else(|| panic!("{label}: llama.cpp did not print {key}:\n{all}"))
        };
        assert_eq!(info("arch "), arch.name(), "{label}");
        assert_eq!(info("n_embd_head_k "), head_dim.to_string(), "{label}");
        assert_eq!(info("n_rot "), head_dim.to_string(), "{label}");
        assert_eq!(info("n_head_kv "), "2", "{label}");
        let scale = if let RopeScaling::Linear { factor } = rope_scaling {
            1.0 / factor
        } else {
            1.0
        };
        assert_eq!(
            info("freq_scale_train ").parse::<f32>().unwrap(),
            scale,
            "{label}"
        );
        eprintln!("{label}: loaded, ppl on random weights {ppl:.0}");
    }
}
