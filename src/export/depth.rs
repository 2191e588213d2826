//! Export of a depth-pruned model ([`DepthConfig`]) as a Hugging Face
//! directory that plain transformers loads: the dropped blocks' tensors are
//! left out, the remaining blocks renumbered `0..n`, `num_hidden_layers`
//! (and per-layer lists such as `layer_types`) updated in `config.json`;
//! every other tensor is copied byte for byte. The same pruned checkpoint
//! converted to GGUF ([`export_depth_gguf`]) is a file llama.cpp loads with
//! fewer blocks.
//!
//! A block with only one sublayer dropped cannot be written as a Hugging Face
//! directory: the Llama/Qwen configurations have one attention and one MLP
//! per block, so such configurations are refused there. The GGUF export
//! writes them with llama.cpp's `deci` architecture ([`to_deci`]): per-layer
//! head counts and FFN sizes, a head count of 0 meaning "no attention".

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::TensorSink;
use crate::error::{Error, Result};
use crate::formats::safetensors::{SafetensorsWriter, TensorSpec};
use crate::model::{DepthConfig, ModelFiles, Sublayer, SublayerId};

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
    let plan = DepthPlan::new(files, config, config_path, false)?;
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
    /// `llama` (whole blocks only) or `deci` (some block keeps one sublayer).
    pub architecture: String,
    /// Exported blocks (new indices) whose attention is absent.
    pub attention_dropped: Vec<usize>,
    /// Exported blocks (new indices) whose MLP is absent.
    pub mlp_dropped: Vec<usize>,
    pub bytes: u64,
}

/// Writes `files` with the whole blocks `config` drops removed as a GGUF file
/// llama.cpp loads (fewer blocks, `block_count` updated), every matrix at
/// `ty` (F32/F16/BF16, or a quantized type as `convert --type` writes it).
/// Blocks with one sublayer dropped make it a `deci` file ([`to_deci`];
/// Llama checkpoints only). The pruned checkpoint is written to a temporary
/// directory beside `out` first (the model's size on disk, removed
/// afterwards).
pub fn export_depth_gguf(
    files: &ModelFiles,
    config: &DepthConfig,
    config_path: &Path,
    out: &Path,
    ty: dynapress_ggml::GgmlType,
    force: bool,
) -> Result<DepthGgufReport> {
    let plan = DepthPlan::new(files, config, config_path, true)?;
    let partial = !plan.attn_dropped.is_empty() || !plan.mlp_dropped.is_empty();
    if partial && files.config.arch != crate::model::Architecture::Llama {
        return Err(Error::config(
            config_path,
            format!(
                "blocks {:?} keep one sublayer; llama.cpp expresses that only with its `deci` architecture, which follows Llama, and {} is {:?}; search with --whole-blocks",
                config.partial_blocks(),
                files.dir.display(),
                files.config.arch
            ),
        ));
    }
    let tmp = temp_beside(
        files,
        config_path,
        out,
        crate::fsutil::OutputKind::File,
        force,
    )?;
    plan.write_dir(files, tmp.path())?;
    let pruned = ModelFiles::open(tmp.path())?;
    let bytes = if partial {
        let llama = tmp.path().join("pruned-llama.gguf");
        super::convert_gguf(&pruned, &llama, ty, None)?;
        to_deci(&llama, out, &plan.attn_dropped, &plan.mlp_dropped)?
    } else {
        super::convert_gguf(&pruned, out, ty, None)?.bytes
    };
    Ok(DepthGgufReport {
        out: out.to_path_buf(),
        removed_blocks: plan.removed,
        block_count: plan.kept,
        tensor_type: ty.name().to_string(),
        architecture: if partial { "deci" } else { "llama" }.to_string(),
        attention_dropped: plan.attn_dropped,
        mlp_dropped: plan.mlp_dropped,
        bytes,
    })
}

