//! Forward-pass parity on tiny random checkpoints of every supported
//! architecture (`tests/fixtures/tiny`, made by `scripts/make_tiny_models.py`
//! with transformers 5.23): Qwen2 biases + tied embeddings + 4.x config keys,
//! Qwen3 q/k norms and head_dim ≠ hidden/heads, Llama 3 RoPE scaling with f16
//! shards, Mistral's sliding window, tied bf16 Llama.

mod common;

use std::path::PathBuf;

use common::{max_diff, read_json, reference_logits};
use dynapress::model::Model;
use dynapress::model::generate::{GenerateOptions, generate};

/// Copies a fixture and the demo tokenizer into a temp dir and loads it.
fn load(name: &str) -> (Model, tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let src = common::tiny_model(name, tmp.path());
    let m = Model::load(tmp.path()).unwrap_or_else(|e| panic!("{name}: {e}"));
    (m, tmp, src)
}

/// The logits of `ids` (`b` rows of `t`), flattened: by the fused CPU path,
/// or by the candle-ops path when `reference`.
fn logits(model: &Model, ids: &[u32], b: usize, t: usize, reference: bool) -> Vec<f32> {
    let out = if reference {
        model.forward_reference(ids, b, t)
    } else {
        model.forward(ids, b, t)
    };
    out.unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

fn check(name: &str) {
    let (model, _tmp, src) = load(name);
    let (ids, b, t, want) = reference_logits(&src.join("reference.safetensors"));
    let fast = logits(&model, &ids, b, t, false);
    let slow = logits(&model, &ids, b, t, true);
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

    let r = read_json(&src.join("reference.json"));
    let g = &r["greedy_generation"];
    let want_ids = common::ids(&g["generated_ids"]);
    let opts = GenerateOptions {
        max_new_tokens: want_ids.len(),
        stop_at_eos: false,
        ..Default::default()
    };
    let got = generate(&model, &common::ids(&g["prompt_ids"]), &opts, |_| Ok(())).unwrap();
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
    let a = logits(&model, ids, b, t, false);
    let r = logits(&model, ids, b, t, true);
    let d = max_diff(&a, &r);
    eprintln!("fused vs candle ops: {d:e}");
    assert!(d < 1e-4, "{d}");
}
