//! GGUF → Hugging Face, in memory: a `config.json`, a `tokenizer.json` and the
//! weights as f32 tensors under their Hugging Face names, so a GGUF file (ours
//! or llama.cpp's, any tensor types) can be evaluated by the same code as a
//! safetensors checkpoint.
//!
//! # What is inverted
//!
//! Everything [`crate::model`] and [`crate::tokenizer`] do on export, for the
//! `llama`, `qwen2` and `qwen3` architectures:
//!
//! - **Tensor names**: [`hf_tensor_name`](crate::model::hf_tensor_name)
//!   (`blk.N.attn_q.weight` → `model.layers.N.self_attn.q_proj.weight`, …).
//!   The set of tensors must be exactly what the Hugging Face model class
//!   loads for the reconstructed config: a missing or an extra tensor is an
//!   error naming it, as is a shape that disagrees with the metadata.
//! - **Values**: every tensor is decoded to f32 with
//!   [`dynapress_ggml::dequantize`] (exact for F32/F16/BF16; the ggml
//!   dequantization for block types), then for the `llama` architecture the
//!   rows of `attn_q`/`attn_k` (weights and biases) are moved back from
//!   llama.cpp's interleaved RoPE layout: within every head of d rows, GGUF row
//!   2i + j → Hugging Face row j·d/2 + i
//!   ([`unpermute_qk_rows_f32`](crate::model::unpermute_qk_rows_f32)).
//!   Shapes are PyTorch's (`[out, in]`: the ggml dims reversed).
//! - **Hyper-parameters**: the `{arch}.*` keys (see [`import_hparams`]).
//!   `{arch}.rope.scaling.type = linear` becomes `rope_scaling = {rope_type:
//!   linear, factor}`. Llama 3 scaling has no metadata keys in GGUF: llama.cpp's
//!   converter stores only `rope_freqs.weight`, the per-frequency divisors, and
//!   [`llama3_rope_scaling`] fits `factor`, `low_freq_factor`,
//!   `high_freq_factor` and `original_max_position_embeddings` to them.
//! - **Tokenizer**: [`import_tokenizer`] rebuilds a `tokenizer.json` from
//!   `tokenizer.ggml.*` that tokenizes like llama.cpp: byte-level BPE (model
//!   `gpt2`) with the pre-tokenizers of [`LLAMA_CPP_PRE_TOKENIZERS`], and
//!   SentencePiece (model `llama`).

use std::collections::{BTreeMap, HashMap, HashSet};

use dynapress_ggml::GgmlType;
use serde_json::{Value as Json, json};

use crate::error::{GgufError, ImportError, Result};
use crate::model::{self, Arch, LlamaHparams, ROPE_FREQS_TENSOR, RopeScaling};
use crate::reader::{GgufFile, TensorInfo};
use crate::tokenizer::{LLAMA_CPP_PRE_TOKENIZERS, llama_cpp_pre_tokenizer, token_type};
use crate::value::{Array, Metadata, Value};

/// `general.architecture` values [`import`] accepts.
pub const SUPPORTED_ARCHITECTURES: [&str; 3] = ["llama", "qwen2", "qwen3"];

/// One weight under its Hugging Face name, decoded to f32.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportedTensor {
    /// Hugging Face name (`model.layers.3.mlp.up_proj.weight`).
    pub name: String,
    /// PyTorch shape (`[out, in]` for a linear weight, `[n]` for a vector).
    pub shape: Vec<usize>,
    /// Row-major values.
    pub data: Vec<f32>,
}

/// A GGUF model in Hugging Face form.
#[derive(Debug, Clone)]
pub struct HfImport {
    /// A transformers `config.json` (4.x keys: `rope_theta`, `rope_scaling`,
    /// `torch_dtype`).
    pub config: Json,
    /// A `tokenizer.json` for the `tokenizers` library.
    pub tokenizer_json: String,
    /// Every weight, in the file's order (`rope_freqs.weight` is folded into
    /// the config, not returned).
    pub tensors: Vec<ImportedTensor>,
    /// Hugging Face name → the GGUF tensor's storage type.
    pub types: BTreeMap<String, GgmlType>,
    /// The hyper-parameters the config was written from.
    pub hparams: LlamaHparams,
}

impl HfImport {
    /// The tensor named `name`, if any.
    pub fn tensor(&self, name: &str) -> Option<&ImportedTensor> {
        self.tensors.iter().find(|t| t.name == name)
    }
}

/// One weight of a [`LazyImport`]: its Hugging Face name and shape, and where
/// its values are in the GGUF file.
#[derive(Debug, Clone, PartialEq)]
pub struct LazyTensor {
    /// Hugging Face name (`model.layers.3.mlp.up_proj.weight`).
    pub name: String,
    /// PyTorch shape.
    pub shape: Vec<usize>,
    /// The GGUF tensor's name (`blk.3.ffn_up.weight`).
    pub gguf_name: String,
    /// Its storage type.
    pub ggml_type: GgmlType,
}

/// A GGUF model in Hugging Face form with nothing decoded yet: the same
/// checks, config and tokenizer as [`import`], and each tensor decoded on
/// request by [`LazyImport::decode`], so a caller can hold one f32 tensor at
/// a time instead of the whole model twice.
#[derive(Debug, Clone)]
pub struct LazyImport {
    /// As [`HfImport::config`].
    pub config: Json,
    /// As [`HfImport::tokenizer_json`].
    pub tokenizer_json: String,
    /// Every weight, in the file's order.
    pub tensors: Vec<LazyTensor>,
    /// As [`HfImport::hparams`].
    pub hparams: LlamaHparams,
}

impl LazyImport {
    /// Hugging Face name → the GGUF tensor's storage type.
    pub fn types(&self) -> BTreeMap<String, GgmlType> {
        self.tensors
            .iter()
            .map(|t| (t.name.clone(), t.ggml_type))
            .collect()
    }

    /// The f32 values of `tensor` (one of [`Self::tensors`]), read from
    /// `file`, the file this import was planned from: dequantized, and the
    /// Q/K rows moved back from llama.cpp's RoPE layout.
    pub fn decode(&self, file: &GgufFile, tensor: &LazyTensor) -> Result<Vec<f32>> {
        let wrap = |e| GgufError::import(file.path(), e);
        let info = file.tensor(&tensor.gguf_name).ok_or_else(|| {
            wrap(ImportError::TensorData {
                tensor: tensor.gguf_name.clone(),
                reason: "not in this file (decoded from a different file than planned)".into(),
            })
        })?;
        let p = Planned {
            info,
            hf_name: tensor.name.clone(),
            shape: tensor.shape.clone(),
        };
        let data = decode(file, &p, &self.hparams).map_err(wrap)?.data;
        file.release(info);
        Ok(data)
    }
}

/// Plans an import without decoding any tensor: checks the metadata, the
/// tensor set and the tokenizer exactly as [`import`] does. Errors name the
/// file and what could not be mapped.
pub fn import_lazy(file: &GgufFile) -> Result<LazyImport> {
    let wrap = |e| GgufError::import(file.path(), e);
    let plan = plan(file).map_err(wrap)?;
    let tokenizer_json = import_tokenizer(file.metadata()).map_err(wrap)?;
    if let Ok(tokens) = file.metadata().get_str_array("tokenizer.ggml.tokens")
        && tokens.len() > plan.hparams.vocab_size as usize
    {
        return Err(wrap(ImportError::Tokenizer(format!(
            "{} tokens, but token_embd.weight has only {} rows",
            tokens.len(),
            plan.hparams.vocab_size
        ))));
    }
    Ok(LazyImport {
        config: plan.config(file.metadata()),
        tokenizer_json,
        tensors: plan
            .tensors
            .iter()
            .map(|p| LazyTensor {
                name: p.hf_name.clone(),
                shape: p.shape.clone(),
                gguf_name: p.info.name.clone(),
                ggml_type: p.info.ggml_type,
            })
            .collect(),
        hparams: plan.hparams,
    })
}

