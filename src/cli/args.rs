//! Flag groups shared by several commands, flattened into each command's
//! arguments and converted here into the library's parameter types, so a flag
//! means the same thing (and has the same default) everywhere.

use anyhow::Context;
use clap::{Args, ValueEnum};
use dynapress::database::{
    DEFAULT_GGML_TYPES, DEFAULT_SPARSITIES, LevelSparsity, Method, MethodSpec,
};
use dynapress::export::GgufTypes;
use dynapress::search::evopress::{DEFAULT_STAGES_ARG, EvoParams, Init, parse_stages};
use dynapress::selection::Budget;
use dynapress_ggml::GgmlType;

/// What to export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// A Hugging Face directory with dequantized weights (transformers loads it).
    Safetensors,
    /// dynapress's own format: a Hugging Face directory with every searched
    /// layer as stored (codes, scales, zeros or ggml blocks); `eval`,
    /// `generate` and `pack` read it.
    Dynapress,
    /// A GGUF file llama.cpp runs (needs a database of ggml types).
    Gguf,
    /// A compressed-tensors checkpoint (llm-compressor's packed format with a
    /// per-module quantization_config) that transformers and vLLM load
    /// (needs a gptq or rtn database).
    CompressedTensors,
    /// A GPTQ checkpoint (qweight/qzeros/scales/g_idx) whose modules keep
    /// their own bits through GPTQModel's `dynamic` rules; GPTQModel loads it
    /// (needs a gptq or rtn database of 2, 3, 4 or 8 bits).
    Gptq,
}

/// The runtime a model is made for: its levels are restricted to what that
/// runtime's kernels serve (docs/served-formats.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Runtime {
    /// No restriction.
    Any,
    /// vLLM (compressed-tensors, Marlin kernels): symmetric 4- and 8-bit
    /// GPTQ grids (`export --format compressed-tensors`).
    Vllm,
    /// GPTQModel's kernels: 2-, 3-, 4- and 8-bit GPTQ grids.
    Gptqmodel,
    /// llama.cpp: ggml types (gptq-kquant; `--format gguf`).
    #[value(name = "llama.cpp")]
    LlamaCpp,
}

impl Runtime {
    /// The grid bit widths the runtime serves (`None`: any, or not a grid runtime).
    pub fn grid_bits(self) -> Option<&'static [u8]> {
        match self {
            Runtime::Vllm => Some(&[4, 8]),
            Runtime::Gptqmodel => Some(&[2, 3, 4, 8]),
            Runtime::Any | Runtime::LlamaCpp => None,
        }
    }
}

/// The compressor and the levels of the database.
#[derive(Args, Debug, Clone)]
pub struct MethodArgs {
    /// Restrict the levels to what a runtime serves: vllm (symmetric 4/8-bit
    /// grids), gptqmodel (2/3/4/8-bit grids), llama.cpp (ggml types), any.
    #[arg(long, value_enum, default_value = "any")]
    pub runtime: Runtime,
    /// Compressor: gptq or rtn (grids of --bits with --group-size), kquant
    /// (ggml's encoders) or gptq-kquant (GPTQ inside ggml's grids) for --types,
    /// sparsegpt (SparseGPT at --sparsities, kept weights f16 or on
    /// --sparse-bits grids). Default: gptq, or gptq-kquant with --format gguf.
    #[arg(long, value_parser = method_parser())]
    pub method: Option<Method>,
    /// Bit widths, one level each (gptq, rtn).
    #[arg(long, value_delimiter = ',', default_value = "2,3,4,5,6,8")]
    pub bits: Vec<u8>,
    /// ggml types, one level each (kquant, gptq-kquant). Default: the i-quants
    /// and the k-quants (with --no-imatrix: without IQ2_XXS and IQ2_XS, which
    /// need an importance matrix).
    #[arg(long, value_delimiter = ',', default_value = DEFAULT_GGML_TYPES)]
    pub types: Vec<String>,
    /// kquant, gptq-kquant: do not weight by the calibration importance matrix.
    #[arg(long)]
    pub no_imatrix: bool,
    /// Weights per quantization group along the input dimension (0 = whole row).
    #[arg(long, default_value_t = 128)]
    pub group_size: usize,
    /// GPTQ: process columns in descending Hessian-diagonal order (static groups).
    #[arg(long)]
    pub act_order: bool,
    /// Symmetric grid (scale only, no zero point).
    #[arg(long)]
    pub sym: bool,
    /// GPTQ dampening, relative to the mean Hessian diagonal.
    #[arg(long, default_value_t = 0.01)]
    pub damp: f64,
    /// Search the MSE-optimal clipping range per group.
    #[arg(long)]
    pub clip: bool,
    /// sparsegpt: one level each: a fraction of each row pruned (steps of
    /// 0.01), or N:M (N of every M consecutive input columns pruned, e.g.
    /// 2:4, counted as N/M by --target-sparsity).
    #[arg(long, value_delimiter = ',', default_value = DEFAULT_SPARSITIES)]
    pub sparsities: Vec<LevelSparsity>,
    /// sparsegpt: also quantize the kept weights on grids of these bit widths
    /// (joint levels: every sparsity at every width, --group-size, --sym);
    /// without it the kept weights are f16.
    #[arg(long, value_delimiter = ',')]
    pub sparse_bits: Vec<u8>,
}

