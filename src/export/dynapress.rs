//! The native format (`--format dynapress`, written to `model-dynapress/` by
//! `compress`): a Hugging Face directory whose searched layers keep their
//! stored form, read back by `eval`, `generate` and `pack`.

use std::path::Path;

use super::safetensors::{ExportReport, export_dir};
use crate::error::Result;
use crate::model::ModelFiles;
use crate::selection::Selection;

/// Writes `out` with every searched layer stored in its compressed form
/// (`NAME.codes`, `.scales`, `.zeros`, `.perm`, or `NAME.ggml` blocks, listed
/// in the `dynapress.quant` metadata): a directory `dynapress eval`/`generate`
/// load directly, about `bits/16` the size of the original, and which
/// `dynapress pack` entropy-codes further.
pub fn export_dynapress(
    files: &ModelFiles,
    sel: &Selection,
    out: &Path,
    force: bool,
) -> Result<ExportReport> {
    export_dir(files, sel, out, None, force)
}
