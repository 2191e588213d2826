//! Building (and resuming) a database, one transformer block at a time.

use std::path::{Path, PathBuf};
use std::time::Instant;

use dynapress_compress::{
    FactorParams, GptqFactor, Hessian, compress_layer, relative_output_error,
};
use sha2::{Digest, Sha256};

use super::{
    CalibIdentity, Entry, FORMAT_VERSION, HessianEntry, IMATRIX_FILE, LevelSpec, Manifest, Method,
    MethodSpec, ModelIdentity, Unavailable, Variant, entry_bytes, load_entry_file,
};
use crate::calib::{BlockStream, CalibSet, HessianCapture};
use crate::error::{Error, Result};
use crate::fsutil::hex;
use crate::fsutil::write_atomic;
use crate::model::{LinearId, ModelFiles, Site};
use crate::progress;
use dynapress_gguf::{Imatrix, ImatrixEntry};

/// How to build a database.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub spec: MethodSpec,
    /// Calibration windows per forward pass.
    pub batch: usize,
    /// Also store each site's Hessian.
    pub keep_hessians: bool,
    /// Rebuild even if the directory holds a database of another model,
    /// calibration or method.
    pub force: bool,
    pub quiet: bool,
    /// Test hook: stop the process abruptly (as a crash would) after writing
    /// this many new entries.
    pub abort_after: Option<usize>,
}

/// What a build did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BuildReport {
    pub dir: PathBuf,
    pub entries_total: usize,
    pub entries_built: usize,
    pub entries_reused: usize,
    /// Entries whose file failed its checksum and were rebuilt.
    pub entries_repaired: usize,
    pub seconds: f64,
    /// Peak resident memory of the process so far, in MiB.
    pub peak_rss_mib: f64,
    /// Layers whose rows a chosen ggml type cannot hold, and the levels they
    /// have instead (one line per row length).
    pub fallbacks: Vec<String>,
}

