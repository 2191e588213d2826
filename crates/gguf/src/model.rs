//! What llama.cpp needs to load a Llama-family model from GGUF: architecture
//! metadata, tensor names, the Q/K row permutation of the `llama`
//! architecture, and the `rope_freqs` tensor of Llama 3 RoPE scaling.
//!
//! The rules follow llama.cpp's `convert_hf_to_gguf.py` (`conversion/llama.py`,
//! `conversion/qwen.py`, `TextModel.set_gguf_parameters` in
//! `conversion/base.py`) in the llama.cpp tree vendored by llama-cpp-python
//! 0.3.36.

use dynapress_ggml::GgmlType;
use serde_json::Value as Json;

use crate::error::{GgufError, Result};
use crate::value::Metadata;

/// llama.cpp's quantization format version, written as `general.quantization_version`.
pub const QUANTIZATION_VERSION: u32 = 2;
/// Name of the Llama 3 RoPE frequency-factor tensor.
pub const ROPE_FREQS_TENSOR: &str = "rope_freqs.weight";

/// The llama.cpp architectures dynapress writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Arch {
    /// `llama` (also Mistral-style checkpoints without sliding windows).
    Llama,
    /// `qwen2`: biases on q/k/v.
    Qwen2,
    /// `qwen3`: per-head RMSNorm on q and k.
    Qwen3,
}

impl Arch {
    /// The value of `general.architecture` and the prefix of the arch keys.
    pub const fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
            Arch::Qwen3 => "qwen3",
        }
    }

    /// Whether llama.cpp expects q/k rows permuted for this architecture (its
    /// `llama` graph uses the interleaved RoPE layout; `qwen2`/`qwen3` use the
    /// NeoX layout that matches Hugging Face's rotate-half).
    pub const fn permutes_qk(self) -> bool {
        matches!(self, Arch::Llama)
    }
}

/// RoPE scaling as llama.cpp represents it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RopeScaling {
    /// Plain RoPE.
    None,
    /// Positions divided by `factor`: `{arch}.rope.scaling.type = "linear"`,
    /// `{arch}.rope.scaling.factor`.
    Linear {
        /// Context extension factor.
        factor: f32,
    },
    /// Llama 3.x frequency-dependent scaling: no scaling keys; a
    /// `rope_freqs.weight` tensor of head_dim/2 per-frequency divisors instead
    /// (see [`LlamaHparams::rope_freqs`]).
    Llama3 {
        /// Divisor of the lowest frequencies.
        factor: f32,
        /// Wavelengths above original_context_length / low_freq_factor get `factor`.
        low_freq_factor: f32,
        /// Wavelengths below original_context_length / high_freq_factor are untouched.
        high_freq_factor: f32,
        /// The pre-training context length.
        original_context_length: u32,
    },
}

/// The hyper-parameters of a Llama-family decoder, in llama.cpp's terms.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaHparams {
    /// Which llama.cpp architecture.
    pub arch: Arch,
    /// Training context length (`max_position_embeddings`).
    pub context_length: u32,
    /// Hidden size.
    pub embedding_length: u32,
    /// Number of decoder blocks.
    pub block_count: u32,
    /// MLP intermediate size.
    pub feed_forward_length: u32,
    /// Query heads.
    pub head_count: u32,
    /// Key/value heads.
    pub head_count_kv: u32,
    /// Per-head dimension (written as `key_length`/`value_length`, and for
    /// `llama` also `rope.dimension_count`).
    pub head_dim: u32,
    /// RoPE θ.
    pub rope_freq_base: f32,
    /// RoPE scaling for long contexts.
    pub rope_scaling: RopeScaling,
    /// RMSNorm ε.
    pub rms_norm_eps: f32,
    /// Rows of the embedding matrix (the tokenizer is padded to this many tokens).
    pub vocab_size: u32,
    /// The output projection reuses the embedding (no `output.weight`).
    pub tie_word_embeddings: bool,
}

