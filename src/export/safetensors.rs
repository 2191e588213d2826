//! Export of a searched configuration as a Hugging Face model directory:
//! config and tokenizer files copied (from a GGUF input: the ones it was
//! imported into), every linear layer replaced by its
//! chosen database variant (dequantized), other tensors unchanged, and
//! `dynapress.json` with the configuration and the measured bits.
//!
//! The directory is assembled under a temporary name next to the target and
//! renamed into place when complete.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use safetensors::Dtype;
use serde::Serialize;

use super::TensorSink;
use crate::error::{Error, Result};
use crate::formats::safetensors::{SafetensorsWriter, TensorSpec, encode_f32};
use crate::model::ModelFiles;
use crate::model::weights::to_f32;
use crate::selection::Selection;

/// Element type of exported floating-point tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportDtype {
    /// Each tensor keeps the checkpoint's dtype.
    Original,
    #[value(alias = "float32")]
    F32,
    #[value(alias = "bfloat16")]
    Bf16,
    #[value(alias = "float16")]
    F16,
}

impl std::str::FromStr for ExportDtype {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "original" => Ok(ExportDtype::Original),
            "f32" | "float32" => Ok(ExportDtype::F32),
            "bf16" | "bfloat16" => Ok(ExportDtype::Bf16),
            "f16" | "float16" => Ok(ExportDtype::F16),
            o => Err(format!(
                "unknown dtype `{o}`; choose original, f32, bf16 or f16"
            )),
        }
    }
}

/// What was exported.
#[derive(Debug, Clone, Serialize)]
pub struct ExportReport {
    pub out: PathBuf,
    /// Average storage bits per weight of the searched layers as compressed
    /// (codes, scales, zeros), from the database.
    pub searched_bits_per_weight: f64,
    pub searched_params: u64,
    /// Bytes of `model.safetensors` (dequantized weights: the size of a
    /// transformers-loadable copy, not of the compressed form).
    pub safetensors_bytes: u64,
}

/// Writes `out` from `files` with the layers of `config` taken from `db`,
/// dequantized (a directory transformers loads).
pub fn export_safetensors(
    files: &ModelFiles,
    sel: &Selection,
    out: &Path,
    dtype: ExportDtype,
    force: bool,
) -> Result<ExportReport> {
    export_dir(files, sel, out, Some(dtype), force)
}