/// Builds the database in `dir` for `files` from `calib`, or finishes one
/// that an earlier run of the same build left incomplete.
pub fn build_database(
    files: &ModelFiles,
    calib: &CalibSet,
    dir: &Path,
    opts: &BuildOptions,
) -> Result<BuildReport> {
    let start = Instant::now();
    let spec = &opts.spec;
    validate_spec(spec)?;
    check_sparse_shapes(spec, files)?;
    let model = ModelIdentity::of(files)?;
    let calibration = CalibIdentity {
        sources: calib.sources.clone(),
        seq_len: calib.seq_len,
        windows: calib.windows(),
        tokens: calib.tokens(),
    };
    // Fallback levels exist when some layer's rows cannot hold a chosen type.
    let mut fallback_shapes: Vec<usize> = Vec::new();
    for id in files.linear_ids() {
        let cols = id.shape(&files.config).1;
        if spec.needs_fallback(cols)? && !fallback_shapes.contains(&cols) {
            fallback_shapes.push(cols);
        }
    }
    fallback_shapes.sort_unstable();
    let level_specs = spec.all_levels(!fallback_shapes.is_empty())?;
    let levels: Vec<String> = level_specs.iter().map(|l| l.name.clone()).collect();
    let mut canonical = spec.clone();
    if spec.is_ggml() {
        canonical.types = level_specs
            .iter()
            .filter(|l| !l.fallback)
            .filter_map(|l| l.ggml.map(|t| t.name().to_string()))
            .collect();
        canonical.bits = vec![];
    } else {
        canonical.bits = level_specs.iter().map(|l| l.bits).collect();
        canonical.types = vec![];
    }

    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    remove_temp_files(dir)?;
    let fresh = Manifest {
        format: "dynapress-database".into(),
        format_version: FORMAT_VERSION,
        dynapress_version: env!("CARGO_PKG_VERSION").into(),
        model: model.clone(),
        calibration: calibration.clone(),
        method: canonical,
        levels: levels.clone(),
        entries: vec![],
        unavailable: vec![],
        hessians: vec![],
        complete: false,
    };
    let mut manifest = match dir.join("manifest.json").exists() {
        false => fresh,
        true => {
            let old = Manifest::read(dir)?;
            let mismatch = if !old.model.same_model(&model) {
                Some(format!("another model ({})", old.model.dir))
            } else if !old.calibration.same_data(&calibration) {
                Some("other calibration data".to_string())
            } else if old.method != fresh.method {
                Some("another method or other parameters".to_string())
            } else {
                None
            };
            match (mismatch, opts.force) {
                (None, _) => Manifest {
                    entries: old.entries,
                    unavailable: old.unavailable,
                    hessians: old.hessians,
                    ..fresh
                },
                (Some(why), false) => {
                    return Err(Error::data(
                        dir,
                        format!(
                            "holds a database built from {why}; pass --force to rebuild it, or choose another --out"
                        ),
                    ));
                }
                (Some(_), true) => {
                    for sub in ["entries", "hessians"] {
                        let p = dir.join(sub);
                        if p.exists() {
                            std::fs::remove_dir_all(&p).map_err(|e| Error::io(&p, e))?;
                        }
                    }
                    fresh
                }
            }
        }
    };

    // Keep only entries whose files verify.
    let before = manifest.entries.len();
    manifest
        .entries
        .retain(|e| levels.contains(&e.level) && load_entry_file(dir, e).is_ok());
    manifest.hessians.retain(|h| {
        opts.keep_hessians && file_sha(&dir.join(&h.file)).ok().as_deref() == Some(&h.sha256)
    });
    let repaired = before - manifest.entries.len();
    let reused = manifest.entries.len() + manifest.unavailable.len();
    let ids = files.linear_ids();
    let total = ids.len() * levels.len();
    let hessians_done =
        !opts.keep_hessians || manifest.hessians.len() == files.config.num_layers * Site::ALL.len();
    if reused == total && hessians_done {
        // Nothing to build: leave the directory untouched (it may be read concurrently).
        if !manifest.complete {
            manifest.complete = true;
            manifest.write(dir)?;
        }
        return Ok(BuildReport {
            dir: dir.to_path_buf(),
            entries_total: total,
            entries_built: 0,
            entries_reused: reused,
            entries_repaired: repaired,
            seconds: start.elapsed().as_secs_f64(),
            peak_rss_mib: crate::progress::peak_rss_mib(),
            fallbacks: fallback_summary(spec, files)?,
        });
    }
    manifest.complete = false;
    manifest.write(dir)?;

    let cfg = &files.config;
    let pb = progress::bar(total as u64, "database", "entries", opts.quiet);
    pb.set_position(reused as u64);
    let mut stream = BlockStream::new(files, calib, opts.batch)?;
    crate::eval::log_memory("database: calibration embedded");
    let mut built = 0usize;
    let mut imatrix = Imatrix {
        datasets: calib
            .sources
            .iter()
            .map(|s| {
                s.path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default()
            })
            .collect(),
        chunk_count: calib.windows() as u32,
        chunk_size: calib.seq_len as u32,
        ..Default::default()
    };

    for block_idx in 0..cfg.num_layers {
        let block = BlockStream::load_block(files, block_idx)?;
        let missing: Vec<(LinearId, usize)> = ids
            .iter()
            .filter(|id| id.block == block_idx)
            .flat_map(|&id| (0..level_specs.len()).map(move |k| (id, k)))
            .filter(|&(id, k)| {
                manifest.entry(id, &level_specs[k].name).is_none()
                    && !manifest
                        .unavailable
                        .iter()
                        .any(|u| u.layer == id.weight_name() && u.level == level_specs[k].name)
            })
            .collect();
        let hessians_missing = opts.keep_hessians
            && Site::ALL.iter().any(|&s| {
                !manifest
                    .hessians
                    .iter()
                    .any(|h| h.block == block_idx && h.site == s)
            });
        // Σx² statistics are gathered for every block (they make the
        // importance matrix); Hessians only where something is to be built.
        let mut cap = if missing.is_empty() && !hessians_missing {
            HessianCapture::stats_only(cfg, block_idx)
        } else {
            HessianCapture::new(cfg, block_idx)
        };
        stream.advance(&block, Some(&mut cap))?;
        crate::eval::log_memory(&format!(
            "database: block {block_idx} forward with its statistics"
        ));
        for id in ids.iter().filter(|id| id.block == block_idx) {
            if let Some(name) = dynapress_gguf::model::gguf_tensor_name(&id.weight_name())
                .ok()
                .flatten()
            {
                let sums = cap.sums(id.kind.site()).iter().map(|&v| v as f32).collect();
                imatrix
                    .entries
                    .insert(name, ImatrixEntry::new(sums, cap.tokens as f32));
            }
        }
        if missing.is_empty() && !hessians_missing {
            continue;
        }

        if hessians_missing {
            for (site, h) in &cap.sites {
                let e = write_hessian(dir, block_idx, *site, h)?;
                manifest
                    .hessians
                    .retain(|x| !(x.block == block_idx && x.site == *site));
                manifest.hessians.push(e);
            }
            manifest.write(dir)?;
        }

        for site in Site::ALL {
            let todo: Vec<(LinearId, usize)> = missing
                .iter()
                .copied()
                .filter(|(id, _)| id.kind.site() == site)
                .collect();
            if todo.is_empty() {
                continue;
            }
            let h = cap.get(site);
            // One factorisation per site: q/k/v (and gate/up) share it.
            let factor = match spec.method {
                Method::Gptq | Method::GptqKquant | Method::Sparsegpt => Some(
                    GptqFactor::new(
                        h,
                        &FactorParams {
                            damp: spec.damp,
                            act_order: spec.act_order,
                            ..Default::default()
                        },
                    )
                    .map_err(|e| {
                        Error::layer(
                            format!("block {block_idx}, {}", site.name()),
                            format!("Hessian: {e}"),
                        )
                    })?,
                ),
                Method::Rtn | Method::Kquant => None,
            };
            crate::eval::log_memory(&format!(
                "database: block {block_idx} {} factor",
                site.name()
            ));
            // llama-imatrix's importance: the mean of x² per input channel,
            // computed exactly as llama-quantize computes it from imatrix.gguf.
            let importance: Option<Vec<f32>> =
                (spec.is_ggml() && spec.imatrix).then(|| cap.importance(site));
            if let Some(f) = &factor
                && f.damp_retries() > 0
                && !opts.quiet
            {
                pb.suspend(|| {
                    eprintln!(
                        "note: block {block_idx} {}: Hessian not positive definite at damp {}; used damp {} ({} retries)",
                        site.name(),
                        spec.damp,
                        f.damp(),
                        f.damp_retries()
                    )
                });
            }
            for &kind in site.kinds() {
                let id = LinearId {
                    block: block_idx,
                    kind,
                };
                let w = block.linear_weight(kind)?.flatten_all()?.to_vec1::<f32>()?;
                for &(_, k) in todo.iter().filter(|(i, _)| *i == id) {
                    let level = &level_specs[k];
                    pb.set_message(format!("{id} {}", level.name));
                    let cols = id.shape(cfg).1;
                    if let Some(reason) = unavailable_reason(spec, level, cols)? {
                        // Not silently replaced by another type: the layer just
                        // lacks this level, and the search and report know it.
                        manifest.unavailable.push(Unavailable {
                            layer: id.weight_name(),
                            level: level.name.clone(),
                            reason,
                        });
                        manifest.write(dir)?;
                        pb.inc(1);
                        continue;
                    }
                    let q =
                        compress_layer(&w, h, factor.as_ref(), importance.as_deref(), spec, level)
                            .map_err(|e| Error::layer(id.weight_name(), e.to_string()))?;
                    let entry = write_entry(dir, id, level, &w, h, &q)?;
                    manifest.entries.push(entry);
                    sort_entries(&mut manifest);
                    manifest.write(dir)?;
                    built += 1;
                    pb.inc(1);
                    crate::eval::log_memory(&format!("database: {id} {} built", level.name));
                    if opts.abort_after == Some(built) {
                        // Simulated crash for the resume test: no cleanup, no unwinding.
                        std::process::abort();
                    }
                }
            }
        }
        // The block's Hessians, factors and scratch are freed: hand the pages
        // back, or the allocator (tuned to keep buffers for the forward pass)
        // keeps each block's leftovers and the resident size grows.
        drop(cap);
        crate::eval::release_freed_memory(&format!("database: block {block_idx} built"));
    }
    let (head, tokens) = stream.head_sum_sq(files)?;
    // llama-imatrix records the output's statistics under the weight the
    // matmul reads: token_embd.weight when the embeddings are tied.
    let head_name = if files.is_tied() {
        "token_embd.weight"
    } else {
        "output.weight"
    };
    imatrix.entries.insert(
        head_name.into(),
        ImatrixEntry::new(head.iter().map(|&v| v as f32).collect(), tokens as f32),
    );
    imatrix
        .write_gguf(dir.join(IMATRIX_FILE))
        .map_err(|e| Error::Data {
            path: dir.join(IMATRIX_FILE),
            msg: e.to_string(),
        })?;
    manifest.complete = true;
    manifest.write(dir)?;
    pb.finish_and_clear();
    Ok(BuildReport {
        dir: dir.to_path_buf(),
        entries_total: total,
        entries_built: built,
        entries_reused: reused,
        entries_repaired: repaired,
        seconds: start.elapsed().as_secs_f64(),
        peak_rss_mib: crate::progress::peak_rss_mib(),
        fallbacks: fallback_summary(spec, files)?,
    })
}