fn cfg_err(msg: impl Into<String>) -> GgufError {
    GgufError::Config(msg.into())
}

fn get_u32(obj: &serde_json::Map<String, Json>, key: &str) -> Result<Option<u32>> {
    match obj.get(key) {
        None | Some(Json::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|x| u32::try_from(x).ok())
            .map(Some)
            .ok_or_else(|| cfg_err(format!("{key} = {v} is not a u32"))),
    }
}

fn get_f64(obj: &serde_json::Map<String, Json>, key: &str) -> Result<Option<f64>> {
    match obj.get(key) {
        None | Some(Json::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| cfg_err(format!("{key} = {v} is not a number"))),
    }
}

impl LlamaHparams {
    /// Reads a Hugging Face `config.json` (transformers 4.x keys `rope_theta`
    /// / `rope_scaling`, or 5.x `rope_parameters`).
    pub fn from_hf_config(config: &Json) -> Result<Self> {
        let o = config
            .as_object()
            .ok_or_else(|| cfg_err("config.json is not a JSON object"))?;
        let model_type = o.get("model_type").and_then(Json::as_str).unwrap_or("");
        let arch = match model_type {
            "llama" => Arch::Llama,
            "mistral" => {
                if o.get("sliding_window").is_some_and(|v| !v.is_null()) {
                    return Err(cfg_err(
                        "mistral with sliding_window: llama.cpp's `llama` architecture has no sliding-window attention",
                    ));
                }
                Arch::Llama
            }
            "qwen2" => Arch::Qwen2,
            "qwen3" => Arch::Qwen3,
            other => {
                return Err(cfg_err(format!(
                    "model_type {other:?} is not supported for GGUF export (llama, mistral, qwen2, qwen3)"
                )));
            }
        };
        let req = |k: &str| get_u32(o, k)?.ok_or_else(|| cfg_err(format!("missing {k}")));
        let embedding_length = req("hidden_size")?;
        let head_count = req("num_attention_heads")?;
        let head_count_kv = get_u32(o, "num_key_value_heads")?.unwrap_or(head_count);
        let head_dim = match get_u32(o, "head_dim")? {
            Some(d) => d,
            None if head_count > 0 => embedding_length / head_count,
            None => return Err(cfg_err("num_attention_heads is 0")),
        };

        let rope_params = o.get("rope_parameters").and_then(Json::as_object);
        let rope_scaling_obj = o.get("rope_scaling").and_then(Json::as_object);
        let rope_theta = match rope_params {
            Some(p) => get_f64(p, "rope_theta")?,
            None => None,
        }
        .or(get_f64(o, "rope_theta")?)
        .unwrap_or(10000.0);
        let rope_scaling = match rope_params.or(rope_scaling_obj) {
            None => RopeScaling::None,
            Some(s) => {
                let ty = s
                    .get("rope_type")
                    .or_else(|| s.get("type"))
                    .and_then(Json::as_str)
                    .unwrap_or("default");
                let factor = get_f64(s, "factor")?;
                match ty {
                    "default" => RopeScaling::None,
                    "linear" => RopeScaling::Linear {
                        factor: factor
                            .ok_or_else(|| cfg_err("linear RoPE scaling without factor"))?
                            as f32,
                    },
                    "llama3" => RopeScaling::Llama3 {
                        factor: factor.unwrap_or(8.0) as f32,
                        low_freq_factor: get_f64(s, "low_freq_factor")?.unwrap_or(1.0) as f32,
                        high_freq_factor: get_f64(s, "high_freq_factor")?.unwrap_or(4.0) as f32,
                        original_context_length: get_u32(s, "original_max_position_embeddings")?
                            .unwrap_or(8192),
                    },
                    other => {
                        return Err(cfg_err(format!(
                            "RoPE scaling type {other:?} is not supported for GGUF export (default, linear, llama3)"
                        )));
                    }
                }
            }
        };

        let hp = LlamaHparams {
            arch,
            context_length: req("max_position_embeddings")?,
            embedding_length,
            block_count: req("num_hidden_layers")?,
            feed_forward_length: req("intermediate_size")?,
            head_count,
            head_count_kv,
            head_dim,
            rope_freq_base: rope_theta as f32,
            rope_scaling,
            rms_norm_eps: get_f64(o, "rms_norm_eps")?.unwrap_or(1e-6) as f32,
            vocab_size: req("vocab_size")?,
            tie_word_embeddings: o
                .get("tie_word_embeddings")
                .and_then(Json::as_bool)
                .unwrap_or(false),
        };
        hp.validate()?;
        Ok(hp)
    }

