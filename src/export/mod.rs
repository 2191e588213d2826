//! Export of a searched configuration ([`Selection`]): one file per format.
//!
//! - [`safetensors`]: a Hugging Face directory, dequantized (transformers loads it);
//! - [`dynapress`]: the same directory with the searched layers as stored (codes,
//!   scales, zeros or ggml blocks), read by `eval`, `generate` and `pack`;
//! - [`gguf`]: a GGUF file llama.cpp runs, and the file-size budget
//!   ([`gguf::gguf_target`]);
//! - [`recipe`]: the llama-quantize overrides that reproduce a GGUF selection;
//! - [`compressed_tensors`]: llm-compressor's packed format with a per-module
//!   `quantization_config` (transformers, vLLM; grid databases only);
//! - [`convert`]: a checkpoint at one ggml type (no selection).
//!
//! Writers stream: the safetensors and GGUF writers (`formats::safetensors`,
//! `dynapress_gguf::GgufWriter`) are both driven through [`TensorSink`], one
//! tensor at a time, to a temporary name renamed into place when complete.
//! A new export format is a new file here with a sink for its container.

pub mod compressed_tensors;
pub mod convert;
pub mod depth;
pub mod dynapress;
pub mod gguf;
pub mod recipe;
pub mod safetensors;

pub use compressed_tensors::{ServedFormat, ServedReport, export_served};
pub use convert::convert_gguf;
pub use depth::{DepthExportReport, DepthGgufReport, export_depth, export_depth_gguf};
pub use dynapress::export_dynapress;
pub use gguf::{GgufReport, GgufTypes, export_gguf, gguf_target};
pub use recipe::{llama_quantize_command, llama_quantize_recipe};
pub use safetensors::{ExportDtype, ExportReport, export_safetensors};

use crate::database::Database;
use crate::error::Result;
use crate::model::ModelFiles;
use crate::search::HeadSearch;
use crate::selection::{Budget, Target};

/// A container being written tensor by tensor, in the order its header
/// declared them (begin is the writer's constructor, which takes the header).
pub trait TensorSink {
    /// Appends the next tensor's bytes.
    fn tensor(&mut self, name: &str, bytes: &[u8]) -> Result<()>;
    /// Completes the file (renames it into place).
    fn finish(self) -> Result<()>
    where
        Self: Sized;
}

/// Resolves a budget against a database: bits per weight as given, a GGUF
/// file size through [`gguf_target`] (which needs the GGUF types of the
/// embedding and output), or, when those types are searched too
/// ([`GgufTypes::search_embed`]), through [`gguf::head_search`]: the target is
/// then what the linear layers get with the head tensors at their starting
/// types, and the head search goes to the search.
pub fn resolve_budget(
    budget: Budget,
    files: &ModelFiles,
    db: &Database,
    gguf: Option<GgufTypes>,
) -> Result<(Target, Option<HeadSearch>)> {
    match (budget, gguf) {
        (Budget::Bits(b), _) => Ok((Target::bits(b), None)),
        (Budget::GgufBytes(bytes), Some(types)) => {
            match gguf::head_search(files, db, types, bytes)? {
                None => Ok((gguf_target(files, db, types, bytes)?, None)),
                Some(h) => {
                    let target = Target {
                        budget,
                        bits: h.linear_bits(&h.defaults(), db.space.total_params),
                    };
                    Ok((target, Some(h)))
                }
            }
        }
        (Budget::GgufBytes(_), None) => Err(crate::Error::option(
            "--target-size",
            "a file-size target needs the GGUF format (--format gguf)",
        )),
        (Budget::Sparsity(s), _) => Ok((sparsity_target(files, db, s)?, None)),
    }
}

