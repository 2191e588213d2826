use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use dynapress::database::Method;
use dynapress::estimate::estimate;
use dynapress::eval::compare::Compare;
use dynapress::export::{ExportDtype, ServedFormat};
use dynapress::fsutil::{Input, OutputKind, check_output};
use dynapress::pipeline::{CompressOptions, compress};
use dynapress::search::SearchOptions;
use dynapress::selection::Algo;

use super::args::{BudgetArgs, EvoArgs, Format, GgufTypeArgs, MethodArgs, Runtime};

/// What `compress` takes away.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Prune {
    /// A quantization level per linear layer (bits per weight or file size).
    Quant,
    /// A SparseGPT sparsity level per linear layer (`--method sparsegpt`).
    Sparsity,
    /// Attention and MLP sublayers (or whole blocks) dropped.
    Depth,
}

#[derive(Args)]
pub struct CompressArgs {
    /// What to compress: quant (per-layer quantization levels), sparsity
    /// (per-layer SparseGPT levels under --target-sparsity, default 0.5) or
    /// depth (drop sublayers or blocks: --drop N or --target-params P).
    #[arg(long, value_enum, default_value = "quant")]
    prune: Prune,
    /// --prune depth: sublayers to drop (blocks with --whole-blocks);
    /// default 1/8 of them, at least 1.
    #[arg(long, conflicts_with = "target_params")]
    drop: Option<usize>,
    /// --prune depth: parameters the pruned model may keep (a count or
    /// 120M-style), embeddings and head included.
    #[arg(long)]
    target_params: Option<String>,
    /// --prune depth: drop whole blocks only. Always so with --format
    /// safetensors (a Hugging Face block has one attention and one MLP);
    /// with --format gguf, blocks keeping one sublayer are written as
    /// llama.cpp's deci architecture (Llama checkpoints).
    #[arg(long)]
    whole_blocks: bool,
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
    #[command(flatten)]
    budget: BudgetArgs,
    /// Export format: safetensors (a Hugging Face directory, and the same in
    /// dynapress's format in model-dynapress/), compressed-tensors (model/
    /// packed for transformers and vLLM; gptq/rtn levels; with --runtime vllm
    /// for vLLM's kernels) or gguf (a file llama.cpp runs; the database then
    /// uses ggml types).
    #[arg(long, value_enum, default_value = "safetensors")]
    format: Format,
    #[command(flatten)]
    gguf_types: GgufTypeArgs,
    /// Output directory (database/, config.json, model/, report.*). Default: out/demo for the demo.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Database directory (default <out>/database; reused if it matches).
    #[arg(long)]
    db: Option<PathBuf>,
    #[command(flatten)]
    method: MethodArgs,
    #[arg(long, default_value_t = 32768)]
    calib_tokens: usize,
    #[arg(long, default_value_t = 256)]
    seq_len: usize,
    /// Allocator: evopress (whole-model KL), knapsack (sum of per-layer errors) or uniform.
    #[arg(long, value_enum, default_value = "evopress")]
    algo: Algo,
    #[command(flatten)]
    evo: EvoArgs,
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
    #[arg(long, value_enum, default_value = "original")]
    dtype: ExportDtype,
    /// Print the estimated time, peak memory and disk of each stage, and stop.
    #[arg(long)]
    dry_run: bool,
    /// Rebuild the database directory if it holds a database of another
    /// model, calibration or method (--prune depth: restart the search
    /// instead of resuming its checkpoint).
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

pub fn run(mut a: CompressArgs) -> anyhow::Result<()> {
    let demo = a.model.is_none();
    if a.prune != Prune::Depth && (a.drop.is_some() || a.target_params.is_some() || a.whole_blocks)
    {
        crate::bad_arg!("--drop, --target-params and --whole-blocks go with --prune depth");
    }
    if a.prune == Prune::Sparsity {
        match a.method.method {
            None | Some(Method::Sparsegpt) => a.method.method = Some(Method::Sparsegpt),
            Some(m) => crate::bad_arg!(
                "--prune sparsity builds SparseGPT levels; drop --method {m:?} (or use --prune quant)"
            ),
        }
    }
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
    let evo = a.evo.params()?;
    if a.prune == Prune::Depth {
        return run_depth(a, model, calib, eval, out, evo);
    }
    let gguf = match a.format {
        Format::Safetensors | Format::CompressedTensors | Format::Gptq => None,
        Format::Gguf => Some(a.gguf_types.types()?),
        Format::Dynapress => crate::bad_arg!(
            "compress writes dynapress's format with --format safetensors, compressed-tensors or gptq (in model-dynapress/); choose safetensors, compressed-tensors, gptq or gguf"
        ),
    };
    // A sparsegpt database's natural budget is a sparsity (50 % by default).
    let sparse_default = a.method.method == Some(Method::Sparsegpt)
        && a.budget.target_bits.is_none()
        && a.budget.target_size.is_none()
        && a.budget.target_sparsity.is_none();
    let budget = if sparse_default {
        dynapress::selection::Budget::Sparsity(0.5)
    } else {
        a.budget.budget(Some(3.0), gguf.is_some())?
    };
    let inputs = check_common(&a, &model, &calib, &eval, &out)?;
    if let Some(db) = &a.db {
        check_output(db, "--db", OutputKind::ResumeDir, &inputs, true)?;
    }
    dynapress::fsutil::clean_stale_temps(&out);
    // A GPTQ checkpoint stores 2, 3, 4 or 8 bits: without a --runtime, make
    // the levels GPTQModel's rather than failing at the export.
    let mut method_args = a.method.clone();
    if a.format == Format::Gptq
        && method_args.runtime == Runtime::Any
        && !a.method.method.is_some_and(|m| m.is_ggml())
    {
        method_args.runtime = Runtime::Gptqmodel;
    }
    let method = method_args.spec(if gguf.is_some() {
        Method::GptqKquant
    } else {
        Method::Gptq
    })?;
    match (a.method.runtime, gguf.is_some()) {
        (Runtime::LlamaCpp, false) => {
            crate::bad_arg!("--runtime llama.cpp makes a GGUF: add --format gguf")
        }
        (Runtime::Vllm | Runtime::Gptqmodel, true) => crate::bad_arg!(
            "--runtime vllm and gptqmodel serve GPTQ grids, not GGUF: use --format compressed-tensors (vLLM) or gptq (GPTQModel)"
        ),
        _ => {}
    }
    let opts = CompressOptions {
        model,
        calib,
        eval,
        budget,
        gguf,
        out: out.clone(),
        db_dir: a.db,
        method,
        calib_tokens: a.calib_tokens,
        seq_len: a.seq_len,
        search: SearchOptions {
            algo: a.algo,
            evo,
            quiet: a.quiet,
            // vLLM runs q/k/v and gate/up fused, one scheme per fused module.
            tie_fused: a.method.runtime == Runtime::Vllm,
            ..Default::default()
        },
        eval_windows: a.eval_windows,
        compare: if a.no_compare {
            Compare::None
        } else {
            a.compare
        },
        dtype: a.dtype,
        served: match a.format {
            Format::CompressedTensors => Some(ServedFormat::CompressedTensors),
            Format::Gptq => Some(ServedFormat::Gptq),
            _ => None,
        },
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
    if let Some(e) = &r.embed_type {
        println!(
            "searched GGUF types: token_embd {e}{}",
            r.output_type
                .as_ref()
                .map(|o| format!(", output {o}"))
                .unwrap_or_default()
        );
    }
    if let (Some(c), Some(b)) = (&r.compressed, r.compressed_bytes) {
        println!("compressed form: {c} ({b} bytes)");
    }
    println!("report: {}", out.join("report.html").display());
    Ok(())
}

/// The checks every `compress` makes before it starts: the window options,
/// the input files, and that `--out` may hold a resumed run of them.
fn check_common<'a>(
    a: &CompressArgs,
    model: &'a Path,
    calib: &'a [PathBuf],
    eval: &'a [PathBuf],
    out: &Path,
) -> anyhow::Result<Vec<Input<'a>>> {
    if a.calib_tokens == 0 {
        crate::bad_arg!("--calib-tokens must be positive");
    }
    if a.seq_len < 2 {
        crate::bad_arg!("--seq-len must be at least 2");
    }
    if a.eval_windows == 0 {
        crate::bad_arg!("--eval-windows must be at least 1");
    }
    for p in calib.iter().chain(eval) {
        dynapress::fsutil::check_input_file(p)?;
    }
    let mut inputs = vec![Input::Dir(model)];
    inputs.extend(calib.iter().chain(eval).map(|p| Input::File(p)));
    check_output(out, "--out", OutputKind::ResumeDir, &inputs, true)?;
    Ok(inputs)
}