/// Imports a whole GGUF model: config, tokenizer and every tensor dequantized
/// to f32. Errors name the file and what could not be mapped.
pub fn import(file: &GgufFile) -> Result<HfImport> {
    let lazy = import_lazy(file)?;
    let tensors = lazy
        .tensors
        .iter()
        .map(|t| {
            Ok(ImportedTensor {
                name: t.name.clone(),
                shape: t.shape.clone(),
                data: lazy.decode(file, t)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(HfImport {
        types: lazy.types(),
        config: lazy.config,
        tokenizer_json: lazy.tokenizer_json,
        tensors,
        hparams: lazy.hparams,
    })
}

/// The `config.json` alone (checks the tensors' names and shapes, decodes
/// nothing but `rope_freqs.weight`).
pub fn import_config(file: &GgufFile) -> Result<Json> {
    let plan = plan(file).map_err(|e| GgufError::import(file.path(), e))?;
    Ok(plan.config(file.metadata()))
}

/// The hyper-parameters of a GGUF model file, read back from the `{arch}.*`
/// keys llama.cpp uses: `block_count`, `embedding_length`,
/// `feed_forward_length`, `attention.head_count`, `attention.head_count_kv`
/// (default: head_count), `attention.key_length` (default:
/// embedding_length / head_count; `value_length` and `rope.dimension_count`
/// must equal it), `context_length`, `attention.layer_norm_rms_epsilon`,
/// `rope.freq_base` (default 10000), RoPE scaling (see the module docs),
/// `vocab_size` (default and check: the rows of `token_embd.weight`), and
/// tied embeddings when there is no `output.weight`.
pub fn import_hparams(file: &GgufFile) -> Result<LlamaHparams> {
    hparams(file).map_err(|e| GgufError::import(file.path(), e))
}

fn md_err(key: &str, reason: impl Into<String>) -> ImportError {
    ImportError::Metadata {
        key: key.to_owned(),
        reason: reason.into(),
    }
}

/// Typed access to the metadata with import errors.
struct Md<'a> {
    md: &'a Metadata,
}

impl<'a> Md<'a> {
    fn u32_opt(&self, key: &str) -> Result<Option<u32>, ImportError> {
        match self.md.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|x| u32::try_from(x).ok())
                .map(Some)
                .ok_or_else(|| {
                    md_err(
                        key,
                        format!("expected a non-negative integer below 2^32, found {v:?}"),
                    )
                }),
        }
    }

    fn u32(&self, key: &str) -> Result<u32, ImportError> {
        self.u32_opt(key)?.ok_or_else(|| md_err(key, "missing"))
    }

    fn f32_opt(&self, key: &str) -> Result<Option<f32>, ImportError> {
        match self.md.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(|x| Some(x as f32))
                .ok_or_else(|| md_err(key, format!("expected a float, found {v:?}"))),
        }
    }

    fn str_opt(&self, key: &str) -> Result<Option<&'a str>, ImportError> {
        match self.md.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| md_err(key, format!("expected a string, found {v:?}"))),
        }
    }

    fn bool_opt(&self, key: &str) -> Result<Option<bool>, ImportError> {
        match self.md.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| md_err(key, format!("expected a bool, found {v:?}"))),
        }
    }

    fn str_array(&self, key: &str) -> Result<&'a [String], ImportError> {
        match self.md.get(key) {
            None => Err(md_err(key, "missing")),
            Some(Value::Array(Array::String(v))) => Ok(v),
            Some(v) => Err(md_err(
                key,
                format!("expected an array of strings, found {:?}", type_of(v)),
            )),
        }
    }
}

fn type_of(v: &Value) -> String {
    match v {
        Value::Array(a) => format!("array of {:?}", a.elem_type()),
        v => format!("{:?}", v.value_type()),
    }
}

fn arch_of(md: &Metadata) -> Result<Arch, ImportError> {
    let key = "general.architecture";
    let name = Md { md }
        .str_opt(key)?
        .ok_or_else(|| md_err(key, "missing"))?;
    match name {
        "llama" => Ok(Arch::Llama),
        "qwen2" => Ok(Arch::Qwen2),
        "qwen3" => Ok(Arch::Qwen3),
        other => Err(ImportError::UnsupportedArchitecture {
            arch: other.to_owned(),
        }),
    }
}

fn hparams(file: &GgufFile) -> Result<LlamaHparams, ImportError> {
    let md = file.metadata();
    let arch = arch_of(md)?;
    let a = arch.name();
    let m = Md { md };
    let k = |s: &str| format!("{a}.{s}");

    // Features llama.cpp can describe for these architectures but a plain
    // Hugging Face Llama/Qwen2/Qwen3 config cannot.
    if let Some(n) = m.u32_opt(&k("expert_count"))?
        && n > 0
    {
        return Err(md_err(
            &k("expert_count"),
            format!("{n} experts: mixture-of-experts models are not supported"),
        ));
    }
    if md.get(&k("attention.sliding_window")).is_some() {
        return Err(md_err(
            &k("attention.sliding_window"),
            "sliding-window attention is not supported",
        ));
    }
    if m.bool_opt(&k("attention.causal"))? == Some(false) {
        return Err(md_err(
            &k("attention.causal"),
            "non-causal attention is not supported",
        ));
    }

    let embedding_length = m.u32(&k("embedding_length"))?;
    let head_count = m.u32(&k("attention.head_count"))?;
    if head_count == 0 {
        return Err(md_err(&k("attention.head_count"), "is 0"));
    }
    let head_count_kv = m
        .u32_opt(&k("attention.head_count_kv"))?
        .unwrap_or(head_count);
    let head_dim = match m.u32_opt(&k("attention.key_length"))? {
        Some(d) => d,
        None if embedding_length.is_multiple_of(head_count) => embedding_length / head_count,
        None => {
            return Err(md_err(
                &k("attention.key_length"),
                format!(
                    "missing, and embedding_length {embedding_length} is not a multiple of head_count {head_count}"
                ),
            ));
        }
    };
    for key in ["attention.value_length", "rope.dimension_count"] {
        if let Some(v) = m.u32_opt(&k(key))?
            && v != head_dim
        {
            return Err(md_err(
                &k(key),
                format!(
                    "{v} differs from the head size {head_dim}; Hugging Face Llama/Qwen attention needs them equal (full RoPE, equal key and value heads)"
                ),
            ));
        }
    }

    let embd = file
        .tensor("token_embd.weight")
        .ok_or_else(|| ImportError::MissingTensors {
            names: vec!["token_embd.weight".into()],
        })?;
    let rows = match embd.dims.as_slice() {
        [cols, rows] if *cols == u64::from(embedding_length) => *rows,
        _ => {
            return Err(ImportError::TensorShape {
                tensor: embd.name.clone(),
                expected: vec![0, embedding_length as usize],
                found: shape_of(embd),
            });
        }
    };
    let vocab_size =
        u32::try_from(rows).map_err(|_| md_err(&k("vocab_size"), "vocabulary too large"))?;
    if let Some(v) = m.u32_opt(&k("vocab_size"))?
        && v != vocab_size
    {
        return Err(md_err(
            &k("vocab_size"),
            format!("{v}, but token_embd.weight has {vocab_size} rows"),
        ));
    }

    let rope_freq_base = m.f32_opt(&k("rope.freq_base"))?.unwrap_or(10000.0);
    if !(rope_freq_base.is_finite() && rope_freq_base > 0.0) {
        return Err(md_err(
            &k("rope.freq_base"),
            format!("{rope_freq_base} is not a positive RoPE base"),
        ));
    }
    let rope_scaling = rope_scaling(file, &m, a, head_dim, rope_freq_base)?;

    let hp = LlamaHparams {
        arch,
        context_length: m.u32(&k("context_length"))?,
        embedding_length,
        block_count: m.u32(&k("block_count"))?,
        feed_forward_length: m.u32(&k("feed_forward_length"))?,
        head_count,
        head_count_kv,
        head_dim,
        rope_freq_base,
        rope_scaling,
        rms_norm_eps: m
            .f32_opt(&k("attention.layer_norm_rms_epsilon"))?
            .ok_or_else(|| md_err(&k("attention.layer_norm_rms_epsilon"), "missing"))?,
        vocab_size,
        tie_word_embeddings: file.tensor("output.weight").is_none(),
    };
    hp.validate()
        .map_err(|e| md_err(&format!("{a}.*"), e.to_string()))?;
    Ok(hp)
}

