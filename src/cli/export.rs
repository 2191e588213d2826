use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use dynapress::database::Database;
use dynapress::export::{ExportDtype, export_native, export_safetensors};
use dynapress::formats::gguf::{
    GgufTypes, export_gguf, llama_quantize_command, llama_quantize_recipe,
};
use dynapress::fsutil::{Input, OutputKind, check_output};
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
    /// gguf (the exact ggml blocks; needs a kquant or gptq-kquant database), or
    /// compressed-tensors (packed codes, scales and zeros with a per-module
    /// quantization_config that transformers and vLLM load; gptq/rtn databases).
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
    let inputs = [
        Input::Dir(&a.model),
        Input::Dir(&a.db),
        Input::File(&a.config),
    ];
    let kind = match a.format.as_str() {
        "safetensors" | "dynapress" | "compressed-tensors" => OutputKind::Dir,
        "gguf" => OutputKind::File,
        other => {
            crate::bad_arg!(
                "unknown --format `{other}`: choose safetensors, dynapress, compressed-tensors or gguf"
            )
        }
    };
    if a.recipe.is_some() && a.format != "gguf" {
        crate::bad_arg!("--recipe is for --format gguf");
    }
    check_output(&a.out, "--out", kind, &inputs, a.force)?;
    if let Some(r) = &a.recipe {
        check_output(r, "--recipe", OutputKind::File, &inputs, a.force)?;
        if dynapress::fsutil::resolve(r)? == dynapress::fsutil::resolve(&a.out)? {
            crate::bad_arg!("--recipe and --out name the same file");
        }
    }
    dynapress::fsutil::clean_stale_temps_for(&a.out);
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
        "compressed-tensors" => {
            let r = dynapress::export_served::export_compressed_tensors(
                &files, &db, &config, &a.config, &a.out, a.force,
            )?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!(
                    "{}: {} searched weights at {:.4} bits per weight in {} config groups; model.safetensors {:.1} MB (compressed-tensors)",
                    r.out.display(),
                    r.searched_params,
                    r.searched_bits_per_weight,
                    r.config_groups,
                    r.safetensors_bytes as f64 / 1e6
                );
            }
        }
        "gguf" => {
            let types = GgufTypes {
                embed: parse_type(&a.embed_type)?,
                output: parse_type(&a.output_type)?,
            };
            // The recipe is written completely (under a temporary name) before
            // the .gguf and renamed into place after it: an unwritable --recipe
            // fails before the long step and leaves no .gguf behind.
            let recipe = match &a.recipe {
                Some(path) => {
                    let text = llama_quantize_recipe(&db, &config, &a.config)?;
                    let dir = dynapress::fsutil::parent_dir(path);
                    let mut tmp = dynapress::fsutil::temp_file_in(&dir)
                        .with_context(|| format!("{}: cannot write there", path.display()))?;
                    std::io::Write::write_all(tmp.as_file_mut(), text.as_bytes())
                        .and_then(|_| tmp.as_file().sync_all())
                        .with_context(|| format!("{}: writing", path.display()))?;
                    Some((path, tmp))
                }
                None => None,
            };
            let r = export_gguf(&files, &db, &config, &a.config, &a.out, types)?;
            let recipe = match recipe {
                Some((path, tmp)) => {
                    tmp.persist(path)
                        .with_context(|| format!("{}: renaming into place", path.display()))?;
                    Some(path)
                }
                None => None,
            };
            if let Some(path) = recipe
                && !a.json
            {
                println!(
                    "recipe: {}\n  {}",
                    path.display(),
                    llama_quantize_command(&db, path, types)
                );
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
        other => anyhow::bail!(
            "unknown --format `{other}`: choose safetensors, dynapress, compressed-tensors or gguf"
        ),
    }
    Ok(())
}
