//! Depth pruning: dropped sublayers in every forward path, `dynapress prune`
//! (exact budget, deterministic baselines, EvoPress no worse than the best
//! baseline), `eval --config` and the Hugging Face and GGUF exports of
//! dropped blocks.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::Tensor;
use dynapress::model::{DepthConfig, KvCache, LinearId, LinearKind, Model, Sublayer};

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn ids(model: &Model, n: usize) -> Vec<u32> {
    let v = model.config.vocab_size as u32;
    (0..n as u32).map(|i| (i * 37 + 11) % v).collect()
}

/// The Qwen2 fixture (q/k/v biases) in a temp dir with the demo tokenizer.
fn qwen2() -> (Model, tempfile::TempDir) {
    let src = common::root().join("tests/fixtures/tiny/qwen2");
    let tmp = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, tmp.path().join(p.file_name().unwrap())).unwrap();
    }
    std::fs::copy(
        common::demo_model().join("tokenizer.json"),
        tmp.path().join("tokenizer.json"),
    )
    .unwrap();
    (Model::load(tmp.path()).unwrap(), tmp)
}

/// Logits of the last position by the KV cache: a prefix, then one token at a time.
fn cached_last(model: &Model, ids: &[u32]) -> Vec<f32> {
    let mut caches = vec![KvCache::default(); model.blocks().len()];
    let split = ids.len() - 3;
    model
        .forward_cached(&ids[..split], 1, split, &mut caches)
        .unwrap();
    let mut last = None;
    for &id in &ids[split..] {
        last = Some(model.forward_cached(&[id], 1, 1, &mut caches).unwrap());
    }
    flat(&last.unwrap())
}

fn last_row(all: &[f32], vocab: usize) -> Vec<f32> {
    all[all.len() - vocab..].to_vec()
}

#[test]
fn dropping_every_sublayer_leaves_head_of_norm_of_embeddings() {
    for mut model in [Model::load(&common::demo_model()).unwrap(), qwen2().0] {
        let n = model.blocks().len();
        for b in 0..n {
            for s in Sublayer::ALL {
                model.set_dropped(b, s, true).unwrap();
            }
        }
        assert_eq!(model.dropped().len(), 2 * n);
        let t = 12;
        let ids = ids(&model, 2 * t);
        let expect = flat(
            &model
                .head()
                .forward(&model.embed(&ids, 2, t).unwrap())
                .unwrap(),
        );
        let fast = model.forward_vec(&ids, 2, t).unwrap();
        let reference = flat(&model.forward_reference(&ids, 2, t).unwrap());
        assert!(max_diff(&fast, &expect) < 1e-4, "fused path");
        assert!(max_diff(&reference, &expect) < 1e-4, "candle path");
        let v = model.config.vocab_size;
        let cached = cached_last(&model, &ids[..t]);
        let full = flat(&model.forward_reference(&ids[..t], 1, t).unwrap());
        assert!(max_diff(&cached, &last_row(&full, v)) < 1e-4, "KV cache");
    }
}

