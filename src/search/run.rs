//! `dynapress search`: from a database and calibration text to a configuration.

use std::path::PathBuf;
use std::time::Instant;

use candle_core::Device;

use super::evopress::{DEFAULT_POOL_TOKENS, EvoParams, GenerationLog, evopress};
use super::fitness::{BaseTargets, EvalStats, Evaluator};
use super::{knapsack, uniform};
use crate::calib::load_calibration;
use crate::database::space::head_storage_bits;
use crate::database::{Database, HeadLayer, HeadTensor, SearchSpace};
use crate::error::Result;
use crate::model::{LinearId, LinearKind, Model, ModelFiles};
use crate::progress;
use crate::selection::{Algo, ConfigFile, Target};

/// The GGUF embedding and output searched with the linear layers under one
/// file-size budget (`export::gguf::head_search` builds it).
#[derive(Debug, Clone)]
pub struct HeadSearch {
    /// `token_embd` (and `output` when untied), their types and costs.
    pub layers: Vec<HeadLayer>,
    /// Storage bits the file leaves for the linear layers and these tensors.
    pub budget_bits: u64,
}

impl HeadSearch {
    /// Every head tensor at its default (starting) level.
    pub fn defaults(&self) -> Vec<usize> {
        self.layers.iter().map(|l| l.default).collect()
    }

    /// The bits per weight the linear layers (`linear_params` weights) may
    /// average with the head tensors at `levels`.
    pub fn linear_bits(&self, levels: &[usize], linear_params: u64) -> f64 {
        (self.budget_bits - head_storage_bits(&self.layers, levels)) as f64 / linear_params as f64
    }

    /// ` with token_embd at Q6_K and output at Q6_K to start (searched among
    /// …)`, for the budget message.
    pub fn describe_start(&self) -> String {
        let parts: Vec<String> = self
            .layers
            .iter()
            .map(|l| {
                let name = l.tensor.gguf_name().trim_end_matches(".weight");
                if l.levels.len() == 1 {
                    format!("{name} {}", l.levels[0].level)
                } else {
                    format!(
                        "{name} searched from {} ({})",
                        l.levels[l.default].level,
                        l.levels
                            .iter()
                            .map(|o| o.level.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                }
            })
            .collect();
        format!(" with {}", parts.join("; "))
    }
}

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
    /// Head tensors searched with the linear layers (`target.bits` is then
    /// what the linear layers get with the head at its defaults, and the
    /// configuration records what they get with the chosen types).
    pub head: Option<HeadSearch>,
    /// Give q/k/v, and gate/up, of every block one level (vLLM fuses them
    /// and needs one quantization scheme per fused module).
    pub tie_fused: bool,
}

/// The layers of each block that vLLM (and most fused runtimes) run as one
/// module: q/k/v and gate/up.
pub fn fused_groups(space: &SearchSpace) -> Vec<Vec<LinearId>> {
    let blocks: std::collections::BTreeSet<usize> =
        space.layers.iter().map(|l| l.id.block).collect();
    blocks
        .into_iter()
        .flat_map(|block| {
            let id = |kind| LinearId { block, kind };
            [
                vec![id(LinearKind::Q), id(LinearKind::K), id(LinearKind::V)],
                vec![id(LinearKind::Gate), id(LinearKind::Up)],
            ]
        })
        .collect()
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
            head: None,
            tie_fused: false,
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
    let with_head;
    let (space, target_bits) = match &opts.head {
        None => (&db.space, opts.target.bits),
        Some(h) => {
            with_head = db.space.clone().with_head(h.layers.clone());
            let bits = h.budget_bits as f64 / with_head.total_params as f64;
            (&with_head, bits)
        }
    };
    space.check_target(target_bits)?;
    // With fused layers tied, the allocators see one entry per fused group;
    // the choice is mapped back to every layer at the end.
    let untied = space;
    let tied_space;
    let space = if opts.tie_fused {
        tied_space = untied.tied(&fused_groups(untied))?;
        &tied_space
    } else {
        untied
    };
    let (choice, fitness, history, stats) = match opts.algo {
        Algo::Uniform => (uniform(space, target_bits)?, None, vec![], None),
        Algo::Knapsack => (knapsack::knapsack(space, target_bits)?, None, vec![], None),
        Algo::Owl => (
            super::owl::owl(files, db, space, opts.target.sparsity(), target_bits)?,
            None,
            vec![],
            None,
        ),
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
            let mut eval =
                Evaluator::new(base, db, space, opts.weight_cache_budget).reading_base_from(files);
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
    let choice = if opts.tie_fused {
        untied.untie(space, &choice)
    } else {
        choice
    };
    let seed = (opts.algo == Algo::Evopress).then_some(opts.evo.seed);
    let n = db.space.layers.len();
    let mut target = opts.target;
    if let Some(h) = &opts.head {
        // What the linear layers got: the file's bits less the chosen head's.
        target.bits = h.linear_bits(&choice[n..], db.space.total_params);
    }
    let mut config = ConfigFile::new(
        &db.space,
        &db.manifest,
        &choice[..n],
        opts.algo,
        target,
        seed,
        fitness,
    );
    if let Some(h) = &opts.head {
        for (l, &k) in h.layers.iter().zip(&choice[n..]) {
            let ty = Some(l.levels[k].level.clone());
            match l.tensor {
                HeadTensor::Embed => config.embed_type = ty,
                HeadTensor::Output => config.output_type = ty,
            }
        }
    }
    Ok(SearchOutcome {
        config,
        history,
        stats,
        seconds: start.elapsed().as_secs_f64(),
    })
}
