use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use dynapress::database::Database;
use dynapress::export::{
    ExportDtype, ServedFormat, export_depth, export_depth_gguf, export_dynapress, export_gguf,
    export_safetensors, export_served, llama_quantize_command, llama_quantize_recipe,
};
use dynapress::fsutil::{Input, OutputKind, check_output};
use dynapress::model::{DepthConfig, ModelFiles};
use dynapress::selection::ConfigFile;

use super::args::{Format, GgufTypeArgs};

#[derive(Args)]
pub struct ExportArgs {
    /// Hugging Face model directory or GGUF file (the original).
    #[arg(long)]
    model: PathBuf,
    /// Layer database (not needed for a depth configuration).
    #[arg(long)]
    db: Option<PathBuf>,
    /// Configuration from `dynapress search`, or a depth configuration from
    /// `dynapress prune` (without --db: whole dropped blocks removed, a
    /// Hugging Face directory or, with --format gguf, a GGUF file with fewer
    /// blocks, every matrix at --dtype).
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
    /// quantization_config that transformers and vLLM load; gptq/rtn databases),
    /// or gptq (qweight/qzeros/scales/g_idx with GPTQModel's per-module
    /// `dynamic` bits; gptq/rtn databases of 2, 3, 4, 8 bits).
    #[arg(long, value_enum, default_value = "safetensors")]
    format: Format,
    /// safetensors (and a depth-pruned gguf): dtype of the exported weights.
    #[arg(long, value_enum, default_value = "original")]
    dtype: ExportDtype,
    #[command(flatten)]
    gguf_types: GgufTypeArgs,
    /// gguf: also write a llama-quantize --tensor-type-file reproducing the mix.
    #[arg(long)]
    recipe: Option<PathBuf>,
    /// Replace --out if it exists.
    #[arg(long)]
    force: bool,
    #[arg(long)]
    json: bool,
}

pub fn run(a: ExportArgs) -> anyhow::Result<()> {
    let Some(db_dir) = a.db.clone() else {
        return run_depth(a);
    };
    let inputs = [
        Input::Dir(&a.model),
        Input::Dir(&db_dir),
        Input::File(&a.config),
    ];
    let kind = match a.format {
        Format::Safetensors | Format::Dynapress | Format::CompressedTensors | Format::Gptq => {
            OutputKind::Dir
        }
        Format::Gguf => OutputKind::File,
    };
    if a.recipe.is_some() && a.format != Format::Gguf {
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
    let db = Database::open(&db_dir)?;
    db.check_model(&files)?;
    let config = ConfigFile::read(&a.config)?;
    let sel = db.resolve(&config, &a.config)?;
    match a.format {
        Format::Safetensors => {
            let r = export_safetensors(&files, &sel, &a.out, a.dtype, a.force)?;
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
        Format::Dynapress => {
            let r = export_dynapress(&files, &sel, &a.out, a.force)?;
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
        Format::Gptq => {
            let r = export_served(&files, &sel, &a.out, a.force, ServedFormat::Gptq)?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!(
                    "{}: {} searched weights at {:.4} bits per weight in {} schemes; model.safetensors {:.1} MB (GPTQ)",
                    r.out.display(),
                    r.searched_params,
                    r.searched_bits_per_weight,
                    r.config_groups,
                    r.safetensors_bytes as f64 / 1e6
                );
            }
        }
        Format::CompressedTensors => {
            let r = export_served(
                &files,
                &sel,
                &a.out,
                a.force,
                ServedFormat::CompressedTensors,
            )?;
            // vLLM fuses q/k/v and gate/up and refuses shards with different
            // schemes (transformers loads them): say so, with the remedy.
            let space = sel.space();
            let levels = space.level_names(&sel.choice);
            let split: Vec<String> = dynapress::search::fused_groups(space)
                .iter()
                .filter(|g| g.iter().any(|id| levels.get(id) != levels.get(&g[0])))
                .map(|g| {
                    format!(
                        "{}.{}",
                        g[0].block,
                        g.iter()
                            .map(|id| id.kind.short_name())
                            .collect::<Vec<_>>()
                            .join("+")
                    )
                })
                .collect();
            if !split.is_empty() {
                eprintln!(
                    "note: {} fused modules mix levels ({}{}): transformers loads this, vLLM refuses it; for vLLM search with --tie-fused (compress --runtime vllm does)",
                    split.len(),
                    split.iter().take(4).cloned().collect::<Vec<_>>().join(", "),
                    if split.len() > 4 { ", …" } else { "" }
                );
            }
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
        Format::Gguf => {
            let types = a.gguf_types.types()?;
            // The recipe is written completely (under a temporary name) before
            // the .gguf and renamed into place after it: an unwritable --recipe
            // fails before the long step and leaves no .gguf behind.
            let recipe = match &a.recipe {
                Some(path) => {
                    let text = llama_quantize_recipe(&sel)?;
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
            let r = export_gguf(&files, &sel, &a.out, types)?;
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
                    llama_quantize_command(&db, path, types.chosen(&sel.config)?)
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
    }
    Ok(())
}

/// `export --config DEPTH.json` without `--db`: a depth-pruned Hugging Face
/// directory or GGUF file.
fn run_depth(a: ExportArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&a.config)
        .with_context(|| format!("{}: reading", a.config.display()))?;
    if !DepthConfig::is_depth_config(&text) {
        crate::bad_arg!(
            "{}: a `dynapress search` configuration needs --db (only depth configurations from `dynapress prune` export without one)",
            a.config.display()
        );
    }
    if !matches!(a.format, Format::Safetensors | Format::Gguf) || a.recipe.is_some() {
        crate::bad_arg!(
            "a depth configuration exports as --format safetensors (a Hugging Face directory) or --format gguf (every matrix at --dtype), without --recipe"
        );
    }
    if a.format == Format::Gguf
        && !(a.gguf_types.embed_type.eq_ignore_ascii_case("auto")
            && a.gguf_types.output_type.eq_ignore_ascii_case("auto"))
    {
        crate::bad_arg!(
            "a depth-pruned GGUF keeps every matrix at --dtype (f32, bf16, f16 or the original's); quantize it afterwards with llama-quantize instead of --embed-type/--output-type"
        );
    }
    let files = ModelFiles::open(&a.model).context("loading the model")?;
    let cfg = DepthConfig::read(&a.config)?;
    if a.format == Format::Gguf {
        let ty = dynapress::export::depth::depth_gguf_type(&files, a.dtype)?;
        let r = export_depth_gguf(&files, &cfg, &a.config, &a.out, ty, a.force)?;
        if a.json {
            println!("{}", serde_json::to_string_pretty(&r)?);
        } else {
            println!(
                "{}: {} {} blocks (removed {:?}), {}; {} bytes",
                r.out.display(),
                r.architecture,
                r.block_count,
                r.removed_blocks,
                r.tensor_type,
                r.bytes
            );
            if r.architecture == "deci" {
                println!(
                    "  blocks without attention {:?}, without MLP {:?} (llama.cpp's deci architecture)",
                    r.attention_dropped, r.mlp_dropped
                );
            }
        }
        return Ok(());
    }
    let r = export_depth(&files, &cfg, &a.config, &a.out, a.force)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!(
            "{}: {} blocks (removed {:?}); model.safetensors {:.1} MB",
            r.out.display(),
            r.num_hidden_layers,
            r.removed_blocks,
            r.safetensors_bytes as f64 / 1e6
        );
    }
    Ok(())
}
