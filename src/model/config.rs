//! `config.json` → [`ModelConfig`]: one normalised description of a Llama-family
//! decoder, read from either the transformers 4.x keys (`rope_theta`,
//! `rope_scaling`, `torch_dtype`) or the 5.x keys (`rope_parameters`, `dtype`).

use std::path::Path;

use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// The architectures dynapress runs (Hugging Face `model_type`).
pub const SUPPORTED_MODEL_TYPES: &str = "llama, mistral, qwen2, qwen3";

/// Which member of the Llama family a checkpoint is. They share one decoder;
/// the differences are flags in [`ModelConfig`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Architecture {
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
}

impl Architecture {
    /// The Hugging Face `model_type` string.
    pub fn model_type(self) -> &'static str {
        match self {
            Architecture::Llama => "llama",
            Architecture::Mistral => "mistral",
            Architecture::Qwen2 => "qwen2",
            Architecture::Qwen3 => "qwen3",
        }
    }
}

/// How RoPE frequencies are modified for long contexts.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum RopeScaling {
    /// Plain RoPE.
    None,
    /// Positions divided by `factor` (inv_freq / factor).
    Linear { factor: f64 },
    /// Llama 3.x frequency-dependent scaling.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
}

/// A normalised Llama-family configuration.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ModelConfig {
    pub arch: Architecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// q/k/v projections carry biases (Qwen2; Llama with `attention_bias`).
    pub qkv_bias: bool,
    /// The output projection carries a bias (Llama/Qwen3 with `attention_bias`).
    pub o_bias: bool,
    /// gate/up/down projections carry biases (Llama with `mlp_bias`).
    pub mlp_bias: bool,
    /// Per-head RMSNorm on queries and keys before RoPE (Qwen3).
    pub qk_norm: bool,
    /// Sliding-window attention: a query sees at most this many keys (itself included).
    pub sliding_window: Option<usize>,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    /// The dtype the checkpoint declares (`bfloat16`, `float16`, `float32`), if any.
    pub torch_dtype: Option<String>,
}