fn rope_scaling(
    file: &GgufFile,
    m: &Md,
    a: &str,
    head_dim: u32,
    base: f32,
) -> Result<RopeScaling, ImportError> {
    let type_key = format!("{a}.rope.scaling.type");
    // llama.cpp: the type defaults to linear, the factor to 1 (0 means 1), and
    // `rope.scale_linear` is the factor's old name.
    let ty = m.str_opt(&type_key)?.unwrap_or("linear");
    let factor = match m.f32_opt(&format!("{a}.rope.scaling.factor"))? {
        Some(f) => Some(f),
        None => m.f32_opt(&format!("{a}.rope.scale_linear"))?,
    }
    .filter(|&f| f != 0.0 && f != 1.0);
    if let Some(af) = m.f32_opt(&format!("{a}.rope.scaling.attn_factor"))?
        && af != 1.0
    {
        return Err(md_err(
            &format!("{a}.rope.scaling.attn_factor"),
            format!("{af}: attention scaling is not supported"),
        ));
    }
    let from_keys = match ty {
        "none" => RopeScaling::None,
        "linear" => match factor {
            Some(f) if f.is_finite() && f > 0.0 => RopeScaling::Linear { factor: f },
            Some(f) => return Err(ImportError::Rope(format!("linear scaling factor {f}"))),
            None => RopeScaling::None,
        },
        other => {
            return Err(md_err(
                &type_key,
                format!(
                    "{other:?}: only none, linear and Llama 3 (rope_freqs.weight) RoPE scaling are supported"
                ),
            ));
        }
    };
    let Some(info) = file.tensor(ROPE_FREQS_TENSOR) else {
        return Ok(from_keys);
    };
    if from_keys != RopeScaling::None {
        return Err(ImportError::Rope(format!(
            "both {type_key} = {ty} and {ROPE_FREQS_TENSOR}: cannot express both in one config"
        )));
    }
    let n = (head_dim / 2) as usize;
    if info.dims != [n as u64] {
        return Err(ImportError::TensorShape {
            tensor: info.name.clone(),
            expected: vec![n],
            found: shape_of(info),
        });
    }
    let freqs = dynapress_ggml::dequantize(info.ggml_type, file.data(info), n).map_err(|e| {
        ImportError::TensorData {
            tensor: info.name.clone(),
            reason: e.to_string(),
        }
    })?;
    llama3_rope_scaling(&freqs, head_dim, base)
}

/// Largest relative difference between `rope_freqs.weight` and the factors
/// recomputed from the fitted parameters that [`llama3_rope_scaling`]
/// accepts. The fitted parameters are rounded to f32 and the factors are
/// recomputed in f32, so a few ulps (1.2e-7 each) are expected.
pub const ROPE_FREQS_TOLERANCE: f64 = 1e-5;

