//! Export of a depth-pruned model ([`DepthConfig`]) as a Hugging Face
//! directory that plain transformers loads: the dropped blocks' tensors are
//! left out, the remaining blocks renumbered `0..n`, `num_hidden_layers`
//! (and per-layer lists such as `layer_types`) updated in `config.json`;
//! every other tensor is copied byte for byte. The same pruned checkpoint
//! converted to GGUF ([`export_depth_gguf`]) is a file llama.cpp loads with
//! fewer blocks.
//!
//! A block with only one sublayer dropped cannot be written this way: the
//! Hugging Face Llama/Qwen configurations have one attention and one MLP per
//! block. Such configurations are refused; llama.cpp's `deci` architecture
//! (per-layer head counts and FFN sizes, 0 meaning "absent") or a format with
//! per-block flags could express them (not built yet, see docs/depth.md).

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::TensorSink;
use crate::error::{Error, Result};
use crate::formats::safetensors::{SafetensorsWriter, TensorSpec};
use crate::model::{DepthConfig, ModelFiles};

/// What [`export_depth`] wrote.
#[derive(Debug, Clone, Serialize)]
pub struct DepthExportReport {
    pub out: PathBuf,
    /// Blocks of the original model that were removed.
    pub removed_blocks: Vec<usize>,
    /// Blocks in the exported model.
    pub num_hidden_layers: usize,
    pub safetensors_bytes: u64,
}

/// `model.layers.{old}.rest` → `model.layers.{new}.rest`, `None` when the
/// block is removed; other names unchanged.
fn rename(name: &str, new_index: &[Option<usize>]) -> Option<String> {
    let Some(rest) = name.strip_prefix("model.layers.") else {
        return Some(name.to_string());
    };
    let Some((block, tail)) = rest.split_once('.') else {
        return Some(name.to_string());
    };
    let Ok(block) = block.parse::<usize>() else {
        return Some(name.to_string());
    };
    match new_index.get(block) {
        Some(Some(n)) => Some(format!("model.layers.{n}.{tail}")),
        Some(None) => None,
        None => Some(name.to_string()),
    }
}

/// Writes `files` with the whole blocks `config` drops removed, to `out`.
pub fn export_depth(
    files: &ModelFiles,
    config: &DepthConfig,
    config_path: &Path,
    out: &Path,
    force: bool,
) -> Result<DepthExportReport> {
    let plan = DepthPlan::new(files, config, config_path)?;
    let tmp = temp_beside(
        files,
        config_path,
        out,
        crate::fsutil::OutputKind::Dir,
        force,
    )?;
    let safetensors_bytes = plan.write_dir(files, tmp.path())?;
    let report = DepthExportReport {
        out: out.to_path_buf(),
        removed_blocks: plan.removed.clone(),
        num_hidden_layers: plan.kept,
        safetensors_bytes,
    };
    let meta = serde_json::json!({ "depth": config, "export": report });
    crate::fsutil::write_atomic(
        &tmp.path().join("dynapress.json"),
        serde_json::to_string_pretty(&meta)
            .expect("json")
            .as_bytes(),
    )?;
    crate::fsutil::replace_dir(tmp.path(), out)?;
    let _ = tmp.keep();
    Ok(report)
}

/// What [`export_depth_gguf`] wrote.
#[derive(Debug, Clone, Serialize)]
pub struct DepthGgufReport {
    pub out: PathBuf,
    /// Blocks of the original model that were removed.
    pub removed_blocks: Vec<usize>,
    /// Blocks in the exported file (`{arch}.block_count`).
    pub block_count: usize,
    /// The matrices' type.
    pub tensor_type: String,
    pub bytes: u64,
}

/// Writes `files` with the whole blocks `config` drops removed as a GGUF file
/// llama.cpp loads (fewer blocks, `block_count` updated), every matrix at
/// `ty` (F32/F16/BF16, or a quantized type as `convert --type` writes it).
/// The pruned checkpoint is written to a temporary directory beside `out`
/// first (the model's size on disk, removed afterwards).
pub fn export_depth_gguf(
    files: &ModelFiles,
    config: &DepthConfig,
    config_path: &Path,
    out: &Path,
    ty: dynapress_ggml::GgmlType,
    force: bool,
) -> Result<DepthGgufReport> {
    let plan = DepthPlan::new(files, config, config_path)?;
    let tmp = temp_beside(
        files,
        config_path,
        out,
        crate::fsutil::OutputKind::File,
        force,
    )?;
    plan.write_dir(files, tmp.path())?;
    let pruned = ModelFiles::open(tmp.path())?;
    let r = super::convert_gguf(&pruned, out, ty, None)?;
    Ok(DepthGgufReport {
        out: out.to_path_buf(),
        removed_blocks: plan.removed,
        block_count: plan.kept,
        tensor_type: ty.name().to_string(),
        bytes: r.bytes,
    })
}

/// Checks `out` (it may not replace the model or the configuration; an
/// existing one needs `force`) and makes a temporary directory beside it.
fn temp_beside(
    files: &ModelFiles,
    config_path: &Path,
    out: &Path,
    kind: crate::fsutil::OutputKind,
    force: bool,
) -> Result<tempfile::TempDir> {
    crate::fsutil::check_output(
        out,
        "--out",
        kind,
        &[
            crate::fsutil::Input::Dir(&files.dir),
            crate::fsutil::Input::File(config_path),
        ],
        force,
    )?;
    let parent = crate::fsutil::parent_dir(out);
    std::fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
    crate::fsutil::clean_stale_temps(&parent);
    crate::fsutil::temp_dir_in(&parent).map_err(|e| Error::io(&parent, e))
}

