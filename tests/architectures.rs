//! Forward-pass parity on tiny random checkpoints of every supported
//! architecture (`tests/fixtures/tiny`, made by `scripts/make_tiny_models.py`
//! with transformers 5.23): Qwen2 biases + tied embeddings + 4.x config keys,
//! Qwen3 q/k norms and head_dim ≠ hidden/heads, Llama 3 RoPE scaling with f16
//! shards, Mistral's sliding window, tied bf16 Llama.

mod common;

use std::path::{Path, PathBuf};

use dynapress::model::Model;
use dynapress::model::generate::{GenerateOptions, generate};
use safetensors::SafeTensors;

/// Copies a fixture and the demo tokenizer into a temp dir and loads it.
fn load(name: &str) -> (Model, tempfile::TempDir, PathBuf) {
    let src = common::root().join("tests/fixtures/tiny").join(name);
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
    let m = Model::load(tmp.path()).unwrap_or_else(|e| panic!("{name}: {e}"));
    (m, tmp, src)
}

fn reference(dir: &Path) -> (Vec<u32>, usize, usize, Vec<f32>) {
    let bytes = std::fs::read(dir.join("reference.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let ids = st.tensor("input_ids").unwrap();
    let (b, t) = (ids.shape()[0], ids.shape()[1]);
    let ids = ids
        .data()
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u32)
        .collect();
    let logits = st
        .tensor("logits")
        .unwrap()
        .data()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    (ids, b, t, logits)
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn check(name: &str) {
    let (model, _tmp, src) = load(name);
    let (ids, b, t, want) = reference(&src);
    let fast = model
        .forward(&ids, b, t)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let slow = model
        .forward_reference(&ids, b, t)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let (df, ds) = (max_diff(&fast, &want), max_diff(&slow, &want));
    eprintln!("{name}: max |Δlogit| fused {df:e}, candle ops {ds:e}");
    assert!(
        df < 1e-3,
        "{name}: fused path differs from transformers by {df}"
    );
    assert!(
        ds < 1e-3,
        "{name}: candle-ops path differs from transformers by {ds}"
    );

    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("reference.json")).unwrap())
            .unwrap();
    let g = &r["greedy_generation"];
    let v = |k: &str| -> Vec<u32> {
        g[k].as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect()
    };
    let want_ids = v("generated_ids");
    let opts = GenerateOptions {
        max_new_tokens: want_ids.len(),
        stop_at_eos: false,
        ..Default::default()
    };
    let got = generate(&model, &v("prompt_ids"), &opts, |_| Ok(())).unwrap();
    assert_eq!(got, want_ids, "{name}: greedy generation with KV cache");
}

#[test]
fn qwen2_biases_tied_4x_keys() {
    check("qwen2");
}

#[test]
fn qwen3_qk_norm_head_dim() {
    check("qwen3");
}

#[test]
fn llama3_rope_scaling_f16_shards() {
    check("llama3");
}

#[test]
fn mistral_sliding_window() {
    check("mistral");
}

#[test]
fn llama_tied_bf16_4x_keys() {
    check("llama-tied-4x");
}

/// The fused CPU path and the candle-ops path agree on the trained demo model.
#[test]
fn fused_path_matches_candle_ops_on_demo_model() {
    let model = Model::load(&common::demo_model()).unwrap();
    let ids = model
        .tokenizer
        .encode(&std::fs::read_to_string(common::data("code.valid.txt")).unwrap()[..20000])
        .unwrap();
    let (b, t) = (3, 200);
    let ids = &ids[..b * t];
    let a = model
        .forward(ids, b, t)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let r = model
        .forward_reference(ids, b, t)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let d = max_diff(&a, &r);
    eprintln!("fused vs candle ops: {d:e}");
    assert!(d < 1e-4, "{d}");
}
