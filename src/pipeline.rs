//! `dynapress compress`: database → search → export → evaluation → report,
//! in one call. Every stage's output lands in the output directory, so a rerun
//! reuses what is already there (the database resumes, the search resumes from
//! its checkpoint).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
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
    /// Also evaluate uniform levels and knapsack for the report's comparison.
    pub compare: bool,
    pub dtype: ExportDtype,
    pub quiet: bool,
    /// Rebuild a database in the database directory that was built from
    /// another model, calibration or method (otherwise an error).
    pub force: bool,
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
    build_database(
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
        "[2/4] search: {} at {} bits per weight",
        search.algo, opts.target_bits
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
    let base = Model::from_files(&files, &Device::Cpu)?;
    let mut named: Vec<(String, String, f64, Model)> = Vec::new();
    if opts.compare {
        for (k, level) in space.levels.iter().enumerate() {
            let c = space.all_at(k);
            let mut m = base.clone();
            db.apply(&mut m, |_| Some(level.clone()))?;
            named.push((
                format!("uniform {level}"),
                "uniform".into(),
                space.bits_per_weight(&c),
                m,
            ));
        }
        let lo = space.bits_per_weight(&space.all_at(0));
        let hi = space.bits_per_weight(&space.all_at(space.levels.len() - 1));
        for tb in [
            opts.target_bits - 0.5,
            opts.target_bits,
            opts.target_bits + 0.5,
        ] {
            if tb < lo || tb > hi {
                continue;
            }
            let c = knapsack::knapsack(&space, tb)?;
            let cfg = ConfigFile::new(&space, &db.manifest, &c, Algo::Knapsack, tb, None, None);
            let mut m = base.clone();
            db.apply_config(&mut m, &cfg, Path::new("(knapsack)"))?;
            named.push((
                format!("knapsack @ {tb}"),
                "knapsack".into(),
                cfg.bits_per_weight,
                m,
            ));
        }
    }
    {
        let mut m = base.clone();
        db.apply_config(&mut m, &found.config, &config_path)?;
        named.push((
            format!("{} @ {target_bits:.4}", found.config.algo),
            found.config.algo.to_string(),
            found.config.bits_per_weight,
            m,
        ));
    }
    let exported_model = Model::load(&export_path)?;
    named.push((
        match opts.gguf {
            None => format!("exported ({:?} weights)", opts.dtype).to_lowercase(),
            Some(_) => "exported GGUF".to_string(),
        },
        "exported".into(),
        found.config.bits_per_weight,
        exported_model,
    ));
    let wopts = WindowOptions {
        seq_len: opts.seq_len,
        windows: opts.eval_windows,
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
    let models: Vec<&Model> = named.iter().map(|(_, _, _, m)| m).chain([&base]).collect();
    for path in &opts.eval {
        let tokens = load_tokens(path, &files.tokenizer)?;
        let label = file_label(path);
        let n = crate::eval::perplexity::usable_windows(tokens.len(), &wopts);
        let pb = progress::bar(
            (n * opts.seq_len * models.len()) as u64,
            &label,
            "tok",
            opts.quiet,
        );
        let scores =
            score_windows_multi(&models, Some(&base), &tokens, &wopts, |k| pb.inc(k as u64))?;
        pb.finish_and_clear();
        for (row, s) in rows.iter_mut().chain([&mut base_row]).zip(scores) {
            row.datasets.insert(label.clone(), s);
        }
    }
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

/// One stage's predicted cost.
#[derive(Debug, Clone, Serialize)]
pub struct StageEstimate {
    pub stage: String,
    pub seconds: f64,
    pub peak_ram_mib: f64,
}

/// What `compress --dry-run` prints.
#[derive(Debug, Clone, Serialize)]
pub struct Estimate {
    pub stages: Vec<StageEstimate>,
    pub database_disk_mib: f64,
    /// Measured f32 GEMM throughput of this machine (GFLOP/s).
    pub gemm_gflops: f64,
    /// Predicted forward throughput (tokens/s).
    pub forward_tokens_per_second: f64,
}

/// Measures this machine's GEMM speed on the model's shapes.
fn gemm_probe(hidden: usize, ff: usize) -> f64 {
    let (n, k, m) = (1024, hidden.min(4096), ff.min(8192));
    let x = vec![0.5f32; n * k];
    let w = vec![0.25f32; m * k];
    let mut out = vec![0f32; n * m];
    crate::model::kernels::matmul_wt(&x, k, &w, &mut out, false);
    let t = Instant::now();
    let reps = 3;
    for _ in 0..reps {
        crate::model::kernels::matmul_wt(&x, k, &w, &mut out, false);
    }
    2.0 * (n * k * m * reps) as f64 / t.elapsed().as_secs_f64() / 1e9
}

/// Predicts time, memory and disk of each stage without doing the work.
/// Efficiency factors were fitted on the demo model on a 2-core machine
/// (docs/pipeline.md compares predictions with measurements).
pub fn estimate(opts: &CompressOptions) -> Result<Estimate> {
    let files = ModelFiles::open(&opts.model)?;
    let c = &files.config;
    let space_ids = files.linear_ids();
    let shapes: Vec<(usize, usize)> = space_ids.iter().map(|id| id.shape(c)).collect();
    let linear: f64 = shapes.iter().map(|(r, k)| (r * k) as f64).sum();
    let t = opts.seq_len as f64;
    let attn = 4.0 * (t / 2.0) * (c.num_heads * c.head_dim) as f64 * c.num_layers as f64;
    let head = (c.vocab_size * c.hidden_size) as f64;
    let flops_token = 2.0 * (linear + head) + attn;
    let g = gemm_probe(c.hidden_size, c.intermediate_size);
    // Fused forward pass ≈ 75 % of raw GEMM speed (measured on the demo model).
    let tps = g * 1e9 * 0.75 / flops_token;
    let mib = |b: f64| b / (1 << 20) as f64;
    let level_specs = opts.method.levels()?;
    let levels = level_specs.len() as f64;

    // Database: calibration forward + Hessians + GPTQ sweeps (+ fixed cost per entry).
    let ct = opts.calib_tokens as f64;
    let site_dims = [
        c.hidden_size,
        c.num_heads * c.head_dim,
        c.hidden_size,
        c.intermediate_size,
    ];
    let hess: f64 =
        site_dims.iter().map(|&n| (n * n) as f64).sum::<f64>() * ct * c.num_layers as f64;
    let gptq: f64 = shapes
        .iter()
        .map(|&(r, k)| 2.0 * r as f64 * (k * k) as f64)
        .sum::<f64>()
        * levels;
    let entries = shapes.len() as f64 * levels;
    let db_s = ct / tps + (hess + gptq) / (g * 1e9 * 0.4) + entries * 0.005;
    let block_params = linear / c.num_layers as f64;
    let scratch =
        8.0 * t * ((c.qkv_out() + 2 * c.intermediate_size * 2 + 4 * c.hidden_size) as f64) * 4.0;
    let hess_bytes: f64 = site_dims.iter().map(|&n| (n * n) as f64 * 8.0).sum();
    let db_ram = ct * c.hidden_size as f64 * 4.0
        + scratch
        + 2.0 * block_params * 4.0
        + hess_bytes
        + 3.0 * (c.intermediate_size.pow(2) as f64) * 4.0;
    let db_disk: f64 = shapes
        .iter()
        .map(|&(r, k)| {
            level_specs
                .iter()
                .map(|l| match l.ggml {
                    Some(ty) => (r * k) as f64 * ty.bits_per_weight() / 8.0,
                    None => {
                        let groups = if opts.method.group_size == 0 {
                            1
                        } else {
                            k.div_ceil(opts.method.group_size)
                        };
                        (r * k * l.bits as usize + r * groups * (16 + l.bits as usize)) as f64 / 8.0
                    }
                })
                .sum::<f64>()
        })
        .sum();

    // Search.
    let evo = &opts.search.evo;
    let pool = evo.stages.iter().map(|s| s.tokens).max().unwrap_or(0) as f64;
    let mut per_gen = 0.0;
    let mut cands = evo.offspring as f64;
    for (i, s) in evo.stages.iter().enumerate() {
        if i + 1 == evo.stages.len() {
            cands += 1.0;
        }
        per_gen += (cands + 1.0) * s.tokens as f64;
        cands = s.survivors as f64;
    }
    let search_tokens = match opts.search.algo {
        Algo::Evopress => {
            pool + evo.initial_candidates as f64 * evo.stages[0].tokens as f64
                + evo.generations as f64 * per_gen
        }
        _ => 0.0,
    };
    // The parent cache saves roughly a tenth of the block forwards.
    let search_s = search_tokens * 0.9 / tps;
    let model_bytes = c.num_parameters() as f64 * 4.0;
    let targets = if pool * c.vocab_size as f64 * 4.0 <= opts.search.full_logits_budget as f64 {
        pool * c.vocab_size as f64 * 4.0
    } else {
        pool * opts.search.topk as f64 * 8.0
    };
    let search_ram = model_bytes
        + (linear * levels * 4.0).min(opts.search.weight_cache_budget as f64)
        + (pool * c.hidden_size as f64 * 4.0 * (c.num_layers + 1) as f64)
            .min(opts.search.hidden_cache_budget as f64)
        + targets
        + 8.0 * t * c.vocab_size as f64 * 4.0 * 2.0;

    // Export: stream every tensor once.
    let export_s = c.num_parameters() as f64 * 2.0 / 300e6 + linear / 50e6;
    let export_ram = (linear / c.num_layers as f64).max(head) * 4.0 * 2.0;

    // Evaluation: every compared configuration plus the base, on every file.
    let configs = if opts.compare {
        levels + 3.0 + 2.0
    } else {
        2.0
    };
    let eval_tokens = opts.eval.len() as f64 * (opts.eval_windows as f64 * t);
    let eval_s = (configs + 1.0) * eval_tokens / tps;
    let eval_ram = model_bytes + configs * linear * 4.0 + 8.0 * t * c.vocab_size as f64 * 4.0 * 3.0;

    Ok(Estimate {
        stages: vec![
            StageEstimate {
                stage: "database".into(),
                seconds: db_s,
                peak_ram_mib: mib(db_ram),
            },
            StageEstimate {
                stage: "search".into(),
                seconds: search_s,
                peak_ram_mib: mib(search_ram),
            },
            StageEstimate {
                stage: "export".into(),
                seconds: export_s,
                peak_ram_mib: mib(export_ram),
            },
            StageEstimate {
                stage: "evaluation".into(),
                seconds: eval_s,
                peak_ram_mib: mib(eval_ram),
            },
        ],
        database_disk_mib: mib(db_disk),
        gemm_gflops: g,
        forward_tokens_per_second: tps,
    })
}
