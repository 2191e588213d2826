//! Random Llama checkpoints of any size, for memory and speed benchmarks and
//! shape tests (weights ~ N(0, 0.02²), norms 1, bf16; seeded). Any hidden size
//! that the heads divide works, including the ones ggml's 256-value k-quant
//! blocks cannot hold (576, 896, …), and the embeddings may be tied.

use std::collections::BTreeMap;
use std::path::Path;

use rand::RngExt;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use safetensors::Dtype;

use crate::error::{Error, Result};
use crate::formats::safetensors::{SafetensorsWriter, TensorSpec, encode_f32};

/// Shape of a synthetic Llama.
#[derive(Debug, Clone)]
pub struct SyntheticSpec {
    pub layers: usize,
    pub hidden: usize,
    pub intermediate: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub vocab: usize,
    /// Tied embeddings: no `lm_head.weight`, the embedding is the output layer
    /// (as in SmolLM2, Qwen2.5 ≤ 3B, Llama 3.2).
    pub tied: bool,
    pub seed: u64,
}

impl SyntheticSpec {
    /// Parameter count.
    pub fn parameters(&self) -> usize {
        let d = self.hidden / self.heads;
        let attn =
            self.hidden * (self.heads + 2 * self.kv_heads) * d + self.heads * d * self.hidden;
        let mlp = 3 * self.hidden * self.intermediate;
        let embeddings = if self.tied { 1 } else { 2 } * self.vocab * self.hidden;
        embeddings + self.layers * (attn + mlp + 2 * self.hidden) + self.hidden
    }
}

/// Writes `config.json`, `model.safetensors` (bf16) and a copy of `tokenizer`.
pub fn write_synthetic(dir: &Path, spec: &SyntheticSpec, tokenizer: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let d = spec.hidden / spec.heads;
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": spec.hidden, "intermediate_size": spec.intermediate,
        "num_hidden_layers": spec.layers, "num_attention_heads": spec.heads,
        "num_key_value_heads": spec.kv_heads, "head_dim": d, "vocab_size": spec.vocab,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 2048,
        "tie_word_embeddings": spec.tied, "hidden_act": "silu", "torch_dtype": "bfloat16",
        "bos_token_id": 0, "eos_token_id": 0,
    });
    crate::fsutil::write_atomic(
        &dir.join("config.json"),
        serde_json::to_string_pretty(&config)
            .expect("json")
            .as_bytes(),
    )?;
    std::fs::copy(tokenizer, dir.join("tokenizer.json")).map_err(|e| Error::io(tokenizer, e))?;

    let mut specs = vec![TensorSpec {
        name: "model.embed_tokens.weight".into(),
        dtype: Dtype::BF16,
        shape: vec![spec.vocab, spec.hidden],
    }];
    for i in 0..spec.layers {
        let p = |s: &str| format!("model.layers.{i}.{s}");
        let h = spec.hidden;
        for (name, shape) in [
            ("input_layernorm.weight", vec![h]),
            ("self_attn.q_proj.weight", vec![spec.heads * d, h]),
            ("self_attn.k_proj.weight", vec![spec.kv_heads * d, h]),
            ("self_attn.v_proj.weight", vec![spec.kv_heads * d, h]),
            ("self_attn.o_proj.weight", vec![h, spec.heads * d]),
            ("post_attention_layernorm.weight", vec![h]),
            ("mlp.gate_proj.weight", vec![spec.intermediate, h]),
            ("mlp.up_proj.weight", vec![spec.intermediate, h]),
            ("mlp.down_proj.weight", vec![h, spec.intermediate]),
        ] {
            specs.push(TensorSpec {
                name: p(name),
                dtype: Dtype::BF16,
                shape,
            });
        }
    }
    specs.push(TensorSpec {
        name: "model.norm.weight".into(),
        dtype: Dtype::BF16,
        shape: vec![spec.hidden],
    });
    if !spec.tied {
        specs.push(TensorSpec {
            name: "lm_head.weight".into(),
            dtype: Dtype::BF16,
            shape: vec![spec.vocab, spec.hidden],
        });
    }
    let mut w = SafetensorsWriter::create(
        &dir.join("model.safetensors"),
        specs.clone(),
        &BTreeMap::from([("format".to_string(), "pt".to_string())]),
    )?;
    for (k, s) in specs.iter().enumerate() {
        let n: usize = s.shape.iter().product();
        let values: Vec<f32> = if s.shape.len() == 1 {
            vec![1.0; n]
        } else {
            const CHUNK: usize = 1 << 16;
            let mut v = vec![0f32; n];
            v.par_chunks_mut(CHUNK).enumerate().for_each(|(c, out)| {
                let mut rng = ChaCha8Rng::seed_from_u64(spec.seed ^ ((k as u64) << 32) ^ c as u64);
                for pair in out.chunks_mut(2) {
                    // Box–Muller.
                    let u1: f32 = rng.random::<f32>().max(f32::MIN_POSITIVE);
                    let u2: f32 = rng.random();
                    let r = (-2.0 * u1.ln()).sqrt() * 0.02;
                    let t = std::f32::consts::TAU * u2;
                    pair[0] = r * t.cos();
                    if pair.len() > 1 {
                        pair[1] = r * t.sin();
                    }
                }
            });
            v
        };
        w.write(&s.name, &encode_f32(&values, Dtype::BF16)?)?;
    }
    w.finish()
}
