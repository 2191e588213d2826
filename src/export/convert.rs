//! A checkpoint written as a GGUF file at one type: the input llama.cpp's
//! tools start from.

use std::path::Path;

use dynapress_ggml::GgmlType;
use dynapress_gguf::TensorSpec;
use dynapress_gguf::model::gguf_tensor_name;

use super::gguf::{GgufReport, Header, encode_checkpoint, gerr, write_gguf};
use crate::error::Result;
use crate::model::ModelFiles;

/// Writes the checkpoint as a GGUF file with every matrix at `ty` (F32, F16,
/// BF16 or a quantized type, encoded as llama-quantize would with
/// `imatrix`; a matrix whose rows cannot hold `ty` gets llama-quantize's
/// fallback type, as with `--pure`), norms in F32: the input llama.cpp's tools
/// start from.
pub fn convert_gguf(
    files: &ModelFiles,
    out: &Path,
    ty: GgmlType,
    imatrix: Option<&dynapress_gguf::Imatrix>,
) -> Result<GgufReport> {
    let dir = &files.dir;
    let header = Header::of(files)?;
    let hparams = &header.hparams;
    let metadata = header.metadata(dynapress_gguf::model::file_type_for(ty));
    let mut items: Vec<(TensorSpec, Option<String>)> = Vec::new();
    for hf in files.weights.names() {
        let Some(gname) = gguf_tensor_name(&hf).map_err(gerr(dir))? else {
            continue;
        };
        let shape = files.weights.shape(&hf)?;
        let cols = *shape.last().unwrap_or(&1);
        // Rows a block type cannot hold get llama-quantize's fallback type.
        let t = if shape.len() == 1 {
            GgmlType::F32
        } else {
            ty.fallback_for_row(cols)
        };
        items.push((TensorSpec::from_shape(gname, t, &shape), Some(hf)));
    }
    if let Some(freqs) = hparams.rope_freqs() {
        let n = freqs.len();
        items.push((
            TensorSpec::from_shape(
                dynapress_gguf::model::ROPE_FREQS_TENSOR,
                GgmlType::F32,
                &[n],
            ),
            None,
        ));
    }
    items.sort_by(|a, b| a.0.name.cmp(&b.0.name));
    write_gguf(out, &metadata, hparams, items, |spec, hf| match hf {
        Some(hf) => {
            let im = imatrix
                .and_then(|m| m.entries.get(&spec.name))
                .map(|e| e.mean_squares());
            encode_checkpoint(files, hf, spec.ggml_type, im.as_deref())
        }
        None => Ok(hparams
            .rope_freqs()
            .unwrap_or_default()
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect()),
    })
}
