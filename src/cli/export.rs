use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use dynapress::database::Database;
use dynapress::export::{ExportDtype, export_safetensors};
use dynapress::model::ModelFiles;
use dynapress::search::ConfigFile;

#[derive(Args)]
pub struct ExportArgs {
    /// Hugging Face model directory (the original).
    #[arg(long)]
    model: PathBuf,
    /// Layer database.
    #[arg(long)]
    db: PathBuf,
    /// Configuration from `dynapress search`.
    #[arg(long)]
    config: PathBuf,
    /// Output directory (a Hugging Face model directory).
    #[arg(long)]
    out: PathBuf,
    /// Dtype of the exported weights: original, f32, bf16 or f16.
    #[arg(long, default_value = "original")]
    dtype: ExportDtype,
    /// Replace --out if it exists.
    #[arg(long)]
    force: bool,
    #[arg(long)]
    json: bool,
}

pub fn run(a: ExportArgs) -> anyhow::Result<()> {
    let files = ModelFiles::open(&a.model).context("loading the model")?;
    let db = Database::open(&a.db)?;
    db.check_model(&files)?;
    let config = ConfigFile::read(&a.config)?;
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
    Ok(())
}