/// Recovers Llama 3 RoPE scaling from llama.cpp's `rope_freqs.weight`: r_i,
/// the divisor of frequency f_i = θ^(−2i/d) with wavelength λ_i = 2π/f_i.
///
/// Llama 3 scaling (transformers' `_compute_llama3_parameters`, llama.cpp's
/// converter) sets r_i = 1 for λ_i < L/high, r_i = factor for λ_i > L/low, and
/// in between 1/r_i = (1 − s_i)/factor + s_i with s_i = (L/λ_i − low)/(high −
/// low), L the original context. Only the two wavelength thresholds L/low and
/// L/high matter: every (L, low, high) with the same ratios gives the same
/// frequencies. So:
///
/// - all r_i = 1 → [`RopeScaling::None`]; all r_i equal to some F > 1 →
///   [`RopeScaling::Linear`] with factor F (the same frequencies);
/// - otherwise factor = max r_i, and the published Llama 3.x values (low 1,
///   high 4, L 8192) are tried first;
/// - else s_i is linear in 1/λ_i on the interpolated band, s = a/λ + b, and a
///   least-squares fit gives the thresholds L/low = −a/b and L/high =
///   a/(1 − b); with fewer than two interpolated frequencies the thresholds
///   are placed inside the gaps between the neighbouring wavelengths (any
///   place there gives the same frequencies). The result is written with
///   `low_freq_factor = 1`, L = L/low (rounded to an integer when that still
///   fits), high = L/(L/high).
///
/// Each candidate is accepted only if [`LlamaHparams::rope_freqs`] reproduces
/// every r_i within [`ROPE_FREQS_TOLERANCE`] (relative); factors that follow
/// no Llama 3 curve (decreasing, below 1, or no frequency in the fully scaled
/// band) are an error.
pub fn llama3_rope_scaling(
    freqs: &[f32],
    head_dim: u32,
    freq_base: f32,
) -> Result<RopeScaling, ImportError> {
    let n = freqs.len();
    let bad = |why: String| ImportError::Rope(format!("{ROPE_FREQS_TENSOR}: {why}"));
    if n == 0 || n != (head_dim / 2) as usize {
        return Err(bad(format!(
            "{n} values for head size {head_dim} (expected {})",
            head_dim / 2
        )));
    }
    if let Some((i, r)) = freqs
        .iter()
        .enumerate()
        .find(|(_, r)| !r.is_finite() || **r < 1.0)
    {
        return Err(bad(format!(
            "value {i} is {r}; Llama 3 factors are finite and at least 1"
        )));
    }
    if freqs.windows(2).any(|w| w[1] < w[0]) {
        return Err(bad(
            "the factors decrease with wavelength, which no Llama 3 scaling does".into(),
        ));
    }
    let factor = freqs[n - 1];
    if factor == 1.0 {
        return Ok(RopeScaling::None);
    }
    if freqs[0] == factor {
        return Ok(RopeScaling::Linear { factor });
    }

    let d = f64::from(head_dim);
    let base = f64::from(freq_base);
    // Wavelengths λ_i = 2π θ^(2i/d) and their inverses u_i.
    let u: Vec<f64> = (0..n)
        .map(|i| 1.0 / (2.0 * std::f64::consts::PI * base.powf(2.0 * i as f64 / d)))
        .collect();
    let fits = |s: RopeScaling| -> Option<RopeScaling> {
        let hp = LlamaHparams {
            arch: Arch::Llama,
            context_length: 1,
            embedding_length: head_dim,
            block_count: 1,
            feed_forward_length: 1,
            head_count: 1,
            head_count_kv: 1,
            head_dim,
            rope_freq_base: freq_base,
            rope_scaling: s,
            rms_norm_eps: 1e-5,
            vocab_size: 1,
            tie_word_embeddings: false,
        };
        let again = hp.rope_freqs()?;
        let worst = again
            .iter()
            .zip(freqs)
            .map(|(x, y)| (f64::from(*x) - f64::from(*y)).abs() / f64::from(*y))
            .fold(0.0, f64::max);
        (worst <= ROPE_FREQS_TOLERANCE).then_some(s)
    };
    let llama3 = |low_wavelen: f64, high_wavelen: f64| RopeScaling::Llama3 {
        factor,
        low_freq_factor: 1.0,
        high_freq_factor: (low_wavelen / high_wavelen) as f32,
        original_context_length: low_wavelen.round().clamp(1.0, f64::from(u32::MAX)) as u32,
    };

    // The published Llama 3.1/3.2/3.3 parameters.
    let published = RopeScaling::Llama3 {
        factor,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_context_length: 8192,
    };
    if let Some(s) = fits(published) {
        return Ok(s);
    }

    // Band membership: r = 1 (short wavelengths), r = factor (long), between.
    let ones: Vec<usize> = (0..n).filter(|&i| freqs[i] == 1.0).collect();
    let fulls: Vec<usize> = (0..n).filter(|&i| freqs[i] == factor).collect();
    let mid: Vec<usize> = (0..n)
        .filter(|&i| freqs[i] != 1.0 && freqs[i] != factor)
        .collect();
    let fl = f64::from(factor);
    let s_of = |i: usize| (1.0 / f64::from(freqs[i]) - 1.0 / fl) / (1.0 - 1.0 / fl);
    // u_low = 1/(L/low) where s = 0; u_high = 1/(L/high) where s = 1.
    let (u_low, u_high) = if mid.len() >= 2 {
        // Least squares of s = a·u + b.
        let m = mid.len() as f64;
        let (su, ss) = mid
            .iter()
            .fold((0.0, 0.0), |(a, b), &i| (a + u[i], b + s_of(i)));
        let (mu, ms) = (su / m, ss / m);
        let (cov, var) = mid.iter().fold((0.0, 0.0), |(c, v), &i| {
            (c + (u[i] - mu) * (s_of(i) - ms), v + (u[i] - mu).powi(2))
        });
        let a = cov / var;
        let b = ms - a * mu;
        (-b / a, (1.0 - b) / a)
    } else {
        // Neighbours: u decreases with i. Short wavelengths (r = 1) have the
        // largest u; there may be none (then any larger u will do).
        let u_one = ones.last().map_or(f64::INFINITY, |&i| u[i]);
        let u_full = fulls.first().map(|&i| u[i]).unwrap_or(0.0);
        match mid.as_slice() {
            [] => {
                let top = if u_one.is_finite() { u_one } else { 2.0 * u[0] };
                (
                    u_full + (top - u_full) / 3.0,
                    u_full + 2.0 * (top - u_full) / 3.0,
                )
            }
            [i] => {
                // s = (u − u_low)/(u_high − u_low) at u_i with u_low in
                // (u_full, u_i], u_high in [u_i, u_one): width w fits both gaps.
                let (ui, s) = (u[*i], s_of(*i));
                let room_low = if s > 0.0 {
                    (ui - u_full) / s
                } else {
                    f64::INFINITY
                };
                let room_high = if s < 1.0 {
                    (u_one - ui) / (1.0 - s)
                } else {
                    f64::INFINITY
                };
                let w = 0.5 * room_low.min(room_high).min(ui);
                (ui - s * w, ui + (1.0 - s) * w)
            }
            _ => unreachable!("two or more handled above"),
        }
    };
    if !(u_low > 0.0 && u_high > u_low && u_high.is_finite()) {
        return Err(bad(format!(
            "the factors {freqs:?} do not follow a Llama 3 curve (fitted thresholds 1/{u_low}, 1/{u_high})"
        )));
    }
    let (low_wavelen, high_wavelen) = (1.0 / u_low, 1.0 / u_high);
    // Prefer the rounded context length; fall back to the raw fit expressed
    // with low_freq_factor = L/low_wavelen for a non-integer L.
    if let Some(s) = fits(llama3(low_wavelen, high_wavelen)) {
        return Ok(s);
    }
    let l = low_wavelen.round().max(1.0);
    let exact = RopeScaling::Llama3 {
        factor,
        low_freq_factor: (l / low_wavelen) as f32,
        high_freq_factor: (l / high_wavelen) as f32,
        original_context_length: l.min(f64::from(u32::MAX)) as u32,
    };
    fits(exact).ok_or_else(|| {
        bad(format!(
            "the factors {freqs:?} do not follow a Llama 3 curve for head size {head_dim} and θ = {freq_base}"
        ))
    })
}

/// One GGUF tensor and where it goes.
struct Planned<'a> {
    info: &'a TensorInfo,
    hf_name: String,
    shape: Vec<usize>,
}

/// The checked mapping of a file: hyper-parameters, the bias/norm flags the
/// tensors imply, and every tensor with its Hugging Face name.
struct Plan<'a> {
    hparams: LlamaHparams,
    qkv_bias: bool,
    o_bias: bool,
    mlp_bias: bool,
    tensors: Vec<Planned<'a>>,
}

fn shape_of(info: &TensorInfo) -> Vec<usize> {
    info.dims.iter().rev().map(|&d| d as usize).collect()
}

