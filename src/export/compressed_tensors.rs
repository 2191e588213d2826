//! Export of a searched configuration as a checkpoint that serving runtimes
//! load quantized, in one of two formats ([`ServedFormat`]):
//!
//! - **compressed-tensors** (the `pack-quantized` format of llm-compressor;
//!   transformers and vLLM load it): one `config_groups` entry per distinct
//!   scheme, targeting the exact module names;
//! - **GPTQ** (AutoGPTQ / GPTQModel layout: `qweight`, `qzeros`, `scales`,
//!   `g_idx`): the most common scheme is the default and every other module
//!   gets a GPTQModel `dynamic` rule for its exact name.
//!
//! Either way every searched linear layer keeps its own bit width, group
//! size and symmetry, its codes, f16 scales and zero points are written as
//! stored in the database (`dynapress_compress::served` has the packing), and
//! every other tensor is copied unchanged. `config.json` gets the
//! `quantization_config` (GPTQ: also `quantize_config.json`); tokenizer and
//! other side files are copied; `dynapress.json` records the configuration
//! and the sizes.
//!
//! Refused with a clear error: ggml-type databases (`kquant`, `gptq-kquant`:
//! export them as GGUF), sparse levels, layers with a stored act-order
//! permutation, groups that do not divide a layer's input width
//! (compressed-tensors), bit widths other than 2, 3, 4, 8 (GPTQ)
//! (docs/served-formats.md).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use dynapress_compress::served::{
    CtScheme, GptqScheme, ServedDtype, compressed_tensors_config, compressed_tensors_tensors,
    gptq_config, gptq_tensors,
};
use safetensors::Dtype;
use serde::Serialize;

use crate::database::Variant;
use crate::error::{Error, Result};
use crate::formats::safetensors::{SafetensorsWriter, TensorSpec};
use crate::model::ModelFiles;
use crate::selection::Selection;

/// The served checkpoint formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServedFormat {
    /// llm-compressor's `pack-quantized` (transformers, vLLM).
    CompressedTensors,
    /// GPTQ with GPTQModel's per-module `dynamic` rules.
    Gptq,
}

impl ServedFormat {
    /// The format's name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            ServedFormat::CompressedTensors => "compressed-tensors",
            ServedFormat::Gptq => "gptq",
        }
    }
}

/// What was exported.
#[derive(Debug, Clone, Serialize)]
pub struct ServedReport {
    pub out: PathBuf,
    /// `compressed-tensors` or `gptq`.
    pub format: String,
    /// Average storage bits per weight of the searched layers (database accounting).
    pub searched_bits_per_weight: f64,
    pub searched_params: u64,
    /// Distinct (bits, group, symmetry) schemes: compressed-tensors config
    /// groups, or GPTQ's default scheme plus the `dynamic` rules' schemes.
    pub config_groups: usize,
    /// Bytes of `model.safetensors`.
    pub safetensors_bytes: u64,
}

