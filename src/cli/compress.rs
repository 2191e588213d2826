use std::path::{Path, PathBuf};

use clap::Args;
use dynapress::database::{DEFAULT_GGML_TYPES, Method, MethodSpec};
use dynapress::estimate::estimate;
use dynapress::export::ExportDtype;
use dynapress::formats::gguf::GgufTypes;
use dynapress::fsutil::{Input, OutputKind, check_output};
use dynapress::pipeline::{Compare, CompressOptions, compress};
use dynapress::search::evopress::{DEFAULT_STAGES_ARG, EvoParams, Init, parse_stages};
use dynapress::search::{Algo, SearchOptions};

#[derive(Args)]
pub struct CompressArgs {
    /// Hugging Face model directory or GGUF file. Without it, the bundled demo model with its
    /// bundled calibration and evaluation text.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Calibration text (repeatable; held-out validation text, never test text).
    #[arg(long)]
    calib: Vec<PathBuf>,
    /// Held-out evaluation text (repeatable).
    #[arg(long)]
    eval: Vec<PathBuf>,
    /// Budget: average storage bits per weight of the linear layers.
    #[arg(long, default_value_t = 3.0)]
    target_bits: f64,
    /// Budget instead: size in bytes of the exported GGUF file (--format gguf).
    #[arg(long)]
    target_size: Option<u64>,
    /// Export format: safetensors (a Hugging Face directory) or gguf (a file
    /// llama.cpp runs; the database then uses ggml types).
    #[arg(long, default_value = "safetensors")]
    format: String,
    /// gguf: type of token_embd.weight.
    #[arg(long, default_value = "Q6_K")]
    embed_type: String,
    /// gguf: type of output.weight.
    #[arg(long, default_value = "Q6_K")]
    output_type: String,
    /// Output directory (database/, config.json, model/, report.*). Default: out/demo for the demo.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Database directory (default <out>/database; reused if it matches).
    #[arg(long)]
    db: Option<PathBuf>,
    /// Compressor: gptq or rtn (grids of --bits), kquant or gptq-kquant
    /// (ggml --types). Default: gptq, or gptq-kquant with --format gguf.
    #[arg(long)]
    method: Option<Method>,
    /// ggml types of the database levels (kquant, gptq-kquant).
    #[arg(long, value_delimiter = ',', default_value = DEFAULT_GGML_TYPES)]
    types: Vec<String>,
    /// Bit widths of the database levels.
    #[arg(long, value_delimiter = ',', default_value = "2,3,4,5,6,8")]
    bits: Vec<u8>,
    #[arg(long, default_value_t = 128)]
    group_size: usize,
    /// GPTQ act-order (static groups).
    #[arg(long)]
    act_order: bool,
    #[arg(long, default_value_t = 32768)]
    calib_tokens: usize,
    #[arg(long, default_value_t = 256)]
    seq_len: usize,
    /// Allocator: evopress, knapsack or uniform.
    #[arg(long, default_value = "evopress")]
    algo: Algo,
    #[arg(long, default_value_t = EvoParams::default().generations)]
    generations: usize,
    #[arg(long, default_value_t = EvoParams::default().offspring)]
    offspring: usize,
    #[arg(long, default_value = DEFAULT_STAGES_ARG)]
    stages: String,
    /// Racing: drop an offspring once it is this many standard errors worse
    /// (paired, per window) than the stage's last survivor; 0 turns it off.
    #[arg(long, default_value_t = EvoParams::default().race_z)]
    race_z: f64,
    #[arg(long, default_value = "knapsack")]
    init: Init,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Evaluation windows per file.
    #[arg(long, default_value_t = 64)]
    eval_windows: usize,
    /// Skip the uniform/knapsack comparison in the report (same as `--compare none`).
    #[arg(long)]
    no_compare: bool,
    /// Rows the report compares with the search: `all` (every uniform level
    /// and knapsack at the target ± 0.5 bits), `neighbours` (the two uniform
    /// levels around the target and knapsack at it), `none`, or `auto`
    /// (all below 50 M parameters, neighbours above: each row is a forward
    /// pass over the evaluation text).
    #[arg(long, value_enum, default_value_t = Compare::Auto)]
    compare: Compare,
    /// Dtype of the exported weights.
    #[arg(long, default_value = "original")]
    dtype: ExportDtype,
    /// Print the estimated time, peak memory and disk of each stage, and stop.
    #[arg(long)]
    dry_run: bool,
    /// Rebuild the database directory if it holds a database of another
    /// model, calibration or method.
    #[arg(long)]
    force: bool,
    #[arg(long)]
    json: bool,
    #[arg(long, short)]
    quiet: bool,
}

/// The repository's `assets/` directory (found from the working directory or
/// from where dynapress was built).
fn assets() -> PathBuf {
    let local = Path::new("assets");
    if local.join("demo-model").is_dir() {
        local.to_path_buf()
    } else {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("assets")
    }
}

