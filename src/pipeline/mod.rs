//! `dynapress compress`: database → search → export → evaluation → report,
//! in one call. Every stage's output lands in the output directory, so a rerun
//! reuses what is already there (the database resumes, the search resumes from
//! its checkpoint).

pub mod depth;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use candle_core::Device;

use crate::calib::load_calibration;
use crate::data::load_tokens;
use crate::database::{BuildOptions, Database, MethodSpec, SearchSpace, build_database};
use crate::error::{Error, Result};
use crate::eval::compare::{Compare, Contender, compare, eval_batch};
use crate::eval::file_label;
use crate::eval::perplexity::WindowOptions;
use crate::export::gguf::EffectiveTypes;
use crate::export::{
    ExportDtype, GgufTypes, export_dynapress, export_gguf, export_safetensors,
    llama_quantize_recipe, resolve_budget,
};
use crate::model::{Model, ModelFiles};
use crate::report::{CompressReport, EvalRow, ReportLayer, interpolate_uniform, machine};
use crate::search::{SearchOptions, knapsack, run_search};
use crate::selection::Budget;

/// Everything `compress` needs.
#[derive(Debug, Clone)]
pub struct CompressOptions {
    pub model: PathBuf,
    pub calib: Vec<PathBuf>,
    pub eval: Vec<PathBuf>,
    /// Bits per weight of the linear layers, or the byte size of the GGUF file.
    pub budget: Budget,
    /// Export a GGUF file with these embedding/output types instead of a
    /// safetensors directory (needs a ggml-type method).
    pub gguf: Option<GgufTypes>,
    pub out: PathBuf,
    /// Database directory (default `<out>/database`).
    pub db_dir: Option<PathBuf>,
    pub method: MethodSpec,
    pub calib_tokens: usize,
    pub seq_len: usize,
    /// The search (its `target` and `checkpoint` are set from here).
    pub search: SearchOptions,
    pub eval_windows: usize,
    /// Which uniform levels and knapsack allocations the report compares.
    pub compare: Compare,
    pub dtype: ExportDtype,
    /// Without `gguf`: write `model/` in a served format (compressed-tensors
    /// or GPTQ: the searched codes packed for transformers, vLLM or
    /// GPTQModel) instead of dequantized weights (needs a grid method: gptq
    /// or rtn).
    pub served: Option<crate::export::ServedFormat>,
    pub quiet: bool,
    /// Rebuild a database in the database directory that was built from
    /// another model, calibration or method (otherwise an error).
    pub force: bool,
}

