use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use dynapress::database::Database;
use dynapress::export::{ExportDtype, export_native, export_safetensors};
use dynapress::formats::gguf::{
    GgufTypes, export_gguf, llama_quantize_command, llama_quantize_recipe,
};
use dynapress::model::ModelFiles;
use dynapress::search::ConfigFile;
use dynapress_ggml::GgmlType;

#[derive(Args)]
pub struct ExportArgs {
    /// Hugging Face model directory or GGUF file (the original).
    #[arg(long)]
    model: PathBuf,
    /// Layer database.
    #[arg(long)]
    db: PathBuf,
    /// Configuration from `dynapress search`.
    #[arg(long)]
    config: PathBuf,
    /// Output: a directory (safetensors) or a file (gguf).
    #[arg(long)]
    out: PathBuf,
    /// safetensors (a Hugging Face directory, dequantized weights), dynapress
    /// (a directory with each searched layer in its compressed form: codes,
    /// scales, zeros or ggml blocks; `eval`, `generate` and `pack` read it), or
    /// gguf (the exact ggml blocks; needs a kquant or gptq-kquant database).
    #[arg(long, default_value = "safetensors")]
    format: String,
    /// safetensors: dtype of the exported weights (original, f32, bf16, f16).
    #[arg(long, default_value = "original")]
    dtype: ExportDtype,
    /// gguf: type of token_embd.weight.
    #[arg(long, default_value = "Q6_K")]
    embed_type: String,
    /// gguf: type of output.weight.
    #[arg(long, default_value = "Q6_K")]
    output_type: String,
    /// gguf: also write a llama-quantize --tensor-type-file reproducing the mix.
    #[arg(long)]
    recipe: Option<PathBuf>,
    /// Replace --out if it exists.
    #[arg(long)]
    force: bool,
    #[arg(long)]
    json: bool,
}

pub fn parse_type(s: &str) -> anyhow::Result<GgmlType> {
    GgmlType::from_name(s)
        .with_context(|| format!("unknown ggml type `{s}` (e.g. Q4_K, Q6_K, Q8_0, F16)"))
}

pub fn run(a: ExportArgs) -> anyhow::Result<()> {
    let files = ModelFiles::open(&a.model).context("loading the model")?;
    let db = Database::open(&a.db)?;
    db.check_model(&files)?;
    let config = ConfigFile::read(&a.config)?;
    match a.format.as_str() {
        "safetensors" => {
            let r = export_safetensors(&files, &db, &config, &a.config, &a.out, a.dtype, a.force)?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!(
                    "{}: {} searched weights at {:.4} bits per weight (compressed form); model.safetensors {:.1} MB (dequantized)",
                    r.out.display(),
                    r.searched_params,
                    r.searched_bits_per_weight,
                    r.safetensors_bytes as f64 / 1e6
                );
            }
        }
        "dynapress" => {
            let r = export_native(&files, &db, &config, &a.config, &a.out, a.force)?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!(
                    "{}: {} searched weights at {:.4} bits per weight; model.safetensors {:.1} MB (compressed form)",
                    r.out.display(),
                    r.searched_params,
                    r.searched_bits_per_weight,
                    r.safetensors_bytes as f64 / 1e6
                );
            }
        }
        "gguf" => {
            if a.out.exists() && !a.force {
                anyhow::bail!("{}: exists; pass --force to replace it", a.out.display());
            }
            let types = GgufTypes {
                embed: parse_type(&a.embed_type)?,
                output: parse_type(&a.output_type)?,
            };
            let r = export_gguf(&files, &db, &config, &a.config, &a.out, types)?;
            if let Some(path) = &a.recipe {
                let text = llama_quantize_recipe(&db, &config, &a.config)?;
                dynapress::fsutil::write_atomic(path, text.as_bytes())?;
                if !a.json {
                    println!(
                        "recipe: {}\n  {}",
                        path.display(),
                        llama_quantize_command(&db, path, types)
                    );
                }
            }
            if a.json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!(
                    "{}: {} bytes, {} tensors",
                    r.path,
                    r.bytes,
                    r.tensor_types.len()
                );
            }
        }
        other => anyhow::bail!("unknown --format `{other}`: choose safetensors, dynapress or gguf"),
    }
    Ok(())
}