/// Dropping a branch equals zeroing its output projection (neither model
/// has an o_proj or down_proj bias), computed with the candle path; the
/// fused path, the KV cache and the block-by-block path must all agree.
#[test]
fn dropping_one_sublayer_equals_zeroing_its_output_projection() {
    let (q, _tmp) = qwen2();
    for (model, block) in [(Model::load(&common::demo_model()).unwrap(), 3), (q, 1)] {
        assert!(!model.config.o_bias && !model.config.mlp_bias);
        let t = 16;
        let ids = ids(&model, 2 * t);
        let v = model.config.vocab_size;
        let undropped = model.forward_vec(&ids, 2, t).unwrap();
        for (sub, kind) in [
            (Sublayer::Attn, LinearKind::O),
            (Sublayer::Mlp, LinearKind::Down),
        ] {
            let mut zeroed = model.clone();
            let id = LinearId { block, kind };
            let w = zeroed.linear_weight(&id.weight_name()).unwrap();
            zeroed.set_linear(id, &w.zeros_like().unwrap()).unwrap();
            let expect = flat(&zeroed.forward_reference(&ids, 2, t).unwrap());

            let mut dropped = model.clone();
            dropped.set_dropped(block, sub, true).unwrap();
            let fast = dropped.forward_vec(&ids, 2, t).unwrap();
            let reference = flat(&dropped.forward_reference(&ids, 2, t).unwrap());
            assert!(
                max_diff(&fast, &expect) < 1e-4,
                "{sub:?}: fused {}",
                max_diff(&fast, &expect)
            );
            assert!(max_diff(&reference, &expect) < 1e-4, "{sub:?}: candle");
            assert!(
                max_diff(&fast, &undropped) > 1e-3,
                "{sub:?}: dropping changed nothing"
            );
            let cached = cached_last(&dropped, &ids[..t]);
            let full = flat(&zeroed.forward_reference(&ids[..t], 1, t).unwrap());
            assert!(
                max_diff(&cached, &last_row(&full, v)) < 1e-4,
                "{sub:?}: KV cache"
            );
            // Restoring gives the original model back.
            dropped.set_dropped(block, sub, false).unwrap();
            assert_eq!(dropped.forward_vec(&ids, 2, t).unwrap(), undropped);
        }
    }
}