impl ModelConfig {
    /// Reads and validates `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        // A config.json is a few KiB; a link to /dev/zero must not be read until memory runs out.
        let text = crate::fsutil::read_text_limited(path, 16 << 20)?;
        let value: Value = serde_json::from_str(&text)
            .map_err(|e| Error::config(path, format!("not valid JSON: {e}")))?;
        Self::from_json(&value, path)
    }

    /// Parses a `config.json` value; `path` is only used in error messages.
    pub fn from_json(value: &Value, path: &Path) -> Result<Self> {
        let obj = value
            .as_object()
            .ok_or_else(|| Error::config(path, "expected a JSON object"))?;
        let r = Reader { obj, path };
        let model_type = r.string("model_type")?.unwrap_or_default();
        let arch = match model_type.as_str() {
            "llama" => Architecture::Llama,
            "mistral" => Architecture::Mistral,
            "qwen2" => Architecture::Qwen2,
            "qwen3" => Architecture::Qwen3,
            other => {
                return Err(Error::UnsupportedArchitecture {
                    path: path.to_path_buf(),
                    model_type: if other.is_empty() {
                        "(missing)".to_string()
                    } else {
                        other.to_string()
                    },
                    supported: SUPPORTED_MODEL_TYPES,
                });
            }
        };

        let act = r
            .string("hidden_act")?
            .or(r.string("hidden_activation")?)
            .unwrap_or_else(|| "silu".into());
        if act != "silu" && act != "swish" {
            return Err(Error::config(
                path,
                format!("unsupported hidden_act `{act}`; the Llama family uses `silu` (SwiGLU)"),
            ));
        }
        if let Some(tp) = r.usize("pretraining_tp")?
            && tp != 1
        {
            return Err(Error::config(
                path,
                format!("pretraining_tp = {tp} is not supported (only 1)"),
            ));
        }

        let hidden_size = r.required_usize("hidden_size")?;
        let num_heads = r.required_usize("num_attention_heads")?;
        let num_kv_heads = r.usize("num_key_value_heads")?.unwrap_or(num_heads);
        let head_dim = match r.usize("head_dim")? {
            Some(d) => d,
            None => {
                if num_heads == 0 || hidden_size % num_heads != 0 {
                    return Err(Error::config(
                        path,
                        format!(
                            "hidden_size {hidden_size} is not divisible by num_attention_heads {num_heads} and head_dim is not given"
                        ),
                    ));
                }
                hidden_size / num_heads
            }
        };
        if num_kv_heads == 0 || num_heads % num_kv_heads != 0 {
            return Err(Error::config(
                path,
                format!(
                    "num_attention_heads {num_heads} is not a multiple of num_key_value_heads {num_kv_heads}"
                ),
            ));
        }
        if head_dim % 2 != 0 {
            return Err(Error::config(
                path,
                format!("head_dim {head_dim} must be even for RoPE"),
            ));
        }

        // RoPE: transformers 5 writes `rope_parameters` {rope_theta, rope_type, ...};
        // 4.x writes `rope_theta` at the top level and `rope_scaling` {type|rope_type, ...}.
        let rope_params = r.object("rope_parameters")?;
        let rope_scaling_obj = r.object("rope_scaling")?;
        let rope_theta = match rope_params.and_then(|p| p.get("rope_theta")) {
            Some(v) => v
                .as_f64()
                .ok_or_else(|| Error::config(path, "rope_parameters.rope_theta is not a number"))?,
            None => r.f64("rope_theta")?.unwrap_or(10000.0),
        };
        let scaling_src = rope_params.or(rope_scaling_obj);
        let rope_scaling = match scaling_src {
            None => RopeScaling::None,
            Some(s) => parse_rope_scaling(s, path)?,
        };

        let (qkv_bias, o_bias, mlp_bias, qk_norm) = match arch {
            Architecture::Llama => {
                let ab = r.bool("attention_bias")?.unwrap_or(false);
                (ab, ab, r.bool("mlp_bias")?.unwrap_or(false), false)
            }
            Architecture::Mistral => (false, false, false, false),
            Architecture::Qwen2 => (true, false, false, false),
            Architecture::Qwen3 => {
                let ab = r.bool("attention_bias")?.unwrap_or(false);
                (ab, ab, false, true)
            }
        };

        let sliding_window = match arch {
            Architecture::Mistral => r.usize("sliding_window")?,
            Architecture::Qwen2 | Architecture::Qwen3 => {
                if r.bool("use_sliding_window")?.unwrap_or(false) {
                    return Err(Error::config(
                        path,
                        "use_sliding_window = true is not supported for Qwen models (per-layer windows); set it to false",
                    ));
                }
                None
            }
            Architecture::Llama => None,
        };

        // LlamaConfig, MistralConfig, Qwen2Config and Qwen3Config all default to untied.
        let tie_default = false;
        let cfg = ModelConfig {
            arch,
            vocab_size: r.required_usize("vocab_size")?,
            hidden_size,
            intermediate_size: r.required_usize("intermediate_size")?,
            num_layers: r.required_usize("num_hidden_layers")?,
            num_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps: r.f64("rms_norm_eps")?.unwrap_or(1e-6),
            rope_theta,
            rope_scaling,
            max_position_embeddings: r.usize("max_position_embeddings")?.unwrap_or(2048),
            tie_word_embeddings: r.bool("tie_word_embeddings")?.unwrap_or(tie_default),
            qkv_bias,
            o_bias,
            mlp_bias,
            qk_norm,
            sliding_window,
            bos_token_id: r.token_ids("bos_token_id")?.first().copied(),
            eos_token_ids: r.token_ids("eos_token_id")?,
            torch_dtype: r.string("dtype")?.or(r.string("torch_dtype")?),
        };
        for (name, v) in [
            ("vocab_size", cfg.vocab_size),
            ("hidden_size", cfg.hidden_size),
            ("intermediate_size", cfg.intermediate_size),
            ("num_hidden_layers", cfg.num_layers),
            ("num_attention_heads", cfg.num_heads),
        ] {
            if v == 0 {
                return Err(Error::config(path, format!("{name} must be positive")));
            }
        }
        // Far beyond any real checkpoint: refused before anything is sized from them.
        for (name, v, max) in [
            ("vocab_size", cfg.vocab_size, 1usize << 24),
            ("hidden_size", cfg.hidden_size, 1 << 20),
            ("intermediate_size", cfg.intermediate_size, 1 << 22),
            ("num_hidden_layers", cfg.num_layers, 1 << 12),
            ("num_attention_heads", cfg.num_heads, 1 << 12),
            ("head_dim", cfg.head_dim, 1 << 14),
            (
                "max_position_embeddings",
                cfg.max_position_embeddings,
                1 << 26,
            ),
        ] {
            if v > max {
                return Err(Error::config(
                    path,
                    format!("{name} = {v} is larger than any supported model (at most {max})"),
                ));
            }
        }
        // Out-of-range numbers give NaN activations, not an error, downstream.
        if !(cfg.rope_theta.is_finite() && cfg.rope_theta > 0.0) {
            return Err(Error::config(
                path,
                format!(
                    "rope_theta = {} must be a positive number (usually 10000 or more)",
                    cfg.rope_theta
                ),
            ));
        }
        if !(cfg.rms_norm_eps.is_finite() && cfg.rms_norm_eps >= 0.0) {
            return Err(Error::config(
                path,
                format!(
                    "rms_norm_eps = {} must be a small non-negative number (usually 1e-5 or 1e-6)",
                    cfg.rms_norm_eps
                ),
            ));
        }
        Ok(cfg)
    }

    /// Output features of the fused q/k/v projection.
    pub fn qkv_out(&self) -> usize {
        (self.num_heads + 2 * self.num_kv_heads) * self.head_dim
    }

    /// Number of parameters (embeddings and head counted once if tied).
    pub fn num_parameters(&self) -> usize {
        let h = self.hidden_size;
        let attn = h * self.qkv_out() + self.num_heads * self.head_dim * h;
        let mlp = 3 * h * self.intermediate_size;
        let per_block = attn + mlp + 2 * h;
        let emb = self.vocab_size * h;
        emb + self.num_layers * per_block + h + if self.tie_word_embeddings { 0 } else { emb }
    }
}

