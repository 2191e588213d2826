use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use dynapress::fsutil::{Input, OutputKind, check_output};
use dynapress::model::ModelFiles;
use dynapress::search::{DepthBudget, DepthOptions, run_depth};

use super::args::{EvoArgs, FitnessArgs};

/// Method names, in the order the table prints them.
const METHODS: [&str; 5] = ["last", "shortgpt", "kl-alone", "evopress", "exhaustive"];

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
    #[arg(
        long,
        required_unless_present = "target_params",
        conflicts_with = "target_params"
    )]
    drop: Option<usize>,
    /// Budget instead: parameters the pruned model may keep, embeddings and
    /// head included (a count, or with a k/M/B suffix: `100M`). Units are
    /// dropped until the model has at most that many.
    #[arg(long)]
    target_params: Option<String>,
    /// Drop whole blocks only (exportable as a Hugging Face directory).
    #[arg(long)]
    whole_blocks: bool,
    /// Also score every configuration of the --drop budget (at most 5000)
    /// and write the best as `exhaustive.json`: the optimum on the
    /// calibration windows, to see how far the methods are from it.
    #[arg(long)]
    exhaustive: bool,
    /// Output directory: one depth configuration per method
    /// (`evopress.json`, `shortgpt.json`, `kl-alone.json`, `last.json`),
    /// `summary.json` and the search's `checkpoint.json` (a killed run given
    /// the same --out resumes from it). `eval --config` and `export --config`
    /// read them.
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
    /// Testing only: abort after N generations.
    #[arg(long, hide = true)]
    abort_after: Option<usize>,
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
    let budget = match (a.drop, &a.target_params) {
        (Some(n), _) => DepthBudget::Drop(n),
        (None, Some(p)) => match parse_count(p) {
            Some(p) => DepthBudget::Params(p),
            None => crate::bad_arg!(
                "--target-params {p}: give a parameter count such as 120000000 or 120M"
            ),
        },
        (None, None) => crate::bad_arg!("give a budget: --drop N or --target-params P"),
    };
    let files = ModelFiles::open(&a.model).context("loading the model")?;
    {
        use dynapress::search::depth::{budget_sizes, depth_units, unit_params};
        let units = depth_units(files.config.num_layers, a.whole_blocks);
        let (total, sizes) = unit_params(&files, &units)?;
        if let Err(e) = budget_sizes(budget, total, &sizes, a.whole_blocks) {
            crate::bad_arg!("{e}");
        }
        if a.exhaustive
            && let Err(e) = dynapress::search::depth::check_exhaustive(budget, units.len())
        {
            crate::bad_arg!("{e}");
        }
    }
    let mut inputs = vec![Input::Dir(&a.model)];
    inputs.extend(a.calib.iter().map(|c| Input::File(c)));
    // The search checkpoints into --out after each generation: an --out
    // holding a checkpoint is resumed (--force starts afresh); anything else
    // there needs --force.
    let checkpoint = a.out.join("checkpoint.json");
    let kind = if checkpoint.is_file() && !a.force {
        OutputKind::ResumeDir
    } else {
        OutputKind::Dir
    };
    check_output(&a.out, "--out", kind, &inputs, a.force)?;
    if a.force && checkpoint.is_file() {
        std::fs::remove_file(&checkpoint)
            .with_context(|| format!("{}: removing", checkpoint.display()))?;
    }
    std::fs::create_dir_all(&a.out).with_context(|| format!("{}: creating", a.out.display()))?;
    let opts = DepthOptions {
        budget,
        whole_blocks: a.whole_blocks,
        evo,
        calib: a.calib.clone(),
        pool_tokens: a.fitness.calib_tokens,
        seq_len: a.fitness.seq_len,
        topk: a.fitness.topk,
        quiet: a.quiet,
        checkpoint: Some(checkpoint),
        exhaustive: a.exhaustive,
        abort_after: a.abort_after,
        ..Default::default()
    };
    let outcome = run_depth(&files, &opts)?;
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
    let budget = match budget {
        DepthBudget::Drop(n) => format!("drop {n} {what}"),
        DepthBudget::Params(p) => format!(
            "drop {what} until at most {p} of {} parameters remain",
            outcome.total_params
        ),
    };
    println!(
        "{budget}; KL(base ‖ pruned) per token on {} calibration windows of {} tokens",
        outcome.calib_windows, a.fitness.seq_len
    );
    println!(
        "{:<10} {:>10} {:>13}  dropped",
        "method", "calib KL", "params"
    );
    for m in METHODS {
        if let Some(c) = outcome.config(m) {
            let dropped: Vec<String> = c.dropped.iter().map(|s| s.to_string()).collect();
            println!(
                "{:<10} {:>10.5} {:>13}  {}",
                m,
                c.calib_kl.unwrap_or(f64::NAN),
                c.params.unwrap_or(0),
                dropped.join(" ")
            );
        }
    }
    println!("configurations in {}", a.out.display());
    Ok(())
}

/// A count with an optional k/M/B (or K/G) suffix: `120000000`, `120M`, `1.5B`.
pub(crate) fn parse_count(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last()? {
        (i, 'k' | 'K') => (&s[..i], 1e3),
        (i, 'm' | 'M') => (&s[..i], 1e6),
        (i, 'b' | 'B' | 'g' | 'G') => (&s[..i], 1e9),
        _ => (s, 1.0),
    };
    let v: f64 = num.trim().parse().ok()?;
    (v.is_finite() && v > 0.0).then(|| (v * mult).round() as u64)
}

#[cfg(test)]
mod tests {
    #[test]
    fn counts_take_suffixes() {
        assert_eq!(super::parse_count("120M"), Some(120_000_000));
        assert_eq!(super::parse_count("1.5B"), Some(1_500_000_000));
        assert_eq!(super::parse_count("7000000"), Some(7_000_000));
        assert_eq!(super::parse_count("6.5k"), Some(6_500));
        assert_eq!(super::parse_count("-3M"), None);
        assert_eq!(super::parse_count("lots"), None);
    }
}