impl MethodArgs {
    /// `--types`; the default without IQ2_XXS and IQ2_XS under
    /// `--no-imatrix` (ggml encodes them only with an importance matrix).
    fn ggml_types(&self) -> Vec<String> {
        let default: Vec<String> = DEFAULT_GGML_TYPES.split(',').map(String::from).collect();
        if self.no_imatrix && self.types == default {
            default
                .into_iter()
                .filter(|t| GgmlType::from_name(t).is_none_or(|ty| !ty.requires_imatrix()))
                .collect()
        } else {
            self.types.clone()
        }
    }

    /// The method spec, with `default` when --method is not given (gptq-kquant
    /// for `--runtime llama.cpp`), restricted to `--runtime`'s levels.
    pub fn spec(&self, default: Method) -> anyhow::Result<MethodSpec> {
        let default = match self.runtime {
            Runtime::LlamaCpp => Method::GptqKquant,
            Runtime::Vllm | Runtime::Gptqmodel if default.is_ggml() => Method::Gptq,
            _ => default,
        };
        let method = self.method.unwrap_or(default);
        if method == Method::Sparsegpt && self.runtime != Runtime::Any {
            crate::bad_arg!(
                "sparse levels run in dynapress (and, exported dense, in transformers); --runtime {} does not serve them",
                self.runtime.to_possible_value().expect("listed").get_name()
            );
        }
        let mut bits = self.bits.clone();
        let mut sym = self.sym;
        match (self.runtime, self.runtime.grid_bits()) {
            (Runtime::LlamaCpp, _) if !method.is_ggml() => crate::bad_arg!(
                "--runtime llama.cpp needs ggml types: --method kquant or gptq-kquant (the default for it)"
            ),
            (r, Some(allowed)) => {
                if method.is_ggml() {
                    crate::bad_arg!(
                        "--runtime {} serves GPTQ grids: --method gptq or rtn, not a ggml method",
                        r.to_possible_value().expect("listed").get_name()
                    );
                }
                bits.retain(|b| allowed.contains(b));
                if bits.is_empty() {
                    crate::bad_arg!(
                        "--runtime {} serves {allowed:?} bits; --bits has none of them",
                        r.to_possible_value().expect("listed").get_name()
                    );
                }
                sym |= r == Runtime::Vllm;
            }
            _ => {}
        }
        Ok(MethodSpec {
            method,
            bits,
            types: self.ggml_types(),
            imatrix: !self.no_imatrix,
            group_size: self.group_size,
            sym,
            act_order: self.act_order,
            damp: self.damp,
            clip: self.clip,
            sparsities: if method == Method::Sparsegpt {
                self.sparsities.clone()
            } else {
                vec![]
            },
            sparse_bits: if method == Method::Sparsegpt {
                self.sparse_bits.clone()
            } else {
                vec![]
            },
        })
    }
}

/// EvoPress's parameters.
#[derive(Args, Debug, Clone)]
pub struct EvoArgs {
    /// EvoPress generations.
    #[arg(long, default_value_t = EvoParams::default().generations)]
    pub generations: usize,
    /// Offspring per generation.
    #[arg(long, default_value_t = EvoParams::default().offspring)]
    pub offspring: usize,
    /// Selection stages TOKENS:SURVIVORS,... (the last keeps 1; the parent joins it).
    #[arg(long, default_value = DEFAULT_STAGES_ARG)]
    pub stages: String,
    /// Racing: drop an offspring once it is this many standard errors worse
    /// (paired, per window) than the stage's last survivor; 0 turns it off.
    #[arg(long, default_value_t = EvoParams::default().race_z)]
    pub race_z: f64,
    /// Starting point: knapsack, or random (all layers at the target if it is a level).
    #[arg(long, value_enum, default_value = "knapsack")]
    pub init: Init,
    /// Seed of every random choice of the search.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl EvoArgs {
    /// The checked parameters.
    pub fn params(&self) -> anyhow::Result<EvoParams> {
        let stages = match parse_stages(&self.stages) {
            Ok(s) => s,
            Err(e) => crate::bad_arg!("--stages: {e}"),
        };
        super::check_evo_args(self.offspring, &stages)?;
        Ok(EvoParams {
            generations: self.generations,
            offspring: self.offspring,
            stages,
            init: self.init,
            seed: self.seed,
            race_z: self.race_z,
            ..Default::default()
        })
    }
}

