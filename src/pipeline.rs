//! `dynapress compress`: database → search → export → evaluation → report,
//! in one call. Every stage's output lands in the output directory, so a rerun
//! reuses what is already there (the database resumes, the search resumes from
//! its checkpoint).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use candle_core::Device;
use serde::{Deserialize, Serialize};

use crate::calib::load_calibration;
use crate::database::{BuildOptions, Database, MethodSpec, build_database};
use crate::error::{Error, Result};
use crate::eval::data::load_tokens;
use crate::eval::file_label;
use crate::eval::perplexity::{WindowOptions, WindowScores, score_windows_multi};
use crate::export::{ExportDtype, export_native, export_safetensors};
use crate::formats::gguf::{GgufTypes, bits_for_file_size, export_gguf, llama_quantize_recipe};
use crate::model::{Model, ModelFiles};
use crate::progress;
use crate::search::evopress::GenerationLog;
use crate::search::fitness::EvalStats;
use crate::search::{Algo, ConfigFile, SearchOptions, SearchSpace, knapsack, run_search};

/// Everything `compress` needs.
#[derive(Debug, Clone)]
pub struct CompressOptions {
    pub model: PathBuf,
    pub calib: Vec<PathBuf>,
    pub eval: Vec<PathBuf>,
    pub target_bits: f64,
    /// Instead of `target_bits`: the size in bytes of the exported GGUF file.
    pub target_size: Option<u64>,
    /// Export a GGUF file with these embedding/output types instead of a
    /// safetensors directory (needs a ggml-type method).
    pub gguf: Option<GgufTypes>,
    pub out: PathBuf,
    /// Database directory (default `<out>/database`).
    pub db_dir: Option<PathBuf>,
    pub method: MethodSpec,
    pub calib_tokens: usize,
    pub seq_len: usize,
    /// The search (its `target_bits` and `checkpoint` are set from here).
    pub search: SearchOptions,
    pub eval_windows: usize,
    /// Which uniform levels and knapsack allocations the report compares.
    pub compare: Compare,
    pub dtype: ExportDtype,
    pub quiet: bool,
    /// Rebuild a database in the database directory that was built from
    /// another model, calibration or method (otherwise an error).
    pub force: bool,
}

/// The comparison rows of the report (each is a forward pass over the
/// evaluation text).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compare {
    /// Every uniform level, knapsack at the target and ± 0.5 bits.
    All,
    /// The uniform levels just below and above the target, knapsack at it.
    Neighbours,
    /// No comparison rows.
    None,
    /// `All` for models under 50 M parameters, `Neighbours` above.
    Auto,
}

impl Compare {
    /// `Auto` resolved for a model of `params` parameters.
    pub fn resolve(self, params: usize) -> Compare {
        match self {
            Compare::Auto if params < 50_000_000 => Compare::All,
            Compare::Auto => Compare::Neighbours,
            c => c,
        }
    }
}

/// One evaluated configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalRow {
    pub name: String,
    /// `uniform`, `knapsack`, `evopress`, `exported` or `base`.
    pub kind: String,
    pub bits_per_weight: f64,
    pub datasets: BTreeMap<String, WindowScores>,
    /// KL averaged over the evaluation files.
    pub mean_kl: Option<f64>,
}

/// A layer's level in the result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReportLayer {
    pub layer: String,
    pub block: usize,
    pub kind: String,
    pub level: String,
    pub bits: u8,
    pub bits_per_weight: f64,
}