/// Why a layer with rows of `cols` weights has no entry at `level`, if it has none.
fn unavailable_reason(spec: &MethodSpec, level: &LevelSpec, cols: usize) -> Result<Option<String>> {
    let Some(ty) = level.ggml else {
        return Ok(None);
    };
    if ty.row_bytes(cols).is_none() {
        let fallback = ty.fallback_for_row(cols);
        let instead = if fallback.is_quantized() {
            format!(
                "llama-quantize would write {fallback}; the layer has the fallback levels ({}) instead",
                spec.fallback_levels()?
                    .iter()
                    .chain(spec.levels()?.iter())
                    .filter_map(|l| l.ggml)
                    .filter(|t| t.block_size() == 32 && t.row_bytes(cols).is_some())
                    .map(|t| t.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        } else {
            format!("not a multiple of 32 either: only {fallback} could hold it")
        };
        return Ok(Some(format!(
            "rows of {cols} weights are not a multiple of {ty}'s block of {}: {instead}",
            ty.block_size()
        )));
    }
    if level.fallback && !spec.needs_fallback(cols)? {
        return Ok(Some(format!(
            "fallback level, built only for layers whose rows a chosen type cannot hold; rows of {cols} hold every one"
        )));
    }
    Ok(None)
}

/// One line per row length that needed fallback levels: which chosen types
/// its layers lack and which levels they have instead.
pub fn fallback_summary(spec: &MethodSpec, files: &ModelFiles) -> Result<Vec<String>> {
    let mut by_cols: std::collections::BTreeMap<usize, usize> = Default::default();
    for id in files.linear_ids() {
        let cols = id.shape(&files.config).1;
        if spec.needs_fallback(cols)? {
            *by_cols.entry(cols).or_default() += 1;
        }
    }
    let mut out = Vec::new();
    for (cols, n) in by_cols {
        let all = spec.all_levels(true)?;
        let (lack, have): (Vec<&LevelSpec>, Vec<&LevelSpec>) = all
            .iter()
            .filter(|l| l.ggml.is_some())
            .partition(|l| l.ggml.is_some_and(|t| t.row_bytes(cols).is_none()));
        let names = |v: &[&LevelSpec]| {
            v.iter()
                .filter_map(|l| l.ggml.map(|t| t.name()))
                .collect::<Vec<_>>()
                .join(", ")
        };
        out.push(format!(
            "{n} layers with rows of {cols} weights cannot hold {} (blocks of 256); they have {} instead",
            names(&lack),
            names(&have)
        ));
    }
    Ok(out)
}

fn validate_spec(spec: &MethodSpec) -> Result<()> {
    if spec.method == Method::Sparsegpt {
        if spec.sparsities.is_empty() {
            return Err(Error::option(
                "--sparsities",
                "--sparsities needs at least one fraction or N:M",
            ));
        }
        if let Some(b) = spec.sparse_bits.iter().find(|&&b| !(2..=8).contains(&b)) {
            return Err(Error::option(
                "--sparse-bits",
                format!("bit width {b} is not supported (2 to 8)"),
            ));
        }
        if spec.act_order {
            return Err(Error::option(
                "--act-order",
                "--act-order does not apply to SparseGPT (its blocks are runs of input columns)",
            ));
        }
        if !(spec.damp > 0.0 && spec.damp.is_finite()) {
            return Err(Error::option("--damp", "--damp must be a positive number"));
        }
        spec.levels()
            .map_err(|e| Error::option("--sparsities", format!("--sparsities: {e}")))?;
        return Ok(());
    }
    if spec.is_ggml() {
        if spec.types.is_empty() {
            return Err(Error::option(
                "--types",
                "--types needs at least one ggml type",
            ));
        }
        if spec.act_order {
            return Err(Error::option(
                "--act-order",
                "--act-order does not apply to ggml types (their blocks follow the column order)",
            ));
        }
        spec.levels()?;
        return Ok(());
    }
    if spec.bits.is_empty() {
        return Err(Error::option(
            "--bits",
            "--bits needs at least one bit width",
        ));
    }
    if let Some(b) = spec.bits.iter().find(|&&b| !(2..=8).contains(&b)) {
        return Err(Error::option(
            "--bits",
            format!("bit width {b} is not supported (2 to 8)"),
        ));
    }
    if !(spec.damp > 0.0 && spec.damp.is_finite()) {
        return Err(Error::option("--damp", "--damp must be a positive number"));
    }
    if spec.act_order && spec.method == Method::Rtn {
        return Err(Error::option(
            "--act-order",
            "--act-order applies to GPTQ only",
        ));
    }
    Ok(())
}

/// Checks every N:M level against the model's layers: each row length must
/// be a multiple of M, and with `--sparse-bits` each quantization group too
/// (an N:M group may not straddle two grids).
fn check_sparse_shapes(spec: &MethodSpec, files: &ModelFiles) -> Result<()> {
    if spec.method != Method::Sparsegpt {
        return Ok(());
    }
    let mut shapes: Vec<(usize, LinearId)> = Vec::new();
    for id in files.linear_ids() {
        let cols = id.shape(&files.config).1;
        if !shapes.iter().any(|&(c, _)| c == cols) {
            shapes.push((cols, id));
        }
    }
    for level in spec.levels()? {
        let Some(sl) = level.sparse else { continue };
        let crate::database::LevelSparsity::NM { group, .. } = sl.sparsity else {
            continue;
        };
        for &(cols, id) in &shapes {
            if !cols.is_multiple_of(group) {
                return Err(Error::option(
                    "--sparsities",
                    format!(
                        "--sparsities {}: {} has rows of {cols} weights, not a multiple of {group}; choose an N:M whose M divides every layer's input columns",
                        sl.sparsity,
                        id.weight_name()
                    ),
                ));
            }
            if let Some(q) = sl.quant
                && !q.group_len(cols).is_multiple_of(group)
            {
                return Err(Error::option(
                    "--group-size",
                    format!(
                        "--group-size {} with --sparsities {}: {}'s quantization groups of {} weights are not a multiple of {group}; choose a --group-size that is",
                        spec.group_size,
                        sl.sparsity,
                        id.weight_name(),
                        q.group_len(cols)
                    ),
                ));
            }
        }
    }
    Ok(())
}

fn sort_entries(m: &mut Manifest) {
    m.entries.sort_by(|a, b| {
        (a.block, a.kind, a.storage_bits, &a.level).cmp(&(
            b.block,
            b.kind,
            b.storage_bits,
            &b.level,
        ))
    });
}

fn file_sha(path: &Path) -> Result<String> {
    crate::fsutil::sha256_file(path)
}

fn write_entry(
    dir: &Path,
    id: LinearId,
    level: &LevelSpec,
    w: &[f32],
    h: &Hessian,
    v: &Variant,
) -> Result<Entry> {
    let layer = id.weight_name();
    let bytes = entry_bytes(&layer, &level.name, v);
    let file = format!(
        "entries/{}/{}.{}.safetensors",
        id.block,
        id.kind.short_name(),
        level.name
    );
    write_atomic(&dir.join(&file), &bytes)?;
    let rel_error = relative_output_error(w, &v.dequantize()?, h);
    let (rows, cols) = (v.rows(), v.cols());
    Ok(Entry {
        layer,
        block: id.block,
        kind: id.kind,
        level: level.name.clone(),
        bits: level.bits,
        rows,
        cols,
        storage_bits: v.storage_bits(),
        bits_per_weight: v.storage_bits() as f64 / (rows * cols) as f64,
        rel_error,
        damp: v.damp(),
        file,
        sha256: hex(&Sha256::digest(&bytes)),
    })
}

fn write_hessian(dir: &Path, block: usize, site: Site, h: &Hessian) -> Result<HessianEntry> {
    let data: Vec<u8> = h.as_slice().iter().flat_map(|v| v.to_le_bytes()).collect();
    let view = safetensors::tensor::TensorView::new(
        safetensors::Dtype::F64,
        vec![h.dim(), h.dim()],
        &data,
    )
    .expect("sizes match");
    let mut md = std::collections::HashMap::new();
    md.insert("tokens".to_string(), h.tokens().to_string());
    let bytes =
        safetensors::serialize([("hessian".to_string(), view)], Some(md)).expect("serialise");
    let file = format!("hessians/{block}.{}.safetensors", site.name());
    write_atomic(&dir.join(&file), &bytes)?;
    Ok(HessianEntry {
        block,
        site,
        dim: h.dim(),
        tokens: h.tokens(),
        file,
        sha256: hex(&Sha256::digest(&bytes)),
    })
}

/// Removes temporary files a killed run left behind.
fn remove_temp_files(dir: &Path) -> Result<()> {
    fn walk(p: &Path) -> std::io::Result<()> {
        for e in std::fs::read_dir(p)? {
            let e = e?;
            let path = e.path();
            if e.file_type()?.is_dir() {
                walk(&path)?;
            } else if e
                .file_name()
                .to_string_lossy()
                .starts_with(".dynapress-tmp-")
            {
                std::fs::remove_file(&path)?;
            }
        }
        Ok(())
    }
    walk(dir).map_err(|e| Error::io(dir, e))
}