/// Runs the whole pipeline.
pub fn compress(opts: &CompressOptions) -> Result<CompressReport> {
    let mut seconds = BTreeMap::new();
    let files = ModelFiles::open(&opts.model)?;
    validate(opts, &files)?;
    std::fs::create_dir_all(&opts.out).map_err(|e| Error::io(&opts.out, e))?;

    // 1. Database.
    let t = Instant::now();
    let db_dir = opts
        .db_dir
        .clone()
        .unwrap_or_else(|| opts.out.join("database"));
    let calib = load_calibration(
        &opts.calib,
        &files.tokenizer,
        opts.calib_tokens,
        opts.seq_len,
    )?;
    let say = |msg: String| {
        if !opts.quiet {
            eprintln!("{msg}");
        }
    };
    say(format!(
        "[1/4] database {} ({} calibration tokens)",
        db_dir.display(),
        calib.tokens()
    ));
    let built = build_database(
        &files,
        &calib,
        &db_dir,
        &BuildOptions {
            spec: opts.method.clone(),
            batch: 8,
            keep_hessians: false,
            force: opts.force,
            quiet: opts.quiet,
            abort_after: None,
        },
    )?;
    let db = Database::open(&db_dir)?;
    seconds.insert("database".into(), t.elapsed().as_secs_f64());
    let (target, head) = resolve_budget(opts.budget, &files, &db, opts.gguf)?;
    if let Some(note) = crate::export::describe_budget(&target, head.as_ref()) {
        say(format!("      {note}"));
    }
    let target_bits = target.bits;
    let space = &db.space;

    // 2. Search.
    let t = Instant::now();
    crate::eval::release_freed_memory("before the search");
    let config_path = opts.out.join("config.json");
    let mut search = opts.search.clone();
    search.target = target;
    search.head = head;
    let mut state = config_path.clone().into_os_string();
    state.push(".state");
    search.checkpoint = Some(PathBuf::from(state));
    if search.calib.is_empty() {
        search.calib = opts.calib.clone();
    }
    say(format!(
        "[2/4] search: {} at {target_bits:.4} bits per weight",
        search.algo
    ));
    let found = run_search(&files, &db, &search)?;
    found.config.write(&config_path)?;
    let sel = db.resolve(&found.config, &config_path)?;
    // The linear layers' budget as the search left it: with searched GGUF
    // head types it is what the chosen types leave, not the starting ones.
    let target_bits = found.config.target_bits;
    seconds.insert("search".into(), t.elapsed().as_secs_f64());

    // 3. Export.
    let t = Instant::now();
    let mut compressed = None;
    let (export_path, exported_bytes) = match opts.gguf {
        None => {
            let dir = opts.out.join("model");
            say(format!("[3/4] export {}", dir.display()));
            let bytes = if let Some(format) = opts.served {
                crate::export::export_served(&files, &sel, &dir, true, format)?.safetensors_bytes
            } else {
                export_safetensors(&files, &sel, &dir, opts.dtype, true)?.safetensors_bytes
            };
            let compact = opts.out.join("model-dynapress");
            let c = export_dynapress(&files, &sel, &compact, true)?;
            compressed = Some((compact, c.safetensors_bytes));
            (dir, bytes)
        }
        Some(types) => {
            let file = opts.out.join("model.gguf");
            say(format!("[3/4] export {}", file.display()));
            let r = export_gguf(&files, &sel, &file, types)?;
            let recipe = opts.out.join("llama-quantize-tensor-types.txt");
            crate::fsutil::write_atomic(&recipe, llama_quantize_recipe(&sel)?.as_bytes())?;
            (file, r.bytes)
        }
    };
    seconds.insert("export".into(), t.elapsed().as_secs_f64());

    // 4. Evaluation on held-out text.
    let t = Instant::now();
    say(format!(
        "[4/4] evaluation on {}",
        opts.eval
            .iter()
            .map(|p| file_label(p))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    crate::eval::release_freed_memory("before the evaluation");
    let base = Model::from_files(&files, &Device::Cpu)?;
    crate::eval::log_memory("base loaded");
    // What to evaluate, built lazily: holding every compared model at once
    // would take (levels + 5) copies of the linear weights.
    let mut named = comparison_rows(
        space,
        target_bits,
        opts.compare.resolve(files.config.num_parameters()),
        opts.search.tie_fused,
    )?;
    // Sparsity levels: OWL is the published layer-wise baseline.
    if opts.method.method == crate::database::Method::Sparsegpt
        && opts.method.sparse_bits.is_empty()
    {
        let c = crate::search::owl::owl(&files, &db, space, target.sparsity(), target_bits)?;
        named.push((
            format!("owl @ {}", round4(target.sparsity())),
            "owl".into(),
            space.bits_per_weight(&c),
            Contender::Choice(c),
        ));
    }
    named.push((
        format!("{} @ {target_bits:.4}", found.config.algo),
        found.config.algo.to_string(),
        found.config.bits_per_weight,
        Contender::Choice(sel.choice.clone()),
    ));
    // The exported model, loaded back. dynapress does not read the served
    // formats: their codes are evaluated from model-dynapress/, which holds
    // the same codes (tests/served.rs checks transformers' and GPTQModel's
    // logits on those files against ours).
    let (exported_name, exported_path) = match (opts.gguf, &compressed) {
        (Some(_), _) => ("exported GGUF".to_string(), export_path.clone()),
        (None, Some((compact, _))) if opts.served.is_some() => (
            format!(
                "exported ({} codes, read from model-dynapress)",
                opts.served.map_or("", |f| f.name())
            ),
            compact.clone(),
        ),
        _ => (
            format!("exported ({:?} weights)", opts.dtype).to_lowercase(),
            export_path.clone(),
        ),
    };
    named.push((
        exported_name,
        "exported".into(),
        found.config.bits_per_weight,
        Contender::Exported(exported_path),
    ));
    let wopts = WindowOptions {
        seq_len: opts.seq_len,
        windows: opts.eval_windows,
        batch: eval_batch(opts.seq_len, files.config.vocab_size),
        ..Default::default()
    };
    let texts: Vec<(String, Vec<u32>)> = opts
        .eval
        .iter()
        .map(|p| Ok((file_label(p), load_tokens(p, &files.tokenizer)?)))
        .collect::<Result<_>>()?;
    let (names, contenders): (Vec<_>, Vec<_>) =
        named.into_iter().map(|(n, k, b, c)| ((n, k, b), c)).unzip();
    let scores = compare(&base, &db, &contenders, &texts, &wopts, opts.quiet)?;
    let row = |name: String, kind: String, bits_per_weight: f64, datasets| {
        let mut r = EvalRow {
            name,
            kind,
            bits_per_weight,
            datasets,
            mean_kl: None,
        };
        let kls: Vec<f64> = r.datasets.values().filter_map(|d| d.kl).collect();
        r.mean_kl = (!kls.is_empty()).then(|| kls.iter().sum::<f64>() / kls.len() as f64);
        r
    };
    let mut rows: Vec<EvalRow> = names
        .into_iter()
        .zip(scores.contenders)
        .map(|((n, k, b), d)| row(n, k, b, d))
        .collect();
    rows.push(EvalRow {
        mean_kl: Some(0.0),
        ..row("base (original)".into(), "base".into(), 16.0, scores.base)
    });
    seconds.insert("evaluation".into(), t.elapsed().as_secs_f64());

    let uniform_interpolated_kl = interpolate_uniform(&rows, target_bits);
    let report = CompressReport {
        dynapress_version: env!("CARGO_PKG_VERSION").into(),
        machine: machine(),
        threads: rayon::current_num_threads(),
        model: opts.model.display().to_string(),
        architecture: files.config.arch.model_type().into(),
        linear_params: space.total_params,
        target_bits,
        target_size: target.file_bytes(),
        achieved_bits_per_weight: found.config.bits_per_weight,
        algo: found.config.algo,
        database: db_dir.display().to_string(),
        levels: space.levels.clone(),
        config: config_path.display().to_string(),
        exported: export_path.display().to_string(),
        exported_bytes,
        embed_type: found.config.embed_type.clone(),
        output_type: found.config.output_type.clone(),
        compressed: compressed
            .as_ref()
            .map(|(p, _): &(PathBuf, u64)| p.display().to_string()),
        compressed_bytes: compressed.as_ref().map(|(_, b)| *b),
        search_fitness: found.config.fitness,
        search_history: found.history.clone(),
        search_stats: found.stats,
        layers: sel
            .layers()
            .map(|(l, o, _)| ReportLayer {
                layer: l.id.weight_name(),
                block: l.id.block,
                kind: l.id.kind.short_name().into(),
                level: o.level.clone(),
                bits: o.bits,
                bits_per_weight: o.storage_bits as f64 / l.params as f64,
            })
            .collect(),
        level_notes: {
            let mut v = built.fallbacks.clone();
            if let Some(types) = opts.gguf {
                v.push(format!(
                    "GGUF: {}",
                    EffectiveTypes::of(&files, types).describe()
                ));
            }
            v
        },
        eval_files: opts.eval.iter().map(|p| file_label(p)).collect(),
        eval_seq_len: opts.seq_len,
        eval_windows: opts.eval_windows,
        rows,
        uniform_interpolated_kl,
        seconds,
    };
    crate::report::write_reports(&report, &opts.out)?;
    Ok(report)
}

/// The uniform and knapsack rows the report compares with the search, as
/// `(name, kind, bits per weight, contender)`.
fn comparison_rows(
    space: &SearchSpace,
    target_bits: f64,
    how: Compare,
    tie_fused: bool,
) -> Result<Vec<(String, String, f64, Contender)>> {
    // The knapsack under the same constraint as the search: with fused
    // layers tied, on the tied space, mapped back to every layer.
    let tied = if tie_fused {
        Some(space.tied(&crate::search::fused_groups(space))?)
    } else {
        None
    };
    let knapsack_at = |tb: f64| -> Result<crate::database::Choice> {
        match &tied {
            Some(t) => Ok(space.untie(t, &knapsack::knapsack(t, tb)?)),
            None => knapsack::knapsack(space, tb),
        }
    };
    let mut named = Vec::new();
    if how != Compare::None {
        let all = how == Compare::All;
        let bits: Vec<f64> = (0..space.levels.len())
            .map(|k| space.bits_per_weight(&space.all_at(k)))
            .collect();
        // Neighbours: the highest level at or under the target, the lowest above.
        let below = bits.iter().rposition(|&b| b <= target_bits);
        let above = bits.iter().position(|&b| b > target_bits);
        for (k, level) in space.levels.iter().enumerate() {
            if !all && Some(k) != below && Some(k) != above {
                continue;
            }
            // A layer without the level (rows a ggml type cannot hold)
            // takes its largest level below, as the bits above count it.
            named.push((
                format!("uniform {level}"),
                "uniform".into(),
                bits[k],
                Contender::Choice(space.all_at(k)),
            ));
        }
        let lo = bits[0];
        let hi = bits[bits.len() - 1];
        let targets: &[f64] = if all {
            &[target_bits - 0.5, target_bits, target_bits + 0.5]
        } else {
            &[target_bits]
        };
        for &tb in targets {
            if tb < lo || tb > hi {
                continue;
            }
            let c = knapsack_at(tb)?;
            named.push((
                format!("knapsack @ {}", round4(tb)),
                "knapsack".into(),
                space.bits_per_weight(&c),
                Contender::Choice(c),
            ));
        }
    }
    Ok(named)
}

/// Everything `compress` can check before its first expensive step: the
/// budget against what the levels can reach, the formats, and that every
/// evaluation file holds at least one window.
pub fn validate(opts: &CompressOptions, files: &ModelFiles) -> Result<()> {
    let levels = opts.method.levels()?;
    if levels.is_empty() {
        return Err(Error::option(
            "--bits",
            "no database levels: give --bits or --types",
        ));
    }
    match (opts.budget, opts.gguf) {
        (Budget::GgufBytes(_), None) => {
            return Err(Error::option(
                "--target-size",
                "a file-size target (--target-size) needs the GGUF format (--format gguf)",
            ));
        }
        (Budget::GgufBytes(0), _) => {
            return Err(Error::option(
                "--target-size",
                "--target-size must be a positive number of bytes",
            ));
        }
        _ => {}
    }
    if let Budget::Sparsity(_) = opts.budget
        && (opts.method.method != crate::database::Method::Sparsegpt
            || !opts.method.sparse_bits.is_empty())
    {
        return Err(Error::option(
            "--target-sparsity",
            "--target-sparsity needs --method sparsegpt with f16 values (no --sparse-bits); give --target-bits otherwise",
        ));
    }
    if let Some(format) = opts.served
        && !matches!(
            opts.method.method,
            crate::database::Method::Gptq | crate::database::Method::Rtn
        )
    {
        return Err(Error::option(
            "--format",
            format!(
                "--format {} stores GPTQ/RTN grids: --method gptq or rtn",
                format.name()
            ),
        ));
    }
    if opts.gguf.is_some() && !opts.method.is_ggml() {
        return Err(Error::option(
            "--format",
            "--format gguf needs a database of ggml types: --method kquant or gptq-kquant",
        ));
    }
    if let Budget::Bits(t) = opts.budget {
        if !(t.is_finite() && t > 0.0) {
            return Err(Error::option(
                "--target-bits",
                format!("--target-bits {t} is not a positive number of bits per weight"),
            ));
        }
        // Every layer at the lowest / highest level (ggml levels a layer cannot
        // take only narrow the range, so these bounds never refuse a reachable target).
        let shapes: Vec<(usize, usize)> = files
            .linear_ids()
            .iter()
            .map(|id| id.shape(&files.config))
            .collect();
        let params: f64 = shapes.iter().map(|&(r, c)| (r * c) as f64).sum();
        let bpw = |l: &crate::database::LevelSpec| {
            shapes
                .iter()
                .map(|&(r, c)| level_storage_bits(&opts.method, l, r, c))
                .sum::<f64>()
                / params
        };
        let (lo, hi) = (bpw(&levels[0]), bpw(&levels[levels.len() - 1]));
        if t < lo * (1.0 - 1e-3) || t > hi * (1.0 + 1e-3) {
            return Err(Error::budget(format!(
                "--target-bits {t} is outside what the levels reach: from about {lo:.3} (every layer at {}) to {hi:.3} (every layer at {}); change --target-bits or the levels",
                levels[0].name,
                levels[levels.len() - 1].name
            )));
        }
    }
    for p in &opts.calib {
        crate::fsutil::check_input_file(p)?;
    }
    let wopts = WindowOptions {
        seq_len: opts.seq_len,
        windows: opts.eval_windows,
        ..Default::default()
    };
    wopts.validate()?;
    for p in &opts.eval {
        let tokens = load_tokens(p, &files.tokenizer)?;
        if crate::eval::perplexity::usable_windows(tokens.len(), &wopts) == 0 {
            return Err(Error::data(
                p,
                format!(
                    "only {} tokens, fewer than one evaluation window of {}; give a longer file or a smaller --seq-len",
                    tokens.len(),
                    opts.seq_len
                ),
            ));
        }
    }
    Ok(())
}

/// Storage bits of an `rows × cols` layer at a level (what the database
/// will measure: codes, f16 scales, zero points, act-order permutation).
fn level_storage_bits(
    spec: &MethodSpec,
    l: &crate::database::LevelSpec,
    rows: usize,
    cols: usize,
) -> f64 {
    if let Some(ty) = l.ggml {
        return ty.bits_per_weight() * (rows * cols) as f64;
    }
    if let Some(sl) = l.sparse {
        return sl.storage_bits(rows, cols).unwrap_or(0) as f64;
    }
    let packed = |n: usize| (n * l.bits as usize).div_ceil(8);
    let groups = rows
        * if spec.group_size == 0 {
            1
        } else {
            cols.div_ceil(spec.group_size)
        };
    let mut bytes = packed(rows * cols) + 2 * groups;
    if !spec.sym {
        bytes += packed(groups);
    }
    if spec.act_order {
        bytes += cols * if cols <= 1 << 16 { 2 } else { 4 };
    }
    8.0 * bytes as f64
}

/// `x` rounded to 4 decimals, printed without trailing zeros (3 → "3",
/// 5.807291… → "5.8073").
fn round4(x: f64) -> String {
    let s = format!("{x:.4}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}
