use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use dynapress::export::convert_gguf;
use dynapress::fsutil::{Input, OutputKind, check_output};
use dynapress::model::ModelFiles;

#[derive(Args)]
pub struct ConvertArgs {
    /// Hugging Face model directory or GGUF file.
    #[arg(long)]
    model: PathBuf,
    /// Output GGUF file.
    #[arg(long)]
    out: PathBuf,
    /// Type of every matrix: F32, F16, BF16, or a ggml quant type (uniform).
    #[arg(long, default_value = "F32")]
    r#type: String,
    /// llama.cpp importance matrix (for quant types), e.g. a database's imatrix.gguf.
    #[arg(long)]
    imatrix: Option<PathBuf>,
    /// Replace --out if it exists.
    #[arg(long)]
    force: bool,
}

pub fn run(a: ConvertArgs) -> anyhow::Result<()> {
    let ty = super::args::parse_type(&a.r#type)?;
    let mut inputs = vec![Input::Dir(&a.model)];
    inputs.extend(a.imatrix.as_deref().map(Input::File));
    check_output(&a.out, "--out", OutputKind::File, &inputs, a.force)?;
    dynapress::fsutil::clean_stale_temps_for(&a.out);
    let files = ModelFiles::open(&a.model).context("loading the model")?;
    let imatrix = match &a.imatrix {
        Some(p) => Some(
            dynapress_gguf::Imatrix::read(p)
                .map(|(m, _)| m)
                .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?,
        ),
        None => None,
    };
    let r = convert_gguf(&files, &a.out, ty, imatrix.as_ref())?;
    println!(
        "{}: {} bytes, {} tensors",
        r.path,
        r.bytes,
        r.tensor_types.len()
    );
    Ok(())
}
