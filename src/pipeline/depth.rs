//! `dynapress compress --prune depth`: the depth search (baselines and
//! EvoPress, [`run_depth`]) → export of EvoPress's configuration → held-out
//! evaluation of every method → report, in one call. The search checkpoints
//! into the output directory, so a rerun resumes it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use candle_core::Device;

use crate::data::load_tokens;
use crate::error::{Error, Result};
use crate::eval::compare::eval_batch;
use crate::eval::file_label;
use crate::eval::perplexity::{WindowOptions, score_windows_multi};
use crate::export::ExportDtype;
use crate::export::depth::{depth_gguf_type, export_depth, export_depth_gguf};
use crate::model::{Model, ModelFiles};
use crate::progress;
use crate::report::depth::{DepthReport, DepthRow};
use crate::report::machine;
use crate::search::{DepthBudget, DepthOptions, run_depth};

/// Everything `compress --prune depth` needs.
#[derive(Debug, Clone)]
pub struct DepthCompressOptions {
    pub model: PathBuf,
    pub eval: Vec<PathBuf>,
    pub out: PathBuf,
    /// The search: budget, whole blocks, calibration, EvoPress parameters
    /// (its checkpoint is set to `<out>/depth-checkpoint.json` here).
    pub depth: DepthOptions,
    /// Export a GGUF file (`deci` when a block keeps one sublayer) instead
    /// of a Hugging Face directory.
    pub gguf: bool,
    pub dtype: ExportDtype,
    pub eval_windows: usize,
    pub quiet: bool,
}