fn plan(file: &GgufFile) -> Result<Plan<'_>, ImportError> {
    let hp = hparams(file)?;
    // Bound the expected-tensor list by what the file can hold before building
    // it (a corrupt block_count must not allocate billions of names).
    let n_tensors = file.tensors().len() as u64;
    if u64::from(hp.block_count) * 9 > n_tensors {
        return Err(md_err(
            &format!("{}.block_count", hp.arch.name()),
            format!(
                "{} blocks need at least {} tensors, but the file has {n_tensors}",
                hp.block_count,
                u64::from(hp.block_count) * 9
            ),
        ));
    }
    let has = |n: &str| file.tensor(n).is_some();
    // Optional tensors decide the flags; the expected set then includes them in
    // every block, so a file with them in some blocks only is reported as
    // missing the rest.
    let qkv_bias = has("blk.0.attn_q.bias") || has("blk.0.attn_k.bias") || has("blk.0.attn_v.bias");
    let o_bias = has("blk.0.attn_output.bias");
    let mlp_bias =
        has("blk.0.ffn_gate.bias") || has("blk.0.ffn_up.bias") || has("blk.0.ffn_down.bias");
    match hp.arch {
        // transformers' LlamaConfig.attention_bias puts biases on q, k, v and
        // o together; Qwen3Config's too.
        Arch::Llama | Arch::Qwen3 if qkv_bias != o_bias => {
            let (have, lack) = if qkv_bias {
                ("q/k/v", "blk.0.attn_output.bias")
            } else {
                ("output", "blk.0.attn_{q,k,v}.bias")
            };
            return Err(ImportError::MissingTensors {
                names: vec![format!(
                    "{lack} (the file has {have} biases; Hugging Face's attention_bias covers q, k, v and o together)"
                )],
            });
        }
        _ => {}
    }

    let (e, ff, v) = (
        hp.embedding_length as usize,
        hp.feed_forward_length as usize,
        hp.vocab_size as usize,
    );
    let d = hp.head_dim as usize;
    let (q, kv) = (hp.head_count as usize * d, hp.head_count_kv as usize * d);
    let mut expected: Vec<(String, Vec<usize>)> = vec![
        ("token_embd.weight".into(), vec![v, e]),
        ("output_norm.weight".into(), vec![e]),
    ];
    if !hp.tie_word_embeddings {
        expected.push(("output.weight".into(), vec![v, e]));
    }
    for b in 0..hp.block_count {
        let mut add = |s: &str, shape: Vec<usize>| expected.push((format!("blk.{b}.{s}"), shape));
        add("attn_norm.weight", vec![e]);
        add("attn_q.weight", vec![q, e]);
        add("attn_k.weight", vec![kv, e]);
        add("attn_v.weight", vec![kv, e]);
        add("attn_output.weight", vec![e, q]);
        add("ffn_norm.weight", vec![e]);
        add("ffn_gate.weight", vec![ff, e]);
        add("ffn_up.weight", vec![ff, e]);
        add("ffn_down.weight", vec![e, ff]);
        // Qwen2 always has q/k/v biases (and no others).
        if qkv_bias || hp.arch == Arch::Qwen2 {
            add("attn_q.bias", vec![q]);
            add("attn_k.bias", vec![kv]);
            add("attn_v.bias", vec![kv]);
        }
        if o_bias && hp.arch != Arch::Qwen2 {
            add("attn_output.bias", vec![e]);
        }
        if mlp_bias && hp.arch == Arch::Llama {
            add("ffn_gate.bias", vec![ff]);
            add("ffn_up.bias", vec![ff]);
            add("ffn_down.bias", vec![e]);
        }
        if hp.arch == Arch::Qwen3 {
            add("attn_q_norm.weight", vec![d]);
            add("attn_k_norm.weight", vec![d]);
        }
    }

    let want: HashMap<&str, &[usize]> = expected
        .iter()
        .map(|(n, s)| (n.as_str(), s.as_slice()))
        .collect();
    let mut unknown = Vec::new();
    let mut tensors = Vec::with_capacity(expected.len());
    for info in file.tensors() {
        if info.name == ROPE_FREQS_TENSOR {
            continue;
        }
        let Some(shape) = want.get(info.name.as_str()) else {
            unknown.push(info.name.clone());
            continue;
        };
        let found = shape_of(info);
        if found != *shape {
            return Err(ImportError::TensorShape {
                tensor: info.name.clone(),
                expected: shape.to_vec(),
                found,
            });
        }
        let hf_name = model::hf_tensor_name(&info.name)
            .expect("every expected tensor has a Hugging Face name");
        tensors.push(Planned {
            info,
            hf_name,
            shape: found,
        });
    }
    if !unknown.is_empty() {
        return Err(ImportError::UnknownTensors { names: unknown });
    }
    let present: HashSet<&str> = tensors.iter().map(|t| t.info.name.as_str()).collect();
    let missing: Vec<String> = expected
        .iter()
        .filter(|(n, _)| !present.contains(n.as_str()))
        .map(|(n, _)| n.clone())
        .collect();
    if !missing.is_empty() {
        return Err(ImportError::MissingTensors { names: missing });
    }
    Ok(Plan {
        qkv_bias: qkv_bias || hp.arch == Arch::Qwen2,
        hparams: hp,
        o_bias,
        mlp_bias,
        tensors,
    })
}

/// An f32 metadata value as the JSON number a person would have written: the
/// shortest decimal that rounds to it (1e-5, not 9.999999747378752e-6).
fn f32_json(x: f32) -> Json {
    let shortest: f64 = x.to_string().parse().unwrap_or(f64::from(x));
    json!(shortest)
}

impl Plan<'_> {
    fn config(&self, md: &Metadata) -> Json {
        let hp = &self.hparams;
        let (class, model_type) = match hp.arch {
            Arch::Llama => ("LlamaForCausalLM", "llama"),
            Arch::Qwen2 => ("Qwen2ForCausalLM", "qwen2"),
            Arch::Qwen3 => ("Qwen3ForCausalLM", "qwen3"),
        };
        let rope_scaling = match hp.rope_scaling {
            RopeScaling::None => Json::Null,
            RopeScaling::Linear { factor } => {
                json!({"rope_type": "linear", "factor": f32_json(factor)})
            }
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_context_length,
            } => json!({
                "rope_type": "llama3",
                "factor": f32_json(factor),
                "low_freq_factor": f32_json(low_freq_factor),
                "high_freq_factor": f32_json(high_freq_factor),
                "original_max_position_embeddings": original_context_length,
            }),
        };
        let mut c = json!({
            "architectures": [class],
            "model_type": model_type,
            "hidden_size": hp.embedding_length,
            "intermediate_size": hp.feed_forward_length,
            "num_hidden_layers": hp.block_count,
            "num_attention_heads": hp.head_count,
            "num_key_value_heads": hp.head_count_kv,
            "head_dim": hp.head_dim,
            "hidden_act": "silu",
            "max_position_embeddings": hp.context_length,
            "rms_norm_eps": f32_json(hp.rms_norm_eps),
            "rope_theta": f32_json(hp.rope_freq_base),
            "rope_scaling": rope_scaling,
            "vocab_size": hp.vocab_size,
            "tie_word_embeddings": hp.tie_word_embeddings,
            // The imported tensors are f32.
            "torch_dtype": "float32",
        });
        let o = c.as_object_mut().expect("object literal");
        match hp.arch {
            Arch::Llama => {
                o.insert("attention_bias".into(), json!(self.qkv_bias));
                o.insert("mlp_bias".into(), json!(self.mlp_bias));
            }
            Arch::Qwen2 => {
                o.insert("attention_bias".into(), json!(self.qkv_bias));
                o.insert("use_sliding_window".into(), json!(false));
            }
            Arch::Qwen3 => {
                o.insert("attention_bias".into(), json!(self.o_bias));
                o.insert("use_sliding_window".into(), json!(false));
            }
        }
        for (key, hf) in [
            ("tokenizer.ggml.bos_token_id", "bos_token_id"),
            ("tokenizer.ggml.eos_token_id", "eos_token_id"),
            ("tokenizer.ggml.padding_token_id", "pad_token_id"),
        ] {
            if let Some(id) = md.get(key).and_then(Value::as_u64) {
                o.insert(hf.into(), json!(id));
            }
        }
        c
    }
}

fn decode(file: &GgufFile, p: &Planned, hp: &LlamaHparams) -> Result<ImportedTensor, ImportError> {
    let info = p.info;
    let err = |reason: String| ImportError::TensorData {
        tensor: info.name.clone(),
        reason,
    };
    let n = info.n_elements() as usize;
    let mut data = dynapress_ggml::dequantize(info.ggml_type, file.data(info), n)
        .map_err(|e| err(e.to_string()))?;
    if let Some(heads) = hp.qk_permute_heads(&info.name) {
        data = model::unpermute_qk_rows_f32(&data, p.shape[0], heads)
            .map_err(|e| err(e.to_string()))?;
    }
    Ok(ImportedTensor {
        name: p.hf_name.clone(),
        shape: p.shape.clone(),
        data,
    })
}