pub fn run(a: CompressArgs) -> anyhow::Result<()> {
    let demo = a.model.is_none();
    let assets = assets();
    let model = a.model.clone().unwrap_or_else(|| assets.join("demo-model"));
    let calib = if a.calib.is_empty() && demo {
        vec![
            assets.join("data/docs.valid.txt"),
            assets.join("data/code.valid.txt"),
        ]
    } else {
        a.calib.clone()
    };
    let eval = if a.eval.is_empty() && demo {
        vec![
            assets.join("data/docs.test.txt"),
            assets.join("data/code.test.txt"),
        ]
    } else {
        a.eval.clone()
    };
    if calib.is_empty() {
        anyhow::bail!("give calibration text with --calib FILE (held-out validation text)");
    }
    if eval.is_empty() {
        anyhow::bail!("give held-out evaluation text with --eval FILE");
    }
    let out = match (&a.out, demo) {
        (Some(o), _) => o.clone(),
        (None, true) => PathBuf::from("out/demo"),
        (None, false) => anyhow::bail!("give an output directory with --out DIR"),
    };
    let stages = match parse_stages(&a.stages) {
        Ok(s) => s,
        Err(e) => crate::bad_arg!("--stages: {e}"),
    };
    super::check_evo_args(a.offspring, &stages)?;
    let gguf = match a.format.as_str() {
        "safetensors" => None,
        "gguf" => Some(GgufTypes {
            embed: super::export::parse_type(&a.embed_type)?,
            output: super::export::parse_type(&a.output_type)?,
        }),
        other => crate::bad_arg!("unknown --format `{other}`: choose safetensors or gguf"),
    };
    match a.target_size {
        Some(0) => crate::bad_arg!("--target-size must be a positive number of bytes"),
        Some(_) if gguf.is_none() => crate::bad_arg!(
            "--target-size is the size of a GGUF file: it needs --format gguf (or give --target-bits)"
        ),
        Some(_) => {}
        None => super::check_target_bits(a.target_bits)?,
    }
    if a.calib_tokens == 0 {
        crate::bad_arg!("--calib-tokens must be positive");
    }
    if a.seq_len < 2 {
        crate::bad_arg!("--seq-len must be at least 2");
    }
    if a.eval_windows == 0 {
        crate::bad_arg!("--eval-windows must be at least 1");
    }
    for p in calib.iter().chain(&eval) {
        dynapress::fsutil::check_input_file(p)?;
    }
    let mut inputs = vec![Input::Dir(&model)];
    inputs.extend(calib.iter().chain(&eval).map(|p| Input::File(p)));
    check_output(&out, "--out", OutputKind::ResumeDir, &inputs, true)?;
    if let Some(db) = &a.db {
        check_output(db, "--db", OutputKind::ResumeDir, &inputs, true)?;
    }
    dynapress::fsutil::clean_stale_temps(&out);
    let method = a.method.unwrap_or(if gguf.is_some() {
        Method::GptqKquant
    } else {
        Method::Gptq
    });
    let opts = CompressOptions {
        model,
        calib,
        eval,
        target_bits: a.target_bits,
        target_size: a.target_size,
        gguf,
        out: out.clone(),
        db_dir: a.db,
        method: MethodSpec {
            method,
            bits: a.bits,
            types: a.types,
            group_size: a.group_size,
            act_order: a.act_order,
            ..Default::default()
        },
        calib_tokens: a.calib_tokens,
        seq_len: a.seq_len,
        search: SearchOptions {
            algo: a.algo,
            evo: EvoParams {
                generations: a.generations,
                offspring: a.offspring,
                stages,
                init: a.init,
                seed: a.seed,
                race_z: a.race_z,
                ..Default::default()
            },
            quiet: a.quiet,
            ..Default::default()
        },
        eval_windows: a.eval_windows,
        compare: if a.no_compare {
            Compare::None
        } else {
            a.compare
        },
        dtype: a.dtype,
        quiet: a.quiet,
        force: a.force,
    };
    if a.dry_run {
        let e = estimate(&opts)?;
        if a.json {
            println!("{}", serde_json::to_string_pretty(&e)?);
        } else {
            println!(
                "estimates for {} on this machine ({} threads; forward measured at {:.0} tokens/s, GEMM {:.0} GFLOP/s; search ≈ {:.2} M forward tokens):",
                opts.model.display(),
                rayon::current_num_threads(),
                e.forward_tokens_per_second,
                e.gemm_gflops,
                e.search_forward_tokens / 1e6
            );
            println!("{:<12} {:>10} {:>14}", "stage", "time", "peak RAM");
            let mut total = 0.0;
            for s in &e.stages {
                total += s.seconds;
                println!(
                    "{:<12} {:>9.0}s {:>10.0} MiB",
                    s.stage, s.seconds, s.peak_ram_mib
                );
            }
            println!(
                "{:<12} {:>9.0}s {:>10.0} MiB peak",
                "total", total, e.peak_ram_mib
            );
            println!("database disk: {:.1} MiB", e.database_disk_mib);
        }
        return Ok(());
    }
    let r = compress(&opts)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    let find = |kind: &str| r.rows.iter().find(|row| row.kind == kind);
    println!(
        "{}: {} at {:.4} bits per weight (target {})",
        out.display(),
        r.algo,
        r.achieved_bits_per_weight,
        r.target_bits
    );
    if let Some(row) = find("exported") {
        for (f, d) in &row.datasets {
            let base = find("base")
                .and_then(|b| b.datasets.get(f))
                .map(|b| b.perplexity);
            println!(
                "  {f}: perplexity {:.3} (base {}), KL to base {:.5}, top-1 agreement {:.4}",
                d.perplexity,
                base.map_or("-".into(), |b| format!("{b:.3}")),
                d.kl.unwrap_or(0.0),
                d.top1_agreement.unwrap_or(0.0)
            );
        }
    }
    println!("model: {} ({} bytes)", r.exported, r.exported_bytes);
    if let (Some(c), Some(b)) = (&r.compressed, r.compressed_bytes) {
        println!("compressed form: {c} ({b} bytes)");
    }
    println!("report: {}", out.join("report.html").display());
    Ok(())
}