    /// Checks the invariants llama.cpp relies on.
    pub fn validate(&self) -> Result<()> {
        let nz = [
            ("context_length", self.context_length),
            ("embedding_length", self.embedding_length),
            ("block_count", self.block_count),
            ("feed_forward_length", self.feed_forward_length),
            ("head_count", self.head_count),
            ("head_count_kv", self.head_count_kv),
            ("head_dim", self.head_dim),
            ("vocab_size", self.vocab_size),
        ];
        if let Some((k, _)) = nz.iter().find(|(_, v)| *v == 0) {
            return Err(cfg_err(format!("{k} is 0")));
        }
        if !self.head_count.is_multiple_of(self.head_count_kv) {
            return Err(cfg_err(format!(
                "head_count {} is not a multiple of head_count_kv {}",
                self.head_count, self.head_count_kv
            )));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(cfg_err(format!(
                "head_dim {} is odd; RoPE needs pairs",
                self.head_dim
            )));
        }
        Ok(())
    }

    /// Writes the `{arch}.*` keys (and `general.architecture`).
    pub fn write_metadata(&self, md: &mut Metadata) {
        let a = self.arch.name();
        md.set("general.architecture", a);
        md.set(format!("{a}.vocab_size"), self.vocab_size);
        md.set(format!("{a}.context_length"), self.context_length);
        md.set(format!("{a}.embedding_length"), self.embedding_length);
        md.set(format!("{a}.block_count"), self.block_count);
        md.set(format!("{a}.feed_forward_length"), self.feed_forward_length);
        md.set(format!("{a}.attention.head_count"), self.head_count);
        md.set(format!("{a}.attention.head_count_kv"), self.head_count_kv);
        md.set(format!("{a}.attention.key_length"), self.head_dim);
        md.set(format!("{a}.attention.value_length"), self.head_dim);
        md.set(
            format!("{a}.attention.layer_norm_rms_epsilon"),
            self.rms_norm_eps,
        );
        md.set(format!("{a}.rope.dimension_count"), self.head_dim);
        md.set(format!("{a}.rope.freq_base"), self.rope_freq_base);
        if let RopeScaling::Linear { factor } = self.rope_scaling {
            md.set(format!("{a}.rope.scaling.type"), "linear");
            md.set(format!("{a}.rope.scaling.factor"), factor);
        }
    }

    /// The `rope_freqs.weight` values (head_dim/2 floats) for Llama 3 RoPE
    /// scaling, or `None` for other scalings. llama.cpp divides each RoPE
    /// frequency by its factor: 1 for short wavelengths (< L/high_freq_factor,
    /// L the original context), `factor` for long ones (> L/low_freq_factor),
    /// and 1/((1−s)/factor + s) with s = (L/λ − low)/(high − low) in between.
    /// Computed in f32 like the converter's torch code.
    pub fn rope_freqs(&self) -> Option<Vec<f32>> {
        let RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_context_length,
        } = self.rope_scaling
        else {
            return None;
        };
        let dim = self.head_dim as usize;
        let base = self.rope_freq_base;
        let old = original_context_length as f32;
        let low_wavelen = old / low_freq_factor;
        let high_wavelen = old / high_freq_factor;
        Some(
            (0..dim)
                .step_by(2)
                .map(|i| {
                    let freq = 1.0 / base.powf(i as f32 / dim as f32);
                    let wavelen = 2.0 * std::f32::consts::PI / freq;
                    if wavelen < high_wavelen {
                        1.0
                    } else if wavelen > low_wavelen {
                        factor
                    } else {
                        let smooth = (old / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        1.0 / ((1.0 - smooth) / factor + smooth)
                    }
                })
                .collect(),
        )
    }