/// Rebuilds a Hugging Face `tokenizer.json` from llama.cpp's tokenizer
/// metadata, so that the `tokenizers` library tokenizes like llama.cpp does.
///
/// Two tokenizer models:
///
/// - **`gpt2`** (byte-level BPE). The pre-tokenizer is chosen by
///   `tokenizer.ggml.pre` from [`LLAMA_CPP_PRE_TOKENIZERS`]: a `Sequence` of
///   `Split` (isolated) pre-tokenizers with llama.cpp's regexes, then
///   `ByteLevel` without its own regex; `ignore_merges` where llama.cpp sets
///   it (Llama 3, Tekken, GLM-4, MiniCPM 5); the `NFC` normalizer for `qwen2` (which Qwen2's
///   tokenizer.json declares; llama.cpp skips it, so the two differ only on
///   text that is not in NFC); no normalizer otherwise. The merges
///   (`"a b"`, split at the first space after the first byte as llama.cpp
///   does) must name tokens. ByteLevel decoder.
/// - **`llama`** (SentencePiece, as Llama 2 and Mistral ship it): what
///   llama.cpp's SPM tokenizer does — a space in front of the text and after
///   every special token (`tokenizer.ggml.add_space_prefix`, default true),
///   spaces as `▁`, then pairs of adjacent pieces merged while their
///   concatenation is a token, the highest `tokenizer.ggml.scores` first, and
///   characters that are no token as `<0xXX>` byte tokens — becomes a
///   normalizer (`Prepend("▁")`, `Replace(" ", "▁")`) and a BPE model with
///   `byte_fallback` whose merges are every split of every token into two
///   tokens, ordered by the token's score (ties by id). Decoder: `▁` → space,
///   byte fallback, fuse (the prefix space is kept: a continuation's first
///   space is text).
///
/// Common to both:
///
/// - **Vocabulary**: every token string with its id — normal, control,
///   user-defined, byte and unused alike — goes into `model.vocab`, so the
///   ids are exactly the GGUF ids (the `tokenizers` library assigns added
///   tokens the id their content has in the vocabulary). Two ids with the same
///   string cannot be expressed and are an error (llama.cpp refuses them too).
/// - **Added tokens**: control and unknown tokens, and the BOS/EOS tokens, as
///   special added tokens; user-defined tokens as non-special ones; all matched
///   literally (`normalized: false`), as llama.cpp splits them out first.
/// - **BOS/EOS**: `tokenizer.ggml.add_bos_token` / `add_eos_token`, defaulting
///   like llama.cpp (BOS for SentencePiece, Llama 3 and Tekken; nothing
///   otherwise), become a `TemplateProcessing` post-processor.
///
/// Anything else — WordPiece, Unigram, a pre-tokenizer not in the table, a
/// missing `tokenizer.ggml.pre` — is [`ImportError::UnsupportedTokenizer`],
/// naming what is missing. `tokenizer.ggml.add_space_prefix` and
/// `remove_extra_whitespaces` are ignored for BPE, as llama.cpp's BPE
/// tokenizer ignores them.
pub fn import_tokenizer(md: &Metadata) -> Result<String, ImportError> {
    let m = Md { md };
    let tok_model = m
        .str_opt("tokenizer.ggml.model")?
        .ok_or_else(|| md_err("tokenizer.ggml.model", "missing"))?;
    match tok_model {
        "gpt2" => import_bpe(md),
        "llama" => import_spm(md),
        other => {
            let kind = match other {
                "bert" => " (WordPiece)",
                "t5" => " (Unigram)",
                _ => "",
            };
            Err(unsupported(format!("tokenizer.ggml.model {other:?}{kind}")))
        }
    }
}

fn unsupported(what: String) -> ImportError {
    ImportError::UnsupportedTokenizer {
        what,
        supported: supported_tokenizers(),
    }
}

/// What [`import_tokenizer`] can rebuild, for error messages: the tokenizer
/// models and the canonical `tokenizer.ggml.pre` names.
pub fn supported_tokenizers() -> String {
    let names: Vec<String> = LLAMA_CPP_PRE_TOKENIZERS
        .iter()
        .map(|p| format!("{:?}", p.names[0]))
        .collect();
    format!(
        "dynapress imports tokenizer.ggml.model \"llama\" (SentencePiece) and \"gpt2\" (byte-level BPE) with tokenizer.ggml.pre {} and their aliases, listed in docs/gguf.md",
        names.join(", ")
    )
}

/// The parts of the tokenizer metadata both models share.
struct VocabParts<'a> {
    tokens: &'a [String],
    ids: HashMap<&'a str, usize>,
    vocab: serde_json::Map<String, Json>,
    added: Vec<Json>,
    bos: Option<usize>,
    eos: Option<usize>,
    unk: Option<usize>,
}

/// Tokens, types, the special ids (`defaults` for bos/eos/unk when the keys
/// are absent and the id exists, as llama.cpp's SentencePiece loader does),
/// the vocabulary and the added tokens.
fn vocab_parts<'a>(
    m: &Md<'a>,
    defaults: [Option<usize>; 3],
) -> Result<VocabParts<'a>, ImportError> {
    let md = m.md;
    let tokens = m.str_array("tokenizer.ggml.tokens")?;
    let n = tokens.len();
    let types: Vec<i64> = match md.get("tokenizer.ggml.token_type") {
        None => vec![i64::from(token_type::NORMAL); n],
        Some(v) => int_array(v).ok_or_else(|| {
            md_err(
                "tokenizer.ggml.token_type",
                format!("expected an array of integers, found {}", type_of(v)),
            )
        })?,
    };
    if types.len() != n {
        return Err(md_err(
            "tokenizer.ggml.token_type",
            format!("{} entries for {n} tokens", types.len()),
        ));
    }
    let special_id = |key: &str, default: Option<usize>| -> Result<Option<usize>, ImportError> {
        match m.u32_opt(key)? {
            Some(id) if id as usize >= n => Err(md_err(
                key,
                format!("{id} is outside the vocabulary of {n} tokens"),
            )),
            Some(id) => Ok(Some(id as usize)),
            None => Ok(default.filter(|&d| d < n)),
        }
    };
    let [bos_d, eos_d, unk_d] = defaults;
    let bos = special_id("tokenizer.ggml.bos_token_id", bos_d)?;
    let eos = special_id("tokenizer.ggml.eos_token_id", eos_d)?;
    let unk = special_id("tokenizer.ggml.unknown_token_id", unk_d)?;

    let mut vocab = serde_json::Map::new();
    let mut ids: HashMap<&str, usize> = HashMap::with_capacity(n);
    for (id, t) in tokens.iter().enumerate() {
        if let Some(first) = ids.insert(t.as_str(), id) {
            return Err(ImportError::Tokenizer(format!(
                "tokens {first} and {id} are both {t:?}; a tokenizer.json vocabulary maps each string to one id"
            )));
        }
        vocab.insert(t.clone(), json!(id));
    }

    let mut added = Vec::new();
    for (id, (t, &ty)) in tokens.iter().zip(&types).enumerate() {
        let special = ty == i64::from(token_type::CONTROL)
            || ty == i64::from(token_type::UNKNOWN)
            || Some(id) == bos
            || Some(id) == eos;
        if special || ty == i64::from(token_type::USER_DEFINED) {
            added.push(json!({
                "id": id,
                "content": t,
                "single_word": false,
                "lstrip": false,
                "rstrip": false,
                "normalized": false,
                "special": special,
            }));
        }
    }
    Ok(VocabParts {
        tokens,
        ids,
        vocab,
        added,
        bos,
        eos,
        unk,
    })
}