/// Runs the depth pipeline and writes `report.{json,md,html}` into `out`.
pub fn compress_depth(opts: &DepthCompressOptions) -> Result<DepthReport> {
    let mut seconds = BTreeMap::new();
    let files = ModelFiles::open(&opts.model)?;
    std::fs::create_dir_all(&opts.out).map_err(|e| Error::io(&opts.out, e))?;
    for p in &opts.eval {
        crate::fsutil::check_input_file(p)?;
    }
    let texts: Vec<(String, Vec<u32>)> = opts
        .eval
        .iter()
        .map(|p| Ok((file_label(p), load_tokens(p, &files.tokenizer)?)))
        .collect::<Result<_>>()?;

    // 1. Search.
    let t = Instant::now();
    let mut depth = opts.depth.clone();
    depth.checkpoint = Some(opts.out.join("depth-checkpoint.json"));
    let outcome = run_depth(&files, &depth)?;
    let cfg_dir = opts.out.join("depth");
    std::fs::create_dir_all(&cfg_dir).map_err(|e| Error::io(&cfg_dir, e))?;
    for c in &outcome.configs {
        c.write(&cfg_dir.join(format!("{}.json", c.method)))?;
    }
    crate::fsutil::write_atomic(
        &cfg_dir.join("summary.json"),
        (serde_json::to_string_pretty(&outcome).expect("json") + "\n").as_bytes(),
    )?;
    seconds.insert("search".to_string(), t.elapsed().as_secs_f64());

    // 2. Export EvoPress's configuration.
    let t = Instant::now();
    let evo = outcome.config("evopress").ok_or_else(|| {
        Error::Invalid("the depth search returned no EvoPress configuration".into())
    })?;
    let evo_path = cfg_dir.join("evopress.json");
    let (exported, exported_bytes, exported_format) = if opts.gguf {
        let ty = depth_gguf_type(&files, opts.dtype)?;
        let out = opts.out.join("model.gguf");
        let r = export_depth_gguf(&files, evo, &evo_path, &out, ty, true)?;
        (
            out,
            r.bytes,
            format!("gguf ({}, {})", r.architecture, r.tensor_type),
        )
    } else {
        let out = opts.out.join("model");
        let r = export_depth(&files, evo, &evo_path, &out, true)?;
        (
            out,
            r.safetensors_bytes,
            "Hugging Face directory".to_string(),
        )
    };
    seconds.insert("export".to_string(), t.elapsed().as_secs_f64());

    // 3. Held-out evaluation: every method on the base's weights (the
    // clones share them), the exported model loaded back where dynapress
    // reads it (not a deci GGUF: llama.cpp does).
    let t = Instant::now();
    let base = Model::from_files(&files, &Device::Cpu)?;
    let mut models = Vec::with_capacity(outcome.configs.len() + 1);
    for c in &outcome.configs {
        let mut m = base.clone();
        c.apply(&mut m)?;
        models.push(m);
    }
    let mut notes = Vec::new();
    let deci = exported_format.contains("deci");
    if deci {
        notes.push(format!(
            "{} is a llama.cpp `deci` file (blocks keeping one sublayer), which dynapress does not read back: its row is EvoPress's configuration evaluated in dynapress (llama-perplexity agrees within 0.01 % on the demo model, docs/depth.md)",
            exported.display()
        ));
    } else {
        models.push(Model::load(&exported)?);
    }
    let wopts = WindowOptions {
        seq_len: opts.depth.seq_len,
        windows: opts.eval_windows,
        batch: eval_batch(opts.depth.seq_len, files.config.vocab_size),
        ..Default::default()
    };
    let mut refs: Vec<&Model> = models.iter().collect();
    refs.push(&base);
    let total: usize = texts
        .iter()
        .map(|(_, tokens)| {
            crate::eval::perplexity::usable_windows(tokens.len(), &wopts) * wopts.seq_len
        })
        .sum::<usize>()
        * (refs.len() + 1);
    let pb = progress::bar(total as u64, "evaluation", "tok", opts.quiet);
    let mut per_model: Vec<BTreeMap<_, _>> = vec![BTreeMap::new(); refs.len()];
    for (label, tokens) in &texts {
        let scores = score_windows_multi(&refs, Some(&base), tokens, &wopts, |k| pb.inc(k as u64))?;
        for (k, s) in scores.into_iter().enumerate() {
            per_model[k].insert(label.clone(), s);
        }
    }
    pb.finish_and_clear();
    seconds.insert("evaluation".to_string(), t.elapsed().as_secs_f64());

    let base_scores = per_model.pop().expect("the base is scored");
    let mut rows: Vec<DepthRow> = outcome
        .configs
        .iter()
        .zip(&per_model)
        .map(|(c, d)| DepthRow::new(&c.method, c, d.clone()))
        .collect();
    if !deci {
        let mut r = DepthRow::new("exported", evo, per_model[outcome.configs.len()].clone());
        r.method = format!("exported ({})", exported_format);
        rows.push(r);
    }
    let budget = match opts.depth.budget {
        DepthBudget::Drop(n) => format!(
            "drop {n} {}{}",
            if opts.depth.whole_blocks {
                "block"
            } else {
                "sublayer"
            },
            if n == 1 { "" } else { "s" }
        ),
        DepthBudget::Params(p) => format!("at most {p} parameters"),
    };
    let report = DepthReport {
        dynapress_version: env!("CARGO_PKG_VERSION").into(),
        machine: machine(),
        threads: rayon::current_num_threads(),
        model: opts.model.display().to_string(),
        architecture: files.config.arch.model_type().into(),
        num_layers: files.config.num_layers,
        budget,
        whole_blocks: opts.depth.whole_blocks,
        total_params: outcome.total_params,
        calib_windows: outcome.calib_windows,
        exported: exported.display().to_string(),
        exported_format,
        exported_bytes,
        configs: cfg_dir.display().to_string(),
        rows,
        base: base_scores,
        eval_files: texts.iter().map(|(l, _)| l.clone()).collect(),
        eval_seq_len: wopts.seq_len,
        eval_windows: opts.eval_windows,
        search_history: outcome.history.clone(),
        search_stats: outcome.stats,
        notes,
        seconds,
    };
    crate::report::depth::write_reports(&report, &opts.out)?;
    Ok(report)
}