    /// For a GGUF tensor name, the head count its rows must be permuted with
    /// ([`permute_qk_rows`]) before writing, or `None` if it is written as is:
    /// `attn_q.{weight,bias}` uses `head_count`, `attn_k.*` uses
    /// `head_count_kv`, and only for the `llama` architecture.
    pub fn qk_permute_heads(&self, gguf_name: &str) -> Option<usize> {
        if !self.arch.permutes_qk() {
            return None;
        }
        let (_, rest) = split_block(gguf_name)?;
        match rest {
            "attn_q.weight" | "attn_q.bias" => Some(self.head_count as usize),
            "attn_k.weight" | "attn_k.bias" => Some(self.head_count_kv as usize),
            _ => None,
        }
    }
}

/// `blk.N.rest` → (N, rest).
fn split_block(name: &str) -> Option<(u32, &str)> {
    let rest = name.strip_prefix("blk.")?;
    let (n, rest) = rest.split_once('.')?;
    Some((n.parse().ok()?, rest))
}

/// Maps a Hugging Face Llama/Qwen2/Qwen3 tensor name to llama.cpp's GGUF name.
/// `Ok(None)` for tensors llama.cpp does not store (`rotary_emb.inv_freq`);
/// an error names any tensor it does not know.
pub fn gguf_tensor_name(hf_name: &str) -> Result<Option<String>> {
    let unknown = || cfg_err(format!("no GGUF name for tensor {hf_name:?}"));
    let top = match hf_name {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(n) = top {
        return Ok(Some(n.to_owned()));
    }
    let rest = hf_name.strip_prefix("model.layers.").ok_or_else(unknown)?;
    let (n, rest) = rest.split_once('.').ok_or_else(unknown)?;
    let n: u32 = n.parse().map_err(|_| unknown())?;
    if rest.ends_with("rotary_emb.inv_freq") {
        return Ok(None);
    }
    let (module, suffix) = rest.rsplit_once('.').ok_or_else(unknown)?;
    if suffix != "weight" && suffix != "bias" {
        return Err(unknown());
    }
    let g = match module {
        "input_layernorm" => "attn_norm",
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "self_attn.q_norm" => "attn_q_norm",
        "self_attn.k_norm" => "attn_k_norm",
        "post_attention_layernorm" => "ffn_norm",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        _ => return Err(unknown()),
    };
    Ok(Some(format!("blk.{n}.{g}.{suffix}")))
}

/// The inverse of [`gguf_tensor_name`] for the names it produces.
pub fn hf_tensor_name(gguf_name: &str) -> Option<String> {
    let top = match gguf_name {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(n) = top {
        return Some(n.to_owned());
    }
    let (n, rest) = split_block(gguf_name)?;
    let (module, suffix) = rest.rsplit_once('.')?;
    let h = match module {
        "attn_norm" => "input_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "attn_q_norm" => "self_attn.q_norm",
        "attn_k_norm" => "self_attn.k_norm",
        "ffn_norm" => "post_attention_layernorm",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{n}.{h}.{suffix}"))
}

fn check_permute(len: usize, n_rows: usize, n_head: usize, unit: &str) -> Result<usize> {
    if n_rows == 0
        || n_head == 0
        || !n_rows.is_multiple_of(2 * n_head)
        || !len.is_multiple_of(n_rows)
    {
        return Err(cfg_err(format!(
            "cannot permute {n_rows} rows ({len} {unit}) in {n_head} heads: rows must split into heads of even size"
        )));
    }
    Ok(len / n_rows)
}

/// Moves whole rows within each head: with d = n_rows/n_head, row
/// h·d + j·d/2 + i (Hugging Face) ↔ row h·d + 2i + j (llama.cpp). `to_gguf`
/// picks the direction.
fn permute_rows<T: Copy + Default>(
    data: &[T],
    n_rows: usize,
    n_head: usize,
    to_gguf: bool,
    unit: &str,
) -> Result<Vec<T>> {
    let row = check_permute(data.len(), n_rows, n_head, unit)?;
    let d = n_rows / n_head;
    let mut out = vec![T::default(); data.len()];
    for h in 0..n_head {
        for i in 0..d / 2 {
            for j in 0..2 {
                let gguf = h * d + 2 * i + j;
                let hf = h * d + j * (d / 2) + i;
                let (dst, src) = if to_gguf { (gguf, hf) } else { (hf, gguf) };
                out[dst * row..(dst + 1) * row].copy_from_slice(&data[src * row..(src + 1) * row]);
            }
        }
    }
    Ok(out)
}

/// The Q/K row permutation llama.cpp's converter applies for the `llama`
/// architecture. Hugging Face stores each head's rows as two halves (rotate-half
/// RoPE pairs dimension i with i + d/2); llama.cpp's `llama` graph pairs
/// adjacent rows. Within every head of d = n_rows/n_head rows the output row
/// 2i + j is input row j·d/2 + i (i < d/2, j ∈ {0, 1}).
///
/// Works on raw bytes of whole rows, so it applies equally to F32, BF16 and to
/// row-wise quantized data (each row is `data.len() / n_rows` bytes).
pub fn permute_qk_rows(data: &[u8], n_rows: usize, n_head: usize) -> Result<Vec<u8>> {
    permute_rows(data, n_rows, n_head, true, "bytes")
}

/// Undoes [`permute_qk_rows`] (GGUF `llama` layout back to Hugging Face's).
pub fn unpermute_qk_rows(data: &[u8], n_rows: usize, n_head: usize) -> Result<Vec<u8>> {
    permute_rows(data, n_rows, n_head, false, "bytes")
}

/// [`unpermute_qk_rows`] on decoded values (`data.len() / n_rows` per row), for
/// tensors that had to be dequantized first.
pub fn unpermute_qk_rows_f32(data: &[f32], n_rows: usize, n_head: usize) -> Result<Vec<f32>> {
    permute_rows(data, n_rows, n_head, false, "values")
}

/// llama.cpp's `general.file_type` (`enum llama_ftype`) for a file whose
/// weight matrices are mostly `ty`. The value is informational (llama.cpp
/// reads each tensor's own type); for mixed k-quant files the `_M` variant is
/// used.
pub const fn file_type_for(ty: GgmlType) -> u32 {
    match ty {
        GgmlType::F32 => 0,
        GgmlType::F16 => 1,
        GgmlType::Q4_0 => 2,
        GgmlType::Q4_1 => 3,
        GgmlType::Q8_0 => 7,
        GgmlType::Q5_0 => 8,
        GgmlType::Q5_1 => 9,
        GgmlType::Q2K => 10,
        GgmlType::Q3K => 12,
        GgmlType::Q4K => 15,
        GgmlType::Q5K => 17,
        GgmlType::Q6K => 18,
        GgmlType::IQ4NL => 25,
        GgmlType::IQ2XXS => 19,
        GgmlType::IQ2XS => 20,
        GgmlType::IQ3XXS => 23,
        GgmlType::IQ3S => 26,
        GgmlType::IQ2S => 28,
        GgmlType::IQ4XS => 30,
        GgmlType::BF16 => 32,
    }
}

/// Writes `general.type`, `general.name`, `general.file_type` and
/// `general.quantization_version`.
pub fn write_general(md: &mut Metadata, name: &str, file_type: u32) {
    md.set("general.type", "model");
    md.set("general.name", name);
    md.set("general.file_type", file_type);
    md.set("general.quantization_version", QUANTIZATION_VERSION);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutation_matches_converter_reshape() {
        // reshape(n_head, 2, d/2, cols).swapaxes(1, 2): for 1 head of 8 rows the
        // new order is rows 0,4,1,5,2,6,3,7.
        let data: Vec<u8> = (0u8..8).collect();
        assert_eq!(
            permute_qk_rows(&data, 8, 1).unwrap(),
            vec![0, 4, 1, 5, 2, 6, 3, 7]
        );
        // 2 heads of 4 rows, 2 bytes per row.
        let data: Vec<u8> = (0u8..16).collect();
        let p = permute_qk_rows(&data, 8, 2).unwrap();
        assert_eq!(
            p,
            vec![0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11, 14, 15]
        );
        assert_eq!(unpermute_qk_rows(&p, 8, 2).unwrap(), data);
        assert!(permute_qk_rows(&data, 8, 3).is_err());
        // The f32 version moves the same rows.
        let vals: Vec<f32> = p.iter().map(|&b| f32::from(b)).collect();
        let back = unpermute_qk_rows_f32(&vals, 8, 2).unwrap();
        assert_eq!(back, data.iter().map(|&b| f32::from(b)).collect::<Vec<_>>());
        assert!(unpermute_qk_rows_f32(&vals, 6, 2).is_err());
    }

    #[test]
    fn names_round_trip() {
        for hf in [
            "model.embed_tokens.weight",
            "model.norm.weight",
            "lm_head.weight",
            "model.layers.7.self_attn.q_proj.weight",
            "model.layers.0.self_attn.k_proj.bias",
            "model.layers.3.self_attn.q_norm.weight",
            "model.layers.12.mlp.down_proj.weight",
            "model.layers.1.post_attention_layernorm.weight",
        ] {
            let g = gguf_tensor_name(hf).unwrap().unwrap();
            assert_eq!(hf_tensor_name(&g).as_deref(), Some(hf), "{g}");
        }
        assert_eq!(
            gguf_tensor_name("model.layers.2.self_attn.o_proj.weight")
                .unwrap()
                .as_deref(),
            Some("blk.2.attn_output.weight")
        );
        assert_eq!(
            gguf_tensor_name("model.layers.2.self_attn.rotary_emb.inv_freq").unwrap(),
            None
        );
        assert!(gguf_tensor_name("model.layers.2.self_attn.foo.weight").is_err());
        assert!(gguf_tensor_name("vision_tower.x").is_err());
    }

    #[test]
    fn llama3_rope_freqs_bands() {
        let hp = LlamaHparams {
            arch: Arch::Llama,
            context_length: 131072,
            embedding_length: 2048,
            block_count: 16,
            feed_forward_length: 8192,
            head_count: 32,
            head_count_kv: 8,
            head_dim: 64,
            rope_freq_base: 500000.0,
            rope_scaling: RopeScaling::Llama3 {
                factor: 32.0,
                low_freq_factor: 1.0,
                high_freq_factor: 4.0,
                original_context_length: 8192,
            },
            rms_norm_eps: 1e-5,
            vocab_size: 128256,
            tie_word_embeddings: true,
        };
        let f = hp.rope_freqs().unwrap();
        assert_eq!(f.len(), 32);
        // Highest frequencies untouched, lowest divided by the factor, and the
        // factors never decrease with wavelength.
        assert_eq!(f[0], 1.0);
        assert_eq!(f[31], 32.0);
        assert!(f.windows(2).all(|w| w[0] <= w[1]));
        assert!(f.iter().any(|&x| x > 1.0 && x < 32.0));
    }
}