/// What a resolved budget means for the linear layers, for the user (`None`
/// for a plain bits-per-weight budget, which needs no explaining).
pub fn describe_budget(target: &Target, head: Option<&HeadSearch>) -> Option<String> {
    match target.budget {
        Budget::GgufBytes(bytes) => Some(format!(
            "a {bytes}-byte GGUF leaves {:.4} bits per weight for the linear layers{}",
            target.bits,
            head.map(|h| h.describe_start()).unwrap_or_default()
        )),
        Budget::Sparsity(s) => Some(format!(
            "a sparsity of {s} is {:.4} bits per weight of the linear layers (mask and f16 values)",
            target.bits
        )),
        Budget::Bits(_) => None,
    }
}

/// A sparsity budget as bits per weight: the exact storage of every searched
/// layer at sparsity `s` (f16 values), over their weights. At sparsity `s`
/// means unstructured `s`, unless the database's only levels of fraction `s`
/// are N:M (a database of 2:4 alone at `--target-sparsity 0.5`): then that
/// level (the most stored of them, if several), so the budget holds at least
/// the sparsity asked for instead of spending the N:M mask's savings on
/// denser layers. Only a database whose levels are all SparseGPT levels with
/// f16 values has one.
fn sparsity_target(files: &ModelFiles, db: &Database, s: f64) -> Result<Target> {
    let err = |msg: String| crate::Error::option("--target-sparsity", msg);
    if !(0.0..1.0).contains(&s) {
        return Err(err(format!(
            "--target-sparsity {s} is not a fraction in [0, 1)"
        )));
    }
    let specs = db.manifest.method.levels()?;
    if specs.is_empty()
        || specs
            .iter()
            .any(|l| l.sparse.is_none_or(|sl| sl.quant.is_some()))
    {
        return Err(err(
            "--target-sparsity needs a sparsegpt database with f16 values (no --sparse-bits); give --target-bits instead".into(),
        ));
    }
    let levels: Vec<dynapress_compress::SparseLevel> =
        specs.iter().filter_map(|l| l.sparse).collect();
    let (lo, hi) = levels
        .iter()
        .map(|l| l.fraction())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), f| {
            (a.min(f), b.max(f))
        });
    if s < lo - 1e-9 || s > hi + 1e-9 {
        return Err(crate::Error::budget(format!(
            "--target-sparsity {s} is outside the database's sparsities ({lo} to {hi}); change it or rebuild the database with other --sparsities"
        )));
    }
    let unstructured = dynapress_compress::SparseLevel {
        sparsity: dynapress_compress::LevelSparsity::Fraction(s),
        quant: None,
    };
    let at_s: Vec<&dynapress_compress::SparseLevel> = levels
        .iter()
        .filter(|l| (l.fraction() - s).abs() <= 1e-9)
        .collect();
    let only_nm = !at_s.is_empty() && at_s.iter().all(|l| l.sparsity.is_nm());
    let mut bits = 0u64;
    for layer in &db.space.layers {
        let (rows, cols) = layer.id.shape(&files.config);
        let none = || err(format!("{}: no columns", layer.id.weight_name()));
        bits += if only_nm {
            at_s.iter()
                .filter_map(|l| l.storage_bits(rows, cols))
                .max()
                .ok_or_else(none)?
        } else {
            unstructured.storage_bits(rows, cols).ok_or_else(none)?
        };
    }
    Ok(Target {
        budget: Budget::Sparsity(s),
        bits: bits as f64 / db.space.total_params as f64,
    })
}

/// Completes a directory export assembled in `tmp`: writes `dynapress.json`
/// (the configuration and the export's report) and renames `tmp` to `out`.
pub(crate) fn finish_dir(
    tmp: tempfile::TempDir,
    out: &std::path::Path,
    config: &impl serde::Serialize,
    report: &impl serde::Serialize,
) -> Result<()> {
    let meta = serde_json::json!({ "config": config, "export": report });
    crate::fsutil::write_atomic(
        &tmp.path().join("dynapress.json"),
        serde_json::to_string_pretty(&meta)
            .expect("json")
            .as_bytes(),
    )?;
    crate::fsutil::replace_dir(tmp.path(), out)?;
    let _ = tmp.keep(); // renamed away: nothing left to delete
    Ok(())
}