/// Everything `report.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CompressReport {
    pub dynapress_version: String,
    pub machine: String,
    pub threads: usize,
    pub model: String,
    pub architecture: String,
    pub linear_params: u64,
    pub target_bits: f64,
    /// The GGUF file-size target the bits budget was derived from, if any.
    pub target_size: Option<u64>,
    pub achieved_bits_per_weight: f64,
    pub algo: Algo,
    pub database: String,
    pub levels: Vec<String>,
    pub config: String,
    pub exported: String,
    /// Bytes of the exported model (the GGUF file, or the dequantized safetensors).
    pub exported_bytes: u64,
    /// Safetensors export: the same model with every searched layer in its
    /// compressed form (`export --format dynapress`), and its bytes.
    pub compressed: Option<String>,
    pub compressed_bytes: Option<u64>,
    pub search_fitness: Option<f64>,
    pub search_history: Vec<GenerationLog>,
    pub search_stats: Option<EvalStats>,
    pub layers: Vec<ReportLayer>,
    /// Which levels and tensor types layers could not take, and what they
    /// have instead (rows a ggml type's block cannot hold; GGUF embeddings).
    #[serde(default)]
    pub level_notes: Vec<String>,
    pub eval_files: Vec<String>,
    pub eval_seq_len: usize,
    pub eval_windows: usize,
    pub rows: Vec<EvalRow>,
    /// Uniform levels' KL interpolated linearly to the target (mean over files).
    pub uniform_interpolated_kl: Option<f64>,
    pub seconds: BTreeMap<String, f64>,
}

