//! `dynapress search`: from a database and calibration text to a configuration.

use std::path::PathBuf;
use std::time::Instant;

use candle_core::Device;

use super::evopress::{DEFAULT_POOL_TOKENS, EvoParams, GenerationLog, evopress};
use super::fitness::{BaseTargets, EvalStats, Evaluator};
use super::{knapsack, uniform};
use crate::calib::load_calibration;
use crate::database::Database;
use crate::error::Result;
use crate::model::{Model, ModelFiles};
use crate::progress;
use crate::selection::{Algo, ConfigFile, Target};

/// Everything a search needs besides the model and database.
#[derive(Debug, Clone)]
pub struct SearchOptions {
    pub algo: Algo,
    /// The budget, resolved to bits per weight of the searched layers.
    pub target: Target,
    pub evo: EvoParams,
    /// Calibration text for the fitness (EvoPress only).
    pub calib: Vec<PathBuf>,
    /// Calibration tokens in the pool the stages sample from (default:
    /// [`DEFAULT_POOL_TOKENS`], or as much as the text holds, at least the
    /// largest stage).
    pub pool_tokens: Option<usize>,
    pub seq_len: usize,
    /// Base-model tokens kept per position when full distributions do not fit.
    pub topk: usize,
    /// Bytes allowed for full base log-probabilities.
    pub full_logits_budget: usize,
    /// Bytes allowed for cached dequantized weights.
    pub weight_cache_budget: usize,
    /// Where to checkpoint after each generation.
    pub checkpoint: Option<PathBuf>,
    pub quiet: bool,
    /// Testing only: abort after this many generations.
    pub abort_after: Option<usize>,
}

impl Default for SearchOptions {
    fn default() -> Self {
        SearchOptions {
            algo: Algo::Evopress,
            target: Target::bits(3.0),
            evo: EvoParams::default(),
            calib: vec![],
            pool_tokens: None,
            seq_len: 256,
            topk: 256,
            full_logits_budget: 256 << 20,
            weight_cache_budget: 256 << 20,
            checkpoint: None,
            quiet: false,
            abort_after: None,
        }
    }
}

/// A finished search.
#[derive(Debug, Clone)]
pub struct SearchOutcome {
    pub config: ConfigFile,
    pub history: Vec<GenerationLog>,
    pub stats: Option<EvalStats>,
    pub seconds: f64,
}

/// Runs one allocator.
pub fn run_search(
    files: &ModelFiles,
    db: &Database,
    opts: &SearchOptions,
) -> Result<SearchOutcome> {
    let start = Instant::now();
    let space = &db.space;
    let target_bits = opts.target.bits;
    space.check_target(target_bits)?;
    let (choice, fitness, history, stats) = match opts.algo {
        Algo::Uniform => (uniform(space, target_bits)?, None, vec![], None),
        Algo::Knapsack => (knapsack::knapsack(space, target_bits)?, None, vec![], None),
        Algo::Evopress => {
            if opts.calib.is_empty() {
                return Err(crate::error::Error::option(
                    "--calib",
                    "EvoPress needs calibration text (--calib FILE) for its fitness",
                ));
            }
            let max_stage = opts.evo.stages.iter().map(|s| s.tokens).max().unwrap_or(0);
            let pool = opts
                .pool_tokens
                .unwrap_or(DEFAULT_POOL_TOKENS)
                .max(max_stage);
            let calib = match load_calibration(&opts.calib, &files.tokenizer, pool, opts.seq_len) {
                // The default pool asks for more text than was given: use
                // what there is, down to the largest stage.
                Err(_) if opts.pool_tokens.is_none() && pool > max_stage => {
                    load_calibration(&opts.calib, &files.tokenizer, max_stage, opts.seq_len)?
                }
                r => r?,
            };
            let base = Model::from_files(files, &Device::Cpu)?;
            let pb = progress::bar(calib.tokens() as u64, "base logits", "tok", opts.quiet);
            let targets = BaseTargets::compute(
                &base,
                calib.ids.clone(),
                opts.seq_len,
                opts.topk,
                opts.full_logits_budget,
                |n| pb.inc(n as u64),
            )?;
            pb.finish_and_clear();
            let mut eval = Evaluator::new(base, db, space, opts.weight_cache_budget);
            let pb = progress::bar(opts.evo.generations as u64, "evopress", "gen", opts.quiet);
            if let Some(ck) = &opts.checkpoint
                && ck.exists()
            {
                pb.set_message("resuming");
            }
            let r = evopress(
                space,
                &mut eval,
                &targets,
                target_bits,
                &opts.evo,
                opts.checkpoint.as_deref(),
                opts.abort_after,
                |log, _| {
                    pb.set_position(log.generation as u64 + 1);
                    pb.set_message(format!(
                        "KL {:.5} at {:.4} bpw",
                        log.fitness, log.bits_per_weight
                    ));
                },
            )?;
            pb.finish_and_clear();
            (r.choice, Some(r.fitness), r.history, Some(r.stats))
        }
    };
    let seed = (opts.algo == Algo::Evopress).then_some(opts.evo.seed);
    Ok(SearchOutcome {
        config: ConfigFile::new(
            space,
            &db.manifest,
            &choice,
            opts.algo,
            opts.target,
            seed,
            fitness,
        ),
        history,
        stats,
        seconds: start.elapsed().as_secs_f64(),
    })
}
