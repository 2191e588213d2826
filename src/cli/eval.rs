use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use dynapress::database::Database;
use dynapress::eval::perplexity::Protocol;
use dynapress::eval::{self, EvalPlan, WindowOptions};
use dynapress::model::{DepthConfig, Model, ModelFiles};
use dynapress::selection::ConfigFile;

#[derive(Args)]
pub struct EvalArgs {
    /// Hugging Face model directory (config.json, tokenizer.json, *.safetensors).
    #[arg(long)]
    model: PathBuf,
    /// Text to score: plain text, or JSONL with a "text" field. Repeatable.
    #[arg(long)]
    data: Vec<PathBuf>,
    /// Tokens per window.
    #[arg(long, default_value_t = 256)]
    seq_len: usize,
    /// Number of windows (the first seq_len × windows tokens are scored).
    #[arg(long, default_value_t = 64)]
    windows: usize,
    /// Windows per forward pass (default: 8, fewer for large vocabularies;
    /// logits are computed 64 MiB of rows at a time whatever the batch).
    #[arg(long)]
    batch: Option<usize>,
    /// Scoring: `windows` (every prediction of each window; the reference
    /// protocol) or `llama-perplexity` (second half of each chunk, BOS handled
    /// as llama.cpp does, so numbers compare with `llama-perplexity -c SEQ_LEN`).
    #[arg(long, default_value = "windows")]
    protocol: Protocol,
    /// Multiple-choice task (JSONL with context, choices, label). Repeatable.
    #[arg(long)]
    tasks: Vec<PathBuf>,
    /// Base model to compare against: adds KL(base‖model) and top-1 agreement.
    #[arg(long)]
    base: Option<PathBuf>,
    /// Layer database: evaluate the model with its linear layers replaced by
    /// database variants (choose them with --bits or --config).
    #[arg(long)]
    db: Option<PathBuf>,
    /// With --db: give every linear layer the level with this many bits.
    #[arg(long, requires = "db", conflicts_with = "config")]
    bits: Option<u8>,
    /// With --db: the per-layer levels of a `dynapress search` configuration.
    /// Without --db: a depth configuration from `dynapress prune` (the
    /// sublayers it lists are skipped).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// No progress bars.
    #[arg(long, short)]
    quiet: bool,
}

pub fn run(a: EvalArgs) -> anyhow::Result<()> {
    if a.data.is_empty() && a.tasks.is_empty() {
        anyhow::bail!("nothing to evaluate: give --data FILE and/or --tasks FILE.jsonl");
    }
    let windows = WindowOptions {
        seq_len: a.seq_len,
        windows: a.windows,
        batch: a.batch.unwrap_or(8),
        protocol: a.protocol,
        bos: None,
    };
    if !a.data.is_empty()
        && let Err(e) = windows.validate()
    {
        crate::bad_arg!("{e}");
    }
    for p in a.data.iter().chain(&a.tasks) {
        dynapress::fsutil::check_input_file(p)?;
    }
    let mut model = Model::load(&a.model).context("loading the model")?;
    let mut label = None;
    if let Some(dir) = &a.db {
        let db = Database::open(dir)?;
        db.check_model(&ModelFiles::open(&a.model)?)?;
        label = Some(match (&a.config, a.bits) {
            (Some(path), _) => {
                let cfg = ConfigFile::read(path)?;
                db.resolve(&cfg, path)?.apply(&mut model)?;
                format!(
                    "{} with {} ({}, {:.4} bits per weight)",
                    a.model.display(),
                    path.display(),
                    cfg.algo,
                    cfg.bits_per_weight
                )
            }
            (None, Some(bits)) => {
                let level = db.apply_uniform(&mut model, bits)?;
                format!("{} with {} at {level}", a.model.display(), dir.display())
            }
            (None, None) => {
                anyhow::bail!("--db needs --bits B (a uniform level) or --config CONFIG.json")
            }
        });
    }
    if let (None, Some(path)) = (&a.db, &a.config) {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("{}: reading", path.display()))?;
        if !DepthConfig::is_depth_config(&text) {
            anyhow::bail!(
                "{}: not a depth configuration from `dynapress prune`; a `dynapress search` configuration needs --db",
                path.display()
            );
        }
        let cfg = DepthConfig::read(path)?;
        cfg.apply(&mut model)?;
        label = Some(format!(
            "{} with {} ({}, {} sublayers dropped)",
            a.model.display(),
            path.display(),
            cfg.method,
            cfg.dropped.len()
        ));
    }
    let base = match &a.base {
        Some(dir) => Some(Model::load(dir).context("loading the base model")?),
        None => None,
    };
    let plan = EvalPlan {
        data: a.data,
        tasks: a.tasks,
        windows: WindowOptions {
            batch: a.batch.unwrap_or_else(|| {
                dynapress::eval::compare::eval_batch(a.seq_len, model.config.vocab_size)
            }),
            ..windows
        },
        // Logits of one task batch under 128 MiB (8,192 tokens at vocab 4 k).
        task_batch_tokens: ((128usize << 20) / (model.config.vocab_size.max(1) * 4)).clamp(1, 8192),
        quiet: a.quiet,
    };
    let mut report = eval::evaluate(&model, base.as_ref(), &plan)?;
    if let Some(l) = label {
        report.model = l;
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.to_table());
    }
    Ok(())
}