fn machine() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
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
    let space = SearchSpace::from_manifest(&db.manifest)?;
    let target_bits = match (opts.target_size, opts.gguf) {
        (Some(bytes), Some(types)) => {
            let b = bits_for_file_size(&files, &db, &space, types, bytes)?;
            say(format!(
                "      a {bytes}-byte GGUF leaves {b:.4} bits per weight for the linear layers"
            ));
            b
        }
        (Some(_), None) => {
            return Err(Error::Invalid(
                "a file-size target needs the GGUF format (--format gguf)".into(),
            ));
        }
        (None, _) => opts.target_bits,
    };

    // 2. Search.
    let t = Instant::now();
    crate::eval::release_freed_memory("before the search");
    let config_path = opts.out.join("config.json");
    let mut search = opts.search.clone();
    search.target_bits = target_bits;
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
    seconds.insert("search".into(), t.elapsed().as_secs_f64());

    // 3. Export.
    let t = Instant::now();
    let mut compressed = None;
    let (export_path, exported_bytes) = match opts.gguf {
        None => {
            let dir = opts.out.join("model");
            say(format!("[3/4] export {}", dir.display()));
            let r = export_safetensors(
                &files,
                &db,
                &found.config,
                &config_path,
                &dir,
                opts.dtype,
                true,
            )?;
            let compact = opts.out.join("model-compressed");
            let c = export_native(&files, &db, &found.config, &config_path, &compact, true)?;
            compressed = Some((compact, c.safetensors_bytes));
            (dir, r.safetensors_bytes)
        }
        Some(types) => {
            let file = opts.out.join("model.gguf");
            say(format!("[3/4] export {}", file.display()));
            let r = export_gguf(&files, &db, &found.config, &config_path, &file, types)?;
            let recipe = opts.out.join("llama-quantize-tensor-types.txt");
            crate::fsutil::write_atomic(
                &recipe,
                llama_quantize_recipe(&db, &found.config, &config_path)?.as_bytes(),
            )?;
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
    let mut named: Vec<(String, String, f64, Contender)> = Vec::new();
    let compare = opts.compare.resolve(files.config.num_parameters());
    if compare != Compare::None {
        let all = compare == Compare::All;
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
            named.push((
                format!("uniform {level}"),
                "uniform".into(),
                bits[k],
                Contender::Uniform(level.clone()),
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
            let c = knapsack::knapsack(&space, tb)?;
            let cfg = ConfigFile::new(&space, &db.manifest, &c, Algo::Knapsack, tb, None, None);
            named.push((
                format!("knapsack @ {tb}"),
                "knapsack".into(),
                cfg.bits_per_weight,
                Contender::Config(Box::new(cfg), PathBuf::from("(knapsack)")),
            ));
        }
    }
    named.push((
        format!("{} @ {target_bits:.4}", found.config.algo),
        found.config.algo.to_string(),
        found.config.bits_per_weight,
        Contender::Config(Box::new(found.config.clone()), config_path.clone()),
    ));
    named.push((
        match opts.gguf {
            None => format!("exported ({:?} weights)", opts.dtype).to_lowercase(),
            Some(_) => "exported GGUF".to_string(),
        },
        "exported".into(),
        found.config.bits_per_weight,
        Contender::Exported(export_path.clone()),
    ));
    let wopts = WindowOptions {
        seq_len: opts.seq_len,
        windows: opts.eval_windows,
        batch: eval_batch(opts.seq_len, files.config.vocab_size),
        ..Default::default()
    };
    let mut rows: Vec<EvalRow> = named
        .iter()
        .map(|(n, k, b, _)| EvalRow {
            name: n.clone(),
            kind: k.clone(),
            bits_per_weight: *b,
            datasets: BTreeMap::new(),
            mean_kl: None,
        })
        .collect();
    let mut base_row = EvalRow {
        name: "base (original)".into(),
        kind: "base".into(),
        bits_per_weight: 16.0,
        datasets: BTreeMap::new(),
        mean_kl: Some(0.0),
    };
    let groups = eval_groups(
        &named.iter().map(|(_, _, _, c)| c).collect::<Vec<_>>(),
        files.config.num_parameters() as u64 * 4,
        space.total_params * 4,
        eval_logits_bytes(&wopts, files.config.vocab_size),
    );
    let texts: Vec<(String, Vec<u32>)> = opts
        .eval
        .iter()
        .map(|p| Ok((file_label(p), load_tokens(p, &files.tokenizer)?)))
        .collect::<Result<_>>()?;
    let total: usize = texts
        .iter()
        .map(|(_, tokens)| {
            crate::eval::perplexity::usable_windows(tokens.len(), &wopts) * opts.seq_len
        })
        .sum::<usize>()
        * (named.len() + groups.len());
    let pb = progress::bar(total as u64, "evaluation", "tok", opts.quiet);
    for (g, group) in groups.iter().enumerate() {
        // The previous group's models are dropped: free their memory first.
        crate::eval::release_freed_memory(&format!("before group {}", g + 1));
        let models: Vec<Model> = group
            .iter()
            .map(|&i| named[i].3.build(&base, &db))
            .collect::<Result<_>>()?;
        crate::eval::log_memory(&format!("group {} built ({} models)", g + 1, models.len()));
        // The base scores itself once, with the first group.
        let mut refs: Vec<&Model> = models.iter().collect();
        if g == 0 {
            refs.push(&base);
        }
        for (label, tokens) in &texts {
            let scores =
                score_windows_multi(&refs, Some(&base), tokens, &wopts, |k| pb.inc(k as u64))?;
            for (k, s) in scores.into_iter().enumerate() {
                match group.get(k) {
                    Some(&i) => rows[i].datasets.insert(label.clone(), s),
                    None => base_row.datasets.insert(label.clone(), s),
                };
            }
            crate::eval::log_memory(&format!("group {} scored {label}", g + 1));
        }
    }
    pb.finish_and_clear();
    for row in rows.iter_mut() {
        let kls: Vec<f64> = row.datasets.values().filter_map(|d| d.kl).collect();
        row.mean_kl = (!kls.is_empty()).then(|| kls.iter().sum::<f64>() / kls.len() as f64);
    }
    rows.push(base_row);
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
        target_size: opts.target_size,
        achieved_bits_per_weight: found.config.bits_per_weight,
        algo: found.config.algo,
        database: db_dir.display().to_string(),
        levels: space.levels.clone(),
        config: config_path.display().to_string(),
        exported: export_path.display().to_string(),
        exported_bytes,
        compressed: compressed
            .as_ref()
            .map(|(p, _): &(PathBuf, u64)| p.display().to_string()),
        compressed_bytes: compressed.as_ref().map(|(_, b)| *b),
        search_fitness: found.config.fitness,
        search_history: found.history.clone(),
        search_stats: found.stats,
        layers: found
            .config
            .layers
            .iter()
            .map(|l| {
                let id = crate::model::LinearId::parse(&l.layer).expect("validated");
                ReportLayer {
                    layer: l.layer.clone(),
                    block: id.block,
                    kind: id.kind.short_name().into(),
                    level: l.level.clone(),
                    bits: l.bits,
                    bits_per_weight: l.bits_per_weight,
                }
            })
            .collect(),
        level_notes: {
            let mut v = built.fallbacks.clone();
            if let Some(types) = opts.gguf {
                let eff = crate::formats::gguf::EffectiveTypes::of(&files, types);
                v.push(format!("GGUF: {}", eff.describe()));
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

/// A model the evaluation compares with the base, built when its turn comes.
enum Contender {
    /// Every layer at one database level.
    Uniform(String),
    /// A searched (or knapsack) configuration.
    Config(Box<ConfigFile>, PathBuf),
    /// The exported model, loaded from disk.
    Exported(PathBuf),
}

impl Contender {
    fn build(&self, base: &Model, db: &Database) -> Result<Model> {
        Ok(match self {
            Contender::Uniform(level) => {
                let mut m = base.clone();
                db.apply(&mut m, |_| Some(level.clone()))?;
                m
            }
            Contender::Config(cfg, path) => {
                let mut m = base.clone();
                db.apply_config(&mut m, cfg, path)?;
                m
            }
            Contender::Exported(path) => Model::load(path)?,
        })
    }
}

/// Bytes the evaluation may use besides the base model: the base's f32 size
/// plus 512 MiB, so that evaluation peaks near 2 × the model + 512 MiB.
fn eval_extra_budget(model_bytes: u64) -> u64 {
    model_bytes + (512 << 20)
}

/// Resident memory of the process during the evaluation besides the base,
/// the compared models and the logits: what the earlier stages leave live
/// (153 MiB on the 135 M shape after freed memory is returned) and the
/// allocator's slack around the models (docs/scale.md).
pub const EVAL_PROCESS_BYTES: u64 = 192 << 20;

/// Windows per evaluation batch: at most 8, fewer when the logits of a batch
/// (`[windows·seq_len, vocab]` f32, held for the base and one model) would
/// pass 128 MiB.
pub fn eval_batch(seq_len: usize, vocab: usize) -> usize {
    ((128usize << 20) / (seq_len.max(1) * vocab.max(1) * 4)).clamp(1, 8)
}

fn eval_logits_bytes(w: &WindowOptions, vocab: usize) -> u64 {
    // Base logits, one model's logits and its tensor copy.
    3 * (w.batch * w.seq_len * vocab * 4) as u64
}

/// Splits the contenders into groups evaluated together (the base is re-run
/// once per group): a group holds as many models as fit in the budget, and
/// at least one.
fn eval_groups(
    contenders: &[&Contender],
    model_bytes: u64,
    linear_bytes: u64,
    logits_bytes: u64,
) -> Vec<Vec<usize>> {
    let budget = eval_extra_budget(model_bytes).saturating_sub(logits_bytes + EVAL_PROCESS_BYTES);
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut used = 0u64;
    for (i, c) in contenders.iter().enumerate() {
        let cost = match c {
            Contender::Exported(_) => model_bytes,
            _ => linear_bytes,
        };
        match groups.last_mut() {
            Some(g) if used + cost <= budget => {
                g.push(i);
                used += cost;
            }
            _ => {
                groups.push(vec![i]);
                used = cost;
            }
        }
    }
    groups
}

/// Everything `compress` can check before its first expensive step: the
/// budget against what the levels can reach, the formats, and that every
/// evaluation file holds at least one window.
pub fn validate(opts: &CompressOptions, files: &ModelFiles) -> Result<()> {
    let levels = opts.method.levels()?;
    if levels.is_empty() {
        return Err(Error::Invalid(
            "no database levels: give --bits or --types".into(),
        ));
    }
    match (opts.target_size, opts.gguf) {
        (Some(_), None) => {
            return Err(Error::Invalid(
                "a file-size target (--target-size) needs the GGUF format (--format gguf)".into(),
            ));
        }
        (Some(0), _) => {
            return Err(Error::Invalid(
                "--target-size must be a positive number of bytes".into(),
            ));
        }
        _ => {}
    }
    if opts.gguf.is_some() && !opts.method.is_ggml() {
        return Err(Error::Invalid(
            "--format gguf needs a database of ggml types: --method kquant or gptq-kquant".into(),
        ));
    }
    if opts.target_size.is_none() {
        let t = opts.target_bits;
        if !(t.is_finite() && t > 0.0) {
            return Err(Error::Invalid(format!(
                "--target-bits {t} is not a positive number of bits per weight"
            )));
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
            return Err(Error::Invalid(format!(
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

/// Mean KL of the uniform levels, interpolated linearly in bits to `target`.
pub fn interpolate_uniform(rows: &[EvalRow], target: f64) -> Option<f64> {
    let mut pts: Vec<(f64, f64)> = rows
        .iter()
        .filter(|r| r.kind == "uniform")
        .filter_map(|r| r.mean_kl.map(|k| (r.bits_per_weight, k)))
        .collect();
    pts.sort_by(|a, b| a.0.total_cmp(&b.0));
    let i = pts.iter().position(|p| p.0 >= target)?;
    if i == 0 {
        return (pts[0].0 == target).then_some(pts[0].1);
    }
    let (a, b) = (pts[i - 1], pts[i]);
    Some(a.1 + (target - a.0) / (b.0 - a.0) * (b.1 - a.1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evaluation_groups_fit_the_memory_budget() {
        let u = |s: &str| Contender::Uniform(s.into());
        let cs = [
            u("a"),
            u("b"),
            u("c"),
            u("d"),
            Contender::Exported("x".into()),
        ];
        let refs: Vec<&Contender> = cs.iter().collect();
        let mib = 1u64 << 20;
        // A small model: everything in one group (the base runs once).
        assert_eq!(
            eval_groups(&refs, 30 * mib, 25 * mib, 60 * mib),
            vec![vec![0, 1, 2, 3, 4]]
        );
        // A 650 MiB model with 425 MiB of linear weights (the 135 M shape):
        // a second configuration next to the first would pass 2 × 650 +
        // 512 MiB with the base, the logits and the process, so one per group.
        let g = eval_groups(&refs, 650 * mib, 425 * mib, 300 * mib);
        assert_eq!(g, vec![vec![0], vec![1], vec![2], vec![3], vec![4]]);
        // With 300 MiB of linear weights two fit.
        let g = eval_groups(&refs, 650 * mib, 300 * mib, 300 * mib);
        assert_eq!(g, vec![vec![0, 1], vec![2, 3], vec![4]]);
        // Never an empty group, even when one model exceeds the budget.
        let g = eval_groups(&refs, 650 * mib, 2000 * mib, 300 * mib);
        assert_eq!(g.len(), 5);
    }

    #[test]
    fn evaluation_batches_bound_the_logits() {
        assert_eq!(eval_batch(256, 4096), 8);
        assert_eq!(eval_batch(256, 49_152), 2);
        assert_eq!(eval_batch(256, 151_936), 1);
        assert_eq!(eval_batch(64, 49_152), 8);
    }

    #[test]
    fn auto_comparison_depends_on_the_model_size() {
        assert_eq!(Compare::Auto.resolve(8_400_000), Compare::All);
        assert_eq!(Compare::Auto.resolve(135_000_000), Compare::Neighbours);
        assert_eq!(Compare::None.resolve(1), Compare::None);
    }
}