/// The blocks a depth configuration keeps, checked against the model.
struct DepthPlan {
    removed: Vec<usize>,
    /// Old block → new index, `None` when removed.
    new_index: Vec<Option<usize>>,
    kept: usize,
}

impl DepthPlan {
    fn new(files: &ModelFiles, config: &DepthConfig, config_path: &Path) -> Result<Self> {
        let n = files.config.num_layers;
        if config.num_layers != n {
            return Err(Error::config(
                config_path,
                format!(
                    "the configuration is for a model with {} blocks; {} has {n}",
                    config.num_layers,
                    files.dir.display()
                ),
            ));
        }
        let partial = config.partial_blocks();
        if !partial.is_empty() {
            return Err(Error::config(
                config_path,
                format!(
                    "blocks {partial:?} have only one sublayer dropped, which neither a Hugging Face directory nor a llama/qwen GGUF can express (one attention and one MLP per block); search with --whole-blocks, or evaluate it in dynapress with `eval --config`"
                ),
            ));
        }
        if files
            .linear_ids()
            .iter()
            .any(|id| files.weights.is_quantized(&id.weight_name()))
        {
            return Err(Error::config(
                &files.dir,
                "the model holds dynapress-quantized layers; depth export needs a plain Hugging Face or GGUF input",
            ));
        }
        let removed: Vec<usize> = (0..n).filter(|&b| config.block_dropped(b)).collect();
        let mut next = 0;
        let new_index: Vec<Option<usize>> = (0..n)
            .map(|b| {
                (!config.block_dropped(b)).then(|| {
                    next += 1;
                    next - 1
                })
            })
            .collect();
        Ok(DepthPlan {
            removed,
            new_index,
            kept: next,
        })
    }

    /// Writes the pruned checkpoint (side files with `config.json` edited,
    /// `model.safetensors` with the kept blocks renumbered) into `dir`;
    /// returns the safetensors file's size.
    fn write_dir(&self, files: &ModelFiles, dir: &Path) -> Result<u64> {
        let (new_index, kept) = (&self.new_index, self.kept);
        for (name, bytes) in files.side_files()? {
            let p = dir.join(&name);
            let bytes = if name == "config.json" {
                edit_config(&bytes, new_index, kept, &files.dir)?
            } else {
                bytes
            };
            std::fs::write(&p, bytes).map_err(|e| Error::io(&p, e))?;
        }

        let mut pairs: Vec<(String, String)> = files
            .weights
            .names()
            .into_iter()
            .filter_map(|old| rename(&old, new_index).map(|new| (old, new)))
            .collect();
        pairs.sort_by(|a, b| a.1.cmp(&b.1));
        let mut specs = Vec::with_capacity(pairs.len());
        for (old, new) in &pairs {
            let raw = files.weights.raw(old)?;
            specs.push(TensorSpec {
                name: new.clone(),
                dtype: raw.dtype,
                shape: raw.shape.clone(),
            });
        }
        let st_path = dir.join("model.safetensors");
        let mut md = std::collections::BTreeMap::new();
        md.insert("format".to_string(), "pt".to_string());
        let mut w = SafetensorsWriter::create(&st_path, specs, &md)?;
        for (old, new) in &pairs {
            let raw = files.weights.raw(old)?;
            w.tensor(new, raw.data)?;
            files.weights.release(old);
        }
        TensorSink::finish(w)?;
        Ok(std::fs::metadata(&st_path).map(|m| m.len()).unwrap_or(0))
    }
}

/// `config.json` with `num_hidden_layers` set and per-layer lists filtered.
fn edit_config(
    bytes: &[u8],
    new_index: &[Option<usize>],
    kept: usize,
    dir: &Path,
) -> Result<Vec<u8>> {
    let path = dir.join("config.json");
    let mut v: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| Error::config(&path, format!("not valid JSON: {e}")))?;
    let o = v
        .as_object_mut()
        .ok_or_else(|| Error::config(&path, "not a JSON object"))?;
    o.insert("num_hidden_layers".into(), kept.into());
    // Lists with one entry per block (Qwen2/3's `layer_types`).
    if let Some(serde_json::Value::Array(a)) = o.get_mut("layer_types")
        && a.len() == new_index.len()
    {
        let mut keep = new_index.iter().map(Option::is_some);
        a.retain(|_| keep.next().unwrap_or(true));
    }
    Ok((serde_json::to_string_pretty(&v).expect("json") + "\n").into_bytes())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::{edit_config, rename};

    #[test]
    fn config_gets_the_new_layer_count_and_filtered_layer_types() {
        let cfg = br#"{"num_hidden_layers": 3, "layer_types": ["a", "b", "c"], "x": [1, 2, 3]}"#;
        let out = edit_config(cfg, &[Some(0), None, Some(1)], 2, Path::new(".")).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["num_hidden_layers"], 2);
        assert_eq!(v["layer_types"], serde_json::json!(["a", "c"]));
        assert_eq!(v["x"], serde_json::json!([1, 2, 3]));
    }

    #[test]
    fn renames_kept_blocks_and_drops_removed_ones() {
        let idx = [Some(0), None, Some(1)];
        assert_eq!(
            rename("model.layers.2.mlp.down_proj.weight", &idx).as_deref(),
            Some("model.layers.1.mlp.down_proj.weight")
        );
        assert_eq!(rename("model.layers.1.input_layernorm.weight", &idx), None);
        assert_eq!(
            rename("model.norm.weight", &idx).as_deref(),
            Some("model.norm.weight")
        );
    }
}
