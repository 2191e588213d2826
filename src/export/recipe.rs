//! A llama-quantize recipe of a selection: `--tensor-type-file` overrides that
//! reproduce its linear types with llama.cpp alone (with the database's
//! `imatrix.gguf`).

use std::path::Path;

use dynapress_gguf::model::gguf_tensor_name;

use super::gguf::{GgufTypes, ggml_type_of};
use crate::database::Database;
use crate::error::{Error, Result};
use crate::selection::Selection;

/// A `--tensor-type-file` for llama-quantize that reproduces the
/// configuration's linear types (one `^name$=type` per line; llama-quantize
/// reads the file as whitespace-separated overrides, so it holds nothing else).
pub fn llama_quantize_recipe(sel: &Selection) -> Result<String> {
    let db = sel.db;
    let mut lines = Vec::new();
    for (l, o, _) in sel.layers() {
        let ty = ggml_type_of(&db.manifest, &o.level).ok_or_else(|| {
            Error::data(
                &db.dir,
                "a llama-quantize recipe needs a database of ggml types",
            )
        })?;
        let name = gguf_tensor_name(&l.id.weight_name())
            .ok()
            .flatten()
            .ok_or_else(|| Error::layer(l.id.weight_name(), "no GGUF tensor name"))?;
        lines.push(format!(
            "^{}$={}",
            regex_escape(&name),
            ty.name().to_lowercase()
        ));
    }
    Ok(lines.join("\n") + "\n")
}

/// The llama-quantize command line that applies a recipe file.
pub fn llama_quantize_command(db: &Database, recipe: &Path, types: GgufTypes) -> String {
    format!(
        "llama-quantize --imatrix {} --token-embedding-type {} --output-tensor-type {} --tensor-type-file {} MODEL-F32-OR-BF16.gguf OUT.gguf Q4_K_M",
        db.imatrix_path().display(),
        types.embed.name().to_lowercase(),
        types.output.name().to_lowercase(),
        recipe.display()
    )
}

fn regex_escape(s: &str) -> String {
    s.replace('.', "\\.")
}