/// Writes `out`, a checkpoint of `files` in `format` with the layers of
/// `config` taken from `db` in their compressed form.
pub fn export_served(
    files: &ModelFiles,
    sel: &Selection,
    out: &Path,
    force: bool,
    format: ServedFormat,
) -> Result<ServedReport> {
    let db = sel.db;
    let space = sel.space();
    let mut inputs = vec![
        crate::fsutil::Input::Dir(&files.dir),
        crate::fsutil::Input::Dir(&db.dir),
    ];
    inputs.extend(sel.source.as_deref().map(crate::fsutil::Input::File));
    crate::fsutil::check_output(out, "--out", crate::fsutil::OutputKind::Dir, &inputs, force)?;
    let config_path = sel
        .source
        .clone()
        .unwrap_or_else(|| PathBuf::from("config.json"));

    // Every chosen layer as format tensors, before anything is written: a
    // layer the format cannot express fails the export up front.
    // GPTQ: one checkpoint format for all modules; asymmetric grids (a
    // database-wide choice) need gptq_v2 (docs/served-formats.md).
    let v2 = !db.manifest.method.sym;
    let mut layers: BTreeMap<String, Vec<dynapress_compress::served::ServedTensor>> =
        BTreeMap::new();
    let mut ct_modules: Vec<(String, CtScheme)> = Vec::new();
    let mut gptq_modules: Vec<(String, GptqScheme)> = Vec::new();
    for (l, o, entry) in sel.layers() {
        let level = &o.level;
        let weight = l.id.weight_name();
        let module = weight
            .strip_suffix(".weight")
            .unwrap_or(&weight)
            .to_string();
        let q = match db.load(entry)? {
            Variant::Grid(q) => q,
            Variant::Ggml(g) => {
                return Err(Error::data(
                    &db.dir,
                    format!(
                        "{weight}: level {level} is ggml {} blocks, which {} does not store; export this database with --format gguf, or build a gptq/rtn database",
                        g.ty.name(),
                        format.name()
                    ),
                ));
            }
            Variant::Sparse(_) => {
                return Err(Error::data(
                    &db.dir,
                    format!(
                        "{weight}: level {level} is a sparse layer, which dynapress does not write as {} yet; export it with --format safetensors (dense, zeros stored) or --format dynapress (mask and kept weights)",
                        format.name()
                    ),
                ));
            }
        };
        let bad = |e: dynapress_compress::served::ServedError| {
            Error::data(&db.dir, format!("{weight} (level {level}): {e}"))
        };
        let tensors = match format {
            ServedFormat::CompressedTensors => {
                let (scheme, tensors) = compressed_tensors_tensors(&q).map_err(bad)?;
                ct_modules.push((module.clone(), scheme));
                tensors
            }
            ServedFormat::Gptq => {
                let (scheme, tensors) = gptq_tensors(&q, v2).map_err(bad)?;
                gptq_modules.push((module.clone(), scheme));
                tensors
            }
        };
        layers.insert(module, tensors);
    }
    let (qcfg, config_groups) = match format {
        ServedFormat::CompressedTensors => {
            let cfg = compressed_tensors_config(&ct_modules, vec!["lm_head".to_string()]);
            let n = cfg.config_groups.len();
            (serde_json::to_value(&cfg).expect("config serialises"), n)
        }
        ServedFormat::Gptq => {
            let n = gptq_modules
                .iter()
                .map(|m| m.1)
                .collect::<std::collections::BTreeSet<_>>()
                .len();
            let cfg = gptq_config(&gptq_modules, v2);
            (serde_json::to_value(&cfg).expect("config serialises"), n)
        }
    };

    let parent = crate::fsutil::parent_dir(out);
    std::fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
    crate::fsutil::clean_stale_temps(&parent);
    let tmp = crate::fsutil::temp_dir_in(&parent).map_err(|e| Error::io(&parent, e))?;

    // Side files; config.json gains the quantization_config.
    for (name, bytes) in files.side_files()? {
        let p = tmp.path().join(&name);
        let bytes = if name == "config.json" {
            let mut v: serde_json::Value = serde_json::from_slice(&bytes)
                .map_err(|e| Error::config(files.dir.join("config.json"), e.to_string()))?;
            let obj = v
                .as_object_mut()
                .ok_or_else(|| Error::config(files.dir.join("config.json"), "not a JSON object"))?;
            obj.insert("quantization_config".into(), qcfg.clone());
            serde_json::to_vec_pretty(&v).expect("json")
        } else {
            bytes
        };
        std::fs::write(&p, bytes).map_err(|e| Error::io(&p, e))?;
    }

    if format == ServedFormat::Gptq {
        // GPTQModel reads its QuantizeConfig from quantize_config.json.
        let p = tmp.path().join("quantize_config.json");
        std::fs::write(&p, serde_json::to_vec_pretty(&qcfg).expect("json"))
            .map_err(|e| Error::io(&p, e))?;
    }

    let mut specs = Vec::new();
    let mut parts: Vec<Option<Vec<u8>>> = Vec::new();
    for name in files.weights.names() {
        let module = name.strip_suffix(".weight").unwrap_or(&name);
        if let Some(tensors) = layers.remove(module) {
            for t in tensors {
                specs.push(TensorSpec {
                    name: format!("{module}.{}", t.suffix),
                    dtype: match t.dtype {
                        ServedDtype::I32 => Dtype::I32,
                        ServedDtype::I64 => Dtype::I64,
                        ServedDtype::F16 => Dtype::F16,
                    },
                    shape: t.shape,
                });
                parts.push(Some(t.data));
            }
            continue;
        }
        let raw = files.weights.raw(&name)?;
        specs.push(TensorSpec {
            name: name.clone(),
            dtype: raw.dtype,
            shape: raw.shape.clone(),
        });
        parts.push(None);
    }
    if let Some(missing) = layers.keys().next() {
        return Err(Error::data(
            &config_path,
            format!("{missing}.weight is in the configuration but not in the checkpoint"),
        ));
    }
    let st_path = tmp.path().join("model.safetensors");
    let md = BTreeMap::from([("format".to_string(), "pt".to_string())]);
    let mut w = SafetensorsWriter::create(&st_path, specs.clone(), &md)?;
    for (spec, part) in specs.iter().zip(parts) {
        match part {
            Some(data) => w.write(&spec.name, &data)?,
            None => {
                let raw = files.weights.raw(&spec.name)?;
                w.write(&spec.name, raw.data)?;
                files.weights.release(&spec.name);
            }
        }
    }
    w.finish()?;
    let safetensors_bytes = std::fs::metadata(&st_path).map(|m| m.len()).unwrap_or(0);
    let report = ServedReport {
        out: out.to_path_buf(),
        format: format.name().into(),
        searched_bits_per_weight: space.bits_per_weight(&sel.choice),
        searched_params: space.total_params,
        config_groups,
        safetensors_bytes,
    };
    super::finish_dir(tmp, out, &sel.config, &report)?;
    Ok(report)
}