/// The GGUF type of a depth-pruned export's matrices for `--dtype`:
/// `original` keeps the checkpoint's BF16/F16 (F32 for anything else).
pub fn depth_gguf_type(
    files: &ModelFiles,
    dtype: super::ExportDtype,
) -> Result<dynapress_ggml::GgmlType> {
    use dynapress_ggml::GgmlType;
    Ok(match dtype {
        super::ExportDtype::F32 => GgmlType::F32,
        super::ExportDtype::Bf16 => GgmlType::BF16,
        super::ExportDtype::F16 => GgmlType::F16,
        super::ExportDtype::Original => match files.weights.raw("model.embed_tokens.weight")?.dtype
        {
            safetensors::Dtype::BF16 => GgmlType::BF16,
            safetensors::Dtype::F16 => GgmlType::F16,
            _ => GgmlType::F32,
        },
    })
}

/// Width of the all-zero FFN that stands for a dropped MLP in a `deci` file.
///
/// llama.cpp's `deci` graph `continue`s past an FFN-free layer (feed-forward
/// length 0) before the residual add, which discards that layer's attention
/// output too; an FFN whose weights are all zero adds exactly nothing
/// (`down · (silu(gate · x) ⊙ (up · x)) = 0`), so a dropped MLP becomes one
/// of this width (F32, `3 · 32 · hidden` weights).
pub const DECI_ZERO_FFN: usize = 32;