fn run(args: &[&str]) -> std::process::Output {
    Command::new(common::bin()).args(args).output().unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `dynapress prune` on the demo with a small, fast schedule.
fn prune(out: &Path, drop: usize, whole: bool) -> serde_json::Value {
    prune_budget(out, &["--drop", &drop.to_string()], whole)
}

fn prune_budget(out: &Path, budget: &[&str], whole: bool) -> serde_json::Value {
    let model = common::demo_model();
    let calib = common::data("docs.valid.txt");
    let mut args = vec![
        "prune",
        "--model",
        s(&model),
        "--calib",
        s(&calib),
        "--out",
        s(out),
        "--calib-tokens",
        "4096",
        "--seq-len",
        "128",
        "--generations",
        "4",
        "--offspring",
        "6",
        "--stages",
        "512:2,1024:1",
        "--json",
        "--quiet",
        "--force",
    ];
    args.extend_from_slice(budget);
    if whole {
        args.push("--whole-blocks");
    }
    let o = run(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

fn read(dir: &Path, method: &str) -> DepthConfig {
    DepthConfig::read(&dir.join(format!("{method}.json"))).unwrap()
}

#[test]
fn prune_keeps_the_budget_and_evopress_is_no_worse_than_the_baselines() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    prune(&a, 3, false);
    let methods = ["last", "shortgpt", "kl-alone", "evopress"];
    let cfgs: Vec<DepthConfig> = methods.iter().map(|m| read(&a, m)).collect();
    for c in &cfgs {
        assert_eq!(c.dropped.len(), 3, "{}: budget not exact", c.method);
        assert!(!c.whole_blocks);
    }
    assert_eq!(
        cfgs[0]
            .dropped
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>(),
        ["6.mlp", "7.attn", "7.mlp"]
    );
    let best = cfgs[..3]
        .iter()
        .map(|c| c.calib_kl.unwrap())
        .fold(f64::INFINITY, f64::min);
    let evo = cfgs[3].calib_kl.unwrap();
    assert!(evo <= best, "evopress {evo} > best baseline {best}");
    assert!(evo > 0.0);
    // Baselines are deterministic: a second run chooses the same.
    let b = tmp.path().join("b");
    prune(&b, 3, false);
    for m in methods {
        assert_eq!(read(&a, m).dropped, read(&b, m).dropped, "{m}");
    }
}

#[test]
fn a_parameter_budget_leaves_at_most_that_many_parameters() {
    // 7 M of the demo model's 8,392,960: an MLP with its norm is 590,080
    // parameters, so two MLPs are not enough and three are.
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    let summary = prune_budget(&a, &["--target-params", "7M"], false);
    let total = summary["total_params"].as_u64().unwrap();
    let sizes: Vec<u64> = summary["unit_params"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    // Every parameter is in the embeddings, the head, the final norm or a unit.
    let files = dynapress::model::ModelFiles::open(&common::demo_model()).unwrap();
    let c = &files.config;
    let outside = (c.vocab_size * c.hidden_size * if c.tie_word_embeddings { 1 } else { 2 }
        + c.hidden_size) as u64;
    assert_eq!(total, outside + sizes.iter().sum::<u64>());
    for m in ["last", "shortgpt", "kl-alone", "evopress"] {
        let cfg = read(&a, m);
        let params = cfg.params.unwrap();
        assert!(params <= 7_000_000, "{m}: {params}");
        let removed: u64 = cfg
            .dropped
            .iter()
            .map(|id| sizes[2 * id.block + id.sublayer as usize])
            .sum();
        assert_eq!(params, total - removed, "{m}");
        // Minimal: putting back any dropped unit exceeds the budget.
        let smallest = cfg
            .dropped
            .iter()
            .map(|id| sizes[2 * id.block + id.sublayer as usize])
            .min()
            .unwrap();
        assert!(
            params + smallest > 7_000_000,
            "{m}: dropped more than needed"
        );
    }
    // A budget the model already meets, or one that would drop everything.
    for p in ["9M", "1000"] {
        let o = run(&[
            "prune",
            "--model",
            s(&common::demo_model()),
            "--calib",
            s(&common::data("docs.valid.txt")),
            "--target-params",
            p,
            "--out",
            s(&tmp.path().join("x")),
        ]);
        assert_eq!(o.status.code(), Some(2), "{p}");
        assert!(String::from_utf8_lossy(&o.stderr).contains("--target-params"));
    }
}

#[test]
fn whole_block_export_loads_back_with_the_same_logits() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("p");
    prune(&dir, 2, true);
    let cfg_path = dir.join("evopress.json");
    let cfg = DepthConfig::read(&cfg_path).unwrap();
    assert_eq!(cfg.dropped.len(), 4);
    assert!(cfg.partial_blocks().is_empty());
    let out = tmp.path().join("hf");
    let model = common::demo_model();
    let o = run(&[
        "export",
        "--model",
        s(&model),
        "--config",
        s(&cfg_path),
        "--out",
        s(&out),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["num_hidden_layers"], 6);

    let mut in_memory = Model::load(&model).unwrap();
    cfg.apply(&mut in_memory).unwrap();
    let exported = Model::load(&out).unwrap();
    assert_eq!(exported.blocks().len(), 6);
    let t = 32;
    let ids = ids(&exported, 2 * t);
    let a = in_memory.forward_vec(&ids, 2, t).unwrap();
    let b = exported.forward_vec(&ids, 2, t).unwrap();
    assert!(max_diff(&a, &b) < 1e-5, "{}", max_diff(&a, &b));

    // eval --config applies the same configuration as the export.
    let data = common::data("docs.test.txt");
    let eval = |extra: &[&str], m: &PathBuf| {
        let mut args = vec![
            "eval",
            "--model",
            s(m),
            "--data",
            s(&data),
            "--seq-len",
            "64",
            "--windows",
            "4",
            "--json",
            "--quiet",
        ];
        args.extend_from_slice(extra);
        let o = run(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    };
    let ppl = |text: &str| -> f64 {
        let v: serde_json::Value = serde_json::from_str(text).unwrap();
        v["datasets"]["docs.test.txt"]["perplexity"]
            .as_f64()
            .unwrap_or_else(|| panic!("{v}"))
    };
    let p_mem = ppl(&eval(&["--config", s(&cfg_path)], &model));
    let p_exp = ppl(&eval(&[], &out));
    assert!((p_mem - p_exp).abs() / p_mem < 1e-5, "{p_mem} vs {p_exp}");
}

#[test]
fn partial_blocks_are_refused_by_the_hf_export_and_bad_budgets_are_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let model = common::demo_model();
    let cfg = DepthConfig::new(
        8,
        "hand",
        false,
        vec![dynapress::model::SublayerId {
            block: 2,
            sublayer: Sublayer::Attn,
        }],
        None,
    );
    let path = tmp.path().join("c.json");
    cfg.write(&path).unwrap();
    let out = tmp.path().join("hf");
    let o = run(&[
        "export",
        "--model",
        s(&model),
        "--config",
        s(&path),
        "--out",
        s(&out),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("only one sublayer dropped"), "{err}");
    assert!(!out.exists());

    let calib = common::data("docs.valid.txt");
    for (drop, whole) in [("16", false), ("0", false), ("8", true)] {
        let mut args = vec![
            "prune",
            "--model",
            s(&model),
            "--calib",
            s(&calib),
            "--drop",
            drop,
            "--out",
            s(tmp.path()),
        ];
        if whole {
            args.push("--whole-blocks");
        }
        let o = run(&args);
        assert_eq!(o.status.code(), Some(2), "--drop {drop}");
        assert!(String::from_utf8_lossy(&o.stderr).contains("--drop"));
    }
}

#[test]
fn whole_block_gguf_export_runs_in_llama_cpp_like_eval_config() {
    // A depth configuration exported as GGUF: fewer blocks, the same model as
    // `eval --config` (F32, so the perplexities agree to rounding), and
    // llama-perplexity of it agrees with `eval --protocol llama-perplexity`
    // within 1 % (issue 10).
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("p");
    prune(&dir, 2, true);
    let cfg_path = dir.join("evopress.json");
    let model = common::demo_model();
    let out = tmp.path().join("pruned.gguf");
    let o = run(&[
        "export",
        "--model",
        s(&model),
        "--config",
        s(&cfg_path),
        "--out",
        s(&out),
        "--format",
        "gguf",
        "--dtype",
        "f32",
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["block_count"], 6);
    assert_eq!(r["removed_blocks"].as_array().unwrap().len(), 2);
    let f = dynapress_gguf::GgufFile::open(&out).unwrap();
    assert_eq!(f.metadata().get_u64("llama.block_count").unwrap(), 6);
    assert!(f.tensor("blk.5.attn_q.weight").is_some());
    assert!(f.tensor("blk.6.attn_q.weight").is_none());
    // An existing output needs --force.
    let again = run(&[
        "export",
        "--model",
        s(&model),
        "--config",
        s(&cfg_path),
        "--out",
        s(&out),
        "--format",
        "gguf",
    ]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));

    let data = common::data("docs.test.txt");
    let eval = |m: &Path, extra: &[&str]| -> f64 {
        let mut args = vec![
            "eval",
            "--model",
            s(m),
            "--data",
            s(&data),
            "--windows",
            "16",
            "--json",
            "--quiet",
        ];
        args.extend_from_slice(extra);
        let o = run(&args);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v["datasets"]["docs.test.txt"]["perplexity"]
            .as_f64()
            .unwrap_or_else(|| panic!("{v}"))
    };
    let p_cfg = eval(&model, &["--config", s(&cfg_path)]);
    let p_gguf = eval(&out, &[]);
    assert!((p_cfg - p_gguf).abs() / p_cfg < 1e-4, "{p_cfg} vs {p_gguf}");

    let Some(bin) = common::tools::llama_bin() else {
        return;
    };
    let theirs = common::tools::llama_perplexity(&bin, &out, 16);
    let ours = eval(&out, &["--protocol", "llama-perplexity"]);
    let rel = (ours - theirs).abs() / theirs;
    eprintln!(
        "llama-perplexity {theirs}, dynapress {ours} ({:.3} %)",
        rel * 100.0
    );
    assert!(rel < 0.01, "llama.cpp {theirs} vs dynapress {ours}");
}

#[test]
fn sublayer_configuration_exports_as_a_deci_gguf_that_llama_cpp_runs_like_eval_config() {
    // Blocks keeping one sublayer: llama.cpp's deci architecture (per-layer
    // head counts and FFN widths). Block 0's attention (the linear-attention
    // stand-in), a middle attention, two MLPs (zero FFNs) and a whole block.
    let tmp = tempfile::tempdir().unwrap();
    let model = common::demo_model();
    let id = |block, sublayer| dynapress::model::SublayerId { block, sublayer };
    let cfg = DepthConfig::new(
        8,
        "hand",
        false,
        vec![
            id(0, Sublayer::Attn),
            id(2, Sublayer::Mlp),
            id(4, Sublayer::Attn),
            id(6, Sublayer::Attn),
            id(6, Sublayer::Mlp),
            id(7, Sublayer::Mlp),
        ],
        None,
    );
    let cfg_path = tmp.path().join("c.json");
    cfg.write(&cfg_path).unwrap();
    let out = tmp.path().join("deci.gguf");
    let o = run(&[
        "export",
        "--model",
        s(&model),
        "--config",
        s(&cfg_path),
        "--out",
        s(&out),
        "--format",
        "gguf",
        "--dtype",
        "f32",
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["architecture"], "deci");
    assert_eq!(r["block_count"], 7);
    assert_eq!(r["attention_dropped"], serde_json::json!([0, 4]));
    assert_eq!(r["mlp_dropped"], serde_json::json!([2, 6]));
    let f = dynapress_gguf::GgufFile::open(&out).unwrap();
    let md = f.metadata();
    assert_eq!(md.get_str("general.architecture").unwrap(), "deci");
    assert_eq!(md.get_u64("deci.block_count").unwrap(), 7);
    let ints = |k: &str| match md.get_array(k).unwrap() {
        dynapress_gguf::Array::I32(v) => v.clone(),
        a => panic!("{k}: {a:?}"),
    };
    let cfg8 = dynapress::model::ModelFiles::open(&model).unwrap().config;
    let (h, kv, ff) = (
        cfg8.num_heads as i32,
        cfg8.num_kv_heads as i32,
        cfg8.intermediate_size as i32,
    );
    assert_eq!(ints("deci.attention.head_count"), [h, h, h, h, 0, h, h]);
    assert_eq!(
        ints("deci.attention.head_count_kv"),
        [0, kv, kv, kv, 0, kv, kv]
    );
    let z = dynapress::export::depth::DECI_ZERO_FFN as i32;
    assert_eq!(ints("deci.feed_forward_length"), [ff, ff, z, ff, ff, ff, z]);
    assert!(f.tensor("blk.0.attn_q.weight").is_none());
    assert!(f.tensor("blk.0.attn_output.weight").is_some());
    assert!(f.tensor("blk.4.attn_norm.weight").is_none());
    assert!(f.tensor("blk.1.attn_q.weight").is_some());
    // A zero FFN adds nothing: every byte of it is 0.
    let down = f.tensor_bytes("blk.2.ffn_down.weight").unwrap();
    assert!(!down.is_empty() && down.iter().all(|&b| b == 0));

    let Some(bin) = common::tools::llama_bin() else {
        return;
    };
    let data = common::data("docs.test.txt");
    let o = run(&[
        "eval",
        "--model",
        s(&model),
        "--config",
        s(&cfg_path),
        "--data",
        s(&data),
        "--windows",
        "16",
        "--protocol",
        "llama-perplexity",
        "--json",
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let ours = v["datasets"]["docs.test.txt"]["perplexity"]
        .as_f64()
        .unwrap();
    let theirs = common::tools::llama_perplexity(&bin, &out, 16);
    let rel = (ours - theirs).abs() / theirs;
    eprintln!(
        "deci: llama-perplexity {theirs}, dynapress eval --config {ours} ({:.4} %)",
        rel * 100.0
    );
    assert!(rel < 0.01, "llama.cpp {theirs} vs dynapress {ours}");
}

#[test]
fn a_killed_prune_resumes_to_the_same_configuration() {
    let tmp = tempfile::tempdir().unwrap();
    let model = common::demo_model();
    let calib = common::data("docs.valid.txt");
    let args = |out: &Path| -> Vec<String> {
        [
            "prune",
            "--model",
            s(&model),
            "--calib",
            s(&calib),
            "--drop",
            "4",
            "--out",
            s(out),
            "--calib-tokens",
            "4096",
            "--seq-len",
            "128",
            "--generations",
            "5",
            "--offspring",
            "6",
            "--stages",
            "512:2,1024:1",
            "--json",
            "--quiet",
        ]
        .iter()
        .map(|x| x.to_string())
        .collect()
    };
    let go = |v: &[String]| run(&v.iter().map(|x| x.as_str()).collect::<Vec<_>>());
    let a = tmp.path().join("a");
    let o = go(&args(&a));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let whole: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();

    let b = tmp.path().join("b");
    let mut killed = args(&b);
    killed.extend(["--abort-after".to_string(), "2".to_string()]);
    let o = go(&killed);
    assert!(!o.status.success(), "the abort did not happen");
    let ck: serde_json::Value =
        serde_json::from_slice(&std::fs::read(b.join("checkpoint.json")).unwrap()).unwrap();
    assert_eq!(ck["generations_done"], 2);
    // The same --out without --force resumes.
    let o = go(&args(&b));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let resumed: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(read(&a, "evopress"), read(&b, "evopress"));
    assert_eq!(whole["history"], resumed["history"]);
    assert_eq!(whole["history"].as_array().unwrap().len(), 5);

    // Another budget in the same --out is refused, naming the checkpoint.
    let mut other = args(&b);
    let i = other.iter().position(|x| x == "4").unwrap();
    other[i] = "3".into();
    let o = go(&other);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("checkpoint"), "{err}");
}

#[test]
fn compress_prune_depth_searches_exports_and_reports_every_method() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("c");
    let calib = common::data("docs.valid.txt");
    let eval = common::data("docs.test.txt");
    let o = run(&[
        "compress",
        "--prune",
        "depth",
        "--model",
        s(&common::demo_model()),
        "--calib",
        s(&calib),
        "--eval",
        s(&eval),
        "--out",
        s(&out),
        "--calib-tokens",
        "4096",
        "--seq-len",
        "128",
        "--generations",
        "3",
        "--offspring",
        "4",
        "--stages",
        "512:2,1024:1",
        "--eval-windows",
        "8",
        "--json",
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    // --format safetensors: whole blocks, 1/8 of the 8 by default.
    assert_eq!(r["whole_blocks"], true);
    assert_eq!(r["budget"], "drop 1 block");
    let rows = r["rows"].as_array().unwrap();
    let names: Vec<&str> = rows.iter().map(|x| x["method"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "last",
            "shortgpt",
            "kl-alone",
            "evopress",
            "exported (Hugging Face directory)"
        ]
    );
    let kl = |i: usize| rows[i]["datasets"]["docs.test.txt"]["kl"].as_f64().unwrap();
    // The exported directory, loaded back, is EvoPress's configuration.
    assert!(
        (kl(3) - kl(4)).abs() <= 1e-6 * kl(3).max(1e-3),
        "{} vs {}",
        kl(3),
        kl(4)
    );
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row["dropped"].as_array().unwrap().len(), 2, "{}", names[i]);
        assert!(kl(i) > 0.0);
    }
    let cfg = DepthConfig::read(&out.join("depth/evopress.json")).unwrap();
    assert_eq!(
        cfg.dropped
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>(),
        rows[3]["dropped"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    );
    let hf: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("model/config.json")).unwrap()).unwrap();
    assert_eq!(hf["num_hidden_layers"], 7);
    for f in ["report.json", "report.md", "report.html"] {
        assert!(out.join(f).is_file(), "{f}");
    }

    // Budgets and options that do not go together are usage errors.
    let model = common::demo_model();
    let bad_out = tmp.path().join("bad");
    for bad in [
        &["--prune", "depth", "--target-bits", "3"][..],
        &["--prune", "depth", "--format", "compressed-tensors"],
        &["--drop", "2"],
        &["--prune", "sparsity", "--method", "gptq"],
        &["--prune", "depth", "--drop", "8"],
    ] {
        let mut args = vec![
            "compress",
            "--model",
            s(&model),
            "--calib",
            s(&calib),
            "--eval",
            s(&eval),
            "--out",
            s(&bad_out),
        ];
        args.extend_from_slice(bad);
        let o = run(&args);
        assert_eq!(
            o.status.code(),
            Some(2),
            "{bad:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
}
