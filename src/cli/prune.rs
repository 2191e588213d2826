use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use dynapress::fsutil::{Input, OutputKind, check_output};
use dynapress::model::ModelFiles;
use dynapress::search::{DepthOptions, run_depth};

use super::args::{EvoArgs, FitnessArgs};

/// Method names, in the order the table prints them.
const METHODS: [&str; 4] = ["last", "shortgpt", "kl-alone", "evopress"];

#[derive(Args)]
pub struct PruneArgs {
    /// Hugging Face model directory or GGUF file.
    #[arg(long)]
    model: PathBuf,
    /// Calibration text for the fitness and the baselines (plain or JSONL; repeatable).
    #[arg(long)]
    calib: Vec<PathBuf>,
    /// What to prune: `depth` (attention/MLP sublayers or whole blocks).
    #[arg(long, default_value = "depth", value_parser = ["depth"])]
    prune: String,
    /// Budget: number of sublayers to drop (blocks with --whole-blocks), exactly.
    #[arg(long)]
    drop: usize,
    /// Drop whole blocks only (exportable as a Hugging Face directory).
    #[arg(long)]
    whole_blocks: bool,
    /// Output directory: one depth configuration per method
    /// (`evopress.json`, `shortgpt.json`, `kl-alone.json`, `last.json`) and
    /// `summary.json`. `eval --config` and `export --config` read them.
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    evo: EvoArgs,
    #[command(flatten)]
    fitness: FitnessArgs,
    /// Replace --out if it exists.
    #[arg(long)]
    force: bool,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
    #[arg(long, short)]
    quiet: bool,
}

pub fn run(a: PruneArgs) -> anyhow::Result<()> {
    let evo = a.evo.params()?;
    a.fitness.check()?;
    if a.calib.is_empty() {
        crate::bad_arg!("depth pruning needs calibration text: give --calib FILE");
    }
    for c in &a.calib {
        dynapress::fsutil::check_input_file(c)?;
    }
    let files = ModelFiles::open(&a.model).context("loading the model")?;
    let units = files.config.num_layers * if a.whole_blocks { 1 } else { 2 };
    if let Err(e) = dynapress::search::depth::check_drop(a.drop, units, a.whole_blocks) {
        crate::bad_arg!("{e}");
    }
    let mut inputs = vec![Input::Dir(&a.model)];
    inputs.extend(a.calib.iter().map(|c| Input::File(c)));
    check_output(&a.out, "--out", OutputKind::Dir, &inputs, a.force)?;
    let opts = DepthOptions {
        drop: a.drop,
        whole_blocks: a.whole_blocks,
        evo,
        calib: a.calib.clone(),
        pool_tokens: a.fitness.calib_tokens,
        seq_len: a.fitness.seq_len,
        topk: a.fitness.topk,
        quiet: a.quiet,
        ..Default::default()
    };
    let outcome = run_depth(&files, &opts)?;
    std::fs::create_dir_all(&a.out).with_context(|| format!("{}: creating", a.out.display()))?;
    for c in &outcome.configs {
        c.write(&a.out.join(format!("{}.json", c.method)))?;
    }
    let summary = serde_json::to_string_pretty(&outcome)? + "\n";
    dynapress::fsutil::write_atomic(&a.out.join("summary.json"), summary.as_bytes())?;
    if a.json {
        print!("{summary}");
        return Ok(());
    }
    let what = if a.whole_blocks {
        "blocks"
    } else {
        "sublayers"
    };
    println!(
        "drop {} {what}; KL(base ‖ pruned) per token on {} calibration windows of {} tokens",
        a.drop, outcome.calib_windows, a.fitness.seq_len
    );
    println!("{:<10} {:>10}  dropped", "method", "calib KL");
    for m in METHODS {
        if let Some(c) = outcome.config(m) {
            let dropped: Vec<String> = c.dropped.iter().map(|s| s.to_string()).collect();
            println!(
                "{:<10} {:>10.5}  {}",
                m,
                c.calib_kl.unwrap_or(f64::NAN),
                dropped.join(" ")
            );
        }
    }
    println!("configurations in {}", a.out.display());
    Ok(())
}