/// `compress --prune depth`.
fn run_depth(
    a: CompressArgs,
    model: PathBuf,
    calib: Vec<PathBuf>,
    eval: Vec<PathBuf>,
    out: PathBuf,
    evo: dynapress::search::evopress::EvoParams,
) -> anyhow::Result<()> {
    use dynapress::model::{Architecture, ModelFiles};
    use dynapress::pipeline::depth::{DepthCompressOptions, compress_depth};
    use dynapress::search::depth::{budget_sizes, depth_units, unit_params};
    use dynapress::search::{DepthBudget, DepthOptions};
    if a.budget.target_bits.is_some()
        || a.budget.target_size.is_some()
        || a.budget.target_sparsity.is_some()
        || a.method.method.is_some()
    {
        crate::bad_arg!(
            "--prune depth takes its budget as --drop N or --target-params P, without --method or --target-bits/--target-size/--target-sparsity"
        );
    }
    let gguf = match a.format {
        Format::Safetensors => false,
        Format::Gguf => true,
        Format::CompressedTensors | Format::Gptq | Format::Dynapress => crate::bad_arg!(
            "--prune depth exports --format safetensors (a Hugging Face directory) or gguf"
        ),
    };
    if a.dry_run {
        crate::bad_arg!("--dry-run estimates quantization runs; it does not cover --prune depth");
    }
    check_common(&a, &model, &calib, &eval, &out)?;
    dynapress::fsutil::clean_stale_temps(&out);
    // The search resumes from its checkpoint in --out; --force starts afresh.
    let checkpoint = out.join("depth-checkpoint.json");
    if a.force && checkpoint.is_file() {
        std::fs::remove_file(&checkpoint)
            .with_context(|| format!("{}: removing", checkpoint.display()))?;
    }
    let files = ModelFiles::open(&model)?;
    // A Hugging Face block has one attention and one MLP; llama.cpp's deci
    // (blocks with one sublayer) follows Llama.
    let whole_blocks = a.whole_blocks || !gguf || files.config.arch != Architecture::Llama;
    let units = depth_units(files.config.num_layers, whole_blocks);
    let budget = match (a.drop, &a.target_params) {
        (Some(n), _) => DepthBudget::Drop(n),
        (None, Some(p)) => match super::prune::parse_count(p) {
            Some(p) => DepthBudget::Params(p),
            None => crate::bad_arg!(
                "--target-params {p}: give a parameter count such as 120000000 or 120M"
            ),
        },
        (None, None) => DepthBudget::Drop((units.len() / 8).max(1)),
    };
    let (total, sizes) = unit_params(&files, &units)?;
    if let Err(e) = budget_sizes(budget, total, &sizes, whole_blocks) {
        crate::bad_arg!("{e}");
    }
    drop(files);
    let opts = DepthCompressOptions {
        model,
        eval,
        out: out.clone(),
        depth: DepthOptions {
            budget,
            whole_blocks,
            evo,
            calib,
            pool_tokens: Some(a.calib_tokens),
            seq_len: a.seq_len,
            quiet: a.quiet,
            ..Default::default()
        },
        gguf,
        dtype: a.dtype,
        eval_windows: a.eval_windows,
        quiet: a.quiet,
    };
    let r = compress_depth(&opts)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    println!(
        "{}: {} of {} ({} parameters){}",
        out.display(),
        r.budget,
        r.num_layers,
        r.total_params,
        if r.whole_blocks { ", whole blocks" } else { "" }
    );
    for row in &r.rows {
        let kls: Vec<String> = r
            .eval_files
            .iter()
            .filter_map(|f| {
                row.datasets
                    .get(f)
                    .map(|d| format!("{f} KL {:.5}", d.kl.unwrap_or(0.0)))
            })
            .collect();
        println!(
            "  {:<10} {:>12} params  {}  dropped {}",
            row.method,
            row.params.unwrap_or(0),
            kls.join(", "),
            row.dropped.join(" ")
        );
    }
    println!(
        "model: {} ({}, {} bytes)",
        r.exported, r.exported_format, r.exported_bytes
    );
    println!("report: {}", out.join("report.html").display());
    Ok(())
}