fn parse_rope_scaling(s: &Map<String, Value>, path: &Path) -> Result<RopeScaling> {
    let kind = s
        .get("rope_type")
        .or_else(|| s.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let num = |key: &str| -> Result<f64> {
        s.get(key).and_then(Value::as_f64).ok_or_else(|| {
            Error::config(
                path,
                format!("rope scaling of type `{kind}` needs a numeric `{key}`"),
            )
        })
    };
    match kind {
        "default" => Ok(RopeScaling::None),
        "linear" => Ok(RopeScaling::Linear {
            factor: num("factor")?,
        }),
        "llama3" => Ok(RopeScaling::Llama3 {
            factor: num("factor")?,
            low_freq_factor: num("low_freq_factor")?,
            high_freq_factor: num("high_freq_factor")?,
            original_max_position_embeddings: num("original_max_position_embeddings")?,
        }),
        other => Err(Error::config(
            path,
            format!(
                "unsupported RoPE scaling type `{other}`; dynapress supports default, linear and llama3"
            ),
        )),
    }
}

struct Reader<'a> {
    obj: &'a Map<String, Value>,
    path: &'a Path,
}

impl Reader<'_> {
    fn get(&self, key: &str) -> Option<&Value> {
        self.obj.get(key).filter(|v| !v.is_null())
    }

    fn err(&self, key: &str, what: &str) -> Error {
        Error::config(self.path, format!("`{key}` must be {what}"))
    }

    fn string(&self, key: &str) -> Result<Option<String>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(|s| Some(s.to_string()))
                .ok_or_else(|| self.err(key, "a string")),
        }
    }

    fn usize(&self, key: &str) -> Result<Option<usize>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(|n| Some(n as usize))
                .ok_or_else(|| self.err(key, "a non-negative integer")),
        }
    }

    fn required_usize(&self, key: &str) -> Result<usize> {
        self.usize(key)?
            .ok_or_else(|| Error::config(self.path, format!("missing required key `{key}`")))
    }

    fn f64(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.err(key, "a number")),
        }
    }

    fn bool(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| self.err(key, "true or false")),
        }
    }

    fn object(&self, key: &str) -> Result<Option<&Map<String, Value>>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_object()
                .map(Some)
                .ok_or_else(|| self.err(key, "an object")),
        }
    }

    fn token_ids(&self, key: &str) -> Result<Vec<u32>> {
        match self.get(key) {
            None => Ok(vec![]),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_u64()
                        .map(|n| n as u32)
                        .ok_or_else(|| self.err(key, "an integer or a list of integers"))
                })
                .collect(),
            Some(v) => v
                .as_u64()
                .map(|n| vec![n as u32])
                .ok_or_else(|| self.err(key, "an integer or a list of integers")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<ModelConfig> {
        ModelConfig::from_json(&v, Path::new("config.json"))
    }

    fn base() -> Value {
        json!({
            "model_type": "llama", "vocab_size": 100, "hidden_size": 64,
            "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2
        })
    }

    #[test]
    fn reads_4x_and_5x_rope_keys_alike() {
        let mut v4 = base();
        v4["rope_theta"] = json!(500000.0);
        v4["rope_scaling"] = json!({"rope_type": "llama3", "factor": 8.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192});
        let mut v5 = base();
        v5["rope_parameters"] = json!({"rope_theta": 500000.0, "rope_type": "llama3",
            "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192});
        let a = parse(v4).unwrap();
        let b = parse(v5).unwrap();
        assert_eq!(a.rope_theta, 500000.0);
        assert_eq!(a.rope_scaling, b.rope_scaling);
        assert_eq!(a.rope_theta, b.rope_theta);
        assert!(matches!(a.rope_scaling, RopeScaling::Llama3 { .. }));
        assert_eq!(a.head_dim, 16);
    }

    #[test]
    fn unknown_model_type_names_it_and_lists_supported() {
        let mut v = base();
        v["model_type"] = json!("gpt2");
        let e = parse(v).unwrap_err().to_string();
        assert!(
            e.contains("gpt2") && e.contains("qwen3") && e.contains("config.json"),
            "{e}"
        );
    }

    #[test]
    fn unsupported_rope_scaling_is_an_error() {
        let mut v = base();
        v["rope_scaling"] = json!({"type": "yarn", "factor": 4.0});
        let e = parse(v).unwrap_err().to_string();
        assert!(e.contains("yarn"), "{e}");
    }

    #[test]
    fn qwen2_has_qkv_bias_and_qwen3_qk_norm() {
        let mut v = base();
        v["model_type"] = json!("qwen2");
        let c = parse(v).unwrap();
        assert!(c.qkv_bias && !c.o_bias && !c.qk_norm);
        let mut v = base();
        v["model_type"] = json!("qwen3");
        v["head_dim"] = json!(32);
        let c = parse(v).unwrap();
        assert!(c.qk_norm && !c.qkv_bias && c.head_dim == 32);
    }

    #[test]
    fn bad_head_counts_are_errors() {
        let mut v = base();
        v["num_key_value_heads"] = json!(3);
        assert!(parse(v).is_err());
    }
}