/// The calibration pool of a KL fitness (EvoPress over levels or depth).
#[derive(Args, Debug, Clone)]
pub struct FitnessArgs {
    /// Calibration tokens in the pool the stages sample from (default: 32768, or
    /// what the text holds; at least the largest stage).
    #[arg(long)]
    pub calib_tokens: Option<usize>,
    /// Tokens per calibration window.
    #[arg(long, default_value_t = 256)]
    pub seq_len: usize,
    /// Base-model top-k log-probabilities kept per position when full ones do not fit.
    #[arg(long, default_value_t = 256)]
    pub topk: usize,
}

impl FitnessArgs {
    /// Refuses values no fitness can use.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.calib_tokens == Some(0) {
            crate::bad_arg!("--calib-tokens must be positive (or left out: the largest stage)");
        }
        if self.seq_len < 2 {
            crate::bad_arg!("--seq-len must be at least 2");
        }
        Ok(())
    }
}

/// The budget: bits per weight, the byte size of a GGUF file, or a sparsity.
#[derive(Args, Debug, Clone)]
pub struct BudgetArgs {
    /// Budget: average storage bits per weight of the linear layers (scales
    /// and zeros included). Default 3 unless --target-size is given.
    #[arg(long, conflicts_with_all = ["target_size", "target_sparsity"])]
    pub target_bits: Option<f64>,
    /// Budget instead: size in bytes of the exported GGUF file (--format gguf;
    /// embeddings/output at --embed-type/--output-type).
    #[arg(long, conflicts_with = "target_sparsity")]
    pub target_size: Option<u64>,
    /// Budget instead: average fraction of pruned weights (a sparsegpt
    /// database with f16 values): the storage of every layer at it.
    #[arg(long)]
    pub target_sparsity: Option<f64>,
}

impl BudgetArgs {
    /// The budget; `default_bits` when neither flag is given (`None`: one is required).
    pub fn budget(&self, default_bits: Option<f64>, gguf: bool) -> anyhow::Result<Budget> {
        if let Some(s) = self.target_sparsity {
            if !(0.0..1.0).contains(&s) {
                crate::bad_arg!("--target-sparsity {s} is not a fraction in [0, 1)");
            }
            return Ok(Budget::Sparsity(s));
        }
        match (self.target_bits, self.target_size) {
            (_, Some(0)) => crate::bad_arg!("--target-size must be a positive number of bytes"),
            (_, Some(_)) if !gguf => crate::bad_arg!(
                "--target-size is the size of a GGUF file: it needs --format gguf (or give --target-bits)"
            ),
            (_, Some(n)) => Ok(Budget::GgufBytes(n)),
            (Some(b), None) => {
                super::check_target_bits(b)?;
                Ok(Budget::Bits(b))
            }
            (None, None) => match default_bits {
                Some(b) => Ok(Budget::Bits(b)),
                None => crate::bad_arg!("give a budget: --target-bits B or --target-size BYTES"),
            },
        }
    }
}

/// The GGUF types of the embedding and output.
#[derive(Args, Debug, Clone)]
pub struct GgufTypeArgs {
    /// gguf: type of token_embd.weight (for tied embeddings, the output too).
    /// `auto`: searched with the linear layers under a --target-size budget
    /// (among Q2_K … Q8_0, starting from Q6_K), Q6_K under --target-bits.
    #[arg(long, default_value = "auto")]
    pub embed_type: String,
    /// gguf: type of output.weight; `auto` as for --embed-type.
    #[arg(long, default_value = "auto")]
    pub output_type: String,
}

impl GgufTypeArgs {
    /// The parsed types.
    pub fn types(&self) -> anyhow::Result<GgufTypes> {
        let d = GgufTypes::default();
        let one = |s: &str, fallback| -> anyhow::Result<(GgmlType, bool)> {
            if s.eq_ignore_ascii_case("auto") {
                Ok((fallback, true))
            } else {
                Ok((parse_type(s)?, false))
            }
        };
        let (embed, search_embed) = one(&self.embed_type, d.embed)?;
        let (output, search_output) = one(&self.output_type, d.output)?;
        Ok(GgufTypes {
            embed,
            output,
            search_embed,
            search_output,
        })
    }
}

/// `--method`: the closed set of compressors, listed in `--help` and errors.
fn method_parser() -> impl clap::builder::TypedValueParser<Value = Method> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(["gptq", "rtn", "kquant", "gptq-kquant", "sparsegpt"])
        .map(|s| s.parse::<Method>().expect("every listed value parses"))
}

/// A ggml type by name (`Q4_K`, `q6_k`, `F16`, …).
pub fn parse_type(s: &str) -> anyhow::Result<GgmlType> {
    GgmlType::from_name(s)
        .with_context(|| format!("unknown ggml type `{s}` (e.g. Q4_K, Q6_K, Q8_0, F16)"))
}
