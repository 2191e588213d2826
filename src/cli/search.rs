use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use dynapress::database::Database;
use dynapress::export::{describe_budget, resolve_budget};
use dynapress::fsutil::{Input, OutputKind, check_output};
use dynapress::model::ModelFiles;
use dynapress::search::{SearchOptions, run_search};
use dynapress::selection::{Algo, Budget};

use super::args::{BudgetArgs, EvoArgs, FitnessArgs, GgufTypeArgs};

#[derive(Args)]
pub struct SearchArgs {
    /// Hugging Face model directory or GGUF file (the original the database was built from).
    #[arg(long)]
    model: PathBuf,
    /// Layer database (`dynapress database --out`).
    #[arg(long)]
    db: PathBuf,
    /// Calibration text for EvoPress's fitness (plain or JSONL; repeatable).
    #[arg(long)]
    calib: Vec<PathBuf>,
    #[command(flatten)]
    budget: BudgetArgs,
    #[command(flatten)]
    gguf_types: GgufTypeArgs,
    /// evopress (whole-model KL), knapsack (sum of per-layer errors), uniform,
    /// or owl (sparsity by outlier share; sparsegpt databases with f16 values).
    #[arg(long, value_enum, default_value = "evopress")]
    algo: Algo,
    /// One level for q/k/v and one for gate/up in every block (vLLM fuses
    /// them and refuses per-shard schemes; `compress --runtime vllm` sets it).
    #[arg(long)]
    tie_fused: bool,
    /// Output configuration (JSON). A checkpoint `<out>.state` is kept next to it.
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    evo: EvoArgs,
    #[command(flatten)]
    fitness: FitnessArgs,
    /// Replace --out if it exists.
    #[arg(long)]
    force: bool,
    /// Print the configuration summary as JSON.
    #[arg(long)]
    json: bool,
    #[arg(long, short)]
    quiet: bool,
    /// Testing only: abort after N generations.
    #[arg(long, hide = true)]
    abort_after: Option<usize>,
}

pub fn run(a: SearchArgs) -> anyhow::Result<()> {
    let evo = a.evo.params()?;
    // --target-size is a GGUF file size: the database's types decide later
    // whether it can be one.
    let budget = a.budget.budget(None, true)?;
    a.fitness.check()?;
    for c in &a.calib {
        dynapress::fsutil::check_input_file(c)?;
    }
    let mut inputs = vec![Input::Dir(&a.model), Input::Dir(&a.db)];
    inputs.extend(a.calib.iter().map(|c| Input::File(c)));
    check_output(&a.out, "--out", OutputKind::File, &inputs, a.force)?;
    let mut state = a.out.clone().into_os_string();
    state.push(".state");
    let state = PathBuf::from(state);
    check_output(
        &state,
        "--out's checkpoint",
        OutputKind::File,
        &inputs,
        true,
    )?;
    dynapress::fsutil::clean_stale_temps_for(&a.out);
    let files = ModelFiles::open(&a.model).context("loading the model")?;
    let db = Database::open(&a.db)?;
    db.check_model(&files)?;
    let gguf = matches!(budget, Budget::GgufBytes(_))
        .then(|| a.gguf_types.types())
        .transpose()?;
    let (target, head) = resolve_budget(budget, &files, &db, gguf)?;
    if let (Some(note), false) = (describe_budget(&target, head.as_ref()), a.quiet) {
        eprintln!("{note}");
    }
    let opts = SearchOptions {
        algo: a.algo,
        target,
        evo,
        calib: a.calib,
        pool_tokens: a.fitness.calib_tokens,
        seq_len: a.fitness.seq_len,
        topk: a.fitness.topk,
        checkpoint: Some(state),
        quiet: a.quiet,
        abort_after: a.abort_after,
        head,
        tie_fused: a.tie_fused,
        ..Default::default()
    };
    let out = run_search(&files, &db, &opts)?;
    out.config.write(&a.out)?;
    if a.json {
        let v = serde_json::json!({
            "config": a.out, "algo": out.config.algo, "target_bits": out.config.target_bits,
            "bits_per_weight": out.config.bits_per_weight, "fitness": out.config.fitness,
            "embed_type": out.config.embed_type, "output_type": out.config.output_type,
            "seconds": out.seconds, "stats": out.stats,
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "{}: {} at {:.4} bits per weight (target {}){} in {:.1} s",
            a.out.display(),
            out.config.algo,
            out.config.bits_per_weight,
            out.config.target_bits,
            out.config
                .fitness
                .map(|f| format!(", calibration KL {f:.5}"))
                .unwrap_or_default(),
            out.seconds
        );
        if let Some(e) = &out.config.embed_type {
            println!(
                "GGUF types chosen with the layers: token_embd {e}{}",
                out.config
                    .output_type
                    .as_ref()
                    .map(|o| format!(", output {o}"))
                    .unwrap_or_default()
            );
        }
        if let Some(s) = out.stats {
            let without = s.block_forwards - s.cache_forwards + s.block_forwards_saved;
            println!(
                "block forwards: {} run, {} without the parent cache ({:.0} % saved)",
                s.block_forwards,
                without,
                100.0 * (1.0 - s.block_forwards as f64 / without.max(1) as f64)
            );
        }
        let mut counts = std::collections::BTreeMap::new();
        for l in &out.config.layers {
            *counts.entry(l.bits).or_insert(0usize) += 1;
        }
        let counts: Vec<String> = counts
            .iter()
            .map(|(b, n)| format!("{n} layers at {b} bits"))
            .collect();
        println!("{}", counts.join(", "));
    }
    Ok(())
}