/// The `TemplateProcessing` post-processor that adds BOS and/or EOS, or `None`
/// when neither is added.
fn template_processor(
    v: &VocabParts<'_>,
    add_bos: bool,
    add_eos: bool,
) -> Result<Option<Json>, ImportError> {
    if !add_bos && !add_eos {
        return Ok(None);
    }
    let token = |key: &str, id: Option<usize>| {
        id.map(|i| (v.tokens[i].as_str(), i))
            .ok_or_else(|| md_err(key, "missing, but the tokenizer is set to add it"))
    };
    let bos_t = if add_bos {
        Some(token("tokenizer.ggml.bos_token_id", v.bos)?)
    } else {
        None
    };
    let eos_t = if add_eos {
        Some(token("tokenizer.ggml.eos_token_id", v.eos)?)
    } else {
        None
    };
    let piece = |t: &str, type_id: u32| json!({"SpecialToken": {"id": t, "type_id": type_id}});
    let seq = |s: &str, type_id: u32| json!({"Sequence": {"id": s, "type_id": type_id}});
    let wrap = |s: &str, type_id: u32| {
        let mut out = Vec::new();
        if let Some((t, _)) = bos_t {
            out.push(piece(t, type_id));
        }
        out.push(seq(s, type_id));
        if let Some((t, _)) = eos_t {
            out.push(piece(t, type_id));
        }
        out
    };
    let mut pair = wrap("A", 0);
    pair.extend(wrap("B", 1));
    let mut specials = serde_json::Map::new();
    for (t, id) in [bos_t, eos_t].into_iter().flatten() {
        specials.insert(t.into(), json!({"id": t, "ids": [id], "tokens": [t]}));
    }
    Ok(Some(json!({
        "type": "TemplateProcessing",
        "single": wrap("A", 0),
        "pair": pair,
        "special_tokens": specials,
    })))
}

/// Byte-level BPE (`tokenizer.ggml.model = "gpt2"`); see [`import_tokenizer`].
fn import_bpe(md: &Metadata) -> Result<String, ImportError> {
    let m = Md { md };
    let pre_name = m.str_opt("tokenizer.ggml.pre")?.ok_or_else(|| {
        unsupported(
            "a byte-level BPE tokenizer without tokenizer.ggml.pre (llama.cpp falls back to its \"default\" pre-tokenizer and warns that generation quality will be degraded; set the key to the model's pre-tokenizer)".into(),
        )
    })?;
    let pre = llama_cpp_pre_tokenizer(pre_name)
        .ok_or_else(|| unsupported(format!("tokenizer.ggml.pre {pre_name:?}")))?;
    // llama.cpp reads tokenizer.ggml.add_space_prefix and
    // remove_extra_whitespaces for every model but its BPE tokenizer uses
    // neither, so they are ignored here too (only their type is checked).
    for key in [
        "tokenizer.ggml.add_space_prefix",
        "tokenizer.ggml.remove_extra_whitespaces",
    ] {
        m.bool_opt(key)?;
    }
    let v = vocab_parts(&m, [None, None, None])?;
    let add_bos = m
        .bool_opt("tokenizer.ggml.add_bos_token")?
        .unwrap_or(pre.add_bos);
    let add_eos = m.bool_opt("tokenizer.ggml.add_eos_token")?.unwrap_or(false);

    let merges_in = m.str_array("tokenizer.ggml.merges")?;
    let mut merges = Vec::with_capacity(merges_in.len());
    for (i, mg) in merges_in.iter().enumerate() {
        let pos = mg.bytes().skip(1).position(|b| b == b' ').map(|p| p + 1);
        let Some(pos) = pos else {
            return Err(ImportError::Tokenizer(format!(
                "merge {i} {mg:?} has no space between its two parts"
            )));
        };
        let (a, b) = (&mg[..pos], &mg[pos + 1..]);
        for part in [a, b, &format!("{a}{b}")] {
            if !v.ids.contains_key(part) {
                return Err(ImportError::Tokenizer(format!(
                    "merge {i} {mg:?}: {part:?} is not a token"
                )));
            }
        }
        merges.push(json!([a, b]));
    }

    let mut pretokenizers: Vec<Json> = pre
        .regexes
        .iter()
        .map(|r| json!({"type": "Split", "pattern": {"Regex": r}, "behavior": "Isolated", "invert": false}))
        .collect();
    pretokenizers.push(json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}));
    let normalizer = if pre_name == "qwen2" {
        json!({"type": "NFC"})
    } else {
        Json::Null
    };

    let bl_post = json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true});
    let post_processor = match template_processor(&v, add_bos, add_eos)? {
        Some(t) => json!({"type": "Sequence", "processors": [bl_post, t]}),
        None => bl_post,
    };

    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": v.added,
        "normalizer": normalizer,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": pretokenizers},
        "post_processor": post_processor,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE",
            "dropout": null,
            "unk_token": null,
            "continuing_subword_prefix": null,
            "end_of_word_suffix": null,
            "fuse_unk": false,
            "byte_fallback": false,
            "ignore_merges": pre.ignore_merges,
            "vocab": v.vocab,
            "merges": merges,
        },
    });
    Ok(tokenizer.to_string())
}

/// SentencePiece's whitespace mark.
const SPM_SPACE: &str = "\u{2581}";

/// SentencePiece (`tokenizer.ggml.model = "llama"`); see [`import_tokenizer`].
fn import_spm(md: &Metadata) -> Result<String, ImportError> {
    let m = Md { md };
    // llama.cpp's defaults for this model: <unk> 0, <s> 1, </s> 2.
    let v = vocab_parts(&m, [Some(1), Some(2), Some(0)])?;
    let n = v.tokens.len();
    let scores: Vec<f32> = match md.get("tokenizer.ggml.scores") {
        None => vec![0.0; n],
        Some(Value::Array(Array::F32(s))) => s.clone(),
        Some(other) => int_array(other)
            .map(|s| s.into_iter().map(|x| x as f32).collect())
            .ok_or_else(|| {
                md_err(
                    "tokenizer.ggml.scores",
                    format!(
                        "expected an array of floats or integers, found {}",
                        type_of(other)
                    ),
                )
            })?,
    };
    if scores.len() < n {
        return Err(md_err(
            "tokenizer.ggml.scores",
            format!("{} entries for {n} tokens", scores.len()),
        ));
    }
    let add_space_prefix = m
        .bool_opt("tokenizer.ggml.add_space_prefix")?
        .unwrap_or(true);
    let add_bos = m.bool_opt("tokenizer.ggml.add_bos_token")?.unwrap_or(true);
    let add_eos = m.bool_opt("tokenizer.ggml.add_eos_token")?.unwrap_or(false);

    // Every way to make a token of two tokens, the best score first. llama.cpp
    // merges the adjacent pair whose concatenation has the highest score (the
    // leftmost among equal scores); a BPE model merges the pair of lowest rank
    // (the leftmost among equal ranks), so ranks in score order reproduce it
    // wherever scores differ.
    let mut cands: Vec<(f32, usize, usize)> = Vec::new();
    for (id, t) in v.tokens.iter().enumerate() {
        for (split, _) in t.char_indices().skip(1) {
            if v.ids.contains_key(&t[..split]) && v.ids.contains_key(&t[split..]) {
                cands.push((scores[id], id, split));
            }
        }
    }
    cands.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let merges: Vec<Json> = cands
        .iter()
        .map(|&(_, id, split)| {
            let t = &v.tokens[id];
            json!([&t[..split], &t[split..]])
        })
        .collect();

    let replace_space =
        json!({"type": "Replace", "pattern": {"String": " "}, "content": SPM_SPACE});
    let normalizer = if add_space_prefix {
        json!({"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": SPM_SPACE},
            replace_space,
        ]})
    } else {
        replace_space
    };
    // No `Strip` of the prefix space (Llama 2's tokenizer.json has one):
    // dynapress decodes continuations of a prompt, whose first token's space
    // belongs to the text, as llama.cpp's per-token pieces keep it.
    let decoders = vec![
        json!({"type": "Replace", "pattern": {"String": SPM_SPACE}, "content": " "}),
        json!({"type": "ByteFallback"}),
        json!({"type": "Fuse"}),
    ];
    let post_processor = template_processor(&v, add_bos, add_eos)?.unwrap_or(Json::Null);
    let unk_token = v.unk.map(|i| v.tokens[i].clone());

    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": v.added,
        "normalizer": normalizer,
        "pre_tokenizer": null,
        "post_processor": post_processor,
        "decoder": {"type": "Sequence", "decoders": decoders},
        "model": {
            "type": "BPE",
            "dropout": null,
            "unk_token": unk_token,
            "continuing_subword_prefix": null,
            "end_of_word_suffix": null,
            "fuse_unk": true,
            "byte_fallback": true,
            "ignore_merges": false,
            "vocab": v.vocab,
            "merges": merges,
        },
    });
    Ok(tokenizer.to_string())
}