/// Rewrites a `llama` GGUF `src` as a `deci` one at `out` with the attention
/// of blocks `attn` and the MLP of blocks `mlp` (indices in `src`) absent:
///
/// - keys `llama.*` become `deci.*`; `attention.head_count`,
///   `attention.head_count_kv` and `feed_forward_length` become per-layer
///   arrays; `attention.key_length` / `value_length` are written explicitly;
/// - a dropped attention has head count 0 and no attention tensors, except in
///   block 0, whose head count llama.cpp reads as the model's (it derives the
///   head size from it): there the attention is deci's "linear attention"
///   (`head_count_kv` 0) with an all-zero `attn_output`, which adds exactly 0;
/// - a dropped MLP is an all-zero FFN of width [`DECI_ZERO_FFN`].
///
/// Returns the written file's size.
pub fn to_deci(src: &Path, out: &Path, attn: &[usize], mlp: &[usize]) -> Result<u64> {
    use dynapress_gguf::{Array, GgufFile, Metadata, TensorSpec as Spec, Value};
    let gerr = |e: dynapress_gguf::GgufError| Error::Invalid(format!("{}: {e}", src.display()));
    let f = GgufFile::open(src).map_err(gerr)?;
    let md = f.metadata();
    let arch = md.get_str("general.architecture").map_err(gerr)?;
    if arch != "llama" {
        return Err(Error::Invalid(format!(
            "{}: a deci file is made from a llama GGUF, this one is {arch}",
            src.display()
        )));
    }
    let get = |k: &str| md.get_u64(&format!("llama.{k}")).map_err(gerr);
    let n_layer = get("block_count")? as usize;
    let hidden = get("embedding_length")?;
    let n_head = get("attention.head_count")?;
    let n_head_kv = md
        .get_u64("llama.attention.head_count_kv")
        .unwrap_or(n_head);
    let n_ff = get("feed_forward_length")?;
    let head_dim = md
        .get_u64("llama.attention.key_length")
        .unwrap_or(hidden / n_head.max(1));
    // Per-layer head counts and FFN widths. A dropped attention has no
    // heads, except block 0's (its head count sets the model's head size):
    // deci's linear attention, heads but no KV heads.
    let (mut heads, mut kv_heads, mut ffn) = (Vec::new(), Vec::new(), Vec::new());
    for b in 0..n_layer {
        let no_attn = attn.contains(&b);
        heads.push(if no_attn && b > 0 { 0 } else { n_head as i32 });
        kv_heads.push(if no_attn { 0 } else { n_head_kv as i32 });
        ffn.push(if mlp.contains(&b) {
            DECI_ZERO_FFN as i32
        } else {
            n_ff as i32
        });
    }
    let mut out_md = Metadata::new();
    for (k, v) in md.iter() {
        match k.strip_prefix("llama.") {
            Some(rest) => out_md.set(format!("deci.{rest}"), v.clone()),
            None => out_md.set(k, v.clone()),
        }
    }
    out_md.set("general.architecture", "deci");
    out_md.set("deci.attention.head_count", Value::Array(Array::I32(heads)));
    out_md.set(
        "deci.attention.head_count_kv",
        Value::Array(Array::I32(kv_heads)),
    );
    out_md.set("deci.feed_forward_length", Value::Array(Array::I32(ffn)));
    out_md.set("deci.attention.key_length", Value::U32(head_dim as u32));
    out_md.set("deci.attention.value_length", Value::U32(head_dim as u32));

    // Tensors: dropped attention and MLP tensors left out or replaced by zeros.
    let zeros = |dims: &[u64]| vec![0u8; 4 * dims.iter().product::<u64>() as usize];
    let mut extra: Vec<(Spec, Vec<u8>)> = Vec::new();
    let mut kept: Vec<(Spec, &[u8])> = Vec::new();
    for t in f.tensors() {
        let block = t
            .name
            .strip_prefix("blk.")
            .and_then(|r| r.split_once('.'))
            .and_then(|(b, rest)| Some((b.parse::<usize>().ok()?, rest)));
        if let Some((b, rest)) = block {
            let is_attn = rest.starts_with("attn_");
            let is_ffn = rest.starts_with("ffn_gate.")
                || rest.starts_with("ffn_up.")
                || rest.starts_with("ffn_down.");
            if is_attn && attn.contains(&b) {
                // Block 0 keeps its norm and a zero output projection.
                if b == 0 && rest == "attn_norm.weight" {
                    kept.push((Spec::new(&t.name, t.ggml_type, &t.dims), f.data(t)));
                } else if b == 0 && rest == "attn_output.weight" {
                    let dims = [hidden, hidden];
                    extra.push((
                        Spec::new(&t.name, dynapress_ggml::GgmlType::F32, &dims),
                        zeros(&dims),
                    ));
                }
                continue;
            }
            if is_ffn && mlp.contains(&b) {
                if rest.ends_with(".weight") {
                    let w = DECI_ZERO_FFN as u64;
                    let dims = if rest.starts_with("ffn_down.") {
                        [w, hidden]
                    } else {
                        [hidden, w]
                    };
                    extra.push((
                        Spec::new(&t.name, dynapress_ggml::GgmlType::F32, &dims),
                        zeros(&dims),
                    ));
                }
                continue;
            }
        }
        kept.push((Spec::new(&t.name, t.ggml_type, &t.dims), f.data(t)));
    }
    let all = kept
        .into_iter()
        .chain(extra.iter().map(|(s, d)| (s.clone(), d.as_slice())));
    dynapress_gguf::write_gguf(out, &out_md, all)
        .map_err(|e| Error::Invalid(format!("{}: {e}", out.display())))?;
    std::fs::metadata(out)
        .map(|m| m.len())
        .map_err(|e| Error::io(out, e))
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
    /// Kept blocks (new indices) without attention, and without MLP.
    attn_dropped: Vec<usize>,
    mlp_dropped: Vec<usize>,
    /// Old block → new index, `None` when removed.
    new_index: Vec<Option<usize>>,
    kept: usize,
}

impl DepthPlan {
    /// `partial`: blocks with one sublayer dropped are allowed (the GGUF
    /// export writes them as `deci`); otherwise they are refused.
    fn new(
        files: &ModelFiles,
        config: &DepthConfig,
        config_path: &Path,
        partial: bool,
    ) -> Result<Self> {
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
        let partial_blocks = config.partial_blocks();
        if !partial && !partial_blocks.is_empty() {
            return Err(Error::config(
                config_path,
                format!(
                    "blocks {partial_blocks:?} have only one sublayer dropped, which a Hugging Face directory cannot express (one attention and one MLP per block); export it with --format gguf (llama.cpp's deci architecture), search with --whole-blocks, or evaluate it in dynapress with `eval --config`"
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
        let dropped_in = |s: Sublayer| -> Vec<usize> {
            (0..n)
                .filter(|&b| {
                    !config.block_dropped(b)
                        && config.dropped.contains(&SublayerId {
                            block: b,
                            sublayer: s,
                        })
                })
                .filter_map(|b| new_index[b])
                .collect()
        };
        Ok(DepthPlan {
            removed,
            attn_dropped: dropped_in(Sublayer::Attn),
            mlp_dropped: dropped_in(Sublayer::Mlp),
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