/// The directory export: dequantized at `dtype`, or with the layers as
/// stored when `dtype` is `None` (the native format).
pub(super) fn export_dir(
    files: &ModelFiles,
    sel: &Selection,
    out: &Path,
    dtype: Option<ExportDtype>,
    force: bool,
) -> Result<ExportReport> {
    let native = dtype.is_none();
    let dtype = dtype.unwrap_or(ExportDtype::Original);
    let db = sel.db;
    let mut inputs = vec![
        crate::fsutil::Input::Dir(&files.dir),
        crate::fsutil::Input::Dir(&db.dir),
    ];
    inputs.extend(sel.source.as_deref().map(crate::fsutil::Input::File));
    crate::fsutil::check_output(out, "--out", crate::fsutil::OutputKind::Dir, &inputs, force)?;
    let parent = crate::fsutil::parent_dir(out);
    std::fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
    crate::fsutil::clean_stale_temps(&parent);
    let tmp = crate::fsutil::temp_dir_in(&parent).map_err(|e| Error::io(&parent, e))?;

    // Side files: everything that is not a weight file (for a GGUF input, the
    // config.json and tokenizer.json it was imported into).
    for (name, bytes) in files.side_files()? {
        let p = tmp.path().join(&name);
        std::fs::write(&p, bytes).map_err(|e| Error::io(&p, e))?;
    }

    // The database entry chosen for every searched layer, by weight name.
    let chosen: BTreeMap<String, &crate::database::Entry> = sel
        .layers()
        .map(|(l, _, entry)| (l.id.weight_name(), entry))
        .collect();
    let names = files.weights.names();
    // Native export: the chosen entries, loaded once (their buffers become tensors).
    let mut variants: BTreeMap<String, crate::database::Variant> = BTreeMap::new();
    if native {
        for (name, entry) in &chosen {
            variants.insert(name.clone(), db.load(entry)?);
        }
    }
    let mut specs = Vec::with_capacity(names.len());
    let mut parts: Vec<Vec<u8>> = Vec::new();
    let mut quant_meta = serde_json::Map::new();
    for name in &names {
        if let Some(v) = variants.get(name) {
            let mut push_buffers = |buffers: Vec<dynapress_compress::NamedBuffer>| {
                for b in buffers {
                    specs.push(TensorSpec {
                        name: format!("{name}.{}", b.name),
                        dtype: match b.dtype {
                            dynapress_compress::BufferDtype::U8 => Dtype::U8,
                            dynapress_compress::BufferDtype::F16 => Dtype::F16,
                            dynapress_compress::BufferDtype::U16 => Dtype::U16,
                            dynapress_compress::BufferDtype::U32 => Dtype::U32,
                        },
                        shape: b.shape.clone(),
                    });
                    parts.push(b.data);
                }
            };
            match v {
                crate::database::Variant::Grid(q) => {
                    quant_meta.insert(name.clone(), serde_json::to_value(q.meta()).expect("meta"));
                    push_buffers(q.to_buffers());
                }
                crate::database::Variant::Sparse(sp) => {
                    quant_meta.insert(name.clone(), serde_json::json!({ "sparse": sp.meta() }));
                    push_buffers(sp.to_buffers());
                }
                crate::database::Variant::Ggml(g) => {
                    quant_meta.insert(
                        name.clone(),
                        serde_json::json!({"ggml": {"type": g.ty.name(), "rows": g.rows, "cols": g.cols}}),
                    );
                    specs.push(TensorSpec {
                        name: format!("{name}.ggml"),
                        dtype: Dtype::U8,
                        shape: vec![g.rows, g.bytes.len() / g.rows.max(1)],
                    });
                    parts.push(g.bytes.clone());
                }
            }
            continue;
        }
        let raw = files.weights.raw(name)?;
        let dt = match (dtype, raw.dtype) {
            (_, d) if !matches!(d, Dtype::F32 | Dtype::F16 | Dtype::BF16) => d,
            (ExportDtype::Original, d) => d,
            (ExportDtype::F32, _) => Dtype::F32,
            (ExportDtype::Bf16, _) => Dtype::BF16,
            (ExportDtype::F16, _) => Dtype::F16,
        };
        specs.push(TensorSpec {
            name: name.clone(),
            dtype: dt,
            shape: raw.shape.clone(),
        });
        parts.push(Vec::new());
    }
    let st_path = tmp.path().join("model.safetensors");
    let mut md = BTreeMap::from([("format".to_string(), "pt".to_string())]);
    if native {
        md.insert(
            crate::model::weights::QUANT_METADATA_KEY.to_string(),
            serde_json::Value::Object(quant_meta).to_string(),
        );
    } else {
        md.insert("dynapress".to_string(), "dequantized export".to_string());
    }
    let mut w = SafetensorsWriter::create(&st_path, specs.clone(), &md)?;
    for (spec, part) in specs.iter().zip(&parts) {
        if !part.is_empty() || spec.nbytes() == 0 {
            w.tensor(&spec.name, part)?;
            continue;
        }
        let raw = files.weights.raw(&spec.name)?;
        match chosen.get(&spec.name) {
            Some(entry) => {
                let q = db.load(entry)?;
                w.tensor(&spec.name, &encode_f32(&q.dequantize()?, spec.dtype)?)?;
            }
            None if spec.dtype == raw.dtype => w.tensor(&spec.name, raw.data)?,
            None => {
                let v = to_f32(&raw, &spec.name)?;
                w.tensor(&spec.name, &encode_f32(&v, spec.dtype)?)?;
            }
        }
        files.weights.release(&spec.name);
    }
    TensorSink::finish(w)?;
    let safetensors_bytes = std::fs::metadata(&st_path).map(|m| m.len()).unwrap_or(0);
    let report = ExportReport {
        out: out.to_path_buf(),
        searched_bits_per_weight: sel.space().bits_per_weight(&sel.choice),
        searched_params: sel.space().total_params,
        safetensors_bytes,
    };
    super::finish_dir(tmp, out, &sel.config, &report)?;
    Ok(report)
}

impl TensorSink for SafetensorsWriter {
    fn tensor(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        self.write(name, bytes)
    }

    fn finish(self) -> Result<()> {
        SafetensorsWriter::finish(self)
    }
}