/// Any integer array as i64 (token types are i32 in llama.cpp's files).
fn int_array(v: &Value) -> Option<Vec<i64>> {
    let Value::Array(a) = v else { return None };
    Some(match a {
        Array::I32(v) => v.iter().map(|&x| i64::from(x)).collect(),
        Array::U32(v) => v.iter().map(|&x| i64::from(x)).collect(),
        Array::I8(v) => v.iter().map(|&x| i64::from(x)).collect(),
        Array::U8(v) => v.iter().map(|&x| i64::from(x)).collect(),
        Array::I16(v) => v.iter().map(|&x| i64::from(x)).collect(),
        Array::U16(v) => v.iter().map(|&x| i64::from(x)).collect(),
        Array::I64(v) => v.clone(),
        Array::U64(v) => v.iter().map(|&x| x as i64).collect(),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hp(scaling: RopeScaling, head_dim: u32, base: f32) -> LlamaHparams {
        LlamaHparams {
            arch: Arch::Llama,
            context_length: 131072,
            embedding_length: head_dim * 4,
            block_count: 1,
            feed_forward_length: 1,
            head_count: 4,
            head_count_kv: 4,
            head_dim,
            rope_freq_base: base,
            rope_scaling: scaling,
            rms_norm_eps: 1e-5,
            vocab_size: 1,
            tie_word_embeddings: false,
        }
    }

    fn llama3(factor: f32, low: f32, high: f32, ctx: u32) -> RopeScaling {
        RopeScaling::Llama3 {
            factor,
            low_freq_factor: low,
            high_freq_factor: high,
            original_context_length: ctx,
        }
    }

    /// Wavelength thresholds (L/low, L/high) of a Llama 3 scaling.
    fn thresholds(s: RopeScaling) -> (f64, f64) {
        let RopeScaling::Llama3 {
            low_freq_factor,
            high_freq_factor,
            original_context_length,
            ..
        } = s
        else {
            panic!("{s:?} is not Llama 3");
        };
        let l = f64::from(original_context_length);
        (
            l / f64::from(low_freq_factor),
            l / f64::from(high_freq_factor),
        )
    }

    #[test]
    fn published_llama3_parameters_come_back_exactly() {
        // Llama 3.1 8B (d 128, θ 500000, factor 8) and 3.2 1B (d 64, factor 32).
        for (d, factor) in [(128, 8.0), (64, 32.0)] {
            let s = llama3(factor, 1.0, 4.0, 8192);
            let freqs = hp(s, d, 500000.0).rope_freqs().unwrap();
            assert_eq!(llama3_rope_scaling(&freqs, d, 500000.0).unwrap(), s);
        }
    }

    #[test]
    fn other_llama3_parameters_give_the_same_frequencies() {
        // (d, θ, factor, low, high, L): two or more interpolated frequencies,
        // exactly one, none, and thresholds that are not the published ones.
        let cases = [
            (16, 10000.0, 8.0, 1.0, 4.0, 64),
            (128, 500000.0, 16.0, 1.5, 6.0, 12000),
            (64, 10000.0, 4.0, 2.0, 3.0, 4096),
            (32, 10000.0, 8.0, 1.0, 1.2, 100),
            (64, 500000.0, 32.0, 1.0, 4.0, 300),
        ];
        for (d, base, factor, low, high, ctx) in cases {
            let s = llama3(factor, low, high, ctx);
            let freqs = hp(s, d, base).rope_freqs().unwrap();
            let mid = freqs.iter().filter(|&&r| r != 1.0 && r != factor).count();
            let got = llama3_rope_scaling(&freqs, d, base).unwrap();
            let again = hp(got, d, base).rope_freqs().unwrap();
            for (a, b) in again.iter().zip(&freqs) {
                assert!(
                    ((a - b) / b).abs() <= 1e-5,
                    "{s:?} -> {got:?}: {again:?} vs {freqs:?}"
                );
            }
            if mid >= 2 {
                // Thresholds are identified: they must match the originals.
                let (lw, hw) = thresholds(got);
                let (lw0, hw0) = thresholds(s);
                assert!((lw / lw0 - 1.0).abs() < 1e-3, "{got:?} vs {s:?}");
                assert!((hw / hw0 - 1.0).abs() < 1e-3, "{got:?} vs {s:?}");
            }
        }
    }

    #[test]
    fn degenerate_and_invalid_factors() {
        assert_eq!(
            llama3_rope_scaling(&[1.0; 8], 16, 1e4).unwrap(),
            RopeScaling::None
        );
        assert_eq!(
            llama3_rope_scaling(&[4.0; 8], 16, 1e4).unwrap(),
            RopeScaling::Linear { factor: 4.0 }
        );
        for bad in [
            vec![1.0, 2.0, 1.5, 4.0],
            vec![0.5, 1.0, 2.0, 4.0],
            vec![1.0, f32::NAN, 2.0, 4.0],
        ] {
            let e = llama3_rope_scaling(&bad, 8, 1e4).unwrap_err().to_string();
            assert!(e.contains("rope_freqs.weight"), "{e}");
        }
        // Wrong length.
        assert!(llama3_rope_scaling(&[1.0, 2.0], 16, 1e4).is_err());
        // A curve no Llama 3 parameters produce: the interpolated values are
        // far from 1/((1-s)/F + s) with s linear in 1/λ.
        let e = llama3_rope_scaling(&[1.0, 1.01, 7.9, 7.95, 8.0, 8.0, 8.0, 8.0], 16, 1e4)
            .unwrap_err()
            .to_string();
        assert!(e.contains("Llama 3 curve"), "{e}");
    }

    #[test]
    fn f32_metadata_becomes_the_decimal_a_person_wrote() {
        assert_eq!(f32_json(1e-5).as_f64(), Some(1e-5));
        assert_ne!(f64::from(1e-5f32), 1e-5);
        assert_eq!(f32_json(10000.0).as_f64(), Some(10000.0));
        assert_eq!(f32_json(1e-6).as_f64(), Some(1e-6));
    }
}
